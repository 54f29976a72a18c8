"""A named policy that changed (server/policydir.py) reaches the running sessions
started with it, without restarting them: what the kernel can change live is
updated in place, the way `corral update` (op update_policy) does it, and logged
before it is applied (policy/update, rule "named policy NAME changed").

Live: [network] (allow, deny, domains, localhost ports: the BPF maps) always;
[filesystem] where files are enforced by BPF LSM (maps). Fixed when the session's
command started, so kept as they were (and named in the record's "kept"): the
file policy under Landlock (a process's rules are fixed at exec), [syscalls]
(seccomp), [unix] (the mount view), [env]. A session started inside another keeps
being narrower than its parent: an update that would widen it past its parent is
not applied (logged). A removed named policy leaves its sessions as they are."""
from __future__ import annotations

import logging
import pwd

from corral.policy import model as pol
from corral.server.eventlog import LogUnavailable

log = logging.getLogger("corral.namedsync")


class NamedSync:
    def __init__(self, sessions, audit, protected_write=()):
        self.sessions = sessions
        self.audit = audit
        self.protected_write = list(protected_write)
        self.applied = 0

    def _policy_for(self, s, named) -> tuple[dict, list[str]]:
        from corral.policy import files as pf
        cwd = (s.policy_name or {}).get("cwd") or "/"
        try:
            home = pwd.getpwuid(s.owner_uid).pw_dir
        except KeyError:
            home = "/"
        raw = pf.apply_mandatory(named.policy, set(), cwd=cwd, files=[named.path])
        new = pol.normalize(raw, cwd=cwd, home=home, protected_write=self.protected_write)
        live = {"network"} | ({"filesystem"} if self.sessions.filelsm is not None else set())
        kept = []
        out = dict(s.policy)
        for k in set(new) | set(s.policy):
            if k in live:
                if k in new:
                    out[k] = new[k]
                else:
                    out.pop(k, None)
            elif new.get(k) != s.policy.get(k):
                kept.append(k)
        return out, sorted(kept)

    def changed(self, named) -> None:
        for s in list(self.sessions.by_id.values()):
            pn = s.policy_name or {}
            if pn.get("name") != named.name or pn.get("path") != named.path \
                    or pn.get("sha256") == named.sha256:
                continue
            base = {"kind": "policy", "session": s.id, "uid": 0, "target": s.cgroup,
                    "named": {"name": named.name, "path": named.path, "sha256": named.sha256,
                              "previous": pn.get("sha256")}}
            try:
                new, kept = self._policy_for(s, named)
            except pol.PolicyError as e:
                self.audit(dict(base, op="update_failed", verdict="warn",
                                rule=f"named policy {named.name} changed but does not apply to this "
                                     f"session: {e}; the session keeps its policy"), must=False)
                continue
            parent = self.sessions.by_id.get(s.parent) if s.parent else None
            if parent is not None:
                why = pol.narrowing_violations(parent.policy, new)
                if why:
                    self.audit(dict(base, op="update_failed", verdict="warn",
                                    rule=f"named policy {named.name} changed, but would widen this "
                                         f"session past its parent {parent.id}: "
                                         + "; ".join(why)), must=False)
                    continue
            rule = (f"named policy {named.name} changed ({named.path}, sha256 {named.sha256[:12]})"
                    + (f"; kept as they were (fixed at exec): {', '.join(kept)}" if kept else ""))
            try:
                self.audit(dict(base, op="update", verdict="info", rule=rule, old=s.policy,
                                policy=new, kept=kept), must=True)
            except LogUnavailable as e:
                log.error("session %s: named policy %s not updated: %s", s.id, named.name, e)
                continue
            try:
                self.sessions.update(s, new)
            except Exception as e:
                self.audit(dict(base, op="update_failed", verdict="info",
                                rule=f"{type(e).__name__}: {e}: the policy stays as it was"),
                           must=False)
                continue
            s.policy_name = dict(pn, sha256=named.sha256)
            self.sessions.save(s)
            self.applied += 1
            log.info("session %s: named policy %s updated live%s", s.id, named.name,
                     f" (kept: {', '.join(kept)})" if kept else "")
