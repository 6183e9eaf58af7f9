"""Interpreter throughput on the benchmark handlers (RPN instructions per second).

Each handler is compiled with the real pipeline, fired once with a trace hook to count
the RPN instructions one hit executes, warmed up, then timed over several rounds; the
median round is reported. Compare figures within one run: the machines are shared.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from dprobes.compiler.pipeline import compile_rpn
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
    regs = {"eax": 1, "ebx": 2, "ecx": 3, "edx": 4, "esi": 5, "edi": 6, "ebp": 0x7000,
            "esp": 0x7000, "eip": 0x8048001, "eflags": 0x246}
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


def run(seconds: float = 0.5) -> list[Figure]:
    return [measure(path, seconds) for path in sorted(HANDLERS.glob("*.rpn"))]
