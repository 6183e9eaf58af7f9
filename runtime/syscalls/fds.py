"""System calls on file descriptors: close, dup, fcntl, lseek, getdents64, sendfile, sync.

Registered in ``syscalls.table``. Descriptors map to open file descriptions
(``Process.fds``); ``dup`` shares one description between two numbers, and the host file
behind it is closed when the last number goes. ``FD_CLOEXEC`` is kept per number.
"""

from __future__ import annotations

import fcntl
import os
import struct
from typing import TYPE_CHECKING

from dprobes.runtime.hostfiles import HostDir, HostFile
from dprobes.runtime.process import OpenFile, Process
from dprobes.runtime.syscalls.abi import (
    EBADF,
    EINVAL,
    ENOTDIR,
    EOVERFLOW,
    ESPIPE,
    FD_LIMIT,
    O_APPEND,
    O_CLOEXEC,
    O_CREAT,
    O_EXCL,
    O_NOCTTY,
    O_NONBLOCK,
    O_RDONLY,
    O_RDWR,
    O_TRUNC,
    O_WRONLY,
    signed,
)
from dprobes.runtime.syscalls.paths import install
from dprobes.runtime.syscalls.table import syscall

if TYPE_CHECKING:
    from dprobes.runtime.machine import Machine

F_DUPFD, F_GETFD, F_SETFD, F_GETFL, F_SETFL = 0, 1, 2, 3, 4
F_DUPFD_CLOEXEC = 1030
FD_CLOEXEC = 1
_OPEN_ONLY = O_CREAT | O_EXCL | O_NOCTTY | O_TRUNC | O_CLOEXEC
"""Open flags that act at open time and are not status flags (F_GETFL leaves them out)."""
_SETTABLE = O_APPEND | O_NONBLOCK
_MAX_TRANSFER = 1 << 20


def _file(p: Process, fd: int) -> OpenFile:
    f = p.fds.get(signed(fd))
    if f is None:
        raise OSError(EBADF, "bad descriptor")
    return f


def release(p: Process, fd: int) -> OpenFile | None:
    """Take ``fd`` away; close its description if no other number holds it."""
    f = p.fds.pop(fd, None)
    p.cloexec.discard(fd)
    if f is not None and not any(other is f for other in p.fds.values()):
        f.close()
    return f


def status_flags(f: OpenFile) -> int:
    if isinstance(f, HostFile):
        return f.flags & ~_OPEN_ONLY
    if f.readable and f.writable:
        return O_RDWR
    return O_WRONLY if f.writable else O_RDONLY


@syscall(6, "close")
def sys_close(m: Machine, p: Process, fd: int) -> int:
    return 0 if release(p, signed(fd)) is not None else -EBADF


@syscall(41, "dup")
def sys_dup(m: Machine, p: Process, fd: int) -> int:
    return install(p, _file(p, fd), cloexec=False)


def _dup_to(p: Process, old: int, new: int, cloexec: bool) -> int:
    f = _file(p, old)
    new = signed(new)
    if not 0 <= new < FD_LIMIT:
        return -EBADF
    if p.fds.get(new) is not f:
        release(p, new)
        p.fds[new] = f
    (p.cloexec.add if cloexec else p.cloexec.discard)(new)
    return new


@syscall(63, "dup2")
def sys_dup2(m: Machine, p: Process, old: int, new: int) -> int:
    if signed(old) == signed(new):
        _file(p, old)
        return signed(new)
    return _dup_to(p, old, new, cloexec=False)


@syscall(330, "dup3")
def sys_dup3(m: Machine, p: Process, old: int, new: int, flags: int) -> int:
    if flags & ~O_CLOEXEC or signed(old) == signed(new):
        return -EINVAL
    return _dup_to(p, old, new, cloexec=bool(flags))


