"""CPU exceptions as the machine reports them, and what Linux does when nobody handles them.

DProbes lives in the trap handlers: a probe hit is an int3 (vector 3, EIP after it), the
end of the out-of-line step is a debug trap (vector 1) or another int3, a failing BOUND is
vector 5 with EIP still at the BOUND (the classic ``logonfault=yes`` case), and a page
fault may happen in the middle of a probed instruction. The machine therefore hands every
exception of a user process to one pluggable ``TrapHandler`` first (the probe manager
registers it) and applies the Linux default only if the handler declines: the signal
``default_signal`` names, which (nobody installing signal handlers here) kills the process
with a ``CrashReport``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import capstone

from dprobes.runtime.addrspace import Prot

if TYPE_CHECKING:
    from dprobes.runtime.machine import Machine
    from dprobes.runtime.process import Process

SIGILL, SIGTRAP, SIGBUS, SIGFPE, SIGKILL, SIGSEGV = 4, 5, 7, 8, 9, 11
DIVIDE, DEBUG, BREAKPOINT, OVERFLOW, BOUND, INVALID_OPCODE = 0, 1, 3, 4, 5, 6
GENERAL_PROTECTION, PAGE_FAULT, X87_ERROR, ALIGNMENT, SIMD_ERROR = 13, 14, 16, 17, 19

NAMES = {
    DIVIDE: "divide error (#DE)",
    DEBUG: "debug trap (#DB)",
    BREAKPOINT: "int3 (#BP)",
    OVERFLOW: "overflow (#OF)",
    BOUND: "BOUND range exceeded (#BR)",
    INVALID_OPCODE: "invalid opcode (#UD)",
    7: "device not available (#NM)",
    GENERAL_PROTECTION: "general protection (#GP)",
    PAGE_FAULT: "page fault (#PF)",
    X87_ERROR: "x87 FPU error (#MF)",
    ALIGNMENT: "alignment check (#AC)",
    SIMD_ERROR: "SIMD floating-point exception (#XM)",
}
SIGNALS = {
    DIVIDE: SIGFPE,
    DEBUG: SIGTRAP,
    BREAKPOINT: SIGTRAP,
    INVALID_OPCODE: SIGILL,
    X87_ERROR: SIGFPE,
    ALIGNMENT: SIGBUS,
    SIMD_ERROR: SIGFPE,
}
ONE_BYTE_TRAPS = frozenset({BREAKPOINT, OVERFLOW})
"""int3 (cc) and into (ce): EIP is after them. ``int n`` (cd nn) leaves EIP 2 bytes on;
a debug trap leaves it at the next instruction; faults leave it at the instruction."""

_DISASM = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)


@dataclass(frozen=True)
class Trap:
    """One exception of the current process, as the CPU left it.

    ``eip`` is EIP as the CPU reported it (after an int3, at a faulting instruction);
    ``instruction`` is the address of the instruction that caused it. For a page fault
    ``address`` is the faulting linear address and ``access`` what was attempted.
    """

    vector: int
    eip: int
    instruction: int
    address: int | None = None
    access: Prot | None = None

    @property
    def name(self) -> str:
        if self.vector >= 32:
            return f"int 0x{self.vector:x}"
        return NAMES.get(self.vector, f"exception {self.vector}")

    @property
    def description(self) -> str:
        """What a crash report says happened: the name, and the access of a page fault."""
        if self.vector == PAGE_FAULT and self.access is not None:
            return f"{self.name} on {self.access.name.lower()}"
        return self.name

    @property
    def default_signal(self) -> int:
        """What Linux delivers: SIGTRAP for int3/#DB, SIGSEGV for #BR, #GP, #PF, ..."""
        return SIGNALS.get(self.vector, SIGSEGV)

    @classmethod
    def from_cpu(
        cls, vector: int, eip: int, address: int | None = None, access: Prot | None = None
    ) -> Trap:
        at = eip - 1 if vector in ONE_BYTE_TRAPS else eip - 2 if vector >= 32 else eip
        return cls(vector, eip, at & 0xFFFFFFFF, address, access)


TrapHandler = Callable[["Machine", "Process", Trap], bool]
"""``handler(machine, process, trap) -> handled``.

Called with ``process`` current on ``machine.cpu`` (its registers are the live CPU
registers: ``machine.cpu.registers()``/``write_registers()``; its memory is
``process.space``). Return True when the trap was dealt with: the process continues at
whatever EIP the CPU now holds. Return False to let Linux's default action happen.
Vectors 0-31 and software ``int n`` (other than 0x80) come here; int3 and int1 inside
emulation (the handler may change EIP, e.g. to an out-of-line slot), page faults and #UD
just after emulation stopped.
"""


def describe_instruction(code: bytes, address: int) -> str:
    """Capstone's disassembly of the first instruction of ``code``, with its bytes."""
    for insn in _DISASM.disasm(code, address):
        text = f"{insn.mnemonic} {insn.op_str}".strip()
        return f"{text}  ({insn.bytes.hex(' ')})"
    return f"undecodable bytes {code[:8].hex(' ')}" if code else "unreadable instruction"
