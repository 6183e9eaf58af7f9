"""``dpc``: the dprobes command line (build, check, disasm, exec).

Every failure caused by the input is reported as ``file:line:col: error: ...`` with the
source line and a caret (or ``file: byte N`` for binary files) and exit status 2; the
command never shows a Python traceback for bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Sequence

from dprobes import __version__
from dprobes.cli.exec_cmd import (
    UsageError,
    add_exec_options,
    execute,
    make_vm,
    result_json,
    result_text,
)
from dprobes.cli.run_cmd import add_run_options
from dprobes.cli.run_cmd import cmd_run as run_machine
from dprobes.compiler import ppdf
from dprobes.compiler.diagnostics import CompileError, Diagnostic, SourceCache
from dprobes.compiler.disasm import describe_opcodes, disassemble
from dprobes.compiler.pipeline import BuildOptions, CompileResult, default_output, load_program
from dprobes.vm import flavour

EXIT_OK, EXIT_INPUT, EXIT_INTERNAL = 0, 2, 70
EXIT_BROKEN_PIPE = 128 + 13
"""What a shell reports for a program that SIGPIPE ended."""


def _report(diagnostics: list[Diagnostic], sources: SourceCache) -> None:
    for diagnostic in diagnostics:
        print(diagnostic.render(sources), file=sys.stderr)


def _options(args: argparse.Namespace) -> BuildOptions:
    defines = {}
    for define in args.define or ():
        key, _, value = define.partition("=")
        if not key.strip():
            raise UsageError(f"-D takes KEY=VALUE, got '{define}'")
        defines[key.strip()] = value.strip() if value.strip() else "1"
    for directory in args.include or ():
        if not os.path.isdir(directory):
            raise UsageError(f"-I: not a directory: {directory}")
    return BuildOptions(defines, tuple(args.include or ()), args.elf, args.sym, args.kernel_image)


def _load(args: argparse.Namespace, sources: SourceCache, path: str | None = None) -> CompileResult:
    """Compile (or read) ``path`` (default: the command's FILE), printing its warnings."""
    result = load_program(path or args.file, _options(args))
    _report(result.diagnostics, sources)
    return result


def cmd_build(args: argparse.Namespace, sources: SourceCache) -> int:
    result = _load(args, sources)
    output = args.output or default_output(args.file)
    data = ppdf.encode_ppdf(result.program)
    try:
        with open(output, "wb") as stream:
            stream.write(data)
    except OSError as error:
        raise UsageError(f"cannot write {output}: {error.strerror}") from None
    if args.json:
        print(
            json.dumps(
                {
                    "output": output,
                    "bytes": len(data),
                    "probes": len(result.program.probes),
                    "code_bytes": len(result.program.code),
                }
            )
        )
    else:
        print(
            f"{output}: {len(result.program.probes)} probe(s), "
            f"{len(result.program.code)} bytes of RPN code, {len(data)} bytes"
        )
    return EXIT_OK


def cmd_check(args: argparse.Namespace, sources: SourceCache) -> int:
    """Check every file, reporting each one's errors; exit 2 if any file has one."""
    status = EXIT_OK
    for path in args.files:
        try:
            result = _load(args, sources, path)
        except CompileError as error:
            _report(error.diagnostics, sources)
            status = EXIT_INPUT
            continue
        program = result.program
        print(f"{path}: ok: {len(program.probes)} probe(s), {len(program.code)} bytes of RPN code")
    return status


def cmd_disasm(args: argparse.Namespace, sources: SourceCache) -> int:
    if args.help_opcodes:
        print(describe_opcodes())
        return EXIT_OK
    if args.file is None:
        raise UsageError("disasm needs a FILE (or --help-opcodes)")
    print(disassemble(_load(args, sources).program), end="")
    return EXIT_OK


def cmd_exec(args: argparse.Namespace, sources: SourceCache) -> int:
    vm = make_vm(_load(args, sources).program, args)
    result, setup = execute(vm, args)
    if args.json:
        print(json.dumps(result_json(result, vm, setup)))
    else:
        print(result_text(result, vm))
    return EXIT_OK


def cmd_run(args: argparse.Namespace, sources: SourceCache) -> int:
    return run_machine(args, _options(args))


def _source_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-D",
        dest="define",
        action="append",
        metavar="KEY=VALUE",
        help="define a preprocessor macro",
    )
    parser.add_argument(
        "-I",
        dest="include",
        action="append",
        metavar="DIR",
        help="add an #include search directory",
    )
    parser.add_argument("--elf", help="resolve symbols from this i386 ELF file")
    parser.add_argument("--sym", help="resolve symbols from this System.map-style file")
    parser.add_argument(
        "--kernel-image",
        metavar="PATH",
        help="the guest kernel image (default: the built guest/bin/vmlinux): the symbol "
        "source of kernel programs, and what dpc run checks kernel probes against",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dpc", description="Compile, inspect and run DProbes RPN probe programs."
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"dpc {__version__} (interpreter: {flavour.describe()})",
    )
    commands = parser.add_subparsers(dest="subcommand", required=True, metavar="COMMAND")

    build = commands.add_parser("build", help="compile RPN source to a PPDF file")
    build.add_argument("file", metavar="FILE")
    build.add_argument("-o", "--output", metavar="OUT.ppdf")
    build.add_argument("--json", action="store_true", help="print a JSON summary")
    _source_options(build)
    build.set_defaults(run=cmd_build)

    check = commands.add_parser("check", help="compile and verify, write nothing")
    check.add_argument("files", metavar="FILE", nargs="+")
    _source_options(check)
    check.set_defaults(run=cmd_check)

    disasm = commands.add_parser("disasm", help="list a PPDF or source file's code")
    disasm.add_argument("file", metavar="FILE", nargs="?")
    disasm.add_argument(
        "--help-opcodes",
        action="store_true",
        help="describe every opcode and the 5.0 quirks, then exit",
    )
    _source_options(disasm)
    disasm.set_defaults(run=cmd_disasm)

    run = commands.add_parser("exec", help="fire one probe handler against a given context")
    run.add_argument("file", metavar="FILE")
    _source_options(run)
    add_exec_options(run)
    run.set_defaults(run=cmd_exec)

    machine = commands.add_parser(
        "run", help="run a guest program on the emulated machine with probes inserted"
    )
    _source_options(machine)
    add_run_options(machine)
    machine.set_defaults(run=cmd_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sources = SourceCache()
    try:
        return args.run(args, sources)
    except CompileError as error:
        _report(error.diagnostics, sources)
        return EXIT_INPUT
    except UsageError as error:
        print(f"dpc {args.subcommand}: error: {error}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (``dpc ... | head``): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except Exception as error:  # a bug in dpc, not in the input
        if os.environ.get("DPROBES_TRACEBACK"):
            traceback.print_exc()
        print(
            f"dpc: internal error: {error!r} (set DPROBES_TRACEBACK=1 for details; "
            "please report it)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL
