"""PPDF codec: round trips, one test per validation rule, fuzzing, and the doc tables."""

from __future__ import annotations

import dataclasses
import os
import struct
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dprobes.compiler.ppdf import (
    FILE_HEADER,
    LABEL,
    MAGIC,
    MIN_FILE_SIZE,
    PROBE,
    PROGRAM_HEADER,
    SECTIONS,
    SOURCE_LINE,
    TRAILER,
    Layout,
    PPDFError,
    decode_ppdf,
    encode_ppdf,
    layout_doc,
    load_ppdf,
    main,
)
from dprobes.vm.bytecode import encode
from dprobes.vm.isa import OPS_BY_NAME
from dprobes.vm.program import (
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

DOC = Path(__file__).resolve().parents[1] / "docs" / "ppdf.md"


def op(name: str, operand: int | None = None) -> bytes:
    return encode(OPS_BY_NAME[name], operand)


CODE0 = op("PUSH", 5) + op("PUSH_R", 6) + op("JZ", 1) + op("EXIT") + op("ABORT")
CODE1 = op("PUSH_LVI", 3) + op("EXIT")


def sample() -> Program:
    """A program that sets every field to something other than its default."""
    code = CODE0 + CODE1
    return Program(
        header=ProgramHeader(
            name="/usr/bin/é",
            modtype=ModuleType.KMOD,
            major=7,
            id=0xDEADBEEF,
            jmpmax=100,
            logmax=512,
            ex_logmax=256,
            num_lv=4,
            num_gv=256,
            heapmax=4096,
            autostacktrace=True,
            log_fields=LogField.PID | LogField.TSC,
            log_target=LogTarget.COM2,
        ),
        probes=(
            Probe(
                ProbeKind.BREAKPOINT,
                0x1234,
                0,
                len(CODE0),
                opcode=0x55,
                major=1,
                minor=2,
                group=3,
                type=4,
                pass_count=5,
                max_hits=6,
                logonfault=True,
                ex_mask=0x21,
                heap_size=64,
                location="main+4",
            ),
            Probe(
                ProbeKind.WATCHPOINT,
                0xC0100000,
                len(CODE0),
                len(code),
                absolute=True,
                opcode=0,
                watch_type=WatchType.READWRITE,
                watch_length=4,
                location="/usr/bin/é",
            ),
        ),
        code=code,
        source_map=(
            SourceLine(0, "a.rpn", 3, 1),
            SourceLine(5, "a.rpn", 4, 0),
            SourceLine(len(CODE0), "inc.h", 1, 9),
        ),
        labels=((len(CODE0) - 2, "done"), (len(code), "end")),
        formats=("%d\n", "", "%d\n"),
    )


MINIMAL = Program(
    ProgramHeader("k", ModuleType.KERNEL), (Probe(ProbeKind.BREAKPOINT, 0, 0, 1),), op("EXIT")
)


# {==== helpers that take a valid file apart and put it back together =================


def sections(data: bytes) -> dict[str, bytearray]:
    header = FILE_HEADER.unpack(data, 0)
    return {
        s.key: bytearray(data[header[f"{s.key}_offset"] :][: header[f"{s.key}_length"]])
        for s in SECTIONS
    }


def build(blobs: dict[str, bytes | bytearray]) -> bytes:
    """A file with these sections, a correct header, total length and checksum."""
    values: dict[str, Any] = {"magic": MAGIC, "version": 1}
    at = FILE_HEADER.size
    for s in SECTIONS:
        values[f"{s.key}_offset"], values[f"{s.key}_length"] = at, len(blobs[s.key])
        at += len(blobs[s.key])
    values["total_length"] = at + TRAILER.size
    body = FILE_HEADER.codec.pack(*(values[f.name] for f in FILE_HEADER.fields))
    body += b"".join(bytes(blobs[s.key]) for s in SECTIONS)
    return body + struct.pack("<I", zlib.crc32(body))


def reseal(data: bytes) -> bytes:
    """Make the total length and the checksum right again after a mutation."""
    out = bytearray(data)
    if len(out) >= MIN_FILE_SIZE:
        struct.pack_into("<I", out, FILE_HEADER.offsets["total_length"], len(out))
        struct.pack_into("<I", out, len(out) - 4, zlib.crc32(out[:-4]))
    return bytes(out)


def set_field(blob: bytearray, layout: Layout, index: int, name: str, value: int) -> None:
    fmt = "<" + next(f.code for f in layout.fields if f.name == name)
    struct.pack_into(fmt, blob, index * layout.size + layout.offsets[name], value)


def where(
    data: bytes, key: str, layout: Layout | None = None, index: int = 0, name: str | None = None
) -> int:
    """File offset of a section, or of one field of one of its records."""
    at: int = FILE_HEADER.unpack(data, 0)[f"{key}_offset"]
    if layout is not None and name is not None:
        at += index * layout.size + layout.offsets[name]
    return at


def entry(key: str, part: str = "offset") -> int:
    """File offset of a section-table field."""
    return FILE_HEADER.offsets[f"{key}_{part}"]


def expect_error(data: bytes, offset: int, fragment: str) -> PPDFError:
    with pytest.raises(PPDFError) as info:
        decode_ppdf(data)
    err = info.value
    assert fragment in err.message
    assert err.offset == offset, err
    assert str(err) == f"byte {offset}: {err.message}"
    return err


# }====


def test_round_trip_sample() -> None:
    program = sample()
    data = encode_ppdf(program)
    assert decode_ppdf(data) == program
    assert encode_ppdf(decode_ppdf(data)) == data
    assert decode_ppdf(bytearray(data)) == decode_ppdf(memoryview(data)) == program


def test_round_trip_minimal() -> None:
    data = encode_ppdf(MINIMAL)
    assert decode_ppdf(data) == MINIMAL
    assert encode_ppdf(decode_ppdf(data)) == data


def test_encoding_is_frozen() -> None:
    """Version 1 bytes of a minimal program; a change here needs a new VERSION."""
    assert encode_ppdf(MINIMAL).hex() == (
        "44505044460d0a1a0100a2000000460000002300000069000000310000009a000000010000009b00"
        "0000030000009e000000000000009e000000000000009e0000000000000000000000020001000000"
        "0000ffff000000040000000400000040000000000000000000000000000000000000800000000000"
        "000000ff0f00000000010000000000000000000000000000000200000000000000000d6b00005169"
        "03a5"
    )


def test_strings_are_stored_once_in_order_of_first_use() -> None:
    data = encode_ppdf(sample())
    assert bytes(sections(data)["strings"]) == (
        "/usr/bin/é\0main+4\0a.rpn\0inc.h\0done\0end\0%d\n\0\0".encode()
    )


def test_encode_rejects_invalid_programs() -> None:
    program = sample()
    bad_probe = dataclasses.replace(program.probes[0], heap_size=5000)
    cases = [
        (dataclasses.replace(program, probes=()), "no probes"),
        (dataclasses.replace(program, probes=(bad_probe,)), "heap_size 5000 exceeds"),
        (
            dataclasses.replace(program, header=dataclasses.replace(program.header, num_lv=300)),
            "num_lv = 300 exceeds the limit 256",
        ),
        (dataclasses.replace(program, formats=("a\0b",)), "contains a NUL"),
        (dataclasses.replace(program, formats=("\ud800",)), "not encodable"),
        (
            dataclasses.replace(program, header=dataclasses.replace(program.header, major=-1)),
            "major = -1 does not fit in a u16",
        ),
    ]
    for bad, fragment in cases:
        with pytest.raises(ValueError, match=fragment):
            encode_ppdf(bad)


# {==== the envelope: magic, version, length, checksum, section table =================


VALID = encode_ppdf(sample())


@pytest.mark.parametrize(
    ("data", "offset", "fragment"),
    [
        (b"", 0, "file is truncated: 0 bytes"),
        (MAGIC[:5], 5, "file is truncated: 5 bytes"),
        (b"\x7fELF" + bytes(100), 0, "bad magic"),
        (MAGIC + b"\x02\x00" + bytes(100), 8, "unsupported PPDF version 2"),
        (MAGIC + b"\x01", 9, "file is truncated: 9 bytes"),
        (VALID[:40], 40, "file is truncated: 40 bytes, a PPDF has at least 74"),
        (VALID[:-1], len(VALID) - 1, f"the header says {len(VALID)} bytes, the file has"),
        (VALID + b"abc", len(VALID), "3 unexpected bytes after the end"),
    ],
)
def test_envelope_errors(data: bytes, offset: int, fragment: str) -> None:
    expect_error(data, offset, fragment)


def test_total_length_too_small() -> None:
    data = bytearray(VALID)
    struct.pack_into("<I", data, FILE_HEADER.offsets["total_length"], 10)
    expect_error(bytes(data), FILE_HEADER.offsets["total_length"], "smaller than the smallest")


def test_checksum_mismatch() -> None:
    data = bytearray(VALID)
    data[where(VALID, "code")] ^= 0xFF
    expect_error(bytes(data), len(VALID) - 4, "checksum mismatch")


def patched_table(key: str, part: str, delta: int) -> bytes:
    data = bytearray(VALID)
    at = entry(key, part)
    struct.pack_into("<I", data, at, struct.unpack_from("<I", data, at)[0] + delta)
    return reseal(bytes(data))


@pytest.mark.parametrize(
    ("key", "part", "delta", "at", "fragment"),
    [
        ("code", "offset", 10_000, "code", "section code (bytes"),
        ("program_header", "offset", -1, "program_header", "is out of bounds"),
        ("probes", "offset", -1, "probes", "overlaps section program header"),
        ("code", "offset", 1, "code", "does not start where the previous section ends"),
        ("probes", "length", 1, "probes_length", "not a whole number of 49-byte records"),
        ("program_header", "length", -1, "program_header_length", "is 34 bytes, expected 35"),
        ("formats", "length", -4, None, "belong to no section"),
    ],
)
def test_section_table_errors(
    key: str, part: str, delta: int, at: str | None, fragment: str
) -> None:
    data = patched_table(key, part, delta)
    if at is None:
        offset = len(data) - TRAILER.size - 4
    elif at.endswith("_length"):
        offset = entry(at.removesuffix("_length"), "length")
    else:
        offset = entry(at)
    expect_error(data, offset, fragment)


def test_overlap_names_the_last_non_empty_section() -> None:
    blobs = sections(VALID)
    data = bytearray(build({**blobs, "labels": b"", "formats": b""}))
    struct.pack_into("<I", data, entry("formats"), where(bytes(data), "formats") - 1)
    expect_error(reseal(bytes(data)), entry("formats"), "overlaps section source map")


def test_code_longer_than_rpn_length() -> None:
    blobs = sections(VALID)
    data = build({**blobs, "code": bytes(70_000)})
    expect_error(data, entry("code", "length"), "section code is 70000 bytes, more than 65535")


# }==== {==== records ==================================================================


def rebuilt(key: str, layout: Layout, index: int, name: str, value: int) -> bytes:
    blobs = sections(VALID)
    set_field(blobs[key], layout, index, name, value)
    return build(blobs)


FLAGS = ModuleType.USER | LogTarget.KLOG


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("jmpmax", 65536, "program header: jmpmax = 65536 exceeds the limit 65535"),
        ("logmax", 1025, "logmax = 1025 exceeds the limit 1024"),
        ("ex_logmax", 1025, "ex_logmax = 1025 exceeds the limit 1024"),
        ("num_lv", 257, "num_lv = 257 exceeds the limit 256"),
        ("num_gv", 257, "num_gv = 257 exceeds the limit 256"),
        ("heapmax", 16385, "heapmax = 16385 exceeds the limit 16384"),
        ("autostacktrace", 2, "autostacktrace = 2 is not 0 or 1"),
        ("flags", 3 | LogTarget.KLOG, "module type (flags & 0xff) 0x3 is not one of 0x1 (user)"),
        ("flags", ModuleType.USER, "log target (flags & 0xff0000) 0x0 is not one of"),
        ("flags", FLAGS | LogTarget.COM1, "log target (flags & 0xff0000) 0x50000"),
        ("flags", FLAGS | 0x0100_0000, "has unknown bits 0x01000000"),
    ],
)
def test_program_header_errors(name: str, value: int, fragment: str) -> None:
    data = rebuilt("program_header", PROGRAM_HEADER, 0, name, value)
    expect_error(data, where(data, "program_header", PROGRAM_HEADER, 0, name), fragment)


