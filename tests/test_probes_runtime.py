"""User-space probes in the emulated machine: DProbes' insertion and firing rules end to end.

Every test runs three ways: Python hooks with the interpreter, Python hooks with the JIT,
and native hooks (``runtime.native_probes``) with the JIT.
"""

from __future__ import annotations

import functools
import struct
import sys
from pathlib import Path

import pytest

from dprobes.compiler.pipeline import BuildOptions, compile_rpn
from dprobes.runtime import probes
from dprobes.runtime.codemap import CodeMap
from dprobes.runtime.kernel import TASK_AREA
from dprobes.runtime.machine import Machine
from dprobes.runtime.probes import InsertError, ProbeManager
from dprobes.runtime.xol import instruction_starts
from dprobes.tests import guest_expectations as expect
from dprobes.tests.guest_expectations import symbol

BIN = expect.BIN
HOOK_MODES = {
    "python": {"tier": "interp"},
    "python-jit": {"tier": "jit", "native_hooks": False},
    "native": {"tier": "jit", "native_hooks": True},
}


@pytest.fixture(autouse=True, params=list(HOOK_MODES))
def hooks(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Make this module's ProbeManager use one of the hook modes by default."""
    monkeypatch.setattr(
        sys.modules[__name__],
        "ProbeManager",
        functools.partial(probes.ProbeManager, **HOOK_MODES[request.param]),
    )
    return request.param


def instruction_offsets(program: str, name: str, end_name: str | None = None) -> list[int]:
    """Every instruction from symbol ``name`` to its end (or to ``end_name``, within the
    code segment)."""
    start, size, _ = symbol(program, name)
    segment = CodeMap.load(BIN / program).segment(start)
    assert segment is not None
    end = (
        min(symbol(program, end_name)[0], segment.offset + segment.filesz)
        if end_name
        else start + size
    )
    code = (BIN / program).read_bytes()[start:end]
    return sorted(instruction_starts(code, start))


def build(source: str, program: str = "loop", **defines: str):
    return compile_rpn(
        "t.rpn", BuildOptions(defines=defines, elf=str(BIN / program)), text=source
    ).program


def header(program: str, extra: str = "") -> str:
    return f"name = {BIN / program}\nmodtype = user\n{extra}\n"


def run(program: str, *sources: str, argv: list[str] | None = None, **options):
    machine = Machine()
    manager = ProbeManager(machine, **options)
    loaded = [manager.insert(build(source, program)) for source in sources]
    process = machine.spawn(BIN / program, argv)
    machine.run(max_instructions=200_000_000)
    return process, manager, loaded


ADD3_ARGS = """
offset = add3
opcode = 0x55
    push r, esp
    push 12
    add
    push mem_u32
    push r, esp
    push 8
    add
    push mem_u32
    push r, esp
    push 4
    add
    push mem_u32
    log 3
    exit
"""


def test_probe_logs_the_arguments_the_program_passes() -> None:
    process, manager, _ = run("loop", header("loop", "log = PID") + ADD3_ARGS)
    assert (process.returncode, process.output()) == (7, expect.loop_expected())
    logged = [struct.unpack("<3i", e.record.data) for e in manager.emitted]
    printed = [(1, 2, 3), (10, 20, 30), (-5, 100, 7)]  # add3(a, b, c) lines of the output
    assert logged == printed
    assert all(e.record.describe()["pid"] == process.pid for e in manager.emitted)


def test_registers_match_the_trap_frame() -> None:
    source = (
        header("loop")
        + """
offset = add3
    push r, eip
    push r, cs
    push r, ss
    push u, eip
    log 4
    exit
"""
    )
    _, manager, _ = run("loop", source)
    _, _, vaddr = symbol("loop", "add3")
    eip, cs, ss, ueip = struct.unpack("<4I", manager.emitted[0].record.data)
    assert (ueip, eip, cs & 3, ss & 3) == (vaddr + 1, vaddr + 1, 3, 3)


HOT = {
    "loop": ("work", None),
    "strings": ("str_find", None),
    "recurse": ("fib", None),
    "fpu": ("harmonic", None),
    "args": ("main", None),
    "bound": ("_start", "limits"),
    "hello_glibc": ("main", None),
}


@pytest.mark.parametrize("program", sorted(HOT))
def test_transparency_with_a_probe_on_every_instruction(program: str) -> None:
    name, end = HOT[program]
    offsets = instruction_offsets(program, name, end)
    probes = "".join(f"offset = 0x{off:x}\nmax_hits = 300\n    exit\n" for off in offsets)
    plain, _, _ = run(program)
    probed, manager, _ = run(program, header(program) + probes)
    assert (probed.returncode, probed.output()) == (plain.returncode, plain.output())
    rows = manager.query()
    assert len(rows) == len(offsets) and all(
        "active" in r.status or "disabled" in r.status for r in rows
    )
    assert sum(r.hits for r in rows) > 0


BOUND_PROBE = """
offset = bound_fail
logonfault = {flag}
    push r, eax
    log 1
    exit
"""


@pytest.mark.parametrize("flag", ["yes", "no"])
def test_failing_bound_logs_only_with_logonfault(flag: str) -> None:
    process, manager, _ = run("bound", header("bound") + BOUND_PROBE.format(flag=flag))
    assert process.returncode == -11 and process.output()[0] == expect.BOUND_STDOUT
    _, _, vaddr = symbol("bound", "bound_fail")
    assert process.crash is not None and process.crash.eip == vaddr
    logged = [e.record.data for e in manager.emitted]
    assert logged == ([struct.pack("<I", 10)] if flag == "yes" else [])
    assert manager.query()[0].count == (1 if flag == "yes" else 0)  # 5.0's fault handler


def counting(extra: str, body: str = "    inc lv, 0\n    exit\n") -> str:
    return header("loop", "num_lv = 1") + f"offset = work\n{extra}\n" + body


def test_pass_count_and_max_hits() -> None:
    _, manager, (loaded,) = run("loop", counting("pass_count = 10\nmax_hits = 25"))
    (row,) = manager.query()
    # the first 10 hits are passed over, the next 25 run the handler, then it is disabled
    assert loaded.vm.locals == [25]
    assert "disabled" in row.status and row.count == 25 and row.hits == 35
    assert len(manager.emitted) == 25


def test_rem_removes_the_probe_after_the_hit() -> None:
    process, manager, (loaded,) = run("loop", counting("", "    inc lv, 0\n    rem\n"))
    assert process.returncode == 7 and loaded.vm.locals == [1]
    assert "removed" in manager.query()[0].status and len(manager.emitted) == 1


def test_abort_writes_no_log_and_exit_to_is_recorded() -> None:
    _, manager, _ = run("loop", counting("max_hits = 5", "    push 1\n    log 1\n    abort\n"))
    assert manager.emitted == []
    _, manager, _ = run("loop", counting("max_hits = 2", "    exit_to 3\n"))
    assert [facility for _, facility, _ in manager.exits] == [3, 3]
    assert len(manager.emitted) == 2


def test_opcode_mismatch_and_bad_offsets() -> None:
    work, _, _ = symbol("loop", "work")
    source = (
        header("loop")
        + f"""
offset = work
opcode = 0x90
    exit
offset = 0x{work + 2:x}
    exit
offset = 0x10
    exit
"""
    )
    machine = Machine()
    manager = ProbeManager(machine)
    manager.insert(build(source))
    mismatch, inside, data = manager.query()
    assert "mismatch" in mismatch.status and mismatch.actual_opcode == 0x55
    assert "invalid_offset" in inside.status and "instruction boundary" in inside.notes[0]
    assert "invalid_offset" in data.status and "executable segment" in data.notes[0]
    relaxed = ProbeManager(Machine(), verify_opcodes=False)
    relaxed.insert(build(source))
    assert "active" in relaxed.query()[0].status


def test_one_probe_per_address_and_merge_replace() -> None:
    machine = Machine()
    manager = ProbeManager(machine)
    manager.insert(build(counting("")))
    with pytest.raises(InsertError, match="already has a probe program"):
        manager.insert(build(counting("")))
    manager.insert(build(counting("minor = 9")), merge=True)
    old, new = manager.query()
    assert "removed" in old.status and "replaced by merge" in old.notes
    assert "active" in new.status
    manager.insert(build(counting("minor = 5")), replace_old=True)
    assert [r.status for r in manager.query()] == ["compiled|active"]


def test_shared_page_cache_frame_cow_and_swapped_copies() -> None:
    machine = Machine()
    first = machine.spawn(BIN / "loop")
    second = machine.spawn(BIN / "loop")
    third = machine.spawn(BIN / "loop")
    _, _, vaddr = symbol("loop", "work")
    page = vaddr & ~0xFFF
    for process in (first, second, third):
        process.space.read(page, 1)  # fault the text page in
    second.space.write(vaddr + 100, b"\x90", force=True)  # a debugger made a private copy
    private = second.space.page_of(page).frame
    assert private != first.space.page_of(page).frame
    third.space.write(vaddr + 100, b"\x90", force=True)
    third.space.swap_out(page)
    manager = ProbeManager(machine)
    manager.insert(
        build(header("loop", "log = PID") + "offset = work\nmax_hits = 40000\n    exit\n")
    )
    for process in (first, second, third):  # page cache, private copy, swapped copy
        assert process.space.read(vaddr, 1) == b"\xcc"
    machine.run(max_instructions=200_000_000)
    assert {e.record.describe()["pid"] for e in manager.emitted} == {1, 2, 3}
    assert all(p.returncode == 7 for p in (first, second, third))
    assert all(p.output() == expect.loop_expected() for p in (first, second, third))


def test_removal_restores_every_copy_and_page_in_replants() -> None:
    machine = Machine()
    process = machine.spawn(BIN / "loop")
    _, _, vaddr = symbol("loop", "work")
    manager = ProbeManager(machine)
    manager.insert(build(counting("")))
    file = machine.cache.open(BIN / "loop")
    assert file.write_denied == 1
    assert process.space.read(vaddr, 1) == b"\xcc"
    assert machine.cache.drop(file, (symbol("loop", "work")[0]) >> 12)
    assert process.space.read(vaddr, 1) == b"\xcc"  # read back in: the readpage hook
    manager.remove()
    assert process.space.read(vaddr, 1) == b"\x55" and file.write_denied == 0
    machine.run(max_instructions=200_000_000)
    assert process.returncode == 7 and manager.emitted == []


def test_getvars_and_reset() -> None:
    _, manager, _ = run("loop", counting("max_hits = 4"))
    module = str(BIN / "loop")
    assert manager.getvars()[module] == [4]
    assert manager.getvars(reset=True)[module] == [4]
    assert manager.getvars()[module] == [0]


def test_kernel_programs_need_the_kernel_image(tmp_path: Path) -> None:
    manager = ProbeManager(Machine(kernel=False), kernel_path=str(tmp_path / "vmlinux"))
    with pytest.raises(InsertError, match="need the kernel image: no kernel image at"):
        manager.insert(build("name = k\nmodtype = kernel\noffset = 0\n exit\n"))


def test_missing_executable() -> None:
    with pytest.raises(InsertError, match="no such executable"):
        ProbeManager(Machine()).insert(build("name = /nope\nmodtype = user\noffset = 0\n exit\n"))


def test_probe_state_is_deterministic() -> None:
    first = run("loop", header("loop", "log = TSC PID") + ADD3_ARGS)[1]
    second = run("loop", header("loop", "log = TSC PID") + ADD3_ARGS)[1]
    assert [e.record.to_bytes() for e in first.emitted] == [
        e.record.to_bytes() for e in second.emitted
    ]


def test_dpc_run_cli(tmp_path: Path, capfdbinary) -> None:
    from dprobes.cli import main as cli

    probe = tmp_path / "p.rpn"
    probe.write_text(counting("max_hits = 3"))
    log = tmp_path / "log.jsonl"
    status = cli.main(
        [
            "run",
            "--probes",
            str(probe),
            "--elf",
            str(BIN / "loop"),
            "--query",
            "--getvars",
            "--log-target",
            "EVL",
            "--log-file",
            str(log),
            "--",
            str(BIN / "loop"),
        ]
    )
    out, err = capfdbinary.readouterr()
    assert status == 7 and out.decode() == expect.loop_expected()[0]
    assert b"count=3" in err and b"=0x3" in err
    assert len(log.read_text().splitlines()) == 3


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: tmp / "missing", "No such file"),
        (lambda tmp: (tmp / "text").write_text("hello") and tmp / "text", "not an ELF"),
        (lambda tmp: Path("/bin/true"), "64-bit"),
        (
            lambda tmp: (
                (tmp / "cut").write_bytes((BIN / "loop").read_bytes()[:300]) and tmp / "cut"
            ),
            "truncated",
        ),
    ],
)
def test_dpc_run_bad_programs(make, message: str, tmp_path: Path, capfd) -> None:
    from dprobes.cli import main as cli

    status = cli.main(["run", "--", str(make(tmp_path))])
    err = capfd.readouterr().err
    assert status == 2 and message in err and "Traceback" not in err


