"""Native stack traces for the runtime library: ``vm.stacktrace`` in LLVM IR.

Each function mirrors the Python function of the same name in ``vm.stacktrace`` and has
the same results, byte for byte: ``_write`` (a write must leave one byte of
``ex_logmax`` free), ``_open_record``, ``_bump``, ``_header`` (written only when it fits,
with its token-2 count record), ``_words`` (token 4/5/6 records; an out-of-range
variable index stops the handler), ``_frame`` and ``log_stack_trace``. The program name,
probe offset and program id come from the state (``name``, ``name_length``,
``probe_offset``, ``program_id``).
"""

from __future__ import annotations

from llvmlite import ir

from dprobes.vm.jit.irgen import I1, I8, I16, I32, I64, PTR, Emitter, c8, c32, c64
from dprobes.vm.stacktrace import (
    MIN_ST_SIZE,
    TOKEN_ASCII,
    TOKEN_GV_ENTRY,
    TOKEN_LV_ENTRY,
    TOKEN_RPN_ENTRY,
    TOKEN_STACK_FRAME,
    TOKEN_STACK_TRACE,
)

NONE = -1  # an absent record position (Python's None)

TYPES: dict[str, ir.FunctionType] = {
    "st_write": ir.FunctionType(I1, [PTR, PTR, I32]),
    "st_write_word": ir.FunctionType(I1, [PTR, I32]),
    "st_open": ir.FunctionType(I32, [PTR, I32]),
    "st_bump": ir.FunctionType(ir.VoidType(), [PTR, I32]),
    "st_header": ir.FunctionType(I1, [PTR]),
    "st_words": ir.FunctionType(I32, [PTR, I32, I32, I32]),  # (token, first, count)
    "st_frame": ir.FunctionType(I32, [PTR, I32]),  # frame index
}


Functions = dict[str, ir.Function]


def _begin(function: ir.Function, intrinsic: dict) -> Emitter:
    return Emitter(function, ir.IRBuilder(function.append_basic_block("entry")), intrinsic)


def _build_st_write(fn: Functions, intrinsic: dict) -> None:
    """``_write(data, n)``: False if ex_len + n >= ex_logmax, else copy and advance."""
    e = _begin(fn["st_write"], intrinsic)
    _, data, length = e.function.args
    at = e.load("ex_len")
    full, fits = e.block("full"), e.block("fits")
    e.b.cbranch(
        e.b.icmp_unsigned(
            ">=", e.b.add(e.zext64(at), e.zext64(length)), e.zext64(e.load("ex_logmax"))
        ),
        full,
        fits,
    )
    e.at(full)
    e.b.ret(ir.Constant(I1, 0))
    e.at(fits)
    e.memcpy(e.array_ptr("ex_log", at, I8), data, length)
    end = e.b.add(at, length)
    e.store("ex_len", end)
    mark = e.load("ex_log_hwm")  # bytes the next hit must clear
    e.store("ex_log_hwm", e.b.select(e.b.icmp_unsigned(">", end, mark), end, mark))
    e.b.ret(ir.Constant(I1, 1))


def _build_st_write_word(fn: Functions, intrinsic: dict) -> None:
    """``_write`` of one word."""
    e = _begin(fn["st_write_word"], intrinsic)
    _, word = e.function.args
    slot = e.alloca_entry(I32, "word")
    e.b.store(word, slot)
    e.b.ret(e.b.call(fn["st_write"], [e.state, slot, c32(4)]))


def _build_st_open(fn: Functions, intrinsic: dict) -> None:
    """``_open_record(token)``: the position of its count, or NONE."""
    e = _begin(fn["st_open"], intrinsic)
    _, token = e.function.args
    record = e.alloca_entry(I8, "record", 3)
    e.b.store(e.b.trunc(token, I8), record)
    e.b.store(ir.Constant(I16, 0), e.b.gep(record, [c64(1)], source_etype=I8), align=1)
    at = e.b.add(e.load("ex_len"), c32(1))
    written = e.b.call(fn["st_write"], [e.state, record, c32(3)])
    e.b.ret(e.b.select(written, at, c32(NONE)))


def _build_st_bump(fn: Functions, intrinsic: dict) -> None:
    """``_bump(at)``: count += 1 (16 bits) unless at is NONE."""
    e = _begin(fn["st_bump"], intrinsic)
    _, at = e.function.args
    bump, done = e.block("bump"), e.block("done")
    e.b.cbranch(e.b.icmp_unsigned("!=", at, c32(NONE)), bump, done)
    e.at(bump)
    pointer = e.array_ptr("ex_log", at, I8)
    count = e.b.load(pointer, typ=I16, align=1)
    e.b.store(e.b.add(count, ir.Constant(I16, 1)), pointer, align=1)
    e.b.branch(done)
    e.at(done)
    e.b.ret_void()


