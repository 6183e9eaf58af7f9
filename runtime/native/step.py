"""The probed instruction after a native hit's handler: emulated, or stepped out of line.

The step plan (``xol.plan_step``) decided how: an emulated ``push r32`` stores the
register below ESP at once; every other kind the hook serves (``STEPPED``) runs from the
probe's out-of-line slot with TF set, and on the trap that ends the step (``step_done``)
EIP and a call's return address are repaired as ``xol.finish_step`` repairs them (the
kinds in ``xol.RELOCATED`` and ``xol.RETURN_ADDRESS``). Then ``post_step`` counts the
hit and appends its record. Whatever the hook cannot do here (a push onto a page that
is not there, ``exit_to``, ``rem``, the last hit before ``max_hits``) it hands to the
Python path (``handover``), which finishes the hit where the hook left it.
"""

from __future__ import annotations

from collections.abc import Iterable

from llvmlite import ir

from dprobes.runtime.native.layout import (
    STAGE_FINISH,
    STAGE_POST,
    STAGE_STEP,
    Hook,
    Pending,
    ProbeEntry,
    ProcessSlot,
    call_out,
)
from dprobes.runtime.native.memory import WORD
from dprobes.runtime.native.registers import EFLAGS, EIP, ESP
from dprobes.runtime.records import Counters
from dprobes.runtime.xol import RELOCATED, RETURN_ADDRESS, TRAP_FLAG, StepKind
from dprobes.vm.jit.embed import EXIT_ABORT, EXIT_REM
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

STEPPED = frozenset(StepKind) - {StepKind.PUSHF}
"""The step kinds the hook serves: all but pushf, whose pushed flags it does not repair."""


def _kind_in(f: FunctionBuilder, kind: ir.Value, kinds: Iterable[StepKind]) -> ir.Value:
    """Whether the entry's ``kind`` is one of ``kinds`` (of those the hook serves): a
    bit test of a mask of their values."""
    mask = sum(1 << each.value for each in set(kinds) & STEPPED)
    assert mask < 1 << 32
    return f.b.trunc(f.b.lshr(c32(mask), kind), I1)


def _pending(f: FunctionBuilder, proc: ir.Value) -> ir.Value:
    return f.member(proc, ProcessSlot, "pending")


def _define_handover(m: ModuleBuilder) -> None:
    """Python takes the hit over at ``stage`` (the log bytes kept first)."""
    f = m.define("handover", VOID, [("hook", PTR), ("stage", I32), ("eip", I32)])
    hook, stage, eip = f.function.args
    f.call("keep_log", hook)
    call_out(f, hook, "python_handover", stage, eip)
    f.b.ret_void()


def _define_stepping(m: ModuleBuilder) -> None:
    """The current process's ProbeEntry whose out-of-line step is under way, or null."""
    f = m.define("stepping", PTR, [("hook", PTR)])
    (hook,) = f.function.args
    proc = f.get(hook, Hook, "proc")
    check, found, none = f.block("check"), f.block("found"), f.block("none")
    f.b.cbranch(f.b.icmp_unsigned("==", proc, ir.Constant(PTR, None)), none, check)
    f.at(check)
    pending = _pending(f, proc)
    f.b.cbranch(f.b.icmp_unsigned("==", f.get(pending, Pending, "active"), c32(0)), none, found)
    f.at(found)
    f.b.ret(f.get(pending, Pending, "entry"))
    f.at(none)
    f.b.ret(ir.Constant(PTR, None))


def _define_post_step(m: ModuleBuilder) -> None:
    """The step is done: count the hit and log, unless Python must see this one (the
    last hit before ``max_hits``, or ``rem``)."""
    f = m.define("post_step", VOID, [("hook", PTR), ("proc", PTR), ("entry", PTR)])
    hook, proc, entry = f.function.args
    pending = _pending(f, proc)
    counters = f.get(entry, ProbeEntry, "counters")
    count = f.b.add(f.get(counters, Counters, "count"), c64(1))
    last = f.b.icmp_signed(">=", count, f.get(counters, Counters, "max_hits"))
    ran = f.b.icmp_unsigned("!=", f.get(pending, Pending, "ran"), c32(0))
    kind = f.get(pending, Pending, "exit_kind")
    rem = f.b.and_(ran, f.b.icmp_unsigned("==", kind, c32(EXIT_REM)))
    python, count_it = f.block("python"), f.block("count")
    f.b.cbranch(f.b.or_(last, rem), python, count_it)
    f.at(python)
    f.call("handover", hook, STAGE_POST, 0)
    f.b.ret_void()
    f.at(count_it)
    f.set(counters, Counters, "count", count)
    f.set(pending, Pending, "entry", None)
    log, done = f.block("log"), f.block("done")
    f.b.cbranch(f.b.and_(ran, f.b.icmp_unsigned("!=", kind, c32(EXIT_ABORT))), log, done)
    f.at(log)
    f.call("commit", hook, proc, entry)
    f.b.branch(done)
    f.at(done)
    f.b.ret_void()


