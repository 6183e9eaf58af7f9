"""The emulated machine without probes: every guest program runs as under qemu-i386, text
pages are shared page-cache frames and data pages private COW copies, swap and page-cache
eviction keep the bytes, bad executables are refused clearly, traps reach the pluggable
handler, runaway programs stop at the instruction limit, and runs are deterministic."""

from __future__ import annotations

import errno
import random
import shutil
import struct
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from dprobes.runtime import (
    PAGE_SIZE,
    GuestFault,
    InstructionLimit,
    LoadError,
    Machine,
    Process,
    Prot,
    Trap,
    syscalls,
)
from dprobes.runtime.filesystem import FileSystemView
from dprobes.runtime.syscalls import abi
from dprobes.tests.guest_expectations import (
    ARGS_STATUS,
    BIN,
    BOUND_STDOUT,
    QEMU,
    RUNS,
    args_expected,
    loop_expected,
    run_under_qemu,
)

LOOP_INSTRUCTIONS = 1_805_785
"""guest/bin/loop's instructions when it runs alone, the guest kernel's included (its timer
interrupts too); measured once: any other value means the counter changed. In a machine
with other processes the count also depends on where their work puts the ticks, and so on
their argument strings (the checkout's path)."""


def symbol(name: str, program: str = "loop") -> int:
    with (BIN / program).open("rb") as f:
        return ELFFile(f).get_section_by_name(".symtab").get_symbol_by_name(name)[0]["st_value"]


def tiny_elf(code: bytes) -> bytes:
    """A static i386 executable of one R+X segment whose code starts at 0x08048054."""
    header = struct.pack(
        "<4s5B7x2H5I6H",
        b"\x7fELF",
        1,
        1,
        1,
        0,
        0,
        2,
        3,
        1,
        0x08048054,
        52,
        0,
        0,
        52,
        32,
        1,
        40,
        0,
        0,
    )
    phdr = struct.pack(
        "<8I", 1, 0, 0x08048000, 0x08048000, 84 + len(code), 84 + len(code), 5, PAGE_SIZE
    )
    return header + phdr + code


EXIT_WITH_EBX = bytes.fromhex("b801000000 cd80")  # mov eax, 1; int 0x80


def run_one(
    path: Path | str, argv: list[str] | None = None, env: dict[str, str] | None = None
) -> tuple[Machine, Process]:
    machine = Machine()
    proc = machine.spawn(path, argv, env)
    machine.run(max_instructions=50_000_000)
    return machine, proc


# --- every guest program, as expected and as under qemu ----------------------------------


@pytest.mark.parametrize("case", sorted(RUNS))
def test_program_runs_as_expected(case: str) -> None:
    args, expected, status = RUNS[case]
    name = case.split("-")[0]
    argv = [str(BIN / name), *args]
    _, proc = run_one(BIN / name, argv)
    assert proc.output() == expected()
    assert proc.returncode == status
    assert proc.crash is None
    if QEMU is not None:
        qemu = run_under_qemu(name, args)
        assert (qemu.stdout, qemu.stderr, qemu.returncode) == (*proc.output(), status)


def test_args_prints_its_arguments_and_environment() -> None:
    env = {"A": "1", "DPROBES": "yes", "EMPTY": ""}
    argv = [str(BIN / "args"), "one", "two words", ""]
    _, proc = run_one(BIN / "args", argv, env)
    assert proc.output() == args_expected(argv, env)
    assert proc.returncode == ARGS_STATUS
    if QEMU is not None:
        qemu = run_under_qemu("args", argv[1:], env)
        assert (qemu.stdout, qemu.stderr, qemu.returncode) == (*proc.output(), ARGS_STATUS)


def test_bound_dies_of_sigsegv_with_a_crash_report() -> None:
    _, proc = run_one(BIN / "bound")
    assert proc.output() == (BOUND_STDOUT, "")
    assert proc.returncode == -11
    report = proc.crash
    assert report is not None and report.signal == 11
    assert report.eip == symbol("bound_fail", "bound")  # #BR is a fault: EIP at the BOUND
    text = str(report)
    assert text.startswith("SIGSEGV (BOUND range exceeded (#BR))")
    assert f"EIP 0x{symbol('bound_fail', 'bound'):08x}: bound eax" in text
    if QEMU is not None:
        assert run_under_qemu("bound").returncode == proc.returncode


