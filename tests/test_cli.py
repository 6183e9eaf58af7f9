"""``dpc`` end to end: every command, and bad input of every kind gets exit 2, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dprobes.cli import main as cli
from dprobes.compiler.pipeline import BuildOptions, compile_rpn
from dprobes.tests.guest_expectations import BIN
from dprobes.vm.program import LogField

GOOD = """name = demo
modtype = user
num_lv = 1
offset = 0
    push r, eax
    push 1
    add
    move lv, 0
    log 1
    exit
"""


def dpc(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = cli.main(list(args))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return status, out, err


@pytest.fixture
def good(tmp_path: Path) -> Path:
    path = tmp_path / "good.rpn"
    path.write_text(GOOD)
    return path


def test_build_exec_disasm_round_trip(good: Path, tmp_path: Path, capsys) -> None:
    out_path = tmp_path / "good.ppdf"
    status, out, _ = dpc(capsys, "build", str(good), "-o", str(out_path))
    assert status == 0 and out_path.exists() and "1 probe(s)" in out
    for source in (good, out_path):  # exec and disasm take source or PPDF alike
        status, out, _ = dpc(capsys, "exec", str(source), "--reg", "eax=41", "--json")
        result = json.loads(out)
        assert status == 0
        assert result["log"] == "2a000000" and result["lv"] == [42] and result["exit"] == "exit"
        status, out, _ = dpc(capsys, "disasm", str(source))
        assert status == 0 and "push r, eax" in out and "move lv, 0" in out


def test_build_default_output_name(good: Path, capsys) -> None:
    status, _, _ = dpc(capsys, "build", str(good))
    assert status == 0 and good.with_suffix(".ppdf").exists()


def test_check_reports_ok(good: Path, capsys) -> None:
    status, out, _ = dpc(capsys, "check", str(good))
    assert status == 0 and "ok" in out


def test_exec_contract_keys(good: Path, capsys) -> None:
    status, out, _ = dpc(capsys, "exec", str(good), "--json", "--mem", "0x1000=aabb")
    assert status == 0
    assert set(json.loads(out)) == {
        "exit",
        "exit_to",
        "exception",
        "log",
        "ex_log",
        "stack",
        "lv",
        "gv",
        "major",
        "minor",
        "jumps",
        "mem",
    }
    assert json.loads(out)["mem"] == {"0x1000": "aabb"}


def test_defines_reach_the_preprocessor(tmp_path: Path, capsys) -> None:
    path = tmp_path / "d.rpn"
    path.write_text("name = d\nmodtype = user\noffset = 0\n push VALUE\n log 1\n exit\n")
    status, out, _ = dpc(capsys, "exec", str(path), "-D", "VALUE=0x10", "--json")
    assert status == 0 and json.loads(out)["log"] == "10000000"


def test_help_opcodes_lists_the_table(capsys) -> None:
    status, out, _ = dpc(capsys, "disasm", "--help-opcodes")
    assert status == 0 and "pushh u64" in out and "TOS" in out


BAD_INPUTS = {
    "empty": b"",
    "binary": bytes(range(256)) * 4,
    "unterminated_comment": b"name = x\nmodtype = user\n/* never closed\noffset = 0\n exit\n",
    "huge_immediate": b"name = x\nmodtype = user\noffset = 0\n push 0x100000000\n exit\n",
    "duplicate_label": b"name = x\nmodtype = user\noffset = 0\nL:\nL:\n exit\n",
    "undefined_label": b"name = x\nmodtype = user\noffset = 0\n jmp nowhere\n",
    "runs_off_end": b"name = x\nmodtype = user\noffset = 0\n push 1\n",
    "unknown_mnemonic": b"name = x\nmodtype = user\noffset = 0\n frobnicate\n exit\n",
    "bad_register": b"name = x\nmodtype = user\noffset = 0\n pop r, eip\n exit\n",
    "no_probes": b"name = x\nmodtype = user\n",
    "cross_probe_jump": (b"name = x\nmodtype = user\noffset = 0\nA:\n exit\noffset = 4\n jmp A\n"),
    "bad_ppdf": b"DPPDF\r\n\x1a" + bytes(100),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
@pytest.mark.parametrize("command", ["build", "check", "disasm", "exec"])
def test_bad_input_exits_2(name: str, command: str, tmp_path: Path, capsys) -> None:
    path = tmp_path / f"{name}.rpn"
    path.write_bytes(BAD_INPUTS[name])
    status, _, err = dpc(capsys, command, str(path))
    assert status == 2, err
    assert "error" in err


def test_bad_input_points_at_the_line(tmp_path: Path, capsys) -> None:
    path = tmp_path / "label.rpn"
    path.write_bytes(BAD_INPUTS["duplicate_label"])
    _, _, err = dpc(capsys, "check", str(path))
    assert f"{path}:5:1: error:" in err and "^" in err


def test_ten_megabyte_file(tmp_path: Path, capsys) -> None:
    path = tmp_path / "big.rpn"
    path.write_bytes(b" nop\n" * (2 * 1024 * 1024))
    status, _, err = dpc(capsys, "check", str(path))
    assert status == 2 and "error" in err


def test_include_recursion(tmp_path: Path, capsys) -> None:
    path = tmp_path / "self.rpn"
    path.write_text('#include "self.rpn"\n')
    status, _, err = dpc(capsys, "check", str(path))
    assert status == 2 and "include" in err


def test_missing_file(tmp_path: Path, capsys) -> None:
    status, _, err = dpc(capsys, "exec", str(tmp_path / "absent.rpn"))
    assert status == 2 and "absent.rpn" in err


@pytest.mark.parametrize(
    "args",
    [
        ["--probe", "3"],
        ["--reg", "bogus=1"],
        ["--reg", "eax"],
        ["--mem", "0x10=zz"],
        ["--lv", "5=1"],
        ["--pid", "twelve"],
        ["--repeat", "0"],
    ],
)
def test_exec_usage_errors(args: list[str], good: Path, capsys) -> None:
    status, _, err = dpc(capsys, "exec", str(good), *args)
    assert status == 2 and "error" in err


def test_unwritable_output(good: Path, tmp_path: Path, capsys) -> None:
    status, _, err = dpc(capsys, "build", str(good), "-o", str(tmp_path / "no" / "x.ppdf"))
    assert status == 2 and "cannot write" in err


def test_real_process_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "random.rpn"
    path.write_bytes(os.urandom(2000))
    done = subprocess.run(
        [sys.executable, "-m", "dprobes.cli", "build", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "error" in done.stderr


@pytest.mark.parametrize("command", [["exec", "f.rpn"], ["run", "--", "prog"]])
def test_tier_auto_is_the_default(command: list[str]) -> None:
    parse = cli.build_parser().parse_args
    default = parse(command)
    assert (default.tier, default.no_cache) == ("auto", False)
    chosen = parse([command[0], "--tier", "interp", "--no-cache", *command[1:]])
    assert (chosen.tier, chosen.no_cache) == ("interp", True)


@pytest.mark.parametrize(
    ("value", "fields"),
    [
        ("ALL", LogField.ALL),
        ("psw, upsw", LogField.SSESP | LogField.CSEIP),
        ("procname|tsc", LogField.PROCNAME | LogField.TSC),
        ("Pid, uid |cseip", LogField.PID | LogField.UID | LogField.CSEIP),
    ],
)
def test_log_option_takes_what_log_takes_in_a_program(value: str, fields: LogField) -> None:
    """``--log`` and ``log =`` are one parser: the same words give the same fields."""
    from dprobes.cli.run_cmd import _fields

    program = compile_rpn(
        "t.rpn", BuildOptions(), text=f"name = m\nmodtype = user\nlog = {value}\noffset = 0\nexit\n"
    )
    assert _fields(value) == program.program.header.log_fields == fields


def test_log_option_errors(capsys) -> None:
    status, _, err = dpc(capsys, "run", "--log", "PID|FOO", "--", str(BIN / "loop"))
    assert status == 2 and "--log: unknown log field 'FOO'" in err


def test_check_takes_several_files_and_reports_each(good: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.rpn"
    bad.write_text("name = m\nmodtype = user\noffset = 0\n    nosuchop\n")
    status, out, err = dpc(capsys, "check", str(good), str(bad), str(good))
    assert status == 2
    assert out.count(f"{good}: ok") == 2
    assert f"{bad}:4:" in err


def test_a_usage_error_names_the_command_not_its_arguments(capsys) -> None:
    status, _, err = dpc(capsys, "run", "--", "no-such-program")
    assert status == 2 and err.startswith("dpc run: error: ")


def test_a_closed_output_pipe_ends_quietly() -> None:
    """``dpc ... | head``: the reader is gone, so dpc stops without a word (status 141)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "dprobes.cli", "disasm", "--help-opcodes"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            check=False,
        )
    finally:
        os.close(write_end)
    assert done.returncode == 141 and done.stderr == b""


