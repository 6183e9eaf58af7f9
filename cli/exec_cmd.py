"""``dpc exec``: fire one probe handler against a context given on the command line.

This is the conformance entry point; its JSON output is a fixed contract (see the
README): exit, exit_to, exception, log, ex_log, stack, lv, gv, major, minor, jumps, mem.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from dprobes.vm.api import DEFAULT_HOT_THRESHOLD, TIERS, VM, FireResult
from dprobes.vm.context import MemoryContext
from dprobes.vm.program import Program
from dprobes.vm.registers import REGISTERS_BY_NAME, VALUE_BITS, Register


class UsageError(ValueError):
    """A command-line value that cannot be used; reported with exit status 2."""


def parse_int(text: str, what: str) -> int:
    """Decimal, 0x-hex, 0o, 0b or negative integer from the command line."""
    try:
        return int(text, 0)
    except ValueError:
        raise UsageError(f"{what}: '{text}' is not a number") from None


def parse_sized(text: str, what: str, bits: int) -> int:
    """A number that must fit in ``bits`` bits; a negative one is its two's complement."""
    value = parse_int(text, what)
    if not -(1 << (bits - 1)) <= value < 1 << bits:
        raise UsageError(f"{what}: {text} does not fit in {bits} bits")
    return value & ((1 << bits) - 1)


def parse_at_least(text: str, what: str, minimum: int, maximum: int | None = None) -> int:
    """A whole number in ``minimum..maximum`` (no upper end when ``maximum`` is None)."""
    value = parse_int(text, what)
    if value < minimum or (maximum is not None and value > maximum):
        upper = f"..{maximum}" if maximum is not None else " or more"
        raise UsageError(f"{what}: must be {minimum}{upper}, got '{text}'")
    return value


def _pairs(values: list[str] | None, option: str) -> list[tuple[str, str]]:
    out = []
    for value in values or ():
        key, sep, rest = value.partition("=")
        if not sep or not key or not rest:
            raise UsageError(f"{option} takes KEY=VALUE, got '{value}'")
        out.append((key.strip(), rest.strip()))
    return out


def add_exec_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--probe", type=int, default=0, help="probe index in file order")
    parser.add_argument(
        "--reg",
        action="append",
        metavar="NAME=VALUE",
        help="register value; u.NAME for the user-mode set (repeatable)",
    )
    parser.add_argument(
        "--mem",
        action="append",
        metavar="ADDR=HEXBYTES",
        help="readable/writable memory; every other address faults",
    )
    parser.add_argument("--lv", action="append", metavar="I=V", help="local variable")
    parser.add_argument("--gv", action="append", metavar="I=V", help="global variable")
    parser.add_argument("--pid", default="0", help="value of push pid")
    parser.add_argument("--task", default="0", help="value of push task")
    parser.add_argument("--cpu", default="0", help="value of push procid")
    parser.add_argument("--io", action="append", metavar="PORT=VALUE", help="IO port value")
    parser.add_argument(
        "--seg",
        action="append",
        metavar="SEL=BASE",
        help="valid segment selector and its base (seg2lin)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="fire the handler N times on the same VM, report the last",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_tier_options(parser)
    parser.add_argument(
        "--hot-threshold",
        type=int,
        default=DEFAULT_HOT_THRESHOLD,
        metavar="N",
        help="with --tier auto: hits interpreted before compiling",
    )


def add_tier_options(parser: argparse.ArgumentParser) -> None:
    """``--tier`` and ``--no-cache``, the same for ``dpc exec`` and ``dpc run``."""
    parser.add_argument(
        "--tier",
        choices=TIERS,
        default="auto",
        help="execution tier: auto (the default: interpret a handler until "
        "it is hot, then compile it), jit (compile every handler first) or "
        "interp (the reference interpreter only)",
    )
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="compile handlers afresh: neither read nor write the JIT's object-code cache",
    )


def apply_tier_options(args: argparse.Namespace) -> None:
    """Pass ``--no-cache`` down to the JIT (before anything is compiled)."""
    from dprobes.vm.jit import set_object_cache

    set_object_cache(not args.no_cache)


@dataclass
class ExecSetup:
    context: MemoryContext
    regions: list[tuple[str, int]]  # (address as given, address)


def _register_value(register: Register, text: str, name: str) -> int:
    """A ``--reg`` value, which must fit the register (a negative one is its two's
    complement)."""
    bits = VALUE_BITS.get(register.shape)
    if bits is None:
        raise UsageError(f"--reg: {name} has no value of its own to give")
    return parse_sized(text, f"--reg {name}", bits)


