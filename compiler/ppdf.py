"""PPDF: the on-disk form of a compiled probe program (a ``vm.program.Program``).

The historical DProbes layout is unknown, so this project defines its own: little-endian,
packed (no padding), versioned, checksummed. A file is a fixed file header with a section
table, seven sections stored back to back in a fixed order, and a CRC-32 trailer::

    file header | program header | probes | code | strings | source map | labels | formats | crc32

Every structure is declared once below as a ``Layout``: a list of ``Field`` rows (name,
struct code, meaning, valid values). The same rows build the ``struct.Struct`` that packs
and unpacks it, run the generic range checks, and print the byte-by-byte tables of
``docs/ppdf.md`` (``python -m dprobes.compiler.ppdf --doc``), so code and documentation
cannot drift apart.

Loading is validation: ``decode_ppdf`` checks every field, offset and length and stops at
the first problem with one ``PPDFError`` naming the byte offset and what is wrong. It
accepts only the canonical encoding (sections in order without gaps, each string stored
once in order of first use, flags exactly 0 or 1), so ``encode_ppdf(decode_ppdf(b)) == b``
for every file it accepts. ``encode_ppdf`` runs the decoder on its own output, so it never
writes a file the loader would reject and the rules live in one place. Nothing here
interprets the RPN code: the verifier does that, after loading.
"""

from __future__ import annotations

import argparse
import struct
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from itertools import pairwise
from pathlib import Path
from typing import Any, TypeVar

from dprobes.compiler.diagnostics import ByteLoc, Diagnostic, Severity
from dprobes.vm.program import (
    EX_LOGMAX_LIMIT,
    HEAPMAX_LIMIT,
    JMPMAX_LIMIT,
    LOGMAX_LIMIT,
    MAX_GLOBAL_VARS,
    MAX_HITS_DEFAULT,
    MAX_LOCAL_VARS,
    LogField,
    LogTarget,
    ModuleType,
    Probe,
    ProbeKind,
    Program,
    ProgramHeader,
    SourceLine,
    WatchType,
)

MAGIC = b"DPPDF\r\n\x1a"
"""File signature; the CR LF and ^Z catch text-mode transfers that mangle binary files."""

VERSION = 1
"""The only format version this module reads and the one it writes."""

MAX_CODE_LENGTH = 0xFFFF
"""DProbes' ``rpn_length`` is a u16, so the shared code blob is at most this long."""

MODTYPE_MASK = 0x0000_00FF
LOG_FIELDS_MASK = int(LogField.ALL)
LOG_TARGET_MASK = 0x00FF_0000
KIND_MASK = int(ProbeKind.BREAKPOINT | ProbeKind.WATCHPOINT)
WATCH_TYPE_MASK = 0x0003
WATCH_LENGTHS = (1, 2, 4)


class PPDFError(ValueError):
    """A file that is not a valid PPDF: ``offset`` is the byte where the problem is."""

    def __init__(self, offset: int, message: str, file: str = "<ppdf>") -> None:
        super().__init__(f"byte {offset}: {message}")
        self.offset = offset
        self.message = message
        self.file = file

    def diagnostic(self) -> Diagnostic:
        """The error as a structured diagnostic (``file: byte N: error: message``)."""
        return Diagnostic(Severity.ERROR, self.message, ByteLoc(self.file, self.offset))


# {==== Declarative layouts ===========================================================

_TYPES: dict[str, tuple[str, int | None]] = {
    "B": ("u8", 0xFF),
    "H": ("u16", 0xFFFF),
    "I": ("u32", 0xFFFF_FFFF),
    "Q": ("u64", 2**64 - 1),
    "8s": ("u8[8]", None),
}
"""Struct code -> (documented type, largest value; None for byte strings)."""


@dataclass(frozen=True, slots=True)
class Field:
    """One field of a structure.

    ``lo``/``hi``/``values`` are generic rules that ``Layout.check`` applies to every
    decoded record; ``valid`` documents a rule that the decoder checks by hand (string
    references, cross-field limits, composite words) or overrides the generated text.
    """

    name: str
    code: str
    meaning: str
    valid: str = ""
    lo: int = 0
    hi: int | None = None
    values: tuple[int, ...] = ()

    @property
    def type_name(self) -> str:
        return _TYPES[self.code][0]

    def rule(self) -> str:
        """The valid values, as the documentation states them."""
        if self.valid:
            return self.valid
        if self.values:
            return " or ".join(str(v) for v in self.values)
        if self.hi is not None:
            return f"{self.lo}..{self.hi}"
        return f"at least {self.lo}" if self.lo else "any"

    def problem(self, value: int) -> str | None:
        """Why ``value`` breaks this field's generic rule, or None if it does not."""
        if self.values and value not in self.values:
            return f"{self.name} = {value} is not {self.rule()}"
        if value < self.lo:
            return f"{self.name} = {value} is below the minimum {self.lo}"
        if self.hi is not None and value > self.hi:
            return f"{self.name} = {value} exceeds the limit {self.hi}"
        return None


