"""The one parser of the conformance corpus (tests/conformance/*.case).

A case file is a list of sections, each introduced by a line ``-- name[: value]``:

``-- handler``   instructions only; the runner wraps them in a standard header
                 (``name = conformance``, ``modtype = user``, ``num_lv = 8``,
                 ``num_gv = 8``, ``offset = 0``) unless ``-- header`` gives one
``-- header``    header and probe items to use instead of the standard ones
``-- rpn``       a whole program file, used as written
``-- args``      ``dpc exec`` options (shell syntax), e.g. ``--reg eax=5``
``-- expect``    a JSON object; every key in it must equal the same key of
                 ``dpc exec --json`` (a subset check)
``-- error``     compile must fail with exit status 2; each line must appear in stderr
``-- no jit: reason``  the case is skipped on the JIT tier, with the reason

Comments in case files are ``#`` lines before the first section.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

CORPUS = Path(__file__).parent / "conformance"

STANDARD_HEADER = """name = conformance
modtype = user
num_lv = 8
num_gv = 8
offset = 0
"""


@dataclass
class Case:
    path: Path
    source: str
    args: list[str] = field(default_factory=list)
    expect: dict | None = None
    errors: list[str] = field(default_factory=list)
    no_jit: str | None = None

    @property
    def name(self) -> str:
        return self.path.stem


def parse_case(path: Path) -> Case:
    sections: dict[str, list[str]] = {}
    values: dict[str, str] = {}
    current: str | None = None
    for line in path.read_text().splitlines():
        if line.startswith("-- "):
            key, _, value = line[3:].partition(":")
            current = key.strip()
            sections[current] = []
            values[current] = value.strip()
        elif current is not None:
            sections[current].append(line)
        elif line.strip() and not line.startswith("#"):
            raise ValueError(f"{path}: text before the first section: {line!r}")
    unknown = set(sections) - {"handler", "header", "rpn", "args", "expect", "error", "no jit"}
    if unknown:
        raise ValueError(f"{path}: unknown sections {sorted(unknown)}")
    if ("rpn" in sections) == ("handler" in sections):
        raise ValueError(f"{path}: needs exactly one of '-- rpn' and '-- handler'")
    if ("expect" in sections) == ("error" in sections):
        raise ValueError(f"{path}: needs exactly one of '-- expect' and '-- error'")
    if "rpn" in sections:
        source = "\n".join(sections["rpn"]) + "\n"
    else:
        header = "\n".join(sections["header"]) + "\n" if "header" in sections else STANDARD_HEADER
        source = header + "\n".join(sections["handler"]) + "\n"
    return Case(
        path=path,
        source=source,
        args=shlex.split(" ".join(sections.get("args", []))),
        expect=json.loads("\n".join(sections["expect"])) if "expect" in sections else None,
        errors=[line.strip() for line in sections.get("error", []) if line.strip()],
        no_jit=values.get("no jit") if "no jit" in sections else None,
    )


def load_corpus() -> list[Case]:
    return [parse_case(path) for path in sorted(CORPUS.glob("*.case"))]
