"""The exception buffer and its stack-trace records (5.0 ``log_st`` and friends).

The buffer starts after a reserved 12-byte trace header (``MIN_ST_SIZE``). The first
trace of a hit writes a header: an ASCII record (token 1) with the program name, the
probe offset (8 bytes), the program id, major and minor (u16 each) and a token-2 record
whose count is the number of traces. Each trace is: exception code, handler offset
(0xffffffff for none), parm1, parm2, then a token-3 record counting frames; each frame
is its called and return offsets and token 4/5/6 records of the traced stack slots,
local and global variables. As in 5.0 a write must leave at least one byte free
(``len + size < ex_logmax``). Unlike 5.0, the header is checked against ``ex_logmax``
too (5.0 copied it in unchecked), so nothing is ever written past the limit.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from dprobes.vm.model import (
    MIN_ST_SIZE,
    RECORD_PREFIX,
    STACK_MASK,
    TOKEN_ASCII,
    TOKEN_GV_ENTRY,
    TOKEN_LV_ENTRY,
    TOKEN_RPN_ENTRY,
    TOKEN_STACK_FRAME,
    TOKEN_STACK_TRACE,
    WORD_MASK,
)

if TYPE_CHECKING:
    from dprobes.vm.interp import Frame, Machine
_WORD = struct.Struct("<I")


def _write(m: Machine, data: bytes) -> bool:
    if m.ex_len + len(data) >= m.ex_logmax:
        return False
    m.ex_log[m.ex_len : m.ex_len + len(data)] = data
    m.ex_len += len(data)
    return True


def _open_record(m: Machine, token: int) -> int | None:
    """Write a 3-byte prefix with count 0; return where its count lives."""
    at = m.ex_len + 1
    return at if _write(m, bytes((token, 0, 0))) else None


def _bump(m: Machine, at: int | None) -> None:
    if at is not None:
        count = (int.from_bytes(m.ex_log[at : at + 2], "little") + 1) & 0xFFFF
        m.ex_log[at : at + 2] = count.to_bytes(2, "little")


def _header(m: Machine) -> bool:
    name = m.program.header.name.encode()
    header = (
        bytes((TOKEN_ASCII,))
        + struct.pack("<H", len(name) & 0xFFFF)
        + name
        + struct.pack(
            "<QHHH", m.probe.offset & (2**64 - 1), m.program.header.id & 0xFFFF, m.major, m.minor
        )
    )
    if m.ex_len + len(header) + RECORD_PREFIX >= m.ex_logmax:
        return False
    _write(m, header)
    m.st_count_at = _open_record(m, TOKEN_STACK_TRACE)
    return True


def _words(m: Machine, token: int, first: int, count: int, read, limit: int | None) -> int:
    """A token 4/5/6 record of ``count`` words from ``first``: 1 written, 0 full, -1 stop."""
    at = _open_record(m, token)
    if at is None:
        return 0
    index, end = first, (first + count) & WORD_MASK
    while index < end:
        if limit is not None and index >= limit:
            return -1
        if not _write(m, _WORD.pack(read(index))):
            return 0
        _bump(m, at)
        index += 1
    return 1


def _frame(m: Machine, frame: Frame) -> int:
    if not (_write(m, _WORD.pack(frame.called)) and _write(m, _WORD.pack(frame.returns))):
        return 0
    stack = m.stack
    pv_count, pv_first = frame.pv_range
    lv_count, lv_first = frame.lv_range
    gv_count, gv_first = frame.gv_range
    for token, first, count, read, limit in (
        (TOKEN_RPN_ENTRY, pv_first, pv_count, lambda i: stack[i & STACK_MASK], None),
        (TOKEN_LV_ENTRY, lv_first, lv_count, m.lv.__getitem__, len(m.lv)),
        (TOKEN_GV_ENTRY, gv_first, gv_count, m.gv.__getitem__, len(m.gv)),
    ):
        status = _words(m, token, first, count, read, limit)
        if status != 1:
            return status
    return 1


def log_stack_trace(m: Machine) -> bool:
    """Append one stack trace; False when the handler must stop (5.0 clears INTERPRETER
    when a traced variable index is out of range)."""
    if m.ex_len == MIN_ST_SIZE and not _header(m):
        return True
    handler = m.ex_hand
    fixed = struct.pack("<IIII", m.cpu.ex_code, handler, m.ex_parm1, m.ex_parm2)
    for word in range(4):
        if not _write(m, fixed[4 * word : 4 * word + 4]):
            return True
    frames_at = _open_record(m, TOKEN_STACK_FRAME)
    if frames_at is None:
        return True
    for frame in reversed(m.frames[1:]):
        status = _frame(m, frame)
        if status != 1:
            return status == 0
        _bump(m, frames_at)
    _bump(m, m.st_count_at)
    return True
