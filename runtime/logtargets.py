"""Log records and the targets that write them (DProbes' KLOG, COM1/COM2 and EVL).

A record is the binary header ``{u16 facility_id=1, u16 len, u32 mask, u16 major,
u16 minor}`` followed by the optional fields the program's ``log =`` selected, in the
reference order (pid, uid, cs+eip, ss+esp, timestamp, process name), then the log data
the handler produced. ``len`` is the whole record's length here (5.0 kept the header
length there; a reader of a raw serial stream needs the record length). The exception
buffer, when not empty, follows as a second record with major/minor 0/0.

Targets: KLOG prints the ``dprobes(major,minor) pid=... `` line and a 16-bytes-per-row
hex dump (``unformatted`` prints plain hex bytes instead); COM1/COM2 write the raw
records, each followed by CR LF, to a file or pipe standing for the serial line; EVL
writes one JSON object per record (JSON Lines).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import BinaryIO, NamedTuple, TextIO

from dprobes.vm.program import LogField, LogTarget

FACILITY_ID = 1


class HeaderBit:
    """The ``mask`` bits saying which header elements are present (``DP_HDR_*``)."""

    MAJOR, MINOR, CPU, PID, UID = 0x1, 0x2, 0x4, 0x8, 0x10
    CS, EIP, SS, ESP, TSC, PROCNAME = 0x20, 0x40, 0x80, 0x100, 0x200, 0x400


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

    def mask(self) -> int:
        bits = HeaderBit.MAJOR | HeaderBit.MINOR
        for flag, bit in ((LogField.PID, HeaderBit.PID), (LogField.UID, HeaderBit.UID),
                          (LogField.CSEIP, HeaderBit.CS | HeaderBit.EIP),
                          (LogField.SSESP, HeaderBit.SS | HeaderBit.ESP),
                          (LogField.TSC, HeaderBit.TSC), (LogField.PROCNAME, HeaderBit.PROCNAME)):
            if flag in self.fields:
                bits |= bit
        return bits

    def header_fields(self) -> bytes:
        hit, out = self.hit, b""
        if LogField.PID in self.fields:
            out += struct.pack("<I", hit.pid)
        if LogField.UID in self.fields:
            out += struct.pack("<I", hit.uid)
        if LogField.CSEIP in self.fields:
            out += struct.pack("<HI", hit.cs, hit.eip)
        if LogField.SSESP in self.fields:
            out += struct.pack("<HI", hit.ss, hit.esp)
        if LogField.TSC in self.fields:
            out += struct.pack("<II", hit.seconds, hit.microseconds)
        if LogField.PROCNAME in self.fields:
            out += hit.procname.encode()[:16].ljust(16, b"\0")
        return out

    def to_bytes(self) -> bytes:
        """The raw binary record."""
        fields = self.header_fields()
        length = 12 + len(fields) + len(self.data)
        return struct.pack("<HHIHH", FACILITY_ID, length & 0xFFFF, self.mask(), self.major,
                           self.minor) + fields + self.data

    def describe(self) -> dict[str, int | str]:
        """The header as name -> value, in record order."""
        hit = self.hit
        out: dict[str, int | str] = {"major": self.major, "minor": self.minor}
        for flag, names in ((LogField.PID, ("pid",)), (LogField.UID, ("uid",)),
                            (LogField.CSEIP, ("cs", "eip")), (LogField.SSESP, ("ss", "esp")),
                            (LogField.TSC, ("tsc",)), (LogField.PROCNAME, ("name",))):
            if flag in self.fields:
                for name in names:
                    out[name] = (f"{hit.seconds}:{hit.microseconds:06d}" if name == "tsc"
                                 else getattr(hit, "procname" if name == "name" else name))
        return out


def hex_dump(data: bytes) -> list[str]:
    """16 bytes per row: offset, hex bytes, ASCII column."""
    rows = []
    for at in range(0, len(data), 16):
        chunk = data[at:at + 16]
        text = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in chunk)
        rows.append(f"{at:08x}  {chunk.hex(' '):<47}  |{text}|")
    return rows


def klog_lines(record: LogRecord, unformatted: bool = False) -> list[str]:
    """The kernel-log form: the ``dprobes(major,minor) ...`` line, then the data."""
    head = " ".join(f"{k}={v:#x}" if isinstance(v, int) and k in ("cs", "eip", "ss", "esp")
                    else f"{k}={v}" for k, v in record.describe().items()
                    if k not in ("major", "minor"))
    lines = [f"dprobes({record.major},{record.minor}){' ' + head if head else ''}"]
    if unformatted:
        lines.append(record.data.hex(" "))
    else:
        lines.extend(hex_dump(record.data))
    return lines


class LogSink:
    """Writes the records of every hit to one target."""

    def __init__(self, target: LogTarget, stream: TextIO | BinaryIO, *,
                 unformatted: bool = False) -> None:
        self.target, self.stream, self.unformatted = target, stream, unformatted

    def write(self, record: LogRecord, exception_log: bytes = b"") -> None:
        records = [record]
        if exception_log:
            records.append(LogRecord(0, 0, LogField.NONE, HitInfo(), exception_log))
        for one in records:
            if self.target in (LogTarget.COM1, LogTarget.COM2):
                self.stream.write(one.to_bytes() + b"\r\n")  # type: ignore[arg-type]
            elif self.target is LogTarget.EVL:
                entry = {**one.describe(), "data": one.data.hex()}
                self.stream.write(json.dumps(entry) + "\n")  # type: ignore[arg-type]
            else:
                text = "\n".join(klog_lines(one, self.unformatted)) + "\n"
                self.stream.write(text)  # type: ignore[arg-type]
