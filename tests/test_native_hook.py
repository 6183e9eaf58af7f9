"""Parts of the native hook against the Python descriptions they are generated from.

The hook's functions are compiled with exported wrappers and called on ctypes structures
(``runtime.native.layout``): the header fields a record carries must be packed exactly
as ``ring.header_layout`` reads them, for every choice of log fields, and the probe
table's native search must find what Python's ``lookup.place`` put there.
"""

from __future__ import annotations

import ctypes
import functools
import itertools

import pytest
from llvmlite import ir

from dprobes.runtime.native import hook, lookup
from dprobes.runtime.native.layout import Hook, ProbeEntry, ProcessSlot
from dprobes.runtime.native.registers import CS, ESP, SS
from dprobes.runtime.ring import header_layout
from dprobes.vm.jit.embed import add_library
from dprobes.vm.jit.irgen import I32, PTR, VOID, FunctionBuilder
from dprobes.vm.program import LogField

pytest.importorskip("llvmlite")

NOTE_HEADER = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)
LOOKUP = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint32)


def _wrapper(
    module: ir.Module, name: str, calls: str, result: ir.Type, params: list[ir.Type]
) -> None:
    """An exported function ``name`` passing its arguments to internal ``calls``."""
    function = ir.Function(module, ir.FunctionType(result, params), name)
    f = FunctionBuilder(function, ir.IRBuilder(function.append_basic_block("entry")), {})
    value = f.call(calls, *function.args)
    if result == VOID:
        f.b.ret_void()
    else:
        f.b.ret(value)


@functools.cache
def compiled() -> dict[str, int]:
    """The hook's module with test entry points (everything else internal, so nothing
    clashes with the real hook's symbols)."""
    module = hook.build_module()
    for function in module.functions:
        if not function.is_declaration:
            function.linkage = "internal"
    _wrapper(module, "test_np_note_header", "note_header", VOID, [PTR, PTR, PTR])
    _wrapper(module, "test_np_lookup", "lookup", PTR, [PTR, I32])
    return add_library(module, ["test_np_note_header", "test_np_lookup"])


HEADER_BITS = [flag for flag in LogField if flag not in (LogField.NONE, LogField.ALL)]


@pytest.mark.parametrize(
    "chosen",
    [
        combination
        for size in range(len(HEADER_BITS) + 1)
        for combination in itertools.combinations(HEADER_BITS, size)
    ],
)
def test_header_fields_as_the_ring_reads_them(chosen: tuple[LogField, ...]) -> None:
    fields = LogField(sum(chosen))
    machine = {
        "uid": 0x1234_5678,
        "cs": 0x73,
        "ss": 0x7B,
        "esp": 0xBFFF_F0A4,
        "executed": 0x0123_4567_89AB_CDEF,
    }
    state, process, entry = Hook(), ProcessSlot(), ProbeEntry()
    state.proc = ctypes.addressof(process)
    for index, name in ((CS, "cs"), (SS, "ss"), (ESP, "esp")):
        state.registers.values[index] = machine[name]
        state.registers.valid |= 1 << index  # read from the window, not from unicorn
    clock = ctypes.c_uint64(machine["executed"])
    state.executed = ctypes.addressof(clock)
    process.uid = machine["uid"]
    entry.fields = fields
    NOTE_HEADER(compiled()["test_np_note_header"])(
        ctypes.addressof(state), ctypes.addressof(process), ctypes.addressof(entry)
    )
    layout = header_layout(fields)
    expected = layout.packing.pack(*(machine[name] for name in layout.names))
    assert bytes(process.pending.header[: len(expected)]) == expected


def test_the_native_search_finds_what_python_placed() -> None:
    colliding = [
        address
        for address in range(0x0804_9000, 0x0806_0000)
        if lookup.home(address) == lookup.home(0x0804_9000)
    ][:5]
    others = [0x0804_8000 + 17 * i for i in range(20)]
    entries = {address: ProbeEntry(address=address) for address in colliding + others}
    process = ProcessSlot()
    lookup.place(process, entries)
    find = LOOKUP(compiled()["test_np_lookup"])
    for address, entry in entries.items():
        assert find(ctypes.addressof(process), address) == ctypes.addressof(entry)
    for absent in (0, colliding[-1] + 1, 0xFFFF_FFFF):
        assert absent not in entries
        assert find(ctypes.addressof(process), absent) is None