class Layout:
    """A fixed-size structure: its fields in file order and the struct that packs them."""

    def __init__(self, title: str, fields: tuple[Field, ...]) -> None:
        self.title = title
        self.fields = fields
        self.codec = struct.Struct("<" + "".join(f.code for f in fields))
        self.size = self.codec.size
        self.offsets: dict[str, int] = {}
        position = 0
        for f in fields:
            self.offsets[f.name] = position
            position += struct.calcsize("<" + f.code)

    def unpack(self, data: bytes, at: int) -> dict[str, Any]:
        """The fields of the record at ``at``; the caller has checked it is in bounds."""
        return dict(zip(self.offsets, self.codec.unpack_from(data, at), strict=True))

    def pack(self, values: dict[str, Any], what: str) -> bytes:
        """Pack one record; a value that does not fit its type is a ValueError naming it."""
        for f in self.fields:
            value = values[f.name]
            limit = _TYPES[f.code][1]
            if limit is not None and not (isinstance(value, int) and 0 <= value <= limit):
                raise ValueError(f"{what}: {f.name} = {value!r} does not fit in a {f.type_name}")
        return self.codec.pack(*(values[f.name] for f in self.fields))

    def check(self, values: dict[str, Any], at: int, what: str) -> None:
        """Apply every field's generic rule to a decoded record at file offset ``at``."""
        for f in self.fields:
            problem = f.problem(values[f.name])
            if problem is not None:
                raise PPDFError(at + self.offsets[f.name], f"{what}: {problem}")

    def table(self) -> str:
        """The structure as a Markdown table: offset, size, type, field, meaning, valid."""
        rows = [
            "| Offset | Size | Type | Field | Meaning | Valid values |",
            "|---:|---:|---|---|---|---|",
        ]
        for f in self.fields:
            cells = (
                str(self.offsets[f.name]),
                str(struct.calcsize("<" + f.code)),
                f.type_name,
                f"`{f.name}`",
                f.meaning,
                f.rule(),
            )
            rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        return "\n".join(rows)


_BOOL = (0, 1)
_STRING = "string reference"

PROGRAM_HEADER = Layout(
    "Program header",
    (
        Field(
            "name",
            "I",
            "module name: a path (user), a module name (kmod), any key (kernel)",
            f"{_STRING}, not empty",
        ),
        Field(
            "flags",
            "I",
            "`pgm.flags` = module type | log fields | log target",
            "see the flags word table",
        ),
        Field("id", "I", "program id, written into stack-trace headers"),
        Field("jmpmax", "I", "taken jumps and loops allowed per hit", hi=JMPMAX_LIMIT),
        Field("logmax", "I", "bytes of log data per hit", hi=LOGMAX_LIMIT),
        Field("ex_logmax", "I", "bytes of exception (stack-trace) log", hi=EX_LOGMAX_LIMIT),
        Field("heapmax", "I", "probe heap bytes per CPU", hi=HEAPMAX_LIMIT),
        Field("major", "H", "major id stamped on this program's log records"),
        Field("num_lv", "H", "local variables", hi=MAX_LOCAL_VARS),
        Field("num_gv", "H", "global variables", hi=MAX_GLOBAL_VARS),
        Field("autostacktrace", "B", "1: log a stack trace on every exception", values=_BOOL),
    ),
)

