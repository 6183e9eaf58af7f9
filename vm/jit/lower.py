"""One ``lower_<name>`` per row of the instruction table, in the table's order.

Each function emits the native code of one instruction into its block and ends the block
(a branch to the next instruction, a target, ``resume`` or ``exit``). It mirrors the
semantic function of the same opcode in ``vm.ops``. Rows of one family (variables, memory
and port accesses, frame access, registers) share one lowering, which reads what sets
them apart (scope, width, register rule, operand domain) from the instruction's row.
Hot operations are inline; the rest call the native runtime library (``vm.jit.rtlib``),
which reports a status that ``HandlerLowering.status_branch`` turns into a branch.

``LOWERINGS`` maps each opcode name to its function, like ``vm.ops.SEMANTICS``.
"""

from __future__ import annotations

from collections.abc import Callable

from llvmlite import ir

from dprobes.vm.bytecode import Instruction
from dprobes.vm.exceptions import NO_HANDLER
from dprobes.vm.exceptions import ExceptionCode as Ex
from dprobes.vm.isa import TABLE, Domain, HostNeed, Operand, RegisterRule, Scope
from dprobes.vm.jit import state as S
from dprobes.vm.jit.function import HandlerLowering
from dprobes.vm.jit.irgen import I8, I16, I32, I64, c32, c64
from dprobes.vm.jit.rtlib import SHAPE_CODES, note_log_end
from dprobes.vm.model import (
    INDEX_MASK,
    MAX_CALL_DEPTH,
    MIN_ST_SIZE,
    SHIFT_MASK,
    SIGN_BIT,
    STACK_MASK,
    WORD_BITS,
    WORD_MASK,
    WORD_WIDTH,
)
from dprobes.vm.registers import REGISTERS_BY_INDEX, RegisterShape

Lowering = Callable[[HandlerLowering, Instruction], None]


# --- shared pieces ---------------------------------------------------------------------
def _take_jump(lw: HandlerLowering, insn: Instruction) -> None:
    """ops.take_jump: a taken jump counts against jmpmax first (once spent, it raises)."""
    e = lw.e
    count = e.load("jmp_count")
    limit = e.zext64(e.load("jmpmax"))
    spent, ok = lw.new_block(insn, "jmpmax"), lw.new_block(insn, "taken")
    e.b.cbranch(e.b.icmp_unsigned(">=", count, limit), spent, ok)
    e.at(spent)
    lw.raise_exception(Ex.MAX_JMPS, e.load("jmpmax"), 0, insn)
    e.at(ok)
    e.store("jmp_count", e.b.add(count, c64(1)))
    e.b.branch(lw.target_block(insn))


def _conditional_jump(test: Callable[[ir.IRBuilder, ir.Value], ir.Value]) -> Lowering:
    def lower(lw: HandlerLowering, insn: Instruction) -> None:
        e = lw.e
        taken = lw.new_block(insn, "cond")
        e.b.cbranch(test(e.b, e.peek(0)), taken, lw.next_block(insn))
        e.at(taken)
        _take_jump(lw, insn)

    return lower


def _reserved(lw: HandlerLowering, insn: Instruction) -> None:
    lw.raise_exception(Ex.INVALID_OPCODE, insn.op.code, lw.code_offset(insn.offset), insn)


def _push_value(read: Callable[[HandlerLowering], ir.Value]) -> Lowering:
    def lower(lw: HandlerLowering, insn: Instruction) -> None:
        lw.e.push(read(lw))
        lw.e.b.branch(lw.next_block(insn))

    return lower


def _set_field(field: str, value_mask: int = WORD_MASK) -> Lowering:
    """setattr(m, field, m.pop() & mask)."""

    def lower(lw: HandlerLowering, insn: Instruction) -> None:
        e = lw.e
        value = e.pop()
        e.store(field, e.b.and_(value, c32(value_mask)) if value_mask != WORD_MASK else value)
        e.b.branch(lw.next_block(insn))

    return lower


def _from_stack(insn: Instruction) -> bool:
    """A family's stack form, which takes from the stack what the immediate form encodes."""
    return insn.op.operand is Operand.NONE


def _set_id(field: str) -> Lowering:
    def lower(lw: HandlerLowering, insn: Instruction) -> None:
        e = lw.e
        if _from_stack(insn):
            e.store(field, e.b.and_(e.pop(), c32(INDEX_MASK)))
        else:
            e.store(field, (insn.operand or 0) & INDEX_MASK)
        e.b.branch(lw.next_block(insn))

    return lower


def _domain(insn: Instruction) -> Domain:
    domain = insn.op.domain
    assert domain is not None, insn.op.name
    return domain


def _scope(insn: Instruction) -> Scope:
    scope = insn.op.scope
    assert scope is not None, insn.op.name
    return scope


def _register_rule(insn: Instruction) -> RegisterRule:
    rule = insn.op.register_rule
    assert rule is not None, insn.op.name
    return rule


def _runtime_op(name: str, *args: int) -> Lowering:
    """An operation done by the runtime library, which reports a status."""

    def lower(lw: HandlerLowering, insn: Instruction) -> None:
        lw.status_branch(lw.rt(name, *args), lw.next_block(insn))

    return lower