def build_context(args: argparse.Namespace) -> ExecSetup:
    regs: dict[str, int] = {}
    user: dict[str, int] = {}
    for name, value in _pairs(args.reg, "--reg"):
        target, bare = (user, name[2:]) if name.lower().startswith("u.") else (regs, name)
        if bare.lower() not in REGISTERS_BY_NAME:
            raise UsageError(f"--reg: unknown register '{bare}'")
        target[bare.lower()] = _register_value(REGISTERS_BY_NAME[bare.lower()], value, name)
    memory: dict[int, bytes] = {}
    regions = []
    for address_text, hex_bytes in _pairs(args.mem, "--mem"):
        address = parse_sized(address_text, "--mem address", 32)
        try:
            memory[address] = bytes.fromhex(hex_bytes)
        except ValueError:
            raise UsageError(f"--mem {address_text}: '{hex_bytes}' is not hex bytes") from None
        regions.append((address_text, address))
    context = MemoryContext(
        regs,
        user,
        memory,
        pid=parse_sized(args.pid, "--pid", 32),
        task=parse_sized(args.task, "--task", 32),
        processor=parse_sized(args.cpu, "--cpu", 32),
        ports={
            parse_sized(p, "--io port", 16): parse_sized(v, "--io value", 32)
            for p, v in _pairs(args.io, "--io")
        },
        segments={
            parse_sized(s, "--seg selector", 16): parse_sized(b, "--seg base", 32)
            for s, b in _pairs(args.seg, "--seg")
        },
    )
    return ExecSetup(context, regions)


def _set_variables(values: list[int], pairs: list[tuple[str, str]], option: str) -> None:
    for index_text, value_text in pairs:
        index = parse_int(index_text, option)
        if not values:
            raise UsageError(f"{option} {index}: the program has no such variables")
        if not 0 <= index < len(values):
            raise UsageError(f"{option} {index}: index out of range 0..{len(values) - 1}")
        values[index] = parse_sized(value_text, f"{option} {index}", 32)


def make_vm(program: Program, args: argparse.Namespace) -> VM:
    """The VM for ``dpc exec``, on the tier the command line asked for."""
    from dprobes.vm.jit import JitUnavailable

    apply_tier_options(args)
    if args.hot_threshold < 0:
        raise UsageError(f"--hot-threshold: must be 0 or more, got '{args.hot_threshold}'")
    try:
        return VM(program, tier=args.tier, hot_threshold=args.hot_threshold)
    except JitUnavailable as error:
        raise UsageError(f"--tier {args.tier}: {error}") from None


def execute(vm: VM, args: argparse.Namespace) -> tuple[FireResult, ExecSetup]:
    if not 0 <= args.probe < len(vm.program.probes):
        raise UsageError(f"--probe {args.probe}: the program has {len(vm.program.probes)} probe(s)")
    if args.repeat < 1:
        raise UsageError("--repeat must be at least 1")
    setup = build_context(args)
    _set_variables(vm.locals, _pairs(args.lv, "--lv"), "--lv")
    _set_variables(vm.globals.values, _pairs(args.gv, "--gv"), "--gv")
    result = None
    for _ in range(args.repeat):
        result = vm.fire(args.probe, setup.context)
    assert result is not None
    return result, setup


def result_json(result: FireResult, vm: VM, setup: ExecSetup) -> dict:
    """The fixed ``dpc exec --json`` object."""
    exception = result.exception
    return {
        "exit": result.exit.value,
        "exit_to": result.exit_to,
        "exception": None
        if exception is None
        else {
            "code": int(exception.code),
            "parm1": exception.parm1,
            "parm2": exception.parm2,
        },
        "log": result.log.hex(),
        "ex_log": result.ex_log.hex(),
        "stack": list(result.stack),
        "lv": list(vm.locals),
        "gv": list(vm.globals.values),
        "major": result.major,
        "minor": result.minor,
        "jumps": result.jumps,
        "mem": {
            given: setup.context.region_bytes(address).hex() for given, address in setup.regions
        },
    }


def result_text(result: FireResult, vm: VM) -> str:
    """A human-readable summary of one hit."""
    lines = [
        f"exit: {result.exit.value}" + (f" {result.exit_to}" if result.exit_to is not None else "")
    ]
    if result.exception is not None:
        e = result.exception
        lines.append(f"exception: code=0x{int(e.code):04x} parm1=0x{e.parm1:x} parm2=0x{e.parm2:x}")
    lines.append(f"major/minor: {result.major}/{result.minor}   jumps: {result.jumps}")
    lines.append("stack (bottom first): " + " ".join(f"0x{w:x}" for w in result.stack))
    lines.append(f"log ({len(result.log)} bytes): {result.log.hex(' ')}")
    if result.ex_log:
        lines.append(f"exception log ({len(result.ex_log)} bytes): {result.ex_log.hex(' ')}")
    if vm.locals:
        lines.append("lv: " + " ".join(f"0x{v:x}" for v in vm.locals))
    return "\n".join(lines)
