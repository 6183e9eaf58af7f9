"""The i386 register table of the DProbes 5.0 interpreter.

Each register has the u16 index that ``push r``/``push u``/``pop r``/``pop u`` encode,
which of those four instructions accept it, and how many stack words a push produces.
Multi-word registers are pushed most significant part first so that the low word ends on
top: gdtr/idtr push base then limit, fr0-fr7 push bytes 8-9, 4-7, 0-3, xmm0-7 push four
words low word last, msr pushes edx then eax, cpuid pushes edx, ecx, ebx, eax.
"""

from dataclasses import dataclass
from enum import Enum, auto


class RegisterShape(Enum):
    """How a register value becomes stack words."""

    WORD = auto()  # one 32-bit word
    DESCRIPTOR = auto()  # gdtr/idtr: 48-bit (base << 16 | limit) -> base, limit
    X87 = auto()  # 80-bit x87 register -> bytes 8-9, 4-7, 0-3
    XMM = auto()  # 128-bit -> four words, low word on top
    MSR = auto()  # pops the MSR number, pushes edx then eax
    CPUID = auto()  # pops the leaf, pushes edx, ecx, ebx, eax


VALUE_BITS = {
    RegisterShape.WORD: 32,
    RegisterShape.DESCRIPTOR: 48,
    RegisterShape.X87: 80,
    RegisterShape.XMM: 128,
}
"""How wide a register's value is (a host gives MSR and CPUID values by number, not here)."""

WORDS_PUSHED = {
    RegisterShape.WORD: 1,
    RegisterShape.DESCRIPTOR: 2,
    RegisterShape.X87: 3,
    RegisterShape.XMM: 4,
    RegisterShape.MSR: 2,
    RegisterShape.CPUID: 4,
}


@dataclass(frozen=True, slots=True)
class Register:
    """One row of the register table; the four flags say which instructions accept it."""

    index: int
    name: str
    push_r: bool = False
    push_u: bool = False
    pop_r: bool = False
    pop_u: bool = False
    shape: RegisterShape = RegisterShape.WORD

    @property
    def reserved(self) -> bool:
        """True for indices 5.0 reserves (cr1, cr5-7, dr4-5, tr0-7): no instruction takes them."""
        return not (self.push_r or self.push_u or self.pop_r or self.pop_u)

    @property
    def pops(self) -> int:
        """Stack words a push of this register consumes first (cpuid leaf, MSR number)."""
        return 1 if self.shape in (RegisterShape.MSR, RegisterShape.CPUID) else 0

    @property
    def pushes(self) -> int:
        """Stack words a push of this register produces."""
        return WORDS_PUSHED[self.shape]


def _general(index: int, name: str, writable: bool) -> Register:
    return Register(index, name, True, True, writable, writable)


_ROWS: list[Register] = [
    _general(0x00, "cs", False),
    _general(0x01, "ds", True),
    _general(0x02, "es", True),
    _general(0x03, "fs", True),
    _general(0x04, "gs", True),
    _general(0x05, "ss", False),
    _general(0x06, "eax", True),
    _general(0x07, "ebx", True),
    _general(0x08, "ecx", True),
    _general(0x09, "edx", True),
    _general(0x0A, "edi", True),
    _general(0x0B, "esi", True),
    _general(0x0C, "eflags", False),
    _general(0x0D, "eip", False),
    _general(0x0E, "esp", False),
    _general(0x0F, "ebp", True),
    Register(0x20, "tr", push_r=True),
    Register(0x21, "ldtr", push_r=True),
    Register(0x22, "gdtr", push_r=True, shape=RegisterShape.DESCRIPTOR),
    Register(0x23, "idtr", push_r=True, shape=RegisterShape.DESCRIPTOR),
    Register(0x24, "cr0", push_r=True),
    Register(0x25, "cr1"),
    Register(0x26, "cr2", push_r=True),
    Register(0x27, "cr3", push_r=True),
    Register(0x28, "cr4", push_r=True),
    *(Register(0x29 + i, f"cr{5 + i}") for i in range(3)),
    *(Register(0x2C + i, f"dr{i}", push_r=True) for i in range(4)),
    Register(0x30, "dr4"),
    Register(0x31, "dr5"),
    Register(0x32, "dr6", push_r=True),
    Register(0x33, "dr7", push_r=True),
    *(Register(0x34 + i, f"tr{i}") for i in range(8)),
    Register(0x3C, "cpuid", push_r=True, push_u=True, shape=RegisterShape.CPUID),
    Register(0x3D, "msr", push_r=True, push_u=True, shape=RegisterShape.MSR),
    *(Register(0x3E + i, f"fr{i}", push_u=True, shape=RegisterShape.X87) for i in range(8)),
    Register(0x46, "fcw", push_u=True),
    Register(0x47, "fsw", push_u=True),
    Register(0x48, "ftw", push_u=True),
    Register(0x49, "fip", push_u=True),
    Register(0x4A, "fcs", push_u=True),
    Register(0x4B, "fdp", push_u=True),
    Register(0x4C, "fds", push_u=True),
    *(Register(0x4D + i, f"xmm{i}", push_u=True, shape=RegisterShape.XMM) for i in range(8)),
    Register(0x55, "mxcsr", push_u=True),
]

REGISTERS_BY_INDEX: dict[int, Register] = {r.index: r for r in _ROWS}
REGISTERS_BY_NAME: dict[str, Register] = {r.name: r for r in _ROWS}

GENERAL_REGISTERS = tuple(r for r in _ROWS if r.index <= 0x0F)
"""The pt_regs-style registers a host must always supply (cs..ebp)."""

SEGMENT_REGISTERS = frozenset(
    REGISTERS_BY_NAME[name].index for name in ("cs", "ds", "es", "fs", "gs", "ss")
)
"""Indices of the segment registers: a write to one loads a descriptor."""


def register_named(name: str) -> Register | None:
    """Look a register up by its (case-insensitive) name."""
    return REGISTERS_BY_NAME.get(name.lower())
