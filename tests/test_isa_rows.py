"""Every row of the instruction table run through the interpreter over generated inputs:
what it asks of its host, its stack effect, the exception codes it raises, the size of its
accesses, its operand domain and variable scope must be what the row says (``host``,
``pops``/``pushes``, ``raises``, ``width``, ``domain``, ``scope``). Register operands are
drawn from those the row's ``register_rule`` accepts."""

from __future__ import annotations

import functools
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from dprobes.vm.bytecode import encode
from dprobes.vm.context import MemoryContext
from dprobes.vm.exceptions import ExceptionCode as Ex
from dprobes.vm.heap import HEAP_BASE, ProbeHeap
from dprobes.vm.interp import (
    CpuState,
    DecodedProgram,
    ExitKind,
    Frame,
    Machine,
    decode_program,
)
from dprobes.vm.isa import (
    OPS_BY_NAME,
    TABLE,
    VARIABLE,
    HostNeed,
    Operand,
    OpInfo,
    Scope,
    host_needs,
)
from dprobes.vm.logrecord import header_length
from dprobes.vm.model import STACK_MASK, STACK_SIZE
from dprobes.vm.program import LogField, ModuleType, Probe, ProbeKind, Program, ProgramHeader
from dprobes.vm.registers import REGISTERS_BY_INDEX, Register

TRIALS = 160
MEMORY = 0x1000
MEMORY_SIZE = 64
SELECTOR = 0x10
NUM_VARS = 4
LOGMAX = 48
JMPMAX = 50
HEAP_SIZE = 96
SBP = 512
"""The stack base pointer of every run: frame slots far from the inputs and the padding."""
PADDING = 8
"""Words under a row's inputs, so that no row reads below the pushed words."""

WORDS = (
    0,
    1,
    2,
    3,
    4,
    5,
    7,
    8,
    16,
    31,
    32,
    33,
    0xFF,
    0x100,
    0xFFFF,
    0x10000,
    0x7FFFFFFF,
    0x80000000,
    0xFFFFFFFE,
    0xFFFFFFFF,
    MEMORY,
    MEMORY + 1,
    MEMORY + 60,
    MEMORY - 1,
)
OPERANDS: dict[Operand, tuple[int, ...]] = {
    Operand.IMM32: (0, 1, 0xFFFFFFFF, MEMORY),
    Operand.U8: (0, 1, 2, 3, 4, 5, 31, 32, 33, 0xFF),
    Operand.U16: (0, 1, 2, 3, 0x100, 0xFFFF),
    Operand.S16: (-3, -1, 0, 1, 2, 5),
    Operand.LV: (0, 1, NUM_VARS - 1, NUM_VARS, 0xFFFF),
    Operand.GV: (0, 1, NUM_VARS - 1, NUM_VARS, 0xFFFF),
}

_SERVICES = {
    "read_memory": HostNeed.MEMORY_READ,
    "read_uint": HostNeed.MEMORY_READ,
    "read_cstring": HostNeed.MEMORY_READ,
    "write_memory": HostNeed.MEMORY_WRITE,
    "io_read": HostNeed.IO,
    "io_write": HostNeed.IO,
    "read_register": HostNeed.REGISTER_READ,
    "write_register": HostNeed.REGISTER_WRITE,
    "cpuid": HostNeed.HOST_CALL,
    "read_msr": HostNeed.HOST_CALL,
    "segment_base": HostNeed.HOST_CALL,
    "callk": HostNeed.HOST_CALL,
    "pid": HostNeed.PROCESS,
    "task": HostNeed.PROCESS,
    "processor": HostNeed.PROCESS,
}
"""The host need each Context service stands for."""


class Recorder(MemoryContext):
    """A MemoryContext that notes which of its services the handler used."""

    def __init__(self, callk: bool) -> None:
        registers = {
            r.name: 0x1234_0000 + r.index for r in REGISTERS_BY_INDEX.values() if not r.reserved
        }
        super().__init__(
            registers,
            memory={MEMORY: bytes(range(1, MEMORY_SIZE + 1))},
            segments={SELECTOR: 0x2000},
            msrs={0: 0x1_0000_0002},
            cpuid={0: (1, 2, 3, 4)},
            pid=5,
            task=6,
            processor=7,
            ports={port: 0x01010101 * (port + 1) for port in range(8)},
        )
        self.needs = HostNeed.NONE
        self.has_callk = callk
        self.widths: set[int] = set()  # bytes of each fixed-size memory or port access


_SIZED = {"read_uint": 1, "read_memory": 1, "io_read": 1, "io_write": 1}
"""Services whose argument at this position is the access size (write_memory: its data)."""


