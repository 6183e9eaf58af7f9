"""The stat family: stat64, lstat64, fstat64, fstatat64 and statx, from the host's stat.

Registered in ``syscalls.table``. A host file is described as the host describes it
(device numbers re-encoded for i386, times truncated to the 32-bit fields); a descriptor
with no host descriptor behind it (collected stdio) is described by its mode and size.
"""

from __future__ import annotations

import ctypes
import os
import struct
import sys
from typing import TYPE_CHECKING, NamedTuple

from dprobes.runtime.physmem import PAGE_SIZE
from dprobes.runtime.process import OpenFile, Process
from dprobes.runtime.syscalls.abi import (
    AT_EMPTY_PATH,
    AT_FDCWD,
    AT_SYMLINK_NOFOLLOW,
    EBADF,
    EINVAL,
    signed,
)
from dprobes.runtime.syscalls.paths import lookup, read_path
from dprobes.runtime.syscalls.table import syscall

if TYPE_CHECKING:
    from dprobes.runtime.machine import Machine

STAT64 = struct.Struct("<QIIIIIIQIqIQIIIIIIQ")
"""i386 ``struct stat64``: dev, pad, ino32, mode, nlink, uid, gid, rdev, pad, size,
blksize, blocks, atime, atime_nsec, mtime, mtime_nsec, ctime, ctime_nsec, ino."""
STATX_HEAD = struct.Struct("<IIQIIIHHQQQQ")
"""``struct statx`` up to the timestamps: mask, blksize, attributes, nlink, uid, gid,
mode, pad, ino, size, blocks, attributes_mask."""
STATX_TIME = struct.Struct("<qIi")
STATX_SIZE = 256
STATX_BASIC_STATS = 0x7FF
AT_NO_AUTOMOUNT, AT_STATX_SYNC_TYPE = 0x800, 0x6000
NS = 1_000_000_000


class Stat(NamedTuple):
    """What the stat calls report about a file."""

    mode: int
    ino: int
    dev: int
    rdev: int
    nlink: int
    uid: int
    gid: int
    size: int
    blksize: int
    blocks: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of_host(cls, st: os.stat_result) -> Stat:
        return cls(
            st.st_mode,
            st.st_ino,
            st.st_dev,
            st.st_rdev,
            st.st_nlink,
            st.st_uid,
            st.st_gid,
            st.st_size,
            st.st_blksize,
            st.st_blocks,
            st.st_atime_ns,
            st.st_mtime_ns,
            st.st_ctime_ns,
        )


