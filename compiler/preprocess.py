"""C-preprocessor pass: RPN source text -> preprocessed text plus an exact line map.

Reads: one source file (or text given in its name). Produces: a ``Preprocessed`` whose
``text`` has every directive executed and every comment removed, and whose ``origins``
map each output line back to the file and line it came from, through ``#include``.
Nothing runs before it; the RPN parser reads its ``text`` and reports through ``loc``.

The preprocessing itself is pcpp's (``#define`` object- and function-like, ``#undef``,
``#include``, ``#if``/``#ifdef``/``#ifndef``/``#elif``/``#else``/``#endif``, ``defined()``,
comments). This module adapts it to the compiler:

* Output is rebuilt from pcpp's token stream rather than from ``Preprocessor.write``,
  because ``write`` squeezes runs of blanks (columns would drift) and marks files with
  ``#line`` directives only now and then. Every token knows its file and line, and the
  tokens of the source (as opposed to those a macro produced) also know their offset,
  so each is put back at its original column.
* Every report pcpp makes goes to the DiagnosticSink with its file:line; input pcpp
  accepts silently or crashes on (unterminated ``/*``, unknown ``#foo``, ``#ifdef``
  without a name, ...) is diagnosed here, and anything pcpp prints is captured.
* Files are read here: UTF-8 only, no NUL bytes, at most ``MAX_SOURCE_BYTES``, and
  ``#include`` nests at most ``MAX_INCLUDE_DEPTH`` deep.
* Work and memory are bounded: pcpp holds every line up to the next directive in memory
  and expands them together, so a flush (an ``#undef`` of a name nobody defines) is fed
  to it every ``_FLUSH_LINES`` lines where no macro invocation can be open; and one
  expansion may produce at most ``MAX_EXPANSION_TOKENS`` tokens, which stops macros that
  double each other long before they fill the memory.

``#`` is special only as the first token of a line, where it starts a directive; RPN has
no use for it, so an unknown directive is an error instead of being passed through.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate, pairwise
from types import MappingProxyType

from pcpp import Action, OutputDirective, Preprocessor
from pcpp.parser import LexToken

from dprobes.compiler.diagnostics import DiagnosticSink, SourceLoc

MAX_SOURCE_BYTES = 4 * 1024 * 1024
"""Largest source or include file accepted, in bytes (4 MiB)."""

MAX_INCLUDE_DEPTH = 64
"""Deepest ``#include`` nesting accepted; the main file is at depth 0."""

MAX_EXPANSION_TOKENS = 100_000
"""Most tokens that the macros of one stretch of source (a few dozen lines) may produce,
counted at every level of nesting."""

_FLUSH_LINES = 64
"""Lines pcpp may hold before a flush is fed to it (when no invocation is open)."""

_FLUSH_NAME = "__dprobes_flush__"
_FLUSHING_DIRECTIVES = frozenset({"define", "undef", "include"})
"""Directives before which pcpp expands and lets go of the lines it holds."""

_NO_DEFINES: Mapping[str, str] = MappingProxyType({})

# A -D key: a macro name, optionally with a parameter list (as cc accepts "-D'F(x)=x'").
_MACRO_KEY = re.compile(r"[A-Za-z_]\w*(\([\w\s,.]*\))?")

# str.splitlines, which pcpp uses, also breaks lines at these; an editor does not.
_ODD_LINE_BREAKS = str.maketrans(dict.fromkeys("\v\f\x1c\x1d\x1e\x85\u2028\u2029", " "))


@dataclass(frozen=True)
class Preprocessed:
    """Preprocessed text (no directives, no comments) and where each line came from."""

    text: str
    origins: tuple[tuple[str, int], ...]
    """``origins[i]`` is the (file, 1-based line) that output line ``i + 1`` came from."""

    def loc(self, line: int, column: int, end_column: int | None = None) -> SourceLoc:
        """Map a 1-based output position to the original file, line and column.

        Columns of text that no macro expansion touched are the original columns. On a
        line where a macro expanded to text longer than its invocation, the columns of
        the expansion and of what follows it are approximate. Lines past either end are
        clamped to the first or last line.
        """
        file, original_line = self.origins[min(max(line, 1), len(self.origins)) - 1]
        return SourceLoc(file, original_line, column, end_column)