def _recording(name: str):
    def service(self: Recorder, *args):
        self.needs |= _SERVICES[name]
        if name in _SIZED:
            self.widths.add(args[_SIZED[name]])
        elif name == "write_memory":
            self.widths.add(len(args[1]))
        if name == "callk":
            return self.has_callk
        return getattr(MemoryContext, name)(self, *args)

    service.__name__ = name
    return service


for _name in _SERVICES:
    setattr(Recorder, _name, _recording(_name))


class RecordingHeap(ProbeHeap):
    """A probe heap that notes that it was used."""

    used = False

    def allocate(self, size: int) -> int | None:
        self.used = True
        return super().allocate(size)

    def release(self, handle: int) -> int:
        self.used = True
        return super().release(handle)

    def block_size(self, handle: int) -> int | None:
        self.used = True
        return super().block_size(handle)


def operands(op: OpInfo) -> tuple[int | None, ...]:
    """The operands a row is tried with."""
    if op.operand is Operand.NONE:
        return (None,)
    if op.operand is Operand.REL32:
        return (-op.size,)  # the row itself: a taken branch goes to entry 0, else 1
    if op.operand is Operand.REG:
        rule = op.register_rule
        assert rule is not None, f"{op.name} takes a register but has no register rule"
        return tuple(r.index for r in REGISTERS_BY_INDEX.values() if rule.accepts(r))
    return OPERANDS[op.operand]


@functools.cache
def program_for(op: OpInfo, operand: int | None) -> tuple[Program, DecodedProgram]:
    """The row then ``exit``, as one probe."""
    code = encode(op, operand) + encode(OPS_BY_NAME["EXIT"])
    header = ProgramHeader(
        "rows", ModuleType.USER, jmpmax=JMPMAX, logmax=LOGMAX, num_lv=NUM_VARS, num_gv=NUM_VARS
    )
    probe = Probe(ProbeKind.BREAKPOINT, 0, 0, len(code), ex_mask=0xFFFF, heap_size=HEAP_SIZE)
    program = Program(header, (probe,), code)
    return program, decode_program(program)


@dataclass(frozen=True)
class Setup:
    """One generated input: the operand, the words on the stack (TOS last) and the state
    around them."""

    operand: int | None
    words: tuple[int, ...]
    frames: int
    jumps: int
    log_len: int
    callk: bool


@dataclass
class Run:
    """What one row did with one input."""

    code: int | None  # the exception raised, if any
    parm1: int | None  # and its first parameter
    exit: ExitKind | None
    widths: set[int]
    net: int  # words pushed minus words popped
    needs: HostNeed
    tos: int
    stack: tuple[int, ...] = field(repr=False)
    state: tuple = field(repr=False)  # everything else observable, for comparing two runs

    def words(self, masked: int, scratch: int) -> tuple[int, ...]:
        """The stack as a handler could see it again: the words from TOS to the bottom and
        every slot outside the scratch area over the inputs (``scratch`` up to the first
        input), the one in slot ``masked`` left out."""
        live = range(self.tos or STACK_SIZE, STACK_SIZE)
        return tuple(
            self.stack[slot]
            for slot in range(STACK_SIZE)
            if slot != masked and (slot in live or slot < scratch)
        )


def slot_at(setup: Setup, depth: int) -> int:
    """The stack slot of the input word ``depth`` words under TOS (padding words below)."""
    return STACK_SIZE - PADDING - len(setup.words) + depth


