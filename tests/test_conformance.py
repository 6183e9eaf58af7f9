"""Runs the conformance corpus through ``dpc exec --json`` and checks its coverage."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from dprobes.cli import main as cli
from dprobes.compiler.pipeline import compile_rpn
from dprobes.tests.corpus import Case, load_corpus
from dprobes.vm import flavour, interp, model
from dprobes.vm.exceptions import ExceptionCode
from dprobes.vm.isa import TABLE

CASES = load_corpus()


def _write(case: Case, tmp_path: Path) -> Path:
    path = tmp_path / f"{case.name}.rpn"
    path.write_text(case.source)
    return path


TIERS = ("interp", "jit")


def run_case(
    case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str], tier: str = "interp"
) -> None:
    path = _write(case, tmp_path)
    if case.errors:
        status = cli.main(["check", str(path)])
        err = capsys.readouterr().err
        assert status == 2, err
        assert "Traceback" not in err
        for fragment in case.errors:
            assert fragment in err, f"expected {fragment!r} in:\n{err}"
        return
    status = cli.main(["exec", str(path), "--json", "--tier", tier, *case.args])
    out, err = capsys.readouterr()
    assert status == 0, err
    result = json.loads(out)
    assert case.expect is not None
    mismatched = {
        key: (want, result.get(key))
        for key, want in case.expect.items()
        if result.get(key, object()) != want
    }
    assert not mismatched, f"{case.path.name}: (expected, got) {mismatched}\nfull: {result}"


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case(case: Case, tier: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if tier == "jit" and case.no_jit is not None:
        pytest.skip(f"no jit: {case.no_jit}")
    run_case(case, tmp_path, capsys, tier)


def _opcodes(case: Case, tmp_path: Path) -> set[str]:
    """The names of the instructions in ``case``'s handlers."""
    program = compile_rpn(str(_write(case, tmp_path)), text=case.source).program
    return {i.op.name for index in range(len(program.probes)) for i in program.instructions(index)}


def _exec_json(
    path: Path, case: Case, capsys: pytest.CaptureFixture[str], tier_args: list[str]
) -> dict:
    status = cli.main(["exec", str(path), "--json", *tier_args, *case.args])
    out, err = capsys.readouterr()
    assert status == 0, err
    return json.loads(out)


def test_exec_output_is_the_same_on_every_tier(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``dpc exec``'s whole JSON object (not only a case's expectations) is the same with
    the default tier, the interpreter, the JIT and auto compiling at the first hit."""
    tiers = {
        "default": [],
        "interp": ["--tier", "interp"],
        "jit": ["--tier", "jit"],
        "auto": ["--tier", "auto", "--hot-threshold", "0"],
    }
    for case in CASES:
        if case.errors:
            continue
        path = _write(case, tmp_path)
        reference = _exec_json(path, case, capsys, tiers["interp"])
        for tier, tier_args in tiers.items():
            if tier == "jit" and case.no_jit is not None:
                continue
            result = _exec_json(path, case, capsys, tier_args)
            assert result == reference, f"{case.name}: {tier} differs from interp"


def test_every_opcode_has_a_case(tmp_path: Path) -> None:
    covered: set[str] = set()
    for case in CASES:
        if not case.errors:
            covered |= _opcodes(case, tmp_path)
    missing = sorted(op.syntax for op in TABLE if op.name not in covered)
    assert not missing, f"opcodes without a conformance case: {missing}"


@pytest.mark.skipif(
    flavour.is_compiled(),
    reason="patches Machine, which the compiled build does not look up; "
    "test_flavour runs this on the pure-Python build",
)
def test_every_exception_code_is_raised(tmp_path: Path, capsys, monkeypatch) -> None:
    raised: set[int] = set()
    original = interp.Machine.raise_exception

    def recording(self, code, parm1, parm2, nxt):
        raised.add(int(code))
        return original(self, code, parm1, parm2, nxt)

    monkeypatch.setattr(interp.Machine, "raise_exception", recording)
    for case in CASES:
        if not case.errors:
            run_case(case, tmp_path, capsys)
    never_raised = {ExceptionCode.RPN_STACK_WRAP, ExceptionCode.USER}  # 5.0 never raises these
    missing = sorted(c.name for c in ExceptionCode if c not in never_raised and c not in raised)
    assert not missing, f"exception codes no case raises: {missing}"


WORD_RECORDS = {model.TOKEN_LOG, model.TOKEN_LV_ENTRY, model.TOKEN_GV_ENTRY}
"""Log records whose 16-bit count is of words; the others count bytes."""
BYTE_RECORDS = {model.TOKEN_MEMORY, model.TOKEN_ASCII, model.TOKEN_MEMORY_FAULT}
UNRECORDED = {"LOG_I", "POP_LP"}
"""Instructions after which the log is no stream of records (raw words, or rewound)."""


def record_tokens(log: bytes) -> list[int] | None:
    """The token of each record ``log`` is made of, or None if it is not a record stream."""
    tokens, at = [], 0
    while at < len(log):
        if at + model.RECORD_PREFIX > len(log):
            return None
        token, count = struct.unpack_from("<BH", log, at)
        if token not in WORD_RECORDS | BYTE_RECORDS:
            return None
        at += model.RECORD_PREFIX + (4 * count if token in WORD_RECORDS else count)
        tokens.append(token)
    return tokens if at == len(log) else None


def test_record_tokens_parses_only_record_streams() -> None:
    log = bytes((model.TOKEN_LOG, 1, 0, 1, 0, 0, 0x07, model.TOKEN_ASCII, 2, 0, ord("h"), ord("i")))
    assert record_tokens(log) == [model.TOKEN_LOG, model.TOKEN_ASCII]
    assert record_tokens(log[:-1]) is None
    assert record_tokens(bytes((model.TOKEN_LOG, 0, 0, 0x07))) is None
    assert record_tokens(bytes((0x42, 0, 0))) is None


def test_every_log_token_appears(tmp_path: Path) -> None:
    seen: set[int] = set()
    for case in CASES:
        if not case.expect or not case.expect.get("log") or _opcodes(case, tmp_path) & UNRECORDED:
            continue
        tokens = record_tokens(bytes.fromhex(case.expect["log"]))
        assert tokens is not None, f"{case.name}: the log is not a stream of records"
        seen.update(tokens)
    for token, what in (
        (model.TOKEN_MEMORY, "log mrf"),
        (model.TOKEN_ASCII, "log str"),
        (model.TOKEN_LOG, "log"),
        (model.TOKEN_LV_ENTRY, "log lv"),
        (model.TOKEN_GV_ENTRY, "log gv"),
        (model.TOKEN_MEMORY_FAULT, "fault record"),
    ):
        assert token in seen, f"no case logs a record of token {token} ({what})"
    assert any(c.expect and c.expect.get("ex_log") for c in CASES), "no stack-trace case"
