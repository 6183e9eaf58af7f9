"""System calls on the process itself: lifetime, identity, signals, TLS, limits, uname,
random bytes."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from dprobes.runtime.cpu import TLS_COUNT, TLS_FIRST, segment_descriptor
from dprobes.runtime.process import Process
from dprobes.runtime.syscalls.abi import EINVAL, ENOSYS, RLIM_INFINITY, UNAME, signed
from dprobes.runtime.syscalls.table import syscall

if TYPE_CHECKING:
    from dprobes.runtime.machine import Machine


@syscall(1, "exit")
def sys_exit(m: Machine, p: Process, status: int) -> None:
    m.exit_process(p, status & 0xFF)


@syscall(252, "exit_group")
def sys_exit_group(m: Machine, p: Process, status: int) -> None:
    m.exit_process(p, status & 0xFF)


@syscall(20, "getpid")
def sys_getpid(m: Machine, p: Process) -> int:
    return p.pid


@syscall(224, "gettid")
def sys_gettid(m: Machine, p: Process) -> int:
    return p.pid


@syscall(64, "getppid")
def sys_getppid(m: Machine, p: Process) -> int:
    return 0


for _number, _name in [
    (24, "getuid"),
    (49, "geteuid"),
    (47, "getgid"),
    (50, "getegid"),
    (199, "getuid32"),
    (201, "geteuid32"),
    (200, "getgid32"),
    (202, "getegid32"),
]:
    syscall(_number, _name)(lambda m, p: 0)


@syscall(37, "kill")
def sys_kill(m: Machine, p: Process, pid: int, sig: int) -> int:
    if signed(pid) not in (p.pid, 0, -1):
        return -3  # ESRCH: there is no one else to signal
    if sig:
        m.kill_process(p, sig, f"{m.signal_name(sig)} sent by the process itself")
    return 0


@syscall(270, "tgkill")
def sys_tgkill(m: Machine, p: Process, tgid: int, tid: int, sig: int) -> int:
    return sys_kill(m, p, tid, sig)


@syscall(258, "set_tid_address")
def sys_set_tid_address(m: Machine, p: Process, tidptr: int) -> int:
    p.tid_address = tidptr
    return p.pid


@syscall(311, "set_robust_list")
def sys_set_robust_list(m: Machine, p: Process, head: int, length: int) -> int:
    if length != 12:
        return -EINVAL
    p.robust_list = head
    return 0


@syscall(172, "prctl")
def sys_prctl(m: Machine, p: Process, option: int, arg2: int) -> int:
    if option == 15:  # PR_SET_NAME
        p.comm = p.space.read_cstring(arg2, 16)[:15]
        return 0
    if option == 16:  # PR_GET_NAME
        p.space.write(arg2, p.comm.ljust(16, b"\0"))
        return 0
    return -EINVAL


def _sigaction(p: Process, sig: int, act: int, oact: int, nbytes: int) -> int:
    """Record the handler struct (nobody delivers signals here: actions are kept only)."""
    if not 1 <= sig <= 64 or sig in (9, 19):
        return -EINVAL
    old = p.sigactions.get(sig, bytes(nbytes))[:nbytes].ljust(nbytes, b"\0")
    if act:
        p.sigactions[sig] = p.space.read(act, nbytes)
    if oact:
        p.space.write(oact, old)
    return 0


@syscall(174, "rt_sigaction")
def sys_rt_sigaction(m: Machine, p: Process, sig: int, act: int, oact: int, size: int) -> int:
    return _sigaction(p, sig, act, oact, 20) if size == 8 else -EINVAL  # 3 words + sigset


@syscall(67, "sigaction")
def sys_sigaction(m: Machine, p: Process, sig: int, act: int, oact: int) -> int:
    return _sigaction(p, sig, act, oact, 16)  # the old struct: a 4-byte mask


@syscall(175, "rt_sigprocmask")
def sys_rt_sigprocmask(m: Machine, p: Process, how: int, new: int, old: int, size: int) -> int:
    if size > 8 or how > 2:
        return -EINVAL
    if old:
        p.space.write(old, p.sigmask.to_bytes(8, "little")[:size])
    if new:
        mask = int.from_bytes(p.space.read(new, size), "little")
        p.sigmask = (p.sigmask | mask, p.sigmask & ~mask, mask)[how]
    return 0


@syscall(126, "sigprocmask")
def sys_sigprocmask(m: Machine, p: Process, how: int, new: int, old: int) -> int:
    return sys_rt_sigprocmask(m, p, how, new, old, 4)


@syscall(122, "uname")
def sys_uname(m: Machine, p: Process, buf: int) -> int:
    p.space.write(buf, b"".join(s.encode().ljust(65, b"\0") for s in UNAME))
    return 0


@syscall(243, "set_thread_area")
def sys_set_thread_area(m: Machine, p: Process, u_info: int) -> int:
    entry, base, limit, flags = struct.unpack("<4I", p.space.read(u_info, 16))
    if entry == 0xFFFFFFFF:
        free = [i for i, d in enumerate(p.tls) if d == bytes(8)]
        if not free:
            return -3  # ESRCH, as Linux says when no TLS slot is free
        entry = TLS_FIRST + free[0]
        p.space.write(u_info, struct.pack("<I", entry))
    if not TLS_FIRST <= entry < TLS_FIRST + TLS_COUNT:
        return -EINVAL
    seg_32bit, contents, read_exec_only = flags & 1, (flags >> 1) & 3, (flags >> 3) & 1
    limit_in_pages, not_present, useable = (flags >> 4) & 1, (flags >> 5) & 1, (flags >> 6) & 1
    if base == 0 and limit == 0 and read_exec_only and not_present and not seg_32bit:
        descriptor = bytes(8)  # LDT_empty: clear the entry
    else:
        access = 0x60 | 0x10 | ((read_exec_only ^ 1) << 1) | (contents << 2) | 1
        access |= (not_present ^ 1) << 7
        descriptor = segment_descriptor(
            base, limit, access, useable | (seg_32bit << 2) | (limit_in_pages << 3)
        )
    p.tls[entry - TLS_FIRST] = descriptor
    m.cpu.set_tls(p.tls)
    return 0


@syscall(355, "getrandom")
def sys_getrandom(m: Machine, p: Process, buf: int, count: int, flags: int) -> int:
    count = min(count, 1 << 16)
    p.space.write(buf, m.random_bytes(count))
    return count


@syscall(191, "ugetrlimit")
def sys_ugetrlimit(m: Machine, p: Process, resource: int, rlim: int) -> int:
    limit = 8 << 20 if resource == 3 else RLIM_INFINITY  # RLIMIT_STACK: 8 MiB
    p.space.write(rlim, struct.pack("<II", limit, RLIM_INFINITY))
    return 0


syscall(76, "getrlimit")(sys_ugetrlimit)


@syscall(340, "prlimit64")
def sys_prlimit64(m: Machine, p: Process, pid: int, resource: int, new: int, old: int) -> int:
    if old:
        limit = 8 << 20 if resource == 3 else 2**64 - 1
        p.space.write(old, struct.pack("<QQ", limit, 2**64 - 1))
    return 0


@syscall(386, "rseq")
def sys_rseq(m: Machine, p: Process) -> int:
    return -ENOSYS  # glibc then does without restartable sequences
