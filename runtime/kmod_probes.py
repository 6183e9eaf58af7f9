"""Probes in kernel modules (``modtype = kmod``): planted while a module initialises.

As in DProbes 1.3 (dp_insmod/dp_remmod), a kmod program may be inserted before its module
is loaded: its records then wait, with nothing written anywhere. When the module loader
has placed the module in memory, and before its ``init_module`` runs, every record of the
programs naming the module is planted at ``module base + offset`` (an ``address =
absolute`` record at its offset as is), so probes in init code fire. On unload, or when
init fails, the bytes are restored and the records wait again for the next load, which
plants them afresh (REMOVED and DISABLED are cleared, the pass count starts over).

A program names its module by the module's name, its object file (``hello.o``, also
``.ko``) or a path to that file: the compiler reads the object's symbols from it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dprobes.runtime.kmodule import LoadedModule, module_name
from dprobes.runtime.paging import Prot, read_virtual
from dprobes.runtime.records import ProbeRecord, RecordStatus
from dprobes.runtime.trap3 import PendingStep, hit_info
from dprobes.runtime.traps import BREAKPOINT, DEBUG, Trap
from dprobes.runtime.xol import TRAP_FLAG, plan_step
from dprobes.vm.interp import ExitKind
from dprobes.vm.program import ProbeKind

if TYPE_CHECKING:
    from dprobes.runtime.machine import Machine
    from dprobes.runtime.probes import LoadedProgram, ProbeManager
    from dprobes.runtime.process import Process

INT3 = 0xCC
_RECOMPUTED_ON_LOAD = (
    RecordStatus.ACTIVE
    | RecordStatus.REMOVED
    | RecordStatus.DISABLED
    | RecordStatus.MISMATCH
    | RecordStatus.INVALID_OFFSET
    | RecordStatus.DUPLICATE
)


class KmodProbes:
    """The kmod programs of one probe manager, planted and removed with their modules."""

    def __init__(self, manager: ProbeManager) -> None:
        self.manager = manager
        self.loader = manager.machine.modules
        self.programs: list[tuple[LoadedProgram, list[ProbeRecord]]] = []
        """Each inserted kmod program with the records its groups/types selected."""
        self.by_address: dict[int, tuple[LoadedProgram, ProbeRecord]] = {}
        """Planted probes by kernel virtual address (what a ring-0 int3 looks up)."""
        self.stepping: PendingStep | None = None
        """The probe whose original instruction is being single-stepped in ring 0."""
        self.loader.on_placed.append(self.placed)
        self.loader.on_unloaded.append(self.unloaded)

    def insert(self, loaded: LoadedProgram, selected: list[ProbeRecord]) -> None:
        """Plant now if the module is loaded; else the records wait for it."""
        self.programs.append((loaded, selected))
        module = self.loader.loaded.get(module_name(loaded.name))
        for record in selected:
            if module is None:
                self._wait(record, module_name(loaded.name))
            else:
                self._plant(loaded, record, module)

    def lookup(self, address: int) -> tuple[LoadedProgram, ProbeRecord] | None:
        return self.by_address.get(address)

    # --- firing: a ring-0 int3 in module code ------------------------------------------

    def handle_trap(self, machine: Machine, process: Process, trap: Trap) -> bool:
        """A kmod probe's int3 (run the handler, then step the original instruction in
        place with TF, the int3 written back at the debug trap) or the end of its step.
        False: not ours. One CPU and the module's code is not shared with user mode, so
        putting the original byte back for one instruction hides the probe from nobody
        else."""
        step = self.stepping
        if step is not None and trap.vector == DEBUG:
            self.stepping = None
            self._stepped(step)
            return True
        if trap.vector != BREAKPOINT or machine.cpu.reg("cs") & 3:
            return False
        found = self.by_address.get(trap.instruction)
        if found is None:
            return False
        loaded, record = found
        address, cpu, kernel = trap.instruction, machine.cpu, machine.guest_kernel
        registers = cpu.registers()
        current = kernel.current_task() if kernel is not None else None
        pid, procname = (current.pid, current.comm) if current is not None else (0, "")
        hit = hit_info(
            loaded.log_fields,
            machine.clock.ticks,
            pid,
            process.uid,
            registers["cs"],
            address,
            registers["ss"],
            registers["esp"],
            procname,
        )
        outcome = self.manager.steps.run_handler(machine, process, loaded, record, registers, None)
        if outcome is not None and outcome.exit is ExitKind.EXIT_TO:
            self.manager.exits.append((pid, outcome.exit_to or 0, loaded.name))
        flags = cpu.reg("eflags")
        plan = plan_step(record.original, address)
        self.stepping = PendingStep(loaded, record, plan, address, outcome, flags & TRAP_FLAG, hit)
        self._write(address, record.original[0])
        cpu.write_registers({"eflags": flags | TRAP_FLAG, "eip": address})
        return True

    def _stepped(self, step: PendingStep) -> None:
        cpu = self.manager.machine.cpu
        address, record = step.slot, step.record
        if self.by_address.get(address, (None, None))[1] is record:
            self._write(address, INT3)
        cpu.set_reg("eflags", cpu.reg("eflags") & ~TRAP_FLAG | step.trap_flag)
        self.manager.steps.post_step(step, wrote_log=True)

    def forget(self, loaded: LoadedProgram) -> None:
        """The program was removed (its armed records were disarmed already)."""
        self.programs = [entry for entry in self.programs if entry[0] is not loaded]

    # --- the module loader's events --------------------------------------------------

    def placed(self, module: LoadedModule) -> None:
        for loaded, selected in self.programs:
            if module_name(loaded.name) == module.name:
                for record in selected:
                    self._plant(loaded, record, module)

    def unloaded(self, module: LoadedModule) -> None:
        for address, (loaded, record) in list(self.by_address.items()):
            if address in module:
                self.disarm(loaded, record, RecordStatus.NONE)
        for loaded, selected in self.programs:
            if module_name(loaded.name) == module.name:
                for record in selected:
                    record.address = None
                    if not record.status & ~RecordStatus.COMPILED & _RECOMPUTED_ON_LOAD:
                        self._wait(record, module.name)

    # --- the bytes ---------------------------------------------------------------------

    def _wait(self, record: ProbeRecord, name: str) -> None:
        record.notes[:] = [f"pending: module {name} is not loaded"]

    def _plant(self, loaded: LoadedProgram, record: ProbeRecord, module: LoadedModule) -> None:
        point = record.point
        record.status &= ~_RECOMPUTED_ON_LOAD
        record.notes.clear()
        record.actual_opcode = None
        if point.kind is ProbeKind.WATCHPOINT:
            record.notes.append("watchpoint probes are not supported on this machine yet")
            return
        address = point.offset if point.absolute else module.base + point.offset
        offset = address - module.base
        code = module.image.code_map
        if address not in module or code.segment(offset) is None:
            record.refuse(
                RecordStatus.INVALID_OFFSET,
                f"0x{address:x} is not in the code of module {module.name}",
            )
            return
        if not code.is_boundary(offset):
            record.refuse(
                RecordStatus.INVALID_OFFSET, f"offset 0x{offset:x} is not an instruction boundary"
            )
            return
        holder = self.by_address.get(address)
        if holder is not None:
            record.refuse(
                RecordStatus.DUPLICATE, f"0x{address:x} is already probed by {holder[0].name}"
            )
            return
        original = read_virtual(
            self.manager.machine.memory,
            lambda at: self.loader.kernel.translate(at, Prot.READ, user=False),
            address,
            min(16, module.end - address),
        )
        if not self.manager.opcode_ok(record, original[0]):
            return
        record.original, record.address = original, address
        record.counters.count = -point.pass_count
        record.status |= RecordStatus.ACTIVE
        self.by_address[address] = (loaded, record)
        self._write(address, INT3)

    def disarm(self, loaded: LoadedProgram, record: ProbeRecord, status: RecordStatus) -> None:
        """Take one probe out of the module's code."""
        address = record.address
        if address is not None and self.by_address.get(address, (None, None))[1] is record:
            del self.by_address[address]
            self._write(address, record.original[0])
        record.status = (record.status & ~RecordStatus.ACTIVE) | status

    def _write(self, address: int, byte: int) -> None:
        paddr = self.loader.physical(address)
        machine = self.manager.machine
        machine.memory.bytes[paddr] = byte
        machine.invalidate_code(paddr, 1)
