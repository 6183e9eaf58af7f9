"""Native probe hooks against the Python path: the same runs give the same results.

Each scenario runs once with Python hooks and the interpreter (the reference) and once
with native hooks, and everything observable must be equal: every log record (header and
data) and exception log, the exits, the records' status and counts, the variables, the
programs' output and exit status. The scenarios reach every way a native hit can go:
emulated ``push``, stepped relative and absolute instructions and calls, the pass count,
``max_hits``, ``rem``, ``exit_to``, ``abort``, register writes, memory reads, two programs
sharing the per-CPU stack and the globals, and processes preempted in the middle of a
step. Each also checks that native hits really happened.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import capstone
import pytest

from dprobes.compiler.pipeline import BuildOptions, compile_rpn
from dprobes.runtime import ring
from dprobes.runtime.addrspace import Prot
from dprobes.runtime.machine import InstructionLimit, Machine
from dprobes.runtime.native import layout as N
from dprobes.runtime.native_probes import NativeProbes, hit_reads, python_only_reason
from dprobes.runtime.probes import ProbeManager
from dprobes.tests import guest_expectations as expect
from dprobes.tests.guest_expectations import symbol
from dprobes.vm.api import DEFAULT_HOT_THRESHOLD
from dprobes.vm.program import LogField
from dprobes.vm.registers import REGISTERS_BY_NAME

BIN = expect.BIN
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MODES = {"python": {"tier": "interp"}, "native": {"tier": "jit", "native_hooks": True}}


def code_at(program: str, name: str) -> list[tuple[int, str]]:
    """(file offset, mnemonic) of each instruction of symbol ``name`` in a guest image."""
    start, size, _ = symbol(program, name)
    code = (BIN / program).read_bytes()[start : start + size]
    cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)
    return [(start + address, mnemonic) for address, _, mnemonic, _ in cs.disasm_lite(code, 0)]


def offset_of(program: str, symbol: str, mnemonic: str, nth: int = 0) -> int:
    return [off for off, m in code_at(program, symbol) if m == mnemonic][nth]


def build(program: str, body: str):
    source = f"name = {BIN / program}\nmodtype = user\nnum_lv = 4\nnum_gv = 4\n{body}"
    return compile_rpn("t.rpn", BuildOptions(elf=str(BIN / program)), text=source).program


def observe(mode: str, programs: dict[str, str], runs: list[str], quantum: int) -> dict:
    machine = Machine(quantum=quantum)
    manager = ProbeManager(machine, **MODES[mode])
    for program, body in programs.items():
        manager.insert(build(program, body))
    out: dict[int, list[bytes]] = {}
    processes = [
        machine.spawn(BIN / name, stdout=out.setdefault(i, []).append)
        for i, name in enumerate(runs)
    ]
    machine.run(max_instructions=100_000_000)
    if mode == "native":
        assert manager.native is not None and manager.native.hits > 0
    return {
        "records": [(e.module, e.record.to_bytes(), e.exception_log) for e in manager.emitted],
        "hits": [e.record.hit for e in manager.emitted],
        "exits": manager.exits,
        "query": [(r.status, r.count, r.hits) for r in manager.query()],
        "vars": manager.getvars(),
        "processes": [(p.returncode, b"".join(out[i])) for i, p in enumerate(processes)],
    }


def same_in_both_modes(programs: dict[str, str], runs: list[str], quantum: int = 100_000):
    python = observe("python", programs, runs, quantum)
    native = observe("native", programs, runs, quantum)
    for key in python:
        assert native[key] == python[key], key
    return python


def test_every_kind_of_step_and_ending() -> None:
    """Probes on a call, a push, an instruction inside a loop, a ret and a conditional
    branch, with pass counts, max_hits, rem, exit_to, abort and register writes."""
    call = offset_of("loop", "main", "call")
    jne = offset_of("loop", "main", "jne")
    inc = offset_of("loop", "work", "inc")
    ret = offset_of("loop", "work", "ret")
    body = f"""
