"""``dpc run`` gives the guest the world of a program run natively: the host's stdin,
stdout and stderr (pipes, files, terminals), the host's environment as qemu-user passes it,
SIGPIPE when its reader goes, and a named notice for each system call it lacks.

Each behaviour is compared with the same program under ``qemu-i386`` where qemu has it.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import shlex
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from dprobes.runtime.machine import Machine
from dprobes.runtime.stdio import Stdio
from dprobes.runtime.syscalls.names import NAMES
from dprobes.runtime.syscalls.table import syscall, unimplemented_message
from dprobes.tests.guest_expectations import BIN, QEMU
from dprobes.tests.test_runtime_machine import tiny_elf

DPC = [sys.executable, "-m", "dprobes.cli", "run"]
FILTER = str(BIN / "filter")
needs_qemu = pytest.mark.skipif(QEMU is None, reason="qemu-i386 not on PATH (Debian: qemu-user)")
BASE_ENV = {"DPROBES_CACHE_DIR": os.environ.get("DPROBES_CACHE_DIR", "")}
"""An environment of the tests' own: the JIT cache of this session, nothing else."""
HANG_GUARD = 120
"""Seconds after which a test that waits on a guest gives up (a hang, not a timing)."""


def dpc(*command: str, **kwargs) -> subprocess.CompletedProcess[bytes]:
    """``dpc run -- command`` (options before a "--" in ``command`` go to dpc)."""
    args = list(command) if "--" in command else ["--", *command]
    return subprocess.run(
        [*DPC, *args], capture_output=True, timeout=HANG_GUARD, check=False, **kwargs
    )


def qemu(*command: str, **kwargs) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [QEMU, *command], capture_output=True, timeout=HANG_GUARD, check=False, **kwargs
    )


