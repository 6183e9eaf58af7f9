"""Session set-up shared by every test module."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

_CACHE_DIR = "DPROBES_CACHE_DIR"


def pytest_configure(config: pytest.Config) -> None:
    """Point the JIT's object cache at a directory of this session (tests never touch the
    user's cache); subprocesses (``dpc``) inherit it through the environment."""
    config.dprobes_cache = tempfile.mkdtemp(prefix="dprobes-test-cache-")
    config.dprobes_saved_cache = os.environ.get(_CACHE_DIR)
    os.environ[_CACHE_DIR] = config.dprobes_cache


def pytest_unconfigure(config: pytest.Config) -> None:
    saved = getattr(config, "dprobes_saved_cache", None)
    if saved is None:
        os.environ.pop(_CACHE_DIR, None)
    else:
        os.environ[_CACHE_DIR] = saved
    shutil.rmtree(getattr(config, "dprobes_cache", ""), ignore_errors=True)


BUSYBOX = os.path.expanduser("~/.cache/dprobes-tests/busybox-i386/bin/busybox")


@pytest.fixture
def busybox() -> str:
    """Debian's static i386 busybox, unpacked in the test cache (skipped when absent)."""
    if not os.path.isfile(BUSYBOX):
        pytest.skip(f"busybox-static i386 not unpacked at {BUSYBOX}")
    return BUSYBOX
