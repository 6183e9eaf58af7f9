"""Assembler pass: lay the IR out into one code blob, resolve labels, build the source map.

Reads an IRProgram (from a front end), produces a Program whose probe records carry
their code ranges. Reports undefined labels, jumps whose target belongs to another probe
and code longer than DProbes' u16 ``rpn_length``.
"""

from __future__ import annotations

from dataclasses import replace

from dprobes.compiler.diagnostics import DiagnosticSink, SourceLoc, did_you_mean
from dprobes.compiler.ir import IRInstruction, IRLabel, IRProgram
from dprobes.vm.bytecode import encode
from dprobes.vm.isa import Operand
from dprobes.vm.program import Program, SourceLine

MAX_CODE_SIZE = 0xFFFF


def _layout(ir: IRProgram, sink: DiagnosticSink) -> dict[str, tuple[int, int, SourceLoc]]:
    """Label name -> (code offset, probe index, where it was defined)."""
    labels: dict[str, tuple[int, int, SourceLoc]] = {}
    offset = 0
    for index, probe in enumerate(ir.probes):
        for item in probe.body:
            if isinstance(item, IRLabel):
                if item.name in labels:
                    first = labels[item.name][2]
                    sink.error(
                        item.loc,
                        f"label '{item.name}' is defined twice",
                        f"first defined at {first}",
                    )
                else:
                    labels[item.name] = (offset, index, item.loc)
            else:
                offset += item.op.size
    return labels


def _resolve(
    insn: IRInstruction,
    end: int,
    probe: int,
    labels: dict[str, tuple[int, int, SourceLoc]],
    sink: DiagnosticSink,
) -> int | None:
    name = insn.operand
    assert isinstance(name, str)
    if name not in labels:
        sink.error(insn.loc, f"undefined label '{name}'", *did_you_mean(name, labels))
        return None
    target, owner, where = labels[name]
    if owner != probe:
        sink.error(
            insn.loc,
            f"'{insn.op.mnemonic} {name}' jumps into the code of probe {owner}",
            f"'{name}' is defined at {where}; a handler must stay in its own code",
        )
        return None
    return target - end


def assemble(ir: IRProgram, sink: DiagnosticSink) -> Program | None:
    """IR -> Program, or None after reporting errors."""
    labels = _layout(ir, sink)
    code = bytearray()
    source_map: list[SourceLine] = []
    probes = []
    for index, probe in enumerate(ir.probes):
        start = len(code)
        for item in probe.body:
            if isinstance(item, IRLabel):
                continue
            operand = item.operand
            if item.op.operand is Operand.REL32:
                operand = _resolve(item, len(code) + item.op.size, index, labels, sink)
                if operand is None:
                    operand = 0
            assert not isinstance(operand, str)
            if len(code) + item.op.size > MAX_CODE_SIZE and len(code) <= MAX_CODE_SIZE:
                sink.error(
                    item.loc,
                    f"program code exceeds {MAX_CODE_SIZE} bytes (DProbes' rpn_length is 16 bits)",
                )
            source_map.append(SourceLine(len(code), item.loc.file, item.loc.line, item.loc.column))
            code += encode(item.op, operand)
        probes.append(replace(probe.record, code_start=start, code_end=len(code)))
    if not sink.ok:
        return None
    return Program(
        header=ir.header,
        probes=tuple(probes),
        code=bytes(code),
        source_map=tuple(source_map),
        labels=tuple(sorted((offset, name) for name, (offset, _, _) in labels.items())),
        formats=tuple(ir.formats),
    )