# --- page cache, COW and swap ------------------------------------------------------------


def two_loops_half_run() -> tuple[Machine, Process, Process]:
    machine = Machine(quantum=50_000)
    first, second = machine.spawn(BIN / "loop"), machine.spawn(BIN / "loop")
    with pytest.raises(InstructionLimit):
        machine.run(max_instructions=400_000)  # both are inside the work() loop now
    return machine, first, second


def test_processes_share_text_frames_and_copy_data_pages_on_write() -> None:
    machine, first, second = two_loops_half_run()
    file = first.image.file
    work, calls = symbol("work"), symbol("calls")
    text_index = (work - 0x08049000 + 0x1000) // PAGE_SIZE  # the R+X segment is at 0x1000
    cached = machine.cache.lookup(file, text_index)
    assert cached is not None
    for proc in (first, second):
        pte = proc.space.page_of(work)
        assert pte is not None and pte.shared and pte.frame == cached
    # calls is in the page mapping file page 0 privately: each process wrote to it
    data = [proc.space.page_of(calls) for proc in (first, second)]
    assert all(pte is not None and not pte.shared for pte in data)
    assert data[0].frame != data[1].frame
    assert machine.cache.lookup(file, 0) not in (data[0].frame, data[1].frame)
    # every resident mapping of file page 0: the ELF header page (untouched by the program:
    # not mapped yet in the second process) and the private copies at 0x0804b000
    assert first.space.read(0x08048000, 4) == b"\x7fELF"
    seen = {(m.space is first.space, m.vaddr, m.private) for m in machine.file_pages(file, 0)}
    assert seen == {(True, 0x08048000, False), (True, 0x0804B000, True), (False, 0x0804B000, True)}
    machine.run()
    for proc in (first, second):
        assert proc.output() == loop_expected() and proc.returncode == 7


def test_swapped_out_page_comes_back_with_the_same_bytes() -> None:
    machine, first, second = two_loops_half_run()
    calls = symbol("calls")
    before = first.space.read(calls & ~(PAGE_SIZE - 1), PAGE_SIZE)
    frames_in_use = machine.memory.in_use
    slot = first.space.swap_out(calls)
    pte = first.space.page_of(calls)
    assert pte is not None and pte.swap_slot == slot and machine.swap.used == 1
    assert machine.memory.in_use == frames_in_use - 1
    # the probe manager's view: the copy is found, and faulted in only when asked
    copies = [m for m in machine.file_pages(first.image.file, 0, swap_in=False) if m.private]
    assert [(m.vaddr, m.frame) for m in copies if m.space is first.space] == [(0x0804B000, None)]
    assert first.space.read(calls & ~(PAGE_SIZE - 1), PAGE_SIZE) == before  # swapped in
    assert machine.swap.used == 0
    first.space.swap_out(calls)  # and once more: the CPU itself must swap it in
    machine.run()
    for proc in (first, second):
        assert proc.output() == loop_expected() and proc.returncode == 7


def test_dropped_page_cache_page_is_read_again_and_hooks_see_it() -> None:
    machine, first, second = two_loops_half_run()
    file, work = first.image.file, symbol("work")
    index = (work - 0x08049000 + 0x1000) // PAGE_SIZE
    page_ins: list[tuple[int, int]] = []
    machine.cache.on_page_in.append(lambda f, i, frame: page_ins.append((f.id, i)))
    assert machine.cache.drop(file, index)
    assert first.space.page_of(work) is None and second.space.page_of(work) is None
    machine.run()
    assert page_ins.count((file.id, index)) == 1  # read back once, for both processes
    assert first.returncode == second.returncode == 7
    assert first.output() == second.output() == loop_expected()


