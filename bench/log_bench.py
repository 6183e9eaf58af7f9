"""Log output end to end: what a probe hit costs a user of ``dpc run`` with each log target.

Every figure comes from a subprocess, as a user runs it: ``dpc run --tier jit`` on
guest/bin/loop with a probe on each of the first ten instructions of ``work`` (called
100,000 times: 1,000,000 hits), each running the 10-instruction handler of
``probe_bench`` that logs two words, every header field selected (``log = ALL``), records
written to ``--log-file`` with KLOG, KLOG ``-f``, COM1, EVL and LTT (a CTF trace directory;
its cost is also given as a ratio to EVL's, the other machine-readable target). The native
path alone is the same machine and probes with the records kept in the ring and nothing written
(``python -m dprobes.bench.log_bench --native-only``, the Python API's default journal).

Cost per hit = (probed run - unprobed run of the same command) / hits, the least of a few
runs each, in wall time (what a user waits for: ``dpc run`` formats and writes records in
a thread beside the emulation) and in CPU time (user + system: all the work done, on
every core). The goal is every target within 1.5x of the native path alone in wall
time; on a busy machine wall time also measures the neighbours, so compare the CPU
column too.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from dprobes.bench.probe_bench import BIN, TEN

PROBES = 10
"""Probes, one per instruction of ``work`` from its entry (its last two, pop and ret,
are left alone)."""
TARGETS = {
    "KLOG": ["--log-target", "KLOG"],
    "KLOG -f": ["--log-target", "KLOG", "-f"],
    "COM1": ["--log-target", "COM1"],
    "EVL": ["--log-target", "EVL"],
    "LTT": ["--log-target", "LTT"],
}
GOAL = 1.5
"""Per-hit cost of every target relative to the native path alone."""


def probe_source() -> str:
    """The bench program: ``PROBES`` probes in ``work``, each at an instruction start."""
    import capstone

    from dprobes.compiler.pipeline import BuildOptions, compile_rpn

    loop = BIN / "loop"
    head = f"name = {loop}\nmodtype = user\nlog = ALL\n"
    entry = (
        compile_rpn(
            "bench.rpn", BuildOptions(elf=str(loop)), text=head + "offset = work\n    exit\n"
        )
        .program.probes[0]
        .offset
    )
    code = loop.read_bytes()[entry : entry + 64]
    starts = [
        at
        for at, _, _, _ in capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32).disasm_lite(
            code, 0
        )
    ][:PROBES]
    body = TEN.replace("offset = work\n", "").replace("max_hits = {hits}\n", "")
    return head + "".join(f"offset = work+{at}\n{body}" for at in starts)


def native_only(ppdf: str | None) -> None:
    """Run loop on a machine with the program inserted, records kept in the ring (the
    API's journal, never read); print the number of records."""
    from dprobes.compiler.pipeline import BuildOptions, load_program
    from dprobes.runtime.machine import Machine
    from dprobes.runtime.probes import ProbeManager

    machine = Machine()
    manager = ProbeManager(machine, tier="jit")
    if ppdf is not None:
        manager.insert(load_program(ppdf, BuildOptions()).program)
    machine.spawn(str(BIN / "loop"), stdout=lambda data: None)
    machine.run()
    print(manager.log_count)


@dataclass(frozen=True)
class TargetCost:
    """One line of the report: CPU seconds of the probed and the unprobed run."""

    target: str
    hits: int
    probed: Seconds
    plain: Seconds

    @property
    def ns_per_hit(self) -> float:
        """Wall time per hit."""
        return (self.probed.wall - self.plain.wall) / self.hits * 1e9

    @property
    def cpu_ns_per_hit(self) -> float:
        return (self.probed.cpu - self.plain.cpu) / self.hits * 1e9


class Seconds(NamedTuple):
    """How long a run took: on the wall, and in CPU time of the process."""

    wall: float
    cpu: float


def _children_cpu() -> float:
    """CPU seconds (user + system) of the finished child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _fastest(command: list[str], runs: int, summary: str = "stderr") -> tuple[Seconds, str]:
    """The least wall and CPU time of ``runs`` runs of ``command``, and the last line of
    its ``summary`` stream."""
    wall, cpu, last = float("inf"), float("inf"), ""
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), _children_cpu()
        done = subprocess.run(command, capture_output=True, check=False)
        wall = min(wall, time.perf_counter() - start)
        cpu = min(cpu, _children_cpu() - start_cpu)
        last = (getattr(done, summary).decode().strip().splitlines() or [""])[-1]
    return Seconds(wall, cpu), last


def run(runs: int = 2) -> list[TargetCost] | None:
    if not (BIN / "loop").is_file():
        return None
    import json

    with tempfile.TemporaryDirectory() as tmp:
        ppdf, log = Path(tmp) / "bench.ppdf", Path(tmp) / "log"
        source = Path(tmp) / "bench.rpn"
        source.write_text(probe_source())
        dpc = [sys.executable, "-m", "dprobes.cli"]
        subprocess.run(
            [*dpc, "build", str(source), "--elf", str(BIN / "loop"), "-o", str(ppdf)],
            check=True,
            capture_output=True,
        )
        own = [sys.executable, "-m", "dprobes.bench.log_bench", "--native-only"]
        plain, _ = _fastest(own, runs)
        probed, count = _fastest([*own, str(ppdf)], runs, "stdout")
        out = [TargetCost("native path alone", int(count), probed, plain)]
        command = [*dpc, "run", "--tier", "jit", "--json"]
        plain, _ = _fastest([*command, "--", str(BIN / "loop")], runs)
        for target, options in TARGETS.items():
            probed, summary = _fastest(
                [
                    *command,
                    "--probes",
                    str(ppdf),
                    *options,
                    "--log-file",
                    str(log),
                    "--",
                    str(BIN / "loop"),
                ],
                runs,
            )
            if log.is_dir():
                shutil.rmtree(log)
            else:
                log.unlink()
            out.append(TargetCost(target, json.loads(summary)["logs"], probed, plain))
    return out


def report(costs: list[TargetCost] | None) -> str:
    if costs is None:
        return "log output: skipped (guest images not found; run from a source checkout)"
    native = costs[0].ns_per_hit
    lines = [
        f"log output (dpc run --tier jit end to end, guest/bin/loop, {PROBES} probes in "
        f"work, log = ALL, --log-file; goal: within {GOAL}x of the native path)",
        f"  {'target':<20}{'hits':>10}{'wall ns/hit':>13}{'x native':>10}"
        f"{'CPU ns/hit':>12}{'x native':>10}",
    ]
    cpu = costs[0].cpu_ns_per_hit
    for cost in costs:
        lines.append(
            f"  {cost.target:<20}{cost.hits:>10,}{cost.ns_per_hit:>13,.0f}"
            f"{cost.ns_per_hit / native:>10.2f}{cost.cpu_ns_per_hit:>12,.0f}"
            f"{cost.cpu_ns_per_hit / cpu:>10.2f}"
        )
    by_target = {cost.target: cost for cost in costs}
    ltt, evl = by_target["LTT"], by_target["EVL"]
    lines.append(
        f"  LTT / EVL per hit: {ltt.ns_per_hit / evl.ns_per_hit:.2f}x wall, "
        f"{ltt.cpu_ns_per_hit / evl.cpu_ns_per_hit:.2f}x CPU"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m dprobes.bench.log_bench")
    parser.add_argument(
        "--native-only", action="store_true", help="(internal) one run of the native path alone"
    )
    parser.add_argument("ppdf", nargs="?")
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    if args.native_only:
        native_only(args.ppdf)
    else:
        print(report(run(args.runs)))


if __name__ == "__main__":
    main()