@syscall(221, "fcntl64")
def sys_fcntl64(m: Machine, p: Process, fd: int, cmd: int, arg: int) -> int:
    f = _file(p, fd)
    if cmd in (F_DUPFD, F_DUPFD_CLOEXEC):
        if signed(arg) < 0 or arg >= FD_LIMIT:
            return -EINVAL
        return install(p, f, cmd == F_DUPFD_CLOEXEC, lowest=arg)
    if cmd == F_GETFD:
        return FD_CLOEXEC if signed(fd) in p.cloexec else 0
    if cmd == F_SETFD:
        (p.cloexec.add if arg & FD_CLOEXEC else p.cloexec.discard)(signed(fd))
        return 0
    if cmd == F_GETFL:
        return status_flags(f)
    if cmd == F_SETFL:
        if isinstance(f, HostFile):
            f.flags = f.flags & ~_SETTABLE | arg & _SETTABLE
            host = fcntl.fcntl(f.host_fd, fcntl.F_GETFL) & ~(os.O_APPEND | os.O_NONBLOCK)
            host |= (os.O_APPEND if arg & O_APPEND else 0) | (
                os.O_NONBLOCK if arg & O_NONBLOCK else 0
            )
            fcntl.fcntl(f.host_fd, fcntl.F_SETFL, host)
        return 0
    return -EINVAL


syscall(55, "fcntl")(sys_fcntl64)


@syscall(19, "lseek")
def sys_lseek(m: Machine, p: Process, fd: int, offset: int, whence: int) -> int:
    if whence > 2:
        return -EINVAL
    position = _file(p, fd).seek(signed(offset), whence)
    return position if position <= 0x7FFFFFFF else -EOVERFLOW


@syscall(140, "_llseek")
def sys_llseek(
    m: Machine, p: Process, fd: int, high: int, low: int, result: int, whence: int
) -> int:
    if whence > 2:
        return -EINVAL
    offset = (high << 32 | low) - ((1 << 64) if high & 0x80000000 else 0)
    position = _file(p, fd).seek(offset, whence)
    p.space.write(result, struct.pack("<q", position))
    return 0


@syscall(220, "getdents64")
def sys_getdents64(m: Machine, p: Process, fd: int, buf: int, count: int) -> int:
    f = _file(p, fd)
    if not isinstance(f, HostDir):
        return -ENOTDIR
    records = f.getdents(min(count, _MAX_TRANSFER))
    if records is None:
        return -EINVAL  # the buffer holds not even one record
    p.space.write(buf, records)
    return len(records)


def _sendfile(p: Process, out_fd: int, in_fd: int, offset: int, count: int, wide: bool) -> int:
    source, sink = _file(p, in_fd), _file(p, out_fd)
    if not source.readable or not sink.writable:
        return -EBADF
    count = min(count, _MAX_TRANSFER)
    if not offset:
        return sink.write(source.read(count))
    if not isinstance(source, HostFile):
        return -ESPIPE
    layout = "<q" if wide else "<i"
    (start,) = struct.unpack(layout, p.space.read(offset, struct.calcsize(layout)))
    if start < 0:
        return -EINVAL
    written = sink.write(os.pread(source.host_fd, count, start))
    p.space.write(offset, struct.pack(layout, start + written))
    return written


@syscall(187, "sendfile")
def sys_sendfile(m: Machine, p: Process, out_fd: int, in_fd: int, offset: int, count: int) -> int:
    return _sendfile(p, out_fd, in_fd, offset, count, wide=False)


@syscall(239, "sendfile64")
def sys_sendfile64(m: Machine, p: Process, out_fd: int, in_fd: int, offset: int, count: int) -> int:
    return _sendfile(p, out_fd, in_fd, offset, count, wide=True)


@syscall(118, "fsync")
def sys_fsync(m: Machine, p: Process, fd: int) -> int:
    f = _file(p, fd)
    if f.host_fd is not None:
        os.fsync(f.host_fd)
    return 0


syscall(148, "fdatasync")(sys_fsync)


@syscall(36, "sync")
def sys_sync(m: Machine, p: Process) -> int:
    os.sync()
    return 0
