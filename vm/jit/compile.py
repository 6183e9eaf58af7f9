"""The llvmlite engine: handlers and libraries compiled to native code, cached on disk.

One MCJIT engine per process holds the libraries (the runtime library first: its
symbols are registered with ``llvm.add_symbol`` so handler code links against them).
Handler code goes into small "generation" engines that LLVM frees once no handler
compiled into them is referenced.

Handler code is position independent: a handler's native body is compiled from its bytes
alone (branch targets are relative in RPN code) as ``void body(State *, i32 code_base)``,
``code_base`` being where the handler starts in its program's code (code offsets a
handler shows, in call frames, stack traces and EX_INVALID_OPCODE's parm2, are
``code_base`` + a constant). So identical handlers, at any place of any program, share
one body in memory (``CompiledBody``) and one entry of the persistent object cache
(``vm.jit.cache``). Nothing else of the program is compiled in: jmpmax, logmax, the
exception mask, the log header length and the probe's major/minor are state fields.

Every compiled module (a handler body or a library) goes through the object cache,
keyed by its input, the optimisation levels and the engine's ``Fingerprint``; a hit
loads the stored object file and skips LLVM's optimiser and code generator.
"""

from __future__ import annotations

import ctypes
import threading
import time
import weakref
from collections import OrderedDict
from typing import ClassVar

from dprobes.vm.jit.cache import Fingerprint, ObjectCache, entry_key
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


BODY_FUNCTION = ctypes.PYFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint32)
"""``body(state, code_base)`` from Python; keeps the GIL: no release per hit."""
SPEED_LEVEL = 2
"""LLVM's optimisation pipeline level (``-O<n>``) for handler modules."""
CODEGEN_LEVEL = 2
"""The code generator's optimisation level."""
PIPELINE: tuple[str, ...] | None = (
    "sroa",
    "instruction_combine",
    "simplify_cfg",
    "dead_store_elimination",
    "instruction_combine",
    "simplify_cfg",
)
"""The passes run on handler modules (None: LLVM's standard -O<SPEED_LEVEL> pipeline,
which costs more and, in llvmlite 0.50, leaks ~0.1 MB per module). No NewGVN: on one
generated handler it aborted the process ("Seem to have processed the same Value a
lot"), and measured without it the native loops are within noise of the same speed."""

GENERATION_MODULES = 8
"""Handler bodies per generation engine."""
RECENT_HANDLERS = 64
"""Bodies the engine keeps alive after their last VM is gone (the rest are weak)."""


class _Generation:
    """An MCJIT engine for a few handler bodies; LLVM frees it (and their machine code)
    when the last body loaded into it is no longer referenced."""

    def __init__(self, engine: object) -> None:
        self.engine = engine
        self.symbols: set[str] = set()  # functions defined in it

    def load(self, obj: bytes) -> None:
        self.engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
        self.engine.finalize_object()

    def address(self, name: str) -> int:
        return self.engine.get_function_address(name)


class CompiledBody:
    """One handler's native code: ``function(state_address, code_base)``. Its machine
    code lives as long as this object (or another body of its generation)."""

    __slots__ = (
        "__weakref__",
        "address",
        "cached",
        "compile_seconds",
        "entries",
        "function",
        "generation",
        "key",
    )

    def __init__(
        self, key: str, address: int, generation: _Generation, compile_seconds: float, cached: bool
    ) -> None:
        self.key = key
        self.address = address
        self.function = BODY_FUNCTION(address)
        self.generation = generation
        self.compile_seconds = compile_seconds  # compiling it, or loading it from the cache
        self.cached = cached  # not compiled for it: from the object cache (or still loaded)
        self.entries: dict[int, int] = {}  # code_base -> address of its one-argument entry


class CompiledHandler:
    """A probe's handler: a shared body and where the handler starts in its program."""

    __slots__ = ("body", "code_base")

    def __init__(self, body: CompiledBody, code_base: int) -> None:
        self.body = body
        self.code_base = code_base

    @property
    def key(self) -> str:
        return self.body.key

    @property
    def compile_seconds(self) -> float:
        return self.body.compile_seconds

    @property
    def address(self) -> int:
        """A native ``void handler(State *)`` for callers that cannot pass ``code_base``
        (compiled on first use, about a millisecond; shared by handlers with the same body
        and base)."""
        return Engine.get().entry(self.body, self.code_base)


def require_llvmlite() -> None:
    if _IMPORT_ERROR is not None:
        raise JitUnavailable(
            "the JIT tier needs llvmlite, which could not be imported "
            f"({_IMPORT_ERROR}); use tier='interp' or install llvmlite"
        ) from _IMPORT_ERROR


def set_object_cache(enabled: bool) -> None:
    """Use the persistent object cache (the default) or not (``--no-cache``), from now on
    in this process."""
    Engine.object_cache = enabled
    if Engine._instance is not None:
        Engine._instance.objects.enabled = enabled


