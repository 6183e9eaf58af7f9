"""The LTT target: ``dpc run`` writes a CTF 1.8 trace that babeltrace2 reads, with the same
records, in the same order, as the EVL target writes for the same run."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from dprobes.cli import main as cli
from dprobes.compiler.pipeline import BuildOptions, compile_rpn
from dprobes.compiler.ppdf import encode_ppdf
from dprobes.runtime.logformat import ctf
from dprobes.tests.guest_expectations import BIN, symbol
from dprobes.vm.logrecord import HEADER, header_length, mask
from dprobes.vm.program import LogField, LogTarget

BABELTRACE = shutil.which("babeltrace2")
needs_babeltrace = pytest.mark.skipif(
    BABELTRACE is None, reason="babeltrace2 is not installed (apt-get install babeltrace2)"
)

LOOP = BIN / "loop"
BASE_ONLY = {"facility_id", "length", "mask", "data_length"}
"""Payload fields of the binary header that EVL does not show."""


def probes(log: str, target: str = "") -> str:
    """Three probes on loop: add3's first argument (minor 2), work's argument three times
    (minor 3, then ``setmin 4`` from the second hit on), and a handler whose fault leaves
    an exception log (a second record, 0/0)."""
    return f"""name = {LOOP}
modtype = user
major = 5
autostacktrace = yes
{log}
{target}
offset = add3
opcode = 0x55
minor = 2
    push r, esp
    push 4
    add
    push mem_u32
    log 1
    exit
offset = work
minor = 3
max_hits = 3
    push r, esp
    push 4
    add
    push mem_u32
    dup
    log 1
    jz first
    setmin 4
first:
    exit
offset = add3+1
minor = 7
max_hits = 1
    push 9
    log 1
    push 0
    push mem_u32
    exit
"""


def dpc(capfd, *args: str) -> tuple[int, str, str]:
    status = cli.main(list(args))
    out, err = capfd.readouterr()
    return status, out, err


def run(capfd, tmp_path: Path, source: str, target: str, log_file: Path, *options: str) -> str:
    """``dpc run`` of loop with ``source``'s probes; its stderr."""
    program = tmp_path / "p.rpn"
    program.write_text(source)
    status, _, err = dpc(
        capfd,
        "run",
        *options,
        "--probes",
        str(program),
        "--elf",
        str(LOOP),
        "--log-target",
        target,
        "--log-file",
        str(log_file),
        "--",
        str(LOOP),
    )
    assert status == 7, err
    return err


_TOKEN = re.compile(r'\{|\}|\[|\]|,|=|"(?:[^"\\]|\\.)*"|[^\s{}\[\],=]+')


def _value(tokens: list[str]) -> object:
    token = tokens.pop(0)
    if token in "{[":
        close = "}" if token == "{" else "]"
        items: dict[str, object] = {}
        while tokens[0] != close:
            key = tokens.pop(0)
            if key == "[":  # an array element: [i] = value
                key = tokens.pop(0)
                assert tokens.pop(0) == "]"
            assert tokens.pop(0) == "="
            items[key] = _value(tokens)
            if tokens[0] == ",":
                tokens.pop(0)
        tokens.pop(0)
        return items if close == "}" else list(items.values())
    if token.startswith('"'):
        return json.loads(token)
    return int(token, 0)


