"""Where the guest kernel image is: one path for the runtime that boots it and the probe
compiler that resolves kernel symbols in it."""

from pathlib import Path

KERNEL_IMAGE = Path(__file__).resolve().parents[1] / "guest" / "bin" / "vmlinux"
