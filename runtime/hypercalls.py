"""The hypercall interface: how the guest kernel asks the host for what only it can do.

This table is the one definition: the C header ``guest/kernel/include/asm/hypercall.h`` is
generated from it (``python -m dprobes.runtime.hypercalls --header``; a test checks the
committed header is byte-identical), and ``runtime/kernel.py`` dispatches on it.

Mechanism: ring-0 code executes ``int $HC_VECTOR`` with the call number in EAX and up to four
arguments in EBX, ECX, EDX, ESI; the result comes back in EAX. unicorn hands the vector to
the runtime's interrupt hook (it never delivers through an IDT), so the call costs one
hook and no guest exception. From user mode the same vector is a #GP (SIGSEGV), as an
IDT gate of DPL 0 would make it. Pointers are kernel virtual addresses.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

VERSION = 4
"""Bumped whenever a number, an argument or a meaning below changes."""
VECTOR = 0x82
"""The reserved interrupt vector of a hypercall (Linux leaves 0x81-0xEE to device IRQs)."""


@dataclass(frozen=True)
class Hypercall:
    number: int
    name: str
    args: tuple[str, ...]
    doc: str


HYPERCALLS = (
    Hypercall(0, "HC_VERSION", (), "the interface version (VERSION)"),
    Hypercall(
        1,
        "HC_SYSCALL",
        ("regs",),
        "run the host's system call orig_eax on the pt_regs at regs; the value for eax",
    ),
    Hypercall(
        2, "HC_WRITE", ("fd", "kbuf", "count"), "write count bytes at kbuf to fd; count or -errno"
    ),
    Hypercall(
        3, "HC_READ", ("fd", "kbuf", "count"), "one read of at most count bytes of fd into kbuf"
    ),
    Hypercall(4, "HC_CLOCK", ("tv",), "store the machine's wall clock as a struct timeval at tv"),
    Hypercall(5, "HC_EXIT", ("status",), "end the current process with exit status (0-255)"),
    Hypercall(6, "HC_SCHEDULE", (), "give up the CPU: the host scheduler picks who runs next"),
    Hypercall(7, "HC_PRINTK", ("kbuf", "count"), "append count bytes at kbuf to the kernel log"),
    Hypercall(
        8,
        "HC_MODULE_LOAD",
        ("name", "image", "len", "params"),
        "place the module object (len bytes at user image, user strings name and params"
        " 'p=v,...' or 0) with its kmod probes; its init address, 0 for none, or -errno",
    ),
    Hypercall(
        9,
        "HC_MODULE_INITED",
        ("status",),
        "the init of the module just placed returned status: live if 0, else freed; status",
    ),
    Hypercall(
        10,
        "HC_MODULE_UNLOAD",
        ("name",),
        "the cleanup address of loaded module name (user string), 0 for none, or -errno",
    ),
    Hypercall(11, "HC_MODULE_FREE", (), "free the module HC_MODULE_UNLOAD named; 0"),
    Hypercall(
        12,
        "HC_FORCE_SIG",
        ("sig",),
        "current takes signal sig for the user-mode fault it entered a trap entry with:"
        " Linux's default action (the process ends; no return)",
    ),
    Hypercall(
        13,
        "HC_MAP_HEAP",
        ("start", "end"),
        "map the page-aligned user range [start, end) read-write as current's heap; 0, or"
        " -ENOMEM if the machine could never back it or it meets another mapping",
    ),
    Hypercall(14, "HC_UNMAP", ("start", "end"), "unmap [start, end) of current's memory; 0"),
)
BY_NUMBER = {call.number: call for call in HYPERCALLS}
ARGUMENT_REGISTERS = ("ebx", "ecx", "edx", "esi")
HEADER = (
    Path(__file__).resolve().parents[1] / "guest" / "kernel" / "include" / "asm" / "hypercall.h"
)


def header() -> str:
    """The C header for the guest kernel: the numbers and one inline caller per arity."""
    lines = [
        "/* Generated from runtime/hypercalls.py by `python -m dprobes.runtime.hypercalls",
        "   --header`: do not edit. The guest side of the hypercall interface. */",
        "#ifndef _ASM_HYPERCALL_H",
        "#define _ASM_HYPERCALL_H",
        "",
        f"#define HC_INTERFACE_VERSION {VERSION}",
        f"#define HC_VECTOR 0x{VECTOR:x}",
        "",
    ]
    for call in HYPERCALLS:
        lines.append(f"/* {call.name}({', '.join(call.args)}): {call.doc} */")
        lines.append(f"#define {call.name} {call.number}")
    lines += [
        "",
        "#ifndef __ASSEMBLY__",
        "static inline long hypercall(long nr, long a, long b, long c, long d)",
        "{",
        "\tlong ret;",
        '\t__asm__ __volatile__("int %1"',
        '\t\t\t     : "=a"(ret)',
        '\t\t\t     : "i"(HC_VECTOR), "0"(nr), "b"(a), "c"(b), "d"(c), "S"(d)',
        '\t\t\t     : "memory");',
        "\treturn ret;",
        "}",
        "#endif",
        "",
        "#endif",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if argv != ["--header"]:
        print("usage: python -m dprobes.runtime.hypercalls --header", file=sys.stderr)
        return 2
    HEADER.write_text(header())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
