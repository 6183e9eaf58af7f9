"""The guest's descriptors 0, 1 and 2: either the host's own, or bytes kept in memory.

A program run with ``dpc run`` must see the world it would see run natively, so
``Stdio.host()`` hands the guest the host's fds 0/1/2 themselves: a read blocks as the host
read blocks and returns 0 at end of file, a write is one host ``write`` (no Python-level
buffer between the guest's output and dpc's own lines on stderr), and terminal questions
(``TCGETS``, ``TIOCGWINSZ``) get the host terminal's answers, so ``isatty`` in the guest
says what it says on the host. A write to a pipe nobody reads any more fails with EPIPE,
which the ``write`` system calls turn into SIGPIPE for the guest.

``Stdio.memory()`` is the same interface for the API and the tests: stdin is a byte
string, stdout and stderr are collected (and passed to optional callbacks as written).
"""

from __future__ import annotations

import fcntl
import os
import stat
import termios
from collections.abc import Callable
from dataclasses import dataclass

from dprobes.runtime.process import Input, OpenFile, Sink

TERMINAL_REQUESTS = {termios.TCGETS: 36, termios.TIOCGWINSZ: 8}
"""The terminal ioctls answered from the host, with the size of the struct each fills:
the kernel's ``struct termios`` (4 flag words, c_line, 19 control characters) and
``struct winsize`` have the same layout on i386 and x86-64."""


class HostStream(OpenFile):
    """One of the host's descriptors, shared with the guest (never closed by it)."""

    def __init__(self, fd: int) -> None:
        self.host_fd = fd
        access = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
        self.readable = access in (os.O_RDONLY, os.O_RDWR)
        self.writable = access in (os.O_WRONLY, os.O_RDWR)

    @property
    def mode(self) -> int:  # type: ignore[override]
        return os.fstat(self.host_fd).st_mode

    @property
    def size(self) -> int:  # type: ignore[override]
        info = os.fstat(self.host_fd)
        return info.st_size if stat.S_ISREG(info.st_mode) else 0


def terminal_ioctl(f: OpenFile, request: int) -> bytes | None:
    """The host's answer to terminal ``request`` on ``f``; None if ``f`` is no terminal
    (or no host descriptor) or the request is not one of ``TERMINAL_REQUESTS``."""
    size = TERMINAL_REQUESTS.get(request)
    if size is None or f.host_fd is None or not os.isatty(f.host_fd):
        return None
    return fcntl.ioctl(f.host_fd, request, bytes(size))


@dataclass(frozen=True)
class Stdio:
    """The open files a process starts with as descriptors 0, 1 and 2."""

    stdin: OpenFile
    stdout: OpenFile
    stderr: OpenFile

    @classmethod
    def host(cls) -> Stdio:
        """The host's fds 0, 1 and 2 (pipes, files or terminals), used directly, with
        their host access modes; one the host has closed is closed for the guest too."""
        return cls(*(_host_or_closed(fd) for fd in (0, 1, 2)))

    @classmethod
    def memory(
        cls,
        stdin: bytes = b"",
        stdout: Callable[[bytes], None] | None = None,
        stderr: Callable[[bytes], None] | None = None,
    ) -> Stdio:
        """stdin from ``stdin`` then end of file; stdout/stderr collected in the process
        (``Process.output()``) and handed to the callbacks as written."""
        return cls(Input(stdin), Sink(stdout), Sink(stderr))


def _host_or_closed(fd: int) -> OpenFile:
    try:
        return HostStream(fd)
    except OSError:  # EBADF: not open on the host
        return OpenFile()
