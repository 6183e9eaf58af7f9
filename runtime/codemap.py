"""Where the instructions of a probed executable are: DProbes' offset validation.

A user probe names a file offset. It is only valid inside an executable PT_LOAD segment
and only at the first byte of an instruction: an int3 in the middle of one would turn
it into something else. The boundary check sweeps the code linearly with capstone from
the nearest function symbol at or before the offset (or from the segment's start when no
symbol covers it), so data embedded between functions cannot desynchronise it.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from dprobes.runtime.xol import MAX_INSN_LENGTH, instruction_starts

PF_X = 1


@dataclass(frozen=True, slots=True)
class CodeSegment:
    offset: int  # file offset of the segment's first byte
    size: int  # bytes backed by the file
    vaddr: int


class CodeMap:
    """The executable segments and function starts of one ELF file, by file offset."""

    def __init__(self, data: bytes, segments: list[CodeSegment], functions: list[int]) -> None:
        self.data = data
        self.segments = segments
        self.functions = sorted(functions)
        # sweep start -> (swept up to, the last instruction start found, the starts): a
        # sweep goes on where the last one stopped, so no byte is decoded twice
        self._sweeps: dict[int, tuple[int, int, set[int]]] = {}

    @classmethod
    def load(cls, path: str | Path) -> CodeMap:
        """Read ``path``; a file that is not a readable ELF gives an empty map."""
        data = Path(path).read_bytes()
        try:
            elf = ELFFile.load_from_path(str(path))
            segments = [CodeSegment(s["p_offset"], s["p_filesz"], s["p_vaddr"])
                        for s in elf.iter_segments()
                        if s["p_type"] == "PT_LOAD" and s["p_flags"] & PF_X]
            functions = []
            table = elf.get_section_by_name(".symtab")
            for symbol in table.iter_symbols() if table is not None else ():
                if symbol["st_info"]["type"] == "STT_FUNC" and symbol["st_value"]:
                    for seg in segments:
                        if seg.vaddr <= symbol["st_value"] < seg.vaddr + seg.size:
                            functions.append(seg.offset + symbol["st_value"] - seg.vaddr)
        except (ELFError, OSError, ValueError):
            return cls(data, [], [])
        return cls(data, segments, functions)

    def segment(self, offset: int) -> CodeSegment | None:
        for seg in self.segments:
            if seg.offset <= offset < seg.offset + seg.size:
                return seg
        return None

    def vaddr(self, offset: int) -> int | None:
        """The virtual address the file offset is loaded at (static executables)."""
        seg = self.segment(offset)
        return None if seg is None else seg.vaddr + offset - seg.offset

    def is_boundary(self, offset: int) -> bool:
        """Whether an instruction starts at ``offset`` (which must be in a code segment)."""
        seg = self.segment(offset)
        if seg is None:
            return False
        at = bisect.bisect_right(self.functions, offset) - 1
        start = self.functions[at] if at >= 0 and self.functions[at] >= seg.offset \
            else seg.offset
        swept, last, starts = self._sweeps.get(start, (start - 1, start, set()))
        if offset > swept:  # (starts past the offset may be cut short: not kept)
            found = [at for at in instruction_starts(
                self.data[last:offset + MAX_INSN_LENGTH], last) if at <= offset]
            starts.update(found)
            self._sweeps[start] = (offset, max(found, default=last), starts)
        return offset in starts