# --- control flow ----------------------------------------------------------------------
def lower_nop(lw: HandlerLowering, insn: Instruction) -> None:
    lw.e.b.branch(lw.next_block(insn))


def lower_jmp(lw: HandlerLowering, insn: Instruction) -> None:
    _take_jump(lw, insn)


def _signed_negative(b: ir.IRBuilder, v: ir.Value) -> ir.Value:
    return b.icmp_unsigned(">=", v, c32(SIGN_BIT))


lower_jlt = _conditional_jump(_signed_negative)
lower_jle = _conditional_jump(
    lambda b, v: b.or_(b.icmp_unsigned("==", v, c32(0)), _signed_negative(b, v))
)
lower_jgt = _conditional_jump(
    lambda b, v: b.and_(b.icmp_unsigned("!=", v, c32(0)), b.icmp_unsigned("<", v, c32(SIGN_BIT)))
)
lower_jge = _conditional_jump(lambda b, v: b.icmp_unsigned("<", v, c32(SIGN_BIT)))
lower_jz = _conditional_jump(lambda b, v: b.icmp_unsigned("==", v, c32(0)))
lower_jnz = _conditional_jump(lambda b, v: b.icmp_unsigned("!=", v, c32(0)))


def lower_loop(lw: HandlerLowering, insn: Instruction) -> None:
    e = lw.e
    count = e.load("jmp_count")
    e.store("jmp_count", e.b.add(count, c64(1)))  # every loop counts
    spent, go = lw.new_block(insn, "jmpmax"), lw.new_block(insn, "count")
    e.b.cbranch(e.b.icmp_unsigned(">=", count, e.zext64(e.load("jmpmax"))), spent, go)
    e.at(spent)
    lw.raise_exception(Ex.MAX_JMPS, e.load("jmpmax"), 0, insn)
    e.at(go)
    tos = e.tos()
    value = e.b.sub(e.read_slot(tos), c32(1))
    e.write_slot(tos, value)
    e.b.cbranch(e.b.icmp_unsigned("!=", value, c32(0)), lw.target_block(insn), lw.next_block(insn))


def lower_call(lw: HandlerLowering, insn: Instruction) -> None:
    e = lw.e
    nframes = e.load("nframes")
    full, push = lw.new_block(insn, "overflow"), lw.new_block(insn, "frame")
    e.b.cbranch(e.b.icmp_unsigned(">", nframes, c32(MAX_CALL_DEPTH)), full, push)
    e.at(full)
    lw.raise_exception(Ex.CALL_STACK_OVERFLOW, MAX_CALL_DEPTH, 0, insn)
    e.at(push)
    assert insn.target is not None
    words = {
        "sbp": e.load("sbp"),
        "handler": c32(NO_HANDLER),
        "called": lw.code_offset(insn.target),
        "returns": lw.code_offset(insn.end),
    }
    for word in S.FRAME_FIELDS:
        e.b.store(words.get(word, c32(0)), e.frame_word_ptr(nframes, word))
    e.store("nframes", e.b.add(nframes, c32(1)))
    e.b.branch(lw.target_block(insn))


def lower_ret(lw: HandlerLowering, insn: Instruction) -> None:
    """The common case inline (a frame to pop, no pending exception), else ``rt_ret``."""
    e = lw.e
    nframes = e.load("nframes")
    fast, slow = lw.new_block(insn, "return"), lw.new_block(insn, "ret_slow")
    simple = e.b.and_(
        e.b.icmp_unsigned(">", nframes, c32(1)),
        e.b.icmp_unsigned("==", e.load("ex_pending"), c32(0)),
    )
    e.b.cbranch(simple, fast, slow)
    e.at(fast)
    top = e.b.sub(nframes, c32(1))
    e.store("sbp", e.b.load(e.frame_word_ptr(top, "sbp"), typ=I32))
    e.store("resume", e.b.load(e.frame_word_ptr(top, "returns"), typ=I32))
    e.store("nframes", top)
    lw.leave_region()
    e.b.branch(lw.resume_block)
    e.at(slow)
    lw.status_branch(lw.rt("ret"), lw.next_block(insn))


def lower_abort(lw: HandlerLowering, insn: Instruction) -> None:
    lw.finish(S.EXIT_ABORT)


def lower_rem(lw: HandlerLowering, insn: Instruction) -> None:
    lw.finish(S.EXIT_REM)


def lower_exit(lw: HandlerLowering, insn: Instruction) -> None:
    lw.finish(S.EXIT_EXIT)


def lower_exit_n(lw: HandlerLowering, insn: Instruction) -> None:
    facility = insn.operand or 0
    domain = _domain(insn)
    if not domain.admits(facility):
        lw.raise_exception(Ex.INVALID_OPERAND, domain.error, facility, insn)
        return
    lw.e.store("exit_to", facility)
    lw.finish(S.EXIT_EXIT_TO)


lower_suspend = _reserved
lower_resume = _reserved


def lower_callk(lw: HandlerLowering, insn: Instruction) -> None:
    e = lw.e
    e.spill()
    status = e.host_call("callk", [e.state])
    e.reload()
    e.mark_all_dirty()  # the hook saw the whole state
    lw.host_checked(status, insn, "callk")
    no_hook = lw.new_block(insn, "no_hook")
    e.b.cbranch(
        e.b.icmp_unsigned("!=", status, c32(0)), lw.block_at(insn.end, synced=True), no_hook
    )
    e.at(no_hook)
    _reserved(lw, insn)


