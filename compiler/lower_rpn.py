"""Lowering pass: ``rpn_ast.File`` -> ``IRProgram``.

Reads the syntax tree of ``rpn_parser`` and, for symbolic locations and ``push SYMBOL``,
a ``SymbolTable``; produces the IR the assembler lays out: the program header and one
``IRProbe`` per probe, its record plus a body of ``IRInstruction``/``IRLabel``. One pass
over the statements, in order:

* Header items come before the first probe. A probe starts at ``offset =`` or
  ``watchpoint =``; its items come before its first label or instruction. Items are
  read by ``rpn_items``.
* An instruction picks its row of ``vm.isa``: a first argument that is a bare name and
  a qualifier of the mnemonic is the qualifier (``push r, eax``, ``log str``,
  ``push m32``) and the next argument the operand; otherwise the first argument is the
  operand (``push sym``, ``dup 2``). With an operand the row that takes one is chosen,
  without one the operand-less row.
* The operand is checked by its ``Operand`` kind: a label name for rel32 (kept as text
  for the assembler), a number or symbol(+n) for imm32 (negative numbers wrap to 32
  bits), a register that THIS instruction accepts for reg, a number in range otherwise.

What is legal but fails in a defined way at run time is a warning, not an error:
reserved opcodes, ``exit_to`` facilities other than 1..3, ``pbl/pbr/pzl/pzr`` bit
numbers other than 1..32, immediate variable indices not below ``num_lv``/``num_gv``.
Not here: label addresses, undefined labels, jumps into another probe's code and paths
that run off the end (the assembler and the verifier).
"""

from __future__ import annotations

from dataclasses import replace

from dprobes.compiler import rpn_ast as ast
from dprobes.compiler.diagnostics import DiagnosticSink, SourceLoc, did_you_mean
from dprobes.compiler.ir import IRInstruction, IRLabel, IRProbe, IRProgram
from dprobes.compiler.rpn_items import (
    ALL_KEYWORDS,
    HEADER_KEYWORDS,
    PROBE_KEYWORDS,
    PROBE_STARTS,
    HeaderItems,
    ProbeItems,
    unknown_keyword,
)
from dprobes.compiler.symbols import WORD_MASK, SymbolTable
from dprobes.vm.exceptions import ExceptionCode
from dprobes.vm.isa import (
    MNEMONIC_ALIASES,
    MNEMONICS,
    OPS_BY_SYNTAX,
    QUALIFIERS,
    TABLE,
    Operand,
    OpFlag,
    OpInfo,
    Scope,
)
from dprobes.vm.program import ProgramHeader
from dprobes.vm.registers import REGISTERS_BY_INDEX, REGISTERS_BY_NAME, register_named

IMM32_LOWEST = -(2**31)
"""The most negative immediate accepted; it and anything above wraps to 32 bits."""

_START_HINT = "a probe starts with 'offset = <location>' or 'watchpoint = <location>'"


def lower_rpn(
    file: ast.File, sink: DiagnosticSink, symbols: SymbolTable | None = None
) -> IRProgram | None:
    """The IR of a parsed RPN file, or None after reporting errors into ``sink``."""
    return _Lowering(sink, symbols or SymbolTable(), file.loc).run(file.body)


def _head(op: OpInfo) -> str:
    """``push r``: the mnemonic and qualifier, as messages name an instruction."""
    return op.mnemonic if op.qualifier is None else f"{op.mnemonic} {op.qualifier}"


def _written(arg: ast.Arg) -> str:
    match arg:
        case ast.NameArg():
            return arg.name
        case ast.NumberArg():
            return str(arg.value)
        case ast.SymbolArg():
            return f"{arg.name}{arg.addend:+d}"


