"""The VM's view of the machine at a probe hit (the host Context of the runtime).

Registers are those of the trapping process as DProbes saw them at the int3: EIP is the
probe address + 1. For a user-space probe the "user" registers are the same set
(5.0 pointed ``uregs`` at the trap's pt_regs). Memory is the process's address space as
user mode sees it, so protected or unmapped bytes fault exactly as ``copy_from_user``
did. Register writes (``pop r``) are collected and applied when the handler ends.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from unicorn import UcError
from unicorn import x86_const as x86

from dprobes.runtime.cpu import FIXMAP_GDT, GDT_ENTRIES
from dprobes.runtime.uc_registers import UC_IDS
from dprobes.vm.context import Context
from dprobes.vm.registers import Register

if TYPE_CHECKING:
    from dprobes.runtime.machine import Machine
    from dprobes.runtime.process import Process

TASK_BASE = 0xC1000000
TASK_SIZE = 0x400
"""Without the guest kernel, ``push task`` gives a stable per-pid address in kernel space;
with it, the address of the process's ``task_struct``."""

_DESCRIPTORS = frozenset({"gdtr", "idtr"})
_SELECTORS = frozenset({"ldtr", "tr"})


class ProbeContext(Context):
    """One hit's registers and memory; ``changes`` holds the registers the handler wrote."""

    def __init__(
        self,
        machine: Machine,
        process: Process,
        registers: dict[str, int],
        user_registers: dict[str, int] | None = None,
    ) -> None:
        """``user_registers``: at a kernel probe, the user registers saved at kernel entry
        (``push u``); the handler then also reads kernel memory."""
        self.machine, self.process, self.regs = machine, process, registers
        self.user_regs = user_registers
        self.changes: dict[str, int] = {}

    def read_register(self, reg: Register, user: bool) -> int | None:
        name = reg.name
        if user and self.user_regs is not None:
            return self.user_regs.get(name)
        if name in self.regs:
            return self.regs[name]
        uc = self.machine.cpu.uc
        try:
            if name.startswith("fr"):
                return self._x87(int(name[2:]))
            key = UC_IDS.get(name)
            if key is None:
                return None
            if name in _DESCRIPTORS:
                _, base, limit, _ = uc.reg_read(key)
                return base << 16 | limit
            if name in _SELECTORS:
                return uc.reg_read(key)[0]
            return uc.reg_read(key)
        except (UcError, ValueError, TypeError):
            return None

    def _x87(self, index: int) -> int:
        """ST(i) as fxsave stores it: unicorn's FP0..7 are physical, ST(i) = FP[(TOP+i)&7]."""
        uc = self.machine.cpu.uc
        top = (uc.reg_read(x86.UC_X86_REG_FPSW) >> 11) & 7
        mantissa, exponent = uc.reg_read(x86.UC_X86_REG_FP0 + (top + index) % 8)
        return (exponent & 0xFFFF) << 64 | mantissa

    def write_register(self, reg: Register, user: bool, value: int) -> None:
        self.regs[reg.name] = value
        self.changes[reg.name] = value

    def read_msr(self, index: int) -> int | None:
        try:
            return self.machine.cpu.uc.msr_read(index)
        except UcError:
            return None

    def read_memory(self, address: int, size: int) -> bytes:
        return self.process.space.read(address, size, user=self.user_regs is None)

    def write_memory(self, address: int, data: bytes) -> None:
        self.process.space.write(address, data)

    def read_cstring(self, address: int, limit: int) -> bytes:
        return self.process.space.read_cstring(address, limit)

    def segment_base(self, selector: int) -> int | None:
        if selector & 4 or (selector >> 3) >= GDT_ENTRIES:
            return None  # no LDTs here
        descriptor = self.machine.cpu.kernel_read(FIXMAP_GDT + (selector & ~7), 8)
        low, high = struct.unpack("<II", descriptor)
        return (low >> 16) | (high & 0xFF) << 16 | (high & 0xFF000000)

    def pid(self) -> int:
        return self.process.pid

    def task(self) -> int:
        kernel = self.machine.guest_kernel
        if kernel is not None and self.process.pid in kernel.tasks:
            return kernel.task_address(self.process)
        return TASK_BASE + self.process.pid * TASK_SIZE

    def processor(self) -> int:
        return 0