def _build_st_header(fn: Functions, intrinsic: dict) -> None:
    """``_header()``: program name record, probe offset, id, major, minor, then the count
    record."""
    e = _begin(fn["st_header"], intrinsic)
    name_length = e.load("name_length")
    size = e.b.add(name_length, c32(3 + 8 + 2 + 2 + 2))
    full, fits = e.block("full"), e.block("fits")
    e.b.cbranch(
        e.b.icmp_unsigned(
            ">=",
            e.b.add(e.b.add(e.zext64(e.load("ex_len")), e.zext64(size)), c64(3)),
            e.zext64(e.load("ex_logmax")),
        ),
        full,
        fits,
    )
    e.at(full)
    e.b.ret(ir.Constant(I1, 0))
    e.at(fits)
    prefix = e.alloca_entry(I8, "prefix", 3)
    e.b.store(c8(TOKEN_ASCII), prefix)
    e.b.store(e.b.trunc(name_length, I16), e.b.gep(prefix, [c64(1)], source_etype=I8), align=1)
    e.b.call(fn["st_write"], [e.state, prefix, c32(3)])
    e.b.call(fn["st_write"], [e.state, e.load("name"), name_length])
    tail = e.alloca_entry(I8, "tail", 14)
    e.b.store(e.load("probe_offset"), tail, align=1)
    for at, field in ((8, "program_id"), (10, "major"), (12, "minor")):
        e.b.store(e.b.trunc(e.load(field), I16), e.b.gep(tail, [c64(at)], source_etype=I8), align=1)
    e.b.call(fn["st_write"], [e.state, tail, c32(14)])
    e.store("st_count_at", e.b.call(fn["st_open"], [e.state, c32(TOKEN_STACK_TRACE)]))
    e.b.ret(ir.Constant(I1, 1))


def _build_st_words(fn: Functions, intrinsic: dict) -> None:
    """``_words(token, first, count)``: 1 written, 0 full, -1 stop (a variable index too
    big)."""
    e = _begin(fn["st_words"], intrinsic)
    _, token, first, count = e.function.args
    at = e.b.call(fn["st_open"], [e.state, token])
    full, opened = e.block("full"), e.block("opened")
    e.b.cbranch(e.b.icmp_unsigned("==", at, c32(NONE)), full, opened)
    e.at(full)
    e.b.ret(c32(0))
    e.at(opened)
    is_lv = e.b.icmp_unsigned("==", token, c32(TOKEN_LV_ENTRY))
    is_gv = e.b.icmp_unsigned("==", token, c32(TOKEN_GV_ENTRY))
    limit = e.b.select(
        is_lv,
        e.zext64(e.load("num_lv")),
        e.b.select(is_gv, e.zext64(e.load("num_gv")), c64(1 << 33)),
    )
    array = e.b.select(is_lv, e.load("lv"), e.load("gv"))
    first64 = e.zext64(first)
    end = e.b.and_(e.b.add(first64, e.zext64(count)), c64(0xFFFFFFFF))
    entry = e.b.block
    head, check, read_stack, read_var, write, stop, done = (
        e.block(n) for n in ("head", "check", "stack", "variable", "write", "stop", "done")
    )
    e.b.branch(head)
    e.at(head)
    index = e.b.phi(I64)
    index.add_incoming(first64, entry)
    e.b.cbranch(e.b.icmp_unsigned("<", index, end), check, done)
    e.at(check)
    out_of_range = e.b.icmp_unsigned(">=", index, limit)
    in_range = e.block("in_range")
    e.b.cbranch(out_of_range, stop, in_range)
    e.at(in_range)
    is_rpn = e.b.icmp_unsigned("==", token, c32(TOKEN_RPN_ENTRY))
    e.b.cbranch(is_rpn, read_stack, read_var)
    e.at(read_stack)
    from_stack = e.read_slot(e.b.and_(e.b.trunc(index, I32), c32(1023)))
    e.b.branch(write)
    e.at(read_var)
    from_var = e.b.load(e.b.gep(array, [index], source_etype=I32), typ=I32)
    e.b.branch(write)
    e.at(write)
    word = e.b.phi(I32)
    word.add_incoming(from_stack, read_stack)
    word.add_incoming(from_var, read_var)
    wrote = e.b.call(fn["st_write_word"], [e.state, word])
    bumped = e.block("bumped")
    e.b.cbranch(wrote, bumped, full)
    e.at(bumped)
    e.b.call(fn["st_bump"], [e.state, at])
    index.add_incoming(e.b.add(index, c64(1)), bumped)
    e.b.branch(head)
    e.at(stop)
    e.b.ret(c32(-1))
    e.at(done)
    e.b.ret(c32(1))


