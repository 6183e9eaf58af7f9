"""The probe manager: DProbes' kernel side for user-space and kernel probes.

insert/remove/query/getvars work on program records as 5.0's ioctls did. A user probe is
keyed by (file, file offset): its int3 is written into the page-cache frame of that file
page, so every process running the file sees it at once, and into every private
copy-on-write copy, including copies that are swapped out (found with the two-pass
locator scheme of ``AddressSpace.file_pages``); a readpage hook re-plants it when a
dropped page is read back in. Before that the offset must lie in an executable segment
on an instruction boundary, no other probe may hold the address, and the byte there must
be the probe's ``opcode`` (else MISMATCH; a mismatch in a private copy is skipped
silently, as 5.0 did). A file with probes in it is write-denied.

A kernel probe (``modtype = kernel``) is keyed by its address: ``offset`` from
PAGE_OFFSET (0xC0000000), or the address itself with ``address = absolute``. It is
checked against the kernel image (``runtime.kernel_image``, ``--kernel-image``) in the order of
5.0's ``insert_bp``: inside an exclude region (``runtime.exclude``) it is EXCLUDED with
the region named and not planted; outside the image's text INVALID_OFFSET; then the
instruction boundary, one probe per address and the opcode, as for a user probe. Its
int3 is written into the kernel's frame where the machine maps the kernel text
(``Machine.kernel``); with no guest kernel running the record is ACTIVE but nothing is
written, and a note says so. The rest of the program is inserted either way. Firing lives in
``runtime.trap3``; with a compiling tier (``jit``, ``auto``) and ``native_hooks``, probes
are then served by the native hook of ``runtime.native_probes`` wherever they can be.

Programs for kernel modules (``modtype = kmod``) wait for their module and are planted
by ``runtime.kmod_probes`` when it is placed, before its init runs.

Merge and replace (the program already has a module entry):

* neither: refused, as 5.0 refused a second program for a module (-EEXIST);
* ``replace``: the old program is removed (every byte restored), then the new inserted;
* ``merge``: both programs stay loaded, each with its own code and local variables;
  where the new program probes a location the old one already probes, the new record
  wins and the old one becomes REMOVED ("replaced by merge"). Old records that are
  EXCLUDED, MISMATCH or INVALID_OFFSET keep that status and are not retried.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from dprobes.kernel_layout import KERNEL_BASE, KERNEL_IMAGE
from dprobes.runtime.addrspace import Prot
from dprobes.runtime.codemap import CodeMap
from dprobes.runtime.journal import Emitted, LogJournal, PackedChunk
from dprobes.runtime.kernel_image import KernelImage, KernelImageError
from dprobes.runtime.kmod_probes import KmodProbes
from dprobes.runtime.logtargets import LogRecord
from dprobes.runtime.pagecache import GuestFile
from dprobes.runtime.physmem import PAGE_MASK, PAGE_SHIFT
from dprobes.runtime.records import ProbeRecord, RecordStatus
from dprobes.vm.api import VM, GlobalVariables
from dprobes.vm.interp import CpuState
from dprobes.vm.model import WORD_MASK
from dprobes.vm.program import LogField, ModuleType, ProbeKind, Program

if TYPE_CHECKING:
    from dprobes.runtime.logformat.writer import LogWriter, ProbeTable
    from dprobes.runtime.machine import Machine

INT3 = 0xCC


class InsertError(ValueError):
    """A program that cannot be inserted at all (the message says why)."""


@dataclass
class LoadedProgram:
    """An inserted program: its VM (code, local variables) and its probe records."""

    program: Program
    vm: VM
    records: list[ProbeRecord]
    file: GuestFile | None
    log_fields: LogField

    @property
    def name(self) -> str:
        return self.program.header.name


@dataclass(frozen=True)
class QueryRow:
    """One record as ``--query`` reports it."""

    module: str
    index: int
    location: str
    status: str
    count: int
    hits: int
    opcode: int | None
    actual_opcode: int | None
    notes: tuple[str, ...]


@dataclass
class ProbeManager:
    """Owns the inserted programs of one machine and plants their probes."""

    machine: Machine
    tier: str = "interp"
    native_hooks: bool = True  # with tier jit/auto: serve probes from native hooks
    verify_opcodes: bool = True
    log_fields: LogField | None = None  # --log: overrides every program's `log =`
    globals: GlobalVariables = field(default_factory=GlobalVariables)
    cpu_state: CpuState = field(default_factory=CpuState)
    modules: dict[str, list[LoadedProgram]] = field(default_factory=dict)
    user_probes: dict[tuple[int, int], tuple[LoadedProgram, ProbeRecord]] = field(
        default_factory=dict
    )
    kernel_probes: dict[int, tuple[LoadedProgram, ProbeRecord]] = field(default_factory=dict)
    kernel_path: str | None = None
    """The kernel image kernel probes are checked against when no guest kernel runs (None:
    ``KERNEL_IMAGE``); a running guest kernel's own image always wins."""
    keep_records: bool = True
    """Keep every record in ``emitted``. ``dpc run``, whose ``writer`` writes each record
    as it comes, turns this off so that a long run does not hold them all in memory; the
    records then only reach the writer and ``on_log`` and are counted in ``log_count``."""
    emitted: LogJournal = field(default_factory=LogJournal)
    exits: list[tuple[int, int, str]] = field(default_factory=list)  # (pid, facility, module)
    on_log: list = field(default_factory=list)  # callables(Emitted)
    writer: LogWriter | None = None
    """Writes every record to its log target (``dpc run``); native records in chunks."""

    def __post_init__(self) -> None:
        from dprobes.runtime.trap3 import StepTracker

        self.steps = StepTracker(self)
        self.kmod = KmodProbes(self)
        self.machine.trap_handler = self.steps.handle_trap
        self.machine.cache.on_page_in.append(self._page_in)
        self.machine.on_process_exit.append(self.steps.forget)
        self._maps: dict[int, CodeMap] = {}
        self._count = 0
        self._probe_table: ProbeTable | None = None
        self._kernel: KernelImage | None = None
        self.native = None
        if self.native_hooks and self.tier != "interp":
            from dprobes.runtime.native_probes import NativeProbes

            self.native = self.steps.native = NativeProbes(self)

    # --- insert ----------------------------------------------------------------------

    def insert(
        self,
        program: Program,
        *,
        merge: bool = False,
        replace_old: bool = False,
        groups: set[int] | None = None,
        types: set[int] | None = None,
    ) -> LoadedProgram:
        """Insert ``program``'s probes (those of the selected groups/types)."""
        header = program.header
        kernel = self.kernel_image() if header.modtype is ModuleType.KERNEL else None
        if header.name in self.modules:
            if replace_old:
                self.remove(header.name)
            elif not merge:
                raise InsertError(
                    f"{header.name}: already has a probe program (use merge or replace)"
                )
        if header.modtype is ModuleType.KMOD:
            loaded = self._new_loaded(program, None)
            self.kmod.insert(loaded, self._select(loaded, groups, types))
            self.modules.setdefault(header.name, []).append(loaded)
            return loaded
        if kernel is not None:
            loaded = self._new_loaded(program, None)
            for record in self._select(loaded, groups, types):
                self._insert_kernel(loaded, record, kernel)
            self.modules.setdefault(header.name, []).append(loaded)
            return loaded
        path = Path(header.name)
        if not path.is_file():
            raise InsertError(f"{header.name}: no such executable file")
        file = self.machine.cache.open(path)
        loaded = self._new_loaded(program, file)
        codemap = self._codemap(file)
        for record in self._select(loaded, groups, types):
            self._insert_user(loaded, record, codemap)
        self.modules.setdefault(header.name, []).append(loaded)
        file.write_denied += 1
        return loaded

    def _new_loaded(self, program: Program, file: GuestFile | None) -> LoadedProgram:
        """A program's VM (with ``--log`` applied) and its records, not yet planted."""
        header = program.header
        fields = self.log_fields if self.log_fields is not None else header.log_fields
        runnable = (
            program
            if fields == header.log_fields
            else replace(program, header=replace(header, log_fields=fields))
        )
        vm = VM(runnable, globals=self.globals, cpu=self.cpu_state, tier=self.tier)
        records = [ProbeRecord(index, point) for index, point in enumerate(program.probes)]
        return LoadedProgram(runnable, vm, records, file, fields)

    @staticmethod
    def _select(
        loaded: LoadedProgram, groups: set[int] | None, types: set[int] | None
    ) -> list[ProbeRecord]:
        """The breakpoint records to plant; the others get a note saying why not."""
        selected = []
        for record in loaded.records:
            point = record.point
            if (groups and point.group not in groups) or (types and point.type not in types):
                record.notes.append("not selected by group/type")
            elif point.kind is ProbeKind.WATCHPOINT:
                record.notes.append("watchpoint probes are not supported on this machine yet")
            else:
                selected.append(record)
        return selected

    def kernel_image(self) -> KernelImage:
        """The kernel image kernel probes are checked against (read once)."""
        if self._kernel is None:
            try:
                running = self.machine.guest_kernel
                image = running.image if running is not None else None
                image = image or KernelImage.load(self.kernel_path or KERNEL_IMAGE)
                image.regions  # noqa: B018 (a bad DWARF is found now, not at a probe)
                self._kernel = image
            except KernelImageError as error:
                raise InsertError(f"kernel probes need the kernel image: {error}") from None
        return self._kernel

    def _codemap(self, file: GuestFile) -> CodeMap:
        if file.id not in self._maps:
            self._maps[file.id] = CodeMap.load(file.path)
        return self._maps[file.id]

    def _insert_user(self, loaded: LoadedProgram, record: ProbeRecord, codemap: CodeMap) -> None:
        point, file = record.point, loaded.file
        assert file is not None
        offset = point.offset
        if codemap.segment(offset) is None:
            record.refuse(
                RecordStatus.INVALID_OFFSET, f"offset 0x{offset:x} is not in an executable segment"
            )
            return
        if not codemap.is_boundary(offset):
            record.refuse(
                RecordStatus.INVALID_OFFSET, f"offset 0x{offset:x} is not an instruction boundary"
            )
            return
        key = (file.id, offset)
        planted = self._claim(self.user_probes, key, loaded, record, f"offset 0x{offset:x}")
        if planted is None:
            return
        original = file.read(offset, 16)
        if not self.opcode_ok(record, original[0]):
            return
        record.original, record.address = original, codemap.vaddr(offset)
        record.status |= RecordStatus.ACTIVE
        if not planted:
            self._plant(file, offset, INT3, original[0])
        self.user_probes[key] = (loaded, record)

    def _insert_kernel(
        self, loaded: LoadedProgram, record: ProbeRecord, image: KernelImage
    ) -> None:
        point = record.point
        address = point.offset if point.absolute else (KERNEL_BASE + point.offset) & WORD_MASK
        region = image.excluded(address)
        if region is not None:
            record.refuse(RecordStatus.EXCLUDED, f"{address:#010x} is {region.describe()}")
            return
        if image.file_offset(address) is None:
            record.refuse(
                RecordStatus.INVALID_OFFSET,
                f"{address:#010x} is not in the kernel text of {image.path}",
            )
            return
        if not image.is_boundary(address):
            record.refuse(
                RecordStatus.INVALID_OFFSET, f"{address:#010x} is not an instruction boundary"
            )
            return
        planted = self._claim(self.kernel_probes, address, loaded, record, f"{address:#010x}")
        if planted is None:
            return
        original = image.read(address, 16)
        if not self.opcode_ok(record, original[0]):
            return
        record.original, record.address = original, address
        record.status |= RecordStatus.ACTIVE
        if not planted and not self._plant_kernel(address, INT3, original[0]):
            record.notes.append("no guest kernel runs (dpc run --no-kernel): no int3 written")
        self.kernel_probes[address] = (loaded, record)

    def _claim(
        self,
        probes: dict,
        key: object,
        loaded: LoadedProgram,
        record: ProbeRecord,
        where: str,
    ) -> bool | None:
        """Whether ``record`` may take ``key`` of ``probes`` (one probe per address):
        None if another probe holds it (DUPLICATE: one of this program, or of another
        module's program); True if an earlier program of this module held it (merge:
        that record becomes REMOVED, its int3 stays for the new one); False if free."""
        holder = probes.get(key)
        if holder is None:
            return False
        if holder[0] is loaded or holder[0].name != loaded.name:
            record.status |= RecordStatus.DUPLICATE
            by = f"probe {holder[1].index}" if holder[0] is loaded else holder[0].name
            record.notes.append(f"{where} is already probed by {by}")
            return None
        holder[1].status = (holder[1].status & ~RecordStatus.ACTIVE) | RecordStatus.REMOVED
        holder[1].notes.append("replaced by merge")
        del probes[key]
        if self.native is not None:
            self.native.forget(holder[1])
        return True

    def opcode_ok(self, record: ProbeRecord, actual: int) -> bool:
        """The opcode check: a byte other than the probe's ``opcode`` is MISMATCH."""
        expected = record.point.opcode
        if expected is not None and actual != expected and self.verify_opcodes:
            record.status |= RecordStatus.MISMATCH
            record.actual_opcode = actual
            return False
        return True

    # --- the bytes ---------------------------------------------------------------------

    def _plant(self, file: GuestFile, offset: int, byte: int, expected: int) -> None:
        """Write ``byte`` at ``offset`` of every copy of the file page that holds
        ``expected`` there: the page-cache frame and each private COW copy."""
        machine, index = self.machine, offset >> PAGE_SHIFT
        frames = set()
        cached = machine.cache.lookup(file, index)
        if cached is not None:
            frames.add(cached)
        for mapping in machine.file_pages(file, index):
            if mapping.frame is not None:
                frames.add(mapping.frame)
        for frame in frames:
            paddr = frame << PAGE_SHIFT | (offset & PAGE_MASK)
            if machine.memory.bytes[paddr] == expected:  # a COW copy may hold anything
                machine.memory.bytes[paddr] = byte
                machine.invalidate_code(paddr, 1)

    def _plant_kernel(self, address: int, byte: int, expected: int) -> bool:
        """Write ``byte`` at kernel ``address`` if it holds ``expected``; False if the
        machine does not map the kernel text there."""
        found = self.machine.kernel.translate(address, Prot.READ, user=False)
        if found is None:
            return False
        paddr = found[0] << PAGE_SHIFT | (address & PAGE_MASK)
        if self.machine.memory.bytes[paddr] == expected:
            self.machine.memory.bytes[paddr] = byte
            self.machine.invalidate_code(paddr, 1)
        return True

    def _page_in(self, file: GuestFile, index: int, frame: int) -> None:
        """The readpage hook: a page read back in from the file gets its probes again."""
        for (file_id, offset), (_, record) in self.user_probes.items():
            if file_id == file.id and offset >> PAGE_SHIFT == index and record.armed:
                paddr = frame << PAGE_SHIFT | (offset & PAGE_MASK)
                self.machine.memory.bytes[paddr] = INT3
                self.machine.invalidate_code(paddr, 1)

    def disarm(self, loaded: LoadedProgram, record: ProbeRecord, status: RecordStatus) -> None:
        """Take one probe out of the code (after rem, max_hits, or removal)."""
        if loaded.program.header.modtype is ModuleType.KMOD:
            self.kmod.disarm(loaded, record, status)
            return
        if loaded.file is None:
            address = record.address
            if address is not None and self.kernel_probes.get(address, (None, None))[1] is record:
                del self.kernel_probes[address]
                self._plant_kernel(address, record.original[0], INT3)
        else:
            key = (loaded.file.id, record.point.offset)
            if self.user_probes.get(key, (None, None))[1] is record:
                del self.user_probes[key]
                self._plant(loaded.file, record.point.offset, record.original[0], INT3)
        record.status = (record.status & ~RecordStatus.ACTIVE) | status
        if self.native is not None:
            self.native.forget(record)

    # --- remove, query, getvars --------------------------------------------------------

    def remove(self, name: str | None = None) -> int:
        """Remove one module's programs (or all); every original byte is restored."""
        names = list(self.modules) if name is None else [name]
        removed = 0
        for module in names:
            for loaded in self.modules.pop(module, []):
                for record in loaded.records:
                    if record.armed:
                        self.disarm(loaded, record, RecordStatus.REMOVED)
                if loaded.file is not None:
                    loaded.file.write_denied -= 1
                elif loaded.program.header.modtype is ModuleType.KMOD:
                    self.kmod.forget(loaded)
                removed += 1
        return removed

    def query(self, name: str | None = None) -> list[QueryRow]:
        rows = []
        for module, programs in self.modules.items():
            if name is not None and module != name:
                continue
            for loaded in programs:
                for record in loaded.records:
                    point = record.point
                    where = point.location or f"0x{point.offset:x}"
                    rows.append(
                        QueryRow(
                            module,
                            record.index,
                            where,
                            record.status.describe(),
                            record.count,
                            record.hits,
                            point.opcode,
                            record.actual_opcode,
                            tuple(record.notes),
                        )
                    )
        return rows

    def getvars(
        self, name: str | None = None, first: int = 0, last: int | None = None, reset: bool = False
    ) -> dict[str, list[int]]:
        """Local variables per module (all of a merged module's programs, in order) and
        the global variables as ``"<global>"``; ``reset`` zeroes what it returns."""
        self.vm_state_to_python()
        out: dict[str, list[int]] = {}
        for module, programs in self.modules.items():
            if name is None or module == name:
                values = [v for loaded in programs for v in loaded.vm.locals]
                out[module] = values[first:last]
                if reset:
                    for loaded in programs:
                        loaded.vm.locals[:] = [0] * len(loaded.vm.locals)
        out["<global>"] = self.globals.values[first:last]
        if reset:
            self.globals.values[:] = [0] * len(self.globals.values)
        return out

    def lookup(self, file: GuestFile, offset: int) -> tuple[LoadedProgram, ProbeRecord] | None:
        return self.user_probes.get((file.id, offset))

    def lookup_kernel(self, address: int) -> tuple[LoadedProgram, ProbeRecord] | None:
        """The kernel or kmod probe planted at ``address``, if any."""
        return self.kernel_probes.get(address) or self.kmod.lookup(address)

    def vm_state_to_python(self) -> None:
        """Make the VMs' Python lists current (native hits may have moved on)."""
        if self.native is not None:
            self.native.to_python()

    def emit(self, loaded: LoadedProgram, record: LogRecord, exception_log: bytes) -> None:
        """A record of the Python path (native records that came first go first)."""
        if self.native is not None:
            self.native.drain()
        self._deliver(Emitted(loaded.name, record, exception_log))

    def emit_packed(self, chunk: PackedChunk) -> None:
        """Records of native hits, packed: the writer formats them natively, the journal
        keeps the chunk as it is, and they are decoded only for ``on_log`` hooks."""
        assert self.native is not None
        if self.writer is not None:
            self._count += self.writer.write_packed(chunk, self.native)
        else:
            if self._probe_table is None:
                from dprobes.runtime.logformat.writer import ProbeTable

                self._probe_table = ProbeTable(lambda name: ())  # counts only
            self._count += self._probe_table.count(chunk, self.native)
        if self.keep_records:
            self.emitted.append_packed(chunk)
        if self.on_log:
            for entry in chunk.decode(chunk.view):
                for hook in self.on_log:
                    hook(entry)

    def _deliver(self, entry: Emitted) -> None:
        self._count += 1
        if self.writer is not None:
            self.writer.write(entry)
        if self.keep_records:
            self.emitted.append(entry)
        for hook in self.on_log:
            hook(entry)

    @property
    def log_count(self) -> int:
        """Records emitted so far, kept or not (a counter: nothing is decoded)."""
        return self._count
