"""The per-probe byte heap of DProbes 5.x (``malloc``, ``free``, ``pushh``, ``poph``).

5.0 keeps a first-fit list of blocks inside the heap bytes, each behind a 20-byte header
(the i386 size of ``struct heap_hdr``), splits on allocation and coalesces with free
neighbours on free. This keeps that arithmetic, so handles, sizes and out-of-memory
points match, but stores the block list outside the data: a program cannot corrupt it,
and the bytes of a fresh heap are zero at every hit (5.0 left stale bytes there).
A handle is ``HEAP_BASE`` plus the block's byte offset in the heap.
"""

from __future__ import annotations

from dataclasses import dataclass

HEADER_SIZE = 20
HEAP_BASE = 0xE0000000


@dataclass(slots=True)
class _Block:
    offset: int  # of the block's data in the heap bytes
    size: int
    free: bool


class ProbeHeap:
    """One hit's heap of ``capacity`` bytes (the probe's ``heap_size``)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.data = bytearray(capacity)
        self.in_use = 0  # bytes handed out, as 5.0's dprobes.heap_size
        self._blocks: list[_Block] = []
        if capacity > 2 * HEADER_SIZE:
            self._blocks.append(_Block(HEADER_SIZE, capacity - HEADER_SIZE, True))

    def allocate(self, size: int) -> int | None:
        """Handle of a new block of ``size`` bytes, or None (EX_HEAP_NOMEM)."""
        if size + self.in_use > self.capacity:
            return None
        for i, block in enumerate(self._blocks):
            if block.free and block.size > size + HEADER_SIZE:
                rest = _Block(
                    block.offset + size + HEADER_SIZE, block.size - size - HEADER_SIZE, True
                )
                block.size, block.free = size, False
                self._blocks.insert(i + 1, rest)
                self.in_use += size
                return HEAP_BASE + block.offset
        return None

    def release(self, handle: int) -> int:
        """Free the block at ``handle``; return its size (0: not an allocated block)."""
        for i, block in enumerate(self._blocks):
            if HEAP_BASE + block.offset == handle and not block.free:
                size = block.size
                block.free = True
                self._coalesce(i)
                self.in_use -= size
                return size
        return 0

    def _coalesce(self, i: int) -> None:
        block = self._blocks[i]
        if i + 1 < len(self._blocks) and self._blocks[i + 1].free:
            block.size += self._blocks.pop(i + 1).size + HEADER_SIZE
        if i > 0 and self._blocks[i - 1].free:
            self._blocks[i - 1].size += self._blocks.pop(i).size + HEADER_SIZE

    def block_size(self, handle: int) -> int | None:
        """Size of the allocated block at ``handle``, or None if it is not one."""
        for block in self._blocks:
            if HEAP_BASE + block.offset == handle and not block.free:
                return block.size
        return None

    def load(self, handle: int, offset: int, width: int) -> int:
        """Little-endian value at ``offset`` in a block already validated by the caller."""
        start = handle - HEAP_BASE + offset
        return int.from_bytes(self.data[start : start + width], "little")

    def store(self, handle: int, offset: int, width: int, value: int) -> None:
        start = handle - HEAP_BASE + offset
        masked = value & ((1 << (8 * width)) - 1)
        self.data[start : start + width] = masked.to_bytes(width, "little")
