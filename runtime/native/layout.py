"""The data the native hook reads and writes: its ctypes structures and constants.

These structures are the only description of that data: ``runtime.native_probes`` fills
them from Python and the hook's generated code addresses their fields by the byte
offsets and types ctypes gives (``irgen.FunctionBuilder``). One ``Hook`` per probe
manager is the hook's user data; it points at the current process's ``ProcessSlot``,
whose open-addressing table holds the ``ProbeEntry`` of each probe served natively and
whose ``Pending`` is the process's hit between its int3 and the end of the step.
"""

from __future__ import annotations

import ctypes
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_int32,
    c_uint8,
    c_uint32,
    c_uint64,
    c_void_p,
)

from llvmlite import ir

from dprobes.runtime.ring import HEADER_BYTES, RecordHead
from dprobes.vm.jit.embed import (
    EX_LOG_BUFFER,
    LOG_BUFFER,
    WINDOW_REGISTERS,
    HostTable,
    RegisterWindow,
)
from dprobes.vm.jit.irgen import FunctionBuilder

TLB_BITS = 8
"""The software TLB has 2**TLB_BITS entries, one per page number modulo that."""
TABLE_BITS = 6
TABLE_SIZE = 1 << TABLE_BITS
"""Probe slots per process table (open addressing): more armed probes than this in one
process than fit are simply served by the Python path."""
GENERAL_REGISTERS = WINDOW_REGISTERS
"""dprobes register indices 0..15 (cs ... ebp) are the ones a native hit serves."""

# what the TLB and the fill callback say of a page (low bits of the host address)
PERM_READ, PERM_WRITE, PERM_NO_CACHE = 1, 2, 4

# where the Python path takes over a native hit (python_handover's first argument)
STAGE_STEP = 0  # the handler ran (or was skipped): step the instruction
STAGE_FINISH = 1  # the step ended at the EIP given: repair it, then count the hit
STAGE_POST = 2  # the step is repaired: count the hit, log, disable or remove


class TlbEntry(Structure):
    """A guest page the hook may access directly: ``tag`` is its page number + 1 (0: an
    empty entry), ``perms`` the PERM_* bits, ``host`` the host address of its frame."""

    _fields_ = [("tag", c_uint32), ("perms", c_uint32), ("host", c_uint64)]


class ProbeEntry(Structure):
    """One armed probe at one address of one process."""

    _fields_ = [
        ("address", c_uint32),
        ("kind", c_uint32),  # the value of the step plan's ``xol.StepKind``
        ("length", c_uint32),
        ("slot", c_uint32),
        ("push_reg", c_uint32),  # the register a ``push r32`` stores (dprobes index)
        ("ident", c_uint32),
        ("ex_mask", c_uint32),
        ("major", c_uint32),
        ("minor", c_uint32),
        ("probe_offset", c_uint64),
        ("fields", c_uint32),  # the program's log fields: which header fields to record
        ("window", c_uint32),  # the handler accesses memory: offer it the stack page
        ("head_len", c_uint32),  # bytes of a record's head and header fields
        ("handler", c_void_p),
        ("code_base", c_uint32),  # the handler's shared body, its base
        ("state", c_void_p),
        ("counters", c_void_p),
        # the registers a hit reads after EIP, read in one uc_reg_read_batch call: a mask
        # of dprobes indices, their number, unicorn ids and places in Hook.registers
        ("prefetch", c_uint32),
        ("prefetch_count", c_uint32),
        ("prefetch_ids", c_int32 * GENERAL_REGISTERS),
        ("prefetch_values", c_void_p * GENERAL_REGISTERS),
    ]


class TableSlot(Structure):
    """A slot of a process's probe table: an int3 address and its entry (null: free)."""

    _fields_ = [("address", c_uint32), ("entry", c_void_p)]


