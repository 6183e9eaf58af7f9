"""The LTT target as a CTF 1.8 trace: the TSDL metadata and the binary stream's packets.

DProbes 5.0 gave LTT the binary record (``vm.logrecord``) as a raw event. Here each record
is an event of a Common Trace Format trace that babeltrace2 reads: one event class per
major/minor (and per header selection, whose fields differ), its payload the binary
header field by field, then the data bytes. The payload's fixed part is byte for byte
``LogRecord.header()``: the types below are derived from the header's ``struct`` codes,
so the metadata describes exactly what is written.

A small builder (``Integer``, ``Array``, ``Struct``, ``section``) writes the metadata, and
the same types give the ``struct`` layouts of the packet and event headers. Records reach
the trace through a ``LogWriter`` (its thread, its order, the native formatter) in the
``RECORDS`` layout; ``TraceFile`` turns them into events and packets.
"""

from __future__ import annotations

import binascii
import hashlib
import itertools
import re
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from dprobes.runtime.clock import NS_PER_INSTRUCTION
from dprobes.runtime.logformat.layouts import Binary, Hex, Layout, Text
from dprobes.vm.logrecord import (
    BASE,
    HEADER,
    NS_PER_MICROSECOND,
    NS_PER_SECOND,
    HeaderValue,
    Shown,
    header_length,
    mask,
    selected,
)
from dprobes.vm.program import LogField

METADATA_FILE = "metadata"
STREAM_FILE = "stream"
MAGIC = 0xC1FC1FC1
"""A CTF packet's first word."""
PACKET_BYTES = 1 << 20
"""Events are cut into packets of about this size."""
CLOCK = "machine"
FIRST_LINE = "/* CTF 1.8 */\n"
"""How the metadata starts (a plain-text metadata file, as CTF 1.8 allows)."""
TRACE_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_OID, "dprobes LTT trace")
BITS_PER_BYTE = 8

_INTEGER_CODES = {8: "B", 16: "H", 32: "I", 64: "Q"}
_CODE_BITS = {code: bits for bits, code in _INTEGER_CODES.items()}


@dataclass(frozen=True)
class Integer:
    """A little-endian, byte-aligned unsigned integer (``encoding``: a character;
    ``clock``: its value is that clock's)."""

    bits: int
    base: int = 10
    encoding: str | None = None
    clock: str | None = None

    def tsdl(self) -> str:
        attributes = [f"size = {self.bits}", "align = 8", "signed = false"]
        if self.base != 10:
            attributes.append(f"base = {self.base}")
        if self.encoding:
            attributes.append(f"encoding = {self.encoding}")
        if self.clock:
            attributes.append(f"map = clock.{self.clock}.value")
        return "integer { " + "; ".join(attributes) + "; }"

    @property
    def code(self) -> str:
        return _INTEGER_CODES[self.bits]


@dataclass(frozen=True)
class Array:
    """``element`` repeated ``length`` times, or as many times as the earlier field named
    ``length`` says (a sequence)."""

    element: Integer
    length: int | str

    @property
    def code(self) -> str:
        if isinstance(self.length, str):
            raise ValueError("a sequence has no fixed layout")
        return f"{self.length}{'s' if self.element.bits == BITS_PER_BYTE else self.element.code}"


@dataclass(frozen=True)
class Struct:
    """Named fields in order, with no padding between them (every field is byte-aligned)."""

    fields: tuple[tuple[str, Integer | Array | Struct], ...]

    def tsdl(self, indent: str = "\t") -> str:
        inner = indent + "\t"
        lines = [f"{inner}{declaration(name, kind, inner)}\n" for name, kind in self.fields]
        return "struct {\n" + "".join(lines) + indent + "}"

    @property
    def code(self) -> str:
        return "".join(kind.code for _, kind in self.fields)

    def packing(self) -> struct.Struct:
        """The layout of a struct with no sequence in it."""
        return struct.Struct("<" + self.code)


