"""The page cache: one frame per (file, page), shared by every process that maps it.

This is where a DProbes user probe lives. A user probe is keyed by (inode, file offset),
and inserting it writes int3 into the *page-cache page* of that offset, so every process
running the clean, shared page sees it at once (docs/probes.md, "Insertion").
DProbes also replaced the inode's ``readpage`` with ``dp_readpage`` so that probes reappear
when a page that was dropped from the cache is read back in. Here:

- ``GuestFile`` is the inode: a host file opened read-only, with a stable id, its size and
  a ``write_denied`` counter (DProbes' ``deny_write_access_to_inode``: the probe manager
  raises it while the file holds probes; this runtime never writes files anyway);
- ``PageCache.frame(file, index)`` returns the frame caching that page, reading it from the
  host file on a miss, and then calls every ``on_page_in(file, index, frame)`` hook: the
  readpage hook the probe manager uses to re-plant probes;
- ``PageCache.drop(file, index)`` evicts a clean page: address spaces mapping it forget the
  mapping (as ``try_to_unmap`` would), the frame is freed, and the next touch reads the
  file again.

The cache holds one reference to each of its frames; every page-table entry mapping the
frame holds another.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from dprobes.runtime.physmem import PAGE_SHIFT, PAGE_SIZE, PhysicalMemory

if TYPE_CHECKING:
    from dprobes.runtime.addrspace import AddressSpace

PageInHook = Callable[["GuestFile", int, int], None]
"""``on_page_in(file, page_index, frame)``: called after a page was read into ``frame``."""


class GuestFile:
    """A host file as the guest's inode: read-only, identified by a stable small id."""

    def __init__(self, file_id: int, path: Path) -> None:
        self.id = file_id
        self.path = path
        self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self.size = os.fstat(self._fd).st_size
        self.write_denied = 0
        """How many holders deny writes to this file (DProbes' deny_write_access)."""
        self.mappers: dict[int, AddressSpace] = {}
        """Address spaces with a VMA of this file, by ``id()`` (the inode's i_mmap list)."""

    def read(self, offset: int, n: int) -> bytes:
        """Up to ``n`` bytes at ``offset`` (fewer at end of file)."""
        return os.pread(self._fd, n, offset) if n > 0 and offset < self.size else b""

    def read_page(self, index: int) -> bytes:
        """Page ``index`` of the file, zero-padded to a whole page past end of file."""
        return self.read(index << PAGE_SHIFT, PAGE_SIZE).ljust(PAGE_SIZE, b"\0")

    def close(self) -> None:
        os.close(self._fd)

    def __repr__(self) -> str:
        return f"GuestFile(id={self.id}, path={str(self.path)!r}, size={self.size})"


class PageCache:
    """Frames caching file pages, keyed by (file id, page index)."""

    def __init__(self, memory: PhysicalMemory) -> None:
        self.memory = memory
        self.files: dict[Path, GuestFile] = {}
        self._pages: dict[tuple[int, int], int] = {}
        self._by_frame: dict[int, tuple[GuestFile, int]] = {}
        self.on_page_in: list[PageInHook] = []
        """Readpage hooks, called in order after each page is read in from its file."""
        self.reads = 0
        """How many pages were read from files (misses), for tests and statistics."""

    def open(self, path: str | os.PathLike[str]) -> GuestFile:
        """The GuestFile of ``path`` (one per resolved host path, ids given in open order)."""
        resolved = Path(path).resolve()
        found = self.files.get(resolved)
        if found is None:
            found = GuestFile(len(self.files) + 1, resolved)
            self.files[resolved] = found
        return found

    def lookup(self, file: GuestFile, index: int) -> int | None:
        """The frame caching page ``index`` of ``file``, or None (find_get_page)."""
        return self._pages.get((file.id, index))

    def frame(self, file: GuestFile, index: int) -> int:
        """The frame of page ``index`` of ``file``, read in (and page-in hooks run) on a miss."""
        key = (file.id, index)
        frame = self._pages.get(key)
        if frame is None:
            frame = self.memory.alloc(zero=False)
            self.memory.frame_bytes(frame)[:] = file.read_page(index)
            self._pages[key] = frame
            self._by_frame[frame] = (file, index)
            self.reads += 1
            for hook in list(self.on_page_in):
                hook(file, index, frame)
        return frame

    def owner(self, frame: int) -> tuple[GuestFile, int] | None:
        """(file, page index) if ``frame`` is a page-cache frame, else None.

        DProbes' IS_COW_PAGE test is the negation: a frame mapped at a file page's address
        that is not the cache's frame of that page is a private copy.
        """
        return self._by_frame.get(frame)

    def cached(self, file: GuestFile | None = None) -> Iterator[tuple[GuestFile, int, int]]:
        """(file, page index, frame) of every cached page (of ``file`` only, if given)."""
        for frame, (owner, index) in list(self._by_frame.items()):
            if file is None or owner is file:
                yield owner, index, frame

    def drop(self, file: GuestFile, index: int) -> bool:
        """Evict a clean page: unmap it everywhere, free its frame. False if not cached."""
        frame = self._pages.pop((file.id, index), None)
        if frame is None:
            return False
        del self._by_frame[frame]
        for space in list(file.mappers.values()):
            space.unmap_cache_frame(frame)
        self.memory.put(frame)
        return True
