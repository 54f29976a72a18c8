"""Named policies an operator ships (configuration management): POLICIES_DIR/NAME.toml
(default /etc/corral/policies.d), used by `corral run --policy-name NAME`.

The daemon owns this directory: it reads the files itself and resolves the name when
the session registers, so the policy a name stands for is the operator's file, never
something the user's client sent (a client that read the file could send anything
and call it by that name). Files must be root-owned and not writable by group or
others, like the directory; others are refused.

Reloaded on change (checked about once a second, by mtime, size and inode) without
restarting anything: new sessions get the new version, and the running sessions started
with the name get what the kernel can change live (server/namedsync.py; their session
start record names the file and its sha256, each update is a policy/update record). A file
that does not parse is refused with file:line, logged (kind policy, op named_refused),
and its previous version stays in force; a removed file removes the name."""
from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from corral.policy.errors import PolicyError

log = logging.getLogger("corral.policydir")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
CHECK_INTERVAL = 1.0


@dataclass
class Named:
    name: str
    path: str
    policy: dict
    sha256: str
    loaded: float


class PolicyDir:
    def __init__(self, directory: Path, audit=None, interval: float = CHECK_INTERVAL,
                 owner: int | None = -1):
        self.dir = Path(directory)
        # Whose files are trusted: root's for a root corrald (-1: decide by euid; None: no check)
        self.owner = (0 if os.geteuid() == 0 else None) if owner == -1 else owner
        self.audit = audit if audit is not None else (lambda rec, **kw: rec)
        self.interval = interval
        self.policies: dict[str, Named] = {}
        self.errors: dict[str, str] = {}
        self._seen: dict[str, tuple] = {}
        self._dir_error: str | None = None
        self._last = -1e9
        self.reloads = 0
        self.on_change = None           # on_change(Named): server/namedsync.py
        self.step(force=True)

    # -- reading --------------------------------------------------------------
    def _unsafe(self, st: os.stat_result, what: str) -> str | None:
        if self.owner is None:
            return None
        if st.st_uid != self.owner or st.st_mode & 0o022:
            who = "root" if self.owner == 0 else f"uid {self.owner}"
            return (f"{what} is owned by uid {st.st_uid} with mode {stat.S_IMODE(st.st_mode):04o}: "
                    f"a named policy must be {who}'s and writable by {who} only "
                    f"(chown {'root' if self.owner == 0 else self.owner} {what}; chmod go-w {what})")
        return None

    def step(self, force: bool = False) -> None:
        """Housekeeping: pick up new, changed and removed files."""
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        try:
            st = os.stat(self.dir)
            names = sorted(os.listdir(self.dir))
            err = self._unsafe(st, str(self.dir))
        except FileNotFoundError:
            names, err = [], None
        except OSError as e:
            names, err = None, f"{self.dir}: {e.strerror}"
        if err != self._dir_error:
            self._dir_error = err
            if err:
                log.error("named policies: %s; the policies loaded stay as they are", err)
        if names is None or err:
            return
        present = set()
        for fn in names:
            if not fn.endswith(".toml") or fn.startswith("."):
                continue
            name = fn[:-5]
            path = self.dir / fn
            if not NAME_RE.match(name):
                self._refuse(name, str(path), f"{path}: the name {name!r} is not usable with "
                             "--policy-name (letters, digits, ._-, at most 64): rename the file")
                present.add(name)
                continue
            try:
                st = os.stat(path)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            present.add(name)
            key = (st.st_mtime_ns, st.st_size, st.st_ino, st.st_uid, st.st_mode)
            if self._seen.get(name) == key:
                continue
            self._seen[name] = key
            self._load(name, path, st)
        for name in sorted(set(self.policies) | set(self.errors)):
            if name not in present:
                self._seen.pop(name, None)
                self.errors.pop(name, None)
                old = self.policies.pop(name, None)
                if old is not None:
                    log.info("named policy %s removed (%s)", name, old.path)
                    self.audit({"kind": "policy", "op": "named_removed", "verdict": "info",
                                "target": old.path, "rule": name, "sha256": old.sha256},
                               must=False)

    def _load(self, name: str, path: Path, st) -> None:
        from corral.policy import files as pf
        unsafe = self._unsafe(st, str(path))
        try:
            if unsafe:
                raise PolicyError(unsafe)
            raw = path.read_bytes()
            policy = pf.load_policy_file(str(path))
        except PolicyError as e:
            self._refuse(name, str(path), str(e))
            return
        except OSError as e:
            self._refuse(name, str(path), f"{path}: cannot read: {e.strerror}")
            return
        sha = hashlib.sha256(raw).hexdigest()
        old = self.policies.get(name)
        self.errors.pop(name, None)
        if old is not None and old.sha256 == sha:
            return
        self.policies[name] = Named(name, str(path), policy, sha, time.time())
        self.reloads += 1
        op = "named_loaded" if old is None else "named_changed"
        log.info("named policy %s %s (%s, sha256 %s)", name,
                 "loaded" if old is None else "changed", path, sha[:12])
        self.audit({"kind": "policy", "op": op, "verdict": "info", "target": str(path),
                    "rule": name, "sha256": sha, "previous": old.sha256 if old else None,
                    "policy": policy}, must=False)
        if old is not None and self.on_change is not None:
            try:
                self.on_change(self.policies[name])
            except Exception as e:
                log.error("named policy %s: updating its running sessions failed: %s: %s",
                          name, type(e).__name__, e)

    def _refuse(self, name: str, path: str, msg: str) -> None:
        if self.errors.get(name) == msg:
            return
        self.errors[name] = msg
        kept = self.policies.get(name)
        log.error("named policy %s refused: %s; %s", name, msg,
                  f"the previous version (sha256 {kept.sha256[:12]}) stays in force" if kept
                  else "the name is not available until the file is fixed")
        self.audit({"kind": "policy", "op": "named_refused", "verdict": "warn", "target": path,
                    "rule": msg, "kept": kept.sha256 if kept else None}, must=False)

    # -- use ------------------------------------------------------------------
    def get(self, name) -> Named:
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise PolicyError(f"policy name {name!r}: letters, digits and ._- (a file "
                              f"{self.dir}/NAME.toml)")
        self.step()
        n = self.policies.get(name)
        if n is None:
            why = self.errors.get(name)
            if why:
                raise PolicyError(f"named policy {name!r} is refused: {why}")
            have = ", ".join(sorted(self.policies)) or "none"
            raise PolicyError(f"no named policy {name!r} in {self.dir} (available: {have})")
        return n

    def status(self) -> dict:
        return {"dir": str(self.dir), "error": self._dir_error,
                "policies": {n: {"path": p.path, "sha256": p.sha256, "loaded": p.loaded}
                             for n, p in sorted(self.policies.items())},
                "errors": dict(sorted(self.errors.items()))}
