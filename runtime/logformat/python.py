"""The Python formatter: a layout (``layouts``) interpreted for one record.

The Python path's records go through here, one at a time; the native formatter
(``native``) is generated from the same layouts and must write the same bytes. The
per-value encodings both share (text and time) are defined here once.
"""

from __future__ import annotations

import json

from dprobes.runtime.logformat.layouts import (
    Binary,
    Dump,
    Fields,
    Hex,
    Layout,
    Number,
    Pieces,
    Raw,
    Style,
    Text,
)
from dprobes.runtime.logtargets import LogRecord, exception_record

PRINTABLE = range(0x20, 0x7F)
"""The characters a dump row shows as themselves (the kernel's ``isprint``)."""
ASCII_MASK = 0x7F
"""A dump row shows each byte with bit 7 masked off."""


def text_bytes(style: Style, text: str) -> bytes:
    """A text value (the process name) written in ``style``; the native formatter gets
    these bytes from here, made once per probe."""
    if style is Style.JSON_TEXT:
        return json.dumps(text).encode()
    return text.encode()


def time_text(seconds: int, microseconds: int) -> str:
    """The header's timeval as EVL shows it."""
    return f"{seconds}:{microseconds:06d}"


def _value(style: Style, parts: tuple[int | str, ...]) -> bytes:
    if style in (Style.TEXT, Style.JSON_TEXT):
        return text_bytes(style, str(parts[0]))
    if style is Style.HEX_TIME:
        return b"%08x:%08x" % parts
    if style is Style.JSON_TIME:
        return json.dumps(time_text(*parts)).encode()  # type: ignore[arg-type]
    if style is Style.HEX:
        return b"%x" % parts[0]
    if style is Style.HEX8:
        return b"%08x" % parts[0]
    return b"%d" % parts[0]


def dump(piece: Dump, data: bytes) -> bytes:
    """``data`` as rows (see ``layouts.Dump``)."""
    rows = []
    for at in range(0, len(data), piece.width):
        chunk = data[at : at + piece.width]
        groups = (chunk[i : i + piece.group] for i in range(0, len(chunk), piece.group))
        hex_part = b"".join(
            group.hex().encode() + (b" " if len(group) == piece.group else b"") for group in groups
        )
        text = bytes(c if c in PRINTABLE else 0x2E for c in (b & ASCII_MASK for b in chunk))
        rows.append(b"0x%08x : %-*s: %s\n" % (at, piece.row_chars(), hex_part, text))
    return b"".join(rows)


def hex_bytes(piece: Hex, data: bytes) -> bytes:
    """``data`` as ``layouts.Hex`` says."""
    return b"".join(
        (b"0" if byte < piece.zero_below else b"") + b"%x" % byte + piece.after for byte in data
    )


def _format(pieces: Pieces, record: LogRecord) -> bytes:
    out = []
    for piece in pieces:
        if isinstance(piece, Text):
            out.append(piece.value)
        elif isinstance(piece, Number):
            out.append(b"%d" % getattr(record, piece.name))
        elif isinstance(piece, Fields):
            for value, parts in record.values():
                out += (
                    piece.before,
                    value.name.encode(),
                    piece.between,
                    _value(piece.styles[value.shown], parts),
                    piece.after,
                )
        elif isinstance(piece, Binary):
            out.append(record.header(piece.smp))
        elif isinstance(piece, Raw):
            out.append(record.data)
        elif isinstance(piece, Hex):
            out.append(hex_bytes(piece, record.data))
        elif isinstance(piece, Dump):
            out.append(dump(piece, record.data))
    return b"".join(out)


def format_record(layout: Layout, record: LogRecord) -> bytes:
    """What ``layout`` writes for ``record`` (without an exception log)."""
    return _format(layout.record, record)


def format_hit(layout: Layout, record: LogRecord, exception_log: bytes) -> bytes:
    """What ``layout`` writes for one hit: its record, then its exception log's."""
    if not exception_log:
        return format_record(layout, record)
    return format_record(layout, record) + _format(
        layout.exception, exception_record(exception_log)
    )