def test_forced_write_into_text_makes_a_private_copy() -> None:
    machine, first, second = two_loops_half_run()
    add3 = symbol("add3")
    original = first.space.read(add3, 1)
    first.space.write(add3, original, force=True)  # e.g. a debugger breakpoint
    mine, theirs = first.space.page_of(add3), second.space.page_of(add3)
    assert mine is not None and theirs is not None
    assert not mine.shared and theirs.shared and mine.frame != theirs.frame
    with pytest.raises(GuestFault) as fault:
        first.space.write(add3, original)  # without force the text is read-only
    assert fault.value.address == add3 and fault.value.access == Prot.WRITE
    with pytest.raises(GuestFault):
        first.space.read(0x1000, 4)
    machine.run()
    assert first.returncode == second.returncode == 7


def test_int3_planted_in_the_page_cache_reaches_the_trap_handler() -> None:
    machine, first, second = two_loops_half_run()
    work = symbol("work")
    frame = machine.cache.lookup(first.image.file, (work - 0x08049000 + 0x1000) // PAGE_SIZE)
    assert frame is not None
    paddr = frame * PAGE_SIZE + (work & (PAGE_SIZE - 1))
    assert machine.memory.read(paddr, 1) == b"\x55"  # push ebp
    hits: list[tuple[int, int]] = []

    def handler(m: Machine, proc: Process, trap: Trap) -> bool:
        assert trap.vector == 3 and trap.instruction == work and trap.eip == work + 1
        hits.append((proc.pid, m.cpu.reg("eip")))
        regs = m.cpu.registers()  # emulate the push ebp the int3 replaced
        proc.space.write(regs["esp"] - 4, struct.pack("<I", regs["ebp"]))
        m.cpu.write_registers({"esp": regs["esp"] - 4})
        if len(hits) == 5:  # then take the probe out again
            m.memory.write(paddr, b"\x55")
            m.invalidate_code(paddr, 1)
        return True

    machine.trap_handler = handler
    machine.memory.write(paddr, b"\xcc")
    machine.invalidate_code(paddr, 1)  # work() has been translated long ago
    machine.run()
    assert len(hits) == 5 and {pid for pid, _ in hits} <= {first.pid, second.pid}
    assert first.output() == second.output() == loop_expected()


# --- traps, faults and system calls in small hand-made programs --------------------------


def tiny(tmp_path: Path, code: bytes, name: str = "tiny") -> Path:
    path = tmp_path / name
    path.write_bytes(tiny_elf(code))
    return path


def test_int3_without_a_handler_is_sigtrap(tmp_path: Path) -> None:
    _, proc = run_one(tiny(tmp_path, b"\xcc" + bytes.fromhex("bb05000000") + EXIT_WITH_EBX))
    assert proc.returncode == -5 and proc.crash is not None
    assert proc.crash.eip == 0x08048055 and "int3" in str(proc.crash)


@pytest.mark.parametrize(
    ("code", "signal", "what"),
    [
        (b"\x0f\x0b", 4, "SIGILL (invalid opcode (#UD)), EIP 0x08048054: ud2"),
        (bytes.fromhex("31c9 f7f1"), 8, "SIGFPE (divide error (#DE)), EIP 0x08048056: div ecx"),
        (b"\xfa", 11, "SIGSEGV (general protection (#GP)), EIP 0x08048054: cli"),
        (b"\xcd\x81", 11, "SIGSEGV (int 0x81), EIP 0x08048056: int 0x81"),
        (
            bytes.fromhex("e9a7bffaf7"),
            11,  # jmp 0xffff4000: the page of the stop address
            "SIGSEGV (general protection (#GP)), EIP 0xffff4000: hlt",
        ),
    ],
)
def test_cpu_exceptions_end_the_process_with_linux_signals(
    tmp_path: Path, code: bytes, signal: int, what: str
) -> None:
    _, proc = run_one(tiny(tmp_path, code + EXIT_WITH_EBX))
    assert proc.returncode == -signal
    assert str(proc.crash).startswith(what)


def test_trap_handler_can_fix_a_page_fault(tmp_path: Path) -> None:
    code = bytes.fromhex("a100000010") + bytes.fromhex("89c3") + EXIT_WITH_EBX  # ebx = [0x10000000]
    path = tiny(tmp_path, code)
    _, proc = run_one(path)
    assert proc.returncode == -11 and proc.crash is not None
    assert proc.crash.address == 0x10000000 and "page fault (#PF) on read" in str(proc.crash)
    assert "mov eax, dword ptr [0x10000000]" in str(proc.crash)

    def handler(m: Machine, p: Process, trap: Trap) -> bool:
        if trap.vector != 14 or trap.address != 0x10000000:
            return False
        p.space.map(0x10000000, PAGE_SIZE, Prot.READ | Prot.WRITE)
        p.space.write(0x10000000, struct.pack("<I", 42))
        return True  # the load runs again and finds the page

    machine = Machine()
    machine.trap_handler = handler
    proc = machine.spawn(path)
    machine.run()
    assert proc.returncode == 42


def test_unknown_system_call_is_enosys_and_counted(tmp_path: Path) -> None:
    code = bytes.fromhex("b8e7030000 cd80 89c3") + EXIT_WITH_EBX  # syscall 999, exit(result)
    machine, proc = run_one(tiny(tmp_path, code))
    assert proc.returncode == (-abi.ENOSYS) & 0xFF
    assert machine.unknown_syscalls == {999: 1}


def test_rdtsc_reads_the_instruction_clock(tmp_path: Path) -> None:
    path = tiny(tmp_path, bytes.fromhex("9090 0f31 89c3") + EXIT_WITH_EBX)  # exit(rdtsc & 0xff)
    results = [run_one(path)[1] for _ in range(2)]
    assert results[0].returncode == results[1].returncode
    assert 0 < results[0].returncode <= results[0].instructions  # not host time: tiny


def test_never_exiting_program_hits_the_instruction_limit(tmp_path: Path) -> None:
    machine = Machine()
    proc = machine.spawn(tiny(tmp_path, b"\xeb\xfe", "spin"))  # jmp $
    with pytest.raises(InstructionLimit) as stopped:
        machine.run(max_instructions=1_000_000)
    assert str(stopped.value) == (
        "instruction limit of 1000000 reached with processes still "
        "running: pid 1 (spin) at EIP 0x08048054"
    )
    assert proc.alive and proc.instructions >= 1_000_000


def test_files_outside_the_root_do_not_exist_and_read_only_refuses_writes(
    tmp_path: Path,
) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "secret").write_text("no")
    (tmp_path / "root" / "allowed").write_text("hello, guest")
    machine = Machine(fs=FileSystemView(root=str(tmp_path / "root"), read_only=True))
    proc = machine.spawn(BIN / "loop")
    buf = 0xBFFF0000
    for path, expected in [(b"../secret", -abi.ENOENT), (b"/../../allowed", 3)]:
        proc.space.write(buf, path + b"\0")
        assert syscalls.dispatch(machine, proc, 5, (buf, 0, 0, 0, 0, 0)) == expected
    assert syscalls.dispatch(machine, proc, 5, (buf, 1, 0, 0, 0, 0)) == -errno.EROFS
    assert syscalls.dispatch(machine, proc, 3, (3, buf, 100, 0, 0, 0)) == 12
    assert proc.space.read(buf, 12) == b"hello, guest"
    assert syscalls.dispatch(machine, proc, 6, (3, 0, 0, 0, 0, 0)) == 0
    assert syscalls.dispatch(machine, proc, 4, (1, 0, 4, 0, 0, 0)) == -abi.EFAULT


