"""The guest kernel's image, read once: what the machine needs to run it and what kernel
probes need to know about it.

``KernelImage.load`` reads an i386 ELF kernel (``kernel_layout.KERNEL_IMAGE`` unless told
otherwise) and its symbols; the rest is read on first use. For the runtime: the PT_LOAD
segments it maps, the exception table (``__ex_table``: faulting instruction -> fixup) and the
``task_struct``/``task_union`` layout from DWARF (the C header is that layout's one
definition). For kernel probes: the text (the executable segments: a kernel probe outside
them is INVALID_OFFSET), the bytes and instruction boundaries there (``CodeMap``), the DWARF
compilation units and the exclude regions they and ``exclude.EXCLUDE_RULES`` give. It needs
no machine.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TypeVar

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from dprobes.elf import PF_X, ElfError, ElfFile, Segment, read_elf
from dprobes.kernel_layout import KERNEL_IMAGE
from dprobes.runtime.codemap import CodeMap
from dprobes.runtime.exclude import (
    CompilationUnit,
    ExcludeError,
    ExcludeRegion,
    ExcludeRule,
    compilation_units,
    exclude_regions,
    find_region,
    function_extents,
    unmatched_rules,
)

T = TypeVar("T")


class KernelImageError(Exception):
    """The kernel image is missing, unreadable or lacks what the runtime needs (the message
    says which and why)."""


@dataclass(frozen=True)
class TaskLayout:
    """Offsets in ``struct task_struct`` (``thread.*`` and ``own_mm.*`` for its thread_struct
    and mm_struct) and the size of ``union task_union`` (from DWARF)."""

    union_size: int
    offsets: dict[str, int]


@dataclass(frozen=True, eq=False)
class KernelImage:
    """One kernel image: its ELF file and symbols; the rest is read when first asked for."""

    path: Path
    elf: ElfFile
    symbols: dict[str, int]
    """Name -> address, a global symbol winning over a local one of the same name."""

    @classmethod
    def load(cls, path: str | Path = KERNEL_IMAGE) -> KernelImage:
        """Read the image at ``path``; KernelImageError if it is missing or not usable."""
        path = Path(path)
        try:
            elf = read_elf(path)
            symbols = _symbol_addresses(elf)
        except FileNotFoundError:
            raise KernelImageError(f"no kernel image at {path}") from None
        except OSError as error:
            raise KernelImageError(f"cannot read kernel image {path}: {error.strerror}") from None
        except ElfError as error:
            raise KernelImageError(
                f"{path}: not a usable kernel image: {error.problem} (byte {error.offset})"
            ) from None
        if not any(segment.flags & PF_X for segment in elf.loads):
            raise KernelImageError(f"{path}: not a usable kernel image: no executable segment")
        if not symbols:
            raise KernelImageError(f"{path}: not a usable kernel image: no symbol table")
        return cls(path, elf, symbols)

    def symbol(self, name: str) -> int:
        """The address of symbol ``name``; KernelImageError if the image has none."""
        try:
            return self.symbols[name]
        except KeyError:
            raise KernelImageError(f"{self.path}: no symbol {name!r}") from None

    def segment_bytes(self, segment: Segment) -> bytes:
        """The file bytes of ``segment`` (its first ``filesz`` bytes in memory)."""
        return self.elf.data[segment.offset : segment.offset + segment.filesz]

    # --- read on first use: what running it needs ------------------------------------------

    @cached_property
    def ex_table(self) -> dict[int, int]:
        """Faulting instruction -> fixup address (``__ex_table``)."""
        return self._from_sections(_exception_table)

    @cached_property
    def task(self) -> TaskLayout:
        """The task_struct/task_union layout, from DWARF."""
        return self._from_sections(_task_layout)

    def _from_sections(self, read: Callable[[ELFFile], T]) -> T:
        try:
            return read(ELFFile(io.BytesIO(self.elf.data)))
        except (ELFError, KeyError, ValueError, struct.error) as error:
            raise KernelImageError(f"{self.path}: not a usable kernel image: {error}") from None

    # --- read on first use: what probes need ------------------------------------------------

    @cached_property
    def code(self) -> CodeMap:
        """The kernel text's bytes and instruction boundaries."""
        return CodeMap.load(self.path)

    @cached_property
    def units(self) -> tuple[CompilationUnit, ...]:
        """The DWARF compilation units that have code."""
        try:
            return compilation_units(self.path)
        except ExcludeError as error:
            raise KernelImageError(str(error)) from None

    @cached_property
    def regions(self) -> tuple[ExcludeRegion, ...]:
        """Where kernel probes are EXCLUDED (from ``units`` and ``exclude.EXCLUDE_RULES``)."""
        try:
            return exclude_regions(self.units, function_extents(self.path))
        except ExcludeError as error:
            raise KernelImageError(str(error)) from None

    @property
    def text(self) -> tuple[Segment, ...]:
        """The executable segments: where kernel probes may go."""
        return tuple(self.code.segments)

    def file_offset(self, address: int) -> int | None:
        """Where the text byte at ``address`` is in the file (None: not kernel text)."""
        return next(
            (
                offset
                for segment in self.text
                if (offset := segment.file_offset(address)) is not None
            ),
            None,
        )

    def read(self, address: int, n: int) -> bytes:
        """Up to ``n`` text bytes from ``address`` (fewer at the end of the text)."""
        offset = self.file_offset(address)
        if offset is None:
            return b""
        segment = self.code.segment(offset)
        assert segment is not None
        end = min(offset + n, segment.offset + segment.filesz)
        return self.elf.data[offset:end]

    def is_boundary(self, address: int) -> bool:
        """Whether an instruction of the kernel text starts at ``address``."""
        offset = self.file_offset(address)
        return offset is not None and self.code.is_boundary(offset)

    def excluded(self, address: int) -> ExcludeRegion | None:
        """The exclude region ``address`` is in, if any."""
        return find_region(self.regions, address)

    @property
    def unmatched_rules(self) -> tuple[ExcludeRule, ...]:
        """Exclude rules this image has nothing for (no such unit or function)."""
        return unmatched_rules(self.regions)


