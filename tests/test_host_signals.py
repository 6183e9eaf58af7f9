"""SIGINT and SIGTERM sent to ``dpc run`` stop the guest cleanly: at an instruction
boundary, logs flushed, one line per process saying where it stood, exit 130 / 143, and no
"Exception ignored" or traceback, in a busy loop and in a syscall-heavy run alike."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dprobes.runtime.host_signals import blocking_call, stop_on_signals
from dprobes.runtime.machine import InstructionLimit, Machine, RunStopped, StoppedBySignal
from dprobes.tests.guest_expectations import BIN

STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}


def _start(args: list[str], stdin: int | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "dprobes.cli", "run", "--json", *args],
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _first_line(process: subprocess.Popen[bytes]) -> bytes:
    """The guest's first line of output: it is running."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], 120)
    assert ready, "the guest printed nothing"
    return process.stdout.readline()


def _wait_for_records(log: Path) -> None:
    """Until the log file holds something (its writer's buffer was written out once)."""
    deadline = time.monotonic() + 120
    while not log.stat().st_size:
        assert time.monotonic() < deadline, "no log record was written"
        time.sleep(0.05)


def _stop(process: subprocess.Popen[bytes], signum: int) -> tuple[bytes, str]:
    process.send_signal(signum)
    out, err = process.communicate(timeout=120)
    return out, err.decode()


def _check_stopped(err: str, signum: int, name: str) -> dict:
    """stderr of a stopped run: the stop line, the JSON summary, nothing else."""
    assert "Traceback" not in err and "Exception ignored" not in err, err
    *lines, summary = err.splitlines()
    assert len(lines) == 1 and re.fullmatch(
        rf"dpc run: stopped by {signal.Signals(signum).name}: pid 1 \({name}\) "
        r"at EIP 0x[0-9a-f]{8}",
        lines[0],
    ), err
    report = json.loads(summary)
    assert report["status"] == STATUS[signum] and report["signal"] is None
    return report


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("mode", ["busy", "sys"])
def test_signal_stops_spin_and_flushes_its_log(signum: int, mode: str, tmp_path: Path) -> None:
    probe, log = tmp_path / "tick.rpn", tmp_path / "log"
    probe.write_text(
        f"name = {BIN / 'spin'}\nmodtype = user\nlog_target = EVL\noffset = tick\n"
        "    push 1\n    log 1\n    exit\n"
    )
    options = ["--probes", str(probe), "--elf", str(BIN / "spin"), "--log-file", str(log)]
    process = _start([*options, "--", str(BIN / "spin"), *(["sys"] if mode == "sys" else [])])
    assert _first_line(process) == (b"spinning with syscalls\n" if mode == "sys" else b"spinning\n")
    _wait_for_records(log)
    out, err = _stop(process, signum)
    assert process.returncode == STATUS[signum] and out == b""
    report = _check_stopped(err, signum, "spin")
    records = log.read_text().splitlines()
    assert len(records) == report["logs"] == report["records"][0]["hits"] > 0
    assert all(json.loads(line)["data"] == "01000000" for line in records)


def test_sigint_stops_busybox_yes(busybox: str) -> None:
    process = _start(["--", busybox, "yes"])
    assert _first_line(process) == b"y\n"
    _, err = _stop(process, signal.SIGINT)
    assert process.returncode == 130
    _check_stopped(err, signal.SIGINT, "busybox")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_a_guest_waiting_in_read(signum: int) -> None:
    process = _start(["--", str(BIN / "filter"), "upper"], stdin=subprocess.PIPE)
    assert process.stdin is not None
    process.stdin.write(b"abc\n")
    process.stdin.flush()
    assert _first_line(process) == b"ABC\n"  # and now it waits for more
    process.send_signal(signum)
    process.wait(timeout=120)  # stdin stays open: the read can only end by the signal
    process.stdin.close()
    out, err = process.stdout.read(), process.stderr.read().decode()  # type: ignore[union-attr]
    assert process.returncode == STATUS[signum] and out == b""
    _check_stopped(err, signum, "filter")


def test_request_stop_raises_stopped_by_signal_and_handlers_come_back() -> None:
    machine = Machine()
    proc = machine.spawn(BIN / "spin", [str(BIN / "spin"), "sys"], stdout=lambda _data: None)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        with stop_on_signals(machine), pytest.raises(StoppedBySignal) as stopped:
            machine.run(max_instructions=20_000_000_000)
    finally:
        timer.cancel()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    assert isinstance(stopped.value, RunStopped) and issubclass(InstructionLimit, RunStopped)
    assert stopped.value.signal == signal.SIGTERM and stopped.value.running == [proc]
    assert stopped.value.where == [f"pid 1 (spin) at EIP 0x{machine.saved_eip(proc):08x}"]
    assert proc.alive  # still runnable: run() may go on
    with pytest.raises(InstructionLimit):
        machine.run(max_instructions=1000)


def test_a_wait_on_the_host_inside_blocking_call_is_interrupted() -> None:
    machine = Machine()
    read_end, write_end = os.pipe()  # nobody writes: the read waits
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    try:
        with stop_on_signals(machine):
            timer.start()
            with pytest.raises(InterruptedError), blocking_call(machine):
                os.read(read_end, 1)
    finally:
        timer.cancel()
        os.close(read_end)
        os.close(write_end)
    assert machine.stop_request == signal.SIGINT and not machine.blocking
