"""Build hook: a regular install or a wheel compiles the reference interpreter with mypyc.

``vm/interp.py`` and ``vm/ops.py`` stay the one, readable definition of the RPN semantics;
mypyc turns the same source into C extensions that run it about 1.6x (loops) to 2.5x
(calls) faster. Only a built package is compiled: an editable install (``pip install -e``)
runs the sources, so an edit takes effect at once and no build can go stale. Where there
is no C compiler, no Python headers, or mypy rejects the types, the package installs as
pure Python and says why; it never fails to install for this. ``DPROBES_PURE_PYTHON=1``
at install time skips the compilation. mypy itself is a build requirement of wheels only
(``buildsys/dprobes_build.py``).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import BaseError, CCompilerError

ROOT = Path(__file__).resolve().parent


def _flavour() -> ModuleType:
    """``vm/flavour.py`` (what is compiled, and whether it can be), read before install."""
    spec = importlib.util.spec_from_file_location("dprobes_flavour", ROOT / "vm" / "flavour.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


flavour = _flavour()


def _say(message: str) -> None:
    print(f"dprobes: {message}", file=sys.stderr)


def _pure(reason: str) -> None:
    _say(f"installing the pure-Python interpreter ({reason})")


class CompileInterpreter(build_ext):
    """``build_ext`` that compiles the interpreter modules with mypyc, from the copies
    ``build_py`` put in the build tree (there they sit in a folder named ``dprobes``, whose
    name mypyc takes for the package's), and skips them in editable installs."""

    def run(self) -> None:
        if self.editable_mode:
            _say("editable install: the interpreter runs from its Python sources")
            self.extensions = []
            return
        generated = {extension.name: extension for extension in self._mypyc_extensions()}
        if not generated:
            self.extensions = []
            return
        if set(generated) != {extension.name for extension in self.extensions}:
            self.extensions = []
            _pure(
                f"mypyc made other modules ({', '.join(sorted(generated))}) than setup.py declares"
            )
            return
        for extension in self.extensions:  # the declared modules get mypyc's C sources
            vars(extension).update(
                {
                    key: value
                    for key, value in vars(generated[extension.name]).items()
                    if not key.startswith("_")
                }
            )
        try:
            super().run()
        except (CCompilerError, BaseError) as error:
            for built in self.get_outputs():  # a part of the build would not load alone
                Path(built).unlink(missing_ok=True)
            self.extensions = []
            _pure(f"the C build failed: {error}")

    def _mypyc_extensions(self) -> list[Extension]:
        """The mypyc extensions of the interpreter modules, or none with a message why."""
        if os.environ.get(flavour.PURE_ENV):
            _pure(f"{flavour.PURE_ENV} is set")
            return []
        if (reason := flavour.cannot_compile()) is not None:
            _pure(reason)
            return []
        try:
            from mypyc.build import mypycify
        except ImportError:
            _pure("mypy (mypyc) is not installed in the build environment")
            return []
        self.run_command("build_py")
        package = Path(self.get_finalized_command("build_py").build_lib) / "dprobes" / "vm"
        temp = Path(self.build_temp)
        # Only the compiled modules must type-check; what they import is read, not judged
        # (the build environment need not have the runtime dependencies).
        options = [
            "--follow-imports=silent",
            "--ignore-missing-imports",
            f"--cache-dir={temp / 'mypy-cache'}",
        ]
        try:
            sources = [str(package / f"{name}.py") for name in flavour.MODULES]
            return mypycify(
                [*options, *sources], group_name=flavour.GROUP, target_dir=str(temp / "mypyc")
            )
        except SystemExit:  # mypy found type errors and printed them
            _pure("mypy rejected the interpreter's types; see the errors above")
            return []


setup(
    # The modules the mypyc build makes: the shared library and one shim per module.
    # CompileInterpreter gives them the C sources mypyc generates from vm/; declaring them
    # here marks the distribution as platform-specific.
    ext_modules=[
        Extension(name, [])
        for name in (flavour.LIBRARY, *(f"dprobes.vm.{module}" for module in flavour.MODULES))
    ],
    cmdclass={"build_ext": CompileInterpreter},
)
