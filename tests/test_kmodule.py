"""Kernel modules: relocation checked against GNU ld, the loader's errors, kmod probes.

The relocated bytes are compared with what ``ld`` produces when it links the same object
with the same section addresses and the same values for the kernel symbols, so a wrong
formula in ``runtime.kmodule`` cannot pass by agreeing with itself.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from dprobes.compiler.pipeline import BuildOptions, compile_rpn
from dprobes.runtime.kmodule import (
    MODULE_AREA,
    ModuleError,
    ModuleInitError,
    ModuleLoader,
    relocate,
)
from dprobes.runtime.machine import Machine
from dprobes.runtime.paging import KernelPages, Prot
from dprobes.runtime.physmem import MIN_SIZE, OutOfFrames, PhysicalMemory
from dprobes.runtime.probes import ProbeManager
from dprobes.runtime.records import RecordStatus

BIN = Path(__file__).resolve().parent.parent / "guest" / "bin"
HELLO, CHAINED = BIN / "hello.o", BIN / "chained.o"
KERNEL = {"printk": 0xC0101230, "jiffies": 0xC0204000}
"""Stand-in kernel symbol values (the guest kernel's own come from its image)."""
BASE = MODULE_AREA[0] + 0x30000
ENODEV = 19


def hello_exports() -> dict[str, int]:
    return dict(relocate(HELLO, MODULE_AREA[0], KERNEL.get).exports)


def needs(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed")
    return path


def ld_link(obj: Path, image, symbols: dict[str, int], out: Path) -> ELFFile:
    """``obj`` linked by ld with each section at the address our layout gave it."""
    lines = [f"  {s.name} 0x{s.address:x} : {{ *({s.name}) }}" for s in image.sections]
    script = out.with_suffix(".ld")
    script.write_text(
        "SECTIONS {\n"
        + "\n".join(lines)
        + "\n  /DISCARD/ : { *(.comment) *(.note.GNU-stack) }\n}\n"
    )
    defsyms = [f"--defsym={name}=0x{value:x}" for name, value in symbols.items()]
    subprocess.run(
        [needs("ld"), "-m", "elf_i386", "-T", str(script), *defsyms, "-o", str(out), str(obj)],
        check=True,
        capture_output=True,
    )
    return ELFFile(out.open("rb"))


@pytest.mark.parametrize("name", ["hello", "chained"])
def test_relocated_bytes_and_symbols_match_ld(name: str, tmp_path: Path) -> None:
    obj = BIN / f"{name}.o"
    symbols = {**KERNEL, **(hello_exports() if name == "chained" else {})}
    image = relocate(obj, BASE, symbols.get)
    linked = ld_link(obj, image, symbols, tmp_path / name)
    compared = 0
    for placed in image.sections:
        section = linked.get_section_by_name(placed.name)
        if section is None or section["sh_type"] == "SHT_NOBITS" or not placed.size:
            continue
        assert section["sh_addr"] == placed.address
        at = placed.address - BASE
        assert image.data[at : at + placed.size] == section.data(), placed.name
        compared += 1
    assert compared >= 3
    symtab = linked.get_section_by_name(".symtab")
    for symbol_name, address in image.symbols.items():
        (found,) = symtab.get_symbol_by_name(symbol_name)
        assert found["st_value"] == address, symbol_name
    assert image.init == symtab.get_symbol_by_name("init_module")[0]["st_value"]
    assert image.cleanup == symtab.get_symbol_by_name("cleanup_module")[0]["st_value"]


def test_text_comes_first_and_pages_carry_their_protection() -> None:
    image = relocate(HELLO, BASE, KERNEL.get)
    assert image.sections[0].name == ".text" and image.sections[0].address == BASE
    assert image.pages == (Prot.READ | Prot.EXEC, Prot.READ, Prot.READ | Prot.WRITE)
    assert image.data[image.init - BASE : image.init - BASE + 3] == b"\x55\x89\xe5"


def test_exports_and_parameters_are_read_from_the_object() -> None:
    image = relocate(HELLO, BASE, KERNEL.get)
    assert image.exports == {
        "hello_greet": image.symbols["hello_greet"],
        "hello_calls": image.symbols["hello_calls"],
    }
    chained = relocate(CHAINED, BASE, {**KERNEL, **image.exports}.get, {"fail": "1"})
    assert chained.params == {"fail": "i"}
    at = chained.symbols["fail"] - BASE
    assert struct.unpack_from("<i", chained.data, at) == (1,)
    assert set(chained.imports) == {"printk", "jiffies", "hello_greet", "hello_calls"}


def first_relocation(obj: Path, section: str, symbol: str) -> int:
    with obj.open("rb") as f:
        elf = ELFFile(f)
        rel = elf.get_section_by_name(f".rel{section}")
        symtab = elf.get_section(rel["sh_link"])
        return next(
            r["r_offset"]
            for r in rel.iter_relocations()
            if symtab.get_symbol(r["r_info_sym"]).name == symbol
        )


def test_unknown_symbol_names_the_file_section_and_offset() -> None:
    with pytest.raises(ModuleError) as caught:
        relocate(CHAINED, BASE, KERNEL.get)  # hello is not loaded: no hello_greet
    error = caught.value
    assert "unknown symbol hello_" in error.problem and error.path == str(CHAINED)
    name = error.problem.split()[-1]
    assert (error.section, error.offset) == (".text", first_relocation(CHAINED, ".text", name))
    assert f"offset 0x{error.offset:x}" in str(error)


def patched(tmp_path: Path, change) -> Path:
    """A copy of hello.o with the first .rel.text entry changed by ``change(r_offset,
    r_info) -> (r_offset, r_info)``."""
    data = bytearray(HELLO.read_bytes())
    with HELLO.open("rb") as f:
        at = ELFFile(f).get_section_by_name(".rel.text")["sh_offset"]
    struct.pack_into("<II", data, at, *change(*struct.unpack_from("<II", data, at)))
    out = tmp_path / "hello.o"
    out.write_bytes(bytes(data))
    return out


def test_unsupported_relocation_type_is_refused(tmp_path: Path) -> None:
    crafted = patched(tmp_path, lambda offset, info: (offset, info & ~0xFF | 20))  # R_386_16
    with pytest.raises(ModuleError, match=r"unsupported relocation R_386_16 \(section .text"):
        relocate(crafted, BASE, KERNEL.get)


def test_pic_object_is_refused_with_a_hint(tmp_path: Path) -> None:
    source = tmp_path / "pic.c"
    source.write_text("extern int counter;\nint bump(void) { return ++counter; }\n")
    obj = tmp_path / "pic.o"
    subprocess.run(
        [needs("gcc"), "-m32", "-O1", "-fpic", "-ffreestanding", "-c", str(source), "-o", str(obj)],
        check=True,
    )
    with pytest.raises(
        ModuleError, match=r"unsupported relocation R_386_GOT\w*: build with -fno-pic"
    ):
        relocate(obj, BASE, {"counter": 0xC0300000}.get)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: patched(tmp, lambda offset, info: (0x10000, info)), "outside its section"),
        (lambda tmp: patched(tmp, lambda offset, info: (offset, 0xFFFF01)), "out of range"),
        (lambda tmp: BIN / "loop", "not a relocatable object"),
        (lambda tmp: _write(tmp / "t.o", HELLO.read_bytes()[:40]), "truncated"),
        (lambda tmp: tmp / "missing.o", "No such file"),
    ],
)
def test_malformed_objects_give_a_clear_error(make, message: str, tmp_path: Path) -> None:
    with pytest.raises(ModuleError, match=message):
        relocate(make(tmp_path), BASE, KERNEL.get)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_unknown_or_bad_parameter_is_refused() -> None:
    with pytest.raises(ModuleError, match="no parameter loud"):
        relocate(HELLO, BASE, KERNEL.get, {"loud": "1"})
    with pytest.raises(ModuleError, match="not an integer"):
        relocate(CHAINED, BASE, {**KERNEL, **hello_exports()}.get, {"fail": "yes"})


