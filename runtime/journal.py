"""The probe manager's record of every log record it emitted, in order.

Records from the Python path arrive one ``Emitted`` at a time. Records from native hits
arrive as packed chunks of the native ring, many thousands per chunk; turning each into
Python objects as it arrives would cost more than the hit itself, so a chunk is kept as
it came (a view of the ring: not even copied) and decoded the first time somebody reads
the journal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple, overload

from dprobes.runtime.logtargets import LogRecord


@dataclass
class Emitted:
    """A log record as it left the probe manager, with its exception log."""

    module: str
    record: LogRecord
    exception_log: bytes = b""


Packed = bytes | memoryview
Decoder = Callable[[Packed], list[Emitted]]


class PackedChunk(NamedTuple):
    """Records of native hits as the ring holds them: a read-only view of the ring (which
    never overwrites them), its address for native code, and how to decode it."""

    view: Packed
    address: int
    decode: Decoder


class LogJournal(Sequence[Emitted]):
    """Every emitted record, oldest first; packed native chunks decode on first read."""

    def __init__(self) -> None:
        self._decoded: list[Emitted] = []
        self._unread: list[Emitted | tuple[Packed, Decoder]] = []  # after _decoded

    def append(self, entry: Emitted) -> None:
        (self._unread if self._unread else self._decoded).append(entry)

    def append_packed(self, chunk: PackedChunk) -> None:
        self._unread.append((chunk.view, chunk.decode))

    def _settle(self) -> None:
        for part in self._unread:
            if isinstance(part, Emitted):
                self._decoded.append(part)
            else:
                chunk, decode = part
                self._decoded.extend(decode(chunk))
        self._unread.clear()

    def __len__(self) -> int:
        self._settle()
        return len(self._decoded)

    @overload
    def __getitem__(self, index: int) -> Emitted: ...

    @overload
    def __getitem__(self, index: slice) -> list[Emitted]: ...

    def __getitem__(self, index: int | slice) -> Emitted | list[Emitted]:
        self._settle()
        return self._decoded[index]

    def __iter__(self) -> Iterator[Emitted]:
        self._settle()
        return iter(self._decoded)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, LogJournal | list):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]