class Engine:
    """The process-wide MCJIT engine with the runtime library loaded."""

    _instance: Engine | None = None
    _lock = threading.RLock()
    _alive: ClassVar[list[Engine]] = []  # never freed: symbols may point into their code
    object_cache: ClassVar[bool] = True  # whether engines made from now on use it

    def __init__(self, speed_level: int = SPEED_LEVEL, codegen_level: int = CODEGEN_LEVEL) -> None:
        require_llvmlite()
        from dprobes.vm.jit.rtlib import RT_TYPES, build_rtlib, symbol
        from dprobes.vm.jit.state import ABI_VERSION

        self.levels = (speed_level, codegen_level)
        self.optimizer = (
            f"LLVM -O{speed_level}" if PIPELINE is None else "passes " + ", ".join(PIPELINE)
        ) + f"; codegen -O{codegen_level}"
        try:
            llvm.initialize_native_target()
            llvm.initialize_native_asmprinter()
            target = llvm.Target.from_default_triple()
        except RuntimeError as error:
            raise JitUnavailable(f"no native LLVM target: {error}") from error
        cpu = llvm.get_host_cpu_name()
        try:
            features = llvm.get_host_cpu_features().flatten()
        except RuntimeError:  # LLVM cannot list them here: the CPU name's defaults
            features = ""
        self._target = target, cpu, features
        self.target_machine = self._new_target_machine()  # optimises and emits objects
        self.triple = llvm.get_process_triple()
        self.data_layout = str(self.target_machine.target_data)
        self.fingerprint = Fingerprint(
            ABI_VERSION,
            llvmlite_version(),
            ".".join(map(str, llvm.llvm_version_info)),
            self.triple,
            cpu,
            features,
        )
        self.objects = ObjectCache(Engine.object_cache)
        self.engine = self._new_engine()
        # key -> body while any VM uses it, plus the most recent ones regardless
        self.cache: weakref.WeakValueDictionary[str, CompiledBody] = weakref.WeakValueDictionary()
        self.recent: OrderedDict[str, CompiledBody] = OrderedDict()
        self._generation: _Generation | None = None
        self._generation_bodies = 0
        self._counter = 0
        start = time.perf_counter()
        names = [symbol(name) for name in RT_TYPES]
        for name, address in self.add_library(build_rtlib(), names).items():
            llvm.add_symbol(name, address)
        self.rtlib_seconds = time.perf_counter() - start
        Engine._alive.append(self)

    def _new_target_machine(self) -> object:
        target, cpu, features = self._target
        return target.create_target_machine(
            cpu=cpu, features=features, opt=self.levels[1], codemodel="jitdefault"
        )

    def _new_engine(self) -> object:
        """An MCJIT engine that loads object files (it owns, and frees, its own target
        machine)."""
        return llvm.create_mcjit_compiler(llvm.parse_assembly(""), self._new_target_machine())

    @classmethod
    def get(cls) -> Engine:
        with cls._lock:
            if cls._instance is None:
                cls._instance = Engine()
            return cls._instance

    # --- compiling a module to an object file, through the cache ---------------------
    def _optimize(self, module: object, speed_level: int | None) -> None:
        """``speed_level`` None: the handler pipeline (``PIPELINE``); else LLVM's standard
        -O<speed_level> pipeline."""
        if speed_level is None and PIPELINE is None:
            speed_level = self.levels[0]
        tuning = llvm.create_pipeline_tuning_options(speed_level=speed_level or 0)
        builder = llvm.create_pass_builder(self.target_machine, tuning)
        if speed_level is not None:
            passes = builder.getModulePassManager()
        else:
            passes = llvm.create_new_module_pass_manager()
            for name in PIPELINE or ():
                getattr(passes, f"add_{name}_pass")()
        try:
            passes.run(module, builder)
        finally:  # free LLVM's analysis managers now rather than at garbage collection
            passes.close()
            builder.close()

    def ir_text(self, module: ir.Module) -> str:
        """The module's IR for this engine's target (what library keys are made of)."""
        module.triple = self.triple
        module.data_layout = self.data_layout
        return str(module)

    def emit(self, text: str, speed_level: int | None) -> bytes:
        """Parse, verify, optimise and compile IR text to an object file (no cache)."""
        parsed = llvm.parse_assembly(text)
        parsed.verify()
        self._optimize(parsed, speed_level)
        return self.target_machine.emit_object(parsed)

    def object_key(self, kind: str, payload: bytes, speed_level: int | None) -> bytes:
        levels = (-1 if speed_level is None else speed_level, *self.levels)
        return entry_key(self.fingerprint, kind, levels, payload)

    # --- libraries ---------------------------------------------------------------------
    def add_library(
        self, module: ir.Module, names: list[str], *, speed_level: int | None = None
    ) -> dict[str, int]:
        """Load a module of native helpers into the permanent engine (from the object
        cache when it holds it); the addresses of the named functions. ``speed_level``
        None: the engine's handler pipeline, else LLVM's -O<speed_level>."""
        with self._lock:
            text = self.ir_text(module)
            key = self.object_key("library", text.encode(), speed_level)
            obj = self.objects.load(key)
            if obj is None:
                obj = self.emit(text, speed_level)
                self.objects.store(key, obj)
            self.engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
            self.engine.finalize_object()
            return {name: self.engine.get_function_address(name) for name in names}

    # --- handlers ----------------------------------------------------------------------
    def handler_key(self, code: bytes) -> bytes:
        """The cache key of a handler body: its bytes and this engine's options."""
        return self.object_key("handler", code, None)

    def _current_generation(self) -> _Generation:
        if self._generation is None or self._generation_bodies >= GENERATION_MODULES:
            self._generation = _Generation(self._new_engine())
            self._generation_bodies = 0
        self._generation_bodies += 1
        return self._generation

    def _remember(self, body: CompiledBody) -> None:
        self.cache[body.key] = body
        self.recent[body.key] = body
        self.recent.move_to_end(body.key)
        while len(self.recent) > RECENT_HANDLERS:
            self.recent.popitem(last=False)

    def _body(self, code: bytes, use_cache: bool) -> CompiledBody:
        """The body of the handler ``code``: loaded from the object cache, or compiled
        (and stored). ``use_cache`` False compiles afresh and stores nothing."""
        start = time.perf_counter()
        key = self.handler_key(code)
        name = f"dprobes_handler_{key.hex()[:24]}"
        if not use_cache:
            self._counter += 1
            name += f"_{self._counter}"  # unique: the same handler may be in a generation
        generation = self._generation
        if use_cache and generation is not None and name in generation.symbols:
            cached = True  # its last body was dropped, but its code is still loaded
        else:
            obj = self.objects.load(key) if use_cache else None
            cached = obj is not None
            if obj is None:
                obj = self.emit(self.ir_text(handler_module(code, name)), None)
                if use_cache:
                    self.objects.store(key, obj)
            generation = self._current_generation()
            generation.load(obj)
            generation.symbols.add(name)
        return CompiledBody(
            key.hex(), generation.address(name), generation, time.perf_counter() - start, cached
        )

    def compile_handlers(
        self, program: Program, probes: list[int], use_cache: bool = True
    ) -> dict[int, CompiledHandler]:
        """Native code for the given probes' handlers. Probes with the same handler bytes
        share one body; bodies in memory or in the object cache are not recompiled unless
        ``use_cache`` is False, which benchmarks use to time compilation."""
        out: dict[int, CompiledHandler] = {}
        with self._lock:
            bodies: dict[bytes, CompiledBody] = {}
            for probe in probes:
                code = program.handler(probe)
                body = bodies.get(code)
                if body is None:
                    known = self.cache.get(self.handler_key(code).hex()) if use_cache else None
                    body = bodies[code] = known or self._body(code, use_cache)
                    self._remember(body)
                out[probe] = CompiledHandler(body, program.probes[probe].code_start)
        return out

    def entry(self, body: CompiledBody, code_base: int) -> int:
        """The address of ``void entry(State *)`` calling ``body`` with ``code_base``."""
        with self._lock:
            address = body.entries.get(code_base)
            if address is None:
                self._counter += 1
                name = f"dprobes_entry_{self._counter}"
                text = self.ir_text(entry_module(name, body.address, code_base))
                body.generation.load(self.emit(text, None))
                address = body.entries[code_base] = body.generation.address(name)
            return address