PROBE = Layout(
    "Probe record",
    (
        Field(
            "offset",
            "Q",
            "probe location: file offset (user), offset from PAGE_OFFSET "
            "(kernel), offset from the module base (kmod), or an absolute address",
        ),
        Field("probe", "H", "kind bits | watch type", "see the probe word table"),
        Field("major", "H", "major id in this probe's log records"),
        Field("minor", "H", "minor id in this probe's log records"),
        Field("group", "H", "selection tag for applying a subset"),
        Field("type", "H", "selection tag for applying a subset"),
        Field("ex_mask", "H", "exception codes the handler catches"),
        Field("rpn_offset", "I", "start of the handler in the code blob", "below `rpn_end`"),
        Field(
            "rpn_end",
            "I",
            "end of the handler (exclusive)",
            "at most the code length; handlers of different probes do not overlap",
        ),
        Field("passcount", "I", "hits skipped before the handler runs", hi=MAX_HITS_DEFAULT),
        Field(
            "maxhits",
            "I",
            f"hits before the probe is disabled; 0 means {MAX_HITS_DEFAULT:#x}",
            hi=MAX_HITS_DEFAULT,
        ),
        Field("heap_size", "I", "heap bytes this probe may allocate", "at most `heapmax`"),
        Field("location", "I", "the location as written (symbol+n), for listings", _STRING),
        Field(
            "len",
            "B",
            "watch length - 1, as DProbes kept it",
            "0, 1 or 3 (1, 2 or 4 bytes); 0 for a breakpoint",
        ),
        Field("opcode", "B", "the byte expected at the probe address", "0 when `opcode_set` is 0"),
        Field("opcode_set", "B", "1: `opcode` is given and checked before insertion", values=_BOOL),
        Field("address_flag", "B", "1: `offset` is an absolute address", values=_BOOL),
        Field("logonfault", "B", "1: log even if the probed instruction faults", values=_BOOL),
    ),
)

SOURCE_LINE = Layout(
    "Source-map record",
    (
        Field(
            "offset",
            "I",
            "code offset of an instruction",
            "below the code length; above the previous record's",
        ),
        Field("file", "I", "source file name", _STRING),
        Field("line", "I", "1-based line", lo=1),
        Field("column", "I", "1-based column, 0 if unknown"),
    ),
)

LABEL = Layout(
    "Label record",
    (
        Field("offset", "I", "code offset the label names", "at most the code length"),
        Field("name", "I", "label name", f"{_STRING}, not empty, unique"),
    ),
)

FORMAT = Layout(
    "Format record", (Field("format", "I", "a printf format of the high-level language", _STRING),)
)


@dataclass(frozen=True, slots=True)
class Section:
    """One entry of the section table: a run of fixed-size records, or a byte blob."""

    key: str
    title: str
    meaning: str
    record: Layout | None = None
    exactly_one: bool = False
    max_length: int | None = None

    def length_rule(self) -> str:
        """The valid section lengths, as the documentation states them."""
        if self.record is not None:
            size = self.record.size
            return f"{size}" if self.exactly_one else f"a multiple of {size}"
        return f"at most {self.max_length}" if self.max_length is not None else "any"

    def length_problem(self, length: int) -> str | None:
        """Why a section of ``length`` bytes is malformed, or None."""
        if self.record is not None:
            size = self.record.size
            if self.exactly_one and length != size:
                return f"section {self.title} is {length} bytes, expected {size}"
            if length % size:
                return (
                    f"section {self.title} is {length} bytes, not a whole number of "
                    f"{size}-byte records"
                )
        if self.max_length is not None and length > self.max_length:
            return f"section {self.title} is {length} bytes, more than {self.max_length}"
        return None


SECTIONS: tuple[Section, ...] = (
    Section(
        "program_header", "program header", "the program header", PROGRAM_HEADER, exactly_one=True
    ),
    Section("probes", "probes", "one probe record per probe, at least one", PROBE),
    Section(
        "code",
        "code",
        "the RPN code shared by all probes (DProbes' rpn_length is a u16)",
        max_length=MAX_CODE_LENGTH,
    ),
    Section(
        "strings",
        "string table",
        "NUL-terminated UTF-8 strings, each stored once, in order of first reference",
    ),
    Section("source_map", "source map", "source-map records", SOURCE_LINE),
    Section("labels", "labels", "label records", LABEL),
    Section("formats", "formats", "format records", FORMAT),
)

FILE_HEADER = Layout(
    "File header",
    (
        Field("magic", "8s", "file signature", f"`{MAGIC!r}`"),
        Field("version", "H", "format version", f"{VERSION}"),
        Field(
            "total_length", "I", "length of the whole file, trailer included", "the file's length"
        ),
        *(
            field
            for s in SECTIONS
            for field in (
                Field(
                    f"{s.key}_offset",
                    "I",
                    f"start of the {s.title} section",
                    "the end of the previous section",
                ),
                Field(
                    f"{s.key}_length",
                    "I",
                    f"length of the {s.title} section: {s.meaning}",
                    s.length_rule(),
                ),
            )
        ),
    ),
)

