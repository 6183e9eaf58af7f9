"""Probe records: one per probe of an inserted program, with DProbes' status flags.

A record follows 5.0's ``dp_record_struct``: the probe point, a status bit set, a signed
hit ``count`` that starts at ``-pass_count`` (a hit runs the handler only once the count
is >= 0, and every hit increments it; reaching ``max_hits`` disables the probe; a hit
whose instruction faults counts only with logonfault, and never disables) and, on
an opcode mismatch, the byte actually found. The counters live in a native struct that
the native probe hook updates too.
"""

from __future__ import annotations

from ctypes import Structure, c_int64, c_uint64
from dataclasses import dataclass, field
from enum import IntFlag

from dprobes.vm.program import MAX_HITS_DEFAULT, Probe


class RecordStatus(IntFlag):
    """``DP_REC_STATUS_*``."""

    NONE = 0
    COMPILED = 0x001
    ACTIVE = 0x002
    MISMATCH = 0x004
    DISABLED = 0x008
    REMOVED = 0x010
    INVALID_OFFSET = 0x020
    DEBUGREG_UNAVAIL = 0x040
    WATCHPOINT_LEN_INVALID = 0x080
    DEBUGREG_PATCH_NEEDED = 0x100
    DUPLICATE = 0x200  # 5.x KPROBE_ERR: another probe already holds the address
    EXCLUDED = 0x400

    def describe(self) -> str:
        names = [flag.name.lower() for flag in RecordStatus if flag and flag in self]
        return "|".join(names) if names else "none"


class Counters(Structure):
    """A record's hit counters, where the native probe hook can update them too."""

    _fields_ = [("count", c_int64), ("hits", c_uint64), ("max_hits", c_int64)]


@dataclass
class ProbeRecord:
    """The run-time state of one probe."""

    index: int
    point: Probe
    status: RecordStatus = RecordStatus.COMPILED
    actual_opcode: int | None = None
    address: int | None = None  # where the int3 is (kernel/kmod: the virtual address)
    original: bytes = b""  # the probed instruction's bytes, first byte as before the probe
    notes: list[str] = field(default_factory=list)  # why a probe is not active, for query
    counters: Counters = field(default_factory=Counters, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.counters.count = -self.point.pass_count
        self.counters.max_hits = self.max_hits

    def refuse(self, status: RecordStatus, why: str) -> None:
        """Mark the probe not inserted, with ``status`` and the reason ``--query`` shows."""
        self.status |= status
        self.notes.append(why)

    @property
    def count(self) -> int:
        return self.counters.count

    @property
    def hits(self) -> int:
        """Every trap on this probe, skipped ones included."""
        return self.counters.hits

    @property
    def max_hits(self) -> int:
        return self.point.max_hits or MAX_HITS_DEFAULT

    @property
    def armed(self) -> bool:
        return RecordStatus.ACTIVE in self.status

    def begin_hit(self) -> bool:
        """A trap on this probe: True if the handler runs (the pass count is used up)."""
        self.counters.hits += 1
        return self.counters.count >= 0

    def end_hit(self) -> None:
        """After the probed instruction was stepped: count the hit, disable at max_hits."""
        self.counters.count += 1
        if self.counters.count >= self.max_hits:
            self.status = (self.status & ~RecordStatus.ACTIVE) | RecordStatus.DISABLED

    def count_fault(self) -> None:
        """The probed instruction faulted and the probe has logonfault: count the hit, as
        5.0's fault handler did, without the max_hits check."""
        self.counters.count += 1
