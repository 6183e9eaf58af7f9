"""Per-process address spaces: VMAs, page tables, copy-on-write and swap.

DProbes' user-probe insertion walks exactly these structures: the
vmas that map an inode, the page-table entry at ``vm_start - (vm_pgoff << PAGE_SHIFT) +
offset``, and the page behind it, which is either the shared page-cache page or a private
copy (``IS_COW_PAGE``), present or swapped out. So an address space here is built the way
Linux builds one:

- ``VMA``: [start, end), protection, and either a file plus the file offset of ``start``
  or anonymous memory. Every mapping is private (MAP_PRIVATE), as ELF segments are.
- ``PTE``: virtual page -> frame, built on demand when the page is first touched (by the
  CPU through ``translate`` from the TLB-fill hook, or by host ``read``/``write``). A
  private file page first maps the *page-cache frame* read-only (``shared``); the first
  write copies it into a new frame (COW). Anonymous pages start as fresh zero frames.
  A private file page that is writable *and* executable (text made writable with
  ``mprotect``) is copied at its first touch instead (``writable_code``).
- ``swap_out(vaddr)`` moves a private page into a swap slot and leaves a non-present PTE
  that remembers the slot; the next touch swaps it back into a new frame.
- ``file_pages(file, index)`` finds every page of this space mapping a file page, shared or
  private, faulting swapped-out copies back in: DProbes' two-pass locator scheme.

Addresses at or above ``KERNEL_BASE`` belong to ``KernelPages``, one table shared by every
address space, as the kernel half of every i386 page directory is.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

from dprobes.kernel_layout import KERNEL_BASE
from dprobes.runtime.pagecache import GuestFile, PageCache
from dprobes.runtime.paging import (
    MMAP_BASE,
    PTE,
    VMA,
    GuestFault,
    KernelPages,
    MMUNotifier,
    PageMapping,
    Prot,
    page_up,
    read_virtual,
)
from dprobes.runtime.physmem import PAGE_MASK, PAGE_SHIFT, PAGE_SIZE, PhysicalMemory
from dprobes.runtime.swap import SwapArea

_WRITE, _EXEC = int(Prot.WRITE), int(Prot.EXEC)
_WRITE_EXEC = _WRITE | _EXEC

__all__ = [
    "KERNEL_BASE",
    "MMAP_BASE",
    "PTE",
    "VMA",
    "AddressSpace",
    "GuestFault",
    "KernelPages",
    "MMUNotifier",
    "PageMapping",
    "Prot",
    "page_up",
]


class AddressSpace:
    """One process's view of memory (Linux's mm_struct)."""

    def __init__(
        self,
        memory: PhysicalMemory,
        cache: PageCache,
        swap: SwapArea,
        kernel: KernelPages,
        notifier: MMUNotifier | None = None,
    ) -> None:
        self.memory, self.cache, self.swap, self.kernel = memory, cache, swap, kernel
        self.notifier = notifier
        self.vmas: list[VMA] = []  # sorted by start, never overlapping
        self.ptes: dict[int, PTE] = {}  # virtual page number -> entry
        self.faults = 0  # pages built on demand
        self.cow_breaks = 0
        self.private_code = False
        """Some executable page is this space's own (written, or anonymous), not a file's."""
        self._layout: tuple[tuple[int, int, int, int], ...] | None = None

    # --- VMAs ----------------------------------------------------------------------------

    def find_vma(self, vaddr: int) -> VMA | None:
        i = bisect.bisect_right(self.vmas, vaddr, key=lambda v: v.start) - 1
        if i >= 0 and vaddr < self.vmas[i].end:
            return self.vmas[i]
        return None

    def map(
        self,
        start: int,
        length: int,
        prot: Prot,
        file: GuestFile | None = None,
        offset: int = 0,
        name: str = "",
    ) -> VMA:
        """Map [start, start+length) (page-aligned start), replacing what was there."""
        if start & PAGE_MASK or offset & PAGE_MASK or length <= 0:
            raise ValueError(f"unaligned mapping 0x{start:x}+0x{length:x} @0x{offset:x}")
        end = page_up(start + length)
        if end > KERNEL_BASE or end <= start:
            raise ValueError(f"mapping 0x{start:x}-0x{end:x} reaches kernel space")
        self.unmap(start, end - start)
        vma = VMA(start, end, Prot(prot), file, offset, name or (file.path.name if file else ""))
        bisect.insort(self.vmas, vma, key=lambda v: v.start)
        self.private_code |= file is None and bool(prot & Prot.EXEC)
        if file is not None:
            file.mappers[id(self)] = self
        return vma

    def find_free(self, length: int, hint: int = MMAP_BASE) -> int:
        """Lowest page-aligned start >= ``hint`` with ``length`` unmapped bytes after it."""
        start = page_up(max(hint, PAGE_SIZE))
        for vma in self.vmas:
            if vma.end <= start:
                continue
            if vma.start >= start + length:
                break
            start = vma.end
        if start + length > KERNEL_BASE:
            raise MemoryError(f"no room for 0x{length:x} bytes of mappings")
        return start

    def unmap(self, start: int, length: int) -> None:
        """Remove every mapping in [start, start+length), splitting VMAs at the edges."""
        end = page_up(start + length)
        for vma in self._carve(start, end):
            self.vmas.remove(vma)
            lo, hi = vma.start >> PAGE_SHIFT, vma.end >> PAGE_SHIFT
            vpns = (
                range(lo, hi)
                if hi - lo < len(self.ptes)
                else [vpn for vpn in self.ptes if lo <= vpn < hi]
            )  # big, sparse: walk the PTEs
            for vpn in vpns:
                pte = self.ptes.pop(vpn, None)
                if pte is not None:
                    self._release(pte)
            if vma.file is not None and not any(v.file is vma.file for v in self.vmas):
                vma.file.mappers.pop(id(self), None)
        self._invalidate(start, end)

    def protect(self, start: int, length: int, prot: Prot) -> None:
        """mprotect: new protection for [start, start+length); every page must be mapped."""
        end = page_up(start + length)
        covered = start
        for vma in self._carve(start, end):
            if vma.start != covered:
                raise GuestFault(covered)
            covered = vma.end
            vma.prot = Prot(prot)
            for vpn in range(vma.start >> PAGE_SHIFT, vma.end >> PAGE_SHIFT):
                pte = self.ptes.get(vpn)
                if pte is not None and not prot & Prot.WRITE:
                    pte.writable = False
        if covered < end:
            raise GuestFault(covered)
        self._invalidate(start, end)

    def code_key(self) -> object:
        """Equal for address spaces that must hold the same code at the same addresses: the
        same file pages mapped executable at the same places, and no private code."""
        if self.private_code:
            return id(self)
        if self._layout is None:
            self._layout = tuple(
                (v.start, v.end, v.file.id, v.offset)
                for v in self.vmas
                if v.prot & Prot.EXEC and v.file is not None
            )
        return self._layout

    def writable_code(self, vaddr: int) -> bool:
        """Whether ``vaddr`` is in a mapping both writable and executable: code the guest
        may rewrite with plain stores, which the host is not told about. Such a page is
        made private at its first touch (``translate``), so no code runs from a frame
        other than the one the guest writes, and host caches of its code (block counts,
        native probe steps) must look at the bytes each time."""
        vma = self.find_vma(vaddr)
        return vma is not None and int(vma.prot) & _WRITE_EXEC == _WRITE_EXEC

    def _carve(self, start: int, end: int) -> list[VMA]:
        """Split VMAs so that none straddles ``start`` or ``end``; return those inside."""
        self._layout = None
        for edge in (start, end):
            vma = self.find_vma(edge)
            if vma is not None and vma.start < edge:
                tail = VMA(
                    edge, vma.end, vma.prot, vma.file, vma.offset + edge - vma.start, vma.name
                )
                vma.end = edge
                bisect.insort(self.vmas, tail, key=lambda v: v.start)
        return [v for v in self.vmas if start <= v.start and v.end <= end]

    # --- paging --------------------------------------------------------------------------

    def translate(self, vaddr: int, access: Prot, user: bool = True) -> tuple[int, int] | None:
        """(frame, Prot bits to give the TLB) for an access, building the PTE on demand,
        breaking COW on a write and swapping in; None means the access faults."""
        if vaddr >= KERNEL_BASE:
            return self.kernel.translate(vaddr, access, user)
        vma = self.find_vma(vaddr)
        # plain ints from here: IntFlag arithmetic costs microseconds, and this is the TLB
        # fill path
        prot, access = int(vma.prot) if vma is not None else 0, int(access)
        if not prot & access:
            return None
        vpn = vaddr >> PAGE_SHIFT
        pte = self.ptes.get(vpn)
        if pte is None:
            pte = self._fault_in(vma, vpn)  # type: ignore[arg-type]
        elif pte.swap_slot is not None:
            self._swap_in(vma, pte)  # type: ignore[arg-type]
        if not pte.writable and (access == _WRITE or prot & _WRITE_EXEC == _WRITE_EXEC):
            # writable code is copied at its first touch, not its first write (see
            # writable_code): unicorn might go on running a block it translated from the
            # shared frame after the guest's store went to the private copy
            moved = pte.shared
            self._make_writable(pte)
            self.private_code |= bool(prot & _EXEC)
            if moved and self.notifier is not None:
                self.notifier.page_moved(self, vaddr)
        if prot & _EXEC:
            self.memory.mark_code(pte.frame)
        return pte.frame, prot & ~_WRITE | (_WRITE if pte.writable else 0)

    def _fault_in(self, vma: VMA, vpn: int) -> PTE:
        self.faults += 1
        if vma.file is None:
            pte = PTE(self.memory.alloc(), writable=bool(vma.prot & Prot.WRITE))
        else:
            frame = self.cache.frame(vma.file, vma.file_index(vpn << PAGE_SHIFT))
            pte = PTE(self.memory.get(frame), shared=True)
        self.ptes[vpn] = pte
        return pte

    def _make_writable(self, pte: PTE) -> None:
        if pte.shared:
            old = pte.frame
            pte.frame = self.memory.copy(old)
            self.memory.put(old)
            pte.shared = False
            self.cow_breaks += 1
        pte.writable = True

    def _swap_in(self, vma: VMA, pte: PTE) -> None:
        frame = self.memory.alloc(zero=False)
        self.memory.frame_bytes(frame)[:] = self.swap.load(pte.swap_slot)
        pte.frame, pte.swap_slot = frame, None
        pte.writable = bool(vma.prot & Prot.WRITE)

    def _release(self, pte: PTE) -> None:
        if pte.swap_slot is not None:
            self.swap.load(pte.swap_slot)
        else:
            self.memory.put(pte.frame)

    def _invalidate(self, start: int, end: int) -> None:
        if self.notifier is not None:
            self.notifier.invalidate_range(self, start, end)

    def swap_out(self, vaddr: int) -> int:
        """Move the private page at ``vaddr`` to a swap slot (returned); the PTE stays, not
        present. A page still mapping the page cache is clean: drop it there instead."""
        vpn = vaddr >> PAGE_SHIFT
        pte = self.ptes.get(vpn)
        if pte is None or pte.swap_slot is not None:
            raise ValueError(f"page 0x{vaddr & ~PAGE_MASK:08x} is not resident")
        if pte.shared:
            raise ValueError(f"page 0x{vaddr & ~PAGE_MASK:08x} is a clean page-cache page")
        pte.swap_slot = self.swap.store(bytes(self.memory.frame_bytes(pte.frame)))
        self.memory.put(pte.frame)
        pte.frame, pte.writable = 0, False
        self._invalidate(vpn << PAGE_SHIFT, (vpn + 1) << PAGE_SHIFT)
        return pte.swap_slot

    def unmap_cache_frame(self, frame: int) -> None:
        """Forget every PTE that maps page-cache ``frame`` (it is being dropped)."""
        for vpn, pte in list(self.ptes.items()):
            if pte.shared and pte.frame == frame:
                del self.ptes[vpn]
                self.memory.put(frame)
                self._invalidate(vpn << PAGE_SHIFT, (vpn + 1) << PAGE_SHIFT)

    # --- finding the pages of a file page ------------------------------------------------

    def file_pages(
        self, file: GuestFile, index: int, swap_in: bool = True
    ) -> Iterator[PageMapping]:
        """Every resident page of this space mapping page ``index`` of ``file``.

        Pass 1 yields the present pages and notes (vaddr) locators for copies that are
        swapped out. Pass 2 re-checks that each locator's address still maps the same file
        page (the vma may have gone meanwhile) and swaps it in, then yields it; with
        ``swap_in=False`` it yields them with frame None instead. Pages never touched
        have no PTE and are not yielded: they will come from the page cache.
        """
        locators: list[int] = []
        for vaddr in self._file_page_addresses(file, index):
            pte = self.ptes.get(vaddr >> PAGE_SHIFT)
            if pte is None:
                continue
            if pte.swap_slot is not None:
                locators.append(vaddr)
            else:
                yield PageMapping(self, vaddr, pte.frame, not pte.shared)
        for vaddr in locators:
            if vaddr not in self._file_page_addresses(file, index):
                continue
            pte = self.ptes.get(vaddr >> PAGE_SHIFT)
            if pte is None or pte.swap_slot is None:
                continue
            if swap_in:
                self._swap_in(self.find_vma(vaddr), pte)  # type: ignore[arg-type]
            yield PageMapping(self, vaddr, pte.frame if swap_in else None, True)

    def _file_page_addresses(self, file: GuestFile, index: int) -> list[int]:
        offset = index << PAGE_SHIFT
        return [
            vma.start + offset - vma.offset
            for vma in self.vmas
            if vma.file is file and vma.offset <= offset < vma.offset + vma.end - vma.start
        ]

    # --- host access ---------------------------------------------------------------------

    def read(self, vaddr: int, n: int, user: bool = True) -> bytes:
        """``n`` bytes at ``vaddr``; GuestFault at the first bad byte. ``user``: as the
        kernel's copy_from_user, kernel addresses fault; else kernel pages are readable."""
        return read_virtual(
            self.memory,
            lambda addr: (
                None if user and addr >= KERNEL_BASE else self.translate(addr, Prot.READ, user)
            ),
            vaddr,
            n,
        )

    def read_cstring(self, vaddr: int, limit: int = 4096) -> bytes:
        """The NUL-terminated string at ``vaddr`` (without the NUL), at most ``limit`` bytes."""
        out = bytearray()
        while len(out) < limit:
            chunk = self.read(
                vaddr + len(out),
                min(limit - len(out), PAGE_SIZE - ((vaddr + len(out)) & PAGE_MASK)),
            )
            end = chunk.find(0)
            if end >= 0:
                return bytes(out + chunk[:end])
            out += chunk
        return bytes(out)

    def write(self, vaddr: int, data: bytes, force: bool = False) -> None:
        """Store ``data`` at ``vaddr``; GuestFault at the first bad byte (earlier bytes are
        written). ``force`` writes read-only pages too, as ptrace's POKETEXT does: a page
        still shared with the page cache gets its private copy first (COW), so a forced
        write never reaches the file's cached page."""
        done = 0
        while done < len(data):
            addr = (vaddr + done) & 0xFFFFFFFF
            vma = self.find_vma(addr)
            if force and vma is not None and vma.prot & Prot.READ:
                frame = self._force_writable(vma, addr)[0]
            else:
                frame = self.user_write_frame(addr)
            if frame is None:
                raise GuestFault(addr, Prot.WRITE)
            base = (frame << PAGE_SHIFT) | (addr & PAGE_MASK)
            take = min(len(data) - done, PAGE_SIZE - (addr & PAGE_MASK))
            self.memory.bytes[base : base + take] = data[done : done + take]
            if vma is not None and vma.prot & Prot.EXEC and self.notifier is not None:
                self.notifier.code_written(base, take)
            done += take

    def user_write_frame(self, vaddr: int) -> int | None:
        """The frame a user-mode store to ``vaddr`` goes to (COW broken first), or None if
        it faults. The caller tells the notifier about bytes it writes into code."""
        pte = self.ptes.get(vaddr >> PAGE_SHIFT)
        was_shared = pte is not None and pte.shared
        found = self.translate(vaddr, Prot.WRITE) if vaddr < KERNEL_BASE else None
        if found is None:
            return None
        if was_shared:  # the CPU's TLB still has the old frame
            self._invalidate(vaddr & ~PAGE_MASK, (vaddr & ~PAGE_MASK) + PAGE_SIZE)
        return found[0]

    def _force_writable(self, vma: VMA, addr: int) -> tuple[int, Prot]:
        found = self.translate(addr, Prot.READ)
        assert found is not None
        pte = self.ptes[addr >> PAGE_SHIFT]
        if pte.shared:
            self._make_writable(pte)
            pte.writable = bool(vma.prot & Prot.WRITE)
            self.private_code |= bool(vma.prot & Prot.EXEC)
            self._invalidate(addr & ~PAGE_MASK, (addr & ~PAGE_MASK) + PAGE_SIZE)
        return pte.frame, vma.prot

    def page_of(self, vaddr: int) -> PTE | None:
        """The page-table entry of ``vaddr`` without faulting anything in."""
        return self.ptes.get(vaddr >> PAGE_SHIFT)

    def destroy(self) -> None:
        """Unmap everything (process exit)."""
        self.unmap(0, KERNEL_BASE)
