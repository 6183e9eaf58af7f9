"""The pass pipeline: preprocess -> parse -> lower -> assemble -> verify.

Each pass reads the previous one's product and reports into one DiagnosticSink; the
pipeline stops after the first pass that reported an error and keeps every warning.
``load_program`` also accepts a PPDF file (recognised by its magic) and verifies it, so
whatever reaches the VM has passed the verifier.

Symbols come from ``--elf`` and ``--sym``; without ``--elf``, a kernel program
(``modtype = kernel``) takes the kernel image's symbols (``--kernel-image``, by default
``kernel_layout.KERNEL_IMAGE``), and any other program whose ``name`` is an ELF
file (a path relative to the working directory, as the runtime opens it) takes that
file's symbols.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dprobes import kernel_layout
from dprobes.compiler import ppdf
from dprobes.compiler.assembler import assemble
from dprobes.compiler.diagnostics import (
    ByteLoc,
    CompileError,
    Diagnostic,
    DiagnosticSink,
    Severity,
    SourceLoc,
)
from dprobes.compiler.lower_rpn import lower_rpn
from dprobes.compiler.preprocess import MAX_SOURCE_BYTES, first_binary_byte, preprocess
from dprobes.compiler.rpn_ast import File, Item
from dprobes.compiler.rpn_parser import parse_rpn
from dprobes.compiler.symbols import SymbolTable
from dprobes.compiler.verifier import verify
from dprobes.vm.program import ModuleType, Program


@dataclass(frozen=True)
class BuildOptions:
    """What the command line passes to the front end."""

    defines: Mapping[str, str] = field(default_factory=dict)
    include_dirs: Sequence[str] = ()
    elf: str | None = None
    sym: str | None = None
    kernel: str | None = None
    """The kernel image (``--kernel-image``); None: the built one."""


@dataclass(frozen=True)
class CompileResult:
    """A verified program and the warnings that came with it."""

    program: Program
    diagnostics: list[Diagnostic]
    name_loc: SourceLoc | None = None
    """Where the source says ``name = ...`` (None for a PPDF file)."""


def _header_item(tree: File, keyword: str) -> Item | None:
    """The program's first ``keyword = ...`` item (the header's, for a header keyword)."""
    return next(
        (s for s in tree.body if isinstance(s, Item) and s.keyword.lower() == keyword), None
    )


def _kernel_symbols(options: BuildOptions, sink: DiagnosticSink) -> SymbolTable | None:
    """The kernel image's symbols: ``--kernel-image`` must exist; a missing built image only
    matters (as a hint) if the program uses a symbol."""
    image = kernel_layout.KERNEL_IMAGE
    if options.kernel is None and not image.is_file():
        return SymbolTable(
            missing=f"the kernel image {image} is not built: give --kernel-image PATH"
        )
    return SymbolTable.from_elf(options.kernel or str(image), sink)


def _named_elf_symbols(name: Item, sink: DiagnosticSink) -> SymbolTable | None:
    """The symbols of the file ``name`` names, if it is an ELF file. One that has none to
    give is only a warning: the program may not need symbols."""
    if not os.path.isfile(name.value):
        hint = relative_name_hint(name.value)
        missing = f"'name = {name.value}' names no file" + (f"; {hint}" if hint else "")
        return SymbolTable(missing=missing)
    problems = DiagnosticSink()
    table = SymbolTable.from_elf(name.value, problems)
    for problem in problems.errors:
        if problem.loc != ByteLoc(name.value, 0):  # not an ELF file at all: nothing to say
            sink.warning(name.value_loc, f"no symbols from {name.value}: {problem.message}")
    return table


def relative_name_hint(path: str) -> str:
    """Where a relative ``name`` path is looked up, for messages ('' for an absolute one)."""
    if os.path.isabs(path):
        return ""
    return f"a relative name is looked up in the current directory, {os.getcwd()}"


def _symbols(options: BuildOptions, sink: DiagnosticSink, tree: File) -> SymbolTable | None:
    """The symbol table of ``--elf`` (else of the kernel image for a kernel program, else
    of the ELF file ``name`` names) and ``--sym``."""
    tables = []
    name = _header_item(tree, "name")
    modtype = _header_item(tree, "modtype")
    if options.elf:
        tables.append(SymbolTable.from_elf(options.elf, sink))
    elif modtype is not None and modtype.value.lower() == ModuleType.KERNEL.name.lower():
        tables.append(_kernel_symbols(options, sink))
    elif name is not None:
        tables.append(_named_elf_symbols(name, sink))
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
    pre = preprocess(path, sink, options.defines, options.include_dirs, text=text)
    ast = parse_rpn(pre, sink) if pre is not None and sink.ok else None
    name = _header_item(ast, "name") if ast is not None else None
    symbols = _symbols(options, sink, ast) if ast is not None and sink.ok else None
    ir = lower_rpn(ast, sink, symbols) if ast is not None and sink.ok else None
    program = assemble(ir, sink) if ir is not None and sink.ok else None
    if program is None or not verify(program, sink, path):
        raise CompileError(sink.diagnostics)
    return CompileResult(program, sink.diagnostics, name.value_loc if name else None)


def load_program(path: str, options: BuildOptions = BuildOptions()) -> CompileResult:
    """Compile a source file or load and verify a PPDF file, whichever ``path`` holds."""
    try:
        with open(path, "rb") as stream:
            head = stream.read(len(ppdf.MAGIC))
            binary = first_binary_byte(head + stream.read(MAX_SOURCE_BYTES))
    except OSError:
        head, binary = b"", None  # let the preprocessor report the problem with the file
    if head != ppdf.MAGIC and binary is not None:
        raise CompileError(
            [
                Diagnostic(
                    Severity.ERROR,
                    f"not a PPDF file (bad magic 0x{head.hex()}) and not RPN text "
                    f"(binary bytes at offset {binary})",
                    ByteLoc(path, binary),
                )
            ]
        )
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
