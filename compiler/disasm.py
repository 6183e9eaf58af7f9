"""The disassembler: a program's RPN code as a listing, and the opcode help text.

``disassemble`` prints, for each probe, a header line with its record, then one line per
instruction: code offset, raw bytes, and the instruction written as the assembler reads it
(``push r, eax``, ``push lv, 3``, ``jmp loop_top``), with the source line from the source
map as a trailing comment. Branch targets get their name from ``program.labels`` or a
generated ``L_<offset>``; every label is printed on its own line before its target. Bytes
that do not decode become ``.byte 0x..`` lines, so a broken program still lists.

Everything about instructions comes from the instruction table (``vm.isa``) through the
decoder (``vm.bytecode``); the only per-kind code here formats an operand of each
``Operand`` kind. ``describe_opcodes`` is the help text of ``dpc disasm --help-opcodes``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from enum import Enum

from dprobes.vm import isa
from dprobes.vm.bytecode import DecodeError, Instruction, decode_one
from dprobes.vm.isa import TABLE, Operand, OpFlag, OpInfo
from dprobes.vm.program import (
    LogField,
    LogTarget,
    Probe,
    ProbeKind,
    Program,
    ProgramHeader,
    WatchType,
)
from dprobes.vm.registers import REGISTERS_BY_INDEX

WATCH_TYPE_SPELLING = {
    WatchType.EXECUTE: "x",
    WatchType.WRITE: "w",
    WatchType.READWRITE: "rw",
    WatchType.IO: "io",
}
"""``watch_type`` values as the RPN source writes them."""

_HEX_FIELDS = frozenset({"offset", "opcode", "ex_mask", "id"})
_KEYWORDS = {"watch_length": "length", "absolute": "address", "log_fields": "log"}
"""Model field names that the RPN source spells differently."""


@dataclass(frozen=True, slots=True)
class _Row:
    """One listing line's worth of code: an instruction, or one byte that did not decode."""

    offset: int
    raw: bytes
    insn: Instruction | None

    @property
    def end(self) -> int:
        return self.offset + len(self.raw)


def _sweep(code: bytes, start: int, end: int) -> list[_Row]:
    """Decode ``code[start:end]`` front to back; operands may not run past ``end``."""
    rows: list[_Row] = []
    offset = start
    while offset < end:
        try:
            insn = decode_one(code, offset, end)
        except DecodeError:
            rows.append(_Row(offset, code[offset : offset + 1], None))
        else:
            rows.append(_Row(offset, code[offset : insn.end], insn))
        offset = rows[-1].end
    return rows


def _handler_rows(program: Program, index: int, start: int, end: int) -> list[_Row]:
    """A handler's rows: the program's decoded handler, or a byte-by-byte sweep of code
    that does not decode (a listing shows bad programs too)."""
    try:
        instructions = program.instructions(index)
    except DecodeError:
        return _sweep(program.code, start, end)
    return [_Row(insn.offset, program.code[insn.offset : insn.end], insn) for insn in instructions]


def _regions(program: Program) -> list[tuple[str, list[_Row]]]:
    """(title, rows) for each probe's handler, then for code that belongs to no probe."""
    size = len(program.code)
    regions: list[tuple[str, list[_Row]]] = []
    spans: list[tuple[int, int]] = []
    for index, probe in enumerate(program.probes):
        start, end = min(max(probe.code_start, 0), size), min(max(probe.code_end, 0), size)
        spans.append((start, end))
        regions.append((_probe_line(index, probe), _handler_rows(program, index, start, end)))
    position = 0
    for start, end in [*sorted(spans), (size, size)]:
        if start > position:
            regions.append(
                (
                    f"; code outside any probe: {position:#06x}..{start:#06x}",
                    _sweep(program.code, position, start),
                )
            )
        position = max(position, end)
    return regions


# {==== Header lines ==================================================================


