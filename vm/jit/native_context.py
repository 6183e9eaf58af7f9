"""Serving a ``MemoryContext`` to native handlers without entering Python.

``MemoryContext`` is the embedding and test host. Its memory (a list of regions), its
two register sets and pid/task/processor are mirrored in a ``MemoryHost`` struct and
served by native callbacks compiled once per process: reads, writes and C strings walk
the regions exactly as ``MemoryContext.read_memory``/``write_memory`` and
``Context.read_cstring`` do (the one-region fast path first, then byte ranges located
region by region with 4 GiB wrap-around, stopping at the first inaccessible byte, so a
write that faults has written the bytes before it); registers are looked up as
``MemoryContext._set`` does (the user set only for registers given in it, fs and gs
always live). Register writes are copied back to the context's dicts after the hit. The
rarely used services (CPUID, MSRs, IO ports, segment bases, callk) stay with the Python
trampolines of ``vm.jit.host``. The first region is also published as the table's direct
window (an access wholly inside it is the callbacks' fast path: the first region that
holds the whole range), so handlers read and write it without a call.

Only an instance of ``MemoryContext`` itself is served this way (a subclass may override
any method) and only when the VM allows it (``VM(..., native_context=True)``, the
default).

This is also the model for a native host: fill a ``HostTable`` with function pointers
whose first argument is the host's own context pointer.
"""

from __future__ import annotations

import ctypes
from ctypes import POINTER, Structure, c_uint8, c_uint32, c_void_p

from llvmlite import ir

from dprobes.vm.context import LIVE_SEGMENTS, MemoryContext
from dprobes.vm.jit import state as S
from dprobes.vm.jit.host import SESSIONS, trampoline_address
from dprobes.vm.jit.irgen import HOST_TYPES, I1, I8, I32, I64, PTR, c32, c64, intrinsics
from dprobes.vm.model import WORD_MASK
from dprobes.vm.registers import REGISTERS_BY_INDEX, REGISTERS_BY_NAME

MASK128 = (1 << 128) - 1
REGISTER_SLOTS = max(REGISTERS_BY_INDEX) + 1
LIVE_INDICES = tuple(sorted(REGISTERS_BY_NAME[name].index for name in LIVE_SEGMENTS))
HOST_WORDS = ("pid", "task", "processor")
"""Services that return one word of the MemoryHost, the field of the same name."""
NATIVE_SERVICES = (
    "read_memory",
    "write_memory",
    "read_cstring",
    "read_register",
    "write_register",
    *HOST_WORDS,
)
SYMBOL_PREFIX = "dprobes_mc_"


class Region(Structure):
    _fields_ = [("start", c_uint32), ("length", c_uint32), ("data", c_void_p)]


class RegisterValue(Structure):
    _fields_ = [("present", c_uint32), ("words", c_uint32 * 4)]


class MemoryHost(Structure):
    """What the native MemoryContext callbacks read (``ctx`` of their host table)."""

    _fields_ = [
        ("nregions", c_uint32),
        ("regions", POINTER(Region)),
        ("regs", RegisterValue * REGISTER_SLOTS),
        ("user_regs", RegisterValue * REGISTER_SLOTS),
        ("written", (c_uint8 * REGISTER_SLOTS) * 2),  # [0] regs, [1] user_regs
        ("written_any", c_uint32),
        ("pid", c_uint32),
        ("task", c_uint32),
        ("processor", c_uint32),
    ]


def _offset(name: str) -> int:
    return getattr(MemoryHost, name).offset


# --- the native callbacks (LLVM IR): one builder per function -------------------------
REGION_SIZE = ctypes.sizeof(Region)
VALUE_SIZE = ctypes.sizeof(RegisterValue)
FALSE = ir.Constant(I1, 0)


def _at(b: ir.IRBuilder, base: ir.Value, offset: int) -> ir.Value:
    return b.gep(base, [c64(offset)], source_etype=I8)


def _load32(b: ir.IRBuilder, base: ir.Value, offset: int) -> ir.Value:
    return b.load(_at(b, base, offset), typ=I32)


