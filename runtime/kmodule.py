"""Kernel modules: i386 relocatable objects placed in kernel memory, as Linux 2.4's insmod did.

``relocate`` reads a module object (``gcc -m32 -ffreestanding -fno-pic -c``), lays its
allocatable sections out from a kernel virtual ``base`` (code first, ``.text`` at offset 0,
which is what a kmod probe's offset counts from, DProbes' ``module_core``; then read-only
data, then writable data and bss, each group page-aligned so that pages get their own
protection), and applies its relocations against its own symbols and a lookup of kernel
(and other modules') symbols. It also reads what 2.4 modules declared: exported symbols
(``__ksymtab``), parameters (``parm_NAME=i`` in ``.modinfo``) and the entry points
``init_module``/``cleanup_module``. Anything it cannot do is a ``ModuleError`` naming the
file and, where there is one, the section and offset.

``ModuleLoader`` is the kernel side: it places a module in fresh frames of the module area,
fires ``on_placed`` (kmod probes are planted then, before init runs), runs init through a
callable (the guest kernel runs it), and on unload or a failed init fires ``on_unloaded``
and frees the frames.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from dprobes.elf import PF_R, PF_X, ElfError, ElfFile, Segment
from dprobes.runtime.codemap import CodeMap
from dprobes.runtime.paging import KernelPages, Prot, page_up
from dprobes.runtime.physmem import PAGE_MASK, PAGE_SHIFT, PAGE_SIZE, OutOfFrames, PhysicalMemory

MODULE_AREA = (0xE0000000, 0xF0000000)
"""Kernel virtual addresses modules are placed at (2.4 used vmalloc space, above the kernel's
direct mapping); one unmapped guard page follows each module."""

R_386_NONE, R_386_32, R_386_PC32, R_386_PLT32 = 0, 1, 2, 4
RELOCATION_NAMES = {
    0: "R_386_NONE",
    1: "R_386_32",
    2: "R_386_PC32",
    3: "R_386_GOT32",
    4: "R_386_PLT32",
    5: "R_386_COPY",
    6: "R_386_GLOB_DAT",
    7: "R_386_JMP_SLOT",
    8: "R_386_RELATIVE",
    9: "R_386_GOTOFF",
    10: "R_386_GOTPC",
    14: "R_386_TLS_TPOFF",
    20: "R_386_16",
    21: "R_386_PC16",
    22: "R_386_8",
    23: "R_386_PC8",
    43: "R_386_GOT32X",
}
_PIC_TYPES = {3, 9, 10, 43}  # need a GOT: the object was built with -fpic
SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR = 0x1, 0x2, 0x4
EXPORTS_SECTION = "__ksymtab"
MODINFO_SECTION = ".modinfo"
INIT_SYMBOL, CLEANUP_SYMBOL = "init_module", "cleanup_module"
_PYELFTOOLS_ERRORS = (ELFError, struct.error, ValueError, KeyError, IndexError)

SymbolLookup = Callable[[str], int | None]


class ModuleError(Exception):
    """The module cannot be loaded: ``problem`` in ``path`` (at ``section``+``offset``)."""

    def __init__(
        self, path: str | Path, problem: str, section: str = "", offset: int | None = None
    ) -> None:
        where = f" (section {section}" if section else ""
        if where and offset is not None:
            where += f", offset 0x{offset:x}"
        super().__init__(f"{path}: {problem}{where + ')' if where else ''}")
        self.path, self.problem, self.section, self.offset = str(path), problem, section, offset


class ModuleInitError(ModuleError):
    """``init_module`` returned ``status`` (a negative errno): the module was freed."""

    def __init__(self, path: str | Path, status: int) -> None:
        super().__init__(path, f"init_module returned {status}; the module was not loaded")
        self.status = status


@dataclass(frozen=True)
class PlacedSection:
    name: str
    address: int
    size: int
    prot: Prot


@dataclass(frozen=True)
class ModuleImage:
    """A relocated module, ready to be copied to ``base``: ``data`` covers ``size`` bytes
    (page-aligned); ``pages`` gives each page's protection."""

    name: str
    path: str
    base: int
    data: bytes
    sections: tuple[PlacedSection, ...]
    pages: tuple[Prot, ...]
    symbols: Mapping[str, int]
    """Every named function and object (globals win over locals) -> address."""
    exports: Mapping[str, int]
    """``EXPORT_SYMBOL``s: what other modules may link against."""
    params: Mapping[str, str]
    """Parameter name -> 2.4 type string ("i": int)."""
    functions: tuple[int, ...]
    """Module offsets of the function symbols (instruction sweeps start there)."""
    init: int | None
    cleanup: int | None
    imports: Mapping[str, int] = field(default_factory=dict)
    """The undefined symbols and what they resolved to."""

    @property
    def size(self) -> int:
        return len(self.data)

    @cached_property
    def code_map(self) -> CodeMap:
        """The module's code, by module offset, for probe offset checks."""
        segments = [
            Segment("PT_LOAD", PF_R | PF_X, s.address - self.base, s.address, s.size, s.size)
            for s in self.sections
            if s.prot & Prot.EXEC and s.size
        ]
        return CodeMap(self.data, segments, list(self.functions))


