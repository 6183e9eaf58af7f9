"""A process: what DProbes' log header and ``push task``/``push pid`` describe.

The log header of a probe hit carries PROCNAME, PID, UID and the user registers, and a user
probe fires in every process running the probed file, so a process here is the small part
of Linux's task_struct those need: pid, comm (16 bytes), credentials (uid/gid 0), its
address space (``mm``), its saved CPU context while it is not running, its program break,
its TLS descriptors (``set_thread_area``), file descriptors, and how it ended: an exit
status, or the fatal signal with a crash report.

File descriptors 0, 1 and 2 are given at spawn (``runtime.stdio``): the host's own, or
in memory (stdin a byte string, stdout and stderr collected). Other files come from the
machine's file-system view (``runtime.filesystem``); the process keeps its working
directory (a resolved guest path) and umask.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from unicorn.unicorn import UcContext

    from dprobes.runtime.addrspace import AddressSpace
    from dprobes.runtime.elfload import Image

S_IFIFO = 0o010000
SIGNAL_NAMES = {
    4: "SIGILL",
    5: "SIGTRAP",
    6: "SIGABRT",
    7: "SIGBUS",
    8: "SIGFPE",
    9: "SIGKILL",
    11: "SIGSEGV",
    13: "SIGPIPE",
}


class State(enum.Enum):
    RUNNABLE = "runnable"
    EXITED = "exited"
    KILLED = "killed"


class OpenFile:
    """An open file description; the base refuses everything (EBADF)."""

    mode = S_IFIFO | 0o600
    size = 0
    readable = writable = False
    host_fd: int | None = None
    """The host descriptor behind it, for questions only the host can answer (ioctl)."""

    def read(self, n: int) -> bytes:
        """At most ``n`` bytes from the host descriptor, if there is one."""
        if self.host_fd is None:
            raise OSError("not open for reading")
        return os.read(self.host_fd, n)

    def write(self, data: bytes) -> int:
        """``data`` to the host descriptor, if there is one: the count written."""
        if self.host_fd is None:
            raise OSError("not open for writing")
        return os.write(self.host_fd, data)

    def seek(self, offset: int, whence: int) -> int:
        """lseek: the host descriptor's, if there is one (a pipe or terminal says ESPIPE)."""
        if self.host_fd is None:
            raise OSError(29, "illegal seek")  # ESPIPE, as for a pipe
        return os.lseek(self.host_fd, offset, whence)

    def close(self) -> None:
        """Release what the description holds on the host (nothing, by default)."""


class Sink(OpenFile):
    """stdout/stderr: everything written is kept, and handed to ``echo`` if given."""

    writable = True

    def __init__(self, echo: Callable[[bytes], None] | None = None) -> None:
        self.data = bytearray()
        self.echo = echo

    def write(self, data: bytes) -> int:
        self.data += data
        if self.echo is not None:
            self.echo(bytes(data))
        return len(data)


class Input(OpenFile):
    """stdin: a byte string given at spawn, then end of file."""

    readable = True

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read(self, n: int) -> bytes:
        chunk = self.data[self.pos : self.pos + n]
        self.pos += len(chunk)
        return chunk


@dataclass(frozen=True)
class CrashReport:
    """Why a process died of a signal, for people: where and on what instruction."""

    signal: int
    eip: int
    reason: str
    address: int | None = None
    instruction: str = ""

    @property
    def signal_name(self) -> str:
        return SIGNAL_NAMES.get(self.signal, f"signal {self.signal}")

    def __str__(self) -> str:
        where = f" at 0x{self.address:08x}" if self.address is not None else ""
        insn = f": {self.instruction}" if self.instruction else ""
        return f"{self.signal_name} ({self.reason}{where}), EIP 0x{self.eip:08x}{insn}"


@dataclass(eq=False)
class Process:
    """One user process of the machine."""

    pid: int
    path: str
    argv: list[str]
    env: dict[str, str]
    space: AddressSpace
    image: Image
    entry_esp: int
    stdin: OpenFile
    stdout: OpenFile
    stderr: OpenFile
    cwd: bytes = b"/"
    umask: int = 0o022
    uid: int = 0
    gid: int = 0
    state: State = State.RUNNABLE
    context: UcContext | None = None
    """Saved CPU state while not running; None until it first runs."""
    brk_start: int = 0
    brk: int = 0
    tls: list[bytes] = field(default_factory=lambda: [bytes(8)] * 3)
    fds: dict[int, OpenFile] = field(default_factory=dict)
    cloexec: set[int] = field(default_factory=set)
    """Descriptors with FD_CLOEXEC set."""
    exit_status: int | None = None
    signal: int | None = None
    crash: CrashReport | None = None
    instructions: int = 0
    """Instructions executed while this process was on the CPU."""
    tid_address: int = 0
    robust_list: int = 0
    sigactions: dict[int, bytes] = field(default_factory=dict)
    sigmask: int = 0

    def __post_init__(self) -> None:
        self.comm = Path(self.path).name.encode()[:15]
        """The task name (Linux's comm: at most 15 bytes plus NUL)."""
        self.fds.update({0: self.stdin, 1: self.stdout, 2: self.stderr})
        self.brk_start = self.brk = self.image.brk

    def __repr__(self) -> str:
        ended = "" if self.alive else f", returncode={self.returncode}"
        return f"Process(pid={self.pid}, name={self.name!r}, state={self.state.value}{ended})"

    @property
    def name(self) -> str:
        return self.comm.decode(errors="replace")

    @property
    def alive(self) -> bool:
        return self.state is State.RUNNABLE

    @property
    def returncode(self) -> int | None:
        """As ``subprocess`` reports it: the exit status, or minus the fatal signal."""
        if self.state is State.EXITED:
            return self.exit_status
        if self.state is State.KILLED:
            return -(self.signal or 0)
        return None

    def output(self) -> tuple[str, str]:
        """(stdout, stderr) collected in memory, decoded as UTF-8 ("" for a host stream)."""
        return tuple(  # type: ignore[return-value]
            f.data.decode(errors="replace") if isinstance(f, Sink) else ""
            for f in (self.stdout, self.stderr)
        )

    def lowest_free_fd(self) -> int:
        fd = 0
        while fd in self.fds:
            fd += 1
        return fd

    def close_files(self) -> None:
        for f in self.fds.values():
            f.close()
        self.fds.clear()
        self.cloexec.clear()
