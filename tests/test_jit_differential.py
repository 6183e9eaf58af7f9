"""The JIT against the interpreter on generated programs (and a crash-isolated fuzzer).

``test_tiers_agree`` draws a valid program (``rpn_gen``: every opcode, loops, calls,
handlers, faults, logging, the heap), a random MemoryContext and a starting state
(fresh or pre-filled CPU stack, variables, last exception code), fires one to three
probes on both tiers and compares everything observable: the FireResult, all 1024 stack
words, lv, gv, the CPU's exception code, memory, registers, IO and callk calls.
Programs the interpreter does not finish within a step budget are discarded.

The default run draws ``DEFAULT_EXAMPLES`` programs per test function (a couple of
minutes in all); set ``DPROBES_FUZZ_EXAMPLES`` for longer runs.

``test_fuzz_in_a_child_process`` runs ``jit_fuzz`` (PPDF-mutated programs, random
contexts) in a subprocess, so that a native crash fails the test instead of the run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dprobes.tests import rpn_gen

DEFAULT_EXAMPLES = 600
EXAMPLES = int(os.environ.get("DPROBES_FUZZ_EXAMPLES", DEFAULT_EXAMPLES))

settings.register_profile(
    "dprobes-differential",
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=os.environ.get("DPROBES_FUZZ_RANDOM") is None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much],
    print_blob=True,
)
PROFILE = settings.get_profile("dprobes-differential")

pytest.importorskip("llvmlite")


def _check(data, native_context: bool, subclass: bool = False, max_length: int = 24) -> None:
    c = rpn_gen.HypothesisChooser(data)
    spec = rpn_gen.context_spec(c)
    prog = rpn_gen.program(c, rpn_gen.region_addresses(spec), max_length)
    start = rpn_gen.start_state(c, prog)
    fires = [c.integer(0, len(prog.probes) - 1) for _ in range(c.integer(1, 3))]
    try:
        problems = rpn_gen.compare_tiers(prog, spec, start, fires, native_context, subclass)
    except rpn_gen.Runaway:
        assume(False)
        return
    if problems:
        from dprobes.compiler.disasm import disassemble

        listing = disassemble(prog)
        raise AssertionError("tiers disagree:\n  " + "\n  ".join(problems[:12])
                             + f"\nprogram:\n{listing}\ncontext: {spec}\nstart: {start}"
                             + f"\nfires: {fires}")


@PROFILE
@given(st.data())
def test_tiers_agree_native_memory_context(data) -> None:
    """The JIT serving a MemoryContext with native callbacks."""
    _check(data, native_context=True)


@settings(PROFILE, max_examples=max(EXAMPLES // 3, 10))
@given(st.data())
def test_tiers_agree_python_trampolines(data) -> None:
    """The JIT serving a Python context through the ctypes trampolines."""
    _check(data, native_context=False, subclass=data.draw(st.booleans()))


@settings(PROFILE, max_examples=max(EXAMPLES // 6, 10))
@given(st.data())
def test_tiers_agree_long_handlers(data) -> None:
    _check(data, native_context=True, max_length=80)


FUZZ_PROGRAMS = int(os.environ.get("DPROBES_FUZZ_CHILD_PROGRAMS", 150))


def test_fuzz_in_a_child_process() -> None:
    """PPDF-derived programs on the JIT in a child: a crash or hang is a failure here."""
    seed = int(os.environ.get("DPROBES_FUZZ_SEED", 20240601))
    command = [sys.executable, "-m", "dprobes.tests.jit_fuzz", "--seed", str(seed),
               "--programs", str(FUZZ_PROGRAMS)]
    try:
        done = subprocess.run(command, capture_output=True, text=True,
                              timeout=60 + FUZZ_PROGRAMS)
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"the fuzz child hung (seed {seed}): {error.stdout!r} {error.stderr!r}")
    if done.returncode < 0:
        pytest.fail(f"the fuzz child died with signal {-done.returncode} (seed {seed}); "
                    f"last output:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    assert done.returncode == 0, f"seed {seed}:\n{done.stdout[-5000:]}\n{done.stderr[-5000:]}"
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["ran"] > 0, summary
