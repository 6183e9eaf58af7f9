"""Tests for lowering RPN to IR: every row of the instruction table, header and probe items,
defaults, clamps, warnings, and each error with its message and line:column."""

from __future__ import annotations

import re

import pytest

from dprobes.compiler.diagnostics import DiagnosticSink, Severity, SourceLoc
from dprobes.compiler.ir import IRInstruction, IRLabel, IRProgram
from dprobes.compiler.lower_rpn import lower_rpn
from dprobes.compiler.preprocess import Preprocessed
from dprobes.compiler.rpn_parser import parse_rpn
from dprobes.compiler.symbols import Symbol, SymbolTable
from dprobes.vm.isa import MNEMONIC_ALIASES, OPS_BY_NAME, TABLE, Operand, OpFlag, OpInfo
from dprobes.vm.program import (
    LogField,
    LogTarget,
    ModuleType,
    Probe,
    ProbeKind,
    ProgramHeader,
    WatchType,
)
from dprobes.vm.registers import REGISTERS_BY_INDEX

HEADER = "name = /bin/prog\nmodtype = user\nnum_lv = 4\nnum_gv = 4\noffset = 0x100\n"
CODE_LINE = 6  # the first line after HEADER


def lower(text: str, symbols: SymbolTable | None = None) -> tuple[IRProgram | None, DiagnosticSink]:
    sink = DiagnosticSink()
    lines = text.count("\n") + 1
    file = parse_rpn(Preprocessed(text, tuple(("t.rpn", i) for i in range(1, lines + 1))), sink)
    assert file is not None, [d.render() for d in sink]
    return lower_rpn(file, sink, symbols), sink


def ok(text: str, symbols: SymbolTable | None = None) -> IRProgram:
    program, sink = lower(text, symbols)
    assert program is not None and not sink.diagnostics, [d.render() for d in sink]
    return program


def first_instruction(code: str, symbols: SymbolTable | None = None) -> IRInstruction:
    (probe,) = ok(f"{HEADER}{code}\nexit\n", symbols).probes
    instruction = probe.body[0]
    assert isinstance(instruction, IRInstruction)
    return instruction


def reported(
    text: str, severity: Severity = Severity.ERROR, symbols: SymbolTable | None = None
) -> list[tuple[str, int, int]]:
    """(message, line, column) of each diagnostic of ``severity``."""
    program, sink = lower(text, symbols)
    if severity is Severity.ERROR:
        assert program is None
    found = []
    for diagnostic in sink:
        if diagnostic.severity is severity:
            assert isinstance(diagnostic.loc, SourceLoc)
            found.append((diagnostic.message, diagnostic.loc.line, diagnostic.loc.column))
    return found


def hints(text: str) -> tuple[str, ...]:
    _, sink = lower(text)
    (diagnostic,) = sink.errors
    return diagnostic.hints


# --- every instruction form ------------------------------------------------------------


def sample_operand(op: OpInfo) -> tuple[str, int | str]:
    """A valid operand for ``op`` as written, and its IR value."""
    kind = op.operand
    if kind is Operand.REG:
        register = next(
            r for r in REGISTERS_BY_INDEX.values() if getattr(r, f"{op.mnemonic}_{op.qualifier}")
        )
        return register.name, register.index
    return {
        Operand.REL32: ("target", "target"),
        Operand.IMM32: ("0x10", 16),
        Operand.U8: ("3", 3),
        Operand.U16: ("4", 4),
        Operand.S16: ("-2", -2),
        Operand.LV: ("1", 1),
        Operand.GV: ("2", 2),
    }[kind]


@pytest.mark.parametrize("op", TABLE, ids=lambda op: op.name)
def test_every_row_lowers(op: OpInfo) -> None:
    value: int | str | None = None
    text = op.syntax
    if op.operand is not Operand.NONE:
        written, value = sample_operand(op)
        text = re.sub(r"<\w+>", written, text)
    program, sink = lower(f"{HEADER}{text}\ntarget:\nexit\n")
    assert program is not None, [d.render() for d in sink]
    instruction = program.probes[0].body[0]
    assert instruction == IRInstruction(op, value, SourceLoc("t.rpn", CODE_LINE, 1, 1 + len(text)))
    expected_warnings = 1 if OpFlag.RESERVED in op.flags else 0
    assert len(sink.diagnostics) == expected_warnings, [d.render() for d in sink]


