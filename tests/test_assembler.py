"""Assembler pass: layout, label resolution, source map, and its errors."""

from __future__ import annotations

import pytest

from dprobes.compiler.diagnostics import CompileError
from dprobes.compiler.pipeline import compile_rpn

HEADER = "name = m\nmodtype = user\n"


def errors(source: str) -> list[tuple[str, int, int]]:
    with pytest.raises(CompileError) as caught:
        compile_rpn("t.rpn", text=HEADER + source)
    return [
        (d.message, d.loc.line, d.loc.column)
        for d in caught.value.diagnostics
        if d.severity.value == "error"
    ]


def test_labels_resolve_to_relative_targets() -> None:
    program = compile_rpn("t.rpn", text=HEADER + "offset = 0\n jmp end\n nop\nend: exit\n").program
    jump, nop, exit_ = program.instructions(0)
    assert jump.target == exit_.offset and nop.op.name == "NOP"
    assert (exit_.offset, "end") in program.labels


def test_probes_share_one_code_blob_and_source_map() -> None:
    program = compile_rpn(
        "t.rpn", text=HEADER + "offset = 0\n exit\noffset = 9\n push 1\n exit\n"
    ).program
    first, second = program.probes
    assert (first.code_start, first.code_end) == (0, 1)
    assert (second.code_start, second.code_end) == (1, 7)
    assert [(e.offset, e.line) for e in program.source_map] == [(0, 4), (1, 6), (6, 7)]


def test_duplicate_label() -> None:
    assert errors("offset = 0\nL: exit\noffset = 1\n L: exit\n") == [
        ("label 'L' is defined twice", 6, 2)
    ]


def test_duplicate_label_points_at_the_first() -> None:
    with pytest.raises(CompileError) as caught:
        compile_rpn("t.rpn", text=HEADER + "offset = 0\nL: push 1\nL: exit\n")
    assert caught.value.diagnostics[0].hints == ("first defined at t.rpn:4:1",)


def test_undefined_label_with_hint() -> None:
    with pytest.raises(CompileError) as caught:
        compile_rpn("t.rpn", text=HEADER + "offset = 0\n jmp finis\nfinish: exit\n")
    (diagnostic,) = caught.value.diagnostics
    assert diagnostic.message == "undefined label 'finis'"
    assert diagnostic.hints == ("did you mean 'finish'?",)


def test_jump_into_another_probe() -> None:
    assert errors("offset = 0\nA: exit\noffset = 4\n jmp A\n") == [
        ("'jmp A' jumps into the code of probe 0", 6, 2)
    ]


def test_code_size_limit() -> None:
    body = " push 1\n" * 13108 + " exit\n"  # 5 * 13108 = 65540 bytes
    ((message, line, _),) = errors("offset = 0\n" + body)
    assert "exceeds 65535 bytes" in message and line == 4 + 13107  # first that does not fit
