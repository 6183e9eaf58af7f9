"""Which build of the interpreter runs: the mypyc-compiled modules or their Python sources.

A regular install or a wheel build compiles ``vm/interp.py`` and ``vm/ops.py`` with mypyc
where the machine can (``setup.py``); an editable install, and one where compiling was not
possible, runs the sources. Python imports an extension in preference to the ``.py`` beside
it, so whichever build the install holds is the one that runs. Both builds run the same
source and agree to the bit: ``tests/test_flavour.py`` builds a wheel and checks them
against each other. This module imports only the standard library, so that ``setup.py``
can read these facts before the package is installed.
"""

from __future__ import annotations

import importlib.machinery
import os
import shutil
import sysconfig
from pathlib import Path

MODULES = ("interp", "ops")
"""The modules of ``dprobes.vm`` that are compiled."""
GROUP = "dprobes.vm.rpn"
"""mypyc's name for the compiled modules together."""
LIBRARY = f"{GROUP}__mypyc"
"""Their shared library, named as mypyc names it; each module is a shim that loads it."""
PURE_ENV = "DPROBES_PURE_PYTHON"
"""Set at install time, the build installs the sources even where it could compile them."""


def cannot_compile() -> str | None:
    """Why this machine cannot compile the interpreter (no C compiler, no Python headers),
    or None when it can."""
    compiler = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return f"no C compiler ({compiler}; Debian: apt install gcc)"
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").exists():
        return "no Python headers (Debian: apt install python3-dev)"
    return None


def is_extension(path: Path) -> bool:
    """Whether ``path`` is a compiled extension module for this Python."""
    return path.name.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def is_compiled() -> bool:
    """Whether the running interpreter is the mypyc build."""
    from dprobes.vm import interp, ops

    return all(is_extension(Path(str(module.__file__))) for module in (interp, ops))


def describe() -> str:
    """The running build, as ``dpc --version`` reports it."""
    return "compiled (mypyc)" if is_compiled() else "pure Python"


def without_extensions(package: Path, dest: Path) -> Path:
    """Copy the installed ``dprobes`` package directory ``package`` into ``dest`` without
    its compiled modules, and return ``dest``: first on ``PYTHONPATH``, it runs the sources
    of the same install."""
    shutil.copytree(
        package,
        dest / "dprobes",
        ignore=lambda folder, names: [
            name for name in names if name == "__pycache__" or is_extension(Path(folder, name))
        ],
    )
    return dest
