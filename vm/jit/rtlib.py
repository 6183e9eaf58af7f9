"""The native runtime library: what compiled handlers call for everything but the hot path.

Compiled once per process (``vm.jit.compile``) and linked into every handler by symbol.
Each function mirrors a piece of the interpreter, named after it:

=================  ===========================================================
``rt_begin``       ``Machine.__init__``: the per-hit reset of a state
``rt_finish``      ``Machine.finish``: only the first reason to stop counts
``rt_raise``       ``Machine.raise_exception`` (mask, non-maskable end, ignore)
``rt_raise_pending`` / ``rt_dispatch`` / ``rt_rx``  the rest of exception dispatch
``rt_ret``         ``ops.ret`` (returns to a frame's return point, or re-dispatches)
``rt_log_*``       the logging semantics of ``ops`` (log n, log, log str, log mrf,
                   log lv/gv), with ``rt_fault_record`` and ``rt_overflow``
``rt_replicate``   ``ops._replicate`` (dup)
``rt_push_wide``   ``ops._push_wide`` (cpuid, msr, gdtr/idtr, x87, xmm registers)
``rt_log_st``      ``ops.log_st`` through the stack-trace helper
``rt_heap``        malloc/free/pushh/poph through the heap helper
=================  ===========================================================

Operations return a status (``vm.jit.state.ST_*``): continue with the next instruction,
resume at the code offset in ``state.resume`` (a return point or an exception handler),
or stop. Length arithmetic on the log and exception buffers is done in 64 bits, so, as
in the interpreter, nothing wraps past a bounds check.
"""

from __future__ import annotations

from llvmlite import ir

from dprobes.vm.exceptions import NO_HANDLER, NON_MASKABLE, OperandError
from dprobes.vm.exceptions import ExceptionCode as Ex
from dprobes.vm.interp import DISPATCH_LIMIT
from dprobes.vm.jit import rt_stacktrace
from dprobes.vm.jit import state as S
from dprobes.vm.jit.irgen import (
    I8,
    I16,
    I32,
    I64,
    PTR,
    STATUS,
    VOID,
    Emitter,
    c8,
    c32,
    c64,
    intrinsics,
)
from dprobes.vm.model import RECORD_PREFIX as PREFIX
from dprobes.vm.model import TOKEN_ASCII, TOKEN_LOG, TOKEN_MEMORY, TOKEN_MEMORY_FAULT
from dprobes.vm.registers import RegisterShape
from dprobes.vm.stacktrace import MIN_ST_SIZE, TOKEN_GV_ENTRY, TOKEN_LV_ENTRY

SYMBOL_PREFIX = "dprobes_rt_"

RT_TYPES: dict[str, ir.FunctionType] = {
    "begin": ir.FunctionType(VOID, [PTR]),
    "finish": ir.FunctionType(VOID, [PTR, I32, I32, I32, I32, I32]),
    "host_error": ir.FunctionType(STATUS, [PTR]),
    "raise": ir.FunctionType(STATUS, [PTR, I32, I32, I32]),
    "raise_pending": ir.FunctionType(STATUS, [PTR]),
    "dispatch": ir.FunctionType(STATUS, [PTR]),
    "rx": ir.FunctionType(STATUS, [PTR]),
    "ret": ir.FunctionType(STATUS, [PTR]),
    "overflow": ir.FunctionType(STATUS, [PTR]),
    "fault_record": ir.FunctionType(STATUS, [PTR, I32]),
    "log_words": ir.FunctionType(VOID, [PTR, I32]),
    "log_n": ir.FunctionType(STATUS, [PTR, I32]),
    "log_record": ir.FunctionType(STATUS, [PTR]),
    "log_str": ir.FunctionType(STATUS, [PTR]),
    "log_mrf": ir.FunctionType(STATUS, [PTR]),
    "log_vars": ir.FunctionType(STATUS, [PTR, I32]),
    "log_st": ir.FunctionType(STATUS, [PTR]),
    "stack_trace": ir.FunctionType(I32, [PTR]),
    "replicate": ir.FunctionType(VOID, [PTR, I32, I32]),
    "push_wide": ir.FunctionType(STATUS, [PTR, I32, I32, I32]),
    "heap": ir.FunctionType(STATUS, [PTR, I32, I32]),
}

