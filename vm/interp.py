"""The reference interpreter: DProbes 5.0 RPN semantics, written to be read.

A program is decoded once into a list of ``(semantic, argument, next_index)`` entries
(Python's version of a jump table: the semantic functions live in ``vm.ops``, one per
opcode of the instruction table). ``Machine`` holds one hit's interpreter state (the
per-CPU ``dprobes_struct`` of 5.0); each semantic function returns the index of the next
entry, or STOP. Exceptions are raised and dispatched here, in one place, so both the
interpreter and the JIT (which calls the same rules) agree on masks, one-shot handlers
and unwinding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

from dprobes.vm import stacktrace
from dprobes.vm.context import Context
from dprobes.vm.exceptions import NO_HANDLER, NON_MASKABLE
from dprobes.vm.exceptions import ExceptionCode as Ex
from dprobes.vm.heap import ProbeHeap
from dprobes.vm.model import DISPATCH_LIMIT, MIN_ST_SIZE, STACK_MASK, STACK_SIZE, WORD_MASK
from dprobes.vm.program import Program

ABOVE: Final = tuple((slot - 1) & STACK_MASK for slot in range(STACK_SIZE))
"""ABOVE[slot]: the slot a push onto ``slot`` fills (the circular stack grows down)."""
BELOW: Final = tuple((slot + 1) & STACK_MASK for slot in range(STACK_SIZE))
"""BELOW[slot]: the slot under ``slot``, TOS after a pop. Both tables are the wrap-around
``& STACK_MASK`` precomputed: in CPython a tuple lookup costs far less than the
arithmetic (no new int objects), and every push and pop takes one."""
STOP: Final = -1


class ExitKind(Enum):
    """How a handler ended."""

    EXIT = "exit"
    EXIT_TO = "exit_to"
    REM = "rem"
    ABORT = "abort"
    TERMINATED = "terminated"  # by an unhandled exception or an invalid pbl/pbr index


@dataclass(frozen=True, slots=True)
class RaisedException:
    """Code and parameters of an RPN exception."""

    code: int
    parm1: int
    parm2: int


class CpuState:
    """What 5.0 kept per CPU across hits: the RPN stack and the last exception code."""

    __slots__ = ("ex_code", "stack")

    def __init__(self) -> None:
        self.stack = [0] * STACK_SIZE
        self.ex_code = 0


class Frame:
    """A 10-word call frame: saved SBP, traced ranges, handler, called and return offsets."""

    __slots__ = ("called", "gv_range", "handler", "lv_range", "pv_range", "returns", "sbp")

    def __init__(self, sbp: int, called: int = 0, returns: int = 0) -> None:
        self.sbp = sbp
        self.gv_range = (0, 0)  # (count, first index), as trace gv left them
        self.lv_range = (0, 0)
        self.pv_range = (0, 0)
        self.handler = NO_HANDLER
        self.called = called
        self.returns = returns


NO_HEAP = ProbeHeap(0)
"""Shared by probes without a heap: it has no blocks, so nothing can change it."""

OpFunction = Callable[["Machine", Any, int], int]
Entry = tuple[OpFunction, Any, int]


class Machine:
    """One hit's interpreter state; the semantic functions in ``vm.ops`` operate on it."""

    __slots__ = (
        "autostacktrace",
        "cpu",
        "ctx",
        "dispatches",
        "entries",
        "ex_hand",
        "ex_len",
        "ex_log",
        "ex_logmax",
        "ex_mask",
        "ex_parm1",
        "ex_parm2",
        "ex_pending",
        "exception",
        "exit_kind",
        "exit_to",
        "frames",
        "gv",
        "heap",
        "index_of",
        "jmp_count",
        "jmpmax",
        "log",
        "log_cap",
        "log_len",
        "log_overflow",
        "lv",
        "major",
        "minor",
        "prev_log_len",
        "probe",
        "program",
        "sbp",
        "st_count_at",
        "stack",
        "tos",
    )

    def __init__(
        self,
        program: Program,
        probe_index: int,
        decoded: DecodedProgram,
        cpu: CpuState,
        lv: list[int],
        gv: list[int],
        ctx: Context,
        header_length: int,
    ) -> None:
        header = program.header
        probe = program.probes[probe_index]
        self.program, self.probe, self.ctx, self.cpu = program, probe, ctx, cpu
        self.entries, self.index_of = decoded.entries, decoded.index_of
        self.stack = cpu.stack
        self.tos = self.sbp = 0
        self.frames = [Frame(0)]
        self.jmp_count, self.jmpmax = 0, header.jmpmax
        self.dispatches = 0
        self.log_cap = header_length + header.logmax
        self.log = bytearray(self.log_cap)
        self.log_len = self.prev_log_len = header_length
        self.log_overflow = False
        self.ex_logmax = header.ex_logmax
        self.ex_log = bytearray(max(header.ex_logmax, MIN_ST_SIZE))
        self.ex_len = MIN_ST_SIZE
        self.st_count_at: int | None = None
        self.ex_mask, self.autostacktrace = probe.ex_mask, header.autostacktrace
        self.ex_pending = False
        self.ex_hand = NO_HANDLER
        self.ex_parm1 = self.ex_parm2 = 0
        self.major, self.minor = probe.major, probe.minor
        self.lv, self.gv = lv, gv
        self.heap = ProbeHeap(probe.heap_size) if probe.heap_size else NO_HEAP
        self.exit_kind: ExitKind | None = None
        self.exit_to: int | None = None
        self.exception: RaisedException | None = None

    # --- stack -------------------------------------------------------------------
    def push(self, value: int) -> None:
        tos = ABOVE[self.tos]
        self.stack[tos] = value & WORD_MASK
        self.tos = tos

    def pop(self) -> int:
        tos = self.tos
        self.tos = BELOW[tos]
        return self.stack[tos]

    def peek(self, depth: int = 0) -> int:
        return self.stack[(self.tos + depth) & STACK_MASK]

    # --- ending ------------------------------------------------------------------
    def finish(self, kind: ExitKind, exception: RaisedException | None = None) -> int:
        """Stop the handler; only the first reason counts."""
        if self.exit_kind is None:
            self.exit_kind, self.exception = kind, exception
        return STOP

    # --- exceptions --------------------------------------------------------------
    def raise_exception(self, code: int, parm1: int, parm2: int, nxt: int) -> int:
        """An exception detected by an instruction (5.0 ``gen_ex``); returns the next entry.

        In the probe's mask: push parm2, parm1, code and dispatch. Out of the mask but one
        of the low twelve codes: end the handler (the log is still written). Otherwise
        (e.g. EX_LOG_OVERFLOW under the default mask): ignore it and carry on. Codes and
        parameters are kept as plain ints (not enum members), as the compiled build and
        the JIT keep them.
        """
        code, parm1, parm2 = int(code), int(parm1), int(parm2)
        if code & self.ex_mask:
            self.cpu.ex_code, self.ex_parm1, self.ex_parm2 = code, parm1, parm2
            self.push(parm2)
            self.push(parm1)
            self.push(code)
            return self._raise_pending()
        if code & NON_MASKABLE:
            self.ex_hand = self.frames[-1].handler
            if self.autostacktrace:
                stacktrace.log_stack_trace(self)
            return self.finish(ExitKind.TERMINATED, RaisedException(code, parm1, parm2))
        return nxt

    def raise_user_exception(self) -> int:
        """``rx``: code, parm1, parm2 from the top three words, not popped, not masked."""
        self.cpu.ex_code, self.ex_parm1, self.ex_parm2 = self.peek(0), self.peek(1), self.peek(2)
        return self._raise_pending()

    def _raise_pending(self) -> int:
        self.ex_pending = True
        self.ex_hand = self.frames[-1].handler
        if self.autostacktrace and not stacktrace.log_stack_trace(self):
            return self.finish(ExitKind.TERMINATED, self.pending_exception())
        return self.dispatch()

    def pending_exception(self) -> RaisedException:
        return RaisedException(self.cpu.ex_code, self.ex_parm1, self.ex_parm2)

    def dispatch(self) -> int:
        """Jump to the current frame's handler (one-shot), else unwind a frame and retry."""
        frames = self.frames
        while True:
            if len(frames) == 1 and frames[0].handler == NO_HANDLER:
                return self.finish(ExitKind.TERMINATED, self.pending_exception())
            if self.ex_hand != NO_HANDLER:
                self.dispatches += 1
                if self.dispatches > DISPATCH_LIMIT:  # a handler re-arming itself forever
                    return self.finish(
                        ExitKind.TERMINATED, RaisedException(int(Ex.MAX_JMPS), self.jmpmax, 0)
                    )
                self.ex_pending = False
                frames[-1].handler = NO_HANDLER
                return self.index_of[self.ex_hand]
            self.sbp = frames.pop().sbp
            self.ex_hand = frames[-1].handler

    # --- results -------------------------------------------------------------------
    def stack_words(self) -> list[int]:
        """Words between the entry TOS (slot 0) and the final TOS, bottom first."""
        depth = -self.tos & STACK_MASK
        return [self.stack[(STACK_SIZE - 1 - i) & STACK_MASK] for i in range(depth)]

    def log_data(self, header_length: int) -> bytes:
        """The log bytes after the record header, as the host writes them."""
        return bytes(self.log[header_length : min(self.log_len, self.log_cap)])

    def exception_log(self) -> bytes:
        return bytes(self.ex_log[MIN_ST_SIZE : min(self.ex_len, self.ex_logmax)])


