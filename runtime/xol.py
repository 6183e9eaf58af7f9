"""Stepping the probed instruction out of line (what kprobes did for DProbes 5.x).

The int3 replaced the first byte of the probed instruction, so after the handler the
original instruction must still run once. It runs from a copy in an execute-only slot of
the process ("out of line"), single-stepped with EFLAGS.TF; the debug trap that follows
hands control back to the runtime, which puts EIP and the stack right as if the
instruction had run in place:

* most instructions, and every *relative* branch, call or loop: the CPU computed its
  next EIP relative to the copy, so the real one is ``orig + (eip - slot)``;
* a call also pushed a return address inside the slot: it becomes ``orig + length``;
* absolute transfers (ret, iret, indirect and far jmp/call) left the right EIP already;
* pushf pushed EFLAGS with the single-step TF bit set, which the program must not see;
* ``push r32`` (one byte, the usual first instruction of a function) is not stepped at
  all but emulated, as DProbes 1.x emulated some opcodes; only when its store cannot be
  done in place is it stepped like any other instruction.

The plan (``plan_step``) is the one decision both the Python path (``runtime.trap3``)
and the native hook (``runtime.native``) act on; the repair sets below are what both
apply after the step.

Capstone decodes the instruction; its ``branch_relative`` group covers loop and jecxz,
which the jump group misses.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, auto
from functools import cache

import capstone

MAX_INSN_LENGTH = 15
TRAP_FLAG = 0x100


class StepKind(Enum):
    RELOCATE = auto()  # eip = orig + (eip - slot)
    CALL_RELATIVE = auto()  # relocate eip, fix the pushed return address
    CALL_ABSOLUTE = auto()  # keep eip, fix the pushed return address
    ABSOLUTE = auto()  # keep eip
    PUSHF = auto()  # relocate eip, clear TF in the pushed flags
    PUSH_R32 = auto()  # emulated (esp -= 4, [esp] = register); stepped: relocate eip


RELOCATED = frozenset(
    {StepKind.RELOCATE, StepKind.CALL_RELATIVE, StepKind.PUSHF, StepKind.PUSH_R32}
)
"""Kinds whose EIP after the step is relative to the copy: ``orig + (eip - slot)``."""
RETURN_ADDRESS = frozenset({StepKind.CALL_RELATIVE, StepKind.CALL_ABSOLUTE})
"""Kinds that pushed a return address inside the slot: it becomes ``orig + length``."""

PUSH_EAX = 0x50
"""The opcode of ``push eax``; ``PUSH_EAX + n`` pushes register n of ``PUSH_ORDER``."""
PUSH_ORDER = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")


@dataclass(frozen=True, slots=True)
class StepPlan:
    """How to step the instruction at ``address`` out of line and repair the result."""

    address: int
    code: bytes  # the instruction's bytes as stepped (first byte as before the probe)
    kind: StepKind
    text: str  # "mnemonic operands", for listings and reports

    @property
    def length(self) -> int:
        return len(self.code)

    @property
    def pushed(self) -> str:
        """The register an emulated ``push r32`` stores (``push esp``: the old esp)."""
        assert self.kind is StepKind.PUSH_R32
        return PUSH_ORDER[self.code[0] - PUSH_EAX]


class NotAnInstruction(ValueError):
    """The bytes at an address do not decode as an i386 instruction."""


@cache
def decoder() -> capstone.Cs:
    """A shared capstone i386 decoder with operand details."""
    cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)
    cs.detail = True
    return cs


def _kind(insn: capstone.CsInsn) -> StepKind:
    if len(insn.bytes) == 1 and PUSH_EAX <= insn.bytes[0] < PUSH_EAX + len(PUSH_ORDER):
        return StepKind.PUSH_R32
    groups = set(insn.groups)
    relative = capstone.CS_GRP_BRANCH_RELATIVE in groups
    if capstone.CS_GRP_CALL in groups:
        return StepKind.CALL_RELATIVE if relative else StepKind.CALL_ABSOLUTE
    if relative:
        return StepKind.RELOCATE
    if groups & {capstone.CS_GRP_RET, capstone.CS_GRP_IRET, capstone.CS_GRP_JUMP}:
        return StepKind.ABSOLUTE
    if insn.mnemonic in ("pushfd", "pushf"):
        return StepKind.PUSHF
    return StepKind.RELOCATE


def plan_step(code: bytes, address: int) -> StepPlan:
    """Decode the instruction at the start of ``code`` (its original bytes)."""
    insn = next(decoder().disasm(code[:MAX_INSN_LENGTH], address, 1), None)
    if insn is None:
        raise NotAnInstruction(f"no i386 instruction decodes at 0x{address:08x}")
    text = f"{insn.mnemonic} {insn.op_str}".strip()
    return StepPlan(address, bytes(insn.bytes), _kind(insn), text)


def instruction_starts(code: bytes, start: int) -> set[int]:
    """Addresses where a linear sweep from ``start`` finds instructions (a boundary check)."""
    found: set[int] = set()
    offset = 0
    cs = decoder()
    while offset < len(code):
        resumed = offset
        for address, size, _, _ in cs.disasm_lite(code[offset:], start + offset):
            found.add(address)  # capstone decodes up to the first undecodable byte
            offset = address - start + size
        if offset == resumed:  # undecodable byte: resynchronise after it
            offset += 1
    return found


@dataclass(frozen=True, slots=True)
class StepResult:
    """What the runtime must write back after the debug trap."""

    eip: int
    stack_word: int | None = None  # new value for the word at ESP, if any


def finish_step(
    plan: StepPlan, slot: int, eip: int, top_of_stack: int, trap_flag_was_set: bool
) -> StepResult:
    """Repair EIP (and the word at ESP) after the copy at ``slot`` was single-stepped."""
    if plan.kind in RELOCATED:
        eip = (plan.address + (eip - slot)) & 0xFFFFFFFF
    if plan.kind in RETURN_ADDRESS:
        return StepResult(eip, (plan.address + plan.length) & 0xFFFFFFFF)
    if plan.kind is StepKind.PUSHF:
        flags = top_of_stack if trap_flag_was_set else top_of_stack & ~TRAP_FLAG
        return StepResult(eip, flags)
    return StepResult(eip)
