"""Physical memory: the page frames every probe byte finally lives in.

DProbes wrote its int3 into a *page frame* (through the kernel's alias of the page), so that
one write changed every process sharing the frame, and it followed private copies frame by
frame. To make that real, guest memory here is a pool of 4 KiB physical frames, not a map of
virtual ranges: one large host region (anonymous ``mmap`` with MAP_NORESERVE, so the host
commits a frame only when it is first touched and a large default costs nothing) is
mapped into unicorn at physical address 0, and the address spaces' page tables
(``addrspace``) point virtual pages at frames of it.

The frame allocator hands out frames with a reference count (page cache, page-table
entries and kernel pages each hold a reference), zeroes a frame when it is allocated and
reuses freed frames lowest-first, so allocation is deterministic. Frame 0 is never handed
out: a zero frame number is always a bug. Host code reads and writes physical bytes directly
through a memoryview; unicorn sees the same bytes because it was given the same pointer.
"""

from __future__ import annotations

import ctypes
import heapq
import mmap
import re
from array import array
from collections.abc import Callable

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
PAGE_MASK = PAGE_SIZE - 1
MIB = 1 << 20
DEFAULT_SIZE = 1 << 30
"""1 GiB of guest-physical memory (``dpc run --memory``): 262144 frames."""
MIN_SIZE = 16 * MIB
"""Smallest machine: the CPU's kernel pages, a program and its 8 MiB stack must fit."""
MAX_SIZE = 3 << 30
"""Largest machine: 3 GiB, the whole user half of an i386 address space."""
MAP_NORESERVE = 0x4000  # Linux's value; Python's mmap module does not name it
_UNITS = {"": 1, "K": 1 << 10, "M": MIB, "G": 1 << 30}


class OutOfFrames(MemoryError):
    """Every physical frame is in use (where Linux would run its OOM killer)."""


def describe_size(size: int) -> str:
    """``size`` bytes for people: ``64 MiB``, ``1 GiB``, else bytes."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift and not size & ((1 << shift) - 1):
            return f"{size >> shift} {unit}"
    return f"{size} bytes"


def parse_size(text: str) -> int:
    """A memory size such as ``512M``, ``1G``, ``64MiB``, ``0x4000000`` or ``67108864``,
    checked against MIN_SIZE..MAX_SIZE and the page size; ValueError says what is wrong."""
    match = re.fullmatch(r"\s*(0[xX][0-9a-fA-F]+|\d+)\s*([kKmMgG]?)(?:i?[bB])?\s*", text)
    if match is None:
        raise ValueError(f"not a size: '{text}' (a number of bytes, or with K, M or G)")
    size = int(match[1], 0) * _UNITS[match[2].upper()]
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(
            f"{describe_size(size)} is outside {describe_size(MIN_SIZE)}..{describe_size(MAX_SIZE)}"
        )
    if size & PAGE_MASK:
        raise ValueError(f"{size} bytes is not a multiple of the {PAGE_SIZE}-byte page")
    return size


class PhysicalMemory:
    """``size`` bytes of guest-physical memory as reference-counted 4 KiB frames."""

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        if size <= 0 or size & PAGE_MASK:
            raise ValueError(f"physical memory size {size} is not a positive multiple of 4096")
        self.size = size
        self.nframes = size >> PAGE_SHIFT
        self._region = mmap.mmap(
            -1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE
        )
        self.bytes = memoryview(self._region)
        """The whole of physical memory; ``bytes[paddr]`` is the byte at ``paddr``."""
        self._refs = array("I", bytes(4 * self.nframes))
        self._free: list[int] = []  # a min-heap of freed frames, reused lowest first
        self._next = 1  # frames >= _next were never handed out; frame 0 is reserved
        self.in_use = 0
        self._code: set[int] = set()
        self.on_code_freed: Callable[[int], None] | None = None
        """Called with a frame that held executable code when it is freed, before reuse:
        the CPU must forget code translated from it (host writes bypass its tracking)."""

    @property
    def host_address(self) -> int:
        """Host address of physical byte 0 (for ``Uc.mem_map_ptr``)."""
        return ctypes.addressof(ctypes.c_char.from_buffer(self._region))

    # --- the allocator -------------------------------------------------------------------

    def alloc(self, zero: bool = True) -> int:
        """A free frame with reference count 1, zero-filled unless ``zero`` is False."""
        if self._free:
            frame = heapq.heappop(self._free)
            if zero:
                base = frame << PAGE_SHIFT
                self.bytes[base : base + PAGE_SIZE] = bytes(PAGE_SIZE)
        elif self._next < self.nframes:
            frame = self._next  # never used: the host's fresh mapping is already zero
            self._next += 1
        else:
            raise OutOfFrames(self.exhausted())
        self._refs[frame] = 1
        self.in_use += 1
        return frame

    def exhausted(self) -> str:
        """What running out of frames means, for people."""
        return f"all {describe_size(self.size)} of guest memory in use"

    def copy(self, frame: int) -> int:
        """A new frame holding a copy of ``frame`` (a copy-on-write break)."""
        new = self.alloc(zero=False)
        src, dst = frame << PAGE_SHIFT, new << PAGE_SHIFT
        self.bytes[dst : dst + PAGE_SIZE] = self.bytes[src : src + PAGE_SIZE]
        return new

    def get(self, frame: int) -> int:
        """Take one more reference to ``frame``; returns the frame."""
        self._check(frame)
        self._refs[frame] += 1
        return frame

    def put(self, frame: int) -> None:
        """Drop one reference; the frame is free again when none are left."""
        self._check(frame)
        self._refs[frame] -= 1
        if self._refs[frame] == 0:
            if frame in self._code:
                self._code.discard(frame)
                if self.on_code_freed is not None:
                    self.on_code_freed(frame)
            heapq.heappush(self._free, frame)
            self.in_use -= 1

    def mark_code(self, frame: int) -> None:
        """Note that ``frame`` is mapped executable (so code may be translated from it)."""
        self._code.add(frame)

    def _check(self, frame: int) -> None:
        if not 0 < frame < self.nframes or self._refs[frame] == 0:
            raise ValueError(f"frame {frame} is not allocated")

    # --- physical bytes ------------------------------------------------------------------

    def read(self, paddr: int, n: int) -> bytes:
        """``n`` bytes at physical address ``paddr``."""
        if paddr < 0 or paddr + n > self.size:
            raise ValueError(f"physical range 0x{paddr:x}+{n} is outside memory")
        return bytes(self.bytes[paddr : paddr + n])

    def write(self, paddr: int, data: bytes) -> None:
        """Store ``data`` at physical address ``paddr`` (no copy-on-write: this is the frame)."""
        if paddr < 0 or paddr + len(data) > self.size:
            raise ValueError(f"physical range 0x{paddr:x}+{len(data)} is outside memory")
        self.bytes[paddr : paddr + len(data)] = data

    def frame_bytes(self, frame: int) -> memoryview:
        """A writable view of one whole frame."""
        base = frame << PAGE_SHIFT
        return self.bytes[base : base + PAGE_SIZE]
