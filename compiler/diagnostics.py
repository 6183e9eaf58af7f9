"""Structured diagnostics: severity, location, message and hints, rendered with a caret.

Every pass reports problems through a DiagnosticSink instead of raising bare strings, so
the command line can print all of them the same way and tests can check the fields.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path


@dataclass(frozen=True, slots=True)
class SourceLoc:
    """A position in a source file: 1-based line and column, optional end column."""

    file: str
    line: int
    column: int
    end_column: int | None = None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True, slots=True)
class ByteLoc:
    """A position in a binary file (a PPDF): byte offset from the start."""

    file: str
    offset: int

    def __str__(self) -> str:
        return f"{self.file}: byte {self.offset}"


Location = SourceLoc | ByteLoc


class Severity(Enum):
    ERROR = "error"
    WARNING = "warning"
    NOTE = "note"


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One message about the input."""

    severity: Severity
    message: str
    loc: Location | None = None
    hints: tuple[str, ...] = ()

    def render(self, sources: SourceCache | None = None) -> str:
        """``file:line:col: error: message``, the source line, a caret line, then hints."""
        where = f"{self.loc}: " if self.loc is not None else ""
        lines = [f"{where}{self.severity.value}: {_escaped(self.message)}"]
        if isinstance(self.loc, SourceLoc) and sources is not None:
            text = sources.line(self.loc.file, self.loc.line)
            if text is not None:
                lines.extend(_caret(text, self.loc))
        lines.extend(f"  hint: {_escaped(hint)}" for hint in self.hints)
        return "\n".join(lines)


def _escaped(text: str) -> str:
    """``text`` with control characters written as escapes (``\\x1b``), not sent raw."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def _caret(text: str, loc: SourceLoc) -> list[str]:
    shown = text.expandtabs(1).rstrip("\n")
    start = max(loc.column - 1, 0)
    width = 1
    if loc.end_column is not None and loc.end_column > loc.column:
        width = loc.end_column - loc.column
    return [f"  {shown}", "  " + " " * start + "^" + "~" * (width - 1)]


def did_you_mean(word: str, candidates: Iterable[str], shown: str = "{}") -> tuple[str, ...]:
    """A "did you mean" hint for the closest candidate (formatted through ``shown``), or ()."""
    close = difflib.get_close_matches(word, list(candidates), n=1)
    return (f"did you mean '{shown.format(close[0])}'?",) if close else ()


class SourceCache:
    """Reads source files on demand so a diagnostic can quote its line (through #include);
    a line with control characters or undecodable bytes is not quoted (not sent to a
    terminal)."""

    def __init__(self) -> None:
        self._lines: dict[str, list[str] | None] = {}

    def add(self, file: str, text: str) -> None:
        """Register text that does not come from disk (stdin, tests, -D macros)."""
        self._lines[file] = text.splitlines()

    def line(self, file: str, number: int) -> str | None:
        if file not in self._lines:
            try:
                self._lines[file] = Path(file).read_text(errors="replace").splitlines()
            except OSError:
                self._lines[file] = None
        lines = self._lines[file]
        if lines is None or not 1 <= number <= len(lines):
            return None
        line = lines[number - 1]
        return line if line.replace("\t", " ").isprintable() else None  # never echo binary


@dataclass
class DiagnosticSink:
    """Collects diagnostics from the passes; ``ok`` is False once an error was reported."""

    diagnostics: list[Diagnostic] = field(default_factory=list)

    def error(self, loc: Location | None, message: str, *hints: str) -> None:
        self.diagnostics.append(Diagnostic(Severity.ERROR, message, loc, hints))

    def warning(self, loc: Location | None, message: str, *hints: str) -> None:
        self.diagnostics.append(Diagnostic(Severity.WARNING, message, loc, hints))

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity is Severity.ERROR]

    @property
    def ok(self) -> bool:
        return not self.errors

    def __iter__(self) -> Iterator[Diagnostic]:
        return iter(self.diagnostics)


class CompileError(Exception):
    """Raised when a pass reported errors; carries every diagnostic collected so far."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        self.diagnostics = diagnostics
        first = next((d for d in diagnostics if d.severity is Severity.ERROR), None)
        super().__init__(first.render() if first else "compilation failed")