# --- the loader ---------------------------------------------------------------------------


def loader_of(machine: Machine) -> ModuleLoader:
    machine.modules.kernel_symbols = KERNEL.get
    return machine.modules


def test_modules_are_mapped_as_supervisor_pages_and_freed_on_unload() -> None:
    machine = Machine()
    loader = loader_of(machine)
    before = machine.memory.in_use
    hello = loader.insmod(HELLO, lambda module: 0)
    assert hello.live and hello.base == MODULE_AREA[0]
    image = hello.image
    assert machine.cpu.kernel_read(hello.base, image.size) == image.data
    for number, prot in enumerate(image.pages):
        address = hello.base + number * 4096
        assert machine.kernel.translate(address, prot, user=False) is not None
        assert machine.kernel.translate(address, Prot.READ, user=True) is None  # supervisor
    assert machine.kernel.translate(hello.base, Prot.WRITE, user=False) is None  # text is RX
    chained = loader.insmod(CHAINED, lambda module: 0)
    assert chained.image.imports["hello_greet"] == image.exports["hello_greet"]
    with pytest.raises(ModuleError, match="in use by chained"):
        loader.rmmod("hello", lambda module: 0)
    cleaned = []
    loader.rmmod("chained", cleaned.append)
    loader.rmmod("hello", cleaned.append)
    assert [m.name for m in cleaned] == ["chained", "hello"]
    assert machine.memory.in_use == before and not loader.loaded
    assert machine.kernel.translate(hello.base, Prot.READ, user=False) is None


