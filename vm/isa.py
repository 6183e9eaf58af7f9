"""The RPN instruction table: one row per opcode of the DProbes 5.0 interpreter.

Everything that knows about instructions reads this table: the assembler and the
disassembler (mnemonic, qualifier, operand kind), the PPDF codec and the decoder
(operand widths), the verifier (flow flags, register rule), the compiler's run-time
warnings (operand domain, variable scope), the interpreter and the JIT (one semantic
function per row, in table order; families read access width, scope, domain and register
rule from their row) and the native probe path (what a row needs from its host).

Encoding: one opcode byte, then the operand little-endian. ``rel32`` is relative to
the end of the operand. Stack effects are written ``before -> after`` with the top of
stack (TOS) rightmost; ``pops`` counts the words read from the top (consumed or left in
place) and ``pushes`` the words left in their place. tests/test_isa_rows.py checks the
stack effect, the raised codes and the columns by running every row.

Notes on the 5.0 quirks that are kept on purpose (see docs/rpn.md):

* ``sub`` computes TOS - NOS; ``div``/``idiv`` divide NOS by TOS and leave the
  remainder under the quotient.
* ``neg`` is bitwise NOT, not two's-complement negation.
* Shifts and rotates take the value from TOS and the count from NOS; the count is
  masked to 5 bits, as the i386 ``shl``/``rol`` instructions do.
* ``dup n`` leaves n copies, but stack-form ``dup`` leaves count+1 copies.
* Conditional jumps test TOS as a signed word and do not pop it.
* ``loop`` counts against ``jmpmax`` on every execution, taken or not.
* ``pbl n``/``pbr n`` with a bad bit index end the handler without an exception.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import Enum, Flag, auto
from typing import NamedTuple

from dprobes.vm.exceptions import ExceptionCode as Ex
from dprobes.vm.exceptions import OperandError
from dprobes.vm.registers import (
    GENERAL_REGISTERS,
    REGISTERS_BY_INDEX,
    SEGMENT_REGISTERS,
    Register,
)


class Operand(Enum):
    """Operand kinds: their encoded width, struct format and the values they accept."""

    # (role, size, struct format, lowest, highest); the role keeps same-width kinds distinct
    NONE = ("none", 0, "", 0, 0)
    REL32 = ("target", 4, "<i", -(2**31), 2**31 - 1)  # branch target, relative to its end
    IMM32 = ("word", 4, "<I", 0, 2**32 - 1)  # immediate word (negative text values wrap)
    U8 = ("u8", 1, "<B", 0, 0xFF)
    U16 = ("u16", 2, "<H", 0, 0xFFFF)
    S16 = ("s16", 2, "<h", -(2**15), 2**15 - 1)
    REG = ("register", 2, "<H", 0, 0xFFFF)  # register index, see vm.registers
    LV = ("local", 2, "<H", 0, 0xFFFF)  # local-variable index
    GV = ("global", 2, "<H", 0, 0xFFFF)  # global-variable index

    def __init__(self, role: str, size: int, fmt: str, lo: int, hi: int) -> None:
        self.role = role
        self.size = size
        self.fmt = fmt
        self.lo = lo
        self.hi = hi
        self.codec = struct.Struct(fmt) if fmt else None


class OpFlag(Flag):
    """Control-flow and verification properties of an opcode."""

    NONE = 0
    BRANCH = auto()  # has a rel32 target that execution may continue at
    NO_FALLTHROUGH = auto()  # never continues at the next instruction
    CALL = auto()  # pushes a call frame, returns to the next instruction
    HANDLER = auto()  # rel32 names an exception handler (sx)
    EXIT = auto()  # ends the handler (exit, exit_to, rem, abort)
    RESERVED = auto()  # named by 5.0 but not implemented: raises EX_INVALID_OPCODE


class HostNeed(Flag):
    """What an instruction needs from its host beyond the VM's own state (stack, variables,
    log, heap-free bookkeeping). A host that lacks a service must not run the instruction;
    the native probe path reads this to decide which handlers it can serve."""

    NONE = 0
    MEMORY_READ = auto()  # reads guest memory
    MEMORY_WRITE = auto()  # writes guest memory
    IO = auto()  # reads or writes an I/O port
    HEAP = auto()  # uses the probe's byte heap
    HOST_CALL = auto()  # a machine service: callk, seg2lin (see host_needs for registers)
    REGISTER_READ = auto()  # reads a register of the probe hit
    REGISTER_WRITE = auto()  # writes a register of the probe hit
    PROCESS = auto()  # reads the current task, process id or processor


class Scope(Enum):
    """What an instruction's index operand (immediate or popped) addresses."""

    LV = "lv"  # the program's local variables
    GV = "gv"  # the global variables
    PV = "pv"  # stack slots by absolute index (trace pv)
    SBP = "sbp"  # stack slots relative to the stack base pointer
    TSP = "tsp"  # stack slots relative to TOS

    @property
    def local(self) -> bool:
        """Local (not global) variables."""
        return self is Scope.LV

    @property
    def index_error(self) -> OperandError:
        """parm1 of the EX_INVALID_OPERAND a variable index past the array raises."""
        return OperandError.LOCAL_INDEX if self is Scope.LV else OperandError.GLOBAL_INDEX


