"""The RPN virtual machine: instruction table, interpreter and the embeddable API.

Public names::

    VM, FireResult, GlobalVariables          the API (vm.api)
    Context, MemoryContext, MemoryFault      the host interface (vm.context)
    CpuState, ExitKind, RaisedException      interpreter state and results (vm.interp)
    Program, ProgramHeader, Probe            the compiled program (vm.program)

The interpreter runs compiled by mypyc where the install could build it (vm.flavour).
"""

from dprobes.vm.api import VM, FireResult, GlobalVariables
from dprobes.vm.context import Context, MemoryContext, MemoryFault
from dprobes.vm.interp import CpuState, ExitKind, RaisedException
from dprobes.vm.program import Probe, Program, ProgramHeader

__all__ = [
    "VM",
    "Context",
    "CpuState",
    "ExitKind",
    "FireResult",
    "GlobalVariables",
    "MemoryContext",
    "MemoryFault",
    "Probe",
    "Program",
    "ProgramHeader",
    "RaisedException",
]