def preprocess(
    path: str,
    sink: DiagnosticSink,
    defines: Mapping[str, str] = _NO_DEFINES,
    include_dirs: Sequence[str] = (),
    text: str | None = None,
) -> Preprocessed | None:
    """Run the C preprocessor over ``path``; None if it reported any error into ``sink``.

    ``defines`` are ``-D key=value`` macros (an empty value means 1, as with cc).
    ``#include "f"`` looks for ``f`` next to the including file, then in ``include_dirs``.
    ``text``, when given, is used instead of reading ``path``, which then only names it.
    Bad input never raises: every problem becomes a diagnostic.
    """
    errors_before = len(sink.errors)
    path = path or "<input>"  # pcpp needs a file name
    text = _read_source(path, path, sink, None) if text is None else _check_text(text, path, sink)
    if text is None:
        return None
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
        cpp = _Cpp(sink, path, include_dirs)
        for key, value in defines.items():
            if not _MACRO_KEY.fullmatch(key) or "\n" in value:
                sink.error(
                    None,
                    f"bad -D definition {f'{key}={value}'!r}",
                    "expected -D NAME=VALUE or -D 'NAME(ARGS)=VALUE', on one line",
                )
            else:
                cpp.define(f"{key} {value or '1'}")
        lines = cpp.run(path, text)
    for printed in captured.getvalue().splitlines():
        sink.warning(None, f"pcpp: {printed}")
    if len(sink.errors) > errors_before:
        return None
    if not lines:  # keep loc() total: an empty result is one blank line of the main file
        lines = [("", (path, 1))]
    return Preprocessed(
        text="".join(f"{line}\n" for line, _ in lines),
        origins=tuple(origin for _, origin in lines),
    )


