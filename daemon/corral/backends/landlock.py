"""The Landlock backend, daemon side: the client installs the ruleset in
itself before exec (client/landlock.py), so there is no kernel state here.
The session table still talks to it through the one interface, so a file
policy is handled the same way whichever backend enforces it."""
from __future__ import annotations

from corral.backends.base import Backend


class LandlockBackend(Backend):
    label = "landlock (installed by the client before exec)"

    def install(self, cgid: int, policy: dict, **how) -> None:
        pass                     # nothing the daemon can write: the client's process does it

    def remove(self, cgid: int) -> None:
        pass

    # Landlock denials come from the audit link (server/auditlink.py), not
    # from rule ids in kernel events: there is nothing to describe.
    def describe(self, cgid: int, rule_id: int) -> str:
        return f"rule#{rule_id}"

    def snapshot(self, cgid: int) -> object:
        return None

    def describe_snapshot(self, snapshot: object, rule_id: int) -> str:
        return f"rule#{rule_id}"
