"""What each log target writes for one hit, as data both formatters are built from.

A layout is two sequences of pieces: one for the record, one for its exception log (a
second record, major/minor 0/0, no header fields, written only when not empty). A piece
is literal bytes, major or minor, the header values the record's log fields select (each
with a per-target style for each kind of value, ``vm.logrecord.Shown``), the binary
header, or the record's data in one of a few encodings. The KLOG and COM layouts are
DProbes 5.0's (``drivers/dprobes/i386/dprobes.c``: ``fmt_log_hdr``, ``log_dumpformat``,
``log_to_klog``, ``log_stack_trace*``, ``fmt_log_hdr_raw``, ``log_to_com_port``), in a
uniprocessor build or (``smp``) an SMP one; docs/probes.md lists where they differ.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from dprobes.vm.logrecord import CPU, Shown
from dprobes.vm.program import LogTarget


class Style(Enum):
    """How one value is written."""

    DEC = "decimal (%d)"
    HEX = "lower-case hex digits, no padding (%x)"
    HEX8 = "eight lower-case hex digits (%08lx)"
    HEX_TIME = "seconds and microseconds, each as HEX8, joined by ':'"
    JSON_TIME = "seconds:microseconds (6 digits), as a JSON string"
    TEXT = "the text as UTF-8"
    JSON_TEXT = "the text as a JSON string (ASCII, escaped as json.dumps does)"


@dataclass(frozen=True)
class Text:
    """Literal bytes."""

    value: bytes


@dataclass(frozen=True)
class Number:
    """``major`` or ``minor``, in decimal."""

    name: str


@dataclass(frozen=True)
class Fields:
    """Each header value the record shows: ``before``, its name, ``between``, the value
    in the style its kind has here, ``after``."""

    before: bytes
    between: bytes
    after: bytes
    styles: dict[Shown, Style] = field(hash=False)


@dataclass(frozen=True)
class Binary:
    """The record's binary header (``vm.logrecord``), with the cpu word if ``smp``."""

    smp: bool = False


@dataclass(frozen=True)
class Raw:
    """The data bytes as they are."""


@dataclass(frozen=True)
class Hex:
    """Each data byte in lower-case hex without padding (``%x``), preceded by ``0`` when
    it is below ``zero_below``, followed by ``after``. (5.0's ``-f`` wrote ``0`` for the
    bytes below 0xf, not 0x10, so 0x0f came out as ``f``.)"""

    zero_below: int
    after: bytes


@dataclass(frozen=True)
class Dump:
    """5.0's ``log_dumpformat``: rows of ``width`` bytes, each ``0x%8.8x : `` (the row's
    offset), the bytes as ``%2.2x`` with a space after every ``group``-th, spaces to the
    width of a full row, ``: ``, the bytes with bit 7 masked off as ASCII (``.`` for the
    unprintable), a newline. A row holds only the record's bytes (5.0 printed a whole
    first row even past the end of a shorter record)."""

    width: int = 16
    group: int = 4

    def row_chars(self) -> int:
        """Characters of the hex part of a full row (the spaces included)."""
        return 2 * self.width + self.width // self.group


Piece = Text | Number | Fields | Binary | Raw | Hex | Dump
Pieces = tuple[Piece, ...]


@dataclass(frozen=True)
class Layout:
    """What a target writes for a hit: the record, then (if any) its exception log."""

    record: Pieces
    exception: Pieces


KLOG_FIELDS = Fields(
    b"",
    b"=",
    b" ",
    {
        Shown.NUMBER: Style.DEC,
        Shown.SELECTOR: Style.HEX,
        Shown.ADDRESS: Style.HEX8,
        Shown.TIME: Style.HEX_TIME,
        Shown.TEXT: Style.TEXT,
    },
)
"""``fmt_log_hdr``'s ``pid=%d uid=%d cs=%x eip=%08lx ss=%x esp=%08lx tsc=%08lx:%08lx
name=%s``, each followed by a space."""


def _title(smp: bool) -> Pieces:
    """``dprobes(major,minor) `` and, in an SMP build, ``cpu=N ``."""
    cpu = (Text(b"cpu=%d " % CPU),) if smp else ()
    return (Text(b"dprobes("), Number("major"), Text(b","), Number("minor"), Text(b") "), *cpu)


def _klog(smp: bool, unformatted: bool) -> Layout:
    """The kernel-log text: the header line, a second ``dprobes(major,minor) `` that the
    data follows (``-f``: on the same line as hex bytes; else as dump rows below)."""
    head = (*_title(smp), KLOG_FIELDS, Text(b"\n"), *_title(False))
    if unformatted:
        return Layout(
            (*head, Text(b" "), Hex(0xF, b" "), Text(b"\n")),
            (*_title(smp), Text(b" "), Hex(0, b" "), Text(b"\n")),
        )
    return Layout((*head, Text(b" \n"), Dump()), (*_title(smp), Text(b" \n"), Dump()))


def _com(smp: bool) -> Layout:
    """COM1/COM2: the raw record, then CR LF, as 5.0 sent them to the serial port."""
    raw = (Binary(smp), Raw(), Text(b"\r\n"))
    return Layout(raw, raw)


KLOG, KLOG_SMP = _klog(False, False), _klog(True, False)
"""The kernel-log form: the header line, then dump rows."""
KLOG_UNFORMATTED, KLOG_UNFORMATTED_SMP = _klog(False, True), _klog(True, True)
"""KLOG with ``-f``: the data as hex bytes on the second ``dprobes(...)`` line."""
COM, COM_SMP = _com(False), _com(True)

_EVL_RECORD: Pieces = (
    Text(b'{"major": '),
    Number("major"),
    Text(b', "minor": '),
    Number("minor"),
    Fields(
        b', "',
        b'": ',
        b"",
        {
            Shown.NUMBER: Style.DEC,
            Shown.SELECTOR: Style.DEC,
            Shown.ADDRESS: Style.DEC,
            Shown.TIME: Style.JSON_TIME,
            Shown.TEXT: Style.JSON_TEXT,
        },
    ),
    Text(b', "data": "'),
    Hex(0x10, b""),
    Text(b'"}\n'),
)
EVL = Layout(_EVL_RECORD, _EVL_RECORD)
"""EVL: one JSON object per record (JSON Lines), as ``json.dumps`` writes it."""

LAYOUTS: tuple[Layout, ...] = (
    KLOG,
    KLOG_UNFORMATTED,
    COM,
    EVL,
    KLOG_SMP,
    KLOG_UNFORMATTED_SMP,
    COM_SMP,
)
"""Every layout."""


def layout_for(target: LogTarget, unformatted: bool = False, smp: bool = False) -> Layout:
    """The layout a target writes (``unformatted``: KLOG's ``-f``; ``smp``: the headers
    of an SMP build of 5.0, with the cpu)."""
    if target is LogTarget.KLOG:
        return _klog(smp, unformatted)
    if target in (LogTarget.COM1, LogTarget.COM2):
        return _com(smp)
    if target is LogTarget.EVL:
        return EVL
    raise ValueError(f"log target {target.name} writes a CTF trace (logformat.ctf), not a layout")
