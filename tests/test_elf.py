"""The one ELF reader (``dprobes.elf``): a file is parsed once per content and shared by
the symbol table, the code map and the loader; a rewritten file is parsed again."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dprobes.compiler.pipeline import BuildOptions, compile_rpn
from dprobes.elf import PF_X, ElfError, read_elf
from dprobes.elf import reader as elf_reader
from dprobes.runtime.codemap import CodeMap
from dprobes.runtime.elfload import LoadError
from dprobes.runtime.machine import Machine
from dprobes.runtime.probes import ProbeManager
from dprobes.tests.guest_expectations import BIN

PROBE = """name = {path}
modtype = user
offset = add3
opcode = 0x55
    push r, eax
    log 1
    exit
"""


def test_a_file_is_parsed_once_per_content(tmp_path: Path) -> None:
    copy = tmp_path / "loop"
    shutil.copy(BIN / "loop", copy)
    first = read_elf(BIN / "loop")
    assert read_elf(BIN / "loop") is first
    assert read_elf(copy) is first  # same bytes, same parse
    data = bytearray(copy.read_bytes())
    data[first.entry - first.loads[0].vaddr + first.loads[0].offset - 1] ^= 0xFF
    copy.write_bytes(bytes(data))  # same size, rewritten in place
    again = read_elf(copy)
    assert again is not first and again.data == bytes(data)


def test_symbols_code_map_and_loader_share_one_parse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "loop"
    shutil.copy(BIN / "loop", path)
    path.write_bytes(path.read_bytes() + b"\0")  # content no other test has parsed
    parses = []

    class Counted(elf_reader.ElfFile):
        def __init__(self, data: bytes) -> None:
            parses.append(len(data))
            super().__init__(data)

    monkeypatch.setattr(elf_reader, "ElfFile", Counted)
    program = compile_rpn(
        "t.rpn", BuildOptions(elf=str(path)), text=PROBE.format(path=path)
    ).program
    machine = Machine()
    loaded = ProbeManager(machine).insert(program)
    assert loaded.records[0].armed
    process = machine.spawn(path)
    machine.run(max_instructions=50_000_000)
    assert process.returncode == 7
    assert parses == [path.stat().st_size]


def test_segment_offsets_and_addresses_are_inverse() -> None:
    elf = read_elf(BIN / "loop")
    (code,) = [s for s in elf.loads if s.flags & PF_X]
    for offset in (code.offset, code.offset + code.filesz - 1):
        address = code.address(offset)
        assert address is not None and code.file_offset(address) == offset
    assert code.address(code.offset + code.filesz) is None
    assert code.file_offset(code.vaddr - 1) is None
    codemap = CodeMap.load(BIN / "loop")
    assert codemap.segments == [code] and codemap.data is elf.data


def test_a_relocatable_object_is_read_but_not_run(tmp_path: Path) -> None:
    path = tmp_path / "module.o"
    data = bytearray((BIN / "loop").read_bytes())
    data[16] = 1  # e_type = ET_REL
    path.write_bytes(bytes(data))
    assert read_elf(path).type == "ET_REL"
    with pytest.raises(LoadError) as refused:
        Machine().spawn(path)
    assert refused.value.problem == "ELF type ET_REL is not an executable (ET_EXEC)"


def test_a_broken_section_table_fails_symbols_only(tmp_path: Path) -> None:
    path = tmp_path / "loop"
    data = bytearray((BIN / "loop").read_bytes())
    data[32:36] = (len(data) + 4096).to_bytes(4, "little")  # e_shoff past the end
    path.write_bytes(bytes(data))
    elf = read_elf(path)  # header and segments are fine: the loader can run it
    with pytest.raises(ElfError):
        _ = elf.symbols
    assert CodeMap.load(path).functions == []
