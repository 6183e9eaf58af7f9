"""The guest kernel: its image, the int 0x80 path through system_call, user copies that
fail with -EFAULT, task structures and `current`, the timer, and programs behaving the
same with and without it."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from unicorn import UC_HOOK_CODE

from dprobes.cli import main as cli
from dprobes.kernel_layout import KERNEL_IMAGE
from dprobes.runtime import hypercalls
from dprobes.runtime.cpu import KERNEL_CS, KERNEL_DS, USER_CS, USER_DS
from dprobes.runtime.kernel import RING_FRAME
from dprobes.runtime.kernel_image import KernelImage, KernelImageError
from dprobes.runtime.machine import Machine
from dprobes.runtime.process import Process
from dprobes.tests.guest_expectations import BIN, RUNS
from dprobes.tests.test_runtime_machine import EXIT_WITH_EBX, tiny_elf

EXIT_WITH_EAX = bytes.fromhex("89c3") + EXIT_WITH_EBX


def tiny(tmp_path: Path, code: bytes) -> Path:
    path = tmp_path / "tiny"
    path.write_bytes(tiny_elf(code))
    return path


def run(
    path: Path | str, *args: str, kernel: bool = True, **options: int
) -> tuple[Machine, Process]:
    machine = Machine(kernel=kernel, **options)
    proc = machine.spawn(path, [str(path), *args])
    machine.run(max_instructions=50_000_000)
    return machine, proc


def on_entry(machine: Machine, symbol: str, seen: list[dict[str, int]]) -> None:
    """Record the registers, and the ring-change frame at ESP as ``frame``, each time the CPU
    reaches kernel ``symbol``."""
    kernel = machine.guest_kernel
    assert kernel is not None
    address = kernel.image.symbol(symbol)

    def record(*_: object) -> None:
        regs = machine.cpu.registers()
        seen.append({**regs, "frame": kernel.read(regs["esp"], RING_FRAME)})  # type: ignore[dict-item]

    machine.cpu.uc.hook_add(UC_HOOK_CODE, record, begin=address, end=address)


def test_image_has_linux_symbols_and_compilation_units() -> None:
    with KERNEL_IMAGE.open("rb") as f:
        elf = ELFFile(f)
        symbols = {s.name: s["st_value"] for s in elf.get_section_by_name(".symtab").iter_symbols()}
        units = {cu.get_top_DIE().get_full_path() for cu in elf.get_dwarf_info().iter_CUs()}
        assert elf["e_machine"] == "EM_386" and elf["e_type"] == "ET_EXEC"
    names = {Path(u).as_posix().split("guest/kernel/")[-1] for u in units}
    for unit in [
        "arch/i386/kernel/entry.S",
        "arch/i386/kernel/time.c",
        "kernel/time.c",
        "kernel/timer.c",
        "kernel/sched.c",
        "kernel/fork.c",
        "kernel/exit.c",
        "fs/read_write.c",
        "fs/open.c",
        "mm/mmap.c",
        "kernel/module.c",
        "kernel/printk.c",
        "arch/i386/lib/usercopy.c",
    ]:
        assert unit in names
    for name in [
        "system_call",
        "sys_call_table",
        "timer_interrupt",
        "do_gettimeofday",
        "sys_time",
        "sys_gettimeofday",
        "jiffies",
        "do_timer",
        "schedule",
        "current",
        "do_fork",
        "sys_exit",
        "do_exit",
        "sys_read",
        "sys_write",
        "sys_brk",
        "do_mmap",
        "sys_init_module",
        "sys_delete_module",
        "printk",
        "copy_to_user",
        "copy_from_user",
    ]:
        assert symbols[name] >= 0xC0000000, name


def test_hypercall_header_is_generated_from_the_table() -> None:
    assert hypercalls.HEADER.read_text() == hypercalls.header()
    for call in hypercalls.HYPERCALLS:
        assert f"#define {call.name} {call.number}\n" in hypercalls.header()


def test_int_0x80_enters_system_call_in_ring_0_with_a_pt_regs_frame(tmp_path: Path) -> None:
    code = bytes.fromhex("bb07000000 b814000000 cd80") + EXIT_WITH_EAX  # exit(getpid())
    machine = Machine(kernel=True)
    entries: list[dict[str, int]] = []
    on_entry(machine, "system_call", entries)
    proc = machine.spawn(tiny(tmp_path, code))
    machine.run()
    assert proc.returncode == proc.pid == 1
    getpid, exit_ = entries
    assert (getpid["cs"], getpid["ss"], getpid["eax"], getpid["ebx"]) == (
        KERNEL_CS,
        KERNEL_DS,
        20,
        7,
    )
    eip, cs, _, _, ss = struct.unpack("<5I", getpid["frame"])  # type: ignore[call-overload]
    assert (eip, cs, ss) == (0x08048054 + 12, USER_CS, USER_DS)  # back after the int 0x80
    assert exit_["eax"] == 1 and exit_["esp"] == getpid["esp"]  # the same kernel stack top


def test_user_access_to_a_kernel_page_is_sigsegv(tmp_path: Path) -> None:
    machine, proc = run(tiny(tmp_path, bytes.fromhex("a1 0000 10c0") + EXIT_WITH_EAX))
    assert machine.guest_kernel is not None
    assert machine.guest_kernel.read(0xC0100000, 4)  # mapped, for the kernel only
    assert proc.returncode == -11 and proc.crash is not None
    assert proc.crash.address == 0xC0100000 and "page fault (#PF) on read" in str(proc.crash)


@pytest.mark.parametrize("pointer", [0xC0000000, 0x10000000, 0xFFFFFFFE])
def test_write_from_a_bad_user_pointer_is_efault(tmp_path: Path, pointer: int) -> None:
    # write(1, pointer, 4): the range check (kernel addresses) or the copy's fixup (unmapped)
    code = bytes.fromhex("b804000000 bb01000000 b9") + struct.pack("<I", pointer)
    code += bytes.fromhex("ba04000000 cd80 f7d8") + EXIT_WITH_EAX  # exit(-result)
    for kernel in (True, False):
        _, proc = run(tiny(tmp_path, code), kernel=kernel)
        assert proc.returncode == 14 and proc.crash is None  # EFAULT


def test_read_into_read_only_text_is_efault(tmp_path: Path) -> None:
    # read(0, own code, 4): the kernel's copy_to_user meets a read-only page
    code = bytes.fromhex("b803000000 bb00000000 b954800408 ba04000000 cd80 f7d8")
    path = tiny(tmp_path, code + EXIT_WITH_EAX)
    for kernel in (True, False):
        machine = Machine(kernel=kernel)
        proc = machine.spawn(path, stdin=b"abcd")
        machine.run()
        assert proc.returncode == 14 and proc.crash is None


@pytest.mark.parametrize("via", ["gate", "trampoline"])
def test_user_code_cannot_use_the_call_gates_itself(tmp_path: Path, via: str) -> None:
    # lcall $0xa3, $0 (the system-call gate), or a jump to the trampoline that holds it
    code = bytes.fromhex("9a00000000a300" if via == "gate" else "e9a7cffaf7")
    _, proc = run(tiny(tmp_path, code + EXIT_WITH_EAX))
    assert proc.returncode == -11 and "page fault (#PF) on write" in str(proc.crash)


def test_user_hypercall_vector_is_sigsegv(tmp_path: Path) -> None:
    _, proc = run(tiny(tmp_path, bytes.fromhex("b805000000 cd82") + EXIT_WITH_EAX))
    assert proc.returncode == -11 and "int 0x82" in str(proc.crash)


def test_jiffies_advance_with_the_timer() -> None:
    runs = []
    for _ in range(2):
        machine = Machine(kernel=True, tick=10_000)
        ticks: list[dict[str, int]] = []
        schedules: list[dict[str, int]] = []
        on_entry(machine, "timer_interrupt", ticks)
        on_entry(machine, "schedule", schedules)
        proc = machine.spawn(BIN / "loop")
        executed = machine.run()
        assert proc.returncode == 7
        assert machine.guest_kernel is not None
        jiffies = machine.guest_kernel.word("jiffies")
        assert jiffies == len(ticks) and executed // 10_000 - 2 <= jiffies <= executed // 10_000
        assert all(t["cs"] == KERNEL_CS for t in ticks)
        assert 0 < len(schedules) <= jiffies // 10  # need_resched every 10th tick
        runs.append((jiffies, executed))
    assert runs[0] == runs[1]  # deterministic


def test_current_is_the_task_of_the_running_process() -> None:
    machine = Machine(kernel=True, quantum=20_000)
    seen: list[tuple[int, int, bytes]] = []
    kernel = machine.guest_kernel
    assert kernel is not None
    layout = kernel.image.task.offsets

    def at_sys_write(*_: object) -> None:
        task = kernel.word("current")
        pid = struct.unpack("<i", kernel.read(task + layout["pid"], 4))[0]
        comm = kernel.read(task + layout["comm"], 16).rstrip(b"\0")
        seen.append((machine.current.pid, pid, comm))  # type: ignore[union-attr]

    address = kernel.image.symbol("sys_write")
    machine.cpu.uc.hook_add(UC_HOOK_CODE, at_sys_write, begin=address, end=address)
    procs = [machine.spawn(BIN / name) for name in ("loop", "recurse")]
    machine.run()
    assert [p.returncode for p in procs] == [7, 13]
    assert {pid for pid, _, _ in seen} == {1, 2}
    assert all(pid == task_pid for pid, task_pid, _ in seen)
    assert {comm for _, _, comm in seen} == {b"loop", b"recurse"}


@pytest.mark.parametrize("case", sorted(RUNS))
def test_guest_programs_behave_the_same_through_the_kernel(case: str) -> None:
    args, expected, status = RUNS[case]
    name = case.split("-")[0]
    _, proc = run(BIN / name, *args)
    assert proc.output() == expected()
    assert proc.returncode == status and proc.crash is None


@pytest.mark.parametrize(
    "argv", [["echo", "a", "b"], ["seq", "3"], ["ls", "/"], ["cat", "/nonexistent"], ["date"]]
)
def test_busybox_behaves_the_same_through_the_kernel(busybox: str, argv: list[str]) -> None:
    results = []
    for kernel in (False, True):
        _, proc = run(busybox, *argv, kernel=kernel)
        results.append((proc.output(), proc.returncode))
    if argv[0] == "date":  # the clock is the instruction count, and the kernel runs some too
        results = [(o[1], r) for o, r in results]
    assert results[0] == results[1]


def test_docs_list_the_hypercall_table() -> None:
    page = (Path(__file__).resolve().parents[1] / "docs" / "kernel.md").read_text()
    for call in hypercalls.HYPERCALLS:
        row = f"| {call.number} | {call.name} | {', '.join(call.args)} | {call.doc} |"
        assert row.replace("|  |", "| |") in page


def test_a_missing_kernel_image_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "vmlinux").write_bytes(b"not an ELF")
    for path in (tmp_path / "missing", tmp_path / "vmlinux"):
        with pytest.raises(KernelImageError, match=r"no kernel image at|not a usable kernel image"):
            KernelImage.load(path)


def test_dpc_run_kernel_option(capfd: pytest.CaptureFixture[str]) -> None:
    args, expected, status = RUNS["strings-argv"]
    for extra in ([], ["--kernel"], ["--kernel", "--tick", "1000"]):
        code = cli.main(["run", *extra, "--", str(BIN / "strings"), *args])
        assert (code, capfd.readouterr().out) == (status, expected()[0])
    assert cli.main(["run", "--kernel", "--tick", "0", "--", str(BIN / "strings")]) == 2
    err = capfd.readouterr().err
    assert "--tick" in err and "Traceback" not in err
