"""Every row of the instruction table run through the interpreter over generated inputs:
what it asks of its host, its stack effect and the exception codes it raises must be what
the row says (``host``, ``pops``/``pushes``, ``raises``)."""

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
    STACK_MASK,
    STACK_SIZE,
    CpuState,
    DecodedProgram,
    Frame,
    Machine,
    decode_program,
)
from dprobes.vm.isa import OPS_BY_NAME, TABLE, VARIABLE, HostNeed, Operand, OpInfo, host_needs
from dprobes.vm.logrecord import header_length
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
PADDING = 8
"""Words under a row's inputs, so that no row reads below the pushed words."""

WORDS = (0, 1, 2, 3, 4, 5, 7, 8, 16, 31, 32, 33, 0xFF, 0x100, 0xFFFF, 0x10000, 0x7FFFFFFF,
         0x80000000, 0xFFFFFFFE, 0xFFFFFFFF, MEMORY, MEMORY + 1, MEMORY + 60, MEMORY - 1)
OPERANDS: dict[Operand, tuple[int, ...]] = {
    Operand.IMM32: (0, 1, 0xFFFFFFFF, MEMORY),
    Operand.U8: (0, 1, 2, 3, 4, 5, 31, 32, 33, 0xFF),
    Operand.U16: (0, 1, 2, 3, 0x100, 0xFFFF),
    Operand.S16: (-3, -1, 0, 1, 2, 5),
    Operand.LV: (0, 1, NUM_VARS - 1, NUM_VARS, 0xFFFF),
    Operand.GV: (0, 1, NUM_VARS - 1, NUM_VARS, 0xFFFF),
}

_SERVICES = {
    "read_memory": HostNeed.MEMORY_READ, "read_uint": HostNeed.MEMORY_READ,
    "read_cstring": HostNeed.MEMORY_READ, "write_memory": HostNeed.MEMORY_WRITE,
    "io_read": HostNeed.IO, "io_write": HostNeed.IO,
    "read_register": HostNeed.REGISTER_READ, "write_register": HostNeed.REGISTER_WRITE,
    "cpuid": HostNeed.HOST_CALL, "read_msr": HostNeed.HOST_CALL,
    "segment_base": HostNeed.HOST_CALL, "callk": HostNeed.HOST_CALL,
    "pid": HostNeed.PROCESS, "task": HostNeed.PROCESS, "processor": HostNeed.PROCESS,
}
"""The host need each Context service stands for."""


class Recorder(MemoryContext):
    """A MemoryContext that notes which of its services the handler used."""

    def __init__(self, callk: bool) -> None:
        registers = {r.name: 0x1234_0000 + r.index for r in REGISTERS_BY_INDEX.values()
                     if not r.reserved}
        super().__init__(registers, memory={MEMORY: bytes(range(1, MEMORY_SIZE + 1))},
                         segments={SELECTOR: 0x2000}, msrs={0: 0x1_0000_0002},
                         cpuid={0: (1, 2, 3, 4)}, pid=5, task=6, processor=7)
        self.needs = HostNeed.NONE
        self.has_callk = callk


def _recording(name: str):
    def service(self: Recorder, *args):
        self.needs |= _SERVICES[name]
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


def register_rule(op: OpInfo) -> str:
    return f"{op.mnemonic}_{op.qualifier}"


def operands(op: OpInfo) -> tuple[int | None, ...]:
    """The operands a row is tried with."""
    if op.operand is Operand.NONE:
        return (None,)
    if op.operand is Operand.REL32:
        return (-op.size,)  # the row itself: a taken branch goes to entry 0, else 1
    if op.operand is Operand.REG:
        rule = register_rule(op)
        return tuple(r.index for r in REGISTERS_BY_INDEX.values() if getattr(r, rule))
    return OPERANDS[op.operand]


@functools.cache
def program_for(op: OpInfo, operand: int | None) -> tuple[Program, DecodedProgram]:
    """The row then ``exit``, as one probe."""
    code = encode(op, operand) + encode(OPS_BY_NAME["EXIT"])
    header = ProgramHeader("rows", ModuleType.USER, jmpmax=JMPMAX, logmax=LOGMAX,
                           num_lv=NUM_VARS, num_gv=NUM_VARS)
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
    finished: bool
    net: int  # words pushed minus words popped
    needs: HostNeed
    state: tuple = field(repr=False)  # everything observable, for comparing two runs
    base: int = 0  # the slot of the deepest word pushed


def run(op: OpInfo, setup: Setup, change: tuple[int, int] | None = None) -> Run:
    """Run ``op`` once on ``setup``; ``change`` = (depth, value) replaces one input word."""
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
    words = list(setup.words)
    if change is not None:
        depth, value = change
        words[-1 - depth] = value
    for word in (*(0xDEAD0000 + i for i in range(PADDING)), *words):
        m.push(word)
    m.frames += [Frame(m.sbp, 0, 0) for _ in range(setup.frames - 1)]
    m.jmp_count = setup.jumps
    m.log_len = m.prev_log_len = setup.log_len
    before = m.tos
    semantic, argument, nxt = decoded.entries[0]
    after = semantic(m, argument, nxt)
    code = None
    if m.exception is not None:
        code = m.exception.code
    elif m.ex_pending:
        code = cpu.ex_code
    net = ((before - m.tos + STACK_SIZE // 2) & STACK_MASK) - STACK_SIZE // 2
    live = tuple(m.stack[slot] for slot in range(m.tos, STACK_SIZE)) if m.tos else ()
    state = (after, m.exit_kind, m.exit_to, m.exception, m.tos, live, tuple(lv), tuple(gv),
             bytes(m.log[:m.log_len]), m.log_len, m.prev_log_len, m.log_overflow,
             bytes(m.ex_log[:m.ex_len]), m.major, m.minor, m.sbp, m.jmp_count, cpu.ex_code,
             m.ex_parm1, m.ex_parm2,
             tuple((f.sbp, f.gv_range, f.lv_range, f.pv_range, f.handler, f.called, f.returns)
                   for f in m.frames),
             tuple(bytes(data) for _, data in ctx.regions), tuple(ctx.io_writes),
             tuple(sorted(ctx.regs.items())), bytes(heap.data), heap.in_use)
    needs = ctx.needs | (HostNeed.HEAP if heap.used else HostNeed.NONE)
    return Run(code, m.exit_kind is not None, net, needs, state,
               base=(STACK_SIZE - PADDING) & STACK_MASK)


def setups(op: OpInfo) -> Iterator[Setup]:
    """Generated inputs for ``op``, the same on every run (seeded by the opcode)."""
    rng = random.Random(op.code)
    depth = 6 if op.pops == VARIABLE else op.pops
    handle = HEAP_BASE + 20  # the block run() allocates
    pool = (*WORDS, handle, handle + 1)
    cap = header_length(LogField.NONE) + LOGMAX
    for _ in range(TRIALS):
        yield Setup(operand=rng.choice(operands(op)),
                    words=tuple(rng.choice(pool) for _ in range(depth)),
                    frames=rng.choice((1, 1, 2, 34)),
                    jumps=rng.choice((0, 0, JMPMAX)),
                    log_len=rng.choice((header_length(LogField.NONE),) * 3 + (cap - 5, cap)),
                    callk=rng.choice((True, False)))


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
