"""Native probe hits: the Python side of the native hook (``runtime.native``).

A probe is served natively in a process once the Python path (``runtime.trap3``) has hit
it there: that hit planned the step and, for a stepped instruction, set up the process's
out-of-line slot. ``offer`` then puts a ``ProbeEntry`` in the process's native table if
the probe can be served without Python: its handler is compiled (tier ``jit``, or
``auto`` once hot), uses only memory, registers 0..15 (writing only the general ones: a
segment register write is loaded by the CPU, which may refuse it, or, for fs/gs, not
applied at all), pid/task/processor, no heap, IO, cpuid/MSR, segment or ``callk``
service (read from the instruction table's host column, ``vm.isa.host_needs``), and its
instruction is one the hook steps (not ``pushf``). Kernel probes are never offered:
their ``push u`` (current's pt_regs frame), ``push task`` (current) and kernel memory reads
are the Python path's.

Three kinds of shared state need care:

* VM state: the per-CPU RPN stack, the last exception code and the globals are shared
  by all programs, the locals belong to each. While native hits run, one JIT runner's
  native state (``Hook.owner``) holds the shared part and each runner its locals;
  ``to_python`` copies them back into the Python lists (before a Python-path hit, around
  every stretch of emulation, for ``getvars``) and ``to_native`` copies the lists in.
* Translations: the hook's software TLB holds host addresses of guest pages. It is
  emptied whenever the CPU's TLB is flushed and when a COW break moves a page.
* Code: an entry keeps its instruction's step (the slot's copy). A probe in code the
  guest may rewrite (``AddressSpace.writable_code``) is never offered, and ``mprotect``
  making code writable drops the entries there (``_invalidated``), so such a probe is
  served by the Python path, which plans each step from the bytes then in memory.
* Log records: native hits append packed records to a ring; ``drain`` hands them to the
  probe manager's journal in order, before any record the Python path emits and before
  every system call (so log targets and the program's output interleave as they would
  with Python hooks).

A Python exception in any callback stops emulation and is raised when it returns.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from unicorn.unicorn_py3.unicorn import uclib

from dprobes.runtime import ring
from dprobes.runtime.addrspace import KERNEL_BASE, Prot
from dprobes.runtime.journal import Emitted, Packed, PackedChunk
from dprobes.runtime.logformat.writer import probe_log
from dprobes.runtime.logtargets import HitInfo, LogRecord
from dprobes.runtime.native import hook as native_hook
from dprobes.runtime.native import lookup, services
from dprobes.runtime.native.layout import (
    DRAIN,
    FILL,
    GENERAL_REGISTERS,
    HANDOVER,
    INTERRUPT,
    PERM_NO_CACHE,
    PERM_READ,
    PERM_WRITE,
    STAGE_FINISH,
    STAGE_STEP,
    TABLE_SIZE,
    Hook,
    ProbeEntry,
    ProcessSlot,
)
from dprobes.runtime.native.registers import EFLAGS, EIP, ESP
from dprobes.runtime.native.step import STEPPED
from dprobes.runtime.physmem import PAGE_SHIFT, PAGE_SIZE
from dprobes.runtime.ring import HEAD, header_layout
from dprobes.runtime.trap3 import SLOTS_PER_PAGE, Outcome, PendingStep, hit_info
from dprobes.runtime.uc_registers import GENERAL_UC_IDS
from dprobes.runtime.xol import StepKind, StepPlan
from dprobes.vm.api import writes_log
from dprobes.vm.interp import ExitKind
from dprobes.vm.isa import HostNeed, Operand, host_needs
from dprobes.vm.jit.embed import EXIT_KINDS, HOST_CALLBACKS
from dprobes.vm.program import LogField, Program
from dprobes.vm.registers import REGISTERS_BY_NAME, SEGMENT_REGISTERS

if TYPE_CHECKING:
    from dprobes.runtime.addrspace import AddressSpace
    from dprobes.runtime.logformat.writer import ProbeLog
    from dprobes.runtime.machine import Machine
    from dprobes.runtime.probes import LoadedProgram, ProbeManager
    from dprobes.runtime.process import Process
    from dprobes.runtime.records import ProbeRecord
    from dprobes.vm.jit.embed import JitRunner

MEMORY = HostNeed.MEMORY_READ | HostNeed.MEMORY_WRITE
SERVED = MEMORY | HostNeed.REGISTER_READ | HostNeed.REGISTER_WRITE | HostNeed.PROCESS
"""What the native hook serves a handler (``runtime.native.services``): guest memory, the
general registers (``host_needs`` makes every other register, and a segment register
write, a host call), pid/task/processor. Not the heap, I/O ports or host calls."""


class Served(NamedTuple):
    """A probe at one address of one process as the native hook serves it (``ident``)."""

    loaded: LoadedProgram
    record: ProbeRecord
    plan: StepPlan
    slot: int
    pid: int


def _from_native(method: Callable[..., None]) -> Callable[..., None]:
    """A callback native code makes: Python work that may have touched the VMs' lists
    (a Python hit, a log hook reading variables) hands the VM state back before native
    code runs on, and an exception never unwinds through native code: it stops
    emulation and is raised when emulation returns."""

    @functools.wraps(method)
    def callback(self: NativeProbes, *args: int) -> None:
        try:
            method(self, *args)
            self.to_native()
        except BaseException as exc:
            self._fail(exc)

    return callback


def python_only_reason(program: Program, probe: int) -> str | None:
    """Why this probe's handler needs the Python path, or None if it can run natively."""
    point = program.probes[probe]
    if point.heap_size:
        return "the probe has a heap (served by a Python helper)"
    for insn in program.instructions(probe):
        if not host_needs(insn.op, insn.operand) & ~SERVED:
            continue
        if insn.op.operand is not Operand.REG:
            return f"{insn.op.mnemonic} needs a Python host service"
        if insn.operand < GENERAL_REGISTERS:
            return "segment register writes are checked (or, fs/gs, dropped) by Python"
        return f"register {insn.operand:#x} is served through Python"
    return None