@pytest.mark.parametrize(
    ("text", "name"),
    [
        *((f"{op.mnemonic} {alias}", op.name) for op in TABLE for alias in op.aliases),
        *((alias, OPS_BY_NAME[name.upper()].name) for alias, name in MNEMONIC_ALIASES.items()),
        ("PUSH MEM_U32", "PUSH_MEM_U32"),
        ("Log Str", "LOG_STR"),
    ],
)
def test_alias_and_case_spellings(text: str, name: str) -> None:
    assert first_instruction(text).op is OPS_BY_NAME[name]


def test_register_names_are_case_insensitive() -> None:
    assert first_instruction("PUSH R, EAX").operand == 6


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("push -1", 0xFFFF_FFFF),
        ("push -2147483648", 0x8000_0000),
        ("push 4294967295", 0xFFFF_FFFF),
        ("push counter", 0x0804_9000),
        ("push counter+0x10", 0x0804_9010),
        ("push counter-1", 0x0804_8FFF),
    ],
)
def test_push_immediates_and_symbols(text: str, value: int) -> None:
    symbols = SymbolTable({"counter": Symbol("counter", 0x0804_9000)})
    instruction = first_instruction(text, symbols)
    assert (instruction.op.name, instruction.operand) == ("PUSH", value)


def test_operand_and_stack_forms_pick_their_rows() -> None:
    names = [
        first_instruction(text).op.name
        for text in ("log", "log 3", "dup", "dup 2", "setmin", "setmin 7")
    ]
    assert names == ["LOG", "LOG_I", "DUP", "DUP_I", "SETMIN", "SETMIN_I"]


# --- header and probe items ------------------------------------------------------------

FULL_HEADER = """\
NAME = my module
ModType = Kernel
major = 7
id = 0xdeadbeef
jmpmax = 100
logmax = 200
ex_logmax = 300
num_lv = 256
num_gv = 3
heapmax = 4096
autostacktrace = YES
log = PROCNAME PID UID SSESP CSEIP TSC
log_target = com2
offset = 0
exit
"""


def test_header_items() -> None:
    assert ok(FULL_HEADER).header == ProgramHeader(
        name="my module",
        modtype=ModuleType.KERNEL,
        major=7,
        id=0xDEADBEEF,
        jmpmax=100,
        logmax=200,
        ex_logmax=300,
        num_lv=256,
        num_gv=3,
        heapmax=4096,
        autostacktrace=True,
        log_fields=LogField.PROCNAME
        | LogField.PID
        | LogField.UID
        | LogField.SSESP
        | LogField.CSEIP
        | LogField.TSC,
        log_target=LogTarget.COM2,
    )


def test_header_defaults() -> None:
    header = ok("name = m\nmodtype = kmod\noffset = 0\nexit\n").header
    assert header == ProgramHeader("m", ModuleType.KMOD)
    assert (header.jmpmax, header.logmax, header.ex_logmax, header.heapmax) == (
        65535,
        1024,
        1024,
        16384,
    )
    assert (header.major, header.id, header.num_lv, header.num_gv, header.autostacktrace) == (
        0,
        0,
        0,
        0,
        False,
    )


@pytest.mark.parametrize(
    ("value", "fields"),
    [
        ("ALL", LogField.ALL),
        ("psw, upsw", LogField.SSESP | LogField.CSEIP),
        ("procname|tsc", LogField.PROCNAME | LogField.TSC),
        ("Pid, uid |cseip", LogField.PID | LogField.UID | LogField.CSEIP),
    ],
)
def test_log_fields(value: str, fields: LogField) -> None:
    assert (
        ok(f"name = m\nmodtype = user\nlog = {value}\noffset = 0\nexit\n").header.log_fields
        == fields
    )


@pytest.mark.parametrize(
    ("keyword", "value", "limit"),
    [
        ("jmpmax", 70000, 65535),
        ("logmax", 2000, 1024),
        ("ex_logmax", 1025, 1024),
        ("heapmax", 20000, 16384),
    ],
)
def test_clamps_warn(keyword: str, value: int, limit: int) -> None:
    text = f"name = m\nmodtype = user\n{keyword} = {value}\noffset = 0\nexit\n"
    program, _ = lower(text)
    assert program is not None and getattr(program.header, keyword) == limit
    assert reported(text, Severity.WARNING) == [
        (
            f"'{keyword}' {value} is over the kernel's limit; clamped to {limit} as DProbes 5.0 "
            "did",
            3,
            4 + len(keyword),
        )
    ]


def test_probe_items() -> None:
    text = """name = m
modtype = kernel
major = 9
offset = 0x10
address = absolute
opcode = 0x55
minor = 2
group = 3
Type = 4
pass_count = 5
maxhits = 6
logonfault = yes
ex_mask = 0xff
heap_size = 100
exit
watchpoint = 0x2000
watch_type = rw
length = 4
major = 1
passcount = 7
max_hits = 8
exit
"""
    first, second = ok(text).probes
    assert first.record == Probe(
        ProbeKind.BREAKPOINT,
        0x10,
        0,
        0,
        absolute=True,
        opcode=0x55,
        major=9,
        minor=2,
        group=3,
        type=4,
        pass_count=5,
        max_hits=6,
        logonfault=True,
        ex_mask=0xFF,
        heap_size=100,
        location="0x10",
    )
    assert first.loc == SourceLoc("t.rpn", 4, 1, 7)
    assert second.record == Probe(
        ProbeKind.WATCHPOINT,
        0x2000,
        0,
        0,
        major=1,
        pass_count=7,
        max_hits=8,
        watch_type=WatchType.READWRITE,
        watch_length=4,
        location="0x2000",
    )


def test_probe_defaults_take_the_program_major() -> None:
    (probe,) = ok("name = m\nmodtype = user\nmajor = 12\noffset = 3\nexit\n").probes
    assert probe.record == Probe(ProbeKind.BREAKPOINT, 3, 0, 0, major=12, location="3")
    assert (probe.record.ex_mask, probe.record.opcode, probe.record.absolute) == (
        0x0FFF,
        None,
        False,
    )


def test_symbolic_probe_locations() -> None:
    symbols = SymbolTable({"do_fork": Symbol("do_fork", 0xC011_0000)})
    text = (
        "name = k\nmodtype = kernel\noffset = do_fork+4\nexit\n"
        "offset = do_fork\naddress = absolute\nexit\n"
    )
    first, second = ok(text, symbols).probes
    assert (first.record.offset, first.record.location) == (0x11_0004, "do_fork+4")
    assert (second.record.offset, second.record.absolute) == (0xC011_0000, True)


def test_labels_and_probe_bodies() -> None:
    text = f"{HEADER}top: push 1\njz top\nexit\noffset = 0x200\nagain:\nexit\n"
    first, second = ok(text).probes
    assert [type(node).__name__ for node in first.body] == [
        "IRLabel",
        "IRInstruction",
        "IRInstruction",
        "IRInstruction",
    ]
    assert first.body[0] == IRLabel("top", SourceLoc("t.rpn", 6, 1, 4))
    jz = first.body[2]
    assert isinstance(jz, IRInstruction) and (jz.op.name, jz.operand) == ("JZ", "top")
    assert second.body[0] == IRLabel("again", SourceLoc("t.rpn", 10, 1, 6))


# --- errors ----------------------------------------------------------------------------


def code_error(code: str, symbols: SymbolTable | None = None) -> tuple[str, int]:
    """The one error of ``code`` (on the first code line): its message and column."""
    ((message, line, column),) = reported(f"{HEADER}{code}\nexit\n", symbols=symbols)
    assert line == CODE_LINE
    return message, column


