"""The host services a natively run handler calls (its ``HostTable``), as native functions.

Each service is an exported function ``SYMBOL_PREFIX + name`` of the hook's module with
the type the JIT's host table gives it (``HOST_TYPES``); its context pointer is the
``Hook``. Memory and registers are defined with the TLB (``memory``) and the register
window (``registers``); the system values are here. A service a native hit never uses
(its handler would not have been offered to the hook) reports a host failure rather
than leave a null pointer in the table.
"""

from __future__ import annotations

from collections.abc import Sequence

from llvmlite import ir

from dprobes.runtime.native.layout import Hook, ProcessSlot
from dprobes.runtime.probe_context import TASK_BASE, TASK_SIZE
from dprobes.vm.jit.embed import HOST_CALLBACKS, HOST_TYPES
from dprobes.vm.jit.irgen import FunctionBuilder, ModuleBuilder, c32

SYMBOL_PREFIX = "dprobes_np_"
HOST_ERROR = -1


def symbol(name: str) -> str:
    """The exported name of host service ``name``."""
    return SYMBOL_PREFIX + name


def service(m: ModuleBuilder, name: str, arg_names: Sequence[str]) -> FunctionBuilder:
    """Define host service ``name`` (its type from the JIT's host table), parameters
    named ``arg_names``."""
    ftype = HOST_TYPES[name]
    return m.define(
        symbol(name),
        ftype.return_type,
        list(zip(arg_names, ftype.args, strict=True)),
        exported=True,
    )


def _current_pid(f: FunctionBuilder) -> ir.Value:
    hook = f.function.args[0]
    return f.get(f.get(hook, Hook, "proc"), ProcessSlot, "pid")


def define(m: ModuleBuilder) -> None:
    """pid, task and processor, then a failing stub for every service not defined yet."""
    f = service(m, "pid", ("hook", "out"))
    f.b.store(_current_pid(f), f.function.args[1])
    f.b.ret(c32(0))
    f = service(m, "task", ("hook", "out"))
    task = f.b.add(f.b.mul(_current_pid(f), c32(TASK_SIZE)), c32(TASK_BASE))
    f.b.store(task, f.function.args[1])
    f.b.ret(c32(0))
    f = service(m, "processor", ("hook", "out"))
    f.b.store(c32(0), f.function.args[1])
    f.b.ret(c32(0))
    for name, _ in HOST_CALLBACKS:
        if symbol(name) not in m.module.globals:
            f = service(m, name, [f"arg{i}" for i in range(len(HOST_TYPES[name].args))])
            f.b.ret(c32(HOST_ERROR))
