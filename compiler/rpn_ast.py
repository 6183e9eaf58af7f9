"""The RPN syntax tree: what ``rpn_parser`` produces and ``lower_rpn`` consumes.

The tree records what was written, line by line, and nothing more: a keyword's value
is still text, a bare name in an instruction may turn out to be a qualifier, a
register, a label or a symbol. Deciding that needs the instruction table and the
program header, which is the lowering pass's job. Every node carries the location in
the ORIGINAL source (through ``#include``), so later passes can point at it.
"""

from __future__ import annotations

from dataclasses import dataclass

from dprobes.compiler.diagnostics import SourceLoc


class Node:
    """Base of every node: ``children()`` lists the nodes below it, in source order."""

    __slots__ = ()

    def children(self) -> tuple[Node, ...]:
        return ()


@dataclass(slots=True)
class NameArg(Node):
    """A bare name: a qualifier, register, label or symbol, depending on the instruction."""

    name: str
    loc: SourceLoc


@dataclass(slots=True)
class NumberArg(Node):
    """A decimal or 0x-hex number, possibly negative (the lowering pass wraps or rejects)."""

    value: int
    loc: SourceLoc


@dataclass(slots=True)
class SymbolArg(Node):
    """``symbol+n`` or ``symbol-n``: a symbol's value plus a signed addend."""

    name: str
    addend: int
    loc: SourceLoc


Arg = NameArg | NumberArg | SymbolArg


@dataclass(slots=True)
class Item(Node):
    """``keyword = value``: ``loc`` is the keyword, ``value_loc`` the value (right-stripped)."""

    keyword: str
    value: str
    loc: SourceLoc
    value_loc: SourceLoc


@dataclass(slots=True)
class LabelDef(Node):
    """``name:``, on its own line or in front of an instruction."""

    name: str
    loc: SourceLoc


@dataclass(slots=True)
class InstructionLine(Node):
    """``mnemonic [arg] [,] [arg]`` as written; ``loc`` spans the whole instruction."""

    mnemonic: str
    args: list[Arg]
    loc: SourceLoc

    def children(self) -> tuple[Node, ...]:
        return tuple(self.args)


Statement = Item | LabelDef | InstructionLine


@dataclass(slots=True)
class File(Node):
    """A whole preprocessed file; ``loc`` is its first line."""

    body: list[Statement]
    loc: SourceLoc

    def children(self) -> tuple[Node, ...]:
        return tuple(self.body)
