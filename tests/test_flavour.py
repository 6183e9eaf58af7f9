"""The interpreter's two builds (``vm.flavour``): compiled where possible, and the same.

setup.py compiles ``vm/interp.py`` and ``vm/ops.py`` with mypyc; the rest of the suite runs
whichever build is installed. These tests check that the build is the compiled one when
this machine can compile, that the pure-Python build agrees with it on the conformance
corpus and on generated programs, and that a stale or unwanted build falls back to the
sources.
"""

from __future__ import annotations

import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from dprobes.vm import flavour

TESTS = Path(__file__).resolve().parent
SAME_HASHES = {**os.environ, "PYTHONHASHSEED": "0"}  # the generator iterates over sets
PURE = {**SAME_HASHES, flavour.PURE_ENV: "1"}
PROGRAMS = 2000
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def _can_compile() -> str | None:
    """Why this machine cannot build the extensions, or None if it can."""
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return f"no C compiler ({compiler})"
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").exists():
        return "no Python headers (Debian: apt install python3-dev)"
    return None


needs_compiled = pytest.mark.skipif(not flavour.is_compiled(),
                                    reason="the pure-Python build is installed: the rest "
                                           "of the suite already runs it")


def test_installed_build_is_compiled_where_it_can_be() -> None:
    if os.environ.get(flavour.PURE_ENV):
        pytest.skip(f"{flavour.PURE_ENV} is set")
    if (reason := _can_compile()) is not None:
        pytest.skip(f"cannot compile here: {reason}")
    assert flavour.is_compiled(), ("the interpreter is not compiled; reinstall with "
                                   "`pip install -v -e .` and read setup.py's warning")


def _run(module: str, *args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([sys.executable, "-m", module, *args], capture_output=True,
                          text=True, env=env, check=False, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@needs_compiled
def test_pure_build_passes_the_conformance_corpus() -> None:
    """Includes the checks that patch ``Machine`` and so cannot see into the compiled build."""
    _run("pytest", str(TESTS / "test_conformance.py"), "-q", "-p", "no:cacheprovider",
         env=PURE)


@needs_compiled
def test_builds_agree_on_generated_programs() -> None:
    args = ("--programs", str(PROGRAMS))
    compiled = json.loads(_run("dprobes.tests.flavour_run", *args, env=SAME_HASHES))
    pure = json.loads(_run("dprobes.tests.flavour_run", *args, env=PURE))
    assert compiled.count("runaway") < PROGRAMS // 10
    differ = [i for i, (a, b) in enumerate(zip(compiled, pure, strict=True)) if a != b]
    assert not differ, f"{len(differ)} programs differ, first: seed index {differ[0]}"


@pytest.fixture
def package(tmp_path: Path):
    """A directory with both interpreter sources and an extension beside each."""
    for name in flavour.MODULES:
        (tmp_path / f"{name}.py").write_text("")
        (tmp_path / f"{name}{SUFFIX}").write_text("")
    before = list(sys.meta_path)
    yield tmp_path
    sys.meta_path[:] = before


def _age(path: Path, seconds: float) -> None:
    stat = path.stat()
    os.utime(path, (stat.st_atime - seconds, stat.st_mtime - seconds))


def _sources_chosen(package: Path) -> dict[str, Path] | None:
    finder = sys.meta_path[0]
    return finder.sources if isinstance(finder, flavour._SourceFinder) else None


def test_fresh_build_is_kept(package: Path, monkeypatch) -> None:
    monkeypatch.delenv(flavour.PURE_ENV, raising=False)
    flavour.choose(package)
    assert _sources_chosen(package) is None


def test_stale_build_falls_back_to_the_sources(package: Path, monkeypatch) -> None:
    monkeypatch.delenv(flavour.PURE_ENV, raising=False)
    _age(package / f"ops{SUFFIX}", 60)
    with pytest.warns(UserWarning, match="vm/ops.py is newer than its compiled module"):
        flavour.choose(package)
    assert _sources_chosen(package) == {f"dprobes.vm.{name}": package / f"{name}.py"
                                        for name in flavour.MODULES}


def test_incomplete_build_falls_back_to_the_sources(package: Path, monkeypatch) -> None:
    monkeypatch.delenv(flavour.PURE_ENV, raising=False)
    (package / f"ops{SUFFIX}").unlink()
    with pytest.warns(UserWarning, match="the compiled interpreter is incomplete"):
        flavour.choose(package)
    assert _sources_chosen(package) is not None


def test_pure_install_is_left_alone(package: Path, monkeypatch) -> None:
    monkeypatch.delenv(flavour.PURE_ENV, raising=False)
    for name in flavour.MODULES:
        (package / f"{name}{SUFFIX}").unlink()
    flavour.choose(package)
    assert _sources_chosen(package) is None


def test_pure_python_asked_for(package: Path, monkeypatch) -> None:
    monkeypatch.setenv(flavour.PURE_ENV, "1")
    flavour.choose(package)
    assert _sources_chosen(package) is not None