def test_log_fields_accept_every_bit_of_the_mask() -> None:
    program = sample()
    program = dataclasses.replace(
        program, header=dataclasses.replace(program.header, log_fields=LogField.ALL)
    )
    assert decode_ppdf(encode_ppdf(program)) == program


@pytest.mark.parametrize(
    ("index", "name", "value", "fragment"),
    [
        (0, "probe", 0x0000, "probe 0: probe kind 0x0 is not one of 0x8000 (breakpoint)"),
        (0, "probe", 0xC000, "probe kind 0xc000"),
        (0, "probe", 0x8004, "probe word 0x8004 has unknown bits 0x0004"),
        (0, "probe", 0x8001, "a breakpoint has watch type 1 and len 0; both must be 0"),
        (0, "len", 1, "a breakpoint has watch type 0 and len 1"),
        (1, "len", 2, "probe 1: len 2 means a watch length of 3 bytes"),
        (1, "len", 9, "len 9 means a watch length of 10 bytes"),
        (0, "opcode_set", 2, "opcode_set = 2 is not 0 or 1"),
        (0, "address_flag", 2, "address_flag = 2 is not 0 or 1"),
        (0, "logonfault", 7, "logonfault = 7 is not 0 or 1"),
        (0, "passcount", 0x8000_0000, "passcount = 2147483648 exceeds the limit 2147483647"),
        (0, "maxhits", 0xFFFF_FFFF, "maxhits = 4294967295 exceeds the limit"),
        (0, "heap_size", 4097, "heap_size 4097 exceeds the program's heapmax 4096"),
        (1, "rpn_end", 20, "probe 1: handler 15..20 ends past the code (19 bytes)"),
        (0, "rpn_offset", 15, "probe 0: handler 15..15 is empty"),
        (1, "rpn_offset", 14, "probe 1: handler 14..19 overlaps probe 0's handler 0..15"),
        (0, "location", 9999, "probe 0: location: string reference 9999 is outside the string"),
    ],
)
def test_probe_errors(index: int, name: str, value: int, fragment: str) -> None:
    data = rebuilt("probes", PROBE, index, name, value)
    expect_error(data, where(data, "probes", PROBE, index, name), fragment)


