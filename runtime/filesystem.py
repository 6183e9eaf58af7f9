"""The files a guest sees: which host path a guest path names, and whether it may be written.

By default the guest sees the host's file system as it is (reads are the host's own
permission checks) and may write only inside the directory ``dpc run`` started in (and
``/dev/null``). With ``root``, guest "/" is that host directory, as Qiling's rootfs or a
chroot: paths are resolved here component by component, ``..`` stops at the root and
symbolic links are followed inside it, so no guest path names a host file outside it; all
of it is writable. ``read_only`` makes every change EROFS. This module is the one place
that maps guest paths to host paths and decides about writes; the system calls ask it.

Resolution is done on guest paths (bytes, absolute, no symlinks, no ``.``/``..``): each
component is ``lstat``-ed on the host, a symlink's target is spliced in (absolute targets
restart at the guest root), at most ``MAX_SYMLINKS`` per lookup as Linux allows.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field

MAX_SYMLINKS = 40
"""Symbolic links one lookup may follow before ELOOP (Linux's MAXSYMLINKS)."""
PATH_MAX = 4096
WRITABLE_DEVICES = (b"/dev/null",)
"""Host devices the guest may always open for writing (a sink changes nothing)."""


def fail(code: int) -> OSError:
    """The OSError a system call turns into ``-code``."""
    return OSError(code, os.strerror(code))


def join(parent: bytes, name: bytes) -> bytes:
    """A guest path below ``parent`` (both absolute)."""
    return parent.rstrip(b"/") + b"/" + name


@dataclass(frozen=True)
class FileSystemView:
    """The guest's view of the host file system (see the module docstring)."""

    root: str | None = None
    """Host directory that is guest "/"; None: the host's own "/"."""
    read_only: bool = False
    writable: str = field(default_factory=os.getcwd)
    """Host directory whose contents the guest may change and where it starts (ignored
    under ``root``)."""

    def __post_init__(self) -> None:
        if self.root is not None:
            object.__setattr__(self, "root", os.path.realpath(self.root))
        object.__setattr__(self, "writable", os.path.realpath(self.writable))

    @property
    def start_cwd(self) -> bytes:
        """The guest's first working directory: the writable one, or "/" under ``root``."""
        return b"/" if self.root is not None else os.fsencode(self.writable)

    def host(self, guest: bytes) -> bytes:
        """The host path of a resolved guest path."""
        if self.root is None:
            return guest
        return os.fsencode(self.root) + guest if guest != b"/" else os.fsencode(self.root)

    def resolve(self, cwd: bytes, path: bytes, follow: bool = True) -> bytes:
        """The resolved guest path ``path`` names from directory ``cwd``.

        Every component but the last must exist and be a directory (or a link to one);
        the last is followed if it is a symlink and ``follow`` (or the path ends in "/",
        "/." or "/..", when it must be a directory), and may be missing (for a create).
        Raises OSError (ENOENT, ENOTDIR, ELOOP, ...).
        """
        if not path:
            raise fail(errno.ENOENT)
        if len(path) >= PATH_MAX:
            raise fail(errno.ENAMETOOLONG)
        must_be_dir = path.endswith((b"/", b"/.", b"/..")) or path in (b".", b"..")
        follow = follow or must_be_dir
        done = [] if path.startswith(b"/") else [c for c in cwd.split(b"/") if c]
        pending = [c for c in path.split(b"/") if c]
        pending.reverse()
        links = 0
        while pending:
            name = pending.pop()
            if name == b".":
                continue
            if name == b"..":
                if done:
                    done.pop()
                continue
            last = not any(c not in (b".", b"") for c in pending)
            here = self.host(b"/" + b"/".join([*done, name]))
            try:
                mode = os.lstat(here).st_mode
            except FileNotFoundError:
                if last:
                    done.append(name)
                    break
                raise
            if stat.S_ISLNK(mode) and (follow or not last):
                links += 1
                if links > MAX_SYMLINKS:
                    raise fail(errno.ELOOP)
                target = os.readlink(here)
                if target.startswith(b"/"):
                    done = []
                pending.extend(reversed([c for c in target.split(b"/") if c]))
                continue
            if (must_be_dir or not last) and not stat.S_ISDIR(mode):
                raise fail(errno.ENOTDIR)
            done.append(name)
        return b"/" + b"/".join(done)

    def check_write(self, guest: bytes) -> None:
        """Raise EROFS or EACCES unless the guest may change (or create) ``guest``."""
        if guest in WRITABLE_DEVICES and self.root is None:
            return
        if self.read_only:
            raise fail(errno.EROFS)
        if self.root is not None:
            return
        inside = self.writable.rstrip("/") + "/"
        if not os.fsdecode(guest).startswith(inside):
            raise fail(errno.EACCES)
