"""unicorn's register id for each register of the DProbes register table, in one place.

Every path that reads or writes a guest register through unicorn (the CPU, a probe hit's
context, the native hook) looks the id up here, by dprobes name or by dprobes index.
"""

from __future__ import annotations

from typing import Final

from unicorn import x86_const as x86

from dprobes.vm.registers import GENERAL_REGISTERS, REGISTERS_BY_NAME

_UNICORN_NAMES = {"fcw": "fpcw", "fsw": "fpsw", "ftw": "fptag"}
"""dprobes names that unicorn spells otherwise. (fr0-fr7 are ST(i), not unicorn's
physical FP0-FP7, so they have no id here: see ``ProbeContext``.)"""


def _unicorn_id(name: str) -> int | None:
    return getattr(x86, f"UC_X86_REG_{_UNICORN_NAMES.get(name, name).upper()}", None)


UC_IDS: Final[dict[str, int]] = {
    name: uc_id for name in REGISTERS_BY_NAME if (uc_id := _unicorn_id(name)) is not None
}
"""unicorn's id of every dprobes register unicorn has, by dprobes name (cs ... mxcsr)."""

GENERAL_UC_IDS: Final[tuple[int, ...]] = tuple(UC_IDS[r.name] for r in GENERAL_REGISTERS)
"""unicorn's id of dprobes registers 0..15, by index."""
