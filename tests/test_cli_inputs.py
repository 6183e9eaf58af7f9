"""``dpc``'s handling of what users give it: probe programs' ``name``, binary files,
option values, and what ``dpc run --json`` reports (issue 10, the CLI items)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dprobes.tests.guest_expectations import ARGS_STATUS, BIN
from dprobes.tests.test_cli import dpc

REPO = BIN.parent.parent
ADD3_CALLS = 3
"""guest/user/loop.c calls add3 once per row of add3_args."""


def _probe(path: Path, name: str, where: str = "add3") -> Path:
    path.write_text(
        f"name = {name}\nmodtype = user\nlog_target = COM1\noffset = {where}\n"
        "    push 1\n    log 1\n    exit\n"
    )
    return path


def _summary(err: str) -> dict:
    return json.loads(err.strip().splitlines()[-1])


def test_a_relative_name_is_looked_up_in_the_working_directory_and_gives_symbols(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """``name = guest/bin/loop`` from the repository: ``offset = add3`` needs no --elf."""
    probe = _probe(tmp_path / "p.rpn", "guest/bin/loop")
    monkeypatch.chdir(REPO)
    status, _, err = dpc(
        capsys,
        "run",
        "--probes",
        str(probe),
        "--log-file",
        str(tmp_path / "log"),
        "--json",
        "--",
        "guest/bin/loop",
    )
    assert status == 7
    assert [row["hits"] for row in _summary(err)["probe_hits"]] == [ADD3_CALLS]


def test_a_missing_executable_is_an_error_at_the_name_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    probe = _probe(tmp_path / "probes.rpn", "guest/bin/loop", "0x1000")
    monkeypatch.chdir(tmp_path)
    status, _, err = dpc(capsys, "run", "--probes", "probes.rpn", "--", str(BIN / "loop"))
    assert status == 2
    assert err.splitlines()[:3] == [
        "probes.rpn:1:8: error: no such executable file: guest/bin/loop",
        "  name = guest/bin/loop",
        "         ^~~~~~~~~~~~~~",
    ]
    assert f"looked up in the current directory, {tmp_path}" in err
    assert probe.exists()


def test_a_symbol_of_a_missing_name_says_where_it_was_looked_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    _probe(tmp_path / "probes.rpn", "guest/bin/loop")
    monkeypatch.chdir(tmp_path)
    status, _, err = dpc(capsys, "check", "probes.rpn")
    assert status == 2 and "probes.rpn:4:10: error: unknown symbol 'add3'" in err
    assert "'name = guest/bin/loop' names no file" in err


def test_elf_overrides_the_symbols_of_name(tmp_path: Path, capsys) -> None:
    probe = _probe(tmp_path / "p.rpn", str(BIN / "loop"))
    assert dpc(capsys, "check", str(probe))[0] == 0
    status, _, err = dpc(capsys, "check", str(probe), "--elf", str(BIN / "args"))
    assert status == 2 and "unknown symbol 'add3'" in err


def test_a_probe_program_for_a_program_that_never_ran_is_a_warning(tmp_path: Path, capsys) -> None:
    probe = _probe(tmp_path / "p.rpn", str(BIN / "loop"))
    status, _, err = dpc(
        capsys,
        "run",
        "--probes",
        str(probe),
        "--log-file",
        str(tmp_path / "log"),
        "--",
        str(BIN / "args"),
    )
    assert status == ARGS_STATUS
    assert (
        f"dpc run: warning: {probe}: no program named {BIN / 'loop'} ran; "
        "its 1 probe(s) were never hit"
    ) in err


def test_json_counts_the_guest_instructions(capsys) -> None:
    """The count is the machine's clock: deterministic, and a limit stops it at the end
    of the block that reaches it."""
    counts = []
    for _ in range(2):
        status, _, err = dpc(capsys, "run", "--json", "--", str(BIN / "loop"))
        assert status == 7
        counts.append(_summary(err)["instructions"])
    assert counts[0] == counts[1] > 100_000  # work() alone is called 100000 times
    status, _, err = dpc(
        capsys, "run", "--json", "--max-instructions", "5000", "--", str(BIN / "loop")
    )
    assert status == 124 and 5000 <= _summary(err)["instructions"] < counts[0]


def test_a_ppdf_with_a_damaged_magic_is_not_read_as_text(tmp_path: Path, capsys) -> None:
    source = _probe(tmp_path / "p.rpn", str(BIN / "loop"))
    ppdf = tmp_path / "x.ppdf"
    assert dpc(capsys, "build", str(source), "-o", str(ppdf))[0] == 0
    data = bytearray(ppdf.read_bytes())
    data[0] ^= 0x20  # 'D' -> 'd'
    ppdf.write_bytes(bytes(data))
    offset = min(data.index(0), len(data))
    for command in ("disasm", "check"):
        status, out, err = dpc(capsys, command, str(ppdf))
        assert status == 2 and out == ""
        assert err == (
            f"{ppdf}: byte {offset}: error: not a PPDF file (bad magic 0x{bytes(data[:8]).hex()}) "
            f"and not RPN text (binary bytes at offset {offset})\n"
        )


def test_control_characters_are_never_sent_to_the_terminal(tmp_path: Path, capsys) -> None:
    path = tmp_path / "esc.rpn"
    path.write_bytes(b"name = m\nmodtype = user\noffset = 0\n  frob \x1b[2J\n")
    status, _, err = dpc(capsys, "check", str(path))
    assert status == 2 and "\x1b" not in err and "'\\x1b'" in err


GOOD_EXEC = "name = demo\nmodtype = user\nnum_lv = 1\nnum_gv = 1\noffset = 0\n    exit\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pid", "0x1ffffffff"], "--pid: 0x1ffffffff does not fit in 32 bits"),
        (["--task", "99999999999"], "--task: 99999999999 does not fit in 32 bits"),
        (["--cpu", "two"], "--cpu: 'two' is not a number"),
        (["--io", "70000=1"], "--io port: 70000 does not fit in 16 bits"),
        (["--io", "1=0x1ffffffff"], "--io value: 0x1ffffffff does not fit in 32 bits"),
        (["--seg", "0x10000=0"], "--seg selector: 0x10000 does not fit in 16 bits"),
        (["--seg", "1=0x1ffffffff"], "--seg base: 0x1ffffffff does not fit in 32 bits"),
        (["--mem", "0x1ffffffff=00"], "--mem address: 0x1ffffffff does not fit in 32 bits"),
        (["--gv", "0=0x1ffffffff"], "--gv 0: 0x1ffffffff does not fit in 32 bits"),
        (["--lv", "0=-0x1ffffffff"], "--lv 0: -0x1ffffffff does not fit in 32 bits"),
        (["--hot-threshold", "-1"], "--hot-threshold: must be 0 or more, got '-1'"),
        (["-I", "/no/such/dir"], "-I: not a directory: /no/such/dir"),
    ],
)
def test_exec_option_values_out_of_range(
    args: list[str], message: str, tmp_path: Path, capsys
) -> None:
    path = tmp_path / "g.rpn"
    path.write_text(GOOD_EXEC)
    status, out, err = dpc(capsys, "exec", str(path), *args)
    assert status == 2 and out == "" and err == f"dpc exec: error: {message}\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seed", "-1"], "--seed: must be 0 or more, got '-1'"),
        (["--seed", "x"], "--seed: 'x' is not a number"),
        (["--group", ","], "--group: give at least one number"),
        (["--group", "1,70000"], "--group: must be 0..65535, got '70000'"),
        (["--type", "-2"], "--type: must be 0..65535, got '-2'"),
        (["--type", "one"], "--type: 'one' is not a number"),
    ],
)
def test_run_option_values_out_of_range(
    args: list[str], message: str, tmp_path: Path, capsys
) -> None:
    probe = _probe(tmp_path / "p.rpn", str(BIN / "loop"))
    status, out, err = dpc(
        capsys,
        "run",
        "--probes",
        str(probe),
        *args,
        "--log-file",
        str(tmp_path / "log"),
        "--",
        str(BIN / "loop"),
    )
    assert status == 2 and "iterations" not in out
    assert err.endswith(f"dpc run: error: {message}\n")