# --- logging ---------------------------------------------------------------------------
lower_setmin_i = _set_id("minor")
lower_setmin = _set_id("minor")
lower_setmaj_i = _set_id("major")
lower_setmaj = _set_id("major")
lower_log_str = _runtime_op("log_str")
lower_log_mrf = _runtime_op("log_mrf")


INLINE_LOG_WORDS = 8
"""``log n`` of up to this many words stores them inline when they fit in the log."""


def lower_log_i(lw: HandlerLowering, insn: Instruction) -> None:
    """``log n`` (ops.log_raw): when the n words fit, pop them into the log here (no
    runtime call, no stack sync); otherwise ``rt_log_n`` logs what fits and raises."""
    e = lw.e
    wanted = insn.operand or 0
    if wanted > INLINE_LOG_WORDS:
        lw.status_branch(lw.rt("log_n", wanted), lw.next_block(insn))
        return
    length = e.load("log_len")
    end = e.b.add(e.zext64(length), c64(4 * wanted))
    fits, full = lw.new_block(insn, "log_fits"), lw.new_block(insn, "log_full")
    e.b.cbranch(e.b.icmp_unsigned("<=", end, e.zext64(e.load("log_cap"))), fits, full)
    e.at(fits)
    for i in range(wanted):
        e.put("log", e.b.add(length, c32(4 * i)), e.pop())
    e.store("log_len", e.b.trunc(end, I32))
    e.store("prev_log_len", e.b.trunc(end, I32))
    note_log_end(e)
    e.b.branch(lw.next_block(insn))
    e.at(full)
    lw.status_branch(lw.rt("log_n", wanted), lw.next_block(insn))


lower_log = _runtime_op("log_record")


def _log_variables(lw: HandlerLowering, insn: Instruction) -> None:
    lw.status_branch(lw.rt("log_vars", int(_scope(insn).local)), lw.next_block(insn))


lower_log_lv = _log_variables
lower_log_gv = _log_variables
lower_push_lp = _push_value(lambda lw: lw.e.load("log_len"))
lower_push_plp = _push_value(lambda lw: lw.e.load("prev_log_len"))
lower_pop_lp = _set_field("log_len")


# --- variables -------------------------------------------------------------------------
def _checked_index(lw: HandlerLowering, insn: Instruction, index: ir.Value) -> None:
    """Raise EX_INVALID_OPERAND unless index < the count of the row's variables; else go on
    in a new block."""
    e = lw.e
    scope = _scope(insn)
    bad, ok = lw.new_block(insn, "bad_index"), lw.new_block(insn, "index_ok")
    e.b.cbranch(e.b.icmp_unsigned(">=", index, e.var_count(scope.local)), bad, ok)
    e.at(bad)
    lw.raise_exception(Ex.INVALID_OPERAND, scope.index_error, index, insn)
    e.at(ok)


def _index(lw: HandlerLowering, insn: Instruction) -> ir.Value:
    """The immediate index, or for the stack form (u16)TOS, popped."""
    e = lw.e
    return e.b.and_(e.pop(), c32(INDEX_MASK)) if _from_stack(insn) else c32(insn.operand or 0)


def _var_push(lw: HandlerLowering, insn: Instruction) -> None:
    e = lw.e
    index = _index(lw, insn)
    _checked_index(lw, insn, index)
    e.push(e.b.load(e.var_ptr(_scope(insn).local, index), typ=I32))
    e.b.branch(lw.next_block(insn))


def _var_pop(lw: HandlerLowering, insn: Instruction) -> None:
    e = lw.e
    local = _scope(insn).local
    tos = e.tos()
    value = e.read_slot(tos)
    if _from_stack(insn):
        below = e.slot(1, tos)
        index = e.b.and_(e.read_slot(below), c32(INDEX_MASK))
        e.set_tos(e.slot(1, below))
    else:
        index = c32(insn.operand or 0)
    _checked_index(lw, insn, index)  # the immediate form leaves v on the stack
    if not _from_stack(insn):
        e.set_tos(e.slot(1, tos))
    e.b.store(value, e.var_ptr(local, index))
    e.mark_var_dirty(local)
    e.b.branch(lw.next_block(insn))


def _var_move(lw: HandlerLowering, insn: Instruction) -> None:
    e = lw.e
    local = _scope(insn).local
    index = _index(lw, insn)
    _checked_index(lw, insn, index)
    e.b.store(e.peek(0), e.var_ptr(local, index))
    e.mark_var_dirty(local)
    e.b.branch(lw.next_block(insn))


def _var_step(step: int) -> Lowering:
    def lower(lw: HandlerLowering, insn: Instruction) -> None:
        e = lw.e
        local = _scope(insn).local
        index = _index(lw, insn)
        _checked_index(lw, insn, index)
        pointer = e.var_ptr(local, index)
        e.b.store(e.b.add(e.b.load(pointer, typ=I32), c32(step)), pointer)
        e.mark_var_dirty(local)
        e.b.branch(lw.next_block(insn))

    return lower


