"""What unicorn itself charges a native probe hit: the floor under the native hooks.

A bare unicorn CPU runs ``L: int3; dec ecx; jnz L`` with a native ``UC_HOOK_INTR`` hook
(LLVM IR compiled here) that does nothing, that reads registers with ``uc_reg_read`` the
way a native hit does (EIP, EFLAGS, CS, SS, ESP, EBP, EAX, EBX: the log header, the
emulated push and the benchmark's 10-instruction handler), or that also writes EIP (what
every stepped instruction costs, twice). The difference between the rows is what each part
costs per hit; the native hooks of ``probe_bench`` cannot be cheaper than these rows.
"""

from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass

from unicorn import UC_ARCH_X86, UC_HOOK_INTR, UC_MODE_32, Uc, UcError
from unicorn import x86_const as x86
from unicorn.unicorn_py3.unicorn import uc_hook_h, uclib

LOOPS = 1_000_000
CODE_AT = 0x1000
HIT_REGISTERS = ("EIP", "EFLAGS", "CS", "SS", "ESP", "EBP", "EAX", "EBX")


@dataclass(frozen=True)
class FloorFigure:
    hook: str
    ns_per_hit: float

    @property
    def hits_per_second(self) -> float:
        return 1e9 / self.ns_per_hit


def _hooks_ir() -> str:
    read = ctypes.cast(uclib.uc_reg_read, ctypes.c_void_p).value
    write = ctypes.cast(uclib.uc_reg_write, ctypes.c_void_p).value
    reads = "\n".join(f"  call i32 %read(ptr %uc, i32 {getattr(x86, f'UC_X86_REG_{name}')}, "
                      f"ptr {'%eip' if name == 'EIP' else '%value'})"
                      for name in HIT_REGISTERS)
    prologue = (f"  %value = alloca i32\n  %eip = alloca i32\n"
                f"  %read = inttoptr i64 {read} to ptr\n"
                f"  %write = inttoptr i64 {write} to ptr\n")
    return f"""
define void @nothing(ptr %uc, i32 %vector, ptr %data) {{
  ret void
}}
define void @reads(ptr %uc, i32 %vector, ptr %data) {{
{prologue}{reads}
  ret void
}}
define void @reads_and_eip(ptr %uc, i32 %vector, ptr %data) {{
{prologue}{reads}
  call i32 %write(ptr %uc, i32 {x86.UC_X86_REG_EIP}, ptr %eip)
  ret void
}}
"""


def run() -> list[FloorFigure]:
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    module = llvm.parse_assembly(_hooks_ir())
    machine = llvm.Target.from_default_triple().create_target_machine(opt=2)
    engine = llvm.create_mcjit_compiler(module, machine)
    engine.finalize_object()
    code = (b"\xb9" + LOOPS.to_bytes(4, "little")  # mov ecx, LOOPS
            + b"\xcc\x49\x75\xfc\xf4")  # L: int3; dec ecx; jnz L; hlt
    figures = []
    for name, label in (("nothing", "int3, empty hook"),
                        ("reads", f"+ {len(HIT_REGISTERS)} uc_reg_read"),
                        ("reads_and_eip", "+ one EIP write")):
        uc = Uc(UC_ARCH_X86, UC_MODE_32)
        uc.mem_map(CODE_AT, 0x1000)
        uc.mem_write(CODE_AT, code)
        handle = uc_hook_h()
        status = uclib.uc_hook_add(uc._uch, ctypes.byref(handle), UC_HOOK_INTR,
                                   ctypes.c_void_p(engine.get_function_address(name)), None,
                                   ctypes.c_uint64(1), ctypes.c_uint64(0))
        if status:
            raise UcError(status)
        start = time.perf_counter()
        uc.emu_start(CODE_AT, CODE_AT + len(code) - 1)  # (an EIP write writes EIP back)
        figures.append(FloorFigure(label, (time.perf_counter() - start) / LOOPS * 1e9))
    return figures


def report(figures: list[FloorFigure]) -> str:
    lines = ["unicorn's floor under a native hit (bare CPU, native UC_HOOK_INTR hook)"]
    lines += [f"  {f.hook:<28}{f.ns_per_hit:8.0f} ns/hit {f.hits_per_second:14,.0f} hits/s"
              for f in figures]
    return "\n".join(lines)
