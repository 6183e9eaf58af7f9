"""System calls on files: read, write, writev and ioctl.

Registered in ``syscalls.table`` (the package says the conventions). Descriptors 0,
1 and 2 are what spawn gave (``runtime.stdio``: the host's, or memory); read and write
are one transfer of the open file each, EPIPE brings SIGPIPE, and the terminal ioctls
answer as the host does (-ENOTTY off a terminal, so glibc's stdout is fully buffered
under a pipe and line-buffered on a terminal, as natively). Opening files by path is
``paths``, descriptors themselves are ``fds``, their status is ``stat``.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from dprobes.runtime.host_signals import blocking_call
from dprobes.runtime.process import OpenFile, Process
from dprobes.runtime.stdio import terminal_ioctl
from dprobes.runtime.syscalls.abi import (
    EBADF,
    EINVAL,
    ENOTTY,
    EPIPE,
    IOV_MAX,
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
    data = read_bytes(m, p, fd, sum(length for _, length in vectors))
    if isinstance(data, int):
        return data
    at = 0
    for base, length in vectors:
        chunk = data[at : at + length]
        p.space.write(base, chunk)
        at += len(chunk)
    return len(data)


def _write(m: Machine, p: Process, fd: int, vectors: list[tuple[int, int]]) -> int:
    """One write of the guest buffers (as writev: gathered, one host write). A pipe with
    no reader gives EPIPE and SIGPIPE, whose default action kills the process."""
    if (f := _file(p, fd)) is None or not f.writable:
        return -EBADF
    return write_bytes(m, p, fd, b"".join(p.space.read(base, length) for base, length in vectors))


def read_bytes(m: Machine, p: Process, fd: int, count: int) -> bytes | int:
    """One host read of at most ``count`` bytes of ``fd``, or -errno (the guest kernel's
    HC_READ too)."""
    f = _file(p, fd)
    if f is None or not f.readable:
        return -EBADF
    with blocking_call(m):
        return f.read(min(count, MAX_TRANSFER))


def write_bytes(m: Machine, p: Process, fd: int, data: bytes) -> int:
    """One host write of ``data`` to ``fd``: the count written or -errno (HC_WRITE too)."""
    f = _file(p, fd)
    if f is None or not f.writable:
        return -EBADF
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