@pytest.mark.parametrize(
    ("code", "message", "column"),
    [
        ("pusj 1", "unknown mnemonic 'pusj'", 1),
        ("  minor 3", "unknown mnemonic 'minor'", 3),
        ("pop eax", "unknown qualifier 'eax' for 'pop'", 5),
        (
            "pop",
            "'pop' needs a qualifier: gv, io_u16, io_u32, io_u8, lp, lv, mem_u16, mem_u32, "
            "mem_u64, mem_u8, r, sbp, stp, tsp, u",
            1,
        ),
        (
            "pop 3",
            "'pop' needs a qualifier before its operand: gv, io_u16, io_u32, io_u8, lp, lv, "
            "mem_u16, mem_u32, mem_u64, mem_u8, r, sbp, stp, tsp, u",
            5,
        ),
        ("jmp", "missing operand: 'jmp' needs a label", 1),
        ("push", "missing operand: 'push' needs a number or a symbol(+n)", 1),
        ("ret 1", "'ret' takes no operand", 5),
        ("log str 5", "'log str' takes no operand", 9),
        ("push 1, 2", "too many operands for 'push'", 9),
        ("dup 256", "operand 256 of 'dup' is out of range 0..255", 5),
        ("dup -1", "operand -1 of 'dup' is out of range 0..255", 5),
        ("push sbp, 40000", "operand 40000 of 'push sbp' is out of range -32768..32767", 11),
        ("pushh u8, 65536", "operand 65536 of 'pushh u8' is out of range 0..65535", 11),
        ("push 0x100000000", "immediate 4294967296 is out of range -2147483648..4294967295", 6),
        ("push -2147483649", "immediate -2147483649 is out of range -2147483648..4294967295", 6),
        ("jmp 5", "'jmp' needs a label, not '5'", 5),
        ("sx h+1", "'sx' needs a label, not 'h+1'", 4),
        ("dup x", "'dup' needs a number in 0..255, not 'x'", 5),
        ("push foo", "unknown symbol 'foo'", 6),
    ],
)
def test_instruction_errors(code: str, message: str, column: int) -> None:
    assert code_error(code) == (message, column)


@pytest.mark.parametrize(
    ("code", "message", "column"),
    [
        ("push r", "missing operand: 'push r' needs a register name", 1),
        ("push r, 6", "'push r' needs a register name, not '6'", 9),
        ("push r, eaxx", "unknown register 'eaxx'", 9),
        ("pop r, cs", "register 'cs' cannot be used with 'pop r'", 8),
        ("push u, cr0", "register 'cr0' cannot be used with 'push u'", 9),
        ("push r, fr0", "register 'fr0' cannot be used with 'push r'", 9),
        ("pop u, cr1", "register 'cr1' cannot be used with 'pop u'", 8),
        ("push lv, 65536", "operand 65536 of 'push lv' is out of range 0..65535", 10),
        ("inc gv, x", "'inc gv' needs a number in 0..65535, not 'x'", 9),
        ("setmin 65536", "operand 65536 of 'setmin' is out of range 0..65535", 8),
    ],
)
def test_register_and_index_errors(code: str, message: str, column: int) -> None:
    assert code_error(code) == (message, column)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("pusj 1", ("did you mean 'push'?",)),
        ("name x", ("'name' is a keyword: write 'name = <value>'",)),
        (
            "pop eax",
            (
                "did you mean 'pop r, eax'?",
                "'pop' takes: gv, io_u16, io_u32, io_u8, lp, lv, "
                "mem_u16, mem_u32, mem_u64, mem_u8, r, sbp, stp, tsp, u",
            ),
        ),
        ("vfy rr", ("did you mean 'vfy r'?", "'vfy' takes: r, rw")),
        ("push rr, eax", ("did you mean 'push r'?",)),
        ("jmp", ("write 'jmp <rel32>'",)),
        (
            "push eax",
            (
                "did you mean 'push r, eax'?",
                "no symbol table is loaded: give the "
                "module's ELF file or a System.map file (--sym)",
            ),
        ),
        (
            "push sbp-2",
            (
                "'sbp' is a qualifier of 'push': separate the number from it with a space or ','",
                "no symbol table is loaded: give the module's ELF file or a "
                "System.map file (--sym)",
            ),
        ),
    ],
)
def test_error_hints(code: str, expected: tuple[str, ...]) -> None:
    assert hints(f"{HEADER}{code}\nexit\n") == expected


def test_register_hints_list_what_the_instruction_takes() -> None:
    assert hints(f"{HEADER}pop r, cs\nexit\n") == (
        "'pop r' takes: ds, es, fs, gs, eax, ebx, ecx, edx, edi, esi, ebp",
    )
    assert hints(f"{HEADER}push u, eaxx\nexit\n")[0] == "did you mean 'eax'?"


