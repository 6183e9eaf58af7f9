"""Kernel modules on the running guest kernel: init and cleanup in ring 0, kmod probes
firing during init, ``dpc run --insmod``.

The module's printk output is compared with what its C source prints (guest/modules), the
probe's hits with what the probe manager logged; nothing here is measured.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from dprobes.cli import main as cli
from dprobes.compiler.pipeline import BuildOptions, compile_rpn
from dprobes.runtime.kmodule import ModuleError, ModuleInitError
from dprobes.runtime.machine import Machine
from dprobes.runtime.probes import ProbeManager
from dprobes.runtime.records import RecordStatus

BIN = Path(__file__).resolve().parent.parent / "guest" / "bin"
HELLO, CHAINED, LOOP = BIN / "hello.o", BIN / "chained.o", BIN / "loop"
HELLO_INIT_LOG = "hello: kernel, you are cheerful (weight 17)\nhello: loaded at jiffies 0\n"


def kmod_program(obj: Path, location: str, value: int):
    source = (
        f"name = {obj}\nmodtype = kmod\nlog = pid,procname\noffset = {location}\n"
        f"    push {value}\n    log 1\n    exit\n"
    )
    return compile_rpn("k.rpn", BuildOptions(), text=source).program


def setup() -> tuple[Machine, ProbeManager]:
    machine = Machine(kernel=True)
    machine.spawn(str(LOOP))
    return machine, ProbeManager(machine)


def logged(manager: ProbeManager) -> list[tuple[int, int, str]]:
    return [
        (
            struct.unpack("<i", e.record.data)[0],
            e.record.hit.pid,
            e.record.hit.procname,
        )
        for e in manager.emitted
    ]


def test_init_and_cleanup_run_in_the_guest_with_kernel_symbols() -> None:
    machine, _ = setup()
    kernel, process = machine.guest_kernel, machine.processes[1]
    module = kernel.insmod(process, HELLO)
    assert module.live and module.image.imports["printk"] == kernel.image.symbol("printk")
    assert kernel.log.decode() == HELLO_INIT_LOG
    kernel.insmod(process, CHAINED)
    greeting = "hello: chained, you are busy (weight 5)\n"
    assert kernel.log.decode().endswith(
        greeting + "chained: loaded at jiffies 0, hello has 2 greetings\n"
    )
    with pytest.raises(ModuleError, match="in use by chained"):
        kernel.rmmod(process, "hello")
    kernel.rmmod(process, "chained")
    kernel.rmmod(process, "hello")
    assert kernel.log.decode().endswith(
        f"chained: unloaded ({len(greeting)} bytes greeted)\n"  # printk's count
        "hello: unloaded after 0 jiffies, 2 greetings\n"
    )
    assert not machine.modules.loaded
    assert machine.run() > 0 and process.returncode == 7  # the program runs as before


def test_a_probe_in_init_fires_during_the_load_and_again_only_while_inserted() -> None:
    machine, manager = setup()
    kernel, process = machine.guest_kernel, machine.processes[1]
    loaded = manager.insert(kmod_program(HELLO, "hello_init", 5))
    record = loaded.records[0]
    assert record.status == RecordStatus.COMPILED  # pending
    kernel.insmod(process, HELLO)
    assert logged(manager) == [(5, process.pid, "loop")]  # pid/procname: current's
    assert record.counters.hits == 1 and record.armed
    assert kernel.log.decode() == HELLO_INIT_LOG  # the stepped push %ebp did its work

    kernel.rmmod(process, "hello")
    kernel.insmod(process, HELLO)  # still inserted: planted again, fires again
    assert len(logged(manager)) == 2

    kernel.rmmod(process, "hello")
    manager.remove(loaded.name)
    kernel.insmod(process, HELLO)  # removed: the reload does not fire it
    assert len(logged(manager)) == 2
    kernel.rmmod(process, "hello")
    manager.insert(kmod_program(HELLO, "hello_init", 6))
    kernel.insmod(process, HELLO)  # inserted again: fires on this load
    assert logged(manager)[2:] == [(6, process.pid, "loop")]


def test_a_probe_in_a_helper_called_many_times_fires_each_time() -> None:
    machine, manager = setup()
    kernel, process = machine.guest_kernel, machine.processes[1]
    manager.insert(kmod_program(HELLO, "hello_greet", 1))
    kernel.insmod(process, HELLO)
    kernel.insmod(process, CHAINED)  # calls hello_greet once more
    assert [value for value, _, _ in logged(manager)] == [1, 1]


def test_a_probe_in_a_failing_init_fires_then_is_removed() -> None:
    machine, manager = setup()
    kernel, process = machine.guest_kernel, machine.processes[1]
    kernel.insmod(process, HELLO)
    loaded = manager.insert(kmod_program(CHAINED, "chained_check", 3))
    record = loaded.records[0]
    with pytest.raises(ModuleInitError, match="init_module returned -19"):
        kernel.insmod(process, CHAINED, {"fail": "1"})
    assert logged(manager) == [(3, process.pid, "loop")]
    assert not record.armed and record.address is None and not manager.kmod.by_address
    assert "chained" not in machine.modules.loaded
    assert kernel.log.decode().endswith("chained: asked to fail, init returns -19\n")
    kernel.insmod(process, CHAINED)
    assert len(logged(manager)) == 2 and record.armed


def run(capfd: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = cli.main(["run", *argv])
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    return status, out, err


def test_dpc_run_insmod_end_to_end(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    plain_status, plain_out, _ = run(capfd, "--", str(LOOP))
    probes = tmp_path / "p.rpn"
    probes.write_text(
        f"name = {HELLO}\nmodtype = kmod\nlog = pid,procname\noffset = hello_init\n"
        "opcode = 0x55\n    push 7\n    log 1\n    exit\n"
    )
    log = tmp_path / "log"
    status, out, err = run(
        capfd,
        "--insmod",
        str(HELLO),
        "--probes",
        str(probes),
        "--log-file",
        str(log),
        "--query",
        "--dmesg",
        "--",
        str(LOOP),
    )
    assert (status, out) == (plain_status, plain_out)
    assert HELLO_INIT_LOG in err
    assert "hello_init: compiled|active count=1 hits=1" in err
    assert "pid=1 name=loop" in log.read_text()


def test_dpc_run_insmod_failures(capfd: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(
        capfd, "--insmod", str(HELLO), "--insmod", f"{CHAINED}:fail=1", "--", str(LOOP)
    )
    assert status == 1 and out == ""  # the program did not run
    assert f"dpc run: --insmod {CHAINED}: init_module returned -19" in err
    status, _, err = run(capfd, "--insmod", str(CHAINED), "--", str(LOOP))
    assert status == 1 and "unknown symbol hello_greet" in err
    status, _, err = run(capfd, "--insmod", f"{HELLO}:nothere=1", "--", str(LOOP))
    assert status == 1 and "no parameter nothere" in err


def test_init_module_and_delete_module_from_a_user_program() -> None:
    machine = Machine(kernel=True)
    manager = ProbeManager(machine)
    manager.insert(kmod_program(HELLO, "hello_init", 9))
    argv = ["modctl", "load", str(HELLO), "load", str(CHAINED), "fail=1", "unload", "hello"]
    argv += ["unload", "hello", "load", str(HELLO)]
    process = machine.spawn(str(BIN / "modctl"), argv)
    machine.run()
    assert process.output()[0].splitlines() == [
        f"init_module({HELLO}) = 0",
        f"init_module({CHAINED}) = -19",  # -ENODEV from chained's init
        "delete_module(hello) = 0",
        "delete_module(hello) = -2",  # -ENOENT: no longer loaded
        f"init_module({HELLO}) = 0",
    ]
    assert process.returncode == 2
    assert logged(manager) == [(9, process.pid, "modctl")] * 2
    assert list(machine.modules.loaded) == ["hello"]
    bad = machine.spawn(str(BIN / "modctl"), ["modctl", "load", str(CHAINED)])  # hello_greet
    machine.run()  # resolves against the loaded hello now: chained loads
    assert bad.output()[0] == f"init_module({CHAINED}) = 0\n"
    junk = machine.spawn(str(BIN / "modctl"), ["modctl", "load", str(LOOP)])
    machine.run()
    assert junk.output()[0] == f"init_module({LOOP}) = -8\n"  # -ENOEXEC
    assert "is not a relocatable object" in machine.guest_kernel.log.decode()


def loop_with_timed_hello(at: int) -> tuple[Machine, ProbeManager, int]:
    """guest/bin/loop with hello.o due at instruction ``at`` and a probe in its init;
    returns the counter value at which it loaded."""
    machine, manager = setup()
    manager.insert(kmod_program(HELLO, "hello_init", 4))
    timed = machine.guest_kernel.schedule_insmod(at, HELLO)
    machine.run()
    assert timed.error is None and timed.loaded_at is not None
    return machine, manager, timed.loaded_at


def test_a_timed_insmod_loads_in_user_mode_at_the_same_count_in_every_run() -> None:
    machine, manager, loaded_at = loop_with_timed_hello(250_000)
    process = machine.processes[1]
    assert 250_000 <= loaded_at < 250_000 + 100  # the first block boundary from there
    assert logged(manager) == [(4, process.pid, "loop")]  # init's probe: once, as loop
    assert machine.guest_kernel.log.decode() == HELLO_INIT_LOG
    assert process.returncode == 7 and not machine.guest_kernel.timed
    assert loop_with_timed_hello(250_000)[2] == loaded_at
    assert loop_with_timed_hello(250_001)[2] >= 250_001


def test_a_timed_insmod_due_inside_the_kernel_waits_for_user_mode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    machine, _ = setup()
    kernel, cpu = machine.guest_kernel, machine.cpu
    timed: list = []
    rings_when_due: list[int] = []
    enter, run_due, insmod = kernel.interrupt, kernel.run_due_insmods, kernel.insmod

    def interrupt(vector: int) -> bool:  # the first system call schedules hello, due now
        if vector == 0x80 and not timed:
            timed.append(kernel.schedule_insmod(cpu.counter.executed, HELLO))
        return enter(vector)

    def run_due_insmods() -> None:
        if kernel.timed:
            rings_when_due.append(cpu.reg("cs") & 3)
        run_due()

    def ring_checked_insmod(*args):
        assert cpu.reg("cs") & 3 == 3
        return insmod(*args)

    monkeypatch.setattr(kernel, "interrupt", interrupt)
    monkeypatch.setattr(kernel, "run_due_insmods", run_due_insmods)
    monkeypatch.setattr(kernel, "insmod", ring_checked_insmod)
    machine.run()
    (load,) = timed
    assert rings_when_due[0] == 0 and rings_when_due[-1] == 3  # waited in the kernel
    assert load.error is None and load.loaded_at > load.at
    assert kernel.log.decode().startswith(HELLO_INIT_LOG.splitlines()[0])  # jiffies: later
    assert machine.processes[1].returncode == 7


def test_dpc_run_insmod_at_an_instruction_count(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    plain_status, plain_out, _ = run(capfd, "--", str(LOOP))
    probes = tmp_path / "p.rpn"
    probes.write_text(
        f"name = {HELLO}\nmodtype = kmod\nlog = pid,procname\noffset = hello_init\n"
        "opcode = 0x55\n    push 7\n    log 1\n    exit\n"
    )
    argv = ["--insmod", f"{HELLO}@300000", "--probes", str(probes), "--query", "--dmesg"]
    status, out, err = run(capfd, *argv, "--", str(LOOP))
    assert (status, out) == (plain_status, plain_out)
    assert HELLO_INIT_LOG in err
    assert "hello_init: compiled|active count=1 hits=1" in err
    assert run(capfd, *argv, "--", str(LOOP)) == (status, out, err)  # deterministic

    status, out, err = run(capfd, "--insmod", f"{HELLO}@10000000000", "--", str(LOOP))
    assert (status, out) == (plain_status, plain_out)
    assert f"--insmod {HELLO}@10000000000: not loaded: the run ended at instruction" in err
    status, out, err = run(capfd, "--insmod", f"{CHAINED}@1000", "--", str(LOOP))
    assert (status, out) == (1, plain_out)  # the program ran; the load failed
    assert "unknown symbol hello_greet" in err and "(at instruction 10" in err


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (f"{HELLO}@", "the instruction count after '@': '' is not a number"),
        (f"{HELLO}@ten", "the instruction count after '@': 'ten' is not a number"),
        (f"{HELLO}@-1:x=1", "the instruction count after '@': must be 0 or more, got '-1'"),
        ("@5", "--insmod: no module object before '@' in '@5'"),
    ],
)
def test_dpc_run_insmod_count_usage_errors(
    capfd: pytest.CaptureFixture[str], spec: str, message: str
) -> None:
    status, out, err = run(capfd, "--insmod", spec, "--", str(LOOP))
    assert status == 2 and out == "" and message in err
