"""The native interrupt hook: probe hits handled without entering Python.

This module is the layout of the data the hook reads (ctypes structures, the only
description of it) and the hook itself, LLVM IR compiled once per process into the JIT's
engine. ``runtime.native_probes`` fills the structures and installs the hook as unicorn's
``UC_HOOK_INTR`` callback in place of the Python one.

On an int3 at an address in the current process's probe table the hook reads, in one
``uc_reg_read_batch`` call, the registers the hit will read (the handler's ``push r``, the
log header's, those of the step) into a register window the handler reads inline, runs the
JIT-compiled handler against the process (memory through a small software TLB over the
runtime's page tables, other registers through ``uc_reg_read``, writes through
``uc_reg_write``), then either emulates ``push r32`` or points EIP at the probe's
out-of-line slot with TF set. On the debug trap that ends the step it repairs EIP
(and the return address of a call), counts the hit and appends the log record to a byte
ring that Python drains. A ring record is small, since the ring's bytes are what the
journal keeps: a head, only the machine state the program's log header selects
(``HEADER_FIELDS``), the log and the exception log. Everything else, and every rare turn
of a native hit (``exit_to``, ``rem``, the last hit before ``max_hits``, a push onto a
page that is not there, a fault in the stepped instruction), is handed to the Python
path, which takes over the hit where the native code left it (``python_handover``) so
both paths have one outcome.
"""

from __future__ import annotations

import ctypes
from ctypes import Structure, c_int32, c_uint8, c_uint32, c_uint64, c_void_p

from dprobes.runtime.physmem import PAGE_SIZE
from dprobes.runtime.probe_context import TASK_BASE, TASK_SIZE
from dprobes.runtime.records import Counters
from dprobes.runtime.ring import HEADER_BYTES, HEADER_FIELDS, RecordHead
from dprobes.runtime.xol import TRAP_FLAG
from dprobes.vm.jit import state as S
from dprobes.vm.jit.irgen import HOST_TYPES
from dprobes.vm.registers import REGISTERS_BY_NAME
from dprobes.vm.stacktrace import MIN_ST_SIZE

TLB_BITS = 8
TABLE_BITS = 6
TABLE_SIZE = 1 << TABLE_BITS
"""Probe slots per process table (open addressing): more armed probes than this in one
process than fit are simply served by the Python path."""
GENERAL_REGISTERS = S.WINDOW_REGISTERS
"""dprobes register indices 0..15 (cs ... ebp) are the ones a native hit serves."""

# what the TLB and the fill callback say of a page (low bits of the host address)
PERM_READ, PERM_WRITE, PERM_NO_CACHE = 1, 2, 4

# how the probed instruction is stepped (ProbeEntry.kind)
STEP_RELOCATE, STEP_ABSOLUTE, STEP_CALL_RELATIVE, STEP_CALL_ABSOLUTE, STEP_PUSH = range(5)

# where the Python path takes over a native hit (python_handover's first argument)
STAGE_STEP = 0  # the handler ran (or was skipped): step the instruction
STAGE_FINISH = 1  # the step ended at the EIP given: repair it, then count the hit
STAGE_POST = 2  # the step is repaired: count the hit, log, disable or remove


class TlbEntry(Structure):
    _fields_ = [("tag", c_uint32), ("perms", c_uint32), ("host", c_uint64)]


class ProbeEntry(Structure):
    """One armed probe at one address of one process."""

    _fields_ = [
        ("address", c_uint32), ("kind", c_uint32), ("length", c_uint32), ("slot", c_uint32),
        ("push_reg", c_uint32),  # the register a ``push r32`` stores (dprobes index)
        ("ident", c_uint32), ("ex_mask", c_uint32),
        ("major", c_uint32), ("minor", c_uint32), ("probe_offset", c_uint64),
        ("fields", c_uint32),  # the program's log fields: which header fields to record
        ("window", c_uint32),  # the handler accesses memory: offer it the stack page
        ("head_len", c_uint32),  # bytes of a record's head and header fields
        ("handler", c_void_p), ("state", c_void_p), ("counters", c_void_p),
        # the registers a hit reads after EIP, read in one uc_reg_read_batch call: a mask
        # of dprobes indices, their number, unicorn ids and places in Hook.registers
        ("prefetch", c_uint32), ("prefetch_count", c_uint32),
        ("prefetch_ids", c_int32 * GENERAL_REGISTERS),
        ("prefetch_values", c_void_p * GENERAL_REGISTERS),
    ]


class TableSlot(Structure):
    _fields_ = [("address", c_uint32), ("entry", c_void_p)]


class Pending(Structure):
    """A process's native hit between its int3 and the end of the step."""

    _fields_ = [
        ("active", c_uint32),  # the step is under way (EIP in the slot)
        ("ran", c_uint32),  # the handler ran (the pass count was used up)
        ("trap_flag", c_uint32),
        ("exit_kind", c_uint32), ("exit_to", c_uint32),  # how the handler ended
        ("entry", c_void_p),  # the ProbeEntry of the hit (null: none)
        ("log_at", c_void_p),  # where the log bytes are: the handler's state, or ``log``
        ("ex_log_at", c_void_p),
        ("head", RecordHead), ("header", c_uint8 * HEADER_BYTES),  # the record's start
        ("log", c_uint8 * S.LOG_BUFFER),
        ("ex_log", c_uint8 * S.EX_LOG_BUFFER),
    ]


class ProcessSlot(Structure):
    _fields_ = [("pid", c_uint32), ("uid", c_uint32), ("table", TableSlot * TABLE_SIZE),
                ("pending", Pending)]


class Hook(Structure):
    """Everything the hook reads; its address is the hook's user data."""

    _fields_ = [
        ("uc", c_void_p), ("reg_read", c_void_p), ("reg_write", c_void_p),
        ("reg_read_batch", c_void_p), ("emu_stop", c_void_p),
        ("python_interrupt", c_void_p),  # void (u32 vector): the Python trap path
        ("python_handover", c_void_p),  # void (u32 stage, u32 eip)
        ("python_fill", c_void_p),  # i32 (u32 address, u32 write, u64 *page | perms)
        ("python_drain", c_void_p),  # void (): empty the ring
        ("executed", c_void_p),  # u64 *: the instruction counter
        ("proc", c_void_p),  # ProcessSlot * of the current process (null: none)
        ("owner", c_void_p),  # the State holding the per-CPU stack and the globals
        ("native_ran", c_uint32),  # a handler ran natively since Python last synced
        ("error", c_uint32),  # a handler ended in a host error: emulation stopped
        ("ring_head", c_uint32), ("ring_size", c_uint32), ("ring", c_void_p),
        ("hits", c_uint64),  # probe hits that began natively
        ("reg_ids", c_uint32 * GENERAL_REGISTERS),  # unicorn's id of registers 0..15
        ("registers", S.RegisterWindow),  # registers read in this interrupt (host.registers)
        ("host", S.HostTable),
        ("tlb", TlbEntry * (1 << TLB_BITS)),
    ]


assert Pending.header.offset == Pending.head.offset + ctypes.sizeof(RecordHead)