TRAILER = Layout(
    "Trailer",
    (Field("crc32", "I", "`zlib.crc32` of every byte before the trailer", "the computed CRC"),),
)

MIN_FILE_SIZE = FILE_HEADER.size + TRAILER.size

E = TypeVar("E", bound=Enum)

# }====


def _enum_table(title: str, enums: tuple[type[Enum], ...], digits: int, rule: str) -> str:
    """A composite word's bits as a Markdown table, generated from the model's enums."""
    rows = [f"**{title}**: {rule}.", "", "| Value | Name |", "|---:|---|"]
    rows.extend(
        f"| `{m.value:#0{digits + 2}x}` | {e.__name__}.{m.name} |" for e in enums for m in e
    )
    return "\n".join(rows)


def layout_doc() -> str:
    """The generated part of ``docs/ppdf.md``: every structure, byte by byte."""
    parts: list[str] = []
    for layout, where in (
        (FILE_HEADER, "at byte 0"),
        (PROGRAM_HEADER, "the program header section"),
        (PROBE, "each record of the probes section"),
        (SOURCE_LINE, "each record of the source map section"),
        (LABEL, "each record of the labels section"),
        (FORMAT, "each record of the formats section"),
        (TRAILER, "the last 4 bytes"),
    ):
        parts.append(f"### {layout.title} ({layout.size} bytes, {where})\n\n{layout.table()}\n")
    parts.append(
        _enum_table(
            "Flags word",
            (ModuleType, LogField, LogTarget),
            8,
            f"module type: exactly one of the ModuleType values in `flags & {MODTYPE_MASK:#x}`; "
            f"log fields: any bits of `{LOG_FIELDS_MASK:#x}`; log target: exactly one of the "
            f"LogTarget values in `flags & {LOG_TARGET_MASK:#x}`; all other bits 0",
        )
        + "\n"
    )
    parts.append(
        _enum_table(
            "Probe word",
            (ProbeKind, WatchType),
            4,
            f"exactly one ProbeKind bit of `{KIND_MASK:#x}`, the WatchType in bits "
            f"`{WATCH_TYPE_MASK:#x}` (0 for a breakpoint), all other bits 0",
        )
        + "\n"
    )
    return "\n".join(parts)


# {==== Decoding ======================================================================


@dataclass(frozen=True, slots=True)
class _Span:
    """Where a section lies, and where its section-table entry is (for messages)."""

    start: int
    length: int
    entry: int

    @property
    def end(self) -> int:
        return self.start + self.length


class _StringReader:
    """Resolves string references, accepting only the canonical table.

    Canonical means each distinct string is stored once, in order of first reference,
    with nothing else in the table; the encoder's ``_StringTable`` writes exactly that.
    """

    def __init__(self, data: bytes, span: _Span) -> None:
        self._table = data[span.start : span.end]
        self._base = span.start
        self._next = 0
        self._by_ref: dict[int, str] = {}
        self._by_text: dict[str, int] = {}

    def get(self, ref: int, at: int, what: str) -> str:
        """The string ``ref`` names; ``at`` is the file offset of the reference."""
        known = self._by_ref.get(ref)
        if known is not None:
            return known
        size = len(self._table)
        if ref >= size:
            raise PPDFError(
                at, f"{what}: string reference {ref} is outside the string table ({size} bytes)"
            )
        if ref != self._next:
            raise PPDFError(
                at,
                f"{what}: string reference {ref} is not the start of the next "
                f"new string ({self._next}): strings are stored once, in order "
                "of first reference",
            )
        end = self._table.find(b"\0", ref)
        if end < 0:
            raise PPDFError(
                self._base + ref, f"{what}: string at table offset {ref} is not NUL-terminated"
            )
        try:
            text = self._table[ref:end].decode("utf-8")
        except UnicodeDecodeError as err:
            raise PPDFError(
                self._base + ref + err.start,
                f"{what}: string at table offset {ref} is not valid UTF-8",
            ) from None
        first = self._by_text.get(text)
        if first is not None:
            raise PPDFError(
                self._base + ref,
                f"{what}: string {text!r} is stored twice (table offsets {first} and {ref})",
            )
        self._by_ref[ref] = text
        self._by_text[text] = ref
        self._next = end + 1
        return text

    def finish(self) -> None:
        """Reject table bytes that no reference used."""
        if self._next != len(self._table):
            raise PPDFError(
                self._base + self._next,
                f"string table: bytes {self._next}..{len(self._table)} of the "
                "table are not used by any reference",
            )


