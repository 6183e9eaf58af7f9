"""Reading an i386 ELF32 file once: header, program headers and (on demand) symbols.

``read_elf(path)`` returns an ``ElfFile``. The identification, the machine (EM_386), the
program header table and every segment's file bytes are checked at once: a file that
fails raises ``ElfError`` with the byte offset of the problem and a message naming it,
which the compiler reports as a diagnostic at that byte and the loader as a refused
executable. Sections and symbols are parsed the first time ``symbols`` is asked for (the
loader never asks: Linux runs a file whatever its section headers say), and a bad
section table raises ``ElfError`` there.

Each file is parsed once per process: results are cached by the file's bytes, so the
symbol table of ``dpc run --elf``, the probe manager's code map and the loaded program
share one parse, and a file rewritten in place is never served stale.

pyelftools is the parser; the checks before it are what turn its exceptions about
truncated or foreign files into one clear message.
"""

from __future__ import annotations

import io
import struct
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

PF_X, PF_W, PF_R = 1, 2, 4
"""Segment permission bits (``p_flags``)."""
EM_386 = 3
EM_NAMES = {
    0: "none",
    3: "i386",
    8: "MIPS",
    20: "PowerPC",
    40: "ARM",
    62: "x86-64",
    183: "AArch64",
    243: "RISC-V",
}
"""Names of the machines a refused file is most likely built for."""
ELF32_HEADER_SIZE = 52
ELF32_SYMBOL_SIZE = 16
CACHED_FILES = 8
"""How many parsed files the cache keeps (a run reads one or two executables)."""

_NO_ADDRESS = ("SHN_UNDEF", "SHN_COMMON")  # undefined, or not allocated before linking
_PYELFTOOLS_ERRORS = (ELFError, struct.error, ValueError, KeyError)  # its ways to fail


class ElfError(Exception):
    """The file is not a well-formed i386 ELF32 file: ``problem`` at byte ``offset``."""

    def __init__(self, offset: int, problem: str) -> None:
        super().__init__(problem)
        self.offset, self.problem = offset, problem


@dataclass(frozen=True, slots=True)
class Segment:
    """A program header: its first ``filesz`` bytes at ``vaddr`` come from file ``offset``;
    ``memsz`` bytes are mapped."""

    type: str  # "PT_LOAD", "PT_INTERP", ...; an unknown type as hex
    flags: int  # PF_R | PF_W | PF_X
    offset: int
    vaddr: int
    filesz: int
    memsz: int

    def file_offset(self, address: int) -> int | None:
        """Where the byte loaded at ``address`` is in the file, if the file holds it."""
        inside = self.vaddr <= address < self.vaddr + self.filesz
        return self.offset + address - self.vaddr if inside else None

    def address(self, offset: int) -> int | None:
        """The address file byte ``offset`` is loaded at, if this segment holds it."""
        inside = self.offset <= offset < self.offset + self.filesz
        return self.vaddr + offset - self.offset if inside else None


@dataclass(frozen=True, slots=True)
class ElfSymbol:
    """A named symbol with a location: ``value`` is an address, or (in a relocatable file)
    an offset in ``section``; ``in_section`` is False for absolute symbols."""

    name: str
    value: int
    type: str  # "STT_FUNC", "STT_OBJECT", ...
    bind: str  # "STB_LOCAL", "STB_GLOBAL", "STB_WEAK"
    section: str
    in_section: bool


