"""The host table's direct memory window: inline reads and writes agree with the callbacks.

The native MemoryContext publishes its first region as the window; an access wholly
inside it is a plain load or store, every other one goes through the callbacks. Accesses
at and across the window's edges (into a neighbouring region, into unmapped memory,
around 4 GiB) must behave exactly as on the interpreter: the same values, the fault at
the first inaccessible byte, the bytes written before it.
"""

from __future__ import annotations

import pytest

from dprobes.compiler.pipeline import compile_rpn
from dprobes.vm.api import VM
from dprobes.vm.context import MemoryContext

pytest.importorskip("llvmlite")

WIDTHS = {1: "u8", 2: "u16", 4: "u32", 8: "u64"}
LAYOUTS = {
    # window 0x1000..0x100f, a neighbour right after it, nothing after the neighbour
    "neighbour": {0x1000: bytes(range(1, 17)), 0x1010: bytes(range(101, 117))},
    # window 0x2000..0x200f alone
    "alone": {0x2000: bytes(range(1, 17))},
    # window from 0xfffffff0 running past 4 GiB (offsets up to 32), then low memory
    "wrap": {0xFFFFFFF0: bytes(range(1, 33)), 0: bytes(range(201, 209))},
}
ADDRESSES = {
    "neighbour": (0x1000, 0x1008, 0x100B, 0x100C, 0x100D, 0x100F, 0x1010, 0x101C, 0x101E, 0xFFF),
    "alone": (0x2000, 0x2008, 0x200C, 0x200D, 0x200F, 0x1FFF, 0x2010),
    "wrap": (0xFFFFFFF0, 0xFFFFFFFC, 0xFFFFFFFE, 0xFFFFFFFF, 0, 4, 6),
}


def _program(body: str):
    text = f"name = t\nmodtype = user\nnum_lv = 1\noffset = 0\n{body}\nexit\n"
    return compile_rpn("t.rpn", text=text).program


def _both_tiers(prog, layout: str):
    outcomes = []
    for tier in ("interp", "jit"):
        context = MemoryContext(memory=dict(LAYOUTS[layout]))
        result = VM(prog, tier=tier).fire(0, context)
        outcomes.append((result, [bytes(data) for _, data in context.regions]))
    return outcomes


@pytest.mark.parametrize("width", sorted(WIDTHS))
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_reads_at_the_window_edges(layout: str, width: int) -> None:
    for address in ADDRESSES[layout]:
        prog = _program(f"push {address}\npush mem_{WIDTHS[width]}\nlog 2")
        interp, jit = _both_tiers(prog, layout)
        assert jit == interp, f"read {width} at 0x{address:x}"


@pytest.mark.parametrize("width", sorted(WIDTHS))
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_writes_at_the_window_edges(layout: str, width: int) -> None:
    value = "push 0x0a0b0c0d\npush 0x01020304" if width == 8 else "push 0xa1b2c3d4"
    for address in ADDRESSES[layout]:
        prog = _program(f"push {address}\n{value}\npop mem_{WIDTHS[width]}")
        interp, jit = _both_tiers(prog, layout)
        assert jit == interp, f"write {width} at 0x{address:x}"


def test_native_memory_context_publishes_its_first_region() -> None:
    vm = VM(_program("push 0x1004\npush mem_u32\nlog 1"), tier="jit")
    context = MemoryContext(memory=dict(LAYOUTS["neighbour"]))
    assert vm.fire(0, context).log == VM(vm.program).fire(0, context).log
    table = vm._runner.state.host.contents
    assert (table.window_base, table.window_length) == (0x1000, 16)
    assert table.window_data


def test_python_contexts_publish_no_window() -> None:
    class Custom(MemoryContext):
        pass

    vm = VM(_program("push 0x1004\npush mem_u32\nlog 1"), tier="jit")
    context = Custom(memory=dict(LAYOUTS["neighbour"]))
    assert vm.fire(0, context).log == VM(vm.program).fire(0, context).log
    assert vm._runner.state.host.contents.window_length == 0