def test_dpc_run_reports_probes_it_could_not_insert(tmp_path: Path, capfd) -> None:
    from dprobes.cli import main as cli

    work, _, _ = symbol("loop", "work")
    probe = tmp_path / "p.rpn"
    probe.write_text(header("loop") + f"offset = 0x{work + 2:x}\n    exit\n")
    status = cli.main(["run", "--probes", str(probe), "--", str(BIN / "loop")])
    err = capfd.readouterr().err
    assert status == 7 and "not an instruction boundary" in err and "invalid_offset" in err


def test_dpc_run_missing_symbol_and_instruction_limit(tmp_path: Path, capfd) -> None:
    from dprobes.cli import main as cli

    probe = tmp_path / "p.rpn"
    probe.write_text(header("loop") + "offset = no_such_function\n    exit\n")
    status = cli.main(
        ["run", "--probes", str(probe), "--elf", str(BIN / "loop"), "--", str(BIN / "loop")]
    )
    err = capfd.readouterr().err
    assert status == 2 and "unknown symbol 'no_such_function'" in err
    status = cli.main(["run", "--max-instructions", "10000", "--", str(BIN / "loop")])
    err = capfd.readouterr().err
    assert status == 124 and "dpc run: stopped:" in err and "instruction limit of 10000" in err


