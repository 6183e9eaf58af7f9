"""The RPN machine model of DProbes 5.0: word size, stack, call frames, budgets, buffers
and the tokens of the records a handler writes.

Both tiers (the interpreter in ``vm.interp``/``vm.ops``/``vm.stacktrace`` and the JIT in
``vm.jit``) import these instead of writing the numbers again; docs/rpn.md describes the
model in words.
"""

from __future__ import annotations

from typing import Final

# --- words --------------------------------------------------------------------------
WORD_BITS: Final = 32
WORD_MASK: Final = 0xFFFFFFFF
SIGN_BIT: Final = 0x80000000
WORD_WIDTH: Final = -32
"""What ``push wid`` pushes: the word width, negative for a little-endian machine."""
INDEX_MASK: Final = 0xFFFF
"""Stack-form variable indices, ``setmaj``/``setmin`` ids and I/O ports are 16 bits."""
SHIFT_MASK: Final = 31
"""Shift and rotate counts are taken modulo the word width (the i386 rule)."""

# --- the circular RPN stack -----------------------------------------------------------
STACK_SIZE: Final = 1024
STACK_MASK: Final = STACK_SIZE - 1
"""TOS, SBP and every slot index are kept masked to 0..STACK_MASK."""

# --- calls and budgets ----------------------------------------------------------------
MAX_CALL_DEPTH: Final = 32
"""Nested ``call``s; the next one raises EX_CALL_STACK_OVERFLOW with this as parm1."""
JMPMAX_LIMIT: Final = 65535
"""The largest jump budget (``jmpmax``) a program may ask for."""
DISPATCH_LIMIT: Final = 1 << 18
"""Exception dispatches to a handler per hit before the handler is ended: with the jump
budget this bounds every handler's run (5.0 let a self-re-arming handler spin forever)."""

# --- the log and exception buffers ----------------------------------------------------
LOGMAX_LIMIT: Final = 1024
"""The largest log data capacity (``logmax``), after the record header."""
EX_LOGMAX_LIMIT: Final = 1024
"""The largest exception buffer (``ex_logmax``)."""
MIN_ST_SIZE: Final = 12
"""Bytes reserved at the front of the exception buffer for the trace record header."""
RECORD_PREFIX: Final = 3
"""Every log and trace record but ``log n``'s starts with a token u8 and a count u16."""

TOKEN_MEMORY: Final = 0  # log mrf: memory bytes
TOKEN_ASCII: Final = 1  # log str, and the trace header's program name
TOKEN_STACK_TRACE: Final = 2  # trace header: the number of traces
TOKEN_STACK_FRAME: Final = 3  # a trace: its frames
TOKEN_RPN_ENTRY: Final = 4  # a frame's traced stack slots
TOKEN_LV_ENTRY: Final = 5  # log lv, and a frame's traced local variables
TOKEN_GV_ENTRY: Final = 6  # log gv, and a frame's traced global variables
TOKEN_LOG: Final = 7  # log (stack words with a count)
TOKEN_MEMORY_FAULT: Final = 0xFF  # log str/mrf that faulted: the faulting address
MEMORY_FAULT_RECORD: Final = RECORD_PREFIX + 4
"""Bytes of a memory-fault record: the prefix and the address."""
