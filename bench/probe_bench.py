"""Probes in the machine: what they cost when disarmed and per hit when armed.

One run reports (figures compare only within the run):

* guest MIPS of guest/bin/loop with no probe machinery, and with a probe manager attached
  and a program inserted whose probes are in another executable (nothing armed in loop):
  the two should be within noise, because a disarmed probe is no code at all;
* probe hits per second through the Python trap path and the interpreter, on ``work``
  (called 100000 times), with an empty handler and with a 10-instruction handler that
  logs two registers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from dprobes.bench import machine_bench
from dprobes.compiler.pipeline import BuildOptions, compile_rpn
from dprobes.runtime import Machine
from dprobes.runtime.probes import ProbeManager

BIN = Path(__file__).resolve().parents[1] / "guest" / "bin"
HITS = 20000

EMPTY = "offset = work\nmax_hits = {hits}\n    exit\n"
TEN = """offset = work
max_hits = {hits}
    push r, eax
    push r, ebx
    push r, esp
    push 4
    add
    push mem_u32
    add
    xchg
    log 2
    exit
"""


@dataclass(frozen=True)
class ProbeFigures:
    plain_mips: float
    disarmed_mips: float
    empty_hits_per_second: float
    ten_hits_per_second: float


def _program(target: str, body: str):
    source = f"name = {BIN / target}\nmodtype = user\n" + body.format(hits=HITS)
    return compile_rpn("bench.rpn", BuildOptions(elf=str(BIN / target)), text=source).program


def _disarmed(machine: Machine) -> None:
    ProbeManager(machine).insert(_program("strings", "offset = str_len\n    exit\n"))


def _hits_per_second(body: str) -> float:
    machine = Machine()
    manager = ProbeManager(machine)
    manager.insert(_program("loop", body))
    machine.spawn(BIN / "loop")
    start = time.perf_counter()
    machine.run()
    elapsed = time.perf_counter() - start
    hits = manager.query()[0].hits
    if hits != HITS:
        raise RuntimeError(f"expected {HITS} hits, got {hits}")
    return hits / elapsed


def run(seconds: float = 0.5) -> ProbeFigures | None:
    if not (BIN / "loop").is_file():
        return None
    plain = machine_bench.run(seconds)
    disarmed = machine_bench.run(seconds, prepare=_disarmed)
    assert plain is not None and disarmed is not None
    return ProbeFigures(plain.warm_mips, disarmed.warm_mips, _hits_per_second(EMPTY),
                        _hits_per_second(TEN))


def report(figures: ProbeFigures | None) -> str:
    if figures is None:
        return "probes: skipped (guest images not found; run from a source checkout)"
    return (f"probes (guest/bin/loop)\n"
            f"  guest MIPS, no probe machinery       {figures.plain_mips:10.1f}\n"
            f"  guest MIPS, machinery, none armed     {figures.disarmed_mips:10.1f}"
            f"  ({figures.disarmed_mips / figures.plain_mips:.2f}x)\n"
            f"  hits/s, empty handler (interpreter)   {figures.empty_hits_per_second:10,.0f}\n"
            f"  hits/s, 10-instruction handler        {figures.ten_hits_per_second:10,.0f}")
