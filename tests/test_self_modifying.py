"""Code the guest rewrites: guest/bin/smc makes its text writable and rewrites instructions it
has already run. The machine must run the new bytes as qemu-i386 does, count them right,
and keep DProbes' probe rules: a probe whose byte the guest overwrites in its private copy
is gone from that copy only, and a probed instruction is stepped as it is now in memory.
"""

from __future__ import annotations

import subprocess

import pytest
from unicorn import UC_HOOK_CODE

from dprobes.compiler.pipeline import BuildOptions, compile_rpn
from dprobes.runtime.machine import Machine
from dprobes.runtime.physmem import PAGE_MASK, PAGE_SHIFT
from dprobes.runtime.probes import INT3, ProbeManager
from dprobes.tests import guest_expectations as expect
from dprobes.tests.guest_expectations import symbol

SMC = expect.BIN / "smc"
MODES = ["plain", "once", "hot", "next"]
HOOK_MODES = {
    "python": {"tier": "interp"},
    "python-jit": {"tier": "jit", "native_hooks": False},
    "native": {"tier": "jit", "native_hooks": True},
}
COUNTING = "offset = {where}\n    inc lv, 0\n    exit\n"


def run_machine(*modes: str, probe: str | None = None, hooks: str = "python"):
    """Run one smc process per mode (in order, on one machine), with a counting probe at
    symbol ``probe``; returns the processes and the probe's hits (or None)."""
    machine = Machine()
    manager = ProbeManager(machine, **HOOK_MODES[hooks])
    if probe is not None:
        source = f"name = {SMC}\nmodtype = user\nnum_lv = 1\n" + COUNTING.format(where=probe)
        options = BuildOptions(elf=str(SMC))
        manager.insert(compile_rpn("smc.rpn", options, text=source).program)
    processes = [machine.spawn(SMC, ["smc", mode]) for mode in modes]
    machine.run(max_instructions=50_000_000)
    hits = manager.query()[0].hits if probe is not None else None
    return machine, processes, hits


@pytest.fixture(scope="module")
def under_qemu() -> dict[str, tuple[int, str, str]]:
    if expect.QEMU is None:
        pytest.skip("qemu-i386 is not installed")
    out = {}
    for mode in MODES:
        done = subprocess.run(
            [expect.QEMU, str(SMC), mode], capture_output=True, text=True, timeout=60
        )
        out[mode] = (done.returncode, done.stdout, done.stderr)
    return out


@pytest.mark.parametrize("mode", MODES)
def test_rewritten_code_runs_as_under_qemu(mode: str, under_qemu: dict) -> None:
    _, (process,), _ = run_machine(mode)
    assert (process.returncode, *process.output()) == under_qemu[mode]
    assert under_qemu[mode][0] == 3  # the program's own check: no stale code ran


def test_block_counts_follow_rewritten_code() -> None:
    """hot mode turns bump's ``inc %eax`` into an operand-size prefix and back: the same
    block address and size, one instruction fewer. The clock must count what ran, as
    unicorn's per-instruction hook does."""
    machine = Machine()
    executed = [0]

    def count(_uc: object, _address: int, _size: int, _data: object) -> None:
        executed[0] += 1

    machine.cpu.uc.hook_add(UC_HOOK_CODE, count)
    machine.spawn(SMC, ["smc", "hot"])
    assert machine.run() == executed[0]


@pytest.mark.parametrize("hooks", list(HOOK_MODES))
def test_overwritten_probe_is_gone_from_that_copy_only(hooks: str) -> None:
    """``first`` is called once while writable, then its probed first byte is rewritten
    (to ret): no hit after that in that process. The second process maps the page-cache
    page, which still holds the int3, and is hit again."""
    machine, processes, hits = run_machine("once", "once", probe="first", hooks=hooks)
    for process in processes:
        assert process.returncode == 3, process.output()
    assert hits == 2
    offset, _, _ = symbol("smc", "first")
    file = machine.cache.open(SMC)
    frame = machine.cache.lookup(file, offset >> PAGE_SHIFT)
    assert frame is not None
    assert machine.memory.read(frame << PAGE_SHIFT | offset & PAGE_MASK, 1)[0] == INT3


@pytest.mark.parametrize("hooks", list(HOOK_MODES))
@pytest.mark.parametrize(("mode", "calls"), [("once", 2), ("hot", 1001)])
def test_probed_instruction_is_stepped_as_rewritten(hooks: str, mode: str, calls: int) -> None:
    """The probe sits on ``answer``'s ``mov $4,%eax``, whose immediate the guest rewrites:
    every call hits, and each returns the immediate then in memory."""
    _, (process,), hits = run_machine(mode, probe="answer", hooks=hooks)
    assert process.returncode == 3, process.output()
    assert hits == calls


@pytest.mark.parametrize("hooks", list(HOOK_MODES))
@pytest.mark.parametrize("mode", ["once", "hot", "next"])
def test_probe_next_to_rewritten_code_still_hits(hooks: str, mode: str) -> None:
    """``neighbour`` shares the page the guest writes (and so its private copy) and is
    never rewritten: both of its calls hit."""
    _, (process,), hits = run_machine(mode, probe="neighbour", hooks=hooks)
    assert process.returncode == 3, process.output()
    assert hits == 2
