"""The guest kernel on the machine: vmlinux mapped in every address space, entered by
interrupts the runtime delivers, talking to the host through hypercalls (docs/kernel.md).

- Loading: each PT_LOAD segment of ``guest/bin/vmlinux`` goes into fresh frames mapped as
  supervisor pages at its link address in ``KernelPages`` (shared by every address space):
  user code that touches them faults.
- Delivery: unicorn hands ``int $0x80`` to the interrupt hook instead of the IDT, and will
  not load a ring-0 CS/SS by register write. So the runtime does the CPU's part: it writes the
  ring-change frame (EIP, CS, EFLAGS, ESP, SS) at the top of the task's kernel stack, and
  sends the CPU to a user-executable trampoline whose ``lcall`` through a call gate (DPL 3,
  target ring 0, stack from the TSS) makes the privilege change natively; the gate's landing
  pad drops the gate's own words and jumps to ``system_call``. ``iret`` back is native.
  While the trampoline runs, ``gate_open`` (a kernel variable) tells the TLB fill that the
  gate's TSS read and stack pushes are the CPU's own supervisor accesses.
- Tasks: one ``union task_union`` (task_struct + kernel stack) per process in kernel memory,
  filled from the process; ``current`` and the TSS's esp0 follow the process on the CPU. The
  task_struct layout is read from the image's DWARF: the C header is its one definition.
- Timer: every ``tick`` instructions IRQ 0 is delivered to ``IRQ0x00_interrupt`` (from user
  mode through its gate, from kernel mode only with IF set, as a same-ring frame).
- Faults: a page fault in ring 0 resumes at the ``__ex_table`` fixup of the faulting
  instruction (copy_to_user/copy_from_user). A user-mode #DE, #BR or page fault that the
  probe manager declines enters its trap entry (``divide_error``, ``bounds``,
  ``page_fault``) through a gate like a system call; the C handler sends the signal with
  ``HC_FORCE_SIG`` and the host ends the process as the shortcut would. int3 and the debug
  trap stay on the host (the probe manager owns them).
- Heap: ``sys_brk`` keeps the break in ``current->mm`` (filled from the process when its
  task is created); the host only maps and unmaps the pages (HC_MAP_HEAP, HC_UNMAP).
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from unicorn import UcError
from unicorn import x86_const as x86

from dprobes.elf import PF_W, PF_X
from dprobes.runtime import hypercalls, syscalls
from dprobes.runtime.addrspace import KERNEL_BASE, GuestFault, KernelPages, Prot
from dprobes.runtime.cpu import FIXMAP_GDT, KERNEL_CS, KERNEL_DS, STOP_ADDRESS, USER_CS
from dprobes.runtime.kernel_image import KernelImage
from dprobes.runtime.kmodule import LoadedModule, ModuleError, ModuleInitError, module_name
from dprobes.runtime.physmem import PAGE_MASK, PAGE_SHIFT, PAGE_SIZE, PhysicalMemory
from dprobes.runtime.syscalls.abi import EBUSY, EFAULT, EINVAL, ENOENT, ENOEXEC, ENOSYS
from dprobes.runtime.syscalls.files import read_bytes, write_bytes
from dprobes.runtime.syscalls.memory import map_heap
from dprobes.runtime.syscalls.table import host_call
from dprobes.runtime.traps import BOUND, DIVIDE, PAGE_FAULT, Trap

if TYPE_CHECKING:
    from dprobes.runtime.machine import Machine
    from dprobes.runtime.process import Process

SYSCALL_VECTOR = 0x80
TSS_OFFSET = 0x800
"""The TSS lives in the GDT's page, past the 32 descriptors (only ss0:esp0 is used)."""
FIRST_GATE = 20
GATES = {
    pad: FIRST_GATE + i
    for i, pad in enumerate(
        ("system_call_gate", "IRQ0x00_gate", "divide_error_gate", "bounds_gate", "page_fault_gate")
    )
}
"""GDT entry of the call gate into each landing pad of entry.S (consecutive)."""
SYSCALL_GATE, TIMER_GATE = GATES["system_call_gate"], GATES["IRQ0x00_gate"]
TRAP_GATES = {DIVIDE: "divide_error_gate", BOUND: "bounds_gate", PAGE_FAULT: "page_fault_gate"}
"""The user-mode exceptions that enter the kernel (they end in a signal), by vector."""
FIXMAP_TRAMPOLINE = 0xFFFF5000
"""A user-executable kernel page with one ``lcall $gate, $0`` per gate (8 bytes apart, in
GATES order)."""
TASK_AREA = 0xC1000000
"""Where the task unions go, one after the other."""
RING_FRAME = 20
"""Bytes the CPU pushes on a ring change: EIP, CS, EFLAGS, ESP, SS."""
PF_PROTECTION, PF_WRITE, PF_USER = 1, 2, 4
"""Page-fault error code bits: the page was present, the access a write, from user mode."""
IF_FLAG, TRAP_FLAG = 1 << 9, 1 << 8
DEFAULT_TICK = 1_000_000
"""Instructions between two timer interrupts unless told otherwise."""
CALL_BUDGET = 10_000_000
"""Instructions a module entry point called by the host may run before it is stopped."""
MODULE_IMAGE_MAX = 1 << 20
"""The largest module object ``init_module`` takes."""
PT_REGS = ("ebx", "ecx", "edx", "esi", "edi", "ebp", "eax", "ds", "es", "orig_eax")
"""``struct pt_regs`` below the ring-change frame (guest/kernel/include/asm/ptrace.h),
named as the probe VM names the registers."""
USER_FRAME = (*PT_REGS, "eip", "cs", "eflags", "esp", "ss")
"""The whole frame a user-mode entry leaves at the top of the kernel stack (``regs``)."""


