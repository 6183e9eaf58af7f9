"""A handler is decoded once per program: ``Program.instructions`` caches the decoded
tuple and the listing reads it; bytes that do not decode are refused every time."""

from __future__ import annotations

import dataclasses

import pytest

from dprobes.compiler.disasm import disassemble
from dprobes.compiler.pipeline import compile_rpn
from dprobes.vm import program as program_module
from dprobes.vm.bytecode import DecodeError, decode_range, encode
from dprobes.vm.isa import OPS_BY_NAME
from dprobes.vm.program import ModuleType, Probe, ProbeKind, Program, ProgramHeader

SOURCE = """name = t
modtype = user
offset = 0
    push 1
    jmp done
    push 2
done: exit
offset = 16
    push r, eax
    log 1
    exit
"""


def fresh_program() -> Program:
    """A compiled program with nothing decoded yet (the compiler's verifier may have
    filled the cache of the one it returned)."""
    return dataclasses.replace(compile_rpn("t.rpn", text=SOURCE).program)


def test_instructions_are_decoded_once_and_shared(monkeypatch: pytest.MonkeyPatch) -> None:
    program = fresh_program()
    calls: list[tuple[int, int]] = []

    def counted(code: bytes, start: int, end: int):
        calls.append((start, end))
        return decode_range(code, start, end)

    monkeypatch.setattr(program_module, "decode_range", counted)
    first = [program.instructions(i) for i in range(len(program.probes))]
    listing = disassemble(program)
    again = [program.instructions(i) for i in range(len(program.probes))]
    assert all(a is b for a, b in zip(first, again, strict=True))
    assert calls == [(p.code_start, p.code_end) for p in program.probes]
    for probe, decoded in zip(program.probes, first, strict=True):
        assert list(decoded) == decode_range(program.code, probe.code_start, probe.code_end)
        assert all(f"{insn.offset:04x}" in listing for insn in decoded)


def test_the_cache_is_not_part_of_equality() -> None:
    program = fresh_program()
    other = fresh_program()
    program.instructions(0)
    assert program == other and hash(program) == hash(other)


@pytest.mark.parametrize(
    ("code", "probe", "offset", "listed"),
    [
        (b"\xff", Probe(ProbeKind.BREAKPOINT, 0, 0, 1), 0, ".byte 0xff"),  # unknown opcode
        (
            encode(OPS_BY_NAME["PUSH"], 7)[:3],
            Probe(ProbeKind.BREAKPOINT, 0, 0, 3),
            0,
            ".byte 0x4c",
        ),  # an operand cut short
        (b"\x00", Probe(ProbeKind.BREAKPOINT, 0, 0, 9), 0, "nop"),  # a range past the code
    ],
)
def test_bytes_that_do_not_decode_are_refused_every_time(
    code: bytes, probe: Probe, offset: int, listed: str
) -> None:
    program = Program(ProgramHeader("/bin/true", ModuleType.USER), (probe,), code)
    for _ in range(2):
        with pytest.raises(DecodeError) as refused:
            program.instructions(0)
        assert refused.value.offset == offset
    assert listed in disassemble(program)  # the listing sweeps what is there
