"""The state struct shared by Python and the JIT-compiled handlers (the ``dp_state`` ABI).

One ``State`` holds everything a handler touches: the 1024-word circular RPN stack, TOS
and SBP, the call frames (ten words each, as in 5.0: saved SBP, traced gv/lv/pv ranges,
handler, called and return offsets), the jump budget, the log and exception buffers with
their lengths, major/minor, the exception registers and how the handler ended. Native
code addresses every field by its byte offset, read here from the ctypes layout, so this
file is the only description of the layout (no second struct definition to keep in step).

The per-hit fields are reset by the native prologue (``rt_begin``); Python only copies in
what persists between hits (the stack, lv, gv and the last exception code, see
``vm.jit.runner``) and the per-probe settings.

Two tables of function pointers hang off the state:

* ``host`` (``HostTable``): everything the handler asks of the machine it probes:
  memory (reads and writes that can fault, byte-exact partial writes), C strings,
  registers, CPUID/MSR, IO ports, segment bases, pid/task/processor, the ``callk`` hook,
  and two optional shortcuts: a direct memory window and a register window.
  A Python ``Context`` is served by ctypes trampolines (``vm.jit.host``); a native host
  fills the table with native function pointers and its own ``ctx`` pointer.
* ``helpers`` (``HelperTable``): rare, complex operations served by Python
  (``vm.jit.runtime_helpers``): the probe heap.

Every callback returns an ``int32`` status; a negative status means "the host failed"
(a Python exception in a trampoline): the handler stops at once with
``EXIT_HOST_ERROR`` and the runner re-raises the host's exception.

Driving a handler from native code (what ``vm.jit.runner`` does, minus the Python
lists): fill once per program ``jmpmax``, ``header_length``, ``log_cap`` (header length
+ logmax, at most ``LOG_BUFFER``), ``ex_logmax``, ``ex_log_size`` (max(ex_logmax, 12)),
``autostacktrace``, ``log_hwm``/``ex_log_hwm`` (the buffer sizes, so the first hit clears
them), ``lv``/``num_lv``, ``gv``/``num_gv``, ``helpers`` and ``host``; per probe
``ex_mask``, ``probe_major``, ``probe_minor``; then each hit is one call of the
compiled ``void body(State *, u32 code_base)``, ``code_base`` being the probe's
``code_start`` (``CompiledHandler.body.address`` and ``.code_base``; ``.address`` is a
``void handler(State *)`` entry that passes it). The stack, ``ex_code`` and the variables persist in
the state between calls, as on a CPU; read the results from ``exit_kind``, ``exit_to``,
``has_exception``/``exc_*``, ``major``/``minor``, ``jmp_count``, ``log[header_length:
min(log_len, log_cap)]``, ``ex_log[12:min(ex_len, ex_logmax)]`` and ``tos``.
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

from dprobes.vm.logrecord import MAX_HEADER_LENGTH
from dprobes.vm.model import EX_LOGMAX_LIMIT, LOGMAX_LIMIT, MAX_CALL_DEPTH, STACK_SIZE
from dprobes.vm.registers import GENERAL_REGISTERS

ABI_VERSION = 8
"""Bumped whenever the layout or a calling convention changes (part of the cache key)."""

FRAME_FIELDS = (
    "sbp",
    "gv_count",
    "gv_first",
    "lv_count",
    "lv_first",
    "pv_count",
    "pv_first",
    "handler",
    "called",
    "returns",
)
"""The ten words of a call frame, in 5.0's order of meaning."""
FRAME_WORD = {name: i for i, name in enumerate(FRAME_FIELDS)}
MAX_FRAMES = MAX_CALL_DEPTH + 1  # the top-level frame plus 32 nested calls

LOG_BUFFER = MAX_HEADER_LENGTH + LOGMAX_LIMIT
"""Bytes reserved for the log: the longest record header plus the largest logmax."""
EX_LOG_BUFFER = EX_LOGMAX_LIMIT
SCRATCH_BUFFER = LOG_BUFFER + 16
"""Where memory and string reads land before they are known not to fault."""

# --- status codes of native operations and callbacks ------------------------------
ST_CONTINUE = 0  # go on with the next instruction
ST_RESUME = 1  # continue at code offset ``state.resume`` (return point or handler)
ST_STOP = 2  # the handler ended; ``exit_kind`` says how
ST_HOST_ERROR = 3  # a callback failed; the handler ended with EXIT_HOST_ERROR

# helper statuses
HELPER_OK = 0
HELPER_RAISE = 4  # raise the exception in state.req_code/req_parm1/req_parm2