offset = {call:#x}
pass_count = 3
max_hits = 3000
    push r, esp
    push r, ebx
    inc gv, 0
    log 2
    exit
offset = work
max_hits = 5000
    push r, esp
    push 4
    add
    push mem_u32
    push r, ebp
    log 2
    exit
offset = {inc:#x}
    inc lv, 0
    push lv, 0
    push 4000
    sub
    jz done
    push r, eax
    push r, edx
    pop r, edx
    log 1
    exit
done:
    rem
offset = {ret:#x}
max_hits = 6000
    push r, eax
    push 7
    and
    jnz quiet
    push r, eax
    log 1
    exit
quiet:
    abort
offset = {jne:#x}
max_hits = 4
    push r, ebx
    log 1
    exit_to 1
"""
    seen = same_in_both_modes({"loop": body}, ["loop"])
    assert len(seen["records"]) > 10_000 and len(seen["exits"]) == 4
    assert "removed" in seen["query"][2][0] and "disabled" in seen["query"][1][0]


def test_two_programs_share_the_cpu_stack_and_the_globals() -> None:
    """One program leaves words on the per-CPU stack and counts in a global; another
    reads the stale word and the global: the native states must pass them on."""
    writer = """
offset = work
max_hits = 3000
    inc lv, 0
    push lv, 0
    inc gv, 1
    exit
"""
    reader = """
offset = fib
max_hits = 3000
    push tsp, -1
    push gv, 1
    log 2
    exit
"""
    seen = same_in_both_modes(
        {"loop": writer, "recurse": reader}, ["recurse", "loop"], quantum=1_000
    )
    logged = {record for module, record, _ in seen["records"] if "recurse" in module}
    assert len(logged) > 20  # the stale words and the global changed between hits


def test_processes_preempted_in_the_middle_of_a_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny quanta: processes are switched while one is between its int3 and the end of
    its out-of-line step, and each finishes its own hit."""
    switched_mid_step = []
    switch = NativeProbes._switch

    def watch(self: NativeProbes, process) -> None:
        if self.hook.proc:
            switched_mid_step.append(N.ProcessSlot.from_address(self.hook.proc).pending.active)
        switch(self, process)

    monkeypatch.setattr(NativeProbes, "_switch", watch)
    inc = offset_of("loop", "work", "inc")
    body = f"""
log = PID TSC CSEIP SSESP
offset = {inc:#x}
max_hits = 2000
    push r, eax
    log 1
    exit
"""
    seen = same_in_both_modes({"loop": body}, ["loop", "loop"], quantum=211)
    assert len(seen["records"]) == 2000
    assert {record[12:16] for _, record, _ in seen["records"]} == {b"\x01\0\0\0", b"\x02\0\0\0"}
    assert sum(switched_mid_step) > 10


def test_a_register_read_after_a_write_sees_the_write() -> None:
    """A handler reads a register the hook's register window holds, writes it and reads
    it again: the second read sees the new value (then the old one is put back)."""
    body = """
offset = work
max_hits = 500
    push r, edx
    push 1
    add
    pop r, edx
    push r, edx
    push r, edx
    push 1
    sub
    pop r, edx
    push r, ebp
    log 2
    exit
"""
    seen = same_in_both_modes({"loop": body}, ["loop"])
    assert len(seen["records"]) == 500


@pytest.mark.parametrize("fields", ["UID", "CSEIP", "SSESP", "TSC", "PID PROCNAME", "ALL"])
def test_log_header_fields(fields: str) -> None:
    """A native record keeps only the machine state the program's log header selects, on
    an emulated push and on a stepped instruction: headers equal the Python path's."""
    inc = offset_of("loop", "work", "inc")
    body = f"log = {fields}\n" + "".join(
        f"""offset = {offset}
max_hits = 300
    push r, eax
    log 1
    exit
"""
        for offset in ("work", f"{inc:#x}")
    )
    seen = same_in_both_modes({"loop": body}, ["loop"])
    assert len(seen["records"]) == 600


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("heap_size = 100\n    push 4\n    malloc\n    exit\n", "heap"),
        ("    push 4\n    malloc\n    exit\n", "malloc needs a Python host service"),
        ("    push r, cr0\n    log 1\n    exit\n", "register 0x24"),
        ("    push 3\n    pop r, fs\n    exit\n", "segment register"),
        ("    push 0x7b\n    pop r, ds\n    exit\n", "segment register"),
        ("    push 0x80\n    push io_u8\n    exit\n", "Python host service"),
        ("    push r, eax\n    pop r, eax\n    log 1\n    exit\n", ""),
    ],
)
def test_which_handlers_run_natively(body: str, reason: str) -> None:
    program = build("loop", "offset = work\n" + body)
    found = python_only_reason(program, 0)
    if reason:
        assert found is not None and reason in found
    else:
        assert found is None


@pytest.mark.parametrize(
    ("body", "fields", "push_reg", "window", "expected"),
    [
        (
            "    push r, eax\n    push r, cs\n    push r, eip\n    exit\n",
            "",
            None,
            False,
            {"eax", "eflags"},
        ),
        ("    push r, ebx\n    exit\n", "", "ebp", False, {"ebx", "ebp", "esp", "eflags"}),
        ("    push r, esp\n    push mem_u32\n    exit\n", "", None, True, {"esp", "eflags"}),
        ("    exit\n", "SSESP CSEIP", None, False, {"esp", "eflags"}),
    ],
)
def test_a_native_hit_reads_its_registers_in_one_batch(
    body: str, fields: str, push_reg: str | None, window: bool, expected: set[str]
) -> None:
    """The registers read at once after EIP: the handler's, the step's and the log
    header's, not EIP (already read) nor segment registers (unicorn writes two bytes)."""
    program = build("loop", "offset = work\n" + body)
    log_fields = LogField(sum(LogField[name] for name in fields.split()))
    pushed = REGISTERS_BY_NAME[push_reg].index if push_reg else None
    found = hit_reads(program, 0, log_fields, pushed, window)
    assert found == {REGISTERS_BY_NAME[name].index for name in expected}


def test_fault_in_the_stepped_instruction_of_a_native_hit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The store a probe steps faults once the page turns read-only mid-run: the Python
    path adopts the native hit, logs nothing (logonfault = no) and Linux kills the
    process, exactly as when the whole hit was Python's."""
    work = code_at("loop", "work")
    store = next(
        off
        for (off, m), (_, before) in zip(work[1:], work[:-1], strict=True)
        if before == "inc" and m == "mov"
    )
    body = f"""
offset = {store:#x}
    push r, eax
    log 1
    exit
"""
    adopted = []
    adopt = NativeProbes.adopt
    monkeypatch.setattr(
        NativeProbes,
        "adopt",
        lambda self, process, stepping: (
            adopted.append(adopt(self, process, stepping)) or adopted[-1]
        ),
    )

    def run(mode: str) -> tuple:
        machine = Machine()
        manager = ProbeManager(machine, **MODES[mode])
        manager.insert(build("loop", body))
        process = machine.spawn(BIN / "loop")
        with pytest.raises(InstructionLimit):
            machine.run(max_instructions=500_000)
        process.space.protect(0x804B000, 0x1000, Prot.READ)
        machine.run(max_instructions=1_000_000)
        if mode == "native":
            assert manager.native is not None and manager.native.hits > 1000
        return (
            [e.record.to_bytes() for e in manager.emitted],
            process.returncode,
            process.crash.eip if process.crash else None,
            [(r.status, r.count, r.hits) for r in manager.query()],
        )

    python, native = run("python"), run("native")
    assert native == python and python[1] == -11
    assert [step.plan.address for step in adopted if step is not None] == [0x8049088]


def test_klog_lines_and_program_output_interleave_as_with_python_hooks(tmp_path: Path) -> None:
    """Native records reach the log target before the program's next system call, so
    ``dpc run``'s combined output is the same on every tier."""
    ppdf = tmp_path / "add3.ppdf"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "dprobes.cli",
            "build",
            str(EXAMPLES / "add3.rpn"),
            "--elf",
            str(BIN / "loop"),
            "-o",
            str(ppdf),
        ],
        check=True,
        capture_output=True,
    )
    outputs = [
        subprocess.run(
            [
                sys.executable,
                "-m",
                "dprobes.cli",
                "run",
                "--tier",
                tier,
                "--probes",
                str(ppdf),
                "--",
                str(BIN / "loop"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        ).stdout
        for tier in ("interp", "jit")
    ]
    assert (
        outputs[0] == outputs[1] and outputs[0].count(b"dprobes(3,1)") == 2 * 3
    )  # two KLOG lines a record
    summary = subprocess.run(
        [
            sys.executable,
            "-m",
            "dprobes.cli",
            "run",
            "--tier",
            "jit",
            "--json",
            "--probes",
            str(ppdf),
            "--",
            str(BIN / "loop"),
        ],
        capture_output=True,
    ).stderr.splitlines()[-1]
    assert json.loads(summary)["native_hits"] == 2  # the first hit goes through Python


def test_auto_tier_goes_native_once_the_handler_is_hot() -> None:
    def run(tier: str) -> tuple[list[bytes], int]:
        machine = Machine()
        manager = ProbeManager(machine, tier=tier)
        manager.insert(
            build("loop", "offset = work\nmax_hits = 500\n    push r, ebp\n    log 1\n    exit\n")
        )
        machine.spawn(BIN / "loop")
        machine.run()
        native = manager.native.hits if manager.native is not None else 0
        return [e.record.to_bytes() for e in manager.emitted], native

    python, _ = run("interp")
    auto, native_hits = run("auto")
    assert auto == python and len(python) == 500
    assert 0 < native_hits < 500 - DEFAULT_HOT_THRESHOLD


def test_a_merged_program_takes_over_a_native_probe() -> None:
    """Merging a program that probes the same instruction mid-run: from the next hit on
    the new record's handler runs, natively too (the old record's entry is gone)."""

    def run(mode: str) -> tuple:
        machine = Machine()
        manager = ProbeManager(machine, **MODES[mode])
        manager.insert(build("loop", "offset = work\n    push 1\n    log 1\n    exit\n"))
        process = machine.spawn(BIN / "loop")
        with pytest.raises(InstructionLimit):
            machine.run(max_instructions=300_000)
        manager.insert(
            build("loop", "offset = work\n    push 2\n    log 1\n    exit\n"), merge=True
        )
        machine.run()
        if mode == "native":
            assert manager.native is not None and manager.native.hits > 1000
        return (
            [e.record.data for e in manager.emitted],
            process.returncode,
            [(r.status, r.count, r.hits) for r in manager.query()],
        )

    python, native = run("python"), run("native")
    assert native == python and set(python[0]) == {b"\x01\0\0\0", b"\x02\0\0\0"}


def test_records_across_many_rings(monkeypatch: pytest.MonkeyPatch) -> None:
    """A full ring is drained and records go on in a new one; the journal keeps views of
    the old rings' records, which must stay intact and in order."""
    monkeypatch.setattr(ring, "RING_BYTES", 256)
    body = """
log = PID TSC
offset = work
max_hits = 3000
    push r, esp
    push r, eax
    log 2
    exit
"""
    seen = same_in_both_modes({"loop": body}, ["loop"])
    assert len(seen["records"]) == 3000


@pytest.mark.parametrize("mode", sorted(MODES))
def test_records_not_kept_still_reach_the_log_hooks(mode: str) -> None:
    """``keep_records=False`` (dpc run): every record goes to on_log, in order, and is
    counted, but none is held in ``emitted``."""
    body = "offset = work\nmax_hits = 500\n    push r, esp\n    log 1\n    exit\n"
    runs = {}
    for keep in (True, False):
        machine = Machine()
        manager = ProbeManager(machine, keep_records=keep, **MODES[mode])
        manager.insert(build("loop", body))
        delivered: list[bytes] = []
        manager.on_log.append(lambda entry, into=delivered: into.append(entry.record.to_bytes()))
        machine.spawn(BIN / "loop")
        machine.run(max_instructions=100_000_000)
        runs[keep] = (delivered, manager.log_count, len(manager.emitted))
    assert runs[True][1] == runs[True][2] == len(runs[True][0]) == 500
    assert runs[False] == (runs[True][0], 500, 0)


def test_stack_reads_and_writes() -> None:
    """Memory on the stack page (the handler's direct window once the TLB holds it
    writable) in every width, a write the guest sees (its argument, so its checksum
    changes), and a read across the top of the stack that faults."""
    body = """
offset = work
max_hits = 400
    push r, esp
    push 4
    add
    push r, esp
    push 4
    add
    push mem_u32
    push 1
    add
    pop mem_u32
    push r, esp
    push mem_u64
    push r, esp
    push 1
    add
    push mem_u16
    push r, esp
    push 3
    add
    push mem_u8
    log 4
    push r, esp
    push 0xffe
    or
    push mem_u32
    log 1
    exit
"""
    seen = same_in_both_modes({"loop": body}, ["loop"])
    assert len(seen["records"]) == 400
    assert b"checksum 640661632 " not in seen["processes"][0][1]  # (unprobed)


def test_strings_read_from_the_process() -> None:
    """``log str`` reads a C string through the native TLB, page by page, byte by byte."""
    body = """
offset = str_len
    push 64
    push r, esp
    push 4
    add
    push mem_u32
    log str
    exit
"""
    seen = same_in_both_modes({"strings": body}, ["strings"])
    assert len({record for _, record, _ in seen["records"]}) > 3
