"""System calls that name files by path: open, create, remove, rename, links, the cwd.

Registered in ``syscalls.table``. Every path goes through ``lookup``: relative to the
working directory or to a directory descriptor (the ``*at`` calls), resolved by the
machine's ``FileSystemView``, which also decides whether a change is allowed (EROFS under
``--read-only``, EACCES outside the writable directory). The host call then does the work,
so the host's permission checks and errors are the guest's. Creates apply the process's
umask (the host's is swapped for it around the call).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from dprobes.runtime.filesystem import PATH_MAX, fail
from dprobes.runtime.hostfiles import HostDir, HostFile
from dprobes.runtime.process import Process
from dprobes.runtime.syscalls.abi import (
    AT_EACCESS,
    AT_FDCWD,
    AT_REMOVEDIR,
    AT_SYMLINK_NOFOLLOW,
    EACCES,
    EBADF,
    EBUSY,
    EINVAL,
    EMFILE,
    ENAMETOOLONG,
    ENOENT,
    ENOTDIR,
    ERANGE,
    FD_LIMIT,
    O_ACCMODE,
    O_APPEND,
    O_CLOEXEC,
    O_CREAT,
    O_DIRECTORY,
    O_EXCL,
    O_NOCTTY,
    O_NOFOLLOW,
    O_NONBLOCK,
    O_PATH,
    O_RDONLY,
    O_RDWR,
    O_TMPFILE,
    O_TRUNC,
    O_WRONLY,
    signed,
)
from dprobes.runtime.syscalls.table import syscall

if TYPE_CHECKING:
    from dprobes.runtime.machine import Machine

_HOST_ACCESS = {O_RDONLY: os.O_RDONLY, O_WRONLY: os.O_WRONLY, O_RDWR: os.O_RDWR}
_HOST_FLAGS = {
    O_CREAT: os.O_CREAT,
    O_EXCL: os.O_EXCL,
    O_NOCTTY: os.O_NOCTTY,
    O_TRUNC: os.O_TRUNC,
    O_APPEND: os.O_APPEND,
    O_NONBLOCK: os.O_NONBLOCK,
    O_DIRECTORY: os.O_DIRECTORY,
}
"""Guest open flags passed on to the host's open (the rest are the guest's own business)."""
W_OK = 2


def read_path(p: Process, addr: int) -> bytes:
    """The path string at ``addr`` (ENAMETOOLONG past PATH_MAX)."""
    path = p.space.read_cstring(addr, PATH_MAX)
    if len(path) >= PATH_MAX:
        raise fail(ENAMETOOLONG)
    return path


def base_dir(p: Process, dirfd: int) -> bytes:
    """The guest directory a relative path of an ``*at`` call starts from."""
    if dirfd == AT_FDCWD:
        return p.cwd
    f = p.fds.get(signed(dirfd))
    if f is None:
        raise fail(EBADF)
    if not isinstance(f, HostDir):
        raise fail(ENOTDIR)
    return f.guest_path


def lookup(m: Machine, p: Process, dirfd: int, addr: int, follow: bool = True) -> bytes:
    """The resolved guest path that (``dirfd``, path at ``addr``) names."""
    path = read_path(p, addr)
    base = b"/" if path.startswith(b"/") else base_dir(p, dirfd)
    return m.fs.resolve(base, path, follow)


def entry(m: Machine, p: Process, dirfd: int, addr: int) -> bytes:
    """The host path of a directory entry the call will change (create, remove, rename)."""
    guest = lookup(m, p, dirfd, addr, follow=False)
    if guest == b"/":
        raise fail(EBUSY)
    m.fs.check_write(guest)
    return m.fs.host(guest)


@contextmanager
def guest_umask(p: Process) -> Iterator[None]:
    """Run a host create with the guest's umask instead of the host's."""
    saved = os.umask(p.umask)
    try:
        yield
    finally:
        os.umask(saved)


def install(p: Process, f: HostFile, cloexec: bool, lowest: int = 0) -> int:
    """Give ``f`` the lowest free descriptor at or above ``lowest``."""
    fd = lowest
    while fd in p.fds:
        fd += 1
    if fd >= FD_LIMIT:
        f.close()
        raise fail(EMFILE)
    p.fds[fd] = f
    (p.cloexec.add if cloexec else p.cloexec.discard)(fd)
    return fd


def parent_of(guest: bytes) -> bytes:
    return guest.rsplit(b"/", 1)[0] or b"/"


def open_file(m: Machine, p: Process, dirfd: int, addr: int, flags: int, mode: int) -> int:
    if flags & (O_PATH | O_TMPFILE) or flags & O_ACCMODE not in _HOST_ACCESS:
        return -EINVAL
    guest = lookup(m, p, dirfd, addr, follow=not flags & O_NOFOLLOW)
    host = m.fs.host(guest)
    access = flags & O_ACCMODE
    creating = flags & O_CREAT and not os.path.lexists(host)
    if access != O_RDONLY or flags & O_TRUNC or creating:
        m.fs.check_write(guest)
    host_flags = _HOST_ACCESS[access] | os.O_CLOEXEC | os.O_NOFOLLOW
    for bit, host_bit in _HOST_FLAGS.items():
        if flags & bit:
            host_flags |= host_bit
    with guest_umask(p):
        fd = os.open(host, host_flags, mode & 0o7777)
    try:
        is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
    except OSError:
        os.close(fd)
        raise
    if is_dir:
        f: HostFile = HostDir(fd, guest, host, flags, m.fs.host(parent_of(guest)))
    else:
        f = HostFile(fd, guest, host, flags, access != O_WRONLY, access != O_RDONLY)
    return install(p, f, bool(flags & O_CLOEXEC))


@syscall(5, "open")
def sys_open(m: Machine, p: Process, path: int, flags: int, mode: int) -> int:
    return open_file(m, p, AT_FDCWD, path, flags, mode)


@syscall(295, "openat")
def sys_openat(m: Machine, p: Process, dirfd: int, path: int, flags: int, mode: int) -> int:
    return open_file(m, p, dirfd, path, flags, mode)


@syscall(8, "creat")
def sys_creat(m: Machine, p: Process, path: int, mode: int) -> int:
    return open_file(m, p, AT_FDCWD, path, O_WRONLY | O_CREAT | O_TRUNC, mode)


@syscall(10, "unlink")
def sys_unlink(m: Machine, p: Process, path: int) -> int:
    os.unlink(entry(m, p, AT_FDCWD, path))
    return 0


@syscall(40, "rmdir")
def sys_rmdir(m: Machine, p: Process, path: int) -> int:
    os.rmdir(entry(m, p, AT_FDCWD, path))
    return 0


@syscall(301, "unlinkat")
def sys_unlinkat(m: Machine, p: Process, dirfd: int, path: int, flags: int) -> int:
    if flags & ~AT_REMOVEDIR:
        return -EINVAL
    (os.rmdir if flags & AT_REMOVEDIR else os.unlink)(entry(m, p, dirfd, path))
    return 0


@syscall(39, "mkdir")
def sys_mkdir(m: Machine, p: Process, path: int, mode: int) -> int:
    return sys_mkdirat(m, p, AT_FDCWD, path, mode)


@syscall(296, "mkdirat")
def sys_mkdirat(m: Machine, p: Process, dirfd: int, path: int, mode: int) -> int:
    host = entry(m, p, dirfd, path)
    with guest_umask(p):
        os.mkdir(host, mode & 0o7777)
    return 0


@syscall(38, "rename")
def sys_rename(m: Machine, p: Process, old: int, new: int) -> int:
    return sys_renameat2(m, p, AT_FDCWD, old, AT_FDCWD, new, 0)


@syscall(302, "renameat")
def sys_renameat(m: Machine, p: Process, olddir: int, old: int, newdir: int, new: int) -> int:
    return sys_renameat2(m, p, olddir, old, newdir, new, 0)


@syscall(353, "renameat2")
def sys_renameat2(
    m: Machine, p: Process, olddir: int, old: int, newdir: int, new: int, flags: int
) -> int:
    if flags:
        return -EINVAL  # RENAME_NOREPLACE/EXCHANGE/WHITEOUT are not offered
    os.rename(entry(m, p, olddir, old), entry(m, p, newdir, new))
    return 0


@syscall(83, "symlink")
def sys_symlink(m: Machine, p: Process, target: int, path: int) -> int:
    os.symlink(read_path(p, target), entry(m, p, AT_FDCWD, path))
    return 0


@syscall(9, "link")
def sys_link(m: Machine, p: Process, old: int, new: int) -> int:
    source = lookup(m, p, AT_FDCWD, old, follow=False)
    m.fs.check_write(source)  # a new name for it must not make an unwritable file writable
    os.link(m.fs.host(source), entry(m, p, AT_FDCWD, new), follow_symlinks=False)
    return 0


@syscall(85, "readlink")
def sys_readlink(m: Machine, p: Process, path: int, buf: int, size: int) -> int:
    return sys_readlinkat(m, p, AT_FDCWD, path, buf, size)


@syscall(305, "readlinkat")
def sys_readlinkat(m: Machine, p: Process, dirfd: int, path: int, buf: int, size: int) -> int:
    if signed(size) <= 0:
        return -EINVAL
    if read_path(p, path) == b"/proc/self/exe":
        target = os.fsencode(os.path.realpath(p.path))
    else:
        target = os.readlink(m.fs.host(lookup(m, p, dirfd, path, follow=False)))
    target = target[:size]
    p.space.write(buf, target)
    return len(target)


@syscall(33, "access")
def sys_access(m: Machine, p: Process, path: int, mode: int) -> int:
    return sys_faccessat2(m, p, AT_FDCWD, path, mode, 0)


@syscall(307, "faccessat")
def sys_faccessat(m: Machine, p: Process, dirfd: int, path: int, mode: int) -> int:
    return sys_faccessat2(m, p, dirfd, path, mode, 0)


@syscall(439, "faccessat2")
def sys_faccessat2(m: Machine, p: Process, dirfd: int, path: int, mode: int, flags: int) -> int:
    if mode & ~7 or flags & ~(AT_EACCESS | AT_SYMLINK_NOFOLLOW):
        return -EINVAL
    guest = lookup(m, p, dirfd, path, follow=not flags & AT_SYMLINK_NOFOLLOW)
    host = m.fs.host(guest)
    if not os.path.lexists(host):
        return -ENOENT
    if mode & W_OK:
        m.fs.check_write(guest)
    return 0 if os.access(host, mode, follow_symlinks=False) else -EACCES


@syscall(183, "getcwd")
def sys_getcwd(m: Machine, p: Process, buf: int, size: int) -> int:
    path = p.cwd + b"\0"
    if len(path) > size:
        return -ERANGE
    p.space.write(buf, path)
    return len(path)


def _enter(m: Machine, p: Process, guest: bytes) -> int:
    """Make ``guest`` the working directory if it is a directory the guest may search."""
    host = m.fs.host(guest)
    if not os.path.isdir(host):
        return -ENOTDIR if os.path.lexists(host) else -ENOENT
    if not os.access(host, os.X_OK):
        return -EACCES
    p.cwd = guest
    return 0


@syscall(12, "chdir")
def sys_chdir(m: Machine, p: Process, path: int) -> int:
    return _enter(m, p, lookup(m, p, AT_FDCWD, path))


@syscall(133, "fchdir")
def sys_fchdir(m: Machine, p: Process, fd: int) -> int:
    f = p.fds.get(signed(fd))
    if f is None:
        return -EBADF
    if not isinstance(f, HostDir):
        return -ENOTDIR
    return _enter(m, p, f.guest_path)


@syscall(60, "umask")
def sys_umask(m: Machine, p: Process, mask: int) -> int:
    old, p.umask = p.umask, mask & 0o777
    return old