class _Cpp(Preprocessor):
    """pcpp with its reports sent to a DiagnosticSink and its file handling made strict.

    Files are named as the user would: the main file by the name it was given, an
    included file by its path relative to the working directory (absolute when that
    would climb out of it). pcpp's ``rewrite_paths`` is pointed at that name, so every
    token's ``source`` and ``__FILE__`` carry it.
    """

    def __init__(self, sink: DiagnosticSink, main: str, include_dirs: Sequence[str]) -> None:
        super().__init__()
        self.sink = sink
        self.path.extend(include_dirs)
        del self.macros["__DATE__"], self.macros["__TIME__"]  # keep the output reproducible
        self.names = {os.path.abspath(main): main}  # absolute path -> name in diagnostics
        self.line_starts: dict[str, list[int]] = {}  # name -> offset of each line in pcpp's text
        self.directive: SourceLoc | None = None  # the directive being executed
        self.directive_name = ""
        self.sites: list[SourceLoc | None] = []  # per file being read: the #include reading it
        self.expansion_depth = 0  # nesting of expand_macros calls
        self.expanded = 0  # tokens produced since the outermost call began
        self.expanding: list[LexToken] = []  # the tokens the outermost call expands

    def run(self, main: str, text: str) -> list[tuple[str, tuple[str, int]]]:
        """Preprocess the main file's text into (line, (file, line)) pairs."""
        self.parse(text, main)
        lines: list[tuple[str, tuple[str, int]]] = []
        tokens: list[LexToken] = []
        try:
            for tok in iter(self.token, None):
                if tok.value == "\n":  # comments are blanks now, so this ends a line
                    lines.append(self._render(tokens, tok))
                    tokens = []
                else:
                    tokens.append(tok)
        except _ExpansionTooLarge as exc:
            self.sink.error(
                self._invocation(exc.macro),
                f"macro expansion too large: over {MAX_EXPANSION_TOKENS} tokens",
                "macros that each expand to several copies of the previous one grow exponentially",
            )
        except Exception as exc:  # pcpp indexes past the end of some malformed directives
            what = f"#{self.directive_name} directive" if self.directive else "input"
            self.sink.error(self.directive, f"malformed {what}", f"pcpp failed with {exc!r}")
        return lines

    def _render(self, tokens: list[LexToken], newline: LexToken) -> tuple[str, tuple[str, int]]:
        """Lay one output line out: source tokens at their columns, expansions after."""
        head = next((t for t in tokens if t.type not in self.t_WS), newline)
        origin = (head.source, head.lineno)
        text = ""
        for tok in tokens:
            if not getattr(tok, "expanded_from", None) and (tok.source, tok.lineno) == origin:
                text = text.ljust(self._column(tok) - 1)
            text += tok.value.replace("\\\n", "")  # pcpp leaves line continuations in 'c'
        return text.rstrip(), origin

    def _column(self, tok: LexToken) -> int:
        """1-based column of a token read from a file (not one a macro produced)."""
        return tok.lexpos - self.line_starts[tok.source][tok.lineno - 1] + 1

    def _span(self, first: LexToken, last: LexToken) -> SourceLoc:
        return SourceLoc(
            first.source, first.lineno, self._column(first), self._column(last) + len(last.value)
        )

    def _invocation(self, macro: str | None) -> SourceLoc | None:
        """Where the source invokes ``macro`` (any macro when None) in what is expanded."""
        for tok in self.expanding:
            named = tok.value == macro if macro else tok.value in self.macros
            source = tok.type == self.t_ID and not getattr(tok, "expanded_from", None)
            if named and source and tok.source in self.line_starts:
                return self._span(tok, tok)
        return self.directive

    # -- pcpp internals wrapped ------------------------------------------------------

    def expand_macros(
        self, tokens: list[LexToken], expanding_from: list[str] | None = None
    ) -> list[LexToken]:
        """pcpp's expansion, counting the tokens it produces (``MAX_EXPANSION_TOKENS``)."""
        if self.expansion_depth == 0:
            self.expanded, self.expanding = 0, tokens
        self.expansion_depth += 1
        try:
            result = super().expand_macros(tokens, expanding_from or [])
        finally:
            self.expansion_depth -= 1
        if self.expansion_depth:
            self.expanded += len(result)
            if self.expanded > MAX_EXPANSION_TOKENS:
                raise _ExpansionTooLarge(expanding_from[0] if expanding_from else None)
        return result

    def parsegen(
        self,
        input: str,
        source: str | None = None,
        abssource: str | None = None,
    ) -> Iterator[LexToken]:
        """Name the file, and keep the stack of #include sites for the depth limit."""
        name = self.names[abssource]
        self.rewrite_paths = [(re.escape(abssource) + r"\Z", lambda _match: name)]
        self.sites.append(self.directive)  # None for the main file
        try:
            yield from super().parsegen(input, source, abssource)
        finally:
            self.sites.pop()

    def group_lines(self, input: str, abssource: str) -> Iterator[list[LexToken]]:
        """Record where lines start (for columns); stop at an unterminated ``/*``.

        pcpp lexes an unterminated ``/*`` as ``/`` then ``*`` and carries on; in C the
        comment runs to the end of the file, so the file ends there, with an error.
        ``abssource`` is the file's display name here (pcpp passes the rewritten path).
        """
        lengths = (len(line.rstrip()) + 1 for line in input.splitlines())
        self.line_starts[abssource] = list(accumulate(lengths, initial=0))
        held, open_parens = 0, 0  # lines pcpp holds unexpanded; '(' not yet closed in them
        for line in super().group_lines(input, abssource):
            for slash, star in pairwise(line):
                if (
                    slash.value == "/"
                    and star.value.startswith("*")
                    and star.lexpos == slash.lexpos + 1
                ):
                    self.sink.error(
                        self._span(slash, star),
                        "unterminated /* comment",
                        "the comment runs to the end of the file; close it with */",
                    )
                    return
            yield line
            significant = [tok for tok in line if tok.type not in self.t_WS]
            if significant[:1] and significant[0].value == "#":
                if significant[1:2] and significant[1].value in _FLUSHING_DIRECTIVES:
                    held, open_parens = 0, 0
                continue
            held += 1
            for tok in significant:
                if tok.value in "()":
                    open_parens = max(open_parens + (1 if tok.value == "(" else -1), 0)
            last = significant[-1] if significant else None
            if held >= _FLUSH_LINES and not open_parens and not self._may_take_arguments(last):
                yield self._flush_line(line[-1])
                held = 0

    def _may_take_arguments(self, tok: LexToken | None) -> bool:
        """Whether a ``(`` on a later line could be the argument list of what ``tok``
        expands to: a function-like macro, or a macro whose expansion ends in a name."""
        macro = self.macros.get(tok.value) if tok is not None else None
        if macro is None:
            return False
        names = [t for t in macro.value if t.type not in self.t_WS]
        return macro.arglist is not None or (bool(names) and names[-1].type == self.t_ID)

    def _flush_line(self, newline: LexToken) -> list[LexToken]:
        """``#undef`` of a name nobody defines: pcpp expands and lets go of what it holds."""
        parts = [("#", "CPP_POUND"), ("undef", self.t_ID), (" ", self.t_SPACE)]
        parts += [(_FLUSH_NAME, self.t_ID), ("\n", self.t_NEWLINE)]
        tokens = []
        for value, kind in parts:
            tok = copy.copy(newline)
            tok.value, tok.type = value, kind
            tokens.append(tok)
        return tokens

    def include(
        self,
        tokens: list[LexToken],
        original_line: list[LexToken],
    ) -> Iterator[LexToken]:
        """Search only the including file's directory, then the include directories.

        pcpp would also search the directory of every file further up the include chain.
        """
        if not tokens:
            self.sink.error(self.directive, '#include expects "FILE"')
            return
        outer_dirs = self.temp_path
        self.temp_path = [os.path.dirname(self.source)]
        try:
            yield from super().include(tokens, original_line)
        finally:
            self.temp_path = outer_dirs

    def define(self, tokens: str | list[LexToken]) -> None:
        """pcpp accepts any token as a macro name, and crashes when there is none."""
        if isinstance(tokens, list) and (not tokens or tokens[0].type != self.t_ID):
            self.sink.error(self.directive, "#define expects a macro name (an identifier)")
        else:
            super().define(tokens)

    def undef(self, tokens: list[LexToken]) -> None:
        if tokens and tokens[0].type == self.t_ID:
            super().undef(tokens)
        else:
            self.sink.error(self.directive, "#undef expects a macro name (an identifier)")

    # -- pcpp hooks ------------------------------------------------------------------

    def on_error(self, file: str, line: int, msg: str) -> None:
        """pcpp's reports, at the directive when they are about it.

        pcpp gives file 'unknown', line 0 for an empty #if expression.
        """
        loc = self.directive
        about_directive = loc is not None and (loc.file, loc.line) == (file, line)
        if file in self.line_starts and line > 0 and not about_directive:
            loc = SourceLoc(file, line, 1)
        self.sink.error(loc, " ".join(msg.split()))

    def on_directive_handle(
        self,
        directive: LexToken,
        toks: list[LexToken],
        ifpassthru: bool,
        precedingtoks: list[LexToken],
    ) -> bool:
        """Remember the directive (from its ``#``), to locate what goes wrong in it."""
        if toks[:1] and toks[0].value == _FLUSH_NAME:
            return True
        self.directive = self._span(precedingtoks[0], directive)
        self.directive_name = directive.value
        return super().on_directive_handle(directive, toks, ifpassthru, precedingtoks)

    def on_directive_unknown(
        self,
        directive: LexToken,
        toks: list[LexToken],
        ifpassthru: bool,
        precedingtoks: list[LexToken],
    ) -> bool:
        """``#error`` and ``#warning`` report their text; anything else is an error."""
        line = f"#{directive.value} {''.join(tok.value for tok in toks)}".rstrip()
        if directive.value == "error":
            self.sink.error(self.directive, line)
        elif directive.value == "warning":
            self.sink.warning(self.directive, line)
        elif directive.value == "pragma":
            self.sink.warning(self.directive, f"ignoring {line}", "only #pragma once is supported")
        else:
            self.sink.error(
                self.directive,
                f"unknown preprocessor directive #{directive.value}",
                "in RPN source '#' starts a preprocessor directive and nothing else",
            )
        return True

    def on_unknown_macro_in_defined_expr(self, tok: LexToken) -> bool:
        """Undefined names are false, as in C; a non-name after #ifdef is an error."""
        if tok.type != self.t_ID:
            self.sink.error(self.directive, f"expected a macro name, not '{tok.value}'")
        return False

    def on_comment(self, tok: LexToken) -> bool:
        """Every comment becomes one blank (pcpp turns ``//`` ones into a line break)."""
        tok.type, tok.value = self.t_SPACE, " "
        return False

    def on_file_open(self, is_system_include: bool, includepath: str) -> io.StringIO:
        """Read an #include candidate; FileNotFoundError makes pcpp try the next one."""
        if not os.path.exists(includepath):
            raise FileNotFoundError(includepath)
        name = self.names.setdefault(includepath, _display_name(includepath))
        if len(self.sites) > MAX_INCLUDE_DEPTH:
            self._too_deep(name)
            raise OutputDirective(Action.IgnoreAndRemove)
        text = _read_source(includepath, name, self.sink, self.directive)
        if text is None:
            raise OutputDirective(Action.IgnoreAndRemove)
        return io.StringIO(text)

    def on_include_not_found(
        self, is_malformed: bool, is_system_include: bool, curdir: str, includepath: str
    ) -> str:
        if is_malformed:
            self.sink.error(self.directive, f'#include expects "FILE", not {includepath}')
        else:
            searched = ([] if is_system_include else self.temp_path) + self.path
            self.sink.error(
                self.directive,
                f"cannot find include file '{includepath}'",
                f"searched: {', '.join(repr(d) for d in searched) or 'nothing'}",
            )
        raise OutputDirective(Action.IgnoreAndRemove)

    def _too_deep(self, name: str) -> None:
        sites = [site for site in [*self.sites, self.directive] if site is not None]
        chain = [f"{site.file}:{site.line}" for site in sites]
        if len(chain) > 6:
            chain = [*chain[:3], f"... ({len(chain) - 5} more)", *chain[-2:]]
        hints = [f"include chain: {' -> '.join(chain)}"]
        if name in {site.file for site in sites}:
            hints.append(f"'{name}' includes itself; guard it with #pragma once or #ifndef")
        self.sink.error(
            self.directive, f"#include nested more than {MAX_INCLUDE_DEPTH} levels deep", *hints
        )


