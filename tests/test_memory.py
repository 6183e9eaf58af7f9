"""Guest memory: ``dpc run --memory``, running out of it as Linux does, and the lowest
address a mapping may have (``MMAP_MIN_ADDR``).

A guest may use far more than the old fixed 256 MiB region (a 512 MiB guest prints what it
prints under qemu-i386); a request that can never fit is ENOMEM; a page fault with no free
frame is an OOM kill (SIGKILL, 137) with a message naming the limit and the option.
"""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest

from dprobes.runtime import syscalls
from dprobes.runtime.elfload import LoadError
from dprobes.runtime.machine import Machine
from dprobes.runtime.paging import MMAP_MIN_ADDR
from dprobes.runtime.physmem import DEFAULT_SIZE, MAX_SIZE, MIN_SIZE, OutOfFrames, parse_size
from dprobes.runtime.syscalls import abi
from dprobes.tests.guest_expectations import BIN, QEMU, bigmem_expected, run_under_qemu

PROT_RW, PROT_NONE = 3, 0
MAP_PRIVATE_ANON = 0x02 | abi.MAP_ANONYMOUS
SYS_BRK, SYS_UNAME, SYS_MMAP2 = 45, 122, 192


def dpc_run(*args: str) -> subprocess.CompletedProcess[str]:
    """``dpc run`` in a subprocess (its guest memory is gone with it)."""
    return subprocess.run(
        [sys.executable, "-m", "dprobes.cli", "run", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_a_512_mib_guest_prints_what_it_prints_under_qemu() -> None:
    done = dpc_run("--", str(BIN / "bigmem"), "512")
    assert (done.stdout, done.stderr, done.returncode) == (*bigmem_expected(512), 0)
    if QEMU is None:
        pytest.skip("qemu-i386 is not installed: compared with the Python model only")
    native = run_under_qemu("bigmem", ["512"])
    assert (done.stdout, done.returncode) == (native.stdout, native.returncode)


def test_a_page_fault_with_no_free_frame_is_an_oom_kill() -> None:
    done = dpc_run("--memory", "64M", "--json", "--", str(BIN / "bigmem"), "64")
    assert done.returncode == 137 and done.stdout == ""
    first, *_ = done.stderr.splitlines()
    assert first.startswith(
        "dpc run: pid 1 killed: SIGKILL (out of memory: all 64 MiB of guest memory in use; "
        "see --memory), EIP 0x"
    )
    assert '"status": 137' in done.stderr and "Traceback" not in done.stderr


def test_brk_beyond_all_memory_fails_and_the_guest_sees_it() -> None:
    done = dpc_run("--memory", "64M", "--", str(BIN / "bigmem"), "65")
    assert (done.returncode, done.stderr) == (1, "bigmem: brk failed\n")
    assert dpc_run("--memory", "80M", "--", str(BIN / "bigmem"), "65").returncode == 0


def test_mmap_that_can_never_be_backed_is_enomem_reserving_is_not() -> None:
    machine = Machine(memory_size=MIN_SIZE)
    proc = machine.spawn(BIN / "loop")
    too_big = MIN_SIZE + 4096

    def mmap2(length: int, prot: int, addr: int = 0, flags: int = MAP_PRIVATE_ANON) -> int:
        return syscalls.dispatch(machine, proc, SYS_MMAP2, (addr, length, prot, flags, -1, 0))

    assert mmap2(too_big, PROT_RW) == -abi.ENOMEM
    reserved = mmap2(too_big, PROT_NONE)  # address space only, as malloc arenas reserve
    assert MMAP_MIN_ADDR <= reserved < 0xC0000000
    assert 0 < mmap2(MIN_SIZE // 2, PROT_RW) < 0xC0000000
    brk = syscalls.dispatch(machine, proc, SYS_BRK, (0,))
    assert syscalls.dispatch(machine, proc, SYS_BRK, (brk + too_big,)) == brk  # Linux's "no"


def test_a_kernel_copy_to_user_with_no_free_frame_is_an_oom_kill() -> None:
    machine = Machine(memory_size=MIN_SIZE)
    proc = machine.spawn(BIN / "loop")
    buf = syscalls.dispatch(machine, proc, SYS_MMAP2, (0, 4096, PROT_RW, MAP_PRIVATE_ANON, -1, 0))
    with pytest.raises(OutOfFrames):
        while True:
            machine.memory.alloc()
    assert syscalls.dispatch(machine, proc, SYS_UNAME, (buf,)) is None
    assert proc.returncode == -9 and proc.crash is not None
    assert proc.crash.reason == "out of memory: all 16 MiB of guest memory in use; see --memory"


def test_mmap_below_mmap_min_addr() -> None:
    machine = Machine()
    proc = machine.spawn(BIN / "loop")

    def mmap2(addr: int, flags: int) -> int:
        return syscalls.dispatch(machine, proc, SYS_MMAP2, (addr, 4096, PROT_RW, flags, -1, 0))

    fixed = MAP_PRIVATE_ANON | abi.MAP_FIXED
    assert mmap2(0, fixed) == -abi.EPERM
    assert mmap2(MMAP_MIN_ADDR - 4096, fixed) == -abi.EPERM
    assert mmap2(MMAP_MIN_ADDR, fixed) == MMAP_MIN_ADDR
    assert mmap2(4096, MAP_PRIVATE_ANON) >= MMAP_MIN_ADDR  # a hint down there is ignored


def _loop_with_first_segment_at(tmp_path: Path, vaddr: int) -> Path:
    """guest/bin/loop with its first PT_LOAD (file offset 0) moved to ``vaddr``."""
    data = bytearray((BIN / "loop").read_bytes())
    (phoff,) = struct.unpack_from("<I", data, 28)
    (phnum,) = struct.unpack_from("<H", data, 44)
    for at in range(phoff, phoff + 32 * phnum, 32):
        if struct.unpack_from("<2I", data, at) == (1, 0):
            struct.pack_into("<2I", data, at + 8, vaddr, vaddr)
            break
    path = tmp_path / "at0"
    path.write_bytes(data)
    return path


def test_a_segment_below_mmap_min_addr_is_refused(tmp_path: Path) -> None:
    path = _loop_with_first_segment_at(tmp_path, 0)
    with pytest.raises(LoadError, match=r"segment 0 at 0x0 is below 0x10000"):
        Machine().spawn(path)
    done = dpc_run("--", str(path))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"dpc run: error: {path}: segment 0 at 0x0 is below 0x10000")


@pytest.mark.parametrize(
    ("text", "size"),
    [("512M", 512 << 20), ("1G", 1 << 30), ("64MiB", 64 << 20), ("0x1000000", 16 << 20)],
)
def test_memory_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("lots", "not a size: 'lots' (a number of bytes, or with K, M or G)"),
        ("1M", "1 MiB is outside 16 MiB..3 GiB"),
        ("4G", "4 GiB is outside 16 MiB..3 GiB"),
        ("16777217", "16777217 bytes is not a multiple of the 4096-byte page"),
    ],
)
def test_bad_memory_option_is_a_usage_error(text: str, problem: str) -> None:
    done = dpc_run("--memory", text, "--", str(BIN / "loop"))
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"dpc run: error: --memory: {problem}\n"


def test_default_memory_is_at_least_1_gib_and_costs_nothing_until_used() -> None:
    assert DEFAULT_SIZE >= 1 << 30 and MAX_SIZE >= DEFAULT_SIZE
    machine = Machine()
    assert machine.memory.size == DEFAULT_SIZE and machine.memory.in_use < 16
