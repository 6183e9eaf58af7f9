"""Running a probe's JIT-compiled handler from the hook (``fire``).

Each program's JIT runner has its own ``State``, but the per-CPU RPN stack, the last
exception code and the globals are shared by all programs: one state holds them at a
time (``Hook.owner``), and a hit of another program's probe moves them into its own
state first. The handler is then called with the probe's settings, the hook's host
table (``runtime.native.services``) and the stack window, and its outcome (how it ended,
major/minor, where its log and exception log are) is kept in the process's pending hit.
"""

from __future__ import annotations

from llvmlite import ir

from dprobes.runtime.native.layout import Hook, Pending, ProbeEntry, ProcessSlot, call_out
from dprobes.runtime.native.record import set_head_field
from dprobes.vm.jit.embed import BODY_FUNCTION, EXIT_EXIT, EXIT_TERMINATED, State
from dprobes.vm.jit.irgen import I1, PTR, FunctionBuilder, ModuleBuilder, c32
from dprobes.vm.model import MIN_ST_SIZE

PROBE_SETTINGS = (
    ("ex_mask", "ex_mask"),
    ("major", "probe_major"),
    ("minor", "probe_minor"),
    ("probe_offset", "probe_offset"),
)
"""(ProbeEntry field, State field): what a handler is told of its probe."""


def _used(f: FunctionBuilder, start: ir.Value | int, length: ir.Value, cap: ir.Value) -> ir.Value:
    """Bytes of a buffer from ``start`` to min(``length``, ``cap``) (0 when that is not
    past ``start``)."""
    start = c32(start) if isinstance(start, int) else start
    end = f.b.select(f.b.icmp_unsigned("<", length, cap), length, cap)
    past = f.b.icmp_unsigned(">", end, start)
    return f.b.select(past, f.b.sub(end, start), c32(0))


def _take_shared(f: FunctionBuilder, hook: ir.Value, state: ir.Value) -> None:
    """Make ``state`` the owner of the per-CPU stack, the exception code and the globals,
    copying them from the current owner if there is another."""
    owner_field = f.member(hook, Hook, "owner")
    owner = f.b.load(owner_field, typ=PTR)
    null = ir.Constant(PTR, None)
    keep = f.b.or_(f.b.icmp_unsigned("==", owner, state), f.b.icmp_unsigned("==", owner, null))
    take, run = f.block("take"), f.block("run")
    f.b.cbranch(keep, run, take)
    f.at(take)
    f.memcpy(f.member(state, State, "stack"), f.member(owner, State, "stack"), State.stack.size)
    f.set(state, State, "ex_code", f.get(owner, State, "ex_code"))
    globals_bytes = f.b.shl(f.get(state, State, "num_gv"), c32(2))
    f.memcpy(f.get(state, State, "gv"), f.get(owner, State, "gv"), globals_bytes)
    f.b.branch(run)
    f.at(run)
    f.b.store(state, owner_field)


def _keep_outcome(f: FunctionBuilder, proc: ir.Value, state: ir.Value, kind: ir.Value) -> None:
    """The handler's outcome into the process's pending hit (the log bytes stay in the
    state until the hit leaves the interrupt: ``record.keep_log``)."""
    pending = f.member(proc, ProcessSlot, "pending")
    set_head_field(f, pending, "major", f.get(state, State, "major"))
    set_head_field(f, pending, "minor", f.get(state, State, "minor"))
    f.set(pending, Pending, "exit_kind", kind)
    f.set(pending, Pending, "exit_to", f.get(state, State, "exit_to"))
    header_length = f.get(state, State, "header_length")
    log_len = _used(
        f, header_length, f.get(state, State, "log_len"), f.get(state, State, "log_cap")
    )
    f.set(pending, Pending, "log_at", f.offset(f.member(state, State, "log"), header_length))
    set_head_field(f, pending, "log_len", log_len)
    ex_len = _used(f, MIN_ST_SIZE, f.get(state, State, "ex_len"), f.get(state, State, "ex_logmax"))
    f.set(pending, Pending, "ex_log_at", f.offset(f.member(state, State, "ex_log"), MIN_ST_SIZE))
    set_head_field(f, pending, "ex_len", ex_len)


def define(m: ModuleBuilder) -> None:
    """``fire(hook, proc, entry)``: run the entry's handler and keep its outcome; false
    if it ended in a host error (emulation is being stopped, ``Hook.error`` says why)."""
    f = m.define("fire", I1, [("hook", PTR), ("proc", PTR), ("entry", PTR)])
    hook, proc, entry = f.function.args
    state = f.get(entry, ProbeEntry, "state")
    _take_shared(f, hook, state)
    for entry_field, state_field in PROBE_SETTINGS:
        f.set(state, State, state_field, f.get(entry, ProbeEntry, entry_field))
    f.set(state, State, "host", f.member(hook, Hook, "host"))
    f.call("stack_window", hook, entry)
    f.call_pointer(
        f.get(entry, ProbeEntry, "handler"),
        BODY_FUNCTION,
        state,
        f.get(entry, ProbeEntry, "code_base"),
    )
    f.set(hook, Hook, "native_ran", 1)
    kind = f.get(state, State, "exit_kind")
    valid = f.b.and_(
        f.b.icmp_unsigned(">=", kind, c32(EXIT_EXIT)),
        f.b.icmp_unsigned("<=", kind, c32(EXIT_TERMINATED)),
    )
    keep, broken = f.block("keep"), f.block("broken")
    f.b.cbranch(valid, keep, broken)
    f.at(broken)
    f.set(hook, Hook, "error", kind)
    call_out(f, hook, "emu_stop", f.get(hook, Hook, "uc"))
    f.b.ret(ir.Constant(I1, 0))
    f.at(keep)
    _keep_outcome(f, proc, state, kind)
    f.b.ret(ir.Constant(I1, 1))