@dataclass(frozen=True)
class CurrentTask:
    """What a kernel or kmod probe hit takes from ``current``: the log's pid, uid and
    procname, and ``push u``'s user registers (its pt_regs frame)."""

    pid: int
    uid: int
    comm: str
    user_registers: dict[str, int]


@dataclass
class TimedInsmod:
    """An insmod due when the machine's instruction counter reaches ``at`` (``dpc run
    --insmod MOD.o@N``): done at the first block boundary from there at which the current
    process is in user mode, its init run as that process."""

    at: int
    path: str
    params: dict[str, str]
    loaded_at: int | None = None
    """The counter when the load was made (whether or not it succeeded)."""
    error: str | None = None
    """Why the load failed (None: it loaded, or is still due)."""


def _protection(p_flags: int) -> Prot:
    """A segment's permission bits as page protection (always readable)."""
    return (
        Prot.READ
        | (Prot.WRITE if p_flags & PF_W else Prot.NONE)
        | (Prot.EXEC if p_flags & PF_X else Prot.NONE)
    )


class GuestKernel:
    """vmlinux loaded into a machine, with the interrupt delivery and hypercalls around it."""

    def __init__(
        self, machine: Machine, image: KernelImage | None = None, tick: int | None = DEFAULT_TICK
    ) -> None:
        self.machine = machine
        self.image = image or KernelImage.load()
        self.image.task, self.image.ex_table  # noqa: B018 (a bad image fails now, not later)
        self.memory: PhysicalMemory = machine.memory
        self.pages: KernelPages = machine.kernel
        self.log = bytearray()
        """What printk wrote (the kernel's message buffer)."""
        self.tick = tick
        """Instructions between timer interrupts (None: no timer)."""
        self.next_tick = tick if tick else None
        self.tasks: dict[int, int] = {}
        """pid -> address of its task_union."""
        self._free_slots: list[int] = []
        self._next_slot = 0
        self.hypercalls = 0
        self.timed: list[TimedInsmod] = []
        """Scheduled insmods not yet made, in the order they are due."""
        self._load()
        self._current = self._physical(self.image.symbol("current"))
        self._gate_open = self._physical(self.image.symbol("gate_open"))
        self._install_gates()
        machine.cpu.gate_open_paddr = self._gate_open
        machine.on_switch.append(self._switched)
        machine.on_process_exit.append(self._exited)
        handlers = {
            "HC_VERSION": lambda *_: hypercalls.VERSION,
            "HC_SYSCALL": self._hc_syscall,
            "HC_WRITE": self._hc_write,
            "HC_READ": self._hc_read,
            "HC_CLOCK": self._hc_clock,
            "HC_EXIT": self._hc_exit,
            "HC_SCHEDULE": self._hc_schedule,
            "HC_PRINTK": self._hc_printk,
            "HC_MODULE_LOAD": self._hc_module_load,
            "HC_MODULE_INITED": self._hc_module_inited,
            "HC_MODULE_UNLOAD": self._hc_module_unload,
            "HC_MODULE_FREE": self._hc_module_free,
            "HC_FORCE_SIG": self._hc_force_sig,
            "HC_MAP_HEAP": self._hc_map_heap,
            "HC_UNMAP": self._hc_unmap,
        }
        self._trap: Trap | None = None
        """The user-mode fault whose trap entry runs now (for HC_FORCE_SIG's report)."""
        self._initialising: LoadedModule | None = None
        """The module sys_init_module placed and whose init runs now."""
        self._unloading: LoadedModule | None = None
        """The module sys_delete_module runs the cleanup of now."""
        machine.modules.kernel_symbols = self.image.symbols.get
        self._by_number = {call.number: handlers[call.name] for call in hypercalls.HYPERCALLS}
        self._hypercall_registers = machine.cpu.batch(("eax", *hypercalls.ARGUMENT_REGISTERS))
        self._entry_registers = machine.cpu.batch(("cs", "eip", "eflags", "esp", "ss"))
        self._frame = 0
        """Physical address of the ring-change frame slot of the task on the CPU."""
        self._esp0 = 0
        """Where the ring-change frame of the task on the CPU starts (the TSS's esp0)."""
        self._tss_esp0 = self._physical(FIXMAP_GDT) + TSS_OFFSET + 4

    # --- memory --------------------------------------------------------------------------

    def _load(self) -> None:
        for segment in self.image.elf.loads:
            start = segment.vaddr & ~PAGE_MASK
            prot = _protection(segment.flags)
            for page in range(start, segment.vaddr + segment.memsz, PAGE_SIZE):
                self.pages.map(page, self.memory.alloc(), prot, user=False)
            self.write(segment.vaddr, self.image.segment_bytes(segment))

    def _physical(self, vaddr: int) -> int:
        frame = self.pages.pages[vaddr >> PAGE_SHIFT][0]
        return frame << PAGE_SHIFT | (vaddr & PAGE_MASK)

    def read(self, vaddr: int, n: int) -> bytes:
        """Kernel virtual memory (GuestFault past what is mapped)."""
        return self.machine.cpu.kernel_read(vaddr, n)

    def write(self, vaddr: int, data: bytes) -> None:
        """Store into kernel virtual memory, whatever the page protection."""
        done = 0
        while done < len(data):
            addr = vaddr + done
            entry = self.pages.pages.get(addr >> PAGE_SHIFT)
            if entry is None:
                raise GuestFault(addr, Prot.WRITE)
            take = min(len(data) - done, PAGE_SIZE - (addr & PAGE_MASK))
            self.memory.write(entry[0] << PAGE_SHIFT | (addr & PAGE_MASK), data[done : done + take])
            done += take

    def word(self, name: str) -> int:
        """The 32-bit kernel variable ``name`` (``jiffies``, ``current``, ...)."""
        return int.from_bytes(self.read(self.image.symbol(name), 4), "little")

    # --- the gates ----------------------------------------------------------------------

    def _install_gates(self) -> None:
        sym = self.image.symbol
        gdt = self._physical(FIXMAP_GDT)
        self.memory.write(gdt + TSS_OFFSET + 8, struct.pack("<I", KERNEL_DS))  # ss0
        trampoline = bytearray()
        for pad, entry in GATES.items():
            target = sym(pad)
            gate = struct.pack("<HHBBH", target & 0xFFFF, KERNEL_CS, 0, 0xEC, target >> 16)
            self.memory.write(gdt + 8 * entry, gate)
            trampoline += b"\x9a" + struct.pack("<IH", 0, entry << 3 | 3) + b"\x90"  # lcall; nop
        frame = self.memory.alloc()
        self.pages.map(FIXMAP_TRAMPOLINE, frame, Prot.READ | Prot.EXEC, user=True)
        self.memory.write(frame << PAGE_SHIFT, bytes(trampoline))
        cpu = self.machine.cpu
        cpu.uc.reg_write(
            x86.UC_X86_REG_TR,
            (0x80, FIXMAP_GDT + TSS_OFFSET, 0x67, 0x8900),  # a present, available 32-bit TSS
        )
        cpu.boot_context = cpu.uc.context_save()

    def _enter(
        self, gate: int, eip: int, flags: int, esp: int, ss: int, error_code: int | None = None
    ) -> None:
        """From user mode: push the ring-change frame the CPU would (with ``error_code``
        below it for a page fault), and enter by ``gate``."""
        extra = b"" if error_code is None else struct.pack("<I", error_code)
        memory = self.memory.bytes
        memory[self._frame - len(extra) : self._frame + RING_FRAME] = extra + struct.pack(
            "<5I", eip, USER_CS, flags, esp, ss
        )
        memory[self._tss_esp0 : self._tss_esp0 + 4] = struct.pack("<I", self._esp0 - len(extra))
        memory[self._gate_open] = 1
        # as the IDT gate would: TF off (a single-stepped int 0x80 traps after the iret, at
        # the instruction after it), IF off too for an interrupt
        cleared = TRAP_FLAG | (IF_FLAG if gate == TIMER_GATE else 0)
        self.machine.cpu.write_registers(
            {"eflags": flags & ~cleared, "eip": FIXMAP_TRAMPOLINE + 8 * (gate - FIRST_GATE)}
        )

    # --- tasks ---------------------------------------------------------------------------

    def task_address(self, proc: Process) -> int:
        """The task_struct of ``proc`` (created on its first switch)."""
        return self.tasks[proc.pid]

    def current_task(self) -> CurrentTask:
        """The task ``current`` points at, as a kernel probe hit sees it."""
        task, off = self.word("current"), self.image.task.offsets
        (pid,) = struct.unpack("<i", self.read(task + off["pid"], 4))
        (uid,) = struct.unpack("<I", self.read(task + off["uid"], 4))
        comm = self.read(task + off["comm"], 16).split(b"\0", 1)[0]
        (regs,) = struct.unpack("<I", self.read(task + off["regs"], 4))
        frame = struct.unpack(f"<{len(USER_FRAME)}I", self.read(regs, 4 * len(USER_FRAME)))
        user = dict(zip(USER_FRAME, frame, strict=True))
        return CurrentTask(pid, uid, comm.decode(errors="replace"), user)

    def _create_task(self, proc: Process) -> int:
        layout = self.image.task
        if self._free_slots:
            slot = self._free_slots.pop()
        else:
            slot, self._next_slot = self._next_slot, self._next_slot + 1
        base = TASK_AREA + slot * layout.union_size
        for page in range(base, base + layout.union_size, PAGE_SIZE):
            self.pages.map(page, self.memory.alloc(), Prot.READ | Prot.WRITE, user=False)
        off = layout.offsets
        top = base + layout.union_size
        comm = Path(proc.name).name.encode()[:15]
        fields = {
            "pid": struct.pack("<i", proc.pid),
            "uid": struct.pack("<I", 0),
            "comm": comm.ljust(16, b"\0"),
            "regs": struct.pack("<I", top - 4 * (len(PT_REGS)) - RING_FRAME),
            "thread.esp0": struct.pack("<I", top),
            "mm": struct.pack("<I", base + off["own_mm"]),
            "own_mm.start_brk": struct.pack("<I", proc.brk_start),
            "own_mm.brk": struct.pack("<I", proc.brk),
        }
        for name, value in fields.items():
            self.write(base + off[name], value)
        self.tasks[proc.pid] = base
        return base

    def _switched(self, proc: Process) -> None:
        base = self.tasks.get(proc.pid) or self._create_task(proc)
        self.memory.write(self._current, struct.pack("<I", base))
        esp0 = self._esp0 = base + self.image.task.union_size - RING_FRAME
        self._frame = self._physical(esp0)  # (RING_FRAME bytes, all in the stack's top page)
        self.memory.write(self._tss_esp0, struct.pack("<I", esp0))
        # a process stopped between _enter and its lcall is still crossing its gate
        eip = self.machine.cpu.reg("eip")
        crossing = FIXMAP_TRAMPOLINE <= eip < FIXMAP_TRAMPOLINE + PAGE_SIZE
        self.memory.write(self._gate_open, bytes([crossing, 0, 0, 0]))

    def _exited(self, proc: Process) -> None:
        base = self.tasks.pop(proc.pid, None)
        if base is None:
            return
        for page in range(base, base + self.image.task.union_size, PAGE_SIZE):
            self.memory.put(self.pages.pages[page >> PAGE_SHIFT][0])
            self.pages.unmap(page)
        self._free_slots.append((base - TASK_AREA) // self.image.task.union_size)
        self.machine.cpu.flush_tlb()

    # --- interrupts and faults -----------------------------------------------------------

    def interrupt(self, vector: int) -> bool:
        """The machine's interrupt hook asks first: True if the kernel took ``vector``."""
        if vector == SYSCALL_VECTOR:
            cs, eip, flags, esp, ss = self._entry_registers.read()
            if cs & 3 == 3:
                self._enter(SYSCALL_GATE, eip, flags, esp, ss)
                return True
        elif vector == hypercalls.VECTOR and self.machine.cpu.reg("cs") & 3 == 0:
            self._hypercall()
            return True
        return False

    def enter_trap(self, trap: Trap) -> bool:
        """A user-mode fault nobody handled: enter its trap entry if it has one (True)."""
        pad = TRAP_GATES.get(trap.vector)
        cs, eip, flags, esp, ss = self._entry_registers.read()
        if pad is None or cs & 3 != 3:
            return False
        error_code = None
        if trap.vector == PAGE_FAULT:
            address, proc = trap.address or 0, self.machine.current
            # a fault inside a mapping is a protection violation: the TLB fill pages in the rest
            present = address >= KERNEL_BASE or (
                proc is not None and proc.space.find_vma(address) is not None
            )
            write = trap.access is not None and trap.access & Prot.WRITE
            error_code = PF_USER | (PF_PROTECTION if present else 0) | (PF_WRITE if write else 0)
            self.machine.cpu.uc.reg_write(x86.UC_X86_REG_CR2, address)
        self._trap = trap
        self._enter(GATES[pad], eip, flags, esp, ss, error_code)
        return True

    def fixup(self, eip: int) -> bool:
        """A page fault in ring 0 at ``eip``: resume at its exception-table fixup if any."""
        target = self.image.ex_table.get(eip)
        if target is None:
            return False
        self.machine.cpu.set_reg("eip", target)
        return True

    def next_stop(self) -> int | None:
        """The counter value at which the machine must stop for the kernel: the next tick
        or the next timed insmod (None: neither)."""
        due = [
            n for n in (self.next_tick, self.timed[0].at if self.timed else None) if n is not None
        ]
        return min(due, default=None)

    def schedule_insmod(
        self, at: int, path: str | Path, params: Mapping[str, str] | None = None
    ) -> TimedInsmod:
        """Insmod ``path`` when the instruction counter reaches ``at`` (see TimedInsmod);
        loads due at the same count are made in the order they were scheduled. From a hook
        while the CPU runs, the counter's stop limit is lowered so that it stops for it."""
        timed = TimedInsmod(at, str(path), dict(params or {}))
        self.timed.append(timed)
        self.timed.sort(key=lambda t: t.at)  # stable: scheduling order within a count
        counter = self.machine.cpu.counter
        counter.limit = min(counter.limit, at)
        return timed

    def run_due_insmods(self) -> None:
        """Make the timed insmods that are due, if the current process is in user mode
        (``call`` needs its kernel stack free); otherwise they wait for a later boundary."""
        proc, counter = self.machine.current, self.machine.cpu.counter
        while self.timed and counter.executed >= self.timed[0].at:
            if proc is None or not proc.alive or self.machine.cpu.reg("cs") & 3 != 3:
                return
            timed = self.timed.pop(0)
            timed.loaded_at = counter.executed
            try:
                self.insmod(proc, timed.path, timed.params)
            except ModuleError as error:
                timed.error = str(error)

    def tick_due(self) -> bool:
        return self.next_tick is not None and self.machine.cpu.counter.executed >= self.next_tick

    def deliver_timer(self) -> bool:
        """Deliver IRQ 0 if the CPU takes interrupts now (user mode, or IF set)."""
        cpu = self.machine.cpu
        if self.memory.bytes[self._gate_open]:
            return False  # mid-way through a gate: the frame at the stack top is taken
        cs, eip, flags, esp, ss = self._entry_registers.read()
        if cs & 3 == 3:
            self._enter(TIMER_GATE, eip, flags, esp, ss)
        else:
            if not flags & IF_FLAG:
                return False
            esp -= 12
            self.write(esp, struct.pack("<3I", eip, KERNEL_CS, flags))
            cpu.write_registers(
                {
                    "esp": esp,
                    "eflags": flags & ~(IF_FLAG | TRAP_FLAG),
                    "eip": self.image.symbol("IRQ0x00_interrupt"),
                }
            )
        assert self.tick is not None and self.next_tick is not None
        self.next_tick += self.tick
        return True

    # --- hypercalls ----------------------------------------------------------------------

    def _hypercall(self) -> None:
        cpu, machine = self.machine.cpu, self.machine
        proc = machine.current
        number, *args = self._hypercall_registers.read()
        self.hypercalls += 1
        handler = self._by_number.get(number)
        if handler is None or proc is None:
            result = -ENOSYS
        else:
            result = host_call(machine, proc, lambda: handler(proc, *args))
        if result is not None and proc is not None and proc.alive:
            cpu.set_reg("eax", result & 0xFFFFFFFF)

    def _hc_syscall(self, proc: Process, regs: int, *_: int) -> int | None:
        values = struct.unpack(f"<{len(PT_REGS)}I", self.read(regs, 4 * len(PT_REGS)))
        number, args = values[PT_REGS.index("orig_eax")], values[:6]
        machine = self.machine
        result = syscalls.dispatch(machine, proc, number, args)
        if machine.syscall_trace is not None:
            name = syscalls.NAMES.get(number, f"syscall_{number}")
            machine.syscall_trace.append((proc.pid, name, args, result))
        return result

    def _hc_write(self, proc: Process, fd: int, kbuf: int, count: int, *_: int) -> int:
        return write_bytes(self.machine, proc, fd, self.read(kbuf, count))

    def _hc_read(self, proc: Process, fd: int, kbuf: int, count: int, *_: int) -> int:
        data = read_bytes(self.machine, proc, fd, count)
        if isinstance(data, int):
            return data
        self.write(kbuf, data)
        return len(data)

    def _hc_clock(self, proc: Process, tv: int, *_: int) -> int:
        sec, ns = divmod(self.machine.clock.realtime_ns(), 1_000_000_000)
        self.write(tv, struct.pack("<iI", sec, ns // 1000))
        return 0

    def _hc_exit(self, proc: Process, status: int, *_: int) -> None:
        self.machine.exit_process(proc, status & 0xFF)

    def _hc_schedule(self, proc: Process, *_: int) -> int:
        self.machine.cpu.uc.emu_stop()
        return 0

    def _hc_force_sig(self, proc: Process, sig: int, *_: int) -> None:
        trap, self._trap = self._trap, None
        if trap is None:
            self.machine.kill_process(proc, sig, f"signal {sig} forced by the kernel")
        else:
            self.machine.kill_process(proc, sig, trap.description, trap)

    def _hc_map_heap(self, proc: Process, start: int, end: int, *_: int) -> int:
        if not _user_pages(start, end):
            return -EINVAL
        return map_heap(self.machine, proc, start, end)

    def _hc_unmap(self, proc: Process, start: int, end: int, *_: int) -> int:
        if not _user_pages(start, end):
            return -EINVAL
        if end > start:
            proc.space.unmap(start, end - start)
        return 0

    def _hc_printk(self, proc: Process, kbuf: int, count: int, *_: int) -> int:
        self.log += self.read(kbuf, count)
        return count

    # --- modules -------------------------------------------------------------------------

    def _user_string(self, proc: Process, address: int) -> str:
        return proc.space.read_cstring(address, PAGE_SIZE).decode(errors="replace")

    def _hc_module_load(
        self, proc: Process, name: int, image: int, length: int, params: int
    ) -> int:
        if not 0 < length <= MODULE_IMAGE_MAX:
            return -EINVAL
        try:
            path = self._user_string(proc, name)
            data = proc.space.read(image, length)
            text = self._user_string(proc, params) if params else ""
        except GuestFault:
            return -EFAULT
        try:
            module = self.machine.modules.place(path, parse_params(text), data)
        except ModuleError as error:
            self.log += f"init_module: {error}\n".encode()  # as Linux's printk would say
            return -(EBUSY if module_name(path) in self.machine.modules.loaded else ENOEXEC)
        self._initialising = module
        return module.image.init or 0

    def _hc_module_inited(self, proc: Process, status: int, *_: int) -> int:
        module, self._initialising = self._initialising, None
        if module is None:
            return -EINVAL
        with contextlib.suppress(ModuleInitError):  # the caller gets the status
            self.machine.modules.initialised(module, status)
        return status

    def _hc_module_unload(self, proc: Process, name: int, *_: int) -> int:
        try:
            wanted = self._user_string(proc, name)
        except GuestFault:
            return -EFAULT
        try:
            module = self.machine.modules.removable(wanted)
        except ModuleError:
            return -(EBUSY if wanted in self.machine.modules.loaded else ENOENT)
        self._unloading = module
        return module.image.cleanup or 0

    def _hc_module_free(self, proc: Process, *_: int) -> int:
        module, self._unloading = self._unloading, None
        if module is None:
            return -EINVAL
        self.machine.modules.free(module)
        return 0

    def insmod(
        self, proc: Process, path: str | Path, params: Mapping[str, str] | None = None
    ) -> LoadedModule:
        """insmod from the host: place the module (kmod probes planted), run its init in
        ring 0 as ``proc``; ModuleError (ModuleInitError if init returned non-zero) and the
        module freed if that fails."""
        loader = self.machine.modules
        module = loader.place(path, params)
        try:
            status = self.call(proc, module.image.init) if module.image.init is not None else 0
        except ModuleError as error:
            loader.free(module)
            raise ModuleError(path, f"init_module {error.problem}") from None
        loader.initialised(module, status)
        return module

    def rmmod(self, proc: Process, name: str) -> None:
        """rmmod from the host: cleanup in ring 0 as ``proc``, then the module is freed."""
        self.machine.modules.rmmod(name, lambda module: self.call(proc, module.image.cleanup))

    def call(self, proc: Process, function: int) -> int:
        """Call ``function`` (an ``int f(void)`` in kernel memory, a module's init or
        cleanup) in ring 0 with ``proc``'s task as ``current``, on its kernel stack (it is in
        user mode or not started, so the stack is free); returns eax. What ran before is
        put back. ModuleError if the call faults or does not return in CALL_BUDGET."""
        machine, cpu = self.machine, self.machine.cpu
        before, saved = machine.current, cpu.save_context()
        cpu.restore_context(cpu.boot_context)
        cpu.switch_address_space(proc.space)
        machine.current = proc
        self._switched(proc)
        esp = self.task_address(proc) + self.image.task.union_size - RING_FRAME - 4
        self.write(esp, struct.pack("<I", STOP_ADDRESS))
        cpu.write_registers({"esp": esp, "eflags": 0x2})
        counter = cpu.counter
        deadline = counter.executed + CALL_BUDGET
        eip, problem = function, ""
        try:
            while eip != STOP_ADDRESS and proc.alive:
                if counter.executed >= deadline:
                    problem = f"did not return within {CALL_BUDGET} instructions"
                    break
                counter.limit = deadline
                try:
                    cpu.uc.emu_start(eip, STOP_ADDRESS)
                except UcError as error:
                    problem = f"faulted at EIP 0x{cpu.reg('eip'):08x}: {error}"
                    break
                finally:
                    cpu.flush_deferred()
                eip = cpu.reg("eip")
            result = cpu.reg("eax")
        finally:
            cpu.restore_context(saved)
            machine.current = before
            if before is not None:
                cpu.switch_address_space(before.space)
                self._switched(before)
        if problem or not proc.alive:
            raise ModuleError(f"0x{function:08x}", problem or "the calling process ended")
        return result


def _user_pages(start: int, end: int) -> bool:
    """``[start, end)`` is a page-aligned range of user addresses."""
    return start <= end <= KERNEL_BASE and not (start | end) & PAGE_MASK


def parse_params(text: str) -> dict[str, str]:
    """``"a=1,b=2"`` (insmod's parameters) as a mapping; ModuleError for a bad item."""
    params: dict[str, str] = {}
    for item in filter(None, text.split(",")):
        name, equals, value = item.partition("=")
        if not equals or not name:
            raise ModuleError(item, "a module parameter is written name=value")
        params[name.strip()] = value.strip()
    return params
