"""The guest kernel's image: where it is, and what kernel probes need to know about it.

``KERNEL_IMAGE`` is the one place the image's path is written (the kernel runtime loads
it; ``dpc build`` takes kernel symbols from it; the probe manager checks kernel probes
against it); ``--kernel-image PATH`` picks another. ``KernelImage`` reads an i386 ELF kernel
once: its symbols, its text (the executable PT_LOAD segments: a kernel probe outside
them is INVALID_OFFSET), the bytes and instruction boundaries there (``CodeMap``), its
DWARF compilation units and the exclude regions they and ``exclude.EXCLUDE_RULES`` give.
It needs no machine; the compiler imports it (which loads the runtime package) only
for a kernel program built without ``--elf``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dprobes.elf import PF_X, ElfError, ElfFile, Segment, read_elf
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

KERNEL_IMAGE = Path(__file__).resolve().parent.parent / "guest" / "bin" / "vmlinux"
"""The guest kernel built from guest/kernel (an ELF32 i386 image linked at 0xC0000000+)."""


class KernelImageError(Exception):
    """The kernel image is missing or unreadable (the message says which and why)."""


@dataclass(frozen=True, eq=False)
class KernelImage:
    """One kernel image, read once: symbols, text, code, compilation units, regions."""

    path: Path
    elf: ElfFile
    code: CodeMap
    units: tuple[CompilationUnit, ...]
    regions: tuple[ExcludeRegion, ...]

    @classmethod
    def load(cls, path: str | Path = KERNEL_IMAGE) -> KernelImage:
        """Read the image at ``path``; KernelImageError if it is missing or not usable."""
        path = Path(path)
        try:
            elf = read_elf(path)
            elf.symbols  # noqa: B018 (a bad symbol table is found now, not at a probe)
            units = compilation_units(path)
            regions = exclude_regions(units, function_extents(path))
        except FileNotFoundError:
            raise KernelImageError(f"no kernel image at {path}") from None
        except OSError as error:
            raise KernelImageError(f"cannot read kernel image {path}: {error.strerror}") from None
        except ElfError as error:
            raise KernelImageError(
                f"{path}: not a usable kernel image: {error.problem} (byte {error.offset})"
            ) from None
        except ExcludeError as error:
            raise KernelImageError(str(error)) from None
        if not any(segment.flags & PF_X for segment in elf.loads):
            raise KernelImageError(f"{path}: not a usable kernel image: no executable segment")
        return cls(path, elf, CodeMap.load(path), units, regions)

    @property
    def text(self) -> tuple[Segment, ...]:
        """The executable segments: where kernel probes may go."""
        return tuple(self.code.segments)

    def symbol(self, name: str) -> int | None:
        """The address of symbol ``name`` (a global one first), if the image has it."""
        found = [s for s in self.elf.symbols if s.name == name and s.in_section]
        found.sort(key=lambda s: s.bind == "STB_LOCAL")
        return found[0].value if found else None

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
