"""Both tiers define their instructions in the order of the instruction table, so that a
row, its semantic function and its lowering are found at the same place in each file."""

from __future__ import annotations

import re
from pathlib import Path

from dprobes.vm import ops
from dprobes.vm.isa import TABLE
from dprobes.vm.jit import lower

TABLE_ORDER = [op.name for op in TABLE]


def test_semantic_functions_follow_the_table_order() -> None:
    assert list(ops.SEMANTICS) == TABLE_ORDER


def test_lowerings_follow_the_table_order() -> None:
    seen: list[str] = []
    for match in re.finditer(r"^(?:def )?lower_(\w+)\b", Path(lower.__file__).read_text(), re.M):
        name = match.group(1).upper()
        if name in lower.LOWERINGS and name not in seen:
            seen.append(name)
    assert seen == TABLE_ORDER
