"""The JIT as native code outside ``vm.jit`` embeds it: the public surface the runtime's
native hook builds on, so that it never reaches into the JIT's internals.

* the engine: ``add_library`` compiles a module of native functions into the process's
  engine and returns their addresses; ``compile_handlers`` compiles probe handlers;
* the state ABI: a handler's body is ``void body(State *, u32 code_base)``
  (``BODY_FUNCTION``; ``code_base`` is where the probe's handler starts in its program,
  so identical handlers share one body);
  ``State`` (what it reads and writes), ``HostTable`` (the services a host gives it,
  ``HOST_CALLBACKS`` and their IR types ``HOST_TYPES``), ``RegisterWindow``, the
  buffer sizes and how a handler ended (``EXIT_*``, and ``EXIT_KINDS`` from those codes
  to the interpreter's ``ExitKind``);
* ``JitRunner``, whose state a native caller hands to a handler.

Field offsets are read from the ctypes layouts (``irgen.FunctionBuilder`` addresses
them so), which stay the only description of the ABI.
"""

from __future__ import annotations

from dprobes.vm.jit.compile import BODY_FUNCTION, Engine, compile_handlers
from dprobes.vm.jit.irgen import HOST_TYPES
from dprobes.vm.jit.runner import EXIT_KINDS, JitRunner
from dprobes.vm.jit.state import (
    ABI_VERSION,
    EX_LOG_BUFFER,
    EXIT_ABORT,
    EXIT_EXIT,
    EXIT_EXIT_TO,
    EXIT_REM,
    EXIT_TERMINATED,
    HOST_CALLBACKS,
    LOG_BUFFER,
    WINDOW_REGISTERS,
    HostTable,
    RegisterWindow,
    State,
)

__all__ = [
    "ABI_VERSION",
    "BODY_FUNCTION",
    "EXIT_ABORT",
    "EXIT_EXIT",
    "EXIT_EXIT_TO",
    "EXIT_KINDS",
    "EXIT_REM",
    "EXIT_TERMINATED",
    "EX_LOG_BUFFER",
    "HOST_CALLBACKS",
    "HOST_TYPES",
    "LOG_BUFFER",
    "WINDOW_REGISTERS",
    "HostTable",
    "JitRunner",
    "RegisterWindow",
    "State",
    "add_library",
    "compile_handlers",
]


def add_library(
    module: object, names: list[str], *, speed_level: int | None = None
) -> dict[str, int]:
    """Compile ``module`` (an ``llvmlite.ir.Module``) into the process's engine; the native
    addresses of the functions ``names``. ``speed_level``: LLVM's standard -O<n> pipeline
    (which inlines small internal functions) instead of the engine's default passes."""
    return Engine.get().add_library(module, names, speed_level=speed_level)
