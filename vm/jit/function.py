"""One probe handler as one native function: blocks, continuations and status handling.

``HandlerLowering`` decodes the handler, creates a block for every instruction first
(the targets of jumps, calls, ``sx`` and the return points all exist before any code is
emitted), then asks ``vm.jit.lower`` for each instruction's code. The function is
``void handler(State *state)``:

* ``entry`` calls ``rt_begin`` (the per-hit reset) and falls into the first instruction;
* ``resume`` continues at the code offset in ``state.resume`` (set by ``ret`` and by
  exception dispatch): a switch over the handler's return points and ``sx`` targets;
* ``exit`` returns; how the handler ended is in the state.

Operations that may raise call the runtime library, which returns a status: continue
with the next instruction, resume, or stop (``status_branch``).
"""

from __future__ import annotations

from llvmlite import ir

from dprobes.vm.bytecode import Instruction, decode_range
from dprobes.vm.exceptions import NON_MASKABLE
from dprobes.vm.isa import OpFlag
from dprobes.vm.jit import state as S
from dprobes.vm.jit.irgen import I32, PTR, VOID, Emitter, c32
from dprobes.vm.program import Program


class HandlerLowering:
    """Builds the native function of one probe handler in ``module``."""

    def __init__(self, module: ir.Module, runtime: dict[str, ir.Function],
                 intrinsic: dict[str, ir.Function], program: Program, probe: int,
                 name: str) -> None:
        record = program.probes[probe]
        self.program = program
        self.probe = probe
        self.instructions: list[Instruction] = decode_range(program.code, record.code_start,
                                                            record.code_end)
        self.code_end = record.code_end
        self.runtime = runtime
        self.function = ir.Function(module, ir.FunctionType(VOID, [PTR]), name)
        self.function.args[0].name = "state"
        entry = self.function.append_basic_block("entry")
        self.e = Emitter(self.function, ir.IRBuilder(entry), intrinsic)
        self.blocks: dict[int, ir.Block] = {
            insn.offset: self.function.append_basic_block(
                f"pc{insn.offset}_{insn.op.mnemonic}") for insn in self.instructions}
        self.resume_block = self.function.append_basic_block("resume")
        self.exit_block = self.function.append_basic_block("exit")
        self.bad_block = self.function.append_basic_block("bad_continuation")
        self._raise: tuple[ir.Block, tuple] | None = None
        self._words: ir.Value | None = None
        self._fault: ir.Value | None = None

    # --- structure ------------------------------------------------------------------
    def build(self) -> ir.Function:
        from dprobes.vm.jit.lower import LOWERINGS

        e = self.e
        e.cache_fields()
        self.rt("begin")
        e.b.branch(self.blocks[self.instructions[0].offset])
        for insn in self.instructions:
            e.at(self.blocks[insn.offset])
            LOWERINGS[insn.op.name](self, insn)
            assert e.b.block.is_terminated, f"{insn.op.name} left its block open"
        self._build_resume()
        e.at(self.exit_block)
        e.spill()
        e.b.ret_void()
        e.at(self.bad_block)  # a continuation the verifier rules out; never reached
        self.rt("finish", S.EXIT_INTERNAL, 0, 0, 0, 0)
        e.b.ret_void()
        return self.function

    def _build_resume(self) -> None:
        targets: set[int] = set()
        for insn in self.instructions:
            if OpFlag.HANDLER in insn.op.flags:
                assert insn.target is not None
                targets.add(insn.target)
            if OpFlag.CALL in insn.op.flags:
                targets.add(insn.end)
        e = self.e
        e.at(self.resume_block)
        switch = e.b.switch(e.load("resume"), self.bad_block)
        for offset in sorted(targets):
            switch.add_case(c32(offset), self.block_at(offset))

    def block_at(self, offset: int) -> ir.Block:
        """The block of the instruction at ``offset`` (the end of the code: never reached)."""
        return self.blocks.get(offset, self.bad_block)

    def next_block(self, insn: Instruction) -> ir.Block:
        return self.block_at(insn.end)

    def target_block(self, insn: Instruction) -> ir.Block:
        assert insn.target is not None
        return self.block_at(insn.target)

    def new_block(self, insn: Instruction, what: str) -> ir.Block:
        return self.function.append_basic_block(f"pc{insn.offset}_{what}")

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

    def raise_exception(self, code: int, parm1: ir.Value | int, parm2: ir.Value | int,
                        following: ir.Block) -> None:
        """``Machine.raise_exception``; ``following`` is where an ignored code continues.

        A code in NON_MASKABLE is never ignored (it dispatches or ends the handler), so
        every such site shares one block that calls ``rt_raise``.
        """
        if not code & NON_MASKABLE:
            self.status_branch(self.rt("raise", int(code), parm1, parm2), following)
            return
        if self._raise is None:
            self._build_shared_raise()
        block, phis = self._raise
        for phi, value in zip(phis, (code, parm1, parm2), strict=True):
            phi.add_incoming(c32(value) if isinstance(value, int) else value, self.e.b.block)
        self.e.b.branch(block)

    def _build_shared_raise(self) -> None:
        e = self.e
        saved = e.b.block
        block = self.function.append_basic_block("raise")
        e.at(block)
        phis = tuple(e.b.phi(I32, name) for name in ("code", "parm1", "parm2"))
        self.status_branch(self.rt("raise", *phis), self.bad_block)
        self._raise = (block, phis)
        e.at(saved)

    def finish(self, kind: int) -> None:
        self.rt("finish", kind, 0, 0, 0, 0)
        self.e.b.branch(self.exit_block)

    def host_checked(self, status: ir.Value, insn: Instruction, what: str) -> None:
        """Stop with EXIT_HOST_ERROR if a host callback failed; else go on in a new block."""
        ok = self.new_block(insn, what)
        failed = self.new_block(insn, f"{what}_failed")
        self.e.b.cbranch(self.e.b.icmp_signed("<", status, c32(0)), failed, ok)
        self.e.at(failed)
        self.rt("host_error")
        self.e.b.branch(self.exit_block)
        self.e.at(ok)

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
