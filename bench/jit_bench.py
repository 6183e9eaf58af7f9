"""JIT throughput against the interpreter and against hand-written C, per benchmark handler.

For each handler of ``bench/handlers`` (compiled, counted and timed with the helpers of
``interp_bench``, against its context):

* ``interp``   hits/s of ``VM.fire`` on the interpreter (``interp_bench.measure``);
* ``jit fire`` hits/s of ``VM.fire`` on the JIT tier: the Python embedding API, so each
  hit also pays for syncing the persistent state and building the FireResult;
* ``jit loop`` hits/s of the compiled handler called in a native loop over the same
  state and the native MemoryContext callbacks, with no Python per hit: what a native
  host (the emulated runtime's native hooks) gets;
* ``compile``  milliseconds to lower, optimise and generate the handler's code (cache off);
* ``C``        hits/s of the same handler written by hand in C (``C_SOURCE``), built with
  ``gcc -O2`` into a shared library in a temporary directory and run in a native loop:
  the reference limit. Skipped with a message when gcc is missing.

Each C handler's log record is checked against the interpreter's before it is timed.
"""

from __future__ import annotations

import ctypes
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from dprobes.bench.interp_bench import BUFFER, HANDLERS, bench_context, count_instructions, measure
from dprobes.compiler.pipeline import compile_rpn
from dprobes.vm.api import VM

ROUNDS = 5


@dataclass
class JitFigure:
    handler: str
    instructions_per_hit: int
    interp_hits_per_second: float
    jit_fire_hits_per_second: float
    jit_loop_hits_per_second: float
    compile_ms: float
    c_hits_per_second: float | None

    @property
    def fire_speedup(self) -> float:
        return self.jit_fire_hits_per_second / self.interp_hits_per_second

    @property
    def loop_speedup(self) -> float:
        return self.jit_loop_hits_per_second / self.interp_hits_per_second

    @property
    def c_over_jit(self) -> float | None:
        if self.c_hits_per_second is None:
            return None
        return self.c_hits_per_second / self.jit_loop_hits_per_second


@dataclass
class JitBench:
    figures: list[JitFigure]
    c_status: str  # "gcc -O2 ..." or why the C column is missing
    optimizer: str

    def as_dict(self) -> dict:
        return {
            "c": self.c_status,
            "optimizer": self.optimizer,
            "handlers": [
                {
                    **asdict(f),
                    "fire_speedup": round(f.fire_speedup, 2),
                    "loop_speedup": round(f.loop_speedup, 1),
                    "c_over_jit": None if f.c_over_jit is None else round(f.c_over_jit, 2),
                }
                for f in self.figures
            ],
        }


# --- timing helpers -----------------------------------------------------------------------
def _rate(run_batch, seconds: float) -> float:
    """Median hits/s of ROUNDS rounds; ``run_batch(n)`` runs n hits."""
    n, start = 1, time.perf_counter()
    while time.perf_counter() - start < seconds / (2 * ROUNDS):  # calibrate
        run_batch(n)
        n *= 2
    rates = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        run_batch(n)
        rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates)


_LOOP = None


def _native_loop():
    """``void loop(void (*handler)(State *), State *, i64 n)`` compiled with llvmlite."""
    global _LOOP
    if _LOOP is None:
        from llvmlite import ir

        from dprobes.vm.jit.compile import Engine
        from dprobes.vm.jit.irgen import I64, PTR, VOID, Callee

        module = ir.Module(name="dprobes_bench_loop")
        fn = ir.Function(module, ir.FunctionType(VOID, [PTR, PTR, I64]), "dprobes_bench_loop")
        handler, state, count = fn.args
        entry, head, body, done = (
            fn.append_basic_block(n) for n in ("entry", "head", "body", "done")
        )
        b = ir.IRBuilder(entry)
        b.branch(head)
        b.position_at_end(head)
        i = b.phi(I64)
        i.add_incoming(ir.Constant(I64, 0), entry)
        b.cbranch(b.icmp_unsigned("<", i, count), body, done)
        b.position_at_end(body)
        b.call(Callee(handler, ir.FunctionType(VOID, [PTR])), [state])
        i.add_incoming(b.add(i, ir.Constant(I64, 1)), body)
        b.branch(head)
        b.position_at_end(done)
        b.ret_void()
        address = Engine.get().add_library(module, ["dprobes_bench_loop"])["dprobes_bench_loop"]
        _LOOP = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)(address)
    return _LOOP


