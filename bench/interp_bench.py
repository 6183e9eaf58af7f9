"""Interpreter throughput on the benchmark handlers (RPN instructions per second).

Each handler is compiled with the real pipeline, fired once with a trace hook to count
the RPN instructions one hit executes, warmed up, then timed over several rounds; the
median round is reported. Compare figures within one run: the machines are shared. When
the installed interpreter is the mypyc build, the pure-Python build is measured too, in a
child process, so the run gives their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import dprobes
from dprobes.compiler.pipeline import compile_rpn
from dprobes.vm import flavour
from dprobes.vm.api import VM
from dprobes.vm.context import MemoryContext

HANDLERS = Path(__file__).parent / "handlers"
BUFFER = 0x10000


@dataclass(frozen=True)
class Figure:
    handler: str
    instructions_per_hit: int
    hits_per_second: float

    @property
    def instructions_per_second(self) -> float:
        return self.instructions_per_hit * self.hits_per_second


def bench_context() -> MemoryContext:
    """Registers, a 4 KiB buffer and a stack for the handlers to read."""
    regs = {
        "eax": 1,
        "ebx": 2,
        "ecx": 3,
        "edx": 4,
        "esi": 5,
        "edi": 6,
        "ebp": 0x7000,
        "esp": 0x7000,
        "eip": 0x8048001,
        "eflags": 0x246,
    }
    memory = {BUFFER: bytes(range(256)) * 16, 0x7000: bytes(64)}
    return MemoryContext(regs, memory=memory, pid=42)


def count_instructions(vm: VM, context: MemoryContext) -> int:
    executed = 0

    def tick(machine: object, offset: int) -> None:
        nonlocal executed
        executed += 1

    vm.fire(0, context, trace=tick)
    return executed


def measure(path: Path, seconds: float = 0.5, rounds: int = 5) -> Figure:
    vm = VM(compile_rpn(str(path)).program)
    context = bench_context()
    per_hit = count_instructions(vm, context)
    start = time.perf_counter()
    hits = 0
    while time.perf_counter() - start < seconds / rounds:  # warm-up and calibration
        vm.fire(0, context)
        hits += 1
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(hits):
            vm.fire(0, context)
        rates.append(hits / (time.perf_counter() - start))
    return Figure(path.stem, per_hit, statistics.median(rates))


def measure_all(seconds: float = 0.5) -> list[Figure]:
    return [measure(path, seconds) for path in sorted(HANDLERS.glob("*.rpn"))]


@dataclass(frozen=True)
class InterpreterFigures:
    """The installed interpreter's figures and, when that is the compiled build, the pure
    Python build's from the same run (in a child process, where the sources are imported)."""

    flavour: str
    figures: list[Figure]
    pure: list[Figure] | None

    def as_dict(self) -> dict[str, object]:
        def rows(figures: list[Figure]) -> list[dict[str, object]]:
            return [
                {
                    "handler": f.handler,
                    "instructions_per_hit": f.instructions_per_hit,
                    "hits_per_second": round(f.hits_per_second, 1),
                    "instructions_per_second": round(f.instructions_per_second),
                }
                for f in figures
            ]

        return {
            "flavour": self.flavour,
            "handlers": rows(self.figures),
            "pure_python": rows(self.pure) if self.pure is not None else None,
        }


def _measure_pure(seconds: float) -> list[Figure]:
    """The same figures in a child that runs a copy of this install without its extensions."""
    command = [sys.executable, "-m", "dprobes.bench.interp_bench", "--seconds", str(seconds)]
    with tempfile.TemporaryDirectory() as tmp:
        pure = flavour.without_extensions(Path(dprobes.__file__).parent, Path(tmp))
        path = os.pathsep.join(filter(None, [str(pure), os.environ.get("PYTHONPATH")]))
        output = subprocess.run(
            command,
            check=True,
            capture_output=True,
            text=True,
            cwd=tmp,
            env={**os.environ, "PYTHONPATH": path},
        ).stdout
    return [Figure(**row) for row in json.loads(output)]


def run(seconds: float = 0.5) -> InterpreterFigures:
    figures = measure_all(seconds)
    pure = _measure_pure(seconds) if flavour.is_compiled() else None
    return InterpreterFigures(flavour.describe(), figures, pure)


def report(result: InterpreterFigures) -> str:
    lines = [
        f"interpreter (CPython {platform.python_version()}, {result.flavour})",
        f"{'handler':<12} {'instr/hit':>10} {'hits/s':>12} {'M instr/s':>10}"
        + (f" {'pure M/s':>9} {'x pure':>7}" if result.pure else ""),
    ]
    pure = {f.handler: f for f in result.pure or []}
    for f in result.figures:
        line = (
            f"{f.handler:<12} {f.instructions_per_hit:>10} {f.hits_per_second:>12,.0f} "
            f"{f.instructions_per_second / 1e6:>10.2f}"
        )
        if f.handler in pure:
            slow = pure[f.handler].instructions_per_second
            line += f" {slow / 1e6:>9.2f} {f.instructions_per_second / slow:>7.2f}"
        lines.append(line)
    return "\n".join(lines)


if __name__ == "__main__":  # the child of _measure_pure: figures as JSON
    parser = argparse.ArgumentParser(prog="python -m dprobes.bench.interp_bench")
    parser.add_argument("--seconds", type=float, default=0.5)
    print(json.dumps([vars(f) for f in measure_all(parser.parse_args().seconds)]))
