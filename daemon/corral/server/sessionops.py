"""Many commands in one session: `corral session start` and `corral exec`.

`corral session start` registers a session whose leader is a holder process: it
builds the session's mount view, confines itself exactly as `corral run` would,
reports that (report_confinement), then hands corrald what the session's next
commands reuse (session_ready): its Landlock ruleset (taken with pidfd_getfd
from the leader's pidfd) and its mount namespace. It then waits, holding the
session open, until `corral session stop` or its timeout; when it exits the
session ends like any other whose leader is gone.

`corral exec ID -- CMD` comes two ways:
* the native launcher (native/launcher.c) asks exec_prepare and gets the
  session's cgroup (for clone3 CLONE_INTO_CGROUP: no migration wait), ruleset
  and mount namespace as descriptors plus the seccomp programs (compiled here
  once per syscall list, libseccomp's export), then confines the child;
* the Python path (any caller; the launcher hands over to it) asks
  join_session, is moved into the cgroup and builds its own view.
Either way the command reports from inside its confinement (report_exec) and
corrald checks it against /proc, as for `corral run`.

Only the session's owner (same uid, outside any session) may exec into it, or
a process already inside it (already confined: it just execs)."""
from __future__ import annotations

import ctypes
import functools
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from corral import protocol as P
from corral.bounded import Bounded
from corral.kernel import cgroups
from corral.server.listener import WithFds
from corral.server.peer import PeerGone

log = logging.getLogger("corral.sessionops")

_SYS_PIDFD_GETFD = 438
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
MAX_ENV_NAMES = 4096


@dataclass
class Prepared:
    """What a `corral session start` session's commands reuse (fds owned here)."""
    ruleset_fd: int = -1                 # Landlock ruleset built in the session's view
    mntns_fd: int = -1                   # the holder's mount namespace (-1: no view)
    landlock_flags: int = 0              # landlock_restrict_self flags the holder used
    options: dict = field(default_factory=dict)   # allow_weaker, strict_protect

    def close(self) -> None:
        for fd in (self.ruleset_fd, self.mntns_fd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.ruleset_fd = self.mntns_fd = -1


def _pidfd_getfd(pidfd: int, fd: int) -> int:
    r = _libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0)
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"pidfd_getfd: {os.strerror(e)}")
    return int(r)


@functools.lru_cache(maxsize=256)
def _removed_names(names: tuple, passed: tuple) -> list:
    """The credential-looking names among an environment's (policy.env.strip),
    remembered: a shell sends the same names with every command."""
    from corral.policy.env import strip
    return strip(dict.fromkeys(names, ""), passed)[1]


def _ns_ino(path: str) -> int:
    return os.stat(path).st_ino