def _compile_ms(program) -> float:
    from dprobes.vm.jit.compile import Engine

    times = []
    for _ in range(3):
        start = time.perf_counter()
        Engine.get().compile_handlers(program, [0], use_cache=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


# --- the C reference ------------------------------------------------------------------------
C_SOURCE = r"""
#include <stdint.h>
#include <string.h>

typedef struct { uint32_t start, length; const uint8_t *data; } region_t;
typedef struct {
    uint32_t nregions; region_t regions[4];
    uint32_t regs[16];          /* eax ebx ecx edx esi edi ebp esp eip eflags */
    uint32_t pid, cpu;
} host_t;
typedef struct { uint8_t log[1100]; uint32_t len; uint32_t lv[4]; } hit_t;

enum { EAX, EBX, ECX, EDX, ESI, EDI, EBP, ESP, EIP, EFLAGS };
#define HEADER 12

/* MemoryContext's fast path: the range inside one region, else a fault */
static int read_u32(const host_t *h, uint32_t addr, uint32_t *out) {
    for (uint32_t i = 0; i < h->nregions; i++) {
        const region_t *r = &h->regions[i];
        int64_t off = (int64_t)addr - r->start;
        if (off >= 0 && off + 4 <= r->length) { memcpy(out, r->data + off, 4); return 0; }
    }
    return 1;
}

static void log_word(hit_t *hit, uint32_t word) {
    if (hit->len + 4 <= sizeof hit->log) { memcpy(hit->log + hit->len, &word, 4); hit->len += 4; }
}

static void begin(hit_t *hit) { hit->len = HEADER; }

__attribute__((noinline)) static void accumulate(hit_t *hit, uint32_t value) {
    hit->lv[0] += value;
}

long run_calls(const host_t *h, long n, hit_t *hit) {
    for (long k = 0; k < n; k++) {
        begin(hit);
        hit->lv[0] = 0;
        for (uint32_t count = 200; count; count--) accumulate(hit, count);
        log_word(hit, hit->lv[0]);
    }
    return hit->len;
}

long run_exceptions(const host_t *h, long n, hit_t *hit) {
    for (long k = 0; k < n; k++) {
        begin(hit);
        hit->lv[0] = 0;
        for (uint32_t count = 100; count; count--) {
            uint32_t value;
            if (read_u32(h, 0xdead0000u, &value)) hit->lv[0]++;
        }
        log_word(hit, hit->lv[0]);
    }
    return hit->len;
}

long run_memloop(const host_t *h, long n, hit_t *hit) {
    for (long k = 0; k < n; k++) {
        begin(hit);
        hit->lv[0] = 0;
        uint32_t address = BUFFER;
        for (uint32_t count = 1000; count; count--, address += 4) {
            uint32_t value;
            if (read_u32(h, address, &value)) break;
            hit->lv[0] += value;
        }
        log_word(hit, hit->lv[0]);
    }
    return hit->len;
}

long run_registers(const host_t *h, long n, hit_t *hit) {
    static const int order[10] = {EAX, EBX, ECX, EDX, ESI, EDI, EBP, ESP, EIP, EFLAGS};
    for (long k = 0; k < n; k++) {
        begin(hit);
        for (int i = 9; i >= 0; i--) log_word(hit, h->regs[order[i]]);  /* TOS first */
        log_word(hit, h->cpu);
        log_word(hit, h->pid);
        uint32_t value = 0;
        read_u32(h, h->regs[ESP] + 4, &value);
        log_word(hit, value);
    }
    return hit->len;
}
"""
C_REGISTERS = ("eax", "ebx", "ecx", "edx", "esi", "edi", "ebp", "esp", "eip", "eflags")


class _Region(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint32), ("length", ctypes.c_uint32), ("data", ctypes.c_void_p)]