def tiny_program(tmp_path: Path, name: str, code: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(tiny_elf(code))
    path.chmod(0o755)
    return path


EXIT_MINUS_EAX = bytes.fromhex("f7d8 89c3 b801000000 cd80")  # exit(-eax)


def clean(result: subprocess.CompletedProcess[bytes]) -> None:
    assert b"Traceback" not in result.stderr and b"Exception ignored" not in result.stderr


# --- stdin, stdout, stderr ----------------------------------------------------------------


@needs_qemu
def test_stdin_pipe_reaches_busybox_tr(busybox: str) -> None:
    ours = dpc(busybox, "tr", "a-z", "A-Z", input=b"abc\n")
    assert (ours.returncode, ours.stdout, ours.stderr) == (0, b"ABC\n", b"")
    native = qemu(busybox, "tr", "a-z", "A-Z", input=b"abc\n")
    assert ours.stdout == native.stdout


@needs_qemu
def test_stdin_from_a_file_numbered_like_qemu(tmp_path: Path) -> None:
    text = tmp_path / "in.txt"
    text.write_bytes(b"".join(b"line %d of a file longer than one read\n" % i for i in range(40)))
    with text.open("rb") as stdin:
        ours = dpc(FILTER, "number", stdin=stdin)
    with text.open("rb") as stdin:
        native = qemu(FILTER, "number", stdin=stdin)
    assert ours.returncode == native.returncode == 0
    assert ours.stdout == native.stdout and ours.stdout.startswith(b"1\tline 0 of")


def _read_exactly(stream, n: int) -> bytes:
    data = b""
    while len(data) < n:
        ready, _, _ = select.select([stream], [], [], HANG_GUARD)
        assert ready, f"no output from the guest after {data!r}"
        chunk = os.read(stream.fileno(), n - len(data))
        assert chunk, f"guest output ended after {data!r}"
        data += chunk
    return data


def test_stdin_read_waits_for_input_and_ends_at_eof() -> None:
    """The guest echoes a first line while the pipe is still open (its next read waits
    for more, as natively) and exits 0 only when the writer closes the pipe."""
    child = subprocess.Popen(
        [*DPC, "--", FILTER, "upper"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        child.stdin.write(b"first\n")
        child.stdin.flush()
        assert _read_exactly(child.stdout, 6) == b"FIRST\n"
        assert child.poll() is None  # still waiting in read
        child.stdin.write(b"last")
        child.stdin.close()
        assert child.stdout.read() == b"LAST"
        assert child.wait(HANG_GUARD) == 0
        assert child.stderr.read() == b""
    finally:
        child.kill()
        child.wait()


def test_guest_output_goes_straight_to_the_host_fds(tmp_path: Path) -> None:
    """stdout and stderr are the host's files themselves: a file opened for appending
    keeps what was there, and the guest's bytes land in it."""
    out = tmp_path / "out"
    out.write_bytes(b"before\n")
    with out.open("ab") as stdout:
        result = subprocess.run(
            [*DPC, "--", str(BIN / "loop")],
            stdout=stdout,
            stderr=subprocess.PIPE,
            timeout=HANG_GUARD,
            check=False,
        )
    assert result.returncode == 7 and result.stderr == b"loop: done\n"
    assert out.read_bytes().startswith(b"before\niterations 100000\n")


def test_klog_records_interleave_with_guest_output_as_written(tmp_path: Path) -> None:
    """KLOG records on stderr and the guest's writes reach one shared pipe in the order
    they happened: loop writes "add3(1, 2, 3) = " before calling add3, whose probe logs,
    and the sum after it."""
    probes = tmp_path / "add3.rpn"
    probes.write_text(f"name = {BIN / 'loop'}\nmodtype = user\noffset = add3\n log 1\n exit\n")
    result = subprocess.run(
        [*DPC, "--probes", str(probes), "--elf", str(BIN / "loop"), "--", str(BIN / "loop")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=HANG_GUARD,
        check=False,
    )
    merged = result.stdout
    assert (
        result.returncode == 7 and merged.count(b"dprobes(0,0) \n") == 3
    )  # 5.0: two lines a record
    before = merged.find(b"add3(1, 2, 3) = ")
    record = merged.find(b"dprobes(")
    after = merged.find(b"6\nadd3(10, 20, 30) = ")
    assert 0 <= before < record < after
    assert merged.endswith(b"102\nloop: done\n")


# --- terminals ----------------------------------------------------------------------------


@needs_qemu
@pytest.mark.parametrize("fd", ["0", "1"])
def test_isatty_on_a_pipe_is_false_as_under_qemu(busybox: str, fd: str) -> None:
    ours, native = dpc(busybox, "test", "-t", fd), qemu(busybox, "test", "-t", fd)
    assert ours.returncode == native.returncode == 1


@needs_qemu
def test_terminal_answers_come_from_the_host_pty(busybox: str) -> None:
    """On a pty, isatty is true and ``stty size`` reads the pty's window size, as under
    qemu-i386 (with no LINES/COLUMNS in the environment, which busybox would prefer)."""
    master, slave = pty.openpty()
    try:
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("<4H", 33, 77, 0, 0))
        results = []
        for run in (dpc, qemu):
            tty = run(busybox, "test", "-t", "0", stdin=slave)
            size = run(busybox, "stty", "size", stdin=slave, env=BASE_ENV)
            results.append((tty.returncode, size.returncode, size.stdout))
    finally:
        os.close(master)
        os.close(slave)
    assert results[0] == results[1] == (0, 0, b"33 77\n")


def test_memory_stdio_is_no_terminal(tmp_path: Path) -> None:
    """The API's in-memory descriptors answer TCGETS with -ENOTTY (25)."""
    code = bytes.fromhex("bb00000000 b901540000 89e2 b836000000 cd80")  # ioctl(0, TCGETS, esp)
    path = tiny_program(tmp_path, "tcgets", code + EXIT_MINUS_EAX)
    machine = Machine()
    proc = machine.spawn(path, stdio=Stdio.memory(b"input"))
    machine.run()
    assert proc.returncode == 25


# --- environment --------------------------------------------------------------------------


@needs_qemu
def test_environment_is_the_hosts_as_under_qemu(busybox: str) -> None:
    """In the order given (qemu-user reverses it; a native run keeps it)."""
    env = {**BASE_ENV, "ZED": "last", "A": "1", "EMPTY": "", "SPACES": "a b  c", "EQ": "x=y"}
    ours, native = dpc(busybox, "env", env=env), qemu(busybox, "env", env=env)
    assert ours.returncode == native.returncode == 0
    assert ours.stdout == "".join(f"{k}={v}\n" for k, v in env.items()).encode()
    assert sorted(ours.stdout.splitlines()) == sorted(native.stdout.splitlines())


@needs_qemu
def test_env_unset_and_clear_env_as_qemu_options(busybox: str) -> None:
    env = {**BASE_ENV, "KEEP": "k", "DROP": "d"}
    ours = dpc(
        "--unset", "DROP", "--env", "NEW=n", "--env", "KEEP=k2", "--", busybox, "env", env=env
    )
    native = qemu("-U", "DROP", "-E", "NEW=n", "-E", "KEEP=k2", busybox, "env", env=env)
    assert sorted(ours.stdout.splitlines()) == sorted(native.stdout.splitlines())
    assert b"DROP=d" not in ours.stdout and b"KEEP=k2" in ours.stdout
    cleared = dpc("--clear-env", "--env", "ONLY=1", "--", busybox, "env", env=env)
    assert cleared.stdout == b"ONLY=1\n"


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--env", "NOEQUALS"], b"--env: expected NAME=VALUE, got 'NOEQUALS'"),
        (["--env", "=v"], b"--env: expected NAME=VALUE, got '=v'"),
        (["--unset", "A=b"], b"--unset: not a variable name: 'A=b'"),
        (["--unset", ""], b"--unset: not a variable name: ''"),
    ],
)
def test_bad_environment_options_are_usage_errors(option: list[str], message: bytes) -> None:
    result = dpc(*option, "--", str(BIN / "loop"))
    clean(result)
    assert result.returncode == 2 and result.stdout == b""
    assert result.stderr == b"dpc run: error: " + message + b"\n"


# --- unimplemented system calls -----------------------------------------------------------

ACCT, UNNUMBERED = 51, 0x1F00
CALLS = bytes.fromhex("b833000000 cd80 b833000000 cd80 b8001f0000 cd80")  # acct, acct, 0x1f00


def test_unimplemented_syscall_is_named_once_and_counted(tmp_path: Path) -> None:
    path = tiny_program(tmp_path, "nosys", CALLS + EXIT_MINUS_EAX)
    result = dpc("--json", "--", str(path))
    clean(result)
    lines = result.stderr.decode().splitlines()
    assert result.returncode == 38  # ENOSYS
    assert lines[:2] == [
        "dpc: guest called unimplemented syscall 51 (acct)",
        "dpc: guest called unimplemented syscall 7936 (unknown)",
    ]
    summary = json.loads(lines[-1])
    assert summary["unimplemented"] == [
        {"number": ACCT, "name": "acct", "calls": 2},
        {"number": UNNUMBERED, "name": None, "calls": 1},
    ]


def test_machine_reports_unimplemented_through_warn(tmp_path: Path) -> None:
    path = tiny_program(tmp_path, "nosys", CALLS + EXIT_MINUS_EAX)
    machine, notices = Machine(), []
    machine.warn = notices.append
    proc = machine.spawn(path)
    machine.run()
    assert proc.returncode == 38
    assert notices == [unimplemented_message(ACCT), unimplemented_message(UNNUMBERED)]
    assert machine.unknown_syscalls == {ACCT: 2, UNNUMBERED: 1}


def test_names_are_the_i386_numbers() -> None:
    known = {1: "exit", 3: "read", 54: "ioctl", 221: "fcntl64", 243: "set_thread_area"}
    known |= {295: "openat", 355: "getrandom", 383: "statx", 435: "clone3"}
    assert {n: NAMES[n] for n in known} == known
    assert max(NAMES) == 450 and 222 not in NAMES
    with pytest.raises(ValueError, match="221 is 'fcntl64', not 'fcntl'"):
        syscall(221, "fcntl")


# --- SIGPIPE ------------------------------------------------------------------------------


def _writer_with_reader_gone(command: list[str]) -> subprocess.CompletedProcess[bytes]:
    """Run ``command`` with stdout a pipe whose read end is already closed."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            command,
            input=b"x" * 1000,
            stdout=write_end,
            stderr=subprocess.PIPE,
            timeout=HANG_GUARD,
            check=False,
        )
    finally:
        os.close(write_end)


@needs_qemu
def test_write_to_a_closed_pipe_kills_with_sigpipe() -> None:
    ours = _writer_with_reader_gone([*DPC, "--json", "--", FILTER])
    native = _writer_with_reader_gone([QEMU, FILTER])
    clean(ours)
    assert native.returncode == -13
    assert ours.returncode == 141  # 128 + SIGPIPE, as a shell reports it
    summary = json.loads(ours.stderr.splitlines()[-1])
    assert (summary["status"], summary["signal"]) == (141, 13)


@needs_qemu
def test_ignored_sigpipe_gives_epipe(tmp_path: Path) -> None:
    """With SIGPIPE ignored (rt_sigaction SIG_IGN) write returns -EPIPE (32)."""
    ignore = bytes.fromhex("6a00 6a00 6a00 6a01 89e1 bb0d000000 31d2 be08000000 b8ae000000 cd80")
    write_loop = bytes.fromhex("bb01000000 89e1 ba01000000 b804000000 cd80 85c0 7fe9")
    path = tiny_program(tmp_path, "epipe", ignore + write_loop + EXIT_MINUS_EAX)
    ours = _writer_with_reader_gone([*DPC, "--", str(path)])
    native = _writer_with_reader_gone([QEMU, str(path)])
    clean(ours)
    assert ours.returncode == native.returncode == 32


@needs_qemu
def test_busybox_yes_into_head_ends_with_sigpipe(busybox: str) -> None:
    script = f"{shlex.join([*DPC, '--', busybox, 'yes'])} | head -1; echo $? >&2"
    bash = subprocess.run(
        ["bash", "-o", "pipefail", "-c", script],
        capture_output=True,
        timeout=HANG_GUARD,
        check=False,
    )
    assert bash.stdout == b"y\n"
    assert bash.stderr == b"141\n"  # no traceback, no "Exception ignored", no crash line


# --- the pipeline -----------------------------------------------------------------


@needs_qemu
def test_pipeline_of_guest_programs_matches_qemu() -> None:
    """``printf ... | dpc run -- filter number | dpc run -- filter upper`` in a shell gives
    the bytes the same pipeline gives under qemu-i386."""
    text = "printf 'probe one\\ntwo words here\\n\\nlast line without newline'"

    def pipeline(runner: list[str]) -> bytes:
        run = shlex.join(runner)
        script = f"{text} | {run} {FILTER} number | {run} {FILTER} upper"
        result = subprocess.run(
            ["sh", "-c", script], capture_output=True, timeout=HANG_GUARD, check=False
        )
        assert (result.returncode, result.stderr) == (0, b"")
        return result.stdout

    ours = pipeline([*DPC, "--"])
    assert ours == pipeline([QEMU])
    assert ours == b"1\tPROBE ONE\n2\tTWO WORDS HERE\n3\t\n4\tLAST LINE WITHOUT NEWLINE"
