"""Secret names that do not exist yet (deny_read): watched by namewatch.py
instead of refused by Landlock's read complement.

Landlock refuses to read a path that does not exist yet only by withholding
read rights on every new entry of its nearest existing parent. An agent
started in ~ (the project root is $HOME) with no ~/.aws, ~/.kube, ~/.netrc,
~/.pypirc... (mandatory and agent-profile deny_read) could then not read
back a single file it made at its root; the same wherever a missing
deny_read path lies inside an allow_write tree ($HOME below the project, a
`--deny-read ./secrets` not made yet). Where Landlock is the file backend,
the daemon watches those names with namewatch's fanotify marks, walks and
creator lookup, and `corral run` leaves the covered ones (covers(), every
existing directory of the chain marked) out of Landlock's list, unless
--strict-protect:

* Which (candidates()): deny_read paths that do not exist, inside an
  existing allow_write tree (so their nearest existing parent is too: the
  freeze would hit files the session makes), with no allow_read exception
  inside (a mask would hide it), not inside an existing denied tree (hidden
  or read-only already) and reachable through no other mount (Landlock
  refuses a bind-mount alias too; a mask covers one path). Everything else
  stays with Landlock, as before: outside allow_write the session cannot
  create anything, so the freeze there only costs files others make
  directly in those directories (a new file in ~ while the project is
  ~/proj), never one of the session's (its trees, /tmp, are existing
  entries of them and granted whole).
* Made outside every session that watches it (the developer runs
  `aws configure` while the agent works): left in place and hidden in each
  such session's mount view as soon as its report is read (nsmount.mask_op:
  what mountguard mounts over an existing deny_read path at start, an empty
  mode-000 read-only tmpfs over a directory, the root-owned mode-0000
  refusal file over anything else), after checking that the path there
  still leads to that object. Logged as op "secret_hidden", verdict "deny".
  A file replaced later (an atomic rewrite renames a new one onto it, which
  detaches the mask in the session's view) is a new report: hidden again.
* Made by a process of a session that watches it, or by a creator that
  cannot be told: quarantined like a protected deny_write name (fail
  closed: a session that pre-creates ~/.aws, or a symlink there, would
  read what the developer's tools later write into it). Logged as op
  "quarantine".
* A hide that fails (other than the name being replaced or removed
  meanwhile, which has its own report): the session's processes are killed
  (fail closed: the secret would stay readable), op "secret_hide_failed".

What remains: between a creation outside and its mask (the report, then the
nsmount helper: tens of ms, more under load) the session can read the new
name, and a descriptor it opened then stays usable; a symlink made outside
as the name itself is hidden at its target, and one that leads nowhere is
not hidden (logged, "protected_unwatched"). A secret whose directory did
not exist either (~/.docker/config.json without ~/.docker: `docker login`
makes both at once) is found by the walk that follows the directory's mark,
not by a report of its own: who made it cannot be told, so it is quarantined
(fail closed: the session may have raced to make it there), the developer's
file with it (the record says where it went). So is one that appeared while
corrald was down, unless it is a mount point of the session's view already.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from corral.kernel import mountinfo
from corral.kernel.mountinfo import under

log = logging.getLogger("corral.secretwatch")


def candidates(fs: dict, ms=None) -> list[tuple[str, str]]:
    """(path, top: the outermost allow_write root holding it) of the deny_read
    paths namewatch takes over from Landlock (module docstring)."""
    try:
        ms = mountinfo.mounts() if ms is None else ms
    except OSError:
        return []               # no mount table, no alias check: Landlock keeps them all
    allow = [a for a in fs.get("allow_write") or [] if os.path.isdir(a)]
    deny_read = fs.get("deny_read") or []
    denied = deny_read + list(fs.get("deny_write") or [])
    allow_read = fs.get("allow_read") or []
    out = []
    for p in deny_read:
        if os.path.lexists(p):
            continue            # exists: the mount view hides it (mountguard.read_masks)
        roots = [a for a in allow if under(p, a) and p != a]
        if not roots:
            continue            # the session cannot make it: Landlock's complement costs it nothing
        if any(under(a, p) for a in allow_read):
            continue            # an exception inside: a mask would hide it, Landlock keeps it
        if any(d != p and under(p, d) and os.path.lexists(d) for d in denied):
            continue            # inside a denied tree that exists: hidden or read-only already
        if mountinfo.aliases(p, ms):
            continue            # another mount reaches it: Landlock refuses both, a mask one
        out.append((p, min(roots, key=len)))
    return out


def rule(path: str) -> str:
    """Which protection a deny_read path comes from, for the record."""
    from corral.policy.files import mandatory_of
    name = mandatory_of(path, "deny_read")
    return f"mandatory {name}" if name else "deny_read"


def hidden_record(item: dict, links: int, error: str) -> dict:
    """The record of a hide (`item`: namewatch's pending entry)."""
    who = item["creator"]
    rec = {"kind": "file", "op": "secret_hidden", "verdict": "deny", "target": item["path"],
           "pid": who.pid, "comm": who.comm, "creator": who.kind, "rule": item["rule"]}
    if error:
        rec.update(op="secret_hide_failed", error=error,
                   action="the session's processes are killed (fail closed: the secret "
                          "would stay readable)")
    elif links > 1:
        rec.update(links=links, note=f"it has {links} names: the others are not hidden")
    return rec


def fail_closed(session) -> None:
    """A secret the session's view could not hide: end what runs in it (the
    daemon then ends the session when its leader is gone)."""
    from corral.kernel import cgroups
    log.error("session %s: a secret made outside could not be hidden in its view: killing "
              "its processes", session.id)
    try:
        cgroups.kill(Path(session.cgroup), timeout=0.5)
    except OSError as e:
        log.error("session %s: cannot kill its processes: %s", session.id, e)