def test_group_selection_and_insertion_mid_run() -> None:
    from dprobes.runtime.machine import InstructionLimit

    machine = Machine()
    manager = ProbeManager(machine)
    process = machine.spawn(BIN / "loop")
    with pytest.raises(InstructionLimit):  # run part of the program first
        machine.run(max_instructions=500_000)
    source = (
        header("loop") + "offset = work\ngroup = 1\n    exit\noffset = add3\ngroup = 2\n    exit\n"
    )
    manager.insert(build(source), groups={2})
    work, add3 = manager.query()
    assert "not selected by group/type" in work.notes and "active" in add3.status
    machine.run(max_instructions=200_000_000)
    assert process.returncode == 7 and manager.query()[1].hits == 3
    assert manager.query()[0].hits == 0


def test_runtime_logs_agree_across_tiers() -> None:
    """The runtime's hits produce the same records whether the interpreter or the JIT runs
    the handler (one semantics)."""
    source = header("loop", "log = PID TSC") + ADD3_ARGS
    records = []
    for tier in ("interp", "jit"):
        _, manager, _ = run("loop", source, tier=tier)
        records.append([e.record.to_bytes() for e in manager.emitted])
    assert records[0] == records[1] and len(records[0]) == 3


def test_context_reads_fpu_control_segments_and_system_variables() -> None:
    source = (
        header("loop")
        + """
offset = add3
max_hits = 1
    push u, fcw
    push u, mxcsr
    push 0x7b
    push 0x10
    seg2lin
    push task
    push procid
    push 0x1b
    push r, msr
    log 7
    push 0x3c
    push 0
    seg2lin
    log 1
    exit
"""
    )
    process, manager, _ = run("loop", source)
    data = manager.emitted[0].record.data
    assert len(data) == 7 * 4  # the LDT selector 0x3c raised EX_SEG_FAULT before `log 1`
    fcw, mxcsr, linear, task, cpu, _msr_high, _msr_low = struct.unpack("<7I", data)[::-1]
    assert (fcw, mxcsr, linear, cpu) == (0x37F, 0x1F80, 0x10, 0)
    assert task == TASK_AREA  # current: the guest kernel's task union of the only process
    assert process.returncode == 7


