"""Header and probe items (``keyword = value``) for the RPN lowering pass.

The keyword tables say which field each keyword sets and how its value is read; the two
collectors gather one header's or one probe's items, reject duplicates, and build the
``ProgramHeader`` / ``Probe`` record with the defaults of ``vm.program``. Values are
checked here, where the item's location is known: ranges are errors, except where the
5.0 kernel clamped (``jmpmax``, ``logmax``, ``ex_logmax``, ``heapmax``), which clamps
with a warning.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from dprobes.compiler import rpn_ast as ast
from dprobes.compiler.diagnostics import DiagnosticSink, SourceLoc, did_you_mean
from dprobes.compiler.rpn_parser import parse_value
from dprobes.compiler.symbols import WORD_MASK, SymbolTable
from dprobes.vm.logrecord import LOG_FIELDS_HELP, parse_log_fields
from dprobes.vm.program import (
    EX_LOGMAX_LIMIT,
    HEAPMAX_LIMIT,
    JMPMAX_LIMIT,
    LOGMAX_LIMIT,
    MAX_GLOBAL_VARS,
    MAX_HITS_DEFAULT,
    MAX_LOCAL_VARS,
    MIN_HEAP_SIZE,
    LogField,
    LogTarget,
    ModuleType,
    Probe,
    ProbeKind,
    ProgramHeader,
    WatchType,
)

ValueReader = Callable[[ast.Item, DiagnosticSink], object]
"""Reads an item's value; returns None after reporting a bad value."""


@dataclass(frozen=True, slots=True)
class Keyword:
    """What a keyword sets (a ProgramHeader or Probe field) and how its value is read."""

    field: str
    read: ValueReader
    watchpoint_only: bool = False


def _number(lo: int, hi: int) -> ValueReader:
    def read(item: ast.Item, sink: DiagnosticSink) -> int | None:
        arg = parse_value(item, sink)
        if arg is None:
            return None
        if not isinstance(arg, ast.NumberArg):
            sink.error(
                item.value_loc, f"'{item.keyword}' needs a number in {lo}..{hi}, not '{item.value}'"
            )
            return None
        if not lo <= arg.value <= hi:
            sink.error(item.value_loc, f"'{item.keyword}' must be in {lo}..{hi}, not {arg.value}")
            return None
        return arg.value

    return read


def _clamped(limit: int) -> ValueReader:
    """A limit the 5.0 kernel silently lowered to ``limit``; here it warns."""
    word = _number(0, WORD_MASK)

    def read(item: ast.Item, sink: DiagnosticSink) -> int | None:
        value = word(item, sink)
        if value is not None and value > limit:
            sink.warning(
                item.value_loc,
                f"'{item.keyword}' {value} is over the kernel's limit; "
                f"clamped to {limit} as DProbes 5.0 did",
            )
            return limit
        return value

    return read


def _choice(choices: Mapping[str, object]) -> ValueReader:
    def read(item: ast.Item, sink: DiagnosticSink) -> object:
        value = choices.get(item.value.lower())
        if value is None:
            sink.error(
                item.value_loc, f"'{item.keyword}' must be {'|'.join(choices)}, not '{item.value}'"
            )
        return value

    return read


def _text(item: ast.Item, sink: DiagnosticSink) -> str:
    return item.value


def _log_fields(item: ast.Item, sink: DiagnosticSink) -> LogField | None:
    """``log = PID UID TSC`` or ``ALL`` (``vm.logrecord.parse_log_fields``)."""
    try:
        return parse_log_fields(item.value)
    except ValueError as error:
        sink.error(item.value_loc, str(error), LOG_FIELDS_HELP)
        return None


_LOG_TARGETS = _choice({t.name.lower(): t for t in LogTarget})
"""``log_target = KLOG|COM1|COM2|LTT|EVL``."""


_YES_NO = _choice({"yes": True, "no": False})
_U16 = _number(0, 0xFFFF)
_HITS = _number(0, MAX_HITS_DEFAULT)

HEADER_KEYWORDS: dict[str, Keyword] = {
    "name": Keyword("name", _text),
    "modtype": Keyword("modtype", _choice({t.name.lower(): t for t in ModuleType})),
    "major": Keyword("major", _U16),
    "id": Keyword("id", _number(0, WORD_MASK)),
    "jmpmax": Keyword("jmpmax", _clamped(JMPMAX_LIMIT)),
    "logmax": Keyword("logmax", _clamped(LOGMAX_LIMIT)),
    "ex_logmax": Keyword("ex_logmax", _clamped(EX_LOGMAX_LIMIT)),
    "num_lv": Keyword("num_lv", _number(0, MAX_LOCAL_VARS)),
    "num_gv": Keyword("num_gv", _number(0, MAX_GLOBAL_VARS)),
    "heapmax": Keyword("heapmax", _clamped(HEAPMAX_LIMIT)),
    "autostacktrace": Keyword("autostacktrace", _YES_NO),
    "log": Keyword("log_fields", _log_fields),
    "log_target": Keyword("log_target", _LOG_TARGETS),
}

PROBE_STARTS: dict[str, ProbeKind] = {
    "offset": ProbeKind.BREAKPOINT,
    "watchpoint": ProbeKind.WATCHPOINT,
}

