"""Verifier pass: what it proves about hand-built programs (as a PPDF could carry them)."""

from __future__ import annotations

from dprobes.compiler.diagnostics import DiagnosticSink, Severity
from dprobes.compiler.verifier import verify
from dprobes.vm.bytecode import encode
from dprobes.vm.isa import OPS_BY_NAME
from dprobes.vm.program import ModuleType, Probe, ProbeKind, Program, ProgramHeader
from dprobes.vm.registers import REGISTERS_BY_NAME


def program(*probes: list[tuple[str, int | None]] | bytes) -> Program:
    code = b""
    records = []
    for body in probes:
        blob = (
            body
            if isinstance(body, bytes)
            else b"".join(encode(OPS_BY_NAME[name], operand) for name, operand in body)
        )
        records.append(Probe(ProbeKind.BREAKPOINT, len(records), len(code), len(code) + len(blob)))
        code += blob
    return Program(ProgramHeader("t", ModuleType.USER), tuple(records), code)


def messages(prog: Program, severity: Severity = Severity.ERROR) -> list[str]:
    sink = DiagnosticSink()
    verify(prog, sink, "t.ppdf")
    return [f"{d.loc}: {d.message}" for d in sink if d.severity is severity]


def test_a_straight_handler_verifies() -> None:
    assert messages(program([("PUSH", 1), ("LOG_I", 1), ("EXIT", None)])) == []


def test_running_off_the_end() -> None:
    assert messages(program([("PUSH", 1)])) == [
        "t.ppdf: byte 0: probe 0: control can run off the end of the handler after 'push <imm32>'"
    ]


def test_conditional_jump_falls_through_off_the_end() -> None:
    # push 1; L: jz L  -- the not-taken path leaves the handler
    assert messages(program([("PUSH", 1), ("JZ", -5)])) == [
        "t.ppdf: byte 5: probe 0: control can run off the end of the handler after 'jz <rel32>'"
    ]


def test_call_returns_to_the_next_instruction() -> None:
    # jmp main; f: ret; main: call f; <end>  -- the return lands past the end
    body = [("JMP", 1), ("RET", None), ("CALL", -6)]
    assert any("run off the end" in m for m in messages(program(body)))


def test_exit_to_never_falls_through() -> None:
    # a bad facility raises EX_INVALID_OPERAND, which is never ignored: no fall-through
    assert messages(program([("EXIT_N", 9)])) == []
    assert messages(program([("EXIT_N", 2)])) == []


def test_branch_into_the_middle_of_an_instruction() -> None:
    assert messages(program([("JMP", 2), ("PUSH", 0), ("EXIT", None)])) == [
        "t.ppdf: byte 0: probe 0: jmp target offset 7 is inside an instruction"
    ]


def test_branch_out_of_the_probe() -> None:
    found = messages(program([("EXIT", None)], [("JMP", -6)]))
    assert found == ["t.ppdf: byte 1: probe 1: jmp target offset 0 is outside the probe's code"]


def test_handler_targets_are_checked_and_reachable() -> None:
    # sx H; exit; H: push 1   <- the handler runs off the end
    found = messages(program([("SX", 1), ("EXIT", None), ("PUSH", 1)]))
    assert any("run off the end" in m for m in found)


def test_register_must_suit_the_instruction() -> None:
    eip = REGISTERS_BY_NAME["eip"].index
    fr0 = REGISTERS_BY_NAME["fr0"].index
    assert messages(program([("PUSH", 1), ("POP_R", eip), ("EXIT", None)])) == [
        "t.ppdf: byte 5: 'pop r' cannot take eip"
    ]
    assert messages(program([("PUSH_R", fr0), ("EXIT", None)])) == [
        "t.ppdf: byte 0: 'push r' cannot take fr0"
    ]
    assert messages(program([("PUSH_U", fr0), ("EXIT", None)])) == []
    assert messages(program([("PUSH_R", 0x99), ("EXIT", None)])) == [
        "t.ppdf: byte 0: 'push r' cannot take register index 0x99"
    ]


def test_undecodable_bytes() -> None:
    assert messages(program(bytes([0x16, 0x0D]))) == [
        "t.ppdf: byte 0: probe 0: unknown opcode 0x16"
    ]
    assert messages(program(bytes([0x4C, 0x01]))) == [
        "t.ppdf: byte 0: probe 0: push: operand truncated by the end of the code"
    ]


def test_unreachable_code_is_a_warning() -> None:
    prog = program([("EXIT", None), ("NOP", None), ("EXIT", None)])
    assert messages(prog) == []
    assert messages(prog, Severity.WARNING) == [
        "t.ppdf: byte 1: probe 0: 2 unreachable instruction(s)"
    ]