# --- global variables (in table order) ---
lower_alloc_gv = _reserved
lower_free_gv = _reserved
lower_free_gvi = _reserved
lower_push_gvi = _var_push
lower_push_gv = _var_push
lower_pop_gvi = _var_pop
lower_pop_gv = _var_pop
lower_move_gvi = _var_move
lower_move_gv = _var_move
lower_inc_gvi = _var_step(1)
lower_inc_gv = _var_step(1)
lower_dec_gvi = _var_step(-1)
lower_dec_gv = _var_step(-1)
# --- local variables ---
lower_push_lvi = _var_push
lower_push_lv = _var_push
lower_pop_lvi = _var_pop
lower_pop_lv = _var_pop
lower_move_lvi = _var_move
lower_move_lv = _var_move
lower_inc_lvi = _var_step(1)
lower_inc_lv = _var_step(1)
lower_dec_lvi = _var_step(-1)
lower_dec_lv = _var_step(-1)


# --- arithmetic and logic ----------------------------------------------------------------
Compute = Callable[[HandlerLowering, ir.Value, ir.Value], ir.Value]


def _binary(compute: Compute) -> Lowering:
    """``a b -> f(tos=b, nos=a)``: pop TOS then NOS, push the result."""

    def lower(lw: HandlerLowering, insn: Instruction) -> None:
        e = lw.e
        tos = e.tos()
        below = e.slot(1, tos)
        e.write_slot(below, compute(lw, e.read_slot(tos), e.read_slot(below)))
        e.set_tos(below)
        e.b.branch(lw.next_block(insn))

    return lower


def _in_place(compute: Callable[[HandlerLowering, ir.Value, int], ir.Value]) -> Lowering:
    """Rewrite TOS from itself and the u8 immediate."""

    def lower(lw: HandlerLowering, insn: Instruction) -> None:
        e = lw.e
        tos = e.tos()
        e.write_slot(tos, compute(lw, e.read_slot(tos), insn.operand or 0))
        e.b.branch(lw.next_block(insn))

    return lower


def _rotate(lw: HandlerLowering, value: ir.Value, count: ir.Value, left: bool) -> ir.Value:
    """Rotate by count & 31 (funnel shifts take the count modulo 32)."""
    return lw.e.b.call(lw.e.intrinsic["fshl" if left else "fshr"], [value, value, count])


def _count(lw: HandlerLowering, count: ir.Value) -> ir.Value:
    return lw.e.b.and_(count, c32(SHIFT_MASK))


lower_add = _binary(lambda lw, t, n: lw.e.b.add(t, n))
lower_sub = _binary(lambda lw, t, n: lw.e.b.sub(t, n))  # TOS - NOS: the 5.0 operand order
lower_mul = _binary(lambda lw, t, n: lw.e.b.mul(t, n))


def _divide(signed: bool) -> Lowering:
    def lower(lw: HandlerLowering, insn: Instruction) -> None:
        e = lw.e
        divisor = e.pop()
        dividend = e.pop()
        zero, go = lw.new_block(insn, "by_zero"), lw.new_block(insn, "divide")
        e.b.cbranch(e.b.icmp_unsigned("==", divisor, c32(0)), zero, go)
        e.at(zero)
        lw.raise_exception(Ex.DIV_BY_ZERO, 0, 0, insn)
        e.at(go)
        if signed:  # C truncation; INT_MIN / -1 wraps (i386 would trap)
            minus_one, general, done = (
                lw.new_block(insn, n) for n in ("minus_one", "general", "divided")
            )
            e.b.cbranch(e.b.icmp_unsigned("==", divisor, c32(WORD_MASK)), minus_one, general)
            e.at(minus_one)
            negated = e.b.sub(c32(0), dividend)
            e.b.branch(done)
            e.at(general)
            quotient = e.b.sdiv(dividend, divisor)
            remainder = e.b.srem(dividend, divisor)
            e.b.branch(done)
            e.at(done)
            q = e.b.phi(I32)
            q.add_incoming(negated, minus_one)
            q.add_incoming(quotient, general)
            r = e.b.phi(I32)
            r.add_incoming(c32(0), minus_one)
            r.add_incoming(remainder, general)
        else:
            q, r = e.b.udiv(dividend, divisor), e.b.urem(dividend, divisor)
        e.push(r)
        e.push(q)
        e.b.branch(lw.next_block(insn))

    return lower


lower_div = _divide(signed=False)
lower_idiv = _divide(signed=True)
lower_neg = _in_place(lambda lw, v, n: lw.e.b.xor(v, c32(WORD_MASK)))
lower_and = _binary(lambda lw, t, n: lw.e.b.and_(t, n))
lower_or = _binary(lambda lw, t, n: lw.e.b.or_(t, n))
lower_xor = _binary(lambda lw, t, n: lw.e.b.xor(t, n))
lower_rol_i = _in_place(lambda lw, v, n: _rotate(lw, v, c32(n & SHIFT_MASK), True))
lower_rol = _binary(lambda lw, v, n: _rotate(lw, v, n, True))
lower_ror_i = _in_place(lambda lw, v, n: _rotate(lw, v, c32(n & SHIFT_MASK), False))
lower_ror = _binary(lambda lw, v, n: _rotate(lw, v, n, False))
lower_shl_i = _in_place(lambda lw, v, n: lw.e.b.shl(v, c32(n & SHIFT_MASK)))
lower_shl = _binary(lambda lw, v, n: lw.e.b.shl(v, _count(lw, n)))
lower_shr_i = _in_place(lambda lw, v, n: lw.e.b.lshr(v, c32(n & SHIFT_MASK)))
lower_shr = _binary(lambda lw, v, n: lw.e.b.lshr(v, _count(lw, n)))