@pytest.mark.parametrize(
    ("text", "message", "line", "column"),
    [
        ("nmae = x\n", "unknown keyword 'nmae'", 1, 1),
        ("modtype = elf\n", "'modtype' must be user|kernel|kmod, not 'elf'", 1, 11),
        ("autostacktrace = maybe\n", "'autostacktrace' must be yes|no, not 'maybe'", 1, 18),
        ("log = PID FOO\n", "unknown log field 'FOO'", 1, 7),
        ("log_target = tty\n", "'log_target' must be klog|ltt|com1|com2|evl, not 'tty'", 1, 14),
        ("log = PID|FOO,TSC\n", "unknown log field 'FOO'", 1, 7),
        ("num_lv = 257\n", "'num_lv' must be in 0..256, not 257", 1, 10),
        ("num_gv = -1\n", "'num_gv' must be in 0..256, not -1", 1, 10),
        ("major = x\n", "'major' needs a number in 0..65535, not 'x'", 1, 9),
        ("major = 1 2\n", "'major' needs a number, a symbol or symbol+offset, not '1 2'", 1, 11),
        ("id = 0x100000000\n", "'id' must be in 0..4294967295, not 4294967296", 1, 6),
        ("jmpmax = -1\n", "'jmpmax' must be in 0..4294967295, not -1", 1, 10),
        ("minor = 3\n", "'minor' is a probe keyword, but no probe has started", 1, 1),
    ],
)
def test_header_item_errors(text: str, message: str, line: int, column: int) -> None:
    modtype = "" if text.startswith("modtype") else "modtype = user\n"
    errors = reported(f"name = m\n{text}{modtype}offset = 0\nexit\n")
    assert errors == [(message, line + 1, column)]


@pytest.mark.parametrize(
    ("items", "message", "column"),
    [
        ("length = 4", "'length' is only for watchpoints", 1),
        ("watch_type = x", "'watch_type' is only for watchpoints", 1),
        ("jmpmax = 5", "'jmpmax' is a header keyword, but the first probe has started", 1),
        ("address = here", "'address' must be absolute|relative, not 'here'", 11),
        ("opcode = 256", "'opcode' must be in 0..255, not 256", 10),
        ("max_hits = 0x80000000", "'max_hits' must be in 0..2147483647, not 2147483648", 12),
        ("logonfault = 1", "'logonfault' must be yes|no, not '1'", 14),
        ("heap_size = 20000", "heap_size 20000 is over the program's heapmax 16384", 13),
        ("passcount = 1\npass_count = 2", "'pass_count' is given twice", 1),
    ],
)
def test_probe_item_errors(items: str, message: str, column: int) -> None:
    text = f"name = m\nmodtype = user\noffset = 0\n{items}\nexit\n"
    line = 4 + items.count("\n")
    assert reported(text) == [(message, line, column)]


@pytest.mark.parametrize(
    ("items", "message", "column"),
    [
        ("length = 3", "'length' must be 1|2|4, not '3'", 10),
        ("watch_type = z", "'watch_type' must be x|w|rw|io, not 'z'", 14),
    ],
)
def test_watchpoint_item_errors(items: str, message: str, column: int) -> None:
    text = f"name = m\nmodtype = user\nwatchpoint = 0\n{items}\nexit\n"
    assert reported(text) == [(message, 4, column)]


def test_duplicate_items_point_at_the_first() -> None:
    assert hints("name = a\nNAME = b\nmodtype = user\noffset = 0\nexit\n") == (
        "first given at t.rpn:1:1",
    )
    assert reported("name = a\nNAME = b\nmodtype = user\noffset = 0\nexit\n") == [
        ("'NAME' is given twice", 2, 1)
    ]


