"""One semantic function per opcode of the instruction table (the interpreter tier), in
the table's order, as ``vm.jit.lower`` has its lowerings.

Each function takes the Machine, its pre-decoded argument and the index of the next
entry, and returns the index to continue at (or STOP). Families of rows share a factory
that reads what distinguishes them from the row's columns (access width, variable scope,
operand domain, register rule). Hot paths work on the stack list directly; everything
that can fail goes through ``Machine.raise_exception`` so the exception rules live in one
place. Deliberate departures from the 5.0 C code, all where 5.0 read or wrote outside its
buffers, are listed in docs/rpn.md.
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Callable
from typing import Any, Protocol

from dprobes.vm import stacktrace
from dprobes.vm.bytecode import Instruction
from dprobes.vm.context import MemoryFault
from dprobes.vm.exceptions import NO_HANDLER
from dprobes.vm.exceptions import ExceptionCode as Ex
from dprobes.vm.heap import ProbeHeap
from dprobes.vm.interp import ABOVE, BELOW, STOP, ExitKind, Frame, Machine, OpFunction
from dprobes.vm.isa import OPS_BY_NAME, HostNeed, Operand, OpFlag, OpInfo, Scope
from dprobes.vm.model import (
    INDEX_MASK,
    MAX_CALL_DEPTH,
    MEMORY_FAULT_RECORD,
    MIN_ST_SIZE,
    RECORD_PREFIX,
    SHIFT_MASK,
    SIGN_BIT,
    STACK_MASK,
    TOKEN_ASCII,
    TOKEN_GV_ENTRY,
    TOKEN_LOG,
    TOKEN_LV_ENTRY,
    TOKEN_MEMORY,
    TOKEN_MEMORY_FAULT,
    WORD_BITS,
    WORD_MASK,
    WORD_WIDTH,
)
from dprobes.vm.registers import REGISTERS_BY_INDEX, Register, RegisterShape

SEMANTICS: dict[str, OpFunction] = {}
"""Opcode name -> its semantic function, in table order (a test checks the order)."""
ARGUMENTS: dict[str, Callable[[Instruction, dict[int, int]], Any]] = {}


def semantic(*names: str) -> Callable[[OpFunction], OpFunction]:
    """Register ``fn`` as the meaning of the named opcodes."""

    def register(fn: OpFunction) -> OpFunction:
        for name in names:
            assert name in OPS_BY_NAME, name
            SEMANTICS[name] = fn
        return fn

    return register


def rows(factory: Callable[..., OpFunction], *names: str, **options: Any) -> None:
    """Register ``factory(row, **options)`` as the meaning of each named row."""
    for name in names:
        SEMANTICS[name] = factory(OPS_BY_NAME[name], **options)


def semantic_for(op: OpInfo) -> OpFunction:
    return SEMANTICS[op.name]


def build_argument(insn: Instruction, index_of: dict[int, int]) -> Any:
    """What the semantic function gets: an entry index for branches, the register row for
    a register operand, else the operand."""
    special = ARGUMENTS.get(insn.op.name)
    if special is not None:
        return special(insn, index_of)
    if OpFlag.RESERVED in insn.op.flags:
        return (insn.op.code, insn.offset)
    if insn.op.operand is Operand.REL32:
        assert insn.target is not None
        return index_of[insn.target]
    if insn.op.register_rule is not None:  # the verifier has checked the register index
        assert insn.operand is not None
        return REGISTERS_BY_INDEX[insn.operand]
    return insn.operand


def _signed(value: int) -> int:
    return value - (1 << WORD_BITS) if value & SIGN_BIT else value


# --- shared pieces ------------------------------------------------------------------
def _push_value(read: Callable[[Machine], int]) -> OpFunction:
    def push_value(m: Machine, arg: None, nxt: int) -> int:
        m.push(read(m))
        return nxt

    return push_value


# --- control flow -------------------------------------------------------------------
@semantic("NOP")
def nop(m: Machine, arg: None, nxt: int) -> int:
    return nxt


def take_jump(m: Machine, target: int, nxt: int) -> int:
    """A taken jump: count it against jmpmax first (once spent, every jump raises)."""
    if m.jmp_count >= m.jmpmax:
        return m.raise_exception(Ex.MAX_JMPS, m.jmpmax, 0, nxt)
    m.jmp_count += 1
    return target


@semantic("JMP")
def jmp(m: Machine, target: int, nxt: int) -> int:
    return take_jump(m, target, nxt)


def _conditional_jump(taken: Callable[[int], bool]) -> OpFunction:
    def jump(m: Machine, target: int, nxt: int) -> int:
        if taken(m.stack[m.tos]):
            return take_jump(m, target, nxt)
        return nxt

    return jump


semantic("JLT")(_conditional_jump(lambda v: v >= SIGN_BIT))
semantic("JLE")(_conditional_jump(lambda v: v == 0 or v >= SIGN_BIT))
semantic("JGT")(_conditional_jump(lambda v: 0 < v < SIGN_BIT))
semantic("JGE")(_conditional_jump(lambda v: v < SIGN_BIT))
semantic("JZ")(_conditional_jump(lambda v: v == 0))
semantic("JNZ")(_conditional_jump(lambda v: v != 0))


@semantic("LOOP")
def loop(m: Machine, target: int, nxt: int) -> int:
    count = m.jmp_count
    m.jmp_count = count + 1  # 5.0 counts even the loop that fails
    if count >= m.jmpmax:
        return m.raise_exception(Ex.MAX_JMPS, m.jmpmax, 0, nxt)
    tos = m.tos
    value = (m.stack[tos] - 1) & WORD_MASK
    m.stack[tos] = value
    return target if value else nxt


def _call_argument(insn: Instruction, index_of: dict[int, int]) -> tuple[int, int, int]:
    """Entry index of the callee, and the called and return offsets a frame records."""
    assert insn.target is not None
    return index_of[insn.target], insn.target, insn.end


ARGUMENTS["CALL"] = _call_argument


@semantic("CALL")
def call(m: Machine, arg: tuple[int, int, int], nxt: int) -> int:
    target, called, returns = arg
    if len(m.frames) > MAX_CALL_DEPTH:
        return m.raise_exception(Ex.CALL_STACK_OVERFLOW, MAX_CALL_DEPTH, 0, nxt)
    m.frames.append(Frame(m.sbp, called, returns))
    return target


@semantic("RET")
def ret(m: Machine, arg: None, nxt: int) -> int:
    if len(m.frames) == 1:
        return m.raise_exception(Ex.CALL_STACK_OVERFLOW, 0, 0, nxt)
    frame = m.frames.pop()
    m.sbp = frame.sbp
    if m.ex_pending:
        m.ex_hand = m.frames[-1].handler
        return m.dispatch()
    return m.index_of[frame.returns]


@semantic("ABORT")
def abort(m: Machine, arg: None, nxt: int) -> int:
    return m.finish(ExitKind.ABORT)


@semantic("REM")
def rem(m: Machine, arg: None, nxt: int) -> int:
    return m.finish(ExitKind.REM)


@semantic("EXIT")
def exit_(m: Machine, arg: None, nxt: int) -> int:
    return m.finish(ExitKind.EXIT)


def _exit_to(op: OpInfo) -> OpFunction:
    """exit_to n: a facility outside the row's domain raises EX_INVALID_OPERAND."""
    domain = op.domain
    assert domain is not None
    lo, hi, error = domain

    def exit_to(m: Machine, facility: int, nxt: int) -> int:
        if not lo <= facility <= hi:
            return m.raise_exception(Ex.INVALID_OPERAND, error, facility, nxt)
        m.exit_to = facility
        return m.finish(ExitKind.EXIT_TO)

    return exit_to


