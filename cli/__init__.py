"""``dpc``, the command line: build, check, disasm, exec and run, on top of the compiler,
the VM and the runtime (which never import it)."""