def babeltrace_events(trace: Path, times: list[str] | None = None) -> list[tuple[str, dict]]:
    """``babeltrace2 DIR``'s text output as (event name, payload) pairs; ``times``: gets
    each event's time (seconds since the epoch)."""
    done = subprocess.run(
        [BABELTRACE, "--clock-seconds", str(trace)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert done.stderr == ""
    events = []
    for line in done.stdout.splitlines():
        found = re.fullmatch(r"\[([^\]]*)\] \([^)]*\) (\S+): (\{.*\})", line)
        assert found, line
        if times is not None:
            times.append(found[1])
        payload = _value(_TOKEN.findall(found[3]))
        assert isinstance(payload, dict)
        events.append((found[2], payload))
    return events


def as_evl(name: str, payload: dict) -> dict:
    """An LTT event's payload in the EVL record's terms (the time as ``s:uuuuuu``, the
    data as hex)."""
    out = {}
    for key, value in payload.items():
        if key == "tsc":
            out[key] = f"{value['seconds']}:{value['microseconds']:06d}"
        elif key == "data":
            out[key] = bytes(value).hex()
        elif key not in BASE_ONLY:
            out[key] = value
    assert name == f"dprobes({payload['major']},{payload['minor']})"
    assert payload["facility_id"] == 1 and payload["data_length"] == len(payload["data"])
    return out


@needs_babeltrace
@pytest.mark.parametrize("tier", ["interp", "jit"])
@pytest.mark.parametrize(("log", "fields"), [("", LogField.NONE), ("log = ALL", LogField.ALL)])
def test_babeltrace_reads_the_records_evl_writes(
    tier: str, log: str, fields: LogField, tmp_path: Path, capfd
) -> None:
    """Count, order, header fields and data bytes are those of the EVL records; the
    payload starts with the binary header (its mask says which fields follow)."""
    source = probes(log)
    run(capfd, tmp_path, source, "EVL", tmp_path / "log.jsonl", "--tier", tier)
    run(capfd, tmp_path, source, "LTT", tmp_path / "trace", "--tier", tier)
    evl = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    events = babeltrace_events(tmp_path / "trace")
    assert len(evl) == 8  # 3 add3, 3 work, 1 faulting handler and its exception log
    assert [as_evl(name, payload) for name, payload in events] == evl
    assert [list(as_evl(*event)) for event in events] == [list(record) for record in evl]
    assert {(record["major"], record["minor"]) for record in evl} == {
        (5, 2),
        (5, 3),
        (5, 4),
        (5, 7),
        (0, 0),
    }
    masks = {payload["mask"] for _, payload in events if payload["major"]}
    assert masks == {mask(fields)}


@needs_babeltrace
def test_trace_passes_babeltrace_without_warnings(tmp_path: Path, capfd) -> None:
    run(capfd, tmp_path, probes("log = ALL"), "LTT", tmp_path / "trace")
    done = subprocess.run(
        [BABELTRACE, "--log-level=WARNING", "--output-format=dummy", str(tmp_path / "trace")],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


@needs_babeltrace
def test_events_in_several_packets(tmp_path: Path, capfd, monkeypatch) -> None:
    """Small packets: the same events, in order, across packet boundaries, with each
    event's time the record's (the header's tsc) and never going back."""
    monkeypatch.setattr(ctf, "PACKET_BYTES", 40)  # about one event a packet
    run(capfd, tmp_path, probes("log = TSC"), "LTT", tmp_path / "small")
    monkeypatch.undo()
    run(capfd, tmp_path, probes("log = TSC"), "LTT", tmp_path / "large")
    times: list[str] = []
    small, large = (
        babeltrace_events(tmp_path / "small", times),
        babeltrace_events(tmp_path / "large"),
    )
    assert small == large and len(small) == 8
    last = "0.000000000"
    for time, (_, payload) in zip(times, small, strict=True):
        if "tsc" in payload:
            last = f"{payload['tsc']['seconds']}.{payload['tsc']['microseconds']:06d}000"
        assert time == last  # an exception log's record (no tsc) has the time before it
    stream = (tmp_path / "small" / ctf.STREAM_FILE).read_bytes()
    header, context = ctf.PACKET_HEADER.packing(), ctf.PACKET_CONTEXT.packing()
    at, packets = 0, 0
    while at < len(stream):
        assert header.unpack_from(stream, at)[0] == ctf.MAGIC
        begin, end, content, size = context.unpack_from(stream, at + header.size)
        assert content == size and begin <= end
        at, packets = at + size // 8, packets + 1
    assert at == len(stream) and packets >= 6


def test_same_run_same_bytes(tmp_path: Path, capfd) -> None:
    """The trace (UUID included) is a function of the run's inputs, not of where or when."""
    for name in ("one", "two"):
        run(capfd, tmp_path, probes("log = ALL"), "LTT", tmp_path / name)
    for file in (ctf.METADATA_FILE, ctf.STREAM_FILE):
        assert (tmp_path / "one" / file).read_bytes() == (tmp_path / "two" / file).read_bytes()
    run(capfd, tmp_path, probes("log = ALL"), "LTT", tmp_path / "three", "--seed", "1")
    one, three = ((tmp_path / name / ctf.METADATA_FILE).read_text() for name in ("one", "three"))
    assert re.search(r'uuid = "(.*)"', one)[1] != re.search(r'uuid = "(.*)"', three)[1]


def test_a_trace_is_replaced_by_the_next_run(tmp_path: Path, capfd) -> None:
    trace = tmp_path / "trace"
    run(capfd, tmp_path, probes("log = ALL"), "LTT", trace)
    first = (trace / ctf.STREAM_FILE).read_bytes()
    run(capfd, tmp_path, probes("log = ALL"), "LTT", trace)
    assert (trace / ctf.STREAM_FILE).read_bytes() == first


def test_program_and_ppdf_that_say_ltt(tmp_path: Path, capfd) -> None:
    """``log_target = LTT`` in the source, or LTT in a PPDF, writes a trace without
    ``--log-target``."""
    source = tmp_path / "p.rpn"
    source.write_text(probes("log = PID", "log_target = LTT"))
    program = compile_rpn(str(source), BuildOptions(elf=str(LOOP)), text=source.read_text()).program
    assert program.header.log_target is LogTarget.LTT
    ppdf = tmp_path / "p.ppdf"
    ppdf.write_bytes(encode_ppdf(program))
    for name, path in (("from-source", source), ("from-ppdf", ppdf)):
        trace = tmp_path / name
        status, _, err = dpc(
            capfd,
            "run",
            "--probes",
            str(path),
            "--elf",
            str(LOOP),
            "--log-file",
            str(trace),
            "--",
            str(LOOP),
        )
        assert status == 7, err
        assert (trace / ctf.STREAM_FILE).stat().st_size > 0
    streams = {_without_uuid(tmp_path / name) for name in ("from-source", "from-ppdf")}
    assert len(streams) == 1  # the same events; the UUIDs differ as the probe files do


def _without_uuid(trace: Path) -> bytes:
    """The trace's stream with its UUID (in every packet header) left out."""
    found = re.search(r'uuid = "(.*)"', (trace / ctf.METADATA_FILE).read_text())
    assert found
    return (trace / ctf.STREAM_FILE).read_bytes().replace(uuid.UUID(found[1]).bytes, b"")


def _state(path: Path) -> object:
    """What is at ``path``: a directory's entries and contents, or a file's bytes."""
    if path.is_dir():
        return {entry.name: entry.read_bytes() for entry in path.iterdir()}
    return path.read_bytes() if path.exists() else None


@pytest.mark.parametrize(
    ("prepare", "options", "message"),
    [
        (lambda d: (d.mkdir(), (d / "notes").write_text("mine")), (), "holds no LTT trace"),
        (lambda d: d.write_text("a file"), (), "not a directory"),
        (lambda d: None, ("--append",), "--append: an LTT trace is written anew"),
    ],
)
def test_bad_log_file_refused_before_the_guest_starts(
    prepare, options: tuple[str, ...], message: str, tmp_path: Path, capfd
) -> None:
    target = tmp_path / "out"
    prepare(target)
    before = _state(target)
    source = tmp_path / "p.rpn"
    source.write_text(probes("log = ALL"))
    status, out, err = dpc(
        capfd,
        "run",
        *options,
        "--probes",
        str(source),
        "--elf",
        str(LOOP),
        "--log-target",
        "LTT",
        "--log-file",
        str(target),
        "--",
        str(LOOP),
    )
    assert status == 2 and message in err and "Traceback" not in err
    assert out == "" and _state(target) == before  # the guest never ran, nothing was touched


def test_missing_parent_and_missing_log_file(tmp_path: Path, capfd) -> None:
    status, out, err = dpc(
        capfd,
        "run",
        "--log-target",
        "LTT",
        "--log-file",
        str(tmp_path / "no" / "trace"),
        "--",
        str(LOOP),
    )
    assert status == 2 and "No such file or directory" in err and out == ""
    status, out, err = dpc(capfd, "run", "--log-target", "LTT", "--", str(LOOP))
    assert status == 2 and "LTT needs --log-file" in err and out == ""


def test_ltt_and_another_target_cannot_share_the_log_file(tmp_path: Path, capfd) -> None:
    ltt, evl = tmp_path / "ltt.rpn", tmp_path / "evl.rpn"
    ltt.write_text(probes("", "log_target = LTT"))
    offset = symbol("strings", "str_find")[0]
    evl.write_text(
        f"name = {BIN / 'strings'}\nmodtype = user\nlog_target = EVL\noffset = {offset}\n    exit\n"
    )
    status, out, err = dpc(
        capfd,
        "run",
        "--probes",
        str(ltt),
        "--probes",
        str(evl),
        "--elf",
        str(LOOP),
        "--log-file",
        str(tmp_path / "out"),
        "--",
        str(LOOP),
    )
    assert status == 2 and "LTT and EVL cannot share --log-file" in err and out == ""
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fields", [LogField.NONE, *(field.flag for field in HEADER), LogField.ALL])
def test_event_fields_are_the_binary_header(fields: LogField) -> None:
    """The payload's fixed part, as the metadata declares it, is as long as the record's
    binary header, field for field."""
    payload = ctf.payload(fields)
    fixed = ctf.Struct(payload.fields[:-2])
    assert fixed.packing().size == header_length(fields)
    names = [name for name, _ in fixed.fields]
    shown = [value.name for field in HEADER if field.flag in fields for value in field.values]
    assert names == [*ctf.BASE_NAMES, *shown]


def test_records_cut_between_writes(tmp_path: Path) -> None:
    """The trace file takes the formatter's output in pieces of any size: a record cut off
    at the end of one write is finished by the next."""
    from dprobes.runtime.logformat.python import format_record
    from dprobes.runtime.logtargets import HitInfo, LogRecord

    hit = HitInfo(pid=3, cs=0x73, eip=0x8049000, seconds=5, microseconds=7, procname="loop")
    text = b"".join(
        format_record(ctf.RECORDS, LogRecord(1, minor, fields, hit, bytes(range(minor))))
        for minor, fields in enumerate([LogField.ALL, LogField.NONE, LogField.TSC, LogField.PID])
    )
    streams = []
    for piece in (len(text), 1, 7):
        directory = tmp_path / str(piece)
        directory.mkdir()
        trace = ctf.TraceFile(directory, uuid.UUID(int=1))
        for at in range(0, len(text), piece):
            trace.write(memoryview(text)[at : at + piece])
        trace.flush()
        trace.close()
        streams.append((directory / ctf.STREAM_FILE).read_bytes())
        assert len(trace.trace.classes) == 4
    assert streams[0] == streams[1] == streams[2] and streams[0]