def _define_step_done(m: ModuleBuilder) -> None:
    """The step ended with EIP ``eip``: repair EIP (and a call's return address), restore
    TF as the program had it; false if no step was under way."""
    f = m.define("step_done", I1, [("hook", PTR), ("eip", I32)])
    hook, eip = f.function.args
    entry = f.call("stepping", hook)
    repair, decline = f.block("repair"), f.block("decline")
    f.b.cbranch(f.b.icmp_unsigned("==", entry, ir.Constant(PTR, None)), decline, repair)
    f.at(decline)
    f.b.ret(FALSE)
    f.at(repair)
    proc = f.get(hook, Hook, "proc")
    kind, address = f.get(entry, ProbeEntry, "kind"), f.get(entry, ProbeEntry, "address")
    relocated = f.b.add(address, f.b.sub(eip, f.get(entry, ProbeEntry, "slot")))
    new_eip = f.b.select(_kind_in(f, kind, RELOCATED), relocated, eip)
    fix_return, flags, python = f.block("fix_return"), f.block("flags"), f.block("python")
    f.b.cbranch(_kind_in(f, kind, RETURN_ADDRESS), fix_return, flags)
    f.at(fix_return)
    returns = f.b.add(address, f.get(entry, ProbeEntry, "length"))
    stored = f.call("store_word", hook, f.call("reg", hook, ESP), returns)
    f.b.cbranch(stored, flags, python)
    f.at(python)
    f.call("handover", hook, STAGE_FINISH, eip)
    f.b.ret(TRUE)
    f.at(flags)
    pending = _pending(f, proc)
    eflags = f.b.and_(f.call("reg", hook, EFLAGS), c32(~TRAP_FLAG))
    f.call("set_reg", hook, EFLAGS, f.b.or_(eflags, f.get(pending, Pending, "trap_flag")))
    f.call("set_reg", hook, EIP, new_eip)
    f.set(pending, Pending, "active", 0)
    f.call("post_step", hook, proc, entry)
    f.b.ret(TRUE)


def _define_step(m: ModuleBuilder) -> None:
    """After the handler (or the pass count's skip): emulate the push, or start the
    out-of-line step."""
    f = m.define("step", I1, [("hook", PTR), ("proc", PTR), ("entry", PTR)])
    hook, proc, entry = f.function.args
    push, to_slot = f.block("push"), f.block("to_slot")
    is_push = f.b.icmp_unsigned(
        "==", f.get(entry, ProbeEntry, "kind"), c32(StepKind.PUSH_R32.value)
    )
    f.b.cbranch(is_push, push, to_slot)
    f.at(push)
    below = f.b.sub(f.call("reg", hook, ESP), c32(WORD))
    value = f.call("reg", hook, f.get(entry, ProbeEntry, "push_reg"))
    pushed, python = f.block("pushed"), f.block("python")
    f.b.cbranch(f.call("store_word", hook, below, value), pushed, python)
    f.at(pushed)
    f.call("set_reg", hook, ESP, below)
    f.call("post_step", hook, proc, entry)
    f.b.ret(TRUE)
    f.at(python)
    f.call("handover", hook, STAGE_STEP, 0)
    f.b.ret(TRUE)
    f.at(to_slot)
    f.call("keep_log", hook)
    f.set(_pending(f, proc), Pending, "active", 1)
    f.call("set_reg", hook, EFLAGS, f.b.or_(f.call("reg", hook, EFLAGS), c32(TRAP_FLAG)))
    f.call("set_reg", hook, EIP, f.get(entry, ProbeEntry, "slot"))
    f.b.ret(TRUE)


def define(m: ModuleBuilder) -> None:
    """handover, stepping, post_step, step_done and step."""
    _define_handover(m)
    _define_stepping(m)
    _define_post_step(m)
    _define_step_done(m)
    _define_step(m)