SHAPE_CODES = {shape: i for i, shape in enumerate(RegisterShape)}
"""``rt_push_wide``'s shape argument."""


def symbol(name: str) -> str:
    return SYMBOL_PREFIX + name


def declare(module: ir.Module) -> dict[str, ir.Function]:
    """Declare the runtime library in a handler module."""
    return {name: ir.Function(module, fty, symbol(name)) for name, fty in RT_TYPES.items()}


class _Library:
    def __init__(self) -> None:
        self.module = ir.Module(name="dprobes_rtlib")
        self.intrinsic = intrinsics(self.module)
        self.fn = declare(self.module)

    def define(self, name: str) -> Emitter:
        function = self.fn[name]
        builder = ir.IRBuilder(function.append_basic_block("entry"))
        return Emitter(function, builder, self.intrinsic)

    def call(self, e: Emitter, name: str, *args: ir.Value | int) -> ir.Value:
        values = [e.state, *(c32(a) if isinstance(a, int) else a for a in args)]
        return e.b.call(self.fn[name], values)


def _finish(lib: _Library, e: Emitter, kind: int, exception: tuple | None = None) -> None:
    code, p1, p2 = exception if exception is not None else (0, 0, 0)
    lib.call(e, "finish", kind, 1 if exception is not None else 0, code, p1, p2)


def _status(value: int) -> ir.Constant:
    return c32(value)


def _umin(e: Emitter, a: ir.Value, b: ir.Value) -> ir.Value:
    return e.b.select(e.b.icmp_unsigned("<", a, b), a, b)


def _overflow_if(lib: _Library, e: Emitter, condition: ir.Value) -> None:
    """Return the overflow status when ``condition`` holds; go on here otherwise."""
    full, fits = e.block("overflow"), e.block("fits")
    e.b.cbranch(condition, full, fits)
    e.at(full)
    e.b.ret(lib.call(e, "overflow"))
    e.at(fits)


def note_log_end(e: Emitter) -> None:
    """After writing the log: every byte written so far is below log_len (for rt_begin)."""
    length, mark = e.load("log_len"), e.load("log_hwm")
    e.store("log_hwm", e.b.select(e.b.icmp_unsigned(">", length, mark), length, mark))


# --- per-hit reset and ending --------------------------------------------------------
INLINE_CLEAR = 64
"""Bytes of a buffer ``rt_begin`` clears with inline stores; more go to memset."""


def _clear(e: Emitter, buffer: ir.Value, length: ir.Value) -> None:
    """Zero ``buffer[0:length]``. A hit clears a few bytes, which a libc memset call costs
    more than: up to ``INLINE_CLEAR`` are cleared 8 at a time, rounded up to 8 (the log
    buffers are multiples of 8 bytes and zero past their high-water marks, so the
    rounding clears nothing that is not zero already)."""
    assert S.LOG_BUFFER % 8 == 0 and S.EX_LOG_BUFFER % 8 == 0
    length = e.zext64(length)
    bulk, inline, done = e.block("clear_bulk"), e.block("clear_inline"), e.block("cleared")
    e.b.cbranch(e.b.icmp_unsigned(">", length, c64(INLINE_CLEAR)), bulk, inline)
    e.at(bulk)
    e.memset(buffer, length)
    e.b.branch(done)
    e.at(inline)
    for offset in range(0, INLINE_CLEAR, 8):
        store = e.block(f"clear_{offset}")
        e.b.cbranch(e.b.icmp_unsigned(">", length, c64(offset)), store, done)
        e.at(store)
        e.b.store(c64(0), e.b.gep(buffer, [c64(offset)], source_etype=I8))
    e.b.branch(done)
    e.at(done)


