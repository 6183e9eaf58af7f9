"""Firing compiled handlers: the native state of one VM and its persistence rules.

The interpreter's state between hits lives in Python lists: the per-CPU stack
(``CpuState.stack``), the program's locals and the system-wide globals. A ``JitRunner``
keeps native mirrors of them in its ``State`` and keeps the two in step without copying
1024 words per hit:

* copy in: each list is compared with a snapshot taken at the last copy out (fast when
  nothing changed: the same int objects); if anything differs (an interpreter hit,
  another VM on the same CPU, a test poking values) the whole list is copied in;
* copy out: native code marks every 32-word chunk of the stack it writes, and whether
  it wrote lv or gv; only those go back to the lists (and to the snapshots).

So a VM may mix tiers freely (``auto`` does) and several VMs may share a CpuState or a
GlobalVariables, as with the interpreter alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import struct
from array import array

from dprobes.vm.context import Context, MemoryContext
from dprobes.vm.interp import ExitKind, RaisedException
from dprobes.vm.jit import state as S
from dprobes.vm.jit.compile import CompiledHandler, JitError
from dprobes.vm.jit.host import Session, drop_session, new_session, python_host_table
from dprobes.vm.jit.runtime_helpers import HELPERS, view_of
from dprobes.vm.model import MIN_ST_SIZE, STACK_MASK, STACK_SIZE, WORD_MASK

CHUNK = S.DIRTY_CHUNK

EXIT_KINDS = {
    S.EXIT_EXIT: ExitKind.EXIT,
    S.EXIT_EXIT_TO: ExitKind.EXIT_TO,
    S.EXIT_REM: ExitKind.REM,
    S.EXIT_ABORT: ExitKind.ABORT,
    S.EXIT_TERMINATED: ExitKind.TERMINATED,
}


class JitHostError(JitError):
    """A native host reported a failure (negative status) and no Python error was kept."""


class ProgramTooLarge(JitError):
    """The program's buffers exceed what the JIT state reserves (cannot happen for a
    program within the DProbes limits)."""


def _to_words(values: list[int]) -> array:
    try:
        return array("I", values)
    except OverflowError:  # values outside 0..2**32-1 (the interpreter would keep them)
        return array("I", [v & WORD_MASK for v in values])


class _Mirror:
    """A native word array kept in step with a Python list (see the module docstring)."""

    def __init__(self) -> None:
        self.array: ctypes.Array | None = None
        self.view: memoryview | None = None
        self.snapshot: list[int] | None = None
        self.length = -1

    def copy_in(self, values: list[int]) -> bool:
        """Bring the mirror up to date; True when the array was (re)allocated."""
        grown = False
        if len(values) != self.length:
            self.length = len(values)
            self.array = (ctypes.c_uint32 * max(self.length, 1))()
            self.view = memoryview(self.array).cast("B").cast("I")[: self.length]
            self.snapshot = None
            grown = True
        if self.snapshot is None or values != self.snapshot:
            assert self.view is not None
            self.view[:] = _to_words(values)
            self.snapshot = values[:]
        return grown

    def copy_out(self, values: list[int], start: int = 0, end: int | None = None) -> None:
        assert self.view is not None and self.snapshot is not None
        end = self.length if end is None else end
        fresh = self.view[start:end].tolist()
        values[start:end] = fresh
        self.snapshot[start:end] = fresh


def _field_reader(names: tuple[str, ...]) -> struct.Struct:
    """One ``struct`` that unpacks these State fields (in offset order) in a single call."""
    codes = {ctypes.c_uint32: "I", ctypes.c_int32: "i", ctypes.c_uint64: "Q"}
    fields = sorted((S.offset(name), name, codes[dict(S.State._fields_)[name]]) for name in names)
    assert tuple(name for _, name, _ in fields) == names, "list the fields in offset order"
    fmt, at = "<", 0
    for offset, _, code in fields:
        fmt += "x" * (offset - at) + code
        at = offset + struct.calcsize(code)
    return struct.Struct(fmt)


RESULT_FIELDS = (
    "tos",
    "jmp_count",
    "header_length",
    "log_cap",
    "log_len",
    "log_overflow",
    "ex_logmax",
    "ex_len",
    "ex_code",
    "major",
    "minor",
    "exit_kind",
    "exit_to",
    "has_exception",
    "exc_code",
    "exc_parm1",
    "exc_parm2",
)
_RESULTS = _field_reader(RESULT_FIELDS)
_LOG = S.offset("log")
_EX_LOG = S.offset("ex_log")


class NativeHit:
    """The results of one native hit, with the attributes ``api.build_result`` reads."""

    __slots__ = (
        "_ex_log",
        "_log",
        "_stack",
        "exception",
        "exit_kind",
        "exit_to",
        "jmp_count",
        "log_overflow",
        "major",
        "minor",
    )

    def __init__(self, memory: memoryview, values: tuple, stack: list[int]) -> None:
        (
            tos,
            self.jmp_count,
            header_length,
            log_cap,
            log_len,
            overflow,
            ex_logmax,
            ex_len,
            _,
            self.major,
            self.minor,
            kind,
            exit_to,
            has_exception,
            code,
            parm1,
            parm2,
        ) = values
        self.exit_kind = EXIT_KINDS[kind]
        self.exit_to = exit_to if kind == S.EXIT_EXIT_TO else None
        self.exception = RaisedException(code, parm1, parm2) if has_exception else None
        self.log_overflow = bool(overflow)
        log_end = min(log_len, log_cap)
        self._log = (
            memory[_LOG + header_length : _LOG + log_end].tobytes()
            if log_end > header_length
            else b""
        )
        ex_end = min(ex_len, ex_logmax)
        self._ex_log = (
            memory[_EX_LOG + MIN_ST_SIZE : _EX_LOG + ex_end].tobytes()
            if ex_end > MIN_ST_SIZE
            else b""
        )
        depth = -tos & STACK_MASK
        self._stack = stack[STACK_SIZE - depth :][::-1] if depth else []

    def log_data(self, header_length: int) -> bytes:
        return self._log

    def exception_log(self) -> bytes:
        return self._ex_log

    def stack_words(self) -> list[int]:
        return self._stack


class JitRunner:
    """The native state of one VM: fires its compiled handlers."""

    def __init__(self, vm) -> None:  # vm: dprobes.vm.api.VM
        header = vm.program.header
        self.vm = vm
        log_cap = vm.header_length + header.logmax
        if log_cap > S.LOG_BUFFER or header.ex_logmax > S.EX_LOG_BUFFER:
            raise ProgramTooLarge(
                f"logmax {header.logmax} / ex_logmax {header.ex_logmax} "
                "exceed the DProbes limits the JIT reserves room for"
            )
        self.state = S.State()
        state = self.state
        self.address = ctypes.addressof(state)
        state.jmpmax = header.jmpmax
        state.header_length = vm.header_length
        state.log_cap = log_cap
        state.ex_logmax = header.ex_logmax
        state.ex_log_size = max(header.ex_logmax, MIN_ST_SIZE)
        state.log_hwm = S.LOG_BUFFER  # the first hit clears both buffers
        state.ex_log_hwm = S.EX_LOG_BUFFER
        state.autostacktrace = int(header.autostacktrace)
        state.helpers = ctypes.pointer(HELPERS)
        self._name = header.name.encode()
        self._name_buffer = ctypes.create_string_buffer(self._name, max(len(self._name), 1))
        state.name = ctypes.addressof(self._name_buffer)
        state.name_length = len(self._name)
        state.program_id = header.id & WORD_MASK
        self.session: Session = new_session(vm.program, state)
        self.python_host = python_host_table(self.session)
        view_of(self.session)
        self.memory = memoryview(state).cast("B")
        self.stack_view = memoryview(state.stack).cast("B").cast("I")
        self.var_dirty = memoryview(state.var_dirty).cast("B")
        self.stack_snapshot: list[int] | None = None
        self.lv = _Mirror()
        self.gv = _Mirror()
        self.probe = -1
        self.busy = False
        self.native_hosts: dict[type, object] = {}
        self._table: S.HostTable | None = None

    def close(self) -> None:
        for host in self.native_hosts.values():
            host.close()
        self.native_hosts.clear()
        drop_session(self.session)

    def __del__(self) -> None:  # pragma: no cover - interpreter shutdown order varies
        with contextlib.suppress(Exception):
            self.close()

    # --- persistence ------------------------------------------------------------------
    def copy_in(self) -> None:
        """Bring the native state up to date with the Python lists."""
        vm, state = self.vm, self.state
        stack = vm.cpu.stack
        if self.stack_snapshot is None or stack != self.stack_snapshot:
            self.stack_view[:] = _to_words(stack)
            self.stack_snapshot = stack[:]
        if self.lv.copy_in(vm.locals):
            state.lv = ctypes.cast(self.lv.array, ctypes.POINTER(ctypes.c_uint32))
            state.num_lv = self.lv.length
        if self.gv.copy_in(vm.globals.values):
            state.gv = ctypes.cast(self.gv.array, ctypes.POINTER(ctypes.c_uint32))
            state.num_gv = self.gv.length
        state.ex_code = vm.cpu.ex_code

    def _copy_out(self) -> None:
        vm, state = self.vm, self.state
        self._copy_out_stack(state.stack_dirty)
        lv_written, gv_written = self.var_dirty
        if lv_written:
            self.lv.copy_out(vm.locals)
        if gv_written:
            self.gv.copy_out(vm.globals.values)
        vm.cpu.ex_code = state.ex_code

    def _copy_out_stack(self, dirty: int) -> None:
        """The stack chunks marked in ``dirty`` back to the CPU's list and the snapshot."""
        if not dirty:
            return
        stack, snapshot = self.vm.cpu.stack, self.stack_snapshot
        assert snapshot is not None
        if dirty == S.ALL_DIRTY:
            fresh = self.stack_view.tolist()
            stack[:] = fresh
            snapshot[:] = fresh
            return
        for chunk in range(S.DIRTY_CHUNKS):
            if dirty >> chunk & 1:
                start = chunk * CHUNK
                fresh = self.stack_view[start : start + CHUNK].tolist()
                stack[start : start + CHUNK] = fresh
                snapshot[start : start + CHUNK] = fresh

    # --- sharing the state with a native caller (the runtime's native probe hook) ------
    def copy_out_shared(self) -> None:
        """The per-CPU stack, last exception code and globals, back to the Python lists
        (the native caller ran handlers on this state since the last copy in)."""
        vm = self.vm
        self._copy_out_stack(S.ALL_DIRTY)
        vm.cpu.ex_code = self.state.ex_code
        if self.gv.snapshot is not None:
            self.gv.copy_out(vm.globals.values)

    def copy_out_locals(self) -> None:
        if self.lv.snapshot is not None:
            self.lv.copy_out(self.vm.locals)

    def forget_selection(self) -> None:
        """A native caller set the probe fields and the host table: set them again."""
        self.probe = -1
        self._table = None

    # --- firing -----------------------------------------------------------------------
    def _select_probe(self, probe: int) -> None:
        record = self.vm.program.probes[probe]
        state = self.state
        state.ex_mask = record.ex_mask
        state.probe_offset = record.offset & (2**64 - 1)
        state.probe_major = record.major & 0xFFFF
        state.probe_minor = record.minor & 0xFFFF
        self.session.probe = probe
        self.probe = probe

    def _host_for(self, context: Context) -> tuple[S.HostTable, object]:
        """The callback table for ``context`` (native for MemoryContext when allowed)."""
        if self.vm.native_context and type(context) is MemoryContext:
            host = self.native_hosts.get(MemoryContext)
            if host is None:
                from dprobes.vm.jit.native_context import NativeMemoryHost

                host = self.native_hosts[MemoryContext] = NativeMemoryHost(self)
            host.attach(context)
            return host.table, host
        return self.python_host, None

    def _use_table(self, table: S.HostTable) -> None:
        if table is not self._table:
            self.state.host = ctypes.pointer(table)
            self._table = table

    def run(self, probe: int, handler: CompiledHandler, context: Context) -> NativeHit:
        if self.busy:
            raise JitError("re-entrant fire on the same VM from inside a handler")
        session = self.session
        if probe != self.probe:
            self._select_probe(probe)
        self.copy_in()
        table, native = self._host_for(context)
        self._use_table(table)
        session.context = context
        session.heap = None
        if native is not None:
            native.before_hit()
        self.busy = True
        try:
            handler.body.function(self.address, handler.code_base)
        finally:
            self.busy = False
            self._copy_out()
            if native is not None:
                native.after_hit()
            session.context = None
            session.heap = None
        if session.error is not None:
            error, session.error = session.error, None
            raise error
        values = _RESULTS.unpack_from(self.memory, 0)
        kind = values[RESULT_FIELDS.index("exit_kind")]
        if kind not in EXIT_KINDS:
            if kind == S.EXIT_HOST_ERROR:
                raise JitHostError("a native host callback reported a failure")
            raise JitError(f"native handler ended in an impossible state ({kind})")
        return NativeHit(self.memory, values, self.vm.cpu.stack)
