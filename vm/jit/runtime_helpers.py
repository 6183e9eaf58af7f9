"""Rare, complex operations served by Python: the probe heap.

The helper reuses the interpreter's own code (the heap semantic functions of ``vm.ops``
over ``vm.heap.ProbeHeap``) on a ``StateView``: the attribute surface of
``interp.Machine`` over a native ``State``. Using the same code is what makes the results
identical. A helper never raises: an exception is kept in the session and reported as a
negative status, so the handler stops and the runner re-raises it.
"""

from __future__ import annotations

import ctypes
from typing import Any

from dprobes.vm.heap import ProbeHeap
from dprobes.vm.interp import STACK_SIZE
from dprobes.vm.isa import OPS_BY_CODE, Operand
from dprobes.vm.jit import state as S
from dprobes.vm.jit.host import SESSIONS, Session
from dprobes.vm.model import STACK_MASK, WORD_MASK

_REQUEST = -2  # what StateView.raise_exception returns to the reused semantic function


def words(array: Any, count: int) -> memoryview:
    """A writable ``I`` memoryview of the first ``count`` words of a ctypes array/pointer."""
    if count == 0:
        return memoryview(b"").cast("I")
    buffer = (ctypes.c_uint32 * count).from_address(
        ctypes.addressof(array.contents)
        if isinstance(array, ctypes._Pointer)
        else ctypes.addressof(array)
    )
    return memoryview(buffer).cast("B").cast("I")


class StateView:
    """``interp.Machine``'s attributes over a native State (for reused interpreter code).

    Also what a Python ``Context.callk`` receives on the JIT tier in place of the
    interpreter's Machine: the same stack, pointers, variables and ids.
    """

    def __init__(self, session: Session) -> None:
        self._session = session
        self._state = session.state
        self.stack = words(session.state.stack, STACK_SIZE)

    # --- identity -----------------------------------------------------------------
    @property
    def program(self):
        return self._session.program

    @property
    def probe(self):
        return self._session.program.probes[self._session.probe]

    @property
    def ctx(self):
        return self._session.context

    # --- the stack ------------------------------------------------------------------
    @property
    def tos(self) -> int:
        return self._state.tos

    @tos.setter
    def tos(self, value: int) -> None:
        self._state.tos = value & STACK_MASK

    @property
    def sbp(self) -> int:
        return self._state.sbp

    @sbp.setter
    def sbp(self, value: int) -> None:
        self._state.sbp = value & STACK_MASK

    def push(self, value: int) -> None:
        tos = (self._state.tos - 1) & STACK_MASK
        self.stack[tos] = value & WORD_MASK
        self._state.stack_dirty |= 1 << (tos >> 5)
        self._state.tos = tos

    def pop(self) -> int:
        tos = self._state.tos
        self._state.tos = (tos + 1) & STACK_MASK
        return self.stack[tos]

    def peek(self, depth: int = 0) -> int:
        return self.stack[(self._state.tos + depth) & STACK_MASK]

    # --- variables --------------------------------------------------------------------
    @property
    def lv(self) -> memoryview:
        return words(self._state.lv, self._state.num_lv)

    @property
    def gv(self) -> memoryview:
        return words(self._state.gv, self._state.num_gv)

    # --- the heap ---------------------------------------------------------------------
    @property
    def heap(self) -> ProbeHeap:
        if self._session.heap is None:
            self._session.heap = ProbeHeap(self.probe.heap_size)
        return self._session.heap

    def raise_exception(self, code: int, parm1: int, parm2: int, nxt: int) -> int:
        """Reused semantic functions raise through here: native code does the raising."""
        state = self._state
        state.req_code, state.req_parm1, state.req_parm2 = (
            int(code) & WORD_MASK,
            parm1 & WORD_MASK,
            parm2 & WORD_MASK,
        )
        return _REQUEST


def _plain_field(name: str) -> property:
    def get(view: StateView) -> int:
        return getattr(view._state, name)

    def put(view: StateView, value: int) -> None:
        setattr(view._state, name, value & WORD_MASK)

    return property(get, put)


for _name in ("major", "minor"):
    setattr(StateView, _name, _plain_field(_name))


def view_of(session: Session) -> StateView:
    if session.view is None:
        session.view = StateView(session)
    return session.view


# --- the helpers -------------------------------------------------------------------------
def _heap(state_address: int, opcode: int, operand: int) -> int:
    from dprobes.vm.ops import SEMANTICS

    session = SESSIONS[S.State.from_address(state_address).session]
    try:
        op = OPS_BY_CODE[opcode]
        argument = None if op.operand is Operand.NONE else operand  # as the decoder gives it
        result = SEMANTICS[op.name](view_of(session), argument, 0)
    except BaseException as error:
        if session.error is None:
            session.error = error
        return -1
    return S.HELPER_RAISE if result == _REQUEST else S.HELPER_OK


_PYTHON_HELPERS = {"heap": _heap}
HELPER_FUNCTIONS = {
    name: prototype(_PYTHON_HELPERS[name]) for name, prototype in S.HELPER_CALLBACKS
}
HELPERS = S.HelperTable(
    **{name: ctypes.cast(fn, ctypes.c_void_p).value for name, fn in HELPER_FUNCTIONS.items()}
)
"""The process-wide helper table every state points at."""
