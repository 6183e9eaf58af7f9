"""User-mode faults that end in a signal go through the guest kernel's trap entries
(``divide_error``, ``bounds``, ``page_fault`` in entry.S; ``do_divide_error``/``do_bounds``
in traps.c, ``do_page_fault`` in mm/fault.c): a kernel probe on the C handler fires once
per fault, sees the user registers of the fault, and the process dies as without the
kernel and as under qemu-i386. Demand paging stays on the host's TLB fill."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from unicorn import UC_HOOK_CODE

from dprobes.compiler.pipeline import compile_rpn
from dprobes.runtime.machine import Machine
from dprobes.runtime.probes import ProbeManager
from dprobes.runtime.process import Process
from dprobes.tests.guest_expectations import BIN, BOUND_STDOUT, RUNS
from dprobes.tests.test_runtime_machine import tiny_elf

CODE_START = 0x08048054
"""Where tiny_elf's code begins."""
DIVIDE_BY_ZERO = bytes.fromhex("31c931d2b801000000f7f1")  # ecx = edx = 0; eax = 1; div ecx
DIVIDE_AT = CODE_START + 9
STORE_TO_ZERO = bytes.fromhex("c7050000000001000000")  # movl $1, 0
STORE_TO_KERNEL = bytes.fromhex("c705000000c001000000")  # movl $1, 0xc0000000


def tiny(tmp_path: Path, code: bytes) -> Path:
    path = tmp_path / "tiny"
    path.write_bytes(tiny_elf(code))
    path.chmod(0o755)
    return path


def qemu_returncode(program: Path) -> int:
    if shutil.which("qemu-i386") is None:
        pytest.skip("needs qemu-i386 to see how the program dies")
    return subprocess.run(["qemu-i386", str(program)], capture_output=True, check=False).returncode


def probed(handler: str, program: Path) -> tuple[ProbeManager, Process]:
    """Run ``program`` on the guest kernel with a probe on ``handler`` logging the user EIP
    and CS saved at the trap entry."""
    machine = Machine(kernel=True)
    manager = ProbeManager(machine, tier="interp")
    source = (
        f"name = k\nmodtype = kernel\nlog = PID PROCNAME\noffset = {handler}\n"
        "    push u, cs\n    push u, eip\n    log 2\n    exit\n"
    )
    manager.insert(compile_rpn("k.rpn", text=source).program)
    process = machine.spawn(program, [str(program)])
    machine.run(max_instructions=50_000_000)
    return manager, process


def logged(manager: ProbeManager) -> list[tuple[int, int]]:
    return [struct.unpack("<2I", entry.record.data) for entry in manager.emitted]


def symbol(path: Path, name: str) -> int:
    with path.open("rb") as f:
        (found,) = ELFFile(f).get_section_by_name(".symtab").get_symbol_by_name(name)
        return found["st_value"]


def test_a_probe_on_do_bounds_fires_once_when_bound_faults() -> None:
    manager, process = probed("do_bounds", BIN / "bound")
    assert process.output() == (BOUND_STDOUT, "")
    assert process.returncode == qemu_returncode(BIN / "bound") == -11  # SIGSEGV
    assert process.crash is not None and "#BR" in process.crash.reason
    assert logged(manager) == [(symbol(BIN / "bound", "bound_fail"), 0x73)]
    (entry,) = manager.emitted
    assert (entry.record.hit.pid, entry.record.hit.procname) == (process.pid, "bound")


def test_a_probe_on_do_divide_error_fires_once_for_a_divide_by_zero(tmp_path: Path) -> None:
    program = tiny(tmp_path, DIVIDE_BY_ZERO)
    manager, process = probed("do_divide_error", program)
    assert process.returncode == qemu_returncode(program) == -8  # SIGFPE
    assert logged(manager) == [(DIVIDE_AT, 0x73)]
    assert process.crash is not None and process.crash.eip == DIVIDE_AT


@pytest.mark.parametrize("code", [STORE_TO_ZERO, STORE_TO_KERNEL], ids=["null", "kernel"])
def test_a_bad_user_access_goes_through_do_page_fault(tmp_path: Path, code: bytes) -> None:
    """do_page_fault reads CR2 and gets the CPU's error code (user, write; present for a
    supervisor page), as an i386 gives them."""
    program = tiny(tmp_path, code)
    address = struct.unpack("<I", code[2:6])[0]
    machine = Machine(kernel=True)
    kernel = machine.guest_kernel
    assert kernel is not None
    seen: list[tuple[int, int, int]] = []

    def record(*_: object) -> None:
        task, offsets = kernel.word("current"), kernel.image.task.offsets
        seen.append(struct.unpack("<3I", kernel.read(task + offsets["thread.cr2"], 12)))

    force_sig = kernel.image.symbol("force_sig")
    machine.cpu.uc.hook_add(UC_HOOK_CODE, record, begin=force_sig, end=force_sig)
    process = machine.spawn(program, [str(program)])
    machine.run(max_instructions=1_000_000)
    assert process.returncode == qemu_returncode(program) == -11  # SIGSEGV
    present = 1 if address >= 0xC0000000 else 0
    assert seen == [(address, 14, 4 | 2 | present)]  # cr2, trap_no, error_code


def test_demand_paging_stays_on_the_host() -> None:
    """A program that pages in its stack, data and heap never reaches do_page_fault."""
    manager, process = probed("do_page_fault", BIN / "strings")
    assert process.output() == RUNS["strings"][1]() and process.returncode == RUNS["strings"][2]
    assert manager.query()[0].hits == 0


def test_without_the_kernel_the_same_faults_die_the_same_way(tmp_path: Path) -> None:
    for code in (DIVIDE_BY_ZERO, STORE_TO_ZERO):
        program = tiny(tmp_path, code)
        reports = []
        for kernel in (True, False):
            machine = Machine(kernel=kernel)
            process = machine.spawn(program, [str(program)])
            machine.run(max_instructions=1_000_000)
            reports.append((process.returncode, str(process.crash)))
        assert reports[0] == reports[1]
