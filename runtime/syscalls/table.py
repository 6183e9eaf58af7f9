"""The system-call table: number -> function and number -> name, filled by ``@syscall``.

The modules of the calls register into it when ``dprobes.runtime.syscalls`` imports them;
this module imports none of them, so the table has no import cycle.
"""

from __future__ import annotations

from collections.abc import Callable

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
