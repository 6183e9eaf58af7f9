"""The llvmlite engine: compile handlers to native functions, once per process.

One MCJIT engine per process holds the runtime library (built on first use, its symbols
registered with ``llvm.add_symbol`` so handler modules link against them) and every
compiled handler. Handlers are cached by a hash of what their code depends on: the
handler's bytes, its start offset in the program's code (code offsets are constants in
the native code: return points, handler addresses, EX_INVALID_OPCODE's parm2) and the
ABI version. Nothing else of the program header is compiled in: jmpmax, logmax, the
exception mask, the log header length and the probe's major/minor are state fields.

Several handlers can be compiled in one module (``compile_handlers``), which is what the
VM does for a program's probes; the per-handler compile time is the module's time split
by instruction count.
"""

from __future__ import annotations

import ctypes
import hashlib
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import ClassVar

from dprobes.vm.bytecode import decode_range
from dprobes.vm.program import Program

try:  # the null JIT: without llvmlite, asking for the JIT raises JitUnavailable
    import llvmlite.binding as llvm
    from llvmlite import ir

    _IMPORT_ERROR: ImportError | None = None
except ImportError as error:  # pragma: no cover - exercised by a test that hides llvmlite
    llvm = None  # type: ignore[assignment]
    ir = None  # type: ignore[assignment]
    _IMPORT_ERROR = error


class JitError(RuntimeError):
    """Base of the JIT tier's errors."""


class JitUnavailable(JitError):
    """The JIT tier cannot run here (llvmlite missing, or no native target)."""


HANDLER_FUNCTION = ctypes.PYFUNCTYPE(None, ctypes.c_void_p)  # keeps the GIL: no release per hit
SPEED_LEVEL = 2
"""LLVM's optimisation pipeline level (``-O<n>``) for handler modules."""
CODEGEN_LEVEL = 2
"""The code generator's optimisation level."""
PIPELINE: tuple[str, ...] | None = ("sroa", "instruction_combine", "simplify_cfg",
                                    "dead_store_elimination", "instruction_combine",
                                    "simplify_cfg")
"""The passes run on handler modules (None: LLVM's standard -O<SPEED_LEVEL> pipeline,
which costs more and, in llvmlite 0.50, leaks ~0.1 MB per module). No NewGVN: on one
generated handler it aborted the process ("Seem to have processed the same Value a
lot"), and measured without it the native loops are within noise of the same speed."""


@dataclass(frozen=True)
class CompiledHandler:
    """A native handler: call ``function(state_address)``. Its code lives as long as it."""

    key: str
    address: int
    function: object  # ctypes function
    compile_seconds: float  # this handler's share of its module's compile time
    instructions: int
    generation: object = None  # the _Generation holding the code (kept alive by this)


class _Generation:
    """An MCJIT engine for a few handler modules; LLVM frees it (IR and machine code)
    when the last handler compiled into it is no longer referenced."""

    def __init__(self, target: object, codegen_level: int) -> None:
        machine = target.create_target_machine(opt=codegen_level, codemodel="jitdefault")
        self.engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), machine)
        self.modules = 0


GENERATION_MODULES = 8
"""Handler modules per generation engine."""
RECENT_HANDLERS = 64
"""Handlers the cache keeps alive after their last VM is gone (the rest are weak)."""


def handler_key(program: Program, probe: int, levels: tuple[int, int] = (0, 0)) -> str:
    from dprobes.vm.jit.state import ABI_VERSION

    record = program.probes[probe]
    digest = hashlib.sha256()
    digest.update(f"dprobes-jit/{ABI_VERSION}/{levels}/{record.code_start}/".encode())
    digest.update(program.handler(probe))
    return digest.hexdigest()


def require_llvmlite() -> None:
    if _IMPORT_ERROR is not None:
        raise JitUnavailable(
            "the JIT tier needs llvmlite, which could not be imported "
            f"({_IMPORT_ERROR}); use tier='interp' or install llvmlite") from _IMPORT_ERROR