def _qualifier_hints(mnemonic: str, arg: ast.Arg) -> tuple[str, ...]:
    """A hint when a name that was not taken as a qualifier looks like one."""
    if isinstance(arg, ast.NumberArg):
        return ()
    name = arg.name.lower()
    if name in QUALIFIERS[mnemonic]:
        return (
            f"'{arg.name}' is a qualifier of '{mnemonic}': separate the number from it "
            "with a space or ','",
        )
    if register_named(name) is not None and (mnemonic, "r") in OPS_BY_SYNTAX:
        return (f"did you mean '{mnemonic} r, {arg.name}'?",)
    return did_you_mean(name, QUALIFIERS[mnemonic], f"{mnemonic} {{}}")


def _wants(kind: Operand) -> str:
    """What an operand of ``kind`` must be, for messages."""
    if kind is Operand.REL32:
        return "a label"
    if kind is Operand.IMM32:
        return "a number or a symbol(+n)"
    if kind is Operand.REG:
        return "a register name"
    return f"a number in {kind.lo}..{kind.hi}"


class _Lowering:
    """The state of one pass over a file: where we are (header, probe items, code)."""

    def __init__(self, sink: DiagnosticSink, symbols: SymbolTable, file_loc: SourceLoc) -> None:
        self.sink = sink
        self.symbols = symbols
        self.file_loc = file_loc
        self.header_items = HeaderItems()
        self.header: ProgramHeader | None = None
        self.probe: ProbeItems | None = None
        self.body: list[IRInstruction | IRLabel] = []
        self.code_started = False  # a label or instruction of the current probe was seen
        self.has_instructions = False
        self.outside_reported = False
        self.probes: list[IRProbe] = []

    def run(self, body: list[ast.Statement]) -> IRProgram | None:
        errors = len(self.sink.errors)
        for statement in body:
            match statement:
                case ast.Item():
                    self._item(statement)
                case ast.LabelDef():
                    self._label(statement)
                case ast.InstructionLine():
                    self._instruction(statement)
        if self.probe is None:
            self.header = self.header_items.finish(self.file_loc, self.sink)
            self.sink.error(self.file_loc, "the program has no probes", _START_HINT)
        else:
            self._end_probe()
        if self.header is None or len(self.sink.errors) > errors:
            return None
        return IRProgram(self.header, self.probes)

    # --- items and structure ---------------------------------------------------------

    def _item(self, item: ast.Item) -> None:
        key = item.keyword.lower()
        if key in PROBE_STARTS:
            self._begin_probe(item)
        elif self.probe is None:
            self._header_item(item, key)
        else:
            self._probe_item(item, key)

    def _header_item(self, item: ast.Item, key: str) -> None:
        if key in HEADER_KEYWORDS:
            self.header_items.add(item, HEADER_KEYWORDS[key], self.sink)
        elif key in PROBE_KEYWORDS:
            self.sink.error(
                item.loc,
                f"'{item.keyword}' is a probe keyword, but no probe has started",
                _START_HINT,
            )
        else:
            unknown_keyword(item, self.sink)

    def _probe_item(self, item: ast.Item, key: str) -> None:
        assert self.probe is not None
        if key in PROBE_KEYWORDS and self.code_started:
            self.sink.error(
                item.loc,
                f"'{item.keyword}' comes after the probe's code",
                "a probe's items come before its first label or instruction",
            )
        elif key in PROBE_KEYWORDS:
            self.probe.add(item, PROBE_KEYWORDS[key], self.sink)
        elif key in HEADER_KEYWORDS:
            self.sink.error(
                item.loc,
                f"'{item.keyword}' is a header keyword, but the first probe has started",
                "header items come before the first 'offset =' or 'watchpoint ='",
            )
        else:
            unknown_keyword(item, self.sink)

    def _begin_probe(self, item: ast.Item) -> None:
        if self.probe is None:
            self.header = self.header_items.finish(self.file_loc, self.sink)
        else:
            self._end_probe()
        self.probe = ProbeItems.begin(item, self.sink)
        self.body = []
        self.code_started = False
        self.has_instructions = False

    def _end_probe(self) -> None:
        assert self.probe is not None
        record = self.probe.finish(self.header, self.symbols, self.sink)
        if not self.has_instructions:
            self.sink.error(
                self.probe.start.loc,
                "this probe has no instructions",
                "a handler needs at least an exit instruction",
            )
        if record is not None:
            self.probes.append(IRProbe(record, self.body, self.probe.start.loc))

    def _in_probe(self, loc: SourceLoc) -> bool:
        """True inside a probe; code before the first probe is reported once."""
        if self.probe is not None:
            return True
        if not self.outside_reported:
            self.sink.error(loc, "code before the first probe", _START_HINT)
            self.outside_reported = True
        return False

    def _label(self, label: ast.LabelDef) -> None:
        if not self._in_probe(label.loc):
            return
        self.code_started = True
        self.body.append(IRLabel(label.name, label.loc))

    def _instruction(self, line: ast.InstructionLine) -> None:
        if not self._in_probe(line.loc):
            return
        self.code_started = self.has_instructions = True
        instruction = self._select(line)
        if instruction is not None:
            self.body.append(instruction)

    # --- instructions ----------------------------------------------------------------

    def _select(self, line: ast.InstructionLine) -> IRInstruction | None:
        """The instruction's row and checked operand, or None after reporting."""
        mnemonic = self._mnemonic(line)
        if mnemonic is None:
            return None
        args = line.args
        first = args[0] if args else None
        qualifier = None
        if isinstance(first, ast.NameArg) and first.name.lower() in QUALIFIERS[mnemonic]:
            qualifier = first.name.lower()
            args = args[1:]
        rows = OPS_BY_SYNTAX.get((mnemonic, qualifier))
        if rows is None:
            self._missing_qualifier(mnemonic, line)
            return None
        op = rows[0] if args else rows[-1]  # rows with an operand sort first
        if len(args) > 1:
            self.sink.error(
                args[1].loc,
                f"too many operands for '{_head(op)}'",
                *_qualifier_hints(mnemonic, args[0]),
            )
            return None
        if args and op.operand is Operand.NONE:
            self.sink.error(args[0].loc, f"'{_head(op)}' takes no operand")
            return None
        if not args and op.operand is not Operand.NONE:
            self.sink.error(
                line.loc,
                f"missing operand: '{_head(op)}' needs {_wants(op.operand)}",
                f"write '{op.syntax}'",
            )
            return None
        value = self._operand(op, args[0], mnemonic) if args else None
        if args and value is None:
            return None
        self._run_time_warnings(op, value, line.loc)
        return IRInstruction(op, value, line.loc)

    def _mnemonic(self, line: ast.InstructionLine) -> str | None:
        name = line.mnemonic.lower()
        name = MNEMONIC_ALIASES.get(name, name)
        if name in MNEMONICS:
            return name
        if name in ALL_KEYWORDS:
            hints: tuple[str, ...] = (f"'{name}' is a keyword: write '{name} = <value>'",)
        else:
            hints = did_you_mean(name, [*MNEMONICS, *MNEMONIC_ALIASES])
        loc = replace(line.loc, end_column=line.loc.column + len(line.mnemonic))
        self.sink.error(loc, f"unknown mnemonic '{line.mnemonic}'", *hints)
        return None

    def _missing_qualifier(self, mnemonic: str, line: ast.InstructionLine) -> None:
        choices = ", ".join(
            sorted({op.qualifier for op in TABLE if op.mnemonic == mnemonic and op.qualifier})
        )
        if not line.args:
            self.sink.error(line.loc, f"'{mnemonic}' needs a qualifier: {choices}")
            return
        first = line.args[0]
        if isinstance(first, ast.NameArg):
            self.sink.error(
                first.loc,
                f"unknown qualifier '{first.name}' for '{mnemonic}'",
                *_qualifier_hints(mnemonic, first),
                f"'{mnemonic}' takes: {choices}",
            )
        else:
            self.sink.error(
                first.loc, f"'{mnemonic}' needs a qualifier before its operand: {choices}"
            )

    # --- operands --------------------------------------------------------------------

    def _operand(self, op: OpInfo, arg: ast.Arg, mnemonic: str) -> int | str | None:
        """The operand value for ``op``'s kind, or None after reporting a bad one."""
        kind = op.operand
        if kind is Operand.REL32:
            if isinstance(arg, ast.NameArg):
                return arg.name
        elif kind is Operand.IMM32:
            return self._immediate(arg, mnemonic)
        elif kind is Operand.REG:
            if isinstance(arg, ast.NameArg):
                return self._register(op, arg)
        elif isinstance(arg, ast.NumberArg):
            if kind.lo <= arg.value <= kind.hi:
                return arg.value
            self.sink.error(
                arg.loc,
                f"operand {arg.value} of '{_head(op)}' is out of range {kind.lo}..{kind.hi}",
            )
            return None
        self.sink.error(
            arg.loc,
            f"'{_head(op)}' needs {_wants(kind)}, not '{_written(arg)}'",
            *_qualifier_hints(mnemonic, arg),
        )
        return None

    def _immediate(self, arg: ast.Arg, mnemonic: str) -> int | None:
        if isinstance(arg, ast.NumberArg):
            if IMM32_LOWEST <= arg.value <= WORD_MASK:
                return arg.value & WORD_MASK
            self.sink.error(
                arg.loc, f"immediate {arg.value} is out of range {IMM32_LOWEST}..{WORD_MASK}"
            )
            return None
        addend = arg.addend if isinstance(arg, ast.SymbolArg) else 0
        return self.symbols.address(
            arg.name, addend, arg.loc, self.sink, _qualifier_hints(mnemonic, arg)
        )

    def _register(self, op: OpInfo, arg: ast.NameArg) -> int | None:
        rule = op.register_rule
        assert rule is not None, f"{op.name} has a register operand but no register rule"
        takes = ", ".join(r.name for r in REGISTERS_BY_INDEX.values() if rule.accepts(r))
        register = register_named(arg.name)
        if register is None:
            self.sink.error(
                arg.loc,
                f"unknown register '{arg.name}'",
                *did_you_mean(arg.name.lower(), REGISTERS_BY_NAME),
                f"'{_head(op)}' takes: {takes}",
            )
            return None
        if not rule.accepts(register):
            self.sink.error(
                arg.loc,
                f"register '{register.name}' cannot be used with '{_head(op)}'",
                f"'{_head(op)}' takes: {takes}",
            )
            return None
        return register.index

    def _run_time_warnings(self, op: OpInfo, value: int | str | None, loc: SourceLoc) -> None:
        if OpFlag.RESERVED in op.flags:
            self.sink.warning(
                loc,
                f"'{_head(op)}' is reserved by DProbes 5.0 and not "
                "implemented: it raises EX_INVALID_OPCODE at run time",
            )
        valid = op.domain
        if valid is not None and isinstance(value, int) and not valid.admits(value):
            outcome = (
                "raises EX_INVALID_OPERAND"
                if ExceptionCode.INVALID_OPERAND in op.raises
                else "ends the handler without an exception"
            )
            self.sink.warning(
                loc,
                f"'{_head(op)} {value}' {outcome} at run time: "
                f"'{op.mnemonic}' takes {valid.lo}..{valid.hi}",
            )
        if self.header is not None and isinstance(value, int):
            count = {
                Scope.LV: ("local", "num_lv", self.header.num_lv),
                Scope.GV: ("global", "num_gv", self.header.num_gv),
            }.get(op.scope)
            if count is not None and value >= count[2]:
                what, keyword, limit = count
                self.sink.warning(
                    loc,
                    f"{what} variable {value} is not below {keyword} "
                    f"{limit}: '{_head(op)}' raises EX_INVALID_OPERAND at "
                    "run time",
                )
