"""Page-table vocabulary: protections, VMAs, PTEs, the kernel half, faults.

The data types ``addrspace`` is built from, kept apart so that the address space itself
reads as the paging algorithm (DProbes' user-probe insertion walks exactly these: the vma that
maps an inode page, the pte behind its address, shared page-cache page or private copy,
present or swapped). ``KernelPages`` is the part of every page directory above
``KERNEL_BASE`` that all processes share, here the CPU's fixed kernel pages.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import IntFlag
from typing import TYPE_CHECKING, NamedTuple, Protocol

from dprobes.runtime.physmem import PAGE_MASK, PAGE_SHIFT, PAGE_SIZE, PhysicalMemory
from dprobes.vm.context import MemoryFault

if TYPE_CHECKING:
    from dprobes.runtime.addrspace import AddressSpace
    from dprobes.runtime.pagecache import GuestFile

MMAP_MIN_ADDR = 0x10000
"""Lowest address a mapping may have (Linux's vm.mmap_min_addr default): so that a NULL
pointer dereference, even with an offset, always faults."""
MMAP_BASE = 0x40000000
"""Where mmap looks for free space first (Linux's legacy TASK_UNMAPPED_BASE, TASK_SIZE/3)."""


class Prot(IntFlag):
    """Page protection, with Linux's PROT_* values; also names the kind of an access."""

    NONE = 0
    READ = 1
    WRITE = 2
    EXEC = 4


class GuestFault(MemoryFault):
    """A host-side access to guest memory hit an unmapped or protected byte at ``address``."""

    def __init__(self, address: int, access: Prot = Prot.READ) -> None:
        super().__init__(address)
        self.access = access


class MMUNotifier(Protocol):
    """Told when translations change, so the CPU can drop what it cached (Linux's
    mmu_notifier): the TLB after a PTE changed, translated code after a host write."""

    def invalidate_range(self, space: AddressSpace, start: int, end: int) -> None: ...

    def code_written(self, paddr: int, length: int) -> None: ...

    def page_moved(self, space: AddressSpace, vaddr: int) -> None:
        """A present page got a new frame (a COW break) while the CPU's TLB is being
        filled for it: only host-side caches of the old frame must go."""


@dataclass(slots=True)
class VMA:
    start: int
    end: int
    prot: Prot
    file: GuestFile | None = None
    offset: int = 0
    """File offset mapped at ``start`` (a multiple of the page size)."""
    name: str = ""

    def file_index(self, vaddr: int) -> int:
        return (self.offset + vaddr - self.start) >> PAGE_SHIFT


@dataclass(slots=True)
class PTE:
    frame: int
    writable: bool = False
    """The hardware W bit: clear for read-only VMAs and for frames still shared (COW)."""
    shared: bool = False
    """Maps the page-cache frame of its file page; a write must copy it first."""
    swap_slot: int | None = None
    """Not present: the page is in this swap slot."""


class PageMapping(NamedTuple):
    """One place a file page is mapped: ``frame`` is the page-cache frame when ``private``
    is False, else a private copy (None only while swapped out and not faulted in)."""

    space: AddressSpace
    vaddr: int
    frame: int | None
    private: bool


class KernelPages:
    """Kernel virtual pages (>= KERNEL_BASE), shared by all address spaces. A page is
    reachable from user mode (CPL 3) only if mapped with ``user=True``."""

    def __init__(self) -> None:
        self.pages: dict[int, tuple[int, Prot, bool]] = {}

    def map(self, vaddr: int, frame: int, prot: Prot, user: bool = False) -> None:
        self.pages[vaddr >> PAGE_SHIFT] = (frame, prot, user)

    def unmap(self, vaddr: int) -> None:
        self.pages.pop(vaddr >> PAGE_SHIFT, None)

    def translate(self, vaddr: int, access: Prot, user: bool) -> tuple[int, Prot] | None:
        entry = self.pages.get(vaddr >> PAGE_SHIFT)
        if entry is None or not entry[1] & access or (user and not entry[2]):
            return None
        return entry[0], entry[1]


def read_virtual(
    memory: PhysicalMemory, translate: Callable[[int], tuple[int, Prot] | None], vaddr: int, n: int
) -> bytes:
    """``n`` bytes at ``vaddr`` through ``translate`` (address -> (frame, prot) or None),
    page by page; GuestFault at the first byte that does not translate."""
    out = bytearray()
    while len(out) < n:
        addr = (vaddr + len(out)) & 0xFFFFFFFF
        found = translate(addr)
        if found is None:
            raise GuestFault(addr, Prot.READ)
        base = (found[0] << PAGE_SHIFT) | (addr & PAGE_MASK)
        take = min(n - len(out), PAGE_SIZE - (addr & PAGE_MASK))
        out += memory.bytes[base : base + take]
    return bytes(out)


def page_up(n: int) -> int:
    return (n + PAGE_MASK) & ~PAGE_MASK
