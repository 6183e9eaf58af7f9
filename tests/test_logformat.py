"""The log formatters: both against DProbes 5.0's formats (the golden files of
``make_logformat_goldens``), the native one (generated from the layouts) against the
Python one and the Python encoder, record by record and through ``dpc run`` on every
guest program.

The native formatter reads records as the native hook packs them into its ring; here the
ring records are packed by the test from ``runtime.ring``'s layout, for every choice of
header fields (all 64), every layout, with and without an exception log, and with process
names that need JSON escaping, are not ASCII, or are longer than the binary header holds.
"""

from __future__ import annotations

import ctypes
import json
import re
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from dprobes.cli import main as cli
from dprobes.runtime import clock, ring
from dprobes.runtime.logformat import native
from dprobes.runtime.logformat.layouts import COM, COM_SMP, EVL, KLOG, LAYOUTS, layout_for
from dprobes.runtime.logformat.python import format_hit, format_record
from dprobes.runtime.logformat.writer import ProbeLog
from dprobes.runtime.logtargets import LogRecord
from dprobes.runtime.trap3 import hit_info
from dprobes.tests import guest_expectations as expect
from dprobes.tests import make_logformat_goldens as golden
from dprobes.vm.logrecord import HEADER, header_length, markdown_table, mask
from dprobes.vm.program import LogField, LogTarget

BIN = expect.BIN
DOCS = Path(__file__).resolve().parents[1] / "docs" / "probes.md"
NAMES = ("loop", 'a"b\\c\u00e9\x01\t', "a-process-name-longer-than-sixteen-bytes")
EVERY_SELECTION = [
    LogField(sum(int(field.flag) for bit, field in enumerate(HEADER) if choice >> bit & 1))
    for choice in range(1 << len(HEADER))
]


def pack(
    ident: int,
    major: int,
    minor: int,
    fields: LogField,
    machine: dict[str, int],
    data: bytes,
    ex_log: bytes,
) -> bytes:
    """One ring record as the native hook appends it."""
    layout = ring.header_layout(fields)
    record = (
        ring.HEAD.pack(ident, len(data), len(ex_log), major, minor)
        + layout.packing.pack(*(machine[name] for name in layout.names))
        + data
        + ex_log
    )
    return record + bytes(-len(record) % 4)


def run_native(formatter: native.NativeFormatter, chunk: bytes) -> tuple[bytes, int]:
    buffer = ctypes.create_string_buffer(chunk, len(chunk))
    out: list[bytes] = []
    count = formatter.format(
        ctypes.addressof(buffer), len(chunk), lambda view: out.append(bytes(view))
    )
    assert formatter.count(ctypes.addressof(buffer), len(chunk)) == count
    return b"".join(out), count


def test_native_formatter_writes_what_the_python_one_does_for_every_selection() -> None:
    """All 64 header selections x every layout (the COM layout is the binary record: the
    generated header code against ``LogRecord.to_bytes``), exception logs included."""
    formatter = native.NativeFormatter(LAYOUTS)
    chunk, expected = b"", []
    for number, fields in enumerate(EVERY_SELECTION):
        for layout in LAYOUTS:
            ident = len(formatter)
            name = NAMES[ident % len(NAMES)]
            probe = ProbeLog(
                pid=1000 + number, eip=0x8049000 + ident, fields=fields, layout=layout, name=name
            )
            formatter.set_probe(ident, probe)
            machine = {
                "uid": 500 + number,
                "cs": 0x73,
                "ss": 0x7B,
                "esp": 0xBFFF0000 + ident,
                "executed": 123_456_789_012 + 977 * ident,
            }
            data, ex_log = bytes(range(ident % 41)), b"\x05\x06\x07"[: number % 4]
            chunk += pack(ident, number, ident & 0xFFFF, fields, machine, data, ex_log)
            hit = hit_info(
                fields,
                machine["executed"],
                probe.pid,
                machine["uid"],
                machine["cs"],
                probe.eip,
                machine["ss"],
                machine["esp"],
                name,
            )
            record = LogRecord(number, ident & 0xFFFF, fields, hit, data)
            expected.append(format_hit(layout, record, ex_log))
            if layout in (COM, COM_SMP):
                smp = layout is COM_SMP
                raw = record.to_bytes(smp)
                assert expected[-1].startswith(raw + b"\r\n")
                assert len(raw) == header_length(fields) + 4 * smp + len(data)
                assert int.from_bytes(raw[2:4], "little") == len(raw) - len(data)
                assert int.from_bytes(raw[4:8], "little") == mask(fields, smp)
    written, count = run_native(formatter, chunk)
    assert count == len(expected) == 64 * len(LAYOUTS)
    assert written == b"".join(expected)


