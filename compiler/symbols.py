"""Symbol tables: the names a probe program may use for locations and ``push`` operands.

A table comes from the target module's i386 ELF file (``.symtab``, then ``.dynsym``, read
by ``dprobes.elf``, which the runtime shares) or from a System.map-style file (``address
type name``, the ``--sym`` option); ``merged`` combines them, the first table winning on
a name both define. A global symbol beats a local one of the same name; otherwise the
first one read wins.

The lowering pass asks two questions, and each problem goes to the DiagnosticSink:

* ``address``: the value ``push SYMBOL[+n]`` pushes, the symbol's address plus n.
* ``probe_offset``: the ``offset`` DProbes stores for ``offset = SYMBOL[+n]``, which
  depends on the program's module type:

  - ``user``: the FILE offset of address+n, found through the PT_LOAD segment whose
    file bytes hold it (a user probe is an (inode, file offset) pair), or the address
    itself with ``address = absolute``;
  - ``kernel``: address+n - PAGE_OFFSET (0xC0000000), or address+n with
    ``address = absolute``;
  - ``kmod``: the symbol's offset in its section of the relocatable module object,
    plus n. The kernel adds the module base (``module_core``) to it, so this is exact
    for the first section laid out in the core, normally ``.text``; a symbol in
    another section gets a warning. With ``address = absolute`` the symbol needs a
    real address (a ``--sym`` file of the loaded module).

A symbol of a relocatable object has no address until the module is loaded, so only a
relative kmod probe may use one.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dprobes.compiler.diagnostics import ByteLoc, DiagnosticSink, SourceLoc
from dprobes.elf import ElfError, ElfFile, Segment, read_elf
from dprobes.kernel_layout import KERNEL_BASE
from dprobes.vm.model import WORD_MASK
from dprobes.vm.program import ModuleType

_SKIPPED_TYPES = ("STT_SECTION", "STT_FILE")
_MAP_LINE = re.compile(r"([0-9A-Fa-f]+)\s+([A-Za-z?])\s+(\S+)(?:\s+\[\S+\])?")


@dataclass(frozen=True, slots=True)
class Symbol:
    """One named value; ``relocatable`` means ``value`` is an offset in ``section``."""

    name: str
    value: int
    section: str = ""
    relocatable: bool = False


@dataclass(frozen=True)
class SymbolTable:
    """Symbols by name, the PT_LOAD segments of the ELF file, and where they came from."""

    symbols: dict[str, Symbol] = field(default_factory=dict)
    segments: tuple[Segment, ...] = ()
    sources: tuple[str, ...] = ()
    missing: str = ""
    """Why an expected table is not here, for the hint on an unknown symbol."""

    # --- loading ---------------------------------------------------------------------

    @classmethod
    def from_elf(cls, path: str, sink: DiagnosticSink) -> SymbolTable | None:
        """Read an i386 ELF32 file's symbols and segments; report a bad file and return None."""
        try:
            elf = read_elf(path)
            symbols = _elf_symbols(elf)
        except OSError as error:
            _unreadable(path, error, sink)
            return None
        except ElfError as error:
            sink.error(ByteLoc(path, error.offset), error.problem)
            return None
        return cls(symbols, elf.loads, (path,))

    @classmethod
    def from_system_map(cls, path: str, sink: DiagnosticSink) -> SymbolTable | None:
        """Read ``address type name [module]`` lines (System.map, /proc/ksyms style)."""
        try:
            data = Path(path).read_bytes()
        except OSError as error:
            _unreadable(path, error, sink)
            return None
        symbols: dict[str, Symbol] = {}
        local: set[str] = set()
        for number, line in enumerate(data.decode(errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            match = _MAP_LINE.fullmatch(line.strip())
            if match is None:
                sink.error(
                    SourceLoc(path, number, 1),
                    "not a System.map line: expected 'address type name'",
                )
                return None
            address, kind, name = int(match[1], 16), match[2], match[3]
            if address > WORD_MASK:
                sink.error(
                    SourceLoc(path, number, 1),
                    f"address {match[1]} does not fit 32 bits (a 64-bit System.map?)",
                )
                return None
            if kind in "Uu":
                continue
            _add(symbols, local, Symbol(name, address), is_local=kind.islower())
        return cls(symbols, (), (path,))

    @staticmethod
    def merged(tables: Sequence[SymbolTable]) -> SymbolTable:
        """One table from several; a name defined in more than one comes from the first."""
        symbols: dict[str, Symbol] = {}
        for table in reversed(tables):
            symbols.update(table.symbols)
        segments = next((table.segments for table in tables if table.segments), ())
        sources = tuple(s for t in tables for s in t.sources)
        return SymbolTable(
            symbols, segments, sources, next((t.missing for t in tables if t.missing), "")
        )

    # --- queries ---------------------------------------------------------------------

    def lookup(self, name: str) -> Symbol | None:
        return self.symbols.get(name)

    def address(
        self,
        name: str,
        addend: int,
        loc: SourceLoc,
        sink: DiagnosticSink,
        hints: tuple[str, ...] = (),
    ) -> int | None:
        """The word ``push name+addend`` pushes, or None after reporting why there is none."""
        symbol = self._resolve(name, loc, sink, hints)
        if symbol is None or not self._has_address(symbol, loc, sink):
            return None
        return (symbol.value + addend) & WORD_MASK

    def probe_offset(
        self,
        name: str,
        addend: int,
        modtype: ModuleType,
        absolute: bool,
        loc: SourceLoc,
        sink: DiagnosticSink,
    ) -> int | None:
        """The probe record's ``offset`` for ``name+addend`` (rules in the module docstring)."""
        symbol = self._resolve(name, loc, sink, ())
        if symbol is None:
            return None
        if modtype is ModuleType.KMOD and not absolute:
            return self._module_offset(symbol, addend, loc, sink)
        if not self._has_address(symbol, loc, sink):
            return None
        address = (symbol.value + addend) & WORD_MASK
        if absolute:
            return address
        if modtype is ModuleType.KERNEL:
            if address < KERNEL_BASE:
                sink.error(
                    loc,
                    f"'{name}' ({address:#010x}) is below the kernel's "
                    f"PAGE_OFFSET {KERNEL_BASE:#x}",
                    "write 'address = absolute' to probe it by address",
                )
                return None
            return address - KERNEL_BASE
        return self._file_offset(name, address, loc, sink)

    # --- helpers ---------------------------------------------------------------------

    def _resolve(
        self, name: str, loc: SourceLoc, sink: DiagnosticSink, hints: tuple[str, ...]
    ) -> Symbol | None:
        symbol = self.symbols.get(name)
        if symbol is not None:
            return symbol
        if not self.symbols:
            hints = (
                *hints,
                *((self.missing,) if self.missing else ()),
                "no symbol table is loaded: give the module's ELF file "
                "or a System.map file (--sym)",
            )
        else:
            close = difflib.get_close_matches(name, self.symbols, n=3)
            if close:
                hints = (*hints, f"did you mean {' or '.join(repr(c) for c in close)}?")
        sink.error(loc, f"unknown symbol '{name}'", *hints)
        return None

    @staticmethod
    def _has_address(symbol: Symbol, loc: SourceLoc, sink: DiagnosticSink) -> bool:
        if symbol.relocatable:
            sink.error(
                loc,
                f"'{symbol.name}' is in a relocatable object ({symbol.section}) "
                "and has no address until the module is loaded",
                "use it as a kmod probe offset, or give a --sym file with the "
                "loaded module's addresses",
            )
        return not symbol.relocatable

    @staticmethod
    def _module_offset(
        symbol: Symbol, addend: int, loc: SourceLoc, sink: DiagnosticSink
    ) -> int | None:
        if not symbol.relocatable:
            sink.error(
                loc,
                f"'{symbol.name}' is an address, not an offset in a module object",
                "a kmod probe offset needs the module's relocatable object file, "
                "or write 'address = absolute'",
            )
            return None
        if symbol.section != ".text":
            sink.warning(
                loc,
                f"'{symbol.name}' is in section {symbol.section}: its offset is "
                "taken from the start of that section, which is the module "
                "base only for the first section of the module (.text)",
            )
        return (symbol.value + addend) & WORD_MASK

    def _file_offset(
        self, name: str, address: int, loc: SourceLoc, sink: DiagnosticSink
    ) -> int | None:
        if not self.segments:
            sink.error(
                loc,
                f"cannot turn '{name}' into a file offset without the module's ELF program headers",
                "a user probe offset is a file offset: give the module's ELF file",
            )
            return None
        for segment in self.segments:
            offset = segment.file_offset(address)
            if offset is not None:
                return offset
        sink.error(
            loc,
            f"'{name}' ({address:#010x}) is not in the file bytes of a loaded "
            "segment (PT_LOAD) of the module",
        )
        return None


def _unreadable(path: str, error: OSError, sink: DiagnosticSink) -> None:
    sink.error(None, f"cannot read symbol file {path}: {error.strerror}")


def _elf_symbols(elf: ElfFile) -> dict[str, Symbol]:
    relocatable_file = elf.type == "ET_REL"
    symbols: dict[str, Symbol] = {}
    local: set[str] = set()
    for entry in elf.symbols:
        if entry.type in _SKIPPED_TYPES:
            continue
        symbol = Symbol(
            entry.name, entry.value, entry.section, relocatable_file and entry.in_section
        )
        _add(symbols, local, symbol, is_local=entry.bind == "STB_LOCAL")
    return symbols


def _add(symbols: dict[str, Symbol], local: set[str], symbol: Symbol, is_local: bool) -> None:
    """Keep the first symbol of a name, unless a global one replaces a local one."""
    if symbol.name in symbols and (symbol.name not in local or is_local):
        return
    symbols[symbol.name] = symbol
    if is_local:
        local.add(symbol.name)
    else:
        local.discard(symbol.name)
