"""What JIT compilation costs, first and then from the object cache.

Each figure comes from fresh processes sharing a temporary cache directory: the first
finds it empty (every module compiled: "cold"), the second finds what the first stored
("cached"). A process times, in this order: the engine with the runtime library, each
benchmark handler (``bench/handlers``) on its own, and ``ProbeManager.insert`` of one
program with 1,000 probes with identical handlers at instructions spread over
``guest/bin/hello_glibc``'s code (tier ``jit``: the insert compiles them). Last,
``dpc run`` of ``guest/bin/loop`` with one probe is timed end to end, with a warm cache,
against the same run with ``--tier interp`` and with ``--no-cache``.

``python -m dprobes.bench.cache_bench`` runs it alone; ``python -m dprobes.bench`` too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from dprobes.bench.interp_bench import HANDLERS

ROOT = Path(__file__).resolve().parent.parent
GUEST = ROOT / "guest" / "bin"
PROBES = 1000
MANY_HANDLER = "push r, eax\nlog 1\nexit"
RUNS = 3
"""``dpc run`` timings per configuration; the fastest counts."""


@dataclass(frozen=True)
class ProcessFigures:
    """One process's timings (seconds)."""

    rtlib: float  # the runtime library: built with the IR builder, compiled or loaded
    handlers: dict[str, float]  # each benchmark handler's compile or load
    insert: float  # 1,000 identical-handler probes, compiled at insert
    all_cached: bool  # every module came from the cache


@dataclass(frozen=True)
class CacheBench:
    cold: ProcessFigures
    cached: ProcessFigures
    run_seconds: dict[str, float]  # dpc run wall time per configuration

    def as_dict(self) -> dict:
        return asdict(self)


def _spread_program() -> str:
    """RPN source of PROBES probes with one handler, at instructions spread over the
    code segment of hello_glibc."""
    from dprobes.runtime.codemap import CodeMap
    from dprobes.runtime.xol import instruction_starts

    path = GUEST / "hello_glibc"
    segment = CodeMap.load(path).segments[0]
    code = path.read_bytes()[segment.offset : segment.offset + segment.filesz]
    starts = sorted(instruction_starts(code, segment.offset))
    offsets = starts[:: len(starts) // PROBES][:PROBES]
    probes = "".join(f"offset = {offset}\n{MANY_HANDLER}\n" for offset in offsets)
    return f"name = {path}\nmodtype = user\n{probes}"


def measure_process() -> ProcessFigures:
    """This process's figures (run in a fresh process: nothing compiled in memory yet)."""
    from dprobes.compiler.pipeline import compile_rpn
    from dprobes.runtime.machine import Machine
    from dprobes.runtime.probes import ProbeManager
    from dprobes.vm.jit.compile import Engine

    engine = Engine.get()
    handlers = {}
    cached = engine.objects.stats.hits == 1
    for path in sorted(HANDLERS.glob("*.rpn")):
        program = compile_rpn(str(path)).program
        body = engine.compile_handlers(program, [0])[0].body
        handlers[path.stem] = body.compile_seconds
        cached = cached and body.cached
    many = compile_rpn("many.rpn", text=_spread_program()).program
    manager = ProbeManager(Machine(), tier="jit")
    start = time.perf_counter()
    loaded = manager.insert(many)
    insert = time.perf_counter() - start
    assert all(record.armed for record in loaded.records)
    cached = cached and loaded.vm.compiled(0).body.cached
    return ProcessFigures(engine.rtlib_seconds, handlers, insert, cached)


def _in_fresh_process(cache_dir: str) -> ProcessFigures:
    done = subprocess.run(
        [sys.executable, "-m", "dprobes.bench.cache_bench", "--process"],
        env={**os.environ, "DPROBES_CACHE_DIR": cache_dir},
        capture_output=True,
        text=True,
        check=True,
    )
    return ProcessFigures(**json.loads(done.stdout))


def _dpc_run_seconds(cache_dir: str, directory: Path) -> dict[str, float]:
    """Wall time of ``dpc run`` with one probe on guest/bin/loop, per configuration."""
    probes = directory / "add3.rpn"
    probes.write_text((ROOT / "examples" / "add3.rpn").read_text())
    command = [
        sys.executable,
        "-m",
        "dprobes.cli",
        "run",
        "--probes",
        str(probes),
        "--elf",
        str(GUEST / "loop"),
    ]
    env = {**os.environ, "DPROBES_CACHE_DIR": cache_dir}
    out = {}
    for label, options in (
        ("interp", ["--tier", "interp"]),
        ("auto, warm cache", []),
        ("auto, --no-cache", ["--no-cache"]),
    ):
        best = float("inf")
        for _ in range(RUNS):
            start = time.perf_counter()
            subprocess.run(
                [*command, *options, "--", str(GUEST / "loop")],
                env=env,
                capture_output=True,
                check=False,
            )
            best = min(best, time.perf_counter() - start)
        out[label] = best
    return out


def run() -> CacheBench | None:
    """The figures, or None where the JIT is unavailable."""
    from dprobes.vm.jit import JitUnavailable, require_llvmlite

    try:
        require_llvmlite()  # (not Engine.get(): this process leaves the user's cache alone)
    except JitUnavailable:
        return None
    with tempfile.TemporaryDirectory(prefix="dprobes-cache-bench-") as directory:
        cache_dir = str(Path(directory) / "cache")
        cold = _in_fresh_process(cache_dir)
        cached = _in_fresh_process(cache_dir)
        seconds = _dpc_run_seconds(cache_dir, Path(directory))
    return CacheBench(cold, cached, seconds)


def report(bench: CacheBench | None) -> str:
    if bench is None:
        return "JIT compile and cache: unavailable (llvmlite could not be imported)"
    cold, cached = bench.cold, bench.cached
    lines = [
        "JIT compile and object cache (fresh processes; cold: empty cache)",
        f"  {'':<40}{'cold ms':>10}{'cached ms':>11}",
    ]
    rows = [("runtime library", cold.rtlib, cached.rtlib)]
    rows += [
        (f"handler {name}", cold.handlers[name], cached.handlers[name]) for name in cold.handlers
    ]
    rows.append((f"insert {PROBES:,} identical-handler probes", cold.insert, cached.insert))
    lines += [f"  {label:<40}{a * 1e3:>10.1f}{b * 1e3:>11.1f}" for label, a, b in rows]
    if not cached.all_cached:
        lines.append("  (the second process did not load everything from the cache)")
    lines.append(
        "  dpc run, guest/bin/loop with one probe (whole command): "
        + ", ".join(f"{label} {seconds:.2f} s" for label, seconds in bench.run_seconds.items())
    )
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:] == ["--process"]:
        print(json.dumps(asdict(measure_process())))
    else:
        print(report(run()))