def _run_loop(capsys, tmp_path: Path, *options: str) -> tuple[int, str, str]:
    """dpc run of guest/bin/loop with a probe at ``work`` logging COM1 records."""
    probe = tmp_path / "p.rpn"
    probe.write_text(
        f"name = {BIN / 'loop'}\nmodtype = user\nlog_target = COM1\noffset = work\n"
        "    push 1\n    log 1\n    exit\n"
    )
    return dpc(
        capsys,
        "run",
        "--probes",
        str(probe),
        "--elf",
        str(BIN / "loop"),
        *options,
        "--",
        str(BIN / "loop"),
    )


def test_log_file_is_emptied_unless_append(tmp_path: Path, capsys) -> None:
    log = tmp_path / "log"
    status, _, _ = _run_loop(capsys, tmp_path, "--log-file", str(log))
    one_run = log.read_bytes()
    assert status == 7 and one_run
    _run_loop(capsys, tmp_path, "--log-file", str(log))
    assert log.read_bytes() == one_run
    _run_loop(capsys, tmp_path, "--log-file", str(log), "--append")
    assert log.read_bytes() == one_run * 2


@pytest.mark.parametrize("where", ["missing/dir/log", "."])
def test_an_unwritable_log_file_is_refused_before_the_guest_runs(
    where: str, tmp_path: Path, capfd
) -> None:
    # capfd: the guest writes to file descriptors 1 and 2 itself
    status, out, err = _run_loop(capfd, tmp_path, "--log-file", str(tmp_path / where))
    assert status == 2 and err.startswith("dpc run: error: --log-file: ")
    assert "loop: done" not in out + err  # the guest never started


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--max-instructions", "-5"], "--max-instructions: must be 1 or more"),
        (["--max-instructions", "0"], "--max-instructions: must be 1 or more"),
        (["--file", "/etc/hostname"], "--file is gone: the guest sees the host file system"),
        (["--root", "/no/such/dir"], "--root: not a directory: /no/such/dir"),
    ],
)
def test_run_option_values_are_checked(options: list[str], message: str, capsys) -> None:
    status, _, err = dpc(capsys, "run", *options, "--", str(BIN / "loop"))
    assert status == 2 and message in err


def test_json_status_is_the_exit_status(capsys) -> None:
    status, _, err = dpc(capsys, "run", "--json", "--", str(BIN / "loop"))
    assert status == 7 and json.loads(err.strip().splitlines()[-1])["status"] == 7
    status, _, err = dpc(
        capsys, "run", "--json", "--max-instructions", "1000", "--", str(BIN / "loop")
    )
    assert status == 124 and json.loads(err.strip().splitlines()[-1])["status"] == 124


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--reg", "eax=0x1ffffffff"], "--reg eax: 0x1ffffffff does not fit in 32 bits"),
        (["--gv", "99999=1"], "--gv 99999: the program has no such variables"),
    ],
)
def test_exec_option_values_are_checked(args: list[str], message: str, good: Path, capsys) -> None:
    status, _, err = dpc(capsys, "exec", str(good), *args)
    assert status == 2 and message in err


def test_a_negative_register_value_is_its_twos_complement(good: Path, capsys) -> None:
    status, _, _ = dpc(capsys, "exec", str(good), "--reg", "eax=-1")
    assert status == 0
