"""Log records and their targets: binary layout, KLOG text, COM raw records, EVL JSON."""

from __future__ import annotations

import json
import struct

from dprobes.runtime.logformat.layouts import COM, EVL, KLOG, KLOG_UNFORMATTED
from dprobes.runtime.logformat.python import format_hit, format_record
from dprobes.runtime.logtargets import HitInfo, LogRecord, exception_record
from dprobes.vm.logrecord import HeaderBit, header_length
from dprobes.vm.program import LogField

HIT = HitInfo(
    pid=42,
    uid=0,
    cs=0x73,
    eip=0x08049001,
    ss=0x7B,
    esp=0xBFFFF000,
    seconds=1,
    microseconds=5,
    procname="loop",
)
FIELDS = LogField.PID | LogField.CSEIP


def test_binary_layout_matches_the_reserved_header_length() -> None:
    record = LogRecord(7, 1, FIELDS, HIT, b"\x2a\x00\x00\x00")
    raw = record.to_bytes()
    facility, length, mask, major, minor = struct.unpack_from("<HHIHH", raw)
    assert (facility, length, major, minor) == (1, len(raw), 7, 1)
    assert mask == HeaderBit.MAJOR | HeaderBit.MINOR | HeaderBit.PID | HeaderBit.CS | HeaderBit.EIP
    assert struct.unpack_from("<IHI", raw, 12) == (42, 0x73, 0x08049001)
    assert len(raw) - len(record.data) == header_length(FIELDS)


def test_every_field_in_reference_order() -> None:
    everything = (
        LogField.PID
        | LogField.UID
        | LogField.CSEIP
        | LogField.SSESP
        | LogField.TSC
        | LogField.PROCNAME
    )
    record = LogRecord(1, 2, everything, HIT, b"")
    assert list(record.describe()) == [
        "major",
        "minor",
        "pid",
        "uid",
        "cs",
        "eip",
        "ss",
        "esp",
        "tsc",
        "name",
    ]
    assert len(record.to_bytes()) == header_length(everything) == 56


def test_klog_text_and_hex_dump() -> None:
    lines = (
        format_record(KLOG, LogRecord(7, 1, FIELDS, HIT, b"hello world, dprobes"))
        .decode()
        .splitlines()
    )
    assert lines[0] == "dprobes(7,1) pid=42 cs=0x73 eip=0x8049001"
    assert lines[1].startswith("00000000  68 65 6c 6c 6f")
    assert lines[1].endswith("|hello world, dpr|")
    assert lines[2].startswith("00000010  6f 62 65 73")
    unformatted = format_record(KLOG_UNFORMATTED, LogRecord(7, 1, FIELDS, HIT, b"\x01\x02"))
    assert unformatted.decode().splitlines()[1] == "01 02"


def test_com_target_writes_raw_records_with_crlf() -> None:
    record = LogRecord(7, 1, FIELDS, HIT, b"\xaa")
    expected = (
        record.to_bytes()
        + b"\r\n"
        + LogRecord(0, 0, LogField.NONE, HitInfo(), b"\x01\x00\x00").to_bytes()
        + b"\r\n"
    )
    assert format_hit(COM, record, b"\x01\x00\x00") == expected
    assert exception_record(b"\x01").to_bytes()[8:12] == b"\0\0\0\0"


def test_evl_target_writes_json_lines() -> None:
    written = format_hit(EVL, LogRecord(7, 1, FIELDS, HIT, b"\xaa\xbb"), b"")
    (line,) = written.decode().splitlines()
    assert json.loads(line) == {
        "major": 7,
        "minor": 1,
        "pid": 42,
        "cs": 0x73,
        "eip": 0x08049001,
        "data": "aabb",
    }
