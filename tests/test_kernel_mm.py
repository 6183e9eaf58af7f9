"""The break in the guest kernel: ``sys_brk`` (mm/mmap.c) keeps ``current->mm->brk`` and
``start_brk`` itself and asks the host only to map or unmap the heap's pages, so a probe on
sys_brk sees the real values. The calls and their results are qemu-i386's."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from dprobes.compiler.pipeline import compile_rpn
from dprobes.runtime.kernel_image import KernelImage
from dprobes.runtime.machine import Machine
from dprobes.runtime.probes import ProbeManager
from dprobes.tests.guest_expectations import BIN, RUNS

BRK_LINE = re.compile(r" brk\((NULL|0x[0-9a-f]+)\) = (0x[0-9a-f]+)")


def qemu_brk_calls(program: str, *args: str) -> list[tuple[int, int]]:
    """(argument, result) of every brk(2) ``qemu-i386 -strace`` shows."""
    if shutil.which("qemu-i386") is None:
        pytest.skip("needs qemu-i386 to see the program's brk calls")
    trace = subprocess.run(
        ["qemu-i386", "-strace", str(BIN / program), *args],
        capture_output=True,
        text=True,
        check=False,
    ).stderr
    return [
        (0 if arg == "NULL" else int(arg, 16), int(result, 16))
        for arg, result in BRK_LINE.findall(trace)
    ]


def test_a_probe_on_sys_brk_sees_the_break_the_kernel_keeps() -> None:
    calls = qemu_brk_calls("hello_glibc")
    assert len(calls) > 2
    offsets = KernelImage.load().task.offsets
    mm_brk = offsets["own_mm.brk"] - offsets["own_mm"]
    mm_start = offsets["own_mm.start_brk"] - offsets["own_mm"]
    source = (
        "name = k\nmodtype = kernel\nnum_lv = 1\noffset = sys_brk\n"
        f"    push task\n    push {offsets['mm']}\n    add\n    push mem_u32\n    pop lv, 0\n"
        f"    push lv, 0\n    push {mm_brk}\n    add\n    push mem_u32\n"
        f"    push lv, 0\n    push {mm_start}\n    add\n    push mem_u32\n"
        "    push u, ebx\n    log 3\n    exit\n"
    )
    machine = Machine(kernel=True)
    manager = ProbeManager(machine, tier="interp")
    manager.insert(compile_rpn("k.rpn", text=source).program)
    process = machine.spawn(BIN / "hello_glibc", [str(BIN / "hello_glibc")])
    machine.run(max_instructions=50_000_000)
    assert process.output() == RUNS["hello_glibc"][1]()
    assert process.returncode == RUNS["hello_glibc"][2]
    logged = [entry.record.data for entry in manager.emitted]
    seen = [tuple(int.from_bytes(d[i : i + 4], "little") for i in (0, 4, 8)) for d in logged]
    start = calls[0][1]  # brk(NULL) at the start is the start of the heap
    before = [start] + [result for _, result in calls[:-1]]
    assert seen == [(arg, start, brk) for (arg, _), brk in zip(calls, before, strict=True)]


@pytest.mark.parametrize("megabytes", ["16", "65"])
def test_bigmem_grows_the_heap_through_the_kernel_as_without_it(megabytes: str) -> None:
    """bigmem sets its break to past all memory (65 MiB of 64: brk fails) or not."""
    results = []
    for kernel in (True, False):
        machine = Machine(kernel=kernel, memory_size=64 << 20)
        process = machine.spawn(BIN / "bigmem", [str(BIN / "bigmem"), megabytes])
        machine.run(max_instructions=400_000_000)
        results.append((process.output(), process.returncode))
    assert results[0] == results[1]
    assert results[0][1] == (1 if megabytes == "65" else 0)
