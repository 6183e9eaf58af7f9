"""The pass pipeline: preprocess -> parse -> lower -> assemble -> verify.

Each pass reads the previous one's product and reports into one DiagnosticSink; the
pipeline stops after the first pass that reported an error and keeps every warning.
``load_program`` also accepts a PPDF file (recognised by its magic) and verifies it, so
whatever reaches the VM has passed the verifier.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dprobes.compiler import ppdf
from dprobes.compiler.assembler import assemble
from dprobes.compiler.diagnostics import ByteLoc, CompileError, Diagnostic, DiagnosticSink
from dprobes.compiler.lower_rpn import lower_rpn
from dprobes.compiler.preprocess import preprocess
from dprobes.compiler.rpn_parser import parse_rpn
from dprobes.compiler.symbols import SymbolTable
from dprobes.compiler.verifier import verify
from dprobes.vm.program import Program


@dataclass(frozen=True)
class BuildOptions:
    """What the command line passes to the front end."""

    defines: Mapping[str, str] = field(default_factory=dict)
    include_dirs: Sequence[str] = ()
    elf: str | None = None
    sym: str | None = None


@dataclass(frozen=True)
class CompileResult:
    """A verified program and the warnings that came with it."""

    program: Program
    diagnostics: list[Diagnostic]


def _symbols(options: BuildOptions, sink: DiagnosticSink) -> SymbolTable | None:
    tables = []
    if options.elf:
        tables.append(SymbolTable.from_elf(options.elf, sink))
    if options.sym:
        tables.append(SymbolTable.from_system_map(options.sym, sink))
    loaded = [table for table in tables if table is not None]
    if not loaded:
        return None
    return SymbolTable.merged(loaded)


def compile_rpn(
    path: str, options: BuildOptions = BuildOptions(), text: str | None = None
) -> CompileResult:
    """Compile RPN source to a verified Program; raise CompileError with the diagnostics."""
    sink = DiagnosticSink()
    symbols = _symbols(options, sink)
    pre = (
        preprocess(path, sink, options.defines, options.include_dirs, text=text)
        if sink.ok
        else None
    )
    ast = parse_rpn(pre, sink) if pre is not None and sink.ok else None
    ir = lower_rpn(ast, sink, symbols) if ast is not None and sink.ok else None
    program = assemble(ir, sink) if ir is not None and sink.ok else None
    if program is None or not verify(program, sink, path):
        raise CompileError(sink.diagnostics)
    return CompileResult(program, sink.diagnostics)


def load_program(path: str, options: BuildOptions = BuildOptions()) -> CompileResult:
    """Compile a source file or load and verify a PPDF file, whichever ``path`` holds."""
    try:
        with open(path, "rb") as stream:
            head = stream.read(len(ppdf.MAGIC))
    except OSError:
        head = b""  # let the preprocessor report the problem with the file
    if head != ppdf.MAGIC:
        return compile_rpn(path, options)
    sink = DiagnosticSink()
    try:
        program = ppdf.load_ppdf(path)
    except ppdf.PPDFError as error:
        sink.error(ByteLoc(path, error.offset), error.message)
        raise CompileError(sink.diagnostics) from None
    if not verify(program, sink, path):
        raise CompileError(sink.diagnostics)
    return CompileResult(program, sink.diagnostics)


def default_output(path: str) -> str:
    """``probe.rpn`` -> ``probe.ppdf``."""
    return str(Path(path).with_suffix(".ppdf"))