def test_opcode_stored_without_flag() -> None:
    blobs = sections(VALID)
    set_field(blobs["probes"], PROBE, 1, "opcode", 0x90)
    set_field(blobs["probes"], PROBE, 1, "opcode_set", 0)
    data = build(blobs)
    expect_error(
        data,
        where(data, "probes", PROBE, 1, "opcode"),
        "probe 1: opcode 0x90 is stored but opcode_set is 0",
    )


def test_no_probes() -> None:
    data = build({**sections(VALID), "probes": b""})
    expect_error(data, entry("probes", "length"), "no probes")


def test_more_probes_than_code_bytes() -> None:
    blobs = sections(encode_ppdf(MINIMAL))
    data = build({**blobs, "probes": blobs["probes"] * 2})
    expect_error(data, entry("probes", "length"), "2 probes cannot each have a non-empty handler")


@pytest.mark.parametrize(
    ("index", "name", "value", "fragment"),
    [
        (0, "offset", 19, "source map entry 0: code offset 19 is outside the code (19 bytes)"),
        (
            1,
            "offset",
            0,
            "source map entry 1: code offset 0 does not follow the previous entry's 0",
        ),
        (2, "line", 0, "source map entry 2: line = 0 is below the minimum 1"),
        (1, "file", 1, "source map entry 1: file: string reference 1 is not the start of the next"),
    ],
)
def test_source_map_errors(index: int, name: str, value: int, fragment: str) -> None:
    data = rebuilt("source_map", SOURCE_LINE, index, name, value)
    expect_error(data, where(data, "source_map", SOURCE_LINE, index, name), fragment)


