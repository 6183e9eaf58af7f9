"""System calls on files: what the guest's stdio and a read-only open need.

Registered in ``syscalls.table`` (the package says the conventions). Descriptors 0,
1 and 2 are the host's stdin bytes and collected stdout/stderr; a path opens only if the
caller allowed it at spawn (read-only), every other path does not exist (-ENOENT). There
are no terminals (TCGETS is -ENOTTY), so glibc's stdout is fully buffered, as under a pipe.
``readlink("/proc/self/exe")`` names the program, and the stat calls describe a pipe or a
read-only regular file with just the fields glibc's stdio looks at.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import TYPE_CHECKING

from dprobes.runtime.physmem import PAGE_SIZE
from dprobes.runtime.process import HostFile, OpenFile, Process
from dprobes.runtime.syscalls.abi import (
    AT_EMPTY_PATH,
    EACCES,
    EBADF,
    EINVAL,
    ENOENT,
    ENOTTY,
    O_ACCMODE,
    O_CREAT,
    O_TRUNC,
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
def sys_ioctl(m: Machine, p: Process, fd: int, request: int) -> int:
    return -EBADF if _file(p, fd) is None else -ENOTTY  # no terminals here


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
