"""The machine: one CPU, physical memory, the page cache, swap, processes and a scheduler.

This is the small i386 Linux box DProbes probes run in (docs/runtime.md): programs are loaded
from ELF files into address spaces that share page-cache frames, a deterministic
round-robin scheduler gives each runnable process a fixed quantum of instructions, and
``int $0x80`` reaches the system calls. Everything else a CPU can raise goes first to a
pluggable ``trap_handler`` (the probe manager's trap3/trap1 and fault hooks) and only then
to Linux's default: a fatal signal that ends *that* process with a crash report, never
the host.

Determinism: time is the instruction count (``clock``), random bytes come from a PRNG
seeded at construction, pids and frames are handed out in order. Two machines given the
same programs, inputs and seed execute the same instructions and print the same bytes.
"""

from __future__ import annotations

import contextlib
import random
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from signal import Signals

from unicorn import UC_ERR_INSN_INVALID, UcError
from unicorn import x86_const as x86

from dprobes.runtime import elfload, syscalls
from dprobes.runtime.addrspace import MMAP_BASE, AddressSpace, GuestFault, KernelPages, PageMapping
from dprobes.runtime.clock import VirtualClock
from dprobes.runtime.cpu import CPU, STOP_ADDRESS
from dprobes.runtime.filesystem import FileSystemView
from dprobes.runtime.kernel import DEFAULT_TICK, GuestKernel
from dprobes.runtime.kmodule import ModuleLoader
from dprobes.runtime.pagecache import GuestFile, PageCache
from dprobes.runtime.physmem import DEFAULT_SIZE, PAGE_SIZE, OutOfFrames, PhysicalMemory
from dprobes.runtime.process import SIGNAL_NAMES, CrashReport, Process, State
from dprobes.runtime.stdio import Stdio
from dprobes.runtime.swap import SwapArea
from dprobes.runtime.traps import (
    GENERAL_PROTECTION,
    INVALID_OPCODE,
    PAGE_FAULT,
    SIGKILL,
    SIGSEGV,
    Trap,
    TrapHandler,
    describe_instruction,
)

QUANTUM = 200_000
"""Instructions a process runs before the scheduler moves on to the next one."""
SOLO_QUANTA = 50
"""Quanta run in one ``emu_start`` when only one process is runnable."""
SYSCALL_REGISTERS = ("eax", "ebx", "ecx", "edx", "esi", "edi", "ebp")


def _warn_on_stderr(line: str) -> None:
    with contextlib.suppress(OSError):  # a closed stderr: the notice has nowhere to go
        print(line, file=sys.stderr, flush=True)


class RunStopped(RuntimeError):
    """``run`` returned before every process ended; they stay runnable (``run`` may be
    called again). ``where`` says, one entry per process, where each one stood."""

    def __init__(self, message: str, running: Sequence[Process], machine: Machine) -> None:
        self.running = list(running)
        self.where = [
            f"pid {p.pid} ({p.name}) at EIP 0x{machine.saved_eip(p):08x}" for p in running
        ]
        super().__init__(message.format(where=", ".join(self.where)))


class InstructionLimit(RunStopped):
    """``run(max_instructions=...)`` used up its budget with processes still running."""

    def __init__(self, limit: int, running: Sequence[Process], machine: Machine) -> None:
        super().__init__(
            f"instruction limit of {limit} reached with processes still running: {{where}}",
            running,
            machine,
        )
        self.limit = limit


class StoppedBySignal(RunStopped):
    """``request_stop`` (a host SIGINT or SIGTERM) stopped ``run`` at an instruction
    boundary."""

    def __init__(self, signal: int, running: Sequence[Process], machine: Machine) -> None:
        self.signal = signal
        self.signal_name = Signals(signal).name
        super().__init__(f"stopped by {self.signal_name}: {{where}}", running, machine)


