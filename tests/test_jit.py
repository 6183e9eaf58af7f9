"""The JIT tier: completeness against the instruction table, the tiering API, caching,
persistence across tiers, host callbacks, and the null JIT without llvmlite."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dprobes.cli import main as cli
from dprobes.compiler.pipeline import compile_rpn
from dprobes.vm.api import VM, GlobalVariables
from dprobes.vm.context import Context, MemoryContext, MemoryFault
from dprobes.vm.interp import CpuState
from dprobes.vm.isa import TABLE

pytest.importorskip("llvmlite")

from dprobes.vm.jit import JitError, JitUnavailable, lower
from dprobes.vm.jit.compile import Engine


def program(body: str, header: str = "num_lv = 4\nnum_gv = 2\n"):
    text = f"name = t\nmodtype = user\n{header}offset = 0\n{body}\n"
    return compile_rpn("t.rpn", text=text).program


# --- completeness -------------------------------------------------------------------
def test_every_opcode_has_a_lowering() -> None:
    missing = [
        op.name for op in TABLE if not callable(getattr(lower, f"lower_{op.name.lower()}", None))
    ]
    assert not missing, f"opcodes without a lower_ function: {missing}"
    assert set(lower.LOWERINGS) == {op.name for op in TABLE}


# --- tiers ----------------------------------------------------------------------------
LOOP = """
    push 0
    pop lv, 0
    push 20
again:
    inc lv, 0
    loop again
    push lv, 0
    push r, eax
    log 2
    exit
