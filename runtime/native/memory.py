"""Guest memory for the hook and its handlers: a software TLB over the runtime's page
tables.

A TLB entry holds the host address of a guest page that may be read (and perhaps
written) directly; a miss asks Python (``python_fill``, ``NativeProbes._fill``), which
translates the address as ``AddressSpace.read``/``write`` would, and says not to cache
pages whose every store must go through it (code pages). On this the hook builds the
handler's memory services (``read_memory``, ``write_memory``, ``read_cstring``), the
stack window it publishes in the handler's host table (``stack_window``), and the one
word it stores itself (``store_word``: an emulated push, a stepped call's return
address).
"""

from __future__ import annotations

import ctypes

from llvmlite import ir

from dprobes.runtime.native.layout import (
    PERM_NO_CACHE,
    TLB_BITS,
    Hook,
    ProbeEntry,
    TlbEntry,
    call_out,
)
from dprobes.runtime.native.registers import ESP
from dprobes.runtime.native.services import service
from dprobes.runtime.physmem import PAGE_SHIFT, PAGE_SIZE
from dprobes.vm.jit.embed import HostTable
from dprobes.vm.jit.irgen import (
    FALSE,
    I1,
    I8,
    I32,
    I64,
    PTR,
    TRUE,
    VOID,
    FunctionBuilder,
    ModuleBuilder,
    c32,
    c64,
)

PAGE_OFFSET = PAGE_SIZE - 1
WORD = 4
"""Bytes of the word ``store_word`` stores (a guest stack word)."""


def _tlb_entry(f: FunctionBuilder, hook: ir.Value, address: ir.Value) -> ir.Value:
    """The TLB entry for the page of ``address``."""
    index = f.b.and_(f.b.lshr(address, c32(PAGE_SHIFT)), c32((1 << TLB_BITS) - 1))
    at = f.b.mul(f.zext64(index), c64(ctypes.sizeof(TlbEntry)))
    return f.offset(f.member(hook, Hook, "tlb"), at)


def _tag(f: FunctionBuilder, address: ir.Value) -> ir.Value:
    """The tag of the page of ``address`` (never 0, the empty entry's)."""
    return f.b.add(f.b.lshr(address, c32(PAGE_SHIFT)), c32(1))


def _holds(f: FunctionBuilder, entry: ir.Value, address: ir.Value, write: ir.Value) -> ir.Value:
    """Whether the TLB ``entry`` holds the page of ``address`` for a read (``write`` 0)
    or a write (1)."""
    same = f.b.icmp_unsigned("==", f.get(entry, TlbEntry, "tag"), _tag(f, address))
    allowed = f.b.and_(f.get(entry, TlbEntry, "perms"), f.b.shl(c32(1), write))
    return f.b.and_(same, f.b.icmp_unsigned("!=", allowed, c32(0)))


def _define_page(m: ModuleBuilder) -> None:
    """The host address of the page holding ``address`` for a read (``write`` 0) or a
    write (1), through the TLB, asking Python on a miss. ``*status``: 0 ok, 1 a fault,
    < 0 Python failed."""
    f = m.define("page", I64, [("hook", PTR), ("address", I32), ("write", I32), ("status", PTR)])
    hook, address, write, status = f.function.args
    out = f.alloca_entry(I64, "out")
    entry = _tlb_entry(f, hook, address)
    cached, miss = f.block("cached"), f.block("miss")
    f.b.cbranch(_holds(f, entry, address, write), cached, miss)
    f.at(cached)
    f.b.store(c32(0), status)
    f.b.ret(f.get(entry, TlbEntry, "host"))
    f.at(miss)
    filled = call_out(f, hook, "python_fill", address, write, out)
    f.b.store(filled, status)
    good, failed = f.block("filled"), f.block("failed")
    f.b.cbranch(f.b.icmp_unsigned("==", filled, c32(0)), good, failed)
    f.at(failed)
    f.b.ret(c64(0))
    f.at(good)
    word = f.b.load(out, typ=I64)
    base = f.b.and_(word, c64(~PAGE_OFFSET))
    perms = f.b.trunc(f.b.and_(word, c64(PAGE_OFFSET)), I32)
    remember, done = f.block("remember"), f.block("done")
    no_cache = f.b.and_(perms, c32(PERM_NO_CACHE))
    f.b.cbranch(f.b.icmp_unsigned("==", no_cache, c32(0)), remember, done)
    f.at(remember)
    f.set(entry, TlbEntry, "tag", _tag(f, address))
    f.set(entry, TlbEntry, "perms", perms)
    f.set(entry, TlbEntry, "host", base)
    f.b.branch(done)
    f.at(done)
    f.b.ret(base)