class Machine:
    """A deterministic single-CPU i386 Linux machine on unicorn."""

    def __init__(
        self,
        seed: int = 0,
        memory_size: int = DEFAULT_SIZE,
        quantum: int = QUANTUM,
        fs: FileSystemView | None = None,
        kernel: bool = True,
        tick: int | None = DEFAULT_TICK,
    ) -> None:
        self.memory = PhysicalMemory(memory_size)
        self.cache = PageCache(self.memory)
        self.swap = SwapArea()
        self.kernel = KernelPages()
        self.cpu = CPU(self.memory, self.kernel)
        self.modules = ModuleLoader(self.memory, self.kernel, self.invalidate_code)
        """Kernel modules (insmod/rmmod); kmod probes follow its placed/unloaded events."""
        self.clock = VirtualClock(self.cpu.counter)
        self.random = random.Random(seed)
        self.quantum = quantum
        self.mmap_base = MMAP_BASE
        self.fs = FileSystemView() if fs is None else fs
        """The host files the guest sees (default: all readable, the current directory
        writable)."""
        self.processes: dict[int, Process] = {}
        self.current: Process | None = None
        self.trap_handler: TrapHandler | None = None
        """Sees every CPU exception of a user process first; see ``traps.TrapHandler``."""
        self.on_process_exit: list[Callable[[Process], None]] = []
        self.on_invalidate: list[Callable[[AddressSpace, int, int], None]] = []
        """Called when the PTEs of [start, end) of a space change (unmap, protect, ...)."""
        self.on_switch: list[Callable[[Process], None]] = []
        """Called when a process is put on the CPU (after its address space)."""
        self.around_slice: list[tuple[Callable[[], None], Callable[[], None]]] = []
        """(before, after) pairs called around every stretch of emulation."""
        self.unknown_syscalls: dict[int, int] = {}
        """Calls of each system call number the machine does not implement (-ENOSYS)."""
        self.warn: Callable[[str], None] = _warn_on_stderr
        """Where the machine's one-line notices go (the first call of each unknown number)."""
        self.syscall_trace: list[tuple[int, str, tuple[int, ...], int | None]] | None = None
        """Set to a list to record (pid, name, arguments, result) of every system call."""
        self.stop_request: int | None = None
        """A host signal number once ``request_stop`` was called: ``run`` stops."""
        self.blocking = False
        """A system call is waiting on the host (``host_signals.blocking_call``)."""
        self._next_pid = 1
        self._last_pid = 0
        self._syscall_args = self.cpu.batch(SYSCALL_REGISTERS)
        self.cpu.on_interrupt = self._interrupt
        self.cpu.on_invalid_instruction = lambda: False  # stop; handled after emu_start
        self.memory.on_code_freed = lambda frame: self.cpu.invalidate_code(
            frame * PAGE_SIZE, PAGE_SIZE
        )
        self.guest_kernel = GuestKernel(self, tick=tick) if kernel else None
        """With ``kernel``: system calls enter guest/bin/vmlinux (runtime/kernel.py), and a
        timer interrupt comes every ``tick`` instructions."""

    # --- processes -----------------------------------------------------------------------

    def spawn(
        self,
        path: str | Path,
        argv: Sequence[str] | None = None,
        env: dict[str, str] | None = None,
        stdin: bytes = b"",
        stdout: Callable[[bytes], None] | None = None,
        stderr: Callable[[bytes], None] | None = None,
        stdio: Stdio | None = None,
    ) -> Process:
        """Load the static i386 executable ``path`` as a new runnable process.

        ``argv`` defaults to ``[path]`` (``path`` is a host path, whatever ``fs`` says).
        Descriptors 0-2 are ``stdio`` (``Stdio.host()`` for the host's), else
        ``Stdio.memory(stdin, stdout, stderr)``: the callbacks see output as it is
        written, and it is collected in the process. Raises ``LoadError`` for a bad
        executable.
        """
        stdio = stdio or Stdio.memory(stdin, stdout, stderr)
        space = AddressSpace(self.memory, self.cache, self.swap, self.kernel, notifier=self)
        try:
            image = elfload.load(space, self.cache, path)
            argv = [str(path)] if argv is None else list(argv)
            env = dict(env or {})
            esp = elfload.build_stack(
                space,
                image,
                [a.encode(errors="surrogateescape") for a in argv],
                [f"{k}={v}".encode(errors="surrogateescape") for k, v in env.items()],
                self.random_bytes(16),
                str(path).encode(),
            )
        except BaseException:
            space.destroy()
            raise
        proc = Process(
            self._next_pid,
            str(path),
            argv,
            env,
            space,
            image,
            esp,
            stdio.stdin,
            stdio.stdout,
            stdio.stderr,
            cwd=self.fs.start_cwd,
        )
        self._next_pid += 1
        self.processes[proc.pid] = proc
        return proc

    def exit_process(self, proc: Process, status: int) -> None:
        """End ``proc`` with exit ``status`` (from exit/exit_group)."""
        self._end(proc, State.EXITED, status=status)

    def kill_process(
        self, proc: Process, signal: int, reason: str, trap: Trap | None = None
    ) -> None:
        """End ``proc`` with a fatal ``signal``; the crash report says where and why."""
        eip = trap.eip if trap is not None else self.saved_eip(proc)
        at = trap.instruction if trap is not None else eip
        insn = "unreadable instruction"
        for n in (16, PAGE_SIZE - (at & (PAGE_SIZE - 1))):  # up to the page end, if need be
            try:
                insn = describe_instruction(proc.space.read(at, min(n, 16), user=False), at)
                break
            except (GuestFault, OutOfFrames):  # (reading it may need a frame: OOM kill)
                continue
        proc.crash = CrashReport(signal, eip, reason, trap.address if trap else None, insn)
        self._end(proc, State.KILLED, signal=signal)

    def kill_out_of_memory(self, proc: Process) -> None:
        """A page fault found no free frame: end ``proc`` as Linux's OOM killer would."""
        self.kill_process(proc, SIGKILL, f"out of memory: {self.memory.exhausted()}; see --memory")

    def _end(
        self, proc: Process, state: State, status: int | None = None, signal: int | None = None
    ) -> None:
        if not proc.alive:
            return
        proc.state, proc.exit_status, proc.signal = state, status, signal
        if proc is self.current:
            self.cpu.uc.emu_stop()  # the address space goes when emulation has stopped

    def _reap(self, proc: Process) -> None:
        if proc is self.current:
            self.cpu.switch_address_space(None)
            self.current = None
        proc.space.destroy()
        proc.close_files()
        proc.context = None
        if proc.space.private_code:
            self.cpu.counter.drop_table(proc.space.code_key())
        for hook in list(self.on_process_exit):
            hook(proc)

    @staticmethod
    def signal_name(signal: int) -> str:
        return SIGNAL_NAMES.get(signal, f"signal {signal}")

    def random_bytes(self, n: int) -> bytes:
        """``n`` bytes from the machine's seeded PRNG (AT_RANDOM, getrandom)."""
        return self.random.randbytes(n)

    # --- running -------------------------------------------------------------------------

    def run(self, max_instructions: int | None = None) -> int:
        """Run until every process has ended; returns the instructions executed.

        With ``max_instructions``, raise ``InstructionLimit`` when that many have run and
        processes remain (they stay runnable: ``run`` may be called again); after
        ``request_stop``, raise ``StoppedBySignal`` likewise.
        """
        counter = self.cpu.counter
        start = counter.executed
        while True:
            runnable = [p for p in self.processes.values() if p.alive]
            if not runnable:
                self.stop_request = None  # everything ended anyway
                break
            if self.stop_request is not None:
                signal, self.stop_request = self.stop_request, None
                raise StoppedBySignal(signal, runnable, self)
            # alone on the CPU, a process may run many quanta in one go: nobody can tell
            budget = self.quantum if len(runnable) > 1 else self.quantum * SOLO_QUANTA
            if max_instructions is not None:
                left = start + max_instructions - counter.executed
                if left <= 0:
                    raise InstructionLimit(max_instructions, runnable, self)
                budget = min(budget, left)
            proc = next((p for p in runnable if p.pid > self._last_pid), runnable[0])
            self._last_pid = proc.pid
            self._slice(proc, budget)
        return counter.executed - start

    def request_stop(self, signal: int) -> None:
        """Make ``run`` stop at the next instruction boundary and raise StoppedBySignal
        (safe from a Python signal handler, which may run inside a unicorn hook)."""
        self.stop_request = signal
        self.cpu.uc.emu_stop()

    def _slice(self, proc: Process, budget: int) -> None:
        cpu, counter = self.cpu, self.cpu.counter
        begin = self._switch_to(proc)
        before = counter.executed
        cpu.last_fault, cpu.out_of_frames = None, False
        failure: UcError | None = None
        for enter, _ in self.around_slice:
            enter()
        try:
            self._emulate(proc, begin, before + budget)
        except UcError as err:
            failure = err
        finally:
            proc.instructions += counter.executed - before
            cpu.flush_deferred()
            for _, leave in reversed(self.around_slice):
                leave()
        if counter.error is not None:
            error, counter.error = counter.error, None
            raise RuntimeError("instruction counting failed") from error
        if proc.alive and failure is not None:
            self._cpu_stopped(proc, failure)
        elif proc.alive and cpu.reg("eip") == STOP_ADDRESS:
            trap = Trap.from_cpu(PAGE_FAULT, STOP_ADDRESS, STOP_ADDRESS)
            self.kill_process(proc, trap.default_signal, "jump into kernel space", trap)
        if proc.alive:
            proc.context = cpu.save_context(proc.context)
        else:
            self._reap(proc)

    def _emulate(self, proc: Process, begin: int, end: int) -> None:
        """Run ``proc`` from ``begin`` until the counter reaches ``end`` or emulation is
        stopped, delivering the guest kernel's timer ticks and timed insmods on the way."""
        counter, kernel = self.cpu.counter, self.guest_kernel
        while True:
            limit = end
            stop = kernel.next_stop() if kernel is not None else None
            if stop is not None:
                limit = min(end, max(stop, counter.executed + 1))
            counter.limit = limit
            self.cpu.uc.emu_start(begin, STOP_ADDRESS)
            if (
                kernel is None
                or counter.executed < limit
                or not proc.alive
                or self.stop_request is not None
            ):
                return
            kernel.run_due_insmods()  # before the tick, which would enter the kernel
            if counter.executed >= end:
                return
            if kernel.tick_due():
                kernel.deliver_timer()  # (a tick it cannot take yet is retried a block later)
            begin = self.cpu.reg("eip")

    def _switch_to(self, proc: Process) -> int:
        """Put ``proc`` on the CPU; returns the address to start emulating at."""
        cpu = self.cpu
        if proc is not self.current or proc.context is None:
            if proc.context is None:
                cpu.restore_context(cpu.boot_context)
                cpu.write_registers(
                    {r: 0 for r in ("eax", "ebx", "ecx", "edx", "esi", "edi", "ebp")}
                )
                begin = cpu.enter_user(proc.image.entry, proc.entry_esp)
            else:
                cpu.restore_context(proc.context)
                begin = cpu.reg("eip")
            cpu.switch_address_space(proc.space)
            cpu.set_tls(proc.tls)
            self.current = proc
            for hook in self.on_switch:
                hook(proc)
            return begin
        return cpu.reg("eip")

    def saved_eip(self, proc: Process) -> int:
        """EIP of ``proc``: live if it is on the CPU, else from its saved context."""
        if proc is self.current:
            return self.cpu.reg("eip")
        if proc.context is not None:
            return proc.context.reg_read(x86.UC_X86_REG_EIP)
        return proc.image.entry

    # --- interrupts, faults and system calls ---------------------------------------------

    def _interrupt(self, vector: int) -> None:
        """UC_HOOK_INTR: int 0x80 is a system call; anything else is a trap."""
        proc, cpu = self.current, self.cpu
        cpu.flush_deferred()
        if proc is None:
            cpu.uc.emu_stop()
            return
        if self.guest_kernel is not None and self.guest_kernel.interrupt(vector):
            return
        if vector == 0x80:
            number, *args = self._syscall_args.read()
            result = syscalls.dispatch(self, proc, number, tuple(args))
            if self.syscall_trace is not None:
                name = syscalls.NAMES.get(number, f"syscall_{number}")
                self.syscall_trace.append((proc.pid, name, tuple(args), result))
            if result is not None and proc.alive:
                cpu.set_reg("eax", result)
            return
        eip = cpu.reg("eip")
        if vector == GENERAL_PROTECTION and self._read_tsc(proc, eip):
            return
        self._trap(proc, Trap.from_cpu(vector, eip))

    def _read_tsc(self, proc: Process, eip: int) -> bool:
        """Emulate rdtsc/rdtscp (a #GP under CR4.TSD): the TSC is the instruction clock."""
        try:
            code = proc.space.read(eip, 3)
        except GuestFault:
            return False
        length = 2 if code[:2] == b"\x0f\x31" else 3 if code == b"\x0f\x01\xf9" else 0
        if length:
            tsc = self.clock.ticks
            self.cpu.write_registers(
                {
                    "eax": tsc & 0xFFFFFFFF,
                    "edx": tsc >> 32 & 0xFFFFFFFF,
                    "eip": eip + length,
                    **({"ecx": 0} if length == 3 else {}),
                }
            )
        return bool(length)

    def _cpu_stopped(self, proc: Process, err: UcError) -> None:
        """emu_start raised: a page fault (our TLB fill said no) or an invalid opcode."""
        eip = self.cpu.reg("eip")
        if self.cpu.out_of_frames:
            self.kill_out_of_memory(proc)
        elif err.errno == UC_ERR_INSN_INVALID:
            self._trap(proc, Trap.from_cpu(INVALID_OPCODE, eip))
        elif self.guest_kernel is not None and self.cpu.reg("cs") & 3 == 0:
            if self.cpu.last_fault is None or not self.guest_kernel.fixup(eip):
                self.kill_process(proc, SIGSEGV, f"kernel oops at EIP 0x{eip:08x}: {err}")
        elif self.cpu.last_fault is not None:
            address, access = self.cpu.last_fault
            self._trap(proc, Trap.from_cpu(PAGE_FAULT, eip, address, access))
        else:
            self.kill_process(proc, SIGSEGV, f"CPU stopped: {err}")

    def _trap(self, proc: Process, trap: Trap) -> None:
        handler = self.trap_handler
        if handler is not None and handler(self, proc, trap):
            return
        eip = self.cpu.reg("eip")
        if eip != trap.eip:  # the fault of a probed instruction stepped out of line, put
            # back at the instruction itself by the probe manager: report it there
            trap = replace(trap, eip=eip, instruction=eip + trap.instruction - trap.eip)
        if self.guest_kernel is not None and self.guest_kernel.enter_trap(trap):
            return  # its handler sends the signal (HC_FORCE_SIG)
        self.kill_process(proc, trap.default_signal, trap.description, trap)

    # --- memory services for the probe manager and the address spaces --------------------

    def file_pages(
        self, file: GuestFile, index: int, swap_in: bool = True
    ) -> Iterator[PageMapping]:
        """Every resident mapping of page ``index`` of ``file`` in every process (the
        page-cache frame where shared, each private COW copy, swapped copies faulted in:
        see ``AddressSpace.file_pages``)."""
        for space in list(file.mappers.values()):
            yield from space.file_pages(file, index, swap_in)

    def invalidate_code(self, paddr: int, length: int) -> None:
        """After writing into guest code in physical memory (planting or removing int3)."""
        self.cpu.invalidate_code(paddr, length)

    def invalidate_range(self, space: AddressSpace, start: int, end: int) -> None:
        """MMU notifier: PTEs of ``space`` in [start, end) changed."""
        for hook in self.on_invalidate:
            hook(space, start, end)
        if space is self.cpu.space:
            self.cpu.flush_tlb()
            self.cpu.counter.use_table(space.code_key())  # the layout may have changed
        if space.private_code:  # (a file layout change is a new key anyway)
            self.cpu.counter.forget(space.code_key())

    def page_moved(self, space: AddressSpace, vaddr: int) -> None:
        """MMU notifier: a COW break gave a page of ``space`` a new frame."""
        if space is self.cpu.space:
            self.cpu.drop_host_translations()

    def code_written(self, paddr: int, length: int) -> None:
        """MMU notifier: the host wrote into an executable page."""
        self.cpu.invalidate_code(paddr, length)
