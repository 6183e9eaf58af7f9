"""Kernel probes and exclude regions, against a small kernel image built here.

The image is linked from C files named as in Linux 2.4 (``kernel/time.c``,
``arch/i386/kernel/time.c``, ``kernel/sched.c``, ...) with ``gcc -m32 -g`` and ``ld
-Ttext=0xC0100000``; ``kernel/time.c`` is compiled with ``-ffunction-sections
-gdwarf-4`` so that its unit's code is described by ``DW_AT_ranges``. Expected addresses
come from the image's symbol table, never from guesses. The tests map the image's text
into the machine's kernel pages, as a running guest kernel would be mapped, to see the
int3 bytes come and go.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from unicorn import UC_HOOK_CODE

from dprobes import kernel_layout
from dprobes.cli import main as cli
from dprobes.compiler.diagnostics import CompileError
from dprobes.compiler.pipeline import BuildOptions, compile_rpn
from dprobes.runtime.addrspace import Prot
from dprobes.runtime.exclude import EXCLUDE_RULES, path_matches
from dprobes.runtime.kernel_image import KernelImage
from dprobes.runtime.machine import Machine
from dprobes.runtime.physmem import PAGE_SHIFT, PAGE_SIZE
from dprobes.runtime.probes import INT3, InsertError, ProbeManager
from dprobes.runtime.records import RecordStatus
from dprobes.runtime.traps import BREAKPOINT, Trap
from dprobes.tests.guest_expectations import BIN, RUNS

SOURCES = {
    "kernel/time.c": """
struct timeval { long tv_sec; long tv_usec; };
static long xtime_sec;
void do_gettimeofday(struct timeval *tv) { tv->tv_sec = xtime_sec; tv->tv_usec = 0; }
long sys_time(long *t)
{
    struct timeval tv;
    do_gettimeofday(&tv);
    if (t)
        *t = tv.tv_sec;
    return tv.tv_sec;
}
""",
    "arch/i386/kernel/time.c": """
void do_timer(void);
void timer_interrupt(int irq) { if (irq == 0) do_timer(); }
""",
    "arch/i386/kernel/traps.c": """
void do_int3(long *regs, long error_code) { regs[0] = error_code; }
""",
    "kernel/sched.c": """
unsigned long jiffies;
int need_resched;
void do_timer(void) { jiffies++; need_resched = 1; }
void schedule(void) { need_resched = 0; }
""",
    "fs/read_write.c": """
long sys_write(unsigned int fd, const char *buf, unsigned long count)
{
    return fd > 2 ? -9 : (long)count;
}
""",
    "arch/i386/kernel/entry.S": """
    .text
    .globl system_call
system_call:
    pushl %eax
    call sys_write
    popl %eax
    iret
""",
}
FLAGS = ["-m32", "-O1", "-ffreestanding", "-fno-pic", "-fno-asynchronous-unwind-tables"]
EXTRA = {"kernel/time.c": ["-ffunction-sections", "-gdwarf-4"]}


@pytest.fixture(scope="module")
def vmlinux(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None or shutil.which("ld") is None:
        pytest.skip("needs gcc (gcc-multilib) and ld to build the test kernel")
    root = tmp_path_factory.mktemp("kernel")
    objects = []
    for name, text in SOURCES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
        obj = str(root / name) + ".o"
        flags = EXTRA.get(name, ["-g"])
        subprocess.run(["gcc", *FLAGS, *flags, "-c", name, "-o", obj], cwd=root, check=True)
        objects.append(obj)
    image = root / "vmlinux"
    subprocess.run(
        [
            "ld",
            "-m",
            "elf_i386",
            "-Ttext=0xC0100000",
            "-e",
            "system_call",
            "-z",
            "noexecstack",
            "-o",
            str(image),
            *objects,
        ],
        check=True,
        capture_output=True,
    )
    return image


@pytest.fixture(scope="module")
def image(vmlinux: Path) -> KernelImage:
    return KernelImage.load(vmlinux)


def address(image: KernelImage, name: str) -> int:
    found = image.symbol(name)
    assert found is not None, name
    return found


def mapped_machine(image: KernelImage) -> Machine:
    """A machine with the image's text in supervisor pages, as a running kernel has it."""
    machine = Machine(kernel=False)
    for segment in image.text:
        end = segment.vaddr + segment.filesz
        for page in range(segment.vaddr & ~(PAGE_SIZE - 1), end, PAGE_SIZE):
            frame = machine.memory.alloc()
            machine.kernel.map(page, frame, Prot.READ | Prot.EXEC)
            start = max(page, segment.vaddr)
            data = image.read(start, min(page + PAGE_SIZE, end) - start)
            base = frame << PAGE_SHIFT | (start - page)
            machine.memory.bytes[base : base + len(data)] = data
    return machine


