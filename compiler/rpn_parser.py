"""Parser pass: preprocessed RPN text -> ``rpn_ast.File``.

Reads the ``Preprocessed`` product of ``preprocess`` and produces the syntax tree of
``rpn_ast``, every position mapped back to the original file:line:column through
``Preprocessed.loc``. The grammar is ``grammar/rpn.lark`` (LALR, contextual lexer). A
syntax error becomes one diagnostic at the offending token, with a friendly message for
the common mistakes, never a traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from importlib import resources

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedInput, UnexpectedToken
from lark.tree import Meta

from dprobes.compiler import rpn_ast as ast
from dprobes.compiler.diagnostics import DiagnosticSink, SourceLoc
from dprobes.compiler.preprocess import Preprocessed

Locate = Callable[[int, int, int | None], SourceLoc]
"""(line, column, end column) in the parsed text -> location in the original source."""


@cache
def _lark() -> Lark:
    grammar = resources.files("dprobes.grammar").joinpath("rpn.lark").read_text()
    return Lark(
        grammar,
        parser="lalr",
        lexer="contextual",
        propagate_positions=True,
        start=["start", "expr"],
    )


def _parse_lines(text: str) -> Tree:
    return _lark().parse(text, start="start")


def _number(text: str) -> int:
    """Value of a NUMBER token: decimal (leading zeros are still decimal) or 0x-hex."""
    negative = text.startswith("-")
    digits = text.lstrip("-")
    value = int(digits, 16) if digits[:2].lower() == "0x" else int(digits, 10)
    return -value if negative else value


class _ToAst(Transformer):
    """Parse tree -> rpn_ast nodes, locating each through ``locate``."""

    def __init__(self, locate: Locate) -> None:
        super().__init__()
        self._locate = locate

    def _loc(self, where: Token | Meta) -> SourceLoc:
        same_line = where.end_line == where.line
        return self._locate(where.line, where.column, where.end_column if same_line else None)

    def start(self, statements: list[ast.Statement]) -> list[ast.Statement]:
        return statements

    def item(self, children: list[Token]) -> ast.Item:
        keyword, value = children
        text = value.rstrip()
        value_loc = self._locate(value.line, value.column, value.column + len(text))
        return ast.Item(str(keyword), text, self._loc(keyword), value_loc)

    def label_def(self, children: list[Token]) -> ast.LabelDef:
        (name,) = children
        return ast.LabelDef(str(name), self._loc(name))

    @v_args(meta=True)
    def instruction(self, meta: Meta, children: list) -> ast.InstructionLine:
        mnemonic, *args = children
        return ast.InstructionLine(str(mnemonic), args, self._loc(meta))

    def expr(self, children: list[ast.Arg]) -> ast.Arg:
        return children[0]

    def name_arg(self, children: list[Token]) -> ast.NameArg:
        (token,) = children
        return ast.NameArg(str(token), self._loc(token))

    def number_arg(self, children: list[Token]) -> ast.NumberArg:
        (token,) = children
        return ast.NumberArg(_number(token), self._loc(token))

    def symbol_arg(self, children: list[Token]) -> ast.SymbolArg:
        (token,) = children
        split = max(token.rfind("+"), token.rfind("-"))
        return ast.SymbolArg(token[:split], _number(token[split:].lstrip("+")), self._loc(token))


CHUNK_LINES = 4096
"""Lines parsed at a time. Every statement is one line, so a file is parsed a chunk at a
time and each chunk's parse tree is dropped once it is turned into AST: the parser's
memory stays bounded by the chunk, not the file (a whole 4 MB file's tree took 1 GB)."""


def parse_rpn(pre: Preprocessed, sink: DiagnosticSink) -> ast.File | None:
    """Parse preprocessed text; on a syntax error report it and return None."""
    lines = pre.text.split("\n")  # only "\n" ends a line (not str.splitlines' \r, \f, ...)
    statements: list[ast.Statement] = []
    for first in range(0, len(lines), CHUNK_LINES):
        chunk = "\n".join(lines[first : first + CHUNK_LINES])
        locate = _shifted(pre.loc, first)
        try:
            tree = _parse_lines(chunk if chunk.endswith("\n") else chunk + "\n")
        except UnexpectedInput as error:
            loc, message = _syntax_error(error, locate)
            sink.error(loc, message)
            return None
        statements += _ToAst(locate).transform(tree)
    return ast.File(statements, pre.loc(1, 1))


def _shifted(locate: Locate, lines: int) -> Locate:
    """``locate`` for text that starts ``lines`` lines into the parsed text."""
    if not lines:
        return locate
    return lambda line, column, end: locate(line + lines, column, end)


def parse_value(item: ast.Item, sink: DiagnosticSink) -> ast.Arg | None:
    """Parse a keyword's value as a number, symbol or symbol+n (``offset = sym+4``)."""
    where = item.value_loc

    def locate(line: int, column: int, end_column: int | None) -> SourceLoc:
        end = None if end_column is None else where.column + end_column - 1
        return SourceLoc(where.file, where.line, where.column + column - 1, end)

    try:
        tree = _lark().parse(item.value, start="expr")
    except UnexpectedInput as error:
        loc, _ = _syntax_error(error, locate)
        sink.error(
            loc, f"'{item.keyword}' needs a number, a symbol or symbol+offset, not '{item.value}'"
        )
        return None
    return _ToAst(locate).transform(tree)


# --- syntax errors -------------------------------------------------------------------------

_TERMINALS = {
    "NAME": "a name",
    "NUMBER": "a number",
    "SYMEXPR": "symbol+offset",
    "VALUE": "a value",
    "EQUAL": "'='",
    "COLON": "':'",
    "COMMA": "','",
    "_NL": "the end of the line",
    "$END": "the end of the input",
}

_ARGS = ("r", "1", "s+1")
_AFTER_WORDS = [
    "L: push",
    *(f"push {a}{rest}" for a in _ARGS for rest in ("", " x", ", x", " 1", ", 1")),
]
_MISTAKES: dict[str, list[str]] = {
    "missing value after '='": ["k =\n"],
    "missing operand after ','": [f"push {a},\n" for a in _ARGS],
    "too many operands: an instruction takes at most a qualifier and one operand": [
        f"push {a}{sep}{b} {extra}\n"
        for a in _ARGS
        for sep in (" ", ", ")
        for b in _ARGS
        for extra in (*_ARGS, ",")
    ],
    "'=' needs a keyword in front of it": ["= 1\n"],
    "a label needs a name in front of ':'": [": x\n"],
    "':' ends a label name and must follow it at the start of the line": [
        f"{words}:\n" for words in _AFTER_WORDS
    ],
    "an item is 'keyword = value', with one word before '='": [
        f"{words} =\n" for words in _AFTER_WORDS
    ],
}
# LALR states at the start of a line differ with what came before (nothing, a blank
# line, a line with text, one of those after earlier lines), and after a label.
_PREFIXES = ("", "\n", "x\n", "\n\n", "\nx\n", "L: ", "\nL: ")


@cache
def _mistake_labels() -> dict[tuple[int, int, str], str]:
    """(parser state, token type) of each common mistake -> its friendly message.

    This is lark's ``match_examples`` made exact and done once: match_examples also
    accepts an example that stopped in the same state at a different token, which
    would call ``push r = 1`` a misplaced ':'.
    """
    labels: dict[tuple[int, int, str], str] = {}
    for label, examples in _MISTAKES.items():
        for example in examples:
            stop = _stop(example)
            for prefix in _PREFIXES:
                error = _stop(prefix + example)
                # A prefix may move the error elsewhere ("L: k =" stops at '='): skip that.
                if error.token.start_pos == len(prefix) + stop.token.start_pos:
                    labels.setdefault(_state_key(error), label)
    return labels


def _stop(example: str) -> UnexpectedToken:
    """The error an example of a mistake stops with."""
    try:
        _parse_lines(example)
    except UnexpectedToken as error:
        return error
    raise AssertionError(f"{example!r} is not a mistake")


def _state_key(error: UnexpectedToken) -> tuple[int, int, str]:
    return len(error.state.state_stack), error.state.position, error.token.type


def _syntax_error(error: UnexpectedInput, locate: Locate) -> tuple[SourceLoc, str]:
    if not isinstance(error, UnexpectedToken):
        # Lexer errors cannot happen (VALUE matches any character); kept so that a
        # grammar change can never leak a traceback.
        return locate(max(error.line, 1), max(error.column, 1), None), "syntax error"
    token = error.token
    if token.type == "VALUE":
        # Text the contextual lexer could not split into tokens at this point.
        return _stray_text(token, locate)
    end = token.end_column if token.end_line == token.line else None
    loc = locate(token.line, token.column, end)
    label = _mistake_labels().get(_state_key(error))
    if label is not None:
        return loc, label
    found = (
        f"'{token}'"
        if token.type in ("NAME", "NUMBER", "SYMEXPR")
        else _TERMINALS.get(token.type, repr(str(token)))
    )
    expected = sorted(_TERMINALS.get(name, name) for name in error.accepts or error.expected)
    return loc, f"unexpected {found}; expected {' or '.join(expected)}"


def _stray_text(token: Token, locate: Locate) -> tuple[SourceLoc, str]:
    word = token.split()[0]
    char = word[0]
    if char.isdigit():
        return (
            locate(token.line, token.column, token.column + len(word)),
            f"malformed number '{word}'",
        )
    loc = locate(token.line, token.column, token.column + 1)
    if char in "+-":
        return loc, (
            f"unexpected '{char}': write symbol{char}number and negative numbers without spaces"
        )
    return loc, f"unexpected character '{char}'"
