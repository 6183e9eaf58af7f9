"""Firing a user-space probe: trap3, the handler, the out-of-line step, trap1.

On the int3 (vector 3, EIP = probe address + 1) the record's handler runs in the VM
against the trapping process, unless the pass count says to skip this hit. Then the
probed instruction runs once from a copy in the process's out-of-line slot page (its
bytes as they are now in the process, which may have rewritten its private copy: only
the first byte comes from the probe record), single-stepped with TF; the copy is
followed by an int3 as a backstop for an instruction that clears TF itself (popf).
``push r32``, the usual first instruction of a function, is emulated instead of stepped
(DProbes 1.x emulated some opcodes too). At the debug trap
(vector 1) EIP and the stack are repaired (``xol.finish_step``), the hit is counted
(``max_hits`` disables the probe) and only now is the log record written, as DProbes
wrote it at trap1. If the probed instruction faults instead (a failing BOUND raises #BR,
vector 5), only with ``logonfault = yes`` is the hit counted (max_hits not checked) and
the log written (even after ``abort``), as 5.0's fault handler did; then
the fault goes to the process as Linux delivers it (SIGSEGV for #BR), reported at the
original instruction. ``abort`` writes nothing, ``rem`` removes the probe after this hit,
``exit_to`` is recorded (the exits come later).

Re-entry: the handler is Python on the host and never runs guest code, so no probe can
be hit while it runs; the window where trap3 can be re-entered is the probed
instruction's step (an ``int 0x80`` stepped with TF enters the kernel before trap1). A
kernel probe hit there is removed quietly and for good, as DProbes' recursion path did:
its original byte goes back, the record becomes REMOVED with a note, and the kernel
runs on without the handler.

This is the reference path. With native hooks (``runtime.native_probes``) a probe that has
been hit here once may be served natively from then on; a native hit that needs this path
half-way through is adopted (``adopt``) and finished here, by the same methods.
"""

from __future__ import annotations

import contextlib
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from dprobes.kernel_layout import KERNEL_BASE
from dprobes.runtime.addrspace import GuestFault, Prot
from dprobes.runtime.clock import realtime_ns_at
from dprobes.runtime.logtargets import HitInfo, LogRecord
from dprobes.runtime.physmem import PAGE_MASK, PAGE_SHIFT, PAGE_SIZE
from dprobes.runtime.probe_context import ProbeContext
from dprobes.runtime.records import ProbeRecord, RecordStatus
from dprobes.runtime.traps import BREAKPOINT, DEBUG, Trap
from dprobes.runtime.xol import (
    MAX_INSN_LENGTH,
    RETURN_ADDRESS,
    TRAP_FLAG,
    StepKind,
    StepPlan,
    finish_step,
    plan_step,
)
from dprobes.vm.api import FireResult, writes_log
from dprobes.vm.interp import ExitKind
from dprobes.vm.logrecord import timeval
from dprobes.vm.program import LogField

if TYPE_CHECKING:
    from dprobes.runtime.machine import Machine
    from dprobes.runtime.native_probes import NativeProbes
    from dprobes.runtime.probes import LoadedProgram, ProbeManager
    from dprobes.runtime.process import Process

SLOT_SIZE = 32
SLOTS_PER_PAGE = PAGE_SIZE // SLOT_SIZE


class Outcome(NamedTuple):
    """What a handler's run means for the hit: how it ended and what it logged."""

    exit: ExitKind
    exit_to: int | None
    major: int
    minor: int
    log: bytes
    ex_log: bytes

    @classmethod
    def of(cls, result: FireResult) -> Outcome:
        return cls(
            result.exit, result.exit_to, result.major, result.minor, result.log, result.ex_log
        )


_PID, _UID, _CSEIP, _SSESP, _TSC, _PROCNAME = (
    int(flag)
    for flag in (
        LogField.PID,
        LogField.UID,
        LogField.CSEIP,
        LogField.SSESP,
        LogField.TSC,
        LogField.PROCNAME,
    )
)  # plain ints: IntFlag operations cost microseconds