def _define_access(m: ModuleBuilder) -> None:
    """Copy ``size`` bytes between guest ``address`` and ``buffer`` page by page
    (``write``: into the guest). 0, or the failing status with ``*fault`` = the first
    inaccessible byte (the bytes before it are copied)."""
    f = m.define(
        "access",
        I32,
        [
            ("hook", PTR),
            ("address", I32),
            ("size", I32),
            ("buffer", PTR),
            ("fault", PTR),
            ("write", I32),
        ],
    )
    hook, address, size, buffer, fault, write = f.function.args
    status = f.alloca_entry(I32, "status")
    start = f.b.block
    head, body, bad, copy, finished = (
        f.block(label) for label in ("head", "body", "bad", "copy", "finished")
    )
    f.b.branch(head)
    f.at(head)
    done = f.b.phi(I32, "done")
    done.add_incoming(c32(0), start)
    f.b.cbranch(f.b.icmp_unsigned("<", done, size), body, finished)
    f.at(body)
    at = f.b.add(address, done)
    page = f.call("page", hook, at, write, status)
    st = f.b.load(status, typ=I32)
    f.b.cbranch(f.b.icmp_unsigned("==", st, c32(0)), copy, bad)
    f.at(bad)
    f.b.store(at, fault)
    f.b.ret(st)
    f.at(copy)
    offset = f.b.and_(at, c32(PAGE_OFFSET))
    room, left = f.b.sub(c32(PAGE_SIZE), offset), f.b.sub(size, done)
    n = f.b.select(f.b.icmp_unsigned("<", room, left), room, left)
    guest = f.b.inttoptr(f.b.add(page, f.zext64(offset)), PTR)
    ours = f.offset(buffer, done)
    into_guest = f.b.icmp_unsigned("!=", write, c32(0))
    f.memcpy(f.b.select(into_guest, guest, ours), f.b.select(into_guest, ours, guest), n)
    done.add_incoming(f.b.add(done, n), copy)
    f.b.branch(head)
    f.at(finished)
    f.b.ret(c32(0))


def _define_cstring(m: ModuleBuilder) -> None:
    """The NUL-terminated string at ``address``, at most ``limit`` bytes: faults only on
    a byte it reaches."""
    f = service(m, "read_cstring", ("hook", "address", "limit", "out", "length", "fault"))
    hook, address, limit, out, length, fault = f.function.args
    byte_at = f.alloca_entry(I8, "byte")
    start = f.b.block
    head, read, bad, got, keep, finished = (
        f.block(label) for label in ("head", "read", "bad", "got", "keep", "finished")
    )
    f.b.branch(head)
    f.at(head)
    count = f.b.phi(I32, "count")
    count.add_incoming(c32(0), start)
    f.b.cbranch(f.b.icmp_unsigned("<", count, limit), read, finished)
    f.at(read)
    st = f.call("access", hook, f.b.add(address, count), 1, byte_at, fault, 0)
    f.b.cbranch(f.b.icmp_unsigned("==", st, c32(0)), got, bad)
    f.at(bad)
    f.b.ret(st)
    f.at(got)
    byte = f.b.load(byte_at, typ=I8)
    f.b.cbranch(f.b.icmp_unsigned("==", byte, ir.Constant(I8, 0)), finished, keep)
    f.at(keep)
    f.b.store(byte, f.element(out, count, I8))
    count.add_incoming(f.b.add(count, c32(1)), keep)
    f.b.branch(head)
    f.at(finished)
    f.b.store(count, length)
    f.b.ret(c32(0))


def _define_services(m: ModuleBuilder) -> None:
    """The handler's memory services: ``access`` one way or the other."""
    for name, write in (("read_memory", 0), ("write_memory", 1)):
        f = service(m, name, ("hook", "address", "size", "buffer", "fault"))
        f.b.ret(f.call("access", *f.function.args, write))
    _define_cstring(m)


def _define_store_word(m: ModuleBuilder) -> None:
    """A word stored at ``address`` (an emulated push, a stepped call's return address);
    false if its page is not there as a present, writable page (Python then does it)."""
    f = m.define("store_word", I1, [("hook", PTR), ("address", I32), ("value", I32)])
    hook, address, value = f.function.args
    status = f.alloca_entry(I32, "status")
    lookup, store, no = f.block("lookup"), f.block("store"), f.block("no")
    offset = f.b.and_(address, c32(PAGE_OFFSET))
    f.b.cbranch(f.b.icmp_unsigned("<=", offset, c32(PAGE_SIZE - WORD)), lookup, no)
    f.at(lookup)
    page = f.call("page", hook, address, 1, status)
    f.b.cbranch(f.b.icmp_unsigned("==", f.b.load(status, typ=I32), c32(0)), store, no)
    f.at(store)
    f.b.store(value, f.b.inttoptr(f.b.add(page, f.zext64(offset)), PTR))
    f.b.ret(TRUE)
    f.at(no)
    f.b.ret(FALSE)


def _define_stack_window(m: ModuleBuilder) -> None:
    """The handler's direct memory window (``HostTable.window_*``): the page at ESP,
    where a probe finds its arguments and locals, if the handler accesses memory at all
    and the TLB holds that page writable (the window serves writes too); no window
    otherwise. Accesses inside it need no host call."""
    f = m.define("stack_window", VOID, [("hook", PTR), ("entry", PTR)])
    hook, entry = f.function.args
    host = f.member(hook, Hook, "host")
    f.set(host, HostTable, "window_length", 0)
    look, publish, done = f.block("look"), f.block("publish"), f.block("done")
    wants = f.get(entry, ProbeEntry, "window")
    f.b.cbranch(f.b.icmp_unsigned("==", wants, c32(0)), done, look)
    f.at(look)
    esp = f.call("reg", hook, ESP)
    tlb = _tlb_entry(f, hook, esp)
    f.b.cbranch(_holds(f, tlb, esp, c32(1)), publish, done)
    f.at(publish)
    f.set(host, HostTable, "window_data", f.b.inttoptr(f.get(tlb, TlbEntry, "host"), PTR))
    f.set(host, HostTable, "window_base", f.b.and_(esp, c32(~PAGE_OFFSET)))
    f.set(host, HostTable, "window_length", PAGE_SIZE)
    f.b.branch(done)
    f.at(done)
    f.b.ret_void()


def define(m: ModuleBuilder) -> None:
    """The TLB's functions and the handler's memory services."""
    _define_page(m)
    _define_access(m)
    _define_services(m)
    _define_store_word(m)
    _define_stack_window(m)