# pbl/pbr/pzl/pzr: k is 1..32 wherever these run (checked first)
def _propagate(lw: HandlerLowering, left: bool, k: ir.Value, value: ir.Value) -> ir.Value:
    """Copy bit k-1 into every bit above (left) or below it (ops._propagate)."""
    b = lw.e.b
    k1 = b.sub(k, c32(1))
    bit = b.and_(b.lshr(value, k1), c32(1))
    if left:
        span = b.shl(c32(WORD_MASK), k1)
    else:
        span = b.trunc(b.sub(b.shl(c64(1), b.zext(k, I64)), c64(1)), I32)
    return b.select(
        b.icmp_unsigned("!=", bit, c32(0)),
        b.or_(value, span),
        b.and_(value, b.xor(span, c32(WORD_MASK))),
    )


def _zero(lw: HandlerLowering, left: bool, k: ir.Value, value: ir.Value) -> ir.Value:
    """pzl keeps the low k bits (k = 32 clears all); pzr clears bits 0..k-2 (ops._zero)."""
    b = lw.e.b
    if left:
        low = b.trunc(b.sub(b.shl(c64(1), b.zext(k, I64)), c64(1)), I32)
        return b.select(b.icmp_unsigned("==", k, c32(WORD_BITS)), c32(0), b.and_(value, low))
    return b.and_(value, b.shl(c32(WORD_MASK), b.sub(k, c32(1))))


def _bit_stack(compute: Callable, left: bool, pzr: bool = False) -> Lowering:
    def lower(lw: HandlerLowering, insn: Instruction) -> None:
        e = lw.e
        lo, hi, error = _domain(insn)
        k = e.pop()
        bad, ok = lw.new_block(insn, "bad_bit"), lw.new_block(insn, "bit_ok")
        e.b.cbranch(e.b.icmp_unsigned(">", e.b.sub(k, c32(lo)), c32(hi - lo)), bad, ok)
        e.at(bad)
        lw.raise_exception(Ex.INVALID_OPERAND, error, k, insn)
        e.at(ok)
        if pzr:  # 5.0 returns before popping the value when k is 1
            apply = lw.new_block(insn, "apply")
            e.b.cbranch(e.b.icmp_unsigned("==", k, c32(1)), lw.next_block(insn), apply)
            e.at(apply)
        e.push(compute(lw, left, k, e.pop()))
        e.b.branch(lw.next_block(insn))

    return lower


def _bit_immediate(compute: Callable, left: bool) -> Lowering:
    def lower(lw: HandlerLowering, insn: Instruction) -> None:
        e = lw.e
        k = insn.operand or 0
        domain = _domain(insn)
        if not domain.admits(k):
            if Ex.INVALID_OPERAND not in insn.op.raises:
                lw.finish(S.EXIT_TERMINATED)  # 5.0: silent end, no exception
            else:
                lw.raise_exception(Ex.INVALID_OPERAND, domain.error, k, insn)
            return
        tos = e.tos()
        e.write_slot(tos, compute(lw, left, c32(k), e.read_slot(tos)))
        e.b.branch(lw.next_block(insn))

    return lower


lower_pbl = _bit_stack(_propagate, left=True)
lower_pbr = _bit_stack(_propagate, left=False)
lower_pbl_i = _bit_immediate(_propagate, left=True)
lower_pbr_i = _bit_immediate(_propagate, left=False)
lower_pzl = _bit_stack(_zero, left=True)
lower_pzr = _bit_stack(_zero, left=False, pzr=True)
lower_pzl_i = _bit_immediate(_zero, left=True)
lower_pzr_i = _bit_immediate(_zero, left=False)


# --- stack -----------------------------------------------------------------------------
def lower_push(lw: HandlerLowering, insn: Instruction) -> None:
    lw.e.push(insn.operand or 0)
    lw.e.b.branch(lw.next_block(insn))


def lower_xchg(lw: HandlerLowering, insn: Instruction) -> None:
    e = lw.e
    tos = e.tos()
    below = e.slot(1, tos)
    top, under = e.read_slot(tos), e.read_slot(below)
    e.write_slot(tos, under)
    e.write_slot(below, top)
    e.b.branch(lw.next_block(insn))


def lower_dup_i(lw: HandlerLowering, insn: Instruction) -> None:
    e = lw.e
    lw.rt("replicate", e.pop(), insn.operand or 0)
    e.b.branch(lw.next_block(insn))


def lower_dup(lw: HandlerLowering, insn: Instruction) -> None:
    e = lw.e
    value = e.pop()
    copies = e.b.add(e.b.and_(e.pop(), c32(0xFF)), c32(1))
    lw.rt("replicate", value, copies)
    e.b.branch(lw.next_block(insn))


