"""Writes tests/golden/logformat/: what DProbes 5.0 wrote for a fixed set of hits.

Independent of ``runtime.logformat``: this script follows 5.0's C code (the i386
``drivers/dprobes/i386/dprobes.c``: ``fmt_log_hdr``, ``log_dumpformat``,
``log_to_klog_dump``, ``log_to_klog``, ``log_stack_trace``, ``log_stack_trace_dump``,
``fmt_log_hdr_raw``, ``fmt_st_hdr_raw``, ``log_to_com_port``; the header length and mask
from ``init_trace_hdr``) step by step, with its printf format strings applied by Python's
``%`` operator, which follows C's printf for these conversions. One deviation, as
docs/probes.md says: a dump's first row ends at the record's end (5.0 always printed 16
bytes there, reading past a shorter record).

Run ``python -m dprobes.tests.make_logformat_goldens`` after changing ``RECORDS``;
tests/test_logformat.py compares both formatters with the files.
"""

# ruff: noqa: UP031  (the point: C's printf format strings, applied as printf applies them)

from __future__ import annotations

import struct
from pathlib import Path
from typing import NamedTuple

GOLDEN = Path(__file__).resolve().parent / "golden" / "logformat"

DP_LOG_HDR_FMT = "dprobes(%d,%d) "
DP_LOG_CPU_FMT = "cpu=%d "
DP_LOG_PROCNAME_FMT = "name=%s "
DP_LOG_PID_FMT = "pid=%d "
DP_LOG_UID_FMT = "uid=%d "
DP_LOG_CS_EIP_FMT = "cs=%x eip=%08lx "
DP_LOG_SS_ESP_FMT = "ss=%x esp=%08lx "
DP_LOG_TSC_FMT = "tsc=%08lx:%08lx "
DP_LOG_NEWLINE_FMT = "\n"
DP_LOG_DATA_FMT = "%x "
DP_LOG_DATA_FT = "%x"
ROWS = 16

DP_TRACE_HDR_ID = 1
DP_HDR_MAJOR, DP_HDR_MINOR, DP_HDR_CPU, DP_HDR_PID, DP_HDR_UID = 0x1, 0x2, 0x4, 0x8, 0x10
DP_HDR_CS, DP_HDR_EIP, DP_HDR_SS, DP_HDR_ESP = 0x20, 0x40, 0x80, 0x100
DP_HDR_TSC, DP_HDR_PROCNAME = 0x200, 0x400
TRACE_HDR = struct.Struct("<HHLHH")  # struct dp_trace_hdr_struct (i386)
SMP_CPU = 0  # smp_processor_id() on the one CPU the emulated machine has

FIELDS = ("pid", "uid", "cseip", "ssesp", "tsc", "procname")
"""The ``log =`` choices (``DP_LOG_*``), by the names the goldens' files use."""
MASKS: dict[str, tuple[str, ...]] = {
    "none": (),
    **{name: (name,) for name in FIELDS},
    "all": FIELDS,
}


class Hit(NamedTuple):
    """One hit: what 5.0's ``dp`` and ``current`` held, the log and the exception log
    (the stack-trace bytes after their header)."""

    major: int
    minor: int
    pid: int
    uid: int
    cs: int
    eip: int
    ss: int
    esp: int
    tv_sec: int
    tv_usec: int
    comm: str
    log: bytes
    ex_log: bytes


RECORDS = (
    Hit(1, 2, 1234, 0, 0x73, 0x0804909E, 0x7B, 0xBFFFF6C0, 946684801, 250000, "loop", b"", b""),
    Hit(
        7,
        65535,
        7,
        1000,
        0x73,
        0x08048000,
        0x7B,
        0xBFFFE000,
        946759365,
        999999,
        "strings",
        b"\x00\x0f\x10\x7f\x80",
        b"",
    ),
    Hit(
        65535,
        0,
        65536,
        65534,
        0x73,
        0xC0100000,
        0x68,
        0x00000004,
        946684800,
        0,
        "fifteen-chars-x",
        bytes(range(0, 256, 7)),
        bytes([0x0E, 0x0F, 0x10, 0xC1, 0x20, 0xFF]) * 3,
    ),
    Hit(
        3,
        4,
        99,
        0,
        0x23,
        0x00000001,
        0x2B,
        0xFFFFFFFC,
        1041379200,
        123456,
        "hello",
        b"hello, dprobes!\n",
        b"\x01\x00\x00",
    ),
    Hit(
        0,
        1,
        1,
        0,
        0x73,
        0x080480F0,
        0x7B,
        0xBFFFFFFF,
        947000000,
        7,
        "a b",
        bytes(range(0xE0, 0x100)),
        bytes(range(0x7A, 0x8B)),
    ),
)


