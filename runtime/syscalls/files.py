"""System calls on files: what the guest's stdio and a read-only open need.

Registered in ``syscalls.table`` (the package says the conventions). Descriptors 0,
1 and 2 are what spawn gave (``runtime.stdio``: the host's, or memory); read and write
are one transfer of the open file each, EPIPE brings SIGPIPE, and the terminal ioctls
answer as the host does (-ENOTTY off a terminal, so glibc's stdout is fully buffered
under a pipe and line-buffered on a terminal, as natively). A path opens only if the
caller allowed it at spawn (read-only), every other path does not exist (-ENOENT).
``readlink("/proc/self/exe")`` names the program, and the stat calls describe a pipe or a
read-only regular file with just the fields glibc's stdio looks at.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import TYPE_CHECKING

from dprobes.runtime.host_signals import blocking_call
from dprobes.runtime.physmem import PAGE_SIZE
from dprobes.runtime.process import HostFile, OpenFile, Process
from dprobes.runtime.stdio import terminal_ioctl
from dprobes.runtime.syscalls.abi import (
    AT_EMPTY_PATH,
    EACCES,
    EBADF,
    EINVAL,
    ENOENT,
    ENOTTY,
    EPIPE,
    IOV_MAX,
    O_ACCMODE,
    O_CREAT,
    O_TRUNC,
    SIG_DFL,
    SIGPIPE,
    signed,
)
from dprobes.runtime.syscalls.table import syscall

MAX_TRANSFER = 1 << 20
"""Bytes one read or write moves at most (a short count, as Linux gives near its limit)."""

if TYPE_CHECKING:
    from dprobes.runtime.machine import Machine


def _file(p: Process, fd: int) -> OpenFile | None:
    return p.fds.get(signed(fd))


def _iovecs(p: Process, iov: int, iovcnt: int) -> list[tuple[int, int]] | None:
    """The (base, length) pairs of an iovec array; None if the count is out of range."""
    if iovcnt > IOV_MAX:
        return None
    words = struct.unpack(f"<{2 * iovcnt}I", p.space.read(iov, 8 * iovcnt))
    return list(zip(words[::2], words[1::2], strict=True))


def _read(m: Machine, p: Process, fd: int, vectors: list[tuple[int, int]]) -> int:
    """One read of the file into the guest buffers (as readv: one host read, scattered).
    A wait for input ends early when the run is stopped (EINTR, ``blocking_call``)."""
    f = _file(p, fd)
    if f is None or not f.readable:
        return -EBADF
    with blocking_call(m):
        data = f.read(min(sum(length for _, length in vectors), MAX_TRANSFER))
    at = 0
    for base, length in vectors:
        chunk = data[at : at + length]
        p.space.write(base, chunk)
        at += len(chunk)
    return len(data)


def _write(m: Machine, p: Process, fd: int, vectors: list[tuple[int, int]]) -> int:
    """One write of the guest buffers (as writev: gathered, one host write). A pipe with
    no reader gives EPIPE and SIGPIPE, whose default action kills the process."""
    f = _file(p, fd)
    if f is None or not f.writable:
        return -EBADF
    data = b"".join(p.space.read(base, length) for base, length in vectors)
    try:
        with blocking_call(m):  # a full pipe's wait, too, ends when the run is stopped
            return f.write(data[:MAX_TRANSFER])
    except BrokenPipeError:
        _raise_sigpipe(m, p)
        return -EPIPE


def _raise_sigpipe(m: Machine, p: Process) -> None:
    """SIGPIPE as Linux sends it on EPIPE: fatal unless the process blocks, ignores or
    catches it (a caught one is not run here: no handler is ever called)."""
    handler = int.from_bytes(p.sigactions.get(SIGPIPE, bytes(4))[:4], "little")
    if handler == SIG_DFL and not p.sigmask & 1 << (SIGPIPE - 1):
        m.kill_process(p, SIGPIPE, "write to a pipe with no reader")


@syscall(3, "read")
def sys_read(m: Machine, p: Process, fd: int, buf: int, count: int) -> int:
    return _read(m, p, fd, [(buf, count)])


@syscall(145, "readv")
def sys_readv(m: Machine, p: Process, fd: int, iov: int, iovcnt: int) -> int:
    vectors = _iovecs(p, iov, iovcnt)
    return -EINVAL if vectors is None else _read(m, p, fd, vectors)


@syscall(4, "write")
def sys_write(m: Machine, p: Process, fd: int, buf: int, count: int) -> int:
    return _write(m, p, fd, [(buf, min(count, MAX_TRANSFER))])


@syscall(146, "writev")
def sys_writev(m: Machine, p: Process, fd: int, iov: int, iovcnt: int) -> int:
    vectors = _iovecs(p, iov, iovcnt)
    return -EINVAL if vectors is None else _write(m, p, fd, vectors)


def _open(m: Machine, p: Process, path_addr: int, flags: int) -> int:
    name = p.space.read_cstring(path_addr).decode(errors="surrogateescape")
    path = Path(name)
    if path.resolve() not in p.allowed_files:
        return -ENOENT  # only files the caller let the guest see exist
    if flags & O_ACCMODE or flags & (O_CREAT | O_TRUNC):
        return -EACCES
    fd = p.lowest_free_fd()
    p.fds[fd] = HostFile(path.resolve())
    return fd


@syscall(5, "open")
def sys_open(m: Machine, p: Process, path: int, flags: int, mode: int) -> int:
    return _open(m, p, path, flags)


@syscall(295, "openat")
def sys_openat(m: Machine, p: Process, dirfd: int, path: int, flags: int, mode: int) -> int:
    return _open(m, p, path, flags)


@syscall(6, "close")
def sys_close(m: Machine, p: Process, fd: int) -> int:
    f = p.fds.pop(signed(fd), None)
    if f is None:
        return -EBADF
    if isinstance(f, HostFile):
        f.close()
    return 0


@syscall(54, "ioctl")
def sys_ioctl(m: Machine, p: Process, fd: int, request: int, arg: int) -> int:
    """Terminal questions get the host terminal's answer; -ENOTTY for anything else."""
    f = _file(p, fd)
    if f is None:
        return -EBADF
    answer = terminal_ioctl(f, request)
    if answer is None:
        return -ENOTTY
    p.space.write(arg, answer)
    return 0


