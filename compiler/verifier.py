"""Verifier pass: prove what can be proven before a program may run.

For every probe: its code decodes into whole instructions; every branch, call and
exception-handler target is an instruction boundary inside the same probe; register
operands are ones the instruction can take; and every path from the entry ends in an
exit-class instruction (``exit``, ``exit_to``, ``rem``, ``abort``, or control leaving by
``ret``/``jmp``/``rx``) instead of running off the end of the probe's code. The VM relies
on these facts and does not check them again. Unreachable instructions get a warning.
"""

from __future__ import annotations

from collections.abc import Callable

from dprobes.compiler.diagnostics import ByteLoc, DiagnosticSink, Location, SourceLoc
from dprobes.vm.bytecode import DecodeError, Instruction
from dprobes.vm.isa import Operand, OpFlag
from dprobes.vm.program import Program
from dprobes.vm.registers import REGISTERS_BY_INDEX


def _locator(program: Program, file: str) -> Callable[[int], Location]:
    by_offset = {entry.offset: entry for entry in program.source_map}

    def locate(offset: int) -> Location:
        entry = by_offset.get(offset)
        if entry is None:
            return ByteLoc(file, offset)
        return SourceLoc(entry.file, entry.line, entry.column)

    return locate


def _check_register(insn: Instruction, locate, sink: DiagnosticSink) -> None:
    rule = insn.op.register_rule
    if rule is None:
        return
    reg = REGISTERS_BY_INDEX.get(insn.operand or 0)
    if reg is None or not rule.accepts(reg):
        shown = reg.name if reg else f"register index 0x{insn.operand:x}"
        sink.error(
            locate(insn.offset), f"'{insn.op.mnemonic} {insn.op.qualifier}' cannot take {shown}"
        )


def _successors(insn: Instruction) -> list[int]:
    op = insn.op
    following: list[int] = []
    if insn.falls_through:  # exit_to with a bad facility raises EX_INVALID_OPERAND: no fall
        following.append(insn.end)
    if op.operand is Operand.REL32 and (OpFlag.BRANCH in op.flags or OpFlag.HANDLER in op.flags):
        assert insn.target is not None
        following.append(insn.target)
    return following


def verify_probe(
    program: Program, index: int, sink: DiagnosticSink, locate: Callable[[int], Location]
) -> None:
    probe = program.probes[index]
    try:
        instructions = program.instructions(index)
    except DecodeError as error:
        sink.error(locate(error.offset), f"probe {index}: {error.reason}")
        return
    at = {insn.offset: insn for insn in instructions}
    for insn in instructions:
        _check_register(insn, locate, sink)
        target = insn.target
        if target is not None and target not in at:
            where = (
                "inside an instruction"
                if probe.code_start <= target < probe.code_end
                else "outside the probe's code"
            )
            sink.error(
                locate(insn.offset),
                f"probe {index}: {insn.op.mnemonic} target offset {target} is {where}",
            )
    if not sink.ok:
        return
    seen: set[int] = set()
    pending = [probe.code_start]
    while pending:
        offset = pending.pop()
        if offset in seen:
            continue
        seen.add(offset)
        insn = at[offset]
        for following in _successors(insn):
            if following == probe.code_end:
                sink.error(
                    locate(offset),
                    f"probe {index}: control can run off the end of the "
                    f"handler after '{insn.op.syntax}'",
                    "end every path with exit, exit_to, rem, abort, jmp or ret",
                )
            else:
                pending.append(following)
    unreachable = [insn for insn in instructions if insn.offset not in seen]
    if unreachable:
        sink.warning(
            locate(unreachable[0].offset),
            f"probe {index}: {len(unreachable)} unreachable instruction(s)",
        )


def verify(program: Program, sink: DiagnosticSink, file: str = "<program>") -> bool:
    """Check every probe; True when the program may run."""
    locate = _locator(program, file)
    for index in range(len(program.probes)):
        verify_probe(program, index, sink, locate)
    return sink.ok