def _offsets() -> dict[str, int]:
    """Byte offsets the IR uses, as ``Struct_field``."""
    out = {}
    for layout in (TlbEntry, Counters, ProbeEntry, TableSlot, RecordHead, Pending,
                   ProcessSlot, Hook, S.RegisterWindow):
        for name, *_ in layout._fields_:
            out[f"{layout.__name__}_{name}"] = getattr(layout, name).offset
    for name, *_ in S.State._fields_:
        out[f"State_{name}"] = S.offset(name)
    for name, *_ in S.HostTable._fields_:
        out[f"Host_{name}"] = S.host_offset(name)
    return out


def _constants() -> dict[str, int]:
    return {
        **_offsets(),
        **{name.upper(): REGISTERS_BY_NAME[name].index
           for name in ("eip", "eflags", "esp", "cs", "ss")},
        "TF": TRAP_FLAG, "NOT_TF": ~TRAP_FLAG & 0xFFFFFFFF, "PAGE_MASK": PAGE_SIZE - 1,
        "LAST_WORD": PAGE_SIZE - 4, "TLB_MASK": (1 << TLB_BITS) - 1,
        "TLB_ENTRY": ctypes.sizeof(TlbEntry), "TABLE_MASK": TABLE_SIZE - 1,
        "TABLE_SHIFT": 32 - TABLE_BITS, "TABLE_SLOT": ctypes.sizeof(TableSlot),
        "MIN_ST": MIN_ST_SIZE, **{f"LOG_{flag.name}": int(flag) for flag, *_ in HEADER_FIELDS},
        "STACK_BYTES": S.State.stack.size,
        "TASK_BASE": TASK_BASE, "TASK_SIZE": TASK_SIZE, "GENERAL": GENERAL_REGISTERS,
        "EXIT_EXIT": S.EXIT_EXIT, "EXIT_TO": S.EXIT_EXIT_TO, "EXIT_REM": S.EXIT_REM,
        "EXIT_ABORT": S.EXIT_ABORT, "EXIT_LAST": S.EXIT_TERMINATED,
        "RELOCATE": STEP_RELOCATE, "CALL_RELATIVE": STEP_CALL_RELATIVE,
        "CALL_ABSOLUTE": STEP_CALL_ABSOLUTE, "PUSH": STEP_PUSH,
        "STAGE_STEP": STAGE_STEP, "STAGE_FINISH": STAGE_FINISH, "STAGE_POST": STAGE_POST,
        "NO_CACHE": PERM_NO_CACHE,
    }


