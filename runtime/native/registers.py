"""The hook's register window: CPU registers read once per interrupt, then cached.

Registers are named by their dprobes index (0..15, cs ... ebp). ``reg`` reads one
through the window in ``Hook.registers`` (the handler's host table publishes the same
window, so a handler's ``push r`` reads it inline), ``prefetch`` fills the window with
the registers a probe's hit will read in one ``uc_reg_read_batch`` call, and ``set_reg``
writes the CPU and drops the register from the window. The handler's register services
(``read_register``, ``write_register``) go through the same functions.
"""

from __future__ import annotations

from llvmlite import ir

from dprobes.runtime.native.layout import GENERAL_REGISTERS, Hook, ProbeEntry, call_out
from dprobes.runtime.native.services import service
from dprobes.vm.jit.embed import RegisterWindow
from dprobes.vm.jit.irgen import I32, PTR, VOID, FunctionBuilder, ModuleBuilder, c32
from dprobes.vm.registers import REGISTERS_BY_NAME

EIP, EFLAGS, ESP, CS, SS = (
    REGISTERS_BY_NAME[name].index for name in ("eip", "eflags", "esp", "cs", "ss")
)


def forget_registers(f: FunctionBuilder, hook: ir.Value) -> None:
    """Empty the window: a new interrupt, the CPU may have run since the last."""
    f.set(f.member(hook, Hook, "registers"), RegisterWindow, "valid", 0)


def _bit(f: FunctionBuilder, index: ir.Value) -> ir.Value:
    return f.b.shl(c32(1), index)


def _value_slot(f: FunctionBuilder, window: ir.Value, index: ir.Value) -> ir.Value:
    return f.element(f.member(window, RegisterWindow, "values"), index)


def _uc_call(
    f: FunctionBuilder, hook: ir.Value, name: str, index: ir.Value, value: ir.Value
) -> None:
    """``uc_reg_read``/``uc_reg_write`` of register ``index`` through ``value``."""
    unicorn_id = f.b.load(f.element(f.member(hook, Hook, "reg_ids"), index), typ=I32)
    call_out(f, hook, name, f.get(hook, Hook, "uc"), unicorn_id, value)


def _define_read_reg(m: ModuleBuilder) -> None:
    """Register ``index`` from the CPU, kept in the window (the rare path of ``reg``)."""
    f = m.define("read_reg", I32, [("hook", PTR), ("index", I32)], inline="noinline")
    hook, index = f.function.args
    value = f.alloca_entry(I32, "value")
    f.b.store(c32(0), value)
    _uc_call(f, hook, "reg_read", index, value)
    read = f.b.load(value, typ=I32)
    window = f.member(hook, Hook, "registers")
    f.b.store(read, _value_slot(f, window, index))
    valid = f.member(window, RegisterWindow, "valid")
    f.b.store(f.b.or_(f.b.load(valid, typ=I32), _bit(f, index)), valid)
    f.b.ret(read)


def _define_reg(m: ModuleBuilder) -> None:
    """Register ``index``: from the window if it holds it, else from the CPU. Inline:
    most reads find it there."""
    f = m.define("reg", I32, [("hook", PTR), ("index", I32)], inline="alwaysinline")
    hook, index = f.function.args
    window = f.member(hook, Hook, "registers")
    has = f.b.and_(f.get(window, RegisterWindow, "valid"), _bit(f, index))
    cached, read = f.block("cached"), f.block("read")
    f.b.cbranch(f.b.icmp_unsigned("!=", has, c32(0)), cached, read)
    f.at(cached)
    f.b.ret(f.b.load(_value_slot(f, window, index), typ=I32))
    f.at(read)
    f.b.ret(f.call("read_reg", hook, index))


def _define_prefetch(m: ModuleBuilder) -> None:
    """The registers the entry's hit reads, from the CPU into the window in one call."""
    f = m.define("prefetch", VOID, [("hook", PTR), ("entry", PTR)])
    hook, entry = f.function.args
    call_out(
        f,
        hook,
        "reg_read_batch",
        f.get(hook, Hook, "uc"),
        f.member(entry, ProbeEntry, "prefetch_ids"),
        f.member(entry, ProbeEntry, "prefetch_values"),
        f.get(entry, ProbeEntry, "prefetch_count"),
    )
    valid = f.member(f.member(hook, Hook, "registers"), RegisterWindow, "valid")
    f.b.store(f.b.or_(f.b.load(valid, typ=I32), f.get(entry, ProbeEntry, "prefetch")), valid)
    f.b.ret_void()


def _define_set_reg(m: ModuleBuilder) -> None:
    """Write register ``index`` of the CPU; the window no longer holds it."""
    f = m.define("set_reg", VOID, [("hook", PTR), ("index", I32), ("value", I32)])
    hook, index, new = f.function.args
    value = f.alloca_entry(I32, "value")
    f.b.store(new, value)
    _uc_call(f, hook, "reg_write", index, value)
    valid = f.member(f.member(hook, Hook, "registers"), RegisterWindow, "valid")
    kept = f.b.and_(f.b.load(valid, typ=I32), f.b.xor(_bit(f, index), c32(-1)))
    f.b.store(kept, valid)
    f.b.ret_void()


def _general(f: FunctionBuilder, index: ir.Value) -> tuple[ir.Block, ir.Block]:
    """Branch on ``index`` being a register the hook serves: (its block, the end)."""
    served, done = f.block("served"), f.block("done")
    f.b.cbranch(f.b.icmp_unsigned("<", index, c32(GENERAL_REGISTERS)), served, done)
    return served, done


def _define_services(m: ModuleBuilder) -> None:
    """The handler's register services: registers 0..15 live from the CPU (the user set
    is the same for a user probe); others read as zero and ignore writes."""
    f = service(m, "read_register", ("hook", "index", "user", "out"))
    hook, index, _, out = f.function.args
    for word in range(4):
        f.b.store(c32(0), f.element(out, c32(word)))
    served, done = _general(f, index)
    f.at(served)
    f.b.store(f.call("reg", hook, index), out)
    f.b.branch(done)
    f.at(done)
    f.b.ret(c32(0))

    f = service(m, "write_register", ("hook", "index", "user", "value"))
    hook, index, _, value = f.function.args
    served, done = _general(f, index)
    f.at(served)
    f.call("set_reg", hook, index, value)
    f.b.branch(done)
    f.at(done)
    f.b.ret(c32(0))


def define(m: ModuleBuilder) -> None:
    """The register window's functions and the handler's register services."""
    _define_read_reg(m)
    _define_reg(m)
    _define_prefetch(m)
    _define_set_reg(m)
    _define_services(m)
