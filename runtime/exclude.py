"""Exclude regions: kernel code where a probe is refused (status EXCLUDED), each region named.

A breakpoint in code that runs while a probe is being handled would re-enter trap3, so
DProbes refused probes there (``dprobes_excluded``), and 1.3 added ``kernel/time.c`` and
``arch/i386/kernel/time.c``, whose time functions the log header reads. ``EXCLUDE_RULES``
is the one list of what is excluded here; each rule names either

* a compilation unit by its source file: its address ranges come from the ELF's DWARF
  (``DW_AT_low_pc``/``DW_AT_high_pc``, or ``DW_AT_ranges`` when the unit's code is in
  several sections). A unit's name may be relative (``kernel/time.c``, with
  ``DW_AT_comp_dir``) or absolute; a rule matches whole trailing path components, and a
  unit belongs to the longest rule that matches it, so ``arch/i386/kernel/time.c`` is
  that rule's region, not ``kernel/time.c``'s; or
* a function by its symbol: ``[st_value, st_value + st_size)``.

A rule with nothing to match in an image (no such unit or symbol) gives no region;
``unmatched_rules`` lists those so that a caller can say so.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.dwarf.compileunit import CompileUnit
from elftools.dwarf.ranges import BaseAddressEntry, RangeEntry
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection


@dataclass(frozen=True, slots=True)
class ExcludeRule:
    """One excluded piece of the kernel: a source file (``unit``) or a function
    (``function``), and why a probe there is refused."""

    name: str
    why: str
    unit: str = ""
    function: str = ""


EXCLUDE_RULES: tuple[ExcludeRule, ...] = (
    ExcludeRule(
        "kernel/time.c",
        "time functions the probe handler's log header reads (DProbes 1.3)",
        unit="kernel/time.c",
    ),
    ExcludeRule(
        "arch/i386/kernel/time.c",
        "the timer interrupt and clock code (DProbes 1.3)",
        unit="arch/i386/kernel/time.c",
    ),
    ExcludeRule(
        "trap and interrupt entry (arch/i386/kernel/entry.S)",
        "the int3 and debug trap entries that deliver a probe hit, and the interrupt entry",
        unit="arch/i386/kernel/entry.S",
    ),
    ExcludeRule(
        "probe machinery: do_int3",
        "the breakpoint trap handler a probe hit runs through",
        function="do_int3",
    ),
    ExcludeRule(
        "probe machinery: do_debug",
        "the debug trap handler that ends the probed instruction's single step",
        function="do_debug",
    ),
)


@dataclass(frozen=True, slots=True)
class ExcludeRegion:
    """``[start, end)`` of kernel code that no probe may be planted in, and its rule."""

    start: int
    end: int
    rule: ExcludeRule

    def __contains__(self, address: int) -> bool:
        return self.start <= address < self.end

    def describe(self) -> str:
        return f"in exclude region {self.rule.name} [{self.start:#010x}, {self.end:#010x})"


@dataclass(frozen=True, slots=True)
class CompilationUnit:
    """A DWARF compilation unit: its source path (joined with its compilation directory
    when relative) and the address ranges of its code."""

    path: str
    ranges: tuple[tuple[int, int], ...]


class ExcludeError(Exception):
    """The image's DWARF or symbol table could not be read (the message says why)."""


def compilation_units(path: str | Path) -> tuple[CompilationUnit, ...]:
    """Every compilation unit of the ELF file at ``path`` that has code (none without DWARF)."""
    try:
        with open(path, "rb") as stream:
            elf = ELFFile(stream)
            if not elf.has_dwarf_info():
                return ()
            dwarf = elf.get_dwarf_info()
            return tuple(
                unit
                for cu in dwarf.iter_CUs()
                if (unit := _unit(dwarf, cu)) is not None and unit.ranges
            )
    except (ELFError, KeyError, ValueError) as error:
        raise ExcludeError(f"{path}: cannot read the DWARF compilation units: {error}") from None