@dataclass(frozen=True, slots=True)
class DecodedProgram:
    """A program decoded once: dispatch entries, offset -> entry index, probe entry points."""

    entries: tuple[Entry, ...]
    index_of: dict[int, int]
    entry_points: tuple[int, ...]
    offsets: tuple[int, ...]


def decode_program(program: Program) -> DecodedProgram:
    """Turn every probe's handler into dispatch entries (the program must be verified)."""
    from dprobes.vm.ops import build_argument, semantic_for

    instructions = [
        insn for index in range(len(program.probes)) for insn in program.instructions(index)
    ]
    index_of = {insn.offset: i for i, insn in enumerate(instructions)}
    entries = tuple(
        (semantic_for(insn.op), build_argument(insn, index_of), i + 1)
        for i, insn in enumerate(instructions)
    )
    entry_points = tuple(index_of[p.code_start] for p in program.probes)
    offsets = tuple(insn.offset for insn in instructions)
    return DecodedProgram(entries, index_of, entry_points, offsets)


def run(machine: Machine, pc: int) -> None:
    """The dispatch loop."""
    entries = machine.entries
    while pc >= 0:
        semantic, argument, nxt = entries[pc]
        pc = semantic(machine, argument, nxt)


def run_traced(
    machine: Machine, pc: int, offsets: tuple[int, ...], trace: Callable[[Machine, int], None]
) -> None:
    """The dispatch loop with a hook called with each instruction's code offset first."""
    entries = machine.entries
    while pc >= 0:
        trace(machine, offsets[pc])
        semantic, argument, nxt = entries[pc]
        pc = semantic(machine, argument, nxt)