def test_a_full_output_buffer_splits_the_chunk_between_records(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(native, "OUT_BYTES", 4 * native.EXTRA_ROOM)
    formatter = native.NativeFormatter(LAYOUTS)
    formatter.set_probe(0, ProbeLog(1, 2, LogField.ALL, KLOG, "loop"))
    machine = {"uid": 0, "cs": 0x73, "ss": 0x7B, "esp": 0xBFFFF000, "executed": 10}
    records = [pack(0, 1, n, LogField.ALL, machine, bytes([n]) * n, b"") for n in range(60)]
    written, count = run_native(formatter, b"".join(records))
    hit = hit_info(LogField.ALL, 10, 1, 0, 0x73, 2, 0x7B, 0xBFFFF000, "loop")
    assert count == 60
    assert written == b"".join(
        format_record(KLOG, LogRecord(1, n, LogField.ALL, hit, bytes([n]) * n)) for n in range(60)
    )


def test_exception_log_is_a_second_record() -> None:
    record = LogRecord(3, 4, LogField.PID, hit_info(LogField.PID, 0, 7, 0, 0, 0, 0, 0, ""), b"\x01")
    lines = format_hit(EVL, record, b"\xee\xff").decode().splitlines()
    assert lines == [
        '{"major": 3, "minor": 4, "pid": 7, "data": "01"}',
        '{"major": 0, "minor": 0, "data": "eeff"}',
    ]


def test_the_docs_show_the_header_table() -> None:
    assert markdown_table() in DOCS.read_text()


MAX_PROBES = 40
"""Probes per program at most (glibc's thousand functions would take minutes)."""


def functions(program: str) -> list[str]:
    """Function symbols of a guest image (probe targets called many times or once): all
    of them, or ``MAX_PROBES`` spread over the sorted names."""
    with open(BIN / program, "rb") as stream:
        table = ELFFile(stream).get_section_by_name(".symtab")
        names = sorted(
            {
                symbol.name
                for symbol in table.iter_symbols()
                if symbol["st_info"]["type"] == "STT_FUNC"
                and symbol["st_size"]
                and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", symbol.name)
            }
        )
    return names[:: -(-len(names) // MAX_PROBES)]


NOT_RUN_HERE = {
    "spin": "runs until it is stopped",
    "filter": "reads standard input",
    "fsops": "makes files in the current directory",
    "vmlinux": "is the guest kernel, not a user program",
}
"""Executables in guest/bin that this test does not run in the test process, and why."""


def _executable(path: Path) -> bool:
    """An ELF executable (not one of the kernel modules' relocatable objects)."""
    with path.open("rb") as stream:
        return stream.read(4) == b"\x7fELF" and ELFFile(stream)["e_type"] == "ET_EXEC"


PROGRAMS = sorted(
    path.name
    for path in BIN.iterdir()
    if path.is_file() and path.name not in NOT_RUN_HERE and _executable(path)
)
TARGETS = {
    "KLOG": ["--log-target", "KLOG"],
    "KLOG -f": ["--log-target", "KLOG", "-f"],
    "COM1": ["--log-target", "COM1"],
    "EVL": ["--log-target", "EVL"],
}
HANDLER = """max_hits = 40
    push r, esp
    push 4
    add
    push mem_u32
    push r, eax
    log 2
    exit
"""


@pytest.mark.parametrize("program", PROGRAMS)
def test_dpc_run_writes_the_same_bytes_on_both_paths(
    program: str, tmp_path: Path, capfdbinary
) -> None:
    """A probe on every function of the program, every log target: the log file of the
    native path (tier jit) is byte for byte the Python path's (tier interp)."""
    source = tmp_path / "p.rpn"
    source.write_text(
        f"name = {BIN / program}\nmodtype = user\nlog = ALL\n"
        + "".join(f"offset = {name}\n{HANDLER}" for name in functions(program))
    )
    args = ["--probes", str(source), "--elf", str(BIN / program), "--json"]
    for target, options in TARGETS.items():
        logs, native_hits = [], 0
        for tier in ("interp", "jit"):
            log = tmp_path / f"{tier}.log"
            cli.main(
                [
                    "run",
                    "--tier",
                    tier,
                    *args,
                    *options,
                    "--log-file",
                    str(log),
                    "--",
                    str(BIN / program),
                    "one",
                    "two",
                ]
            )
            summary = capfdbinary.readouterr().err.splitlines()[-1]
            native_hits = json.loads(summary)["native_hits"] if tier == "jit" else 0
            logs.append(log.read_bytes() if log.exists() else b"")
        assert logs[0] == logs[1], (program, target)
        assert logs[0], (program, target)
        if program in ("loop", "recurse", "strings", "hello_glibc"):
            assert native_hits > 0, (program, target)


@pytest.mark.parametrize(
    "number", [0, 1, 9, 10, 99, 100, 999, 1000, 65535, 99999, 10**9 - 1, 10**9, 2**32 - 1]
)
def test_numbers_at_every_digit_count(number: int) -> None:
    """Decimal and hex numbers of every length, as pid/eip (probe) and esp (ring)."""
    formatter = native.NativeFormatter(LAYOUTS)
    fields = LogField.PID | LogField.CSEIP | LogField.SSESP
    chunk, expected = b"", []
    for ident, layout in enumerate(LAYOUTS):
        probe = ProbeLog(pid=number, eip=number, fields=fields, layout=layout, name="")
        formatter.set_probe(ident, probe)
        machine = {"cs": number & 0xFFFF, "ss": 0, "esp": number}
        major = min(number, 0xFFFF)
        chunk += pack(ident, major, major, fields, machine, b"", b"")
        hit = hit_info(fields, 0, number, 0, number & 0xFFFF, number, 0, number, "")
        expected.append(format_record(layout, LogRecord(major, major, fields, hit, b"")))
    assert run_native(formatter, chunk) == (b"".join(expected), len(LAYOUTS))


GOLDEN_FIELDS = {
    "pid": LogField.PID,
    "uid": LogField.UID,
    "cseip": LogField.CSEIP,
    "ssesp": LogField.SSESP,
    "tsc": LogField.TSC,
    "procname": LogField.PROCNAME,
}
GOLDEN_TARGETS = {
    "klog": [(LogTarget.KLOG, False)],
    "klog-f": [(LogTarget.KLOG, True)],
    "com": [(LogTarget.COM1, False), (LogTarget.COM2, False)],
}
GOLDEN_CASES = [
    (target, smp, mask_name)
    for target in golden.TARGETS
    for smp in (False, True)
    for mask_name in golden.MASKS
]


def golden_fields(mask_name: str) -> LogField:
    fields = LogField.NONE
    for name in golden.MASKS[mask_name]:
        fields |= GOLDEN_FIELDS[name]
    return fields


def executed_at(hit: golden.Hit) -> int:
    """The instruction count at which the machine's clock reads the hit's timeval."""
    microseconds = (hit.tv_sec - clock.EPOCH) * 1_000_000 + hit.tv_usec
    return microseconds * 1_000 // clock.NS_PER_INSTRUCTION


def test_golden_files_are_what_the_generator_writes() -> None:
    """The goldens on disk are current (regenerate with the script after changing it)."""
    files = {path.name: path.read_bytes() for path in golden.GOLDEN.iterdir()}
    assert files == golden.goldens()


@pytest.mark.parametrize(("target", "smp", "mask_name"), GOLDEN_CASES)
def test_both_formatters_write_the_5_0_formats(target: str, smp: bool, mask_name: str) -> None:
    """Every target (KLOG, KLOG -f, COM1, COM2), uniprocessor and SMP headers, each header
    mask: the Python and the native formatter write the golden file's bytes."""
    expected = (golden.GOLDEN / golden.golden_name(target, smp, mask_name)).read_bytes()
    fields = golden_fields(mask_name)
    for log_target, unformatted in GOLDEN_TARGETS[target]:
        layout = layout_for(log_target, unformatted, smp)
        formatter = native.NativeFormatter((layout,))
        python_out, chunk = [], b""
        for ident, hit in enumerate(golden.RECORDS):
            formatter.set_probe(ident, ProbeLog(hit.pid, hit.eip, fields, layout, hit.comm))
            machine = {"uid": hit.uid, "cs": hit.cs, "ss": hit.ss, "esp": hit.esp}
            machine["executed"] = executed_at(hit)
            chunk += pack(ident, hit.major, hit.minor, fields, machine, hit.log, hit.ex_log)
            info = hit_info(
                fields,
                machine["executed"],
                hit.pid,
                hit.uid,
                hit.cs,
                hit.eip,
                hit.ss,
                hit.esp,
                hit.comm,
            )
            record = LogRecord(hit.major, hit.minor, fields, info, hit.log)
            python_out.append(format_hit(layout, record, hit.ex_log))
        assert b"".join(python_out) == expected, (log_target, "python")
        assert run_native(formatter, chunk) == (expected, len(golden.RECORDS)), log_target