@pytest.mark.parametrize(
    ("index", "name", "value", "fragment"),
    [
        (1, "offset", 20, "label 1: code offset 20 is past the end of the code (19 bytes)"),
        (1, "name", 26, "label 1: name: string reference 26 is not the start"),
    ],
)
def test_label_errors(index: int, name: str, value: int, fragment: str) -> None:
    data = rebuilt("labels", LABEL, index, name, value)
    expect_error(data, where(data, "labels", LABEL, index, name), fragment)


def test_label_name_used_twice() -> None:
    blobs = sections(VALID)
    first = struct.unpack_from("<I", blobs["labels"], LABEL.offsets["name"])[0]
    set_field(blobs["labels"], LABEL, 1, "name", first)
    blobs["strings"] = blobs["strings"].replace(b"end\0", b"")
    data = build(blobs)
    expect_error(
        data,
        where(data, "labels", LABEL, 1, "name"),
        "label 1: name 'done' is already used by label 0",
    )


# }==== {==== the string table =========================================================


def one_string_file(table: bytes, location: int = 0, formats: tuple[int, ...] = ()) -> bytes:
    """MINIMAL with this string table: the name at 0, the probe location and formats at
    the references given."""
    blobs = sections(encode_ppdf(MINIMAL))
    set_field(blobs["program_header"], PROGRAM_HEADER, 0, "name", 0)
    set_field(blobs["probes"], PROBE, 0, "location", location)
    records = b"".join(struct.pack("<I", ref) for ref in formats)
    return build({**blobs, "strings": table, "formats": records})