def comm_bytes(hit: Hit) -> bytes:
    """``current->comm``: 16 bytes, the name NUL-terminated (at most 15 characters)."""
    return hit.comm.encode()[:15].ljust(16, b"\0")


def fmt_log_hdr(hit: Hit, flags: tuple[str, ...], smp: bool) -> str:
    tmp = DP_LOG_HDR_FMT % (hit.major, hit.minor)
    if smp:
        tmp += DP_LOG_CPU_FMT % SMP_CPU
    if "pid" in flags:
        tmp += DP_LOG_PID_FMT % hit.pid
    if "uid" in flags:
        tmp += DP_LOG_UID_FMT % hit.uid
    if "cseip" in flags:
        tmp += DP_LOG_CS_EIP_FMT % (hit.cs, hit.eip)
    if "ssesp" in flags:
        tmp += DP_LOG_SS_ESP_FMT % (hit.ss, hit.esp)
    if "tsc" in flags:
        tmp += DP_LOG_TSC_FMT % (hit.tv_sec, hit.tv_usec)
    if "procname" in flags:
        tmp += DP_LOG_PROCNAME_FMT % comm_bytes(hit).split(b"\0")[0].decode()
    tmp += DP_LOG_NEWLINE_FMT
    tmp += DP_LOG_HDR_FMT % (hit.major, hit.minor)
    return tmp


def isprint(c: int) -> bool:
    """The kernel's ctype: space through '~'."""
    return 0x20 <= c <= 0x7E