def declaration(name: str, kind: Integer | Array | Struct, indent: str = "\t") -> str:
    """A field's TSDL declaration: ``TYPE name;`` (``name[length]`` for an array)."""
    if isinstance(kind, Array):
        return f"{kind.element.tsdl()} {name}[{kind.length}];"
    if isinstance(kind, Struct):
        return f"{kind.tsdl(indent)} {name};"
    return f"{kind.tsdl()} {name};"


def quoted(text: str) -> str:
    """A TSDL string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def section(head: str, entries: list[str]) -> str:
    """``head { entry; ... };`` with one entry a line."""
    return head + " {\n" + "".join(f"\t{entry}\n" for entry in entries) + "};\n"


U8, U16, U32, U64 = Integer(8), Integer(16), Integer(32), Integer(64)
TIME = Integer(64, clock=CLOCK)

PACKET_HEADER = Struct(
    (("magic", Integer(32, base=16)), ("uuid", Array(U8, 16)), ("stream_id", U32))
)
PACKET_CONTEXT = Struct(
    (
        ("timestamp_begin", TIME),
        ("timestamp_end", TIME),
        ("content_size", U64),
        ("packet_size", U64),
    )
)
EVENT_HEADER = Struct((("id", U32), ("timestamp", TIME)))

BASE_NAMES = ("facility_id", "length", "mask", "major", "minor")
"""The names of the record's fixed start (``vm.logrecord.BASE``) in the events."""
DATA_LENGTH, DATA = "data_length", "data"


def _base_fields() -> tuple[tuple[str, Integer], ...]:
    return tuple(
        (name, Integer(_CODE_BITS[code], base=16 if name == "mask" else 10))
        for name, code in zip(BASE_NAMES, BASE.format.lstrip("<"), strict=True)
    )


def value_type(value: HeaderValue) -> Integer | Array | Struct:
    """The CTF type of one header value, from its ``struct`` code: an integer (addresses in
    hex), a struct of integers named by what it is packed from (the time), or ``Ns``
    characters (the process name)."""
    parts = re.findall(r"(\d*)([A-Za-z])", value.code)
    base = 16 if value.shown is Shown.ADDRESS else 10
    if len(parts) > 1:
        return Struct(
            tuple(
                (name, Integer(_CODE_BITS[code]))
                for name, (_, code) in zip(value.hit, parts, strict=True)
            )
        )
    count, code = parts[0]
    if code == "s":
        return Array(Integer(BITS_PER_BYTE, encoding="UTF8"), int(count))
    return Integer(_CODE_BITS[code], base=base)


def payload(fields: LogField) -> Struct:
    """An event's fields for records of one header selection: the binary header, then the
    data's length and bytes."""
    values = tuple(
        (value.name, value_type(value)) for field in selected(fields) for value in field.values
    )
    return Struct(
        (
            *_base_fields(),
            *values,
            (DATA_LENGTH, U32),
            (DATA, Array(Integer(BITS_PER_BYTE, base=16), DATA_LENGTH)),
        )
    )


def trace_uuid(*inputs: bytes) -> uuid.UUID:
    """The trace's UUID, from what the run was made of (the same run, the same trace)."""
    digest = hashlib.sha256()
    for part in inputs:
        digest.update(b"%d:" % len(part) + part)
    return uuid.uuid5(TRACE_NAMESPACE, digest.hexdigest())


_RECORD: tuple[Binary, Hex, Text] = (Binary(), Hex(0x10, b""), Text(b"\n"))
RECORDS = Layout(_RECORD, _RECORD)
"""How the native formatter hands records (and exception logs) over: the binary header
(its mask says how long it is), the data in hex, a newline."""


class Selection(NamedTuple):
    """What a header's mask says about the header: the log fields, the header's length and
    where its time is (None when it shows none)."""

    fields: LogField
    length: int
    time_at: int | None