def module_name(path: str | Path) -> str:
    """The name a module is known by (and kmod programs name): the file name without
    ``.o``/``.ko``, as insmod derived it."""
    name = Path(path).name
    for suffix in (".ko", ".o"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def relocate(
    path: str | Path,
    base: int,
    lookup: SymbolLookup,
    params: Mapping[str, str] | None = None,
    data: bytes | None = None,
) -> ModuleImage:
    """Lay out and relocate the module object at ``path`` (or its bytes ``data``, the
    path then only naming it) for kernel address ``base``; undefined symbols come from
    ``lookup`` (None: unknown). ``params`` sets declared module parameters (name -> value
    text) before init."""
    if data is None:
        try:
            data = Path(path).read_bytes()
        except OSError as error:
            raise ModuleError(path, error.strerror or str(error)) from None
    try:
        checked = ElfFile(data)
    except ElfError as error:
        raise ModuleError(path, error.problem, "ELF header", error.offset) from None
    if checked.type != "ET_REL":
        raise ModuleError(path, f"ELF type {checked.type} is not a relocatable object (ET_REL)")
    if base & PAGE_MASK:
        raise ValueError(f"module base 0x{base:x} is not page-aligned")
    try:
        return _Linker(path, ELFFile(io.BytesIO(data)), base, lookup).link(params or {})
    except _PYELFTOOLS_ERRORS as error:
        raise ModuleError(path, f"malformed relocatable object: {error}") from None


class _Linker:
    """One module object being placed; ``link`` does the work in order."""

    def __init__(self, path: str | Path, elf: ELFFile, base: int, lookup: SymbolLookup) -> None:
        self.path, self.elf, self.base, self.lookup = path, elf, base, lookup
        self.addresses: dict[int, int] = {}  # section index -> address
        self.imports: dict[str, int] = {}

    def link(self, params: Mapping[str, str]) -> ModuleImage:
        sections, pages = self._layout()
        image = bytearray(len(pages) << PAGE_SHIFT)
        for index, section in enumerate(self.elf.iter_sections()):
            if index in self.addresses and section["sh_type"] != "SHT_NOBITS":
                at = self.addresses[index] - self.base
                image[at : at + section["sh_size"]] = section.data()
        symtab = self._symtab()
        for section in self.elf.iter_sections():
            target = section["sh_info"]
            if section["sh_type"] == "SHT_RELA" and target in self.addresses:
                raise ModuleError(
                    self.path,
                    "RELA relocations are not i386's (a 64-bit object?)",
                    section.name,
                )
            if section["sh_type"] == "SHT_REL" and target in self.addresses:
                self._apply(section, target, symtab, image)
        symbols, functions = self._symbols(symtab)
        declared = self._params()
        self._set_params(params, declared, symbols, image)
        return ModuleImage(
            module_name(self.path),
            str(self.path),
            self.base,
            bytes(image),
            tuple(sections),
            tuple(pages),
            symbols,
            self._exports(image),
            declared,
            tuple(functions),
            symbols.get(INIT_SYMBOL),
            symbols.get(CLEANUP_SYMBOL),
            dict(self.imports),
        )

    def _layout(self) -> tuple[list[PlacedSection], list[Prot]]:
        groups: dict[Prot, list[tuple[int, object]]] = {
            Prot.READ | Prot.EXEC: [],
            Prot.READ: [],
            Prot.READ | Prot.WRITE: [],
        }
        for index, section in enumerate(self.elf.iter_sections()):
            flags = section["sh_flags"]
            if not flags & SHF_ALLOC:
                continue
            prot = (
                Prot.READ | Prot.EXEC
                if flags & SHF_EXECINSTR
                else Prot.READ | Prot.WRITE
                if flags & SHF_WRITE
                else Prot.READ
            )
            groups[prot].append((index, section))
        # .text first: a kmod probe's offset is relative to the start of the module's code
        groups[Prot.READ | Prot.EXEC].sort(key=lambda item: item[1].name != ".text")
        placed: list[PlacedSection] = []
        pages: list[Prot] = []
        for prot, members in groups.items():
            offset = len(pages) << PAGE_SHIFT
            start = offset
            for index, section in members:
                align = max(section["sh_addralign"], 1)
                offset = (offset + align - 1) // align * align
                self.addresses[index] = self.base + offset
                placed.append(
                    PlacedSection(section.name, self.base + offset, section["sh_size"], prot)
                )
                offset += section["sh_size"]
            pages += [prot] * (page_up(offset - start) >> PAGE_SHIFT)
        return placed, pages

    def _symtab(self):
        tables = [
            index
            for index, section in enumerate(self.elf.iter_sections())
            if section["sh_type"] == "SHT_SYMTAB"
        ]
        if len(tables) != 1:
            raise ModuleError(self.path, f"{len(tables)} symbol tables (.symtab), expected one")
        self.symtab_index = tables[0]
        return self.elf.get_section(tables[0])

    def _symbol_address(self, symbol, section: str, offset: int) -> int:
        """Where ``symbol`` is; ``section``/``offset`` name the reference, for errors."""
        shndx, name = symbol["st_shndx"], symbol.name
        if shndx == "SHN_UNDEF":
            if not name:
                raise ModuleError(self.path, "relocation against the null symbol", section, offset)
            address = self.lookup(name)
            if address is None:
                raise ModuleError(self.path, f"unknown symbol {name}", section, offset)
            self.imports[name] = address
            return address
        if shndx == "SHN_ABS":
            return symbol["st_value"]
        if shndx == "SHN_COMMON":
            raise ModuleError(
                self.path, f"common symbol {name}: build with -fno-common", section, offset
            )
        if not isinstance(shndx, int) or shndx not in self.addresses:
            raise ModuleError(
                self.path,
                f"symbol {name or '(section)'} is in section {shndx}, which is not loaded",
                section,
                offset,
            )
        return self.addresses[shndx] + symbol["st_value"]

    def _apply(self, rel, target_index: int, symtab, image: bytearray) -> None:
        if rel["sh_link"] != self.symtab_index:
            raise ModuleError(self.path, "relocations do not use .symtab", rel.name)
        target, where = self.elf.get_section(target_index), self.addresses[target_index]
        size, count = target["sh_size"], symtab.num_symbols()
        for entry in rel.iter_relocations():
            offset, kind, index = entry["r_offset"], entry["r_info_type"], entry["r_info_sym"]
            if kind == R_386_NONE:
                continue
            if kind not in (R_386_32, R_386_PC32, R_386_PLT32):
                name = RELOCATION_NAMES.get(kind, f"type {kind}")
                hint = ": build with -fno-pic" if kind in _PIC_TYPES else ""
                raise ModuleError(
                    self.path, f"unsupported relocation {name}{hint}", target.name, offset
                )
            if offset + 4 > size or target["sh_type"] == "SHT_NOBITS":
                raise ModuleError(
                    self.path, "relocation outside its section's bytes", target.name, offset
                )
            if index >= count:
                raise ModuleError(
                    self.path, f"relocation symbol {index} out of range", target.name, offset
                )
            value = self._symbol_address(symtab.get_symbol(index), target.name, offset)
            place = where + offset
            at = place - self.base
            (addend,) = struct.unpack_from("<I", image, at)  # REL: the addend is in place
            result = value + addend - (place if kind != R_386_32 else 0)
            struct.pack_into("<I", image, at, result & 0xFFFFFFFF)

    def _symbols(self, symtab) -> tuple[dict[str, int], list[int]]:
        symbols: dict[str, int] = {}
        functions: list[int] = []
        ranked = sorted(symtab.iter_symbols(), key=lambda s: s["st_info"]["bind"] == "STB_LOCAL")
        for symbol in ranked:
            kind = symbol["st_info"]["type"]
            shndx = symbol["st_shndx"]
            if not symbol.name or kind in ("STT_SECTION", "STT_FILE"):
                continue
            if not isinstance(shndx, int) or shndx not in self.addresses:
                continue
            address = self.addresses[shndx] + symbol["st_value"]
            symbols.setdefault(symbol.name, address)
            if kind == "STT_FUNC":
                functions.append(address - self.base)
        return symbols, functions

    def _section_bytes(self, image: bytearray, name: str) -> bytes | None:
        section = self.elf.get_section_by_name(name)
        if section is None:
            return None
        index = next(i for i, s in enumerate(self.elf.iter_sections()) if s.name == name)
        if index not in self.addresses:
            return section.data()
        at = self.addresses[index] - self.base
        return bytes(image[at : at + section["sh_size"]])

    def _exports(self, image: bytearray) -> dict[str, int]:
        table = self._section_bytes(image, EXPORTS_SECTION)
        if table is None:
            return {}
        if len(table) % 8:
            raise ModuleError(self.path, "size is not a multiple of 8", EXPORTS_SECTION)
        exports = {}
        for at in range(0, len(table), 8):
            value, name_at = struct.unpack_from("<II", table, at)
            start = name_at - self.base
            end = image.find(b"\0", start) if 0 <= start < len(image) else -1
            if end < 0:
                raise ModuleError(self.path, "export name outside the module", EXPORTS_SECTION, at)
            exports[image[start:end].decode(errors="replace")] = value
        return exports

    def _params(self) -> dict[str, str]:
        section = self.elf.get_section_by_name(MODINFO_SECTION)
        declared = {}
        for entry in (section.data() if section is not None else b"").split(b"\0"):
            text = entry.decode(errors="replace")
            if text.startswith("parm_") and "=" in text:
                name, kind = text[len("parm_") :].split("=", 1)
                declared[name] = kind
        return declared

    def _set_params(
        self,
        params: Mapping[str, str],
        declared: Mapping[str, str],
        symbols: Mapping[str, int],
        image: bytearray,
    ) -> None:
        for name, text in params.items():
            kind = declared.get(name)
            if kind is None:
                raise ModuleError(self.path, f"no parameter {name} (MODULE_PARM)")
            if kind != "i" or name not in symbols:
                raise ModuleError(self.path, f"parameter {name} of type {kind!r} is not supported")
            try:
                value = int(text, 0)
            except ValueError:
                raise ModuleError(self.path, f"parameter {name}={text}: not an integer") from None
            struct.pack_into("<I", image, symbols[name] - self.base, value & 0xFFFFFFFF)


@dataclass
class LoadedModule:
    """A module in kernel memory: its image and the frames behind its pages."""

    image: ModuleImage
    frames: list[int]
    live: bool = False
    """init_module has returned 0 (before that the module is only placed)."""
    users: set[str] = field(default_factory=set)
    """Loaded modules that link against this one's exports (rmmod refuses while any)."""

    @property
    def name(self) -> str:
        return self.image.name

    @property
    def base(self) -> int:
        return self.image.base

    @property
    def end(self) -> int:
        return self.image.base + self.image.size

    def __contains__(self, address: int) -> bool:
        return self.base <= address < self.end


ModuleCall = Callable[[LoadedModule], int]
"""Runs a module entry point (init or cleanup) and returns its result (eax)."""


class ModuleLoader:
    """insmod and rmmod: modules placed in the module area of the shared kernel pages.

    ``kernel_symbols`` resolves a module's undefined symbols first (the kernel image's
    exported symbols), then the exports of the loaded modules. ``on_placed`` hooks run
    after a module is in memory and before its init runs; ``on_unloaded`` hooks run
    before its memory is freed (on rmmod, or when init failed).
    """

    def __init__(
        self,
        memory: PhysicalMemory,
        kernel: KernelPages,
        invalidate_code: Callable[[int, int], None],
        kernel_symbols: SymbolLookup = lambda name: None,
    ) -> None:
        self.memory, self.kernel, self.invalidate_code = memory, kernel, invalidate_code
        self.kernel_symbols = kernel_symbols
        self.loaded: dict[str, LoadedModule] = {}
        self.on_placed: list[Callable[[LoadedModule], None]] = []
        self.on_unloaded: list[Callable[[LoadedModule], None]] = []
        self._next = MODULE_AREA[0]

    def lookup(self, name: str) -> int | None:
        address = self.kernel_symbols(name)
        if address is not None:
            return address
        return next(
            (m.image.exports[name] for m in self.loaded.values() if name in m.image.exports), None
        )

    def module_at(self, address: int) -> LoadedModule | None:
        return next((m for m in self.loaded.values() if address in m), None)

    def insmod(
        self, path: str | Path, run_init: ModuleCall, params: Mapping[str, str] | None = None
    ) -> LoadedModule:
        """Place the module, then run its init; a non-zero result frees it again and
        raises ``ModuleInitError``."""
        module = self.place(path, params)
        self.initialised(module, run_init(module) if module.image.init is not None else 0)
        return module

    def initialised(self, module: LoadedModule, status: int) -> None:
        """Its init returned ``status`` (eax): 0 makes it live, anything else frees it and
        raises ``ModuleInitError``."""
        if status:
            self.free(module)
            raise ModuleInitError(
                module.image.path, ((status & 0xFFFFFFFF) ^ 0x80000000) - 0x80000000
            )
        module.live = True

    def place(
        self, path: str | Path, params: Mapping[str, str] | None = None, data: bytes | None = None
    ) -> LoadedModule:
        """Relocate and map the module (its init not yet run), then fire ``on_placed``;
        ``data``: the object's bytes when they do not come from the file ``path``."""
        name = module_name(path)
        if name in self.loaded:
            raise ModuleError(path, f"a module named {name} is already loaded")
        image = relocate(path, self._next, self.lookup, params, data)
        if image.base + image.size > MODULE_AREA[1]:
            raise ModuleError(path, "the module area is full")
        frames: list[int] = []
        for number, prot in enumerate(image.pages):
            try:
                frame = self.memory.alloc()
            except OutOfFrames:
                self._release(image.base, frames)
                raise ModuleError(path, self.memory.exhausted()) from None
            frames.append(frame)
            self.memory.write(
                frame << PAGE_SHIFT, image.data[number << PAGE_SHIFT : (number + 1) << PAGE_SHIFT]
            )
            if prot & Prot.EXEC:
                self.memory.mark_code(frame)
            self.kernel.map(image.base + (number << PAGE_SHIFT), frame, prot)
        self._next = image.base + image.size + PAGE_SIZE
        module = LoadedModule(image, frames)
        for used in image.imports:
            for other in self.loaded.values():
                if used in other.image.exports:
                    other.users.add(name)
        self.loaded[name] = module
        for hook in self.on_placed:
            hook(module)
        return module

    def rmmod(self, name: str, run_cleanup: ModuleCall) -> None:
        """Run the module's cleanup and free it; refused while other modules use it."""
        module = self.removable(name)
        if module.image.cleanup is not None:
            run_cleanup(module)
        self.free(module)

    def removable(self, name: str) -> LoadedModule:
        """The loaded module ``name`` if nothing uses it (else ModuleError)."""
        module = self.loaded.get(name)
        if module is None or not module.live:
            raise ModuleError(name, "no such module is loaded")
        if module.users:
            raise ModuleError(name, f"in use by {', '.join(sorted(module.users))}")
        return module

    def free(self, module: LoadedModule) -> None:
        for hook in self.on_unloaded:
            hook(module)
        self._release(module.base, module.frames)
        del self.loaded[module.name]
        for other in self.loaded.values():
            other.users.discard(module.name)

    def _release(self, base: int, frames: list[int]) -> None:
        for number, frame in enumerate(frames):
            self.kernel.unmap(base + (number << PAGE_SHIFT))
            self.invalidate_code(frame << PAGE_SHIFT, PAGE_SIZE)
            self.memory.put(frame)

    def physical(self, address: int) -> int:
        """The physical address of kernel virtual ``address`` in a placed module."""
        found = self.kernel.translate(address, Prot.READ, user=False)
        if found is None or self.module_at(address) is None:
            raise ValueError(f"0x{address:x} is not in a loaded module")
        return found[0] << PAGE_SHIFT | (address & PAGE_MASK)
