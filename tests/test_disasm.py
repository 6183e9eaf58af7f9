"""Disassembler: listing contents, every opcode of the table, labels, bytes that do not decode."""

from __future__ import annotations

import re

import pytest

from dprobes.compiler.disasm import OPERAND_FORMATTERS, describe_opcodes, disassemble
from dprobes.compiler.ppdf import decode_ppdf, encode_ppdf
from dprobes.vm import isa
from dprobes.vm.bytecode import encode
from dprobes.vm.isa import OPS_BY_NAME, OPS_BY_SYNTAX, TABLE, Operand, OpInfo
from dprobes.vm.program import (
    LogField,
    ModuleType,
    Probe,
    ProbeKind,
    Program,
    ProgramHeader,
    SourceLine,
    WatchType,
)
from dprobes.vm.registers import REGISTERS_BY_NAME

LINE = re.compile(r"^  ([0-9a-f]{4})  ((?:[0-9a-f]{2} ?)+?)\s+(\S.*?)(?:\s+; (.*))?$")
"""An instruction line: offset, raw bytes, text, optional comment."""


def op(name: str, operand: int | None = None) -> bytes:
    return encode(OPS_BY_NAME[name], operand)


def program(code: bytes, *probes: Probe) -> Program:
    """A one-module program; by default one breakpoint over all the code."""
    if not probes:
        probes = (Probe(ProbeKind.BREAKPOINT, 0x100, 0, len(code)),)
    return Program(ProgramHeader("/bin/true", ModuleType.USER), probes, code)


def instruction_lines(listing: str) -> dict[int, tuple[str, str, str | None]]:
    """Code offset -> (raw hex, text, comment) for each instruction line."""
    out = {}
    for line in listing.splitlines():
        match = LINE.match(line)
        if match:
            out[int(match[1], 16)] = (match[2].strip(), match[3], match[4])
    return out


def sample() -> Program:
    body = (
        op("PUSH_R", REGISTERS_BY_NAME["eax"].index)  # 0x00
        + op("PUSH_LVI", 3)  # 0x03
        + op("JZ", 3)  # 0x06 -> 0x0e
        + op("PUSH_SBP_I", -2)  # 0x0b
        + op("EXIT")  # 0x0e
        + op("LOOP", -6)
    )  # 0x0f -> 0x0e
    second = op("CALL", 1) + op("ABORT") + op("RET")  # 0x14, 0x19, 0x1a
    code = body + second
    return Program(
        ProgramHeader(
            "/bin/ls", ModuleType.USER, jmpmax=100, log_fields=LogField.PID | LogField.TSC
        ),
        (
            Probe(
                ProbeKind.BREAKPOINT,
                0x1234,
                0,
                len(body),
                opcode=0x55,
                major=1,
                minor=2,
                pass_count=3,
                location="main+4",
            ),
            Probe(
                ProbeKind.WATCHPOINT,
                0xC0100000,
                len(body),
                len(code),
                absolute=True,
                watch_type=WatchType.WRITE,
                watch_length=4,
            ),
        ),
        code,
        source_map=(
            SourceLine(0, "t.rpn", 7, 1),
            SourceLine(3, "t.rpn", 8, 1),
            SourceLine(0x14, "inc.h", 2, 5),
        ),
        labels=((0x0E, "done"), (len(code), "the_end")),
    )


def test_listing_of_a_sample_program() -> None:
    listing = disassemble(sample())
    lines = listing.splitlines()
    assert lines[0] == (
        "; program '/bin/ls' modtype=user probes=2 code=27 bytes jmpmax=100 log=PID|TSC"
    )
    assert (
        "probe 0: breakpoint offset=0x1234 (main+4) opcode=0x55 major=1 minor=2 "
        "code=0x0000..0x0014 pass_count=3"
    ) in lines
    assert (
        "probe 1: watchpoint offset=0xc0100000 opcode=none major=0 minor=0 watch_type=w "
        "length=4 code=0x0014..0x001b address=absolute"
    ) in lines
    insns = instruction_lines(listing)
    assert insns[0x00] == ("46 06 00", "push r, eax", "t.rpn:7")
    assert insns[0x03] == ("29 03 00", "push lv, 3", "t.rpn:8")
    assert insns[0x06] == ("06 03 00 00 00", "jz done", None)
    assert insns[0x0B] == ("7c fe ff", "push sbp, -2", None)
    assert insns[0x0F][1] == "loop done"
    assert insns[0x14] == ("09 01 00 00 00", "call L_001a", "inc.h:2")
    assert insns[0x1A][1] == "ret"
    # labels stand on their own line, right before their target
    assert lines[lines.index("done:") + 1].startswith("  000e  0d")
    assert lines[lines.index("L_001a:") + 1].startswith("  001a  0a")
    assert lines[lines.index("the_end:") - 1].startswith("  001a  0a")
    assert listing.endswith("the_end:\n")


def test_listing_of_a_decoded_ppdf_is_the_same() -> None:
    original = sample()
    assert disassemble(decode_ppdf(encode_ppdf(original))) == disassemble(original)