def _records(data: bytes, span: _Span, layout: Layout) -> Iterator[tuple[int, dict[str, Any]]]:
    """(file offset, fields) of each record in a section already checked to fit."""
    for at in range(span.start, span.end, layout.size):
        yield at, layout.unpack(data, at)


def _enum_value(kind: type[E], value: int, at: int, what: str) -> E:
    """``kind(value)``, or a PPDFError at ``at`` listing the values ``kind`` allows."""
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(f"{m.value:#x} ({m.name.lower()})" for m in kind)
        raise PPDFError(at, f"{what} {value:#x} is not one of {allowed}") from None


def _check_envelope(data: bytes) -> dict[str, _Span]:
    """Magic, version, total length, checksum and section table; returns the sections."""
    head = data[: len(MAGIC)]
    if head != MAGIC:
        if MAGIC.startswith(head):
            raise PPDFError(
                len(data),
                f"file is truncated: {len(data)} bytes, a PPDF has at least {MIN_FILE_SIZE}",
            )
        raise PPDFError(0, f"bad magic {head!r}: not a PPDF file (expected {MAGIC!r})")
    version_at = FILE_HEADER.offsets["version"]
    if len(data) >= version_at + 2:
        (version,) = struct.unpack_from("<H", data, version_at)
        if version != VERSION:
            raise PPDFError(
                version_at,
                f"unsupported PPDF version {version} (this dprobes reads version {VERSION})",
            )
    if len(data) < MIN_FILE_SIZE:
        raise PPDFError(
            len(data), f"file is truncated: {len(data)} bytes, a PPDF has at least {MIN_FILE_SIZE}"
        )
    header = FILE_HEADER.unpack(data, 0)
    total = header["total_length"]
    if total < MIN_FILE_SIZE:
        raise PPDFError(
            FILE_HEADER.offsets["total_length"],
            f"total_length {total} is smaller than the smallest PPDF ({MIN_FILE_SIZE} bytes)",
        )
    if total > len(data):
        raise PPDFError(
            len(data), f"file is truncated: the header says {total} bytes, the file has {len(data)}"
        )
    if total < len(data):
        raise PPDFError(
            total,
            f"{len(data) - total} unexpected bytes after the end of the "
            f"file (the header says {total} bytes)",
        )
    body_end = total - TRAILER.size
    stored = TRAILER.unpack(data, body_end)["crc32"]
    computed = zlib.crc32(memoryview(data)[:body_end])
    if stored != computed:
        raise PPDFError(
            body_end,
            f"checksum mismatch: the trailer says {stored:#010x}, the "
            f"contents give {computed:#010x} (the file is corrupted)",
        )
    return _section_spans(header, body_end)


def _section_spans(header: dict[str, Any], body_end: int) -> dict[str, _Span]:
    """Check that the sections tile bytes FILE_HEADER.size..body_end in the fixed order."""
    spans: dict[str, _Span] = {}
    owner, owner_start, expected = "file header", 0, FILE_HEADER.size
    for s in SECTIONS:
        entry = FILE_HEADER.offsets[f"{s.key}_offset"]
        span = _Span(header[f"{s.key}_offset"], header[f"{s.key}_length"], entry)
        where = f"section {s.title} (bytes {span.start}..{span.end})"
        if span.start < FILE_HEADER.size or span.end > body_end:
            raise PPDFError(
                entry,
                f"{where} is out of bounds: sections lie in bytes {FILE_HEADER.size}..{body_end}",
            )
        if span.start < expected:
            raise PPDFError(entry, f"{where} overlaps {owner} (bytes {owner_start}..{expected})")
        if span.start > expected:
            raise PPDFError(
                entry,
                f"{where} does not start where the previous section ends "
                f"({expected}): sections are stored in order, without gaps",
            )
        problem = s.length_problem(span.length)
        if problem is not None:
            raise PPDFError(entry + 4, problem)
        if span.length:
            owner, owner_start, expected = f"section {s.title}", span.start, span.end
        spans[s.key] = span
    if expected != body_end:
        raise PPDFError(expected, f"bytes {expected}..{body_end} belong to no section")
    return spans