def describe(f: OpenFile) -> Stat:
    """The status of an open file description."""
    if f.host_fd is not None:
        return Stat.of_host(os.fstat(f.host_fd))
    return Stat(f.mode, 1, 0x0B, 0, 1, 0, 0, f.size, PAGE_SIZE, (f.size + 511) // 512, 0, 0, 0)


def _encode_dev(dev: int) -> int:
    """Linux's new_encode_dev: the dev_t layout 32-bit stat64 carries."""
    major, minor = os.major(dev), os.minor(dev)
    return (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)


def _seconds(ns: int) -> tuple[int, int]:
    return (ns // NS) & 0xFFFFFFFF, ns % NS


def pack_stat64(s: Stat) -> bytes:
    return STAT64.pack(
        _encode_dev(s.dev),
        0,
        s.ino & 0xFFFFFFFF,
        s.mode,
        s.nlink,
        s.uid,
        s.gid,
        _encode_dev(s.rdev),
        0,
        s.size,
        s.blksize,
        s.blocks,
        *_seconds(s.atime_ns),
        *_seconds(s.mtime_ns),
        *_seconds(s.ctime_ns),
        s.ino,
    )


def pack_statx(s: Stat) -> bytes:
    head = STATX_HEAD.pack(
        STATX_BASIC_STATS,
        s.blksize,
        0,
        s.nlink,
        s.uid,
        s.gid,
        s.mode,
        0,
        s.ino,
        s.size,
        s.blocks,
        0,
    )
    times = b"".join(
        STATX_TIME.pack(ns // NS, ns % NS, 0)
        for ns in (s.atime_ns, 0, s.ctime_ns, s.mtime_ns)  # atime, btime, ctime, mtime
    )
    devices = struct.pack(
        "<IIII", os.major(s.rdev), os.minor(s.rdev), os.major(s.dev), os.minor(s.dev)
    )
    return (head + times + devices).ljust(STATX_SIZE, b"\0")


def stat_at(m: Machine, p: Process, dirfd: int, path: int, flags: int) -> Stat:
    """The file an ``*at`` stat call names (``AT_EMPTY_PATH`` with "": ``dirfd`` itself)."""
    if flags & AT_EMPTY_PATH and read_path(p, path) == b"":
        f = p.fds.get(signed(dirfd))
        if f is None:
            raise OSError(EBADF, "bad descriptor")
        return describe(f)
    guest = lookup(m, p, dirfd, path, follow=not flags & AT_SYMLINK_NOFOLLOW)
    return Stat.of_host(os.lstat(m.fs.host(guest)))


_AT_FLAGS = AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT


@syscall(195, "stat64")
def sys_stat64(m: Machine, p: Process, path: int, buf: int) -> int:
    p.space.write(buf, pack_stat64(stat_at(m, p, AT_FDCWD, path, 0)))
    return 0


@syscall(196, "lstat64")
def sys_lstat64(m: Machine, p: Process, path: int, buf: int) -> int:
    p.space.write(buf, pack_stat64(stat_at(m, p, AT_FDCWD, path, AT_SYMLINK_NOFOLLOW)))
    return 0


@syscall(197, "fstat64")
def sys_fstat64(m: Machine, p: Process, fd: int, buf: int) -> int:
    f = p.fds.get(signed(fd))
    if f is None:
        return -EBADF
    p.space.write(buf, pack_stat64(describe(f)))
    return 0


@syscall(300, "fstatat64")
def sys_fstatat64(m: Machine, p: Process, dirfd: int, path: int, buf: int, flags: int) -> int:
    if flags & ~_AT_FLAGS:
        return -EINVAL
    p.space.write(buf, pack_stat64(stat_at(m, p, dirfd, path, flags)))
    return 0


@syscall(383, "statx")
def sys_statx(
    m: Machine, p: Process, dirfd: int, path: int, flags: int, mask: int, buf: int
) -> int:
    if flags & ~(_AT_FLAGS | AT_STATX_SYNC_TYPE):
        return -EINVAL
    p.space.write(buf, pack_statx(stat_at(m, p, dirfd, path, flags)))
    return 0


STATFS64 = struct.Struct("<IIQQQQQiiIII16x")
"""i386 ``struct statfs64``: type, bsize, blocks, bfree, bavail, files, ffree, fsid,
namelen, frsize, flags, spare."""


_LIBC = ctypes.CDLL(None, use_errno=True)


def _fs_type(target: bytes | int) -> int:
    """The file system's magic number (statvfs leaves it out): the host's statfs(2),
    whose ``f_type`` is the first word of its struct on every Linux ABI."""
    buf = ctypes.create_string_buffer(256)
    call = _LIBC.fstatfs if isinstance(target, int) else _LIBC.statfs
    if call(target, buf) != 0:
        return 0
    return int.from_bytes(buf.raw[: ctypes.sizeof(ctypes.c_long)], sys.byteorder) & 0xFFFFFFFF


def _pack_statfs64(v: os.statvfs_result, fs_type: int) -> bytes:
    fsid = v.f_fsid & 0xFFFFFFFFFFFFFFFF
    return STATFS64.pack(
        fs_type,
        v.f_bsize,
        v.f_blocks,
        v.f_bfree,
        v.f_bavail,
        v.f_files,
        v.f_ffree,
        signed(fsid & 0xFFFFFFFF),
        signed(fsid >> 32 & 0xFFFFFFFF),
        v.f_namemax,
        v.f_frsize,
        v.f_flag,
    )


@syscall(268, "statfs64")
def sys_statfs64(m: Machine, p: Process, path: int, size: int, buf: int) -> int:
    if size != STATFS64.size:
        return -EINVAL
    host = m.fs.host(lookup(m, p, AT_FDCWD, path))
    p.space.write(buf, _pack_statfs64(os.statvfs(host), _fs_type(host)))
    return 0


@syscall(269, "fstatfs64")
def sys_fstatfs64(m: Machine, p: Process, fd: int, size: int, buf: int) -> int:
    f = p.fds.get(signed(fd))
    if f is None or f.host_fd is None:
        return -EBADF
    if size != STATFS64.size:
        return -EINVAL
    p.space.write(buf, _pack_statfs64(os.fstatvfs(f.host_fd), _fs_type(f.host_fd)))
    return 0
