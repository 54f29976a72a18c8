"""The policy model's one error, and how a refusal quotes what the client sent."""
from __future__ import annotations


class PolicyError(ValueError):
    """A policy that cannot be enforced as written. The message names the fix."""


def short(x, n: int = 48) -> str:
    """repr of a client value for a message, cut: a refusal never echoes a megabyte."""
    r = repr(x)
    return r if len(r) <= n else f"{r[:n]}...' ({len(x) if isinstance(x, str) else len(r)} chars)"
