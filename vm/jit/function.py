"""One probe handler as one native function: blocks, continuations and status handling.

``HandlerLowering`` decodes the handler, creates a block for every instruction first
(the targets of jumps, calls, ``sx`` and the return points all exist before any code is
emitted), then asks ``vm.jit.lower`` for each instruction's code. The function is
``void handler(State *state, i32 code_base)``, built from the handler's bytes alone: the
instructions are decoded at offsets relative to the handler's start, and a code offset
the handler shows (a call frame's words, EX_INVALID_OPCODE's parm2) is ``code_offset``,
``code_base`` plus the relative offset, so one function serves the handler wherever it
lies in a program:

* ``entry`` calls ``rt_begin`` (the per-hit reset) and falls into the first instruction;
* ``resume`` continues at the code offset in ``state.resume`` (set by ``ret`` and by
  exception dispatch): a switch over the handler's return points and ``sx`` targets,
  relative to ``code_base``;
* ``exit`` returns; how the handler ended is in the state.

Operations that may raise call the runtime library, which returns a status: continue
with the next instruction, resume, or stop (``status_branch``).

Stack slots live in local variables where the stack depth is known statically
(``irgen.Region``), otherwise in the stack array ("memory mode", no region). Instructions
are lowered in code order; each joins the region (or memory mode) and depth of the first
edge already seen into it; without one, a return point or handler (whose depth the
callee or the raise decides at run time) runs in memory mode and any other instruction
starts a region. An edge that agrees with its target's place is a plain branch; any
other edge writes its region to the state and enters the target through the target's
re-entry block, which rebases the target's region on the state's TOS and loads its
slots. Edges taken after a sync point (a runtime call: the stack may have changed)
always re-enter.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

from llvmlite import ir

from dprobes.vm.bytecode import Instruction, decode_range
from dprobes.vm.exceptions import NON_MASKABLE
from dprobes.vm.isa import OpFlag
from dprobes.vm.jit import state as S
from dprobes.vm.jit.irgen import I32, PTR, REGION_DRIFT, VOID, Emitter, Region, Virtual, c32
from dprobes.vm.jit.rtlib import set_ending


@dataclass(frozen=True)
class _Edge:
    """A branch from ``region`` at TOS offset ``depth`` to the instruction at ``target``,
    through ``block`` (filled once the target's place is known)."""

    block: ir.Block
    region: Region | None  # None: memory mode
    depth: int | None
    target: int


def _resume_targets(instructions: list[Instruction]) -> set[int]:
    """Where ``state.resume`` can point: return points and ``sx`` handlers."""
    targets: set[int] = set()
    for insn in instructions:
        if OpFlag.HANDLER in insn.op.flags:
            assert insn.target is not None
            targets.add(insn.target)
        if OpFlag.CALL in insn.op.flags:
            targets.add(insn.end)
    return targets


class HandlerLowering:
    """Builds the native function of one probe handler in ``module``."""

    def __init__(
        self,
        module: ir.Module,
        runtime: dict[str, ir.Function],
        intrinsic: dict[str, ir.Function],
        code: bytes,
        name: str,
    ) -> None:
        self.instructions: list[Instruction] = decode_range(code, 0, len(code))
        self.runtime = runtime
        self.function = ir.Function(module, ir.FunctionType(VOID, [PTR, I32]), name)
        self.function.args[0].name = "state"
        self.code_base = self.function.args[1]
        self.code_base.name = "code_base"
        entry = self.function.append_basic_block("entry")
        self.e = Emitter(self.function, ir.IRBuilder(entry), intrinsic)
        self.blocks: dict[int, ir.Block] = {
            insn.offset: self.function.append_basic_block(f"pc{insn.offset}_{insn.op.mnemonic}")
            for insn in self.instructions
        }
        self.resume_block = self.function.append_basic_block("resume")
        self.exit_block = self.function.append_basic_block("exit")
        self.bad_block = self.function.append_basic_block("bad_continuation")
        self._raise: tuple[ir.Block, tuple] | None = None
        self.places: dict[int, tuple[Region | None, int | None]] = {}  # offset -> place
        self.resume_targets = _resume_targets(self.instructions)
        self._pending: dict[int, list[_Edge]] = {}  # edges to instructions not lowered yet
        self._crossing: list[_Edge] = []  # edges that write their region and re-enter
        self._reentries: dict[int, ir.Block] = {}
        self._words: ir.Value | None = None
        self._fault: ir.Value | None = None

    # --- structure ------------------------------------------------------------------
    def build(self) -> ir.Function:
        from dprobes.vm.jit.lower import LOWERINGS

        e = self.e
        e.cache_fields()
        self.rt("begin")
        e.b.branch(self.reentry(self.instructions[0].offset))
        for insn in self.instructions:
            e.at(self.blocks[insn.offset])
            e.enter(*self._place(insn.offset))
            LOWERINGS[insn.op.name](self, insn)
            assert e.b.block.is_terminated, f"{insn.op.name} left its block open"
        e.enter(None)
        self._build_resume()
        e.at(self.exit_block)
        e.spill()
        e.b.ret_void()
        e.at(self.bad_block)  # a continuation the verifier rules out; never reached
        self.rt("finish", S.EXIT_INTERNAL, 0, 0, 0, 0)
        e.b.ret_void()
        self._fill_region_code()
        return self.function

    # --- regions and edges --------------------------------------------------------------
    def _place(self, offset: int) -> tuple[Region | None, int | None]:
        """The region and TOS offset of the instruction at ``offset`` (see the module)."""
        edges = self._pending.pop(offset, [])
        first = edges[0] if edges else None
        if first is not None and (
            first.region is None or (first.depth is not None and abs(first.depth) <= REGION_DRIFT)
        ):
            place = first.region, first.depth
        elif offset in self.resume_targets:
            place = None, None
        else:
            place = self.e.new_region(), 0
        self.places[offset] = place
        for edge in edges:
            self._connect(edge)
        return place

    def _connect(self, edge: _Edge) -> None:
        """Branch straight to the target if it agrees, else write the region and re-enter."""
        with self.e.b.goto_block(edge.block):
            if self.places[edge.target] == (edge.region, edge.depth):
                self.e.b.branch(self.blocks[edge.target])
            else:
                self._crossing.append(edge)

    def reentry(self, offset: int) -> ir.Block:
        """The block entering the instruction at ``offset`` from the state (filled last)."""
        block = self._reentries.get(offset)
        if block is None:
            block = self._reentries[offset] = self.function.append_basic_block(
                f"pc{offset}_reentry"
            )
        return block

    def _fill_region_code(self) -> None:
        e = self.e
        for edge in self._crossing:
            e.at(edge.block)
            e.enter(edge.region, edge.depth)
            if edge.region is not None:
                e.sync_stack()
            e.b.branch(self.reentry(edge.target))
        for offset, block in self._reentries.items():
            e.at(block)
            region, depth = self.places[offset]
            if region is not None:
                e.region_entry(region, depth)
            e.b.branch(self.blocks[offset])
        e.enter(None)
        e.emit_deferred()

    @contextmanager
    def _outside_regions(self):
        """Emit shared code (reached from several regions, after they synced)."""
        e = self.e
        saved = e.region, e.depth, e.synced, e.b.block
        e.enter(None)
        try:
            yield
        finally:
            e.at(saved[3])
            e.region, e.depth, e.synced = saved[:3]

    def leave_region(self) -> None:
        """Hand the region's slots over to the state before a branch to shared code."""
        if self.e.region is not None:
            self.e.sync_stack()

    def _build_resume(self) -> None:
        e = self.e
        e.at(self.resume_block)
        switch = e.b.switch(e.b.sub(e.load("resume"), self.code_base), self.bad_block)
        for offset in sorted(self.resume_targets):
            switch.add_case(c32(offset), self.block_at(offset))

    def code_offset(self, offset: int) -> ir.Value:
        """The program's code offset of the handler's relative ``offset``."""
        return self.e.b.add(self.code_base, c32(offset))

    def block_at(self, offset: int, synced: bool = False) -> ir.Block:
        """Where a branch from here to the instruction at ``offset`` goes (the end of the
        code: never reached). ``synced``: the state holds the stack (a sync point was
        passed on the way here, as in the block of a runtime call)."""
        if offset not in self.blocks:
            return self.bad_block
        e = self.e
        if synced or (e.region is not None and e.b.block is e.synced):
            return self.reentry(offset)
        edge = _Edge(
            self.function.append_basic_block(f"pc{offset}_edge"),
            e.region,
            None if e.region is None else e.depth,
            offset,
        )
        if offset in self.places:
            self._connect(edge)
        else:
            self._pending.setdefault(offset, []).append(edge)
        return edge.block

    def next_block(self, insn: Instruction) -> ir.Block:
        return self.block_at(insn.end)

    def target_block(self, insn: Instruction) -> ir.Block:
        assert insn.target is not None
        return self.block_at(insn.target)

    def new_block(self, insn: Instruction, what: str) -> ir.Block:
        return self.e.block(f"pc{insn.offset}_{what}")

    # --- runtime calls and continuations -----------------------------------------------
    def rt(self, name: str, *args: ir.Value | int) -> ir.Value:
        """Call the runtime library: cached fields go to the state and come back after."""
        values = [self.e.state, *(c32(a) if isinstance(a, int) else a for a in args)]
        self.e.spill()
        result = self.e.b.call(self.runtime[name], values)
        self.e.reload()
        return result

    def status_branch(self, status: ir.Value, following: ir.Block) -> None:
        """Continue (0) at ``following``, resume (1) at state.resume, otherwise stop."""
        switch = self.e.b.switch(status, self.exit_block)
        switch.add_case(c32(S.ST_CONTINUE), following)
        switch.add_case(c32(S.ST_RESUME), self.resume_block)

    def raise_exception(
        self, code: int, parm1: ir.Value | int, parm2: ir.Value | int, insn: Instruction
    ) -> None:
        """``Machine.raise_exception``; an ignored code continues after ``insn``.

        A code in NON_MASKABLE is never ignored (it dispatches or ends the handler), so
        every such site shares one block that calls ``rt_raise``.
        """
        if not code & NON_MASKABLE:
            self.status_branch(self.rt("raise", int(code), parm1, parm2), self.next_block(insn))
            return
        if self._raise is None:
            self._build_shared_raise()
        block, phis = self._raise
        self.leave_region()
        for phi, value in zip(phis, (code, parm1, parm2), strict=True):
            phi.add_incoming(c32(value) if isinstance(value, int) else value, self.e.b.block)
        self.e.b.branch(block)

    def _build_shared_raise(self) -> None:
        block = self.function.append_basic_block("raise")
        with self._outside_regions():
            self.e.at(block)
            phis = tuple(self.e.b.phi(I32, name) for name in ("code", "parm1", "parm2"))
            self.status_branch(self.rt("raise", *phis), self.bad_block)
        self._raise = (block, phis)

    def finish(self, kind: int) -> None:
        """End the handler: ``rt_finish`` inline, once the stack is written back."""
        self.e.spill()
        zero = c32(0)
        set_ending(self.e, c32(kind), zero, zero, zero, zero)
        self.e.b.branch(self.exit_block)

    def host_checked(self, status: ir.Value, insn: Instruction, what: str) -> None:
        """Stop with EXIT_HOST_ERROR if a host callback failed; else go on in a new block."""
        ok = self.new_block(insn, what)
        self.e.b.cbranch(self.e.b.icmp_signed("<", status, c32(0)), self.host_error(), ok)
        self.e.at(ok)

    def host_error(self) -> ir.Block:
        """Where a failed host callback goes: ``rt_host_error``, then the end. A region
        shares one such block; each site only sets the state's TOS before it."""
        e = self.e
        region = e.region
        if region is None:
            return self._host_error_block(None)
        if region.host_error is None:
            region.host_error = self._host_error_block(region)
        if e.depth is None:  # the state's TOS is already set
            return region.host_error
        block = e.block("host_failed")
        with e.b.goto_block(block):
            e.store("tos", e.index_value(Virtual(e.depth)))
            e.b.branch(region.host_error)
        return block

    def _host_error_block(self, region: Region | None) -> ir.Block:
        block = self.function.append_basic_block("host_error")
        with self._outside_regions():
            self.e.at(block)
            if region is not None:
                self.e.enter(region, None)
                self.e.sync_stack()
                self.e.enter(None)
            self.rt("host_error")
            self.e.b.branch(self.exit_block)
        return block

    # --- per-function scratch space -------------------------------------------------
    @property
    def words(self) -> ir.Value:
        """Four words of stack memory for register, memory and system-value callbacks."""
        if self._words is None:
            self._words = self.e.alloca_entry(I32, "words", 4)
        return self._words

    @property
    def fault(self) -> ir.Value:
        if self._fault is None:
            self._fault = self.e.alloca_entry(I32, "fault")
        return self._fault
