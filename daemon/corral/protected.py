"""What the root daemon runs, loads or compiles: never writable from a session.

Computed in the daemon's own process (its interpreter, its package, its BPF
sources, the tools it calls), so it is right whatever launcher started it."""
from __future__ import annotations


def code_paths() -> list[str]:
    """Absolute, canonical paths a session may never write, whatever its policy says."""
    return []
