"""System calls that read the time, which comes from the machine's instruction clock."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from dprobes.runtime.process import Process
from dprobes.runtime.syscalls.table import syscall

if TYPE_CHECKING:
    from dprobes.runtime.machine import Machine


def _now_ns(m: Machine, clock_id: int) -> int:
    return m.clock.realtime_ns() if clock_id in (0, 5, 8, 11) else m.clock.monotonic_ns()


@syscall(265, "clock_gettime")
def sys_clock_gettime(m: Machine, p: Process, clock_id: int, ts: int) -> int:
    sec, ns = divmod(_now_ns(m, clock_id), 1_000_000_000)
    p.space.write(ts, struct.pack("<iI", sec & 0x7FFFFFFF, ns))
    return 0


@syscall(403, "clock_gettime64")
def sys_clock_gettime64(m: Machine, p: Process, clock_id: int, ts: int) -> int:
    sec, ns = divmod(_now_ns(m, clock_id), 1_000_000_000)
    p.space.write(ts, struct.pack("<qq", sec, ns))
    return 0


@syscall(78, "gettimeofday")
def sys_gettimeofday(m: Machine, p: Process, tv: int, tz: int) -> int:
    sec, ns = divmod(m.clock.realtime_ns(), 1_000_000_000)
    if tv:
        p.space.write(tv, struct.pack("<iI", sec, ns // 1000))
    if tz:
        p.space.write(tz, bytes(8))
    return 0


@syscall(13, "time")
def sys_time(m: Machine, p: Process, tloc: int) -> int:
    sec = m.clock.realtime_ns() // 1_000_000_000
    if tloc:
        p.space.write(tloc, struct.pack("<i", sec))
    return sec
