"""Runs the conformance corpus through ``dpc exec --json`` and checks its coverage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dprobes.cli import main as cli
from dprobes.compiler.pipeline import compile_rpn
from dprobes.tests.corpus import Case, load_corpus
from dprobes.vm import flavour, interp
from dprobes.vm.bytecode import decode_range
from dprobes.vm.exceptions import ExceptionCode
from dprobes.vm.isa import TABLE

CASES = load_corpus()


def _write(case: Case, tmp_path: Path) -> Path:
    path = tmp_path / f"{case.name}.rpn"
    path.write_text(case.source)
    return path


TIERS = ("interp", "jit")


def run_case(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str],
             tier: str = "interp") -> None:
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
    mismatched = {key: (want, result.get(key)) for key, want in case.expect.items()
                  if result.get(key, object()) != want}
    assert not mismatched, f"{case.path.name}: (expected, got) {mismatched}\nfull: {result}"


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case(case: Case, tier: str, tmp_path: Path,
              capsys: pytest.CaptureFixture[str]) -> None:
    if tier == "jit" and case.no_jit is not None:
        pytest.skip(f"no jit: {case.no_jit}")
    run_case(case, tmp_path, capsys, tier)


def _exec_json(path: Path, case: Case, capsys: pytest.CaptureFixture[str],
               tier_args: list[str]) -> dict:
    status = cli.main(["exec", str(path), "--json", *tier_args, *case.args])
    out, err = capsys.readouterr()
    assert status == 0, err
    return json.loads(out)


def test_exec_output_is_the_same_on_every_tier(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """``dpc exec``'s whole JSON object (not only a case's expectations) is the same with
    the default tier, the interpreter, the JIT and auto compiling at the first hit."""
    tiers = {"default": [], "interp": ["--tier", "interp"], "jit": ["--tier", "jit"],
             "auto": ["--tier", "auto", "--hot-threshold", "0"]}
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
    covered: set[int] = set()
    for case in CASES:
        if case.errors:
            continue
        program = compile_rpn(str(_write(case, tmp_path)), text=case.source).program
        for probe in program.probes:
            covered.update(i.op.code for i in decode_range(program.code, probe.code_start,
                                                           probe.code_end))
    missing = sorted(op.syntax for op in TABLE if op.code not in covered)
    assert not missing, f"opcodes without a conformance case: {missing}"


@pytest.mark.skipif(flavour.is_compiled(),
                    reason="patches Machine, which the compiled build does not look up; "
                           "test_flavour runs this on the pure-Python build")
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


def test_every_log_token_appears() -> None:
    logs = [bytes.fromhex(c.expect.get("log", "") + c.expect.get("ex_log", ""))
            for c in CASES if c.expect]
    for token, what in ((0x00, "log mrf"), (0x01, "log str"), (0x07, "log"), (0x05, "log lv"),
                        (0x06, "log gv"), (0xFF, "fault record")):
        assert any(bytes((token,)) in log for log in logs), f"no case logs token {what}"
    assert any(c.expect and c.expect.get("ex_log") for c in CASES), "no stack-trace case"