# Fields are addressed by byte offset: ``getelementptr i8, ptr %p, i64 {Struct_field}``.
_IR = r"""
declare void @llvm.memcpy.p0.p0.i64(ptr, ptr, i64, i1)

; Register %index (0..15, dprobes numbering), read from the CPU once per interrupt into
; the register window the handler reads too. Inline: most reads find it there.
define internal i32 @reg(ptr %hook, i32 %index) alwaysinline {{
start:
  %window = getelementptr i8, ptr %hook, i64 {Hook_registers}
  %valid_p = getelementptr i8, ptr %window, i64 {RegisterWindow_valid}
  %valid = load i32, ptr %valid_p
  %bit = shl i32 1, %index
  %has = and i32 %valid, %bit
  %known = icmp ne i32 %has, 0
  br i1 %known, label %cached, label %read
cached:
  %cache = getelementptr i8, ptr %window, i64 {RegisterWindow_values}
  %index64 = zext i32 %index to i64
  %slot = getelementptr i32, ptr %cache, i64 %index64
  %c = load i32, ptr %slot
  ret i32 %c
read:
  %v = call i32 @read_reg(ptr %hook, i32 %index)
  ret i32 %v
}}

; Register %index from the CPU, kept in the register window.
define internal i32 @read_reg(ptr %hook, i32 %index) noinline {{
  %value = alloca i32
  store i32 0, ptr %value
  %index64 = zext i32 %index to i64
  %ids = getelementptr i8, ptr %hook, i64 {Hook_reg_ids}
  %id_p = getelementptr i32, ptr %ids, i64 %index64
  %id = load i32, ptr %id_p
  %uc_p = getelementptr i8, ptr %hook, i64 {Hook_uc}
  %uc = load ptr, ptr %uc_p
  %fn_p = getelementptr i8, ptr %hook, i64 {Hook_reg_read}
  %fn = load ptr, ptr %fn_p
  %ignored = call i32 %fn(ptr %uc, i32 %id, ptr %value)
  %v = load i32, ptr %value
  %window = getelementptr i8, ptr %hook, i64 {Hook_registers}
  %cache = getelementptr i8, ptr %window, i64 {RegisterWindow_values}
  %slot = getelementptr i32, ptr %cache, i64 %index64
  store i32 %v, ptr %slot
  %valid_p = getelementptr i8, ptr %window, i64 {RegisterWindow_valid}
  %valid = load i32, ptr %valid_p
  %bit = shl i32 1, %index
  %now_valid = or i32 %valid, %bit
  store i32 %now_valid, ptr %valid_p
  ret i32 %v
}}

; The registers the entry's hit reads, from the CPU into the register window in one call.
define internal void @prefetch(ptr %hook, ptr %entry) {{
  %count_p = getelementptr i8, ptr %entry, i64 {ProbeEntry_prefetch_count}
  %count = load i32, ptr %count_p
  %ids = getelementptr i8, ptr %entry, i64 {ProbeEntry_prefetch_ids}
  %values = getelementptr i8, ptr %entry, i64 {ProbeEntry_prefetch_values}
  %uc_p = getelementptr i8, ptr %hook, i64 {Hook_uc}
  %uc = load ptr, ptr %uc_p
  %fn_p = getelementptr i8, ptr %hook, i64 {Hook_reg_read_batch}
  %fn = load ptr, ptr %fn_p
  %ignored = call i32 %fn(ptr %uc, ptr %ids, ptr %values, i32 %count)
  %mask_p = getelementptr i8, ptr %entry, i64 {ProbeEntry_prefetch}
  %mask = load i32, ptr %mask_p
  %window = getelementptr i8, ptr %hook, i64 {Hook_registers}
  %valid_p = getelementptr i8, ptr %window, i64 {RegisterWindow_valid}
  %valid = load i32, ptr %valid_p
  %now_valid = or i32 %valid, %mask
  store i32 %now_valid, ptr %valid_p
  ret void
}}

define internal void @set_reg(ptr %hook, i32 %index, i32 %v) {{
  %value = alloca i32
  store i32 %v, ptr %value
  %ids = getelementptr i8, ptr %hook, i64 {Hook_reg_ids}
  %index64 = zext i32 %index to i64
  %id_p = getelementptr i32, ptr %ids, i64 %index64
  %id = load i32, ptr %id_p
  %uc_p = getelementptr i8, ptr %hook, i64 {Hook_uc}
  %uc = load ptr, ptr %uc_p
  %fn_p = getelementptr i8, ptr %hook, i64 {Hook_reg_write}
  %fn = load ptr, ptr %fn_p
  %ignored = call i32 %fn(ptr %uc, i32 %id, ptr %value)
  %window = getelementptr i8, ptr %hook, i64 {Hook_registers}
  %valid_p = getelementptr i8, ptr %window, i64 {RegisterWindow_valid}
  %valid = load i32, ptr %valid_p
  %bit = shl i32 1, %index
  %not_bit = xor i32 %bit, -1
  %now_valid = and i32 %valid, %not_bit
  store i32 %now_valid, ptr %valid_p
  ret void
}}

; The TLB entry for the page of %addr, and its tag when it holds that page.
define internal ptr @tlb_slot(ptr %hook, i32 %addr) {{
  %vpn = lshr i32 %addr, 12
  %index = and i32 %vpn, {TLB_MASK}
  %index64 = zext i32 %index to i64
  %at = mul i64 %index64, {TLB_ENTRY}
  %tlb = getelementptr i8, ptr %hook, i64 {Hook_tlb}
  %e = getelementptr i8, ptr %tlb, i64 %at
  ret ptr %e
}}

define internal i32 @tlb_tag(i32 %addr) {{
  %vpn = lshr i32 %addr, 12
  %tag = add i32 %vpn, 1
  ret i32 %tag
}}

; Whether TLB entry %e holds the page of %addr for a read (%write 0) or a write (1).
define internal i1 @tlb_holds(ptr %e, i32 %addr, i32 %write) {{
  %tag = call i32 @tlb_tag(i32 %addr)
  %etag = load i32, ptr %e
  %eperm_p = getelementptr i8, ptr %e, i64 {TlbEntry_perms}
  %eperm = load i32, ptr %eperm_p
  %need = shl i32 1, %write
  %has = and i32 %eperm, %need
  %same = icmp eq i32 %etag, %tag
  %allowed = icmp ne i32 %has, 0
  %hit = and i1 %same, %allowed
  ret i1 %hit
}}

; The host address of the page holding %addr for a read (%write 0) or write (1), through
; the TLB, asking Python on a miss. *%status: 0 ok, 1 fault, < 0 Python failed.
define internal i64 @page(ptr %hook, i32 %addr, i32 %write, ptr %status) {{
start:
  %out = alloca i64
  %e = call ptr @tlb_slot(ptr %hook, i32 %addr)
  %hit = call i1 @tlb_holds(ptr %e, i32 %addr, i32 %write)
  %eperm_p = getelementptr i8, ptr %e, i64 {TlbEntry_perms}
  %host_p = getelementptr i8, ptr %e, i64 {TlbEntry_host}
  br i1 %hit, label %cached, label %miss
cached:
  %host = load i64, ptr %host_p
  store i32 0, ptr %status
  ret i64 %host
miss:
  %fill_p = getelementptr i8, ptr %hook, i64 {Hook_python_fill}
  %fill = load ptr, ptr %fill_p
  %st = call i32 %fill(i32 %addr, i32 %write, ptr %out)
  store i32 %st, ptr %status
  %good = icmp eq i32 %st, 0
  br i1 %good, label %filled, label %failed
failed:
  ret i64 0
filled:
  %word = load i64, ptr %out
  %base = and i64 %word, -4096
  %perms64 = and i64 %word, 4095
  %perms = trunc i64 %perms64 to i32
  %nocache = and i32 %perms, {NO_CACHE}
  %keep = icmp eq i32 %nocache, 0
  br i1 %keep, label %remember, label %done
remember:
  %tag = call i32 @tlb_tag(i32 %addr)
  store i32 %tag, ptr %e
  store i32 %perms, ptr %eperm_p
  store i64 %base, ptr %host_p
  br label %done
done:
  ret i64 %base
}}

; Copy %size bytes between guest %addr and %buffer page by page (%write: into the guest).
; 0, or 1 with *%fault = the first inaccessible byte (the bytes before it are copied).
define internal i32 @access(ptr %hook, i32 %addr, i32 %size, ptr %buffer, ptr %fault,
                            i32 %write) {{
start:
  %status = alloca i32
  br label %head
head:
  %done = phi i32 [ 0, %start ], [ %next, %copy ]
  %more = icmp ult i32 %done, %size
  br i1 %more, label %body, label %finished
body:
  %a = add i32 %addr, %done
  %page = call i64 @page(ptr %hook, i32 %a, i32 %write, ptr %status)
  %st = load i32, ptr %status
  %good = icmp eq i32 %st, 0
  br i1 %good, label %copy, label %bad
bad:
  store i32 %a, ptr %fault
  ret i32 %st
copy:
  %off = and i32 %a, {PAGE_MASK}
  %room = sub i32 4096, %off
  %left = sub i32 %size, %done
  %short = icmp ult i32 %room, %left
  %n = select i1 %short, i32 %room, i32 %left
  %off64 = zext i32 %off to i64
  %guest_at = add i64 %page, %off64
  %guest = inttoptr i64 %guest_at to ptr
  %done64 = zext i32 %done to i64
  %ours = getelementptr i8, ptr %buffer, i64 %done64
  %into_guest = icmp ne i32 %write, 0
  %dst = select i1 %into_guest, ptr %guest, ptr %ours
  %src = select i1 %into_guest, ptr %ours, ptr %guest
  %n64 = zext i32 %n to i64
  call void @llvm.memcpy.p0.p0.i64(ptr %dst, ptr %src, i64 %n64, i1 false)
  %next = add i32 %done, %n
  br label %head
finished:
  ret i32 0
}}

define i32 @dprobes_np_read_memory(ptr %hook, i32 %addr, i32 %size, ptr %out, ptr %fault) {{
  %r = call i32 @access(ptr %hook, i32 %addr, i32 %size, ptr %out, ptr %fault, i32 0)
  ret i32 %r
}}

define i32 @dprobes_np_write_memory(ptr %hook, i32 %addr, i32 %size, ptr %data, ptr %fault) {{
  %r = call i32 @access(ptr %hook, i32 %addr, i32 %size, ptr %data, ptr %fault, i32 1)
  ret i32 %r
}}

; The NUL-terminated string at %addr, at most %limit bytes: faults only on a byte reached.
define i32 @dprobes_np_read_cstring(ptr %hook, i32 %addr, i32 %limit, ptr %out,
                                    ptr %length, ptr %fault) {{
start:
  %byte_p = alloca i8
  br label %head
head:
  %count = phi i32 [ 0, %start ], [ %next, %keep ]
  %more = icmp ult i32 %count, %limit
  br i1 %more, label %read, label %finished
read:
  %a = add i32 %addr, %count
  %st = call i32 @access(ptr %hook, i32 %a, i32 1, ptr %byte_p, ptr %fault, i32 0)
  %good = icmp eq i32 %st, 0
  br i1 %good, label %got, label %bad
bad:
  ret i32 %st
got:
  %byte = load i8, ptr %byte_p
  %nul = icmp eq i8 %byte, 0
  br i1 %nul, label %finished, label %keep
keep:
  %count64 = zext i32 %count to i64
  %dst = getelementptr i8, ptr %out, i64 %count64
  store i8 %byte, ptr %dst
  %next = add i32 %count, 1
  br label %head
finished:
  %final = phi i32 [ %count, %head ], [ %count, %got ]
  store i32 %final, ptr %length
  ret i32 0
}}

; Registers 0..15 live from the CPU (the user set is the same for a user probe).
define i32 @dprobes_np_read_register(ptr %hook, i32 %index, i32 %user, ptr %out) {{
start:
  %w1 = getelementptr i32, ptr %out, i64 1
  %w2 = getelementptr i32, ptr %out, i64 2
  %w3 = getelementptr i32, ptr %out, i64 3
  store i32 0, ptr %out
  store i32 0, ptr %w1
  store i32 0, ptr %w2
  store i32 0, ptr %w3
  %known = icmp ult i32 %index, {GENERAL}
  br i1 %known, label %read, label %done
read:
  %v = call i32 @reg(ptr %hook, i32 %index)
  store i32 %v, ptr %out
  br label %done
done:
  ret i32 0
}}

define i32 @dprobes_np_write_register(ptr %hook, i32 %index, i32 %user, i32 %value) {{
start:
  %known = icmp ult i32 %index, {GENERAL}
  br i1 %known, label %write, label %done
write:
  call void @set_reg(ptr %hook, i32 %index, i32 %value)
  br label %done
done:
  ret i32 0
}}

define internal i32 @current_pid(ptr %hook) {{
  %proc_p = getelementptr i8, ptr %hook, i64 {Hook_proc}
  %proc = load ptr, ptr %proc_p
  %pid_p = getelementptr i8, ptr %proc, i64 {ProcessSlot_pid}
  %pid = load i32, ptr %pid_p
  ret i32 %pid
}}

define i32 @dprobes_np_pid(ptr %hook, ptr %out) {{
  %pid = call i32 @current_pid(ptr %hook)
  store i32 %pid, ptr %out
  ret i32 0
}}

define i32 @dprobes_np_task(ptr %hook, ptr %out) {{
  %pid = call i32 @current_pid(ptr %hook)
  %scaled = mul i32 %pid, {TASK_SIZE}
  %task = add i32 %scaled, {TASK_BASE}
  store i32 %task, ptr %out
  ret i32 0
}}

define i32 @dprobes_np_processor(ptr %hook, ptr %out) {{
  store i32 0, ptr %out
  ret i32 0
}}

{stubs}

; The probe entry for %addr in the current process's table, or null.
define internal ptr @lookup(ptr %proc, i32 %addr) {{
start:
  %table = getelementptr i8, ptr %proc, i64 {ProcessSlot_table}
  %h1 = mul i32 %addr, 2654435761
  %h = lshr i32 %h1, {TABLE_SHIFT}
  br label %head
head:
  %i = phi i32 [ 0, %start ], [ %i_next, %other ]
  %more = icmp ule i32 %i, {TABLE_MASK}
  br i1 %more, label %probe, label %absent
probe:
  %sum = add i32 %h, %i
  %slot_index = and i32 %sum, {TABLE_MASK}
  %slot64 = zext i32 %slot_index to i64
  %slot_at = mul i64 %slot64, {TABLE_SLOT}
  %slot = getelementptr i8, ptr %table, i64 %slot_at
  %entry_p = getelementptr i8, ptr %slot, i64 {TableSlot_entry}
  %found = load ptr, ptr %entry_p
  %empty = icmp eq ptr %found, null
  br i1 %empty, label %absent, label %compare
compare:
  %key = load i32, ptr %slot
  %same = icmp eq i32 %key, %addr
  br i1 %same, label %present, label %other
other:
  %i_next = add i32 %i, 1
  br label %head
present:
  ret ptr %found
absent:
  ret ptr null
}}

; The hit's log bytes move from the handler's state (which the next hit reuses) into
; the process's pending hit, before the hit leaves this interrupt.
define internal void @keep_log(ptr %hook) {{
start:
  %proc_p = getelementptr i8, ptr %hook, i64 {Hook_proc}
  %proc = load ptr, ptr %proc_p
  %pending = getelementptr i8, ptr %proc, i64 {ProcessSlot_pending}
  %ran_p = getelementptr i8, ptr %pending, i64 {Pending_ran}
  %ran = load i32, ptr %ran_p
  %did_run = icmp ne i32 %ran, 0
  br i1 %did_run, label %copy_log, label %done
copy_log:
  %log_at = getelementptr i8, ptr %pending, i64 {Pending_log_at}
  %log_from = load ptr, ptr %log_at
  %log_to = getelementptr i8, ptr %pending, i64 {Pending_log}
  %nlog = call i32 @head_u16(ptr %pending, i64 {RecordHead_log_len})
  call void @copy(ptr %log_to, ptr %log_from, i32 %nlog)
  store ptr %log_to, ptr %log_at
  %ex_at = getelementptr i8, ptr %pending, i64 {Pending_ex_log_at}
  %ex_from = load ptr, ptr %ex_at
  %ex_to = getelementptr i8, ptr %pending, i64 {Pending_ex_log}
  %nex = call i32 @head_u16(ptr %pending, i64 {RecordHead_ex_len})
  call void @copy(ptr %ex_to, ptr %ex_from, i32 %nex)
  store ptr %ex_to, ptr %ex_at
  br label %done
done:
  ret void
}}

define internal void @handover(ptr %hook, i32 %stage, i32 %eip) {{
  call void @keep_log(ptr %hook)
  %fn_p = getelementptr i8, ptr %hook, i64 {Hook_python_handover}
  %fn = load ptr, ptr %fn_p
  call void %fn(i32 %stage, i32 %eip)
  ret void
}}

; %n bytes from field %from of %src to field %to of %dst.
define internal void @move(ptr %dst, i64 %to, ptr %src, i64 %from, i32 %n) {{
  %d = getelementptr i8, ptr %dst, i64 %to
  %s = getelementptr i8, ptr %src, i64 %from
  call void @copy(ptr %d, ptr %s, i32 %n)
  ret void
}}

define internal void @copy(ptr %dst, ptr %src, i32 %n) {{
  %n64 = zext i32 %n to i64
  call void @llvm.memcpy.p0.p0.i64(ptr %dst, ptr %src, i64 %n64, i1 false)
  ret void
}}

; The u16 at %at of the pending record's head, widened.
define internal i32 @head_u16(ptr %pending, i64 %at) {{
  %head = getelementptr i8, ptr %pending, i64 {Pending_head}
  %p = getelementptr i8, ptr %head, i64 %at
  %v = load i16, ptr %p
  %w = zext i16 %v to i32
  ret i32 %w
}}

; Store the low 16 bits of %v at %at of the pending record's head.
define internal void @set_head_u16(ptr %pending, i64 %at, i32 %v) {{
  %head = getelementptr i8, ptr %pending, i64 {Pending_head}
  %p = getelementptr i8, ptr %head, i64 %at
  %low = trunc i32 %v to i16
  store i16 %low, ptr %p
  ret void
}}

; Bytes of a buffer from %start to min(%len, %cap) (0 when that is not past %start).
define internal i32 @used(i32 %start, i32 %len, i32 %cap) {{
  %short = icmp ult i32 %len, %cap
  %end = select i1 %short, i32 %len, i32 %cap
  %past = icmp ugt i32 %end, %start
  %n = sub i32 %end, %start
  %r = select i1 %past, i32 %n, i32 0
  ret i32 %r
}}

; The handler's direct memory window (HostTable): the page at ESP, where a probe finds its
; arguments and locals, if the handler accesses memory at all and the TLB holds that page
; writable (the window serves writes too); no window otherwise. Accesses inside it need no
; host call.
define internal void @stack_window(ptr %hook, ptr %entry) {{
start:
  %host = getelementptr i8, ptr %hook, i64 {Hook_host}
  %length_p = getelementptr i8, ptr %host, i64 {Host_window_length}
  store i32 0, ptr %length_p
  %wants_p = getelementptr i8, ptr %entry, i64 {ProbeEntry_window}
  %wants = load i32, ptr %wants_p
  %none = icmp eq i32 %wants, 0
  br i1 %none, label %done, label %look
look:
  %esp = call i32 @reg(ptr %hook, i32 {ESP})
  %e = call ptr @tlb_slot(ptr %hook, i32 %esp)
  %writable = call i1 @tlb_holds(ptr %e, i32 %esp, i32 1)
  br i1 %writable, label %publish, label %done
publish:
  %page_p = getelementptr i8, ptr %e, i64 {TlbEntry_host}
  %page = load i64, ptr %page_p
  %data = inttoptr i64 %page to ptr
  %data_p = getelementptr i8, ptr %host, i64 {Host_window_data}
  store ptr %data, ptr %data_p
  %base = and i32 %esp, -4096
  %base_p = getelementptr i8, ptr %host, i64 {Host_window_base}
  store i32 %base, ptr %base_p
  store i32 4096, ptr %length_p
  br label %done
done:
  ret void
}}

; Run the entry's compiled handler and keep its outcome in the process's pending hit.
; False: the handler ended in a host error (emulation is being stopped).
define internal i1 @fire(ptr %hook, ptr %proc, ptr %entry) {{
start:
  %state_p = getelementptr i8, ptr %entry, i64 {ProbeEntry_state}
  %state = load ptr, ptr %state_p
  %owner_p = getelementptr i8, ptr %hook, i64 {Hook_owner}
  %owner = load ptr, ptr %owner_p
  %mine = icmp eq ptr %owner, %state
  %unowned = icmp eq ptr %owner, null
  %keep_own = or i1 %mine, %unowned
  br i1 %keep_own, label %own, label %take
own:
  store ptr %state, ptr %owner_p
  br label %run
take:
  ; the per-CPU stack, the last exception code and the globals move to this state
  %stack_to = getelementptr i8, ptr %state, i64 {State_stack}
  %stack_from = getelementptr i8, ptr %owner, i64 {State_stack}
  call void @copy(ptr %stack_to, ptr %stack_from, i32 {STACK_BYTES})
  %code_from = getelementptr i8, ptr %owner, i64 {State_ex_code}
  %code = load i32, ptr %code_from
  %code_to = getelementptr i8, ptr %state, i64 {State_ex_code}
  store i32 %code, ptr %code_to
  %gv_from_p = getelementptr i8, ptr %owner, i64 {State_gv}
  %gv_from = load ptr, ptr %gv_from_p
  %gv_to_p = getelementptr i8, ptr %state, i64 {State_gv}
  %gv_to = load ptr, ptr %gv_to_p
  %ngv_p = getelementptr i8, ptr %state, i64 {State_num_gv}
  %ngv = load i32, ptr %ngv_p
  %gv_bytes = shl i32 %ngv, 2
  call void @copy(ptr %gv_to, ptr %gv_from, i32 %gv_bytes)
  store ptr %state, ptr %owner_p
  br label %run
run:
  call void @move(ptr %state, i64 {State_ex_mask}, ptr %entry, i64 {ProbeEntry_ex_mask}, i32 4)
  call void @move(ptr %state, i64 {State_probe_major}, ptr %entry, i64 {ProbeEntry_major},
                  i32 4)
  call void @move(ptr %state, i64 {State_probe_minor}, ptr %entry, i64 {ProbeEntry_minor},
                  i32 4)
  call void @move(ptr %state, i64 {State_probe_offset}, ptr %entry,
                  i64 {ProbeEntry_probe_offset}, i32 8)
  %host = getelementptr i8, ptr %hook, i64 {Hook_host}
  %shost = getelementptr i8, ptr %state, i64 {State_host}
  store ptr %host, ptr %shost
  call void @stack_window(ptr %hook, ptr %entry)
  %handler_p = getelementptr i8, ptr %entry, i64 {ProbeEntry_handler}
  %handler = load ptr, ptr %handler_p
  call void %handler(ptr %state)
  %ran_p = getelementptr i8, ptr %hook, i64 {Hook_native_ran}
  store i32 1, ptr %ran_p
  %kind_p = getelementptr i8, ptr %state, i64 {State_exit_kind}
  %kind = load i32, ptr %kind_p
  %low = icmp uge i32 %kind, {EXIT_EXIT}
  %high = icmp ule i32 %kind, {EXIT_LAST}
  %valid = and i1 %low, %high
  br i1 %valid, label %keep, label %broken
broken:
  %error_p = getelementptr i8, ptr %hook, i64 {Hook_error}
  store i32 %kind, ptr %error_p
  %uc_p = getelementptr i8, ptr %hook, i64 {Hook_uc}
  %uc = load ptr, ptr %uc_p
  %stop_p = getelementptr i8, ptr %hook, i64 {Hook_emu_stop}
  %stop = load ptr, ptr %stop_p
  %ignored = call i32 %stop(ptr %uc)
  ret i1 false
keep:
  %pending = getelementptr i8, ptr %proc, i64 {ProcessSlot_pending}
  %major_p = getelementptr i8, ptr %state, i64 {State_major}
  %major = load i32, ptr %major_p
  call void @set_head_u16(ptr %pending, i64 {RecordHead_major}, i32 %major)
  %minor_p = getelementptr i8, ptr %state, i64 {State_minor}
  %minor = load i32, ptr %minor_p
  call void @set_head_u16(ptr %pending, i64 {RecordHead_minor}, i32 %minor)
  %exit_kind_p = getelementptr i8, ptr %pending, i64 {Pending_exit_kind}
  store i32 %kind, ptr %exit_kind_p
  call void @move(ptr %pending, i64 {Pending_exit_to}, ptr %state, i64 {State_exit_to}, i32 4)
  %hl_p = getelementptr i8, ptr %state, i64 {State_header_length}
  %hl = load i32, ptr %hl_p
  %len_p = getelementptr i8, ptr %state, i64 {State_log_len}
  %len = load i32, ptr %len_p
  %cap_p = getelementptr i8, ptr %state, i64 {State_log_cap}
  %cap = load i32, ptr %cap_p
  %nlog = call i32 @used(i32 %hl, i32 %len, i32 %cap)
  %log = getelementptr i8, ptr %state, i64 {State_log}
  %hl64 = zext i32 %hl to i64
  %log_from = getelementptr i8, ptr %log, i64 %hl64
  %log_at = getelementptr i8, ptr %pending, i64 {Pending_log_at}
  store ptr %log_from, ptr %log_at
  call void @set_head_u16(ptr %pending, i64 {RecordHead_log_len}, i32 %nlog)
  %exlen_p = getelementptr i8, ptr %state, i64 {State_ex_len}
  %exlen = load i32, ptr %exlen_p
  %exmax_p = getelementptr i8, ptr %state, i64 {State_ex_logmax}
  %exmax = load i32, ptr %exmax_p
  %nex = call i32 @used(i32 {MIN_ST}, i32 %exlen, i32 %exmax)
  %exlog = getelementptr i8, ptr %state, i64 {State_ex_log}
  %ex_from = getelementptr i8, ptr %exlog, i64 {MIN_ST}
  %ex_at = getelementptr i8, ptr %pending, i64 {Pending_ex_log_at}
  store ptr %ex_from, ptr %ex_at
  call void @set_head_u16(ptr %pending, i64 {RecordHead_ex_len}, i32 %nex)
  ret i1 true
}}

; Append the pending hit's record to the ring (Python empties a full ring first).
define internal void @commit(ptr %hook, ptr %proc, ptr %entry) {{
start:
  %pending = getelementptr i8, ptr %proc, i64 {ProcessSlot_pending}
  %record = getelementptr i8, ptr %pending, i64 {Pending_head}
  %nlog = call i32 @head_u16(ptr %pending, i64 {RecordHead_log_len})
  %nex = call i32 @head_u16(ptr %pending, i64 {RecordHead_ex_len})
  %head_len_p = getelementptr i8, ptr %entry, i64 {ProbeEntry_head_len}
  %head_len = load i32, ptr %head_len_p
  %body = add i32 %nlog, %nex
  %raw = add i32 %body, %head_len
  %padded = add i32 %raw, 3
  %total = and i32 %padded, -4
  %head_p = getelementptr i8, ptr %hook, i64 {Hook_ring_head}
  %head0 = load i32, ptr %head_p
  %size_p = getelementptr i8, ptr %hook, i64 {Hook_ring_size}
  %size = load i32, ptr %size_p
  %end = add i32 %head0, %total
  %full = icmp ugt i32 %end, %size
  br i1 %full, label %drain, label %append
drain:
  %drain_p = getelementptr i8, ptr %hook, i64 {Hook_python_drain}
  %drainfn = load ptr, ptr %drain_p
  call void %drainfn()
  br label %append
append:
  %head = load i32, ptr %head_p
  %ring_p = getelementptr i8, ptr %hook, i64 {Hook_ring}
  %ring = load ptr, ptr %ring_p
  %head64 = zext i32 %head to i64
  %dst = getelementptr i8, ptr %ring, i64 %head64
  call void @copy(ptr %dst, ptr %record, i32 %head_len)
  %head_len64 = zext i32 %head_len to i64
  %dst_log = getelementptr i8, ptr %dst, i64 %head_len64
  %log_p = getelementptr i8, ptr %pending, i64 {Pending_log_at}
  %log = load ptr, ptr %log_p
  call void @copy(ptr %dst_log, ptr %log, i32 %nlog)
  %nlog64 = zext i32 %nlog to i64
  %dst_ex = getelementptr i8, ptr %dst_log, i64 %nlog64
  %ex_p = getelementptr i8, ptr %pending, i64 {Pending_ex_log_at}
  %ex = load ptr, ptr %ex_p
  call void @copy(ptr %dst_ex, ptr %ex, i32 %nex)
  %new_head = add i32 %head, %total
  store i32 %new_head, ptr %head_p
  ret void
}}

; The step is done: count the hit and log, unless Python must see this one.
define internal void @post_step(ptr %hook, ptr %proc, ptr %entry) {{
start:
  %pending = getelementptr i8, ptr %proc, i64 {ProcessSlot_pending}
  %counters_p = getelementptr i8, ptr %entry, i64 {ProbeEntry_counters}
  %counters = load ptr, ptr %counters_p
  %count = load i64, ptr %counters
  %next = add i64 %count, 1
  %max_p = getelementptr i8, ptr %counters, i64 {Counters_max_hits}
  %max = load i64, ptr %max_p
  %last = icmp sge i64 %next, %max
  %ran_p = getelementptr i8, ptr %pending, i64 {Pending_ran}
  %ran = load i32, ptr %ran_p
  %did_run = icmp ne i32 %ran, 0
  %kind_p = getelementptr i8, ptr %pending, i64 {Pending_exit_kind}
  %kind = load i32, ptr %kind_p
  %is_rem = icmp eq i32 %kind, {EXIT_REM}
  %rem = and i1 %did_run, %is_rem
  %python = or i1 %last, %rem
  br i1 %python, label %to_python, label %count_it
to_python:
  call void @handover(ptr %hook, i32 {STAGE_POST}, i32 0)
  ret void
count_it:
  store i64 %next, ptr %counters
  %entry_p = getelementptr i8, ptr %pending, i64 {Pending_entry}
  store ptr null, ptr %entry_p
  %not_aborted = icmp ne i32 %kind, {EXIT_ABORT}
  %emit = and i1 %did_run, %not_aborted
  br i1 %emit, label %log, label %done
log:
  call void @commit(ptr %hook, ptr %proc, ptr %entry)
  br label %done
done:
  ret void
}}

; A word stored at %esp (the return address of a stepped call); false if the page is not
; there as a present, writable page (Python then does it).
define internal i1 @store_word(ptr %hook, i32 %esp, i32 %value) {{
start:
  %status = alloca i32
  %off = and i32 %esp, {PAGE_MASK}
  %fits = icmp ule i32 %off, {LAST_WORD}
  br i1 %fits, label %lookup, label %no
lookup:
  %page = call i64 @page(ptr %hook, i32 %esp, i32 1, ptr %status)
  %st = load i32, ptr %status
  %good = icmp eq i32 %st, 0
  br i1 %good, label %store, label %no
store:
  %off64 = zext i32 %off to i64
  %at = add i64 %page, %off64
  %p = inttoptr i64 %at to ptr
  store i32 %value, ptr %p
  ret i1 true
no:
  ret i1 false
}}

; The current process's ProbeEntry whose out-of-line step is under way, or null.
define internal ptr @stepping(ptr %hook) {{
start:
  %proc_p = getelementptr i8, ptr %hook, i64 {Hook_proc}
  %proc = load ptr, ptr %proc_p
  %no_proc = icmp eq ptr %proc, null
  br i1 %no_proc, label %none, label %check
check:
  %pending = getelementptr i8, ptr %proc, i64 {ProcessSlot_pending}
  %active = load i32, ptr %pending
  %idle = icmp eq i32 %active, 0
  br i1 %idle, label %none, label %found
found:
  %entry_p = getelementptr i8, ptr %pending, i64 {Pending_entry}
  %entry = load ptr, ptr %entry_p
  ret ptr %entry
none:
  ret ptr null
}}

; The step ended with EIP %eip: repair EIP (and a call's return address), restore TF.
define internal i1 @step_done(ptr %hook, i32 %eip) {{
start:
  %entry = call ptr @stepping(ptr %hook)
  %idle = icmp eq ptr %entry, null
  br i1 %idle, label %decline, label %repair
repair:
  %proc_p = getelementptr i8, ptr %hook, i64 {Hook_proc}
  %proc = load ptr, ptr %proc_p
  %pending = getelementptr i8, ptr %proc, i64 {ProcessSlot_pending}
  %kind_p = getelementptr i8, ptr %entry, i64 {ProbeEntry_kind}
  %kind = load i32, ptr %kind_p
  %addr = load i32, ptr %entry
  %slot_p = getelementptr i8, ptr %entry, i64 {ProbeEntry_slot}
  %slot = load i32, ptr %slot_p
  %length_p = getelementptr i8, ptr %entry, i64 {ProbeEntry_length}
  %length = load i32, ptr %length_p
  %moved = sub i32 %eip, %slot
  %relocated = add i32 %addr, %moved
  %is_relocate = icmp eq i32 %kind, {RELOCATE}
  %is_call_rel = icmp eq i32 %kind, {CALL_RELATIVE}
  %is_call_abs = icmp eq i32 %kind, {CALL_ABSOLUTE}
  %relocate = or i1 %is_relocate, %is_call_rel
  %new_eip = select i1 %relocate, i32 %relocated, i32 %eip
  %is_call = or i1 %is_call_rel, %is_call_abs
  br i1 %is_call, label %fix_return, label %flags
fix_return:
  %esp = call i32 @reg(ptr %hook, i32 {ESP})
  %return = add i32 %addr, %length
  %stored = call i1 @store_word(ptr %hook, i32 %esp, i32 %return)
  br i1 %stored, label %flags, label %python
python:
  call void @handover(ptr %hook, i32 {STAGE_FINISH}, i32 %eip)
  ret i1 true
flags:
  %eflags = call i32 @reg(ptr %hook, i32 {EFLAGS})
  %cleared = and i32 %eflags, {NOT_TF}
  %tf_p = getelementptr i8, ptr %pending, i64 {Pending_trap_flag}
  %tf = load i32, ptr %tf_p
  %restored = or i32 %cleared, %tf
  call void @set_reg(ptr %hook, i32 {EFLAGS}, i32 %restored)
  call void @set_reg(ptr %hook, i32 {EIP}, i32 %new_eip)
  store i32 0, ptr %pending
  call void @post_step(ptr %hook, ptr %proc, ptr %entry)
  ret i1 true
decline:
  ret i1 false
}}

; The machine state the entry's log fields select, packed after the pending record's head
; in HEADER_FIELDS order; nothing else is read (a register read costs ~10 ns).
define internal void @note_header(ptr %hook, ptr %proc, ptr %entry) {{
start:
  %fields_p = getelementptr i8, ptr %entry, i64 {ProbeEntry_fields}
  %fields = load i32, ptr %fields_p
  %pending = getelementptr i8, ptr %proc, i64 {ProcessSlot_pending}
  %at_header = getelementptr i8, ptr %pending, i64 {Pending_header}
  %uid_bit = and i32 %fields, {LOG_UID}
  %has_uid = icmp ne i32 %uid_bit, 0
  br i1 %has_uid, label %uid, label %cs_check
uid:
  %uid_p = getelementptr i8, ptr %proc, i64 {ProcessSlot_uid}
  %uid_v = load i32, ptr %uid_p
  store i32 %uid_v, ptr %at_header, align 1
  %after_uid = getelementptr i8, ptr %at_header, i64 4
  br label %cs_check
cs_check:
  %at1 = phi ptr [ %at_header, %start ], [ %after_uid, %uid ]
  %cs_bit = and i32 %fields, {LOG_CSEIP}
  %has_cs = icmp ne i32 %cs_bit, 0
  br i1 %has_cs, label %cs, label %ss_check
cs:
  %cs_v = call i32 @reg(ptr %hook, i32 {CS})
  store i32 %cs_v, ptr %at1, align 1
  %after_cs = getelementptr i8, ptr %at1, i64 4
  br label %ss_check
ss_check:
  %at2 = phi ptr [ %at1, %cs_check ], [ %after_cs, %cs ]
  %ss_bit = and i32 %fields, {LOG_SSESP}
  %has_ss = icmp ne i32 %ss_bit, 0
  br i1 %has_ss, label %ss, label %tsc_check
ss:
  %ss_v = call i32 @reg(ptr %hook, i32 {SS})
  store i32 %ss_v, ptr %at2, align 1
  %esp_at = getelementptr i8, ptr %at2, i64 4
  %esp_v = call i32 @reg(ptr %hook, i32 {ESP})
  store i32 %esp_v, ptr %esp_at, align 1
  %after_ss = getelementptr i8, ptr %at2, i64 8
  br label %tsc_check
tsc_check:
  %at3 = phi ptr [ %at2, %ss_check ], [ %after_ss, %ss ]
  %tsc_bit = and i32 %fields, {LOG_TSC}
  %has_tsc = icmp ne i32 %tsc_bit, 0
  br i1 %has_tsc, label %tsc, label %done
tsc:
  %clock_p = getelementptr i8, ptr %hook, i64 {Hook_executed}
  %clock = load ptr, ptr %clock_p
  %now = load i64, ptr %clock
  store i64 %now, ptr %at3, align 1
  br label %done
done:
  ret void
}}

; An int3: a native probe hit, the backstop int3 after a slot, or false for Python.
define internal i1 @breakpoint(ptr %hook) {{
start:
  %proc_p = getelementptr i8, ptr %hook, i64 {Hook_proc}
  %proc = load ptr, ptr %proc_p
  %no_proc = icmp eq ptr %proc, null
  br i1 %no_proc, label %decline, label %look
look:
  %eip = call i32 @reg(ptr %hook, i32 {EIP})
  %addr = sub i32 %eip, 1
  %pending = getelementptr i8, ptr %proc, i64 {ProcessSlot_pending}
  %bentry = call ptr @stepping(ptr %hook)
  %busy = icmp ne ptr %bentry, null
  br i1 %busy, label %backstop, label %find
backstop:
  %bslot_p = getelementptr i8, ptr %bentry, i64 {ProbeEntry_slot}
  %bslot = load i32, ptr %bslot_p
  %blength_p = getelementptr i8, ptr %bentry, i64 {ProbeEntry_length}
  %blength = load i32, ptr %blength_p
  %bend = add i32 %bslot, %blength
  %at_end = icmp eq i32 %addr, %bend
  br i1 %at_end, label %finish, label %decline
finish:
  %done = call i1 @step_done(ptr %hook, i32 %addr)
  ret i1 %done
find:
  %entry = call ptr @lookup(ptr %proc, i32 %addr)
  %absent = icmp eq ptr %entry, null
  br i1 %absent, label %decline, label %flags
flags:
  call void @prefetch(ptr %hook, ptr %entry)
  %eflags = call i32 @reg(ptr %hook, i32 {EFLAGS})
  %tf = and i32 %eflags, {TF}
  %stepping = icmp ne i32 %tf, 0
  br i1 %stepping, label %decline, label %hit
hit:
  %stats_p = getelementptr i8, ptr %hook, i64 {Hook_hits}
  %stats = load i64, ptr %stats_p
  %stats1 = add i64 %stats, 1
  store i64 %stats1, ptr %stats_p
  %counters_p = getelementptr i8, ptr %entry, i64 {ProbeEntry_counters}
  %counters = load ptr, ptr %counters_p
  %hits_p = getelementptr i8, ptr %counters, i64 {Counters_hits}
  %hits = load i64, ptr %hits_p
  %hits1 = add i64 %hits, 1
  store i64 %hits1, ptr %hits_p
  %entry_slot = getelementptr i8, ptr %pending, i64 {Pending_entry}
  store ptr %entry, ptr %entry_slot
  %ran_p = getelementptr i8, ptr %pending, i64 {Pending_ran}
  store i32 0, ptr %ran_p
  %tf_p = getelementptr i8, ptr %pending, i64 {Pending_trap_flag}
  store i32 0, ptr %tf_p
  %head = getelementptr i8, ptr %pending, i64 {Pending_head}
  call void @move(ptr %head, i64 {RecordHead_ident}, ptr %entry, i64 {ProbeEntry_ident},
                  i32 4)
  call void @note_header(ptr %hook, ptr %proc, ptr %entry)
  %count = load i64, ptr %counters
  %runs = icmp sge i64 %count, 0
  br i1 %runs, label %fire, label %step
fire:
  %ok = call i1 @fire(ptr %hook, ptr %proc, ptr %entry)
  br i1 %ok, label %fired, label %stopped
stopped:
  ret i1 true
fired:
  store i32 1, ptr %ran_p
  %rkind_p = getelementptr i8, ptr %pending, i64 {Pending_exit_kind}
  %rkind = load i32, ptr %rkind_p
  %exit_to = icmp eq i32 %rkind, {EXIT_TO}
  br i1 %exit_to, label %python, label %step
step:
  %kind_p = getelementptr i8, ptr %entry, i64 {ProbeEntry_kind}
  %kind = load i32, ptr %kind_p
  %is_push = icmp eq i32 %kind, {PUSH}
  br i1 %is_push, label %push, label %to_slot
push:
  %esp_now = call i32 @reg(ptr %hook, i32 {ESP})
  %below = sub i32 %esp_now, 4
  %reg_p = getelementptr i8, ptr %entry, i64 {ProbeEntry_push_reg}
  %reg_id = load i32, ptr %reg_p
  %value = call i32 @reg(ptr %hook, i32 %reg_id)
  %stored = call i1 @store_word(ptr %hook, i32 %below, i32 %value)
  br i1 %stored, label %pushed, label %python
pushed:
  call void @set_reg(ptr %hook, i32 {ESP}, i32 %below)
  call void @post_step(ptr %hook, ptr %proc, ptr %entry)
  ret i1 true
python:
  call void @handover(ptr %hook, i32 {STAGE_STEP}, i32 0)
  ret i1 true
to_slot:
  call void @keep_log(ptr %hook)
  store i32 1, ptr %pending
  %eflags_now = call i32 @reg(ptr %hook, i32 {EFLAGS})
  %with_tf = or i32 %eflags_now, {TF}
  call void @set_reg(ptr %hook, i32 {EFLAGS}, i32 %with_tf)
  %slot_p = getelementptr i8, ptr %entry, i64 {ProbeEntry_slot}
  %slot = load i32, ptr %slot_p
  call void @set_reg(ptr %hook, i32 {EIP}, i32 %slot)
  ret i1 true
decline:
  ret i1 false
}}

; UC_HOOK_INTR: what the native path can do it does; everything else goes to Python.
define void @dprobes_np_interrupt(ptr %uc, i32 %vector, ptr %hook) {{
start:
  %window = getelementptr i8, ptr %hook, i64 {Hook_registers}
  %valid_p = getelementptr i8, ptr %window, i64 {RegisterWindow_valid}
  store i32 0, ptr %valid_p
  %is_bp = icmp eq i32 %vector, 3
  br i1 %is_bp, label %bp, label %other
bp:
  %handled_bp = call i1 @breakpoint(ptr %hook)
  br i1 %handled_bp, label %done, label %python
other:
  %is_db = icmp eq i32 %vector, 1
  br i1 %is_db, label %db, label %python
db:
  %eip = call i32 @reg(ptr %hook, i32 {EIP})
  %handled_db = call i1 @step_done(ptr %hook, i32 %eip)
  br i1 %handled_db, label %done, label %python
python:
  %fn_p = getelementptr i8, ptr %hook, i64 {Hook_python_interrupt}
  %fn = load ptr, ptr %fn_p
  call void %fn(i32 %vector)
  br label %done
done:
  ret void
}}
"""