@syscall(85, "readlink")
def sys_readlink(m: Machine, p: Process, path: int, buf: int, size: int) -> int:
    if p.space.read_cstring(path) != b"/proc/self/exe":
        return -ENOENT
    target = str(Path(p.path).resolve()).encode()[:size]
    p.space.write(buf, target)
    return len(target)


def _stat_target(p: Process, fd: int, path: int, flags: int) -> OpenFile | None:
    if flags & AT_EMPTY_PATH and p.space.read_cstring(path, 1) == b"":
        return _file(p, fd)
    name = Path(p.space.read_cstring(path).decode(errors="surrogateescape")).resolve()
    if name not in p.allowed_files:
        return None
    found = HostFile(name)  # for its mode and size only
    found.close()
    return found


def _stat64(f: OpenFile) -> bytes:
    blocks = (f.size + 511) // 512
    return struct.pack(
        "<QIIIIIIQIqIQIIIIIIQ",
        0x0B,
        0,
        1,
        f.mode,
        1,
        0,
        0,
        0,
        0,
        f.size,
        PAGE_SIZE,
        blocks,
        0,
        0,
        0,
        0,
        0,
        0,
        1,
    )


@syscall(197, "fstat64")
def sys_fstat64(m: Machine, p: Process, fd: int, buf: int) -> int:
    f = _file(p, fd)
    if f is None:
        return -EBADF
    p.space.write(buf, _stat64(f))
    return 0


@syscall(300, "fstatat64")
def sys_fstatat64(m: Machine, p: Process, dirfd: int, path: int, buf: int, flags: int) -> int:
    f = _stat_target(p, dirfd, path, flags)
    if f is None:
        return -ENOENT if not flags & AT_EMPTY_PATH else -EBADF
    p.space.write(buf, _stat64(f))
    return 0


@syscall(383, "statx")
def sys_statx(
    m: Machine, p: Process, dirfd: int, path: int, flags: int, mask: int, buf: int
) -> int:
    f = _stat_target(p, dirfd, path, flags)
    if f is None:
        return -ENOENT if not flags & AT_EMPTY_PATH else -EBADF
    head = struct.pack(
        "<IIQIIIHHQQQQ",
        0x7FF,
        PAGE_SIZE,
        0,
        1,
        0,
        0,
        f.mode,
        0,
        1,
        f.size,
        (f.size + 511) // 512,
        0,
    )
    p.space.write(buf, head.ljust(256, b"\0"))
    return 0
