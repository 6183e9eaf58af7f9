"""Loading a static i386 ELF executable, as Linux's binfmt_elf does.

A user probe names an executable file and an offset in it, and fires in every process
running that file. That only works if a process's text *is* the file's pages: here each
PT_LOAD segment becomes a private file mapping at the segment's file offset, so its pages
come from the page cache (shared by every process of the program) until something writes
to one (a private COW copy). As in binfmt_elf, the bytes after the end of the file part of
the last segment page are zeroed (a COW write, ``padzero``), the rest of the bss is
anonymous memory, and the program break starts after the highest segment.

``build_stack`` lays out the initial stack the way ``create_elf_tables`` does: argc, argv,
envp, then the auxiliary vector (AT_PHDR, AT_PHNUM, AT_PAGESZ, AT_ENTRY, AT_RANDOM with 16
bytes from the machine's seeded PRNG, AT_SECURE 0, AT_EXECFN, AT_PLATFORM "i686", and no
AT_SYSINFO: there is no vDSO, so glibc uses ``int $0x80``), with the strings above them.

What is not a static i386 executable is refused with a ``LoadError`` naming the file and
the problem: what ``dprobes.elf`` refuses in any file (not ELF, 64-bit, big-endian,
another machine, truncated), and here not an executable, dynamically linked (PT_INTERP),
a segment that cannot be mapped (one below ``MMAP_MIN_ADDR`` included, as Linux refuses).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from dprobes.elf import PF_R, PF_W, PF_X, ElfError, Segment, read_elf
from dprobes.runtime.addrspace import KERNEL_BASE, AddressSpace, Prot, page_up
from dprobes.runtime.pagecache import GuestFile, PageCache
from dprobes.runtime.paging import MMAP_MIN_ADDR
from dprobes.runtime.physmem import PAGE_MASK, PAGE_SIZE

STACK_TOP = KERNEL_BASE
STACK_SIZE = 8 << 20
HWCAP = 0x0781_8111
"""CPUID.1:EDX bits glibc may look at: FPU, TSC, CX8, CMOV, MMX, FXSR, SSE, SSE2."""
AT_NULL, AT_PHDR, AT_PHENT, AT_PHNUM, AT_PAGESZ, AT_BASE, AT_FLAGS = 0, 3, 4, 5, 6, 7, 8
AT_ENTRY, AT_UID, AT_EUID, AT_GID, AT_EGID, AT_PLATFORM, AT_HWCAP = 9, 11, 12, 13, 14, 15, 16
AT_CLKTCK, AT_SECURE, AT_RANDOM, AT_HWCAP2, AT_EXECFN = 17, 23, 25, 26, 31


class LoadError(Exception):
    """The file cannot be run: the message names the file and what is wrong."""

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = str(path), problem


@dataclass(frozen=True)
class Image:
    """Where a loaded executable ended up."""

    path: str
    file: GuestFile
    entry: int
    phdr: int
    phnum: int
    phent: int
    brk: int
    """First address after the highest segment, page-aligned: where the heap starts."""


def load(space: AddressSpace, cache: PageCache, path: str | Path) -> Image:
    """Map the executable at ``path`` into ``space``; returns where things are."""
    try:
        elf = read_elf(path)
    except OSError as exc:
        raise LoadError(path, exc.strerror or str(exc)) from exc
    except ElfError as exc:
        raise LoadError(path, exc.problem) from exc
    if elf.type == "ET_DYN":
        raise LoadError(
            path,
            "ET_DYN (a shared object or position-independent executable) "
            "is not supported: link with -static -no-pie",
        )
    if elf.type != "ET_EXEC":
        raise LoadError(path, f"ELF type {elf.type} is not an executable (ET_EXEC)")
    if any(seg.type == "PT_INTERP" for seg in elf.segments):
        raise LoadError(
            path,
            "dynamically linked executable (it has PT_INTERP): not "
            "supported, only static executables run here",
        )
    loads = elf.loads
    if not loads:
        raise LoadError(path, "no PT_LOAD segment: nothing to run")
    for i, seg in enumerate(loads):
        if (seg.vaddr - seg.offset) & PAGE_MASK:
            raise LoadError(path, f"segment {i}: address and file offset differ mod 4096")
        if seg.vaddr & ~PAGE_MASK < MMAP_MIN_ADDR:
            raise LoadError(
                path,
                f"segment {i} at 0x{seg.vaddr:x} is below 0x{MMAP_MIN_ADDR:x}, the lowest "
                "address Linux maps (vm.mmap_min_addr)",
            )
        if seg.vaddr + seg.memsz > KERNEL_BASE or seg.memsz < seg.filesz:
            raise LoadError(path, f"segment {i} at 0x{seg.vaddr:x} does not fit user space")
    file = cache.open(path)
    for seg in loads:
        _map_segment(space, file, seg)
    brk = max(page_up(seg.vaddr + seg.memsz) for seg in loads)
    phdr = next((seg.vaddr for seg in elf.segments if seg.type == "PT_PHDR"), None)
    if phdr is None:
        phdr = next(
            (address for address in (s.address(elf.phoff) for s in loads) if address is not None), 0
        )
    return Image(str(path), file, elf.entry, phdr, elf.phnum, elf.phentsize, brk)


def _map_segment(space: AddressSpace, file: GuestFile, seg: Segment) -> None:
    prot = Prot(
        (PF_R & seg.flags and Prot.READ)
        | (PF_W & seg.flags and Prot.WRITE)
        | (PF_X & seg.flags and Prot.EXEC)
    )
    start = seg.vaddr & ~PAGE_MASK
    file_end, mem_end = seg.vaddr + seg.filesz, seg.vaddr + seg.memsz
    if page_up(file_end) > start:
        space.map(start, page_up(file_end) - start, prot, file, seg.offset & ~PAGE_MASK)
    if seg.memsz > seg.filesz:
        if file_end & PAGE_MASK:  # binfmt_elf's padzero: the file's tail is not bss
            space.write(file_end, bytes(PAGE_SIZE - (file_end & PAGE_MASK)), force=True)
        if page_up(mem_end) > page_up(file_end):
            space.map(
                page_up(file_end), page_up(mem_end) - page_up(file_end), prot, None, name="[bss]"
            )


def build_stack(
    space: AddressSpace,
    image: Image,
    argv: list[bytes],
    env: list[bytes],
    random16: bytes,
    execfn: bytes,
) -> int:
    """Map the stack and write argc/argv/envp/auxv; returns the initial ESP."""
    space.map(STACK_TOP - STACK_SIZE, STACK_SIZE, Prot.READ | Prot.WRITE, name="[stack]")
    sp = STACK_TOP - 4  # a zero word ends the stack, as in Linux

    def push(data: bytes) -> int:
        nonlocal sp
        sp -= len(data)
        space.write(sp, data)
        return sp

    execfn_at = push(execfn + b"\0")
    env_at = [push(s + b"\0") for s in reversed(env)][::-1]
    argv_at = [push(s + b"\0") for s in reversed(argv)][::-1]
    platform_at = push(b"i686\0")
    random_at = push(random16)
    auxv = [
        (AT_HWCAP, HWCAP),
        (AT_PAGESZ, PAGE_SIZE),
        (AT_CLKTCK, 100),
        (AT_PHDR, image.phdr),
        (AT_PHENT, image.phent),
        (AT_PHNUM, image.phnum),
        (AT_BASE, 0),
        (AT_FLAGS, 0),
        (AT_ENTRY, image.entry),
        (AT_UID, 0),
        (AT_EUID, 0),
        (AT_GID, 0),
        (AT_EGID, 0),
        (AT_SECURE, 0),
        (AT_RANDOM, random_at),
        (AT_HWCAP2, 0),
        (AT_EXECFN, execfn_at),
        (AT_PLATFORM, platform_at),
        (AT_NULL, 0),
    ]
    words = [len(argv), *argv_at, 0, *env_at, 0, *(w for pair in auxv for w in pair)]
    sp = (sp - 4 * len(words)) & ~15
    space.write(sp, struct.pack(f"<{len(words)}I", *words))
    return sp
