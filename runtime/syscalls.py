"""The Linux i386 system calls the guest programs make, one small function each.

A probed program must run as it would on the DProbes machine, so what the kernel does for
it at ``int $0x80`` is done here: the number in EAX selects a function from ``TABLE``, the
arguments come from EBX, ECX, EDX, ESI, EDI, EBP, and the result (or minus an errno) goes
back in EAX. The set is what a static freestanding or static glibc program needs
(runtime.md lists glibc's start-up calls). Every value a guest can observe comes from the
machine: time from the instruction clock, random bytes from the seeded PRNG, a fixed
``uname``. An unknown number returns -ENOSYS and is counted in
``machine.unknown_syscalls``; a bad guest pointer returns -EFAULT. Nothing a guest passes
can raise into the host.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from dprobes.runtime.addrspace import GuestFault, Prot, page_up
from dprobes.runtime.cpu import TLS_COUNT, TLS_FIRST, segment_descriptor
from dprobes.runtime.physmem import PAGE_MASK, PAGE_SIZE
from dprobes.runtime.process import HostFile, Process

if TYPE_CHECKING:
    from dprobes.runtime.machine import Machine

EPERM, ENOENT, EIO, EBADF, ENOMEM, EACCES, EFAULT, EINVAL = 1, 2, 5, 9, 12, 13, 14, 22
ENOTTY, ENOSYS = 25, 38
AT_FDCWD, AT_EMPTY_PATH = -100 & 0xFFFFFFFF, 0x1000
MAP_SHARED, MAP_FIXED, MAP_ANONYMOUS = 0x01, 0x10, 0x20
O_ACCMODE, O_CREAT, O_TRUNC = 0o3, 0o100, 0o1000
RLIM_INFINITY = 0xFFFFFFFF
UNAME = ("Linux", "dprobes", "5.15.0-dprobes", "#1 SMP 2000-01-01", "i686", "(none)")

Syscall = Callable[..., int | None]
TABLE: dict[int, Syscall] = {}
NAMES: dict[int, str] = {}


def syscall(number: int, name: str) -> Callable[[Syscall], Syscall]:
    """Register ``fn(machine, process, *args)`` as system call ``number``."""

    def register(fn: Syscall) -> Syscall:
        TABLE[number] = fn
        NAMES[number] = name
        return fn

    return register


def dispatch(machine: Machine, proc: Process, number: int, args: tuple[int, ...]) -> int | None:
    """Run system call ``number``; the value for EAX, or None if the process is gone."""
    fn = TABLE.get(number)
    if fn is None:
        machine.unknown_syscalls[number] = machine.unknown_syscalls.get(number, 0) + 1
        return -ENOSYS
    try:
        return fn(machine, proc, *args[: fn.__code__.co_argcount - 2])
    except GuestFault:
        return -EFAULT
    except OSError as exc:  # a host file the guest may read said no
        return -(exc.errno or EIO)
    except (ValueError, OverflowError):  # an argument no check above anticipated
        return -EINVAL
    except MemoryError:
        return -ENOMEM


def signed(value: int) -> int:
    return value - (1 << 32) if value & 0x80000000 else value


# --- process lifetime and identity --------------------------------------------------------

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


for _number, _name in [(24, "getuid"), (49, "geteuid"), (47, "getgid"), (50, "getegid"),
                       (199, "getuid32"), (201, "geteuid32"), (200, "getgid32"),
                       (202, "getegid32")]:
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
        descriptor = segment_descriptor(base, limit, access,
                                        useable | (seg_32bit << 2) | (limit_in_pages << 3))
    p.tls[entry - TLS_FIRST] = descriptor
    m.cpu.set_tls(p.tls)
    return 0


# --- memory -------------------------------------------------------------------------------

@syscall(45, "brk")
def sys_brk(m: Machine, p: Process, addr: int) -> int:
    if addr < p.brk_start:
        return p.brk
    old_end, new_end = page_up(p.brk), page_up(addr)
    if new_end > old_end:
        if any(v.start < new_end and v.end > old_end for v in p.space.vmas):
            return p.brk  # would run into another mapping
        p.space.map(old_end, new_end - old_end, Prot.READ | Prot.WRITE, name="[heap]")
    elif new_end < old_end:
        p.space.unmap(new_end, old_end - new_end)
    p.brk = addr
    return addr


def _mmap(m: Machine, p: Process, addr: int, length: int, prot: int, flags: int, fd: int,
          offset: int) -> int:
    if length == 0 or addr & PAGE_MASK or offset & PAGE_MASK or prot & ~7:
        return -EINVAL
    length = page_up(length)
    file = None
    if not flags & MAP_ANONYMOUS:
        opened = p.fds.get(signed(fd))
        if not isinstance(opened, HostFile):
            return -EBADF if opened is None else -EACCES
        if flags & MAP_SHARED and prot & Prot.WRITE:
            return -EACCES  # opened read-only
        file = m.cache.open(opened.path)
    if flags & MAP_FIXED:
        start = addr
    else:
        try:
            start = p.space.find_free(length, addr or m.mmap_base)
        except MemoryError:
            return -ENOMEM
    try:
        p.space.map(start, length, Prot(prot), file, offset)
    except ValueError:
        return -EINVAL
    return start


@syscall(192, "mmap2")
def sys_mmap2(m: Machine, p: Process, addr: int, length: int, prot: int, flags: int, fd: int,
              pgoff: int) -> int:
    return _mmap(m, p, addr, length, prot, flags, fd, pgoff * PAGE_SIZE)


@syscall(90, "mmap")
def sys_old_mmap(m: Machine, p: Process, args: int) -> int:
    return _mmap(m, p, *struct.unpack("<6I", p.space.read(args, 24)))


@syscall(91, "munmap")
def sys_munmap(m: Machine, p: Process, addr: int, length: int) -> int:
    if addr & PAGE_MASK or length == 0 or addr + length > 0xC0000000:
        return -EINVAL
    p.space.unmap(addr, length)
    return 0


@syscall(125, "mprotect")
def sys_mprotect(m: Machine, p: Process, addr: int, length: int, prot: int) -> int:
    if addr & PAGE_MASK or prot & ~7:
        return -EINVAL
    if length == 0:
        return 0
    try:
        p.space.protect(addr, length, Prot(prot))
    except GuestFault:
        return -ENOMEM
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


# --- time ---------------------------------------------------------------------------------

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


@syscall(386, "rseq")
def sys_rseq(m: Machine, p: Process) -> int:
    return -ENOSYS  # glibc then does without restartable sequences


# The file-descriptor calls live in their own module, which registers them in TABLE.
from dprobes.runtime import syscalls_files  # noqa: E402, F401
