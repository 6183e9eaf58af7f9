"""The deterministic clock: an instruction counter in native code, and time derived from it.

Every value a guest can observe about time must come from the runtime, not the host
(docs/runtime.md, "Clock and determinism"), and scheduling must not depend on host
speed. So the machine's clock is the number of guest instructions executed so far: the
scheduler's quantum, the instruction limit, ``clock_gettime`` and the log header's TSC all read it.

Counting has to be exact and cheap. unicorn's own ``count`` argument puts a hook on every
instruction (measured: ~4.5x slower on guest/bin/loop) and cannot say how many ran when
emulation stopped early. Instead a tiny native function, built with llvmlite's IR builder
and compiled by the JIT's engine (so kept in its object cache), is installed as the
``UC_HOOK_BLOCK`` hook through unicorn's C entry point. At the start of every translated
block it adds the block's instruction count to ``executed``, or, once ``executed`` has
reached ``limit``, calls ``uc_emu_stop`` so the block does not run (so the count stays
exact: a stopped block is neither run nor counted). A block's instruction count comes
from a small direct-mapped table keyed by (address, size in bytes), one table per code
layout (``AddressSpace.code_key``: processes running the same file pages at the same
addresses share one); a miss calls back into Python once, which decodes the block's
bytes with capstone (remembering the answer by content). A block in a page the guest may
write (``AddressSpace.writable_code``) never enters the table: the guest can rewrite it
in place, keeping its address and size, and nothing tells the host, so each of its runs
is looked up by content again.

Limits: the clock reads at block granularity inside a block (an ``rdtsc`` sees the count
at the end of its block); an instruction that faults in the middle of a block has
counted the rest of its block (the process is then being killed or trapped anyway), and
so has a store into the very block that runs it (unicorn then ends the block after the
store and translates the rest anew, which counts again). Measured on guest/bin/loop: ~300
guest MIPS with the counter, ~370 without any hook.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import capstone
import unicorn.unicorn_py3.unicorn as _uc
from llvmlite import ir
from unicorn import UC_HOOK_BLOCK, Uc, UcError

TABLE_BITS = 12
TABLE_SIZE = 1 << TABLE_BITS
NS_PER_INSTRUCTION = 10
"""The virtual CPU runs at 100 MIPS: one instruction is 10 ns of guest time."""
EPOCH = 946684800
"""Guest wall-clock time at instruction 0: 2000-01-01 00:00:00 UTC (the images' build date)."""
HASH_MULTIPLIER = 2654435761
SIZE_SHIFT = 20
"""A block's table slot: ((address ^ size << SIZE_SHIFT) * HASH_MULTIPLIER) mod 2**32, top
TABLE_BITS bits (Fibonacci hashing; ``slot`` and the native hook compute it alike)."""
COUNT_BLOCK = "dprobes_count_block"

_MISS = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.c_uint64, ctypes.c_uint32)


class _State(ctypes.Structure):
    """What the block hook reads: its user data (``stop`` is ``uc_emu_stop``, passed here
    so that the compiled hook holds no address and can be cached)."""

    _fields_ = [
        ("executed", ctypes.c_uint64),
        ("limit", ctypes.c_uint64),
        ("table", ctypes.c_void_p),
        ("miss", ctypes.c_void_p),
        ("stop", ctypes.c_void_p),
    ]


ENTRY_FIELDS = ("address", "size", "icount", "unused")
_Table = ctypes.c_uint32 * (len(ENTRY_FIELDS) * TABLE_SIZE)


def slot(address: int, size: int) -> int:
    """Table index of a block."""
    return (((address ^ (size << SIZE_SHIFT)) * HASH_MULTIPLIER) & 0xFFFFFFFF) >> (32 - TABLE_BITS)