@pytest.mark.parametrize("eax", [(-ENODEV) & 0xFFFFFFFF, -ENODEV])
def test_failed_init_frees_the_module(eax: int) -> None:
    machine = Machine()
    loader = loader_of(machine)
    loader.insmod(HELLO, lambda module: 0)
    before = machine.memory.in_use
    with pytest.raises(ModuleInitError) as caught:
        loader.insmod(CHAINED, lambda module: eax, {"fail": "1"})
    assert caught.value.status == -ENODEV
    assert "chained" not in loader.loaded and machine.memory.in_use == before
    assert not loader.loaded["hello"].users


# --- kmod probes -----------------------------------------------------------------------


def kmod_program(obj: Path, *locations: str, opcode: int | None = 0x55):
    check = "" if opcode is None else f"opcode = 0x{opcode:x}\n"
    body = "".join(f"offset = {at}\n{check}    push 1\n    log 1\n    exit\n" for at in locations)
    source = f"name = {obj}\nmodtype = kmod\n{body}"
    return compile_rpn("k.rpn", BuildOptions(), text=source).program


def byte_at(machine: Machine, address: int) -> int:
    return machine.memory.bytes[machine.modules.physical(address)]


def test_kmod_probe_waits_is_planted_before_init_and_again_after_reload() -> None:
    machine = Machine()
    loader = loader_of(machine)
    manager = ProbeManager(machine)
    loaded = manager.insert(kmod_program(HELLO, "hello_init", "weight"))
    assert all(r.status == RecordStatus.COMPILED for r in loaded.records)
    assert all(r.notes == ["pending: module hello is not loaded"] for r in loaded.records)
    assert manager.query()[0].status == "compiled"

    seen_in_init = []

    def init(module) -> int:
        seen_in_init.append(
            [(r.status, r.address, byte_at(machine, r.address)) for r in loaded.records]
        )
        return 0

    first = loader.insmod(HELLO, init)
    init_at, weight_at = first.image.init, first.image.symbols["weight"]
    active = RecordStatus.COMPILED | RecordStatus.ACTIVE
    assert seen_in_init == [[(active, init_at, 0xCC), (active, weight_at, 0xCC)]]
    assert manager.kmod.lookup(init_at) == (loaded, loaded.records[0])
    assert loaded.records[0].original[:3] == b"\x55\x89\xe5"

    loader.rmmod("hello", lambda module: 0)
    assert all(not r.armed and r.address is None for r in loaded.records)
    assert loaded.records[0].notes == ["pending: module hello is not loaded"]
    assert not manager.kmod.by_address

    second = loader.insmod(HELLO, init)
    assert second.base != first.base  # placed elsewhere: the offsets are relative again
    assert seen_in_init[1][0] == (
        RecordStatus.COMPILED | RecordStatus.ACTIVE,
        second.image.init,
        0xCC,
    )
    manager.remove(loaded.name)
    assert byte_at(machine, second.image.init) == 0x55  # removal restores the byte
    assert loaded.records[0].status & RecordStatus.REMOVED


