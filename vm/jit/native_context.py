"""Native callbacks for MemoryContext (placeholder: serves nothing natively yet)."""

from __future__ import annotations


def native_host_for(runner, context):
    return None