def kernel_byte(machine: Machine, where: int) -> int:
    frame, _ = machine.kernel.translate(where, Prot.READ, user=False)
    return machine.memory.bytes[frame << PAGE_SHIFT | where & (PAGE_SIZE - 1)]


def build(vmlinux: Path, probes: str, name: str = "k"):
    text = f"name = {name}\nmodtype = kernel\n{probes}"
    return compile_rpn("k.rpn", BuildOptions(kernel=str(vmlinux)), text=text).program


def probe(where: str, *items: str) -> str:
    return f"offset = {where}\n" + "".join(f"{item}\n" for item in items) + "    exit\n"


# --- exclude regions ------------------------------------------------------------------


def test_path_suffix_matching() -> None:
    assert path_matches("/src/kernel/time.c", "kernel/time.c")
    assert path_matches("kernel/time.c", "kernel/time.c")
    assert path_matches("/src/arch/i386/kernel/time.c", "kernel/time.c")
    assert not path_matches("/src/xkernel/time.c", "kernel/time.c")
    assert not path_matches("/src/kernel/time.cc", "kernel/time.c")


def test_regions_come_from_the_compilation_units(image: KernelImage) -> None:
    for name in SOURCES:  # the relative names, joined with the compilation directory
        assert [u.path for u in image.units].count(str(image.path.parent / name)) == 1
    (time_c,) = [u for u in image.units if u.path == str(image.path.parent / "kernel/time.c")]
    assert len(time_c.ranges) == 2  # DW_AT_ranges: one function per section

    def region(name: str) -> str | None:
        found = image.excluded(address(image, name))
        return found.rule.name if found else None

    assert region("do_gettimeofday") == "kernel/time.c"
    assert region("sys_time") == "kernel/time.c"
    assert region("timer_interrupt") == "arch/i386/kernel/time.c"  # the longer rule owns it
    assert region("system_call") == "trap and interrupt entry (arch/i386/kernel/entry.S)"
    assert region("do_int3") == "probe machinery: do_int3"
    assert region("do_timer") is None
    assert region("schedule") is None
    assert region("sys_write") is None
    assert [rule.function for rule in image.unmatched_rules] == ["do_debug"]
    assert len({rule.name for rule in EXCLUDE_RULES}) == len(EXCLUDE_RULES)


# --- resolution, verification, insertion ------------------------------------------------


