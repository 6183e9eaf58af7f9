"""The emulated i386 machine (issue 3)."""
