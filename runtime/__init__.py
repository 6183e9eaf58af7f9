"""The emulated i386 machine that probes live in (issue 3).

Public names::

    Machine, InstructionLimit, QUANTUM          the machine and its scheduler (machine)
    RunStopped, StoppedBySignal                 run() stopped early (machine; host_signals)
    Process, State, CrashReport                 processes (process)
    Trap, TrapHandler                           CPU exceptions for the probe manager (traps)
    LoadError, Image                            loading static i386 ELF executables (elfload)
    AddressSpace, VMA, PTE, Prot, PageMapping   address spaces, COW and swap (addrspace)
    GuestFault                                  a host access to guest memory failed
    PageCache, GuestFile                        the page cache and its files (pagecache)
    PhysicalMemory, PAGE_SIZE, OutOfFrames      physical frames (physmem)
    CPU                                         unicorn with the runtime's TLB (cpu)
"""

from dprobes.runtime.addrspace import PTE, VMA, AddressSpace, GuestFault, PageMapping, Prot
from dprobes.runtime.cpu import CPU
from dprobes.runtime.elfload import Image, LoadError
from dprobes.runtime.machine import (
    QUANTUM,
    InstructionLimit,
    Machine,
    RunStopped,
    StoppedBySignal,
)
from dprobes.runtime.pagecache import GuestFile, PageCache
from dprobes.runtime.physmem import PAGE_SIZE, OutOfFrames, PhysicalMemory
from dprobes.runtime.process import CrashReport, Process, State
from dprobes.runtime.traps import Trap, TrapHandler

__all__ = [
    "CPU",
    "PAGE_SIZE",
    "PTE",
    "QUANTUM",
    "VMA",
    "AddressSpace",
    "CrashReport",
    "GuestFault",
    "GuestFile",
    "Image",
    "InstructionLimit",
    "LoadError",
    "Machine",
    "OutOfFrames",
    "PageCache",
    "PageMapping",
    "PhysicalMemory",
    "Process",
    "Prot",
    "RunStopped",
    "State",
    "StoppedBySignal",
    "Trap",
    "TrapHandler",
]