def _view_userns(prep: "Prepared", s) -> int:
    """The user namespace that owns a user's session view (its holder's), or -1
    (no view, or one in corrald's own user namespace). Read while the holder
    lives: after, the pid may name another process."""
    if prep.mntns_fd < 0:
        return -1
    fd = os.open(f"/proc/{s.leader_pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    alive = s.leader_alive()
    if not alive or os.fstat(fd).st_ino == _ns_ino("/proc/self/ns/user"):
        os.close(fd)
        if not alive:
            raise P.ProtocolError(P.E_NOT_FOUND, f"session {s.id} ended (its holder is gone)")
        return -1
    return fd


class SessionOps:
    """Ops mixed into server.api.Api (which provides _caller, _refuse, audit...)."""

    _prepared: dict
    _seccomp_cache: dict

    def _prep_table(self) -> dict:
        """The prepared sessions, pruned of ended ones (their fds closed)."""
        if not hasattr(self, "_prepared"):
            self._prepared, self._seccomp_cache = {}, Bounded(256)
        for sid in [k for k in self._prepared if k not in self.sessions.by_id]:
            self._prepared.pop(sid).close()
        return self._prepared

    def _exec_target(self, conn, req, caller, prepared: bool = True):
        """(session, inside) for an exec: the caller's own session, or one its uid
        owns while the caller is in no session. Anything else is refused.
        `prepared`: the native launcher needs what session_ready handed over;
        the Python path builds its own (so it also serves sessions a restarted
        corrald re-adopted, whose prepared state is gone)."""
        sid = req.get("session")
        if not isinstance(sid, str):
            raise P.ProtocolError(P.E_BAD_REQUEST, "request needs 'session': a session id")
        if caller.confined and caller.session is None:
            self._refuse(conn, "exec from a corral cgroup with no live session", sid)
        if caller.session is not None:
            if caller.session.id != sid:
                self._refuse(conn, "exec into another session", sid)
            return caller.session, True
        s = self.sessions.by_id.get(sid)
        if s is None:
            raise P.ProtocolError(P.E_NOT_FOUND, f"no session {sid!r}: it ended or was stopped "
                                  "(`corral ps` lists the live ones; `corral session start` "
                                  "makes a new one)")
        if conn.peer.uid != s.owner_uid:
            self._refuse(conn, "exec into another user's session", sid,
                         detail=f"session {sid} belongs to uid {s.owner_uid}")
        if prepared and sid not in self._prep_table():
            raise P.ProtocolError(P.E_UNSUPPORTED, f"session {sid} takes no commands: it was "
                                  "not made by `corral session start`, or is still starting")
        return s, False

    # -- the holder ------------------------------------------------------------
    def op_session_ready(self, conn, req):
        """The holder of a `corral session start` session, confined and reported,
        hands over its Landlock ruleset (by fd number: taken through the leader's
        pidfd) and its mount namespace. Once per session, from its leader only,
        before any command can have run in it."""
        caller = self._caller(conn)
        s = caller.session
        if s is None or conn.peer.pid != s.leader_pid or not s.leader_alive() \
                or "client" not in s.enforcement:
            self._refuse(conn, "declare a session ready (only its confined leader may)",
                         getattr(s, "id", None))
        table = self._prep_table()
        if s.id in table:
            raise P.ProtocolError(P.E_FORBIDDEN, f"session {s.id} was already declared ready")
        fdnum = req.get("ruleset_fd", -1)
        opts = req.get("options") or {}
        if not isinstance(fdnum, int) or isinstance(fdnum, bool) or not isinstance(opts, dict):
            raise P.ProtocolError(P.E_BAD_REQUEST, "'ruleset_fd' must be an integer, "
                                  "'options' a map")
        prep = Prepared(options={k: bool(opts.get(k)) for k in ("allow_weaker", "strict_protect")})
        report = s.enforcement["client"]
        try:
            if report.get("landlock"):
                prep.ruleset_fd = _pidfd_getfd(s.leader_fd, fdnum)
                kind = os.readlink(f"/proc/self/fd/{prep.ruleset_fd}")
                if kind not in ("anon_inode:[landlock-ruleset]", "anon_inode:landlock-ruleset"):
                    raise P.ProtocolError(P.E_BAD_REQUEST, f"fd {fdnum} of the leader is "
                                          f"{kind}, not a Landlock ruleset")
                prep.landlock_flags = int(report.get("landlock_log_flags") or 0)
            fd = os.open(f"/proc/{s.leader_pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
            conn.peer.check()               # the pid still named the leader while opened
            if os.fstat(fd).st_ino == _ns_ino("/proc/self/ns/mnt"):
                os.close(fd)                # no view of its own (--allow-weaker)
            else:
                prep.mntns_fd = fd
        except BaseException:
            prep.close()
            raise
        table[s.id] = prep
        return {"session": s.id, "mount_view": prep.mntns_fd >= 0,
                "landlock": prep.ruleset_fd >= 0}

    # -- the Python path -------------------------------------------------------
    def op_join_session(self, conn, req):
        """Move the caller into a prepared session's cgroup (the Python `corral
        exec`; it then builds its own view and confines itself)."""
        caller = self._caller(conn)
        s, inside = self._exec_target(conn, req, caller, prepared=False)
        prep = self._prep_table().get(s.id)
        out = {"session": s.public(), "inside": inside,
               "options": dict(prep.options) if prep else {}}
        if s.leader_alive() and (s.enforcement.get("client") or {}).get("mount_namespace"):
            # Where the session's view is (its leader's: the one corrald keeps up
            # to date), and which namespace it must be; also after a restart.
            try:
                ino = _ns_ino(f"/proc/{s.leader_pid}/ns/mnt")
            except OSError:
                ino = None
            if ino is not None and s.leader_alive() and ino != _ns_ino("/proc/self/ns/mnt"):
                out["view"] = {"pid": s.leader_pid, "ino": ino}
        if inside:
            return out
        _, origin = conn.peer.cgroup()
        cgroups.move(conn.peer.pid, Path(s.cgroup))
        if not conn.peer.alive():
            # As in SessionTable.admit: the number may name another process now.
            for pid in cgroups.pids(Path(s.cgroup)):
                if pid == conn.peer.pid:
                    try:
                        cgroups.move(pid, cgroups.path_of(origin))
                    except OSError as e:
                        log.warning("cannot move pid %d back out of %s: %s", pid, s.id, e)
            raise PeerGone(f"pid {conn.peer.pid} exited while it was being moved into {s.id}")
        return out

    # -- the native launcher -----------------------------------------------------
    def op_exec_prepare(self, conn, req):
        """Everything the launcher applies, prepared: descriptors (cgroup for
        clone3, Landlock ruleset, mount namespace) to this connection's peer,
        the seccomp programs, the environment names to remove and to set."""
        caller = self._caller(conn)
        s, inside = self._exec_target(conn, req, caller)
        names = req.get("env_names") or []
        if not isinstance(names, list) or len(names) > MAX_ENV_NAMES or \
                not all(isinstance(n, str) for n in names):
            raise P.ProtocolError(P.E_BAD_REQUEST, f"'env_names': a list of at most "
                                  f"{MAX_ENV_NAMES} strings")
        remove = _removed_names(tuple(names), tuple((s.policy.get("env") or {}).get("pass") or []))
        env = {"CORRAL_SESSION": s.id}
        from corral.client.mountguard import git_template
        if "GIT_TEMPLATE_DIR" not in names and os.path.isdir(git_template()):
            env["GIT_TEMPLATE_DIR"] = git_template()
        out = {"session": s.id, "inside": inside, "env_remove": remove, "env_set": env}
        if inside:
            return out          # already confined as the session is: it only execs
        if _ns_ino(f"/proc/{conn.peer.pid}/ns/mnt") != _ns_ino("/proc/self/ns/mnt"):
            conn.peer.check()
            raise P.ProtocolError(P.E_UNSUPPORTED, "the caller is in another mount namespace "
                                  "than corrald: the Python path builds its view from there")
        prep = self._prep_table()[s.id]
        out["seccomp"] = self._seccomp_programs(s.policy["syscalls"]["deny"])
        out["landlock_flags"] = prep.landlock_flags
        # Not root: CLONE_INTO_CGROUP needs write access to the hierarchy root's
        # cgroup.procs, so corrald moves the child in (join_child); the view is
        # in the user namespace the holder made for it (the user's to enter).
        join = conn.peer.uid != 0
        out["fds"] = ["cgroup", "ruleset", "mntns"] + (["userns"] if join else [])
        out["join"] = join
        fds = []
        userns = -1
        try:
            fds.append(os.open(s.cgroup, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
            userns = _view_userns(prep, s) if join else -1
            for fd in (prep.ruleset_fd, prep.mntns_fd) + ((userns,) if join else ()):
                # -1 stands for "none": /dev/null in its place keeps the order.
                fds.append(os.dup(fd) if fd >= 0 else os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
            out["has"] = [True, prep.ruleset_fd >= 0, prep.mntns_fd >= 0] + \
                ([userns >= 0] if join else [])
            conn.peer.check()       # to the process that asked, while it lives
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        finally:
            if userns >= 0:
                os.close(userns)
        if join:
            self.expect_join(conn, s, "exec")
        return WithFds(out, fds)

    def _seccomp_programs(self, deny) -> list:
        """The session's seccomp filters as BPF (flags, bytes), compiled once per
        syscall list with the same code `corral run` loads (confine.build_seccomp)."""
        key = tuple(deny or ())
        self._prep_table()
        progs = self._seccomp_cache.get(key)
        if progs is None:
            from corral.client import confine
            filt = confine.build_seccomp(list(key), log=True)
            try:
                progs = [[flags, prog] for flags, prog in filt.export_bpf()]
            finally:
                filt.release()
            self._seccomp_cache.put(key, progs)
        return progs

    # -- both paths --------------------------------------------------------------
    def op_report_exec(self, conn, req):
        """A `corral exec` command, confined, before exec: what /proc shows is
        checked (seccomp, no_new_privs, no capabilities), the exec is logged, and
        what is missing is answered (the launcher then refuses to exec)."""
        caller = self._caller(conn)
        s = caller.session
        if s is None or req.get("session") != s.id:
            self._refuse(conn, "report an exec outside its own session", req.get("session"))
        from corral.server.api import _plain_report
        from corral.server import limits as L
        report = _plain_report(req.get("report"))
        if len(P.encode(report)) > L.MAX_REPORT_BYTES:
            raise P.ProtocolError(P.E_LIMIT, f"'report' exceeds {L.MAX_REPORT_BYTES} bytes")
        status = conn.peer.proc_status()
        checked = {"seccomp": status.get("Seccomp") == "2",
                   "no_new_privs": status.get("NoNewPrivs") == "1",
                   "caps_dropped": int(status.get("CapEff", "1"), 16) == 0}
        missing = [k for k, v in checked.items() if not v]
        # kind "exec", not "session": written at once but fsynced with the kernel
        # events (within 1 s), not per command, which would cost a disk flush each.
        self.audit({"kind": "exec", "op": "exec", "verdict": "warn" if missing else "info",
                    "session": s.id, "pid": conn.peer.pid, "uid": conn.peer.uid,
                    "target": " ".join(map(str, report.get("command") or []))[:512],
                    "rule": "", "report": dict(report, kernel_checked=checked)}, must=False)
        return {"kernel_checked": checked, "missing": missing, "time": time.time()}

