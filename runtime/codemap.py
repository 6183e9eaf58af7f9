"""Where the instructions of a probed executable are: DProbes' offset validation.

A user probe names a file offset. It is only valid inside an executable PT_LOAD segment
and only at the first byte of an instruction: an int3 in the middle of one would turn
it into something else. The boundary check sweeps the code linearly with capstone from
the nearest function symbol at or before the offset (or from the segment's start when no
symbol covers it), so data embedded between functions cannot desynchronise it.
"""

from __future__ import annotations

import bisect
from pathlib import Path

from dprobes.elf import PF_X, ElfError, Segment, read_elf
from dprobes.runtime.xol import MAX_INSN_LENGTH, instruction_starts


class CodeMap:
    """The executable segments and function starts of one ELF file, by file offset."""

    def __init__(self, data: bytes, segments: list[Segment], functions: list[int]) -> None:
        self.data = data
        self.segments = segments
        self.functions = sorted(functions)
        # sweep start -> (swept up to, the last instruction start found, the starts): a
        # sweep goes on where the last one stopped, so no byte is decoded twice
        self._sweeps: dict[int, tuple[int, int, set[int]]] = {}

    @classmethod
    def load(cls, path: str | Path) -> CodeMap:
        """Read ``path``; a file that is not an i386 ELF gives an empty map, one whose
        symbols cannot be read a map without function starts."""
        try:
            elf = read_elf(path)
        except ElfError:
            return cls(b"", [], [])
        segments = [s for s in elf.loads if s.flags & PF_X]
        try:
            symbols = elf.symbols
        except ElfError:
            symbols = ()
        functions = [
            offset
            for symbol in symbols
            if symbol.type == "STT_FUNC" and symbol.value
            for offset in (seg.file_offset(symbol.value) for seg in segments)
            if offset is not None
        ]
        return cls(elf.data, segments, functions)

    def segment(self, offset: int) -> Segment | None:
        return next((seg for seg in self.segments if seg.address(offset) is not None), None)

    def vaddr(self, offset: int) -> int | None:
        """The virtual address the file offset is loaded at (static executables)."""
        seg = self.segment(offset)
        return None if seg is None else seg.address(offset)

    def is_boundary(self, offset: int) -> bool:
        """Whether an instruction starts at ``offset`` (which must be in a code segment)."""
        seg = self.segment(offset)
        if seg is None:
            return False
        at = bisect.bisect_right(self.functions, offset) - 1
        start = self.functions[at] if at >= 0 and self.functions[at] >= seg.offset else seg.offset
        swept, last, starts = self._sweeps.get(start, (start - 1, start, set()))
        if offset > swept:  # (starts past the offset may be cut short: not kept)
            found = [
                at
                for at in instruction_starts(self.data[last : offset + MAX_INSN_LENGTH], last)
                if at <= offset
            ]
            starts.update(found)
            self._sweeps[start] = (offset, max(found, default=last), starts)
        return offset in starts