def register_reads(program: Program, probe: int) -> set[int]:
    """The general registers (dprobes indices) this probe's handler reads (``push r``,
    ``push u``)."""
    return {
        insn.operand
        for insn in program.instructions(probe)
        if insn.op.host & HostNeed.REGISTER_READ and insn.operand < GENERAL_REGISTERS
    }


def hit_reads(
    program: Program, probe: int, fields: LogField, push_reg: int | None, window: bool
) -> set[int]:
    """The registers a native hit of this probe reads after EIP (which finds the probe),
    for one batched read: EFLAGS, the handler's, ESP for the stack window, the emulated
    push and the log header, the pushed register. Not the segment registers: unicorn
    stores two bytes of them, so the hook reads them on their own into a cleared word."""
    reads = register_reads(program, probe) | {EFLAGS}
    if window or push_reg is not None or LogField.SSESP in fields:
        reads.add(ESP)
    if push_reg is not None:
        reads.add(push_reg)
    return reads - SEGMENT_REGISTERS - {EIP}


def accesses_memory(program: Program, probe: int) -> bool:
    """Whether this probe's handler reads or writes guest memory (then the hook offers it
    the stack page as its direct window)."""
    return any(insn.op.host & MEMORY for insn in program.instructions(probe))


class NativeProbes:
    """The native hook of one probe manager: its tables, its ring and its callbacks."""

    def __init__(self, manager: ProbeManager) -> None:
        self.manager = manager
        self.machine: Machine = manager.machine
        cpu = self.machine.cpu
        self.hook = hook = Hook()
        self.address = ctypes.addressof(hook)
        hook.uc = ctypes.cast(cpu.uc._uch, ctypes.c_void_p).value
        for field, fn in (
            ("reg_read", uclib.uc_reg_read),
            ("reg_write", uclib.uc_reg_write),
            ("reg_read_batch", uclib.uc_reg_read_batch),
            ("emu_stop", uclib.uc_emu_stop),
        ):
            setattr(hook, field, ctypes.cast(fn, ctypes.c_void_p).value)
        self._callbacks = (
            INTERRUPT(self._interrupt),
            HANDOVER(self._handover),
            FILL(self._fill),
            DRAIN(self._ring_full),
        )  # kept alive
        for field, callback in zip(
            ("python_interrupt", "python_handover", "python_fill", "python_drain"),
            self._callbacks,
            strict=True,
        ):
            setattr(hook, field, ctypes.cast(callback, ctypes.c_void_p).value)
        hook.executed = cpu.counter.executed_address
        self._ring_view = memoryview(b"")
        self._drained = 0  # bytes of the ring already handed to the manager
        self._new_ring()
        hook.reg_ids[:] = GENERAL_UC_IDS
        native = native_hook.addresses()
        hook.host.ctx = self.address
        hook.host.registers = ctypes.addressof(hook.registers)
        for name, _ in HOST_CALLBACKS:
            setattr(hook.host, name, native[services.symbol(name)])
        self.processes: dict[int, ProcessSlot] = {}
        self.names: dict[int, str] = {}
        self.tables: dict[int, dict[int, ProbeEntry]] = {}  # pid -> address -> entry
        self.idents: list[Served] = []
        self._entries: list[ProbeEntry] = []  # never freed: a pending hit may point here
        self._ident_of: dict[tuple[int, int, int], int] = {}  # (pid, id(record), address);
        # ids stay unique: ``idents`` keeps every record it names alive
        self.runners: dict[int, JitRunner] = {}  # state address -> runner
        self._reasons: dict[tuple[int, int], tuple[LoadedProgram, str | None]] = {}
        self.python_owns = True
        self.error: BaseException | None = None
        cpu.translation_listeners.append(self.flush_tlb)
        self.machine.on_switch.append(self._switch)
        self.machine.on_invalidate.append(self._invalidated)
        self.machine.on_process_exit.append(self._exit)
        self.machine.around_slice.append((self._enter, self._leave))
        cpu.use_native_interrupt_hook(native[native_hook.ENTRY], self.address)
        if self.machine.current is not None:
            self._switch(self.machine.current)

    @property
    def hits(self) -> int:
        """Probe hits the native hook began (some finished by the Python path)."""
        return self.hook.hits

    # --- offering probes ----------------------------------------------------------------

    def offer(self, process: Process, step: PendingStep) -> None:
        """After the Python path finished a hit: serve this probe natively from now on, if
        it can be."""
        loaded, record, plan = step.loaded, step.record, step.plan
        if plan.address >= KERNEL_BASE:
            return  # a kernel probe: push u, push task and kernel memory need the Python path
        table = self.tables.setdefault(process.pid, {})
        if not record.armed or plan.address in table or len(table) >= TABLE_SIZE // 2:
            return
        if process.space.writable_code(plan.address):
            return  # the guest may rewrite the instruction: its step is planned each hit
        handler = loaded.vm.compiled(record.index)
        if (
            plan.kind not in STEPPED
            or handler is None
            or self._reason(loaded, record.index) is not None
        ):
            return
        push = plan.kind is StepKind.PUSH_R32
        if not push:
            numbers = self.manager.steps.slot_numbers
            if not step.slot or numbers.get(id(record), SLOTS_PER_PAGE) >= SLOTS_PER_PAGE:
                return  # no slot of its own (the Python path may rewrite a shared one)
        self.to_python()  # the new runner starts from the Python lists
        runner = loaded.vm.runner
        self.runners[ctypes.addressof(runner.state)] = runner
        point = loaded.program.probes[record.index]
        push_reg = REGISTERS_BY_NAME[plan.pushed].index if push else None
        window = accesses_memory(loaded.program, record.index)
        entry = ProbeEntry(
            address=plan.address,
            kind=plan.kind.value,
            length=plan.length,
            slot=step.slot,
            push_reg=push_reg or 0,
            ident=self._ident(process, loaded, record, plan, step.slot),
            ex_mask=point.ex_mask,
            major=point.major & 0xFFFF,
            minor=point.minor & 0xFFFF,
            probe_offset=point.offset & (2**64 - 1),
            fields=loaded.log_fields,
            window=window,
            head_len=HEAD.size + header_layout(loaded.log_fields).packing.size,
            handler=handler.body.address,
            code_base=handler.code_base,
            state=ctypes.addressof(runner.state),
            counters=ctypes.addressof(record.counters),
        )
        self._prefetch(
            entry, hit_reads(loaded.program, record.index, loaded.log_fields, push_reg, window)
        )
        table[plan.address] = entry
        self._entries.append(entry)
        self._publish(process.pid)

    def _prefetch(self, entry: ProbeEntry, registers: set[int]) -> None:
        """Have the entry's hits read ``registers`` into the hook's register window in one
        batch, right after EIP."""
        ordered = sorted(registers)
        values = self.hook.registers.values
        entry.prefetch = sum(1 << index for index in ordered)
        entry.prefetch_count = len(ordered)
        for i, index in enumerate(ordered):
            entry.prefetch_ids[i] = GENERAL_UC_IDS[index]
            entry.prefetch_values[i] = ctypes.addressof(values) + 4 * index

    def _reason(self, loaded: LoadedProgram, probe: int) -> str | None:
        key = (id(loaded), probe)
        cached = self._reasons.get(key)
        if cached is None or cached[0] is not loaded:  # (an id may be reused once freed)
            cached = self._reasons[key] = (loaded, python_only_reason(loaded.program, probe))
        return cached[1]

    def _ident(
        self,
        process: Process,
        loaded: LoadedProgram,
        record: ProbeRecord,
        plan: StepPlan,
        slot: int,
    ) -> int:
        key = (process.pid, id(record), plan.address)
        if key not in self._ident_of:
            self._ident_of[key] = len(self.idents)
            self.idents.append(Served(loaded, record, plan, slot, process.pid))
        return self._ident_of[key]

    def forget(self, record: ProbeRecord) -> None:
        """The record is disarmed: no process serves it natively any more."""
        counters = ctypes.addressof(record.counters)
        for pid in self.tables:
            self._drop(pid, lambda address, entry: entry.counters == counters)

    def _invalidated(self, space: AddressSpace, start: int, end: int) -> None:
        """The PTEs of [start, end) changed: probes there go back to the Python path."""
        for pid in self.tables:
            process = self.machine.processes.get(pid)
            if process is not None and process.space is space:
                self._drop(pid, lambda address, entry: start <= address < end)

    def _drop(self, pid: int, stale: Callable[[int, ProbeEntry], bool]) -> None:
        """Take the process's entries that are ``stale`` out of its native table."""
        table = self.tables[pid]
        gone = [address for address, entry in table.items() if stale(address, entry)]
        for address in gone:
            del table[address]
        if gone:
            self._publish(pid)

    def _publish(self, pid: int) -> None:
        """Rebuild the process's probe table from its entries."""
        lookup.place(self._slot(pid), self.tables.get(pid, {}))

    # --- processes ----------------------------------------------------------------------

    def _slot(self, pid: int) -> ProcessSlot:
        slot = self.processes.get(pid)
        if slot is None:
            slot = self.processes[pid] = ProcessSlot()
            process = self.machine.processes[pid]
            slot.pid, slot.uid = pid, process.uid
            self.names[pid] = process.name
        return slot

    def _switch(self, process: Process) -> None:
        self.hook.proc = ctypes.addressof(self._slot(process.pid))

    def _exit(self, process: Process) -> None:
        slot = self.processes.pop(process.pid, None)
        self.tables.pop(process.pid, None)
        if slot is not None and self.hook.proc == ctypes.addressof(slot):
            self.hook.proc = None

    def adopt(self, process: Process, stepping: bool) -> PendingStep | None:
        """The process's native hit, for the Python path to finish (``stepping``: only a
        hit whose step is under way), or None."""
        slot = self.processes.get(process.pid)
        if slot is None:
            return None
        pending = slot.pending
        if not pending.entry or (stepping and not pending.active):
            return None
        served = self.idents[ProbeEntry.from_address(pending.entry).ident]
        head = pending.head
        outcome = None
        if pending.ran:
            kind = EXIT_KINDS[pending.exit_kind]
            aborted = not writes_log(kind)
            outcome = Outcome(
                kind,
                pending.exit_to if kind is ExitKind.EXIT_TO else None,
                head.major,
                head.minor,
                b"" if aborted else bytes(pending.log[: head.log_len]),
                b"" if aborted else bytes(pending.ex_log[: head.ex_len]),
            )
        hit = self._hit(served, pending.header, 0)
        pending.active, pending.entry = 0, None
        return PendingStep(
            served.loaded, served.record, served.plan, served.slot, outcome, pending.trap_flag, hit
        )

    def _hit(
        self, served: Served, data: bytes | ctypes.Array, at: int, known: ProbeLog | None = None
    ) -> HitInfo:
        """The log header's view of a native hit whose header fields start at ``at``
        (``known``: the probe's part, if already worked out)."""
        fields = served.loaded.log_fields
        got = header_layout(fields).values(data, at)
        known = known or probe_log(served, self.names)
        return hit_info(
            fields,
            got.get("executed", 0),
            known.pid,
            got.get("uid", 0),
            got.get("cs", 0),
            known.eip,
            got.get("ss", 0),
            got.get("esp", 0),
            known.name,
        )

    # --- VM state -------------------------------------------------------------------------

    def to_python(self) -> None:
        """Make the Python lists (stack, ex_code, globals, locals) the current VM state."""
        if self.python_owns:
            return
        hook = self.hook
        if hook.native_ran:
            owner = self.runners.get(hook.owner or 0)
            if owner is not None:
                owner.copy_out_shared()
            for runner in self.runners.values():
                runner.copy_out_locals()
        for runner in self.runners.values():
            runner.forget_selection()
        hook.owner, hook.native_ran = None, 0
        self.python_owns = True

    def to_native(self) -> None:
        """Copy the Python lists into every runner's native state; native hits may run."""
        if not self.python_owns:
            return
        for runner in self.runners.values():
            runner.copy_in()
        self.hook.owner = next(iter(self.runners), None)
        self.python_owns = False

    # --- callbacks from native code -------------------------------------------------------

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self.machine.cpu.uc.emu_stop()

    @_from_native
    def _interrupt(self, vector: int) -> None:
        self.drain()  # records reach log targets before the program's next output
        self.machine.cpu.on_interrupt(vector)

    @_from_native
    def _handover(self, stage: int, eip: int) -> None:
        machine = self.machine
        process = machine.current
        assert process is not None
        step = self.adopt(process, stepping=False)
        assert step is not None, "a handover without a native hit"
        steps = self.manager.steps
        if stage == STAGE_STEP:
            steps.continue_hit(
                process,
                step.loaded,
                step.record,
                step.plan.address,
                machine.cpu.registers(),
                step.hit,
                step.result,
            )
        elif stage == STAGE_FINISH:
            steps.finish(machine, process, step, eip)
        else:
            steps.post_step(step, wrote_log=True)

    def _fill(self, address: int, write: int, out: ctypes._Pointer) -> int:
        """Translate a handler's access for the TLB: 0 (``out``: host page | perms), 1 for
        a fault (as ``AddressSpace.read``/``write`` would raise), -1 on failure."""
        try:
            process = self.machine.current
            if process is None or address >= KERNEL_BASE:
                return 1
            space = process.space
            perms = PERM_READ
            if write:
                frame = space.user_write_frame(address)
                if frame is None:
                    return 1
                perms |= PERM_WRITE
                vma = space.find_vma(address)
                if vma is not None and vma.prot & Prot.EXEC and space.notifier is not None:
                    perms |= PERM_NO_CACHE  # every store into code goes through here
                    space.notifier.code_written(frame << PAGE_SHIFT, PAGE_SIZE)
            else:
                found = space.translate(address, Prot.READ)
                if found is None:
                    return 1
                frame = found[0]
            out[0] = self.machine.memory.host_address + (frame << PAGE_SHIFT) | perms
            return 0
        except BaseException as exc:
            self._fail(exc)
            return -1

    def flush_tlb(self) -> None:
        ctypes.memset(ctypes.addressof(self.hook.tlb), 0, ctypes.sizeof(self.hook.tlb))

    def _new_ring(self) -> None:
        """Append records to a fresh ring. The manager keeps views of the old ring's
        records (not copies), which keep it alive. Every fresh page of records costs a
        page fault, dear on a virtual host, so the ring asks for huge pages."""
        size = ring.RING_BYTES
        buffer = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if hasattr(mmap, "MADV_HUGEPAGE"):
            buffer.madvise(mmap.MADV_HUGEPAGE)
        self._ring_view = memoryview(buffer)
        hook = self.hook
        hook.ring = ctypes.addressof(ctypes.c_char.from_buffer(buffer))
        hook.ring_size, hook.ring_head = size, 0
        self._drained = 0

    def drain(self) -> None:
        """Hand the records appended since the last drain to the probe manager, in order:
        a read-only view of the ring, which never overwrites them."""
        head = self.hook.ring_head
        if head > self._drained:
            chunk = PackedChunk(
                self._ring_view[self._drained : head].toreadonly(),
                self.hook.ring + self._drained,
                self.decode,
            )
            self._drained = head
            self.manager.emit_packed(chunk)

    @_from_native
    def _ring_full(self) -> None:
        self.drain()
        self._new_ring()

    def decode(self, view: Packed) -> list[Emitted]:
        """The manager's view of packed ring records."""
        chunk = bytes(view)
        out, at, idents = [], 0, self.idents
        known: dict[int, ProbeLog] = {}
        while at < len(chunk):
            ident, log_len, ex_len, major, minor = HEAD.unpack_from(chunk, at)
            served = idents[ident]
            loaded = served.loaded
            if ident not in known:
                known[ident] = probe_log(served, self.names)
            hit = self._hit(served, chunk, at + HEAD.size, known[ident])
            log_at = at + HEAD.size + header_layout(loaded.log_fields).packing.size
            ex_at = log_at + log_len
            record = LogRecord(major, minor, loaded.log_fields, hit, chunk[log_at:ex_at])
            out.append(Emitted(loaded.name, record, chunk[ex_at : ex_at + ex_len]))
            at = (ex_at + ex_len + 3) & ~3
        return out

    # --- around emulation ------------------------------------------------------------------

    def _enter(self) -> None:
        self.to_native()

    def _leave(self) -> None:
        self.drain()
        self.to_python()
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        if self.hook.error:
            kind, self.hook.error = self.hook.error, 0
            raise RuntimeError(f"a native probe handler ended in a host error ({kind})")