def _selections() -> dict[int, Selection]:
    out = {}
    for chosen in itertools.product((False, True), repeat=len(HEADER)):
        fields = LogField.NONE
        for field, on in zip(HEADER, chosen, strict=True):
            fields |= field.flag if on else LogField.NONE
        codes = [value.code for field in selected(fields) for value in field.values]
        names = [value.name for field in selected(fields) for value in field.values]
        time_at = None
        if LogField.TSC in fields:
            before = codes[: names.index(TIME_VALUE.name)]
            time_at = struct.calcsize(BASE.format + "".join(before))
        out[mask(fields)] = Selection(fields, header_length(fields), time_at)
    return out


TIME_VALUE = next(value for field in HEADER for value in field.values if value.shown is Shown.TIME)
SELECTIONS = _selections()
"""Every header selection by its mask word."""


def _base_offset(name: str) -> int:
    return struct.calcsize(BASE.format[: 1 + BASE_NAMES.index(name)])


_MASK_AT, _MAJOR_AT = _base_offset("mask"), _base_offset("major")
_MASK = struct.Struct("<" + BASE.format[1 + BASE_NAMES.index("mask")])
_MAJOR_MINOR = struct.Struct("<" + BASE.format[1 + BASE_NAMES.index("major") :])
_TIMEVAL = struct.Struct("<" + TIME_VALUE.code)
_LENGTH = struct.Struct("<" + U32.code)


