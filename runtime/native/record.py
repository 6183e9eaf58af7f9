"""A native hit's log record: its head and header fields, its log bytes, the ring.

The record is built in the process's ``Pending`` hit: at the int3 its head names the
probe and ``note_header`` packs the machine state the program's log fields select after
it, generated from ``ring.HEADER_FIELDS`` (the layout Python decodes with); the handler's
outcome fills in the rest (``runtime.native.handler``). ``keep_log`` moves the log bytes
out of the handler's state when the hit leaves the interrupt before it is logged, and
``commit`` appends head, header fields, log and exception log to the ring (``ring``
describes the format), asking Python to drain a full ring first.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from llvmlite import ir

from dprobes.runtime.native.layout import Hook, Pending, ProbeEntry, ProcessSlot, call_out
from dprobes.runtime.native.registers import CS, ESP, SS
from dprobes.runtime.ring import HEADER_FIELDS, RecordHead
from dprobes.vm.jit.irgen import (
    I32,
    I64,
    PTR,
    VOID,
    FunctionBuilder,
    ModuleBuilder,
    c32,
    field_type,
)

RECORD_ALIGN = 4
"""Ring records start at multiples of this (``NativeProbes.decode`` steps so)."""


def head_field(f: FunctionBuilder, pending: ir.Value, name: str) -> ir.Value:
    """A u16 field of the pending record's head, widened to i32."""
    return f.b.zext(f.get(f.member(pending, Pending, "head"), RecordHead, name), I32)


def set_head_field(f: FunctionBuilder, pending: ir.Value, name: str, value: ir.Value) -> None:
    """Store the low bits of ``value`` (i32) into a field of the pending record's head."""
    f.set(
        f.member(pending, Pending, "head"),
        RecordHead,
        name,
        f.b.trunc(value, field_type(RecordHead, name)),
    )


def _header_sources(
    f: FunctionBuilder, hook: ir.Value, proc: ir.Value
) -> dict[str, Callable[[], ir.Value]]:
    """How to read each header field ``HEADER_FIELDS`` names."""
    return {
        "uid": lambda: f.get(proc, ProcessSlot, "uid"),
        "cs": lambda: f.call("reg", hook, CS),
        "ss": lambda: f.call("reg", hook, SS),
        "esp": lambda: f.call("reg", hook, ESP),
        "executed": lambda: f.b.load(f.get(hook, Hook, "executed"), typ=I64),
    }


def _define_note_header(m: ModuleBuilder) -> None:
    """The machine state the entry's log fields select, packed after the pending record's
    head in ``HEADER_FIELDS`` order; nothing else is read (a register read costs
    ~10 ns)."""
    f = m.define("note_header", VOID, [("hook", PTR), ("proc", PTR), ("entry", PTR)])
    hook, proc, entry = f.function.args
    fields = f.get(entry, ProbeEntry, "fields")
    cursor = f.alloca_entry(PTR, "cursor")
    f.b.store(f.member(f.member(proc, ProcessSlot, "pending"), Pending, "header"), cursor)
    sources = _header_sources(f, hook, proc)
    for flag, names, codes in HEADER_FIELDS:
        chosen, after = f.block(f"has_{flag.name.lower()}"), f.block("next")
        f.b.cbranch(
            f.b.icmp_unsigned("!=", f.b.and_(fields, c32(int(flag))), c32(0)), chosen, after
        )
        f.at(chosen)
        at = f.b.load(cursor, typ=PTR)
        for name, code in zip(names, codes, strict=True):
            value = sources[name]()
            assert value.type.width == 8 * struct.calcsize("<" + code), name
            f.b.store(value, at, align=1)
            at = f.offset(at, struct.calcsize("<" + code))
        f.b.store(at, cursor)
        f.b.branch(after)
        f.at(after)
    f.b.ret_void()


def _define_keep_log(m: ModuleBuilder) -> None:
    """The hit's log bytes move from the handler's state (which the next hit reuses) into
    the process's pending hit, before the hit leaves this interrupt."""
    f = m.define("keep_log", VOID, [("hook", PTR)])
    (hook,) = f.function.args
    pending = f.member(f.get(hook, Hook, "proc"), ProcessSlot, "pending")
    copy, done = f.block("copy"), f.block("done")
    f.b.cbranch(f.b.icmp_unsigned("!=", f.get(pending, Pending, "ran"), c32(0)), copy, done)
    f.at(copy)
    for at, buffer, length in (("log_at", "log", "log_len"), ("ex_log_at", "ex_log", "ex_len")):
        kept = f.member(pending, Pending, buffer)
        f.memcpy(kept, f.get(pending, Pending, at), head_field(f, pending, length))
        f.set(pending, Pending, at, kept)
    f.b.branch(done)
    f.at(done)
    f.b.ret_void()


def _define_commit(m: ModuleBuilder) -> None:
    """Append the pending hit's record to the ring (Python empties a full ring first)."""
    f = m.define("commit", VOID, [("hook", PTR), ("proc", PTR), ("entry", PTR)])
    hook, proc, entry = f.function.args
    pending = f.member(proc, ProcessSlot, "pending")
    log_len, ex_len = head_field(f, pending, "log_len"), head_field(f, pending, "ex_len")
    head_len = f.get(entry, ProbeEntry, "head_len")
    raw = f.b.add(f.b.add(log_len, ex_len), head_len)
    total = f.b.and_(f.b.add(raw, c32(RECORD_ALIGN - 1)), c32(-RECORD_ALIGN))
    end = f.b.add(f.get(hook, Hook, "ring_head"), total)
    drain, append = f.block("drain"), f.block("append")
    f.b.cbranch(f.b.icmp_unsigned(">", end, f.get(hook, Hook, "ring_size")), drain, append)
    f.at(drain)
    call_out(f, hook, "python_drain")
    f.b.branch(append)
    f.at(append)
    head = f.get(hook, Hook, "ring_head")
    to = f.offset(f.get(hook, Hook, "ring"), head)
    for source, length in (
        (f.member(pending, Pending, "head"), head_len),
        (f.get(pending, Pending, "log_at"), log_len),
        (f.get(pending, Pending, "ex_log_at"), ex_len),
    ):
        f.memcpy(to, source, length)
        to = f.offset(to, length)
    f.set(hook, Hook, "ring_head", f.b.add(head, total))
    f.b.ret_void()


def define(m: ModuleBuilder) -> None:
    """The record's functions: note_header, keep_log, commit."""
    _define_note_header(m)
    _define_keep_log(m)
    _define_commit(m)