def test_system_calls_with_hostile_arguments_never_raise(tmp_path: Path) -> None:
    """Every implemented call, fed awkward arguments: an errno or a value, never a crash
    (confined to ``tmp_path``: the bytes at those addresses can name files it creates)."""
    values = [
        0,
        1,
        3,
        0xFFF,
        0x1000,
        0x7FFFFFFF,
        0x80000000,
        0xFFFFFFFF,
        0xBFFFF000,
        0x08048000,
        0x0804B000,
        0xC0000000,
        0xFFFF0000,
    ]
    rng = random.Random(3)
    for number in sorted(syscalls.TABLE):
        if syscalls.NAMES[number] in ("exit", "exit_group", "kill", "tgkill"):
            continue
        machine = Machine(fs=FileSystemView(root=str(tmp_path)))
        proc = machine.spawn(BIN / "loop")
        for _ in range(25):
            args = tuple(rng.choice(values) for _ in range(6))
            result = syscalls.dispatch(machine, proc, number, args)
            assert isinstance(result, int), (syscalls.NAMES[number], args, result)
        assert proc.alive


# --- bad executables ---------------------------------------------------------------------


def bad(tmp_path: Path, data: bytes) -> str:
    path = tmp_path / "bad"
    path.write_bytes(data)
    with pytest.raises(LoadError) as refused:
        Machine().spawn(path)
    assert str(refused.value).startswith(f"{path}: ")
    return refused.value.problem


