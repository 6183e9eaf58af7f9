"""Log targets' output formats as data (``layouts``), and the two formatters built from
them: ``python`` interprets a layout for one record of the Python path, ``native``
generates machine code from the same layouts that formats whole chunks of the native
ring without Python per record."""
