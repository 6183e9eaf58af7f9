"""Out-of-line step plans and their repairs (kprobes' rules), instruction by instruction."""

from __future__ import annotations

import pytest

from dprobes.runtime.xol import (
    NotAnInstruction,
    StepKind,
    StepResult,
    finish_step,
    instruction_starts,
    plan_step,
)

ORIG, SLOT = 0x08049000, 0xFFFFE000


@pytest.mark.parametrize(
    ("code", "kind", "text"),
    [
        (b"\x55", StepKind.PUSH_R32, "push ebp"),
        (b"\x89\xe5", StepKind.RELOCATE, "mov ebp, esp"),
        (b"\x74\x05", StepKind.RELOCATE, "je 0x8049007"),
        (b"\xe2\xfe", StepKind.RELOCATE, "loop 0x8049000"),
        (b"\xe3\x02", StepKind.RELOCATE, "jecxz 0x8049004"),
        (b"\xe8\x10\x00\x00\x00", StepKind.CALL_RELATIVE, "call 0x8049015"),
        (b"\xff\xd0", StepKind.CALL_ABSOLUTE, "call eax"),
        (b"\xc3", StepKind.ABSOLUTE, "ret"),
        (b"\xff\xe0", StepKind.ABSOLUTE, "jmp eax"),
        (b"\xcf", StepKind.ABSOLUTE, "iretd"),
        (b"\x9c", StepKind.PUSHF, "pushfd"),
        (b"\x62\x02", StepKind.RELOCATE, "bound eax, qword ptr [edx]"),
    ],
)
def test_plans(code: bytes, kind: StepKind, text: str) -> None:
    plan = plan_step(code + b"\x90" * 8, ORIG)
    assert (plan.kind, plan.text, plan.code) == (kind, text, code)


def test_ordinary_instruction_resumes_after_the_original() -> None:
    plan = plan_step(b"\x89\xe5", ORIG)
    assert finish_step(plan, SLOT, SLOT + 2, 0, False) == StepResult(ORIG + 2)


def test_taken_relative_branch_lands_on_the_original_target() -> None:
    plan = plan_step(b"\x74\x05", ORIG)  # je +5 from the end
    assert finish_step(plan, SLOT, SLOT + 7, 0, False) == StepResult(ORIG + 7)


def test_backward_loop_wraps_correctly() -> None:
    plan = plan_step(b"\xe2\xfe", ORIG)  # loop to itself
    assert finish_step(plan, SLOT, SLOT, 0, False) == StepResult(ORIG)


def test_relative_call_fixes_the_return_address() -> None:
    plan = plan_step(b"\xe8\x10\x00\x00\x00", ORIG)
    result = finish_step(plan, SLOT, SLOT + 0x15, SLOT + 5, False)
    assert result == StepResult(ORIG + 0x15, ORIG + 5)


def test_indirect_call_keeps_its_target() -> None:
    plan = plan_step(b"\xff\xd0", ORIG)
    assert finish_step(plan, SLOT, 0x0804A000, SLOT + 2, False) == StepResult(0x0804A000, ORIG + 2)


def test_ret_keeps_its_target() -> None:
    plan = plan_step(b"\xc3", ORIG)
    assert finish_step(plan, SLOT, 0x08048123, 0, False) == StepResult(0x08048123)


def test_pushf_hides_the_single_step_flag() -> None:
    plan = plan_step(b"\x9c", ORIG)
    assert finish_step(plan, SLOT, SLOT + 1, 0x346, False) == StepResult(ORIG + 1, 0x246)
    assert finish_step(plan, SLOT, SLOT + 1, 0x346, True) == StepResult(ORIG + 1, 0x346)


@pytest.mark.parametrize(
    ("code", "register"), [(b"\x50", "eax"), (b"\x54", "esp"), (b"\x57", "edi")]
)
def test_push_r32_is_emulated(code: bytes, register: str) -> None:
    """A one-byte push r32 is planned for emulation, naming the register it stores; if it
    must be stepped after all, EIP is relocated like any ordinary instruction."""
    plan = plan_step(code, ORIG)
    assert (plan.kind, plan.pushed) == (StepKind.PUSH_R32, register)
    assert finish_step(plan, SLOT, SLOT + 1, 0, False) == StepResult(ORIG + 1)


def test_only_one_byte_pushes_are_emulated() -> None:
    assert plan_step(b"\x66\x50", ORIG).kind is StepKind.RELOCATE  # push ax
    assert plan_step(b"\xff\x30", ORIG).kind is StepKind.RELOCATE  # push [eax]


def test_undecodable_bytes() -> None:
    with pytest.raises(NotAnInstruction):
        plan_step(b"\x0f\x04", ORIG)


def test_instruction_boundaries() -> None:
    code = b"\x55\x89\xe5\x8b\x45\x08\xc3"  # push ebp; mov ebp,esp; mov eax,[ebp+8]; ret
    assert instruction_starts(code, 0x1000) == {0x1000, 0x1001, 0x1003, 0x1006}
