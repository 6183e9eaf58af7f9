"""System calls that change a file's metadata: times, permission bits, owner, length.

Registered in ``syscalls.table``. Each is a change, so the file-system view must allow a
write to the file (EROFS under ``--read-only``); the host call does the rest.
"""

from __future__ import annotations

import os
import struct
import time
from typing import TYPE_CHECKING

from dprobes.runtime.hostfiles import HostFile
from dprobes.runtime.process import Process
from dprobes.runtime.syscalls.abi import (
    AT_FDCWD,
    AT_SYMLINK_NOFOLLOW,
    EBADF,
    EFAULT,
    EINVAL,
    signed,
)
from dprobes.runtime.syscalls.paths import lookup
from dprobes.runtime.syscalls.table import syscall

if TYPE_CHECKING:
    from dprobes.runtime.machine import Machine

UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2
NS = 1_000_000_000


def _target(m: Machine, p: Process, dirfd: int, path: int, follow: bool) -> tuple[bytes, bytes]:
    """(guest, host) path of the file a metadata call changes; a NULL path is ``dirfd``."""
    if path == 0:
        f = p.fds.get(signed(dirfd))
        if not isinstance(f, HostFile):
            raise OSError(EBADF, "bad descriptor")
        guest, host = f.guest_path, f.host_path
    else:
        guest = lookup(m, p, dirfd, path, follow)
        host = m.fs.host(guest)
    m.fs.check_write(guest)
    return guest, host


@syscall(320, "utimensat")
def sys_utimensat(m: Machine, p: Process, dirfd: int, path: int, times: int, flags: int) -> int:
    if flags & ~AT_SYMLINK_NOFOLLOW:
        return -EINVAL
    follow = not flags & AT_SYMLINK_NOFOLLOW
    _, host = _target(m, p, dirfd, path, follow)
    now = time.time_ns()
    if times == 0:
        os.utime(host, ns=(now, now), follow_symlinks=follow)
        return 0
    values = struct.unpack("<iiii", p.space.read(times, 16))
    current = os.stat(host, follow_symlinks=follow)
    stamps = []
    for (seconds, nsec), old in zip(
        (values[:2], values[2:]), (current.st_atime_ns, current.st_mtime_ns), strict=True
    ):
        if nsec == UTIME_NOW:
            stamps.append(now)
        elif nsec == UTIME_OMIT:
            stamps.append(old)
        elif 0 <= nsec < NS:
            stamps.append(seconds * NS + nsec)
        else:
            return -EINVAL
    os.utime(host, ns=(stamps[0], stamps[1]), follow_symlinks=follow)
    return 0


@syscall(15, "chmod")
def sys_chmod(m: Machine, p: Process, path: int, mode: int) -> int:
    return sys_fchmodat(m, p, AT_FDCWD, path, mode)


@syscall(306, "fchmodat")
def sys_fchmodat(m: Machine, p: Process, dirfd: int, path: int, mode: int) -> int:
    if path == 0:
        return -EFAULT  # fchmodat has no "this descriptor" form
    os.chmod(_target(m, p, dirfd, path, True)[1], mode & 0o7777)
    return 0


@syscall(94, "fchmod")
def sys_fchmod(m: Machine, p: Process, fd: int, mode: int) -> int:
    os.chmod(_target(m, p, fd, 0, True)[1], mode & 0o7777)
    return 0


def _chown(m: Machine, p: Process, dirfd: int, path: int, uid: int, gid: int, follow: bool) -> int:
    host = _target(m, p, dirfd, path, follow)[1]
    os.chown(host, signed(uid), signed(gid), follow_symlinks=follow)  # -1 keeps that id
    return 0


@syscall(212, "chown32")
def sys_chown32(m: Machine, p: Process, path: int, uid: int, gid: int) -> int:
    return _chown(m, p, AT_FDCWD, path, uid, gid, follow=True) if path else -EFAULT


@syscall(198, "lchown32")
def sys_lchown32(m: Machine, p: Process, path: int, uid: int, gid: int) -> int:
    return _chown(m, p, AT_FDCWD, path, uid, gid, follow=False) if path else -EFAULT


@syscall(207, "fchown32")
def sys_fchown32(m: Machine, p: Process, fd: int, uid: int, gid: int) -> int:
    return _chown(m, p, fd, 0, uid, gid, follow=True)


@syscall(298, "fchownat")
def sys_fchownat(
    m: Machine, p: Process, dirfd: int, path: int, uid: int, gid: int, flags: int
) -> int:
    if flags & ~AT_SYMLINK_NOFOLLOW or not path:
        return -EINVAL
    return _chown(m, p, dirfd, path, uid, gid, follow=not flags & AT_SYMLINK_NOFOLLOW)


@syscall(193, "truncate64")
def sys_truncate64(m: Machine, p: Process, path: int, low: int, high: int) -> int:
    if not path:
        return -EFAULT
    length = signed(high) << 32 | low
    if length < 0:
        return -EINVAL
    os.truncate(_target(m, p, AT_FDCWD, path, True)[1], length)
    return 0


@syscall(194, "ftruncate64")
def sys_ftruncate64(m: Machine, p: Process, fd: int, low: int, high: int) -> int:
    f = p.fds.get(signed(fd))
    length = signed(high) << 32 | low
    if f is None:
        return -EBADF
    if not isinstance(f, HostFile) or not f.writable or length < 0:
        return -EINVAL
    os.ftruncate(f.host_fd, length)
    return 0