class Pending(Structure):
    """A process's native hit between its int3 and the end of the step."""

    _fields_ = [
        ("active", c_uint32),  # the step is under way (EIP in the slot)
        ("ran", c_uint32),  # the handler ran (the pass count was used up)
        ("trap_flag", c_uint32),
        ("exit_kind", c_uint32),
        ("exit_to", c_uint32),  # how the handler ended
        ("entry", c_void_p),  # the ProbeEntry of the hit (null: none)
        ("log_at", c_void_p),  # where the log bytes are: the handler's state, or ``log``
        ("ex_log_at", c_void_p),
        ("head", RecordHead),
        ("header", c_uint8 * HEADER_BYTES),  # the record's start
        ("log", c_uint8 * LOG_BUFFER),
        ("ex_log", c_uint8 * EX_LOG_BUFFER),
    ]


class ProcessSlot(Structure):
    """A process as the hook knows it: its ids, its probe table and its pending hit."""

    _fields_ = [
        ("pid", c_uint32),
        ("uid", c_uint32),
        ("table", TableSlot * TABLE_SIZE),
        ("pending", Pending),
    ]


class Hook(Structure):
    """Everything the hook reads; its address is the hook's user data."""

    _fields_ = [
        ("uc", c_void_p),
        ("reg_read", c_void_p),
        ("reg_write", c_void_p),
        ("reg_read_batch", c_void_p),
        ("emu_stop", c_void_p),
        ("python_interrupt", c_void_p),  # void (u32 vector): the Python trap path
        ("python_handover", c_void_p),  # void (u32 stage, u32 eip)
        ("python_fill", c_void_p),  # i32 (u32 address, u32 write, u64 *page | perms)
        ("python_drain", c_void_p),  # void (): empty the ring
        ("executed", c_void_p),  # u64 *: the instruction counter
        ("proc", c_void_p),  # ProcessSlot * of the current process (null: none)
        ("owner", c_void_p),  # the State holding the per-CPU stack and the globals
        ("native_ran", c_uint32),  # a handler ran natively since Python last synced
        ("error", c_uint32),  # a handler ended in a host error: emulation stopped
        ("ring_head", c_uint32),
        ("ring_size", c_uint32),
        ("ring", c_void_p),
        ("hits", c_uint64),  # probe hits that began natively
        ("reg_ids", c_uint32 * GENERAL_REGISTERS),  # unicorn's id of registers 0..15
        ("registers", RegisterWindow),  # registers read in this interrupt (host.registers)
        ("host", HostTable),
        ("tlb", TlbEntry * (1 << TLB_BITS)),
    ]


assert Pending.header.offset == Pending.head.offset + ctypes.sizeof(RecordHead)

# --- the functions the Hook points at, by field ---------------------------------------
REG_ACCESS = CFUNCTYPE(c_int32, c_void_p, c_int32, c_void_p)  # uc_reg_read/uc_reg_write
REG_READ_BATCH = CFUNCTYPE(c_int32, c_void_p, c_void_p, c_void_p, c_int32)
EMU_STOP = CFUNCTYPE(c_int32, c_void_p)
INTERRUPT = CFUNCTYPE(None, c_uint32)
HANDOVER = CFUNCTYPE(None, c_uint32, c_uint32)
FILL = CFUNCTYPE(c_int32, c_uint32, c_uint32, POINTER(c_uint64))
DRAIN = CFUNCTYPE(None)

CALLOUTS = {
    "reg_read": REG_ACCESS,
    "reg_write": REG_ACCESS,
    "reg_read_batch": REG_READ_BATCH,
    "emu_stop": EMU_STOP,
    "python_interrupt": INTERRUPT,
    "python_handover": HANDOVER,
    "python_fill": FILL,
    "python_drain": DRAIN,
}
"""The prototype of each function a ``Hook`` field points at (the hook calls them)."""


def call_out(f: FunctionBuilder, hook: ir.Value, name: str, *args: ir.Value | int) -> ir.Value:
    """Call the function the ``Hook`` at ``hook`` points at with field ``name``."""
    return f.call_pointer(f.get(hook, Hook, name), CALLOUTS[name], *args)