def function_extents(path: str | Path) -> dict[str, tuple[int, int]]:
    """``[start, end)`` of every sized function symbol of the ELF file at ``path``."""
    try:
        with open(path, "rb") as stream:
            elf = ELFFile(stream)
            return {
                symbol.name: (symbol["st_value"], symbol["st_value"] + symbol["st_size"])
                for section in elf.iter_sections()
                if isinstance(section, SymbolTableSection)
                for symbol in section.iter_symbols()
                if symbol["st_info"]["type"] == "STT_FUNC" and symbol["st_size"]
            }
    except (ELFError, KeyError, ValueError) as error:
        raise ExcludeError(f"{path}: cannot read the symbol table: {error}") from None


def exclude_regions(
    units: tuple[CompilationUnit, ...],
    functions: dict[str, tuple[int, int]],
    rules: tuple[ExcludeRule, ...] = EXCLUDE_RULES,
) -> tuple[ExcludeRegion, ...]:
    """The regions ``rules`` give for an image with these units and functions, by address."""
    regions = []
    unit_rules = [rule for rule in rules if rule.unit]
    for unit in units:
        rule = _owning_rule(unit.path, unit_rules)
        if rule is not None:
            regions += [ExcludeRegion(start, end, rule) for start, end in unit.ranges]
    for rule in rules:
        if rule.function in functions:
            regions.append(ExcludeRegion(*functions[rule.function], rule))
    return tuple(sorted(regions, key=lambda region: region.start))


def unmatched_rules(
    regions: tuple[ExcludeRegion, ...], rules: tuple[ExcludeRule, ...] = EXCLUDE_RULES
) -> tuple[ExcludeRule, ...]:
    """The rules that gave no region (the image has no such unit or function)."""
    matched = {region.rule for region in regions}
    return tuple(rule for rule in rules if rule not in matched)


def find_region(regions: tuple[ExcludeRegion, ...], address: int) -> ExcludeRegion | None:
    """The exclude region holding ``address``, if any."""
    return next((region for region in regions if address in region), None)


def path_matches(path: str, suffix: str) -> bool:
    """Whether ``suffix`` is ``path``'s last path components (``kernel/time.c`` matches
    ``/src/kernel/time.c`` and ``arch/i386/kernel/time.c``, not ``xkernel/time.c``)."""
    return path == suffix or path.endswith("/" + suffix)


def _owning_rule(path: str, rules: list[ExcludeRule]) -> ExcludeRule | None:
    matching = [rule for rule in rules if path_matches(path, rule.unit)]
    return max(matching, key=lambda rule: len(rule.unit), default=None)


def _unit(dwarf, cu: CompileUnit) -> CompilationUnit | None:
    top = cu.get_top_DIE()
    attributes = top.attributes
    if "DW_AT_name" not in attributes:
        return None
    name = _text(attributes["DW_AT_name"].value)
    directory = _text(attributes["DW_AT_comp_dir"].value) if "DW_AT_comp_dir" in attributes else ""
    path = posixpath.normpath(posixpath.join(directory, name)) if directory else name
    return CompilationUnit(path, _ranges(dwarf, cu, attributes))


def _ranges(dwarf, cu: CompileUnit, attributes) -> tuple[tuple[int, int], ...]:
    low = attributes["DW_AT_low_pc"].value if "DW_AT_low_pc" in attributes else None
    if "DW_AT_ranges" in attributes:
        base = low or 0
        ranges = []
        entries = dwarf.range_lists().get_range_list_at_offset(
            attributes["DW_AT_ranges"].value, cu=cu
        )
        for entry in entries:
            if isinstance(entry, BaseAddressEntry):
                base = entry.base_address
            elif isinstance(entry, RangeEntry) and entry.end_offset > entry.begin_offset:
                shift = 0 if entry.is_absolute else base
                ranges.append((entry.begin_offset + shift, entry.end_offset + shift))
        return tuple(ranges)
    if low is None or "DW_AT_high_pc" not in attributes:
        return ()
    high = attributes["DW_AT_high_pc"]
    end = high.value if high.form == "DW_FORM_addr" else low + high.value
    return ((low, end),) if end > low else ()


def _text(value: str | bytes) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value