def _count_block_module() -> ir.Module:
    """``void count_block(uc *, u64 address, u32 size, _State *)``, the UC_HOOK_BLOCK hook:
    stop at the limit, else add the block's instruction count (the table's, or the miss
    callback's) to ``executed``."""
    from dprobes.vm.jit.irgen import I8, I32, I64, PTR, VOID, Callee

    entry_type = ir.ArrayType(I32, len(ENTRY_FIELDS))
    module = ir.Module(name="dprobes_clock")
    function = ir.Function(module, ir.FunctionType(VOID, [PTR, I64, I32, PTR]), COUNT_BLOCK)
    uc, address, size, state = function.args
    blocks = {
        name: function.append_basic_block(name)
        for name in ("entry", "stop", "lookup", "found", "miss", "add")
    }
    b = ir.IRBuilder(blocks["entry"])

    def field(name: str) -> ir.Value:
        offset = ir.Constant(I64, getattr(_State, name).offset)
        return b.gep(state, [offset], source_etype=I8)

    def entry_word(entry: ir.Value, name: str) -> ir.Value:
        return b.gep(
            entry,
            [ir.Constant(I32, 0), ir.Constant(I32, ENTRY_FIELDS.index(name))],
            source_etype=entry_type,
        )

    executed = b.load(field("executed"), typ=I64)
    b.cbranch(
        b.icmp_unsigned(">=", executed, b.load(field("limit"), typ=I64)),
        blocks["stop"],
        blocks["lookup"],
    )
    b.position_at_end(blocks["stop"])
    stop = Callee(b.load(field("stop"), typ=PTR), ir.FunctionType(I32, [PTR]))
    b.call(stop, [uc])
    b.ret_void()
    b.position_at_end(blocks["lookup"])
    low = b.trunc(address, I32)
    hashed = b.mul(
        b.xor(low, b.shl(size, ir.Constant(I32, SIZE_SHIFT))), ir.Constant(I32, HASH_MULTIPLIER)
    )
    index = b.lshr(hashed, ir.Constant(I32, 32 - TABLE_BITS))
    entry = b.gep(b.load(field("table"), typ=PTR), [index], source_etype=entry_type)
    same = b.and_(
        b.icmp_unsigned("==", b.load(entry_word(entry, "address"), typ=I32), low),
        b.icmp_unsigned("==", b.load(entry_word(entry, "size"), typ=I32), size),
    )
    b.cbranch(same, blocks["found"], blocks["miss"])
    b.position_at_end(blocks["found"])
    known = b.load(entry_word(entry, "icount"), typ=I32)
    b.branch(blocks["add"])
    b.position_at_end(blocks["miss"])
    miss = Callee(b.load(field("miss"), typ=PTR), ir.FunctionType(I32, [I64, I32]))
    decoded = b.call(miss, [address, size])
    b.branch(blocks["add"])
    b.position_at_end(blocks["add"])
    count = b.phi(I32)
    count.add_incoming(known, blocks["found"])
    count.add_incoming(decoded, blocks["miss"])
    b.store(b.add(executed, b.zext(count, I64)), field("executed"))
    b.ret_void()
    return module


_hook_address: int | None = None


def _native_hook() -> int:
    """Address of the compiled block hook (compiled, or loaded from the JIT's object
    cache, once per host process)."""
    global _hook_address
    if _hook_address is None:
        from dprobes.vm.jit.compile import Engine

        _hook_address = Engine.get().add_library(_count_block_module(), [COUNT_BLOCK])[COUNT_BLOCK]
    return _hook_address