NAME_AT = FILE_HEADER.size + PROGRAM_HEADER.offsets["name"]


def test_string_table_errors() -> None:
    def strings_at(data: bytes) -> int:
        return where(data, "strings")

    data = one_string_file(b"k")
    expect_error(
        data,
        strings_at(data),
        "program header: name: string at table offset 0 is not NUL-terminated",
    )
    data = one_string_file(b"ab\xffc\0")
    expect_error(data, strings_at(data) + 2, "string at table offset 0 is not valid UTF-8")
    data = one_string_file(b"k\0k\0", location=2)
    expect_error(
        data,
        strings_at(data) + 2,
        "probe 0: location: string 'k' is stored twice (table offsets 0 and 2)",
    )
    data = one_string_file(b"k\0zz\0")
    expect_error(data, strings_at(data) + 2, "string table: bytes 2..5 of the table are not used")
    data = one_string_file(b"\0")
    expect_error(data, NAME_AT, "program header: name is empty")
    data = one_string_file(b"k\0")
    assert decode_ppdf(data).header.name == "k"
    data = one_string_file(b"kk\0", formats=(1,))
    expect_error(data, where(data, "formats"), "format 0: string reference 1 is not the start")


def test_empty_label_name() -> None:
    blobs = sections(encode_ppdf(MINIMAL))
    data = build({**blobs, "strings": b"k\0\0", "labels": struct.pack("<II", 0, 2)})
    expect_error(data, where(data, "labels", LABEL, 0, "name"), "label 0: name is empty")


# }==== {==== fuzzing ==================================================================


SAMPLES = (VALID, encode_ppdf(MINIMAL))
INTERESTING = (
    0,
    1,
    2,
    3,
    0x7F,
    0x80,
    0xFF,
    0x100,
    0xFFFF,
    0x10000,
    0x7FFF_FFFF,
    0x8000_0000,
    0xFFFF_FFFF,
)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SAMPLES)))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(("flip", "word", "truncate", "extend", "insert", "delete")))
        at = draw(st.integers(0, len(data)))
        if kind == "flip" and at < len(data):
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "word" and at + 4 <= len(data):
            struct.pack_into("<I", data, at, draw(st.sampled_from(INTERESTING)))
        elif kind == "truncate":
            del data[at:]
        elif kind == "extend":
            data += draw(st.binary(min_size=1, max_size=64))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 8))]
    return reseal(bytes(data)) if draw(st.booleans()) else bytes(data)


def check_only_ppdf_error(data: bytes) -> None:
    try:
        program = decode_ppdf(data)
    except PPDFError as err:
        assert 0 <= err.offset <= len(data)
        assert err.message
        return
    assert encode_ppdf(program) == data  # anything accepted is canonical


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_files_raise_only_ppdf_error(data: bytes) -> None:
    check_only_ppdf_error(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.sampled_from((b"", MAGIC, MAGIC + b"\x01\x00")))
def test_arbitrary_bytes_raise_only_ppdf_error(tail: bytes, head: bytes) -> None:
    check_only_ppdf_error(reseal(head + tail))


TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=12)