class Domain(NamedTuple):
    """The values an operand (the immediate, or for a stack form the word it pops) must
    take at run time. The encoding allows others: a row that lists EX_INVALID_OPERAND
    raises it with ``error`` as parm1, any other ends the handler without an exception."""

    lo: int
    hi: int
    error: OperandError

    def admits(self, value: int) -> bool:
        return self.lo <= value <= self.hi


EXIT_FACILITY = Domain(1, 3, OperandError.EXIT_FACILITY)
BIT_INDEX = Domain(1, 32, OperandError.BIT_INDEX)


class RegisterRule(Enum):
    """Which flag of the register table (vm.registers.Register) a register operand must
    have: the instruction reads or writes that register set."""

    PUSH_R = "push_r"
    PUSH_U = "push_u"
    POP_R = "pop_r"
    POP_U = "pop_u"

    @property
    def user(self) -> bool:
        """The user-mode register set (not the one of the probe hit)."""
        return self in (RegisterRule.PUSH_U, RegisterRule.POP_U)

    def accepts(self, register: Register) -> bool:
        flag: bool = getattr(register, self.value)
        return flag


VARIABLE = -1
"""Stack effect that depends on the operand or on the stack (ros n, dup, log, push r)."""


@dataclass(frozen=True, slots=True)
class OpInfo:
    """One instruction: its encoding, its assembly syntax and what it does."""

    code: int
    name: str  # the 5.0 kernel name without the DP_ prefix
    mnemonic: str
    qualifier: str | None
    operand: Operand
    pops: int
    pushes: int
    flags: OpFlag
    raises: frozenset[Ex]
    effect: str  # stack effect, TOS rightmost
    summary: str
    aliases: tuple[str, ...] = field(default=())  # other qualifier spellings
    host: HostNeed = HostNeed.NONE
    width: int = 0  # bytes one memory, I/O or heap access moves
    scope: Scope | None = None  # what an index operand addresses
    domain: Domain | None = None  # run-time operand values, where narrower than the encoding
    register_rule: RegisterRule | None = None  # for a register operand

    @property
    def size(self) -> int:
        """Encoded length in bytes."""
        return 1 + self.operand.size

    @property
    def syntax(self) -> str:
        """Assembly form, e.g. ``push lv, <lv>``."""
        head = self.mnemonic if self.qualifier is None else f"{self.mnemonic} {self.qualifier}"
        if self.operand is Operand.NONE:
            return head
        sep = ", " if self.qualifier else " "
        return f"{head}{sep}<{self.operand.name.lower()}>"

    @property
    def is_exit(self) -> bool:
        return OpFlag.EXIT in self.flags


_F = OpFlag
_O = Operand
_MEM = frozenset({Ex.INVALID_ADDR})
_JMP = frozenset({Ex.MAX_JMPS})
_LV = frozenset({Ex.INVALID_OPERAND})
_HEAP = frozenset({Ex.HEAP_INVALID_HANDLE, Ex.HEAP_INVALID_OFFSET})
_LOG = frozenset({Ex.LOG_OVERFLOW})
_NONE: frozenset[Ex] = frozenset()
_H = HostNeed
_S = Scope
_R = RegisterRule


def _op(
    code: int,
    name: str,
    syntax: str,
    operand: Operand,
    pops: int,
    pushes: int,
    effect: str,
    summary: str,
    flags: OpFlag = OpFlag.NONE,
    raises: frozenset[Ex] = _NONE,
    aliases: tuple[str, ...] = (),
    host: HostNeed = HostNeed.NONE,
    width: int = 0,
    scope: Scope | None = None,
    domain: Domain | None = None,
    register_rule: RegisterRule | None = None,
) -> OpInfo:
    mnemonic, _, qualifier = syntax.partition(" ")
    return OpInfo(
        code,
        name,
        mnemonic,
        qualifier or None,
        operand,
        pops,
        pushes,
        flags,
        raises,
        effect,
        summary,
        aliases,
        host,
        width,
        scope,
        domain,
        register_rule,
    )


_RESERVED = frozenset({Ex.INVALID_OPCODE})

