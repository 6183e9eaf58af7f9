"""System calls on the address space: brk, mmap, munmap, mprotect.

Memory is committed lazily, as with Linux's default overcommit heuristic: a brk or mmap
that could never be backed (more private writable memory in one request than the
machine has) fails with ENOMEM (brk by returning the old break), and anything smaller
succeeds; a process whose page fault then finds no free frame is killed with SIGKILL
(``Machine.kill_out_of_memory``), as by the OOM killer. Nothing is mapped below
``MMAP_MIN_ADDR``: MAP_FIXED there is EPERM, a hint there is ignored.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from dprobes.runtime.addrspace import KERNEL_BASE, GuestFault, Prot, page_up
from dprobes.runtime.hostfiles import HostFile
from dprobes.runtime.paging import MMAP_MIN_ADDR
from dprobes.runtime.physmem import PAGE_MASK, PAGE_SIZE
from dprobes.runtime.process import Process
from dprobes.runtime.syscalls.abi import (
    EACCES,
    EBADF,
    EINVAL,
    ENOMEM,
    EPERM,
    MAP_ANONYMOUS,
    MAP_FIXED,
    MAP_SHARED,
    signed,
)
from dprobes.runtime.syscalls.table import syscall

if TYPE_CHECKING:
    from dprobes.runtime.machine import Machine


@syscall(45, "brk")
def sys_brk(m: Machine, p: Process, addr: int) -> int:
    if addr < p.brk_start:
        return p.brk
    old_end, new_end = page_up(p.brk), page_up(addr)
    if new_end > old_end:
        if map_heap(m, p, old_end, new_end):
            return p.brk
    elif new_end < old_end:
        p.space.unmap(new_end, old_end - new_end)
    p.brk = addr
    return addr


def map_heap(m: Machine, p: Process, start: int, end: int) -> int:
    """Grow the heap over the page-aligned ``[start, end)``: 0, or -ENOMEM if the machine
    could never back it or it would run into another mapping (brk's bookkeeping is the
    caller's: this function or, on the guest kernel, ``sys_brk`` in mm/mmap.c)."""
    if end - start > m.memory.size:
        return -ENOMEM
    if any(v.start < end and v.end > start for v in p.space.vmas):
        return -ENOMEM
    p.space.map(start, end - start, Prot.READ | Prot.WRITE, name="[heap]")
    return 0


def _mmap(
    m: Machine, p: Process, addr: int, length: int, prot: int, flags: int, fd: int, offset: int
) -> int:
    if length == 0 or addr & PAGE_MASK or offset & PAGE_MASK or prot & ~7:
        return -EINVAL
    length = page_up(length)
    if not flags & MAP_SHARED and prot & Prot.WRITE and length > m.memory.size:
        return -ENOMEM  # private writable memory that could never be backed
    file = None
    if not flags & MAP_ANONYMOUS:
        opened = p.fds.get(signed(fd))
        if not isinstance(opened, HostFile):
            return -EBADF if opened is None else -EACCES
        if flags & MAP_SHARED and prot & Prot.WRITE:
            return -EACCES  # stores would never reach the host file
        file = m.cache.open(opened.path)
    if flags & MAP_FIXED:
        if addr < MMAP_MIN_ADDR:
            return -EPERM
        start = addr
    else:
        try:
            start = p.space.find_free(length, addr if addr >= MMAP_MIN_ADDR else m.mmap_base)
        except MemoryError:
            return -ENOMEM
    try:
        p.space.map(start, length, Prot(prot), file, offset)
    except ValueError:
        return -EINVAL
    return start


@syscall(192, "mmap2")
def sys_mmap2(
    m: Machine, p: Process, addr: int, length: int, prot: int, flags: int, fd: int, pgoff: int
) -> int:
    return _mmap(m, p, addr, length, prot, flags, fd, pgoff * PAGE_SIZE)


@syscall(90, "mmap")
def sys_old_mmap(m: Machine, p: Process, args: int) -> int:
    return _mmap(m, p, *struct.unpack("<6I", p.space.read(args, 24)))


@syscall(91, "munmap")
def sys_munmap(m: Machine, p: Process, addr: int, length: int) -> int:
    if addr & PAGE_MASK or length == 0 or addr + length > KERNEL_BASE:
        return -EINVAL
    p.space.unmap(addr, length)
    return 0


@syscall(125, "mprotect")
def sys_mprotect(m: Machine, p: Process, addr: int, length: int, prot: int) -> int:
    if addr & PAGE_MASK or prot & ~7:
        return -EINVAL
    if length == 0:
        return 0
    try:
        p.space.protect(addr, length, Prot(prot))
    except GuestFault:
        return -ENOMEM
    return 0
