"""The guest-speed cost of running system calls through the guest kernel.

A syscall-heavy workload, guest/bin/filter copying a stdin of ``size`` bytes in 64-byte
reads (one read and one write per piece), run on a plain machine and on
``Machine(kernel=True)`` alternately, several times each, in one process: the figure that
matters is the ratio of the two medians, since absolute times move between hosts.

    python -m dprobes.bench.kernel_bench [SIZE]   (also a row of python -m dprobes.bench)
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

from dprobes.kernel_layout import KERNEL_IMAGE
from dprobes.runtime import Machine

FILTER = Path(__file__).resolve().parents[1] / "guest" / "bin" / "filter"


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
    print(report(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 16 * 1024)))
