"""Guest speed of the emulated machine without probes: guest/bin/loop, in MIPS.

guest/bin/loop makes 100000 calls of ``work`` (1.8 M instructions, counted exactly by the
machine's instruction clock). One machine spawns and runs it repeatedly: the first run is
reported on its own ("cold": it translates the code and learns each block's instruction
count), the later ones ("warm": another process of the same program, sharing the page
cache and the translations) give the median. Only ``Machine.run`` is timed; spawning
(loading the ELF file, building the stack) is reported separately.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dprobes.runtime import Machine

LOOP = Path(__file__).resolve().parents[1] / "guest" / "bin" / "loop"


@dataclass(frozen=True)
class MachineFigure:
    program: str
    instructions: int
    """Guest instructions one run executes."""
    runs: int
    cold_mips: float
    warm_mips: float
    spawn_ms: float

    def as_dict(self) -> dict[str, object]:
        return {
            "program": self.program,
            "instructions": self.instructions,
            "runs": self.runs,
            "cold_mips": round(self.cold_mips, 1),
            "warm_mips": round(self.warm_mips, 1),
            "spawn_ms": round(self.spawn_ms, 3),
        }


def run(
    seconds: float = 0.5, program: Path = LOOP, prepare: Callable[[Machine], object] | None = None
) -> MachineFigure | None:
    """Time ``program`` for about ``seconds``; None if the guest image is not there.
    ``prepare`` may equip the machine first (e.g. attach a probe manager)."""
    if not program.is_file():
        return None
    machine = Machine()
    if prepare is not None:
        prepare(machine)
    spawns: list[float] = []
    runs: list[tuple[int, float]] = []
    deadline = time.perf_counter() + seconds
    while len(runs) < 3 or time.perf_counter() < deadline:
        start = time.perf_counter()
        proc = machine.spawn(program)
        spawned = time.perf_counter()
        executed = machine.run()
        runs.append((executed, time.perf_counter() - spawned))
        spawns.append(spawned - start)
        if proc.returncode != 7:
            raise RuntimeError(f"{program} ended with {proc.returncode}: {proc.crash}")
    executed = runs[0][0]
    if any(n != executed for n, _ in runs):
        raise RuntimeError("the instruction count differs between runs")
    warm = statistics.median(t for _, t in runs[1:])
    return MachineFigure(
        program.name,
        executed,
        len(runs),
        executed / runs[0][1] / 1e6,
        executed / warm / 1e6,
        statistics.median(spawns) * 1e3,
    )


def report(figure: MachineFigure | None) -> str:
    if figure is None:
        return f"machine: skipped ({LOOP} not found; run from a source checkout)"
    return (
        f"machine, no probes: guest/bin/{figure.program}, {figure.instructions:,} "
        f"instructions per run, {figure.runs} runs\n"
        f"{'cold MIPS':>12} {'warm MIPS':>10} {'spawn ms':>9}\n"
        f"{figure.cold_mips:>12.1f} {figure.warm_mips:>10.1f} {figure.spawn_ms:>9.2f}"
    )