def run(op: OpInfo, setup: Setup, change: tuple[int, int] | None = None) -> Run:
    """Run ``op`` once on ``setup``; ``change`` = (depth, value) replaces the word that many
    words under TOS (a depth past the inputs reaches the padding under them)."""
    program, decoded = program_for(op, setup.operand)
    ctx = Recorder(setup.callk)
    cpu = CpuState()
    lv = [0x100 + i for i in range(NUM_VARS)]
    gv = [0x200 + i for i in range(NUM_VARS)]
    m = Machine(program, 0, decoded, cpu, lv, gv, ctx, header_length(LogField.NONE))
    heap = m.heap = RecordingHeap(HEAP_SIZE)
    heap.allocate(16)
    heap.used = False
    for slot in range(STACK_SIZE):
        cpu.stack[slot] = 0xA5000000 + slot
    words = [*(0xDEAD0000 + i for i in range(PADDING)), *setup.words]
    if change is not None:
        depth, value = change
        words[-1 - depth] = value
    for word in words:
        m.push(word)
    m.sbp = m.frames[0].sbp = SBP
    m.frames += [Frame(m.sbp, 0, 0) for _ in range(setup.frames - 1)]
    m.jmp_count = setup.jumps
    m.log_len = m.prev_log_len = setup.log_len
    before = m.tos
    semantic, argument, nxt = decoded.entries[0]
    after = semantic(m, argument, nxt)
    code = parm1 = None
    if m.exception is not None:
        code, parm1 = m.exception.code, m.exception.parm1
    elif m.ex_pending:
        code, parm1 = cpu.ex_code, m.ex_parm1
    net = ((before - m.tos + STACK_SIZE // 2) & STACK_MASK) - STACK_SIZE // 2
    state = (
        after,
        m.exit_kind,
        m.exit_to,
        m.exception,
        tuple(lv),
        tuple(gv),
        bytes(m.log[: m.log_len]),
        m.log_len,
        m.prev_log_len,
        m.log_overflow,
        bytes(m.ex_log[: m.ex_len]),
        m.major,
        m.minor,
        m.sbp,
        m.jmp_count,
        cpu.ex_code,
        m.ex_parm1,
        m.ex_parm2,
        tuple(
            (f.sbp, f.gv_range, f.lv_range, f.pv_range, f.handler, f.called, f.returns)
            for f in m.frames
        ),
        tuple(bytes(data) for _, data in ctx.regions),
        tuple(ctx.io_writes),
        tuple(sorted(ctx.regs.items())),
        bytes(heap.data),
        heap.in_use,
    )
    needs = ctx.needs | (HostNeed.HEAP if heap.used else HostNeed.NONE)
    return Run(code, parm1, m.exit_kind, ctx.widths, net, needs, m.tos, tuple(m.stack), state)


def differ(op: OpInfo, setup: Setup, depth: int, value: int) -> bool:
    """Whether replacing the word ``depth`` under TOS by ``value`` changes what the row
    does; that word itself, where it stays in place, is not counted as a change."""
    first, second = run(op, setup), run(op, setup, (depth, value))
    slot = slot_at(setup, depth)
    masked = slot if second.stack[slot] == value and first.stack[slot] != value else -1
    scratch = slot_at(setup, 0) - 8
    return (first.state, first.tos, first.words(masked, scratch)) != (
        second.state,
        second.tos,
        second.words(masked, scratch),
    )


def setups(op: OpInfo) -> Iterator[Setup]:
    """Generated inputs for ``op``, the same on every run (seeded by the opcode)."""
    rng = random.Random(op.code)
    depth = 6 if op.pops == VARIABLE else op.pops
    handle = HEAP_BASE + 20  # the block run() allocates
    pool = (*WORDS, handle, handle + 1)
    cap = header_length(LogField.NONE) + LOGMAX
    for _ in range(TRIALS):
        words = [rng.choice(pool) for _ in range(depth)]
        if HostNeed.HEAP in op.host and depth >= 2 and rng.random() < 0.5:
            words[-2:] = handle, rng.choice((0, 1, 4))  # h off: a block and an offset in it
        yield Setup(
            operand=rng.choice(operands(op)),
            words=tuple(words),
            frames=rng.choice((1, 1, 2, 34)),
            jumps=rng.choice((0, 0, JMPMAX)),
            log_len=rng.choice((header_length(LogField.NONE),) * 3 + (cap - 5, cap)),
            callk=rng.choice((True, False)),
        )


def raised(op: OpInfo, code: int) -> Ex:
    """The code as the table names it: ``rx`` raises the user's own codes."""
    return Ex.USER if op.name == "RX" else Ex(code)


@pytest.mark.parametrize("op", TABLE, ids=lambda op: op.name)
def test_host_needs_are_what_the_row_says(op: OpInfo) -> None:
    seen = HostNeed.NONE
    for setup in setups(op):
        got = run(op, setup)
        assert got.needs & ~host_needs(op, setup.operand) == HostNeed.NONE, (setup, got.needs)
        seen |= got.needs
    assert op.host & ~seen == HostNeed.NONE, f"never used: {op.host & ~seen}"


def test_host_needs_of_register_operands() -> None:
    """A register beyond the general ones, or a segment-register load, is a host call."""
    push, pop = OPS_BY_NAME["PUSH_R"], OPS_BY_NAME["POP_R"]
    by_name: dict[str, Register] = {r.name: r for r in REGISTERS_BY_INDEX.values()}
    assert host_needs(push, by_name["eax"].index) == HostNeed.REGISTER_READ
    assert HostNeed.HOST_CALL in host_needs(push, by_name["cr0"].index)
    assert HostNeed.HOST_CALL in host_needs(push, by_name["cpuid"].index)
    assert host_needs(pop, by_name["ebx"].index) == HostNeed.REGISTER_WRITE
    assert HostNeed.HOST_CALL in host_needs(pop, by_name["ds"].index)


@pytest.mark.parametrize("op", TABLE, ids=lambda op: op.name)
def test_raised_codes_are_what_the_row_says(op: OpInfo) -> None:
    seen: set[Ex] = set()
    for setup in setups(op):
        got = run(op, setup)
        if got.code is not None:
            code = raised(op, got.code)
            assert code in op.raises, (setup, code)
            seen.add(code)
    assert op.raises <= seen, f"never raised: {sorted(op.raises - seen)}"


def _frame_access(op: OpInfo) -> bool:
    """Rows that address stack slots by TOS offset: they reach below their inputs."""
    return op.scope is Scope.TSP


@pytest.mark.parametrize("op", [op for op in TABLE if op.pops != VARIABLE], ids=lambda op: op.name)
def test_stack_effect_is_what_the_row_says(op: OpInfo) -> None:
    """``pops`` words are the inputs: each matters for some input, the word under them never
    does and no word under them changes; a run that raises nothing leaves ``pushes`` in
    their place."""
    matters = [False] * op.pops
    padding = tuple(0xDEAD0000 + i for i in reversed(range(PADDING)))  # the first is deepest
    for setup in setups(op):
        got = run(op, setup)
        if got.code is None and op.pushes != VARIABLE:
            assert got.net == op.pushes - op.pops, setup
        for depth in range(op.pops):
            if not matters[depth]:
                matters[depth] = differ(op, setup, depth, setup.words[-1 - depth] ^ 0x80000001)
        if _frame_access(op):
            continue
        assert got.stack[STACK_SIZE - PADDING :] == padding, f"a word under it changed: {setup}"
        assert not differ(op, setup, op.pops, 0x5A5A5A5A), f"the word under it matters: {setup}"
    assert all(matters), (
        f"input words that never matter (0 = TOS): {[d for d, m in enumerate(matters) if not m]}"
    )


@pytest.mark.parametrize(
    "op", [op for op in TABLE if VARIABLE in (op.pops, op.pushes)], ids=lambda op: op.name
)
def test_variable_stack_effects_vary(op: OpInfo) -> None:
    """A row that says its effect depends on the operand or the stack has more than one."""
    nets = {got.net for got in map(functools.partial(run, op), setups(op)) if got.code is None}
    assert len(nets) > 1, nets


@pytest.mark.parametrize(
    "op",
    [
        op
        for op in TABLE
        if op.width and op.host & (HostNeed.MEMORY_READ | HostNeed.MEMORY_WRITE | HostNeed.IO)
    ],
    ids=lambda op: op.name,
)
def test_access_width_is_what_the_row_says(op: OpInfo) -> None:
    widths: set[int] = set()
    for setup in setups(op):
        widths |= run(op, setup).widths
    assert widths == {op.width}


@pytest.mark.parametrize(
    "op", [op for op in TABLE if op.domain is not None], ids=lambda op: op.name
)
def test_operand_domain_is_what_the_row_says(op: OpInfo) -> None:
    """Inside the domain the operand is taken; outside it the row raises EX_INVALID_OPERAND
    with the domain's error, or, if it does not list that code, ends the handler."""
    assert op.domain is not None
    outside = False
    for setup in setups(op):
        value = setup.words[-1] if op.operand is Operand.NONE else setup.operand
        assert value is not None
        got = run(op, setup)
        if op.domain.admits(value):
            assert got.code != Ex.INVALID_OPERAND, setup
        elif Ex.INVALID_OPERAND in op.raises:
            outside = True
            assert (got.code, got.parm1) == (Ex.INVALID_OPERAND, op.domain.error), setup
        else:
            outside = True
            assert (got.code, got.exit) == (None, ExitKind.TERMINATED), setup
    assert outside, "no input outside the domain"


@pytest.mark.parametrize(
    "op",
    [op for op in TABLE if op.scope in (Scope.LV, Scope.GV) and Ex.INVALID_OPERAND in op.raises],
    ids=lambda op: op.name,
)
def test_variable_scope_is_what_the_row_says(op: OpInfo) -> None:
    """A bad index names the row's variables in its EX_INVALID_OPERAND."""
    assert op.scope is not None
    bad = [
        got.parm1
        for got in map(functools.partial(run, op), setups(op))
        if got.code == Ex.INVALID_OPERAND
    ]
    assert bad and set(bad) == {op.scope.index_error}
