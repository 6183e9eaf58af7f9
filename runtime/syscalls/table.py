"""The system-call table (number -> function, filled by ``@syscall``) and its dispatcher.

The modules of the calls register into it when ``dprobes.runtime.syscalls`` imports them;
this module imports none of them, so the table has no import cycle. Names come from the
one i386 name table, ``names.NAMES``; a number nobody registered returns -ENOSYS and is
reported once, by name (``unimplemented_message``), and counted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from dprobes.runtime.addrspace import GuestFault
from dprobes.runtime.physmem import OutOfFrames
from dprobes.runtime.process import Process
from dprobes.runtime.syscalls.abi import EFAULT, EINVAL, EIO, ENOMEM, ENOSYS
from dprobes.runtime.syscalls.names import NAMES

if TYPE_CHECKING:
    from dprobes.runtime.machine import Machine

Syscall = Callable[..., int | None]
TABLE: dict[int, Syscall] = {}


def syscall(number: int, name: str) -> Callable[[Syscall], Syscall]:
    """Register ``fn(machine, process, *args)`` as system call ``number``, which the
    name table must call ``name`` (a check that the number is the intended one)."""
    if NAMES.get(number) != name:
        raise ValueError(f"i386 system call {number} is {NAMES.get(number)!r}, not {name!r}")

    def register(fn: Syscall) -> Syscall:
        TABLE[number] = fn
        return fn

    return register


def unimplemented_message(number: int) -> str:
    """The notice for the first call of a system call the machine does not implement."""
    return f"dpc: guest called unimplemented syscall {number} ({NAMES.get(number, 'unknown')})"


def dispatch(machine: Machine, proc: Process, number: int, args: tuple[int, ...]) -> int | None:
    """Run system call ``number``; the value for EAX, or None if the process is gone."""
    fn = TABLE.get(number)
    if fn is None:
        calls = machine.unknown_syscalls.get(number, 0)
        if not calls:
            machine.warn(unimplemented_message(number))
        machine.unknown_syscalls[number] = calls + 1
        return -ENOSYS
    return host_call(machine, proc, lambda: fn(machine, proc, *args[: fn.__code__.co_argcount - 2]))


def host_call(machine: Machine, proc: Process, call: Callable[[], int | None]) -> int | None:
    """Run the host side of a system call (or of a guest kernel's hypercall): the value
    for EAX, with what the host raised turned into -errno, or None if the process is gone."""
    try:
        return call()
    except GuestFault:
        return -EFAULT
    except OSError as exc:  # a host file said no, or a stop request interrupted a wait
        return -(exc.errno or EIO)
    except (ValueError, OverflowError):  # an argument no check above anticipated
        return -EINVAL
    except OutOfFrames:  # a page fault of the kernel's copy to or from user memory
        machine.kill_out_of_memory(proc)
        return None
    except MemoryError:
        return -ENOMEM