def _memcpy(
    b: ir.IRBuilder, intrinsic: dict, dest: ir.Value, source: ir.Value, length: ir.Value
) -> None:
    b.call(intrinsic["memcpy"], [dest, source, b.zext(length, I64), FALSE])


def _region_loop(
    b: ir.IRBuilder, fn: ir.Function, ctx: ir.Value, name: str
) -> tuple[ir.Block, ir.Block, ir.Value]:
    """``for region in regions``: (next-iteration block, after-loop block, region); the
    builder is left in the loop body."""
    count = _load32(b, ctx, _offset("nregions"))
    regions = b.load(_at(b, ctx, _offset("regions")), typ=PTR)
    entry = b.block
    head = fn.append_basic_block(f"{name}_head")
    body = fn.append_basic_block(f"{name}_body")
    step = fn.append_basic_block(f"{name}_next")
    after = fn.append_basic_block(f"{name}_after")
    b.branch(head)
    b.position_at_end(head)
    i = b.phi(I32)
    i.add_incoming(c32(0), entry)
    b.cbranch(b.icmp_unsigned("<", i, count), body, after)
    b.position_at_end(step)
    i.add_incoming(b.add(i, c32(1)), step)
    b.branch(head)
    b.position_at_end(body)
    region = b.gep(regions, [b.mul(b.zext(i, I64), c64(REGION_SIZE))], source_etype=I8)
    return step, after, region


def _build_locate(locate: ir.Function) -> None:
    """``locate(ctx, at, *offset)``: the first region with (at - start) & M < length, or
    null."""
    b = ir.IRBuilder(locate.append_basic_block("entry"))
    ctx, address, offset_out = locate.args
    step, after, region = _region_loop(b, locate, ctx, "find")
    offset = b.sub(address, _load32(b, region, Region.start.offset))
    found = locate.append_basic_block("found")
    b.cbranch(b.icmp_unsigned("<", offset, _load32(b, region, Region.length.offset)), found, step)
    b.position_at_end(found)
    b.store(offset, offset_out)
    b.ret(region)
    b.position_at_end(after)
    b.ret(ir.Constant(PTR, None))


def _fast_read(b: ir.IRBuilder, fn: ir.Function, intrinsic: dict) -> None:
    """The read fast path: the whole range in one region, no wrap-around; the builder is
    left where the region walk starts."""
    ctx, address, size, buffer, _ = fn.args
    step, after, region = _region_loop(b, fn, ctx, "fast")
    start = b.zext(_load32(b, region, Region.start.offset), I64)
    length = b.zext(_load32(b, region, Region.length.offset), I64)
    off = b.sub(b.zext(address, I64), start)
    inside = b.and_(
        b.icmp_signed(">=", off, c64(0)), b.icmp_signed("<=", b.add(off, b.zext(size, I64)), length)
    )
    copy = fn.append_basic_block("fast_copy")
    b.cbranch(inside, copy, step)
    b.position_at_end(copy)
    data = b.load(_at(b, region, Region.data.offset), typ=PTR)
    source = b.gep(data, [off], source_etype=I8)
    general = fn.append_basic_block("fast_copy_any")
    switch = b.switch(size, general)
    for width in (1, 2, 4, 8):  # the sizes instructions use: copies LLVM inlines
        block = fn.append_basic_block(f"fast_copy_{width}")
        switch.add_case(c32(width), block)
        b.position_at_end(block)
        b.call(intrinsic["memcpy"], [buffer, source, c64(width), FALSE])
        b.ret(c32(0))
    b.position_at_end(general)
    _memcpy(b, intrinsic, buffer, source, size)
    b.ret(c32(0))
    b.position_at_end(after)


