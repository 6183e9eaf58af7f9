"""The JIT tier: each probe handler lowered to one native function with llvmlite.

Modules, in the order data flows:

* ``state``            the ctypes State struct shared with native code, the host and
                       helper callback tables, status and exit codes (the ABI)
* ``irgen``            IR vocabulary: state fields, the circular stack, frames, calls
                       through the callback tables
* ``rtlib``            the native runtime library (exception dispatch, ret, logging,
                       dup, wide registers), compiled once per process
* ``rt_stacktrace``    stack traces (``vm.stacktrace``) in native code, part of rtlib
* ``function``         one handler = one function: blocks, resume switch, statuses
* ``lower``            one ``lower_<name>`` per instruction-table row (``LOWERINGS``)
* ``compile``          the llvmlite engine, optimisation, position-independent bodies
* ``cache``            the persistent object-code cache (``DPROBES_CACHE_DIR``)
* ``host``             trampolines that serve a Python ``Context`` to native code
* ``native_context``   native callbacks that serve a ``MemoryContext`` without Python
* ``runtime_helpers``  the heap, reusing the interpreter's code
* ``runner``           firing a compiled handler: mirrors of the persistent state
* ``embed``            the public surface for native code embedding the JIT (the
                       runtime's native hook): engine, state ABI, host table

Use it through ``VM(program, tier="jit" | "auto")``. Importing this package works without
llvmlite; compiling raises ``JitUnavailable``.
"""

from dprobes.vm.jit.compile import (
    CompiledHandler,
    JitError,
    JitUnavailable,
    compile_handlers,
    handler_ir,
    require_llvmlite,
    set_object_cache,
)
from dprobes.vm.jit.runner import JitHostError, JitRunner, NativeHit, ProgramTooLarge

__all__ = [
    "CompiledHandler",
    "JitError",
    "JitHostError",
    "JitRunner",
    "JitUnavailable",
    "NativeHit",
    "ProgramTooLarge",
    "compile_handlers",
    "handler_ir",
    "require_llvmlite",
    "set_object_cache",
]
