"""The persistent object-code cache: compiled LLVM modules kept on disk between runs.

An entry is one relocatable object file (what ``TargetMachine.emit_object`` writes and
``ExecutionEngine.add_object_file`` loads, about a millisecond for a handler), named by
the hex SHA-256 of its key. The key covers everything the machine code depends on: what
was compiled (a handler's bytes, a library module's IR text), the optimisation levels,
the JIT ABI version, the llvmlite and LLVM versions, the target triple, CPU name and
features (``Fingerprint``). Nothing process-specific (addresses) goes into cached code.

An entry file is a header (magic, format, the key digest, the object's length and
SHA-256) and the object. An entry whose header does not check out (another format, a key
that is not its name, a short or altered object) is reported as a miss, deleted, and
rebuilt by the caller: a cached object is never loaded unverified. Entries are written
to a temporary file in the same directory and renamed into place, so a concurrent run
sees a whole entry or none.

The directory is ``$DPROBES_CACHE_DIR``, else ``$XDG_CACHE_HOME/dprobes``, else
``~/.cache/dprobes``, read at each use (tests move it for a whole session). A cache that
cannot be written (read-only home, full disk) only costs the compile time.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

MAGIC = b"DPJITOBJ"
FORMAT = 1
"""Bumped whenever the entry layout changes."""
HEADER = struct.Struct("<8sI32sQ32s")
"""magic, format, key digest, object length, object SHA-256."""
SUFFIX = ".o"


def cache_directory() -> Path:
    """Where entries live now (see the module docstring)."""
    moved = os.environ.get("DPROBES_CACHE_DIR")
    if moved:
        return Path(moved)
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "dprobes"


@dataclass(frozen=True)
class Fingerprint:
    """What compiled code depends on besides its input: the compiler and the target."""

    abi: int
    llvmlite: str
    llvm: str
    triple: str
    cpu: str
    features: str

    @cached_property
    def digest(self) -> bytes:
        return hashlib.sha256(repr(self).encode()).digest()


def entry_key(
    fingerprint: Fingerprint, kind: str, levels: tuple[int, ...], payload: bytes
) -> bytes:
    """The key of compiling ``payload`` (handler bytes, IR text) of ``kind`` at ``levels``."""
    digest = hashlib.sha256(fingerprint.digest)
    digest.update(f"/{kind}/{','.join(map(str, levels))}/".encode())
    digest.update(payload)
    return digest.digest()


@dataclass
class CacheStats:
    """Counts of one process's cache lookups (benchmarks and tests read them)."""

    hits: int = 0
    misses: int = 0
    rejected: int = 0  # entries found corrupt, truncated or stale (deleted, rebuilt)
    stored: int = 0


class ObjectCache:
    """Verified reads and atomic writes of cache entries; ``enabled`` False (``--no-cache``)
    makes every lookup a miss and every store a no-op."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.stats = CacheStats()

    def path(self, key: bytes) -> Path:
        return cache_directory() / (key.hex() + SUFFIX)

    def load(self, key: bytes) -> bytes | None:
        """The object stored under ``key``, if the entry is whole and really that key's."""
        if not self.enabled:
            return None
        path = self.path(key)
        try:
            data = path.read_bytes()
        except OSError:
            self.stats.misses += 1
            return None
        obj = _verified(data, key)
        if obj is None:
            self.stats.rejected += 1
            self.stats.misses += 1
            with contextlib.suppress(OSError):
                path.unlink()
            return None
        self.stats.hits += 1
        return obj

    def store(self, key: bytes, obj: bytes) -> None:
        """Write the entry atomically; failures are ignored (the cache is an optimisation)."""
        if not self.enabled:
            return
        directory = cache_directory()
        header = HEADER.pack(MAGIC, FORMAT, key, len(obj), hashlib.sha256(obj).digest())
        try:
            directory.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=SUFFIX)
        except OSError:
            return
        try:
            with os.fdopen(handle, "wb") as stream:
                stream.write(header)
                stream.write(obj)
            os.replace(temporary, directory / (key.hex() + SUFFIX))
            self.stats.stored += 1
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(temporary)


def _verified(data: bytes, key: bytes) -> bytes | None:
    """The object in an entry's bytes, or None if anything in the header disagrees."""
    if len(data) < HEADER.size:
        return None
    magic, version, stored_key, length, checksum = HEADER.unpack_from(data)
    obj = data[HEADER.size :]
    if (magic, version, stored_key, length) != (MAGIC, FORMAT, key, len(obj)):
        return None
    if hashlib.sha256(obj).digest() != checksum:
        return None
    return obj
