"""Finding the probe at an int3's address in the current process's probe table.

Each process has an open-addressing table of ``TABLE_SIZE`` slots (``ProcessSlot.table``)
holding the address and ``ProbeEntry`` of every probe it serves natively. An address's
search starts at its home slot (a multiplicative hash) and goes on slot by slot to the
first free one: ``place`` (Python, filling the table) and the hook's ``lookup`` follow
the same sequence.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator

from llvmlite import ir

from dprobes.runtime.native.layout import TABLE_BITS, TABLE_SIZE, ProcessSlot, TableSlot
from dprobes.vm.jit.irgen import I32, PTR, FunctionBuilder, ModuleBuilder, c32, c64

HASH_MULTIPLIER = 2654435761
"""Knuth's multiplicative hash: the top TABLE_BITS bits of address * this (mod 2**32)."""


def home(address: int) -> int:
    """The slot where the search for ``address`` starts."""
    return ((address * HASH_MULTIPLIER) & 0xFFFFFFFF) >> (32 - TABLE_BITS)


def search(address: int) -> Iterator[int]:
    """The slots the search for ``address`` visits, in order (each slot once)."""
    start = home(address)
    return ((start + i) & (TABLE_SIZE - 1) for i in range(TABLE_SIZE))


def place(slot: ProcessSlot, entries: dict[int, ctypes.Structure]) -> None:
    """Fill the process's table with ``entries`` (address -> ProbeEntry)."""
    ctypes.memset(ctypes.addressof(slot.table), 0, ctypes.sizeof(slot.table))
    for address, entry in entries.items():
        index = next(i for i in search(address) if not slot.table[i].entry)
        slot.table[index].address = address
        slot.table[index].entry = ctypes.addressof(entry)


def _home(f: FunctionBuilder, address: ir.Value) -> ir.Value:
    return f.b.lshr(f.b.mul(address, c32(HASH_MULTIPLIER)), c32(32 - TABLE_BITS))


def define(m: ModuleBuilder) -> None:
    """``lookup(proc, address)``: the probe entry for ``address`` in the process's table,
    or null."""
    f = m.define("lookup", PTR, [("proc", PTR), ("address", I32)])
    proc, address = f.function.args
    table = f.member(proc, ProcessSlot, "table")
    start_at = _home(f, address)
    start = f.b.block
    head, probe, compare, other, present, absent = (
        f.block(label) for label in ("head", "probe", "compare", "other", "present", "absent")
    )
    f.b.branch(head)
    f.at(head)
    i = f.b.phi(I32, "i")
    i.add_incoming(c32(0), start)
    f.b.cbranch(f.b.icmp_unsigned("<", i, c32(TABLE_SIZE)), probe, absent)
    f.at(probe)
    index = f.b.and_(f.b.add(start_at, i), c32(TABLE_SIZE - 1))
    slot = f.offset(table, f.b.mul(f.zext64(index), c64(ctypes.sizeof(TableSlot))))
    found = f.get(slot, TableSlot, "entry")
    f.b.cbranch(f.b.icmp_unsigned("==", found, ir.Constant(PTR, None)), absent, compare)
    f.at(compare)
    same = f.b.icmp_unsigned("==", f.get(slot, TableSlot, "address"), address)
    f.b.cbranch(same, present, other)
    f.at(other)
    i.add_incoming(f.b.add(i, c32(1)), other)
    f.b.branch(head)
    f.at(present)
    f.b.ret(found)
    f.at(absent)
    f.b.ret(ir.Constant(PTR, None))