def _build_walk(fn: ir.Function, locate: ir.Function, intrinsic: dict, write: bool) -> None:
    """The region-by-region copy of MemoryContext (after the fast path of a read; every
    write)."""
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    ctx, address, size, buffer, fault = fn.args
    offset_slot = b.alloca(I32)
    offset_slot.type = PTR
    if not write:
        _fast_read(b, fn, intrinsic)
    entry = b.block
    head = fn.append_basic_block("walk_head")
    find = fn.append_basic_block("walk_find")
    chunk_block = fn.append_basic_block("walk_chunk")
    missing = fn.append_basic_block("walk_fault")
    finished = fn.append_basic_block("walk_done")
    b.branch(head)
    b.position_at_end(head)
    done = b.phi(I32)
    done.add_incoming(c32(0), entry)
    b.cbranch(b.icmp_unsigned("<", done, size), find, finished)
    b.position_at_end(find)
    where = b.add(address, done)
    region = b.call(locate, [ctx, where, offset_slot])
    b.cbranch(b.icmp_unsigned("==", b.ptrtoint(region, I64), c64(0)), missing, chunk_block)
    b.position_at_end(missing)
    b.store(where, fault)
    b.ret(c32(1))
    b.position_at_end(chunk_block)
    off = b.load(offset_slot, typ=I32)
    room = b.sub(_load32(b, region, Region.length.offset), off)
    left = b.sub(size, done)
    chunk = b.select(b.icmp_unsigned("<", room, left), room, left)
    data = b.load(_at(b, region, Region.data.offset), typ=PTR)
    inside = b.gep(data, [b.zext(off, I64)], source_etype=I8)
    ours = b.gep(buffer, [b.zext(done, I64)], source_etype=I8)
    if write:
        _memcpy(b, intrinsic, inside, ours, chunk)
    else:
        _memcpy(b, intrinsic, ours, inside, chunk)
    done.add_incoming(b.add(done, chunk), chunk_block)
    b.branch(head)
    b.position_at_end(finished)
    b.ret(c32(0))


def _build_read_memory(fns: dict[str, ir.Function], locate: ir.Function, intrinsic: dict) -> None:
    _build_walk(fns["read_memory"], locate, intrinsic, write=False)


def _build_write_memory(fns: dict[str, ir.Function], locate: ir.Function, intrinsic: dict) -> None:
    _build_walk(fns["write_memory"], locate, intrinsic, write=True)


def _build_read_cstring(fns: dict[str, ir.Function]) -> None:
    """``Context.read_cstring`` over one-byte ``read_memory`` calls."""
    fn = fns["read_cstring"]
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    ctx, address, limit, out, length_out, fault = fn.args
    byte = b.alloca(I8)
    byte.type = PTR
    entry = b.block
    head = fn.append_basic_block("head")
    read = fn.append_basic_block("read")
    got = fn.append_basic_block("got")
    keep = fn.append_basic_block("keep")
    faulted = fn.append_basic_block("faulted")
    finished = fn.append_basic_block("finished")
    b.branch(head)
    b.position_at_end(head)
    count = b.phi(I32)
    count.add_incoming(c32(0), entry)
    b.cbranch(b.icmp_unsigned("<", count, limit), read, finished)
    b.position_at_end(read)
    status = b.call(fns["read_memory"], [ctx, b.add(address, count), c32(1), byte, fault])
    b.cbranch(b.icmp_unsigned("==", status, c32(0)), got, faulted)
    b.position_at_end(faulted)
    b.ret(status)
    b.position_at_end(got)
    value = b.load(byte, typ=I8)
    b.cbranch(b.icmp_unsigned("==", value, ir.Constant(I8, 0)), finished, keep)
    b.position_at_end(keep)
    b.store(value, b.gep(out, [b.zext(count, I64)], source_etype=I8))
    count.add_incoming(b.add(count, c32(1)), keep)
    b.branch(head)
    b.position_at_end(finished)
    final = b.phi(I32)
    final.add_incoming(count, head)
    final.add_incoming(count, got)
    b.store(final, length_out)
    b.ret(c32(0))