def test_resolution_and_statuses(vmlinux: Path, image: KernelImage) -> None:
    schedule, do_timer = address(image, "schedule"), address(image, "do_timer")
    sys_write = address(image, "sys_write")
    program = build(
        vmlinux,
        probe("sys_write")  # 0: a symbol
        + probe(f"{schedule - 0xC0000000:#x}")  # 1: an offset from PAGE_OFFSET
        + probe(f"{do_timer:#x}", "address = absolute")  # 2: an absolute address
        + probe("sys_write+1")  # 3: not an instruction boundary
        + probe("0xC0200000", "address = absolute")  # 4: outside the kernel text
        + probe("do_gettimeofday")  # 5: kernel/time.c
        + probe("timer_interrupt")  # 6: arch/i386/kernel/time.c
        + probe("0x7000000")  # 7: past the text (0xC7000000)
        + probe("schedule"),  # 8: the address of probe 1 again
    )
    assert program.probes[0].offset == sys_write - 0xC0000000
    assert program.probes[2].offset == do_timer
    machine = mapped_machine(image)
    before = {where: kernel_byte(machine, where) for where in (sys_write, schedule, do_timer)}
    manager = ProbeManager(machine, kernel_path=str(vmlinux))
    loaded = manager.insert(program)
    status = [record.status for record in loaded.records]
    active = RecordStatus.COMPILED | RecordStatus.ACTIVE
    assert status[:3] == [active] * 3
    assert [loaded.records[i].address for i in range(3)] == [sys_write, schedule, do_timer]
    assert (
        status[3] == status[4] == status[7] == RecordStatus.COMPILED | RecordStatus.INVALID_OFFSET
    )
    assert "not an instruction boundary" in loaded.records[3].notes[0]
    assert "not in the kernel text" in loaded.records[4].notes[0]
    assert status[5] == status[6] == RecordStatus.COMPILED | RecordStatus.EXCLUDED
    assert "in exclude region kernel/time.c" in loaded.records[5].notes[0]
    assert "in exclude region arch/i386/kernel/time.c" in loaded.records[6].notes[0]
    assert status[8] == RecordStatus.COMPILED | RecordStatus.DUPLICATE
    assert loaded.records[8].notes == [f"{schedule:#010x} is already probed by probe 1"]
    for where in (sys_write, schedule, do_timer):
        assert kernel_byte(machine, where) == INT3
    for name in ("do_gettimeofday", "timer_interrupt"):
        assert kernel_byte(machine, address(image, name)) == image.read(address(image, name), 1)[0]
    assert manager.remove("k") == 1
    assert {where: kernel_byte(machine, where) for where in before} == before


def test_unmapped_kernel_and_opcode_mismatch(vmlinux: Path, image: KernelImage) -> None:
    manager = ProbeManager(Machine(kernel=False), kernel_path=str(vmlinux))
    schedule = address(image, "schedule")
    wrong = image.read(schedule, 1)[0] ^ 1
    loaded = manager.insert(
        build(vmlinux, probe("sys_write") + probe("schedule", f"opcode = {wrong}"))
    )
    record, mismatch = loaded.records
    assert record.armed
    assert record.notes == ["no guest kernel runs (dpc run --no-kernel): no int3 written"]
    assert mismatch.status == RecordStatus.COMPILED | RecordStatus.MISMATCH
    assert mismatch.actual_opcode == wrong ^ 1


def test_merge_keeps_excluded_and_one_probe_per_address(vmlinux: Path, image: KernelImage) -> None:
    machine = mapped_machine(image)
    sys_write = address(image, "sys_write")
    manager = ProbeManager(machine, kernel_path=str(vmlinux))
    first = manager.insert(build(vmlinux, probe("do_gettimeofday") + probe("sys_write")))
    second = manager.insert(
        build(vmlinux, probe("sys_write") + probe("do_gettimeofday")), merge=True
    )
    assert first.records[0].status == RecordStatus.COMPILED | RecordStatus.EXCLUDED
    assert first.records[1].status == RecordStatus.COMPILED | RecordStatus.REMOVED
    assert first.records[1].notes == ["replaced by merge"]
    assert second.records[0].armed
    assert second.records[1].status == RecordStatus.COMPILED | RecordStatus.EXCLUDED
    assert kernel_byte(machine, sys_write) == INT3
    other = manager.insert(build(vmlinux, probe("sys_write"), name="other"))
    assert other.records[0].status == RecordStatus.COMPILED | RecordStatus.DUPLICATE
    manager.remove()
    assert kernel_byte(machine, sys_write) == image.read(sys_write, 1)[0]