def _define_begin(lib: _Library) -> None:
    e = lib.define("begin")
    e.memset(e.field("var_dirty"), c64(2))
    for name in (
        "stack_dirty",
        "tos",
        "sbp",
        "jmp_count",
        "dispatches",
        "log_overflow",
        "ex_pending",
        "ex_parm1",
        "ex_parm2",
        "exit_kind",
        "exit_to",
        "has_exception",
        "exc_code",
        "exc_parm1",
        "exc_parm2",
        "resume",
        "req_code",
        "req_parm1",
        "req_parm2",
    ):
        e.store(name, 0)
    e.store("nframes", 1)
    for word in S.FRAME_FIELDS:
        e.b.store(c32(NO_HANDLER if word == "handler" else 0), e.frame_word_ptr(c32(0), word))
    header = e.load("header_length")
    e.store("log_len", header)
    e.store("prev_log_len", header)
    # a fresh log and exception buffer: zero what earlier hits may have written
    _clear(e, e.field("log"), _umin(e, e.load("log_hwm"), e.load("log_cap")))
    e.store("log_hwm", 0)
    e.store("ex_len", MIN_ST_SIZE)
    e.store("st_count_at", S.ST_COUNT_NONE)
    _clear(e, e.field("ex_log"), _umin(e, e.load("ex_log_hwm"), e.load("ex_log_size")))
    e.store("ex_log_hwm", 0)
    e.store("ex_hand", NO_HANDLER)
    e.store("major", e.load("probe_major"))
    e.store("minor", e.load("probe_minor"))
    e.b.ret_void()


def set_ending(
    e: Emitter, kind: ir.Value, has: ir.Value, code: ir.Value, p1: ir.Value, p2: ir.Value
) -> None:
    """How the handler ended, unless an earlier ending was recorded (the first one wins)."""
    first = e.b.icmp_unsigned("==", e.load("exit_kind"), c32(S.EXIT_NONE))
    with e.b.if_then(first):
        e.store("exit_kind", kind)
        e.store("has_exception", has)
        e.store("exc_code", code)
        e.store("exc_parm1", p1)
        e.store("exc_parm2", p2)


def _define_finish(lib: _Library) -> None:
    e = lib.define("finish")
    set_ending(e, *e.function.args[1:])
    e.b.ret_void()


def _define_host_error(lib: _Library) -> None:
    e = lib.define("host_error")
    _finish(lib, e, S.EXIT_HOST_ERROR)
    e.b.ret(_status(S.ST_HOST_ERROR))


# --- exceptions (Machine.raise_exception and friends) -------------------------------
def _pending(e: Emitter) -> tuple[ir.Value, ir.Value, ir.Value]:
    return e.load("ex_code"), e.load("ex_parm1"), e.load("ex_parm2")


def _define_stack_trace(lib: _Library) -> None:
    """1: go on, 0: the handler must stop (``vm.jit.rt_stacktrace``)."""
    rt_stacktrace.define(lib.module, lib.intrinsic, lib.fn["stack_trace"])


def _define_raise(lib: _Library) -> None:
    e = lib.define("raise")
    _, code, p1, p2 = e.function.args
    in_mask = e.block("in_mask")
    not_in_mask = e.block("not_in_mask")
    terminate = e.block("terminate")
    ignore = e.block("ignore")
    e.b.cbranch(
        e.b.icmp_unsigned("!=", e.b.and_(code, e.load("ex_mask")), c32(0)), in_mask, not_in_mask
    )

    e.at(in_mask)
    e.store("ex_code", code)
    e.store("ex_parm1", p1)
    e.store("ex_parm2", p2)
    e.push(p2)
    e.push(p1)
    e.push(code)
    e.b.ret(lib.call(e, "raise_pending"))

    e.at(not_in_mask)
    e.b.cbranch(
        e.b.icmp_unsigned("!=", e.b.and_(code, c32(NON_MASKABLE)), c32(0)), terminate, ignore
    )

    e.at(terminate)
    e.store("ex_hand", e.b.load(e.top_word_ptr("handler"), typ=I32))
    traced = e.block("traced")
    end = e.block("end")
    e.b.cbranch(e.b.icmp_unsigned("!=", e.load("autostacktrace"), c32(0)), traced, end)
    e.at(traced)
    result = lib.call(e, "stack_trace")
    failed = e.block("failed")
    e.b.cbranch(e.b.icmp_signed("<", result, c32(0)), failed, end)
    e.at(failed)
    e.b.ret(lib.call(e, "host_error"))
    e.at(end)
    _finish(lib, e, S.EXIT_TERMINATED, (code, p1, p2))
    e.b.ret(_status(S.ST_STOP))

    e.at(ignore)
    e.b.ret(_status(S.ST_CONTINUE))


