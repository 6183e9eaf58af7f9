"""The host interface: what a probe handler can see of the machine it runs on.

A host (the emulated runtime, a test, a debugger) subclasses Context and answers
register, memory, IO and system-variable requests. Every method has a default, so a host
only implements what it has; an answer of None means "not available here" and the VM then
pushes zeros, as DProbes 5.0 did for registers the CPU lacked.

Memory accesses are byte-exact copies that may fault: a read or write walks the range in
increasing address order (wrapping at 4 GiB) and stops at the first inaccessible byte by
raising MemoryFault with that byte's address; bytes before it may already have been
written, as with the kernel's ``copy_to_user``.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import TYPE_CHECKING

from dprobes.vm.model import WORD_MASK
from dprobes.vm.registers import REGISTERS_BY_NAME, Register

if TYPE_CHECKING:
    from dprobes.vm.interp import Machine

UNPACK_UINT = {
    size: struct.Struct(fmt).unpack_from
    for size, fmt in ((1, "<B"), (2, "<H"), (4, "<I"), (8, "<Q"))
}
"""Little-endian unsigned readers of the ``push mem`` widths, by size in bytes."""
LIVE_SEGMENTS = frozenset({"fs", "gs"})
"""Not saved in pt_regs: 5.0 read and wrote them on the live CPU for both register sets."""


class MemoryFault(Exception):
    """A guest memory access failed at ``address`` (the first inaccessible byte)."""

    def __init__(self, address: int) -> None:
        super().__init__(f"memory fault at 0x{address:08x}")
        self.address = address & WORD_MASK


class Context:
    """Defaults: no registers, no memory (every access faults), idle IO, pid 0."""

    def read_register(self, reg: Register, user: bool) -> int | None:
        """Value of ``reg`` in the current (user=False) or user-mode register set."""
        return None

    def write_register(self, reg: Register, user: bool, value: int) -> None:
        """Write a writable register (the VM only asks for ones the table allows)."""

    def cpuid(self, leaf: int) -> tuple[int, int, int, int] | None:
        """(eax, ebx, ecx, edx) of CPUID ``leaf``."""
        return None

    def read_msr(self, index: int) -> int | None:
        """The 64-bit value of model-specific register ``index``."""
        return None

    def read_memory(self, address: int, size: int) -> bytes:
        """``size`` bytes at flat ``address``; raise MemoryFault at the first bad byte."""
        if size:
            raise MemoryFault(address)
        return b""

    def read_uint(self, address: int, size: int) -> int:
        """The little-endian unsigned value of ``read_memory(address, size)``, size 1, 2, 4, 8.

        ``push mem`` reads through this, so a host can answer a word without building a
        bytes object; an override must fault exactly as ``read_memory`` does.
        """
        return int.from_bytes(self.read_memory(address, size), "little")

    def write_memory(self, address: int, data: bytes) -> None:
        """Store ``data`` at flat ``address``; raise MemoryFault at the first bad byte."""
        if data:
            raise MemoryFault(address)

    def read_cstring(self, address: int, limit: int) -> bytes:
        """Bytes from ``address`` up to (not including) a NUL, at most ``limit`` bytes.

        Faults only on a byte actually reached before the NUL, as ``log str`` requires.
        """
        out = bytearray()
        while len(out) < limit:
            byte = self.read_memory((address + len(out)) & WORD_MASK, 1)[0]
            if byte == 0:
                break
            out.append(byte)
        return bytes(out)

    def io_read(self, port: int, size: int) -> int:
        """``in`` of ``size`` bytes (1, 2, 4) from ``port``."""
        return (1 << (8 * size)) - 1

    def io_write(self, port: int, size: int, value: int) -> None:
        """``out`` of ``size`` bytes to ``port``."""

    def segment_base(self, selector: int) -> int | None:
        """Linear base of a segment selector, or None if the selector is invalid."""
        return None

    def pid(self) -> int:
        return 0

    def task(self) -> int:
        """Address of the current task structure."""
        return 0

    def processor(self) -> int:
        return 0

    def callk(self, machine: Machine) -> bool:
        """The ``callk`` kernel hook; False means no hook is registered (EX_INVALID_OPCODE)."""
        return False


class MemoryContext(Context):
    """A plain in-memory host for tests and embedding.

    ``regs`` and ``user_regs`` map register names to values. A register with no separate
    user value is one register for both sets, as for a user-space probe (5.0 pointed
    ``uregs`` at the same pt_regs); fs and gs are always one register, read and written
    live from the CPU as 5.0 did. ``memory`` maps a start address
    to the bytes there, all readable and writable, and every other address faults.
    Multi-word registers take wide integers: gdtr/idtr ``base << 16 | limit``, fr0-7 80
    bits, xmm0-7 128 bits. ``segments`` maps selectors to bases; any other selector faults.
    """

    def __init__(
        self,
        regs: Mapping[str, int] | None = None,
        user_regs: Mapping[str, int] | None = None,
        memory: Mapping[int, bytes] | None = None,
        *,
        pid: int = 0,
        task: int = 0,
        processor: int = 0,
        segments: Mapping[int, int] | None = None,
        ports: Mapping[int, int] | None = None,
        msrs: Mapping[int, int] | None = None,
        cpuid: Mapping[int, tuple[int, int, int, int]] | None = None,
    ) -> None:
        self.regs = {_reg_name(k): v for k, v in (regs or {}).items()}
        self.user_regs = {_reg_name(k): v for k, v in (user_regs or {}).items()}
        for name in LIVE_SEGMENTS & self.user_regs.keys() - self.regs.keys():
            self.regs[name] = self.user_regs[name]
        self.regions = [
            [start & WORD_MASK, bytearray(data)] for start, data in (memory or {}).items()
        ]
        self._pid, self._task, self._processor = pid, task, processor
        self.segments = dict(segments or {})
        self.ports = dict(ports or {})
        self.io_writes: list[tuple[int, int, int]] = []
        self.msrs = dict(msrs or {})
        self.cpuid_leaves = dict(cpuid or {})
        self.callk_calls = 0

    def _set(self, reg: Register, user: bool) -> dict[str, int]:
        """The register set ``reg`` lives in: the user set only where one was given for it."""
        if user and reg.name in self.user_regs and reg.name not in LIVE_SEGMENTS:
            return self.user_regs
        return self.regs

    def read_register(self, reg: Register, user: bool) -> int | None:
        registers = self._set(reg, user) if user else self.regs  # the current set is regs
        return registers.get(reg.name)

    def write_register(self, reg: Register, user: bool, value: int) -> None:
        self._set(reg, user)[reg.name] = value

    def cpuid(self, leaf: int) -> tuple[int, int, int, int] | None:
        return self.cpuid_leaves.get(leaf)

    def read_msr(self, index: int) -> int | None:
        return self.msrs.get(index)

    def __init_subclass__(cls, **kwargs: object) -> None:
        """A subclass that changes ``read_memory`` gets word reads derived from it again."""
        super().__init_subclass__(**kwargs)
        if "read_memory" in cls.__dict__ and "read_uint" not in cls.__dict__:
            cls.read_uint = Context.read_uint  # type: ignore[method-assign]

    def _locate(self, address: int) -> tuple[bytearray, int] | None:
        for start, data in self.regions:
            offset = (address - start) & WORD_MASK
            if offset < len(data):
                return data, offset
        return None

    def read_memory(self, address: int, size: int) -> bytes:
        for start, data in self.regions:  # fast path: the range lies in one region
            offset = address - start
            if offset >= 0 and offset + size <= len(data):
                return bytes(data[offset : offset + size])
        return self._read_across(address, size)

    def read_uint(self, address: int, size: int) -> int:
        unpack = UNPACK_UINT[size]
        for start, data in self.regions:  # the fast path of read_memory
            offset = address - start
            if offset >= 0 and offset + size <= len(data):
                return unpack(data, offset)[0]
        return int.from_bytes(self._read_across(address, size), "little")

    def _read_across(self, address: int, size: int) -> bytes:
        """The slow path of a read: byte ranges region by region, wrapping at 4 GiB."""
        out = bytearray()
        while len(out) < size:
            at = (address + len(out)) & WORD_MASK
            found = self._locate(at)
            if found is None:
                raise MemoryFault(at)
            data, offset = found
            out += data[offset : offset + size - len(out)]
        return bytes(out)

    def write_memory(self, address: int, data: bytes) -> None:
        done = 0
        while done < len(data):
            at = (address + done) & WORD_MASK
            found = self._locate(at)
            if found is None:
                raise MemoryFault(at)
            region, offset = found
            chunk = data[done : done + len(region) - offset]
            region[offset : offset + len(chunk)] = chunk
            done += len(chunk)

    def region_bytes(self, start: int) -> bytes:
        """Current contents of the region given at ``start``."""
        for begin, data in self.regions:
            if begin == start & WORD_MASK:
                return bytes(data)
        raise KeyError(start)

    def io_read(self, port: int, size: int) -> int:
        return self.ports.get(port, WORD_MASK) & ((1 << (8 * size)) - 1)

    def io_write(self, port: int, size: int, value: int) -> None:
        self.io_writes.append((port, size, value))
        self.ports[port] = value

    def segment_base(self, selector: int) -> int | None:
        return self.segments.get(selector)

    def pid(self) -> int:
        return self._pid

    def task(self) -> int:
        return self._task

    def processor(self) -> int:
        return self._processor

    def callk(self, machine: Machine) -> bool:
        self.callk_calls += 1
        return True


def _reg_name(name: str) -> str:
    lowered = name.lower()
    if lowered not in REGISTERS_BY_NAME:
        raise ValueError(f"unknown register {name!r}")
    return lowered