def llvmlite_version() -> str:
    import llvmlite

    return llvmlite.__version__


def handler_module(code: bytes, name: str) -> ir.Module:
    """The module of one handler body, before optimisation."""
    require_llvmlite()
    from dprobes.vm.jit.function import HandlerLowering
    from dprobes.vm.jit.irgen import intrinsics
    from dprobes.vm.jit.rtlib import declare

    module = ir.Module(name=name)
    HandlerLowering(module, declare(module), intrinsics(module), code, name).build()
    return module


def entry_module(name: str, body_address: int, code_base: int) -> ir.Module:
    """``void name(State *state) { body(state, code_base) }`` (a tail call)."""
    from dprobes.vm.jit.irgen import I32, I64, PTR, VOID, Callee

    module = ir.Module(name=name)
    function = ir.Function(module, ir.FunctionType(VOID, [PTR]), name)
    builder = ir.IRBuilder(function.append_basic_block("entry"))
    body = Callee(ir.Constant(I64, body_address).inttoptr(PTR), ir.FunctionType(VOID, [PTR, I32]))
    builder.call(body, [function.args[0], ir.Constant(I32, code_base)], tail=True)
    builder.ret_void()
    return module


def compile_handlers(program: Program, probes: list[int]) -> dict[int, CompiledHandler]:
    return Engine.get().compile_handlers(program, probes)


def handler_ir(program: Program, probe: int) -> str:
    """The LLVM IR of one handler body before optimisation (for debugging and docs)."""
    return str(handler_module(program.handler(probe), "handler"))