def _define_raise_pending(lib: _Library) -> None:
    e = lib.define("raise_pending")
    e.store("ex_pending", 1)
    e.store("ex_hand", e.b.load(e.top_word_ptr("handler"), typ=I32))
    traced = e.block("traced")
    go = e.block("dispatch")
    e.b.cbranch(e.b.icmp_unsigned("!=", e.load("autostacktrace"), c32(0)), traced, go)
    e.at(traced)
    result = lib.call(e, "stack_trace")
    failed, stop = e.block("failed"), e.block("stop")
    switch = e.b.switch(result, failed)
    switch.add_case(c32(1), go)
    switch.add_case(c32(0), stop)
    e.at(failed)
    e.b.ret(lib.call(e, "host_error"))
    e.at(stop)
    _finish(lib, e, S.EXIT_TERMINATED, _pending(e))
    e.b.ret(_status(S.ST_STOP))
    e.at(go)
    e.b.ret(lib.call(e, "dispatch"))


def _define_dispatch(lib: _Library) -> None:
    """Jump to the current frame's handler (one-shot), else unwind a frame and retry."""
    e = lib.define("dispatch")
    loop, check_hand, found, unwind, done = (
        e.block(n) for n in ("loop", "check_hand", "found", "unwind", "done")
    )
    e.b.branch(loop)

    e.at(loop)
    nframes = e.load("nframes")
    only_top = e.b.icmp_unsigned("==", nframes, c32(1))
    top_free = e.b.icmp_unsigned(
        "==", e.b.load(e.frame_word_ptr(c32(0), "handler"), typ=I32), c32(NO_HANDLER)
    )
    e.b.cbranch(e.b.and_(only_top, top_free), done, check_hand)

    e.at(done)
    _finish(lib, e, S.EXIT_TERMINATED, _pending(e))
    e.b.ret(_status(S.ST_STOP))

    e.at(check_hand)
    hand = e.load("ex_hand")
    e.b.cbranch(e.b.icmp_unsigned("!=", hand, c32(NO_HANDLER)), found, unwind)

    e.at(found)
    dispatches = e.b.add(e.load("dispatches"), c32(1))
    e.store("dispatches", dispatches)
    endless, go = e.block("endless"), e.block("go")
    e.b.cbranch(e.b.icmp_unsigned(">", dispatches, c32(DISPATCH_LIMIT)), endless, go)
    e.at(endless)  # interp.Machine.dispatch: a handler re-arming itself forever
    _finish(lib, e, S.EXIT_TERMINATED, (c32(Ex.MAX_JMPS), e.load("jmpmax"), c32(0)))
    e.b.ret(_status(S.ST_STOP))
    e.at(go)
    e.store("ex_pending", 0)
    e.b.store(c32(NO_HANDLER), e.top_word_ptr("handler"))
    e.store("resume", hand)
    e.b.ret(_status(S.ST_RESUME))

    e.at(unwind)
    top = e.top_frame()
    # never pop the top-level frame (the interpreter cannot get here with one frame left:
    # ex_hand is always that frame's handler; natively, do not index frames[-1])
    popped = e.block("popped")
    e.b.cbranch(e.b.icmp_unsigned("==", top, c32(0)), done, popped)
    e.at(popped)
    e.store("sbp", e.b.load(e.frame_word_ptr(top, "sbp"), typ=I32))
    e.store("nframes", top)
    e.store("ex_hand", e.b.load(e.top_word_ptr("handler"), typ=I32))
    e.b.branch(loop)


def _define_rx(lib: _Library) -> None:
    e = lib.define("rx")
    e.store("ex_code", e.peek(0))
    e.store("ex_parm1", e.peek(1))
    e.store("ex_parm2", e.peek(2))
    e.b.ret(lib.call(e, "raise_pending"))


def _define_ret(lib: _Library) -> None:
    e = lib.define("ret")
    top_level, pop = e.block("top_level"), e.block("pop")
    e.b.cbranch(e.b.icmp_unsigned("==", e.load("nframes"), c32(1)), top_level, pop)
    e.at(top_level)
    e.b.ret(lib.call(e, "raise", int(Ex.CALL_STACK_OVERFLOW), 0, 0))
    e.at(pop)
    top = e.top_frame()
    returns = e.b.load(e.frame_word_ptr(top, "returns"), typ=I32)
    e.store("sbp", e.b.load(e.frame_word_ptr(top, "sbp"), typ=I32))
    e.store("nframes", top)
    pending, back = e.block("pending"), e.block("back")
    e.b.cbranch(e.b.icmp_unsigned("!=", e.load("ex_pending"), c32(0)), pending, back)
    e.at(pending)
    e.store("ex_hand", e.b.load(e.top_word_ptr("handler"), typ=I32))
    e.b.ret(lib.call(e, "dispatch"))
    e.at(back)
    e.store("resume", returns)
    e.b.ret(_status(S.ST_RESUME))


