"""The compiled probe program: what PPDF stores and what the VM and the runtime run.

Field names follow DProbes' ``dp_pgm_struct`` (the program header) and
``dp_point_struct`` (one record per probe). All probes share one RPN code blob; a probe's
handler is ``code[code_start:code_end]`` and every code offset (jump targets, handler
addresses, stack-trace records, EX_INVALID_OPCODE) is relative to the start of the blob.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum, IntFlag

from dprobes.vm.bytecode import DecodeError, Instruction, decode_range
from dprobes.vm.exceptions import DEFAULT_EX_MASK
from dprobes.vm.model import EX_LOGMAX_LIMIT, JMPMAX_LIMIT, LOGMAX_LIMIT

HEAPMAX_LIMIT = 16 * 1024
MAX_LOCAL_VARS = 256
MAX_GLOBAL_VARS = 256
MAX_HITS_DEFAULT = 0x7FFFFFFF
MIN_HEAP_SIZE = 40
"""A probe heap smaller than two 20-byte block headers is never initialised (5.0)."""


class ModuleType(IntEnum):
    """What the program's ``name`` refers to (``DP_MODTYPE_*``)."""

    USER = 1
    KERNEL = 2
    KMOD = 4


class LogField(IntFlag):
    """Optional log-record header fields (``DP_LOG_*`` bits of ``pgm.flags``)."""

    NONE = 0
    PROCNAME = 0x0100
    PID = 0x0200
    UID = 0x0400
    SSESP = 0x0800
    CSEIP = 0x1000
    TSC = 0x2000
    CPU = 0x4000
    ALL = 0xFF00


class LogTarget(IntEnum):
    """Where log records go (``DP_LOG_TARGET_*``)."""

    KLOG = 0x010000
    LTT = 0x020000
    COM1 = 0x040000
    COM2 = 0x080000
    EVL = 0x100000


class ProbeKind(IntEnum):
    """The ``probe`` field's kind bits."""

    BREAKPOINT = 0x8000
    WATCHPOINT = 0x4000


class WatchType(IntEnum):
    """Watchpoint access types; the numbers are the i386 DR7 R/W encodings."""

    EXECUTE = 0
    WRITE = 1
    IO = 2
    READWRITE = 3


@dataclass(frozen=True, slots=True)
class ProgramHeader:
    """Program-level settings (``dp_pgm_struct``), already clamped to the 5.0 limits."""

    name: str
    modtype: ModuleType
    major: int = 0
    id: int = 0
    jmpmax: int = JMPMAX_LIMIT
    logmax: int = LOGMAX_LIMIT
    ex_logmax: int = EX_LOGMAX_LIMIT
    num_lv: int = 0
    num_gv: int = 0
    heapmax: int = HEAPMAX_LIMIT
    autostacktrace: bool = False
    log_fields: LogField = LogField.NONE
    log_target: LogTarget = LogTarget.KLOG


@dataclass(frozen=True, slots=True)
class Probe:
    """One probe record (``dp_point_struct``) and where its handler lives in the code."""

    kind: ProbeKind
    offset: int
    code_start: int
    code_end: int
    absolute: bool = False
    opcode: int | None = None
    major: int = 0
    minor: int = 0
    group: int = 0
    type: int = 0
    pass_count: int = 0
    max_hits: int = 0  # 0 means MAX_HITS_DEFAULT
    logonfault: bool = False
    ex_mask: int = DEFAULT_EX_MASK
    heap_size: int = 0
    watch_type: WatchType = WatchType.EXECUTE
    watch_length: int = 1  # bytes, 1/2/4; PPDF keeps length - 1 as DProbes did
    location: str = ""  # the location as written (symbol+n), for listings


@dataclass(frozen=True, slots=True)
class SourceLine:
    """Source-map entry: the instruction at ``offset`` came from file:line:column."""

    offset: int
    file: str
    line: int
    column: int


@dataclass(frozen=True, slots=True)
class Program:
    """A whole compiled program: header, probe records, the shared code and its maps."""

    header: ProgramHeader
    probes: tuple[Probe, ...]
    code: bytes
    source_map: tuple[SourceLine, ...] = ()
    labels: tuple[tuple[int, str], ...] = ()  # (code offset, label name), for listings
    formats: tuple[str, ...] = field(default=())  # printf formats (high-level language)
    _decoded: dict[int, tuple[Instruction, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def handler(self, index: int) -> bytes:
        """The RPN bytes of probe ``index``'s handler."""
        probe = self.probes[index]
        return self.code[probe.code_start : probe.code_end]

    def instructions(self, index: int) -> tuple[Instruction, ...]:
        """Probe ``index``'s handler decoded, once per program: the verifier, both tiers,
        the listing and the runtime all read this tuple. Raises ``DecodeError`` (and
        caches nothing) if the bytes are not a whole number of instructions."""
        decoded = self._decoded.get(index)
        if decoded is None:
            probe = self.probes[index]
            if not 0 <= probe.code_start <= probe.code_end <= len(self.code):
                raise DecodeError(
                    probe.code_start,
                    f"the handler's code range "
                    f"{probe.code_start}..{probe.code_end} is not inside the "
                    f"{len(self.code)} bytes of code",
                )
            decoded = tuple(decode_range(self.code, probe.code_start, probe.code_end))
            self._decoded[index] = decoded
        return decoded