rows(_exit_to, "EXIT_N")


@semantic("SUSPEND", "RESUME")
def reserved(m: Machine, arg: tuple[int, int], nxt: int) -> int:
    opcode, offset = arg
    return m.raise_exception(Ex.INVALID_OPCODE, opcode, offset, nxt)


ARGUMENTS["CALLK"] = lambda insn, index_of: (insn.op.code, insn.offset)


@semantic("CALLK")
def callk(m: Machine, arg: tuple[int, int], nxt: int) -> int:
    if m.ctx.callk(m):
        return nxt
    return reserved(m, arg, nxt)


# --- logging ----------------------------------------------------------------------
def _set_id(field: str) -> OpFunction:
    def set_id(m: Machine, value: int | None, nxt: int) -> int:
        setattr(m, field, (m.pop() if value is None else value) & INDEX_MASK)
        return nxt

    return set_id


semantic("SETMIN_I", "SETMIN")(_set_id("minor"))
semantic("SETMAJ_I", "SETMAJ")(_set_id("major"))


def _set_from_stack(field: str, mask: int = WORD_MASK) -> OpFunction:
    def set_value(m: Machine, arg: None, nxt: int) -> int:
        setattr(m, field, m.pop() & mask)
        return nxt

    return set_value


def _overflow(m: Machine, nxt: int) -> int:
    return m.raise_exception(Ex.LOG_OVERFLOW, m.log_cap, 0, nxt)


def _log_words(m: Machine, count: int) -> None:
    """Pop ``count`` words into the log, TOS first (read in place: one pop call each is slow)."""
    stack, tos, at = m.stack, m.tos, m.log_len
    words = [stack[(tos + i) & STACK_MASK] for i in range(count)]
    m.tos = (tos + count) & STACK_MASK
    m.log[at : at + 4 * count] = struct.pack(f"<{count}I", *words)
    m.log_len = at + 4 * count


