"""Writing a run's log records to their targets, in order, with few large writes.

``LogWriter`` is the probe manager's ``writer``: records of the Python path arrive one at
a time and go through the Python formatter; chunks of the native ring go through the
native formatter, which writes a whole chunk's output into one buffer. The manager
drains the ring before every Python-path record and before every system call, so the
order of records (and their interleaving with the program's output) is the order of
the hits on every tier.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from dprobes.runtime.journal import Emitted, PackedChunk
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
    the pid, the EIP of the trap (the byte after the int3), the process name."""
    return ProbeLog(pid=served.pid, eip=(served.plan.address + 1) & 0xFFFFFFFF,
                    fields=served.loaded.log_fields, layout=layout,
                    name=names.get(served.pid, ""))


class ProbeTable:
    """The native formatter for ``layouts`` (none: it only counts), told about every
    probe the native hook has given an ident (``layout_of``: a module's layout)."""

    def __init__(self, layout_of: Callable[[str], Layout],
                 layouts: tuple[Layout, ...] = ()) -> None:
        from dprobes.runtime.logformat.native import NativeFormatter

        self.formatter = NativeFormatter(layouts)
        self.layout_of = layout_of

    def update(self, native: NativeProbes) -> NativeFormatter:
        """The formatter, with an entry for each of the hook's idents."""
        formatter = self.formatter
        for ident in range(len(formatter), len(native.idents)):
            served = native.idents[ident]
            formatter.set_probe(ident, probe_log(served, native.names,
                                                 self.layout_of(served.loaded.name)))
        return formatter

    def count(self, chunk: PackedChunk, native: NativeProbes) -> int:
        """The number of records in the chunk (none is decoded)."""
        return self.update(native).count(chunk.address, len(chunk.view))


class LogWriter:
    """Writes every record to ``open_stream()`` (opened at the first record) in the
    layout of its program (``layouts``: module name -> layout); ``flush_each``: flush
    after every write (a stream shared with the program's output)."""

    def __init__(self, layouts: dict[str, Layout], open_stream: Callable[[], BinaryIO],
                 *, flush_each: bool = False) -> None:
        self.layouts = layouts
        self._open = open_stream
        self._stream: BinaryIO | None = None
        self._flush_each = flush_each
        self._probes: ProbeTable | None = None

    def _write(self, data: bytes | memoryview) -> None:
        if not data:
            return
        if self._stream is None:
            self._stream = self._open()
        self._stream.write(data)
        if self._flush_each:
            self._stream.flush()

    def write(self, entry: Emitted) -> None:
        """One record of the Python path (with its exception log)."""
        self._write(format_hit(self.layouts[entry.module], entry.record, entry.exception_log))

    def write_packed(self, chunk: PackedChunk, native: NativeProbes) -> int:
        """A chunk of native records, formatted natively; the number of records."""
        if self._probes is None:
            self._probes = ProbeTable(self.layouts.__getitem__,
                                      tuple(dict.fromkeys(self.layouts.values())))
        formatter = self._probes.update(native)
        return formatter.format(chunk.address, len(chunk.view), self._write)

    def flush(self) -> None:
        if self._stream is not None:
            self._stream.flush()
