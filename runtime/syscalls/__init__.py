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

The calls live in one module per kind (``process``, ``memory``, ``clock``, ``files``,
``paths``, ``fds``, ``stat``, ``metadata``), each
registering its functions with ``table.syscall``; ``abi`` holds the Linux numbers they
share. This package imports the call modules, so ``TABLE`` is full once it is imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dprobes.runtime.addrspace import GuestFault
from dprobes.runtime.process import Process
from dprobes.runtime.syscalls import (  # noqa: F401 (they register)
    clock,
    fds,
    files,
    memory,
    metadata,
    paths,
    process,
    stat,
)
from dprobes.runtime.syscalls.abi import EFAULT, EINVAL, EIO, ENOMEM, ENOSYS
from dprobes.runtime.syscalls.table import NAMES, TABLE

if TYPE_CHECKING:
    from dprobes.runtime.machine import Machine

__all__ = ["NAMES", "TABLE", "dispatch"]


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
