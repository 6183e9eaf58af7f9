"""Which build of the interpreter runs: the mypyc-compiled modules or their Python sources.

``setup.py`` compiles ``vm/interp.py`` and ``vm/ops.py`` with mypyc where it can; both
builds run the same source, so they agree to the bit (the test suite runs the conformance
corpus on each). The sources are imported instead of the extensions when
``DPROBES_PURE_PYTHON`` is set (to debug or trace the reference semantics in Python), or
when a source is newer than its extension, as after editing or pulling an editable
checkout (an edit is never shadowed by a stale build), or when only part of the build is
there.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import warnings
from pathlib import Path

MODULES = ("interp", "ops")
"""The compiled modules of ``dprobes.vm``, as setup.py lists them."""
PURE_ENV = "DPROBES_PURE_PYTHON"
INSTALL_SKEW = 2.0
"""Seconds a source may be newer than its extension without being stale (an install
writes the two moments apart)."""


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Imports the named modules from their ``.py`` files, past any extension beside them."""

    def __init__(self, sources: dict[str, Path]) -> None:
        self.sources = sources

    def find_spec(self, fullname: str, path: object = None,
                  target: object = None) -> importlib.machinery.ModuleSpec | None:
        source = self.sources.get(fullname)
        return None if source is None else importlib.util.spec_from_file_location(
            fullname, source)


def _extension(source: Path) -> Path | None:
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = source.with_name(source.stem + suffix)
        if candidate.exists():
            return candidate
    return None


def choose(package_dir: Path) -> None:
    """Before the interpreter is imported: use the sources if asked to, or if the build is
    stale or incomplete.

    The modules go together (compiled ``ops`` needs compiled ``interp``), so one stale or
    missing extension sends both to their sources.
    """
    built = {name: _extension(package_dir / f"{name}.py") for name in MODULES}
    if not any(built.values()):
        return  # a pure-Python install
    problem = None
    if not all(built.values()):
        problem = "the compiled interpreter is incomplete"
    for name, extension in built.items():
        if extension is not None and ((package_dir / f"{name}.py").stat().st_mtime
                                      > extension.stat().st_mtime + INSTALL_SKEW):
            problem = f"vm/{name}.py is newer than its compiled module"
    if problem:
        warnings.warn(f"dprobes: {problem}; running the Python sources (reinstall to "
                      "recompile)", stacklevel=2)
    if problem or os.environ.get(PURE_ENV):
        sys.meta_path.insert(0, _SourceFinder(
            {f"{__package__}.{name}": package_dir / f"{name}.py" for name in MODULES}))


def is_compiled() -> bool:
    """Whether the running interpreter is the mypyc build."""
    from dprobes.vm import interp, ops
    return not any(str(module.__file__).endswith(".py") for module in (interp, ops))


def describe() -> str:
    return "compiled (mypyc)" if is_compiled() else "pure Python"
