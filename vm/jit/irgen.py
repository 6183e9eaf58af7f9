"""Small IR-building vocabulary shared by the native runtime library, the lowering and
native code embedding the JIT (the runtime's native hook).

``FunctionBuilder`` wraps an llvmlite ``IRBuilder`` positioned in one function: blocks,
fields of ctypes structures addressed by their byte offsets and typed from their ctypes
types (the ctypes layout stays the only description of the data), memory intrinsics and
entry-block allocas. ``Emitter`` extends it for a handler or runtime-library function
whose first argument is the state pointer, and speaks in the VM's terms: state fields
(see ``vm.jit.state``), the circular stack (every store marks its 32-word chunk dirty,
so the runner copies back only what changed), call frames, variables, the log buffer,
and calls through the host and helper tables.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from llvmlite import ir

from dprobes.vm.jit import state as S
from dprobes.vm.model import STACK_MASK, WORD_MASK

I1 = ir.IntType(1)
I8 = ir.IntType(8)
I16 = ir.IntType(16)
I32 = ir.IntType(32)
I64 = ir.IntType(64)
PTR = ir.PointerType()
VOID = ir.VoidType()
STATUS = I32


def c32(value: int) -> ir.Constant:
    return ir.Constant(I32, value & WORD_MASK)


def c64(value: int) -> ir.Constant:
    return ir.Constant(I64, value & 0xFFFFFFFFFFFFFFFF)


def c8(value: int) -> ir.Constant:
    return ir.Constant(I8, value & 0xFF)


TRUE, FALSE = ir.Constant(I1, 1), ir.Constant(I1, 0)


def ir_type(ctype: type) -> ir.Type:
    """The IR type of a scalar ctypes type: an opaque pointer, or an integer as wide."""
    if issubclass(ctype, (ctypes.c_void_p, ctypes._Pointer)):
        return PTR
    return ir.IntType(8 * ctypes.sizeof(ctype))


@functools.cache
def field_type(layout: type[ctypes.Structure], name: str) -> ir.Type:
    """The IR type of scalar field ``name`` of a ctypes structure."""
    return ir_type(next(spec[1] for spec in layout._fields_ if spec[0] == name))


def function_type(prototype: type) -> ir.FunctionType:
    """The IR type of a function with a ctypes prototype (``CFUNCTYPE(...)``)."""
    result = VOID if prototype._restype_ is None else ir_type(prototype._restype_)
    return ir.FunctionType(result, [ir_type(arg) for arg in prototype._argtypes_])


def _state_type(name: str) -> ir.Type:
    return field_type(S.State, name)


HOST_TYPES: dict[str, ir.FunctionType] = {
    "read_memory": ir.FunctionType(STATUS, [PTR, I32, I32, PTR, PTR]),
    "write_memory": ir.FunctionType(STATUS, [PTR, I32, I32, PTR, PTR]),
    "read_cstring": ir.FunctionType(STATUS, [PTR, I32, I32, PTR, PTR, PTR]),
    "read_register": ir.FunctionType(STATUS, [PTR, I32, I32, PTR]),
    "write_register": ir.FunctionType(STATUS, [PTR, I32, I32, I32]),
    "cpuid": ir.FunctionType(STATUS, [PTR, I32, PTR]),
    "read_msr": ir.FunctionType(STATUS, [PTR, I32, PTR]),
    "io_read": ir.FunctionType(STATUS, [PTR, I32, I32, PTR]),
    "io_write": ir.FunctionType(STATUS, [PTR, I32, I32, I32]),
    "segment_base": ir.FunctionType(STATUS, [PTR, I32, PTR]),
    "pid": ir.FunctionType(STATUS, [PTR, PTR]),
    "task": ir.FunctionType(STATUS, [PTR, PTR]),
    "processor": ir.FunctionType(STATUS, [PTR, PTR]),
    "callk": ir.FunctionType(STATUS, [PTR, PTR]),
}
assert set(HOST_TYPES) == {name for name, _ in S.HOST_CALLBACKS}

HELPER_TYPES: dict[str, ir.FunctionType] = {
    "heap": ir.FunctionType(STATUS, [PTR, I32, I32]),
}
assert set(HELPER_TYPES) == {name for name, _ in S.HELPER_CALLBACKS}


def intrinsics(module: ir.Module) -> dict[str, ir.Function]:
    """The LLVM intrinsics the emitters use, declared once per module."""
    return {
        "memset": module.declare_intrinsic("llvm.memset", [PTR, I64]),
        "memcpy": module.declare_intrinsic("llvm.memcpy", [PTR, PTR, I64]),
        "fshl": ir.Function(module, ir.FunctionType(I32, [I32, I32, I32]), "llvm.fshl.i32"),
        "fshr": ir.Function(module, ir.FunctionType(I32, [I32, I32, I32]), "llvm.fshr.i32"),
    }


VIRTUAL_REACH = 384
"""Largest |offset| kept in a region's local variables (farther slots: the stack array).
Regions start within REGION_DRIFT words of their base, so a region's offsets span less
than the 1024 slots of the circular stack and two offsets never name the same slot."""
REGION_DRIFT = 128


@dataclass(frozen=True)
class Virtual:
    """The stack slot ``offset`` words from the TOS its region was entered with (pushes
    make offsets negative): an index known statically, held in a local variable."""

    offset: int


Index = ir.Value | Virtual
"""A stack slot: a masked runtime index into the stack array, or a ``Virtual`` slot."""


@dataclass(eq=False)
class Region:
    """Code where the stack depth is known statically relative to ``base``, the masked
    TOS on entering it. Its slots live in local variables (SSA registers after SROA)
    and are written to the stack array only where something else reads it."""

    base: ir.Value  # alloca holding the base index
    slots: dict[int, ir.Value] = field(default_factory=dict)  # offset -> alloca
    written: set[int] = field(default_factory=set)  # offsets stored to somewhere
    host_error: ir.Block | None = None  # its shared exit for a failed host callback


CACHED_FIELDS = ("tos", "sbp", "jmp_count", "stack_dirty", "nframes")
"""Fields a handler keeps in local variables (registers after SROA) between sync points."""
INVARIANT_FIELDS = frozenset(
    {
        "lv",
        "gv",
        "num_lv",
        "num_gv",
        "jmpmax",
        "log_cap",
        "header_length",
        "ex_logmax",
        "ex_mask",
        "autostacktrace",
    }
)
"""Fields set before a hit and never written by native code: loaded once per call."""


def _chunk_samples(offsets: list[int]) -> list[int]:
    """Offsets, 32 apart at most, from the first to the last of the sorted ``offsets``:
    the 32-word chunks they fall in cover every chunk the written slots fall in (some
    between them too, which only costs the runner a copy)."""
    return [*range(offsets[0], offsets[-1], S.DIRTY_CHUNK), offsets[-1]]


class FunctionBuilder:
    """IR emission in one function: blocks, ctypes structure fields, memory intrinsics."""

    def __init__(
        self, function: ir.Function, builder: ir.IRBuilder, intrinsic: dict[str, ir.Function]
    ) -> None:
        self.function = function
        self.b = builder
        self.intrinsic = intrinsic
        self._entry_prefix = 0  # instructions at the top of the entry block put there by us

    def block(self, name: str) -> ir.Block:
        return self.function.append_basic_block(name)

    def at(self, block: ir.Block) -> None:
        self.b.position_at_end(block)

    # --- fields of ctypes structures --------------------------------------------------
    def offset(self, pointer: ir.Value, byte_offset: int | ir.Value) -> ir.Value:
        """Pointer to ``pointer + byte_offset``."""
        if isinstance(byte_offset, int):
            byte_offset = c64(byte_offset)
        elif byte_offset.type != I64:
            byte_offset = self.b.zext(byte_offset, I64)
        return self.b.gep(pointer, [byte_offset], source_etype=I8)

    def member(self, pointer: ir.Value, layout: type[ctypes.Structure], name: str) -> ir.Value:
        """Pointer to field ``name`` of the ``layout`` structure at ``pointer``."""
        return self.offset(pointer, getattr(layout, name).offset)

    def get(self, pointer: ir.Value, layout: type[ctypes.Structure], name: str) -> ir.Value:
        """The value of scalar field ``name`` of the structure at ``pointer``."""
        return self.b.load(self.member(pointer, layout, name), typ=field_type(layout, name))

    def set(
        self,
        pointer: ir.Value,
        layout: type[ctypes.Structure],
        name: str,
        value: ir.Value | int | None,
    ) -> None:
        """Store ``value`` (an int, or None for a null pointer: a constant of the field's
        type) into field ``name`` of the structure at ``pointer``."""
        if not isinstance(value, ir.Value):
            ty = field_type(layout, name)
            value = ir.Constant(ty, value if ty == PTR else value & ((1 << ty.width) - 1))
        self.b.store(value, self.member(pointer, layout, name))

    def element(self, pointer: ir.Value, index: ir.Value, element: ir.Type = I32) -> ir.Value:
        """Pointer to element ``index`` (an i32 or i64 value) of an array at ``pointer``."""
        return self.b.gep(pointer, [self.zext64(index)], source_etype=element)

    def zext64(self, value: ir.Value) -> ir.Value:
        return self.b.zext(value, I64) if value.type != I64 else value

    # --- calls --------------------------------------------------------------------------
    def call(self, name: str, *args: ir.Value | int) -> ir.Value:
        """Call function ``name`` of this function's module (int arguments: i32)."""
        callee = self.function.module.get_global(name)
        return self.b.call(callee, [c32(a) if isinstance(a, int) else a for a in args])

    def call_pointer(self, pointer: ir.Value, prototype: type, *args: ir.Value | int) -> ir.Value:
        """Call the function at ``pointer``, whose ctypes prototype is ``prototype``."""
        return self.b.call(
            Callee(pointer, function_type(prototype)),
            [c32(a) if isinstance(a, int) else a for a in args],
        )

    # --- memory -----------------------------------------------------------------------
    def memset(self, pointer: ir.Value, length: ir.Value, fill: int = 0) -> None:
        length = length if length.type == I64 else self.b.zext(length, I64)
        self.b.call(self.intrinsic["memset"], [pointer, c8(fill), length, ir.Constant(I1, 0)])

    def memcpy(self, dest: ir.Value, source: ir.Value, length: ir.Value | int) -> None:
        if isinstance(length, int):
            length = c64(length)
        length = length if length.type == I64 else self.b.zext(length, I64)
        self.b.call(self.intrinsic["memcpy"], [dest, source, length, ir.Constant(I1, 0)])

    def alloca_entry(self, ty: ir.Type, name: str = "", count: int = 1) -> ir.Value:
        """``count`` elements of ``ty`` on the stack, allocated in the entry block."""

        def allocate() -> ir.Value:
            slot = self.b.alloca(ty, size=count if count > 1 else None, name=name)
            slot.type = PTR  # an opaque pointer, like every other value here
            return slot

        return self._in_entry(allocate)

    def _in_entry(self, emit):
        """Emit at the top of the entry block (so the value dominates every use)."""
        entry = self.function.entry_basic_block
        saved = self.b.block
        with self.b.goto_block(entry):
            if self._entry_prefix < len(entry.instructions):
                self.b.position_before(entry.instructions[self._entry_prefix])
            value = emit()
        self._entry_prefix = entry.instructions.index(value) + 1
        self.b.position_at_end(saved)
        return value