def _fault_record(m: Machine, address: int, nxt: int) -> int:
    """Roll back a failed ``log str``/``log mrf``: a 7-byte fault record, then EX_INVALID_ADDR."""
    at = m.log_len
    if at + MEMORY_FAULT_RECORD > m.log_cap:
        return _overflow(m, nxt)
    m.log[at : at + MEMORY_FAULT_RECORD] = struct.pack("<BHI", TOKEN_MEMORY_FAULT, 4, address)
    m.log_len = at + MEMORY_FAULT_RECORD
    return m.raise_exception(Ex.INVALID_ADDR, address, 0, nxt)


@semantic("LOG_STR")
def log_str(m: Machine, arg: None, nxt: int) -> int:
    address, length = m.pop(), m.pop()
    start = m.prev_log_len = m.log_len
    length = min(length, m.log_cap - start - RECORD_PREFIX)  # 5.0 let the prefix overrun logmax
    if length < 0:
        return _overflow(m, nxt)
    try:
        text = m.ctx.read_cstring(address, length)
    except MemoryFault as fault:
        return _fault_record(m, fault.address, nxt)
    end = start + RECORD_PREFIX + len(text)
    m.log[start:end] = struct.pack("<BH", TOKEN_ASCII, len(text)) + text
    m.log_len = m.prev_log_len = end
    return nxt


@semantic("LOG_MRF")
def log_mrf(m: Machine, arg: None, nxt: int) -> int:
    address, length = m.pop(), m.pop()
    start = m.prev_log_len = m.log_len
    if start + length + RECORD_PREFIX > m.log_cap:
        m.log_overflow = True
        length = m.log_cap - start - RECORD_PREFIX
        if length < 0:
            return _overflow(m, nxt)
    try:
        data = m.ctx.read_memory(address, length)
    except MemoryFault as fault:
        return _fault_record(m, fault.address, nxt)
    m.log[start : start + RECORD_PREFIX + length] = struct.pack("<BH", TOKEN_MEMORY, length) + data
    m.log_len = m.prev_log_len = start + RECORD_PREFIX + length
    return nxt


