"""The Python formatter: a layout (``layouts``) interpreted for one record.

The Python path's records go through here, one at a time; the native formatter
(``native``) is generated from the same layouts and must write the same bytes. The
per-value encodings both share (text and time) are defined here once.
"""

from __future__ import annotations

import json

from dprobes.runtime.logformat.layouts import (
    Binary,
    Fields,
    Hex,
    HexDump,
    Layout,
    Number,
    Raw,
    Style,
    Text,
)
from dprobes.runtime.logtargets import LogRecord, exception_record


def text_bytes(style: Style, text: str) -> bytes:
    """A text value (the process name) written in ``style``; the native formatter gets
    these bytes from here, made once per probe."""
    if style is Style.JSON_TEXT:
        return json.dumps(text).encode()
    return text.encode()


def time_text(seconds: int, microseconds: int) -> str:
    """The header's timeval as KLOG and EVL show it."""
    return f"{seconds}:{microseconds:06d}"


def _value(style: Style, parts: tuple[int | str, ...]) -> bytes:
    if style in (Style.TEXT, Style.JSON_TEXT):
        return text_bytes(style, str(parts[0]))
    if style is Style.TIME:
        return time_text(*parts).encode()  # type: ignore[arg-type]
    if style is Style.JSON_TIME:
        return json.dumps(time_text(*parts)).encode()  # type: ignore[arg-type]
    if style is Style.HEX:
        return f"{parts[0]:#x}".encode()
    return str(parts[0]).encode()


def hex_dump(piece: HexDump, data: bytes) -> bytes:
    """``data`` as rows of ``piece.width`` bytes (see ``layouts.HexDump``)."""
    rows = []
    pad = 3 * piece.width - 1
    for at in range(0, len(data), piece.width):
        chunk = data[at : at + piece.width]
        text = bytes(b if 0x20 <= b < 0x7F else 0x2E for b in chunk)
        rows.append(
            b"%0*x%s%-*s%s%s%s%s\n"
            % (
                piece.offset_digits,
                at,
                piece.gap,
                pad,
                chunk.hex(" ").encode(),
                piece.gap,
                piece.edge,
                text,
                piece.edge,
            )
        )
    return b"".join(rows)


def format_record(layout: Layout, record: LogRecord) -> bytes:
    """What ``layout`` writes for ``record``."""
    out = []
    for piece in layout:
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
                )
        elif isinstance(piece, Binary):
            out.append(record.header())
        elif isinstance(piece, Raw):
            out.append(record.data)
        elif isinstance(piece, Hex):
            out.append(
                record.data.hex(piece.separator.decode()).encode()
                if piece.separator
                else record.data.hex().encode()
            )
        elif isinstance(piece, HexDump):
            out.append(hex_dump(piece, record.data))
    return b"".join(out)


def format_hit(layout: Layout, record: LogRecord, exception_log: bytes) -> bytes:
    """What ``layout`` writes for one hit: its record, then its exception log's."""
    if not exception_log:
        return format_record(layout, record)
    return format_record(layout, record) + format_record(layout, exception_record(exception_log))