@st.composite
def programs(draw: st.DrawFn) -> Program:
    sizes = draw(st.lists(st.integers(1, 12), min_size=1, max_size=4))
    code = draw(st.binary(min_size=sum(sizes), max_size=sum(sizes) + 4))
    heapmax = draw(st.integers(0, 16384))
    probes, start = [], 0
    for size in sizes:
        watch = draw(st.booleans())
        probes.append(
            Probe(
                ProbeKind.WATCHPOINT if watch else ProbeKind.BREAKPOINT,
                draw(st.integers(0, 2**64 - 1)),
                start,
                start + size,
                absolute=draw(st.booleans()),
                opcode=draw(st.none() | st.integers(0, 255)),
                major=draw(st.integers(0, 0xFFFF)),
                minor=draw(st.integers(0, 0xFFFF)),
                pass_count=draw(st.integers(0, 2**31 - 1)),
                logonfault=draw(st.booleans()),
                heap_size=draw(st.integers(0, heapmax)),
                watch_type=draw(st.sampled_from(WatchType)) if watch else WatchType.EXECUTE,
                watch_length=draw(st.sampled_from((1, 2, 4))) if watch else 1,
                location=draw(TEXT),
            )
        )
        start += size
    offsets = draw(st.lists(st.integers(0, len(code) - 1), unique=True, max_size=5))
    names = draw(st.lists(TEXT.filter(bool), unique=True, max_size=4))
    return Program(
        ProgramHeader(
            draw(TEXT.filter(bool)),
            draw(st.sampled_from(ModuleType)),
            jmpmax=draw(st.integers(0, 65535)),
            heapmax=heapmax,
            num_lv=draw(st.integers(0, 256)),
            log_fields=LogField(draw(st.integers(0, 0xFF)) << 8),
            log_target=draw(st.sampled_from(LogTarget)),
        ),
        tuple(probes),
        code,
        tuple(
            SourceLine(o, draw(TEXT), draw(st.integers(1, 9999)), draw(st.integers(0, 99)))
            for o in sorted(offsets)
        ),
        tuple((draw(st.integers(0, len(code))), name) for name in names),
        tuple(draw(st.lists(TEXT, max_size=3))),
    )


@settings(max_examples=150, deadline=None)
@given(programs())
def test_valid_programs_round_trip(program: Program) -> None:
    data = encode_ppdf(program)
    assert decode_ppdf(data) == program
    assert encode_ppdf(decode_ppdf(data)) == data


def test_ten_megabytes_are_rejected_quickly() -> None:
    noise = os.urandom(10 * 2**20)
    lying = reseal(MAGIC + b"\x01\x00" + noise)  # right length and checksum, garbage inside
    started = time.perf_counter()
    expect_error(noise, 0, "bad magic")
    with pytest.raises(PPDFError):
        decode_ppdf(lying)
    assert time.perf_counter() - started < 2.0


# }==== {==== files, diagnostics, documentation ========================================


def test_load_ppdf(tmp_path: Path) -> None:
    good = tmp_path / "good.ppdf"
    good.write_bytes(VALID)
    assert load_ppdf(good) == sample()
    bad = tmp_path / "bad.ppdf"
    bad.write_bytes(VALID[:-1])
    with pytest.raises(PPDFError) as info:
        load_ppdf(str(bad))
    assert info.value.file == str(bad)
    assert info.value.diagnostic().render().startswith(f"{bad}: byte {len(VALID) - 1}: error: ")
    with pytest.raises(PPDFError, match="cannot read the file") as info:
        load_ppdf(tmp_path / "missing.ppdf")
    assert info.value.offset == 0
    with pytest.raises(PPDFError, match="cannot read the file"):
        load_ppdf(tmp_path)


def test_error_is_a_value_error() -> None:
    assert issubclass(PPDFError, ValueError)
    err = PPDFError(12, "bad")
    assert str(err) == "byte 12: bad"
    assert (err.offset, err.message, err.file) == (12, "bad", "<ppdf>")


def test_doc_tables_are_up_to_date() -> None:
    begin = "<!-- BEGIN GENERATED: python -m dprobes.compiler.ppdf --doc -->\n"
    end = "<!-- END GENERATED -->"
    text = DOC.read_text()
    generated = text[text.index(begin) + len(begin) : text.index(end)]
    assert generated.strip() == layout_doc().strip(), (
        "docs/ppdf.md is stale: paste the output of python -m dprobes.compiler.ppdf --doc "
        "between its GENERATED markers"
    )


def test_doc_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--doc"]) == 0
    assert capsys.readouterr().out == layout_doc()
    assert main([]) == 2
