"""RPN exception codes and the limits that go with them (DProbes 5.0 ``dprobes.h``)."""

from enum import IntEnum
from typing import Final


class ExceptionCode(IntEnum):
    """Exception codes a handler can see with ``push x``; parm1/parm2 meaning in comments."""

    INVALID_ADDR = 0x0001  # faulting flat address / 0
    SEG_FAULT = 0x0002  # selector / 0
    MAX_JMPS = 0x0004  # jmpmax / 0
    CALL_STACK_OVERFLOW = 0x0010  # 32 (overflow) or 0 (ret at top level) / 0
    DIV_BY_ZERO = 0x0020  # 0 / 0
    INVALID_OPERAND = 0x0040  # OperandError kind / bad value
    INVALID_OPCODE = 0x0080  # opcode byte / its code offset
    HEAP_NOMEM = 0x0100  # size / 0
    HEAP_INVALID_HANDLE = 0x0200  # handle / offset
    HEAP_INVALID_OFFSET = 0x0400  # handle / offset
    LOG_OVERFLOW = 0x1000  # logmax / 0
    RPN_STACK_WRAP = 0x2000  # defined by 5.0, never raised
    USER = 0x8000  # marker for user codes raised with ``rx``


class OperandError(IntEnum):
    """parm1 of EX_INVALID_OPERAND: which operand was bad."""

    LOCAL_INDEX = 1
    GLOBAL_INDEX = 2
    BIT_INDEX = 3
    EXIT_FACILITY = 4


DEFAULT_EX_MASK: Final = 0x0FFF
"""Exceptions a probe catches when its ``ex_mask`` is not given."""

NON_MASKABLE: Final = 0x0FFF
"""A code in this set that the mask leaves out ends the handler; any other is ignored."""

NO_HANDLER: Final = 0xFFFFFFFF
"""Sentinel for "no exception handler" in a call frame and in stack-trace records."""
