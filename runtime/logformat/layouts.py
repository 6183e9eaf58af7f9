"""What each log target writes for one record, as data both formatters are built from.

A layout is a sequence of pieces written in order: literal bytes, major or minor, the
header values the record's log fields select (each with a per-target style for each
kind of value, ``vm.logrecord.Shown``), the binary header, and the record's data in one
of a few encodings. The exception log is a second record (major/minor 0/0, no header
fields) written with the same layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from dprobes.vm.logrecord import Shown
from dprobes.vm.program import LogTarget


class Style(Enum):
    """How one value is written."""

    DEC = "decimal"
    HEX = "0x and lower-case hex digits, no padding"
    TIME = "seconds:microseconds (6 digits)"
    JSON_TIME = "TIME as a JSON string"
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
    in the style its kind has here."""

    before: bytes
    between: bytes
    styles: dict[Shown, Style] = field(hash=False)


@dataclass(frozen=True)
class Binary:
    """The record's binary header (``vm.logrecord``)."""


@dataclass(frozen=True)
class Raw:
    """The data bytes as they are."""


@dataclass(frozen=True)
class Hex:
    """The data in lower-case hex, bytes separated by ``separator``."""

    separator: bytes


@dataclass(frozen=True)
class HexDump:
    """``width`` data bytes a row: the offset (8 hex digits), two spaces, the bytes in hex
    separated by spaces and padded to a full row, two spaces, ``|``, the bytes as ASCII
    (``.`` for the unprintable) and ``|`` with a newline."""

    width: int = 16
    offset_digits: int = 8
    gap: bytes = b"  "
    edge: bytes = b"|"


Piece = Text | Number | Fields | Binary | Raw | Hex | HexDump
Layout = tuple[Piece, ...]

_KLOG_LINE: Layout = (
    Text(b"dprobes("),
    Number("major"),
    Text(b","),
    Number("minor"),
    Text(b")"),
    Fields(
        b" ",
        b"=",
        {
            Shown.NUMBER: Style.DEC,
            Shown.ADDRESS: Style.HEX,
            Shown.TIME: Style.TIME,
            Shown.TEXT: Style.TEXT,
        },
    ),
    Text(b"\n"),
)

KLOG: Layout = (*_KLOG_LINE, HexDump())
"""The kernel-log form: the ``dprobes(major,minor) pid=...`` line, then a hex dump."""

KLOG_UNFORMATTED: Layout = (*_KLOG_LINE, Hex(b" "), Text(b"\n"))
"""KLOG with ``-f``: the data as one line of hex bytes."""

COM: Layout = (Binary(), Raw(), Text(b"\r\n"))
"""COM1/COM2: the raw record, then CR LF (as a serial line would carry it)."""

EVL: Layout = (
    Text(b'{"major": '),
    Number("major"),
    Text(b', "minor": '),
    Number("minor"),
    Fields(
        b', "',
        b'": ',
        {
            Shown.NUMBER: Style.DEC,
            Shown.ADDRESS: Style.DEC,
            Shown.TIME: Style.JSON_TIME,
            Shown.TEXT: Style.JSON_TEXT,
        },
    ),
    Text(b', "data": "'),
    Hex(b""),
    Text(b'"}\n'),
)
"""EVL: one JSON object per record (JSON Lines), as ``json.dumps`` writes it."""

LAYOUTS: tuple[Layout, ...] = (KLOG, KLOG_UNFORMATTED, COM, EVL)
"""Every layout; a layout's number is its index here."""


def layout_for(target: LogTarget, unformatted: bool = False) -> Layout:
    """The layout a target writes (``unformatted``: KLOG's ``-f``)."""
    if target is LogTarget.KLOG:
        return KLOG_UNFORMATTED if unformatted else KLOG
    if target in (LogTarget.COM1, LogTarget.COM2):
        return COM
    if target is LogTarget.EVL:
        return EVL
    raise ValueError(f"log target {target.name} writes a CTF trace (logformat.ctf), not a layout")
