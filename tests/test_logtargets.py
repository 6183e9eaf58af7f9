"""Log records and their targets: binary layout, KLOG text, COM raw records, EVL JSON, and
when a hit whose instruction faults is counted and logged."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from dprobes.runtime.logformat.layouts import COM, EVL, KLOG, KLOG_UNFORMATTED
from dprobes.runtime.logformat.python import format_hit, format_record
from dprobes.runtime.logtargets import HitInfo, LogRecord, exception_record
from dprobes.tests.guest_expectations import BIN, symbol
from dprobes.tests.test_probes_runtime import header, run
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
    assert (facility, length, major, minor) == (1, len(raw) - len(record.data), 7, 1)
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
    assert struct.unpack_from("<H", record.to_bytes(), 2) == (56,)


def test_an_smp_header_has_the_cpu_word_and_bit() -> None:
    record = LogRecord(1, 2, LogField.ALL, HIT, b"\x2a")
    raw = record.to_bytes(smp=True)
    facility, length, mask, _, _, cpu = struct.unpack_from("<HHIHHI", raw)
    assert (facility, length, cpu) == (1, 60, 0)
    assert mask == 0x7FF
    assert raw[16:] == record.to_bytes()[12:]


def test_klog_text_and_dump_rows() -> None:
    lines = (
        format_record(KLOG, LogRecord(7, 1, FIELDS, HIT, b"hello world, dprobes\xc1"))
        .decode()
        .splitlines()
    )
    assert lines == [
        "dprobes(7,1) pid=42 cs=73 eip=08049001 ",
        "dprobes(7,1)  ",
        "0x00000000 : 68656c6c 6f20776f 726c642c 20647072 : hello world, dpr",
        "0x00000010 : 6f626573 c1                         : obesA",
    ]
    unformatted = format_record(KLOG_UNFORMATTED, LogRecord(7, 1, FIELDS, HIT, b"\x01\x0f\xab"))
    assert unformatted.decode().splitlines()[1] == "dprobes(7,1)  01 f ab "


def test_com_target_writes_raw_records_with_crlf() -> None:
    record = LogRecord(7, 1, FIELDS, HIT, b"\xaa")
    expected = (
        record.to_bytes()
        + b"\r\n"
        + LogRecord(0, 0, LogField.NONE, HitInfo(), b"\x01\x00\x00").to_bytes()
        + b"\r\n"
    )
    assert format_hit(COM, record, b"\x01\x00\x00") == expected
    assert exception_record(b"\x01").to_bytes()[:12] == bytes.fromhex("01000c00030000000000 0000")


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


FAULTING_PROBE = """
offset = bound_fail
logonfault = {flag}
max_hits = 1
    push r, eax
    log 1
    {end}
"""


@pytest.mark.parametrize("end", ["exit", "abort"])
@pytest.mark.parametrize("flag", ["yes", "no"])
def test_a_faulting_step_follows_5_0s_fault_handler(flag: str, end: str) -> None:
    """The probed BOUND faults: with logonfault the hit counts and logs even after abort
    (a record without data: the VM keeps no log of an aborted handler), max_hits (1 here)
    is not checked; without it nothing counts and nothing is logged."""
    source = header("bound") + FAULTING_PROBE.format(flag=flag, end=end)
    process, manager, _ = run("bound", source)
    assert process.returncode == -11
    (row,) = manager.query()
    logged = [e.record.data for e in manager.emitted]
    data = struct.pack("<I", 10) if end == "exit" else b""
    assert logged == ([data] if flag == "yes" else [])
    assert row.count == (1 if flag == "yes" else 0)
    assert "active" in row.status


def test_dpc_run_smp_header_and_the_probe_address_on_both_paths(
    tmp_path: Path, capfdbinary
) -> None:
    """``--smp-header`` on COM2: the cpu word and bit, ``len`` the header's length, and the
    header's eip the probe's address, from the Python path (interp) and natively (jit)."""
    from dprobes.cli import main as cli

    probe = tmp_path / "p.rpn"
    probe.write_text(header("loop") + "offset = add3\n    push r, eax\n    log 1\n    exit\n")
    _, _, address = symbol("loop", "add3")
    logs = []
    for tier in ("interp", "jit"):
        serial = tmp_path / f"{tier}.bin"
        options = ["--log", "PID CSEIP", "--log-target", "COM2", "--smp-header"]
        command = ["run", "--tier", tier, "--probes", str(probe), "--elf", str(BIN / "loop")]
        status = cli.main([*command, *options, "--log-file", str(serial), "--", str(BIN / "loop")])
        capfdbinary.readouterr()
        logs.append(serial.read_bytes())
        records = logs[-1].split(b"\r\n")[:-1]
        assert status == 7 and len(records) == 3
        for record in records:
            facility, length, mask, cpu, eip = struct.unpack_from("<HHI4xI4xxxI", record)
            assert (facility, length, mask, cpu, eip) == (1, 26, 0x6F, 0, address)
            assert len(record) == 26 + 4
    assert logs[0] == logs[1]
