"""The interpreter's two builds (``vm.flavour``): the sources and the mypyc-compiled modules.

An editable install, which the test suite usually runs in, runs the sources; a wheel
compiles them. The slow tests here build a wheel of this checkout once, unpack it, and
check that it is compiled where this machine can compile, that the compiled build passes
the conformance corpus, and that it agrees with the pure-Python copy of the same wheel on
generated programs. The fast ones check that mypy is a requirement of wheel builds only
and that a checkout runs its own sources.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

import dprobes
from dprobes.vm import flavour

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
CHECKOUT = (ROOT / "pyproject.toml").exists()
"""Whether the tests run from a source checkout (an installed package has no pyproject)."""
PROGRAMS = 2000
NOT_SOURCES = shutil.ignore_patterns(
    ".git",
    ".venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".*_cache",
    ".hypothesis",
    "*.so",
    "*.ppdf",
)


def _run(
    args: list[str], path: Path | None = None, cwd: Path | None = None, timeout: float = 900
) -> str:
    """Run ``args`` (after this Python) with ``path`` first on PYTHONPATH; its stdout."""
    env = {key: value for key, value in os.environ.items() if key != flavour.PURE_ENV}
    env["PYTHONHASHSEED"] = "0"  # the program generator iterates over sets
    if path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(path), *filter(None, [env.get("PYTHONPATH")])])
    done = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        check=False,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_only_wheel_builds_require_mypy() -> None:
    if not CHECKOUT:
        pytest.skip("not a source checkout: no build backend here")
    pytest.importorskip("setuptools", reason="the build backend wraps setuptools")
    script = (
        "import json, dprobes_build as b; print(json.dumps("
        "[b.get_requires_for_build_wheel(), b.get_requires_for_build_editable(),"
        " b.get_requires_for_build_sdist()]))"
    )
    wheel, editable, sdist = json.loads(
        _run(["-c", script], path=ROOT / "buildsys", cwd=ROOT).splitlines()[-1]
    )
    assert any(requirement.startswith("mypy") for requirement in wheel), wheel
    assert not any(requirement.startswith("mypy") for requirement in editable + sdist)


def test_a_checkout_runs_its_sources() -> None:
    if not (Path(dprobes.__file__).parent / "pyproject.toml").exists():
        pytest.skip("dprobes is installed, not imported from a checkout")
    assert not flavour.is_compiled(), (
        "compiled modules sit in this checkout's vm/ (left by an in-place build before "
        "editable installs stopped compiling); delete vm/*.so"
    )


@dataclass(frozen=True)
class Builds:
    """PYTHONPATH entries for the compiled build (a wheel of this checkout, unpacked) and
    for the same files without the extensions, and what the wheel build said."""

    compiled: Path
    pure: Path
    said: str


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> Builds:
    if not CHECKOUT:
        pytest.skip("not a source checkout: there is no project to build a wheel of")
    if (reason := flavour.cannot_compile()) is not None:
        pytest.skip(f"this machine cannot compile the interpreter: {reason}")
    tmp = tmp_path_factory.mktemp("flavours")
    shutil.copytree(ROOT, tmp / "source", ignore=NOT_SOURCES)  # no stale build/ in the wheel
    log = _run(
        ["-m", "pip", "wheel", "--no-deps", "-v", "-w", str(tmp / "wheel"), str(tmp / "source")],
        timeout=1500,
    )
    (wheel,) = (tmp / "wheel").glob("dprobes-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(tmp / "compiled")
    said = "\n".join(line.strip() for line in log.splitlines() if "dprobes:" in line)
    return Builds(
        tmp / "compiled",
        flavour.without_extensions(tmp / "compiled" / "dprobes", tmp / "pure"),
        said,
    )


def _build_of(path: Path) -> str:
    return _run(
        ["-c", "from dprobes.vm import flavour; print(flavour.describe())"], path=path, cwd=path
    ).strip()


@pytest.mark.slow
def test_the_wheel_is_compiled_where_it_can_be(builds: Builds) -> None:
    assert _build_of(builds.compiled) == "compiled (mypyc)", (
        f"the wheel holds the sources only; the build said: {builds.said}"
    )
    assert _build_of(builds.pure) == "pure Python"


@pytest.mark.slow
def test_compiled_build_passes_the_conformance_corpus(builds: Builds) -> None:
    """The rest of the suite runs the sources; this runs the corpus on the compiled build."""
    compiled = builds.compiled
    assert _build_of(compiled) == "compiled (mypyc)", builds.said
    _run(
        [
            "-m",
            "pytest",
            str(compiled / "dprobes" / "tests" / "test_conformance.py"),
            "-q",
            "-p",
            "no:cacheprovider",
            "--import-mode=importlib",
        ],
        path=compiled,
        cwd=compiled,
    )


@pytest.mark.slow
def test_builds_agree_on_generated_programs(builds: Builds) -> None:
    args = ["-m", "dprobes.tests.flavour_run", "--programs", str(PROGRAMS)]
    compiled = json.loads(_run(args, path=builds.compiled, cwd=builds.compiled))
    pure = json.loads(_run(args, path=builds.pure, cwd=builds.pure))
    assert (compiled["build"], pure["build"]) == ("compiled (mypyc)", "pure Python")
    assert compiled["digests"].count("runaway") < PROGRAMS // 10
    differ = [
        i
        for i, (a, b) in enumerate(zip(compiled["digests"], pure["digests"], strict=True))
        if a != b
    ]
    assert not differ, f"{len(differ)} programs differ, first: seed index {differ[0]}"
