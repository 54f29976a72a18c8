"""The daemon's operations and who may call them.

Authority comes from the peer's credentials and cgroup, never from the message:
- a process inside a session may read its own session and narrow it, nothing else;
- outside sessions, a user may manage the sessions it owns; root manages all."""
from __future__ import annotations

import logging
import os
import pwd

from . import cgroups, policy as pol, protocol as P
from .protocol import ProtocolError

log = logging.getLogger("corral.api")


class Api:
    def __init__(self, daemon):
        self.d = daemon
        self.subscribers: dict = {}   # Connection -> filter dict
        from . import protected
        self.protected_write = protected.code_paths()

    # -- helpers -----------------------------------------------------------
    def _caller_session(self, conn):
        return self.d.sessions.for_pid(conn.peer.pid)

    def _target(self, conn, req, write: bool):
        sid = req.get("session")
        if not isinstance(sid, str):
            raise ProtocolError(P.E_BAD_REQUEST, "request needs 'session': a session id")
        s = self.d.sessions.by_id.get(sid)
        if s is None:
            raise ProtocolError(P.E_NOT_FOUND, f"no session {sid!r} (see `corral ps`)")
        own = self._caller_session(conn)
        if own is not None:
            if own.id != sid:
                self._refuse(conn, "touch another session", sid)
            return s, True
        if conn.peer.uid != 0 and conn.peer.uid != s.owner_uid:
            self._refuse(conn, "touch another user's session", sid)
        return s, False

    def _refuse(self, conn, what: str, sid=None, code=P.E_FORBIDDEN, detail=""):
        msg = f"refused: pid {conn.peer.pid} (uid {conn.peer.uid}) may not {what}"
        if detail:
            msg += f": {detail}"
        self.d.audit({"kind": "control", "op": what, "verdict": "deny", "session": sid,
                      "pid": conn.peer.pid, "uid": conn.peer.uid, "target": sid or "",
                      "rule": "caller authority", "reason": detail})
        raise ProtocolError(code, msg)

    def _normalize(self, conn, policy):
        try:
            home = pwd.getpwuid(conn.peer.uid).pw_dir
        except KeyError:
            home = "/"
        try:
            cwd = os.readlink(f"/proc/{conn.peer.pid}/cwd")
        except OSError:
            cwd = "/"
        try:
            return pol.normalize(policy, cwd=cwd, home=home, protected_write=self.protected_write)
        except pol.PolicyError as e:
            raise ProtocolError(P.E_BAD_POLICY, str(e)) from None

    # -- ops ---------------------------------------------------------------
    def op_hello(self, conn, req):
        return {"daemon": "corrald", "protocol": P.VERSION, "version": self.d.version,
                "features": self.d.features, "peer": vars(conn.peer),
                "session": getattr(self._caller_session(conn), "id", None)}

    def op_register_session(self, conn, req):
        policy = self._normalize(conn, req.get("policy"))
        parent = self._caller_session(conn)
        if parent is not None:
            why = pol.narrowing_violations(parent.policy, policy)
            if why:
                self._refuse(conn, "register a session broader than its own", parent.id,
                             P.E_WIDENS, "; ".join(why))
        if cgroups.session_of(conn.peer.pid) and parent is None:
            raise ProtocolError(P.E_FORBIDDEN, "caller is in a corral cgroup with no live session")
        try:
            s = self.d.sessions.create(policy, conn.peer.pid, conn.peer.uid, conn.peer.gid,
                                       parent.id if parent else None)
        except pol.PolicyError as e:
            raise ProtocolError(P.E_BAD_POLICY, str(e)) from None
        self.d.audit({"kind": "session", "op": "start", "verdict": "info", "session": s.id,
                      "pid": conn.peer.pid, "uid": conn.peer.uid, "target": s.cgroup,
                      "cgid": s.cgid, "policy": s.policy, "enforcement": s.enforcement, "rule": "",
                      "parent": s.parent})
        return s.public()

    def op_report_confinement(self, conn, req):
        """The client says what it installed in itself (Landlock, seccomp) before
        exec; what /proc can show is checked rather than believed."""
        s, _ = self._target(conn, req, write=False)
        report = req.get("report")
        if not isinstance(report, dict):
            raise ProtocolError(P.E_BAD_REQUEST, "'report' must be a map")
        if self._caller_session(conn) is not s:
            raise ProtocolError(P.E_FORBIDDEN, "only a process inside the session may report "
                                "its confinement")
        status = _proc_status(conn.peer.pid)
        checked = {
            "seccomp": status.get("Seccomp") == "2",
            "no_new_privs": status.get("NoNewPrivs") == "1",
            "caps_dropped": int(status.get("CapEff", "1"), 16) == 0,
        }
        mismatch = [k for k, v in checked.items() if report.get(k) and not v]
        report = dict(report, kernel_checked=checked)
        if mismatch:
            report["mismatch"] = mismatch
        s.enforcement["client"] = report
        self.d.sessions._save(s)
        self.d.audit({"kind": "session", "op": "confined", "verdict": "info" if not mismatch
                      else "warn", "session": s.id, "pid": conn.peer.pid, "uid": conn.peer.uid,
                      "target": s.cgroup, "rule": "", "report": report})
        return report

    def op_session_info(self, conn, req):
        if req.get("session") is None:
            own = self._caller_session(conn)
            if own is None:
                raise ProtocolError(P.E_NOT_FOUND, "caller is not in a session; name one")
            return own.public()
        s, _ = self._target(conn, req, write=False)
        return s.public()

    def op_list_sessions(self, conn, req):
        own = self._caller_session(conn)
        out = []
        for s in self.d.sessions.by_id.values():
            if own is not None and s.id != own.id:
                continue
            if own is None and conn.peer.uid not in (0, s.owner_uid):
                continue
            out.append(s.public())
        return out

    def op_update_policy(self, conn, req):
        s, inside = self._target(conn, req, write=True)
        new = self._normalize(conn, req.get("policy"))
        if inside:
            why = pol.narrowing_violations(s.policy, new)
            if why:
                self._refuse(conn, "widen its own policy", s.id, P.E_WIDENS, "; ".join(why))
        old = s.policy
        try:
            self.d.sessions.update(s, new)
        except pol.PolicyError as e:
            raise ProtocolError(P.E_BAD_POLICY, str(e)) from None
        self.d.audit({"kind": "policy", "op": "update", "verdict": "info", "session": s.id,
                      "pid": conn.peer.pid, "uid": conn.peer.uid, "target": s.cgroup,
                      "rule": req.get("reason", ""), "old": old, "policy": new})
        return s.public()

    def op_end_session(self, conn, req):
        s, _ = self._target(conn, req, write=True)
        self.d.end_session(s, f"ended by pid {conn.peer.pid} uid {conn.peer.uid}")
        return True

    def op_subscribe_events(self, conn, req):
        own = self._caller_session(conn)
        flt = {"session": req.get("session")}
        if own is not None:
            flt["session"] = own.id
        elif conn.peer.uid != 0:
            flt["uid"] = conn.peer.uid
        self.subscribers[conn] = flt
        return True

    def disconnected(self, conn):
        self.subscribers.pop(conn, None)

    def publish(self, rec: dict) -> None:
        for conn, flt in list(self.subscribers.items()):
            if conn.closed:
                self.subscribers.pop(conn, None)
                continue
            if flt.get("session") and rec.get("session") != flt["session"]:
                continue
            if "uid" in flt:
                s = self.d.sessions.by_id.get(rec.get("session"))
                if s is None or s.owner_uid != flt["uid"]:
                    continue
            self.d.loop.create_task(conn.send({"event": rec}))


def _proc_status(pid: int) -> dict:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                k, _, v = line.partition(":")
                out[k] = v.strip()
    except OSError:
        pass
    return out
