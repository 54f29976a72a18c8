"""What the session table needs of an enforcement backend, and nothing more.

The session table orchestrates (cgroups, ordering, persistence); a backend
owns its kernel state, the layout of its map entries, and what its rule ids
mean. Rule ids are those of the events its programs emit (kernel/abi.py)."""
from __future__ import annotations

from abc import ABC, abstractmethod


class Backend(ABC):
    #: how the session's `enforcement` names this backend
    label: str

    @abstractmethod
    def install(self, cgid: int, policy: dict, **how) -> None:
        """Make the kernel enforce `policy` (this backend's section) on the
        session's cgroup: first install or a live replacement, never passing
        through a more open state."""

    @abstractmethod
    def remove(self, cgid: int) -> None:
        """Drop every kernel entry of the session."""

    @abstractmethod
    def describe(self, cgid: int, rule_id: int) -> str:
        """What an event's rule id means for a live session, for the log."""

    @abstractmethod
    def snapshot(self, cgid: int) -> object:
        """What describe needs, kept by the daemon for events that arrive
        after the session ended."""

    @abstractmethod
    def describe_snapshot(self, snapshot: object, rule_id: int) -> str:
        """describe() for an ended session, from its snapshot (None: none kept)."""