class Engine:
    """The process-wide MCJIT engine with the runtime library loaded."""

    _instance: Engine | None = None
    _lock = threading.Lock()
    _alive: ClassVar[list[Engine]] = []  # never freed: symbols may point into their code

    def __init__(self, speed_level: int = SPEED_LEVEL,
                 codegen_level: int = CODEGEN_LEVEL) -> None:
        require_llvmlite()
        self.levels = (speed_level, codegen_level)
        self.optimizer = (f"LLVM -O{speed_level}" if PIPELINE is None
                          else "passes " + ", ".join(PIPELINE)) + f"; codegen -O{codegen_level}"
        from dprobes.vm.jit.rtlib import RT_TYPES, build_rtlib, symbol

        try:
            llvm.initialize_native_target()
            llvm.initialize_native_asmprinter()
            target = llvm.Target.from_default_triple()
        except RuntimeError as error:
            raise JitUnavailable(f"no native LLVM target: {error}") from error
        self.target_machine = target.create_target_machine(opt=codegen_level,
                                                           codemodel="jitdefault")
        self.triple = target.triple if hasattr(target, "triple") else llvm.get_default_triple()
        self.data_layout = str(self.target_machine.target_data)
        self.target = target
        self.engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), self.target_machine)
        self.modules: list[object] = []
        # key -> handler while any VM uses it, plus the most recent ones regardless
        self.cache: weakref.WeakValueDictionary[str, CompiledHandler] = \
            weakref.WeakValueDictionary()
        self.recent: OrderedDict[str, CompiledHandler] = OrderedDict()
        self._generation: _Generation | None = None
        start = time.perf_counter()
        self._add(build_rtlib())
        for name in RT_TYPES:
            llvm.add_symbol(symbol(name), self.engine.get_function_address(symbol(name)))
        self.rtlib_seconds = time.perf_counter() - start
        self._counter = 0
        Engine._alive.append(self)

    @classmethod
    def get(cls) -> Engine:
        with cls._lock:
            if cls._instance is None:
                cls._instance = Engine()
            return cls._instance

    def _optimize(self, module: object, speed_level: int | None = None) -> None:
        if PIPELINE is None or speed_level is not None:
            level = self.levels[0] if speed_level is None else speed_level
            tuning = llvm.create_pipeline_tuning_options(speed_level=level)
            builder = llvm.create_pass_builder(self.target_machine, tuning)
            passes = builder.getModulePassManager()
        else:
            tuning = llvm.create_pipeline_tuning_options(speed_level=0)
            builder = llvm.create_pass_builder(self.target_machine, tuning)
            passes = llvm.create_new_module_pass_manager()
            for name in PIPELINE:
                getattr(passes, f"add_{name}_pass")()
        try:
            passes.run(module, builder)
        finally:  # free LLVM's analysis managers now rather than at garbage collection
            passes.close()
            builder.close()

    def _prepare(self, module: ir.Module, speed_level: int | None = None) -> object:
        module.triple = llvm.get_process_triple()
        module.data_layout = self.data_layout
        parsed = llvm.parse_assembly(str(module))
        parsed.verify()
        self._optimize(parsed, speed_level)
        return parsed

    def _add(self, module: ir.Module, speed_level: int | None = None) -> None:
        """Add a library module to the permanent engine."""
        parsed = self._prepare(module, speed_level)
        self.engine.add_module(parsed)
        self.engine.finalize_object()
        self.modules.append(parsed)

    def _add_handlers(self, module: ir.Module) -> _Generation:
        parsed = self._prepare(module)
        generation = self._generation
        if generation is None or generation.modules >= GENERATION_MODULES:
            generation = self._generation = _Generation(self.target, self.levels[1])
        generation.engine.add_module(parsed)
        generation.engine.finalize_object()
        generation.modules += 1
        return generation

    def _remember(self, handler: CompiledHandler) -> None:
        self.cache[handler.key] = handler
        self.recent[handler.key] = handler
        self.recent.move_to_end(handler.key)
        while len(self.recent) > RECENT_HANDLERS:
            self.recent.popitem(last=False)

    def add_library(self, module: ir.Module, names: list[str], *,
                    speed_level: int | None = None) -> dict[str, int]:
        """Compile a module of native helpers; the addresses of the named functions.
        ``speed_level``: LLVM's standard -O<n> pipeline (None: the engine's passes)."""
        with self._lock:
            self._add(module, speed_level)
            return {name: self.engine.get_function_address(name) for name in names}

    def compile_handlers(self, program: Program, probes: list[int],
                         use_cache: bool = True) -> dict[int, CompiledHandler]:
        """Native code for the given probes' handlers (cached ones are not recompiled
        unless ``use_cache`` is False, which benchmarks use to time compilation)."""
        from dprobes.vm.jit.function import HandlerLowering
        from dprobes.vm.jit.irgen import intrinsics
        from dprobes.vm.jit.rtlib import declare

        out: dict[int, CompiledHandler] = {}
        wanted: dict[str, list[int]] = {}
        with self._lock:
            for probe in probes:
                key = handler_key(program, probe, self.levels)
                known = self.cache.get(key) if use_cache else None
                if known is not None:
                    out[probe] = known
                    self._remember(known)
                else:
                    wanted.setdefault(key, []).append(probe)
            if not wanted:
                return out
            start = time.perf_counter()
            self._counter += 1
            module = ir.Module(name=f"dprobes_handlers_{self._counter}")
            runtime = declare(module)
            intrinsic = intrinsics(module)
            names: dict[str, str] = {}
            sizes: dict[str, int] = {}
            for number, (key, same) in enumerate(wanted.items()):
                name = f"dprobes_handler_{self._counter}_{number}_{key[:16]}"
                HandlerLowering(module, runtime, intrinsic, program, same[0], name).build()
                names[key] = name
                record = program.probes[same[0]]
                sizes[key] = len(decode_range(program.code, record.code_start, record.code_end))
            generation = self._add_handlers(module)
            elapsed = time.perf_counter() - start
            total = sum(sizes.values())
            for key, name in names.items():
                address = generation.engine.get_function_address(name)
                handler = CompiledHandler(key, address, HANDLER_FUNCTION(address),
                                          elapsed * sizes[key] / total, sizes[key], generation)
                self._remember(handler)
                for probe in wanted[key]:
                    out[probe] = handler
        return out


def compile_handlers(program: Program, probes: list[int]) -> dict[int, CompiledHandler]:
    return Engine.get().compile_handlers(program, probes)


def handler_ir(program: Program, probe: int) -> str:
    """The LLVM IR of one handler before optimisation (for debugging and docs)."""
    require_llvmlite()
    from dprobes.vm.jit.function import HandlerLowering
    from dprobes.vm.jit.irgen import intrinsics
    from dprobes.vm.jit.rtlib import declare

    module = ir.Module(name="dprobes_handler_listing")
    HandlerLowering(module, declare(module), intrinsics(module), program, probe,
                    "handler").build()
    return str(module)