class ModuleBuilder:
    """A module under construction whose functions call each other by name."""

    def __init__(self, name: str) -> None:
        self.module = ir.Module(name=name)
        self.intrinsic = intrinsics(self.module)

    def define(
        self,
        name: str,
        result: ir.Type,
        params: Sequence[tuple[str, ir.Type]],
        *,
        exported: bool = False,
        inline: str | None = None,
    ) -> FunctionBuilder:
        """Function ``name`` with named parameters, positioned in its entry block; internal
        unless ``exported``; ``inline``: an inlining attribute (``alwaysinline``...)."""
        function = ir.Function(self.module, ir.FunctionType(result, [ty for _, ty in params]), name)
        for arg, (arg_name, _) in zip(function.args, params, strict=True):
            arg.name = arg_name
        if not exported:
            function.linkage = "internal"
        if inline is not None:
            function.attributes.add(inline)
        builder = ir.IRBuilder(function.append_basic_block("entry"))
        return FunctionBuilder(function, builder, self.intrinsic)


class Emitter(FunctionBuilder):
    """IR emission helpers for one function whose argument 0 is the state pointer.

    Field addresses are computed once, in the entry block. With ``cache_fields()`` the
    fields of ``CACHED_FIELDS`` live in local variables: ``spill()`` writes them to the
    state before anything that reads the state (a runtime-library call, a helper, the
    callk hook, returning) and ``reload()`` reads them back after it.
    """

    def __init__(
        self, function: ir.Function, builder: ir.IRBuilder, intrinsic: dict[str, ir.Function]
    ) -> None:
        super().__init__(function, builder, intrinsic)
        self.state = function.args[0]
        self._pointers: dict[str, ir.Value] = {}
        self._cached: dict[str, ir.Value] = {}
        self.region: Region | None = None  # None: every slot is in the stack array
        self.depth: int | None = 0  # TOS offset in the region (None: only known at run time)
        self.synced: ir.Block | None = None  # the block that last handed the state over
        self._deferred: list[tuple[ir.Block, ir.Block, Callable[[], None]]] = []
        self._block_depth: dict[ir.Block, int | None] = {}

    def cache_fields(self) -> None:
        for name in CACHED_FIELDS:
            self._cached[name] = self.alloca_entry(_state_type(name), f"{name}_var")

    def spill(self) -> None:
        """Write the cached fields (and the region's slots) to the state: a sync point.

        What runs next may change any part of the stack, so the region's local slots are
        stale in this block from here on (``synced``)."""
        if self.region is not None:
            self.sync_stack()
            self.synced = self.b.block
        for name, slot in self._cached.items():
            self.b.store(self.b.load(slot, typ=_state_type(name)), self.field(name))

    def reload(self) -> None:
        for name, slot in self._cached.items():
            self.b.store(self.b.load(self.field(name), typ=_state_type(name)), slot)

    # --- blocks -------------------------------------------------------------------
    def block(self, name: str) -> ir.Block:
        """A new block; in a region, entered with the TOS offset of the code creating it
        (lowerings create a block where they branch to it), which ``at`` restores."""
        block = super().block(name)
        if self.region is not None:
            self._block_depth[block] = self.depth
        return block

    def at(self, block: ir.Block) -> None:
        super().at(block)
        if block in self._block_depth:
            self.depth = self._block_depth[block]

    # --- state fields ---------------------------------------------------------------
    def addr(self, byte_offset: int | ir.Value) -> ir.Value:
        """Pointer to ``state + byte_offset``."""
        return self.offset(self.state, byte_offset)

    def field(self, name: str) -> ir.Value:
        """Address of a state field, computed once in the entry block."""
        pointer = self._pointers.get(name)
        if pointer is None:
            pointer = self._in_entry(lambda: self.addr(S.offset(name)))
            self._pointers[name] = pointer
        return pointer

    def load(self, name: str) -> ir.Value:
        ty = _state_type(name)
        if name in INVARIANT_FIELDS:
            key = f"value.{name}"
            value = self._pointers.get(key)
            if value is None:
                pointer = self.field(name)
                value = self._in_entry(lambda: self.b.load(pointer, typ=ty))
                self._pointers[key] = value
            return value
        return self.b.load(self._cached.get(name) or self.field(name), typ=ty)

    def store(self, name: str, value: ir.Value | int) -> None:
        ty = _state_type(name)
        if isinstance(value, int):
            value = ir.Constant(ty, value & ((1 << ty.width) - 1))
        self.b.store(value, self._cached.get(name) or self.field(name))

    def array_ptr(self, name: str, index: ir.Value, element: ir.Type = I32) -> ir.Value:
        """Pointer to element ``index`` (an i32 or i64 value) of an inline state array."""
        return self.element(self.field(name), index, element)

    # --- the circular stack -------------------------------------------------------
    def mask(self, value: ir.Value) -> ir.Value:
        return self.b.and_(value, c32(STACK_MASK))

    def slot_ptr(self, index: ir.Value) -> ir.Value:
        """Pointer to stack slot ``index`` (already masked to 0..1023)."""
        return self.array_ptr("stack", index)

    def read_slot(self, index: Index) -> ir.Value:
        if isinstance(index, Virtual):
            return self.b.load(self._local_slot(index.offset), typ=I32)
        if self.region is not None:  # the array must hold the region's slots first
            self.sync_stack()
        return self.b.load(self.slot_ptr(index), typ=I32)

    def write_slot(self, index: Index, value: ir.Value) -> None:
        """Store into a slot. An array store marks its 32-word chunk dirty (a bit of the
        ``stack_dirty`` mask, a register between sync points in a handler); a region
        marks its slots' chunks when it writes them to the array."""
        if isinstance(index, Virtual):
            self.b.store(value, self._local_slot(index.offset))
            self.region.written.add(index.offset)
            return
        if self.region is not None:  # it may be one of the region's slots: round trip
            self.sync_stack()
        self.b.store(value, self.slot_ptr(index))
        bit = self.b.shl(c32(1), self.b.lshr(index, c32(5)))
        self.store("stack_dirty", self.b.or_(self.load("stack_dirty"), bit))
        if self.region is not None:
            self._defer(self._region_loader(self.region))

    def tos(self) -> Index:
        if self.region is not None and self.depth is not None:
            return Virtual(self.depth)
        return self.load("tos")

    def set_tos(self, value: Index) -> None:
        if isinstance(value, Virtual):
            self.depth = value.offset
            return
        if self.region is not None:
            self.depth = None
        self.store("tos", value)

    def index_value(self, index: Index) -> ir.Value:
        """The masked runtime index of a slot."""
        if not isinstance(index, Virtual):
            return index
        return self.mask(self.b.add(self.b.load(self.region.base, typ=I32), c32(index.offset)))

    def slot(self, depth: int | ir.Value, base: Index | None = None) -> Index:
        """The slot ``depth`` words below TOS (or below ``base``)."""
        base = self.tos() if base is None else base
        if isinstance(base, Virtual):
            if isinstance(depth, int) and abs(base.offset + depth) <= VIRTUAL_REACH:
                return Virtual(base.offset + depth)
            base = self.index_value(base)
        if isinstance(depth, int):
            if depth == 0:
                return base
            depth = c32(depth)
        return self.mask(self.b.add(base, depth))

    def peek(self, depth: int = 0) -> ir.Value:
        return self.read_slot(self.slot(depth))

    def push(self, value: ir.Value | int) -> None:
        if isinstance(value, int):
            value = c32(value)
        tos = self.slot(-1)
        self.write_slot(tos, value)
        self.set_tos(tos)

    def pop(self) -> ir.Value:
        tos = self.tos()
        value = self.read_slot(tos)
        self.set_tos(self.slot(1, tos))
        return value

    # --- regions: stack slots in local variables -------------------------------------
    def new_region(self) -> Region:
        return Region(self.alloca_entry(I32, "base"))

    def enter(self, region: Region | None, depth: int | None = 0) -> None:
        """Emit the code that follows in ``region`` with TOS at offset ``depth``."""
        self.region, self.depth, self.synced = region, depth, None

    def _local_slot(self, offset: int) -> ir.Value:
        assert self.region is not None and self.b.block is not self.synced, (
            "a region slot used after a sync point"
        )
        slot = self.region.slots.get(offset)
        if slot is None:
            slot = self.region.slots[offset] = self.alloca_entry(I32, f"slot{offset}")
        return slot

    def sync_stack(self) -> None:
        """Write the region's slots (and TOS) to the state: the stack array is complete."""
        region = self.region
        assert region is not None
        if self.depth is not None:
            self.store("tos", self.index_value(Virtual(self.depth)))
        self._defer(self.region_writer(region))

    def region_writer(self, region: Region) -> Callable[[], None]:
        """Code that stores the slots ``region`` writes into the array (the others hold
        what was loaded from it) and marks their chunks dirty."""

        def emit() -> None:
            if not region.written:
                return
            base = self.b.load(region.base, typ=I32)
            for offset in sorted(region.written):
                index = self.mask(self.b.add(base, c32(offset)))
                self.b.store(self.b.load(region.slots[offset], typ=I32), self.slot_ptr(index))
            dirty = self.load("stack_dirty")
            for offset in _chunk_samples(sorted(region.written)):
                index = self.mask(self.b.add(base, c32(offset)))
                dirty = self.b.or_(dirty, self.b.shl(c32(1), self.b.lshr(index, c32(5))))
            self.store("stack_dirty", dirty)

        return emit

    def region_entry(self, region: Region, depth: int) -> None:
        """Enter ``region`` at TOS offset ``depth`` from the stack array and the state's TOS."""
        base = self.mask(self.b.sub(self.load("tos"), c32(depth)))
        self.b.store(base, region.base)
        self._region_loader(region)()

    def _region_loader(self, region: Region) -> Callable[[], None]:
        def emit() -> None:
            base = self.b.load(region.base, typ=I32)
            for offset, slot in region.slots.items():
                index = self.mask(self.b.add(base, c32(offset)))
                self.b.store(self.b.load(self.slot_ptr(index), typ=I32), slot)

        return emit

    def _defer(self, emit: Callable[[], None]) -> None:
        """Emit ``emit()`` here once lowering is done (a region's slots are only all known
        then): a block for it now, filled by ``emit_deferred``."""
        later, after = self.block("region_sync"), self.block("synced")
        self.b.branch(later)
        self.at(after)
        self._deferred.append((later, after, emit))

    def emit_deferred(self) -> None:
        for later, after, emit in self._deferred:
            self.at(later)
            emit()
            self.b.branch(after)
        self._deferred.clear()

    # --- call frames ----------------------------------------------------------------
    def frame_word_ptr(self, frame: ir.Value, word: str) -> ir.Value:
        """Pointer to ``frames[frame].word`` (frame an i32 index)."""
        index = self.b.add(self.b.mul(frame, c32(len(S.FRAME_FIELDS))), c32(S.FRAME_WORD[word]))
        return self.array_ptr("frames", index)

    def top_frame(self) -> ir.Value:
        return self.b.sub(self.load("nframes"), c32(1))

    def top_word_ptr(self, word: str) -> ir.Value:
        return self.frame_word_ptr(self.top_frame(), word)

    # --- variables ----------------------------------------------------------------
    def var_ptr(self, local: bool, index: ir.Value) -> ir.Value:
        array = self.load("lv" if local else "gv")
        return self.b.gep(array, [self.b.zext(index, I64)], source_etype=I32)

    def var_count(self, local: bool) -> ir.Value:
        return self.load("num_lv" if local else "num_gv")

    def mark_var_dirty(self, local: bool) -> None:
        self.b.store(c8(1), self.array_ptr("var_dirty", c32(0 if local else 1), I8))

    def mark_all_dirty(self) -> None:
        self.store("stack_dirty", S.ALL_DIRTY)
        self.memset(self.field("var_dirty"), c64(2), fill=1)

    # --- buffers ----------------------------------------------------------------------
    def log_ptr(self, at: ir.Value) -> ir.Value:
        return self.array_ptr("log", at, I8)

    def put(self, buffer: str, at: ir.Value, value: ir.Value) -> None:
        """Unaligned little-endian store of ``value`` (i8/i16/i32) at buffer[at]."""
        self.b.store(value, self.array_ptr(buffer, at, I8), align=1)

    # --- host and helper tables -----------------------------------------------------
    def host_call(self, name: str, args: Sequence[ir.Value]) -> ir.Value:
        """Call host service ``name`` with the host's ctx pointer prepended.

        The table does not change during a hit, so the ctx pointer and each service's
        function pointer are loaded once, at the top of the entry block.
        """
        fn = self._host_value(name)
        return self.b.call(Callee(fn, HOST_TYPES[name]), [self._host_value("ctx"), *args])

    def memory_window(self, address: ir.Value, width: int) -> tuple[ir.Value, ir.Value]:
        """(inside, pointer): whether guest bytes ``address .. address + width - 1`` lie
        wholly inside the host's direct window (checked as the native MemoryContext's
        fast path does: 64-bit offsets, no wrap-around), and their host address."""
        b = self.b
        offset = b.sub(b.zext(address, I64), b.zext(self._host_value("window_base", I32), I64))
        length = b.zext(self._host_value("window_length", I32), I64)
        inside = b.and_(
            b.icmp_signed(">=", offset, c64(0)),
            b.icmp_signed("<=", b.add(offset, c64(width)), length),
        )
        pointer = b.gep(self._host_value("window_data"), [offset], source_etype=I8)
        return inside, pointer

    def register_window(self, index: int) -> tuple[ir.Block, ir.Value]:
        """Branch on whether the host's register window (``HostTable.registers``) holds
        register ``index`` now: to a new block, where the value is returned, if it does,
        else to the returned block (the builder is left in the new block). The window's
        pointer is loaded once per hit; its ``valid`` mask at every read, since a host
        call may have changed it."""
        window = self._host_value("registers")
        look, held = self.block("reg_window"), self.block("reg_held")
        absent = self.block("reg_absent")
        self.b.cbranch(self.b.icmp_unsigned("!=", window, ir.Constant(PTR, None)), look, absent)
        self.at(look)
        valid = self.b.load(window, typ=I32)
        bit = self.b.and_(valid, c32(1 << index))
        self.b.cbranch(self.b.icmp_unsigned("!=", bit, c32(0)), held, absent)
        self.at(held)
        at = S.RegisterWindow.values.offset + 4 * index
        value = self.b.load(self.b.gep(window, [c64(at)], source_etype=I8), typ=I32)
        return absent, value

    def _host_value(self, name: str, ty: ir.Type = PTR) -> ir.Value:
        key = f"host.{name}"
        value = self._pointers.get(key)
        if value is None:
            table_field = self.field("host")

            def emit() -> ir.Value:
                table = self.b.load(table_field, typ=PTR)
                return self.b.load(
                    self.b.gep(table, [c64(S.host_offset(name))], source_etype=I8), typ=ty
                )

            value = self._in_entry(emit)
            self._pointers[key] = value
        return value

    def helper_call(self, name: str, args: Sequence[ir.Value]) -> ir.Value:
        table = self.load("helpers")
        fn = self.b.load(self.b.gep(table, [c64(S.helper_offset(name))], source_etype=I8), typ=PTR)
        return self.b.call(Callee(fn, HELPER_TYPES[name]), list(args))

    # --- small arithmetic helpers -----------------------------------------------------
    def smin64(self, a: ir.Value, b: ir.Value) -> ir.Value:
        return self.b.select(self.b.icmp_signed("<", a, b), a, b)


class Callee(ir.values.Value):
    """A loaded function pointer with its function type, so ``IRBuilder.call`` can call
    through it (with opaque pointers llvmlite cannot infer the type)."""

    def __init__(self, pointer: ir.Value, ftype: ir.FunctionType) -> None:
        self.pointer = pointer
        self.type = PTR
        self.function_type = ftype

    def get_reference(self) -> str:
        return self.pointer.get_reference()
