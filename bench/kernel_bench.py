"""The guest kernel in figures: what system calls cost through it, and kernel probe hits.

* A syscall-heavy workload, guest/bin/filter copying a stdin of ``size`` bytes (a read
  per 64 bytes, a write per byte), run on ``Machine(kernel=False)`` (the host
  shortcut) and on the guest kernel alternately, several times each, in one process: the
  figure that matters is the ratio of the two medians, since absolute times move between
  hosts.
* Kernel probe hits per second, on ``sys_write`` (filter, as above) and on ``sys_getpid``
  (guest/bin/spin sys, one getpid per loop, stopped after a fixed instruction count), with
  an empty handler, through the Python trap path with the interpreter and with JIT-compiled
  handlers. Native hooks never serve kernel probes (runtime/native_probes.py), so there is
  no native row. As in probe_bench, hits per second is ``hits / (probed run - unprobed
  run)`` (fastest of a few), the whole run's rate beside it.

    python -m dprobes.bench.kernel_bench [SIZE]   (also rows of python -m dprobes.bench)
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from pathlib import Path

from dprobes.compiler.pipeline import compile_rpn
from dprobes.kernel_layout import KERNEL_IMAGE
from dprobes.runtime import InstructionLimit, Machine
from dprobes.runtime.probes import ProbeManager

BIN = Path(__file__).resolve().parents[1] / "guest" / "bin"
FILTER, SPIN = BIN / "filter", BIN / "spin"
SPIN_INSTRUCTIONS = 500_000
"""How long a run of ``spin sys`` lasts (it never exits by itself)."""
TIERS = ("interp", "jit")
"""The Python path's handler tiers (kernel probes have no native path)."""


def once(kernel: bool, data: bytes, trace: bool = False) -> tuple[float, int]:
    """Seconds for one run of filter over ``data``, and (with ``trace``) the number of
    system calls it made."""
    machine = Machine(kernel=kernel)
    machine.syscall_trace = [] if trace else None
    out: list[bytes] = []
    proc = machine.spawn(FILTER, [str(FILTER)], stdin=data, stdout=out.append)
    start = time.perf_counter()
    machine.run()
    elapsed = time.perf_counter() - start
    if b"".join(out) != data or proc.returncode != 0:
        raise RuntimeError(f"filter went wrong (kernel={kernel}): {proc}")
    return elapsed, len(machine.syscall_trace or ())


def measure(size: int = 16 * 1024, rounds: int = 3) -> dict[str, float] | None:
    """The figures; None if the guest images are not there."""
    if not (FILTER.is_file() and KERNEL_IMAGE.is_file()):
        return None
    data = bytes((i * 7 + 32) % 95 + 32 for i in range(size))
    calls = once(False, data, trace=True)[1]
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(rounds):
        for kernel in (False, True):
            times[kernel].append(once(kernel, data)[0])
    host, guest = (statistics.median(times[k]) for k in (False, True))
    return {
        "bytes": size,
        "syscalls": calls,
        "host_path_calls_per_s": round(calls / host),
        "kernel_path_calls_per_s": round(calls / guest),
        "kernel_over_host_time": round(guest / host, 2),
    }


def _workload(symbol: str, data: bytes) -> tuple[Machine, int | None]:
    """A guest kernel machine with the program that calls ``symbol`` spawned, and the
    instruction budget of its run (None: until it exits)."""
    machine = Machine(kernel=True)
    if symbol == "sys_write":
        machine.spawn(FILTER, [str(FILTER)], stdin=data, stdout=lambda _: None)
        return machine, None
    machine.spawn(SPIN, [str(SPIN), "sys"], stdout=lambda _: None)
    return machine, SPIN_INSTRUCTIONS


def _timed_run(machine: Machine, limit: int | None) -> float:
    start = time.perf_counter()
    with contextlib.suppress(InstructionLimit):
        machine.run(max_instructions=limit)
    return time.perf_counter() - start


def probe_hits(
    symbol: str, tier: str, data: bytes, rounds: int = 3
) -> dict[str, float | int | str]:
    """Hits per second of an empty kernel probe on ``symbol`` with handlers run by ``tier``."""
    program = compile_rpn(
        "k.rpn", text=f"name = k\nmodtype = kernel\noffset = {symbol}\n    exit\n"
    ).program
    bare, probed, hits = [], [], 0
    for _ in range(rounds):
        bare.append(_timed_run(*_workload(symbol, data)))
        machine, limit = _workload(symbol, data)
        manager = ProbeManager(machine, tier=tier)
        manager.insert(program)
        probed.append(_timed_run(machine, limit))
        hits = manager.query()[0].hits
    extra = min(probed) - min(bare)
    return {
        "probe": symbol,
        "tier": tier,
        "hits": hits,
        "hits_per_s": round(hits / extra) if extra > 0 else 0,
        "run_hits_per_s": round(hits / min(probed)),
    }


def measure_probes(size: int = 4096) -> list[dict[str, float | int | str]] | None:
    """Kernel probe hit rates; None if the guest images are not there."""
    if not (FILTER.is_file() and SPIN.is_file() and KERNEL_IMAGE.is_file()):
        return None
    data = bytes((i * 7 + 32) % 95 + 32 for i in range(size))
    return [
        probe_hits(symbol, tier, data) for symbol in ("sys_write", "sys_getpid") for tier in TIERS
    ]


def report_probes(rates: list[dict[str, float | int | str]] | None) -> str:
    if rates is None:
        return "kernel probe hits: guest/bin/filter, spin or vmlinux missing"
    lines = ["kernel probe hits/s (Python trap path; native hooks do not serve kernel probes):"]
    lines += [
        f"  {r['probe']:<10} {r['tier']:<6} {r['hits']:>6} hits: {r['hits_per_s']:>7}/s "
        f"(probe machinery only; {r['run_hits_per_s']}/s over the whole run)"
        for r in rates
    ]
    return "\n".join(lines)


def report(figures: dict[str, float] | None) -> str:
    if figures is None:
        return "system calls through the guest kernel: guest/bin/filter or vmlinux missing"
    return (
        f"system calls, guest/bin/filter over {figures['bytes']} bytes "
        f"({figures['syscalls']} calls): host path {figures['host_path_calls_per_s']}/s, "
        f"guest kernel {figures['kernel_path_calls_per_s']}/s, "
        f"kernel/host time {figures['kernel_over_host_time']}"
    )


if __name__ == "__main__":
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 16 * 1024
    print(report(measure(size)))
    print(report_probes(measure_probes(size // 4)))