def test_kmod_probe_is_removed_when_init_fails() -> None:
    machine = Machine()
    loader = loader_of(machine)
    manager = ProbeManager(machine)
    loader.insmod(HELLO, lambda module: 0)
    loaded = manager.insert(kmod_program(CHAINED, "chained_check"))
    record = loaded.records[0]
    planted = []

    def init(module) -> int:
        planted.append((record.armed, byte_at(machine, record.address)))
        return (-ENODEV) & 0xFFFFFFFF

    with pytest.raises(ModuleInitError):
        loader.insmod(CHAINED, init, {"fail": "1"})
    assert planted == [(True, 0xCC)]
    assert not record.armed and record.address is None and not manager.kmod.by_address
    assert record.notes == ["pending: module chained is not loaded"]
    module = loader.insmod(CHAINED, lambda module: 0)  # the next load plants it again
    assert record.armed and byte_at(machine, record.address) == 0xCC
    assert record.address == module.image.symbols["chained_check"]


def test_kmod_probe_inserted_while_loaded_and_checked_against_the_module() -> None:
    machine = Machine()
    loader = loader_of(machine)
    manager = ProbeManager(machine)
    module = loader.insmod(HELLO, lambda module: 0)
    good = manager.insert(kmod_program(HELLO, "hello_greet"))
    assert good.records[0].armed and byte_at(machine, module.image.symbols["hello_greet"]) == 0xCC
    manager.remove(good.name)
    wrong = manager.insert(kmod_program(HELLO, "hello_init", opcode=0x90))
    assert wrong.records[0].status & RecordStatus.MISMATCH
    assert wrong.records[0].actual_opcode == 0x55
    manager.remove(wrong.name)
    after_push = manager.insert(kmod_program(HELLO, "hello_init+1", opcode=0x89))
    assert after_push.records[0].armed  # push %ebp is one byte: mov %esp,%ebp starts at +1
    manager.remove(after_push.name)
    split = manager.insert(kmod_program(HELLO, "hello_init+2", opcode=None))  # inside the mov
    assert split.records[0].status & RecordStatus.INVALID_OFFSET
    assert "instruction boundary" in split.records[0].notes[0]


def test_dpc_run_reports_a_kmod_program_whose_module_never_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dprobes.cli import main as cli

    source = tmp_path / "k.rpn"
    source.write_text(
        f"name = {HELLO}\nmodtype = kmod\noffset = hello_init\nopcode = 0x55\n"
        "    push 1\n    log 1\n    exit\n"
    )
    status = cli.main(["run", "--probes", str(source), "--query", "--", str(BIN / "args")])
    out, err = capsys.readouterr()
    assert status == 19 and "Traceback" not in out + err
    assert "hello_init: compiled count=0 hits=0 (pending: module hello is not loaded)" in out + err


def test_running_out_of_frames_undoes_the_placement() -> None:
    memory = PhysicalMemory(MIN_SIZE)
    taken = []
    with pytest.raises(OutOfFrames):
        while True:
            taken.append(memory.alloc())
    for frame in taken[-2:]:  # hello needs three pages: two are free
        memory.put(frame)
    kernel = KernelPages()
    loader = ModuleLoader(memory, kernel, lambda paddr, length: None, KERNEL.get)
    in_use = memory.in_use
    with pytest.raises(ModuleError, match="guest memory in use"):
        loader.place(HELLO)
    assert memory.in_use == in_use and not kernel.pages and not loader.loaded
