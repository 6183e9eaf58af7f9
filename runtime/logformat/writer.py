"""Writing a run's log records to their targets, in order, with few large writes.

``LogWriter`` is the probe manager's ``writer``: records of the Python path arrive one at
a time and go through the Python formatter; chunks of the native ring go through the
native formatter, which writes a whole chunk's output into one buffer. The manager
drains the ring before every Python-path record and before every system call, so the
order of records (and their interleaving with the program's output) is the order of
the hits on every tier.

Writing to a log file of its own, the formatting and the writes run in a thread of
their own, beside the emulation (the generated code and the writes leave the GIL
free): records reach the file in the same order, a run's wall time barely sees them.
A stream the program also writes to (stderr) is written at once, in the program's
order. ``TraceWriter`` writes the LTT target's CTF trace (``ctf``).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO
from uuid import UUID

from dprobes.runtime.journal import Emitted, PackedChunk
from dprobes.runtime.logformat.ctf import RECORDS, TraceFile
from dprobes.runtime.logformat.layouts import Layout
from dprobes.runtime.logformat.python import format_hit
from dprobes.vm.program import LogField

if TYPE_CHECKING:
    from dprobes.runtime.logformat.native import NativeFormatter
    from dprobes.runtime.native_probes import NativeProbes, Served


@dataclass(frozen=True)
class ProbeLog:
    """What a probe's records show that the ring does not carry, and how to write them."""

    pid: int
    eip: int
    fields: LogField
    layout: Layout
    name: str


def probe_log(served: Served, names: dict[int, str], layout: Layout = ()) -> ProbeLog:
    """What the records of a natively served probe show that the ring does not carry:
    the pid, the eip (the probe's address, as 5.0 logged it), the process name."""
    return ProbeLog(
        pid=served.pid,
        eip=served.plan.address & 0xFFFFFFFF,
        fields=served.loaded.log_fields,
        layout=layout,
        name=names.get(served.pid, ""),
    )


class ProbeTable:
    """The native formatter for ``layouts`` (none: it only counts), told about every
    probe the native hook has given an ident (``layout_of``: a module's layout)."""

    def __init__(
        self, layout_of: Callable[[str], Layout], layouts: tuple[Layout, ...] = ()
    ) -> None:
        from dprobes.runtime.logformat.native import NativeFormatter

        self.formatter = NativeFormatter(layouts)
        self.layout_of = layout_of

    def update(self, native: NativeProbes) -> NativeFormatter:
        """The formatter, with an entry for each of the hook's idents."""
        formatter = self.formatter
        for ident in range(len(formatter), len(native.idents)):
            served = native.idents[ident]
            formatter.set_probe(
                ident, probe_log(served, native.names, self.layout_of(served.loaded.name))
            )
        return formatter

    def count(self, chunk: PackedChunk, native: NativeProbes) -> int:
        """The number of records in the chunk (none is decoded)."""
        return self.update(native).count(chunk.address, len(chunk.view))


BACKLOG = 16
"""Jobs (ring chunks of up to 4 MiB, or Python records) the writing thread may be behind
before the machine waits for it: the memory a slow log file may cost is bounded."""


class LogWriter:
    """Writes every record to ``open_stream()`` (opened at the first record) in the
    layout of its program (``layouts``: module name -> layout). ``shared``: the stream
    is shared with the program's output, so every record is written and flushed at once;
    otherwise a thread formats and writes while the machine runs on."""

    def __init__(
        self,
        layouts: dict[str, Layout],
        open_stream: Callable[[], BinaryIO],
        *,
        shared: bool = False,
    ) -> None:
        self.layouts = layouts
        self._open = open_stream
        self._stream: BinaryIO | None = None
        self._shared = shared
        self._probes: ProbeTable | None = None
        self._queue: queue.Queue | None = None
        self._error: BaseException | None = None

    def _stream_now(self) -> BinaryIO:
        if self._stream is None:
            self._stream = self._open()
        return self._stream

    def _write(self, data: bytes | memoryview) -> None:
        if data:
            stream = self._stream_now()
            stream.write(data)
            if self._shared:
                stream.flush()

    def _later(self, job: bytes | tuple[NativeFormatter, PackedChunk]) -> None:
        """Hand a job to the writing thread (started with the first)."""
        self._raise_error()
        if self._queue is None:
            self._stream_now()  # an unwritable file is reported here, in order
            self._queue = queue.Queue(BACKLOG)
            threading.Thread(target=self._work, name="dprobes-log", daemon=True).start()
        self._queue.put(job)

    def _work(self) -> None:
        assert self._queue is not None
        while True:
            job = self._queue.get()
            try:
                if self._error is not None:
                    pass  # the first failure is reported; nothing after it is written
                elif isinstance(job, bytes):
                    self._write(job)
                else:
                    formatter, chunk = job
                    formatter.format(chunk.address, len(chunk.view), self._write)
            except BaseException as error:  # reported by the next call from the machine
                self._error = error
            finally:
                self._queue.task_done()

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def write(self, entry: Emitted) -> None:
        """One record of the Python path (with its exception log)."""
        data = format_hit(self.layouts[entry.module], entry.record, entry.exception_log)
        if self._shared:
            self._write(data)
        else:
            self._later(data)

    def write_packed(self, chunk: PackedChunk, native: NativeProbes) -> int:
        """A chunk of native records, formatted natively; the number of records."""
        if self._probes is None:
            self._probes = ProbeTable(
                self.layouts.__getitem__, tuple(dict.fromkeys(self.layouts.values()))
            )
        formatter = self._probes.update(native)
        if self._shared:
            return formatter.format(chunk.address, len(chunk.view), self._write)
        records = formatter.count(chunk.address, len(chunk.view))
        formatter.compile()
        self._later((formatter, chunk))
        return records

    def flush(self) -> None:
        """Wait until every record handed over is written, and flush the stream."""
        if self._queue is not None:
            self._queue.join()
        self._raise_error()
        if self._stream is not None:
            self._stream.flush()


class TraceWriter(LogWriter):
    """The LTT target: a ``LogWriter`` of every module's records in ``ctf.RECORDS`` to a
    ``ctf.TraceFile``, which makes them the events of a CTF trace in ``directory``."""

    def __init__(self, modules: Iterable[str], directory: Path, trace_id: UUID) -> None:
        self.trace_file = TraceFile(directory, trace_id)
        super().__init__(dict.fromkeys(modules, RECORDS), lambda: self.trace_file)
