"""The JIT's persistent object-code cache and position-independent handler bodies.

Unit tests of ``vm.jit.cache`` use their own directory; the tests that need a fresh
process (an engine with nothing in memory) run ``python`` or ``dpc`` with
``DPROBES_CACHE_DIR`` set to one. Nothing here touches the user's cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from dprobes.compiler.pipeline import compile_rpn
from dprobes.vm import VM, MemoryContext
from dprobes.vm.jit import cache
from dprobes.vm.jit.compile import Engine

FINGERPRINT = cache.Fingerprint(
    6, "0.50.0", "22.1.0", "x86_64-unknown-linux-gnu", "znver3", "+avx2,+sse4.2"
)


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "objects"
    monkeypatch.setenv("DPROBES_CACHE_DIR", str(directory))
    return directory


# --- the directory ------------------------------------------------------------------
def test_directory_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("DPROBES_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_directory() == tmp_path / "xdg" / "dprobes"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.cache_directory() == tmp_path / "home" / ".cache" / "dprobes"
    monkeypatch.setenv("DPROBES_CACHE_DIR", str(tmp_path / "moved"))
    assert cache.cache_directory() == tmp_path / "moved"


def test_the_test_session_never_uses_the_users_cache() -> None:
    home_cache = Path.home() / ".cache" / "dprobes"
    assert cache.cache_directory() != home_cache
    assert "dprobes-test-cache-" in str(cache.cache_directory())


# --- keys -----------------------------------------------------------------------------
def test_key_depends_on_every_input() -> None:
    code = bytes.fromhex("0102030405")
    base = cache.entry_key(FINGERPRINT, "handler", (2, 2), code)
    assert base == cache.entry_key(FINGERPRINT, "handler", (2, 2), bytes(code))
    changed = [
        cache.entry_key(FINGERPRINT, "handler", (2, 2), code[:-1] + b"\x06"),  # a byte
        cache.entry_key(replace(FINGERPRINT, abi=7), "handler", (2, 2), code),
        cache.entry_key(replace(FINGERPRINT, llvmlite="0.51.0"), "handler", (2, 2), code),
        cache.entry_key(replace(FINGERPRINT, llvm="23.0.0"), "handler", (2, 2), code),
        cache.entry_key(replace(FINGERPRINT, cpu="skylake"), "handler", (2, 2), code),
        cache.entry_key(replace(FINGERPRINT, features="+avx2"), "handler", (2, 2), code),
        cache.entry_key(FINGERPRINT, "handler", (2, 1), code),  # codegen level
        cache.entry_key(FINGERPRINT, "handler", (1, 2), code),  # optimisation level
        cache.entry_key(FINGERPRINT, "library", (2, 2), code),
    ]
    assert len({base, *changed}) == len(changed) + 1


def test_engine_key_is_position_independent() -> None:
    engine = Engine.get()
    first = compile_rpn("a.rpn", text=_program(["push 5\nexit"] * 1)).program
    second = compile_rpn("b.rpn", text=_program(["push 1\nexit", "push 5\nexit"])).program
    assert first.probes[0].code_start != second.probes[1].code_start
    assert engine.handler_key(first.handler(0)) == engine.handler_key(second.handler(1))
    assert engine.handler_key(first.handler(0)) != engine.handler_key(second.handler(0))


# --- entries ----------------------------------------------------------------------------
def _stored(cache_dir: Path, obj: bytes = b"\x7fELF object code") -> tuple[bytes, Path]:
    key = cache.entry_key(FINGERPRINT, "handler", (2, 2), obj)
    cache.ObjectCache().store(key, obj)
    path = cache_dir / (key.hex() + cache.SUFFIX)
    assert path.is_file()
    return key, path


def test_store_then_load(cache_dir: Path) -> None:
    key, _ = _stored(cache_dir)
    objects = cache.ObjectCache()
    assert objects.load(key) == b"\x7fELF object code"
    assert (objects.stats.hits, objects.stats.misses) == (1, 0)
    other = cache.entry_key(FINGERPRINT, "handler", (2, 2), b"else")
    assert objects.load(other) is None
    assert objects.stats.misses == 1
    assert [p.name for p in cache_dir.iterdir()] == [key.hex() + cache.SUFFIX]  # no temp file


@pytest.mark.parametrize("damage", ["garbage", "truncated", "flipped", "stale", "format"])
def test_bad_entries_are_rejected_and_removed(cache_dir: Path, damage: str) -> None:
    key, path = _stored(cache_dir)
    data = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"this is not a cache entry at all" * 4)
    elif damage == "truncated":
        path.write_bytes(data[:-3])
    elif damage == "flipped":  # same length, one object byte changed
        path.write_bytes(data[:-1] + bytes((data[-1] ^ 1,)))
    elif damage == "stale":  # a whole entry, but of another key
        _, other_path = _stored(cache_dir, b"\x7fELF other code!")
        path.write_bytes(other_path.read_bytes())
    else:
        header = cache.HEADER.unpack_from(data)
        path.write_bytes(
            cache.HEADER.pack(header[0], cache.FORMAT + 1, *header[2:]) + data[cache.HEADER.size :]
        )
    objects = cache.ObjectCache()
    assert objects.load(key) is None
    assert objects.stats.rejected == 1
    assert not path.exists()


def test_disabled_cache_neither_reads_nor_writes(cache_dir: Path) -> None:
    key, _ = _stored(cache_dir)
    objects = cache.ObjectCache(enabled=False)
    assert objects.load(key) is None
    fresh = cache.entry_key(FINGERPRINT, "handler", (2, 2), b"new")
    objects.store(fresh, b"new")
    assert not (cache_dir / (fresh.hex() + cache.SUFFIX)).exists()


def test_unwritable_directory_only_costs_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("DPROBES_CACHE_DIR", str(blocker / "cache"))
    objects = cache.ObjectCache()
    objects.store(b"k" * 32, b"object")
    assert objects.load(b"k" * 32) is None


# --- the engine in fresh processes ------------------------------------------------------
HANDLER = "push 3\npush 4\nmul\nlog 1\nexit"
ENTRIES = 3
"""What a JIT hit on a MemoryContext compiles: the runtime library, the native
MemoryContext callbacks and the handler."""

FIRE = """
import json, sys
from dprobes.compiler.pipeline import compile_rpn
from dprobes.vm import VM, MemoryContext
from dprobes.vm.jit.compile import Engine
program = compile_rpn("p.rpn", text=sys.argv[1]).program
vm = VM(program, tier="jit")
result = vm.fire(0, MemoryContext())
stats = Engine.get().objects.stats
print(json.dumps({"log": result.log.hex(), "cached": vm.compiled(0).body.cached,
                  "hits": stats.hits, "misses": stats.misses, "rejected": stats.rejected,
                  "stored": stats.stored}))
