"""Where the guest kernel lives: its link base and its image file.

Written once here, outside ``runtime``, so that the compiler (kernel symbols for
``dpc build``, kernel probe offsets) can use them without loading the machine and unicorn.
"""

from pathlib import Path

KERNEL_BASE = 0xC000_0000
"""Linux's PAGE_OFFSET: the kernel half of every address space starts here, and a relative
kernel probe offset counts from here."""

KERNEL_IMAGE = Path(__file__).resolve().parent / "guest" / "bin" / "vmlinux"
"""The guest kernel built from guest/kernel (an ELF32 i386 image linked at KERNEL_BASE+);
``--kernel-image PATH`` picks another."""
