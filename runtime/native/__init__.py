"""The native interrupt hook: probe hits handled without entering Python.

The hook is native code built with llvmlite's IR builder and compiled once per process
into the JIT's engine (``vm.jit.embed``); ``runtime.native_probes`` fills its data and
installs it as unicorn's ``UC_HOOK_INTR`` callback in place of the Python one. One module
per concern, in the order a hit meets them:

* ``layout``     the ctypes structures and constants: the only description of its data
* ``lookup``     the probe entry for an int3's address in the process's probe table
* ``registers``  the register window: cached reads, the batch prefetch, writes
* ``memory``     the software TLB over the runtime's page tables, the stack window
* ``services``   the host table a natively run handler calls
* ``record``     the record's head and header fields, the log bytes, the ring
* ``handler``    running the JIT-compiled handler, sharing the per-CPU VM state
* ``step``       emulated ``push r32``, the out-of-line step and its repair
* ``hook``       the interrupt entry composing them; ``build_module``, ``addresses``

A ring record is small, since the ring's bytes are what the journal keeps: a head, only
the machine state the program's log header selects, the log and the exception log.
Every rare turn of a native hit (``exit_to``, ``rem``, the last hit before
``max_hits``, a push onto a page that is not there, a fault in the stepped instruction)
is handed to the Python path, which takes over the hit where the native code left it,
so both paths have one outcome.
"""
