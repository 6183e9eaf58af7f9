"""Word reads (``Context.read_uint``, what ``push mem`` uses) agree with ``read_memory``."""

from __future__ import annotations

import pytest

from dprobes.vm.context import MemoryContext, MemoryFault

LAYOUT = {
    0x1000: bytes(range(16)),
    0x1010: bytes(range(100, 116)),
    0xFFFFFFF8: bytes(range(200, 208)),
    0: bytes(range(50, 54)),
    0x2002: bytes(range(8)),
    0x2000: bytes(range(30, 46)),
}  # 0x2002: overlapping
ADDRESSES = (
    0x1000,
    0x100C,
    0x100E,
    0x101E,
    0x1020,
    0xFFFFFFF8,
    0xFFFFFFFC,
    0xFFFFFFFE,
    0x2000,
    0x2003,
    0x2008,
    0x3000,
)


def _read(read, address: int, size: int) -> int | MemoryFault:
    try:
        return read(address, size)
    except MemoryFault as fault:
        return fault


def _outcome(value: int | MemoryFault) -> int | tuple[str, int]:
    return ("fault", value.address) if isinstance(value, MemoryFault) else value


@pytest.mark.parametrize("size", (1, 2, 4, 8))
def test_read_uint_is_read_memory_as_an_integer(size: int) -> None:
    context = MemoryContext(memory=LAYOUT)
    for address in ADDRESSES:
        expected = _read(
            lambda a, s: int.from_bytes(context.read_memory(a, s), "little"), address, size
        )
        assert _outcome(_read(context.read_uint, address, size)) == _outcome(expected)


def test_a_subclass_that_overrides_read_memory_is_asked_for_words() -> None:
    class Counting(MemoryContext):
        reads = 0

        def read_memory(self, address: int, size: int) -> bytes:
            self.reads += 1
            return super().read_memory(address, size)

    context = Counting(memory=LAYOUT)
    assert context.read_uint(0x1000, 4) == 0x03020100
    assert context.reads == 1
