"""Benchmarks: run ``python -m dprobes.bench``."""
