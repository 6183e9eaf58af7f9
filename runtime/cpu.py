"""The CPU: unicorn's i386 with the runtime's page tables behind its TLB.

What DProbes needs from the processor is i386 behaviour at the edges: int3 traps with EIP
after it, BOUND faults with EIP at it, user code at CPL 3 with Linux's selectors, TLS in
the GDT, x87 and SSE usable, and a TLB that can be told a page moved (COW, swap). This
module sets that up on unicorn (docs/runtime.md, "CPU"):

- ``UC_TLB_VIRTUAL`` with a ``UC_HOOK_TLB_FILL`` hook: every TLB miss asks the current
  ``AddressSpace.translate``; the CPU's own CR0.PG paging is never switched on (its second
  page fault becomes a double fault), and nothing is remapped inside write hooks.
- A GDT in a kernel page with Linux's flat segments: kernel code/data 0x60/0x68, user
  code/data 0x73/0x7b, and the three TLS entries 6..8 that ``set_thread_area`` fills
  (selectors 0x33, 0x3b, 0x43). CPL is the DPL of SS, which unicorn will not raise by a
  register write, so user mode is entered as Linux enters it: ``iret`` from ring 0, here
  a one-instruction trampoline in a kernel page.
- FPCW 0x37f and MXCSR 0x1f80 (unicorn starts both at 0), CR0.MP|NE, CR4.OSFXSR|OSXMMEXCPT.
  CR4.TSD makes ``rdtsc`` in user mode a #GP, so the machine can answer it from the
  instruction clock: unicorn's own TSC follows host time and cannot be hooked.
- ``invalidate_code(paddr, n)`` after a host write into code: unicorn's translation cache
  is not coherent with host writes. Translations are keyed by physical address, and
  ``ctl_remove_cache`` takes a virtual one, so the frame is mapped for a moment at a kernel
  *alias* address and the range removed through it, the way DProbes wrote probes through
  the kernel alias of a user page.

A nested ``emu_start`` from inside a hook silently stops emulation, so nothing here runs
guest code from a hook.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Callable, Mapping, Sequence

from unicorn import (
    UC_ARCH_X86,
    UC_CTL_IO_WRITE,
    UC_CTL_TLB_FLUSH,
    UC_HOOK_INSN_INVALID,
    UC_HOOK_INTR,
    UC_HOOK_TLB_FILL,
    UC_MEM_FETCH,
    UC_MEM_WRITE,
    UC_MODE_32,
    UC_PROT_ALL,
    UC_TLB_VIRTUAL,
    Uc,
    UcError,
)
from unicorn import x86_const as x86
from unicorn.unicorn import UcContext
from unicorn.unicorn_py3.unicorn import uc_hook_h, uclib

from dprobes.runtime.addrspace import AddressSpace, KernelPages, Prot
from dprobes.runtime.clock import InstructionCounter
from dprobes.runtime.paging import read_virtual
from dprobes.runtime.physmem import PAGE_MASK, PAGE_SHIFT, PAGE_SIZE, OutOfFrames, PhysicalMemory
from dprobes.runtime.uc_registers import UC_IDS

KERNEL_CS, KERNEL_DS, USER_CS, USER_DS = 0x60, 0x68, 0x73, 0x7B
GDT_ENTRIES = 32
TLS_FIRST, TLS_COUNT = 6, 3  # GDT_ENTRY_TLS_MIN and how many (selectors 0x33, 0x3b, 0x43)
FIXMAP_GDT = 0xFFFF0000
FIXMAP_ENTRY = 0xFFFF1000  # the iret trampoline
FIXMAP_STACK = 0xFFFF2000  # the trampoline's kernel stack (one page)
FIXMAP_ALIAS = 0xFFFF3000  # where a frame is mapped for a moment to invalidate its code
FIXMAP_STOP = 0xFFFF4000
STOP_ADDRESS = FIXMAP_STOP + 0x800
"""The ``until`` of every ``emu_start``. unicorn looks up the page of ``until - 1`` (as an
instruction fetch at the current CPL) on every start, so this page is user-executable,
full of ``hlt``: user code that jumps into it gets #GP, and one that jumps exactly here
stops emulation (the machine then kills it with SIGSEGV)."""
CR0_MP, CR0_NE = 1 << 1, 1 << 5
CR4_TSD, CR4_OSFXSR, CR4_OSXMMEXCPT = 1 << 2, 1 << 9, 1 << 10
USER_EFLAGS = 0x202  # IF set, as for a new Linux process

GENERAL = ("eax", "ebx", "ecx", "edx", "esi", "edi", "ebp", "esp", "eip", "eflags")
SEGMENTS = ("cs", "ss", "ds", "es", "fs", "gs")
REGISTERS = GENERAL + SEGMENTS
_WRITABLE = frozenset(GENERAL) | {"ds", "es", "fs", "gs"}
_ACCESS = {UC_MEM_WRITE: Prot.WRITE, UC_MEM_FETCH: Prot.EXEC}


def segment_descriptor(base: int, limit: int, access: int, flags: int) -> bytes:
    """An 8-byte GDT descriptor: ``access`` is the P/DPL/S/type byte, ``flags`` G/D/L/AVL."""
    return struct.pack(
        "<HHBBBB",
        limit & 0xFFFF,
        base & 0xFFFF,
        (base >> 16) & 0xFF,
        access,
        ((limit >> 16) & 0xF) | (flags << 4),
        (base >> 24) & 0xFF,
    )


class RegisterBatch:
    """Reads a fixed list of 32-bit registers in one ``uc_reg_read_batch`` call (the Python
    binding's ``reg_read`` costs ~3 us per register; this ~1 us for all of them)."""

    def __init__(self, uc: Uc, names: Sequence[str]) -> None:
        n = len(names)
        self._uch, self._n = uc._uch, n
        self._ids = (ctypes.c_int32 * n)(*(UC_IDS[name] for name in names))
        self._values = (ctypes.c_uint32 * n)()
        base = ctypes.addressof(self._values)
        self._pointers = (ctypes.c_void_p * n)(*(base + 4 * i for i in range(n)))

    def read(self) -> list[int]:
        ctypes.memset(self._values, 0, 4 * self._n)  # selectors are written as 16 bits
        status = uclib.uc_reg_read_batch(self._uch, self._ids, self._pointers, self._n)
        if status:
            raise UcError(status)
        return self._values[:]


class CPU:
    """One i386 CPU on unicorn, reading page tables from the current address space."""

    def __init__(self, memory: PhysicalMemory, kernel: KernelPages) -> None:
        self.memory, self.kernel = memory, kernel
        self.uc = Uc(UC_ARCH_X86, UC_MODE_32)
        self.uc.ctl_set_tlb_mode(UC_TLB_VIRTUAL)
        self.uc.mem_map_ptr(0, memory.size, UC_PROT_ALL, memory.host_address)
        self.space: AddressSpace | None = None
        self.last_fault: tuple[int, Prot] | None = None
        """(address, access) of the last TLB fill that found no translation."""
        self.out_of_frames = False
        self.gate_open_paddr: int | None = None
        """Physical address of the guest kernel's ``gate_open`` flag: while it is set, the
        CPU is crossing a call gate into ring 0 and its TSS read and stack pushes, made with
        CS still at CPL 3, are supervisor accesses (runtime/kernel.py)."""
        """The last TLB fill faulted because no physical frame was free (an OOM kill)."""
        self.on_interrupt: Callable[[int], None] = lambda vector: self.uc.emu_stop()
        self.on_invalid_instruction: Callable[[], bool] = lambda: False
        self._in_fill = False
        self._deferred: list[tuple[int, int]] = []
        self.tlb_fills = 0
        self.translation_listeners: list[Callable[[], None]] = []
        """Host-side caches of the current space's translations, dropped with the TLB."""
        self._cs = RegisterBatch(self.uc, ["cs"])  # before any hook can run
        self.counter = InstructionCounter(self.uc, self._read_code, self._rewritable_code)
        self.uc.hook_add(UC_HOOK_TLB_FILL, self._tlb_fill)
        self._interrupt_hook = self.uc.hook_add(
            UC_HOOK_INTR, lambda _uc, vector, _data: self.on_interrupt(vector)
        )
        self.uc.hook_add(UC_HOOK_INSN_INVALID, lambda _uc, _data: self.on_invalid_instruction())
        self._gdt_frame = self._kernel_page(FIXMAP_GDT, Prot.READ, user=True)
        self._kernel_page(FIXMAP_ENTRY, Prot.READ | Prot.EXEC)
        self._stack_frame = self._kernel_page(FIXMAP_STACK, Prot.READ | Prot.WRITE)
        self.memory.write(self._frame_address(FIXMAP_ENTRY), b"\xcf")  # iret
        stop = self._kernel_page(FIXMAP_STOP, Prot.READ | Prot.EXEC, user=True)
        self.memory.write(stop << PAGE_SHIFT, b"\xf4" * PAGE_SIZE)  # hlt
        self._boot()
        self._all = RegisterBatch(self.uc, REGISTERS)
        self._one = {name: RegisterBatch(self.uc, [name]) for name in REGISTERS}
        self.boot_context = self.uc.context_save()
        """Ring 0, flat segments, FPU/SSE initialised: every new process starts from it."""

    def _kernel_page(self, vaddr: int, prot: Prot, user: bool = False) -> int:
        frame = self.memory.alloc()
        self.kernel.map(vaddr, frame, prot, user)
        return frame

    def _frame_address(self, vaddr: int) -> int:
        return (self.kernel.pages[vaddr >> PAGE_SHIFT][0] << PAGE_SHIFT) | (vaddr & PAGE_MASK)

    def kernel_read(self, vaddr: int, n: int) -> bytes:
        """``n`` bytes of kernel virtual memory (the GDT for seg2lin, ...); GuestFault at
        the first unmapped byte."""
        return read_virtual(
            self.memory, lambda addr: self.kernel.translate(addr, Prot.READ, user=False), vaddr, n
        )

    def _boot(self) -> None:
        gdt = bytearray(8 * GDT_ENTRIES)
        flat = {KERNEL_CS: 0x9B, KERNEL_DS: 0x93, USER_CS: 0xFB, USER_DS: 0xF3}
        for selector, access in flat.items():  # present, accessed, 4 GiB, 32-bit
            gdt[selector & ~7 : (selector & ~7) + 8] = segment_descriptor(0, 0xFFFFF, access, 0xC)
        self.memory.write(self._gdt_frame << PAGE_SHIFT, bytes(gdt))
        uc = self.uc
        uc.reg_write(x86.UC_X86_REG_GDTR, (0, FIXMAP_GDT, len(gdt) - 1, 0))
        uc.reg_write(x86.UC_X86_REG_CS, KERNEL_CS)
        uc.reg_write(x86.UC_X86_REG_SS, KERNEL_DS)
        for reg in (x86.UC_X86_REG_DS, x86.UC_X86_REG_ES):
            uc.reg_write(reg, USER_DS)
        uc.reg_write(x86.UC_X86_REG_CR0, uc.reg_read(x86.UC_X86_REG_CR0) | CR0_MP | CR0_NE)
        uc.reg_write(
            x86.UC_X86_REG_CR4,
            uc.reg_read(x86.UC_X86_REG_CR4) | CR4_TSD | CR4_OSFXSR | CR4_OSXMMEXCPT,
        )
        uc.reg_write(x86.UC_X86_REG_FPCW, 0x37F)
        uc.reg_write(x86.UC_X86_REG_MXCSR, 0x1F80)

    # --- the TLB -------------------------------------------------------------------------

    def _tlb_fill(self, uc: Uc, vaddr: int, access: int, entry: object, _data: object) -> bool:
        self.tlb_fills += 1
        kind = _ACCESS.get(access, Prot.READ)
        user = self._cs.read()[0] & 3 == 3
        if user and self.gate_open_paddr is not None and self.memory.bytes[self.gate_open_paddr]:
            user = False
        self._in_fill = True
        try:
            found = (
                self.space.translate(vaddr, kind, user)
                if self.space is not None
                else self.kernel.translate(vaddr, kind, user)
            )
        except OutOfFrames:
            found, self.out_of_frames = None, True
        finally:
            self._in_fill = False
        if found is None:
            self.last_fault = (vaddr, kind)
            return False
        entry.paddr = found[0] << PAGE_SHIFT  # type: ignore[attr-defined]
        entry.perms = int(found[1])  # type: ignore[attr-defined]
        return True

    def flush_tlb(self) -> None:
        """Forget every cached translation (after a page-table change)."""
        self.uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)
        self.drop_host_translations()

    def drop_host_translations(self) -> None:
        for listener in self.translation_listeners:
            listener()

    def use_native_interrupt_hook(self, address: int, data: int) -> None:
        """Replace the Python ``UC_HOOK_INTR`` hook by native code at ``address`` called
        with ``data``; that code calls ``on_interrupt`` for what it does not handle."""
        self.uc.hook_del(self._interrupt_hook)
        handle = uc_hook_h()
        status = uclib.uc_hook_add(
            self.uc._uch,
            ctypes.byref(handle),
            UC_HOOK_INTR,
            ctypes.c_void_p(address),
            ctypes.c_void_p(data),
            ctypes.c_uint64(1),
            ctypes.c_uint64(0),
        )
        if status:
            raise UcError(status)
        self._interrupt_hook = handle.value

    def switch_address_space(self, space: AddressSpace | None) -> None:
        """Make ``space`` current (Linux's switch_mm): flush the TLB, count with its table."""
        if space is not self.space:
            self.space = space
            self.flush_tlb()
        self.counter.use_table(space.code_key() if space is not None else None)

    def _read_code(self, vaddr: int, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            addr = vaddr + len(out)
            found = (
                self.space.translate(addr, Prot.EXEC, user=False)
                if self.space
                else self.kernel.translate(addr, Prot.EXEC, user=False)
            )
            if found is None:
                break
            base = (found[0] << PAGE_SHIFT) | (addr & PAGE_MASK)
            take = min(n - len(out), PAGE_SIZE - (addr & PAGE_MASK))
            out += self.memory.bytes[base : base + take]
        return bytes(out)

    def _rewritable_code(self, vaddr: int, n: int) -> bool:
        space = self.space
        return space is not None and (
            space.writable_code(vaddr) or space.writable_code(vaddr + n - 1)
        )

    def invalidate_code(self, paddr: int, length: int) -> None:
        """Drop translated code of physical [paddr, paddr+length) after a host write to it.

        Inside the TLB-fill hook this is deferred to ``flush_deferred`` (the machine calls
        it at the next interrupt or slice end): a TLB flush there would re-enter the TLB.
        """
        if self._in_fill:
            self._deferred.append((paddr, length))
            return
        end = paddr + length
        while paddr < end:
            frame, offset = paddr >> PAGE_SHIFT, paddr & PAGE_MASK
            take = min(end - paddr, PAGE_SIZE - offset)
            self.kernel.map(FIXMAP_ALIAS, frame, Prot.READ | Prot.EXEC, user=True)
            self.flush_tlb()
            try:
                self.uc.ctl_remove_cache(FIXMAP_ALIAS + offset, FIXMAP_ALIAS + offset + take)
            finally:
                self.kernel.unmap(FIXMAP_ALIAS)
                self.flush_tlb()
            paddr += take
        self.counter.forget()

    def flush_deferred(self) -> None:
        pending, self._deferred = self._deferred, []
        for paddr, length in pending:
            self.invalidate_code(paddr, length)

    # --- registers and contexts ----------------------------------------------------------

    def registers(self) -> dict[str, int]:
        """eax..edi, esp, ebp, eip, eflags and the six segment selectors."""
        return dict(zip(REGISTERS, self._all.read(), strict=True))

    def batch(self, names: Sequence[str]) -> RegisterBatch:
        """A reusable fast reader of ``names`` (e.g. the system-call argument registers)."""
        return RegisterBatch(self.uc, names)

    def write_registers(self, values: Mapping[str, int]) -> None:
        """Write general registers, eip, eflags, and ds/es/fs/gs (cs and ss are not)."""
        for name, value in values.items():
            if name not in _WRITABLE:
                raise ValueError(f"register {name!r} cannot be written this way")
            self._write(name, value)

    def _write(self, name: str, value: int) -> None:
        status = uclib.uc_reg_write(
            self.uc._uch, UC_IDS[name], ctypes.byref(ctypes.c_uint32(value & 0xFFFFFFFF))
        )
        if status:
            raise UcError(status)

    def reg(self, name: str) -> int:
        return self._one[name].read()[0]

    def set_reg(self, name: str, value: int) -> None:
        """Write one general register, eip or eflags."""
        if name not in GENERAL:
            raise ValueError(f"register {name!r} cannot be written this way")
        self._write(name, value)

    def save_context(self, into: UcContext | None = None) -> UcContext:
        """The whole CPU state (registers, segment caches, FPU/SSE); TLB and caches aside."""
        if into is None:
            return self.uc.context_save()
        self.uc.context_update(into)
        return into

    def restore_context(self, context: UcContext) -> None:
        self.uc.context_restore(context)

    def enter_user(self, eip: int, esp: int) -> int:
        """From the boot context, prepare the iret into user mode at ``eip`` with stack
        ``esp``; returns where to start emulating (the trampoline)."""
        frame = struct.pack("<5I", eip, USER_CS, USER_EFLAGS, esp, USER_DS)
        kernel_esp = FIXMAP_STACK + PAGE_SIZE - len(frame)
        self.memory.write(self._frame_address(kernel_esp), frame)
        self.uc.reg_write(x86.UC_X86_REG_ESP, kernel_esp)
        return FIXMAP_ENTRY

    def set_tls(self, descriptors: list[bytes]) -> None:
        """Load the current process's TLS descriptors into GDT entries 6..8."""
        base = (self._gdt_frame << PAGE_SHIFT) + 8 * TLS_FIRST
        self.memory.write(base, b"".join(descriptors))