class _Host(ctypes.Structure):
    _fields_ = [
        ("nregions", ctypes.c_uint32),
        ("regions", _Region * 4),
        ("regs", ctypes.c_uint32 * 16),
        ("pid", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
    ]


class _Hit(ctypes.Structure):
    _fields_ = [
        ("log", ctypes.c_uint8 * 1100),
        ("len", ctypes.c_uint32),
        ("lv", ctypes.c_uint32 * 4),
    ]


def build_c_library(directory: Path) -> ctypes.CDLL | str:
    """The C handlers as a shared library, or the reason they cannot be built."""
    gcc = shutil.which("gcc")
    if gcc is None:
        return "gcc not found: C reference skipped"
    source = directory / "handlers.c"
    source.write_text(C_SOURCE)
    library = directory / "handlers.so"
    done = subprocess.run(
        [gcc, "-O2", "-shared", "-fPIC", f"-DBUFFER={BUFFER}u", "-o", str(library), str(source)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        return f"gcc failed: C reference skipped ({done.stderr.strip()[:200]})"
    return ctypes.CDLL(str(library))


def _c_host(context, keep: list) -> _Host:
    host = _Host()
    host.nregions = len(context.regions)
    for i, (start, data) in enumerate(context.regions):
        buffer = (ctypes.c_uint8 * len(data)).from_buffer_copy(bytes(data))
        keep.append(buffer)
        host.regions[i].start, host.regions[i].length = start, len(data)
        host.regions[i].data = ctypes.addressof(buffer)
    for i, name in enumerate(C_REGISTERS):
        host.regs[i] = context.regs.get(name, 0)
    host.pid, host.cpu = context.pid(), context.processor()
    return host


def _c_rate(library: ctypes.CDLL, name: str, expected_log: bytes, seconds: float) -> float:
    run = getattr(library, f"run_{name}")
    run.restype = ctypes.c_long
    run.argtypes = [ctypes.c_void_p, ctypes.c_long, ctypes.c_void_p]
    keep: list = []
    host, hit = _c_host(bench_context(), keep), _Hit()
    length = run(ctypes.byref(host), 1, ctypes.byref(hit))
    got = bytes(hit.log[12:length])
    if got != expected_log:
        raise AssertionError(f"C {name}: log {got.hex()} != interpreter's {expected_log.hex()}")
    return _rate(lambda n: run(ctypes.byref(host), n, ctypes.byref(hit)), seconds)


# --- the benchmark ------------------------------------------------------------------------------
def measure_handler(path: Path, seconds: float, library) -> JitFigure:
    program = compile_rpn(str(path)).program
    interp = measure(path, seconds)
    expected = VM(program).fire(0, bench_context())
    vm = VM(program, tier="jit")
    context = bench_context()
    assert count_instructions(vm, context) == interp.instructions_per_hit
    got = vm.fire(0, context)
    assert got.log == expected.log, f"{path.stem}: JIT log differs from the interpreter's"

    def fire(n: int) -> None:
        for _ in range(n):
            vm.fire(0, context)

    fire_rate = _rate(fire, seconds)
    runner, handler = vm._runner, vm._compiled[0]
    vm.fire(0, context)  # leaves the state wired to the native MemoryContext host
    loop = _native_loop()
    loop_rate = _rate(lambda n: loop(handler.address, runner.address, n), seconds)
    c_rate = (
        None if isinstance(library, str) else _c_rate(library, path.stem, expected.log, seconds)
    )
    return JitFigure(
        path.stem,
        interp.instructions_per_hit,
        interp.hits_per_second,
        fire_rate,
        loop_rate,
        _compile_ms(program),
        c_rate,
    )


def run(seconds: float = 0.5) -> JitBench | None:
    """Figures for every benchmark handler; None when the JIT is unavailable."""
    from dprobes.vm.jit import JitUnavailable
    from dprobes.vm.jit.compile import Engine

    try:
        engine = Engine.get()
    except JitUnavailable:
        return None
    with tempfile.TemporaryDirectory(prefix="dprobes-bench-") as directory:
        library = build_c_library(Path(directory))
        status = library if isinstance(library, str) else "gcc -O2 -shared -fPIC"
        figures = [
            measure_handler(path, seconds, library) for path in sorted(HANDLERS.glob("*.rpn"))
        ]
    return JitBench(figures, status, engine.optimizer)


def report(bench: JitBench | None) -> str:
    if bench is None:
        return "JIT: unavailable (llvmlite could not be imported)"
    lines = [
        f"JIT (llvmlite: {bench.optimizer})",
        f"C reference: {bench.c_status}",
        f"{'handler':<12} {'interp/s':>10} {'jit fire/s':>11} {'jit loop/s':>12} "
        f"{'C/s':>12} {'compile ms':>10} {'fire x':>7} {'loop x':>8} {'C/jit':>6}",
    ]
    for f in bench.figures:
        c = "-" if f.c_hits_per_second is None else f"{f.c_hits_per_second:,.0f}"
        ratio = "-" if f.c_over_jit is None else f"{f.c_over_jit:.2f}"
        lines.append(
            f"{f.handler:<12} {f.interp_hits_per_second:>10,.0f} "
            f"{f.jit_fire_hits_per_second:>11,.0f} {f.jit_loop_hits_per_second:>12,.0f} "
            f"{c:>12} {f.compile_ms:>10.1f} {f.fire_speedup:>7.1f} "
            f"{f.loop_speedup:>8.0f} {ratio:>6}"
        )
    lines.append(
        "fire x / loop x: JIT over interpreter through VM.fire / in a native loop; "
        "C/jit: C over the JIT's native loop"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(run()))