NATIVE_SERVICES = ("read_memory", "write_memory", "read_cstring", "read_register",
                   "write_register", "pid", "task", "processor")
SYMBOL_PREFIX = "dprobes_np_"


def _stubs() -> str:
    """Host services a native hit never uses (the handler would not be native): they
    report a host failure rather than leave a null pointer in the table."""
    out = []
    for name, fn_type in HOST_TYPES.items():
        if name not in NATIVE_SERVICES:
            params = ", ".join(str(arg) for arg in fn_type.args)
            out.append(f"define i32 @{SYMBOL_PREFIX}{name}({params}) {{\n  ret i32 -1\n}}")
    return "\n\n".join(out)


def ir_text() -> str:
    """The hook's LLVM IR with this build's layouts filled in."""
    return _IR.format(stubs=_stubs(), **_constants())


class _TextModule:
    """IR text in the shape ``Engine.add_library`` takes (it sets triple and layout)."""

    def __init__(self, text: str) -> None:
        self.text, self.triple, self.data_layout = text, "", ""

    def __str__(self) -> str:
        return (f'target triple = "{self.triple}"\n'
                f'target datalayout = "{self.data_layout}"\n{self.text}')


_addresses: dict[str, int] | None = None


def addresses() -> dict[str, int]:
    """Native addresses of the hook and of every host service (compiled once)."""
    global _addresses
    if _addresses is None:
        import llvmlite.binding as llvm

        from dprobes.vm.jit.compile import Engine

        engine = Engine.get()
        module = llvm.parse_assembly(ir_text())
        module.verify()
        tuning = llvm.create_pipeline_tuning_options(speed_level=2)
        builder = llvm.create_pass_builder(engine.target_machine, tuning)
        passes = builder.getModulePassManager()  # the O2 pipeline: inlines the helpers
        try:
            passes.run(module, builder)
        finally:
            passes.close()
            builder.close()
        names = ["dprobes_np_interrupt", *(SYMBOL_PREFIX + name for name, _ in
                                            S.HOST_CALLBACKS)]
        _addresses = engine.add_library(_TextModule(str(module)), names)
    return _addresses
