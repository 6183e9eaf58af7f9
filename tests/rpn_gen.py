"""Generators of valid RPN programs, host contexts and starting states for tier testing.

One generator, two drivers: every choice goes through a ``Chooser``, which is either a
hypothesis ``data`` object (``HypothesisChooser``: shrinkable, used by
``test_jit_differential``) or a seeded ``random.Random`` (``RandomChooser``: used by the
subprocess fuzzer ``jit_fuzz``, which has no hypothesis).

Programs are built as IR (``compiler.ir``), assembled and checked by the real verifier,
so they are exactly what ``dpc`` accepts. They use every opcode of the instruction
table, with snippets that make the interesting cases likely: memory reads and writes
at mapped, unmapped and region-straddling addresses, bounded loops, calls into
subroutines (and runaway recursion), ``sx`` handlers, ``rx``, every kind of logging,
the heap, frame access, exits of every kind. ``compare_tiers`` fires a program on both
tiers from identical starting states and lists every difference.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Protocol

from dprobes.compiler.assembler import assemble
from dprobes.compiler.diagnostics import DiagnosticSink, SourceLoc
from dprobes.compiler.ir import IRInstruction, IRLabel, IRProbe, IRProgram
from dprobes.compiler.verifier import verify
from dprobes.vm.api import VM, GlobalVariables
from dprobes.vm.context import MemoryContext
from dprobes.vm.interp import CpuState
from dprobes.vm.isa import OPS_BY_NAME, TABLE, Operand, OpFlag, OpInfo
from dprobes.vm.program import LogField, ModuleType, Probe, ProbeKind, Program, ProgramHeader
from dprobes.vm.registers import REGISTERS_BY_INDEX, RegisterShape

MASK32 = 0xFFFFFFFF
LOC = SourceLoc("<generated>", 1, 1)


class Chooser(Protocol):
    def integer(self, lo: int, hi: int) -> int: ...

    def choice(self, options: list | tuple) -> Any: ...

    def boolean(self, percent: int = 50) -> bool: ...


class RandomChooser:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def choice(self, options: list | tuple) -> Any:
        return options[self.rng.randrange(len(options))]

    def boolean(self, percent: int = 50) -> bool:
        return self.rng.randrange(100) < percent


class HypothesisChooser:
    def __init__(self, data: Any) -> None:
        from hypothesis import strategies as st

        self.data = data
        self.st = st

    def integer(self, lo: int, hi: int) -> int:
        return self.data.draw(self.st.integers(lo, hi))

    def choice(self, options: list | tuple) -> Any:
        return options[self.data.draw(self.st.integers(0, len(options) - 1))]

    def boolean(self, percent: int = 50) -> bool:
        return self.data.draw(self.st.integers(0, 99)) < percent


# --- contexts ---------------------------------------------------------------------------
REGION_BASES = (0x1000, 0x2000, 0x10000, 0x7000, 0xC0001000, 0xFFFFFFF0)
UNMAPPED = (0, 0xDEAD0000, 0xFFFFFFFF, 0x0FFF, 0x3000, 0x12345678)


@dataclass
class ContextSpec:
    regs: dict[str, int]
    user_regs: dict[str, int]
    memory: dict[int, bytes]
    pid: int
    task: int
    processor: int
    segments: dict[int, int]
    ports: dict[int, int]
    msrs: dict[int, int]
    cpuid: dict[int, tuple[int, int, int, int]]

    def build(self, subclass: bool = False) -> MemoryContext:
        cls = _PlainSubclass if subclass else MemoryContext
        return cls(
            dict(self.regs),
            dict(self.user_regs),
            dict(self.memory),
            pid=self.pid,
            task=self.task,
            processor=self.processor,
            segments=dict(self.segments),
            ports=dict(self.ports),
            msrs=dict(self.msrs),
            cpuid=dict(self.cpuid),
        )


class _PlainSubclass(MemoryContext):
    """A MemoryContext subclass: the JIT serves it through the Python trampolines."""


def _wide_value(c: Chooser, reg) -> int:
    bits = {
        RegisterShape.WORD: 32,
        RegisterShape.DESCRIPTOR: 48,
        RegisterShape.X87: 80,
        RegisterShape.XMM: 128,
    }.get(reg.shape, 32)
    value = c.choice((0, 1, MASK32, c.integer(0, (1 << bits) - 1), c.integer(0, 255)))
    if c.boolean(5):
        value = -value - 1  # hosts may hand out negative or oversized ints
    elif c.boolean(5):
        value |= 1 << (bits + c.integer(0, 8))
    return value


def context_spec(c: Chooser) -> ContextSpec:
    readable = [
        r
        for r in REGISTERS_BY_INDEX.values()
        if (r.push_r or r.push_u) and r.shape not in (RegisterShape.CPUID, RegisterShape.MSR)
    ]
    regs = {r.name: _wide_value(c, r) for r in readable if c.boolean(40)}
    user_regs = {r.name: _wide_value(c, r) for r in readable if c.boolean(15)}
    memory: dict[int, bytes] = {}
    for _ in range(c.integer(0, 3)):
        base = c.choice(REGION_BASES)
        if c.boolean(20):
            base = (base + c.integer(1, 40)) & MASK32  # overlapping or adjacent regions
        size = c.integer(0, 48)
        data = bytes(c.choice((0, 0x41, 0xFF, c.integer(0, 255))) for _ in range(size))
        memory[base] = data
    return ContextSpec(
        regs=regs,
        user_regs=user_regs,
        memory=memory,
        pid=c.choice((0, 42, MASK32, c.integer(0, MASK32))),
        task=c.choice((0, 0xC0100000, c.integer(0, MASK32))),
        processor=c.choice((0, 1, 3)),
        segments={
            c.choice((0x10, 0x18, 0x23, 0x2B)): c.choice((0, 0x1000, 0xFFFFF000))
            for _ in range(c.integer(0, 2))
        },
        ports={
            c.choice((0x60, 0x3F8, 0xFFFF)): c.integer(0, MASK32) for _ in range(c.integer(0, 2))
        },
        msrs={
            c.choice((0x10, 0x1B, 0xC0000080)): c.integer(0, 2**64 - 1)
            for _ in range(c.integer(0, 2))
        },
        cpuid={
            c.choice((0, 1, 0x80000000)): tuple(c.integer(0, MASK32) for _ in range(4))
            for _ in range(c.integer(0, 2))
        },
    )


# --- programs ----------------------------------------------------------------------------
@dataclass
class _Body:
    items: list = field(default_factory=list)  # IRInstruction | IRLabel
    labels: list[str] = field(default_factory=list)


class ProgramGenerator:
    """Draws one valid program; ``addresses`` come from the context it will run with."""

    def __init__(self, c: Chooser, addresses: list[int], max_length: int = 24) -> None:
        self.c = c
        self.addresses = addresses
        self.max_length = max_length
        self.counter = 0

    def label(self) -> str:
        self.counter += 1
        return f"L{self.counter}"

    # operands
    def word(self) -> int:
        c = self.c
        kind = c.integer(0, 9)
        if kind <= 2:
            return c.integer(0, 6)
        if kind <= 4 and self.addresses:
            return (
                c.choice(self.addresses) + c.choice((0, 1, 2, 3, 4, 8, 15, 16, 40, 47, 48, -1, -4))
            ) & MASK32
        if kind == 5:
            return c.choice(UNMAPPED)
        if kind == 6:
            return c.choice((0xE0000014, 0xE0000000, 0xE0000028, 0xE000003C, 0xE0000050))
        if kind == 7:
            return c.choice(
                (
                    0x7FFFFFFF,
                    0x80000000,
                    MASK32,
                    0xFFFFFFFE,
                    1023,
                    1024,
                    0xFFFF,
                    0x10000,
                    32,
                    33,
                    31,
                )
            )
        if kind == 8:
            return c.choice((0x0001, 0x0004, 0x0010, 0x0020, 0x0040, 0x0080, 0x1000, 0x8001))
        return c.integer(0, MASK32)

    def operand(self, op: OpInfo, labels: list[str]) -> int | str | None:
        c = self.c
        kind = op.operand
        if kind is Operand.NONE:
            return None
        if kind is Operand.REL32:
            return c.choice(labels)
        if kind is Operand.IMM32:
            return self.word()
        if kind is Operand.REG:
            rule = {"PUSH_R": "push_r", "PUSH_U": "push_u", "POP_R": "pop_r", "POP_U": "pop_u"}[
                op.name
            ]
            return c.choice([r.index for r in REGISTERS_BY_INDEX.values() if getattr(r, rule)])
        if kind in (Operand.LV, Operand.GV):
            return c.choice((0, 1, 2, 3, 5, 8, c.integer(0, 0xFFFF)))
        if kind is Operand.S16:
            return c.choice((0, 1, 2, -1, -2, 3, c.integer(-(2**15), 2**15 - 1)))
        if kind is Operand.U8:
            if op.name == "EXIT_N":
                return c.integer(0, 4)
            if op.name == "DUP_I":
                return c.choice((0, 1, 2, 3, c.integer(0, 255)))
            if op.name in ("PBL_I", "PBR_I", "PZL_I", "PZR_I"):
                return c.choice((0, 1, 2, 8, 16, 31, 32, 33, c.integer(0, 255)))
            return c.choice((0, 1, 2, 3, 31, 32, c.integer(0, 255)))
        if kind is Operand.U16:
            if op.name == "LOG_I":
                return c.choice((0, 1, 2, 3, 8, c.integer(0, 300), c.integer(0, 0xFFFF)))
            if op.name.startswith(("PUSHH", "POPH")):
                return c.choice((0, 1, 2, 3, 8, c.integer(0, 0xFFFF)))
            return c.integer(0, 0xFFFF)
        raise AssertionError(kind)

    def insn(self, name: str, operand: int | str | None = None) -> IRInstruction:
        return IRInstruction(OPS_BY_NAME[name], operand, LOC)

    def random_insn(self, labels: list[str], allow_flow: bool = True) -> IRInstruction:
        """Any opcode of the table; the ones that end or derail the handler less often."""
        c = self.c
        pool = _CALM if c.boolean(80) else _ALL_OPS
        ops = [
            op
            for op in pool
            if allow_flow or not (op.operand is Operand.REL32 or OpFlag.NO_FALLTHROUGH in op.flags)
        ]
        op = c.choice(ops)
        if op.operand is Operand.REL32 and not labels:
            return self.insn("NOP")
        return IRInstruction(op, self.operand(op, labels), LOC)

    def snippet(self, body: _Body, subs: list[str], handlers: list[str]) -> list:
        """A few instructions that set up an interesting case."""
        c = self.c
        if c.boolean(40):
            return [self.random_insn(body.labels + subs + handlers)]
        kind = c.integer(0, 19)
        push = lambda v: self.insn("PUSH", v & MASK32)  # noqa: E731
        if kind <= 3:
            return [push(self.word())]
        if kind == 4:  # memory read
            width = c.choice(("U8", "U16", "U32", "U64"))
            return [push(self.word()), self.insn(f"PUSH_MEM_{width}")]
        if kind == 5:  # memory write
            width = c.choice(("U8", "U16", "U32", "U64"))
            out = [push(self.word()), push(self.word())]
            if width == "U64":
                out.append(push(self.word()))
            return [*out, self.insn(f"POP_MEM_{width}")]
        if kind == 6:  # log str / log mrf
            return [
                push(c.choice((0, 1, 4, 16, 100, 2000, MASK32))),
                push(self.word()),
                self.insn(c.choice(("LOG_STR", "LOG_MRF"))),
            ]
        if kind == 7:  # bounded loop
            head = self.label()
            inner = [self.random_insn([], allow_flow=False) for _ in range(c.integer(0, 3))]
            return [push(c.integer(0, 5)), IRLabel(head, LOC), *inner, self.insn("LOOP", head)]
        if kind == 8 and subs:
            return [self.insn("CALL", c.choice(subs))]
        if kind == 9 and handlers:
            return [self.insn("SX", c.choice(handlers))]
        if kind == 10:  # user exception
            return [
                push(self.word()),
                push(self.word()),
                push(c.choice((0x8001, 0x0001, 0x0040, 0x1000, 0, self.word()))),
                self.insn("RX"),
            ]
        if kind == 11:  # heap
            width = c.choice(("U8", "U16", "U32", "U64"))
            op = c.choice(("PUSHH", "POPH"))
            return [
                push(c.choice((0, 1, 4, 8, 16, 30))),
                self.insn("MALLOC"),
                self.insn("PUSH_TSP_I", 0),
                push(c.choice((0, 1, 2, 4, 8, 12, 29))),
                self.insn(f"{op}_{width}_I", c.choice((0, 1, 2, 3))),
            ]
        if kind == 12:  # log lv/gv, trace ranges
            return [
                push(c.integer(0, 9)),
                push(c.integer(0, 4)),
                self.insn(c.choice(("LOG_LV", "LOG_GV", "TRACE_LV", "TRACE_GV", "TRACE_PV"))),
            ]
        if kind == 13:  # log n / log
            if c.boolean():
                return [self.insn("LOG_I", c.choice((0, 1, 2, 3, 5, 40, 300)))]
            return [push(c.choice((0, 1, 2, 3, 7, 300, 0x10002))), self.insn("LOG")]
        if kind == 14:  # forward or backward jump
            if body.labels:
                name = c.choice(("JMP", "JZ", "JNZ", "JLT", "JGE", "JLE", "JGT"))
                return [self.insn(name, c.choice(body.labels))]
            return []
        if kind == 15:  # frame ops around sbp
            return [
                self.insn(c.choice(("SAVE_SBP", "SAVE_TSP"))),
                self.insn(
                    c.choice(
                        ("RESTORE_SBP", "RESTORE_TSP", "PUSH_SBP", "PUSH_TSP", "POP_LP", "POP_STP")
                    )
                ),
            ]
        if kind == 16:
            return self.operands_snippet()
        return [self.random_insn(body.labels + subs + handlers)]

    def operands_snippet(self) -> list:
        """An operator with operands chosen to hit its edge cases."""
        c = self.c
        push = lambda v: self.insn("PUSH", v & MASK32)  # noqa: E731
        small = (0, 1, 2, 3, 31, 32, 33, 255, 256, 0x10001, MASK32, 0x80000000)
        kind = c.integer(0, 9)
        if kind == 0:  # propagate/zero bits
            return [
                push(self.word()),
                push(c.choice(small)),
                self.insn(c.choice(("PBL", "PBR", "PZL", "PZR"))),
            ]
        if kind == 1:  # division edge cases
            return [
                push(c.choice((0x80000000, 7, (-7) & MASK32, 0, MASK32, self.word()))),
                push(c.choice((0, 1, MASK32, 7, (-3) & MASK32, self.word()))),
                self.insn(c.choice(("DIV", "IDIV"))),
            ]
        if kind == 2:  # shifts and rotates: count NOS, value TOS
            return [
                push(c.choice(small)),
                push(self.word()),
                self.insn(c.choice(("SHL", "SHR", "ROL", "ROR", "SUB", "MUL"))),
            ]
        if kind == 3:  # stack-form dup
            return [push(c.choice((0, 1, 2, 255, 256, 0x101))), push(self.word()), self.insn("DUP")]
        if kind == 4:  # stack-form frame access
            name = c.choice(("PUSH_SBP", "PUSH_TSP", "COPY_SBP", "COPY_TSP"))
            out = [push(c.choice((0, 1, 2, MASK32, 0xFFFFFFFE, 1023, 1024, 5)))]
            return (
                [push(self.word()), *out, self.insn(name)]
                if name.startswith("COPY")
                else [*out, self.insn(name)]
            )
        if kind == 5:  # stack-form variables, with 16-bit truncation of the index
            index = c.choice((0, 1, 2, 5, 6, 7, 0x10000, 0x10001, MASK32))
            name = c.choice(
                (
                    "PUSH_LV",
                    "PUSH_GV",
                    "POP_LV",
                    "POP_GV",
                    "MOVE_LV",
                    "MOVE_GV",
                    "INC_LV",
                    "INC_GV",
                    "DEC_LV",
                    "DEC_GV",
                )
            )
            if name.startswith("POP"):
                return [push(index), push(self.word()), self.insn(name)]
            if name.startswith("MOVE"):
                return [push(self.word()), push(index), self.insn(name)]
            return [push(index), self.insn(name)]
        if kind == 6:  # wide registers
            name = c.choice(("PUSH_R", "PUSH_U"))
            return [
                push(c.choice((0, 1, 0x10, 0x1B, 0x80000000))),
                IRInstruction(OPS_BY_NAME[name], self.operand(OPS_BY_NAME[name], []), LOC),
            ]
        if kind == 7:  # verify, segments, IO
            name = c.choice(
                (
                    "VFY_R",
                    "VFY_RW",
                    "SEG2LIN",
                    "PUSH_IO_U8",
                    "PUSH_IO_U16",
                    "PUSH_IO_U32",
                    "POP_IO_U16",
                )
            )
            if name == "SEG2LIN":
                return [
                    push(c.choice((0x10, 0x18, 0x23, 0x2B, 0))),
                    push(self.word()),
                    self.insn(name),
                ]
            if name.startswith("POP_IO"):
                return [push(c.choice((0x60, 0x3F8, 0x1FFFF))), push(self.word()), self.insn(name)]
            return [
                push(
                    self.word()
                    if name.startswith("VFY")
                    else c.choice((0x60, 0x3F8, 0xFFFF, 0x10060))
                ),
                self.insn(name),
            ]
        if kind == 8:  # ids and lengths
            return [
                push(self.word()),
                self.insn(c.choice(("SETMIN", "SETMAJ", "POP_LP", "POP_STP"))),
                self.insn(
                    c.choice(("PUSH_LP", "PUSH_PLP", "PUSH_STP", "LOG_ST", "PURGE_ST", "PUSH_X"))
                ),
            ]
        return [
            push(c.choice((0, 1, 2, 3, 4, 5, 8))),
            self.insn(c.choice(("ROS", "DUP_I")), c.integer(0, 4)),
            self.insn(c.choice(("XCHG", "NEG", "ADD", "AND", "OR", "XOR", "CALLK"))),
        ]

    def block(self, length: int, subs: list[str], handlers: list[str]) -> _Body:
        body = _Body()
        for _ in range(length):
            if self.c.boolean(15):
                name = self.label()
                body.labels.append(name)
                body.items.append(IRLabel(name, LOC))
            body.items.extend(self.snippet(body, subs, handlers))
        return body

    def terminator(self) -> IRInstruction:
        c = self.c
        kind = c.integer(0, 9)
        if kind <= 5:
            return self.insn("EXIT")
        if kind == 6:
            return self.insn("ABORT")
        if kind == 7:
            return self.insn("REM")
        return self.insn("EXIT_N", c.integer(0, 4))

    def probe_body(self) -> list:
        c = self.c
        subs = [self.label() for _ in range(c.integer(0, 2))]
        handlers = [self.label() for _ in range(c.integer(0, 2))]
        tail = self.label()
        main = self.block(c.integer(0, self.max_length), subs, handlers)
        prologue = [self.insn("SX", handlers[0])] if handlers and c.boolean(50) else []
        ending = self.block(c.integer(0, 3), [], [])
        items = [*prologue, *main.items, IRLabel(tail, LOC), *ending.items, self.terminator()]
        main.labels.append(tail)
        for name in subs:  # subroutines: body, then ret (or something that leaves)
            inner = self.block(c.integer(0, 5), subs, handlers)
            items += [
                IRLabel(name, LOC),
                *inner.items,
                self.insn("RET") if c.boolean(85) else self.terminator(),
            ]
        for name in handlers:  # handlers: drop or keep the exception words, then leave
            inner = self.block(c.integer(0, 4), subs, handlers)
            if c.boolean(60):  # carry on after the faulting part (re-armed or not) in the tail
                rearm = [self.insn("SX", name)] if c.boolean(25) else []
                items += [
                    IRLabel(name, LOC),
                    self.insn("ROS", c.choice((0, 3))),
                    *inner.items,
                    *rearm,
                    self.insn("JMP", tail),
                ]
                continue
            end = c.choice(
                (
                    self.terminator(),
                    self.insn("RET"),
                    self.insn("JMP", c.choice(main.labels)) if main.labels else self.insn("EXIT"),
                )
            )
            items += [IRLabel(name, LOC), *inner.items, end]
        # dangling labels (a label right before the terminator is fine: it labels it)
        return items


_ALL_OPS = TABLE
_CALM = tuple(
    op
    for op in TABLE
    if OpFlag.RESERVED not in op.flags
    and not op.is_exit
    and op.name not in ("RET", "RX", "CALL", "CALLK", "LOG_ST")
)


def program(c: Chooser, addresses: list[int], max_length: int = 24) -> Program:
    gen = ProgramGenerator(c, addresses, max_length)
    fields = LogField.NONE
    for flag in (
        LogField.PID,
        LogField.UID,
        LogField.CSEIP,
        LogField.SSESP,
        LogField.TSC,
        LogField.PROCNAME,
    ):
        if c.boolean(15):
            fields |= flag
    header = ProgramHeader(
        name=c.choice(("t", "conformance", "/usr/bin/a-rather-long-program-name-here")),
        modtype=ModuleType.USER,
        major=c.integer(0, 0xFFFF),
        id=c.choice((0, 7, 0xFFFF)),
        jmpmax=c.choice((0, 1, 3, 10, 40, 200)),
        logmax=c.choice((0, 1, 3, 4, 7, 8, 16, 40, 100, 1024)),
        ex_logmax=c.choice((0, 12, 13, 20, 40, 64, 100, 300, 1024)),
        num_lv=c.integer(0, 6),
        num_gv=c.integer(0, 6),
        autostacktrace=c.boolean(35),
        log_fields=fields,
    )
    probes = []
    for index in range(c.integer(1, 3)):
        record = Probe(
            kind=ProbeKind.BREAKPOINT,
            offset=index * 16,
            code_start=0,
            code_end=0,
            major=c.integer(0, 0xFFFF),
            minor=c.integer(0, 0xFFFF),
            ex_mask=c.choice((0x0FFF, 0x0FFF, 0, 0x1FFF, 0xFFFF, 0x0041, c.integer(0, 0xFFFF))),
            heap_size=c.choice((0, 0, 40, 41, 60, 100, 200)),
        )
        probes.append(IRProbe(record, gen.probe_body()))
    ir = IRProgram(header, probes)
    sink = DiagnosticSink()
    assembled = assemble(ir, sink)
    assert assembled is not None, [d.message for d in sink.diagnostics]
    assert verify(assembled, sink), [d.message for d in sink.diagnostics if d]
    return assembled


@dataclass
class StartState:
    stack: list[int] | None  # None: a fresh CPU (zeros)
    ex_code: int
    lv: list[int]
    gv: list[int]


def start_state(c: Chooser, prog: Program) -> StartState:
    stack = None
    if c.boolean(40):
        fill = c.choice((0, 1, 0xFFFFFFFF, 0x80000000, 5))
        seed = c.integer(0, 2**31)
        rng = random.Random(seed)
        stack = [rng.choice((fill, rng.getrandbits(32), rng.randint(0, 40))) for _ in range(1024)]

    def words(n: int) -> list[int]:
        return [c.choice((0, 1, 2, MASK32, c.integer(0, MASK32))) for _ in range(n)]

    return StartState(
        stack,
        c.choice((0, 0x40, 0x8001, 0x1000)),
        words(prog.header.num_lv),
        words(prog.header.num_gv),
    )


# --- running both tiers -------------------------------------------------------------------
class Runaway(Exception):
    """The interpreter ran past the step budget: the program is discarded."""


@dataclass
class Tier:
    vm: VM
    context: MemoryContext


def make_tier(
    prog: Program,
    tier: str,
    spec: ContextSpec,
    start: StartState,
    native_context: bool = True,
    subclass: bool = False,
) -> Tier:
    cpu = CpuState()
    if start.stack is not None:
        cpu.stack[:] = start.stack
    cpu.ex_code = start.ex_code
    vm = VM(prog, tier=tier, cpu=cpu, globals=GlobalVariables(), native_context=native_context)
    vm.locals[:] = start.lv
    vm.globals.values[:] = start.gv
    return Tier(vm, spec.build(subclass))


def fire_interp(t: Tier, probe: int, budget: int):
    steps = 0

    def tick(machine: object, offset: int) -> None:
        nonlocal steps
        steps += 1
        if steps > budget:
            raise Runaway()

    return t.vm.fire(probe, t.context, trace=tick)


def observable(t: Tier) -> dict:
    ctx = t.context
    return {
        "stack": list(t.vm.cpu.stack),
        "ex_code": t.vm.cpu.ex_code,
        "lv": list(t.vm.locals),
        "gv": list(t.vm.globals.values),
        "memory": [(start, bytes(data)) for start, data in ctx.regions],
        "regs": dict(ctx.regs),
        "user_regs": dict(ctx.user_regs),
        "io_writes": list(ctx.io_writes),
        "ports": dict(ctx.ports),
        "callk_calls": ctx.callk_calls,
    }


def differences(a, b, prefix: str = "") -> list[str]:
    out = []
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            out += differences(a.get(key), b.get(key), f"{prefix}{key}.")
    elif a != b:
        if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            bad = [i for i in range(len(a)) if a[i] != b[i]]
            out.append(
                f"{prefix[:-1]}: {len(bad)} differ, first at {bad[0]}: "
                f"{a[bad[0]]!r} != {b[bad[0]]!r}"
            )
        else:
            out.append(f"{prefix[:-1]}: {a!r} != {b!r}")
    return out


def result_dict(result) -> dict:
    return {
        "exit": result.exit,
        "exit_to": result.exit_to,
        "exception": result.exception,
        "log": result.log.hex(),
        "ex_log": result.ex_log.hex(),
        "major": result.major,
        "minor": result.minor,
        "jumps": result.jumps,
        "stack": list(result.stack),
        "log_overflow": result.log_overflow,
    }


def compare_tiers(
    prog: Program,
    spec: ContextSpec,
    start: StartState,
    fires: list[int],
    native_context: bool = True,
    subclass: bool = False,
    budget: int = 3000,
) -> list[str]:
    """Fire ``fires`` on both tiers; raise Runaway if the interpreter does not finish."""
    interp = make_tier(prog, "interp", spec, start)
    jit = make_tier(prog, "jit", spec, start, native_context, subclass)
    problems: list[str] = []
    for n, probe in enumerate(fires):
        expected = fire_interp(interp, probe, budget)
        got = jit.vm.fire(probe, jit.context)
        problems += [
            f"fire {n} (probe {probe}) result.{d}"
            for d in differences(result_dict(expected), result_dict(got))
        ]
        problems += [
            f"fire {n} (probe {probe}) state.{d}"
            for d in differences(observable(interp), observable(jit))
        ]
        if problems:
            break
    return problems


def region_addresses(spec: ContextSpec) -> list[int]:
    out = []
    for start, data in spec.memory.items():
        out += [start, (start + len(data)) & MASK32, (start + len(data) - 4) & MASK32]
    return out