def test_trap3_reentered_during_a_step_removes_the_kernel_probe(
    vmlinux: Path, image: KernelImage
) -> None:
    machine = mapped_machine(image)
    sys_write = address(image, "sys_write")
    manager = ProbeManager(machine, kernel_path=str(vmlinux))
    record = manager.insert(build(vmlinux, probe("sys_write"))).records[0]
    process = SimpleNamespace(pid=7)  # a process between trap3 and trap1 of a user probe
    manager.steps.pending[7] = SimpleNamespace(slot=0x1000, plan=SimpleNamespace(length=2))
    trap = Trap(BREAKPOINT, sys_write + 1, sys_write)
    assert manager.steps.handle_trap(machine, process, trap)
    assert record.status == RecordStatus.COMPILED | RecordStatus.REMOVED
    assert "re-entered" in record.notes[-1]
    assert record.hits == 0  # the handler did not run
    assert kernel_byte(machine, sys_write) == image.read(sys_write, 1)[0]
    assert machine.cpu.reg("eip") == sys_write
    assert manager.lookup_kernel(sys_write) is None


# --- bad input and the command line -----------------------------------------------------


def test_a_bad_kernel_image_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "vmlinux"
    bogus.write_bytes(b"not an elf")
    manager = ProbeManager(Machine(kernel=False), kernel_path=str(bogus))
    program = compile_rpn("k.rpn", text="name = k\nmodtype = kernel\noffset = 0\n exit\n").program
    with pytest.raises(InsertError, match="not a usable kernel image: not an ELF file"):
        manager.insert(program)


def test_symbols_need_a_kernel_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernel_layout, "KERNEL_IMAGE", tmp_path / "missing")
    with pytest.raises(CompileError) as error:
        compile_rpn("k.rpn", text="name = k\nmodtype = kernel\noffset = sys_write\n exit\n")
    text = " ".join(d.message + " ".join(d.hints) for d in error.value.diagnostics)
    assert "unknown symbol 'sys_write'" in text and "give --kernel-image PATH" in text


