"""Host SIGINT and SIGTERM during a run: stop the guest cleanly instead of dying in a hook.

Python raises KeyboardInterrupt wherever the main thread is when SIGINT arrives. During a
run that is mostly inside a unicorn hook called from C, where the exception cannot
propagate: Python prints "Exception ignored" and the guest runs on. While
``stop_on_signals`` is active, SIGINT and SIGTERM instead only ask the machine to stop
(``Machine.request_stop``): its run loop raises ``StoppedBySignal`` at the next instruction
boundary, so the caller can flush its logs, say where each process stood and exit with
``exit_status``. The previous handlers are restored afterwards.
"""

from __future__ import annotations

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
    previous = {
        signum: signal.signal(signum, lambda number, _frame: machine.request_stop(number))
        for signum in STOP_SIGNALS
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