def hit_info(
    fields: LogField,
    executed: int,
    pid: int,
    uid: int,
    cs: int,
    eip: int,
    ss: int,
    esp: int,
    procname: str,
) -> HitInfo:
    """The log header's view of a hit at instruction ``executed`` of the machine: what the
    program's log ``fields`` select, zero (or empty) elsewhere. A record holds nothing its
    header does not show, so the native hook need not read (or keep) the rest."""
    selected = int(fields)
    seconds, microseconds = timeval(realtime_ns_at(executed) if selected & _TSC else 0)
    cseip, ssesp = selected & _CSEIP, selected & _SSESP
    return HitInfo(
        pid=pid if selected & _PID else 0,
        uid=uid if selected & _UID else 0,
        cs=cs if cseip else 0,
        eip=eip if cseip else 0,
        ss=ss if ssesp else 0,
        esp=esp if ssesp else 0,
        seconds=seconds,
        microseconds=microseconds,
        procname=procname if selected & _PROCNAME else "",
    )


@dataclass(slots=True)
class PendingStep:
    """A process between its probe's int3 and the end of the out-of-line step."""

    loaded: LoadedProgram
    record: ProbeRecord
    plan: StepPlan
    slot: int
    result: Outcome | None  # None: the pass count skipped the handler
    trap_flag: int  # TF as the program had it
    hit: HitInfo


