"""The Linux i386 numbers the system calls speak: errno values, flags, limits, ``uname``."""

EPERM, ENOENT, EIO, EBADF, ENOMEM, EACCES, EFAULT, EINVAL = 1, 2, 5, 9, 12, 13, 14, 22
EBUSY, EEXIST, ENOTDIR, EMFILE, ENOTTY, ESPIPE, ERANGE = 16, 17, 20, 24, 25, 29, 34
ENAMETOOLONG, ENOSYS, EOVERFLOW = 36, 38, 75
ENOEXEC = 8
EPIPE, SIGPIPE, SIG_DFL, IOV_MAX = 32, 13, 0, 1024
AT_FDCWD, AT_EMPTY_PATH = -100 & 0xFFFFFFFF, 0x1000
AT_SYMLINK_NOFOLLOW, AT_REMOVEDIR, AT_EACCESS = 0x100, 0x200, 0x200
MAP_SHARED, MAP_FIXED, MAP_ANONYMOUS = 0x01, 0x10, 0x20
O_ACCMODE, O_RDONLY, O_WRONLY, O_RDWR = 0o3, 0o0, 0o1, 0o2
O_CREAT, O_EXCL, O_NOCTTY, O_TRUNC = 0o100, 0o200, 0o400, 0o1000
O_APPEND, O_NONBLOCK = 0o2000, 0o4000
O_LARGEFILE, O_DIRECTORY, O_NOFOLLOW, O_CLOEXEC = 0o100000, 0o200000, 0o400000, 0o2000000
O_PATH, O_TMPFILE = 0o10000000, 0o20000000
FD_LIMIT = 1024
"""Descriptors a process may hold (Linux's default RLIMIT_NOFILE soft limit)."""
RLIM_INFINITY = 0xFFFFFFFF
UNAME = ("Linux", "dprobes", "5.15.0-dprobes", "#1 SMP 2000-01-01", "i686", "(none)")


def signed(value: int) -> int:
    """A 32-bit register value as the signed int the kernel would read from it."""
    return value - (1 << 32) if value & 0x80000000 else value
