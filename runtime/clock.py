"""The deterministic clock: an instruction counter in native code, and time derived from it.

Every value a guest can observe about time must come from the runtime, not the host
(runtime.md, "Determinism"), and scheduling must not depend on host speed. So the machine's
clock is the number of guest instructions executed so far: the scheduler's quantum, the
instruction limit, ``clock_gettime`` and the log header's TSC all read it.

Counting has to be exact and cheap. unicorn's own ``count`` argument puts a hook on every
instruction (measured: ~4.5x slower on guest/bin/loop) and cannot say how many ran when
emulation stopped early. Instead a tiny native function, JIT-compiled once with llvmlite,
is installed as the ``UC_HOOK_BLOCK`` hook through unicorn's C entry point. At the start
of every translated block it adds the block's instruction count to ``executed``, or, once
``executed`` has reached ``limit``, calls ``uc_emu_stop`` so the block does not run (so
the count stays exact: a stopped block is neither run nor counted). A block's
instruction count comes from a small direct-mapped table keyed by (address, size in
bytes), one table per code layout (``AddressSpace.code_key``: processes running the same
file pages at the same addresses share one); a miss calls back into Python once, which
decodes the block's bytes with capstone (remembering the answer by content).

Limits: the clock reads at block granularity inside a block (an ``rdtsc`` sees the count
at the end of its block); an instruction that faults in the middle of a block has
counted the rest of its block (the process is then being killed or trapped anyway); guest
self-modifying code that keeps a block's address and size is still counted with the old
table entry until the next ``forget`` (host writes into code call it). Measured on
guest/bin/loop: ~300 guest MIPS with the counter, ~370 without any hook.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import capstone
import llvmlite.binding as llvm
import unicorn.unicorn_py3.unicorn as _uc
from unicorn import UC_HOOK_BLOCK, Uc, UcError

TABLE_BITS = 12
TABLE_SIZE = 1 << TABLE_BITS
NS_PER_INSTRUCTION = 10
"""The virtual CPU runs at 100 MIPS: one instruction is 10 ns of guest time."""
EPOCH = 946684800
"""Guest wall-clock time at instruction 0: 2000-01-01 00:00:00 UTC (the images' build date)."""

_MISS = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.c_uint64, ctypes.c_uint32)


class _State(ctypes.Structure):
    _fields_ = [("executed", ctypes.c_uint64), ("limit", ctypes.c_uint64),
                ("table", ctypes.c_void_p), ("miss", ctypes.c_void_p)]


_Table = ctypes.c_uint32 * (4 * TABLE_SIZE)  # entries of (address, size, icount, unused)


def slot(address: int, size: int) -> int:
    """Table index of a block (Fibonacci hashing; the native hook computes the same)."""
    return (((address ^ (size << 20)) * 2654435761) & 0xFFFFFFFF) >> (32 - TABLE_BITS)

_IR = """
%State = type {{ i64, i64, ptr, ptr }}
define void @count_block(ptr %uc, i64 %addr, i32 %size, ptr %st) {{
entry:
  %exec_p = getelementptr inbounds %State, ptr %st, i32 0, i32 0
  %executed = load i64, ptr %exec_p
  %lim_p = getelementptr inbounds %State, ptr %st, i32 0, i32 1
  %limit = load i64, ptr %lim_p
  %over = icmp uge i64 %executed, %limit
  br i1 %over, label %stop, label %lookup
stop:
  %stopfn = inttoptr i64 {stop} to ptr
  %ignored = call i32 %stopfn(ptr %uc)
  ret void
lookup:
  %a = trunc i64 %addr to i32
  %s = shl i32 %size, 20
  %h1 = xor i32 %a, %s
  %h2 = mul i32 %h1, 2654435761
  %idx = lshr i32 %h2, {shift}
  %tab_p = getelementptr inbounds %State, ptr %st, i32 0, i32 2
  %tab = load ptr, ptr %tab_p
  %e = getelementptr inbounds [4 x i32], ptr %tab, i32 %idx
  %ea = load i32, ptr %e
  %es_p = getelementptr inbounds [4 x i32], ptr %e, i32 0, i32 1
  %es = load i32, ptr %es_p
  %same_a = icmp eq i32 %ea, %a
  %same_s = icmp eq i32 %es, %size
  %hit = and i1 %same_a, %same_s
  br i1 %hit, label %found, label %miss
found:
  %en_p = getelementptr inbounds [4 x i32], ptr %e, i32 0, i32 2
  %en = load i32, ptr %en_p
  br label %add
miss:
  %miss_p = getelementptr inbounds %State, ptr %st, i32 0, i32 3
  %missfn = load ptr, ptr %miss_p
  %mn = call i32 %missfn(i64 %addr, i32 %size)
  br label %add
add:
  %n = phi i32 [ %en, %found ], [ %mn, %miss ]
  %n64 = zext i32 %n to i64
  %new = add i64 %executed, %n64
  store i64 %new, ptr %exec_p
  ret void
}}
"""

_engine: llvm.ExecutionEngine | None = None


def _native_hook() -> int:
    """Address of the compiled block hook (compiled once per host process)."""
    global _engine
    if _engine is None:
        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        stop = ctypes.cast(_uc.uclib.uc_emu_stop, ctypes.c_void_p).value
        module = llvm.parse_assembly(_IR.format(stop=stop, shift=32 - TABLE_BITS))
        module.verify()
        machine = llvm.Target.from_default_triple().create_target_machine(opt=2)
        _engine = llvm.create_mcjit_compiler(module, machine)
        _engine.finalize_object()
    return _engine.get_function_address("count_block")


class InstructionCounter:
    """Exact count of executed guest instructions, with a stop limit, on one ``Uc``."""

    def __init__(self, uc: Uc, code_reader: Callable[[int, int], bytes]) -> None:
        self.read_code = code_reader
        """Reads the current address space's bytes for a block being counted."""
        self._state = _State(0, 2**64 - 1, None, None)
        self._tables: dict[object, _Table] = {}
        self._miss = _MISS(self._count_miss)  # kept alive: native code calls it
        self._state.miss = ctypes.cast(self._miss, ctypes.c_void_p).value
        self._disasm = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)
        self.misses = 0
        self._known: dict[bytes, int] = {}  # block bytes -> instructions, for every space
        self.error: BaseException | None = None
        handle = _uc.uc_hook_h()
        status = _uc.uclib.uc_hook_add(
            uc._uch, ctypes.byref(handle), UC_HOOK_BLOCK, ctypes.c_void_p(_native_hook()),
            ctypes.c_void_p(ctypes.addressof(self._state)), ctypes.c_uint64(1),
            ctypes.c_uint64(0))
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
            a = address & 0xFFFFFFFF
            idx = 4 * slot(a, size)
            table = ctypes.cast(self._state.table, ctypes.POINTER(ctypes.c_uint32))
            table[idx], table[idx + 1], table[idx + 2] = a, size, count
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