class StepTracker:
    """The probe manager's trap handler and the per-process out-of-line slots."""

    def __init__(self, manager: ProbeManager) -> None:
        self.manager = manager
        self.pending: dict[int, PendingStep] = {}
        self.slot_pages: dict[int, int] = {}  # pid -> slot page address
        self.slot_code: dict[tuple[int, int], bytes] = {}  # (pid, slot) -> bytes there
        self.slot_numbers: dict[int, int] = {}  # id(record) -> slot, in order of first hit
        self.plans: dict[tuple[bytes, int], StepPlan] = {}  # (bytes stepped, address)
        self._after_step = manager.machine.cpu.batch(("esp", "eflags"))
        self.native: NativeProbes | None = None

    def forget(self, process: Process) -> None:
        self.pending.pop(process.pid, None)
        self.slot_pages.pop(process.pid, None)

    def handle_trap(self, machine: Machine, process: Process, trap: Trap) -> bool:
        if self.manager.kmod.handle_trap(machine, process, trap):
            return True  # a probe in a kernel module (ring 0)
        step = self.pending.get(process.pid)
        if step is None and self.native is not None:
            step = self.native.adopt(process, stepping=True)
            if step is not None:
                self.pending[process.pid] = step
        if step is not None:
            if trap.vector == DEBUG or (
                trap.vector == BREAKPOINT and trap.instruction == step.slot + step.plan.length
            ):
                self.finish(
                    machine, process, step, trap.eip if trap.vector == DEBUG else trap.instruction
                )
                return True
            if trap.vector == BREAKPOINT and self._reentered(trap.instruction):
                return True
            return self._faulted(machine, process, step, trap)
        if trap.vector == BREAKPOINT:
            if trap.instruction >= KERNEL_BASE:
                return self._kernel_hit(machine, process, trap.instruction)
            return self._hit(machine, process, trap.instruction)
        return False

    def _kernel_hit(self, machine: Machine, process: Process, address: int) -> bool:
        """trap3 in ring 0: ``push r`` is the kernel's registers, ``push u`` the user
        registers in the pt_regs frame at the top of current's kernel stack; the log's pid
        and procname are current's."""
        found = self.manager.lookup_kernel(address)
        kernel = machine.guest_kernel
        if found is None or kernel is None:
            return False
        loaded, record = found
        registers = machine.cpu.registers()
        current = kernel.current_task()
        hit = hit_info(
            loaded.log_fields,
            machine.clock.ticks,
            current.pid,
            current.uid,
            registers["cs"],
            address,
            registers["ss"],
            registers["esp"],
            current.comm,
        )
        outcome = self.run_handler(
            machine, process, loaded, record, registers, current.user_registers
        )
        return self.continue_hit(process, loaded, record, address, registers, hit, outcome)

    # --- trap3 -------------------------------------------------------------------------

    def _reentered(self, address: int) -> bool:
        """A breakpoint while a hit is being handled: if it is a kernel probe's, remove
        that probe quietly and for good and run the original instruction."""
        found = self.manager.lookup_kernel(address)
        if found is None:
            return False
        loaded, record = found
        record.notes.append("trap3 re-entered while a probe hit was handled: removed quietly")
        self.manager.disarm(loaded, record, RecordStatus.REMOVED)
        self.manager.machine.cpu.write_registers({"eip": address})
        return True

    def _hit(self, machine: Machine, process: Process, address: int) -> bool:
        vma = process.space.find_vma(address)
        if vma is None or vma.file is None:
            return False
        found = self.manager.lookup(vma.file, vma.offset + address - vma.start)
        if found is None:
            return False  # somebody else's int3: SIGTRAP as usual
        loaded, record = found
        cpu = machine.cpu
        registers = cpu.registers()
        hit = hit_info(
            loaded.log_fields,
            machine.clock.ticks,
            process.pid,
            process.uid,
            registers["cs"],
            address,  # 5.0's header eip is the probe's address (the trap's EIP - 1)
            registers["ss"],
            registers["esp"],
            process.name,
        )
        outcome = self.run_handler(machine, process, loaded, record, registers, None)
        return self.continue_hit(process, loaded, record, address, registers, hit, outcome)

    def run_handler(
        self,
        machine: Machine,
        process: Process,
        loaded: LoadedProgram,
        record: ProbeRecord,
        registers: dict[str, int],
        user: dict[str, int] | None,
    ) -> Outcome | None:
        """Run the record's handler unless the pass count skips this hit (None); apply
        its register writes."""
        if not record.begin_hit():
            return None
        self.manager.vm_state_to_python()
        context = ProbeContext(machine, process, registers, user_registers=user)
        outcome = Outcome.of(loaded.vm.fire(record.index, context))
        if context.changes:
            machine.cpu.write_registers(
                {k: v for k, v in context.changes.items() if k not in ("fs", "gs")}
            )
        return outcome

    def plan(self, process: Process, record: ProbeRecord, address: int) -> StepPlan:
        """How to step the probed instruction as it is now in the process's memory: the
        file's bytes while the page is the page cache's, the private copy's bytes (but
        the probed first byte, under the int3) once the process has its own."""
        code = record.original
        pte = process.space.page_of(address)
        if pte is not None and not pte.shared and pte.swap_slot is None:
            code = code[:1] + self._private_code(process, pte.frame, address)[1:]
        key = (code, address)
        plan = self.plans.get(key)
        if plan is None:
            plan = self.plans[key] = plan_step(code, address)
        return plan

    def _private_code(self, process: Process, frame: int, address: int) -> bytes:
        """Up to MAX_INSN_LENGTH bytes at ``address`` of the process, whose page is
        ``frame``; fewer where the next page cannot be read."""
        offset = address & PAGE_MASK
        n = min(MAX_INSN_LENGTH, PAGE_SIZE - offset)
        paddr = frame << PAGE_SHIFT | offset
        code = bytes(self.manager.machine.memory.bytes[paddr : paddr + n])
        # where the next page cannot be read, the instruction ends before it or faults there
        with contextlib.suppress(GuestFault):
            if n < MAX_INSN_LENGTH:
                code += process.space.read(address + n, MAX_INSN_LENGTH - n, user=False)
        return code

    def continue_hit(
        self,
        process: Process,
        loaded: LoadedProgram,
        record: ProbeRecord,
        address: int,
        registers: dict[str, int],
        hit: HitInfo,
        outcome: Outcome | None,
    ) -> bool:
        """After the handler (or the pass count's skip): step the probed instruction."""
        if outcome is not None and outcome.exit is ExitKind.EXIT_TO:
            self.manager.exits.append((process.pid, outcome.exit_to or 0, loaded.name))
        cpu = self.manager.machine.cpu
        plan = self.plan(process, record, address)
        flags = registers["eflags"]
        step = PendingStep(loaded, record, plan, 0, outcome, flags & TRAP_FLAG, hit)
        if not step.trap_flag and self._emulate_push(process, plan, registers):
            self.post_step(step, wrote_log=True)
            if self.native is not None:
                self.native.offer(process, step)
            return True
        step.slot = self._slot(process, record, plan)
        self.pending[process.pid] = step
        cpu.write_registers({"eflags": flags | TRAP_FLAG, "eip": step.slot})
        return True

    def _emulate_push(self, process: Process, plan: StepPlan, registers: dict[str, int]) -> bool:
        """Run ``push r32`` (the usual first instruction of a function) without stepping it,
        as DProbes 1.x emulated some opcodes (DP_REC_OPCODE_EMULATED). False: step it."""
        if plan.kind is not StepKind.PUSH_R32:
            return False
        esp = (registers["esp"] - 4) & 0xFFFFFFFF
        value = registers[plan.pushed]
        data = struct.pack("<I", value)
        pte = process.space.page_of(esp)
        if (
            pte is not None
            and pte.writable
            and pte.swap_slot is None
            and esp & PAGE_MASK <= PAGE_SIZE - 4
        ):  # the common case: a present, writable stack page
            paddr = pte.frame << PAGE_SHIFT | esp & PAGE_MASK
            self.manager.machine.memory.bytes[paddr : paddr + 4] = data
        else:
            try:
                process.space.write(esp, data)
            except GuestFault:
                return False  # let the CPU raise the real fault from the slot
        self.manager.machine.cpu.write_registers({"esp": esp, "eip": plan.address + 1})
        return True

    def _slot(self, process: Process, record: ProbeRecord, plan: StepPlan) -> int:
        """Put the instruction (and a backstop int3) in this probe's slot of the process."""
        space = process.space
        page = self.slot_pages.get(process.pid)
        if page is None:
            page = space.find_free(PAGE_SIZE)
            space.map(page, PAGE_SIZE, Prot.READ | Prot.EXEC, name="[dprobes-xol]")
            self.slot_pages[process.pid] = page
        number = self.slot_numbers.setdefault(id(record), len(self.slot_numbers))
        slot = page + number % SLOTS_PER_PAGE * SLOT_SIZE
        code = plan.code + b"\xcc"
        if self.slot_code.get((process.pid, slot)) != code:
            space.write(slot, code, force=True)
            self.slot_code[(process.pid, slot)] = code
        return slot

    # --- trap1 -------------------------------------------------------------------------

    def finish(self, machine: Machine, process: Process, step: PendingStep, eip: int) -> None:
        """The step ended at ``eip`` (a hit of this path, or one adopted from a native hit
        that could not finish it): repair EIP and the stack, then count the hit."""
        self.pending.pop(process.pid, None)
        cpu = machine.cpu
        esp, flags = self._after_step.read()
        top = 0
        if step.plan.kind in RETURN_ADDRESS or step.plan.kind is StepKind.PUSHF:
            top = struct.unpack("<I", process.space.read(esp, 4, user=False))[0]
        repaired = finish_step(step.plan, step.slot, eip, top, bool(step.trap_flag))
        if repaired.stack_word is not None:
            self._write_stack(machine, process, esp, struct.pack("<I", repaired.stack_word))
        flags = flags & ~TRAP_FLAG | step.trap_flag
        cpu.write_registers({"eflags": flags, "eip": repaired.eip})
        self.post_step(step, wrote_log=True)
        if self.native is not None:
            self.native.offer(process, step)

    @staticmethod
    def _write_stack(machine: Machine, process: Process, esp: int, data: bytes) -> None:
        """A store to the stack of the stepped instruction (a kernel stack at a kernel probe)."""
        if esp >= KERNEL_BASE and machine.guest_kernel is not None:
            machine.guest_kernel.write(esp, data)
        else:
            process.space.write(esp, data)

    def _faulted(self, machine: Machine, process: Process, step: PendingStep, trap: Trap) -> bool:
        """The probed instruction faulted: as 5.0's ``dp_fault_handler``, only with
        logonfault is the hit counted (max_hits unchecked) and the log written, even after
        ``abort``; then Linux's default."""
        del self.pending[process.pid]
        cpu = machine.cpu
        original = step.plan.address + (trap.instruction - step.slot)
        flags = cpu.reg("eflags") & ~TRAP_FLAG | step.trap_flag
        cpu.write_registers({"eflags": flags, "eip": original & 0xFFFFFFFF})
        record, result = step.record, step.result
        if record.point.logonfault:
            record.count_fault()
            self._emit(step)
        if result is not None and result.exit is ExitKind.REM:
            self.manager.disarm(step.loaded, record, RecordStatus.REMOVED)
        return False

    def _emit(self, step: PendingStep) -> None:
        """Write the hit's log record (nothing if the handler did not run)."""
        result = step.result
        if result is not None:
            self.manager.emit(
                step.loaded,
                LogRecord(result.major, result.minor, step.loaded.log_fields, step.hit, result.log),
                result.ex_log,
            )

    def post_step(self, step: PendingStep, wrote_log: bool) -> None:
        """Count the hit, write its log (if ``wrote_log``), disable or remove the probe."""
        record, result, manager = step.record, step.result, self.manager
        record.end_hit()
        if result is not None and wrote_log and writes_log(result.exit):
            self._emit(step)
        if result is not None and result.exit is ExitKind.REM:
            manager.disarm(step.loaded, record, RecordStatus.REMOVED)
        elif RecordStatus.DISABLED in record.status:
            manager.disarm(step.loaded, record, RecordStatus.DISABLED)