def lower_ros(lw: HandlerLowering, insn: Instruction) -> None:
    e = lw.e
    e.set_tos(e.slot(insn.operand or 0))
    e.b.branch(lw.next_block(insn))


# --- registers and system variables ------------------------------------------------------
def _push_register(lw: HandlerLowering, insn: Instruction) -> None:
    """Wide registers through the runtime library; a word from the host's register window
    where it holds the register, else from the host."""
    e = lw.e
    user = _register_rule(insn).user
    reg = REGISTERS_BY_INDEX[insn.operand or 0]
    if reg.shape is not RegisterShape.WORD:
        lw.status_branch(
            lw.rt("push_wide", reg.index, int(user), SHAPE_CODES[reg.shape]), lw.next_block(insn)
        )
        return
    words = lw.words
    read = lw.new_block(insn, "read")
    if not user and reg.index < S.WINDOW_REGISTERS:
        call, value = e.register_window(reg.index)
        e.b.store(value, words)
        e.b.branch(read)
        e.at(call)
    e.b.store(c32(0), words)
    status = e.host_call("read_register", [c32(reg.index), c32(int(user)), words])
    lw.host_checked(status, insn, "register")
    e.b.branch(read)
    e.at(read)
    e.push(e.b.load(words, typ=I32))
    e.b.branch(lw.next_block(insn))


def _pop_register(lw: HandlerLowering, insn: Instruction) -> None:
    e = lw.e
    user = _register_rule(insn).user
    value = e.pop()
    status = e.host_call("write_register", [c32(insn.operand or 0), c32(int(user)), value])
    lw.host_checked(status, insn, "written")
    e.b.branch(lw.next_block(insn))


def _system_value(service: str) -> Lowering:
    def lower(lw: HandlerLowering, insn: Instruction) -> None:
        e = lw.e
        words = lw.words
        e.b.store(c32(0), words)
        lw.host_checked(e.host_call(service, [words]), insn, service)
        e.push(e.b.load(words, typ=I32))
        e.b.branch(lw.next_block(insn))

    return lower


lower_push_r = _push_register
lower_pop_r = _pop_register
lower_push_u = _push_register
lower_pop_u = _pop_register
lower_push_task = _system_value("task")
lower_push_pid = _system_value("pid")
lower_push_procid = _system_value("processor")
lower_push_wid = _push_value(lambda lw: c32(WORD_WIDTH))


# --- memory and IO -----------------------------------------------------------------------
_WIDTH_TYPES = {1: I8, 2: I16, 4: I32}


def _memory_switch(
    lw: HandlerLowering, insn: Instruction, status: ir.Value, fault: ir.Block, what: str
) -> None:
    """0: go on in a new block; 1: ``fault``; anything else: the host failed."""
    e = lw.e
    ok = lw.new_block(insn, what)
    switch = e.b.switch(status, lw.host_error())
    switch.add_case(c32(0), ok)
    switch.add_case(c32(1), fault)
    e.at(ok)


def _push_loaded(
    lw: HandlerLowering, insn: Instruction, tos: ir.Value, loaded: list[ir.Value]
) -> None:
    """Replace the address at TOS with the value read (a u64: ``hi lo``, lo on top)."""
    e = lw.e
    if len(loaded) == 2:
        low, high = loaded
        e.write_slot(tos, high)
        below = e.slot(-1, tos)
        e.write_slot(below, low)
        e.set_tos(below)
    else:
        e.write_slot(tos, loaded[0])
    e.b.branch(lw.next_block(insn))


def _push_memory(lw: HandlerLowering, insn: Instruction) -> None:
    """Read through the host's direct window when the range lies inside it, else call
    ``read_memory`` (which faults, reads across regions, wraps around)."""
    e = lw.e
    width = insn.op.width
    tos = e.tos()
    address = e.read_slot(tos)
    inside, pointer = e.memory_window(address, width)
    direct, call = lw.new_block(insn, "direct"), lw.new_block(insn, "call")
    e.b.cbranch(inside, direct, call)
    e.at(direct)
    if width == 8:
        fast = [
            e.b.load(pointer, typ=I32, align=1),
            e.b.load(e.b.gep(pointer, [c64(4)], source_etype=I8), typ=I32, align=1),
        ]
    else:
        value = e.b.load(pointer, typ=_WIDTH_TYPES[width], align=1)
        fast = [e.b.zext(value, I32) if width < 4 else value]
    _push_loaded(lw, insn, tos, fast)
    e.at(call)
    buffer = lw.words
    status = e.host_call("read_memory", [address, c32(width), buffer, lw.fault])
    fault = lw.new_block(insn, "fault")
    _memory_switch(lw, insn, status, fault, "read")
    if width == 8:
        slow = [
            e.b.load(buffer, typ=I32),
            e.b.load(e.b.gep(buffer, [c64(1)], source_etype=I32), typ=I32),
        ]
    else:
        value = e.b.load(buffer, typ=_WIDTH_TYPES[width])
        slow = [e.b.zext(value, I32) if width < 4 else value]
    _push_loaded(lw, insn, tos, slow)
    e.at(fault)
    e.set_tos(e.slot(1, tos))
    lw.raise_exception(Ex.INVALID_ADDR, address, 0, insn)