def dpc(capfd: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = cli.main(list(args))
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    return status, out, err


def test_dpc_build_and_run_query(vmlinux: Path, image: KernelImage, tmp_path: Path, capfd) -> None:
    source = tmp_path / "k.rpn"
    source.write_text(
        "name = k\nmodtype = kernel\n"
        + probe("do_gettimeofday")
        + probe("sys_write")
        + probe("timer_interrupt")
    )
    merged = tmp_path / "k2.rpn"
    merged.write_text("name = k\nmodtype = kernel\n" + probe("do_gettimeofday"))
    status, out, _ = dpc(capfd, "build", "--kernel-image", str(vmlinux), str(source))
    assert status == 0 and "3 probe(s)" in out
    status, _, err = dpc(
        capfd,
        "run",
        "--no-kernel",  # the test image is not runnable: check probes against it alone
        "--kernel-image",
        str(vmlinux),
        "--probes",
        str(tmp_path / "k.ppdf"),
        "--probes",
        str(merged),
        "--merge",
        "--query",
        "--",
        str(BIN / "loop"),
    )
    assert status == 7  # loop's own exit status: the run went on as without probes
    query = [line for line in err.splitlines() if line.startswith("k probe")]
    gettimeofday = address(image, "do_gettimeofday")
    timer = address(image, "timer_interrupt")
    time_c = image.excluded(gettimeofday)
    arch_time_c = image.excluded(timer)
    assert time_c is not None and arch_time_c is not None
    excluded = (
        "k probe 0 at do_gettimeofday: compiled|excluded count=0 hits=0 "
        f"({gettimeofday:#010x} is in exclude region kernel/time.c "
        f"[{time_c.start:#010x}, {time_c.end:#010x}))"
    )
    assert query == [
        excluded,
        "k probe 1 at sys_write: compiled|active count=0 hits=0 "
        "(no guest kernel runs (dpc run --no-kernel): no int3 written)",
        "k probe 2 at timer_interrupt: compiled|excluded count=0 hits=0 "
        f"({timer:#010x} is in exclude region arch/i386/kernel/time.c "
        f"[{arch_time_c.start:#010x}, {arch_time_c.end:#010x}))",
        excluded,  # the merged program's probe: still excluded
    ]
    assert "k.ppdf: probe 0 at do_gettimeofday not inserted: compiled|excluded;" in err


def test_dpc_bad_kernel_options(vmlinux: Path, tmp_path: Path, capfd) -> None:
    source = tmp_path / "k.rpn"
    source.write_text("name = k\nmodtype = kernel\n" + probe("sys_write"))
    status, _, err = dpc(capfd, "build", "--kernel-image", str(tmp_path / "nope"), str(source))
    assert status == 2 and "cannot read symbol file" in err
    absolute = tmp_path / "a.rpn"
    absolute.write_text("name = k\nmodtype = kernel\n" + probe("0xC0100000", "address = absolute"))
    bogus = tmp_path / "bogus"
    bogus.write_bytes(b"\x7fELF")
    run = ("run", "--no-kernel", "--kernel-image", str(bogus), "--probes")
    status, _, err = dpc(capfd, *run, str(absolute), "--", str(BIN / "loop"))
    assert status == 2 and "bogus: byte 4: error: truncated ELF file" in err  # the compiler's
    assert dpc(capfd, "build", "--kernel-image", str(vmlinux), str(absolute))[0] == 0
    status, _, err = dpc(capfd, *run, str(tmp_path / "a.ppdf"), "--", str(BIN / "loop"))
    assert status == 2  # the runtime's
    assert "kernel probes need the kernel image" in err and "not a usable kernel image" in err


def test_the_built_kernel_image(capfd, tmp_path: Path) -> None:
    """The committed guest kernel: its time files and entry code are excluded, the system
    calls are not, and ``dpc build`` takes its symbols without ``--kernel-image``."""
    if not kernel_layout.KERNEL_IMAGE.is_file():
        pytest.skip("the guest kernel image is not built in this tree")
    built = KernelImage.load()

    def rule(name: str) -> str | None:
        found = built.excluded(address(built, name))
        return found.rule.name if found else None

    assert rule("do_gettimeofday") == "kernel/time.c"
    assert rule("timer_interrupt") == "arch/i386/kernel/time.c"
    assert rule("system_call") == "trap and interrupt entry (arch/i386/kernel/entry.S)"
    for name in ("sys_write", "schedule", "do_fork"):
        assert rule(name) is None and built.is_boundary(address(built, name))
    source = tmp_path / "k.rpn"
    source.write_text("name = k\nmodtype = kernel\n" + probe("sys_write"))
    assert dpc(capfd, "build", str(source))[0] == 0
    status, out, _ = dpc(capfd, "disasm", str(tmp_path / "k.ppdf"))
    assert status == 0 and f"{address(built, 'sys_write') - 0xC0000000:#x}" in out


# --- firing on the guest kernel ---------------------------------------------------------


def qemu_writes(program: Path) -> list[int]:
    """The fd of every write(2) the program makes, as ``qemu-i386 -strace`` shows them."""
    if shutil.which("qemu-i386") is None:
        pytest.skip("needs qemu-i386 to count the program's write calls")
    trace = subprocess.run(
        ["qemu-i386", "-strace", str(program)], capture_output=True, text=True, check=False
    ).stderr
    return [
        int(line.split("write(", 1)[1].split(",", 1)[0])
        for line in trace.splitlines()
        if " write(" in line
    ]


def fire(
    source: str, program: str, *args: str, tier: str = "interp"
) -> tuple[ProbeManager, list[int], object]:
    """Run ``program`` with the kernel program ``source``; also gives ``current`` at each log."""
    machine = Machine(kernel=True)
    kernel = machine.guest_kernel
    assert kernel is not None
    manager = ProbeManager(machine, tier=tier)
    current: list[int] = []
    manager.on_log.append(lambda _: current.append(kernel.word("current")))
    manager.insert(compile_rpn("k.rpn", text=source).program)
    process = machine.spawn(BIN / program, [str(BIN / program), *args])
    machine.run(max_instructions=50_000_000)
    return manager, current, process


def test_a_probe_on_sys_write_fires_once_per_write() -> None:
    fds = qemu_writes(BIN / "strings")
    manager, current, process = fire(
        "name = k\nmodtype = kernel\nlog = PID PROCNAME\n"
        "offset = sys_write\n    push u, ebx\n    push task\n    log 2\n    exit\n",
        "strings",
    )
    expected_out, expected_status = RUNS["strings"][1](), RUNS["strings"][2]
    assert process.output() == expected_out and process.returncode == expected_status
    records = list(manager.emitted)
    assert len(records) == len(fds) > 0
    logged = [struct.unpack("<2I", entry.record.data) for entry in records]
    assert [fd for _, fd in logged] == fds  # push u, ebx: the fd the program passed
    assert {entry.record.hit.pid for entry in records} == {process.pid}
    assert {entry.record.hit.procname for entry in records} == {"strings"}
    assert [task for task, _ in logged] == current  # push task: current's task_struct


def test_a_probe_on_a_call_in_the_kernel_steps_it_right() -> None:
    """The probed instruction is a call: the out-of-line step's return address is
    repaired on the kernel stack."""
    image = KernelImage.load()
    start = address(image, "sys_write")
    code = image.read(start, 0x100)
    call = next(
        start + i for i in range(len(code)) if code[i] == 0xE8 and image.is_boundary(start + i)
    )
    manager, _, process = fire(
        f"name = k\nmodtype = kernel\noffset = {call:#x}\naddress = absolute\n    exit\n", "strings"
    )
    assert process.output() == RUNS["strings"][1]() and process.returncode == RUNS["strings"][2]
    assert manager.query()[0].hits == len(qemu_writes(BIN / "strings"))


def test_dpc_run_kernel_fires_kernel_probes_and_keeps_excluded_ones(tmp_path: Path, capfd) -> None:
    """``dpc run --kernel``: the sys_write probe logs once per write (EVL lines), the probe
    on do_gettimeofday is EXCLUDED with its region, and the program behaves as without."""
    fds = qemu_writes(BIN / "strings")
    source = tmp_path / "k.rpn"
    source.write_text(
        "name = k\nmodtype = kernel\nlog = PID PROCNAME\n"
        + probe("sys_write", "    push u, ebx", "    log 1")
        + probe("do_gettimeofday")
    )
    log = tmp_path / "k.evl"
    status, out, err = dpc(
        capfd,
        "run",
        "--kernel",
        "--log-target",
        "EVL",
        "--log-file",
        str(log),
        "--query",
        "--probes",
        str(source),
        "--",
        str(BIN / "strings"),
    )
    expected_out, expected_err = RUNS["strings"][1]()
    assert (status, out) == (RUNS["strings"][2], expected_out) and expected_err in err
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [int.from_bytes(bytes.fromhex(line["data"]), "little") for line in lines] == fds
    assert {(line["pid"], line["name"]) for line in lines} == {(1, "strings")}
    assert f"k probe 0 at sys_write: compiled|active count={len(fds)} hits={len(fds)}" in err
    assert "k probe 1 at do_gettimeofday: compiled|excluded count=0 hits=0" in err
    assert "exclude region kernel/time.c" in err


def test_kernel_probes_stay_on_the_python_path_with_native_hooks() -> None:
    """With a compiling tier a user probe moves to the native hook after its first hit; a
    kernel probe must not: push u (current's pt_regs, not the kernel's registers), push
    task (current) and the log's pid come from the Python path on every hit."""
    source = (
        "name = k\nmodtype = kernel\nlog = PID PROCNAME\noffset = sys_write\n"
        "    push u, edx\n    push u, esp\n    push task\n    push r, esp\n    log 4\n    exit\n"
    )
    runs = {tier: fire(source, "strings", tier=tier) for tier in ("interp", "jit")}
    records = {
        tier: [(e.record.hit.pid, e.record.hit.procname, e.record.data) for e in manager.emitted]
        for tier, (manager, _, _) in runs.items()
    }
    assert len(records["interp"]) == len(qemu_writes(BIN / "strings"))
    assert records["jit"] == records["interp"]
    manager, current, _ = runs["jit"]
    tasks = [struct.unpack("<4I", data)[1] for _, _, data in records["jit"]]
    assert tasks == current and not manager.native.tables.get(1)


def test_probes_on_schedule_and_do_timer_fire_once_per_call() -> None:
    """Two programs under a 1000-instruction tick: the schedule probe fires exactly as often
    as schedule's body runs (a unicorn hook on its second instruction counts that), the
    probe on do_timer (timer_interrupt's callee, kernel/timer.c: not excluded) once per
    tick (the kernel's own jiffies), while the probe on timer_interrupt stays EXCLUDED."""
    machine = Machine(kernel=True, tick=1000)
    kernel = machine.guest_kernel
    assert kernel is not None
    manager = ProbeManager(machine, tier="interp")
    source = (
        "name = k\nmodtype = kernel\nlog = PID\n"
        + probe("schedule", "    push task", "    log 1")
        + probe("do_timer")
        + probe("timer_interrupt")
    )
    manager.insert(compile_rpn("k.rpn", text=source).program)
    schedule = kernel.image.symbol("schedule")
    second = schedule + 1  # after `push %ebp`
    assert kernel.image.is_boundary(second) and kernel.image.read(schedule, 1) == b"\x55"
    ran: list[int] = []
    machine.cpu.uc.hook_add(
        UC_HOOK_CODE, lambda *_: ran.append(kernel.word("current")), begin=second, end=second
    )
    first, other = (machine.spawn(BIN / "loop", [str(BIN / "loop")]) for _ in range(2))
    machine.run(max_instructions=50_000_000)
    assert first.returncode == other.returncode == RUNS["loop"][2]
    on_schedule, on_timer, on_interrupt = manager.query()
    assert on_schedule.hits == len(ran) > 0
    logged = [e.record for e in manager.emitted if e.record.data]  # do_timer's have none
    assert [struct.unpack("<I", record.data)[0] for record in logged] == ran  # current
    assert {record.hit.pid for record in logged} == {first.pid, other.pid}
    assert on_timer.hits == kernel.word("jiffies") > on_schedule.hits
    assert "excluded" in on_interrupt.status and on_interrupt.hits == 0


def test_building_a_kernel_program_does_not_load_the_machine() -> None:
    """The compiler takes kernel symbols from the image without importing the runtime (and
    so unicorn): KERNEL_IMAGE and KERNEL_BASE live in dprobes.kernel_layout."""
    script = (
        "import sys\n"
        "from dprobes.compiler.pipeline import compile_rpn\n"
        "text = 'name = k\\nmodtype = kernel\\noffset = sys_write\\n exit\\n'\n"
        "print(compile_rpn('k.rpn', text=text).program.probes[0].offset)\n"
        "print(sorted(m for m in ('unicorn', 'dprobes.runtime') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    offset, loaded = done.stdout.splitlines()
    image = KernelImage.load()
    assert int(offset) == image.symbol("sys_write") - kernel_layout.KERNEL_BASE
    assert loaded == "[]"