def _symbol_addresses(elf: ElfFile) -> dict[str, int]:
    addresses: dict[str, int] = {}
    for symbol in sorted(elf.symbols, key=lambda s: s.bind == "STB_LOCAL"):  # globals first
        if symbol.in_section:
            addresses.setdefault(symbol.name, symbol.value)
    return addresses


def _exception_table(elf: ELFFile) -> dict[int, int]:
    table = elf.get_section_by_name("__ex_table")
    words = struct.unpack(f"<{table.data_size // 4}I", table.data()) if table else ()
    return dict(zip(words[::2], words[1::2], strict=True))


def _task_layout(elf: ELFFile) -> TaskLayout:
    structs: dict[str, object] = {}
    for cu in elf.get_dwarf_info().iter_CUs():
        for die in cu.iter_DIEs():
            if (
                die.tag in ("DW_TAG_structure_type", "DW_TAG_union_type")
                and "DW_AT_name" in die.attributes
            ):
                name = die.attributes["DW_AT_name"].value.decode()
                if "DW_AT_byte_size" in die.attributes:
                    structs.setdefault(name, die)
        if {"task_struct", "thread_struct", "mm_struct", "task_union"} <= structs.keys():
            break
    else:
        raise ValueError("its DWARF lacks task_struct, thread_struct, mm_struct or task_union")

    def members(die: object) -> dict[str, int]:
        return {
            child.attributes["DW_AT_name"].value.decode(): child.attributes[
                "DW_AT_data_member_location"
            ].value
            for child in die.iter_children()  # type: ignore[attr-defined]
            if child.tag == "DW_TAG_member"
        }

    offsets = members(structs["task_struct"])
    for member, struct_name in (("thread", "thread_struct"), ("own_mm", "mm_struct")):
        offsets.update(
            {f"{member}.{k}": offsets[member] + v for k, v in members(structs[struct_name]).items()}
        )
    union_size = structs["task_union"].attributes["DW_AT_byte_size"].value  # type: ignore[attr-defined]
    return TaskLayout(union_size, offsets)
