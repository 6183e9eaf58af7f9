"""The Linux i386 system calls the guest programs make, one small function each.

A probed program must run as it would on the DProbes machine, so what the kernel does for
it at ``int $0x80`` is done here: the number in EAX selects a function from ``TABLE``, the
arguments come from EBX, ECX, EDX, ESI, EDI, EBP, and the result (or minus an errno) goes
back in EAX. The set is what a static freestanding or static glibc program needs
(docs/runtime.md lists glibc's start-up calls). Every value a guest can observe comes from the
machine: time from the instruction clock, random bytes from the seeded PRNG, a fixed
``uname``. An unknown number returns -ENOSYS, is reported once by name through
``machine.warn`` and counted in ``machine.unknown_syscalls``; a bad guest pointer returns
-EFAULT. Nothing a guest passes can raise into the host.

The calls live in one module per kind (``process``, ``memory``, ``clock``, ``files``,
``paths``, ``fds``, ``stat``, ``metadata``), each
registering its functions with ``table.syscall``; ``abi`` holds the Linux numbers they
share, ``names`` the name of every i386 number. This package imports the call modules, so
``TABLE`` is full once it is imported.
"""

from __future__ import annotations

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
from dprobes.runtime.syscalls.names import NAMES
from dprobes.runtime.syscalls.table import TABLE, dispatch

__all__ = ["NAMES", "TABLE", "dispatch"]