# --- logging --------------------------------------------------------------------------
def _define_overflow(lib: _Library) -> None:
    e = lib.define("overflow")
    e.b.ret(lib.call(e, "raise", int(Ex.LOG_OVERFLOW), e.load("log_cap"), 0))


def _define_log_words(lib: _Library) -> None:
    """Pop ``count`` words into the log at log_len (the caller checked the room)."""
    e = lib.define("log_words")
    _, count = e.function.args
    at = e.load("log_len")
    head = e.block("head")
    body = e.block("body")
    done = e.block("done")
    entry = e.b.block
    e.b.branch(head)
    e.at(head)
    i = e.b.phi(I32)
    i.add_incoming(c32(0), entry)
    e.b.cbranch(e.b.icmp_unsigned("<", i, count), body, done)
    e.at(body)
    word = e.pop()
    e.put("log", e.b.add(at, e.b.mul(i, c32(4))), word)
    following = e.b.add(i, c32(1))
    i.add_incoming(following, body)
    e.b.branch(head)
    e.at(done)
    e.store("log_len", e.b.add(at, e.b.mul(count, c32(4))))
    note_log_end(e)
    e.b.ret_void()


def _define_log_n(lib: _Library) -> None:
    """``log n``: n raw words, no prefix (ops.log_raw)."""
    e = lib.define("log_n")
    _, wanted = e.function.args
    length = e.load("log_len")
    e.store("prev_log_len", length)
    room = e.smin64(
        e.b.mul(e.zext64(wanted), c64(4)), e.b.sub(e.zext64(e.load("log_cap")), e.zext64(length))
    )
    _overflow_if(lib, e, e.b.icmp_signed("<", room, c64(0)))
    count = e.b.trunc(e.b.lshr(room, c64(2)), I32)
    lib.call(e, "log_words", count)
    _overflow_if(lib, e, e.b.icmp_unsigned("<", count, wanted))
    e.store("prev_log_len", e.load("log_len"))
    e.b.ret(_status(S.ST_CONTINUE))


def _define_log_record(lib: _Library) -> None:
    """Stack-form ``log``: a token-7 record of (u16)n words (ops.log_record)."""
    e = lib.define("log_record")
    wanted = e.b.and_(e.pop(), c32(0xFFFF))
    start = e.load("log_len")
    e.store("prev_log_len", start)
    room = e.smin64(
        e.b.add(e.b.mul(e.zext64(wanted), c64(4)), c64(PREFIX)),
        e.b.sub(e.zext64(e.load("log_cap")), e.zext64(start)),
    )
    _overflow_if(lib, e, e.b.icmp_signed("<", room, c64(PREFIX)))
    e.store("log_len", e.b.add(start, c32(PREFIX)))
    count = e.b.trunc(e.b.lshr(e.b.sub(room, c64(PREFIX)), c64(2)), I32)
    lib.call(e, "log_words", count)
    e.put("log", start, c8(TOKEN_LOG))
    e.put("log", e.b.add(start, c32(1)), e.b.trunc(count, I16))
    note_log_end(e)
    _overflow_if(lib, e, e.b.icmp_unsigned("<", count, wanted))
    e.store("prev_log_len", e.load("log_len"))
    e.b.ret(_status(S.ST_CONTINUE))


def _define_fault_record(lib: _Library) -> None:
    """Roll back a failed log str/mrf: a 7-byte fault record, then EX_INVALID_ADDR."""
    e = lib.define("fault_record")
    _, address = e.function.args
    at = e.load("log_len")
    _overflow_if(
        lib, e, e.b.icmp_unsigned(">", e.b.add(e.zext64(at), c64(7)), e.zext64(e.load("log_cap")))
    )
    e.put("log", at, c8(TOKEN_MEMORY_FAULT))
    e.put("log", e.b.add(at, c32(1)), ir.Constant(I16, 4))
    e.put("log", e.b.add(at, c32(3)), address)
    e.store("log_len", e.b.add(at, c32(7)))
    note_log_end(e)
    e.b.ret(lib.call(e, "raise", int(Ex.INVALID_ADDR), address, 0))


