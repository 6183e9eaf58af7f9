"""The DProbes log-record header: its length and layout (reference section 7.2).

The interpreter reserves the header's length at the front of the log buffer (so
``push lp`` counts it and ``logmax`` is the data capacity); the host fills it in when it
writes the record: ``{u16 facility_id=1, u16 len, u32 mask, u16 major, u16 minor}`` then,
in this order and only when selected, pid u32, uid u32, cs u16 + eip u32, ss u16 + esp
u32, a timeval (2 x u32) and a 16-byte process name. 5.0 added a cpu word only in SMP
builds (whatever the CPU flag said); the emulated machine has one CPU, so it never does.
"""

from __future__ import annotations

from dprobes.vm.program import LogField

BASE_HEADER_LENGTH = 12

FIELD_LENGTHS: tuple[tuple[LogField, int], ...] = (
    (LogField.PID, 4),
    (LogField.UID, 4),
    (LogField.CSEIP, 6),
    (LogField.SSESP, 6),
    (LogField.TSC, 8),
    (LogField.PROCNAME, 16),
)
"""Optional header fields in record order, with their sizes in bytes."""


def header_length(fields: LogField) -> int:
    """Bytes of record header for a program's ``log =`` selection."""
    return BASE_HEADER_LENGTH + sum(size for flag, size in FIELD_LENGTHS if flag in fields)