# fmt: off
TABLE: tuple[OpInfo, ...] = (
    # --- control flow ---------------------------------------------------------------
    _op(0x00, "NOP", "nop", _O.NONE, 0, 0, "->", "do nothing"),
    _op(0x01, "JMP", "jmp", _O.REL32, 0, 0, "->", "jump; counts toward jmpmax",
        _F.BRANCH | _F.NO_FALLTHROUGH, _JMP),
    _op(0x02, "JLT", "jlt", _O.REL32, 1, 1, "v -> v", "jump if (signed)TOS < 0", _F.BRANCH, _JMP),
    _op(0x03, "JLE", "jle", _O.REL32, 1, 1, "v -> v", "jump if (signed)TOS <= 0", _F.BRANCH, _JMP),
    _op(0x04, "JGT", "jgt", _O.REL32, 1, 1, "v -> v", "jump if (signed)TOS > 0", _F.BRANCH, _JMP),
    _op(0x05, "JGE", "jge", _O.REL32, 1, 1, "v -> v", "jump if (signed)TOS >= 0", _F.BRANCH, _JMP),
    _op(0x06, "JZ", "jz", _O.REL32, 1, 1, "v -> v", "jump if TOS == 0", _F.BRANCH, _JMP),
    _op(0x07, "JNZ", "jnz", _O.REL32, 1, 1, "v -> v", "jump if TOS != 0", _F.BRANCH, _JMP),
    _op(0x08, "LOOP", "loop", _O.REL32, 1, 1, "n -> n-1",
        "decrement TOS in place, jump if it is not 0; every loop counts toward jmpmax",
        _F.BRANCH, _JMP),
    _op(0x09, "CALL", "call", _O.REL32, 0, 0, "->",
        "push a 10-word call frame and jump; ret comes back to the next instruction",
        _F.BRANCH | _F.CALL, frozenset({Ex.CALL_STACK_OVERFLOW})),
    _op(0x0A, "RET", "ret", _O.NONE, 0, 0, "->",
        "pop the call frame and resume after the call; continues a pending exception",
        _F.NO_FALLTHROUGH, frozenset({Ex.CALL_STACK_OVERFLOW})),
    _op(0x0B, "ABORT", "abort", _O.NONE, 0, 0, "->", "end the handler and write no log",
        _F.EXIT | _F.NO_FALLTHROUGH),
    _op(0x0C, "REM", "rem", _O.NONE, 0, 0, "->",
        "end the handler and remove this probe after this hit", _F.EXIT | _F.NO_FALLTHROUGH),
    _op(0x0D, "EXIT", "exit", _O.NONE, 0, 0, "->", "end the handler", _F.EXIT | _F.NO_FALLTHROUGH),
    _op(0x0E, "EXIT_N", "exit_to", _O.U8, 0, 0, "->",
        "call exit facility n (1 kernel debugger, 2 crash dump, 3 core dump) and end",
        _F.EXIT | _F.NO_FALLTHROUGH, frozenset({Ex.INVALID_OPERAND}), domain=EXIT_FACILITY),
    _op(0x0F, "SUSPEND", "suspend", _O.NONE, 0, 0, "->", "reserved by 5.0, not implemented",
        _F.RESERVED, _RESERVED),
    _op(0x10, "RESUME", "resume", _O.NONE, 0, 0, "->", "reserved by 5.0, not implemented",
        _F.RESERVED, _RESERVED),
    _op(0x8D, "CALLK", "callk", _O.NONE, 0, 0, "->",
        "call the registered kernel hook with the interpreter state, then continue",
        raises=_RESERVED, host=_H.HOST_CALL),
    # --- logging --------------------------------------------------------------------
    _op(0x11, "SETMIN_I", "setmin", _O.U16, 0, 0, "->", "set this hit's minor id"),
    _op(0x12, "SETMIN", "setmin", _O.NONE, 1, 0, "v ->", "set this hit's minor id to (u16)v"),
    _op(0x13, "SETMAJ_I", "setmaj", _O.U16, 0, 0, "->", "set this hit's major id"),
    _op(0x14, "SETMAJ", "setmaj", _O.NONE, 1, 0, "v ->", "set this hit's major id to (u16)v"),
    _op(0x15, "LOG_STR", "log str", _O.NONE, 2, 0, "len addr ->",
        "log bytes at addr up to a NUL or len bytes: record token 1",
        raises=_MEM | _LOG, host=_H.MEMORY_READ),
    _op(0x17, "LOG_MRF", "log mrf", _O.NONE, 2, 0, "len addr ->",
        "log len bytes of memory at flat addr (truncated to fit): record token 0",
        raises=_MEM | _LOG, host=_H.MEMORY_READ),
    _op(0x1B, "LOG_I", "log", _O.U16, VARIABLE, 0, "w1 .. wn ->",
        "log n stack words raw, TOS first, no record prefix", raises=_LOG),
    _op(0x8A, "LOG", "log", _O.NONE, VARIABLE, 0, "w1 .. wn n ->",
        "log n stack words, TOS first: record token 7", raises=_LOG),
    _op(0x8B, "LOG_LV", "log lv", _O.NONE, 2, 0, "i n ->", "log lv[i..i+n-1]: record token 5",
        raises=_LV | _LOG, scope=_S.LV),
    _op(0x8C, "LOG_GV", "log gv", _O.NONE, 2, 0, "i n ->", "log gv[i..i+n-1]: record token 6",
        raises=_LV | _LOG, scope=_S.GV),
    _op(0x70, "PUSH_LP", "push lp", _O.NONE, 0, 1, "-> len",
        "push the log length (bytes, including the record header)"),
    _op(0x71, "PUSH_PLP", "push plp", _O.NONE, 0, 1, "-> len",
        "push the log length before the last log instruction"),
    _op(0x72, "POP_LP", "pop lp", _O.NONE, 1, 0, "len ->", "set the log length (rewind the log)"),
    # --- global variables -------------------------------------------------------------
    _op(0x1C, "ALLOC_GV", "alloc_gv", _O.NONE, 0, 0, "->", "reserved by 5.0, not implemented",
        _F.RESERVED, _RESERVED),
    _op(0x1D, "FREE_GV", "free_gv", _O.NONE, 0, 0, "->", "reserved by 5.0, not implemented",
        _F.RESERVED, _RESERVED),
    _op(0x1E, "FREE_GVI", "free_gvi", _O.NONE, 0, 0, "->", "reserved by 5.0, not implemented",
        _F.RESERVED, _RESERVED),
    _op(0x1F, "PUSH_GVI", "push gv", _O.GV, 0, 1, "-> gv[i]", "push a global variable",
        raises=_LV, scope=_S.GV),
    _op(0x20, "PUSH_GV", "push gv", _O.NONE, 1, 1, "i -> gv[i]", "push gv[(u16)i]", raises=_LV,
        scope=_S.GV),
    _op(0x21, "POP_GVI", "pop gv", _O.GV, 1, 0, "v ->", "gv[i] = v", raises=_LV,
        scope=_S.GV),
    _op(0x22, "POP_GV", "pop gv", _O.NONE, 2, 0, "i v ->", "gv[(u16)i] = v", raises=_LV,
        scope=_S.GV),
    _op(0x23, "MOVE_GVI", "move gv", _O.GV, 1, 1, "v -> v", "gv[i] = TOS, not popped", raises=_LV,
        scope=_S.GV),
    _op(0x24, "MOVE_GV", "move gv", _O.NONE, 2, 1, "v i -> v", "gv[(u16)i] = v", raises=_LV,
        scope=_S.GV),
    _op(0x25, "INC_GVI", "inc gv", _O.GV, 0, 0, "->", "gv[i] += 1", raises=_LV,
        scope=_S.GV),
    _op(0x26, "INC_GV", "inc gv", _O.NONE, 1, 0, "i ->", "gv[(u16)i] += 1", raises=_LV,
        scope=_S.GV),
    _op(0x27, "DEC_GVI", "dec gv", _O.GV, 0, 0, "->", "gv[i] -= 1", raises=_LV,
        scope=_S.GV),
    _op(0x28, "DEC_GV", "dec gv", _O.NONE, 1, 0, "i ->", "gv[(u16)i] -= 1", raises=_LV,
        scope=_S.GV),
    # --- local variables --------------------------------------------------------------
    _op(0x29, "PUSH_LVI", "push lv", _O.LV, 0, 1, "-> lv[i]", "push a local variable",
        raises=_LV, scope=_S.LV),
    _op(0x2A, "PUSH_LV", "push lv", _O.NONE, 1, 1, "i -> lv[i]", "push lv[(u16)i]", raises=_LV,
        scope=_S.LV),
    _op(0x2B, "POP_LVI", "pop lv", _O.LV, 1, 0, "v ->", "lv[i] = v", raises=_LV,
        scope=_S.LV),
    _op(0x2C, "POP_LV", "pop lv", _O.NONE, 2, 0, "i v ->", "lv[(u16)i] = v", raises=_LV,
        scope=_S.LV),
    _op(0x2D, "MOVE_LVI", "move lv", _O.LV, 1, 1, "v -> v", "lv[i] = TOS, not popped", raises=_LV,
        scope=_S.LV),
    _op(0x2E, "MOVE_LV", "move lv", _O.NONE, 2, 1, "v i -> v", "lv[(u16)i] = v", raises=_LV,
        scope=_S.LV),
    _op(0x2F, "INC_LVI", "inc lv", _O.LV, 0, 0, "->", "lv[i] += 1", raises=_LV,
        scope=_S.LV),
    _op(0x30, "INC_LV", "inc lv", _O.NONE, 1, 0, "i ->", "lv[(u16)i] += 1", raises=_LV,
        scope=_S.LV),
    _op(0x31, "DEC_LVI", "dec lv", _O.LV, 0, 0, "->", "lv[i] -= 1", raises=_LV,
        scope=_S.LV),
    _op(0x32, "DEC_LV", "dec lv", _O.NONE, 1, 0, "i ->", "lv[(u16)i] -= 1", raises=_LV,
        scope=_S.LV),
    # --- arithmetic and logic -------------------------------------------------------
    _op(0x33, "ADD", "add", _O.NONE, 2, 1, "a b -> a+b", "add, wrapping at 32 bits"),
    _op(0x34, "SUB", "sub", _O.NONE, 2, 1, "a b -> b-a", "subtract: TOS minus NOS (5.0 order)"),
    _op(0x35, "MUL", "mul", _O.NONE, 2, 1, "a b -> a*b", "multiply, low 32 bits"),
    _op(0x62, "DIV", "div", _O.NONE, 2, 2, "a b -> a%b a/b",
        "unsigned divide NOS by TOS: remainder, then quotient on top",
        raises=frozenset({Ex.DIV_BY_ZERO})),
    _op(0x63, "IDIV", "idiv", _O.NONE, 2, 2, "a b -> a%b a/b",
        "signed divide NOS by TOS, truncating toward zero", raises=frozenset({Ex.DIV_BY_ZERO})),
    _op(0x36, "NEG", "neg", _O.NONE, 1, 1, "a -> ~a", "bitwise NOT (5.0 calls it neg)"),
    _op(0x37, "AND", "and", _O.NONE, 2, 1, "a b -> a&b", "bitwise and"),
    _op(0x38, "OR", "or", _O.NONE, 2, 1, "a b -> a|b", "bitwise or"),
    _op(0x39, "XOR", "xor", _O.NONE, 2, 1, "a b -> a^b", "bitwise exclusive or"),
    _op(0x3A, "ROL_I", "rol", _O.U8, 1, 1, "v -> rol(v,n)", "rotate left by n & 31"),
    _op(0x3B, "ROL", "rol", _O.NONE, 2, 1, "n v -> rol(v,n)", "rotate left, count from NOS"),
    _op(0x3C, "ROR_I", "ror", _O.U8, 1, 1, "v -> ror(v,n)", "rotate right by n & 31"),
    _op(0x3D, "ROR", "ror", _O.NONE, 2, 1, "n v -> ror(v,n)", "rotate right, count from NOS"),
    _op(0x3E, "SHL_I", "shl", _O.U8, 1, 1, "v -> v<<n", "shift left by n & 31"),
    _op(0x3F, "SHL", "shl", _O.NONE, 2, 1, "n v -> v<<n", "shift left, count from NOS"),
    _op(0x40, "SHR_I", "shr", _O.U8, 1, 1, "v -> v>>n", "logical shift right by n & 31"),
    _op(0x41, "SHR", "shr", _O.NONE, 2, 1, "n v -> v>>n", "logical shift right, count from NOS"),
    _op(0x64, "PBL", "pbl", _O.NONE, 2, 1, "v k -> v'",
        "copy bit k-1 into all higher bits (k = 1..32)", raises=_LV, domain=BIT_INDEX),
    _op(0x65, "PBR", "pbr", _O.NONE, 2, 1, "v k -> v'",
        "copy bit k-1 into all lower bits (k = 1..32)", raises=_LV, domain=BIT_INDEX),
    _op(0x66, "PBL_I", "pbl", _O.U8, 1, 1, "v -> v'",
        "copy bit k-1 into all higher bits; a bad k ends the handler silently", domain=BIT_INDEX),
    _op(0x67, "PBR_I", "pbr", _O.U8, 1, 1, "v -> v'",
        "copy bit k-1 into all lower bits; a bad k ends the handler silently", domain=BIT_INDEX),
    _op(0x68, "PZL", "pzl", _O.NONE, 2, 1, "v k -> v'",
        "keep the low k bits (k = 32 clears all: i386 shift quirk)", raises=_LV, domain=BIT_INDEX),
    _op(0x69, "PZR", "pzr", _O.NONE, 2, 1, "v k -> v'",
        "clear bits 0..k-2, keep bits k-1..31", raises=_LV, domain=BIT_INDEX),
    _op(0x6A, "PZL_I", "pzl", _O.U8, 1, 1, "v -> v'", "keep the low k bits", raises=_LV,
        domain=BIT_INDEX),
    _op(0x6B, "PZR_I", "pzr", _O.U8, 1, 1, "v -> v'", "clear bits 0..k-2", raises=_LV,
        domain=BIT_INDEX),
    # --- stack ------------------------------------------------------------------------
    _op(0x4C, "PUSH", "push", _O.IMM32, 0, 1, "-> n", "push an immediate word"),
    _op(0x42, "XCHG", "xchg", _O.NONE, 2, 2, "a b -> b a", "exchange TOS and NOS"),
    _op(0x43, "DUP_I", "dup", _O.U8, 1, VARIABLE, "v -> v x n", "leave n copies of TOS"),
    _op(0x44, "DUP", "dup", _O.NONE, 2, VARIABLE, "c v -> v x (c+1)",
        "leave (u8)c + 1 copies of TOS (5.0 quirk)"),
    _op(0x45, "ROS", "ros", _O.U8, VARIABLE, 0, "w1 .. wn ->", "discard n words"),
    # --- registers and system variables ---------------------------------------------
    _op(0x46, "PUSH_R", "push r", _O.REG, VARIABLE, VARIABLE, "-> reg",
        "push a register as of the probe hit", host=_H.REGISTER_READ, register_rule=_R.PUSH_R),
    _op(0x47, "POP_R", "pop r", _O.REG, 1, 0, "v ->", "write a register of the probe hit",
        host=_H.REGISTER_WRITE, register_rule=_R.POP_R),
    _op(0x48, "PUSH_U", "push u", _O.REG, VARIABLE, VARIABLE, "-> reg",
        "push a user-mode register (FPU/SSE here too)", host=_H.REGISTER_READ,
        register_rule=_R.PUSH_U),
    _op(0x49, "POP_U", "pop u", _O.REG, 1, 0, "v ->", "write a user-mode register",
        host=_H.REGISTER_WRITE, register_rule=_R.POP_U),
    _op(0x5D, "PUSH_TASK", "push task", _O.NONE, 0, 1, "-> task", "push the current task address",
        host=_H.PROCESS),
    _op(0x5E, "PUSH_PID", "push pid", _O.NONE, 0, 1, "-> pid", "push the current process id",
        host=_H.PROCESS),
    _op(0x5F, "PUSH_PROCID", "push procid", _O.NONE, 0, 1, "-> cpu", "push the processor number",
        host=_H.PROCESS),
    _op(0x90, "PUSH_WID", "push wid", _O.NONE, 0, 1, "-> -32",
        "push the word width, negative for little-endian (i386: -32)"),
    # --- memory and IO ----------------------------------------------------------------
    _op(0x4D, "PUSH_MEM_U8", "push mem_u8", _O.NONE, 1, 1, "addr -> v", "read a byte",
        raises=_MEM, aliases=("m8",), host=_H.MEMORY_READ, width=1),
    _op(0x4E, "PUSH_MEM_U16", "push mem_u16", _O.NONE, 1, 1, "addr -> v", "read 2 bytes",
        raises=_MEM, aliases=("m16",), host=_H.MEMORY_READ, width=2),
    _op(0x4F, "PUSH_MEM_U32", "push mem_u32", _O.NONE, 1, 1, "addr -> v", "read 4 bytes",
        raises=_MEM, aliases=("m32",), host=_H.MEMORY_READ, width=4),
    _op(0x50, "PUSH_MEM_U64", "push mem_u64", _O.NONE, 1, 2, "addr -> hi lo",
        "read 8 bytes, low word on top", raises=_MEM, aliases=("m64",), host=_H.MEMORY_READ,
        width=8),
    _op(0x51, "POP_MEM_U8", "pop mem_u8", _O.NONE, 2, 0, "addr v ->", "write the low byte of v",
        raises=_MEM, aliases=("m8",), host=_H.MEMORY_WRITE, width=1),
    _op(0x52, "POP_MEM_U16", "pop mem_u16", _O.NONE, 2, 0, "addr v ->", "write 2 bytes",
        raises=_MEM, aliases=("m16",), host=_H.MEMORY_WRITE, width=2),
    _op(0x53, "POP_MEM_U32", "pop mem_u32", _O.NONE, 2, 0, "addr v ->", "write 4 bytes",
        raises=_MEM, aliases=("m32",), host=_H.MEMORY_WRITE, width=4),
    _op(0x54, "POP_MEM_U64", "pop mem_u64", _O.NONE, 3, 0, "addr hi lo ->",
        "write lo at addr and hi at addr+4", raises=_MEM, aliases=("m64",), host=_H.MEMORY_WRITE,
        width=8),
    _op(0x60, "VFY_R", "vfy r", _O.NONE, 1, 1, "addr -> 0|1", "0 if the byte at addr is readable",
        host=_H.MEMORY_READ, width=1),
    _op(0x61, "VFY_RW", "vfy rw", _O.NONE, 1, 1, "addr -> 0|1",
        "0 if the byte at addr is readable and writable (reads and writes it back)",
        host=_H.MEMORY_READ | _H.MEMORY_WRITE, width=1),
    _op(0xB0, "SEG2LIN", "seg2lin", _O.NONE, 2, 1, "sel off -> lin",
        "selector:offset to a linear address", raises=frozenset({Ex.SEG_FAULT}),
        host=_H.HOST_CALL),
    _op(0xB1, "PUSH_IO_U8", "push io_u8", _O.NONE, 1, 1, "port -> v", "in byte",
        aliases=("io8",), host=_H.IO, width=1),
    _op(0xB2, "PUSH_IO_U16", "push io_u16", _O.NONE, 1, 1, "port -> v", "in word",
        aliases=("io16",), host=_H.IO, width=2),
    _op(0xB3, "PUSH_IO_U32", "push io_u32", _O.NONE, 1, 1, "port -> v", "in dword",
        aliases=("io32",), host=_H.IO, width=4),
    _op(0xB4, "POP_IO_U8", "pop io_u8", _O.NONE, 2, 0, "port v ->", "out byte",
        aliases=("io8",), host=_H.IO, width=1),
    _op(0xB5, "POP_IO_U16", "pop io_u16", _O.NONE, 2, 0, "port v ->", "out word",
        aliases=("io16",), host=_H.IO, width=2),
    _op(0xB6, "POP_IO_U32", "pop io_u32", _O.NONE, 2, 0, "port v ->", "out dword",
        aliases=("io32",), host=_H.IO, width=4),
    # --- exceptions and stack traces ------------------------------------------------
    _op(0x6C, "SX", "sx", _O.REL32, 0, 0, "->", "set the current frame's exception handler",
        _F.BRANCH | _F.HANDLER),
    _op(0x6D, "UX", "ux", _O.NONE, 0, 0, "->", "clear the current frame's exception handler"),
    _op(0x6E, "RX", "rx", _O.NONE, 3, 3, "p2 p1 code -> p2 p1 code",
        "raise a user exception from the top three words (not popped, not masked)",
        _F.NO_FALLTHROUGH, frozenset({Ex.USER})),
    _op(0x6F, "PUSH_X", "push x", _O.NONE, 0, 3, "-> p2 p1 code",
        "push the current or last exception"),
    _op(0x73, "LOG_ST", "log st", _O.NONE, 0, 0, "->", "append a stack trace to the exception log"),
    _op(0x74, "PURGE_ST", "purge st", _O.NONE, 0, 0, "->", "empty the exception log"),
    _op(0x75, "TRACE_LV", "trace lv", _O.NONE, 2, 0, "i n ->",
        "include lv[i..i+n-1] in this frame's stack traces", scope=_S.LV),
    _op(0x76, "TRACE_GV", "trace gv", _O.NONE, 2, 0, "i n ->",
        "include gv[i..i+n-1] in this frame's stack traces", scope=_S.GV),
    _op(0x77, "TRACE_PV", "trace pv", _O.NONE, 2, 0, "i n ->",
        "include stack slots i..i+n-1 (absolute) in this frame's stack traces", scope=_S.PV),
    _op(0x82, "PUSH_STP", "push stp", _O.NONE, 0, 1, "-> len", "push the exception-log length"),
    _op(0x83, "POP_STP", "pop stp", _O.NONE, 1, 0, "len ->", "set the exception-log length"),
    # --- frame (SBP/TOS relative) access -------------------------------------------
    _op(0x78, "PUSH_SBP", "push sbp", _O.NONE, 1, 1, "k -> S[sbp+k]", "push a frame slot",
        scope=_S.SBP),
    _op(0x79, "POP_SBP", "pop sbp", _O.NONE, 2, 0, "k v ->", "S[sbp+k] = v",
        scope=_S.SBP),
    _op(0x7A, "PUSH_TSP", "push tsp", _O.NONE, 1, 1, "k -> S[tos+k]",
        "push the slot k below TOS (after popping k)", scope=_S.TSP),
    _op(0x7B, "POP_TSP", "pop tsp", _O.NONE, 2, 0, "k v ->", "S[tos+k] = v, after both pops",
        scope=_S.TSP),
    _op(0x7C, "PUSH_SBP_I", "push sbp", _O.S16, 0, 1, "-> S[sbp+k]", "push a frame slot",
        scope=_S.SBP),
    _op(0x7D, "POP_SBP_I", "pop sbp", _O.S16, 1, 0, "v ->", "S[sbp+k] = v",
        scope=_S.SBP),
    _op(0x7E, "PUSH_TSP_I", "push tsp", _O.S16, 0, 1, "-> S[tos+k]",
        "push the slot k below TOS (k = 0 dup, 1 over)", scope=_S.TSP),
    _op(0x7F, "POP_TSP_I", "pop tsp", _O.S16, 1, 0, "v ->",
        "S[tos+k] = v, slot computed before the pop (k = 0 drop, 1 nip)", scope=_S.TSP),
    _op(0x80, "COPY_SBP_I", "copy sbp", _O.S16, 1, 1, "v -> v", "S[sbp+k] = TOS",
        scope=_S.SBP),
    _op(0x81, "COPY_TSP_I", "copy tsp", _O.S16, 1, 1, "v -> v", "S[tos+k] = TOS",
        scope=_S.TSP),
    _op(0x88, "COPY_SBP", "copy sbp", _O.NONE, 2, 1, "v k -> v", "S[sbp+k] = new TOS",
        scope=_S.SBP),
    _op(0x89, "COPY_TSP", "copy tsp", _O.NONE, 2, 1, "v k -> v", "S[tos+k] = new TOS",
        scope=_S.TSP),
    _op(0x84, "SAVE_SBP", "save sbp", _O.NONE, 0, 1, "-> sbp", "push the stack base pointer"),
    _op(0x85, "RESTORE_SBP", "restore sbp", _O.NONE, 1, 0, "v ->", "sbp = v & 1023"),
    _op(0x86, "SAVE_TSP", "save tsp", _O.NONE, 0, 1, "-> tos", "push the TOS index"),
    _op(0x87, "RESTORE_TSP", "restore tsp", _O.NONE, VARIABLE, VARIABLE, "v ->", "tos = v & 1023"),
    # --- byte heap --------------------------------------------------------------------
    _op(0x8E, "MALLOC", "malloc", _O.NONE, 1, 1, "size -> handle", "allocate from the probe heap",
        raises=frozenset({Ex.HEAP_NOMEM}), host=_H.HEAP),
    _op(0x8F, "FREE", "free", _O.NONE, 1, 0, "handle ->", "free a heap block",
        raises=frozenset({Ex.HEAP_INVALID_HANDLE}), host=_H.HEAP),
    _op(0x91, "PUSHH_U8_I", "pushh u8", _O.U16, 2, VARIABLE, "h off -> v1 .. vn",
        "push n bytes from a heap block", raises=_HEAP, host=_H.HEAP, width=1),
    _op(0x92, "PUSHH_U16_I", "pushh u16", _O.U16, 2, VARIABLE, "h off -> v1 .. vn",
        "push n u16 values from a heap block", raises=_HEAP, host=_H.HEAP, width=2),
    _op(0x93, "PUSHH_U32_I", "pushh u32", _O.U16, 2, VARIABLE, "h off -> v1 .. vn",
        "push n u32 values from a heap block", raises=_HEAP, host=_H.HEAP, width=4),
    _op(0x94, "PUSHH_U64_I", "pushh u64", _O.U16, 2, VARIABLE, "h off -> v1 v1 .. vn vn",
        "push n u64 values, each as its low word twice (5.0 quirk)", raises=_HEAP, host=_H.HEAP,
        width=8),
    _op(0x95, "POPH_U8_I", "poph u8", _O.U16, VARIABLE, 0, "v1 .. vn h off ->",
        "pop n bytes into a heap block, first popped at the lowest offset", raises=_HEAP,
        host=_H.HEAP, width=1),
    _op(0x96, "POPH_U16_I", "poph u16", _O.U16, VARIABLE, 0, "v1 .. vn h off ->",
        "pop n u16 values into a heap block", raises=_HEAP, host=_H.HEAP, width=2),
    _op(0x97, "POPH_U32_I", "poph u32", _O.U16, VARIABLE, 0, "v1 .. vn h off ->",
        "pop n u32 values into a heap block", raises=_HEAP, host=_H.HEAP, width=4),
    _op(0x98, "POPH_U64_I", "poph u64", _O.U16, VARIABLE, 0, "v1 .. vn h off ->",
        "pop n u64 values (low word first) into a heap block", raises=_HEAP, host=_H.HEAP, width=8),
)
# fmt: on

