"""What unicorn itself charges a native probe hit: the floor under the native hooks.

A bare unicorn CPU runs ``L: int3; dec ecx; jnz L`` with a native ``UC_HOOK_INTR`` hook
(built with llvmlite's IR builder, compiled by the JIT's engine) that does nothing, that
reads registers with ``uc_reg_read`` the way a native hit does (EIP, EFLAGS, CS, SS, ESP,
EBP, EAX, EBX: the log header, the emulated push and the benchmark's 10-instruction
handler), or that also writes EIP (what every stepped instruction costs, twice). The
difference between the rows is what each part costs per hit; the native hooks of
``probe_bench`` cannot be cheaper than these rows.

The last row is the reference workload of the project's runtime spec (11.7 M int3+XOL
hits/s on the machine it was measured on): the probed instruction is stepped out
of line, with a trailing int3 in the slot to come back, so a hit is two interrupts, two
EIP reads and two EIP writes. Run on the same machine, it is the yardstick for
``probe_bench``'s native rates: their ratio to it is comparable across machines.
"""

from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass

from unicorn import UC_ARCH_X86, UC_HOOK_INTR, UC_MODE_32, Uc, UcError
from unicorn import x86_const as x86
from unicorn.unicorn_py3.unicorn import uc_hook_h, uclib

LOOPS = 1_000_000
ROUNDS = 3
REFERENCE = "int3+XOL (the spec's 11.7M)"
REFERENCE_ELSEWHERE = 11.7e6
"""Hits/s of the reference workload where the runtime spec measured it."""
"""Runs per row; the fastest counts (the host's other load only ever adds time)."""
CODE_AT = 0x1000
PROBE = CODE_AT + 5  # after mov ecx, LOOPS
SLOT = CODE_AT + 0x800
LOOP_CODE = (
    b"\xb9"
    + LOOPS.to_bytes(4, "little")  # mov ecx, LOOPS
    + b"\xcc\x49\x75\xfc\xf4"
)  # L: int3; dec ecx; jnz L; hlt
XOL_CODE = (
    b"\xb9" + LOOPS.to_bytes(4, "little") + b"\xcc\x75\xfd\xf4"
)  # L: int3 (was dec ecx); jnz L; hlt
XOL_SLOT = b"\x49\xcc"  # dec ecx; int3 (back to the hook)
HIT_REGISTERS = ("EIP", "EFLAGS", "CS", "SS", "ESP", "EBP", "EAX", "EBX")


@dataclass(frozen=True)
class FloorFigure:
    hook: str
    ns_per_hit: float

    @property
    def hits_per_second(self) -> float:
        return 1e9 / self.ns_per_hit


class _Services(ctypes.Structure):
    """The hooks' user data: unicorn's register accessors (passed at run time, so the
    compiled hooks hold no address and the JIT's object cache can keep them)."""

    _fields_ = [("reg_read", ctypes.c_void_p), ("reg_write", ctypes.c_void_p)]


HOOKS = ("nothing", "reads", "reads_and_eip", "xol")


def _hooks_module():
    """The four ``void hook(uc *, u32 vector, _Services *)`` interrupt hooks, built with
    llvmlite's IR builder."""
    from llvmlite import ir

    from dprobes.vm.jit.irgen import I8, I32, I64, PTR, VOID, Callee

    access = ir.FunctionType(I32, [PTR, I32, PTR])  # uc_reg_read / uc_reg_write
    module = ir.Module(name="dprobes_hook_floor")

    def const(value: int) -> ir.Constant:
        return ir.Constant(I32, value)

    def register(name: str) -> ir.Constant:
        return const(getattr(x86, f"UC_X86_REG_{name}"))

    for name in HOOKS:
        function = ir.Function(module, ir.FunctionType(VOID, [PTR, I32, PTR]), name)
        uc, _, services = function.args
        b = ir.IRBuilder(function.append_basic_block("entry"))
        if name != "nothing":
            value, eip = b.alloca(I32, name="value"), b.alloca(I32, name="eip")
            pointers = (
                b.gep(
                    services, [ir.Constant(I64, getattr(_Services, field).offset)], source_etype=I8
                )
                for field in ("reg_read", "reg_write")
            )
            read, write = (Callee(b.load(at, typ=PTR), access) for at in pointers)
            if name == "xol":
                b.call(read, [uc, register("EIP"), eip])
                hit = b.icmp_unsigned("==", b.load(eip, typ=I32), const(PROBE + 1))
                b.store(b.select(hit, const(SLOT), const(PROBE + 1)), eip)
            else:
                for reg in HIT_REGISTERS:
                    b.call(read, [uc, register(reg), eip if reg == "EIP" else value])
            if name in ("reads_and_eip", "xol"):
                b.call(write, [uc, register("EIP"), eip])
        b.ret_void()
    return module