"""


def _program(handlers: list[str]) -> str:
    probes = "".join(f"offset = {4 * i}\n{text}\n" for i, text in enumerate(handlers))
    return f"name = demo\nmodtype = user\nnum_lv = 4\n{probes}"


def _fresh_process(cache_dir: Path, handler: str = HANDLER) -> dict:
    env = {**os.environ, "DPROBES_CACHE_DIR": str(cache_dir)}
    done = subprocess.run(
        [sys.executable, "-c", FIRE, _program([handler])],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout)


def test_a_second_process_loads_what_the_first_compiled(cache_dir: Path) -> None:
    first = _fresh_process(cache_dir)
    assert not first["cached"]
    assert first["stored"] == ENTRIES
    second = _fresh_process(cache_dir)
    assert second["cached"]
    assert (second["hits"], second["misses"], second["stored"]) == (ENTRIES, 0, 0)
    assert second["log"] == first["log"] == (12).to_bytes(4, "little").hex()


def test_garbage_entries_are_rebuilt_not_loaded(cache_dir: Path) -> None:
    first = _fresh_process(cache_dir)
    entries = sorted(cache_dir.iterdir())
    assert len(entries) == ENTRIES
    for path in entries:
        path.write_bytes(os.urandom(path.stat().st_size))
    again = _fresh_process(cache_dir)
    assert not again["cached"]
    assert (again["rejected"], again["stored"]) == (ENTRIES, ENTRIES)
    assert again["log"] == first["log"]
    assert _fresh_process(cache_dir)["cached"]


def _dpc(args: list[str], cache_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DPROBES_CACHE_DIR": str(cache_dir)}
    return subprocess.run(
        [sys.executable, "-m", "dprobes.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_no_cache_leaves_the_directory_alone(cache_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "h.rpn"
    source.write_text(_program([HANDLER]))
    done = _dpc(["exec", str(source), "--tier", "jit", "--json", "--no-cache"], cache_dir)
    assert done.returncode == 0, done.stderr
    assert not cache_dir.exists() or not any(cache_dir.iterdir())
    cached = _dpc(["exec", str(source), "--tier", "jit", "--json"], cache_dir)
    assert cached.returncode == 0, cached.stderr
    assert len(list(cache_dir.iterdir())) == ENTRIES
    assert json.loads(cached.stdout) == json.loads(done.stdout)


# --- one body for identical handlers -------------------------------------------------
OFFSETS = """sx h{n}
call f{n}
push 0
push 0
div
exit
f{n}:
log st
ret
h{n}:
push 1
suspend
exit"""
"""A handler showing code offsets: a call frame in a stack trace, an sx handler, and
EX_INVALID_OPCODE's parm2 (labels differ per copy; the bytes do not)."""