PROBE_KEYWORDS: dict[str, Keyword] = {
    "address": Keyword("absolute", _choice({"absolute": True, "relative": False})),
    "opcode": Keyword("opcode", _number(0, 0xFF)),
    "major": Keyword("major", _U16),
    "minor": Keyword("minor", _U16),
    "group": Keyword("group", _U16),
    "type": Keyword("type", _U16),
    "pass_count": Keyword("pass_count", _HITS),
    "passcount": Keyword("pass_count", _HITS),
    "max_hits": Keyword("max_hits", _HITS),
    "maxhits": Keyword("max_hits", _HITS),
    "logonfault": Keyword("logonfault", _YES_NO),
    "ex_mask": Keyword("ex_mask", _U16),
    "heap_size": Keyword("heap_size", _number(0, WORD_MASK)),
    "watch_type": Keyword(
        "watch_type",
        _choice(
            {
                "x": WatchType.EXECUTE,
                "w": WatchType.WRITE,
                "rw": WatchType.READWRITE,
                "io": WatchType.IO,
            }
        ),
        watchpoint_only=True,
    ),
    "length": Keyword("watch_length", _choice({"1": 1, "2": 2, "4": 4}), watchpoint_only=True),
}

ALL_KEYWORDS = frozenset({*HEADER_KEYWORDS, *PROBE_STARTS, *PROBE_KEYWORDS})


def unknown_keyword(item: ast.Item, sink: DiagnosticSink) -> None:
    """Report a keyword no table knows, with the closest known spelling."""
    sink.error(
        item.loc,
        f"unknown keyword '{item.keyword}'",
        *did_you_mean(item.keyword.lower(), ALL_KEYWORDS),
    )


@dataclass
class _Items:
    """Values read so far, and the item that gave each field (for duplicate hints)."""

    values: dict[str, object] = field(default_factory=dict)
    items: dict[str, ast.Item] = field(default_factory=dict)

    def add(self, item: ast.Item, keyword: Keyword, sink: DiagnosticSink) -> None:
        first = self.items.get(keyword.field)
        if first is not None:
            sink.error(item.loc, f"'{item.keyword}' is given twice", f"first given at {first.loc}")
            return
        self.items[keyword.field] = item
        value = keyword.read(item, sink)
        if value is not None:
            self.values[keyword.field] = value


@dataclass
class HeaderItems(_Items):
    """The program header's items, up to the first probe."""

    def finish(self, loc: SourceLoc, sink: DiagnosticSink) -> ProgramHeader | None:
        """The header, or None (after reporting) when ``name`` or ``modtype`` is missing."""
        hints = {
            "name": "add 'name = <module>': a path (user), a module name (kmod), anything (kernel)",
            "modtype": "add 'modtype = user|kernel|kmod'",
        }
        for key, hint in hints.items():
            if key not in self.items:
                sink.error(loc, f"the program header has no '{key}'", hint)
        if not hints.keys() <= self.values.keys():  # missing, or a bad value was reported
            return None
        return ProgramHeader(**self.values)


@dataclass(kw_only=True)
class ProbeItems(_Items):
    """One probe's items: its start (``offset =``/``watchpoint =``) and what follows."""

    start: ast.Item
    kind: ProbeKind
    location: ast.Arg | None  # None: the start item's value did not parse

    @classmethod
    def begin(cls, item: ast.Item, sink: DiagnosticSink) -> ProbeItems:
        """A new probe at its ``offset``/``watchpoint`` item."""
        kind = PROBE_STARTS[item.keyword.lower()]
        return cls(start=item, kind=kind, location=parse_value(item, sink))

    def add(self, item: ast.Item, keyword: Keyword, sink: DiagnosticSink) -> None:
        if keyword.watchpoint_only and self.kind is not ProbeKind.WATCHPOINT:
            sink.error(
                item.loc,
                f"'{item.keyword}' is only for watchpoints",
                "a watchpoint probe starts with 'watchpoint = <location>'",
            )
            return
        super().add(item, keyword, sink)

    def finish(
        self, header: ProgramHeader | None, symbols: SymbolTable, sink: DiagnosticSink
    ) -> Probe | None:
        """The probe record (code range still 0), or None after reporting a problem.

        Needs the header for the module type (symbol locations), the default major and
        heapmax; without one (its errors are already reported) nothing is checked.
        """
        if header is None:
            return None
        offset = self._offset(header, symbols, sink)
        if not self._heap_ok(header, sink) or offset is None:
            return None
        values = {"major": header.major, **self.values}
        return Probe(
            kind=self.kind,
            offset=offset,
            code_start=0,
            code_end=0,
            location=self.start.value,
            **values,
        )

    def _offset(
        self, header: ProgramHeader, symbols: SymbolTable, sink: DiagnosticSink
    ) -> int | None:
        where = self.location
        if isinstance(where, ast.NumberArg):
            if not 0 <= where.value <= WORD_MASK:
                sink.error(
                    where.loc, f"a probe location must be in 0..{WORD_MASK:#x}, not {where.value}"
                )
                return None
            return where.value
        if where is None:
            return None
        addend = where.addend if isinstance(where, ast.SymbolArg) else 0
        absolute = bool(self.values.get("absolute", False))
        return symbols.probe_offset(where.name, addend, header.modtype, absolute, where.loc, sink)

    def _heap_ok(self, header: ProgramHeader, sink: DiagnosticSink) -> bool:
        size = self.values.get("heap_size", 0)
        assert isinstance(size, int)
        if size > header.heapmax:
            sink.error(
                self.items["heap_size"].value_loc,
                f"heap_size {size} is over the program's heapmax {header.heapmax}",
            )
            return False
        if 0 < size <= MIN_HEAP_SIZE:
            sink.warning(
                self.items["heap_size"].value_loc,
                f"heap_size {size} is too small for a heap (it needs more than "
                f"{MIN_HEAP_SIZE} bytes): every malloc raises EX_HEAP_NOMEM",
            )
        return True