def log_dumpformat(log_len: int, log: bytes) -> str:
    out = ""
    start, end = 0, min(ROWS, log_len)  # 5.0: end = ROWS (the deviation, see above)
    off = 0x0
    while start < log_len:
        out += "0x%8.8x : " % off
        for i in range(start, end):
            out += "%2.2x" % (0xFF & log[i])
            if ((i + 1) % 4) == 0:
                out += " "
        if (end - start) < ROWS:
            for _ in range(((ROWS - (end - start)) * 2) + 4 - ((end - start) // 4)):
                out += " "
        out += ": "
        for i in range(start, end):
            c = 0x7F & log[i]
            out += "." if not isprint(c) else "%c" % c
        out += DP_LOG_NEWLINE_FMT
        if (log_len - end) % 2**32 > ROWS:  # unsigned long arithmetic
            end += ROWS
        else:
            end = log_len
        start += ROWS
        off += 0x10
    return out


def st_hdr(smp: bool) -> str:
    return DP_LOG_HDR_FMT % (0, 0) + (DP_LOG_CPU_FMT % SMP_CPU if smp else "")


def klog_dump(hit: Hit, flags: tuple[str, ...], smp: bool) -> str:
    """``log_to_klog_dump`` then ``log_stack_trace_dump``."""
    out = "%s \n" % fmt_log_hdr(hit, flags, smp) + log_dumpformat(len(hit.log), hit.log)
    if hit.ex_log:
        out += "%s \n" % st_hdr(smp) + log_dumpformat(len(hit.ex_log), hit.ex_log)
    return out


def klog(hit: Hit, flags: tuple[str, ...], smp: bool) -> str:
    """``log_to_klog`` then ``log_stack_trace`` (``--unformatted-output``)."""
    out = "%s " % fmt_log_hdr(hit, flags, smp)
    for byte in hit.log:
        if byte < 0xF:
            out += DP_LOG_DATA_FT % 0
        out += DP_LOG_DATA_FMT % byte
    out += DP_LOG_NEWLINE_FMT
    if hit.ex_log:
        out += "%s " % st_hdr(smp)
        for byte in hit.ex_log:
            out += DP_LOG_DATA_FMT % byte
        out += DP_LOG_NEWLINE_FMT
    return out


def init_trace_hdr(flags: tuple[str, ...], smp: bool) -> tuple[int, int]:
    """The program's header mask and length."""
    mask, length = DP_HDR_MAJOR | DP_HDR_MINOR, TRACE_HDR.size
    if smp:
        mask, length = mask | DP_HDR_CPU, length + 4
    for flag, bits, size in (
        ("pid", DP_HDR_PID, 4),
        ("uid", DP_HDR_UID, 4),
        ("cseip", DP_HDR_CS | DP_HDR_EIP, 2 + 4),
        ("ssesp", DP_HDR_SS | DP_HDR_ESP, 2 + 4),
        ("tsc", DP_HDR_TSC, 8),
        ("procname", DP_HDR_PROCNAME, 16),
    ):
        if flag in flags:
            mask, length = mask | bits, length + size
    return mask, length


def fmt_log_hdr_raw(hit: Hit, flags: tuple[str, ...], smp: bool) -> bytes:
    mask, length = init_trace_hdr(flags, smp)
    tmp = TRACE_HDR.pack(DP_TRACE_HDR_ID, length, mask, hit.major, hit.minor)
    if smp:
        tmp += struct.pack("<I", SMP_CPU)
    if mask & DP_HDR_PID:
        tmp += struct.pack("<i", hit.pid)
    if mask & DP_HDR_UID:
        tmp += struct.pack("<I", hit.uid)
    if mask & DP_HDR_CS:
        tmp += struct.pack("<H", hit.cs)
    if mask & DP_HDR_EIP:
        tmp += struct.pack("<L", hit.eip)
    if mask & DP_HDR_SS:
        tmp += struct.pack("<H", hit.ss)
    if mask & DP_HDR_ESP:
        tmp += struct.pack("<L", hit.esp)
    if mask & DP_HDR_TSC:
        tmp += struct.pack("<ll", hit.tv_sec, hit.tv_usec)
    if mask & DP_HDR_PROCNAME:
        tmp += comm_bytes(hit)
    assert len(tmp) == length
    return tmp


def fmt_st_hdr_raw(smp: bool) -> bytes:
    mask, length = DP_HDR_MAJOR | DP_HDR_MINOR, TRACE_HDR.size
    cpu = b""
    if smp:
        mask, length, cpu = mask | DP_HDR_CPU, length + 4, struct.pack("<I", SMP_CPU)
    return TRACE_HDR.pack(DP_TRACE_HDR_ID, length, mask, 0, 0) + cpu


def com_port(hit: Hit, flags: tuple[str, ...], smp: bool) -> bytes:
    """``log_to_com_port``: the record, CR LF, then the stack trace's, CR LF."""
    out = fmt_log_hdr_raw(hit, flags, smp) + hit.log + b"\r\n"
    if hit.ex_log:
        out += fmt_st_hdr_raw(smp) + hit.ex_log + b"\r\n"
    return out


TARGETS = {
    "klog": (".txt", lambda hit, flags, smp: klog_dump(hit, flags, smp).encode()),
    "klog-f": (".txt", lambda hit, flags, smp: klog(hit, flags, smp).encode()),
    "com": (".bin", com_port),
}
"""Golden file name stem -> suffix and writer (``com`` is COM1's and COM2's)."""


def golden_name(target: str, smp: bool, mask: str) -> str:
    suffix = TARGETS[target][0]
    return f"{target}{'-smp' if smp else ''}-{mask}{suffix}"


def goldens() -> dict[str, bytes]:
    """Every golden file's name and contents: each target, build and mask."""
    return {
        golden_name(target, smp, mask): b"".join(write(hit, MASKS[mask], smp) for hit in RECORDS)
        for target, (_, write) in TARGETS.items()
        for smp in (False, True)
        for mask in MASKS
    }


def main() -> None:
    GOLDEN.mkdir(parents=True, exist_ok=True)
    for name, data in goldens().items():
        (GOLDEN / name).write_bytes(data)


if __name__ == "__main__":
    main()