def _pop_memory(lw: HandlerLowering, insn: Instruction) -> None:
    """Write through the host's direct window when the range lies inside it, else call
    ``write_memory`` (which may fault after writing the bytes before the first bad one)."""
    e = lw.e
    width = insn.op.width
    values = [e.pop()]
    if width == 8:
        values.append(e.pop())
    address = e.pop()
    inside, pointer = e.memory_window(address, width)
    direct, call = lw.new_block(insn, "direct"), lw.new_block(insn, "call")
    e.b.cbranch(inside, direct, call)
    e.at(direct)
    if width == 8:
        e.b.store(values[0], pointer, align=1)
        e.b.store(values[1], e.b.gep(pointer, [c64(4)], source_etype=I8), align=1)
    else:
        stored = values[0] if width == 4 else e.b.trunc(values[0], _WIDTH_TYPES[width])
        e.b.store(stored, pointer, align=1)
    e.b.branch(lw.next_block(insn))
    e.at(call)
    buffer = lw.words
    if width == 8:
        e.b.store(values[0], buffer)
        e.b.store(values[1], e.b.gep(buffer, [c64(1)], source_etype=I32))
    else:
        stored = values[0] if width == 4 else e.b.trunc(values[0], _WIDTH_TYPES[width])
        e.b.store(stored, buffer)
    status = e.host_call("write_memory", [address, c32(width), buffer, lw.fault])
    fault = lw.new_block(insn, "fault")
    _memory_switch(lw, insn, status, fault, "written")
    e.b.branch(lw.next_block(insn))
    e.at(fault)
    lw.raise_exception(Ex.INVALID_ADDR, address, 0, insn)


lower_push_mem_u8 = _push_memory
lower_push_mem_u16 = _push_memory
lower_push_mem_u32 = _push_memory
lower_push_mem_u64 = _push_memory
lower_pop_mem_u8 = _pop_memory
lower_pop_mem_u16 = _pop_memory
lower_pop_mem_u32 = _pop_memory
lower_pop_mem_u64 = _pop_memory


def _verify(lw: HandlerLowering, insn: Instruction) -> None:
    e = lw.e
    write = HostNeed.MEMORY_WRITE in insn.op.host
    width = insn.op.width
    address = e.pop()
    buffer = lw.words
    bad, good = lw.new_block(insn, "unreadable"), lw.new_block(insn, "accessible")
    status = e.host_call("read_memory", [address, c32(width), buffer, lw.fault])
    _memory_switch(lw, insn, status, bad, "readable")
    if write:
        status = e.host_call("write_memory", [address, c32(width), buffer, lw.fault])
        _memory_switch(lw, insn, status, bad, "writable")
    e.b.branch(good)
    for block, result in ((bad, 1), (good, 0)):
        e.at(block)
        e.push(result)
        e.b.branch(lw.next_block(insn))


lower_vfy_r = _verify
lower_vfy_rw = _verify


def lower_seg2lin(lw: HandlerLowering, insn: Instruction) -> None:
    e = lw.e
    offset = e.pop()
    selector = e.pop()
    words = lw.words
    status = e.host_call("segment_base", [selector, words])
    bad = lw.new_block(insn, "bad_selector")
    _memory_switch(lw, insn, status, bad, "base")
    e.push(e.b.add(e.b.load(words, typ=I32), offset))
    e.b.branch(lw.next_block(insn))
    e.at(bad)
    lw.raise_exception(Ex.SEG_FAULT, selector, 0, insn)


def _io_in(lw: HandlerLowering, insn: Instruction) -> None:
    e = lw.e
    width = insn.op.width
    port = e.b.and_(e.pop(), c32(INDEX_MASK))
    words = lw.words
    e.b.store(c32(0), words)
    lw.host_checked(e.host_call("io_read", [port, c32(width), words]), insn, "in")
    e.push(e.b.load(words, typ=I32))
    e.b.branch(lw.next_block(insn))


def _io_out(lw: HandlerLowering, insn: Instruction) -> None:
    e = lw.e
    width = insn.op.width
    value = e.b.and_(e.pop(), c32((1 << 8 * width) - 1))
    port = e.b.and_(e.pop(), c32(INDEX_MASK))
    lw.host_checked(e.host_call("io_write", [port, c32(width), value]), insn, "out")
    e.b.branch(lw.next_block(insn))


lower_push_io_u8 = _io_in
lower_push_io_u16 = _io_in
lower_push_io_u32 = _io_in
lower_pop_io_u8 = _io_out
lower_pop_io_u16 = _io_out
lower_pop_io_u32 = _io_out


# --- exceptions and stack traces ---------------------------------------------------------
def lower_sx(lw: HandlerLowering, insn: Instruction) -> None:
    assert insn.target is not None
    lw.e.b.store(lw.code_offset(insn.target), lw.e.top_word_ptr("handler"))
    lw.e.b.branch(lw.next_block(insn))


def lower_ux(lw: HandlerLowering, insn: Instruction) -> None:
    lw.e.b.store(c32(NO_HANDLER), lw.e.top_word_ptr("handler"))
    lw.e.b.branch(lw.next_block(insn))