# --- how a handler ended (state.exit_kind) --------------------------------------
EXIT_NONE = 0
EXIT_EXIT = 1
EXIT_EXIT_TO = 2
EXIT_REM = 3
EXIT_ABORT = 4
EXIT_TERMINATED = 5
EXIT_HOST_ERROR = 6  # a host callback or helper failed (Python: its exception re-raised)
EXIT_INTERNAL = 7  # resumed at an offset that is no handler or return point (a JIT bug)

DIRTY_CHUNK = 32
DIRTY_CHUNKS = STACK_SIZE // DIRTY_CHUNK
assert DIRTY_CHUNKS == 32, "stack_dirty is a 32-bit mask"
ALL_DIRTY = (1 << DIRTY_CHUNKS) - 1

ST_COUNT_NONE = -1
"""``st_count_at`` when this hit wrote no trace header (the interpreter's None)."""


class Frame(Structure):
    """One call frame: ten 32-bit words."""

    _fields_ = [(name, c_uint32) for name in FRAME_FIELDS]


# --- the host callback table --------------------------------------------------------
# ctx is the host's own pointer; addresses and values are 32-bit; outputs go through
# pointers. Memory: 0 ok, 1 fault (*fault = first inaccessible byte), < 0 error.
READ_MEMORY = CFUNCTYPE(c_int32, c_void_p, c_uint32, c_uint32, c_void_p, POINTER(c_uint32))
WRITE_MEMORY = CFUNCTYPE(c_int32, c_void_p, c_uint32, c_uint32, c_void_p, POINTER(c_uint32))
# read_cstring(ctx, address, limit, out, *length, *fault)
READ_CSTRING = CFUNCTYPE(
    c_int32, c_void_p, c_uint32, c_uint32, c_void_p, POINTER(c_uint32), POINTER(c_uint32)
)
# read_register(ctx, index, user, out[4]): the value as four little-endian words (128 bits
# of two's complement), zeros when the host has no such register
READ_REGISTER = CFUNCTYPE(c_int32, c_void_p, c_uint32, c_uint32, POINTER(c_uint32))
WRITE_REGISTER = CFUNCTYPE(c_int32, c_void_p, c_uint32, c_uint32, c_uint32)
CPUID = CFUNCTYPE(c_int32, c_void_p, c_uint32, POINTER(c_uint32))  # out[4] = eax ebx ecx edx
READ_MSR = CFUNCTYPE(c_int32, c_void_p, c_uint32, POINTER(c_uint32))  # out[2] = lo hi
IO_READ = CFUNCTYPE(c_int32, c_void_p, c_uint32, c_uint32, POINTER(c_uint32))
IO_WRITE = CFUNCTYPE(c_int32, c_void_p, c_uint32, c_uint32, c_uint32)
SEGMENT_BASE = CFUNCTYPE(c_int32, c_void_p, c_uint32, POINTER(c_uint32))  # 1: bad selector
SYSTEM_VALUE = CFUNCTYPE(c_int32, c_void_p, POINTER(c_uint32))  # pid, task, processor
CALLK = CFUNCTYPE(c_int32, c_void_p, c_void_p)  # (ctx, state): 1 hook ran, 0 no hook

HOST_CALLBACKS: tuple[tuple[str, type], ...] = (
    ("read_memory", READ_MEMORY),
    ("write_memory", WRITE_MEMORY),
    ("read_cstring", READ_CSTRING),
    ("read_register", READ_REGISTER),
    ("write_register", WRITE_REGISTER),
    ("cpuid", CPUID),
    ("read_msr", READ_MSR),
    ("io_read", IO_READ),
    ("io_write", IO_WRITE),
    ("segment_base", SEGMENT_BASE),
    ("pid", SYSTEM_VALUE),
    ("task", SYSTEM_VALUE),
    ("processor", SYSTEM_VALUE),
    ("callk", CALLK),
)


class HostTable(Structure):
    """The callback table a host fills: its context pointer, one pointer per service, then
    the direct memory window.

    The window is an optional shortcut for ``read_memory``/``write_memory``: guest bytes
    ``window_base .. window_base + window_length - 1`` (no 4 GiB wrap-around) are the host
    bytes at ``window_data``. Native code reads and writes an access that lies wholly
    inside it directly and calls the callbacks for every other access, so a host may only
    publish a window where its callbacks would read and write exactly those bytes without
    a fault. ``window_length`` 0 (the default) means no window. Like the callbacks, the
    window is read once at the start of a hit.
    """

    _fields_ = [
        ("ctx", c_void_p),
        *((name, c_void_p) for name, _ in HOST_CALLBACKS),
        ("window_base", c_uint32),
        ("window_length", c_uint32),
        ("window_data", c_void_p),
        ("registers", c_void_p),
    ]  # RegisterWindow * or null


WINDOW_REGISTERS = len(GENERAL_REGISTERS)
"""Registers 0..15 (cs ... ebp, one word each) are the ones a register window can hold."""