class ElfFile:
    """One checked i386 ELF32 file; build it with ``read_elf``."""

    def __init__(self, data: bytes) -> None:
        _check_ident(data)
        try:
            self._elf = ELFFile(io.BytesIO(data))
            header = self._elf.header
            self.type: str = str(header["e_type"])
            """``ET_EXEC``, ``ET_REL``, ``ET_DYN``, ... (a number if unknown)."""
            self.entry: int = header["e_entry"]
            self.phoff: int = header["e_phoff"]
            self.phnum: int = header["e_phnum"]
            self.phentsize: int = header["e_phentsize"]
            table_end = self.phoff + self.phnum * self.phentsize
            if self.phnum and table_end > len(data):
                raise ElfError(
                    len(data),
                    f"truncated ELF file: program headers end at byte "
                    f"{table_end}, the file has {len(data)}",
                )
            self.segments: tuple[Segment, ...] = tuple(
                Segment(
                    _name(s["p_type"]),
                    s["p_flags"],
                    s["p_offset"],
                    s["p_vaddr"],
                    s["p_filesz"],
                    s["p_memsz"],
                )
                for s in self._elf.iter_segments()
            )
        except _PYELFTOOLS_ERRORS as error:
            raise ElfError(0, f"truncated or malformed ELF file: {error}") from None
        for number, segment in enumerate(self.segments):
            end = segment.offset + segment.filesz
            if end > len(data):
                raise ElfError(
                    len(data),
                    f"truncated ELF file: segment {number} needs bytes "
                    f"up to {end}, the file has {len(data)}",
                )
        self.data = data
        self._symbols: tuple[ElfSymbol, ...] | ElfError | None = None

    @property
    def loads(self) -> tuple[Segment, ...]:
        """The PT_LOAD segments, in file order."""
        return tuple(segment for segment in self.segments if segment.type == "PT_LOAD")

    @property
    def symbols(self) -> tuple[ElfSymbol, ...]:
        """Every named symbol with a location, ``.symtab`` before ``.dynsym``; raises
        ``ElfError`` if a section lies outside the file or a table is malformed."""
        if self._symbols is None:
            try:
                self._symbols = self._read_symbols()
            except ElfError as error:
                self._symbols = error
            except _PYELFTOOLS_ERRORS as error:
                self._symbols = ElfError(0, f"truncated or malformed ELF file: {error}")
        if isinstance(self._symbols, ElfError):
            raise self._symbols
        return self._symbols

    def _read_symbols(self) -> tuple[ElfSymbol, ...]:
        elf, size = self._elf, len(self.data)
        for section in elf.iter_sections():
            end = section["sh_offset"] + section["sh_size"]
            if section["sh_type"] != "SHT_NOBITS" and end > size:
                raise ElfError(
                    size,
                    f"truncated ELF file: section {section.name} ends at "
                    f"byte {end}, the file has {size}",
                )
            if (
                isinstance(section, SymbolTableSection)
                and section["sh_entsize"] != ELF32_SYMBOL_SIZE
            ):
                raise ElfError(
                    section["sh_offset"],
                    f"malformed symbol table {section.name}: entry size "
                    f"{section['sh_entsize']}, expected {ELF32_SYMBOL_SIZE}",
                )
        tables = sorted(
            (s for s in elf.iter_sections() if isinstance(s, SymbolTableSection)),
            key=lambda s: s["sh_type"] != "SHT_SYMTAB",
        )
        symbols = []
        for table in tables:
            for entry in table.iter_symbols():
                shndx = entry["st_shndx"]
                if not entry.name or shndx in _NO_ADDRESS:
                    continue
                in_section = isinstance(shndx, int) and shndx < elf.num_sections()
                section = elf.get_section(shndx).name if in_section else ""
                symbols.append(
                    ElfSymbol(
                        entry.name,
                        entry["st_value"],
                        entry["st_info"]["type"],
                        entry["st_info"]["bind"],
                        section,
                        in_section,
                    )
                )
        return tuple(symbols)


_CACHE: OrderedDict[bytes, ElfFile] = OrderedDict()


def read_elf(path: str | Path) -> ElfFile:
    """The parsed file at ``path`` (parsed once per content); raises ``OSError`` if it
    cannot be read and ``ElfError`` if it is not a well-formed i386 ELF32 file."""
    data = Path(path).read_bytes()
    elf = _CACHE.get(data)
    if elf is None:
        elf = ElfFile(data)
        _CACHE[data] = elf
        if len(_CACHE) > CACHED_FILES:
            _CACHE.popitem(last=False)
    else:
        _CACHE.move_to_end(data)
    return elf


def _name(value: str | int) -> str:
    return value if isinstance(value, str) else f"{value:#x}"


def _check_ident(data: bytes) -> None:
    """Magic, class, byte order, header length and machine, before pyelftools reads it."""
    size = len(data)
    if data[:4] != b"\x7fELF":
        raise ElfError(0, "not an ELF file (no \\x7fELF magic at offset 0)")
    if size > 4 and data[4] == 2:
        raise ElfError(4, "64-bit ELF (ELFCLASS64): only 32-bit i386 (ELF32) files are supported")
    if size > 4 and data[4] != 1:
        raise ElfError(4, f"unknown ELF class {data[4]}")
    if size > 5 and data[5] != 1:
        raise ElfError(5, "big-endian ELF: i386 files are little-endian")
    if size < ELF32_HEADER_SIZE:
        raise ElfError(
            size,
            f"truncated ELF file: {size} bytes, the ELF32 header alone needs {ELF32_HEADER_SIZE}",
        )
    (machine,) = struct.unpack_from("<H", data, 18)
    if machine != EM_386:
        raise ElfError(
            18, f"ELF for machine {machine} ({EM_NAMES.get(machine, 'unknown')}), not i386 (EM_386)"
        )
