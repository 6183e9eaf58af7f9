"""The DProbes log-record header, in one table (docs/probes.md, "Log records").

A record starts ``{u16 facility_id=1, u16 len, u32 mask, u16 major, u16 minor}``
(``BASE``), then, in ``HEADER`` order and only when the program's ``log =`` selects
them, pid u32, uid u32, cs u16 + eip u32, ss u16 + esp u32, a timeval (2 x u32) and a
16-byte process name. ``len`` is the header's length (5.0's ``hdr.len``), not the
record's. 5.0 added a cpu word after the base only in SMP builds (with the ``CPU`` mask
bit), whatever ``log =`` said; ``smp`` below chooses that build's header.

Every consumer derives from ``HEADER``: the mask, the Python encoder and describer
(``runtime.logtargets.LogRecord``), the header length the interpreter reserves, the
machine state the native ring carries (``runtime.ring``), the natively generated
formatter (``runtime.logformat``), the log-field parser of the language and the command
line, and the table in docs/probes.md.
"""

from __future__ import annotations

import functools
import struct
from enum import Enum
from typing import NamedTuple

from dprobes.vm.program import LogField

FACILITY_ID = 1


class HeaderBit:
    """The ``mask`` bits saying which header elements are present (``DP_HDR_*``)."""

    MAJOR, MINOR, CPU, PID, UID = 0x1, 0x2, 0x4, 0x8, 0x10
    CS, EIP, SS, ESP, TSC, PROCNAME = 0x20, 0x40, 0x80, 0x100, 0x200, 0x400


class Shown(Enum):
    """What kind of value a header element is, which decides how a target shows it."""

    NUMBER = "number"
    SELECTOR = "selector"
    ADDRESS = "address"
    TIME = "time"
    TEXT = "text"


class HeaderValue(NamedTuple):
    """One value of the header: its name in KLOG and EVL, its ``struct`` format in the
    record, how it is shown, the ``HitInfo`` attributes it is packed from, and what the
    native ring carries for it (name and format), or None if the probe knows it."""

    name: str
    code: str
    shown: Shown
    hit: tuple[str, ...]
    ring: tuple[str, str] | None


class HeaderField(NamedTuple):
    """An optional header element: the ``log =`` flag choosing it, its mask bits, the
    names that select it in ``log =``/``--log``, and its values in record order."""

    flag: LogField
    bits: int
    words: tuple[str, ...]
    values: tuple[HeaderValue, ...]


N, S, A = Shown.NUMBER, Shown.SELECTOR, Shown.ADDRESS
HEADER: tuple[HeaderField, ...] = (
    HeaderField(
        LogField.PID, HeaderBit.PID, ("PID",), (HeaderValue("pid", "I", N, ("pid",), None),)
    ),
    HeaderField(
        LogField.UID, HeaderBit.UID, ("UID",), (HeaderValue("uid", "I", N, ("uid",), ("uid", "I")),)
    ),
    HeaderField(
        LogField.CSEIP,
        HeaderBit.CS | HeaderBit.EIP,
        ("CSEIP", "UPSW"),
        (
            HeaderValue("cs", "H", S, ("cs",), ("cs", "I")),
            HeaderValue("eip", "I", A, ("eip",), None),
        ),
    ),
    HeaderField(
        LogField.SSESP,
        HeaderBit.SS | HeaderBit.ESP,
        ("SSESP", "PSW"),
        (
            HeaderValue("ss", "H", S, ("ss",), ("ss", "I")),
            HeaderValue("esp", "I", A, ("esp",), ("esp", "I")),
        ),
    ),
    HeaderField(
        LogField.TSC,
        HeaderBit.TSC,
        ("TSC",),
        (HeaderValue("tsc", "II", Shown.TIME, ("seconds", "microseconds"), ("executed", "Q")),),
    ),
    HeaderField(
        LogField.PROCNAME,
        HeaderBit.PROCNAME,
        ("PROCNAME",),
        (HeaderValue("name", "16s", Shown.TEXT, ("procname",), None),),
    ),
)
"""The optional header elements in record order. (PSW and UPSW are the S/390 spellings
of the same bits in dprobes.h.)"""
del N, S, A

BASE = struct.Struct("<HHIHH")
"""The fixed start of every record: facility id, length, mask, major, minor."""
BASE_HEADER_LENGTH = BASE.size
BASE_BITS = HeaderBit.MAJOR | HeaderBit.MINOR
CPU_CODE = "I"
"""The cpu word an SMP build writes after the base (``smp_processor_id()``)."""
CPU = 0
"""The emulated machine's one CPU: the cpu an SMP header shows."""
NS_PER_SECOND = 1_000_000_000
NS_PER_MICROSECOND = 1_000
MICROSECONDS_PER_SECOND = 1_000_000


def timeval(ns: int) -> tuple[int, int]:
    """A guest time in nanoseconds as the header's (seconds, microseconds)."""
    return ns // NS_PER_SECOND, ns // NS_PER_MICROSECOND % MICROSECONDS_PER_SECOND


def selected(fields: LogField) -> tuple[HeaderField, ...]:
    """The header elements a program's ``log =`` selection shows, in record order."""
    return tuple(field for field in HEADER if field.flag in fields)


@functools.cache
def mask(fields: LogField, smp: bool = False) -> int:
    """The header's ``mask`` word for a program's ``log =`` selection (``smp``: as an SMP
    build wrote it)."""
    bits = BASE_BITS | (HeaderBit.CPU if smp else 0)
    for field in selected(fields):
        bits |= field.bits
    return bits


@functools.cache
def header_struct(fields: LogField, smp: bool = False) -> struct.Struct:
    """The whole binary header (base, the cpu word if ``smp``, then the selected values)
    for one selection."""
    codes = "".join(value.code for field in selected(fields) for value in field.values)
    return struct.Struct(BASE.format + (CPU_CODE if smp else "") + codes)


def header_length(fields: LogField) -> int:
    """Bytes of record header for a program's ``log =`` selection."""
    return header_struct(fields).size


MAX_HEADER_LENGTH = header_length(LogField.ALL)
"""The longest record header (every element selected)."""


ALL_WORD = "ALL"
LOG_FIELDS_HELP = (
    "log fields: "
    + " ".join(field.words[0] for field in HEADER)
    + " ("
    + ", ".join(word for field in HEADER for word in field.words[1:])
    + ") or ALL, separated by spaces, ',' or '|'"
)


def parse_log_fields(text: str) -> LogField:
    """A ``log =`` / ``--log`` value: field names (or ALL, every ``DP_LOG_*`` bit) in any
    case, separated by spaces, commas or '|'. ValueError names an unknown word."""
    words = {word: field.flag for field in HEADER for word in field.words}
    fields = LogField.NONE
    for word in text.replace(",", " ").replace("|", " ").split():
        name = word.upper()
        if name == ALL_WORD:
            fields |= LogField.ALL
        elif name in words:
            fields |= words[name]
        else:
            raise ValueError(f"unknown log field '{word}'")
    return fields


def markdown_table() -> str:
    """The header table as docs/probes.md shows it (a test keeps the two equal)."""
    rows = [
        "| `log =` | mask bits (`DP_HDR_*`) | values (format) | shown as |",
        "|---|---|---|---|",
    ]
    for field in HEADER:
        values = ", ".join(f"{value.name} (`{value.code}`)" for value in field.values)
        shown = ", ".join(dict.fromkeys(value.shown.value for value in field.values))
        rows.append(f"| {' / '.join(field.words)} | {field.bits:#05x} | {values} | {shown} |")
    return "\n".join(rows) + "\n"
