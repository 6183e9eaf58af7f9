"""Decode and encode RPN instructions, driven by the instruction table."""

from __future__ import annotations

from dataclasses import dataclass

from dprobes.vm.isa import OPS_BY_CODE, Operand, OpFlag, OpInfo


class DecodeError(ValueError):
    """Bytes that are not an instruction; ``offset`` is where decoding stopped."""

    def __init__(self, offset: int, message: str) -> None:
        super().__init__(f"at code offset {offset}: {message}")
        self.offset = offset
        self.reason = message


@dataclass(frozen=True, slots=True)
class Instruction:
    """A decoded instruction at ``offset``; ``operand`` is None for operand-less opcodes."""

    offset: int
    op: OpInfo
    operand: int | None

    @property
    def size(self) -> int:
        return self.op.size

    @property
    def end(self) -> int:
        """Offset of the next instruction."""
        return self.offset + self.op.size

    @property
    def target(self) -> int | None:
        """Absolute code offset a rel32 operand names (branch, call or handler target)."""
        if self.op.operand is Operand.REL32:
            assert self.operand is not None
            return self.end + self.operand
        return None

    @property
    def falls_through(self) -> bool:
        """Whether execution can continue at the next instruction."""
        return OpFlag.NO_FALLTHROUGH not in self.op.flags


def decode_one(code: bytes, offset: int) -> Instruction:
    """Decode the instruction at ``offset``; raise DecodeError if it is not one."""
    op = OPS_BY_CODE.get(code[offset])
    if op is None:
        raise DecodeError(offset, f"unknown opcode 0x{code[offset]:02x}")
    kind = op.operand
    if kind is Operand.NONE:
        return Instruction(offset, op, None)
    end = offset + 1 + kind.size
    if end > len(code):
        raise DecodeError(offset, f"{op.mnemonic}: operand truncated by the end of the code")
    assert kind.codec is not None
    (value,) = kind.codec.unpack_from(code, offset + 1)
    return Instruction(offset, op, value)


def decode_range(code: bytes, start: int, end: int) -> list[Instruction]:
    """Decode every instruction in ``code[start:end]``; the last one must end exactly at end."""
    out: list[Instruction] = []
    offset = start
    limited = code[:end]  # (sliced once: per instruction it made decoding quadratic)
    while offset < end:
        insn = decode_one(limited, offset)
        out.append(insn)
        offset = insn.end
    return out


def encode(op: OpInfo, operand: int | None = None) -> bytes:
    """Encode one instruction; the operand must fit the row's operand kind."""
    kind = op.operand
    if kind is Operand.NONE:
        if operand is not None:
            raise ValueError(f"{op.mnemonic} takes no operand")
        return bytes((op.code,))
    if operand is None or not kind.lo <= operand <= kind.hi:
        raise ValueError(f"{op.syntax}: operand {operand} outside {kind.lo}..{kind.hi}")
    assert kind.codec is not None
    return bytes((op.code,)) + kind.codec.pack(operand)
