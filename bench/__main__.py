"""``python -m dprobes.bench [--seconds S] [--json]``: run the benchmarks, print figures."""

from __future__ import annotations

import argparse
import json
import platform

from dprobes.bench import (
    cache_bench,
    hook_floor,
    interp_bench,
    jit_bench,
    kernel_bench,
    log_bench,
    machine_bench,
    probe_bench,
)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m dprobes.bench")
    parser.add_argument("--seconds", type=float, default=0.5, help="timing budget per handler")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures = interp_bench.run(args.seconds)
    machine = machine_bench.run(args.seconds)
    probes = probe_bench.run(args.seconds)
    floor = hook_floor.run()
    logs = log_bench.run()
    jit = jit_bench.run(args.seconds)
    cache = cache_bench.run()
    kernel = kernel_bench.measure()
    kernel_probes = kernel_bench.measure_probes()
    if args.json:
        print(
            json.dumps(
                {
                    "python": platform.python_version(),
                    "interpreter": figures.as_dict(),
                    "machine": machine.as_dict() if machine else None,
                    "probes": probes.as_dict() if probes else None,
                    "hook_floor": [
                        {"hook": f.hook, "ns_per_hit": round(f.ns_per_hit, 1)} for f in floor
                    ],
                    "jit": jit.as_dict() if jit else None,
                    "jit_cache": cache.as_dict() if cache else None,
                    "kernel_syscalls": kernel,
                    "kernel_probe_hits": kernel_probes,
                    "log_output": [
                        {
                            "target": c.target,
                            "hits": c.hits,
                            "ns_per_hit": round(c.ns_per_hit, 1),
                            "cpu_ns_per_hit": round(c.cpu_ns_per_hit, 1),
                        }
                        for c in logs or []
                    ],
                }
            )
        )
        return
    print(interp_bench.report(figures))
    print()
    print(machine_bench.report(machine))
    print()
    print(probe_bench.report(probes))
    print(hook_floor.report(floor))
    if probes is not None:
        native = probes.rate("native, JIT", "10 instructions")
        print(f"  native hits, 10 instructions: {hook_floor.against_reference(floor, native)}")
    print()
    print(log_bench.report(logs))
    print()
    print(jit_bench.report(jit))
    print()
    print(cache_bench.report(cache))
    print()
    print(kernel_bench.report(kernel))
    print(kernel_bench.report_probes(kernel_probes))


if __name__ == "__main__":
    main()