class CtfTrace:
    """The event classes seen so far (an id for each major/minor/selection, in order of
    first use), the events waiting for a packet, and the metadata describing them."""

    def __init__(self, trace_id: uuid.UUID) -> None:
        self.uuid = trace_id
        self.classes: dict[tuple[int, int, LogField], int] = {}
        self._kinds: dict[bytes, tuple[int, int, int | None]] = {}
        self._events = bytearray()
        self._packets: list[bytes] = []
        self._first = self._time = 0

    def add_formatted(self, text: bytes) -> int:
        """Records as ``RECORDS`` writes them, each as an event; the bytes used (a record
        cut off at the end is left for the next call). An event's time is its record's
        when the header shows it, else the previous event's (a record holds nothing its
        header does not show)."""
        at, end_of_text = 0, len(text)
        events, kinds, time = self._events, self._kinds, self._time
        event_header = EVENT_HEADER.packing().pack
        view = memoryview(text)
        while at + BASE.size <= end_of_text:
            kind = kinds.get(text[at + _MASK_AT : at + BASE.size])
            if kind is None:
                kind = self._kind(text, at)
            ident, length, time_at = kind
            data_at = at + length
            end = text.find(b"\n", data_at)
            if end < 0:
                break
            if time_at is not None:
                seconds, microseconds = _TIMEVAL.unpack_from(text, at + time_at)
                time = max(time, seconds * NS_PER_SECOND + microseconds * NS_PER_MICROSECOND)
            if not events:
                self._first = time
            events += event_header(ident, time)
            events += view[at:data_at]
            events += _LENGTH.pack((end - data_at) // 2)
            events += binascii.unhexlify(view[data_at:end])
            at = end + 1
            if len(events) >= PACKET_BYTES:
                self._time = time
                self._close_packet()
        self._time = time
        return at

    def _kind(self, text: bytes, at: int) -> tuple[int, int, int | None]:
        """The event class of the record at ``at`` (made on first use), its header's
        length and where its time is, cached by the header's mask, major and minor."""
        selection = SELECTIONS[_MASK.unpack_from(text, at + _MASK_AT)[0]]
        key = (*_MAJOR_MINOR.unpack_from(text, at + _MAJOR_AT), selection.fields)
        ident = self.classes.setdefault(key, len(self.classes))
        kind = (ident, selection.length, selection.time_at)
        self._kinds[text[at + _MASK_AT : at + BASE.size]] = kind
        return kind

    def take_packets(self, everything: bool = False) -> bytes:
        """The packets filled so far (``everything``: and the waiting events as one more)."""
        if everything and self._events:
            self._close_packet()
        packets, self._packets = b"".join(self._packets), []
        return packets

    def _close_packet(self) -> None:
        header, context = PACKET_HEADER.packing(), PACKET_CONTEXT.packing()
        bits = (header.size + context.size + len(self._events)) * BITS_PER_BYTE
        self._packets.append(
            header.pack(MAGIC, self.uuid.bytes, 0)
            + context.pack(self._first, self._time, bits, bits)
            + self._events
        )
        self._events.clear()

    def metadata(self) -> str:
        """The TSDL text describing the trace and every event class seen so far."""
        parts = [
            FIRST_LINE,
            section(
                "trace",
                [
                    "major = 1;",
                    "minor = 8;",
                    f"uuid = {quoted(str(self.uuid))};",
                    "byte_order = le;",
                    f"packet.header := {PACKET_HEADER.tsdl()};",
                ],
            ),
            section(
                "env",
                [f"domain = {quoted('dprobes')};", f"tracer_name = {quoted('dpc run')};"],
            ),
            section(
                "clock",
                [
                    f"name = {CLOCK};",
                    f"uuid = {quoted(str(uuid.uuid5(self.uuid, CLOCK)))};",
                    "description = "
                    + quoted("guest time of the emulated machine, from its instruction count")
                    + ";",
                    f"freq = {NS_PER_SECOND};",
                    f"precision = {NS_PER_INSTRUCTION};",
                    "offset_s = 0;",
                    "absolute = true;",
                ],
            ),
            section(
                "stream",
                [
                    "id = 0;",
                    f"packet.context := {PACKET_CONTEXT.tsdl()};",
                    f"event.header := {EVENT_HEADER.tsdl()};",
                ],
            ),
        ]
        for (major, minor, fields), ident in self.classes.items():
            parts.append(
                section(
                    "event",
                    [
                        f"name = {quoted(f'dprobes({major},{minor})')};",
                        f"id = {ident};",
                        "stream_id = 0;",
                        f"fields := {payload(fields).tsdl()};",
                    ],
                )
            )
        return "".join(parts)


class TraceFile:
    """The trace's files as the stream a ``LogWriter`` writes ``RECORDS`` to: records
    become events, filled packets are appended to the stream file, and the metadata is
    rewritten whenever an event class is new; ``flush`` writes the waiting events as a
    last packet. ``directory`` must be ready (``prepare_directory``)."""

    def __init__(self, directory: Path, trace_id: uuid.UUID) -> None:
        self.directory = directory
        self.trace = CtfTrace(trace_id)
        self._stream = open(directory / STREAM_FILE, "wb")  # noqa: SIM115
        self._tail = b""
        self._described = -1
        self._write_metadata()

    def _write_metadata(self) -> None:
        if self._described != len(self.trace.classes):
            (self.directory / METADATA_FILE).write_text(self.trace.metadata(), encoding="utf-8")
            self._described = len(self.trace.classes)

    def _write_packets(self, everything: bool = False) -> None:
        packets = self.trace.take_packets(everything)
        if packets:
            self._stream.write(packets)
            self._write_metadata()

    def write(self, formatted: bytes | memoryview) -> None:
        text = self._tail + bytes(formatted)
        self._tail = text[self.trace.add_formatted(text) :]
        self._write_packets()

    def flush(self) -> None:
        self._write_packets(everything=True)
        self._write_metadata()
        self._stream.flush()

    def close(self) -> None:
        self._stream.close()


def prepare_directory(path: Path) -> None:
    """Make ``path`` ready for a trace: created when missing (its parent must exist), or a
    trace written before (its files are replaced). ValueError says why it is refused:
    not a directory, or a directory holding anything else."""
    if path.is_dir():
        entries = {entry.name for entry in path.iterdir()}
        if entries and not (entries <= {METADATA_FILE, STREAM_FILE} and _is_trace(path)):
            raise ValueError(f"directory is not empty and holds no LTT trace: {path}")
        return
    if path.exists():
        raise ValueError(f"not a directory (LTT writes a trace directory): {path}")
    try:
        path.mkdir()
    except OSError as error:
        raise ValueError(f"{error.strerror}: {path}") from None


def _is_trace(path: Path) -> bool:
    try:
        with open(path / METADATA_FILE, encoding="utf-8", errors="replace") as metadata:
            return metadata.read(len(FIRST_LINE)) == FIRST_LINE
    except OSError:
        return False