def _value_text(name: str, value: object) -> str:
    """A field value as the RPN source would write it."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, WatchType):
        return WATCH_TYPE_SPELLING[value]
    if isinstance(value, LogField):
        if value == LogField.ALL:
            return "ALL"
        return "|".join(m.name or "" for m in LogField if m in value) or "NONE"
    if isinstance(value, LogTarget):
        return value.name
    if isinstance(value, Enum):
        return value.name.lower()
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, int) and name in _HEX_FIELDS:
        return f"{value:#x}"
    return str(value)


def _settings(record: ProgramHeader | Probe, shown: frozenset[str]) -> list[str]:
    """``keyword=value`` for each dataclass field not in ``shown`` that is not its default."""
    out = []
    for f in fields(record):
        value = getattr(record, f.name)
        if f.name in shown or value == f.default:
            continue
        keyword = _KEYWORDS.get(f.name, f.name)
        text = "absolute" if f.name == "absolute" else _value_text(f.name, value)
        out.append(f"{keyword}={text}")
    return out


_PROBE_SHOWN = frozenset(
    {
        "kind",
        "offset",
        "location",
        "opcode",
        "major",
        "minor",
        "code_start",
        "code_end",
        "watch_type",
        "watch_length",
    }
)


def _probe_line(index: int, probe: Probe) -> str:
    """``probe N: kind offset=.. (location) opcode=.. major=.. minor=.. code=..`` + extras."""
    parts = [f"probe {index}:", _value_text("kind", probe.kind), f"offset={probe.offset:#x}"]
    if probe.location and probe.location.lower() != f"{probe.offset:#x}":
        parts.append(f"({probe.location})")  # the symbolic form, when it says more
    opcode = "none" if probe.opcode is None else f"{probe.opcode:#04x}"
    parts += [f"opcode={opcode}", f"major={probe.major}", f"minor={probe.minor}"]
    if probe.kind == ProbeKind.WATCHPOINT:
        parts += [
            f"watch_type={_value_text('watch_type', probe.watch_type)}",
            f"length={probe.watch_length}",
        ]
    parts.append(f"code={probe.code_start:#06x}..{probe.code_end:#06x}")
    parts += _settings(probe, _PROBE_SHOWN)
    return " ".join(parts)


def _program_line(program: Program) -> str:
    header = program.header
    parts = [
        f"; program {header.name!r} modtype={_value_text('modtype', header.modtype)}",
        f"probes={len(program.probes)}",
        f"code={len(program.code)} bytes",
    ]
    parts += _settings(header, frozenset({"name", "modtype"}))
    return " ".join(parts)


# }==== {==== Instruction lines =======================================================


@dataclass(frozen=True, slots=True)
class _Context:
    """What operand formatting needs to know besides the instruction."""

    names: dict[int, list[str]]


def _branch(insn: Instruction, value: int, ctx: _Context) -> tuple[str, str | None]:
    target = insn.end + value
    if target in ctx.names:
        return ctx.names[target][0], None
    return str(value), f"target {target} is outside the code"


def _register(_insn: Instruction, value: int, _ctx: _Context) -> tuple[str, str | None]:
    register = REGISTERS_BY_INDEX.get(value)
    if register is None:
        return str(value), f"unknown register {value:#x}"
    return register.name, None


def _immediate(_insn: Instruction, value: int, _ctx: _Context) -> tuple[str, str | None]:
    return (str(value) if value < 0x10000 else f"{value:#010x}"), None


def _number(_insn: Instruction, value: int, _ctx: _Context) -> tuple[str, str | None]:
    return str(value), None


OperandFormatter = Callable[[Instruction, int, _Context], tuple[str, str | None]]

OPERAND_FORMATTERS: dict[Operand, OperandFormatter] = {
    Operand.REL32: _branch,
    Operand.IMM32: _immediate,
    Operand.U8: _number,
    Operand.REG: _register,
    Operand.LV: _number,
    Operand.GV: _number,
    Operand.U16: _number,
    Operand.S16: _number,  # the S16 codec already unpacks it signed
}
"""How each operand kind is written; every kind but NONE has an entry (tested)."""


def _formatter(op: OpInfo) -> OperandFormatter:
    """How ``op``'s operand is written. An instruction with a register rule takes a
    register index, whatever Operand kind the table gives it."""
    if op.register_rule is not None:
        return _register
    return OPERAND_FORMATTERS[op.operand]


def _instruction_text(insn: Instruction, ctx: _Context) -> tuple[str, str | None]:
    """The assembler text of ``insn`` and an optional note about its operand."""
    op = insn.op
    if insn.operand is None:
        return op.syntax, None
    text, note = _formatter(op)(insn, insn.operand, ctx)
    return op.syntax.replace(f"<{op.operand.name.lower()}>", text), note


def _row_line(row: _Row, ctx: _Context, source: str | None) -> str:
    if row.insn is None:
        text, note = f".byte {row.raw[0]:#04x}", "does not decode"
    else:
        text, note = _instruction_text(row.insn, ctx)
    comment = "; ".join(c for c in (source, note) if c)
    line = f"  {row.offset:04x}  {row.raw.hex(' '):<14}  {text:<24}"
    return (f"{line}  ; {comment}" if comment else line).rstrip()


def _label_names(program: Program, rows: list[_Row]) -> dict[int, list[str]]:
    """Code offset -> label names: the program's own, then ``L_<offset>`` for branch
    targets that have none."""
    names: dict[int, list[str]] = {}
    for offset, name in program.labels:
        names.setdefault(offset, []).append(name)
    for row in rows:
        target = row.insn.target if row.insn is not None else None
        if target is not None and 0 <= target <= len(program.code) and target not in names:
            names[target] = [f"L_{target:04x}"]
    return names


# }====


def disassemble(program: Program) -> str:
    """The listing of ``program``: header lines, labels and one line per instruction."""
    regions = _regions(program)
    rows = [row for _, region in regions for row in region]
    ctx = _Context(_label_names(program, rows))
    source = {s.offset: f"{s.file}:{s.line}" for s in program.source_map}
    starts = {row.offset for row in rows}
    placed: set[int] = set()

    def labels_at(offset: int) -> list[str]:
        if offset in placed or offset not in ctx.names:
            return []
        placed.add(offset)
        return [f"{name}:" for name in ctx.names[offset]]

    lines = [_program_line(program)]
    for title, region in regions:
        lines += ["", title]
        for row in region:
            lines += labels_at(row.offset)
            lines.append(_row_line(row, ctx, source.get(row.offset)))
            if row.end not in starts:
                lines += labels_at(row.end)
    unplaced = sorted(set(ctx.names) - placed)
    if unplaced:
        lines.append("")
        lines += [
            f"; label {name} = {offset:#06x} is not at an instruction start"
            for offset in unplaced
            for name in ctx.names[offset]
        ]
    return "\n".join(lines) + "\n"


def _quirk_notes() -> str:
    """The Notes section of the instruction table's docstring (the kept 5.0 quirks)."""
    doc = isa.__doc__ or ""
    start = doc.find("Notes")
    return doc[start:].strip() if start >= 0 else ""


