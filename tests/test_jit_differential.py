"""The JIT against the interpreter on generated programs (and a crash-isolated fuzzer).

``test_tiers_agree`` draws a valid program (``rpn_gen``: every opcode, loops, calls,
handlers, faults, logging, the heap), a random MemoryContext and a starting state
(fresh or pre-filled CPU stack, variables, last exception code), fires one to three
probes on both tiers and compares everything observable: the FireResult, all 1024 stack
words, lv, gv, the CPU's exception code, memory, registers, IO and callk calls.
Programs the interpreter does not finish within a step budget are discarded.

The default run draws ``DEFAULT_EXAMPLES`` programs for the first test (a third and a
sixth of that for the others) while the fuzz child runs ``DPROBES_FUZZ_CHILD_PROGRAMS``
programs alongside: about 2,400 programs in two minutes. Set ``DPROBES_FUZZ_EXAMPLES``
(and ``DPROBES_FUZZ_CHILD_PROGRAMS``) for longer runs. Examples are derandomized (the same
programs every run, as CI wants); set ``DPROBES_FUZZ_RANDOM=1`` to explore new ones and
``DPROBES_FUZZ_SEED`` to change the child's programs.

``test_fuzz_in_a_child_process`` runs ``jit_fuzz`` (PPDF-mutated programs, random
contexts) in a subprocess, so that a native crash fails the test instead of the run.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dprobes.tests import rpn_gen

DEFAULT_EXAMPLES = 1000
EXAMPLES = int(os.environ.get("DPROBES_FUZZ_EXAMPLES", DEFAULT_EXAMPLES))

settings.register_profile(
    "dprobes-differential",
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=os.environ.get("DPROBES_FUZZ_RANDOM") is None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
    print_blob=True,
)
PROFILE = settings.get_profile("dprobes-differential")

pytest.importorskip("llvmlite")
pytestmark = pytest.mark.slow  # minutes: `pytest -m "not slow"` leaves the module out


def _check(data, native_context: bool, subclass: bool = False, max_length: int = 24) -> None:
    c = rpn_gen.HypothesisChooser(data)
    # the context and starting state from one drawn seed (cheap to draw), the program
    # choice by choice (so hypothesis shrinks a failing program instruction by instruction)
    seeded = rpn_gen.RandomChooser(random.Random(data.draw(st.integers(0, 2**32))))
    spec = rpn_gen.context_spec(seeded)
    prog = rpn_gen.program(c, rpn_gen.region_addresses(spec), max_length)
    start = rpn_gen.start_state(seeded, prog)
    fires = [c.integer(0, len(prog.probes) - 1) for _ in range(c.integer(1, 3))]
    try:
        problems = rpn_gen.compare_tiers(prog, spec, start, fires, native_context, subclass)
    except rpn_gen.Runaway:
        assume(False)
        return
    if problems:
        from dprobes.compiler.disasm import disassemble

        listing = disassemble(prog)
        raise AssertionError(
            "tiers disagree:\n  "
            + "\n  ".join(problems[:12])
            + f"\nprogram:\n{listing}\ncontext: {spec}\nstart: {start}"
            + f"\nfires: {fires}"
        )


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


FUZZ_PROGRAMS = int(os.environ.get("DPROBES_FUZZ_CHILD_PROGRAMS", 900))
FUZZ_SEED = int(os.environ.get("DPROBES_FUZZ_SEED", 20240601))


@pytest.fixture(scope="module", autouse=True)
def fuzz_child():
    """The fuzz child starts with this module, so it runs alongside the hypothesis tests."""
    command = [
        sys.executable,
        "-m",
        "dprobes.tests.jit_fuzz",
        "--seed",
        str(FUZZ_SEED),
        "--programs",
        str(FUZZ_PROGRAMS),
    ]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    yield child
    if child.poll() is None:
        child.kill()
        child.communicate()


def test_fuzz_in_a_child_process(fuzz_child) -> None:
    """PPDF-derived programs on the JIT in a child: a crash or hang is a failure here."""
    try:
        out, err = fuzz_child.communicate(timeout=120 + FUZZ_PROGRAMS)
    except subprocess.TimeoutExpired:
        fuzz_child.kill()
        out, err = fuzz_child.communicate()
        pytest.fail(f"the fuzz child hung (seed {FUZZ_SEED}): {out[-2000:]} {err[-2000:]}")
    if fuzz_child.returncode < 0:
        pytest.fail(
            f"the fuzz child died with signal {-fuzz_child.returncode} "
            f"(seed {FUZZ_SEED}); last output:\n{out[-3000:]}\n{err[-3000:]}"
        )
    assert fuzz_child.returncode == 0, f"seed {FUZZ_SEED}:\n{out[-5000:]}\n{err[-5000:]}"
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["ran"] > FUZZ_PROGRAMS // 2, summary