def run() -> list[FloorFigure]:
    from dprobes.vm.jit.compile import Engine

    hooks = Engine.get().add_library(_hooks_module(), list(HOOKS))
    services = _Services(
        ctypes.cast(uclib.uc_reg_read, ctypes.c_void_p).value,
        ctypes.cast(uclib.uc_reg_write, ctypes.c_void_p).value,
    )
    figures = []
    for name, label, code in (
        ("nothing", "int3, empty hook", LOOP_CODE),
        ("reads", f"+ {len(HIT_REGISTERS)} uc_reg_read", LOOP_CODE),
        ("reads_and_eip", "+ one EIP write", LOOP_CODE),
        ("xol", REFERENCE, XOL_CODE),
    ):
        uc = Uc(UC_ARCH_X86, UC_MODE_32)
        uc.mem_map(CODE_AT, 0x1000)
        uc.mem_write(CODE_AT, code)
        uc.mem_write(SLOT, XOL_SLOT)
        handle = uc_hook_h()
        status = uclib.uc_hook_add(
            uc._uch,
            ctypes.byref(handle),
            UC_HOOK_INTR,
            ctypes.c_void_p(hooks[name]),
            ctypes.c_void_p(ctypes.addressof(services)),
            ctypes.c_uint64(1),
            ctypes.c_uint64(0),
        )
        if status:
            raise UcError(status)
        best = float("inf")
        for _ in range(ROUNDS):
            start = time.perf_counter()
            uc.emu_start(CODE_AT, CODE_AT + len(code) - 1)  # (an EIP write writes EIP back)
            best = min(best, time.perf_counter() - start)
            if uc.reg_read(x86.UC_X86_REG_ECX) != 0:
                raise RuntimeError(f"{name}: the loop did not run to the end")
        figures.append(FloorFigure(label, best / LOOPS * 1e9))
    return figures


def report(figures: list[FloorFigure]) -> str:
    lines = ["unicorn's floor under a native hit (bare CPU, native UC_HOOK_INTR hook)"]
    lines += [
        f"  {f.hook:<28}{f.ns_per_hit:8.0f} ns/hit {f.hits_per_second:14,.0f} hits/s"
        for f in figures
    ]
    return "\n".join(lines)


def against_reference(floor: list[FloorFigure], hits_per_second: float) -> str:
    """A native rate as a multiple of the reference loop's rate on this machine, beside
    what the same multiple of the spec's figure would be."""
    reference = next(f for f in floor if f.hook == REFERENCE).hits_per_second
    return (
        f"{hits_per_second / reference:.2f}x the reference loop on this machine "
        f"({reference / 1e6:.2f} M/s here; 5 M/s is {5e6 / REFERENCE_ELSEWHERE:.2f}x "
        f"its {REFERENCE_ELSEWHERE / 1e6:.1f} M/s where the spec measured it)"
    )


def _import_checkout() -> None:
    """Run as ``python bench/hook_floor.py``: make ``dprobes`` this checkout (whose root
    folder is the package, whatever the clone is called)."""
    import importlib.util
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location(
        "dprobes", root / "__init__.py", submodule_search_locations=[str(root)]
    )
    assert spec is not None and spec.loader is not None
    package = importlib.util.module_from_spec(spec)
    sys.modules["dprobes"] = package
    spec.loader.exec_module(package)


if __name__ == "__main__":
    if not __package__:
        _import_checkout()
    print(report(run()))