def _decode_header(data: bytes, span: _Span, strings: _StringReader) -> ProgramHeader:
    at = span.start
    v = PROGRAM_HEADER.unpack(data, at)
    PROGRAM_HEADER.check(v, at, "program header")
    name_at = at + PROGRAM_HEADER.offsets["name"]
    name = strings.get(v["name"], name_at, "program header: name")
    if not name:
        raise PPDFError(name_at, "program header: name is empty (DProbes requires a module name)")
    flags_at = at + PROGRAM_HEADER.offsets["flags"]
    flags = v["flags"]
    known = MODTYPE_MASK | LOG_FIELDS_MASK | LOG_TARGET_MASK
    if flags & ~known:
        raise PPDFError(
            flags_at, f"program header: flags {flags:#010x} has unknown bits {flags & ~known:#010x}"
        )
    return ProgramHeader(
        name=name,
        modtype=_enum_value(
            ModuleType, flags & MODTYPE_MASK, flags_at, "program header: module type (flags & 0xff)"
        ),
        major=v["major"],
        id=v["id"],
        jmpmax=v["jmpmax"],
        logmax=v["logmax"],
        ex_logmax=v["ex_logmax"],
        num_lv=v["num_lv"],
        num_gv=v["num_gv"],
        heapmax=v["heapmax"],
        autostacktrace=bool(v["autostacktrace"]),
        log_fields=LogField(flags & LOG_FIELDS_MASK),
        log_target=_enum_value(
            LogTarget,
            flags & LOG_TARGET_MASK,
            flags_at,
            "program header: log target (flags & 0xff0000)",
        ),
    )


def _decode_probe(
    at: int,
    v: dict[str, Any],
    what: str,
    header: ProgramHeader,
    code_length: int,
    strings: _StringReader,
) -> Probe:
    PROBE.check(v, at, what)
    word_at = at + PROBE.offsets["probe"]
    word = v["probe"]
    if word & ~(KIND_MASK | WATCH_TYPE_MASK):
        raise PPDFError(
            word_at,
            f"{what}: probe word {word:#06x} has unknown bits "
            f"{word & ~(KIND_MASK | WATCH_TYPE_MASK):#06x}",
        )
    kind = _enum_value(ProbeKind, word & KIND_MASK, word_at, f"{what}: probe kind")
    watch_type = WatchType(word & WATCH_TYPE_MASK)
    len_at = at + PROBE.offsets["len"]
    if v["len"] + 1 not in WATCH_LENGTHS:
        raise PPDFError(
            len_at,
            f"{what}: len {v['len']} means a watch length of "
            f"{v['len'] + 1} bytes; only 1, 2 or 4 are possible",
        )
    if kind is ProbeKind.BREAKPOINT and (watch_type or v["len"]):
        raise PPDFError(
            word_at if watch_type else len_at,
            f"{what}: a breakpoint has watch type {watch_type.value} and len "
            f"{v['len']}; both must be 0",
        )
    if not v["opcode_set"] and v["opcode"]:
        raise PPDFError(
            at + PROBE.offsets["opcode"],
            f"{what}: opcode {v['opcode']:#04x} is stored but opcode_set is 0",
        )
    if v["heap_size"] > header.heapmax:
        raise PPDFError(
            at + PROBE.offsets["heap_size"],
            f"{what}: heap_size {v['heap_size']} exceeds the program's heapmax {header.heapmax}",
        )
    start, end = v["rpn_offset"], v["rpn_end"]
    if end > code_length:
        raise PPDFError(
            at + PROBE.offsets["rpn_end"],
            f"{what}: handler {start}..{end} ends past the code ({code_length} bytes)",
        )
    if start >= end:
        raise PPDFError(
            at + PROBE.offsets["rpn_offset"],
            f"{what}: handler {start}..{end} is empty (rpn_offset must be below rpn_end)",
        )
    return Probe(
        kind=kind,
        offset=v["offset"],
        code_start=start,
        code_end=end,
        absolute=bool(v["address_flag"]),
        opcode=v["opcode"] if v["opcode_set"] else None,
        major=v["major"],
        minor=v["minor"],
        group=v["group"],
        type=v["type"],
        pass_count=v["passcount"],
        max_hits=v["maxhits"],
        logonfault=bool(v["logonfault"]),
        ex_mask=v["ex_mask"],
        heap_size=v["heap_size"],
        watch_type=watch_type,
        watch_length=v["len"] + 1,
        location=strings.get(v["location"], at + PROBE.offsets["location"], f"{what}: location"),
    )


