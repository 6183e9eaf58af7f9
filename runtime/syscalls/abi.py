"""The Linux i386 numbers the system calls speak: errno values, flags, limits, ``uname``."""

EPERM, ENOENT, EIO, EBADF, ENOMEM, EACCES, EFAULT, EINVAL = 1, 2, 5, 9, 12, 13, 14, 22
ENOTTY, ENOSYS = 25, 38
EPIPE, SIGPIPE, SIG_DFL, IOV_MAX = 32, 13, 0, 1024
AT_FDCWD, AT_EMPTY_PATH = -100 & 0xFFFFFFFF, 0x1000
MAP_SHARED, MAP_FIXED, MAP_ANONYMOUS = 0x01, 0x10, 0x20
O_ACCMODE, O_CREAT, O_TRUNC = 0o3, 0o100, 0o1000
RLIM_INFINITY = 0xFFFFFFFF
UNAME = ("Linux", "dprobes", "5.15.0-dprobes", "#1 SMP 2000-01-01", "i686", "(none)")


def signed(value: int) -> int:
    """A 32-bit register value as the signed int the kernel would read from it."""
    return value - (1 << 32) if value & 0x80000000 else value
