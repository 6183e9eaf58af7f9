"""The repository documents itself: its pages link to things that exist, name modules that
exist, list every instruction of the table, and point at nothing outside the repository;
and the installed package holds every subpackage of the source tree."""

from __future__ import annotations

import re
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from dprobes.vm.isa import TABLE

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
pytestmark = pytest.mark.skipif(
    not DOCS.is_dir(), reason="the documentation is in the source tree, not in the package"
)

SKIPPED_DIRS = {".git", ".venv", "build", "dist", "__pycache__"}
"""Directories that are not part of the repository's content (tools and builds)."""

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE_PATH = re.compile(r"`([\w.*-]+(?:/[\w.*-]+)*/(?:[\w.*-]+)?)`")
FENCED = re.compile(r"```.*?```", flags=re.S)
BARE_PATH = re.compile(r"(?<![\w/.])((?:[a-z_]+/)+(?:[\w]+\.(?:py|lark))?)")


def pages() -> list[Path]:
    """The Markdown pages a reader of the repository meets."""
    return [ROOT / "README.md", ROOT / "guest" / "README.md", *sorted(DOCS.glob("*.md"))]


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return {slug(m) for m in re.findall(r"^#{1,6} +(.+)$", text, flags=re.M)}


def repository_files() -> Iterator[Path]:
    """Every file of the repository: git's list (tracked and untracked, not ignored) when
    there is a git checkout, else a walk that leaves out tool and build directories."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        listed = None
    if listed is not None:
        yield from (ROOT / name for name in listed.decode().split("\0") if name)
        return
    for path in ROOT.rglob("*"):
        relative = path.relative_to(ROOT).parts
        if path.is_file() and not SKIPPED_DIRS.intersection(relative):
            yield path


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue  # a URL
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading #{anchor} in {resolved.name}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def repository_paths(page: Path) -> set[str]:
    """The paths into the repository a page names: `folder/file` in code quotes and
    folder/file.py in its code blocks, whose first folder is one of the repository's (a
    path elsewhere, such as DProbes' own ``drivers/dprobes/...``, is not checked)."""
    text = page.read_text(encoding="utf-8")
    names = set(CODE_PATH.findall(text))
    for block in FENCED.findall(text):
        names.update(BARE_PATH.findall(block))
    return {name for name in names if (ROOT / name.split("/")[0]).is_dir()}


@pytest.mark.parametrize("page", sorted(DOCS.glob("*.md")), ids=lambda p: p.name)
def test_module_paths_named_in_docs_exist(page: Path) -> None:
    """Every repository path a page names exists (a glob must match something)."""
    missing = [name for name in repository_paths(page) if not any(ROOT.glob(name.rstrip("/")))]
    assert not missing, f"{page.name} names paths that do not exist: {missing}"


def test_architecture_names_the_modules_of_every_pass() -> None:
    named = repository_paths(DOCS / "architecture.md")
    passes = ["preprocess", "rpn_parser", "lower_rpn", "assembler", "verifier", "ppdf"]
    assert {f"compiler/{name}.py" for name in passes} <= named
    assert {"vm/isa.py", "vm/interp.py", "vm/jit/", "runtime/native/"} <= named


def test_no_file_points_outside_the_repository() -> None:
    """The design notes the project was built from are not part of it; nothing may send a
    reader to them (the names are assembled here so this file does not match itself)."""
    notes = ("rpn-dialect", "dprobes-system", "dprobes-rpn", "dp-language")
    needles = [
        "shared" + "/spec",
        "shared" + "/reference",
        "../" + "shared",
        *(name + ".md" for name in notes),
    ]
    offending = []
    for path in repository_files():
        if not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data:
            continue  # a binary (the guest images)
        text = data.decode("utf-8", errors="replace")
        offending += [f"{path.relative_to(ROOT)}: {n}" for n in needles if n in text]
    assert not offending, offending


def rpn_row(op: object) -> str:
    """The start of an instruction's row in docs/rpn.md's instruction reference."""
    effect = op.effect.replace("|", "\\|")  # type: ignore[attr-defined]
    return f"| {op.code:#04x} | `{op.syntax}` | `{effect}` |"  # type: ignore[attr-defined]


def test_rpn_md_lists_every_instruction_of_the_table() -> None:
    text = (DOCS / "rpn.md").read_text(encoding="utf-8")
    missing = [rpn_row(op) for op in TABLE if rpn_row(op) not in text]
    assert not missing, "docs/rpn.md lacks (or has stale) rows:\n" + "\n".join(missing)
    listed = re.findall(r"^\| (0x[0-9a-f]{2}) \|", text, flags=re.M)
    assert sorted(listed) == sorted(f"{op.code:#04x}" for op in TABLE)


def test_pyproject_packages_every_package_directory() -> None:
    """A non-editable install copies only the packages pyproject lists: each directory
    holding an ``__init__.py`` must be listed, under the name its folder maps to."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    setuptools = config["tool"]["setuptools"]
    for name, folder in setuptools["package-dir"].items():
        expected = "dprobes" if folder == "." else "dprobes." + folder.replace("/", ".")
        assert name == expected, f"package-dir maps {name} to {folder}"
    on_disk = {
        ".".join(("dprobes", *init.parent.relative_to(ROOT).parts))
        for init in ROOT.rglob("__init__.py")
        if not SKIPPED_DIRS.intersection(init.relative_to(ROOT).parts)
        and not any(part.endswith(".egg-info") for part in init.relative_to(ROOT).parts)
    }
    assert set(setuptools["packages"]) == on_disk