@semantic("LOG_I")
def log_raw(m: Machine, wanted: int, nxt: int) -> int:
    m.prev_log_len = m.log_len
    room = min(4 * wanted, m.log_cap - m.log_len)
    if room < 0:
        return _overflow(m, nxt)
    _log_words(m, room // 4)
    if room // 4 < wanted:
        return _overflow(m, nxt)
    m.prev_log_len = m.log_len
    return nxt


@semantic("LOG")
def log_record(m: Machine, arg: None, nxt: int) -> int:
    wanted = m.pop() & INDEX_MASK
    start = m.prev_log_len = m.log_len
    room = min(4 * wanted + RECORD_PREFIX, m.log_cap - start)
    if room < RECORD_PREFIX:
        return _overflow(m, nxt)
    m.log_len += RECORD_PREFIX
    count = (room - RECORD_PREFIX) // 4
    _log_words(m, count)
    m.log[start : start + RECORD_PREFIX] = struct.pack("<BH", TOKEN_LOG, count)
    if count < wanted:
        return _overflow(m, nxt)
    m.prev_log_len = m.log_len
    return nxt


def _log_variables(op: OpInfo) -> OpFunction:
    scope = op.scope
    assert scope is not None
    local = scope.local
    token = TOKEN_LV_ENTRY if local else TOKEN_GV_ENTRY

    def log_variables(m: Machine, arg: None, nxt: int) -> int:
        count, first = m.pop(), m.pop()
        start = m.log_len
        if start + RECORD_PREFIX > m.log_cap:
            return _overflow(m, nxt)
        m.log[start : start + RECORD_PREFIX] = bytes((token, 0, 0))
        m.log_len = start + RECORD_PREFIX
        variables = m.lv if local else m.gv
        index, end, logged = first, (first + count) & WORD_MASK, 0
        while index < end:
            if index >= len(variables):
                return _bad_index(m, scope, index, nxt)
            if m.log_len + 4 > m.log_cap:
                return _overflow(m, nxt)
            m.log[m.log_len : m.log_len + 4] = variables[index].to_bytes(4, "little")
            m.log_len += 4
            logged += 1
            m.log[start + 1 : start + RECORD_PREFIX] = (logged & 0xFFFF).to_bytes(2, "little")
            index += 1
        return nxt

    return log_variables


rows(_log_variables, "LOG_LV", "LOG_GV")
semantic("PUSH_LP")(_push_value(lambda m: m.log_len))
semantic("PUSH_PLP")(_push_value(lambda m: m.prev_log_len))
semantic("POP_LP")(_set_from_stack("log_len"))


# --- global and local variables ---------------------------------------------------
def _variable_scope(op: OpInfo) -> Scope:
    scope = op.scope
    assert scope is not None and scope in (Scope.LV, Scope.GV), op.name
    return scope


def _bad_index(m: Machine, scope: Scope, index: int, nxt: int) -> int:
    return m.raise_exception(Ex.INVALID_OPERAND, scope.index_error, index, nxt)


def _var_push(op: OpInfo) -> OpFunction:
    """push lv/gv: the index is the immediate, or (u16)TOS for the stack form (no operand).

    Here and below, a family's stack form is told from its immediate form by its decoded
    operand, which is None.
    """
    scope = _variable_scope(op)
    local = scope.local

    def push_var(m: Machine, index: int | None, nxt: int) -> int:
        stack = m.stack
        variables = m.lv if local else m.gv
        tos = m.tos
        if index is None:
            index = stack[tos] & INDEX_MASK
            tos = BELOW[tos]
            m.tos = tos
        if index >= len(variables):
            return _bad_index(m, scope, index, nxt)
        tos = ABOVE[tos]
        stack[tos] = variables[index]
        m.tos = tos
        return nxt

    return push_var


def _var_pop(op: OpInfo) -> OpFunction:
    """pop lv/gv: ``v ->`` with an immediate index, ``i v ->`` for the stack form."""
    scope = _variable_scope(op)
    local = scope.local

    def pop_var(m: Machine, index: int | None, nxt: int) -> int:
        stack = m.stack
        variables = m.lv if local else m.gv
        tos = m.tos
        value = stack[tos]
        below = BELOW[tos]
        if index is None:  # both words go, whatever the index
            index = stack[below] & INDEX_MASK
            below = BELOW[below]
            m.tos = below
        if index >= len(variables):  # the immediate form leaves v on the stack
            return _bad_index(m, scope, index, nxt)
        m.tos = below
        variables[index] = value
        return nxt

    return pop_var


def _var_move(op: OpInfo) -> OpFunction:
    """move lv/gv: store TOS without popping it (``v i -> v`` for the stack form)."""
    scope = _variable_scope(op)
    local = scope.local

    def move_var(m: Machine, index: int | None, nxt: int) -> int:
        if index is None:
            index = m.pop() & INDEX_MASK
        variables = m.lv if local else m.gv
        if index >= len(variables):
            return _bad_index(m, scope, index, nxt)
        variables[index] = m.stack[m.tos]
        return nxt

    return move_var


def _var_step(op: OpInfo, step: int) -> OpFunction:
    """inc/dec lv/gv, wrapping at 32 bits."""
    scope = _variable_scope(op)
    local = scope.local

    def step_var(m: Machine, index: int | None, nxt: int) -> int:
        if index is None:
            index = m.pop() & INDEX_MASK
        variables = m.lv if local else m.gv
        if index >= len(variables):
            return _bad_index(m, scope, index, nxt)
        variables[index] = (variables[index] + step) & WORD_MASK
        return nxt

    return step_var


semantic("ALLOC_GV", "FREE_GV", "FREE_GVI")(reserved)
rows(_var_push, "PUSH_GVI", "PUSH_GV")
rows(_var_pop, "POP_GVI", "POP_GV")
rows(_var_move, "MOVE_GVI", "MOVE_GV")
rows(_var_step, "INC_GVI", "INC_GV", step=1)
rows(_var_step, "DEC_GVI", "DEC_GV", step=-1)
rows(_var_push, "PUSH_LVI", "PUSH_LV")
rows(_var_pop, "POP_LVI", "POP_LV")
rows(_var_move, "MOVE_LVI", "MOVE_LV")
rows(_var_step, "INC_LVI", "INC_LV", step=1)
rows(_var_step, "DEC_LVI", "DEC_LV", step=-1)


# --- arithmetic and logic ---------------------------------------------------------
def _binary(compute: Callable[[int, int], int]) -> OpFunction:
    """``a b -> f(tos=b, nos=a)``: pop TOS then NOS, push the result."""

    def binary(m: Machine, arg: None, nxt: int) -> int:
        stack, tos = m.stack, m.tos
        below = BELOW[tos]
        stack[below] = compute(stack[tos], stack[below]) & WORD_MASK
        m.tos = below
        return nxt

    return binary


def _rotate_left(value: int, count: int) -> int:
    count &= SHIFT_MASK
    return ((value << count) | (value >> (WORD_BITS - count))) & WORD_MASK


def _in_place(compute: Callable[[int, int], int]) -> OpFunction:
    """Rewrite TOS from itself and the u8 immediate."""

    def in_place(m: Machine, n: int, nxt: int) -> int:
        m.stack[m.tos] = compute(m.stack[m.tos], n) & WORD_MASK
        return nxt

    return in_place


def _propagate(left: bool, k: int, value: int) -> int:
    """pbl/pbr: copy bit k-1 into every bit above (left) or below it."""
    bit = (value >> (k - 1)) & 1
    span = (WORD_MASK << (k - 1)) & WORD_MASK if left else (1 << k) - 1
    return (value | span) if bit else (value & ~span & WORD_MASK)


def _zero(left: bool, k: int, value: int) -> int:
    """pzl keeps the low k bits (k = 32 clears all, the i386 shift-count quirk);
    pzr clears bits 0..k-2."""
    if left:
        return 0 if k == WORD_BITS else value & ((1 << k) - 1)
    return value & (WORD_MASK << (k - 1)) & WORD_MASK


def _bit_stack(op: OpInfo, compute: Callable[[bool, int, int], int], left: bool) -> OpFunction:
    """pbl/pbr/pzl/pzr: the bit index k from TOS, outside the row's domain raising."""
    domain = op.domain
    assert domain is not None
    lo, hi, error = domain

    def bit_op(m: Machine, arg: None, nxt: int) -> int:
        k = m.pop()
        if not lo <= k <= hi:
            return m.raise_exception(Ex.INVALID_OPERAND, error, k, nxt)
        if compute is _zero and not left and k == 1:
            return nxt  # 5.0 returns before popping the value
        m.push(compute(left, k, m.pop()))
        return nxt

    return bit_op


def _bit_immediate(op: OpInfo, compute: Callable[[bool, int, int], int], left: bool) -> OpFunction:
    """The immediate forms: outside the row's domain k raises, or, for a row that does not
    list EX_INVALID_OPERAND (pbl n, pbr n), ends the handler without an exception."""
    domain = op.domain
    assert domain is not None
    lo, hi, error = domain
    raises = Ex.INVALID_OPERAND in op.raises

    def bit_op(m: Machine, k: int, nxt: int) -> int:
        if not lo <= k <= hi:
            if not raises:
                return m.finish(ExitKind.TERMINATED)  # 5.0: silent end, no exception
            return m.raise_exception(Ex.INVALID_OPERAND, error, k, nxt)
        m.stack[m.tos] = compute(left, k, m.stack[m.tos])
        return nxt

    return bit_op


semantic("ADD")(_binary(operator.add))
semantic("SUB")(_binary(operator.sub))  # TOS - NOS: the 5.0 operand order
semantic("MUL")(_binary(operator.mul))


@semantic("DIV", "IDIV")
def divide(m: Machine, arg: bool, nxt: int) -> int:
    divisor, dividend = m.pop(), m.pop()
    if divisor == 0:
        return m.raise_exception(Ex.DIV_BY_ZERO, 0, 0, nxt)
    if arg:  # idiv: C truncation toward zero; INT_MIN / -1 wraps (i386 would trap)
        a, b = _signed(dividend), _signed(divisor)
        quotient = abs(a) // abs(b) * (1 if (a < 0) == (b < 0) else -1)
        remainder = a - b * quotient
    else:
        quotient, remainder = divmod(dividend, divisor)
    m.push(remainder)
    m.push(quotient)
    return nxt


ARGUMENTS["DIV"] = lambda insn, index_of: False
ARGUMENTS["IDIV"] = lambda insn, index_of: True


@semantic("NEG")
def neg(m: Machine, arg: None, nxt: int) -> int:
    m.stack[m.tos] ^= WORD_MASK  # bitwise not, as 5.0's ~
    return nxt


semantic("AND")(_binary(operator.and_))
semantic("OR")(_binary(operator.or_))
semantic("XOR")(_binary(operator.xor))
semantic("ROL_I")(_in_place(_rotate_left))
semantic("ROL")(_binary(_rotate_left))
semantic("ROR_I")(_in_place(lambda value, n: _rotate_left(value, WORD_BITS - (n & SHIFT_MASK))))
semantic("ROR")(_binary(lambda value, count: _rotate_left(value, WORD_BITS - (count & SHIFT_MASK))))
semantic("SHL_I")(_in_place(lambda value, n: value << (n & SHIFT_MASK)))
semantic("SHL")(_binary(lambda value, count: value << (count & SHIFT_MASK)))
semantic("SHR_I")(_in_place(lambda value, n: value >> (n & SHIFT_MASK)))
semantic("SHR")(_binary(lambda value, count: value >> (count & SHIFT_MASK)))
rows(_bit_stack, "PBL", compute=_propagate, left=True)
rows(_bit_stack, "PBR", compute=_propagate, left=False)
rows(_bit_immediate, "PBL_I", compute=_propagate, left=True)
rows(_bit_immediate, "PBR_I", compute=_propagate, left=False)
rows(_bit_stack, "PZL", compute=_zero, left=True)
rows(_bit_stack, "PZR", compute=_zero, left=False)
rows(_bit_immediate, "PZL_I", compute=_zero, left=True)
rows(_bit_immediate, "PZR_I", compute=_zero, left=False)


# --- stack ------------------------------------------------------------------------
@semantic("PUSH")
def push_immediate(m: Machine, value: int, nxt: int) -> int:
    tos = ABOVE[m.tos]
    m.stack[tos] = value
    m.tos = tos
    return nxt


@semantic("XCHG")
def xchg(m: Machine, arg: None, nxt: int) -> int:
    stack, tos = m.stack, m.tos
    below = BELOW[tos]
    stack[tos], stack[below] = stack[below], stack[tos]
    return nxt


def _replicate(m: Machine, value: int, copies: int) -> None:
    """Push ``value`` ``copies`` times."""
    stack, tos = m.stack, m.tos
    for _ in range(copies):
        tos = ABOVE[tos]
        stack[tos] = value
    m.tos = tos


@semantic("DUP_I")
def dup_n(m: Machine, copies: int, nxt: int) -> int:
    _replicate(m, m.pop(), copies)
    return nxt


@semantic("DUP")
def dup(m: Machine, arg: None, nxt: int) -> int:
    value = m.pop()
    _replicate(m, value, (m.pop() & 0xFF) + 1)
    return nxt


@semantic("ROS")
def ros(m: Machine, count: int, nxt: int) -> int:
    m.tos = (m.tos + count) & STACK_MASK
    return nxt


# --- registers and system variables ---------------------------------------------
def _push_wide(m: Machine, reg: Register, user: bool) -> None:
    """Registers that are not one word: split them, or pop their argument first."""
    shape = reg.shape
    if shape is RegisterShape.CPUID:
        eax, ebx, ecx, edx = m.ctx.cpuid(m.pop()) or (0, 0, 0, 0)
        words: tuple[int, ...] = (edx, ecx, ebx, eax)
    elif shape is RegisterShape.MSR:
        value = m.ctx.read_msr(m.pop()) or 0
        words = (value >> 32, value)
    else:
        value = m.ctx.read_register(reg, user) or 0
        if shape is RegisterShape.DESCRIPTOR:
            words = (value >> 16, value & 0xFFFF)
        elif shape is RegisterShape.X87:
            words = ((value >> 64) & 0xFFFF, value >> 32, value)
        else:
            words = (value >> 96, value >> 64, value >> 32, value)
    for word in words:
        m.push(word)


WORD = RegisterShape.WORD
"""A module constant: in CPython 3.11 looking a member up on its Enum class is slow."""


def _push_register(op: OpInfo) -> OpFunction:
    assert op.register_rule is not None
    user = op.register_rule.user

    def push_register(m: Machine, reg: Register, nxt: int) -> int:
        if reg.shape is WORD:
            tos = ABOVE[m.tos]
            m.stack[tos] = (m.ctx.read_register(reg, user) or 0) & WORD_MASK
            m.tos = tos
        else:
            _push_wide(m, reg, user)
        return nxt

    return push_register


def _pop_register(op: OpInfo) -> OpFunction:
    assert op.register_rule is not None
    user = op.register_rule.user

    def pop_register(m: Machine, reg: Register, nxt: int) -> int:
        m.ctx.write_register(reg, user, m.pop())
        return nxt

    return pop_register


rows(_push_register, "PUSH_R")
rows(_pop_register, "POP_R")
rows(_push_register, "PUSH_U")
rows(_pop_register, "POP_U")
semantic("PUSH_TASK")(_push_value(lambda m: m.ctx.task()))
semantic("PUSH_PID")(_push_value(lambda m: m.ctx.pid()))
semantic("PUSH_PROCID")(_push_value(lambda m: m.ctx.processor()))
semantic("PUSH_WID")(_push_value(lambda m: WORD_WIDTH))


# --- memory and IO ----------------------------------------------------------------
def _push_memory(op: OpInfo) -> OpFunction:
    width = op.width

    def push_memory(m: Machine, arg: None, nxt: int) -> int:
        stack, tos = m.stack, m.tos
        address = stack[tos]
        try:
            value = m.ctx.read_uint(address, width)
        except MemoryFault:
            m.tos = BELOW[tos]
            return m.raise_exception(Ex.INVALID_ADDR, address, 0, nxt)
        if width == 8:  # addr -> hi lo
            stack[tos] = value >> WORD_BITS
            tos = ABOVE[tos]
            m.tos = tos
            value &= WORD_MASK
        stack[tos] = value
        return nxt

    return push_memory


def _pop_memory(op: OpInfo) -> OpFunction:
    width = op.width

    def pop_memory(m: Machine, arg: None, nxt: int) -> int:
        value = m.pop()
        if width == 8:
            value |= m.pop() << WORD_BITS
        address = m.pop()
        try:
            m.ctx.write_memory(address, (value & ((1 << 8 * width) - 1)).to_bytes(width, "little"))
        except MemoryFault:
            return m.raise_exception(Ex.INVALID_ADDR, address, 0, nxt)
        return nxt

    return pop_memory


rows(_push_memory, "PUSH_MEM_U8", "PUSH_MEM_U16", "PUSH_MEM_U32", "PUSH_MEM_U64")
rows(_pop_memory, "POP_MEM_U8", "POP_MEM_U16", "POP_MEM_U32", "POP_MEM_U64")


def _verify(op: OpInfo) -> OpFunction:
    """vfy r/rw: 0 if the row's access (a read, then for vfy rw a write back) succeeds."""
    write = HostNeed.MEMORY_WRITE in op.host
    width = op.width

    def verify(m: Machine, arg: None, nxt: int) -> int:
        address = m.pop()
        try:
            byte = m.ctx.read_memory(address, width)
            if write:
                m.ctx.write_memory(address, byte)
        except MemoryFault:
            m.push(1)
            return nxt
        m.push(0)
        return nxt

    return verify


rows(_verify, "VFY_R", "VFY_RW")


@semantic("SEG2LIN")
def seg2lin(m: Machine, arg: None, nxt: int) -> int:
    offset, selector = m.pop(), m.pop()
    base = m.ctx.segment_base(selector)
    if base is None:
        return m.raise_exception(Ex.SEG_FAULT, selector, 0, nxt)
    m.push(base + offset)
    return nxt


def _io_in(op: OpInfo) -> OpFunction:
    width = op.width

    def io_in(m: Machine, arg: None, nxt: int) -> int:
        m.push(m.ctx.io_read(m.pop() & INDEX_MASK, width))
        return nxt

    return io_in


def _io_out(op: OpInfo) -> OpFunction:
    width = op.width

    def io_out(m: Machine, arg: None, nxt: int) -> int:
        value = m.pop() & ((1 << 8 * width) - 1)
        m.ctx.io_write(m.pop() & INDEX_MASK, width, value)
        return nxt

    return io_out


rows(_io_in, "PUSH_IO_U8", "PUSH_IO_U16", "PUSH_IO_U32")
rows(_io_out, "POP_IO_U8", "POP_IO_U16", "POP_IO_U32")


# --- exceptions and stack traces ------------------------------------------------
ARGUMENTS["SX"] = lambda insn, index_of: insn.target


@semantic("SX")
def sx(m: Machine, handler: int, nxt: int) -> int:
    m.frames[-1].handler = handler
    return nxt


@semantic("UX")
def ux(m: Machine, arg: None, nxt: int) -> int:
    m.frames[-1].handler = NO_HANDLER
    return nxt


@semantic("RX")
def rx(m: Machine, arg: None, nxt: int) -> int:
    return m.raise_user_exception()


@semantic("PUSH_X")
def push_x(m: Machine, arg: None, nxt: int) -> int:
    m.push(m.ex_parm2)
    m.push(m.ex_parm1)
    m.push(m.cpu.ex_code)
    return nxt


@semantic("LOG_ST")
def log_st(m: Machine, arg: None, nxt: int) -> int:
    return nxt if stacktrace.log_stack_trace(m) else m.finish(ExitKind.TERMINATED)


@semantic("PURGE_ST")
def purge_st(m: Machine, arg: None, nxt: int) -> int:
    m.ex_len = MIN_ST_SIZE
    return nxt


def _trace(op: OpInfo) -> OpFunction:
    """trace lv/gv/pv: the frame's range of the row's scope."""
    assert op.scope is not None
    field = f"{op.scope.value}_range"

    def trace(m: Machine, arg: None, nxt: int) -> int:
        count = m.pop()
        setattr(m.frames[-1], field, (count, m.pop()))
        return nxt

    return trace


rows(_trace, "TRACE_LV", "TRACE_GV", "TRACE_PV")
semantic("PUSH_STP")(_push_value(lambda m: m.ex_len))
semantic("POP_STP")(_set_from_stack("ex_len"))


# --- frame access -----------------------------------------------------------------
def _frame_push(op: OpInfo) -> OpFunction:
    """push sbp/tsp: push the slot k away from SBP or TOS (the stack form pops k first)."""
    sbp = op.scope is Scope.SBP

    def frame_push(m: Machine, k: int | None, nxt: int) -> int:
        stack = m.stack
        tos = m.tos
        if k is None:
            k = _signed(stack[tos])
            tos = BELOW[tos]
        value = stack[((m.sbp if sbp else tos) + k) & STACK_MASK]
        tos = ABOVE[tos]
        stack[tos] = value
        m.tos = tos
        return nxt

    return frame_push


def _frame_pop(op: OpInfo) -> OpFunction:
    """pop sbp/tsp: store TOS in a slot; the immediate form computes the slot before popping."""
    sbp = op.scope is Scope.SBP

    def frame_pop(m: Machine, k: int | None, nxt: int) -> int:
        if k is not None:
            slot = ((m.sbp if sbp else m.tos) + k) & STACK_MASK
            m.stack[slot] = m.pop()
            return nxt
        value = m.pop()
        k = _signed(m.pop())
        m.stack[((m.sbp if sbp else m.tos) + k) & STACK_MASK] = value
        return nxt

    return frame_pop


def _frame_copy(op: OpInfo) -> OpFunction:
    """copy sbp/tsp: store TOS in a slot without popping it (the stack form pops k first)."""
    sbp = op.scope is Scope.SBP

    def frame_copy(m: Machine, k: int | None, nxt: int) -> int:
        if k is None:
            k = _signed(m.pop())
        m.stack[((m.sbp if sbp else m.tos) + k) & STACK_MASK] = m.stack[m.tos]
        return nxt

    return frame_copy


rows(_frame_push, "PUSH_SBP")
rows(_frame_pop, "POP_SBP")
rows(_frame_push, "PUSH_TSP")
rows(_frame_pop, "POP_TSP")
rows(_frame_push, "PUSH_SBP_I")
rows(_frame_pop, "POP_SBP_I")
rows(_frame_push, "PUSH_TSP_I")
rows(_frame_pop, "POP_TSP_I")
rows(_frame_copy, "COPY_SBP_I", "COPY_TSP_I", "COPY_SBP", "COPY_TSP")
semantic("SAVE_SBP")(_push_value(lambda m: m.sbp))
semantic("RESTORE_SBP")(_set_from_stack("sbp", STACK_MASK))
semantic("SAVE_TSP")(_push_value(lambda m: m.tos))
semantic("RESTORE_TSP")(_set_from_stack("tos", STACK_MASK))


# --- byte heap --------------------------------------------------------------------
class HeapUser(Protocol):
    """What the heap semantics use of their machine: the JIT runs them on a StateView."""

    @property
    def heap(self) -> ProbeHeap: ...
    def push(self, value: int) -> None: ...
    def pop(self) -> int: ...
    def raise_exception(self, code: int, parm1: int, parm2: int, nxt: int) -> int: ...


@semantic("MALLOC")
def malloc(m: HeapUser, arg: None, nxt: int) -> int:
    size = m.pop()
    handle = m.heap.allocate(size)
    if handle is None:
        return m.raise_exception(Ex.HEAP_NOMEM, size, 0, nxt)
    m.push(handle)
    return nxt


@semantic("FREE")
def free(m: HeapUser, arg: None, nxt: int) -> int:
    handle = m.pop()
    if not m.heap.release(handle):
        return m.raise_exception(Ex.HEAP_INVALID_HANDLE, handle, 0, nxt)
    return nxt


def _heap_push(op: OpInfo) -> OpFunction:
    width = op.width

    def heap_push(m: HeapUser, count: int, nxt: int) -> int:
        offset, handle = m.pop(), m.pop()
        size = m.heap.block_size(handle)
        if size is None:
            return m.raise_exception(Ex.HEAP_INVALID_HANDLE, handle, offset, nxt)
        for _ in range(count):
            if offset + width > size:
                return m.raise_exception(Ex.HEAP_INVALID_OFFSET, handle, offset, nxt)
            value = m.heap.load(handle, offset, width)
            m.push(value)
            if width == 8:  # 5.0 pushes the value truncated to a word, twice
                m.push(value)
            offset += width
        return nxt

    return heap_push


def _heap_pop(op: OpInfo) -> OpFunction:
    width = op.width

    def heap_pop(m: HeapUser, count: int, nxt: int) -> int:
        offset, handle = m.pop(), m.pop()
        size = m.heap.block_size(handle)
        if size is None:
            return m.raise_exception(Ex.HEAP_INVALID_HANDLE, handle, offset, nxt)
        for _ in range(count):
            if offset + width > size:  # 5.0 let poph u8 write one byte past the block
                return m.raise_exception(Ex.HEAP_INVALID_OFFSET, handle, offset, nxt)
            if width == 8:
                m.heap.store(handle, offset, 4, m.pop())
                m.heap.store(handle, offset + 4, 4, m.pop())
            else:
                m.heap.store(handle, offset, width, m.pop())
            offset += width
        return nxt

    return heap_pop


rows(_heap_push, "PUSHH_U8_I", "PUSHH_U16_I", "PUSHH_U32_I", "PUSHH_U64_I")
rows(_heap_pop, "POPH_U8_I", "POPH_U16_I", "POPH_U32_I", "POPH_U64_I")

assert STOP < 0
