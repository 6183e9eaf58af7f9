"""The embeddable API: load a verified program, fire its probes against a host context.

    vm = VM(program)
    result = vm.fire(0, MemoryContext(regs={"eax": 5}))
    result.exit, result.log, result.stack

State that DProbes kept between hits lives here too: the program's local variables, the
system-wide global variables (pass one GlobalVariables to several VMs to share them) and
the per-CPU RPN stack (one CpuState per emulated CPU; pass the same one to several VMs on
the same CPU, as 5.0 shared its per-CPU stack between programs).

Two tiers run a handler with the same semantics: the interpreter (``tier="interp"``, the
default and the reference) and native code from the LLVM JIT (``tier="jit"``: every
handler is compiled when the VM is made; ``tier="auto"``: a handler runs in the
interpreter until it has fired ``hot_threshold`` times, then it is compiled). Compiled
code is shared by every handler with the same bytes, in the process and, through the
JIT's object cache, between processes; ``vm.compile_seconds`` maps each compiled probe to
the time its code took to compile or to load from the cache. Without llvmlite, ``tier="jit"``
raises ``JitUnavailable`` and ``auto`` stays in the interpreter.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from dprobes.vm.context import Context
from dprobes.vm.interp import (
    CpuState,
    ExitKind,
    Machine,
    RaisedException,
    decode_program,
    run,
    run_traced,
)
from dprobes.vm.logrecord import header_length
from dprobes.vm.program import Program

TIERS = ("interp", "jit", "auto")
DEFAULT_HOT_THRESHOLD = 50


class GlobalVariables:
    """The system-wide global-variable array; it grows to the largest ``num_gv`` asked for."""

    def __init__(self, count: int = 0) -> None:
        self.values: list[int] = [0] * count

    def reserve(self, count: int) -> None:
        if count > len(self.values):
            self.values.extend([0] * (count - len(self.values)))


class FireResult(NamedTuple):
    """What one probe hit produced."""

    exit: ExitKind
    exit_to: int | None  # facility number for ExitKind.EXIT_TO
    exception: RaisedException | None  # the exception that ended the handler
    log: bytes  # log data after the record header; empty when the handler aborted
    ex_log: bytes  # exception buffer (stack traces); empty when the handler aborted
    major: int
    minor: int
    jumps: int
    stack: tuple[int, ...]  # words between the entry TOS and the final TOS, bottom first
    log_overflow: bool  # a log mrf was truncated to fit


def writes_log(kind: ExitKind) -> bool:
    """Every end but ``abort`` writes the log record and the exception buffer."""
    return kind is not ExitKind.ABORT


def build_result(hit, header_length: int) -> FireResult:
    """The FireResult of a finished hit; ``hit`` is the interpreter's Machine or the JIT's
    NativeHit (same attributes: exit_kind, exit_to, exception, major, minor, jmp_count,
    log_overflow, log_data(), exception_log(), stack_words())."""
    written = writes_log(hit.exit_kind)
    return FireResult(
        exit=hit.exit_kind,
        exit_to=hit.exit_to,
        exception=hit.exception,
        log=hit.log_data(header_length) if written else b"",
        ex_log=hit.exception_log() if written else b"",
        major=hit.major,
        minor=hit.minor,
        jumps=hit.jmp_count & 0xFFFF,  # 5.0's jump counter is 16 bits wide
        stack=tuple(hit.stack_words()),
        log_overflow=hit.log_overflow,
    )


class VM:
    """One loaded program: decoded once, fired many times."""

    def __init__(
        self,
        program: Program,
        *,
        globals: GlobalVariables | None = None,
        cpu: CpuState | None = None,
        tier: str = "interp",
        hot_threshold: int = DEFAULT_HOT_THRESHOLD,
        native_context: bool = True,
    ) -> None:
        if tier not in TIERS:
            raise ValueError(f"tier must be one of {', '.join(TIERS)}, not {tier!r}")
        self.program = program
        self.decoded = decode_program(program)
        self.locals: list[int] = [0] * program.header.num_lv
        self.globals = globals if globals is not None else GlobalVariables()
        self.globals.reserve(program.header.num_gv)
        self.cpu = cpu if cpu is not None else CpuState()
        self.header_length = header_length(program.header.log_fields)
        self.tier = tier
        self.hot_threshold = hot_threshold
        self.native_context = native_context  # JIT: serve a MemoryContext natively
        self.fire_counts = [0] * len(program.probes)
        self.compile_seconds: dict[int, float] = {}
        self._compiled: dict = {}  # probe -> vm.jit CompiledHandler
        self._runner = None  # vm.jit JitRunner, made with the first compiled handler
        if tier == "jit":
            self.compile(range(len(program.probes)))

    def compile(self, probes) -> None:
        """Compile these probes' handlers now (one LLVM module); tier "jit" does all."""
        from dprobes.vm.jit import JitRunner, compile_handlers

        wanted = [p for p in probes if p not in self._compiled]
        if not wanted:
            return
        if self._runner is None:
            self._runner = JitRunner(self)
        for probe, handler in compile_handlers(self.program, wanted).items():
            self._compiled[probe] = handler
            self.compile_seconds[probe] = handler.compile_seconds

    def compiled(self, probe: int):
        """The compiled handler of ``probe`` (a ``vm.jit`` CompiledHandler), if any yet."""
        return self._compiled.get(probe)

    @property
    def runner(self):
        """The ``vm.jit`` JitRunner holding the native state, once anything is compiled."""
        return self._runner

    def _native(self, probe: int):
        """The compiled handler to use for this hit, or None for the interpreter."""
        handler = self._compiled.get(probe)
        if handler is None and self.tier == "auto":
            if self.fire_counts[probe] < self.hot_threshold:
                self.fire_counts[probe] += 1
                return None
            from dprobes.vm.jit import JitError

            try:
                self.compile([probe])
            except JitError:  # no llvmlite, or a program the JIT cannot hold: interpret
                self.tier = "interp"
                return None
            handler = self._compiled[probe]
        return handler

    def fire(
        self,
        probe: int,
        context: Context,
        *,
        trace: Callable[[Machine, int], None] | None = None,
    ) -> FireResult:
        """Run probe ``probe``'s handler once against ``context``.

        ``trace``, if given, is called with the machine and the code offset before every
        instruction (a debugging aid; it slows the interpreter down).
        """
        if not 0 <= probe < len(self.program.probes):
            raise IndexError(f"probe {probe} out of range 0..{len(self.program.probes) - 1}")
        if self.tier != "interp" and trace is None:
            handler = self._native(probe)
            if handler is not None:
                return build_result(self._runner.run(probe, handler, context), self.header_length)
        machine = Machine(
            self.program,
            probe,
            self.decoded,
            self.cpu,
            self.locals,
            self.globals.values,
            context,
            self.header_length,
        )
        entry = self.decoded.entry_points[probe]
        if trace is None:
            run(machine, entry)
        else:
            run_traced(machine, entry, self.decoded.offsets, trace)
        assert machine.exit_kind is not None
        return build_result(machine, self.header_length)
