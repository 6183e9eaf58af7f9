"""Host SIGINT and SIGTERM during a run: stop the guest cleanly instead of dying in a hook.

Python raises KeyboardInterrupt wherever the main thread is when SIGINT arrives. During a
run that is mostly inside a unicorn hook called from C, where the exception cannot
propagate: Python prints "Exception ignored" and the guest runs on. While
``stop_on_signals`` is active, SIGINT and SIGTERM instead only ask the machine to stop
(``Machine.request_stop``): its run loop raises ``StoppedBySignal`` at the next instruction
boundary, so the caller can flush its logs, say where each process stood and exit with
``exit_status``. The previous handlers are restored afterwards.

A system call that waits on the host (a read of a terminal or an empty pipe) would not
notice: Python retries an interrupted call after the handler (PEP 475). Such a wait goes
inside ``blocking_call(machine)``; a stop request then raises InterruptedError out of it,
which the system-call dispatcher returns to the guest as EINTR, and the run stops there.
"""

from __future__ import annotations

import errno
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dprobes.runtime.machine import Machine

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def exit_status(signum: int) -> int:
    """The status a shell reports for a program ended by ``signum`` (130 for SIGINT)."""
    return 128 + signum


@contextmanager
def stop_on_signals(machine: Machine) -> Iterator[None]:
    """While inside, SIGINT and SIGTERM make ``machine.run`` raise StoppedBySignal.

    Signal handlers can only be set from the main thread; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, _frame: object) -> None:
        machine.request_stop(signum)
        if machine.blocking:
            raise _interrupted()

    previous = {signum: signal.signal(signum, stop) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


@contextmanager
def blocking_call(machine: Machine) -> Iterator[None]:
    """Around a host call that may wait: a stop request, made before or while it waits,
    raises InterruptedError (EINTR) instead of letting the wait go on."""
    if machine.stop_request is not None:
        raise _interrupted()
    machine.blocking = True
    try:
        yield
    finally:
        machine.blocking = False


def _interrupted() -> InterruptedError:
    return InterruptedError(errno.EINTR, os.strerror(errno.EINTR))