class InstructionCounter:
    """Exact count of executed guest instructions, with a stop limit, on one ``Uc``."""

    def __init__(
        self,
        uc: Uc,
        code_reader: Callable[[int, int], bytes],
        rewritable: Callable[[int, int], bool],
    ) -> None:
        self.read_code = code_reader
        """Reads the current address space's bytes for a block being counted."""
        self.rewritable = rewritable
        """Whether the guest may write the block at (address, size): not kept in the table."""
        self._state = _State(
            0, 2**64 - 1, None, None, ctypes.cast(_uc.uclib.uc_emu_stop, ctypes.c_void_p).value
        )
        self._tables: dict[object, _Table] = {}
        self._miss = _MISS(self._count_miss)  # kept alive: native code calls it
        self._state.miss = ctypes.cast(self._miss, ctypes.c_void_p).value
        self._disasm = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)
        self.misses = 0
        self._known: dict[bytes, int] = {}  # block bytes -> instructions, for every space
        self.error: BaseException | None = None
        handle = _uc.uc_hook_h()
        status = _uc.uclib.uc_hook_add(
            uc._uch,
            ctypes.byref(handle),
            UC_HOOK_BLOCK,
            ctypes.c_void_p(_native_hook()),
            ctypes.c_void_p(ctypes.addressof(self._state)),
            ctypes.c_uint64(1),
            ctypes.c_uint64(0),
        )
        if status != 0:
            raise UcError(status)
        self.use_table(None)

    @property
    def executed(self) -> int:
        """Instructions executed since the machine started."""
        return self._state.executed

    @property
    def executed_address(self) -> int:
        """Where the count lives (a u64), for native code that reads the clock."""
        return ctypes.addressof(self._state) + _State.executed.offset

    @property
    def limit(self) -> int:
        return self._state.limit

    @limit.setter
    def limit(self, value: int) -> None:
        """Stop emulation at the first block that starts once ``executed >= value``."""
        self._state.limit = value

    def use_table(self, key: object) -> None:
        """Count blocks with the table for code ``key`` (``AddressSpace.code_key``: spaces
        running the same file pages at the same addresses share one); call on a switch."""
        table = self._tables.get(key)
        if table is None:
            table = self._tables[key] = _Table()
        self._state.table = ctypes.addressof(table)

    def drop_table(self, key: object) -> None:
        self._tables.pop(key, None)

    def forget(self, key: object = ...) -> None:
        """Clear the table for ``key``, or every table: code changed, or may have, so block
        sizes must be looked at again."""
        tables = self._tables.values() if key is ... else [self._tables.get(key)]
        for table in tables:
            if table is not None:
                ctypes.memset(table, 0, ctypes.sizeof(table))

    def _decode(self, code: bytes, address: int) -> int:
        count = decoded = 0
        for _addr, length, _mnemonic, _operands in self._disasm.disasm_lite(code, address):
            count += 1
            decoded += length
        return max(count + len(code) - decoded, 1)  # undecodable tail bytes: one each

    def _count_miss(self, address: int, size: int) -> int:
        """Decode the block at ``address`` (``size`` bytes) and remember its count."""
        try:
            self.misses += 1
            try:
                code = self.read_code(address, size)
            except Exception:  # unreadable: count the block as one instruction
                code = b""
            count = self._known.get(code)
            if count is None:
                count = self._known[code] = self._decode(code, address)
            if self.rewritable(address, size):
                return count
            a = address & 0xFFFFFFFF
            idx = len(ENTRY_FIELDS) * slot(a, size)
            table = ctypes.cast(self._state.table, ctypes.POINTER(ctypes.c_uint32))
            table[idx], table[idx + 1], table[idx + 2] = a, size, count  # ENTRY_FIELDS
            return count
        except BaseException as exc:  # never unwind through native code
            self.error = exc
            return 1


class VirtualClock:
    """Guest time from the instruction counter: 10 ns per instruction from 2000-01-01."""

    def __init__(self, counter: InstructionCounter) -> None:
        self.counter = counter

    @property
    def ticks(self) -> int:
        return self.counter.executed

    def monotonic_ns(self) -> int:
        return self.counter.executed * NS_PER_INSTRUCTION

    def realtime_ns(self) -> int:
        return realtime_ns_at(self.counter.executed)


def realtime_ns_at(executed: int) -> int:
    """Guest wall-clock time when the machine had executed ``executed`` instructions."""
    return EPOCH * 1_000_000_000 + executed * NS_PER_INSTRUCTION
