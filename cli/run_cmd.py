"""``dpc run``: run a guest program on the emulated machine with probe programs inserted.

The program gets dpc's own stdin, stdout and stderr (``Stdio.host()``) and environment
(changed by ``--env``/``--unset``/``--clear-env``, as qemu-user's options change it);
``dpc run`` exits with its exit status (128 + signal number when a signal killed it, as a
shell reports it). Log records go to
the target each program names (or ``--log-target``): KLOG text to ``--log-file`` or
stderr, COM1/COM2 raw records and EVL JSON Lines to ``--log-file``, LTT a CTF trace into
the directory ``--log-file`` names.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from typing import IO, TYPE_CHECKING

from dprobes.cli.exec_cmd import (
    UsageError,
    add_tier_options,
    apply_tier_options,
    parse_at_least,
)
from dprobes.compiler.diagnostics import CompileError, Diagnostic, Severity, SourceCache
from dprobes.compiler.pipeline import BuildOptions, load_program, relative_name_hint
from dprobes.vm.logrecord import LOG_FIELDS_HELP, parse_log_fields
from dprobes.vm.program import LogField, LogTarget, ModuleType, Program

if TYPE_CHECKING:
    from dprobes.runtime.filesystem import FileSystemView
    from dprobes.runtime.kernel import TimedInsmod
    from dprobes.runtime.logformat.writer import LogWriter, TraceWriter
    from dprobes.runtime.machine import Machine
    from dprobes.runtime.probes import LoadedProgram, ProbeManager
    from dprobes.runtime.process import Process

EXIT_STOPPED = 124
"""dpc run's exit status when ``--max-instructions`` stopped the guest (as timeout(1))."""
EXIT_INSMOD = 1
"""dpc run's exit status when an ``--insmod`` module did not load (insmod's own status);
the program is not run."""