def _decode_probes(
    data: bytes, span: _Span, header: ProgramHeader, code_length: int, strings: _StringReader
) -> tuple[Probe, ...]:
    count = span.length // PROBE.size
    if count == 0:
        raise PPDFError(span.entry + 4, "no probes: a program needs at least one probe")
    if count > code_length:
        raise PPDFError(
            span.entry + 4,
            f"{count} probes cannot each have a non-empty handler in {code_length} code bytes",
        )
    probes = tuple(
        _decode_probe(at, v, f"probe {i}", header, code_length, strings)
        for i, (at, v) in enumerate(_records(data, span, PROBE))
    )
    order = sorted(range(count), key=lambda i: probes[i].code_start)
    for before, after in pairwise(order):
        a, b = probes[before], probes[after]
        if b.code_start < a.code_end:
            raise PPDFError(
                span.start + after * PROBE.size + PROBE.offsets["rpn_offset"],
                f"probe {after}: handler {b.code_start}..{b.code_end} overlaps "
                f"probe {before}'s handler {a.code_start}..{a.code_end}",
            )
    return probes


def _decode_source_map(
    data: bytes, span: _Span, code_length: int, strings: _StringReader
) -> tuple[SourceLine, ...]:
    entries: list[SourceLine] = []
    for i, (at, v) in enumerate(_records(data, span, SOURCE_LINE)):
        what = f"source map entry {i}"
        SOURCE_LINE.check(v, at, what)
        offset = v["offset"]
        if offset >= code_length:
            raise PPDFError(
                at, f"{what}: code offset {offset} is outside the code ({code_length} bytes)"
            )
        if entries and offset <= entries[-1].offset:
            raise PPDFError(
                at,
                f"{what}: code offset {offset} does not follow the previous "
                f"entry's {entries[-1].offset}: entries are sorted, one per "
                "offset",
            )
        file = strings.get(v["file"], at + SOURCE_LINE.offsets["file"], f"{what}: file")
        entries.append(SourceLine(offset, file, v["line"], v["column"]))
    return tuple(entries)


def _decode_labels(
    data: bytes, span: _Span, code_length: int, strings: _StringReader
) -> tuple[tuple[int, str], ...]:
    labels: list[tuple[int, str]] = []
    index_by_name: dict[str, int] = {}
    for i, (at, v) in enumerate(_records(data, span, LABEL)):
        what = f"label {i}"
        if v["offset"] > code_length:
            raise PPDFError(
                at,
                f"{what}: code offset {v['offset']} is past the end of the "
                f"code ({code_length} bytes)",
            )
        name_at = at + LABEL.offsets["name"]
        name = strings.get(v["name"], name_at, f"{what}: name")
        if not name:
            raise PPDFError(name_at, f"{what}: name is empty")
        if name in index_by_name:
            raise PPDFError(
                name_at, f"{what}: name {name!r} is already used by label {index_by_name[name]}"
            )
        index_by_name[name] = i
        labels.append((v["offset"], name))
    return tuple(labels)


def decode_ppdf(data: bytes, name: str = "<ppdf>") -> Program:
    """Validate a PPDF file and return its program; any problem is one PPDFError.

    ``name`` is the file name the error carries for its diagnostic.
    """
    data = bytes(data)
    try:
        spans = _check_envelope(data)
        strings = _StringReader(data, spans["strings"])
        header = _decode_header(data, spans["program_header"], strings)
        code = data[spans["code"].start : spans["code"].end]
        probes = _decode_probes(data, spans["probes"], header, len(code), strings)
        source_map = _decode_source_map(data, spans["source_map"], len(code), strings)
        labels = _decode_labels(data, spans["labels"], len(code), strings)
        formats = tuple(
            strings.get(v["format"], at, f"format {i}")
            for i, (at, v) in enumerate(_records(data, spans["formats"], FORMAT))
        )
        strings.finish()
    except PPDFError as err:
        err.file = name
        raise
    return Program(header, probes, code, source_map, labels, formats)


