"""The files a guest sees under ``dpc run``: the host's, as under qemu-i386.

Busybox and guest/bin/fsops run through ``dpc run`` and through ``qemu-i386`` in the same
scratch directory must print the same; ``--root`` confines the guest to a directory
(``..`` and symbolic links cannot leave it) and ``--read-only`` refuses every change with
EROFS; by default only the starting directory may be changed.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dprobes.runtime import syscalls
from dprobes.runtime.filesystem import FileSystemView
from dprobes.runtime.machine import Machine
from dprobes.tests.guest_expectations import BIN, QEMU

needs_qemu = pytest.mark.skipif(QEMU is None, reason="qemu-i386 is not installed")


def dpc_run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dprobes.cli", "run", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def qemu(cwd: Path, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [QEMU or "qemu-i386", *command],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def scratch(tmp_path: Path) -> Path:
    """A working directory with a small file and a subdirectory in it."""
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    (work / "file").write_text("one\ntwo\nthree\n")
    (work / "sub" / "inner").write_text("x")
    return work


def same_as_qemu(cwd: Path, *command: str) -> subprocess.CompletedProcess[str]:
    ours, theirs = dpc_run(cwd, "--", *command), qemu(cwd, *command)
    assert (ours.stdout, ours.returncode) == (theirs.stdout, theirs.returncode), ours.stderr
    return ours


@needs_qemu
def test_fsops_prints_what_it_prints_under_qemu(tmp_path: Path) -> None:
    ours = same_as_qemu(tmp_path, str(BIN / "fsops"))
    assert ours.returncode == 0 and ours.stdout.endswith("errors 7\n")
    assert "getcwd ends in /fsops.d: 1\n" in ours.stdout
    assert "list .: . .. b c sub\n" in ours.stdout
    assert list(tmp_path.iterdir()) == []  # it removed what it made


@needs_qemu
@pytest.mark.parametrize(
    "command",
    [
        ["ls", "/"],
        ["pwd"],
        ["find", "{work}"],
        ["printf", "%s\\n", "x"],
        ["cat", "file"],
        ["wc", "-l", "file"],
        ["ls", "-a", "sub", "/proc/.."],
        ["cat", "sub/inner", "missing"],
        ["stat", "-f", "-c", "%T %l", "."],
    ],
)
def test_busybox_reads_the_host_files(busybox: str, tmp_path: Path, command: list[str]) -> None:
    work = scratch(tmp_path)
    ours = same_as_qemu(work, busybox, *(word.format(work=work) for word in command))
    assert "unimplemented" not in ours.stderr


@needs_qemu
def test_busybox_changes_the_working_directory_as_under_qemu(busybox: str, tmp_path: Path) -> None:
    steps = [
        ["mkdir", "-p", "a/b"],
        ["mv", "file", "a/b/moved"],
        ["touch", "new"],
        ["cp", "-p", "a/b/moved", "copy"],
        ["truncate", "-s", "8", "a/b/moved"],
        ["rm", "-r", "sub"],
        ["find", "."],
    ]
    runners = {"dpc": lambda cwd, *command: dpc_run(cwd, "--", *command), "qemu": qemu}
    trees = []
    for name, runner in runners.items():
        work = scratch(tmp_path / name)
        outputs = [runner(work, busybox, *step) for step in steps]
        assert all(done.returncode == 0 for done in outputs), [d.stderr for d in outputs]
        trees.append((sorted(outputs[-1].stdout.split()), (work / "a/b/moved").read_text()))
    assert trees[0] == trees[1]
    assert trees[0] == ([".", "./a", "./a/b", "./a/b/moved", "./copy", "./new"], "one\ntwo\n")


def test_root_is_the_guest_slash(busybox: str, tmp_path: Path) -> None:
    root = scratch(tmp_path)
    (tmp_path / "outside").write_text("secret")
    (root / "up").symlink_to("/../..")
    (root / "abs").symlink_to(tmp_path / "outside")
    entries = "abs\nfile\nsub\nup\n"
    for path in ("/", "/..", "../../..", "/up", "up/..", "sub/../.."):
        done = dpc_run(tmp_path, "--root", str(root), "--", busybox, "ls", path)
        assert (done.stdout, done.returncode) == (entries, 0), (path, done.stderr)
    done = dpc_run(tmp_path, "--root", str(root), "--", busybox, "pwd")
    assert done.stdout == "/\n"
    done = dpc_run(tmp_path, "--root", str(root), "--", busybox, "cat", "abs", "../outside")
    assert done.returncode == 1 and "secret" not in done.stdout
    assert done.stderr.count("No such file or directory") == 2
    done = dpc_run(tmp_path, "--root", str(root), "--", busybox, "touch", "/made")
    assert done.returncode == 0 and (root / "made").exists()


def test_read_only_refuses_every_change(busybox: str, tmp_path: Path) -> None:
    work = scratch(tmp_path)
    before = sorted(str(p) for p in work.rglob("*"))
    for command in (["touch", "new"], ["rm", "-f", "file"], ["mkdir", "d"], ["mv", "file", "f"]):
        done = dpc_run(work, "--read-only", "--", busybox, *command)
        assert done.returncode == 1, command
        assert "Read-only file system" in done.stderr, (command, done.stderr)
    assert sorted(str(p) for p in work.rglob("*")) == before
    assert dpc_run(work, "--read-only", "--", busybox, "cat", "file").stdout == "one\ntwo\nthree\n"


def test_only_the_starting_directory_is_writable(busybox: str, tmp_path: Path) -> None:
    work = scratch(tmp_path)
    outside = tmp_path / "outside"
    done = dpc_run(work, "--", busybox, "touch", str(outside), "inside")
    assert done.returncode == 1 and f"touch: {outside}: Permission denied" in done.stderr
    assert not outside.exists() and (work / "inside").exists()
    done = dpc_run(work, "--", busybox, "sh", "-c", "echo hi > /dev/null && echo ok")
    assert done.stdout == "ok\n", done.stderr


def test_root_must_be_a_directory(tmp_path: Path) -> None:
    done = dpc_run(tmp_path, "--root", str(tmp_path / "no"), "--", str(BIN / "loop"))
    assert done.returncode == 2
    assert done.stderr == f"dpc run: error: --root: not a directory: {tmp_path / 'no'}\n"


def test_file_option_is_gone_with_a_pointer(tmp_path: Path) -> None:
    done = dpc_run(tmp_path, "--file", os.devnull, "--", str(BIN / "loop"))
    assert done.returncode == 2 and "--file is gone" in done.stderr
    assert "--root/--read-only" in done.stderr


def test_lookup_follows_links_inside_the_root_and_stops_at_loops(tmp_path: Path) -> None:
    view = FileSystemView(root=str(tmp_path))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "to-d").symlink_to("/d")
    (tmp_path / "loop").symlink_to("loop")
    (tmp_path / "f").write_text("")
    assert view.resolve(b"/", b"d/to-d/to-d/../d/./x") == b"/d/x"
    assert view.resolve(b"/d", b"to-d", follow=False) == b"/d/to-d"
    assert view.host(b"/d/x") == os.fsencode(tmp_path) + b"/d/x"
    failing = [(b"loop", errno.ELOOP), (b"f/x", errno.ENOTDIR), (b"f/", errno.ENOTDIR)]
    for path, code in [*failing, (b"no/x", errno.ENOENT), (b"", errno.ENOENT)]:
        with pytest.raises(OSError) as refused:
            view.resolve(b"/", path)
        assert refused.value.errno == code


def test_a_hard_link_cannot_make_an_outside_file_writable(tmp_path: Path) -> None:
    work = scratch(tmp_path)
    outside = tmp_path / "outside"
    outside.write_text("keep")
    machine = Machine(fs=FileSystemView(writable=str(work)))
    proc = machine.spawn(BIN / "loop")
    old, new = 0xBFFF0000, 0xBFFF1000
    proc.space.write(old, os.fsencode(outside) + b"\0")
    proc.space.write(new, b"alias\0")
    assert syscalls.dispatch(machine, proc, 9, (old, new, 0, 0, 0, 0)) == -errno.EACCES
    assert proc.cwd == os.fsencode(work) and not (work / "alias").exists()


@needs_qemu
def test_lseek_on_stdin_redirected_from_a_file(busybox: str, tmp_path: Path) -> None:
    work = scratch(tmp_path)
    runs = []
    for command in ([sys.executable, "-m", "dprobes.cli", "run", "--"], [QEMU or "qemu-i386"]):
        with open(work / "file", "rb") as stdin:
            done = subprocess.run(
                [*command, busybox, "tail", "-c", "4"],
                cwd=work,
                stdin=stdin,
                capture_output=True,
                timeout=300,
                check=False,
            )
        runs.append((done.stdout, done.returncode))
    assert runs[0] == runs[1] == (b"ree\n", 0)
