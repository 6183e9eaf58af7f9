"""dprobes: IBM Dynamic Probes brought to Python.

Subpackages: ``compiler`` (RPN front end, verifier, PPDF, ``dpc``), ``vm`` (instruction
table, interpreter, embeddable API), ``runtime`` (the emulated i386 machine), ``elf`` (the
ELF reader both the compiler and the runtime use), ``grammar``.
"""

__version__ = "0.1.0"