class _ExpansionTooLarge(Exception):
    """An expansion passed ``MAX_EXPANSION_TOKENS``; ``macro`` is the outermost one."""

    def __init__(self, macro: str | None) -> None:
        super().__init__(macro)
        self.macro = macro


def first_binary_byte(data: bytes) -> int | None:
    """Offset of the first byte that text never holds (NUL, or not UTF-8), or None."""
    nul = data.find(b"\0")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        return error.start if nul < 0 else min(nul, error.start)
    return nul if nul >= 0 else None


def _display_name(path: str) -> str:
    """``path`` relative to the working directory, or absolute if that climbs out of it."""
    relative = os.path.relpath(path)
    return path if relative == os.pardir or relative.startswith(os.pardir + os.sep) else relative


def _read_source(path: str, name: str, sink: DiagnosticSink, where: SourceLoc | None) -> str | None:
    """Read a source file as UTF-8 text; None after reporting why it cannot be used.

    Problems opening the file are reported at ``where`` (the #include, or nowhere for
    the main file); problems with its content at the offending position in it.
    """
    try:
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            data = b"" if size > MAX_SOURCE_BYTES else file.read(MAX_SOURCE_BYTES + 1)
    except OSError as exc:
        sink.error(where, f"cannot read '{name}': {exc.strerror or exc}")
        return None
    if size > MAX_SOURCE_BYTES or len(data) > MAX_SOURCE_BYTES:
        shown = f"{size} bytes" if size > MAX_SOURCE_BYTES else f"over {MAX_SOURCE_BYTES} bytes"
        sink.error(where, f"'{name}' is too large ({shown}); the limit is {MAX_SOURCE_BYTES} bytes")
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, column = _line_column(data[: exc.start].decode("utf-8"))
        sink.error(
            SourceLoc(name, line, column),
            f"'{name}' is not UTF-8 text: byte 0x{data[exc.start]:02x} at {line}:{column}",
        )
        return None
    return _check_text(text, name, sink)


def _check_text(text: str, name: str, sink: DiagnosticSink) -> str | None:
    """Reject NUL characters; give the text the line breaks pcpp and an editor agree on."""
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    nul = text.find("\0")
    if nul >= 0:
        line, column = _line_column(text[:nul])
        sink.error(
            SourceLoc(name, line, column),
            f"'{name}' is not a text file: NUL byte at {line}:{column}",
        )
        return None
    return text.translate(_ODD_LINE_BREAKS)


def _line_column(before: str) -> tuple[int, int]:
    """1-based line and column of the character that follows the text ``before``."""
    return before.count("\n") + 1, len(before) - before.rfind("\n")
