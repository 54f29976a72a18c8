"""Which ref updates of a push the gateway lets through: pure rules, no git.

A push may only update branches (refs/heads/...) whose name matches the
session's pattern (default corral/<session id>/*): no deletes, no tags, no
other refs, no non-fast-forward update unless the policy allows force. Any
line that cannot be parsed is refused (fail closed)."""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Callable

ZERO = re.compile(r"^0+$")
OID = re.compile(r"^[0-9a-f]{40}$|^[0-9a-f]{64}$")
HEADS = "refs/heads/"


@dataclass(frozen=True)
class Decision:
    ref: str
    old: str
    new: str
    allowed: bool
    rule: str           # what decided, as the audit record and the user read it
    force: bool = False


def branch_pattern(pattern: str, session_id: str) -> str:
    return pattern.replace("{session}", session_id)


def allowed_refs_text(pattern: str) -> str:
    return f"{HEADS}{pattern}"


def parse_updates(text: str) -> list[tuple[str, str, str]]:
    """pre-receive's stdin ("OLD NEW REF" lines). Raises ValueError."""
    out = []
    for line in text.splitlines():
        parts = line.split(" ")
        if len(parts) != 3 or not OID.match(parts[0]) or not OID.match(parts[1]) or not parts[2]:
            raise ValueError(f"cannot parse the ref update line {line[:200]!r}")
        out.append((parts[0], parts[1], parts[2]))
    if not out:
        raise ValueError("no ref updates")
    return out


def decide(updates, pattern: str, allow_force: bool,
           is_ancestor: Callable[[str, str], bool]) -> list[Decision]:
    """One Decision per update. `pattern` has {session} already substituted;
    is_ancestor(old, new) answers from the pushed objects (git merge-base)."""
    allowed_text = allowed_refs_text(pattern)
    out = []
    for old, new, ref in updates:
        def no(rule: str) -> Decision:
            return Decision(ref, old, new, False, rule)
        if ref.startswith("refs/tags/"):
            out.append(no(f"tags are not pushed through the gateway (allowed: {allowed_text})"))
            continue
        if not ref.startswith(HEADS):
            out.append(no(f"only branches may be pushed (allowed: {allowed_text})"))
            continue
        branch = ref[len(HEADS):]
        if not fnmatch.fnmatchcase(branch, pattern):
            out.append(no(f"{ref} is not a branch this session may push (allowed: {allowed_text})"))
            continue
        if ZERO.match(new):
            out.append(no(f"deleting {ref} is refused (branches are never deleted through "
                          "the gateway)"))
            continue
        if ZERO.match(old):
            out.append(Decision(ref, old, new, True, f"new branch matching {allowed_text}"))
            continue
        try:
            ff = is_ancestor(old, new)
        except Exception as e:         # fail closed
            out.append(no(f"cannot tell whether the update of {ref} is a fast-forward ({e})"))
            continue
        if ff:
            out.append(Decision(ref, old, new, True, f"fast-forward of a branch matching "
                                                     f"{allowed_text}"))
        elif allow_force:
            out.append(Decision(ref, old, new, True, "non-fast-forward allowed by "
                                                     "git.allow_force", force=True))
        else:
            out.append(no(f"non-fast-forward update of {ref} (force push) is refused "
                          "(git.allow_force is off)"))
    return out
