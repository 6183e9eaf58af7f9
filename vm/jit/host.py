"""Serving a Python ``Context`` to native handlers: sessions and ctypes trampolines.

A native handler reaches its host only through the ``HostTable`` in its state. For a
Python ``Context`` the table holds the trampolines below (created once per process);
their ``ctx`` argument is the key of a ``Session`` that names the context of the current
hit. Each trampoline does exactly what the interpreter does with the context's answer
(``None`` means zeros, values are cut to 32 bits, only ``MemoryFault`` is a fault) and
reports failures in its status: a Python exception is kept in the session and becomes
status -1, which stops the handler; the runner then re-raises it, as the interpreter
would have let it propagate.

A native host (the emulated runtime) fills a ``HostTable`` with its own function
pointers instead; ``vm.jit.native_context`` does so for ``MemoryContext``.
"""

from __future__ import annotations

import ctypes
import itertools
from dataclasses import dataclass, field
from typing import Any

from dprobes.vm.context import Context, MemoryFault
from dprobes.vm.jit import state as S
from dprobes.vm.model import WORD_BITS, WORD_MASK
from dprobes.vm.program import Program
from dprobes.vm.registers import REGISTERS_BY_INDEX

MASK128 = (1 << 128) - 1
HOST_FAILED = -1


@dataclass
class Session:
    """What Python-side callbacks of one runner need during a hit."""

    key: int
    program: Program
    state: S.State
    context: Context | None = None
    probe: int = 0
    heap: Any = None  # the hit's ProbeHeap, created on first use
    error: BaseException | None = None
    view: Any = None  # runtime_helpers.StateView over ``state``
    extra: dict = field(default_factory=dict)


SESSIONS: dict[int, Session] = {}
_keys = itertools.count(1)


def new_session(program: Program, state: S.State) -> Session:
    session = Session(next(_keys), program, state)
    SESSIONS[session.key] = session
    state.session = session.key
    return session


def drop_session(session: Session) -> None:
    SESSIONS.pop(session.key, None)


def _fail(session: Session, error: BaseException) -> int:
    if session.error is None:
        session.error = error
    return HOST_FAILED


# --- trampolines ---------------------------------------------------------------------
def _read_memory(ctx: int, address: int, size: int, out: int, fault: Any) -> int:
    session = SESSIONS[ctx]
    try:
        data = session.context.read_memory(address, size)
    except MemoryFault as error:
        fault[0] = error.address & WORD_MASK
        return 1
    except BaseException as error:
        return _fail(session, error)
    count = min(len(data), size)
    if count < size:
        ctypes.memset(out, 0, size)
    ctypes.memmove(out, bytes(data[:count]), count)
    return 0


def _write_memory(ctx: int, address: int, size: int, data: int, fault: Any) -> int:
    session = SESSIONS[ctx]
    try:
        session.context.write_memory(address, ctypes.string_at(data, size))
    except MemoryFault as error:
        fault[0] = error.address & WORD_MASK
        return 1
    except BaseException as error:
        return _fail(session, error)
    return 0


def _read_cstring(ctx: int, address: int, limit: int, out: int, length: Any, fault: Any) -> int:
    session = SESSIONS[ctx]
    try:
        text = bytes(session.context.read_cstring(address, limit))
    except MemoryFault as error:
        fault[0] = error.address & WORD_MASK
        return 1
    except BaseException as error:
        return _fail(session, error)
    text = text[:limit]
    ctypes.memmove(out, text, len(text))
    length[0] = len(text)
    return 0


def _store_words(out: Any, value: int, count: int) -> None:
    value &= MASK128
    for i in range(count):
        out[i] = (value >> (WORD_BITS * i)) & WORD_MASK


def _read_register(ctx: int, index: int, user: int, out: Any) -> int:
    session = SESSIONS[ctx]
    try:
        value = session.context.read_register(REGISTERS_BY_INDEX[index], bool(user)) or 0
        _store_words(out, value, 4)
    except BaseException as error:
        return _fail(session, error)
    return 0


def _write_register(ctx: int, index: int, user: int, value: int) -> int:
    session = SESSIONS[ctx]
    try:
        session.context.write_register(REGISTERS_BY_INDEX[index], bool(user), value)
    except BaseException as error:
        return _fail(session, error)
    return 0


def _cpuid(ctx: int, leaf: int, out: Any) -> int:
    session = SESSIONS[ctx]
    try:
        eax, ebx, ecx, edx = session.context.cpuid(leaf) or (0, 0, 0, 0)
        for i, value in enumerate((eax, ebx, ecx, edx)):
            out[i] = value & WORD_MASK
    except BaseException as error:
        return _fail(session, error)
    return 0


def _read_msr(ctx: int, index: int, out: Any) -> int:
    session = SESSIONS[ctx]
    try:
        _store_words(out, session.context.read_msr(index) or 0, 2)
    except BaseException as error:
        return _fail(session, error)
    return 0


def _io_read(ctx: int, port: int, size: int, out: Any) -> int:
    session = SESSIONS[ctx]
    try:
        out[0] = session.context.io_read(port, size) & WORD_MASK
    except BaseException as error:
        return _fail(session, error)
    return 0


def _io_write(ctx: int, port: int, size: int, value: int) -> int:
    session = SESSIONS[ctx]
    try:
        session.context.io_write(port, size, value)
    except BaseException as error:
        return _fail(session, error)
    return 0


def _segment_base(ctx: int, selector: int, out: Any) -> int:
    session = SESSIONS[ctx]
    try:
        base = session.context.segment_base(selector)
        if base is None:
            return 1
        out[0] = base & WORD_MASK
    except BaseException as error:
        return _fail(session, error)
    return 0


def _system_value(method: str):
    def read(ctx: int, out: Any) -> int:
        session = SESSIONS[ctx]
        try:
            out[0] = getattr(session.context, method)() & WORD_MASK
        except BaseException as error:
            return _fail(session, error)
        return 0

    return read


def _callk(ctx: int, state: int) -> int:
    session = SESSIONS[ctx]
    try:
        return 1 if session.context.callk(session.view) else 0
    except BaseException as error:
        return _fail(session, error)


_PYTHON_SERVICES = {
    "read_memory": _read_memory,
    "write_memory": _write_memory,
    "read_cstring": _read_cstring,
    "read_register": _read_register,
    "write_register": _write_register,
    "cpuid": _cpuid,
    "read_msr": _read_msr,
    "io_read": _io_read,
    "io_write": _io_write,
    "segment_base": _segment_base,
    "pid": _system_value("pid"),
    "task": _system_value("task"),
    "processor": _system_value("processor"),
    "callk": _callk,
}
TRAMPOLINES = {name: prototype(_PYTHON_SERVICES[name]) for name, prototype in S.HOST_CALLBACKS}
"""ctypes function objects, kept alive for the life of the process."""


def trampoline_address(name: str) -> int:
    return ctypes.cast(TRAMPOLINES[name], ctypes.c_void_p).value or 0


def python_host_table(session: Session) -> S.HostTable:
    """A callback table that serves ``session.context`` through the trampolines."""
    table = S.HostTable()
    table.ctx = session.key
    for name, _ in S.HOST_CALLBACKS:
        setattr(table, name, trampoline_address(name))
    return table