def load_ppdf(path: str | Path) -> Program:
    """Read and decode a PPDF file; an unreadable file is a PPDFError at byte 0."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise PPDFError(0, f"cannot read the file: {err.strerror or err}", str(path)) from err
    return decode_ppdf(data, str(path))


# }==== {==== Encoding ================================================================


class _StringTable:
    """Builds the canonical string table: each string once, in order of first use."""

    def __init__(self) -> None:
        self._offsets: dict[str, int] = {}
        self._data = bytearray()

    def add(self, text: str, what: str) -> int:
        """The table offset of ``text``, appending it on first use."""
        offset = self._offsets.get(text)
        if offset is not None:
            return offset
        if "\0" in text:
            raise ValueError(f"{what}: {text!r} contains a NUL character")
        try:
            encoded = text.encode("utf-8")
        except UnicodeEncodeError as err:
            raise ValueError(f"{what}: {text!r} is not encodable as UTF-8") from err
        offset = self._offsets[text] = len(self._data)
        self._data += encoded + b"\0"
        return offset

    def data(self) -> bytes:
        return bytes(self._data)


def _header_record(h: ProgramHeader, strings: _StringTable) -> dict[str, Any]:
    return {
        "name": strings.add(h.name, "program header: name"),
        "flags": h.modtype | h.log_fields | h.log_target,
        "id": h.id,
        "jmpmax": h.jmpmax,
        "logmax": h.logmax,
        "ex_logmax": h.ex_logmax,
        "heapmax": h.heapmax,
        "major": h.major,
        "num_lv": h.num_lv,
        "num_gv": h.num_gv,
        "autostacktrace": h.autostacktrace,
    }


def _probe_record(p: Probe, strings: _StringTable, what: str) -> dict[str, Any]:
    return {
        "offset": p.offset,
        "probe": p.kind | p.watch_type,
        "major": p.major,
        "minor": p.minor,
        "group": p.group,
        "type": p.type,
        "ex_mask": p.ex_mask,
        "rpn_offset": p.code_start,
        "rpn_end": p.code_end,
        "passcount": p.pass_count,
        "maxhits": p.max_hits,
        "heap_size": p.heap_size,
        "location": strings.add(p.location, f"{what}: location"),
        "len": p.watch_length - 1,
        "opcode": 0 if p.opcode is None else p.opcode,
        "opcode_set": p.opcode is not None,
        "address_flag": p.absolute,
        "logonfault": p.logonfault,
    }


def encode_ppdf(program: Program) -> bytes:
    """The canonical PPDF bytes of ``program``.

    Raises ValueError when the program cannot be stored or would not load back: the
    output is checked by ``decode_ppdf``, the single place the validity rules live.
    """
    strings = _StringTable()
    blobs = {
        "program_header": PROGRAM_HEADER.pack(
            _header_record(program.header, strings), "program header"
        ),
        "probes": b"".join(
            PROBE.pack(_probe_record(p, strings, f"probe {i}"), f"probe {i}")
            for i, p in enumerate(program.probes)
        ),
        "code": bytes(program.code),
        "source_map": b"".join(
            SOURCE_LINE.pack(
                {
                    "offset": s.offset,
                    "file": strings.add(s.file, f"source map entry {i}: file"),
                    "line": s.line,
                    "column": s.column,
                },
                f"source map entry {i}",
            )
            for i, s in enumerate(program.source_map)
        ),
        "labels": b"".join(
            LABEL.pack(
                {"offset": offset, "name": strings.add(name, f"label {i}: name")}, f"label {i}"
            )
            for i, (offset, name) in enumerate(program.labels)
        ),
        "formats": b"".join(
            FORMAT.pack({"format": strings.add(text, f"format {i}")}, f"format {i}")
            for i, text in enumerate(program.formats)
        ),
    }
    blobs["strings"] = strings.data()
    header: dict[str, Any] = {"magic": MAGIC, "version": VERSION}
    position = FILE_HEADER.size
    for s in SECTIONS:
        header[f"{s.key}_offset"] = position
        header[f"{s.key}_length"] = len(blobs[s.key])
        position += len(blobs[s.key])
    header["total_length"] = position + TRAILER.size
    body = FILE_HEADER.pack(header, "file header") + b"".join(blobs[s.key] for s in SECTIONS)
    data = body + TRAILER.pack({"crc32": zlib.crc32(body)}, "trailer")
    try:
        decode_ppdf(data)
    except PPDFError as err:
        raise ValueError(f"program cannot be stored as PPDF: {err.message}") from err
    return data


# }====


def main(argv: list[str] | None = None) -> int:
    """``python -m dprobes.compiler.ppdf --doc``: print the layout tables of docs/ppdf.md."""
    parser = argparse.ArgumentParser(
        prog="python -m dprobes.compiler.ppdf", description="PPDF format tools"
    )
    parser.add_argument(
        "--doc", action="store_true", help="print the generated layout tables of docs/ppdf.md"
    )
    args = parser.parse_args(argv)
    if not args.doc:
        parser.print_help()
        return 2
    sys.stdout.write(layout_doc())
    return 0


if __name__ == "__main__":
    sys.exit(main())