def test_bad_executables_are_refused_clearly(tmp_path: Path) -> None:
    loop = (BIN / "loop").read_bytes()
    glibc = (BIN / "hello_glibc").read_bytes()
    assert bad(tmp_path, b"#!/bin/sh\necho hi\n").startswith("not an ELF file")
    assert bad(tmp_path, loop[:4] + b"\x02" + loop[5:]).startswith("64-bit ELF (ELFCLASS64)")
    assert bad(tmp_path, loop[:40]).startswith("truncated ELF file: 40 bytes")
    assert bad(tmp_path, glibc[:20000]) == (
        "truncated ELF file: segment 1 needs bytes up to 452148, the file has 20000"
    )
    assert bad(tmp_path, loop[:18] + b"\x3e\x00" + loop[20:]) == (
        "ELF for machine 62 (x86-64), not i386 (EM_386)"
    )
    stack_phdr = loop.index(struct.pack("<I", 0x6474E551))  # PT_GNU_STACK -> PT_INTERP
    assert bad(tmp_path, loop[:stack_phdr] + struct.pack("<I", 3) + loop[stack_phdr + 4 :]) == (
        "dynamically linked executable (it has PT_INTERP): not supported, only static "
        "executables run here"
    )
    with pytest.raises(LoadError, match="No such file"):
        Machine().spawn(tmp_path / "missing")


# --- determinism -------------------------------------------------------------------------


def busy_machine(seed: int) -> tuple[Machine, list[Process], list[object]]:
    machine = Machine(seed=seed, quantum=30_000)
    machine.syscall_trace = []
    procs = [machine.spawn(BIN / name) for name in ("loop", "hello_glibc", "strings", "loop")]
    machine.run()
    return machine, procs, machine.syscall_trace


def test_the_instruction_count_is_pinned_and_independent_of_the_path(tmp_path: Path) -> None:
    elsewhere = tmp_path / ("a-much-longer-directory-name" * 4) / "loop"
    elsewhere.parent.mkdir()
    shutil.copy(BIN / "loop", elsewhere)
    for path in (BIN / "loop", elsewhere):
        machine = Machine()
        proc = machine.spawn(path)
        machine.run()
        assert (proc.returncode, proc.instructions) == (7, LOOP_INSTRUCTIONS)


def test_runs_are_deterministic() -> None:
    first, procs1, trace1 = busy_machine(seed=7)
    second, procs2, trace2 = busy_machine(seed=7)
    assert trace1 == trace2
    assert [(p.output(), p.returncode, p.instructions) for p in procs1] == [
        (p.output(), p.returncode, p.instructions) for p in procs2
    ]
    assert first.clock.ticks == second.clock.ticks
    assert all(p.returncode == s for p, s in zip(procs1, (7, 3, 11, 7), strict=True))
    # another seed changes the random bytes (AT_RANDOM, getrandom), not what is printed
    _, procs3, _ = busy_machine(seed=8)
    assert [p.output() for p in procs3] == [p.output() for p in procs1]
