"""The daemon's operations and who may call them.

Authority comes from the kernel, never from the message: the peer is pinned by
a pidfd when the connection is accepted (peer.py), and on every request its
cgroup is read through that pin.
- a peer that has exited, or cannot be identified, may do nothing;
- a process inside a session may read its own session and narrow it, nothing else;
- a process in corral's cgroup tree but in no live session may do nothing but hello;
- outside sessions, a user may manage the sessions it owns; root manages all.

Every change is logged before it is made: if its record cannot be written
durably, nothing changes and the caller gets E_LOG."""
from __future__ import annotations

import logging
import pwd
from dataclasses import dataclass
from typing import Callable

from corral.kernel import cgroups
from corral.server import limits as L
from corral.policy import model as pol
from corral import protocol as P
from corral.server.eventlog import LogUnavailable
from corral.server.peer import Peer, PeerGone
from corral.server.runprep import RunOps
from corral.server.sessionops import SessionOps
from corral.protocol import ProtocolError

log = logging.getLogger("corral.api")


@dataclass
class Services:
    """What the API uses of the daemon, and nothing more."""
    sessions: object                          # server.sessions.SessionTable
    audit: Callable[..., dict]                # audit(record, must=False) -> stored record
    end_session: Callable[..., dict]          # end_session(session, why, must=, reason=) -> counts
    status: Callable[[], dict]                # version, features, audit log state
    policies: object = None                   # server.policydir.PolicyDir (named policies)


@dataclass
class Caller:
    peer: Peer
    session: object | None       # the live Session the peer is in
    confined: bool               # inside corral's cgroup tree (session or not)