def add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--probes",
        action="append",
        metavar="FILE",
        default=[],
        help="probe program (RPN source or PPDF) to insert (repeatable)",
    )
    parser.add_argument("--log", metavar="FIELDS", help=f"record header {LOG_FIELDS_HELP}")
    parser.add_argument("--log-target", choices=[t.name for t in LogTarget])
    parser.add_argument(
        "--log-file", metavar="PATH", help="where log records go (emptied first; see --append)"
    )
    parser.add_argument(
        "--append", action="store_true", help="add to an existing --log-file, do not empty it"
    )
    parser.add_argument(
        "-f",
        "--unformatted",
        action="store_true",
        help="KLOG: the data as hex bytes on the header's line instead of dump rows",
    )
    parser.add_argument(
        "--smp-header",
        action="store_true",
        help="log headers as an SMP build of DProbes 5.0 wrote them (with the cpu number)",
    )
    parser.add_argument("--dont-verify-opcodes", action="store_true")
    parser.add_argument(
        "--merge", action="store_true", help="a second program for the same executable is merged in"
    )
    parser.add_argument(
        "--replace",
        action="store_true",
        help="a second program for the same executable replaces the first",
    )
    parser.add_argument(
        "--group",
        metavar="LIST",
        help="insert only probes of these groups (comma-separated numbers)",
    )
    parser.add_argument(
        "--type", metavar="LIST", help="insert only probes of these types (comma-separated numbers)"
    )
    parser.add_argument("--query", action="store_true", help="print the probe records at the end")
    parser.add_argument("--getvars", action="store_true", help="print the variables at the end")
    parser.add_argument(
        "--max-instructions", default=None, help="stop a program that runs longer than this"
    )
    parser.add_argument(
        "--root",
        metavar="DIR",
        help="the guest's / is DIR (it cannot see or change anything outside it)",
    )
    parser.add_argument(
        "--read-only", action="store_true", help="the guest may change no file (EROFS)"
    )
    parser.add_argument("--file", action="append", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--seed", default="0", help="seed of the machine's random numbers")
    add_environment_options(parser)
    parser.add_argument(
        "--memory",
        metavar="SIZE",
        help="guest memory, e.g. 512M or 2G (the default and the limits: README); a guest "
        "that needs more gets ENOMEM or is killed with SIGKILL, as by Linux's OOM killer",
    )
    add_tier_options(parser)
    parser.add_argument(
        "--kernel",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="system calls enter the guest kernel guest/bin/vmlinux (the default; "
        "docs/kernel.md); --no-kernel runs them on the host directly, a faster shortcut "
        "in which kernel and kmod probes have nothing to fire in",
    )
    parser.add_argument(
        "--tick",
        metavar="N",
        help="a timer interrupt every N guest instructions (default 1000000)",
    )
    parser.add_argument(
        "--insmod",
        action="append",
        default=[],
        metavar="MOD.o[@N][:P=V,...]",
        help="load a kernel module (parameters P=V) before the program starts, or with @N "
        "when the machine has run N instructions (at the first block boundary from there in "
        "user mode); not with --no-kernel (repeatable, loaded in order; a failed load: status "
        "1, the program not run if it was to load before it)",
    )
    parser.add_argument(
        "--dmesg", action="store_true", help="print the guest kernel's log at the end"
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print a JSON summary (status, records, variables, logs, unimplemented syscalls)",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="-- PROGRAM [ARGS]...")


def add_environment_options(parser: argparse.ArgumentParser) -> None:
    """The guest's environment, as qemu-user makes it: dpc's own, less ``--unset`` names,
    plus ``--env`` settings (``--clear-env`` starts from nothing)."""
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="set a variable"
    )
    parser.add_argument(
        "--unset", action="append", default=[], metavar="NAME", help="remove a variable"
    )
    parser.add_argument("--clear-env", action="store_true", help="start from an empty environment")


def guest_environment(args: argparse.Namespace) -> dict[str, str]:
    """The environment the guest starts with (see ``add_environment_options``)."""
    env = {} if args.clear_env else _host_environment()
    for name in args.unset:
        if not name or "=" in name:
            raise UsageError(f"--unset: not a variable name: '{name}'")
        env.pop(name, None)
    for setting in args.env:
        name, equals, value = setting.partition("=")
        if not name or not equals:
            raise UsageError(f"--env: expected NAME=VALUE, got '{setting}'")
        env[name] = value
    return env


def _host_environment() -> dict[str, str]:
    """dpc's environment as it was started. Python's start-up may have set LC_CTYPE
    (PEP 538 locale coercion), so that one variable is taken from /proc/self/environ,
    which keeps the environment the process was started with."""
    env = dict(os.environ)
    try:
        with open("/proc/self/environ", "rb") as stream:
            started = stream.read().split(b"\0")
    except OSError:
        return env
    ctype = next((item[9:] for item in started if item.startswith(b"LC_CTYPE=")), None)
    if ctype is None:
        env.pop("LC_CTYPE", None)
    else:
        env["LC_CTYPE"] = os.fsdecode(ctype)
    return env


def _numbers(text: str | None, option: str) -> set[int] | None:
    """A ``--group``/``--type`` list: probe records keep these as 16-bit numbers."""
    if text is None:
        return None
    words = text.replace(",", " ").split()
    if not words:
        raise UsageError(f"{option}: give at least one number")
    return {parse_at_least(word, option, 0, 0xFFFF) for word in words}


def _fields(text: str | None) -> LogField | None:
    if text is None:
        return None
    try:
        return parse_log_fields(text)
    except ValueError as error:
        raise UsageError(f"--log: {error} ({LOG_FIELDS_HELP})") from None


def _target(args: argparse.Namespace, path: str, program: Program) -> LogTarget:
    """The log target of a program's records (``--log-target`` overrides its own)."""
    target = LogTarget[args.log_target] if args.log_target else program.header.log_target
    if target is not LogTarget.KLOG and not args.log_file:
        raise UsageError(f"{path}: log target {target.name} needs --log-file")
    return target


def _writer(
    args: argparse.Namespace, targets: dict[str, LogTarget], opened: list[IO], command: list[str]
) -> LogWriter | TraceWriter:
    """The writer of every record: to ``--log-file`` (opened before the guest starts), or
    KLOG text to stderr, flushed after every write so it interleaves with the program's
    own output as it happens; LTT's trace into the ``--log-file`` directory."""
    from dprobes.runtime.logformat.layouts import layout_for
    from dprobes.runtime.logformat.writer import LogWriter

    if args.log_target == LogTarget.LTT.name or LogTarget.LTT in targets.values():
        writer = _trace_writer(args, targets, command)
        opened.append(writer.trace_file)
        return writer

    layouts = {
        name: layout_for(target, args.unformatted, args.smp_header)
        for name, target in targets.items()
    }
    if not args.log_file:

        def stderr() -> IO:
            sys.stderr.flush()
            return sys.stderr.buffer

        return LogWriter(layouts, stderr, shared=True)

    stream = _open_log_file(args)
    opened.append(stream)
    return LogWriter(layouts, lambda: stream)


def _trace_writer(
    args: argparse.Namespace, targets: dict[str, LogTarget], command: list[str]
) -> TraceWriter:
    """LTT's trace writer, its directory made ready before the guest starts; the trace's
    UUID comes from the run's inputs (seed, command, executable, probe programs, --log)."""
    from pathlib import Path

    from dprobes.runtime.logformat.ctf import prepare_directory, trace_uuid
    from dprobes.runtime.logformat.writer import TraceWriter

    others = sorted({t.name for t in targets.values()} - {LogTarget.LTT.name})
    if others:
        raise UsageError(
            f"log targets LTT and {', '.join(others)} cannot share --log-file "
            "(LTT writes a trace directory; choose one with --log-target)"
        )
    if not args.log_file:
        raise UsageError("log target LTT needs --log-file (the trace's directory)")
    if args.append:
        raise UsageError("--append: an LTT trace is written anew each run")
    directory = Path(args.log_file)
    try:
        prepare_directory(directory)
    except ValueError as error:
        raise UsageError(f"--log-file: {error}") from None
    inputs = [args.seed, "\0".join(command), args.log or "", *args.probes]
    files = [command[0], *args.probes]
    contents = [Path(path).read_bytes() if os.path.isfile(path) else b"" for path in files]
    trace_id = trace_uuid(*(text.encode() for text in inputs), *contents)
    return TraceWriter(targets, directory, trace_id)


def _open_log_file(args: argparse.Namespace) -> IO:
    """``--log-file``, opened before the guest starts (so a bad path costs no run):
    emptied, as strace and perf do, unless ``--append``."""
    try:
        return open(args.log_file, "ab" if args.append else "wb")
    except OSError as error:
        raise UsageError(f"--log-file: {error.strerror}: {args.log_file}") from None


def _positive(text: str | None, option: str) -> int | None:
    """An option's whole number above 0 (None when the option is absent)."""
    return None if text is None else parse_at_least(text, option, 1)


def _file_system(args: argparse.Namespace) -> FileSystemView:
    """The guest's view of the host files, from ``--root`` and ``--read-only``."""
    if args.file:
        raise UsageError(
            "--file is gone: the guest sees the host file system; see --root/--read-only"
        )
    if args.root is not None and not os.path.isdir(args.root):
        raise UsageError(f"--root: not a directory: {args.root}")
    from dprobes.runtime.filesystem import FileSystemView

    return FileSystemView(root=args.root, read_only=args.read_only)


def _memory_size(text: str | None) -> int:
    """``--memory``, in bytes (the machine's default when absent)."""
    from dprobes.runtime.physmem import DEFAULT_SIZE, parse_size

    if text is None:
        return DEFAULT_SIZE
    try:
        return parse_size(text)
    except ValueError as error:
        raise UsageError(f"--memory: {error}") from None


def cmd_run(args: argparse.Namespace, options: BuildOptions) -> int:
    # the machine needs unicorn and llvmlite: load it only for this command
    from dprobes.runtime.elfload import LoadError
    from dprobes.runtime.host_signals import exit_status, stop_on_signals
    from dprobes.runtime.kernel import DEFAULT_TICK
    from dprobes.runtime.kernel_image import KernelImageError
    from dprobes.runtime.machine import InstructionLimit, Machine, StoppedBySignal
    from dprobes.runtime.probes import InsertError, ProbeManager
    from dprobes.runtime.stdio import Stdio
    from dprobes.runtime.syscalls.abi import SIGPIPE

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise UsageError("run needs a program: dpc run [options] -- PROGRAM [ARGS]...")
    limit = _positive(args.max_instructions, "--max-instructions")
    if args.insmod and not args.kernel:
        raise UsageError("--insmod needs the guest kernel: drop --no-kernel")
    modules = [_insmod_spec(spec) for spec in args.insmod]
    fs = _file_system(args)
    env = guest_environment(args)
    apply_tier_options(args)
    try:
        machine = Machine(
            seed=parse_at_least(args.seed, "--seed", 0),
            fs=fs,
            memory_size=_memory_size(args.memory),
            kernel=args.kernel,
            tick=DEFAULT_TICK if args.tick is None else _positive(args.tick, "--tick"),
        )
    except KernelImageError as exc:
        raise UsageError(f"--kernel: {exc}") from None
    manager = ProbeManager(
        machine,
        tier=args.tier,
        verify_opcodes=not args.dont_verify_opcodes,
        log_fields=_fields(args.log),
        keep_records=False,
        kernel_path=options.kernel,
    )
    targets = {}
    inserted: list[tuple[str, LoadedProgram]] = []
    for path in args.probes:
        program = _probe_program(path, options)
        try:
            loaded = manager.insert(
                program,
                merge=args.merge,
                replace_old=args.replace,
                groups=_numbers(args.group, "--group"),
                types=_numbers(args.type, "--type"),
            )
        except InsertError as error:
            raise UsageError(str(error)) from None
        targets[loaded.name] = _target(args, path, program)
        inserted.append((path, loaded))
        for record in loaded.records:
            if not record.armed and record.notes != ["not selected by group/type"]:
                where = record.point.location or f"0x{record.point.offset:x}"
                detail = (
                    f" actual opcode 0x{record.actual_opcode:02x}"
                    if record.actual_opcode is not None
                    else ""
                )
                print(
                    f"dpc run: warning: {path}: probe {record.index} at {where} not "
                    f"inserted: {record.status.describe()}{detail}"
                    + "".join(f"; {note}" for note in record.notes),
                    file=sys.stderr,
                )
    opened: list[IO] = []
    stopped = None
    signalled: StoppedBySignal | None = None
    manager.writer = _writer(args, targets, opened, command)
    try:
        sys.stdout.flush()  # the guest writes to fd 1 itself, after anything dpc printed
        process = machine.spawn(command[0], command, env, stdio=Stdio.host())
        failed_module, timed = _insert_modules(machine, process, modules)
        try:
            if failed_module is None:
                with stop_on_signals(machine):
                    machine.run(max_instructions=limit)
        except InstructionLimit as error:
            stopped = str(error)
        except StoppedBySignal as error:
            signalled = error
    except LoadError as error:
        raise UsageError(str(error)) from None
    finally:
        sys.stdout.flush()
        manager.writer.flush()
        for stream in opened:
            stream.close()
    _warn_programs_not_run(inserted, machine)
    failed_module = failed_module or _timed_insmods_failed(timed, machine)
    if args.dmesg and machine.guest_kernel is not None:
        sys.stderr.write(machine.guest_kernel.log.decode(errors="replace"))
    if process.crash is not None and process.signal != SIGPIPE:  # silent, as in a shell
        print(f"dpc run: pid {process.pid} killed: {process.crash}", file=sys.stderr)
    if signalled is not None:
        for where in signalled.where:
            print(f"dpc run: stopped by {signalled.signal_name}: {where}", file=sys.stderr)
        code = exit_status(signalled.signal)
    elif failed_module is not None:
        print(f"dpc run: --insmod {failed_module}", file=sys.stderr)
        code = EXIT_INSMOD
    elif stopped is not None:
        print(f"dpc run: stopped: {stopped}", file=sys.stderr)
        code = EXIT_STOPPED
    else:
        code = process.returncode or 0
        code = code if code >= 0 else 128 - code
    _report(args, manager, process, code, machine.unknown_syscalls, machine.cpu.counter.executed)
    return code


def _insmod_spec(spec: str) -> tuple[str, int | None, str]:
    """An ``--insmod`` value ``MOD.o[@N][:P=V,...]``: the object's path, the instruction
    count to load it at (None: before the program starts) and its parameters' text."""
    path, colon, params = spec.rpartition(":")
    if not colon or "=" not in params:
        path, params = spec, ""
    path, at_sign, count = path.rpartition("@")
    if not at_sign:
        return count, None, params
    if not path:
        raise UsageError(f"--insmod: no module object before '@' in '{spec}'")
    what = f"--insmod {spec}: the instruction count after '@'"
    return path, parse_at_least(count, what, 0), params


def _insert_modules(
    machine: Machine, process: Process, specs: list[tuple[str, int | None, str]]
) -> tuple[str | None, list[TimedInsmod]]:
    """Load the ``--insmod`` modules due before the program starts, in order, their init
    run as ``process`` (before its first instruction), and schedule the others: None or
    what went wrong with the first that failed, and the scheduled loads."""
    from dprobes.runtime.kernel import parse_params
    from dprobes.runtime.kmodule import ModuleError

    kernel = machine.guest_kernel
    assert kernel is not None or not specs
    timed = []
    for path, at, params in specs:
        try:
            if at is not None:
                timed.append(kernel.schedule_insmod(at, path, parse_params(params)))
            else:
                kernel.insmod(process, path, parse_params(params))
        except ModuleError as error:
            return str(error), timed
    return None, timed


def _timed_insmods_failed(timed: list[TimedInsmod], machine: Machine) -> str | None:
    """What went wrong with the first ``--insmod MOD.o@N`` that failed (None: none did);
    a warning for each that was still due when the run ended."""
    failed = None
    for load in timed:
        if load.loaded_at is None:
            print(
                f"dpc run: warning: --insmod {load.path}@{load.at}: not loaded: the run "
                f"ended at instruction {machine.cpu.counter.executed}",
                file=sys.stderr,
            )
        elif load.error is not None and failed is None:
            failed = f"{load.error} (at instruction {load.loaded_at})"
    return failed


def _probe_program(path: str, options: BuildOptions) -> Program:
    """A ``--probes`` program, its warnings printed; a user program's executable must
    exist (an error at its ``name =``, whose relative path is taken from the working
    directory, as the runtime opens it)."""
    result = load_program(path, options)
    sources = SourceCache()
    for diagnostic in result.diagnostics:
        print(diagnostic.render(sources), file=sys.stderr)
    header = result.program.header
    if header.modtype is not ModuleType.USER or os.path.isfile(header.name):
        return result.program
    message = f"no such executable file: {header.name}"
    if result.name_loc is None:
        raise UsageError(f"{path}: {message}")
    hint = relative_name_hint(header.name)
    hints = (hint,) if hint else ()
    raise CompileError([Diagnostic(Severity.ERROR, message, result.name_loc, hints)])


def _warn_programs_not_run(inserted: list[tuple[str, LoadedProgram]], machine: Machine) -> None:
    """A probe program whose executable no process ran has done nothing: say so."""
    ran = {process.image.file.id for process in machine.processes.values()}
    for path, loaded in inserted:
        if loaded.file is not None and loaded.file.id not in ran:
            print(
                f"dpc run: warning: {path}: no program named {loaded.name} ran; "
                f"its {len(loaded.records)} probe(s) were never hit",
                file=sys.stderr,
            )


def _report(
    args: argparse.Namespace,
    manager: ProbeManager,
    process,
    code: int,
    unimplemented: dict[int, int],
    instructions: int,
) -> None:
    from dprobes.runtime.syscalls import NAMES

    rows = manager.query()
    variables = manager.getvars()
    if args.json:
        print(
            json.dumps(
                {
                    "status": code,
                    "signal": process.signal,
                    "instructions": instructions,
                    "probe_hits": [
                        {
                            "module": r.module,
                            "probe": r.index,
                            "location": r.location,
                            "hits": r.hits,
                        }
                        for r in rows
                    ],
                    "records": [asdict(row) for row in rows],
                    "vars": variables,
                    "logs": manager.log_count,
                    "exits": manager.exits,
                    "native_hits": manager.native.hits if manager.native is not None else 0,
                    "unimplemented": [
                        {"number": number, "name": NAMES.get(number), "calls": calls}
                        for number, calls in sorted(unimplemented.items())
                    ],
                }
            ),
            file=sys.stderr,
        )
        return
    if args.query:
        for row in rows:
            line = (
                f"{row.module} probe {row.index} at {row.location}: {row.status} "
                f"count={row.count} hits={row.hits}"
            )
            if row.actual_opcode is not None:
                line += f" actual_opcode=0x{row.actual_opcode:02x}"
            print(line + "".join(f" ({note})" for note in row.notes), file=sys.stderr)
    if args.getvars:
        for module, values in variables.items():
            print(
                f"{module}: " + " ".join(f"{i}=0x{v:x}" for i, v in enumerate(values)),
                file=sys.stderr,
            )
