"""The interrupt entry: unicorn's ``UC_HOOK_INTR`` callback, composed of the other parts.

On an int3 at an address in the current process's probe table (``lookup``) the hook
reads, in one call, the registers the hit will read into the register window
(``registers``), notes the record's head and header fields (``record``), runs the
JIT-compiled handler (``handler``) unless the pass count skips it, then emulates or
steps the probed instruction (``step``). The debug trap that ends a step, and the
backstop int3 after a slot's copy, finish the step. Every other interrupt, and every hit
the hook declines, goes to the Python path (``python_interrupt``).

``build_module`` builds the whole hook as one llvmlite module; ``addresses`` compiles it
once per process (LLVM's -O2 pipeline, which inlines the small functions into the entry)
and returns the entry's and the host services' addresses.
"""

from __future__ import annotations

from llvmlite import ir

from dprobes.runtime.native import handler, lookup, memory, record, registers, services, step
from dprobes.runtime.native.layout import (
    STAGE_STEP,
    Hook,
    Pending,
    ProbeEntry,
    ProcessSlot,
    call_out,
)
from dprobes.runtime.native.registers import EFLAGS, EIP
from dprobes.runtime.records import Counters
from dprobes.runtime.ring import RecordHead
from dprobes.runtime.traps import BREAKPOINT, DEBUG
from dprobes.runtime.xol import TRAP_FLAG
from dprobes.vm.jit.embed import EXIT_EXIT_TO, HOST_CALLBACKS, add_library
from dprobes.vm.jit.irgen import (
    FALSE,
    I1,
    I32,
    PTR,
    TRUE,
    VOID,
    FunctionBuilder,
    ModuleBuilder,
    c32,
    c64,
)

ENTRY = "dprobes_np_interrupt"
SPEED_LEVEL = 2
"""LLVM's -O2 pipeline for the hook: it inlines the small functions into the entry."""


def _begin_hit(f: FunctionBuilder, hook: ir.Value, proc: ir.Value, entry: ir.Value) -> None:
    """Count the hit (for the hook's statistics and the record) and start the pending
    record: no handler run yet, TF clear, the probe's ident, the header fields."""
    f.set(hook, Hook, "hits", f.b.add(f.get(hook, Hook, "hits"), c64(1)))
    counters = f.get(entry, ProbeEntry, "counters")
    f.set(counters, Counters, "hits", f.b.add(f.get(counters, Counters, "hits"), c64(1)))
    pending = f.member(proc, ProcessSlot, "pending")
    f.set(pending, Pending, "entry", entry)
    f.set(pending, Pending, "ran", 0)
    f.set(pending, Pending, "trap_flag", 0)
    f.set(
        f.member(pending, Pending, "head"), RecordHead, "ident", f.get(entry, ProbeEntry, "ident")
    )
    f.call("note_header", hook, proc, entry)


def _define_breakpoint(m: ModuleBuilder) -> None:
    """An int3: a native probe hit, the backstop int3 after a slot, or false for Python."""
    f = m.define("breakpoint", I1, [("hook", PTR)])
    (hook,) = f.function.args
    decline = f.block("decline")
    look = f.block("look")
    proc = f.get(hook, Hook, "proc")
    f.b.cbranch(f.b.icmp_unsigned("==", proc, ir.Constant(PTR, None)), decline, look)
    f.at(decline)
    f.b.ret(FALSE)
    f.at(look)
    address = f.b.sub(f.call("reg", hook, EIP), c32(1))
    stepping = f.call("stepping", hook)
    backstop, find = f.block("backstop"), f.block("find")
    f.b.cbranch(f.b.icmp_unsigned("!=", stepping, ir.Constant(PTR, None)), backstop, find)
    f.at(backstop)
    end = f.b.add(f.get(stepping, ProbeEntry, "slot"), f.get(stepping, ProbeEntry, "length"))
    finish = f.block("finish")
    f.b.cbranch(f.b.icmp_unsigned("==", address, end), finish, decline)
    f.at(finish)
    f.b.ret(f.call("step_done", hook, address))
    f.at(find)
    entry = f.call("lookup", proc, address)
    flags, hit = f.block("flags"), f.block("hit")
    f.b.cbranch(f.b.icmp_unsigned("==", entry, ir.Constant(PTR, None)), decline, flags)
    f.at(flags)
    f.call("prefetch", hook, entry)
    traced = f.b.and_(f.call("reg", hook, EFLAGS), c32(TRAP_FLAG))
    f.b.cbranch(f.b.icmp_unsigned("!=", traced, c32(0)), decline, hit)
    f.at(hit)
    _begin_hit(f, hook, proc, entry)
    fire, stepped = f.block("fire"), f.block("step")
    runs = f.get(f.get(entry, ProbeEntry, "counters"), Counters, "count")
    f.b.cbranch(f.b.icmp_signed(">=", runs, c64(0)), fire, stepped)
    f.at(fire)
    fired, stopped = f.block("fired"), f.block("stopped")
    f.b.cbranch(f.call("fire", hook, proc, entry), fired, stopped)
    f.at(stopped)
    f.b.ret(TRUE)
    f.at(fired)
    pending = f.member(proc, ProcessSlot, "pending")
    f.set(pending, Pending, "ran", 1)
    exit_to, python = f.get(pending, Pending, "exit_kind"), f.block("python")
    f.b.cbranch(f.b.icmp_unsigned("==", exit_to, c32(EXIT_EXIT_TO)), python, stepped)
    f.at(python)
    f.call("handover", hook, STAGE_STEP, 0)
    f.b.ret(TRUE)
    f.at(stepped)
    f.b.ret(f.call("step", hook, proc, entry))


def _define_entry(m: ModuleBuilder) -> None:
    """UC_HOOK_INTR: what the native path can do it does; everything else goes to
    Python."""
    f = m.define(ENTRY, VOID, [("uc", PTR), ("vector", I32), ("hook", PTR)], exported=True)
    _, vector, hook = f.function.args
    registers.forget_registers(f, hook)
    bp, other, db, python, done = (
        f.block(label) for label in ("bp", "other", "db", "python", "done")
    )
    f.b.cbranch(f.b.icmp_unsigned("==", vector, c32(BREAKPOINT)), bp, other)
    f.at(bp)
    f.b.cbranch(f.call("breakpoint", hook), done, python)
    f.at(other)
    f.b.cbranch(f.b.icmp_unsigned("==", vector, c32(DEBUG)), db, python)
    f.at(db)
    f.b.cbranch(f.call("step_done", hook, f.call("reg", hook, EIP)), done, python)
    f.at(python)
    call_out(f, hook, "python_interrupt", vector)
    f.b.branch(done)
    f.at(done)
    f.b.ret_void()


def build_module() -> ir.Module:
    """The whole hook: its parts in the order they call each other, the entry last."""
    m = ModuleBuilder("dprobes_native_hook")
    registers.define(m)
    memory.define(m)
    services.define(m)
    lookup.define(m)
    record.define(m)
    handler.define(m)
    step.define(m)
    _define_breakpoint(m)
    _define_entry(m)
    return m.module


_addresses: dict[str, int] | None = None


def addresses() -> dict[str, int]:
    """Native addresses of the hook's entry and of every host service (compiled once)."""
    global _addresses
    if _addresses is None:
        names = [ENTRY, *(services.symbol(name) for name, _ in HOST_CALLBACKS)]
        _addresses = add_library(build_module(), names, speed_level=SPEED_LEVEL)
    return _addresses
