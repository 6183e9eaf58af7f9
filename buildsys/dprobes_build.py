"""The PEP 517 build backend: setuptools' own, plus mypy where a build may compile.

A wheel build (and so a regular ``pip install``) compiles the interpreter with mypyc and
therefore needs mypy; an editable install runs the sources and an sdist is only an archive,
so neither asks for it. ``pyproject.toml`` names this module with ``backend-path``.
"""

from __future__ import annotations

from setuptools import build_meta
from setuptools.build_meta import *  # noqa: F403 (every other hook is setuptools')

MYPYC = "mypy>=2.4.1,<2.5"
"""mypyc ships with mypy; the build is tested with 2.4."""


def get_requires_for_build_wheel(
    config_settings: dict[str, str | list[str]] | None = None,
) -> list[str]:
    """setuptools' wheel requirements and mypy."""
    return [*build_meta.get_requires_for_build_wheel(config_settings), MYPYC]
