"""The committed guest test programs (guest/bin): they are i386 ELF executables with the
symbols the runtime tests name, they print what the sources compute (checked under qemu-i386
when it is installed), and a fresh build gives the same bytes (when gcc -m32 works)."""

from __future__ import annotations

import math
import os
import resource
import shutil
import struct
import subprocess
import tempfile
from fractions import Fraction
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

GUEST = Path(__file__).resolve().parents[1] / "guest"
BIN = GUEST / "bin"
FREESTANDING = ["loop", "strings", "recurse", "fpu", "bound", "args"]
PROGRAMS = [*FREESTANDING, "hello_glibc"]

# Symbols other tests may probe, with their symbol type.
SYMBOLS = {
    "loop": {"_start": "STT_FUNC", "main": "STT_FUNC", "work": "STT_FUNC", "add3": "STT_FUNC",
             "calls": "STT_OBJECT", "marker": "STT_OBJECT"},
    "strings": {"main": "STT_FUNC", "str_len": "STT_FUNC", "mem_copy": "STT_FUNC",
                "str_reverse": "STT_FUNC", "str_upper": "STT_FUNC", "str_find": "STT_FUNC"},
    "recurse": {"main": "STT_FUNC", "fib": "STT_FUNC", "ackermann": "STT_FUNC",
                "depth": "STT_OBJECT", "max_depth": "STT_OBJECT", "ncalls": "STT_OBJECT"},
    "fpu": {"main": "STT_FUNC", "harmonic": "STT_FUNC", "x87_sqrt": "STT_FUNC",
            "sse_basel": "STT_FUNC", "sse_sqrt": "STT_FUNC", "sse_mxcsr": "STT_FUNC"},
    "bound": {"_start": "STT_FUNC", "bound_ok": "STT_NOTYPE", "bound_fail": "STT_NOTYPE",
              "limits": "STT_NOTYPE"},
    "args": {"_start": "STT_FUNC", "main": "STT_FUNC"},
    "hello_glibc": {"_start": "STT_FUNC", "main": "STT_FUNC", "printf": "STT_FUNC",
                    "malloc": "STT_FUNC"},
}
PUSH_EBP_MOV_ESP_EBP = bytes([0x55, 0x89, 0xE5])


# --- what the programs compute, in Python -------------------------------------------------

def loop_expected() -> tuple[str, str]:
    """loop.c: checksum = sum of work(i) = i*7 + (i & 15) for i < 100000, modulo 2**32."""
    total = sum(i * 7 + (i & 15) for i in range(100_000)) % 2**32
    out = f"iterations 100000\nchecksum {total} 0x{total:08x}\ncalls 100000\n"
    for a, b, c in [(1, 2, 3), (10, 20, 30), (-5, 100, 7)]:
        out += f"add3({a}, {b}, {c}) = {a + b + c}\n"
    return out, "loop: done\n"


def strings_expected(words: list[str]) -> tuple[str, str]:
    """strings.c: length, reverse, ASCII upper case and the index of "robe" of each word."""
    out = err = ""
    for w in words:
        at = w.find("robe")
        out += (f'input   "{w}"\nlength  {len(w)}\nreverse "{w[::-1]}"\n'
                f'upper   "{w.upper()}"\nfind    {at}\n')
        if at < 0:
            err += f'strings: "robe" not in "{w}"\n'
    return out, err


def recurse_expected() -> tuple[str, str]:
    """recurse.c: fib(20) and ackermann(2, 3), counting calls and the deepest nesting."""
    stats = {"depth": 0, "max": 0, "calls": 0}

    def enter() -> None:
        stats["calls"] += 1
        stats["depth"] += 1
        stats["max"] = max(stats["max"], stats["depth"])

    def fib(n: int) -> int:
        enter()
        r = n if n < 2 else fib(n - 1) + fib(n - 2)
        stats["depth"] -= 1
        return r

    def ack(m: int, n: int) -> int:
        enter()
        if m == 0:
            r = n + 1
        elif n == 0:
            r = ack(m - 1, 1)
        else:
            r = ack(m - 1, ack(m, n - 1))
        stats["depth"] -= 1
        return r

    out = err = ""
    for name, run in [("fib(20)", lambda: fib(20)), ("ackermann(2, 3)", lambda: ack(2, 3))]:
        stats.update(depth=0, max=0, calls=0)
        value = run()
        out += f"{name} = {value}\n"
        err += f"{name}: calls {stats['calls']}, max depth {stats['max']}\n"
    return out, err


def ext_round(x: Fraction) -> Fraction:
    """Round a positive rational to the x87 extended format (64-bit significand), nearest
    even: what every x87 +, -, *, /, fsqrt does with the default control word 0x37f."""
    e = x.numerator.bit_length() - x.denominator.bit_length()
    if Fraction(2) ** e > x:
        e -= 1
    scaled = x / Fraction(2) ** (e - 63)  # in [2**63, 2**64)
    q, r = divmod(scaled.numerator, scaled.denominator)
    if 2 * r > scaled.denominator or (2 * r == scaled.denominator and q & 1):
        q += 1
    return q * Fraction(2) ** (e - 63)


def ext_bits(x: Fraction) -> str:
    """The sign/exponent word and the 64-bit significand of a positive extended value."""
    e = x.numerator.bit_length() - x.denominator.bit_length()
    if Fraction(2) ** e > x:
        e -= 1
    mantissa = x / Fraction(2) ** (e - 63)
    assert mantissa.denominator == 1
    return f"0x{16383 + e:04x} 0x{mantissa.numerator:016x}"