def _copy_record(e: Emitter, start: ir.Value, token: int, length: ir.Value) -> None:
    """prefix(token, length) + scratch[0:length] at log[start]; log_len = prev = the end."""
    e.put("log", start, c8(token))
    e.put("log", e.b.add(start, c32(1)), e.b.trunc(length, I16))
    e.memcpy(e.log_ptr(e.b.add(start, c32(PREFIX))), e.field("scratch"), length)
    end = e.b.add(e.b.add(start, c32(PREFIX)), length)
    e.store("log_len", end)
    e.store("prev_log_len", end)
    note_log_end(e)


def _memory_status(lib: _Library, e: Emitter, status: ir.Value, fault: ir.Value) -> None:
    """After a host memory call: branch away on a fault or an error, else fall through."""
    bad, failed, ok = e.block("fault"), e.block("host_failed"), e.block("read")
    switch = e.b.switch(status, failed)
    switch.add_case(c32(0), ok)
    switch.add_case(c32(1), bad)
    e.at(failed)
    e.b.ret(lib.call(e, "host_error"))
    e.at(bad)
    e.b.ret(lib.call(e, "fault_record", e.b.load(fault, typ=I32)))
    e.at(ok)


def _define_log_str(lib: _Library) -> None:
    e = lib.define("log_str")
    address = e.pop()
    wanted = e.pop()
    start = e.load("log_len")
    e.store("prev_log_len", start)
    room = e.b.sub(e.b.sub(e.zext64(e.load("log_cap")), e.zext64(start)), c64(PREFIX))
    length = e.smin64(e.zext64(wanted), room)
    _overflow_if(lib, e, e.b.icmp_signed("<", length, c64(0)))
    limit = e.b.trunc(length, I32)
    got = e.alloca_entry(I32, "got")
    fault = e.alloca_entry(I32, "fault")
    e.b.store(c32(0), got)
    status = e.host_call("read_cstring", [address, limit, e.field("scratch"), got, fault])
    _memory_status(lib, e, status, fault)
    count = e.b.load(got, typ=I32)
    count = e.b.select(e.b.icmp_unsigned("<", count, limit), count, limit)  # distrust hosts
    _copy_record(e, start, TOKEN_ASCII, count)
    e.b.ret(_status(S.ST_CONTINUE))


def _define_log_mrf(lib: _Library) -> None:
    e = lib.define("log_mrf")
    address = e.pop()
    wanted = e.zext64(e.pop())
    start = e.load("log_len")
    e.store("prev_log_len", start)
    cap = e.zext64(e.load("log_cap"))
    entry = e.b.block
    too_long, read = e.block("too_long"), e.block("read")
    e.b.cbranch(
        e.b.icmp_unsigned(">", e.b.add(e.b.add(e.zext64(start), wanted), c64(PREFIX)), cap),
        too_long,
        read,
    )
    e.at(too_long)
    e.store("log_overflow", 1)
    cut = e.b.sub(e.b.sub(cap, e.zext64(start)), c64(PREFIX))
    negative = e.block("negative")
    cut_block = e.b.block
    e.b.cbranch(e.b.icmp_signed("<", cut, c64(0)), negative, read)
    e.at(negative)
    e.b.ret(lib.call(e, "overflow"))
    e.at(read)
    length64 = e.b.phi(I64)
    length64.add_incoming(wanted, entry)
    length64.add_incoming(cut, cut_block)
    length = e.b.trunc(length64, I32)
    fault = e.alloca_entry(I32, "fault")
    status = e.host_call("read_memory", [address, length, e.field("scratch"), fault])
    _memory_status(lib, e, status, fault)
    _copy_record(e, start, TOKEN_MEMORY, length)
    e.b.ret(_status(S.ST_CONTINUE))