"""


def test_jit_matches_interpreter_and_reports_compile_time() -> None:
    prog = program(LOOP)
    results = {}
    for tier in ("interp", "jit"):
        vm = VM(prog, tier=tier)
        results[tier] = vm.fire(0, MemoryContext(regs={"eax": 9}))
        if tier == "jit":
            assert set(vm.compile_seconds) == {0}
            assert vm.compile_seconds[0] >= 0
    assert results["interp"] == results["jit"]


def test_auto_tier_interprets_until_hot() -> None:
    prog = program(LOOP + "\n")  # a handler of its own (different bytes -> not cached)
    vm = VM(prog, tier="auto", hot_threshold=3)
    context = MemoryContext(regs={"eax": 1})
    results = []
    for _ in range(3):
        results.append(vm.fire(0, context))
        assert vm.compile_seconds == {}
    results.append(vm.fire(0, context))
    assert set(vm.compile_seconds) == {0}
    results.append(vm.fire(0, context))
    assert len(set(results)) == 1


def test_unknown_tier_is_refused() -> None:
    with pytest.raises(ValueError, match="tier must be one of"):
        VM(program("exit"), tier="fast")


def test_identical_handlers_are_compiled_once() -> None:
    prog = program("push 77\npush 1\nadd\nexit")
    first = VM(prog, tier="jit")
    second = VM(prog, tier="jit")
    assert first._compiled[0].body is second._compiled[0].body
    assert first._compiled[0].key in Engine.get().cache


def test_trace_runs_the_interpreter() -> None:
    vm = VM(program("push 1\npush 2\nadd\nexit"), tier="jit")
    offsets: list[int] = []
    result = vm.fire(0, MemoryContext(), trace=lambda machine, offset: offsets.append(offset))
    assert offsets == [0, 5, 10, 11]
    assert result.stack == (3,)


def test_tiers_share_the_cpu_stack_and_variables() -> None:
    prog = program("push lv, 0\npush 1\nadd\nmove lv, 0\npush gv, 1\nadd\npop gv, 1\nexit")
    reference_cpu, reference_globals = CpuState(), GlobalVariables()
    reference = VM(prog, cpu=reference_cpu, globals=reference_globals)
    cpu, globals_ = CpuState(), GlobalVariables()
    interp = VM(prog, cpu=cpu, globals=globals_)
    jit = VM(prog, tier="jit", cpu=cpu, globals=globals_)
    jit.locals = interp.locals  # one program's locals, fired by two VMs
    for n in range(6):
        expected = reference.fire(0, MemoryContext())
        got = (jit if n % 3 else interp).fire(0, MemoryContext())
        assert got == expected
        assert cpu.stack == reference_cpu.stack
        assert globals_.values == reference_globals.values
        assert interp.locals == reference.locals
    cpu.stack[1000] = 12345  # a change made behind the VMs' backs is seen by the JIT
    reference_cpu.stack[1000] = 12345
    prog2 = program("push sbp, 1000\nexit")
    assert VM(prog2, tier="jit", cpu=cpu).fire(0, MemoryContext()).stack == (12345,)


def test_prefilled_stack_is_read_by_the_jit() -> None:
    prog = program("pop lv, 0\npush tsp, 5\npush sbp, -3\nexit")
    outcomes = []
    for tier in ("interp", "jit"):
        cpu = CpuState()
        cpu.stack[:] = list(range(1024))
        vm = VM(prog, tier=tier, cpu=cpu)
        outcomes.append((vm.fire(0, MemoryContext()), vm.locals, cpu.stack))
    assert outcomes[0] == outcomes[1]
    assert outcomes[1][0].stack == (1021,)  # S[sbp - 3]; slot 0 holds S[tos + 5] = 6
    assert outcomes[1][2][0] == 6 and outcomes[1][1][0] == 0


# --- hosts ------------------------------------------------------------------------------
class Hooked(MemoryContext):
    """callk pushes through the machine it is given (a Machine or the JIT's view)."""

    def callk(self, machine) -> bool:
        machine.push(0xC0FFEE)
        machine.push(machine.tos)
        return True


def test_callk_sees_and_changes_the_machine_on_both_tiers() -> None:
    prog = program("push 1\npush 2\ncallk\npush 3\nexit")
    results = [VM(prog, tier=tier).fire(0, Hooked()) for tier in ("interp", "jit")]
    assert results[0] == results[1]
    assert results[0].stack == (1, 2, 0xC0FFEE, 1021, 3)


class Failing(MemoryContext):
    def read_register(self, reg, user):
        raise RuntimeError("the host broke")


def test_host_exceptions_propagate_from_native_code() -> None:
    prog = program("push 5\npop lv, 0\npush r, eax\nexit")
    for tier in ("interp", "jit"):
        vm = VM(prog, tier=tier)
        with pytest.raises(RuntimeError, match="the host broke"):
            vm.fire(0, Failing())
        assert vm.locals[0] == 5  # what ran before the failure is kept


class Custom(Context):
    """A plain Context: everything through the Python trampolines."""

    def __init__(self) -> None:
        self.memory = bytearray(range(16))
        self.writes: list[tuple[int, bytes]] = []

    def read_memory(self, address: int, size: int) -> bytes:
        if not (address >= 0x100 and address + size <= 0x110):
            raise MemoryFault(max(address, 0x110))
        return bytes(self.memory[address - 0x100 : address - 0x100 + size])

    def write_memory(self, address: int, data: bytes) -> None:
        self.writes.append((address, bytes(data)))
        if address + len(data) > 0x110:
            raise MemoryFault(0x110)


def test_plain_context_through_trampolines() -> None:
    prog = program("push 0x104\npush mem_u32\npush 0x10e\npush 0x11223344\npop mem_u32\nexit")
    results, writes = [], []
    for tier in ("interp", "jit"):
        context = Custom()
        results.append(VM(prog, tier=tier).fire(0, context))
        writes.append(context.writes)
    assert results[0] == results[1]
    assert writes[0] == writes[1]
    assert results[1].exception is not None and results[1].exception.parm1 == 0x10E


def test_native_memory_context_partial_write_and_wraparound() -> None:
    prog = program(
        "push 0xfffffffe\npush 0x44332211\npop mem_u32\n"
        "push 0x1ffe\npush 0xaabbccdd\npop mem_u32\n"
        "push 0xfffffffe\npush mem_u32\nexit"
    )
    outcomes = []
    for tier in ("interp", "jit"):
        context = MemoryContext(memory={0xFFFFFFF0: bytes(16), 0: bytes(4), 0x1FF0: bytes(16)})
        result = VM(prog, tier=tier).fire(0, context)
        outcomes.append((result, [bytes(d) for _, d in context.regions]))
    assert outcomes[0] == outcomes[1]
    assert outcomes[1][1][2][-2:] == b"\xdd\xcc"  # written before the fault at 0x2000


def test_register_writes_reach_the_context() -> None:
    prog = program("push 7\npop r, eax\npush r, eax\npush 9\npop u, ebx\npush u, ebx\nexit")
    for user_regs in ({}, {"ebx": 1}):
        outcomes = []
        for tier in ("interp", "jit"):
            context = MemoryContext(regs={"eax": 1}, user_regs=dict(user_regs))
            result = VM(prog, tier=tier).fire(0, context)
            outcomes.append((result, context.regs, context.user_regs))
        assert outcomes[0] == outcomes[1]


def test_reentrant_fire_is_refused() -> None:
    prog = program("callk\nexit")
    vm = VM(prog, tier="jit")

    class Reenter(MemoryContext):
        def callk(self, machine) -> bool:
            vm.fire(0, MemoryContext())
            return True

    with pytest.raises(JitError, match="re-entrant"):
        vm.fire(0, Reenter())


# --- dpc exec --tier ---------------------------------------------------------------------
def test_dpc_exec_tiers_print_the_same(tmp_path: Path, capsys) -> None:
    path = tmp_path / "p.rpn"
    path.write_text(f"name = t\nmodtype = user\nnum_lv = 4\noffset = 0\n{LOOP}\n")
    outputs = []
    for tier in ("interp", "jit", "auto"):
        assert (
            cli.main(
                [
                    "exec",
                    str(path),
                    "--json",
                    "--tier",
                    tier,
                    "--reg",
                    "eax=3",
                    "--repeat",
                    "3",
                    "--hot-threshold",
                    "1",
                ]
            )
            == 0
        )
        outputs.append(json.loads(capsys.readouterr().out))
    assert outputs[0] == outputs[1] == outputs[2]


NULL_JIT = """
import sys
sys.modules["llvmlite"] = None  # as if llvmlite were not installed
from dprobes.compiler.pipeline import compile_rpn
from dprobes.vm.api import VM
from dprobes.vm.context import MemoryContext
from dprobes.vm.jit import JitUnavailable
text = "name = t\\nmodtype = user\\noffset = 0\\npush 1\\nexit\\n"
prog = compile_rpn("t.rpn", text=text).program
try:
    VM(prog, tier="jit")
except JitUnavailable as error:
    print("unavailable:", error)
vm = VM(prog, tier="auto", hot_threshold=0)
print("auto:", vm.fire(0, MemoryContext()).stack, vm.tier)
"""


def test_null_jit_without_llvmlite() -> None:
    done = subprocess.run(
        [sys.executable, "-c", NULL_JIT], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "unavailable: the JIT tier needs llvmlite" in done.stdout
    assert "auto: (1,) interp" in done.stdout
    assert issubclass(JitUnavailable, JitError)


def test_buffers_are_fresh_at_every_hit() -> None:
    """Bytes an earlier hit logged are zeros again when pop lp/pop stp uncover them."""
    text = (
        "name = t\nmodtype = user\nautostacktrace = yes\noffset = 0\n"
        "push 0xaaaaaaaa\npush 0xbbbbbbbb\nlog 2\npush 5\npush 0xdead0000\nlog mrf\n"
        "push 1\npush 0x10\nrx\n"
        "offset = 16\npush 60\npop lp\npush 90\npop stp\nexit\n"
    )
    prog = compile_rpn("t.rpn", text=text).program
    for tier in ("interp", "jit"):
        vm = VM(prog, tier=tier)
        assert vm.fire(0, MemoryContext()).ex_log
        result = vm.fire(1, MemoryContext())
        assert result.log == bytes(48) and result.ex_log == bytes(78), tier
