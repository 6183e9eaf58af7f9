"""What the guest programs in guest/bin print and return, computed in Python.

Shared by the tests that run the images: under qemu-i386 (``test_guest_images``) and in
the emulated machine (``test_runtime_machine``). Each ``*_expected`` function returns the
(stdout, stderr) the program must produce; ``RUNS`` lists the runs both suites make.
"""

from __future__ import annotations

import math
import resource
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

from elftools.elf.elffile import ELFFile

GUEST = Path(__file__).resolve().parents[1] / "guest"
BIN = GUEST / "bin"
FREESTANDING = ["loop", "strings", "recurse", "fpu", "bound", "args", "filter", "spin", "bigmem"]
PROGRAMS = [*FREESTANDING, "hello_glibc"]
QEMU = shutil.which("qemu-i386")


def symbol(program: str, name: str) -> tuple[int, int, int]:
    """(file offset, size, vaddr) of a symbol of a guest image."""
    with open(BIN / program, "rb") as stream:
        elf = ELFFile(stream)
        sym = next(s for s in elf.get_section_by_name(".symtab").iter_symbols() if s.name == name)
        seg = next(
            s
            for s in elf.iter_segments()
            if s["p_type"] == "PT_LOAD"
            and s["p_vaddr"] <= sym["st_value"] < s["p_vaddr"] + s["p_filesz"]
        )
        return seg["p_offset"] + sym["st_value"] - seg["p_vaddr"], sym["st_size"], sym["st_value"]


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
        out += (
            f'input   "{w}"\nlength  {len(w)}\nreverse "{w[::-1]}"\n'
            f'upper   "{w.upper()}"\nfind    {at}\n'
        )
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
    out = (
        f"{greeting}\nstrlen {len(greeting)}\n"
        f"sum of squares below 10: {sum(i * i for i in range(10))}\n"
        f"sqrt(2) {math.sqrt(2.0):.6f}\nhypot(3, 4) {math.hypot(3.0, 4.0):.1f}\n"
    )
    return out, "hello_glibc: exiting with 3\n"


def bigmem_expected(mib: int) -> tuple[str, str]:
    """bigmem.c: one word per page, ``off * 2654435761 + mib``, folded with rotate-xor."""
    size, total = mib << 20, 0
    for off in range(0, size, 4096):
        total = ((total << 1 | total >> 31) & 0xFFFFFFFF) ^ ((off * 2654435761 + mib) & 0xFFFFFFFF)
    return f"bigmem {mib} MiB pages {size // 4096} checksum 0x{total:08x}\n", ""


Run = tuple[list[str], Callable[[], tuple[str, str]], int]
RUNS: dict[str, Run] = {
    "loop": ([], loop_expected, 7),
    "strings": ([], lambda: strings_expected(["Dynamic Probes", "kernel probe", "hello"]), 11),
    "strings-argv": (["abc", "Probes"], lambda: strings_expected(["abc", "Probes"]), 11),
    "recurse": ([], recurse_expected, 13),
    "fpu": ([], fpu_expected, 17),
    "hello_glibc": ([], hello_expected, 3),
    "bigmem": (["16"], lambda: bigmem_expected(16), 0),
}
"""case -> (arguments after argv[0], expected (stdout, stderr), exit status). The program
is the part of the case name before "-"."""

BOUND_STDOUT = "bound: 5 in [0, 9]\n"
"""bound prints this, then dies of SIGSEGV (#BR) before printing anything else."""
ARGS_STATUS = 19
"""args exits with this status."""


def run_under_qemu(
    name: str, args: list[str] | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run bin/<name> under qemu-i386 (which must be on PATH) in an empty directory, with
    the environment ``env`` (empty by default) and no core dump."""
    assert QEMU is not None, "qemu-i386 is not on PATH"

    def no_core() -> None:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    with tempfile.TemporaryDirectory() as cwd:
        return subprocess.run(
            [QEMU, str(BIN / name), *(args or [])],
            capture_output=True,
            text=True,
            timeout=20,
            env=env if env is not None else {},
            cwd=cwd,
            preexec_fn=no_core,
            check=False,
        )