def test_dpc_run_com_and_unformatted_klog_targets(tmp_path: Path, capfdbinary) -> None:
    from dprobes.cli import main as cli

    probe = tmp_path / "p.rpn"
    probe.write_text(header("loop") + "offset = add3\n    push r, eax\n    log 1\n    exit\n")
    serial = tmp_path / "com1.bin"
    status = cli.main(
        [
            "run",
            "--probes",
            str(probe),
            "--elf",
            str(BIN / "loop"),
            "--log",
            "PID",
            "--log-target",
            "COM1",
            "--log-file",
            str(serial),
            "--",
            str(BIN / "loop"),
        ]
    )
    capfdbinary.readouterr()
    raw = serial.read_bytes()
    records = raw.split(b"\r\n")[:-1]
    assert status == 7 and len(records) == 3
    for record in records:
        facility, length, _mask, _major, _minor, pid = struct.unpack_from("<HHIHHI", record)
        assert (facility, length, pid, len(record)) == (1, 16, 1, 20)  # len: the header
    status = cli.main(
        ["run", "--probes", str(probe), "--elf", str(BIN / "loop"), "-f", "--", str(BIN / "loop")]
    )
    err = capfdbinary.readouterr().err.decode()
    lines = [line for line in err.splitlines() if line.startswith("dprobes(")]
    assert status == 7 and len(lines) == 2 * 3 and "0x00000000 : " not in err


def test_boundary_sweeps_resume_where_they_stopped() -> None:
    """One CodeMap answering offsets in any order (its sweeps go on from where the last
    one stopped) agrees with a fresh sweep from the function start for each offset."""
    import random

    shared = CodeMap.load(BIN / "hello_glibc")
    segment = shared.segments[0]
    offsets = list(range(segment.offset, segment.offset + 3000))
    random.Random(9).shuffle(offsets)
    answers = [shared.is_boundary(offset) for offset in offsets]
    fresh = [
        CodeMap(shared.data, shared.segments, shared.functions).is_boundary(offset)
        for offset in offsets
    ]
    assert answers == fresh
    assert 0 < sum(answers) < len(answers)
