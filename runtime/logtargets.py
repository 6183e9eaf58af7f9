"""Log records and the targets that write them (DProbes' KLOG, COM1/COM2 and EVL).

A record is the binary header ``{u16 facility_id=1, u16 len, u32 mask, u16 major,
u16 minor}`` followed by the optional fields the program's ``log =`` selected, in the
reference order (pid, uid, cs+eip, ss+esp, timestamp, process name), then the log data
the handler produced. ``len`` is the header's length, as 5.0 wrote it (a reader finds the
data there; the record ends where the next one's facility id, or the target's CR LF,
starts). An SMP build of 5.0 put a cpu word after the base (``smp``). The exception
buffer, when not empty, follows as a second record with major/minor 0/0.

The header's elements, their order, formats and mask bits are ``vm.logrecord.HEADER``;
what each target writes for a record is ``runtime.logformat``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from dprobes.vm.logrecord import (
    CPU,
    FACILITY_ID,
    HeaderValue,
    Shown,
    header_struct,
    mask,
    selected,
)
from dprobes.vm.program import LogField


class HitInfo(NamedTuple):
    """What the machine knew at the hit, for the optional header fields."""

    pid: int = 0
    uid: int = 0
    cs: int = 0
    eip: int = 0
    ss: int = 0
    esp: int = 0
    seconds: int = 0
    microseconds: int = 0
    procname: str = ""


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One record as a target receives it."""

    major: int
    minor: int
    fields: LogField
    hit: HitInfo
    data: bytes

    def mask(self, smp: bool = False) -> int:
        """The header's ``mask`` word."""
        return mask(self.fields, smp)

    def values(self) -> tuple[tuple[HeaderValue, tuple[int | str, ...]], ...]:
        """Each header value the record shows, with what it is packed from, in order."""
        hit = self.hit
        return tuple(
            (value, tuple(getattr(hit, name) for name in value.hit))
            for field in selected(self.fields)
            for value in field.values
        )

    def header(self, smp: bool = False) -> bytes:
        """The binary header (``vm.logrecord``; ``smp``: with the cpu word)."""
        packing = header_struct(self.fields, smp)
        values = [
            part.encode() if isinstance(part, str) else part
            for _, parts in self.values()
            for part in parts
        ]
        return packing.pack(
            FACILITY_ID,
            packing.size,
            self.mask(smp),
            self.major,
            self.minor,
            *((CPU,) if smp else ()),
            *values,
        )

    def to_bytes(self, smp: bool = False) -> bytes:
        """The raw binary record."""
        return self.header(smp) + self.data

    def describe(self) -> dict[str, int | str]:
        """The header as name -> value, in record order (the time as ``s:uuuuuu``)."""
        out: dict[str, int | str] = {"major": self.major, "minor": self.minor}
        for value, parts in self.values():
            out[value.name] = (
                f"{parts[0]}:{parts[1]:06d}" if value.shown is Shown.TIME else parts[0]
            )
        return out


def exception_record(exception_log: bytes) -> LogRecord:
    """The second record that carries a hit's exception log."""
    return LogRecord(0, 0, LogField.NONE, HitInfo(), exception_log)
