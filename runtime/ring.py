"""The native ring: how a native probe hit's log record is packed for Python to read.

The native hook appends one record per hit to a byte ring; the probe manager reads them
back in order. A record is a ``RecordHead``, then the machine state the program's log
header selects (``header_layout``), ``log_len`` log bytes and ``ex_len`` exception log
bytes, padded to 4 bytes. Everything else the log header shows (pid, eip, the process
name) is known from the probe (``ident``).
"""

from __future__ import annotations

import functools
import struct
from ctypes import Array, Structure, c_uint16, c_uint32, sizeof
from typing import NamedTuple

from dprobes.vm.logrecord import HEADER
from dprobes.vm.program import LogField

RING_BYTES = 4 << 20
"""Bytes of one ring: records are appended until it is full, then to a new one."""


class RecordHead(Structure):
    """The start of a ring record: which probe, and what its handler logged.

    In the ring the head is followed by the header fields (``header_layout``), ``log_len``
    log bytes and ``ex_len`` exception log bytes, padded to 4 bytes. Everything else the
    log header may show is known from the probe (``ident``)."""

    _fields_ = [
        ("ident", c_uint32),
        ("log_len", c_uint16),
        ("ex_len", c_uint16),
        ("major", c_uint16),
        ("minor", c_uint16),
    ]


HEAD = struct.Struct("<IHHHH")
"""``RecordHead`` for reading the ring from Python."""
assert HEAD.size == sizeof(RecordHead)


HEADER_FIELDS = tuple(
    (
        field.flag,
        tuple(value.ring[0] for value in carried),
        "".join(value.ring[1] for value in carried),
    )
    for field in HEADER
    if (carried := [value for value in field.values if value.ring is not None])
)
"""The machine state a record carries after its head, as (flag, names, formats), in the
header table's order, each only if the program's log fields select it: uid, cs, ss and
esp, the instruction clock (``vm.logrecord.HEADER``'s ``ring`` column). pid, eip and the
process name follow from the probe."""


class HeaderLayout(NamedTuple):
    """How a record's header fields are packed for one choice of log fields."""

    packing: struct.Struct
    names: tuple[str, ...]

    def values(self, data: bytes | Array, at: int) -> dict[str, int]:
        """The header fields starting at ``at`` of ``data``, by name."""
        return dict(zip(self.names, self.packing.unpack_from(data, at), strict=True))


@functools.cache
def header_layout(fields: LogField) -> HeaderLayout:
    """How the header fields of a record of a program with these log fields are packed."""
    chosen = [(names, codes) for flag, names, codes in HEADER_FIELDS if flag in fields]
    return HeaderLayout(
        struct.Struct("<" + "".join(codes for _, codes in chosen)),
        tuple(name for names, _ in chosen for name in names),
    )


HEADER_BYTES = header_layout(LogField.ALL).packing.size
"""The most bytes of header fields a record carries."""