def operand_for(info: OpInfo) -> int | None:
    """A sample operand of each kind: a branch to the next instruction, a real register."""
    if info.operand is Operand.NONE:
        return None
    if info.operand is Operand.REL32:
        return 0
    if f"{info.mnemonic}_{info.qualifier}" in ("push_r", "push_u", "pop_r", "pop_u"):
        return REGISTERS_BY_NAME["ebx"].index
    if info.operand is Operand.S16:
        return -3
    return min(info.operand.hi, 0x1234_5678)


def reassemble(text: str) -> tuple[OpInfo, str | None]:
    """Find the table row a listing text names, the way the assembler's syntax reads."""
    head, _, operand = text.partition(", ")
    words = head.split(" ")
    if not operand and len(words) == 2 and (words[0], words[1]) not in OPS_BY_SYNTAX:
        words, operand = [words[0]], words[1]
    qualifier = words[1] if len(words) > 1 else None
    candidates = OPS_BY_SYNTAX[(words[0], qualifier)]
    wanted = Operand.NONE if not operand else None
    for info in candidates:
        if (info.operand is Operand.NONE) == (wanted is Operand.NONE):
            return info, operand or None
    raise AssertionError(f"no row for {text!r}")


@pytest.mark.parametrize("info", TABLE, ids=lambda info: info.name)
def test_every_opcode_disassembles_and_reassembles(info: OpInfo) -> None:
    operand = operand_for(info)
    code = encode(info, operand) + op("EXIT")
    listing = disassemble(program(code))
    text = instruction_lines(listing)[0][1]
    assert "<" not in text and ".byte" not in text
    row, written = reassemble(text)
    assert row is info
    if info.operand is Operand.REL32:
        assert written == f"L_{info.size:04x}"
    elif operand is not None:
        assert written is not None
        register = REGISTERS_BY_NAME.get(written)
        assert (register.index if register else int(written, 0)) == operand


def test_every_operand_kind_has_a_formatter() -> None:
    assert set(Operand) - {Operand.NONE} <= set(OPERAND_FORMATTERS)


def test_bytes_that_do_not_decode() -> None:
    code = op("EXIT") + b"\xff" + b"\x4c\x01"  # unknown opcode, then a truncated push
    insns = instruction_lines(disassemble(program(code)))
    assert insns[1] == ("ff", ".byte 0xff", "does not decode")
    assert insns[2] == ("4c", ".byte 0x4c", "does not decode")
    assert insns[3] == ("01", ".byte 0x01", "does not decode")


def test_an_operand_does_not_run_into_the_next_probe() -> None:
    first = op("PUSH", 7)[:3]  # a push cut short by the end of its probe
    second = op("EXIT")
    code = first + second
    listing = disassemble(
        program(code, Probe(ProbeKind.BREAKPOINT, 0, 0, 3), Probe(ProbeKind.BREAKPOINT, 8, 3, 4))
    )
    insns = instruction_lines(listing)
    assert [insns[i][1] for i in range(4)] == [".byte 0x4c", ".byte 0x07", "nop", "exit"]


def test_branch_targets_that_cannot_be_labelled() -> None:
    code = op("JMP", 100) + op("JMP", -3) + op("EXIT")  # past the code; inside itself
    listing = disassemble(program(code))
    insns = instruction_lines(listing)
    assert insns[0][1:] == ("jmp 100", "target 105 is outside the code")
    assert insns[5][1] == "jmp L_0007"
    assert "; label L_0007 = 0x0007 is not at an instruction start" in listing.splitlines()


def test_unknown_register_and_code_outside_probes() -> None:
    code = op("PUSH_R", 0x300) + op("EXIT") + op("NOP")
    listing = disassemble(program(code, Probe(ProbeKind.BREAKPOINT, 0, 0, 4)))
    insns = instruction_lines(listing)
    assert insns[0][1:] == ("push r, 768", "unknown register 0x300")
    assert "; code outside any probe: 0x0004..0x0005" in listing.splitlines()
    assert insns[4][1] == "nop"


def test_broken_probe_ranges_do_not_crash() -> None:
    code = op("EXIT")
    listing = disassemble(
        program(code, Probe(ProbeKind.BREAKPOINT, 0, 0, 50), Probe(ProbeKind.BREAKPOINT, 1, -4, 1))
    )
    assert listing.count("  0000  0d") == 2


def test_describe_opcodes() -> None:
    text = describe_opcodes()
    for info in TABLE:
        assert re.search(
            rf"^{info.code:#04x}  {re.escape(info.syntax)} +"
            rf"{re.escape(info.effect)} +{re.escape(info.summary)}",
            text,
            re.M,
        )
    assert "push mem_u32" in text and "also written push m32" in text
    assert "[raises EX_INVALID_OPCODE]" in text
    assert isa.__doc__ is not None
    notes = isa.__doc__[isa.__doc__.index("Notes") :].strip()
    assert text.endswith(notes)
    assert "``sub`` computes TOS - NOS" in text