OPS_BY_CODE: dict[int, OpInfo] = {op.code: op for op in TABLE}
OPS_BY_NAME: dict[str, OpInfo] = {op.name: op for op in TABLE}


def _syntax_index() -> dict[tuple[str, str | None], tuple[OpInfo, ...]]:
    """(mnemonic, qualifier) -> the rows written that way, operand form first."""
    index: dict[tuple[str, str | None], list[OpInfo]] = {}
    for op in TABLE:
        for qualifier in (op.qualifier, *op.aliases):
            index.setdefault((op.mnemonic, qualifier), []).append(op)
    return {k: tuple(sorted(v, key=lambda o: o.operand is Operand.NONE)) for k, v in index.items()}


OPS_BY_SYNTAX = _syntax_index()
MNEMONIC_ALIASES = {"remove": "rem"}
"""Other spellings of a whole mnemonic."""
MNEMONICS = frozenset(m for m, _ in OPS_BY_SYNTAX)
QUALIFIERS: dict[str, frozenset[str]] = {
    m: frozenset(q for mm, q in OPS_BY_SYNTAX if mm == m and q is not None) for m in MNEMONICS
}

_PLAIN_REGISTERS = frozenset(r.index for r in GENERAL_REGISTERS)


def host_needs(op: OpInfo, operand: int | None) -> HostNeed:
    """What one decoded instruction needs from its host: its row's needs, and for a
    register operand a host call where the register is not a plain one of the general set
    (system, FPU/SSE, cpuid and MSR registers) or the write loads a segment register."""
    needs = op.host
    if needs & (HostNeed.REGISTER_READ | HostNeed.REGISTER_WRITE) and operand is not None:
        register = REGISTERS_BY_INDEX.get(operand)
        if (
            register is None
            or register.index not in _PLAIN_REGISTERS
            or (needs & HostNeed.REGISTER_WRITE and register.index in SEGMENT_REGISTERS)
        ):
            needs |= HostNeed.HOST_CALL
    return needs


assert len(OPS_BY_CODE) == len(TABLE), "duplicate opcode number in TABLE"
assert len(OPS_BY_NAME) == len(TABLE), "duplicate opcode name in TABLE"