def _register_slot(
    b: ir.IRBuilder, ctx: ir.Value, index: ir.Value, user: ir.Value
) -> tuple[ir.Value, ir.Value]:
    """(the register's entry, whether it is the user set's): the user set only where it
    has the register, fs/gs always the live one."""

    def entry_of(field: str) -> ir.Value:
        return b.gep(
            ctx,
            [b.add(c64(_offset(field)), b.mul(b.zext(index, I64), c64(VALUE_SIZE)))],
            source_etype=I8,
        )

    user_entry = entry_of("user_regs")
    live = (
        b.or_(*(b.icmp_unsigned("==", index, c32(i)) for i in LIVE_INDICES))
        if len(LIVE_INDICES) == 2
        else FALSE
    )
    use_user = b.and_(
        b.and_(
            b.icmp_unsigned("!=", user, c32(0)),
            b.icmp_unsigned("!=", _load32(b, user_entry, 0), c32(0)),
        ),
        b.not_(live),
    )
    return b.select(use_user, user_entry, entry_of("regs")), use_user


def _build_read_register(fns: dict[str, ir.Function]) -> None:
    fn = fns["read_register"]
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    ctx, index, user, out = fn.args
    slot, _ = _register_slot(b, ctx, index, user)
    present = b.icmp_unsigned("!=", _load32(b, slot, 0), c32(0))
    for i in range(4):
        word = b.select(present, _load32(b, slot, RegisterValue.words.offset + 4 * i), c32(0))
        b.store(word, b.gep(out, [c64(i)], source_etype=I32))
    b.ret(c32(0))


def _build_write_register(fns: dict[str, ir.Function]) -> None:
    """Store the value and mark the register written, so ``after_hit`` copies it back."""
    fn = fns["write_register"]
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    ctx, index, user, value = fn.args
    slot, use_user = _register_slot(b, ctx, index, user)
    b.store(c32(1), _at(b, slot, 0))
    for i in range(4):
        b.store(value if i == 0 else c32(0), _at(b, slot, RegisterValue.words.offset + 4 * i))
    which = b.zext(use_user, I64)
    flag = b.gep(
        ctx,
        [
            b.add(
                c64(_offset("written")),
                b.add(b.mul(which, c64(REGISTER_SLOTS)), b.zext(index, I64)),
            )
        ],
        source_etype=I8,
    )
    b.store(ir.Constant(I8, 1), flag)
    b.store(c32(1), _at(b, ctx, _offset("written_any")))
    b.ret(c32(0))


def _build_host_word(fns: dict[str, ir.Function], name: str) -> None:
    """``pid``, ``task``, ``processor``: the MemoryHost field of that name."""
    fn = fns[name]
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    ctx, out = fn.args
    b.store(_load32(b, ctx, _offset(name)), out)
    b.ret(c32(0))


def build_module() -> ir.Module:
    """An LLVM module with the native MemoryContext services."""
    module = ir.Module(name="dprobes_memory_context")
    intrinsic = intrinsics(module)
    fns = {
        name: ir.Function(module, HOST_TYPES[name], SYMBOL_PREFIX + name)
        for name in NATIVE_SERVICES
    }
    locate = ir.Function(module, ir.FunctionType(PTR, [PTR, I32, PTR]), SYMBOL_PREFIX + "locate")
    locate.linkage = "internal"
    _build_locate(locate)
    _build_read_memory(fns, locate, intrinsic)
    _build_write_memory(fns, locate, intrinsic)
    _build_read_cstring(fns)
    _build_read_register(fns)
    _build_write_register(fns)
    for name in HOST_WORDS:
        _build_host_word(fns, name)
    return module


_ADDRESSES: dict[str, int] | None = None


def native_addresses() -> dict[str, int]:
    """Addresses of the compiled callbacks (compiled on first use)."""
    global _ADDRESSES
    if _ADDRESSES is None:
        from dprobes.vm.jit.compile import Engine

        engine = Engine.get()
        _ADDRESSES = engine.add_library(
            build_module(), [SYMBOL_PREFIX + name for name in NATIVE_SERVICES]
        )
    return _ADDRESSES


