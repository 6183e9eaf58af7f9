"""Tests for symbol tables: i386 ELF and System.map loading, bad files, merging, and the
location rules (user file offsets, kernel PAGE_OFFSET, kmod section offsets)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from dprobes.compiler.diagnostics import ByteLoc, DiagnosticSink, Severity, SourceLoc
from dprobes.compiler.symbols import Symbol, SymbolTable
from dprobes.elf import PF_R, PF_X, Segment
from dprobes.kernel_layout import KERNEL_BASE
from dprobes.vm.program import ModuleType

ET_REL, ET_EXEC = 1, 2
EM_386, EM_X86_64 = 3, 62
STT_NOTYPE, STT_OBJECT, STT_FUNC, STT_SECTION, STT_FILE = 0, 1, 2, 3, 4
STB_LOCAL, STB_GLOBAL = 0, 1
SHN_UNDEF, SHN_ABS = 0, 0xFFF1
TEXT = 1  # section index of .text in the files built below

BASE = 0x0804_8000
TEXT_OFFSET = 52 + 32  # ELF header, one program header
TEXT_SIZE = 32
SYMTAB_OFFSET = TEXT_OFFSET + TEXT_SIZE  # where the PT_LOAD file bytes end
BSS_SIZE = 0x100


def elf32(
    symbols: list[tuple[str, int, int, int, int]],
    *,
    e_type: int = ET_EXEC,
    machine: int = EM_386,
    ident: bytes = b"\x7fELF\x01\x01\x01",
    symbol_entry_size: int = 16,
) -> bytes:
    """A minimal valid i386 ELF: header, one PT_LOAD (for ET_EXEC), .text, .symtab, .strtab,
    .shstrtab. ``symbols`` are (name, value, type, binding, section index)."""
    strtab = b"\0"
    entries = [bytes(16)]
    for name, value, kind, bind, shndx in symbols:
        entries.append(struct.pack("<IIIBBH", len(strtab), value, 0, bind << 4 | kind, 0, shndx))
        strtab += name.encode() + b"\0"
    symtab = b"".join(entries)
    shstrtab = b"\0.text\0.symtab\0.strtab\0.shstrtab\0"
    names = [0, 1, 7, 15, 23]
    program_headers = 1 if e_type == ET_EXEC else 0
    text_offset = 52 + 32 * program_headers
    symtab_offset = text_offset + TEXT_SIZE
    strtab_offset = symtab_offset + len(symtab)
    shstrtab_offset = strtab_offset + len(strtab)
    section_offset = shstrtab_offset + len(shstrtab)
    text_address = BASE + text_offset if e_type == ET_EXEC else 0
    header = ident.ljust(16, b"\0") + struct.pack(
        "<HHIIIIIHHHHHH",
        e_type,
        machine,
        1,
        text_address,
        52 if program_headers else 0,
        section_offset,
        0,
        52,
        32,
        program_headers,
        40,
        5,
        4,
    )
    load = (
        struct.pack("<8I", 1, 0, BASE, BASE, symtab_offset, symtab_offset + BSS_SIZE, 5, 0x1000)
        if program_headers
        else b""
    )

    def section(
        index: int,
        kind: int,
        flags: int,
        address: int,
        offset: int,
        size: int,
        link: int = 0,
        info: int = 0,
        entsize: int = 0,
    ) -> bytes:
        return struct.pack(
            "<10I", names[index], kind, flags, address, offset, size, link, info, 1, entsize
        )

    sections = b"".join(
        (
            bytes(40),
            section(1, 1, 6, text_address, text_offset, TEXT_SIZE),
            section(2, 2, 0, 0, symtab_offset, len(symtab), 3, 1, symbol_entry_size),
            section(3, 3, 0, 0, strtab_offset, len(strtab)),
            section(4, 3, 0, 0, shstrtab_offset, len(shstrtab)),
        )
    )
    return header + load + bytes(TEXT_SIZE) + symtab + strtab + shstrtab + sections


EXEC_SYMBOLS = [
    ("main", BASE + TEXT_OFFSET, STT_FUNC, STB_GLOBAL, TEXT),
    ("helper", BASE + TEXT_OFFSET + 0x10, STT_FUNC, STB_LOCAL, TEXT),
    ("counter", BASE + SYMTAB_OFFSET + 0x10, STT_OBJECT, STB_GLOBAL, TEXT),  # in .bss
    ("far", 0x1000, STT_NOTYPE, STB_GLOBAL, SHN_ABS),
    ("dup", 1, STT_FUNC, STB_LOCAL, TEXT),
    ("dup", 2, STT_FUNC, STB_GLOBAL, TEXT),
    ("dup", 3, STT_FUNC, STB_LOCAL, TEXT),
    ("prog.c", 0, STT_FILE, STB_LOCAL, SHN_ABS),
    ("text_section", 0, STT_SECTION, STB_LOCAL, TEXT),
    ("printf", 0, STT_FUNC, STB_GLOBAL, SHN_UNDEF),
]


def write(tmp_path: Path, data: bytes, name: str = "prog") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def load_elf(tmp_path: Path, data: bytes) -> tuple[SymbolTable | None, DiagnosticSink]:
    sink = DiagnosticSink()
    return SymbolTable.from_elf(write(tmp_path, data), sink), sink


@pytest.fixture
def program(tmp_path: Path) -> SymbolTable:
    table, sink = load_elf(tmp_path, elf32(EXEC_SYMBOLS))
    assert table is not None and not sink.diagnostics
    return table


LOC = SourceLoc("t.rpn", 5, 10, 14)


def only_error(sink: DiagnosticSink) -> tuple[str, tuple[str, ...]]:
    (diagnostic,) = sink.diagnostics
    assert diagnostic.severity is Severity.ERROR and diagnostic.loc == LOC
    return diagnostic.message, diagnostic.hints


def test_elf_symbols_and_segments(program: SymbolTable) -> None:
    assert program.lookup("main") == Symbol("main", BASE + TEXT_OFFSET, ".text")
    assert program.lookup("far") == Symbol("far", 0x1000)
    assert program.lookup("dup") == Symbol("dup", 2, ".text")  # a global beats locals
    for skipped in ("prog.c", "text_section", "printf", ""):
        assert program.lookup(skipped) is None
    assert program.segments == (
        Segment("PT_LOAD", PF_R | PF_X, 0, BASE, SYMTAB_OFFSET, SYMTAB_OFFSET + BSS_SIZE),
    )
    assert len(program.sources) == 1


def test_user_offsets_are_file_offsets(program: SymbolTable) -> None:
    sink = DiagnosticSink()
    assert program.probe_offset("main", 0, ModuleType.USER, False, LOC, sink) == TEXT_OFFSET
    assert (
        program.probe_offset("helper", 2, ModuleType.USER, False, LOC, sink) == TEXT_OFFSET + 0x12
    )
    assert (
        program.probe_offset("main", 4, ModuleType.USER, True, LOC, sink) == BASE + TEXT_OFFSET + 4
    )
    assert not sink.diagnostics


@pytest.mark.parametrize(
    ("name", "address"), [("counter", BASE + SYMTAB_OFFSET + 0x10), ("far", 0x1000)]
)
def test_a_user_symbol_outside_the_file_bytes_is_an_error(
    program: SymbolTable, name: str, address: int
) -> None:
    sink = DiagnosticSink()
    assert program.probe_offset(name, 0, ModuleType.USER, False, LOC, sink) is None
    assert only_error(sink)[0] == (
        f"'{name}' ({address:#010x}) is not in the file bytes of a "
        "loaded segment (PT_LOAD) of the module"
    )


def test_user_offsets_need_program_headers() -> None:
    table = SymbolTable({"main": Symbol("main", 0x8048000)})
    sink = DiagnosticSink()
    assert table.probe_offset("main", 0, ModuleType.USER, False, LOC, sink) is None
    message, hints = only_error(sink)
    assert message == (
        "cannot turn 'main' into a file offset without the module's ELF program headers"
    )
    assert hints == ("a user probe offset is a file offset: give the module's ELF file",)


def test_kernel_offsets_count_from_page_offset() -> None:
    table = SymbolTable({"do_fork": Symbol("do_fork", 0xC011_0000), "low": Symbol("low", 0x1000)})
    sink = DiagnosticSink()
    assert table.probe_offset("do_fork", 5, ModuleType.KERNEL, False, LOC, sink) == 0x11_0005
    assert table.probe_offset("do_fork", -1, ModuleType.KERNEL, True, LOC, sink) == 0xC010_FFFF
    assert not sink.diagnostics
    assert table.probe_offset("low", 0, ModuleType.KERNEL, False, LOC, sink) is None
    message, hints = only_error(sink)
    assert message == f"'low' (0x00001000) is below the kernel's PAGE_OFFSET {KERNEL_BASE:#x}"
    assert hints == ("write 'address = absolute' to probe it by address",)


@pytest.fixture
def module(tmp_path: Path) -> SymbolTable:
    symbols = [
        ("init_thing", 0x8, STT_FUNC, STB_GLOBAL, TEXT),
        ("in_strtab", 0x4, STT_OBJECT, STB_LOCAL, 3),
        ("version", 0x42, STT_NOTYPE, STB_GLOBAL, SHN_ABS),
    ]
    table, sink = load_elf(tmp_path, elf32(symbols, e_type=ET_REL))
    assert table is not None and not sink.diagnostics
    assert table.segments == ()
    return table


def test_kmod_offsets_are_section_offsets(module: SymbolTable) -> None:
    sink = DiagnosticSink()
    assert module.probe_offset("init_thing", 3, ModuleType.KMOD, False, LOC, sink) == 0xB
    assert not sink.diagnostics
    assert module.probe_offset("in_strtab", 0, ModuleType.KMOD, False, LOC, sink) == 4
    (warning,) = sink.diagnostics
    assert warning.severity is Severity.WARNING and warning.loc == LOC
    assert warning.message == (
        "'in_strtab' is in section .strtab: its offset is taken from the start of that "
        "section, which is the module base only for the first section of the module (.text)"
    )


def test_kmod_absolute_symbols_are_not_module_offsets(module: SymbolTable) -> None:
    sink = DiagnosticSink()
    assert module.probe_offset("version", 0, ModuleType.KMOD, True, LOC, sink) == 0x42
    assert module.probe_offset("version", 0, ModuleType.KMOD, False, LOC, sink) is None
    message, hints = only_error(sink)
    assert message == "'version' is an address, not an offset in a module object"
    assert hints == (
        "a kmod probe offset needs the module's relocatable object file, or write "
        "'address = absolute'",
    )


@pytest.mark.parametrize("use", ["push", "absolute kmod", "kernel"])
def test_relocatable_symbols_have_no_address(module: SymbolTable, use: str) -> None:
    sink = DiagnosticSink()
    if use == "push":
        assert module.address("init_thing", 0, LOC, sink) is None
    else:
        modtype = ModuleType.KMOD if use == "absolute kmod" else ModuleType.KERNEL
        assert module.probe_offset("init_thing", 0, modtype, use != "kernel", LOC, sink) is None
    message, hints = only_error(sink)
    assert message == (
        "'init_thing' is in a relocatable object (.text) and has no address "
        "until the module is loaded"
    )
    assert hints == (
        "use it as a kmod probe offset, or give a --sym file with the loaded module's addresses",
    )


def test_push_address_adds_and_wraps(program: SymbolTable) -> None:
    sink = DiagnosticSink()
    assert program.address("main", 0x10, LOC, sink) == BASE + TEXT_OFFSET + 0x10
    assert program.address("far", -0x1001, LOC, sink) == 0xFFFF_FFFF
    assert not sink.diagnostics


def test_unknown_symbol_suggests_close_names(program: SymbolTable) -> None:
    sink = DiagnosticSink()
    assert program.address("mian", 0, LOC, sink, ("extra hint",)) is None
    assert only_error(sink) == ("unknown symbol 'mian'", ("extra hint", "did you mean 'main'?"))


def test_unknown_symbol_without_a_table() -> None:
    sink = DiagnosticSink()
    assert SymbolTable().probe_offset("x", 0, ModuleType.USER, False, LOC, sink) is None
    assert only_error(sink) == (
        "unknown symbol 'x'",
        ("no symbol table is loaded: give the module's ELF file or a System.map file (--sym)",),
    )


@pytest.mark.parametrize(
    ("data", "offset", "message"),
    [
        (b"#!/bin/sh\n", 0, "not an ELF file (no \\x7fELF magic at offset 0)"),
        (b"", 0, "not an ELF file (no \\x7fELF magic at offset 0)"),
        (
            b"\x7fELF\x02\x01\x01" + bytes(57),
            4,
            "64-bit ELF (ELFCLASS64): only 32-bit i386 (ELF32) files are supported",
        ),
        (b"\x7fELF\x03\x01\x01" + bytes(45), 4, "unknown ELF class 3"),
        (b"\x7fELF\x01\x02\x01" + bytes(45), 5, "big-endian ELF: i386 files are little-endian"),
        (
            b"\x7fELF\x01\x01\x01" + bytes(20),
            27,
            "truncated ELF file: 27 bytes, the ELF32 header alone needs 52",
        ),
        (elf32([], machine=EM_X86_64), 18, "ELF for machine 62 (x86-64), not i386 (EM_386)"),
        (
            elf32(EXEC_SYMBOLS, symbol_entry_size=8),
            SYMTAB_OFFSET,
            "malformed symbol table .symtab: entry size 8, expected 16",
        ),
        (
            elf32(EXEC_SYMBOLS, symbol_entry_size=0),
            0,
            "truncated or malformed ELF file: Expected entry size of section '.symtab' to be > 0",
        ),
    ],
    ids=[
        "script",
        "empty",
        "elf64",
        "class-3",
        "big-endian",
        "short",
        "x86-64",
        "entsize",
        "entsize-0",
    ],
)
def test_bad_elf_files(tmp_path: Path, data: bytes, offset: int, message: str) -> None:
    table, sink = load_elf(tmp_path, data)
    assert table is None
    (diagnostic,) = sink.diagnostics
    assert diagnostic.severity is Severity.ERROR
    assert diagnostic.loc == ByteLoc(str(tmp_path / "prog"), offset)
    assert diagnostic.message == message


def test_a_section_past_the_end_of_the_file(tmp_path: Path) -> None:
    data = bytearray(elf32(EXEC_SYMBOLS))
    section_table = struct.unpack_from("<I", data, 32)[0]
    struct.pack_into("<I", data, section_table + 2 * 40 + 20, 0x10000)  # .symtab size
    table, sink = load_elf(tmp_path, bytes(data))
    assert table is None
    (diagnostic,) = sink.diagnostics
    assert diagnostic.loc == ByteLoc(str(tmp_path / "prog"), len(data))
    assert diagnostic.message == (
        f"truncated ELF file: section .symtab ends at byte "
        f"{SYMTAB_OFFSET + 0x10000}, the file has {len(data)}"
    )


def test_every_truncation_is_one_clear_error(tmp_path: Path) -> None:
    data = elf32(EXEC_SYMBOLS)
    for length in range(0, len(data), 5):
        table, sink = load_elf(tmp_path, data[:length])
        assert table is None, length
        (diagnostic,) = sink.diagnostics
        assert diagnostic.severity is Severity.ERROR
        assert "truncated" in diagnostic.message or "not an ELF" in diagnostic.message, length


def test_an_unreadable_file(tmp_path: Path) -> None:
    sink = DiagnosticSink()
    assert SymbolTable.from_elf(str(tmp_path / "missing"), sink) is None
    assert SymbolTable.from_system_map(str(tmp_path / "missing"), sink) is None
    assert [d.message for d in sink] == [
        f"cannot read symbol file {tmp_path / 'missing'}: No such file or directory"
    ] * 2


SYSTEM_MAP = """\
c0100000 T _text
c0110000 T do_fork

