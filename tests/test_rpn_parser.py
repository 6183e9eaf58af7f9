"""Tests for the RPN parser: every instruction form of the table, items, labels, arguments,
locations through the line map, and one friendly diagnostic per syntax error."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from dprobes.compiler import rpn_ast as ast
from dprobes.compiler import rpn_parser
from dprobes.compiler.diagnostics import DiagnosticSink, Severity, SourceCache, SourceLoc
from dprobes.compiler.preprocess import Preprocessed, preprocess
from dprobes.compiler.rpn_parser import parse_rpn, parse_value
from dprobes.vm.isa import TABLE, OpInfo


def pre(text: str, name: str = "t.rpn") -> Preprocessed:
    """Preprocessed text whose line i comes from line i of ``name``."""
    return Preprocessed(text, tuple((name, i) for i in range(1, text.count("\n") + 2)))


def parse(text: str) -> ast.File:
    sink = DiagnosticSink()
    file = parse_rpn(pre(text), sink)
    assert file is not None and not sink.diagnostics, [d.render() for d in sink]
    return file


def syntax_error(text: str) -> tuple[str, SourceLoc]:
    sink = DiagnosticSink()
    assert parse_rpn(pre(text), sink) is None
    (diagnostic,) = sink.diagnostics
    assert diagnostic.severity is Severity.ERROR
    assert isinstance(diagnostic.loc, SourceLoc)
    return diagnostic.message, diagnostic.loc


# An operand of each kind as written in OpInfo.syntax, and the argument it parses to.
SAMPLE_OPERANDS: dict[str, tuple[str, type, object]] = {
    "rel32": ("target", ast.NameArg, "target"),
    "imm32": ("0x10", ast.NumberArg, 16),
    "u8": ("3", ast.NumberArg, 3),
    "u16": ("4", ast.NumberArg, 4),
    "s16": ("-2", ast.NumberArg, -2),
    "reg": ("eax", ast.NameArg, "eax"),
    "lv": ("1", ast.NumberArg, 1),
    "gv": ("2", ast.NumberArg, 2),
}


def written(op: OpInfo) -> tuple[str, list[tuple[type, object]]]:
    """``op.syntax`` with a sample operand, and the arguments it should parse to."""
    text = op.syntax
    args: list[tuple[type, object]] = []
    if op.qualifier is not None:
        args.append((ast.NameArg, op.qualifier))
    placeholder = re.search(r"<(\w+)>", text)
    if placeholder:
        sample, kind, value = SAMPLE_OPERANDS[placeholder[1]]
        text = text.replace(placeholder[0], sample)
        args.append((kind, value))
    return text, args


def arg_value(arg: ast.Arg) -> object:
    return arg.value if isinstance(arg, ast.NumberArg) else arg.name


@pytest.mark.parametrize("op", TABLE, ids=lambda op: op.name)
def test_every_instruction_form_parses(op: OpInfo) -> None:
    text, expected = written(op)
    for variant in (text, text.upper(), text.replace(",", ""), f"here: {text}"):
        body = parse(variant + "\n").body
        line = body[-1]
        assert isinstance(line, ast.InstructionLine)
        assert line.mnemonic.lower() == op.mnemonic
        got = [(type(a), arg_value(a)) for a in line.args]
        if variant.isupper():
            got = [(kind, v.lower() if isinstance(v, str) else v) for kind, v in got]
        assert got == expected


def test_item_value_is_the_rest_of_the_line_right_stripped() -> None:
    (item,) = parse("  Name = /usr/bin/my prog  \n").body
    assert item == ast.Item(
        "Name", "/usr/bin/my prog", SourceLoc("t.rpn", 1, 3, 7), SourceLoc("t.rpn", 1, 10, 26)
    )


def test_item_without_spaces_and_with_symbols_in_the_value() -> None:
    (item,) = parse("log=PID|UID, TSC\n").body
    assert isinstance(item, ast.Item)
    assert (item.keyword, item.value) == ("log", "PID|UID, TSC")


def test_labels_alone_and_before_an_instruction() -> None:
    body = parse("start:\n\n  again: push 1\n").body
    assert body == [
        ast.LabelDef("start", SourceLoc("t.rpn", 1, 1, 6)),
        ast.LabelDef("again", SourceLoc("t.rpn", 3, 3, 8)),
        ast.InstructionLine(
            "push", [ast.NumberArg(1, SourceLoc("t.rpn", 3, 15, 16))], SourceLoc("t.rpn", 3, 10, 16)
        ),
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("push 42", [ast.NumberArg(42, SourceLoc("t.rpn", 1, 6, 8))]),
        ("push -1", [ast.NumberArg(-1, SourceLoc("t.rpn", 1, 6, 8))]),
        ("push 0xFFffFFff", [ast.NumberArg(0xFFFFFFFF, SourceLoc("t.rpn", 1, 6, 16))]),
        ("push -0X10", [ast.NumberArg(-16, SourceLoc("t.rpn", 1, 6, 11))]),
        ("push 010", [ast.NumberArg(10, SourceLoc("t.rpn", 1, 6, 9))]),
        ("push sym", [ast.NameArg("sym", SourceLoc("t.rpn", 1, 6, 9))]),
        ("push do_fork+0x10", [ast.SymbolArg("do_fork", 16, SourceLoc("t.rpn", 1, 6, 18))]),
        ("push .L2-4", [ast.SymbolArg(".L2", -4, SourceLoc("t.rpn", 1, 6, 11))]),
        (
            "push sbp -2",
            [
                ast.NameArg("sbp", SourceLoc("t.rpn", 1, 6, 9)),
                ast.NumberArg(-2, SourceLoc("t.rpn", 1, 10, 12)),
            ],
        ),
        ("push sbp-2", [ast.SymbolArg("sbp", -2, SourceLoc("t.rpn", 1, 6, 11))]),
        (
            "push r ,eax",
            [
                ast.NameArg("r", SourceLoc("t.rpn", 1, 6, 7)),
                ast.NameArg("eax", SourceLoc("t.rpn", 1, 9, 12)),
            ],
        ),
    ],
)
def test_arguments(text: str, expected: list[ast.Arg]) -> None:
    (line,) = parse(text + "\n").body
    assert isinstance(line, ast.InstructionLine)
    assert line.args == expected


def test_blank_lines_crlf_tabs_and_a_missing_final_newline() -> None:
    body = parse("\n   \n\tpush 1\r\n\r\nexit").body
    assert [(s.mnemonic, s.loc.line) for s in body if isinstance(s, ast.InstructionLine)] == [
        ("push", 3),
        ("exit", 5),
    ]


def test_an_empty_file_is_located_at_its_first_line() -> None:
    assert parse("") == ast.File([], SourceLoc("t.rpn", 1, 1))


def test_positions_map_to_the_original_file_and_line() -> None:
    text = "name = x\npush r, eax\n"
    origins = (("main.rpn", 1), ("inc.h", 7), ("main.rpn", 3))
    sink = DiagnosticSink()
    file = parse_rpn(Preprocessed(text, origins), sink)
    assert file is not None
    assert file.loc == SourceLoc("main.rpn", 1, 1)
    line = file.body[1]
    assert isinstance(line, ast.InstructionLine)
    assert line.loc == SourceLoc("inc.h", 7, 1, 12)
    assert line.args[1].loc == SourceLoc("inc.h", 7, 9, 12)


def test_through_the_real_preprocessor(tmp_path) -> None:
    (tmp_path / "regs.h").write_text("#define REG eax\n\npush r, REG\n")
    main = tmp_path / "main.rpn"
    main.write_text('// probe\n#include "regs.h"\nexit\n')
    sink = DiagnosticSink()
    pre_file = preprocess(str(main), sink)
    assert pre_file is not None
    file = parse_rpn(pre_file, sink)
    assert file is not None and not sink.diagnostics
    push, exit_line = file.body
    assert isinstance(push, ast.InstructionLine) and isinstance(exit_line, ast.InstructionLine)
    register = push.args[1]
    assert register == ast.NameArg("eax", replace(register.loc, line=3, column=9, end_column=12))
    assert Path(register.loc.file).resolve() == tmp_path / "regs.h"
    assert Path(exit_line.loc.file).resolve() == main and exit_line.loc.line == 3


def test_children_are_the_nodes_below_in_source_order() -> None:
    file = parse("L: push r, eax\nname = x\n")
    label, push, item = file.children()
    assert isinstance(push, ast.InstructionLine)
    assert push.children() == tuple(push.args)
    assert label.children() == item.children() == push.args[0].children() == ()


@pytest.mark.parametrize(
    ("text", "message", "line", "column"),
    [
        ("name =\n", "missing value after '='", 1, 7),
        ("x = 1\noffset=   \n", "missing value after '='", 2, 11),
        ("push r,\n", "missing operand after ','", 1, 8),
        ("push 1 ,\n", "missing operand after ','", 1, 9),
        (
            "push r, eax ebx\n",
            "too many operands: an instruction takes at most a qualifier and one operand",
            1,
            13,
        ),
        (
            "L: pushh u8 1 2\n",
            "too many operands: an instruction takes at most a qualifier and one operand",
            1,
            15,
        ),
        (
            "push a+1 b+2 c+3\n",
            "too many operands: an instruction takes at most a qualifier and one operand",
            1,
            14,
        ),
        ("push 3abc\n", "malformed number '3abc'", 1, 6),
        ("push 0x\n", "malformed number '0x'", 1, 6),
        ("push ;\n", "unexpected character ';'", 1, 6),
        ("exit # done\n", "unexpected character '#'", 1, 6),
        (
            "push sym + 4\n",
            "unexpected '+': write symbol+number and negative numbers without spaces",
            1,
            10,
        ),
        (
            "push - 4\n",
            "unexpected '-': write symbol-number and negative numbers without spaces",
            1,
            6,
        ),
        ("= 3\n", "'=' needs a keyword in front of it", 1, 1),
        (": x\n", "a label needs a name in front of ':'", 1, 1),
        (
            "push r: eax\n",
            "':' ends a label name and must follow it at the start of the line",
            1,
            7,
        ),
        ("log target = COM1\n", "an item is 'keyword = value', with one word before '='", 1, 12),
        ("L: 5\n", "unexpected '5'; expected a name or the end of the line", 1, 4),
        ("L: M: exit\n", "':' ends a label name and must follow it at the start of the line", 1, 5),
        ("L: push r, =\n", "unexpected '='; expected a name or a number or symbol+offset", 1, 12),
    ],
)
def test_syntax_errors(text: str, message: str, line: int, column: int) -> None:
    got, loc = syntax_error(text)
    assert got == message
    assert (loc.file, loc.line, loc.column) == ("t.rpn", line, column)


@pytest.mark.parametrize(("label", "examples"), rpn_parser._MISTAKES.items())
def test_every_common_mistake_gets_its_label(label: str, examples: list[str]) -> None:
    for example in examples:
        for before in ("", "\n", "exit\n", "\n\n", "exit\n\n", "exit\nexit\n"):
            assert syntax_error(before + example)[0] == label


def test_syntax_error_in_an_included_line_points_at_the_include() -> None:
    text = "name = x\npush r,\n"
    sink = DiagnosticSink()
    assert parse_rpn(Preprocessed(text, (("main.rpn", 1), ("inc.h", 4))), sink) is None
    (diagnostic,) = sink.diagnostics
    assert diagnostic.loc == SourceLoc("inc.h", 4, 8)


def test_a_syntax_error_renders_with_a_caret() -> None:
    sink = DiagnosticSink()
    parse_rpn(pre("push 3abc\n"), sink)
    (diagnostic,) = sink.diagnostics
    cache = SourceCache()
    cache.add("t.rpn", "push 3abc\n")
    assert diagnostic.render(cache).splitlines() == [
        "t.rpn:1:6: error: malformed number '3abc'",
        "  push 3abc",
        "       ^~~~",
    ]


def value_item(value: str) -> ast.Item:
    return ast.Item(
        "offset", value, SourceLoc("t.rpn", 4, 1, 7), SourceLoc("t.rpn", 4, 10, 10 + len(value))
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0x100", ast.NumberArg(256, SourceLoc("t.rpn", 4, 10, 15))),
        ("do_fork", ast.NameArg("do_fork", SourceLoc("t.rpn", 4, 10, 17))),
        ("do_fork+4", ast.SymbolArg("do_fork", 4, SourceLoc("t.rpn", 4, 10, 19))),
        ("-3", ast.NumberArg(-3, SourceLoc("t.rpn", 4, 10, 12))),
    ],
)
def test_parse_value(value: str, expected: ast.Arg) -> None:
    sink = DiagnosticSink()
    assert parse_value(value_item(value), sink) == expected
    assert not sink.diagnostics


@pytest.mark.parametrize(
    ("value", "column"), [("do_fork + 4", 18), ("a b", 12), ("4x", 10), ("=", 10)]
)
def test_parse_value_errors_point_into_the_value(value: str, column: int) -> None:
    sink = DiagnosticSink()
    assert parse_value(value_item(value), sink) is None
    (diagnostic,) = sink.diagnostics
    assert diagnostic.message == (
        f"'offset' needs a number, a symbol or symbol+offset, not '{value}'"
    )
    assert diagnostic.loc is not None and (diagnostic.loc.line, diagnostic.loc.column) == (
        4,
        column,
    )


def test_a_long_file_is_parsed_in_chunks_with_every_line_located(monkeypatch) -> None:
    """Chunks end at a newline only (a form feed or lone CR is whitespace inside a line),
    and statements and errors after the first chunk keep their own line numbers."""
    monkeypatch.setattr(rpn_parser, "CHUNK_LINES", 3)
    text = "a = 1\n\fnop\r\n\nL: push 1\npop r, eax\n\nexit\n"
    file = parse(text)
    assert [(type(s), s.loc.line) for s in file.body] == [
        (ast.Item, 1),
        (ast.InstructionLine, 2),
        (ast.LabelDef, 4),
        (ast.InstructionLine, 4),
        (ast.InstructionLine, 5),
        (ast.InstructionLine, 7),
    ]
    message, loc = syntax_error(text + "\n\npush r,\n")
    assert message == "missing operand after ','" and (loc.line, loc.column) == (10, 8)