# --- per-runner mirror of a MemoryContext ---------------------------------------------
def _words(value: int) -> tuple[int, int, int, int]:
    value &= MASK128
    return tuple((value >> (32 * i)) & WORD_MASK for i in range(4))  # type: ignore[return-value]


class NativeMemoryHost:
    """The MemoryHost of one runner, refreshed from its MemoryContext before each hit."""

    def __init__(self, runner) -> None:
        self.runner = runner
        self.host = MemoryHost()
        self.address = ctypes.addressof(self.host)
        self.table = S.HostTable()
        self.table.ctx = self.address
        addresses = native_addresses()
        for name, _ in S.HOST_CALLBACKS:
            if name in NATIVE_SERVICES:
                setattr(self.table, name, addresses[SYMBOL_PREFIX + name])
            else:
                setattr(self.table, name, trampoline_address(name))
        SESSIONS[self.address] = runner.session  # the trampolines find the session by ctx
        self.context: MemoryContext | None = None
        self._regions_key: list | None = None
        self._region_array = None
        self._exports: list = []
        self._regs: dict | None = None
        self._user_regs: dict | None = None

    def close(self) -> None:
        SESSIONS.pop(self.address, None)
        self._release()

    def _release(self) -> None:
        self._exports = []
        self._region_array = None
        self._regions_key = None
        self.table.window_length = 0
        self.table.window_data = None

    def attach(self, context: MemoryContext) -> None:
        if context is not self.context:
            self._release()
            self._regs = self._user_regs = None
            self.context = context

    def before_hit(self) -> None:
        context, host = self.context, self.host
        assert context is not None
        regions, known = context.regions, self._regions_key
        if (
            known is None
            or len(regions) != len(known)
            or any(
                region[0] != start or region[1] is not data or len(data) != length
                for region, (start, data, length) in zip(regions, known, strict=True)
            )
        ):
            key = [(start, data) for start, data in regions]
            self._release()
            array = (Region * max(len(key), 1))()
            exports = []
            for i, (start, data) in enumerate(key):
                array[i].start = start & WORD_MASK
                array[i].length = len(data)
                if len(data):
                    buffer = (c_uint8 * len(data)).from_buffer(data)
                    exports.append(buffer)
                    array[i].data = ctypes.addressof(buffer)
            self._exports = exports
            self._region_array = array
            self._regions_key = [(start, data, len(data)) for start, data in key]
            host.nregions = len(key)
            host.regions = ctypes.cast(array, POINTER(Region))
            if key and exports and array[0].data:  # the first region: the direct window
                self.table.window_base = array[0].start
                self.table.window_length = array[0].length
                self.table.window_data = array[0].data
        if self._regs != context.regs or self._user_regs != context.user_regs:
            self._load_registers(host.regs, context.regs)
            self._load_registers(host.user_regs, context.user_regs)
            self._regs, self._user_regs = dict(context.regs), dict(context.user_regs)
        host.pid = context._pid & WORD_MASK
        host.task = context._task & WORD_MASK
        host.processor = context._processor & WORD_MASK

    @staticmethod
    def _load_registers(table, values: dict[str, int]) -> None:
        ctypes.memset(ctypes.addressof(table), 0, ctypes.sizeof(table))
        for name, value in values.items():
            entry = table[REGISTERS_BY_NAME[name].index]
            entry.present = 1
            entry.words[:] = _words(value)

    def after_hit(self) -> None:
        host, context = self.host, self.context
        assert context is not None
        if host.written_any:
            host.written_any = 0
            written = host.written
            for which, (table, values) in enumerate(
                ((host.regs, context.regs), (host.user_regs, context.user_regs))
            ):
                flags = written[which]
                for index in range(REGISTER_SLOTS):
                    if flags[index]:
                        values[REGISTERS_BY_INDEX[index].name] = table[index].words[0]
                        flags[index] = 0
            self._regs, self._user_regs = dict(context.regs), dict(context.user_regs)
        if len(self._exports) > 64:  # do not pin many buffers for long
            self._release()