c0200000 t local_and_global
c0200010 T local_and_global
c0200020 t local_and_global
00000000 U undefined_here
e0800000 t mod_func\t[dp_mod]
"""


def test_system_map(tmp_path: Path) -> None:
    sink = DiagnosticSink()
    table = SymbolTable.from_system_map(write(tmp_path, SYSTEM_MAP.encode(), "System.map"), sink)
    assert table is not None and not sink.diagnostics
    assert table.symbols == {
        "_text": Symbol("_text", 0xC010_0000),
        "do_fork": Symbol("do_fork", 0xC011_0000),
        "local_and_global": Symbol("local_and_global", 0xC020_0010),
        "mod_func": Symbol("mod_func", 0xE080_0000),
    }


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (
            "c0100000 T _text\nnot a map line\n",
            2,
            "not a System.map line: expected 'address type name'",
        ),
        (
            "ffffffff81000000 T _text\n",
            1,
            "address ffffffff81000000 does not fit 32 bits (a 64-bit System.map?)",
        ),
    ],
)
def test_bad_system_map_lines(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = write(tmp_path, text.encode(), "System.map")
    sink = DiagnosticSink()
    assert SymbolTable.from_system_map(path, sink) is None
    (diagnostic,) = sink.diagnostics
    assert (diagnostic.loc, diagnostic.message) == (SourceLoc(path, line, 1), message)


def test_merged_tables_prefer_the_first(program: SymbolTable) -> None:
    map_table = SymbolTable(
        {"main": Symbol("main", 1), "extra": Symbol("extra", 2)}, sources=("System.map",)
    )
    merged = SymbolTable.merged([program, map_table])
    assert merged.lookup("main") == program.lookup("main")
    assert merged.lookup("extra") == Symbol("extra", 2)
    assert merged.segments == program.segments
    assert merged.sources == (*program.sources, "System.map")
    assert SymbolTable.merged([map_table, program]).segments == program.segments
