"""Probe records: one per probe of an inserted program, with DProbes' status flags.

A record follows 5.0's ``dp_record_struct``: the probe point, a status bit set, a signed
hit ``count`` that starts at ``-pass_count`` (a hit runs the handler only once the count
is >= 0, and every hit increments it; reaching ``max_hits`` disables the probe) and, on
an opcode mismatch, the byte actually found.
"""

from __future__ import annotations

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


@dataclass
class ProbeRecord:
    """The run-time state of one probe."""

    index: int
    point: Probe
    status: RecordStatus = RecordStatus.COMPILED
    count: int = 0
    actual_opcode: int | None = None
    address: int | None = None  # where the int3 is (kernel/kmod: the virtual address)
    original: bytes = b""  # the probed instruction's bytes, first byte as before the probe
    hits: int = 0  # every trap on this probe, skipped ones included
    notes: list[str] = field(default_factory=list)  # why a probe is not active, for query

    def __post_init__(self) -> None:
        self.count = -self.point.pass_count

    @property
    def max_hits(self) -> int:
        return self.point.max_hits or MAX_HITS_DEFAULT

    @property
    def armed(self) -> bool:
        return RecordStatus.ACTIVE in self.status

    def begin_hit(self) -> bool:
        """A trap on this probe: True if the handler runs (the pass count is used up)."""
        self.hits += 1
        return self.count >= 0

    def end_hit(self) -> None:
        """After the probed instruction was stepped: count the hit, disable at max_hits."""
        self.count += 1
        if self.count >= self.max_hits:
            self.status = (self.status & ~RecordStatus.ACTIVE) | RecordStatus.DISABLED
