"""The README's embedding example runs as written and prints what it says."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
CI = README.parent / ".ci" / "run"


def test_embedding_example_runs() -> None:
    text = README.read_text()
    block = re.search(r"## Embedding the VM\n\n```python\n(.*?)```", text, re.S)
    assert block is not None
    code = block.group(1)
    expected = re.search(r"# (.*)$", code.strip().splitlines()[-1]).group(1)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    assert out.getvalue().strip() == expected.strip()


def test_ci_runs_the_second_quick_start_command() -> None:
    if not CI.exists():
        pytest.skip("not a source checkout: no .ci/run")
    commands = re.findall(r"```sh\n(.*?)\n```", README.read_text(), re.S)
    assert len(commands) >= 2
    lines = CI.read_text().rstrip().splitlines()
    assert lines[-1] == commands[1], "the last line of .ci/run is not the README's command"