def _define_log_vars(lib: _Library) -> None:
    """log lv / log gv: a token 5/6 record whose count grows with each word logged."""
    e = lib.define("log_vars")
    _, local = e.function.args
    count = e.pop()
    first = e.pop()
    start = e.load("log_len")
    cap = e.zext64(e.load("log_cap"))
    _overflow_if(lib, e, e.b.icmp_unsigned(">", e.b.add(e.zext64(start), c64(PREFIX)), cap))
    is_local = e.b.icmp_unsigned("!=", local, c32(0))
    token = e.b.select(is_local, c8(TOKEN_LV_ENTRY), c8(TOKEN_GV_ENTRY))
    e.put("log", start, token)
    e.put("log", e.b.add(start, c32(1)), ir.Constant(I16, 0))
    e.store("log_len", e.b.add(start, c32(PREFIX)))
    note_log_end(e)
    array = e.b.select(is_local, e.load("lv"), e.load("gv"))
    limit = e.zext64(e.b.select(is_local, e.load("num_lv"), e.load("num_gv")))
    first64 = e.zext64(first)
    end = e.b.and_(e.b.add(first64, e.zext64(count)), c64(0xFFFFFFFF))
    entry = e.b.block
    head, check_room, body, done = (e.block(n) for n in ("head", "check_room", "body", "done"))
    bad_index, no_room = e.block("bad_index"), e.block("no_room")
    e.b.branch(head)
    e.at(head)
    index = e.b.phi(I64)
    logged = e.b.phi(I32)
    index.add_incoming(first64, entry)
    logged.add_incoming(c32(0), entry)
    e.b.cbranch(e.b.icmp_unsigned("<", index, end), check_room, done)
    e.at(check_room)
    e.b.cbranch(e.b.icmp_unsigned(">=", index, limit), bad_index, body)
    e.at(bad_index)
    kind = e.b.select(is_local, c32(OperandError.LOCAL_INDEX), c32(OperandError.GLOBAL_INDEX))
    e.b.ret(lib.call(e, "raise", int(Ex.INVALID_OPERAND), kind, e.b.trunc(index, I32)))
    e.at(body)
    at = e.load("log_len")
    room_ok = e.block("room_ok")
    e.b.cbranch(e.b.icmp_unsigned(">", e.b.add(e.zext64(at), c64(4)), cap), no_room, room_ok)
    e.at(no_room)
    e.b.ret(lib.call(e, "overflow"))
    e.at(room_ok)
    value = e.b.load(e.b.gep(array, [index], source_etype=I32), typ=I32)
    e.put("log", at, value)
    e.store("log_len", e.b.add(at, c32(4)))
    note_log_end(e)
    bumped = e.b.add(logged, c32(1))
    e.put("log", e.b.add(start, c32(1)), e.b.trunc(bumped, I16))
    index.add_incoming(e.b.add(index, c64(1)), room_ok)
    logged.add_incoming(bumped, room_ok)
    e.b.branch(head)
    e.at(done)
    e.b.ret(_status(S.ST_CONTINUE))


def _define_log_st(lib: _Library) -> None:
    e = lib.define("log_st")
    result = lib.call(e, "stack_trace")
    failed, stop, go = e.block("failed"), e.block("stop"), e.block("go")
    switch = e.b.switch(result, failed)
    switch.add_case(c32(1), go)
    switch.add_case(c32(0), stop)
    e.at(failed)
    e.b.ret(lib.call(e, "host_error"))
    e.at(stop)
    _finish(lib, e, S.EXIT_TERMINATED)
    e.b.ret(_status(S.ST_STOP))
    e.at(go)
    e.b.ret(_status(S.ST_CONTINUE))


# --- stack and registers -------------------------------------------------------------
def _define_replicate(lib: _Library) -> None:
    e = lib.define("replicate")
    _, value, copies = e.function.args
    entry = e.b.block
    head, body, done = e.block("head"), e.block("body"), e.block("done")
    e.b.branch(head)
    e.at(head)
    i = e.b.phi(I32)
    i.add_incoming(c32(0), entry)
    e.b.cbranch(e.b.icmp_unsigned("<", i, copies), body, done)
    e.at(body)
    e.push(value)
    i.add_incoming(e.b.add(i, c32(1)), body)
    e.b.branch(head)
    e.at(done)
    e.b.ret_void()


