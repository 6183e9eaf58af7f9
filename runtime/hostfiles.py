"""Host files and directories opened by the guest, as its open file descriptions.

A ``HostFile`` holds a host descriptor: reads, writes and ``lseek`` go to it, so the file
offset, ``O_APPEND`` and the host's permission checks are the host kernel's. A
``HostDir`` lists its directory once, at the first ``getdents64``, in the host's order
with "." and ".." first, and hands out ``linux_dirent64`` records from a cursor that
``lseek`` can rewind. Both remember the resolved guest path they were opened by (for
``fchdir`` and ``*at`` calls relative to them) and their status flags (``F_GETFL``).
"""

from __future__ import annotations

import os
import stat
import struct

from dprobes.runtime.process import OpenFile

DT_UNKNOWN = 0
_DIRENT_HEAD = struct.Struct("<QqHB")


class HostFile(OpenFile):
    """A host file (or device) the guest opened."""

    def __init__(
        self,
        fd: int,
        guest_path: bytes,
        host_path: bytes,
        flags: int,
        readable: bool,
        writable: bool,
    ) -> None:
        self.host_fd, self.guest_path, self.host_path, self.flags = fd, guest_path, host_path, flags
        self.readable, self.writable = readable, writable

    @property
    def path(self) -> str:
        """The host path (what ``mmap`` maps through the page cache)."""
        return os.fsdecode(self.host_path)

    def close(self) -> None:
        if self.host_fd is not None:
            os.close(self.host_fd)
            self.host_fd = None


class HostDir(HostFile):
    """A host directory the guest opened: ``getdents64`` reads it."""

    def __init__(
        self, fd: int, guest_path: bytes, host_path: bytes, flags: int, parent_host: bytes
    ) -> None:
        super().__init__(fd, guest_path, host_path, flags, readable=True, writable=False)
        self.parent_host = parent_host
        self.entries: list[bytes] | None = None
        self.cursor = 0

    def _list(self) -> list[bytes]:
        """Every entry as a ``linux_dirent64`` record whose d_off is the next cursor."""
        names = [
            (b".", os.fstat(self.host_fd).st_ino, stat.S_IFDIR),
            (b"..", os.stat(self.parent_host).st_ino, stat.S_IFDIR),
        ]
        with os.scandir(self.host_fd) as listing:
            for entry in listing:
                try:
                    kind = stat.S_IFMT(entry.stat(follow_symlinks=False).st_mode)
                except OSError:
                    kind = 0
                names.append((os.fsencode(entry.name), entry.inode(), kind))
        records = []
        for index, (name, inode, kind) in enumerate(names, 1):
            length = (_DIRENT_HEAD.size + len(name) + 1 + 7) & ~7
            head = _DIRENT_HEAD.pack(inode, index, length, kind >> 12 if kind else DT_UNKNOWN)
            records.append((head + name).ljust(length, b"\0"))
        return records

    def getdents(self, size: int) -> bytes | None:
        """The next records that fit in ``size`` bytes; None if not even one fits."""
        if self.entries is None:
            self.entries = self._list()
        out = bytearray()
        while self.cursor < len(self.entries):
            record = self.entries[self.cursor]
            if len(out) + len(record) > size:
                break
            out += record
            self.cursor += 1
        if not out and self.cursor < len(self.entries):
            return None
        return bytes(out)

    def seek(self, offset: int, whence: int) -> int:
        if whence != os.SEEK_SET or offset < 0:
            raise OSError(22, "directory seek")
        self.cursor = offset
        if offset == 0:
            self.entries = None  # rewinddir sees the directory as it is now
        return offset

    def read(self, n: int) -> bytes:
        raise IsADirectoryError(21, "is a directory")

    def write(self, data: bytes) -> int:
        raise IsADirectoryError(21, "is a directory")