def _build_st_frame(fn: Functions, intrinsic: dict) -> None:
    """``_frame(frame)``: called and return offsets, then the pv, lv, gv records."""
    e = _begin(fn["st_frame"], intrinsic)
    _, frame = e.function.args
    word = lambda name: e.b.load(e.frame_word_ptr(frame, name), typ=I32)  # noqa: E731
    full = e.block("full")
    e.at(full)
    e.b.ret(c32(0))
    e.at(e.function.entry_basic_block)
    for name in ("called", "returns"):
        go = e.block(f"wrote_{name}")
        e.b.cbranch(e.b.call(fn["st_write_word"], [e.state, word(name)]), go, full)
        e.at(go)
    for token, kind in ((TOKEN_RPN_ENTRY, "pv"), (TOKEN_LV_ENTRY, "lv"), (TOKEN_GV_ENTRY, "gv")):
        status = e.b.call(
            fn["st_words"], [e.state, c32(token), word(f"{kind}_first"), word(f"{kind}_count")]
        )
        go, give_up = e.block(f"{kind}_done"), e.block(f"{kind}_stopped")
        e.b.cbranch(e.b.icmp_unsigned("==", status, c32(1)), go, give_up)
        e.at(give_up)
        e.b.ret(status)
        e.at(go)
    e.b.ret(c32(1))


def _build_log_stack_trace(log_stack_trace: ir.Function, fn: Functions, intrinsic: dict) -> None:
    """``log_stack_trace``: True (1) unless a traced variable index stops the handler (0)."""
    e = _begin(log_stack_trace, intrinsic)
    go_on = e.block("go_on")
    e.at(go_on)
    e.b.ret(c32(1))
    e.at(e.function.entry_basic_block)
    header, fixed = e.block("header"), e.block("fixed")
    e.b.cbranch(e.b.icmp_unsigned("==", e.load("ex_len"), c32(MIN_ST_SIZE)), header, fixed)
    e.at(header)
    e.b.cbranch(e.b.call(fn["st_header"], [e.state]), fixed, go_on)
    e.at(fixed)
    for name in ("ex_code", "ex_hand", "ex_parm1", "ex_parm2"):
        go = e.block(f"wrote_{name}")
        e.b.cbranch(e.b.call(fn["st_write_word"], [e.state, e.load(name)]), go, go_on)
        e.at(go)
    frames_at = e.b.call(fn["st_open"], [e.state, c32(TOKEN_STACK_FRAME)])
    frames = e.block("frames")
    e.b.cbranch(e.b.icmp_unsigned("==", frames_at, c32(NONE)), go_on, frames)
    e.at(frames)
    top = e.b.sub(e.load("nframes"), c32(1))
    entry = e.b.block
    head, body, next_frame, stopped, finished = (
        e.block(n) for n in ("head", "body", "next_frame", "stopped", "finished")
    )
    e.b.branch(head)
    e.at(head)
    frame = e.b.phi(I32)  # from the top frame down to frame 1 (reversed(frames[1:]))
    frame.add_incoming(top, entry)
    e.b.cbranch(e.b.icmp_signed(">=", frame, c32(1)), body, finished)
    e.at(body)
    status = e.b.call(fn["st_frame"], [e.state, frame])
    e.b.cbranch(e.b.icmp_unsigned("==", status, c32(1)), next_frame, stopped)
    e.at(stopped)
    e.b.ret(e.b.zext(e.b.icmp_unsigned("==", status, c32(0)), I32))
    e.at(next_frame)
    e.b.call(fn["st_bump"], [e.state, frames_at])
    frame.add_incoming(e.b.sub(frame, c32(1)), next_frame)
    e.b.branch(head)
    e.at(finished)
    e.b.call(fn["st_bump"], [e.state, e.load("st_count_at")])
    e.b.ret(c32(1))


def define(module: ir.Module, intrinsic: dict, log_stack_trace: ir.Function) -> None:
    """Define the helpers (internal) and ``log_stack_trace`` (1: go on, 0: stop)."""
    fn = {name: ir.Function(module, fty, f"dprobes_st_{name}") for name, fty in TYPES.items()}
    for f in fn.values():
        f.linkage = "internal"
    for build in (
        _build_st_write,
        _build_st_write_word,
        _build_st_open,
        _build_st_bump,
        _build_st_header,
        _build_st_words,
        _build_st_frame,
    ):
        build(fn, intrinsic)
    _build_log_stack_trace(log_stack_trace, fn, intrinsic)
