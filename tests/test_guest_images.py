"""The committed guest test programs (guest/bin): they are i386 ELF executables with the
symbols the runtime tests name, they print what the sources compute (checked under qemu-i386
when it is installed), and a fresh build gives the same bytes (when gcc -m32 works)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from fractions import Fraction
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from dprobes.tests.guest_expectations import (
    ARGS_STATUS,
    BIN,
    BOUND_STDOUT,
    GUEST,
    PROGRAMS,
    QEMU,
    RUNS,
    args_expected,
    ext_bits,
    ext_round,
    ext_sqrt,
    run_under_qemu,
)

# Symbols other tests may probe, with their symbol type.
SYMBOLS = {
    "spin": {"main": "STT_FUNC", "tick": "STT_FUNC", "ticks": "STT_OBJECT"},
    "bigmem": {"main": "STT_FUNC"},
    "loop": {
        "_start": "STT_FUNC",
        "main": "STT_FUNC",
        "work": "STT_FUNC",
        "add3": "STT_FUNC",
        "calls": "STT_OBJECT",
        "marker": "STT_OBJECT",
    },
    "strings": {
        "main": "STT_FUNC",
        "str_len": "STT_FUNC",
        "mem_copy": "STT_FUNC",
        "str_reverse": "STT_FUNC",
        "str_upper": "STT_FUNC",
        "str_find": "STT_FUNC",
    },
    "recurse": {
        "main": "STT_FUNC",
        "fib": "STT_FUNC",
        "ackermann": "STT_FUNC",
        "depth": "STT_OBJECT",
        "max_depth": "STT_OBJECT",
        "ncalls": "STT_OBJECT",
    },
    "fpu": {
        "main": "STT_FUNC",
        "harmonic": "STT_FUNC",
        "x87_sqrt": "STT_FUNC",
        "sse_basel": "STT_FUNC",
        "sse_sqrt": "STT_FUNC",
        "sse_mxcsr": "STT_FUNC",
    },
    "bound": {
        "_start": "STT_FUNC",
        "bound_ok": "STT_NOTYPE",
        "bound_fail": "STT_NOTYPE",
        "limits": "STT_NOTYPE",
    },
    "args": {"_start": "STT_FUNC", "main": "STT_FUNC"},
    "filter": {"main": "STT_FUNC", "same": "STT_FUNC"},
    "hello_glibc": {
        "_start": "STT_FUNC",
        "main": "STT_FUNC",
        "printf": "STT_FUNC",
        "malloc": "STT_FUNC",
    },
}
PUSH_EBP_MOV_ESP_EBP = bytes([0x55, 0x89, 0xE5])


def test_python_models_match_known_values() -> None:
    """The rounding models in guest_expectations, against values known independently."""
    assert ext_bits(ext_sqrt(2)) == "0x3fff 0xb504f333f9de6484"  # sqrt(2) in 64 bits
    assert ext_bits(Fraction(1)) == "0x3fff 0x8000000000000000"
    assert ext_round(Fraction(1, 3)) == Fraction(0xAAAAAAAAAAAAAAAB, 2**65)
    assert ext_sqrt(4) == 2 and ext_sqrt(9) == 3


# --- (a) the images -----------------------------------------------------------------------


@pytest.mark.parametrize("name", PROGRAMS)
def test_image_is_static_i386_executable(name: str) -> None:
    path = BIN / name
    assert path.is_file(), f"{path} missing: run 'make -C guest' and commit guest/bin"
    with path.open("rb") as f:
        elf = ELFFile(f)
        assert elf.elfclass == 32 and elf.little_endian
        assert elf["e_machine"] == "EM_386"
        assert elf["e_type"] == "ET_EXEC"
        kinds = {seg["p_type"] for seg in elf.iter_segments()}
        assert "PT_INTERP" not in kinds and "PT_DYNAMIC" not in kinds  # static, not PIE
        assert elf.get_section_by_name(".note.gnu.build-id") is None
        assert elf.has_dwarf_info()
        for cu in elf.get_dwarf_info().iter_CUs():
            comp_dir = cu.get_top_DIE().attributes["DW_AT_comp_dir"].value.decode()
            assert comp_dir == "./guest", "absolute build path leaked into DWARF"
        symtab = elf.get_section_by_name(".symtab")
        for sym_name, kind in SYMBOLS[name].items():
            found = symtab.get_symbol_by_name(sym_name)
            assert found, f"{name}: no symbol {sym_name}"
            assert found[0]["st_info"]["type"] == kind, f"{name}: {sym_name}"
    limit = 1_000_000 if name == "hello_glibc" else 64_000
    assert path.stat().st_size < limit


@pytest.mark.parametrize(
    ("name", "functions"),
    [
        ("loop", ["work", "add3", "main"]),
        ("recurse", ["fib", "ackermann"]),
        ("strings", ["str_len", "mem_copy", "str_find"]),
    ],
)
def test_functions_start_with_frame_pointer_prologue(name: str, functions: list[str]) -> None:
    with (BIN / name).open("rb") as f:
        elf = ELFFile(f)
        symtab = elf.get_section_by_name(".symtab")
        for fn in functions:
            addr = symtab.get_symbol_by_name(fn)[0]["st_value"]
            (offset,) = list(elf.address_offsets(addr, 3))
            f.seek(offset)
            assert f.read(3) == PUSH_EBP_MOV_ESP_EBP, f"{name}: {fn}"


# --- (b) run under qemu-i386 --------------------------------------------------------------

needs_qemu = pytest.mark.skipif(QEMU is None, reason="qemu-i386 not on PATH (Debian: qemu-user)")


@needs_qemu
@pytest.mark.parametrize("case", sorted(RUNS))
def test_runs_under_qemu(case: str) -> None:
    args, expected, status = RUNS[case]
    result = run_under_qemu(case.split("-")[0], args)
    out, err = expected()
    assert result.stdout == out
    assert result.stderr == err
    assert result.returncode == status


@needs_qemu
def test_args_under_qemu() -> None:
    env = {"A": "1", "DPROBES": "yes", "EMPTY": ""}
    argv = [str(BIN / "args"), "one", "two words", ""]
    result = run_under_qemu("args", argv[1:], env)
    assert (result.stdout, result.stderr) == args_expected(argv, env)
    assert result.returncode == ARGS_STATUS


@needs_qemu
def test_bound_dies_with_sigsegv() -> None:
    result = run_under_qemu("bound")
    assert result.stdout == BOUND_STDOUT
    assert result.returncode == -11


# --- (c) reproducible build ---------------------------------------------------------------


def gcc_m32_works() -> bool:
    if shutil.which("gcc") is None or shutil.which("make") is None:
        return False
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "probe.c"
        src.write_text("int main(void) { return 0; }\n")
        probe = subprocess.run(
            ["gcc", "-m32", "-static", "-o", str(Path(tmp) / "probe"), str(src)],
            capture_output=True,
            check=False,
        )
        return probe.returncode == 0


def test_build_is_reproducible() -> None:
    if not gcc_m32_works():
        pytest.skip("gcc -m32 cannot build (Debian: gcc-multilib)")
    result = subprocess.run(
        ["sh", str(GUEST / "check-reproducible.sh")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "MAKEFLAGS": ""},
        check=False,
    )
    assert result.returncode == 0, result.stderr
