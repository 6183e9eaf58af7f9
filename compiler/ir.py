"""The IR: the RPN instruction stream per probe, with symbolic labels and source locations.

Front ends (RPN text today, the high-level language later) lower to this; the assembler
lays it out into one code blob, resolves labels and records the source map. Labels share
one namespace per program so that a jump into another probe can be named and rejected.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dprobes.compiler.diagnostics import SourceLoc
from dprobes.vm.isa import OpInfo
from dprobes.vm.program import Probe, ProgramHeader


@dataclass(slots=True)
class IRInstruction:
    """One instruction; ``operand`` is an int, a label name (rel32 operands) or None."""

    op: OpInfo
    operand: int | str | None
    loc: SourceLoc


@dataclass(slots=True)
class IRLabel:
    """A label definition at this point of the instruction stream."""

    name: str
    loc: SourceLoc


@dataclass(slots=True)
class IRProbe:
    """A probe record (code_start/code_end still zero) and its handler's instructions."""

    record: Probe
    body: list[IRInstruction | IRLabel] = field(default_factory=list)
    loc: SourceLoc | None = None


@dataclass(slots=True)
class IRProgram:
    """The whole program before layout."""

    header: ProgramHeader
    probes: list[IRProbe] = field(default_factory=list)
    formats: list[str] = field(default_factory=list)
