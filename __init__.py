"""dprobes: IBM Dynamic Probes brought to Python.

Subpackages: ``compiler`` (RPN front end, verifier, PPDF, ``dpc``), ``vm`` (instruction
table, interpreter, embeddable API), ``runtime`` (the emulated i386 machine), ``grammar``.
"""

__version__ = "0.1.0"