@pytest.mark.parametrize(
    ("text", "errors"),
    [
        (
            "offset = 0\nexit\n",
            [
                ("the program header has no 'name'", 1, 1),
                ("the program header has no 'modtype'", 1, 1),
            ],
        ),
        ("name = m\nmodtype = user\n", [("the program has no probes", 1, 1)]),
        (
            "",
            [
                ("the program header has no 'name'", 1, 1),
                ("the program header has no 'modtype'", 1, 1),
                ("the program has no probes", 1, 1),
            ],
        ),
        (
            "name = m\nmodtype = user\noffset = 0\noffset = 4\nexit\n",
            [("this probe has no instructions", 3, 1)],
        ),
        (
            "name = m\nmodtype = user\noffset = 0\nexit\nwatchpoint = 4\nL:\n",
            [("this probe has no instructions", 5, 1)],
        ),
        (
            "name = m\nmodtype = user\npush 1\nL:\noffset = 0\nexit\n",
            [("code before the first probe", 3, 1)],
        ),
        (
            "name = m\nmodtype = user\noffset = 0\nexit\nminor = 3\n",
            [("'minor' comes after the probe's code", 5, 1)],
        ),
        (
            "name = m\nmodtype = user\noffset = -4\nexit\n",
            [("a probe location must be in 0..0xffffffff, not -4", 3, 10)],
        ),
        ("name = m\nmodtype = user\noffset = main+4\nexit\n", [("unknown symbol 'main'", 3, 10)]),
        (
            "name = m\nmodtype = user\noffset = 0\nexit\nbogus = 1\n",
            [("unknown keyword 'bogus'", 5, 1)],
        ),
    ],
)
def test_structure_errors(text: str, errors: list[tuple[str, int, int]]) -> None:
    assert reported(text) == errors


def test_missing_header_hints() -> None:
    _, sink = lower("offset = 0\nexit\n")
    assert [d.hints for d in sink] == [
        ("add 'name = <module>': a path (user), a module name (kmod), anything (kernel)",),
        ("add 'modtype = user|kernel|kmod'",),
    ]


# --- warnings --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("exit_to 0", "'exit_to 0' raises EX_INVALID_OPERAND at run time: 'exit_to' takes 1..3"),
        ("exit_to 4", "'exit_to 4' raises EX_INVALID_OPERAND at run time: 'exit_to' takes 1..3"),
        ("pbl 0", "'pbl 0' ends the handler without an exception at run time: 'pbl' takes 1..32"),
        ("pbr 33", "'pbr 33' ends the handler without an exception at run time: 'pbr' takes 1..32"),
        ("pzl 0", "'pzl 0' raises EX_INVALID_OPERAND at run time: 'pzl' takes 1..32"),
        ("pzr 40", "'pzr 40' raises EX_INVALID_OPERAND at run time: 'pzr' takes 1..32"),
        *(
            (
                name.lower(),
                f"'{name.lower()}' is reserved by DProbes 5.0 and not implemented: it "
                "raises EX_INVALID_OPCODE at run time",
            )
            for name in ("SUSPEND", "RESUME", "ALLOC_GV", "FREE_GV", "FREE_GVI")
        ),
    ],
)
def test_run_time_warnings(code: str, message: str) -> None:
    assert reported(f"{HEADER}{code}\nexit\n", Severity.WARNING) == [(message, CODE_LINE, 1)]


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (
            "push lv, 4",
            "local variable 4 is not below num_lv 4: 'push lv' raises "
            "EX_INVALID_OPERAND at run time",
        ),
        (
            "dec gv 9",
            "global variable 9 is not below num_gv 4: 'dec gv' raises EX_INVALID_OPERAND "
            "at run time",
        ),
    ],
)
def test_variable_index_warnings(code: str, message: str) -> None:
    assert reported(f"{HEADER}{code}\nexit\n", Severity.WARNING) == [(message, CODE_LINE, 1)]


@pytest.mark.parametrize(
    "code", ["exit_to 1", "exit_to 3", "pbl 1", "pzr 32", "push lv, 3", "pop gv 3"]
)
def test_no_warning_in_range(code: str) -> None:
    first_instruction(code)


def test_tiny_heaps_warn() -> None:
    text = "name = m\nmodtype = user\noffset = 0\nheap_size = 40\nexit\n"
    assert reported(text, Severity.WARNING) == [
        (
            "heap_size 40 is too small for a heap (it needs more than 40 bytes): every malloc "
            "raises EX_HEAP_NOMEM",
            4,
            13,
        )
    ]
    ok(text.replace("40", "41"))
