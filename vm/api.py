"""The embeddable API: load a verified program, fire its probes against a host context.

    vm = VM(program)
    result = vm.fire(0, MemoryContext(regs={"eax": 5}))
    result.exit, result.log, result.stack

State that DProbes kept between hits lives here too: the program's local variables, the
system-wide global variables (pass one GlobalVariables to several VMs to share them) and
the per-CPU RPN stack (one CpuState per emulated CPU; pass the same one to several VMs on
the same CPU, as 5.0 shared its per-CPU stack between programs).
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

    @property
    def emits_log(self) -> bool:
        """Every end but ``abort`` writes the log record."""
        return self.exit is not ExitKind.ABORT


class VM:
    """One loaded program: decoded once, fired many times."""

    def __init__(
        self,
        program: Program,
        *,
        globals: GlobalVariables | None = None,
        cpu: CpuState | None = None,
    ) -> None:
        self.program = program
        self.decoded = decode_program(program)
        self.locals: list[int] = [0] * program.header.num_lv
        self.globals = globals if globals is not None else GlobalVariables()
        self.globals.reserve(program.header.num_gv)
        self.cpu = cpu if cpu is not None else CpuState()
        self.header_length = header_length(program.header.log_fields)

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
        machine = Machine(self.program, probe, self.decoded, self.cpu, self.locals,
                          self.globals.values, context, self.header_length)
        entry = self.decoded.entry_points[probe]
        if trace is None:
            run(machine, entry)
        else:
            run_traced(machine, entry, self.decoded.offsets, trace)
        assert machine.exit_kind is not None
        aborted = machine.exit_kind is ExitKind.ABORT
        return FireResult(
            exit=machine.exit_kind,
            exit_to=machine.exit_to,
            exception=machine.exception,
            log=b"" if aborted else machine.log_data(self.header_length),
            ex_log=b"" if aborted else machine.exception_log(),
            major=machine.major,
            minor=machine.minor,
            jumps=machine.jmp_count,
            stack=tuple(machine.stack_words()),
            log_overflow=machine.log_overflow,
        )
