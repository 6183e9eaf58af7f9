"""Probes in the machine: what they cost when disarmed, and per hit when armed.

One run reports (figures compare only within the run):

* guest MIPS of guest/bin/loop with no probe machinery, and with a probe manager attached
  and a program inserted whose probes are in another executable (nothing armed in loop):
  the two should be within noise, because a disarmed probe is no code at all;
* probe hits per second on ``work`` (called 100000 times per run of loop), with an empty
  handler and with a 10-instruction handler that logs two registers, through the Python
  trap path (interpreter, and JIT) and through native hooks (JIT-compiled handlers run
  from the native interrupt hook, records kept packed until read).

Hits per second is ``hits / (probed run - unprobed run)``: the cost of the probe
machinery per hit, the guest's own work taken out (both runs warm, the fastest of
several). The whole run's rate (hits / probed run) is reported beside it.
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
CALLS = 100_000
"""Calls of ``work`` in one run of guest/bin/loop."""

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
HOOKS = {
    "python, interpreter": {"tier": "interp"},
    "python, JIT": {"tier": "jit", "native_hooks": False},
    "native, JIT": {"tier": "jit", "native_hooks": True},
}
PYTHON_HITS = 20_000
"""Hits per timed run through the Python path (a run of loop would take seconds)."""


@dataclass(frozen=True)
class HitRate:
    hooks: str
    handler: str
    hits: int
    probed_seconds: float
    plain_seconds: float

    @property
    def per_second(self) -> float:
        """Hits per second of probe machinery (the unprobed run's time taken out)."""
        return self.hits / max(self.probed_seconds - self.plain_seconds, 1e-9)

    @property
    def whole_run_per_second(self) -> float:
        return self.hits / self.probed_seconds


@dataclass(frozen=True)
class ProbeFigures:
    plain_mips: float
    disarmed_mips: float
    rates: list[HitRate]

    def rate(self, hooks: str, handler: str) -> float:
        return next(r.per_second for r in self.rates if (r.hooks, r.handler) == (hooks, handler))

    def as_dict(self) -> dict[str, object]:
        return {
            "plain_mips": round(self.plain_mips, 1),
            "disarmed_mips": round(self.disarmed_mips, 1),
            "hits_per_second": [
                {
                    "hooks": r.hooks,
                    "handler": r.handler,
                    "hits": r.hits,
                    "per_second": round(r.per_second),
                    "whole_run_per_second": round(r.whole_run_per_second),
                }
                for r in self.rates
            ],
        }


def _program(target: str, body: str, hits: int):
    source = f"name = {BIN / target}\nmodtype = user\n" + body.format(hits=hits)
    return compile_rpn("bench.rpn", BuildOptions(elf=str(BIN / target)), text=source).program


def _disarmed(machine: Machine) -> None:
    ProbeManager(machine).insert(_program("strings", "offset = str_len\n    exit\n", 1))


def _fastest_run(body: str | None, hits: int, runs: int, options: dict) -> float:
    """The fastest of ``runs`` warm runs of loop (after one untimed run) on one machine,
    probed by ``body`` (max_hits ``hits`` per run) or not at all."""
    machine = Machine()
    manager = ProbeManager(machine, **options)
    best = float("inf")
    for run in range(runs + 1):
        if body is not None:
            manager.remove()
            manager.insert(_program("loop", body, hits))
        machine.spawn(BIN / "loop")
        start = time.perf_counter()
        machine.run()
        elapsed = time.perf_counter() - start
        if body is not None and manager.query()[0].hits != hits:
            raise RuntimeError(f"expected {hits} hits, got {manager.query()[0].hits}")
        if run:
            best = min(best, elapsed)
    return best


def hit_rates(runs: int = 5) -> list[HitRate]:
    out = []
    for hooks, options in HOOKS.items():
        native = options.get("native_hooks", False)
        hits, tries = (CALLS, runs) if native else (PYTHON_HITS, 1)
        plain = _fastest_run(None, hits, tries, options)
        for handler, body in (("empty", EMPTY), ("10 instructions", TEN)):
            probed = _fastest_run(body, hits, tries, options)
            out.append(HitRate(hooks, handler, hits, probed, plain))
    return out


def run(seconds: float = 0.5) -> ProbeFigures | None:
    if not (BIN / "loop").is_file():
        return None
    plain = machine_bench.run(seconds)
    disarmed = machine_bench.run(seconds, prepare=_disarmed)
    assert plain is not None and disarmed is not None
    return ProbeFigures(plain.warm_mips, disarmed.warm_mips, hit_rates())


def report(figures: ProbeFigures | None) -> str:
    if figures is None:
        return "probes: skipped (guest images not found; run from a source checkout)"
    lines = [
        f"probes (guest/bin/loop, {CALLS:,} calls of work per run)",
        f"  guest MIPS, no probe machinery       {figures.plain_mips:10.1f}",
        f"  guest MIPS, machinery, none armed     {figures.disarmed_mips:10.1f}"
        f"  ({figures.disarmed_mips / figures.plain_mips:.2f}x)",
        f"  {'hooks':<22}{'handler':<17}{'hits/s':>12}{'whole run/s':>13}",
    ]
    for rate in figures.rates:
        lines.append(
            f"  {rate.hooks:<22}{rate.handler:<17}{rate.per_second:>12,.0f}"
            f"{rate.whole_run_per_second:>13,.0f}"
        )
    for handler in ("empty", "10 instructions"):
        ratio = figures.rate("native, JIT", handler) / figures.rate("python, interpreter", handler)
        lines.append(f"  native / python (interpreter), {handler}: {ratio:,.0f}x")
    return "\n".join(lines)