class RegisterWindow(Structure):
    """The register window a host may publish in its table (``HostTable.registers``, null
    by default): bit i of ``valid`` set means ``values[i]`` is what ``read_register(i,
    user=0)`` would return now (its low word; the others are zero). Native code reads
    ``push r`` of such a register here instead of calling the host. Unlike the memory
    window it is read at every use, not once per hit: a host fills it lazily and clears a
    bit when the register is written, so a write is always a ``write_register`` call.
    """

    _fields_ = [("valid", c_uint32), ("values", c_uint32 * WINDOW_REGISTERS)]


# --- Python helpers for the rare, complex operations --------------------------------
HEAP = CFUNCTYPE(c_int32, c_void_p, c_uint32, c_uint32)  # (state, opcode, operand)

HELPER_CALLBACKS: tuple[tuple[str, type], ...] = (("heap", HEAP),)


class HelperTable(Structure):
    _fields_ = [(name, c_void_p) for name, _ in HELPER_CALLBACKS]


class State(Structure):
    """Everything one hit's handler reads and writes; see the module docstring."""

    _fields_ = [
        # the RPN stack and its pointers
        ("stack", c_uint32 * STACK_SIZE),
        ("tos", c_uint32),
        ("sbp", c_uint32),
        ("stack_dirty", c_uint32),  # bit i: a word in slots 32i..32i+31 written
        ("var_dirty", c_uint8 * 2),  # [0]: lv written, [1]: gv written
        # variables (arrays owned by the runner, mirroring the Python lists)
        ("lv", POINTER(c_uint32)),
        ("gv", POINTER(c_uint32)),
        ("num_lv", c_uint32),
        ("num_gv", c_uint32),
        # control
        ("jmp_count", c_uint64),
        ("jmpmax", c_uint32),
        ("dispatches", c_uint32),  # exception dispatches to a handler in this hit
        ("nframes", c_uint32),
        ("resume", c_uint32),  # code offset to continue at after ST_RESUME
        ("frames", Frame * MAX_FRAMES),
        # log buffer
        ("header_length", c_uint32),
        ("log_cap", c_uint32),
        ("log_len", c_uint32),
        ("prev_log_len", c_uint32),
        ("log_overflow", c_uint32),
        ("log_hwm", c_uint32),  # log bytes up to here may be non-zero (cleared at the next hit)
        # exception buffer
        ("ex_logmax", c_uint32),
        ("ex_log_size", c_uint32),  # max(ex_logmax, 12): bytes cleared at each hit
        ("ex_len", c_uint32),
        ("ex_log_hwm", c_uint32),  # the same for the exception buffer
        ("st_count_at", c_int32),
        ("autostacktrace", c_uint32),
        # exceptions
        ("ex_mask", c_uint32),
        ("ex_code", c_uint32),  # persists per CPU (copied in and out by the runner)
        ("ex_parm1", c_uint32),
        ("ex_parm2", c_uint32),
        ("ex_pending", c_uint32),
        ("ex_hand", c_uint32),
        ("req_code", c_uint32),  # an exception a helper asks native code to raise
        ("req_parm1", c_uint32),
        ("req_parm2", c_uint32),
        # identity and results
        ("probe_major", c_uint32),
        ("probe_minor", c_uint32),
        ("major", c_uint32),
        ("minor", c_uint32),
        ("exit_kind", c_uint32),
        ("exit_to", c_uint32),
        ("has_exception", c_uint32),
        ("exc_code", c_uint32),
        ("exc_parm1", c_uint32),
        ("exc_parm2", c_uint32),
        # services
        ("host", POINTER(HostTable)),
        ("helpers", POINTER(HelperTable)),
        ("session", c_uint64),  # key of the Python session (context, heap) of this hit
        # what a stack-trace header names
        ("name", c_void_p),  # the program name, UTF-8
        ("name_length", c_uint32),
        ("program_id", c_uint32),
        ("probe_offset", c_uint64),
        # buffers
        ("log", c_uint8 * LOG_BUFFER),
        ("ex_log", c_uint8 * EX_LOG_BUFFER),
        ("scratch", c_uint8 * SCRATCH_BUFFER),
    ]


def offset(name: str) -> int:
    """Byte offset of a State field (what native code adds to the state pointer)."""
    return getattr(State, name).offset


def host_offset(name: str) -> int:
    return getattr(HostTable, name).offset


def helper_offset(name: str) -> int:
    return getattr(HelperTable, name).offset


FRAME_SIZE = ctypes.sizeof(Frame)
assert 4 * len(FRAME_FIELDS) == FRAME_SIZE
assert ctypes.sizeof(c_void_p) == 8, "the JIT ABI assumes a 64-bit host"
assert ctypes.sizeof(c_uint32) == 4 and ctypes.sizeof(c_int32) == 4 and ctypes.sizeof(c_uint8) == 1