def ext_sqrt(n: int) -> Fraction:
    """fsqrt(n), correctly rounded (sqrt of a non-square integer is never a tie)."""
    e = (n.bit_length() - 1) // 2 if n > 1 else 0
    radicand = n << 2 * (63 - e)  # sqrt(n) * 2**(63 - e) = isqrt(radicand) + fraction
    q = math.isqrt(radicand)
    if (2 * q + 1) ** 2 < 4 * radicand:
        q += 1
    return q * Fraction(2) ** (e - 63)


def double_bits(v: float) -> str:
    return "0x" + struct.pack(">d", v).hex()


def fpu_expected() -> tuple[str, str]:
    """fpu.c: x87 harmonic(1000) and sqrt(2) in long double, SSE2 sum of 1/k**2 and sqrt(3) in
    double (Python floats are IEEE doubles, rounded exactly like SSE2)."""
    h = Fraction(0)
    for k in range(1, 1001):
        h = ext_round(h + ext_round(Fraction(1, k)))
    root2 = ext_sqrt(2)
    basel = 0.0
    for k in range(1, 1001):
        basel += 1.0 / (k * k)
    root3 = math.sqrt(3.0)
    out = (
        "x87 control word 0x037f\nsse mxcsr 0x1f80\n"
        f"x87 harmonic(1000) bits {ext_bits(h)}\n"
        f"x87 harmonic(1000)*1e8 {math.trunc(ext_round(h * 10**8))}\n"
        f"x87 sqrt(2) bits {ext_bits(root2)}\n"
        f"x87 sqrt(2)*1e9 {math.trunc(ext_round(root2 * 10**9))}\n"
        f"sse basel(1000) bits {double_bits(basel)}\n"
        f"sse basel(1000)*1e6 {int(basel * 1e6)}\n"
        f"sse sqrt(3) bits {double_bits(root3)}\n"
        f"sse sqrt(3)*1e9 {int(root3 * 1e9)}\n"
    )
    return out, ""


def args_expected(argv: list[str], env: dict[str, str]) -> tuple[str, str]:
    out = f"argc {len(argv)}\n"
    out += "".join(f"argv[{i}] {a}\n" for i, a in enumerate(argv))
    return out + f"envc {len(env)}\n", ""


def hello_expected() -> tuple[str, str]:
    greeting = "hello from glibc"
    out = (f"{greeting}\nstrlen {len(greeting)}\n"
           f"sum of squares below 10: {sum(i * i for i in range(10))}\n"
           f"sqrt(2) {math.sqrt(2.0):.6f}\nhypot(3, 4) {math.hypot(3.0, 4.0):.1f}\n")
    return out, "hello_glibc: exiting with 3\n"


def test_python_models_match_known_values() -> None:
    """The rounding models above, against values known independently."""
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


@pytest.mark.parametrize(("name", "functions"), [
    ("loop", ["work", "add3", "main"]),
    ("recurse", ["fib", "ackermann"]),
    ("strings", ["str_len", "mem_copy", "str_find"]),
])
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

QEMU = shutil.which("qemu-i386")
needs_qemu = pytest.mark.skipif(QEMU is None, reason="qemu-i386 not on PATH (Debian: qemu-user)")


def run(name: str, args: list[str] | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    def no_core() -> None:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    with tempfile.TemporaryDirectory() as cwd:
        return subprocess.run([QEMU, str(BIN / name), *(args or [])], capture_output=True,
                              text=True, timeout=20, env=env if env is not None else {},
                              cwd=cwd, preexec_fn=no_core, check=False)


RUNS = {
    "loop": ([], loop_expected, 7),
    "strings": ([], lambda: strings_expected(["Dynamic Probes", "kernel probe", "hello"]), 11),
    "strings-argv": (["abc", "Probes"], lambda: strings_expected(["abc", "Probes"]), 11),
    "recurse": ([], recurse_expected, 13),
    "fpu": ([], fpu_expected, 17),
    "hello_glibc": ([], hello_expected, 3),
}


@needs_qemu
@pytest.mark.parametrize("case", sorted(RUNS))
def test_runs_under_qemu(case: str) -> None:
    args, expected, status = RUNS[case]
    result = run(case.split("-")[0], args)
    out, err = expected()
    assert result.stdout == out
    assert result.stderr == err
    assert result.returncode == status


@needs_qemu
def test_args_under_qemu() -> None:
    env = {"A": "1", "DPROBES": "yes", "EMPTY": ""}
    argv = [str(BIN / "args"), "one", "two words", ""]
    result = run("args", argv[1:], env)
    assert (result.stdout, result.stderr) == args_expected(argv, env)
    assert result.returncode == 19


@needs_qemu
def test_bound_dies_with_sigsegv() -> None:
    result = run("bound")
    assert result.stdout == "bound: 5 in [0, 9]\n"
    assert result.returncode == -11


# --- (c) reproducible build ---------------------------------------------------------------

def gcc_m32_works() -> bool:
    if shutil.which("gcc") is None or shutil.which("make") is None:
        return False
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "probe.c"
        src.write_text("int main(void) { return 0; }\n")
        probe = subprocess.run(["gcc", "-m32", "-static", "-o", str(Path(tmp) / "probe"),
                                str(src)], capture_output=True, check=False)
        return probe.returncode == 0


def test_build_is_reproducible() -> None:
    if not gcc_m32_works():
        pytest.skip("gcc -m32 cannot build (Debian: gcc-multilib)")
    result = subprocess.run(["sh", str(GUEST / "check-reproducible.sh")], capture_output=True,
                            text=True, timeout=120, env={**os.environ, "MAKEFLAGS": ""},
                            check=False)
    assert result.returncode == 0, result.stderr
