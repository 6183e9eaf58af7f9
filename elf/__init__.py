"""The one reader of i386 ELF32 files: symbols, the code map and the loader all use it.

It is a top-level package (``dprobes.elf``) rather than a module of the compiler or the
runtime because both need it and neither may depend on the other: the compiler reads
symbols and program headers to turn ``offset = SYMBOL`` into a file offset, the runtime
validates probe offsets against the executable's code and loads the executable. This
package imports only pyelftools, so either side can import it without pulling in the
other.
"""

from dprobes.elf.reader import (
    EM_NAMES,
    PF_R,
    PF_W,
    PF_X,
    ElfError,
    ElfFile,
    ElfSymbol,
    Segment,
    read_elf,
)

__all__ = [
    "EM_NAMES",
    "PF_R",
    "PF_W",
    "PF_X",
    "ElfError",
    "ElfFile",
    "ElfSymbol",
    "Segment",
    "read_elf",
]