def describe_opcodes() -> str:
    """Help text: every opcode with its number, syntax, stack effect and summary, then the
    instruction table's notes on the 5.0 quirks (no trailing newline)."""
    ops = sorted(TABLE, key=lambda op: op.code)
    syntax_width = max(len(op.syntax) for op in ops)
    effect_width = max(len(op.effect) for op in ops)
    lines = [
        "RPN opcodes (DProbes 5.0 numbering). Stack effects read before -> after, with the",
        "top of stack (TOS) rightmost. Operands follow the opcode byte, little-endian:",
        "",
    ]
    lines += [
        f"  <{kind.name.lower()}>  {kind.size} bytes, {kind.lo}..{kind.hi}"
        for kind in Operand
        if kind is not Operand.NONE
    ]
    lines += ["", f"code  {'syntax':<{syntax_width}}  {'stack effect':<{effect_width}}  summary"]
    for op in ops:
        summary = op.summary
        if op.aliases:
            summary += (
                " (also written "
                + ", ".join(f"{op.mnemonic} {alias}" for alias in op.aliases)
                + ")"
            )
        if OpFlag.RESERVED in op.flags:
            summary += " [raises EX_INVALID_OPCODE]"
        lines.append(
            f"{op.code:#04x}  {op.syntax:<{syntax_width}}  {op.effect:<{effect_width}}  {summary}"
        )
    notes = _quirk_notes()
    if notes:
        lines += ["", notes]
    return "\n".join(lines)