class Api(SessionOps, RunOps):  # + session_ready, join_session, exec_prepare, report_exec;
    #                               run_prepare, join_child, report_run (native corral run)
    def __init__(self, svc: Services):
        self.sessions = svc.sessions
        self.audit = svc.audit
        self.end_session = svc.end_session
        self.status = svc.status
        self.policies = svc.policies
        self.subscribers: dict = {}   # Connection -> filter dict
        self.refusal_log = L.Buckets(L.REFUSAL_LOG_RATE, L.REFUSAL_LOG_BURST)
        from corral.server import protected
        self.protected_write = protected.code_paths()

    # -- who is asking -------------------------------------------------------
    def _resolve(self, peer: Peer):
        """(live session or None, cgroup path) of the peer, read through its pidfd.
        Raises PeerGone."""
        cgid, path = peer.cgroup()
        return self.sessions.for_cgroup(cgid, path), path

    def principal(self, peer: Peer) -> str:
        """What per-principal limits count against (see limits.py)."""
        try:
            s, path = self._resolve(peer)
        except PeerGone:
            return f"uid:{peer.uid}"
        if s is not None:
            return f"session:{s.id}"
        if cgroups.in_tree(path):
            return f"cgroup:{path}"
        return f"uid:{peer.uid}"

    def _caller(self, conn) -> Caller:
        try:
            s, path = self._resolve(conn.peer)
        except PeerGone as e:
            self._refuse(conn, "act through a connection whose process has exited",
                         code=P.E_PEER_GONE, detail=str(e))
        return Caller(conn.peer, s, s is not None or cgroups.in_tree(path))

    def _target(self, conn, req, caller: Caller | None = None):
        caller = caller or self._caller(conn)
        sid = req.get("session")
        if not isinstance(sid, str):
            raise ProtocolError(P.E_BAD_REQUEST, "request needs 'session': a session id")
        if caller.confined and caller.session is None:
            self._refuse(conn, "act from a corral cgroup with no live session", sid)
        s = self.sessions.by_id.get(sid)
        if caller.session is not None:
            if caller.session.id != sid:
                # Inside a session, other sessions do not exist.
                self._refuse(conn, "touch another session", sid)
            return s, True
        if s is None:
            raise ProtocolError(P.E_NOT_FOUND, f"no session {sid!r} (see `corral ps`)")
        if conn.peer.uid != 0 and conn.peer.uid != s.owner_uid:
            self._refuse(conn, "touch another user's session", sid)
        return s, False

    # -- refusals: always raised, logged at a bounded rate ---------------------
    def refused(self, peer: Peer, what: str, sid=None, detail: str = "", log_only=False) -> None:
        b = self.refusal_log.get(peer.principal or f"uid:{peer.uid}")
        if not b.take():
            return
        rec = {"kind": "control", "op": what, "verdict": "deny", "session": sid,
               "pid": peer.pid, "uid": peer.uid, "target": sid or "",
               "rule": "caller authority", "reason": detail, "principal": peer.principal}
        suppressed, b.refused = b.refused, 0
        if suppressed:
            rec["suppressed_before"] = suppressed
        self.audit(rec, must=False)

    def flush_refusals(self) -> None:
        """Refusals that were only counted get one record each principal."""
        for principal, n in self.refusal_log.prune():
            self.audit({"kind": "control", "op": "refusals_suppressed", "verdict": "deny",
                          "target": principal, "count": n, "principal": principal,
                          "rule": f"refusal log rate limit ({L.REFUSAL_LOG_RATE}/s)"}, must=False)

    def _refuse(self, conn, what: str, sid=None, code=P.E_FORBIDDEN, detail=""):
        msg = f"refused: pid {conn.peer.pid} (uid {conn.peer.uid}) may not {what}"
        if detail:
            msg += f": {detail}"
        self.refused(conn.peer, what, sid, detail)
        raise ProtocolError(code, msg)

    def _log_first(self, rec: dict) -> dict:
        """Write a change's record durably before the change is made."""
        try:
            return self.audit(rec, must=True)
        except LogUnavailable as e:
            raise ProtocolError(P.E_LOG, f"refused: the change was not made because its audit "
                                         f"record could not be written: {e}") from None

    # -- input ---------------------------------------------------------------
    def _normalize(self, conn, policy):
        P.check_shape(policy, L.MAX_POLICY_DEPTH, L.MAX_ITEMS, L.MAX_STR, "policy", P.E_BAD_POLICY)
        try:
            home = pwd.getpwuid(conn.peer.uid).pw_dir
        except KeyError:
            home = "/"
        cwd = conn.peer.cwd()
        try:
            git = getattr(self.sessions, "git", None)     # its credentials and mirrors
            return pol.normalize(policy, cwd=cwd, home=home, protected_write=self.protected_write,
                                 protected_read=git.protected_read() if git is not None else ())
        except pol.PolicyError as e:
            raise ProtocolError(P.E_BAD_POLICY, str(e)) from None

    def _named_policy(self, conn, name, given):
        """A policy from policies.d, resolved here (server/policydir.py): with the
        mandatory protections, `~` as the caller's home. A policy sent with the name
        may only narrow it (API clients); `corral run --policy-name` sends none."""
        if self.policies is None:
            raise ProtocolError(P.E_UNSUPPORTED, "this corrald has no named policies")
        from corral.policy import files as pf
        try:
            n = self.policies.get(name)
            raw = pf.apply_mandatory(n.policy, set(), cwd=conn.peer.cwd(), files=[n.path])
        except pol.PolicyError as e:
            raise ProtocolError(P.E_BAD_POLICY, str(e)) from None
        policy = self._normalize(conn, raw)
        if given is not None:
            narrower = self._normalize(conn, given)
            why = pol.narrowing_violations(policy, narrower)
            if why:
                self._refuse(conn, f"widen the named policy {name!r}", None, P.E_WIDENS,
                             "; ".join(why))
            policy = narrower
        return policy, {"name": n.name, "path": n.path, "sha256": n.sha256,
                        "cwd": conn.peer.cwd()}    # for a later version (server/namedsync.py)

    @staticmethod
    def _reason(req) -> str:
        r = req.get("reason", "")
        if not isinstance(r, str) or len(r) > L.MAX_REASON:
            raise ProtocolError(P.E_BAD_REQUEST, f"'reason' must be a string of at most "
                                                 f"{L.MAX_REASON} characters")
        return r

    def _check_user_limits(self, conn, uid: int, policy: dict, replacing=None) -> None:
        owned = self.sessions.owned_by(uid)
        if replacing is None and len(owned) >= L.session_limit(uid):
            self._refuse(conn, "start another session", code=P.E_LIMIT,
                         detail=f"uid {uid} has {len(owned)} sessions (limit {L.session_limit(uid)})")
        used = sum(pol.rule_count(s.policy) for s in owned if s is not replacing)
        need = pol.rule_count(policy)
        if used + need > L.rule_limit(uid):
            self._refuse(conn, "install more network rules", code=P.E_LIMIT,
                         detail=f"uid {uid}'s sessions hold {used} rules, this policy needs {need} "
                                f"(limit {L.rule_limit(uid)} per user)")

    # -- ops ---------------------------------------------------------------
    def op_hello(self, conn, req):
        alive = conn.peer.alive()
        caller = self._caller(conn) if alive else None
        return {"daemon": "corrald", "protocol": P.VERSION, **self.status(),
                "peer": conn.peer.public() | {"alive": alive},
                "session": getattr(caller and caller.session, "id", None)}

    def op_register_session(self, conn, req, unmoved: bool = False):
        """`unmoved` (server/runprep.py only, never from a request): the caller is
        not moved in; the command is created in the cgroup and reports as leader."""
        caller = self._caller(conn)
        parent = caller.session
        if caller.confined and parent is None:
            self._refuse(conn, "start a session from a corral cgroup with no live session")
        keep_running = req.get("keep_running", False)
        if not isinstance(keep_running, bool):
            raise ProtocolError(P.E_BAD_REQUEST, "'keep_running' must be true or false")
        from corral import labels as lb
        try:
            name, labels = lb.check_name(req.get("name")), lb.check_labels(req.get("labels"))
        except lb.LabelError as e:
            raise ProtocolError(P.E_BAD_REQUEST, str(e)) from None
        named = None
        if req.get("policy_name") is not None:
            policy, named = self._named_policy(conn, req.get("policy_name"), req.get("policy"))
        else:
            policy = self._normalize(conn, req.get("policy"))
        if parent is not None:
            why = pol.narrowing_violations(parent.policy, policy)
            if why:
                self._refuse(conn, "register a session broader than its own", parent.id,
                             P.E_WIDENS, "; ".join(why))
        uid = conn.peer.uid
        self._check_user_limits(conn, uid, policy)
        try:
            s = self.sessions.prepare(policy, uid, conn.peer.gid,
                                        parent.id if parent else None, conn.peer.pid,
                                        keep_running=keep_running, name=name, labels=labels,
                                        policy_name=named)
        except pol.PolicyError as e:
            raise ProtocolError(P.E_BAD_POLICY, str(e)) from None
        try:
            self._log_first({"kind": "session", "op": "start", "verdict": "info", "session": s.id,
                             "pid": conn.peer.pid, "uid": uid, "target": s.cgroup,
                             "cgid": s.cgid, "policy": s.policy, "enforcement": s.enforcement,
                             "rule": "", "parent": s.parent, "keep_running": keep_running,
                             **({"policy_name": named} if named else {}),
                             **({"session_name": name} if name else {}),
                             **({"labels": labels} if labels else {})})
            if unmoved:
                self.sessions.admit_unmoved(s)
            else:
                self.sessions.admit(s, conn.peer)
        except BaseException as e:
            self.sessions.discard(s)
            if isinstance(e, PeerGone):
                self.audit({"kind": "session", "op": "abort", "verdict": "info",
                              "session": s.id, "uid": uid, "target": s.cgroup,
                              "rule": str(e)}, must=False)
            raise
        return s.public()

    def op_report_confinement(self, conn, req):
        """The client says what it installed in itself (Landlock, seccomp) before
        exec; what /proc can show is checked rather than believed."""
        caller = self._caller(conn)
        s, _ = self._target(conn, req, caller)
        if caller.session is not s:
            raise ProtocolError(P.E_FORBIDDEN, "only a process inside the session may report "
                                "its confinement")
        report = _plain_report(req.get("report"))
        if "client" in s.enforcement:
            # `corral run` reports once, before exec; a second report comes from
            # the agent and would rewrite what the log says was enforced.
            raise ProtocolError(P.E_FORBIDDEN, "this session's confinement was already reported")
        if len(P.encode(report)) > L.MAX_REPORT_BYTES:
            raise ProtocolError(P.E_LIMIT, f"'report' exceeds {L.MAX_REPORT_BYTES} bytes")
        status = conn.peer.proc_status()
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
        s.enforcement["unix_refusals"] = self._refuse_foreign_sockets(s)
        self.sessions.save(s)
        # Not log-first (the "start" record was): written once the answer is out,
        # before anything the command does can be read from the kernel.
        from corral.server.listener import after_answer
        after_answer(self.audit, {"kind": "session", "op": "confined",
                                  "verdict": "info" if not mismatch else "warn", "session": s.id,
                                  "pid": conn.peer.pid, "uid": conn.peer.uid, "target": s.cgroup,
                                  "rule": "", "report": report}, False)
        return report

    def _refuse_foreign_sockets(self, s) -> int:
        """Exact-path refusals with a record for the Unix sockets bound outside
        the session, computed here (not taken from the report) while the only
        session process is `corral run` itself, before exec: nothing bound now
        is the session's own. The client's mount view masks the same sockets."""
        from corral.config import SOCKET
        from corral.kernel import unixdiag
        try:
            names, _ = unixdiag.foreign((s.policy.get("unix") or {}).get("allow") or [],
                                        [str(SOCKET)])
            return self.sessions.net.set_unix_refusals(s.cgid, names)
        except OSError as e:
            log.warning("session %s: Unix socket refusals not installed (%s); the mount view "
                        "still refuses them, without records of their own", s.id, e)
            return 0

    def op_session_info(self, conn, req):
        caller = self._caller(conn)
        if req.get("session") is None:
            if caller.session is None:
                raise ProtocolError(P.E_NOT_FOUND, "caller is not in a session; name one")
            return caller.session.public()
        s, _ = self._target(conn, req, caller)
        return s.public()

    def op_list_sessions(self, conn, req):
        caller = self._caller(conn)
        if caller.confined:
            return [caller.session.public()] if caller.session is not None else []
        return [s.public() for s in self.sessions.by_id.values()
                if conn.peer.uid in (0, s.owner_uid)]

    def op_update_policy(self, conn, req):
        caller = self._caller(conn)
        s, inside = self._target(conn, req, caller)
        reason = self._reason(req)
        new = self._normalize(conn, req.get("policy"))
        if inside:
            why = pol.narrowing_violations(s.policy, new)
            if why:
                self._refuse(conn, "widen its own policy", s.id, P.E_WIDENS, "; ".join(why))
        self._check_user_limits(conn, s.owner_uid, new, replacing=s)
        old = s.policy
        self._log_first({"kind": "policy", "op": "update", "verdict": "info", "session": s.id,
                         "pid": conn.peer.pid, "uid": conn.peer.uid, "target": s.cgroup,
                         "rule": reason, "old": old, "policy": new})
        try:
            self.sessions.update(s, new)
        except Exception as e:
            # The record above announced a change that did not happen: say so.
            self.audit({"kind": "policy", "op": "update_failed", "verdict": "info",
                          "session": s.id, "uid": conn.peer.uid, "target": s.cgroup,
                          "rule": f"{type(e).__name__}: {e}: the policy stays as it was"},
                         must=False)
            if isinstance(e, pol.PolicyError):
                raise ProtocolError(P.E_BAD_POLICY, str(e)) from None
            raise
        return s.public()

    def op_end_session(self, conn, req):
        """End a session and kill what is left in it; answered once its cgroup is
        empty, with how many processes were killed.

        A session whose leader has exited and that does not keep running is one
        the daemon ends on its own (housekeeping); asking only makes that happen
        now: `corral run` does, after its command exits, so it returns after the
        leftovers are gone. The session's parent session may ask that too. Any
        other end is a change: logged first, refused if the log cannot take it."""
        caller = self._caller(conn)
        note = self._reason(req)
        who = f"pid {conn.peer.pid} uid {conn.peer.uid}"
        sid = req.get("session")
        done = self.sessions.end_answers.get(sid) if isinstance(sid, str) and not caller.confined \
            and sid not in self.sessions.by_id else None
        if done is not None and conn.peer.uid in (0, done[1]):
            # ended by the daemon a moment ago (its command gone): the same answer
            return dict(done[2], already_ended=True)
        s = self._ended_child(conn, caller, sid)
        if s is None:
            s, _ = self._target(conn, req, caller)
        if not s.keep_running and not s.leader_alive():
            return self.end_session(s, f"command exited ({note or 'leader gone'}; asked by {who})",
                                    reason="command exited")
        try:
            return self.end_session(s, f"ended by {who}" + (f": {note}" if note else ""),
                                    must=True, reason="corral end")
        except LogUnavailable as e:
            raise ProtocolError(P.E_LOG, f"refused: the session was not ended because its audit "
                                         f"record could not be written: {e}") from None

    def _ended_child(self, conn, caller: Caller, sid):
        """For a caller inside a session: `sid` if it is a session started from
        the caller's whose leader has exited (ending it is the daemon's own
        rule, see op_end_session); not_found if such a child already ended;
        else None (the usual authority applies)."""
        if caller.session is None or not isinstance(sid, str) or sid == caller.session.id:
            return None
        s = self.sessions.by_id.get(sid)
        if s is not None:
            if s.parent == caller.session.id and not s.keep_running and not s.leader_alive():
                return s
            return None
        ended = self.sessions.recently_ended.get(sid)
        if ended is not None and ended[1] == caller.session.id:
            raise ProtocolError(P.E_NOT_FOUND, f"session {sid!r} has already ended")
        return None

    def op_subscribe_events(self, conn, req):
        caller = self._caller(conn)
        if caller.confined and caller.session is None:
            self._refuse(conn, "subscribe from a corral cgroup with no live session")
        flt = {"session": req.get("session")}
        if not isinstance(flt["session"], (str, type(None))):
            raise ProtocolError(P.E_BAD_REQUEST, "'session' must be a session id")
        if caller.session is not None:
            flt["session"] = caller.session.id
        elif conn.peer.uid != 0:
            flt["uid"] = conn.peer.uid
        self.subscribers[conn] = flt
        conn.subscribed = True
        return True

    def disconnected(self, conn):
        self.subscribers.pop(conn, None)

    def publish(self, rec: dict) -> None:
        for conn, flt in list(self.subscribers.items()):
            if conn.closed or not conn.peer.alive():
                # A subscription ends with the process that made it.
                self.subscribers.pop(conn, None)
                continue
            if flt.get("session") and rec.get("session") != flt["session"]:
                continue
            if "uid" in flt:
                s = self.sessions.by_id.get(rec.get("session"))
                if s is None or s.owner_uid != flt["uid"]:
                    continue
            if not conn.push_event({"event": rec}):
                self.subscribers.pop(conn, None)
                log.warning("subscriber pid %d dropped: %d bytes of events unread",
                            conn.peer.pid, L.EVENT_BACKLOG)


def _plain_report(report) -> dict:
    """A confinement report as the session state can store it: a map of string
    keys to scalars or lists of scalars (anything else is refused, so a session
    cannot make its own state unsaveable or unreadable)."""
    if not isinstance(report, dict):
        raise ProtocolError(P.E_BAD_REQUEST, "'report' must be a map")
    P.check_shape(report, 3, 4096, 4096, "report")
    scalar = (str, int, float, bool, type(None))
    for k, v in report.items():
        if not isinstance(k, str) or len(k) > 64:
            raise ProtocolError(P.E_BAD_REQUEST, "'report' keys must be strings of at most 64 "
                                                 "characters")
        if isinstance(v, list):
            if not all(isinstance(x, scalar) for x in v):
                raise ProtocolError(P.E_BAD_REQUEST, f"'report'.{k}: a list of plain values")
        elif not isinstance(v, scalar) or (isinstance(v, int) and not -2**63 <= v < 2**64):
            raise ProtocolError(P.E_BAD_REQUEST, f"'report'.{k}: a plain value or a list of them")
    return report
