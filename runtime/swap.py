"""The swap area: where a private page goes when its frame is taken away.

DProbes had to plant probes in private copy-on-write copies of file pages *even when they
were swapped out*, which is what the 1.3 two-pass locator scheme is about
(docs/runtime.md, "Swap"): a non-present page-table entry is remembered in
pass 1 and faulted back in, then probed, in pass 2. For that to be testable a swapped-out
page has to be a real thing: the bytes leave their frame for a numbered slot of this
area, the page-table entry records the slot, and touching the page brings the bytes back
into a new frame (``addrspace``). Slots are reused lowest-first, so runs are repeatable.
"""

from __future__ import annotations

import heapq

from dprobes.runtime.physmem import PAGE_SIZE


class SwapArea:
    """Numbered page-sized slots of host memory standing for a swap partition."""

    def __init__(self, nslots: int = 1 << 16) -> None:
        self.nslots = nslots
        self._slots: dict[int, bytes] = {}
        self._free: list[int] = []
        self._next = 0
        self.swapped_out = 0
        self.swapped_in = 0

    def store(self, page: bytes) -> int:
        """Put one page into a free slot; returns the slot number."""
        if len(page) != PAGE_SIZE:
            raise ValueError(f"a swap slot holds {PAGE_SIZE} bytes, not {len(page)}")
        if self._free:
            slot = heapq.heappop(self._free)
        elif self._next < self.nslots:
            slot = self._next
            self._next += 1
        else:
            raise MemoryError(f"swap area full ({self.nslots} slots)")
        self._slots[slot] = bytes(page)
        self.swapped_out += 1
        return slot

    def peek(self, slot: int) -> bytes:
        """The page in ``slot``, leaving it there."""
        return self._slots[slot]

    def load(self, slot: int) -> bytes:
        """Take the page out of ``slot`` and free the slot."""
        page = self._slots.pop(slot)
        heapq.heappush(self._free, slot)
        self.swapped_in += 1
        return page

    @property
    def used(self) -> int:
        return len(self._slots)