def test_identical_handlers_share_a_body_and_show_their_own_offsets() -> None:
    source = _program(["push 0xEE\nexit", OFFSETS.format(n=1), "push 9\nexit", OFFSETS.format(n=3)])
    program = compile_rpn("offsets.rpn", text=source).program
    assert program.handler(1) == program.handler(3)
    assert program.probes[1].code_start != program.probes[3].code_start
    jit = VM(program, tier="jit")
    assert jit.compiled(1).body is jit.compiled(3).body
    assert jit.compiled(1).code_base != jit.compiled(3).code_base
    results = {}
    for probe in (1, 3):
        expected = VM(program).fire(probe, MemoryContext())
        assert expected.exception is not None
        assert expected.ex_log  # the stack trace names call offsets
        assert VM(program, tier="jit").fire(probe, MemoryContext()) == expected
        results[probe] = expected
    assert results[1].exception.parm2 != results[3].exception.parm2
    assert results[1].ex_log != results[3].ex_log


def test_many_identical_handlers_compile_one_body() -> None:
    program = compile_rpn("many.rpn", text=_program(["push r, eax\nlog 1\nexit"] * 50)).program
    vm = VM(program, tier="jit")
    assert len({vm.compiled(probe).code_base for probe in range(50)}) == 50
    assert len({id(vm.compiled(probe).body) for probe in range(50)}) == 1


def test_dpc_run_no_cache_leaves_the_directory_alone(cache_dir: Path, tmp_path: Path) -> None:
    from dprobes.tests import guest_expectations as expect

    loop = expect.BIN / "loop"
    source = tmp_path / "p.rpn"
    source.write_text(f"name = {loop}\nmodtype = user\noffset = add3\npush r, eax\nlog 1\nexit\n")
    command = ["run", "--probes", str(source), "--elf", str(loop), "--tier", "jit"]
    done = _dpc([*command, "--no-cache", "--", str(loop)], cache_dir)
    assert done.returncode == 7, done.stderr
    assert not cache_dir.exists() or not any(cache_dir.iterdir())
    cached = _dpc([*command, "--", str(loop)], cache_dir)
    assert cached.returncode == 7, cached.stderr
    assert any(cache_dir.iterdir())
    assert cached.stderr == done.stderr
