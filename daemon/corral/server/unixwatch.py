"""Unix sockets bound after a session started: masked in its view too.

`corral run` masks every pathname socket bound on the host when the session
starts (client/mountguard.py). A socket bound later -- a developer's new tmux
server, an editor started after the agent -- would be reachable. The daemon
looks at the kernel's list of bound sockets (unix_diag) every POLL seconds;
for each socket it has not seen, it finds which session (if any) holds it
(only session processes' descriptors are searched: every other holder is
"outside"), and for every other live session with a mount view it

1. adds the socket's exact path to the session's refusal map (connect_unix:
   EPERM and a record, at once), then
2. binds the refusal file over it inside the session's mount namespace
   (nsmount.py: a short-lived helper process setns()es there through a pidfd
   of a session process), after checking that the path there leads to the
   same socket.

A window remains between bind() outside and the mask (up to POLL seconds plus
~30 ms for the helper): a connect() through another spelling of the path in
that window reaches the socket. README and `corral doctor` say so.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from corral.config import SOCKET
from corral.kernel import cgroups, unixdiag
from corral.server import nsmount

log = logging.getLogger("corral.unixwatch")

POLL = 0.2                   # seconds between unix_diag dumps while sessions live (0.1 ms each here)


class UnixWatch:
    def __init__(self, sessions, audit, refusal: str):
        self.sessions = sessions        # SessionTable
        self.audit = audit              # callable(record)
        self.refusal = refusal
        self.seen: set[int] = set()     # socket inodes already handled
        self.last = 0.0

    def step(self) -> None:
        live = [s for s in self.sessions.by_id.values() if self._has_view(s)]
        now = time.monotonic()
        if not live or now - self.last < POLL:
            return
        self.last = now
        bound = unixdiag.bound_sockets()
        fresh = [b for b in bound if b.sock_ino not in self.seen]
        self.seen = {b.sock_ino for b in bound}
        if not fresh:
            return
        owners = self._owners(live, {b.sock_ino for b in fresh})
        exempt = unixdiag.file_key(str(SOCKET))
        for b in fresh:
            if not b.name.startswith("/"):
                continue
            key = unixdiag.file_key(b.name)
            if key != (b.ino, b.dev) or key == exempt:
                continue
            owner = owners.get(b.sock_ino)
            masked = []
            for s in live:
                rep = s.enforcement.get("client") or {}
                if s is owner or b.name in (rep.get("masked_sockets") or ()) or \
                        self._allowed(s, key):
                    continue        # its own, masked by `corral run` already, or allowed
                if self._mask(s, b):
                    masked.append(s.id)
            if masked:
                self.audit({"kind": "session", "op": "unix_masked", "verdict": "info",
                            "target": b.name, "sessions": masked,
                            "rule": "bound outside the session after it started"
                                    + (f" (by session {owner.id})" if owner else "")},
                           must=False)

    @staticmethod
    def _has_view(s) -> bool:
        rep = s.enforcement.get("client") or {}
        return bool(rep.get("mount_namespace")) and s.enforcement.get("unix_peers") != "bpf-lsm"

    @staticmethod
    def _allowed(s, key) -> bool:
        return any(unixdiag.file_key(p) == key for p in (s.policy.get("unix") or {}).get("allow") or [])

    @staticmethod
    def _owners(live, inodes: set[int]) -> dict:
        """socket inode -> the session one of whose processes holds it."""
        want = {f"socket:[{i}]": i for i in inodes}
        out = {}
        for s in live:
            for pid in cgroups.pids(Path(s.cgroup)):
                try:
                    fds = os.listdir(f"/proc/{pid}/fd")
                except OSError:
                    continue
                for fd in fds:
                    try:
                        t = os.readlink(f"/proc/{pid}/fd/{fd}")
                    except OSError:
                        continue
                    if t in want:
                        out.setdefault(want[t], s)
        return out

    def _mask(self, s, b) -> bool:
        self.sessions.net.set_unix_refusals(s.cgid, [b.name])
        fd = nsmount.session_pidfd(self.sessions, s)
        if fd < 0:
            return False
        try:
            # Only if the path there still leads to that socket.
            return nsmount.bind_in(fd, self.refusal, b.name, readonly=True, expect=(b.ino, b.dev))
        finally:
            os.close(fd)
