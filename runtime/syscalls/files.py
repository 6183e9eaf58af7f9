"""System calls on files: read, write, writev and ioctl.

Registered in ``syscalls.table`` (the package says the conventions). Descriptors 0,
1 and 2 are the host's stdin bytes and collected stdout/stderr. There are no terminals
(TCGETS is -ENOTTY), so glibc's stdout is fully buffered, as under a pipe. Opening files
by path is ``paths``, descriptors themselves are ``fds``, their status is ``stat``.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from dprobes.runtime.process import OpenFile, Process
from dprobes.runtime.syscalls.abi import (
    EBADF,
    EINVAL,
    ENOTTY,
    signed,
)
from dprobes.runtime.syscalls.table import syscall

if TYPE_CHECKING:
    from dprobes.runtime.machine import Machine


def _file(p: Process, fd: int) -> OpenFile | None:
    return p.fds.get(signed(fd))


@syscall(3, "read")
def sys_read(m: Machine, p: Process, fd: int, buf: int, count: int) -> int:
    f = _file(p, fd)
    if f is None or not f.readable:
        return -EBADF
    data = f.read(min(count, 1 << 20))
    p.space.write(buf, data)
    return len(data)


@syscall(4, "write")
def sys_write(m: Machine, p: Process, fd: int, buf: int, count: int) -> int:
    f = _file(p, fd)
    if f is None or not f.writable:
        return -EBADF
    return f.write(p.space.read(buf, min(count, 1 << 20)))


@syscall(146, "writev")
def sys_writev(m: Machine, p: Process, fd: int, iov: int, iovcnt: int) -> int:
    f = _file(p, fd)
    if f is None or not f.writable:
        return -EBADF
    if iovcnt > 1024:
        return -EINVAL
    vectors = struct.unpack(f"<{2 * iovcnt}I", p.space.read(iov, 8 * iovcnt))
    data = b"".join(p.space.read(vectors[i], vectors[i + 1]) for i in range(0, len(vectors), 2))
    return f.write(data)


@syscall(54, "ioctl")
def sys_ioctl(m: Machine, p: Process, fd: int, request: int) -> int:
    return -EBADF if _file(p, fd) is None else -ENOTTY  # no terminals here