def _define_push_wide(lib: _Library) -> None:
    """push r/u of a register that is not one word (ops._push_wide)."""
    e = lib.define("push_wide")
    _, index, user, shape = e.function.args
    words = e.alloca_entry(I32, "words", 4)
    e.memset(words, c64(16))

    def word(i: int) -> ir.Value:
        return e.b.load(e.b.gep(words, [c64(i)], source_etype=I32), typ=I32)

    failed = e.block("failed")
    e.at(failed)
    e.b.ret(lib.call(e, "host_error"))
    cases = {
        RegisterShape.CPUID: e.block("cpuid"),
        RegisterShape.MSR: e.block("msr"),
        RegisterShape.DESCRIPTOR: e.block("descriptor"),
        RegisterShape.X87: e.block("x87"),
        RegisterShape.XMM: e.block("xmm"),
    }
    e.at(e.function.entry_basic_block)
    register = e.block("register")
    switch = e.b.switch(shape, register)
    for shape_kind, block in cases.items():
        switch.add_case(c32(SHAPE_CODES[shape_kind]), block)

    def checked(status: ir.Value, then: str) -> ir.Block:
        ok = e.block(then)
        e.b.cbranch(e.b.icmp_signed("<", status, c32(0)), failed, ok)
        e.at(ok)
        return ok

    def push_words(*values: ir.Value) -> None:
        for value in values:
            e.push(value)
        e.b.ret(_status(S.ST_CONTINUE))

    e.at(cases[RegisterShape.CPUID])
    checked(e.host_call("cpuid", [e.pop(), words]), "cpuid_ok")
    push_words(word(3), word(2), word(1), word(0))  # edx, ecx, ebx, eax

    e.at(cases[RegisterShape.MSR])
    checked(e.host_call("read_msr", [e.pop(), words]), "msr_ok")
    push_words(word(1), word(0))

    e.at(register)
    e.b.ret(_status(S.ST_CONTINUE))  # one-word registers are lowered inline

    for shape_kind in (RegisterShape.DESCRIPTOR, RegisterShape.X87, RegisterShape.XMM):
        e.at(cases[shape_kind])
        checked(e.host_call("read_register", [index, user, words]), f"{shape_kind.name}_ok")
        if shape_kind is RegisterShape.DESCRIPTOR:  # base, then limit
            base = e.b.or_(e.b.lshr(word(0), c32(16)), e.b.shl(word(1), c32(16)))
            push_words(base, e.b.and_(word(0), c32(0xFFFF)))
        elif shape_kind is RegisterShape.X87:
            push_words(e.b.and_(word(2), c32(0xFFFF)), word(1), word(0))
        else:
            push_words(word(3), word(2), word(1), word(0))


# --- the heap (Python helper) ----------------------------------------------------------
def _define_heap(lib: _Library) -> None:
    e = lib.define("heap")
    _, opcode, operand = e.function.args
    result = e.helper_call("heap", [e.state, opcode, operand])
    failed, request, ok = e.block("failed"), e.block("request"), e.block("ok")
    switch = e.b.switch(result, failed)
    switch.add_case(c32(S.HELPER_OK), ok)
    switch.add_case(c32(S.HELPER_RAISE), request)
    e.at(failed)
    e.b.ret(lib.call(e, "host_error"))
    e.at(request)
    e.b.ret(lib.call(e, "raise", e.load("req_code"), e.load("req_parm1"), e.load("req_parm2")))
    e.at(ok)
    e.b.ret(_status(S.ST_CONTINUE))


def build_rtlib() -> ir.Module:
    """The runtime library as an LLVM module."""
    lib = _Library()
    for define in (
        _define_begin,
        _define_finish,
        _define_host_error,
        _define_stack_trace,
        _define_raise,
        _define_raise_pending,
        _define_dispatch,
        _define_rx,
        _define_ret,
        _define_overflow,
        _define_log_words,
        _define_log_n,
        _define_log_record,
        _define_fault_record,
        _define_log_str,
        _define_log_mrf,
        _define_log_vars,
        _define_log_st,
        _define_replicate,
        _define_push_wide,
        _define_heap,
    ):
        define(lib)
    undefined = [name for name, fn in lib.fn.items() if not fn.blocks]
    assert not undefined, f"runtime functions without a body: {undefined}"
    return lib.module