lower_rx = _runtime_op("rx")


def lower_push_x(lw: HandlerLowering, insn: Instruction) -> None:
    e = lw.e
    e.push(e.load("ex_parm2"))
    e.push(e.load("ex_parm1"))
    e.push(e.load("ex_code"))
    e.b.branch(lw.next_block(insn))


lower_log_st = _runtime_op("log_st")


def lower_purge_st(lw: HandlerLowering, insn: Instruction) -> None:
    lw.e.store("ex_len", MIN_ST_SIZE)
    lw.e.b.branch(lw.next_block(insn))


def _trace(lw: HandlerLowering, insn: Instruction) -> None:
    e = lw.e
    kind = _scope(insn).value
    count = e.pop()
    first = e.pop()
    e.b.store(count, e.top_word_ptr(f"{kind}_count"))
    e.b.store(first, e.top_word_ptr(f"{kind}_first"))
    e.b.branch(lw.next_block(insn))


lower_trace_lv = _trace
lower_trace_gv = _trace
lower_trace_pv = _trace
lower_push_stp = _push_value(lambda lw: lw.e.load("ex_len"))
lower_pop_stp = _set_field("ex_len")


# --- frame (SBP/TOS relative) access ------------------------------------------------------
def _frame_push(lw: HandlerLowering, insn: Instruction) -> None:
    """push sbp/tsp: push the slot k away from SBP or TOS (k popped first if not immediate)."""
    e = lw.e
    sbp = _scope(insn) is Scope.SBP
    immediate = not _from_stack(insn)
    tos = e.tos()
    if immediate:
        k: int | ir.Value = insn.operand or 0
    else:
        k = e.read_slot(tos)
        tos = e.slot(1, tos)
    base = e.load("sbp") if sbp else tos
    value = e.read_slot(e.slot(k, base))
    new_tos = e.slot(-1, tos)
    e.write_slot(new_tos, value)
    e.set_tos(new_tos)
    e.b.branch(lw.next_block(insn))


def _frame_pop(lw: HandlerLowering, insn: Instruction) -> None:
    """pop sbp/tsp: store TOS in a slot; the immediate form computes the slot before popping."""
    e = lw.e
    sbp = _scope(insn) is Scope.SBP
    immediate = not _from_stack(insn)
    if immediate:
        base = e.load("sbp") if sbp else e.tos()
        slot = e.slot(insn.operand or 0, base)
        e.write_slot(slot, e.pop())
    else:
        value = e.pop()
        k = e.pop()
        base = e.load("sbp") if sbp else e.tos()
        e.write_slot(e.slot(k, base), value)
    e.b.branch(lw.next_block(insn))


def _frame_copy(lw: HandlerLowering, insn: Instruction) -> None:
    """copy sbp/tsp: store TOS in a slot without popping it (stack form pops k first)."""
    e = lw.e
    sbp = _scope(insn) is Scope.SBP
    immediate = not _from_stack(insn)
    k = (insn.operand or 0) if immediate else e.pop()
    tos = e.tos()
    base = e.load("sbp") if sbp else tos
    e.write_slot(e.slot(k, base), e.read_slot(tos))
    e.b.branch(lw.next_block(insn))


lower_push_sbp = _frame_push
lower_pop_sbp = _frame_pop
lower_push_tsp = _frame_push
lower_pop_tsp = _frame_pop
lower_push_sbp_i = _frame_push
lower_pop_sbp_i = _frame_pop
lower_push_tsp_i = _frame_push
lower_pop_tsp_i = _frame_pop
lower_copy_sbp_i = _frame_copy
lower_copy_tsp_i = _frame_copy
lower_copy_sbp = _frame_copy
lower_copy_tsp = _frame_copy
lower_save_sbp = _push_value(lambda lw: lw.e.load("sbp"))
lower_restore_sbp = _set_field("sbp", STACK_MASK)
lower_save_tsp = _push_value(lambda lw: lw.e.index_value(lw.e.tos()))


def lower_restore_tsp(lw: HandlerLowering, insn: Instruction) -> None:
    e = lw.e
    e.set_tos(e.b.and_(e.pop(), c32(STACK_MASK)))
    e.b.branch(lw.next_block(insn))


# --- byte heap (the allocator is a Python helper) ------------------------------------------
def _heap(lw: HandlerLowering, insn: Instruction) -> None:
    lw.status_branch(lw.rt("heap", insn.op.code, insn.operand or 0), lw.next_block(insn))


lower_malloc = _heap
lower_free = _heap
lower_pushh_u8_i = _heap
lower_pushh_u16_i = _heap
lower_pushh_u32_i = _heap
lower_pushh_u64_i = _heap
lower_poph_u8_i = _heap
lower_poph_u16_i = _heap
lower_poph_u32_i = _heap
lower_poph_u64_i = _heap


def lowering_name(op_name: str) -> str:
    return f"lower_{op_name.lower()}"


LOWERINGS: dict[str, Lowering] = {
    op.name: globals()[lowering_name(op.name)]
    for op in TABLE
    if lowering_name(op.name) in globals()
}
"""Opcode name -> its lowering (a completeness test checks that every row has one)."""
