"""`corral run` without Python in the caller: corrald prepares, the launcher applies.

For `corral run [options] -- CMD` in corrald's mount namespace, native/launcher.c
asks run_prepare with its argv (and the bytes of the policy files it names, read
as the caller), and corrald does what the Python CLI would do in the caller's
process:

* the options, parsed with the CLI's own parser, and the policy from them
  (policy/fromargs.py) with the caller's cwd (read through its pinned pidfd) and
  $HOME; what needs the caller's side (a missing allow_write to create) or an
  option the launcher does not apply (--keep-caps...) is answered `unsupported`
  and the launcher hands over to the Python CLI;
* the session: registered and logged as register_session does, its cgroup
  handed over as a descriptor: the command is created in it (clone3
  CLONE_INTO_CGROUP) and becomes its leader when it reports (report_run).
  Not root, the launcher cannot create it there: corrald moves it in
  (join_child, only the preparer's own child, once) before it goes on;
* the mount view as a list of mount operations (view_ops: mountguard.apply's
  sequence, planned here from the same helpers), which the child runs in a new
  mount namespace (a user namespace's, not root);
* the Landlock ruleset (landlock.plan for the view those operations make) and
  the seccomp programs (cached per syscall list), as for `corral exec`.

Python path and this one must give the same session: tests/test_native_run.py
compares their policies, views, reports and notes."""
from __future__ import annotations

import argparse
import functools
import os
import pwd

from corral import protocol as P
from corral.bounded import Bounded
from corral.kernel import mountinfo
from corral.kernel.mountinfo import under
from corral.server.listener import WithFds

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MOUNT_ATTR_RDONLY = 0x1
_ST_TO_MS = {1: MS_RDONLY, 2: MS_NOSUID, 4: MS_NODEV, 8: MS_NOEXEC, 1024: 1024, 2048: 2048,
             4096: 1 << 21}


class Unsupported(Exception):
    """This run needs the Python CLI (the message says why)."""


def _mount(src, dst, flags, fstype=None, data=None, missing_ok=False) -> list:
    return ["mount", src or "", dst, fstype or "", flags, data or "", bool(missing_ok)]


def _setattr(path, set_=0, clr=0, recursive=False, ignore=False) -> list:
    return ["setattr", path, set_, clr, bool(recursive), bool(ignore)]


def view_ops(fs: dict | None, unix: dict | None, mask_sockets: bool) -> tuple[list, dict]:
    """(operations, what mountguard.apply would return) for this policy's view,
    planned in corrald's mount namespace (the caller's: checked by the op)."""
    from corral.client import mountguard as mg
    pins, ro = mg.plan(fs)
    socks = mg.foreign_sockets(fs, unix) if mask_sockets else {"mask": mg.denied_sockets(fs),
                                                                "skipped": []}
    if any("hard-linked" in x for x in socks["skipped"]):
        raise Unsupported("a foreign Unix socket has a hard link (the Python CLI explains)")
    masked = socks["mask"]
    roots = mg.writable_roots(fs) if fs is not None else []
    ro_view = bool(roots) and "/" not in roots
    hidden = mg.read_masks(fs)
    if not ro and not masked and not ro_view and not hidden:
        return [], {"mountguard": False, "policy": fs, "masked_sockets": [],
                    "sockets_skipped": socks["skipped"]}
    refusal = mg.refusal_file()
    if not os.path.exists(refusal):
        raise Unsupported(f"{refusal} is missing")
    ops = [_mount(None, "/", MS_REC | MS_PRIVATE)]
    if ro_view:
        before = {m.mountpoint: m for m in mountinfo.mounts(missing_ok=False)}

        def was_rw(mp: str) -> bool:
            m = before.get(mp)
            return m is not None and "ro" not in m.options.split(",")
        ops += [_mount(r, r, MS_BIND | MS_REC) for r in roots]
        ops.append(_setattr("/", set_=MOUNT_ATTR_RDONLY, recursive=True))
        for r in roots:
            home = mountinfo.mount_of(r, list(before.values()))
            if home is not None and "ro" not in home.options.split(","):
                ops.append(_setattr(r, clr=MOUNT_ATTR_RDONLY))
            ops += [_setattr(mp, clr=MOUNT_ATTR_RDONLY, ignore=True) for mp in sorted(before)
                    if mp != r and under(mp, r) and was_rw(mp)]
    ops += [_mount(d, d, MS_BIND | MS_REC) for d in pins]
    for p in ro:
        keep = 0
        st = os.statvfs(p)
        for bit, ms in _ST_TO_MS.items():
            if st.f_flag & bit:
                keep |= ms
        ops += [_mount(p, p, MS_BIND | MS_REC),
                _mount(None, p, MS_BIND | MS_REMOUNT | MS_RDONLY | keep)]
    mask = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC
    for p in hidden:
        if os.path.isdir(p):
            ops.append(_mount(mountinfo.MASK_SOURCE, p, MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                              "tmpfs", "mode=000,size=4k,nr_inodes=1"))
        else:
            ops += [_mount(refusal, p, MS_BIND), _mount(None, p, mask)]
    for p in masked:            # a socket unlinked since the dump: skipped, as apply() does
        ops += [_mount(refusal, p, MS_BIND, missing_ok=True), _mount(None, p, mask, missing_ok=True)]
    guard = {"mountguard": True, "namespace": "mount namespace", "read_only": ro, "pinned": pins,
             "read_only_view": ro_view, "writable": roots if ro_view else [], "hidden": hidden,
             "masked_sockets": masked, "sockets_skipped": socks["skipped"],
             "policy": mg._rest(fs, ro, hidden)}
    return ops, guard


class _RunParser(argparse.ArgumentParser):
    """`corral run`'s options, parsed in corrald: anything argparse would complain
    about goes to the Python CLI, which says it to the caller."""

    def error(self, message):
        raise Unsupported(f"options: {message}")

    def exit(self, status=0, message=None):
        raise Unsupported("options: the Python CLI answers this one")


# Options the launcher does not apply (capabilities kept, weaker confinement
# accepted, protected names by Landlock alone, the full report): the Python CLI.
_PYTHON_ONLY = ("keep_caps", "allow_weaker", "strict_protect", "verbose")


@functools.cache
def _run_parser() -> _RunParser:
    """The same parser as the Python CLI's `corral run` (policy/fromargs.py),
    without abbreviations or help; made once."""
    from corral.policy.fromargs import add_policy_flags, add_run_options
    ap = _RunParser(prog="corral run", add_help=False, allow_abbrev=False)
    add_policy_flags(ap)
    add_run_options(ap)
    return ap


def parse_run_argv(argv) -> tuple[argparse.Namespace, int]:
    """(options, where the command starts in argv)."""
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise P.ProtocolError(P.E_BAD_REQUEST, "'argv' must be a list of strings")
    args = _run_parser().parse_args(argv)
    cmd = list(args.cmd)
    if cmd[:1] == ["--"]:
        cmd = cmd[1:]
    at = len(argv) - len(cmd)
    if not cmd or argv[at:] != cmd:
        raise Unsupported("options: no command (the Python CLI says the usage)")
    args.cmd = cmd
    for k in _PYTHON_ONLY:
        if getattr(args, k):
            raise Unsupported(f"--{k.replace('_', '-')}: the Python CLI serves it")
    return args, at


def policy_for(args, cwd: str, home_env: str | None, uid: int, files: dict,
               environ: dict) -> tuple[dict | None, dict, list]:
    """(policy, register_session fields, notes) for these options, composed as
    the Python CLI composes them (policy/fromargs.py): the caller's cwd and homes,
    the files it named as the bytes the launcher read (as the caller), the
    environment values the options read. What needs the caller's side (an
    allow_write to create) or is wrong (the Python CLI says what) is Unsupported."""
    from corral.policy import fromargs
    from corral.policy import model as pol
    from corral.policy.paths import homes_of
    try:
        pw = pwd.getpwuid(uid).pw_dir
    except KeyError:
        pw = "/"
    caller = fromargs.Caller(cwd=cwd, homes=homes_of(home_env, pw), environ=environ)
    given = {caller.abspath(k): v for k, v in files.items()}

    def read(path: str) -> bytes:
        if path not in given:
            raise Unsupported(f"{path}: not read by the launcher (the Python CLI reads it)")
        return given[path]
    caller.read = read
    try:
        meta = fromargs.session_meta(args)
        if args.policy_name:
            return None, meta, []          # corrald resolves the name in its policies.d
        note = fromargs.default_profile(args, args.cmd[0])
        policy, notes, missing = fromargs.policy_from_args(args, caller)
    except pol.PolicyError as e:
        raise Unsupported(str(e)) from None
    if missing:
        raise Unsupported(f"allow_write {missing[0]} does not exist (the Python CLI creates it)")
    return policy, meta, ([note] if note else []) + notes


class RunOps:
    """Ops mixed into server.api.Api, beside sessionops.SessionOps."""

    def op_run_prepare(self, conn, req):
        from corral.policy.paths import one_resolution
        with one_resolution():        # the policy is composed, then normalised twice over
            return self._run_prepare(conn, req)

    def _run_prepare(self, conn, req):
        caller = self._caller(conn)
        if caller.confined:
            raise P.ProtocolError(P.E_UNSUPPORTED, "inside a session: the Python CLI registers "
                                  "nested sessions (narrowing is checked there)")
        # Not root: the command cannot be created in the session's cgroup
        # (CLONE_INTO_CGROUP needs write access to the cgroup.procs of the common
        # ancestor, the hierarchy's root), so corrald moves it in (op_join_child);
        # and its view is built in a user namespace of its own, as the Python CLI does.
        join = conn.peer.uid != 0
        if _ns(f"/proc/{conn.peer.pid}/ns/mnt") != _ns("/proc/self/ns/mnt"):
            raise P.ProtocolError(P.E_UNSUPPORTED, "the caller is in another mount namespace")
        if getattr(self.sessions, "filelsm", None) is not None:
            # Decided before anything is registered: the Python CLI's session is the only one.
            raise P.ProtocolError(P.E_UNSUPPORTED, "BPF LSM sessions: the Python CLI")
        names, files, environ = req.get("env_names") or [], req.get("files") or {}, \
            req.get("env") or {}
        if not isinstance(names, list) or not isinstance(files, dict) or \
                not isinstance(environ, dict) or \
                not all(isinstance(k, str) and isinstance(v, bytes) for k, v in files.items()):
            raise P.ProtocolError(P.E_BAD_REQUEST, "'env_names' (a list), 'files' (name: bytes), "
                                  "'env' (a map)")
        from corral.policy.fromargs import ENV_READ
        environ = {k: v for k, v in environ.items() if k in ENV_READ and isinstance(v, str)}
        cwd = conn.peer.cwd()
        try:
            args, cmd_at = parse_run_argv(req.get("argv"))
            policy, meta, notes = policy_for(args, cwd, req.get("home"), conn.peer.uid, files,
                                             environ)
        except Unsupported as e:
            raise P.ProtocolError(P.E_UNSUPPORTED, str(e)) from None
        result = self.op_register_session(
            conn, {"policy": policy, "keep_running": args.keep_running, **meta}, unmoved=True)
        s = self.sessions.by_id[result["id"]]
        try:
            fs = result["policy"].get("filesystem")
            if result["enforcement"].get("filesystem") == "bpf-lsm":
                raise Unsupported("BPF LSM sessions: the Python CLI")
            ops, guard = view_ops(fs, result["policy"].get("unix"),
                                  result["enforcement"].get("unix_peers") != "bpf-lsm")
            if join and guard["mountguard"]:
                guard["namespace"] = "user+mount namespace"     # mountguard._enter_namespace
            watched = set(result["enforcement"].get("watched_names") or []) \
                if guard["mountguard"] and guard["policy"] else set()
            from corral.client.enter import without_watched
            lpol = without_watched(guard["policy"], watched)   # deny_write and deny_read, as enter.py
            ruleset, lflags, rules = _ruleset(lpol, guard)
        except (Unsupported, OSError) as e:
            self.end_session(s, f"native run not prepared ({e}); the Python CLI runs it",
                             reason="not started")
            raise P.ProtocolError(P.E_UNSUPPORTED, str(e)) from None
        from corral.server.sessionops import _removed_names
        passed = tuple((s.policy.get("env") or {}).get("pass") or [])
        env = {"CORRAL_SESSION": s.id}
        from corral.client.mountguard import git_template
        if "GIT_TEMPLATE_DIR" not in names and os.path.isdir(git_template()):
            env["GIT_TEMPLATE_DIR"] = git_template()
        git = result.get("git") or {}
        if git.get("config"):   # its remote goes through corrald's git gateway (enter.exec_command)
            env["GIT_CONFIG_GLOBAL"] = git["config"]
            if git.get("push"):
                notes.append(f"corral: git: {git.get('remote')} goes through corrald's git "
                             f"gateway; pushes may update {git.get('push')} only")
        report = {}                         # the view keys below, only with a view (as enter.confine)
        report.update({"watched_names": sorted(watched), "landlock_rules": rules,
                       "landlock_log_flags": lflags})
        if guard["sockets_skipped"]:
            report["sockets_not_masked"] = guard["sockets_skipped"]
        from corral.client.enter import frozen_dirs, frozen_note
        frozen = frozen_dirs(lpol)
        if frozen:
            report["frozen_dirs"] = frozen
            notes.append(frozen_note(frozen))
        unreadable = frozen_dirs(lpol, "deny_read")
        if unreadable:
            report["read_frozen_dirs"] = unreadable
            notes.append(frozen_note(unreadable, read=True))
        if guard["mountguard"]:
            report.update({"read_only_mounts": guard["read_only"],
                           "read_only_view": guard["read_only_view"],
                           "writable_mounts": guard["writable"],
                           "masked_sockets": guard["masked_sockets"],
                           "hidden_paths": guard["hidden"], "mount_namespace": guard["namespace"]})
        self._planned_reports()[s.id] = report
        out = {"session": s.id, "notes": notes, "cmd_at": cmd_at, "quiet": bool(args.quiet),
               "keep_running": bool(args.keep_running), "mount_ops": ops, "report": report,
               "env_remove": _removed_names(tuple(map(str, names)), passed), "env_set": env,
               "seccomp": self._seccomp_programs(s.policy["syscalls"]["deny"]),
               "landlock_flags": lflags, "has": [True, True, False], "join": join}
        if join:
            self.expect_join(conn, s, "run")
        try:
            fds = [os.open(s.cgroup, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), ruleset,
                   os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)]
            conn.peer.check()
        except BaseException:
            os.close(ruleset)
            raise
        return WithFds(out, fds)

    def op_join_child(self, conn, req):
        """A non-root native run's or exec's command, made by the launcher outside
        the session, moved in by corrald before it reports (sessions.move_in, as
        register_session moves a Python caller). Only the process that prepared
        it (run_prepare, exec_prepare; the same process: its pin still alive),
        only its own child (PPid; a pid its parent has not reaped is not reused),
        once."""
        from corral.server.peer import Peer, PeerGone
        sid, pid = req.get("session"), req.get("pid")
        entry = self._joins().pop(conn.peer.pid, None)
        if entry is None or entry[1] != sid or not isinstance(pid, int) or pid <= 0:
            if entry is not None:
                os.close(entry[0])
            self._refuse(conn, "move a process into a session it did not prepare", sid)
        pinned = entry[0]
        s = self.sessions.by_id.get(sid)
        child = None
        try:
            same = Peer(pid=conn.peer.pid, uid=conn.peer.uid, gid=conn.peer.gid, pidfd=pinned)
            waits = s is not None and (s.leader_alive() if entry[2] == "exec"
                                       else s.leader_fd < 0 and s.pending_until)
            if not same.alive() or not waits:
                self._refuse(conn, "move a process into a session it did not prepare", sid)
            try:
                child = Peer(pid=pid, uid=conn.peer.uid, gid=conn.peer.gid,
                             pidfd=os.pidfd_open(pid))
            except OSError:
                raise P.ProtocolError(P.E_NOT_FOUND, f"pid {pid} is gone") from None
            st = child.proc_status()
            # Its own child, with the owner's ids throughout: not a set-id program
            # it started (real uid the owner's, effective not), which a session's
            # rules and end would then bind.
            if st.get("PPid") != str(conn.peer.pid) or \
                    (st.get("Uid") or "").split() != [str(s.owner_uid)] * 4 or \
                    len(set((st.get("Gid") or "").split())) != 1:
                self._refuse(conn, f"move pid {pid} (not its own child) into a session", sid)
            try:
                self.sessions.move_in(s, child)
            except PeerGone as e:
                raise P.ProtocolError(P.E_NOT_FOUND, str(e)) from None
        finally:
            os.close(pinned)
            if child is not None:
                child.close()
        return {"session": sid}

    def expect_join(self, conn, s, kind: str) -> None:
        """The launcher on `conn` will ask to move its child into `s` (join_child)."""
        old = self._joins().pop(conn.peer.pid, None)
        if old is not None:
            os.close(old[0])
        self._joins()[conn.peer.pid] = (os.dup(conn.peer.pidfd), s.id, kind)

    def _joins(self) -> dict:
        """Launcher pid -> (its pidfd, session, "run"|"exec") for the commands that
        await a join."""
        if not hasattr(self, "_run_joins"):
            self._run_joins = {}
        for pid in [p for p, e in self._run_joins.items() if e[1] not in self.sessions.by_id]:
            os.close(self._run_joins.pop(pid)[0])
        return self._run_joins

    def op_report_run(self, conn, req):
        """The command of a native `corral run`, confined, before exec: it becomes
        the session's leader, then reports as `corral run` does (report_confinement:
        checked against /proc, logged)."""
        caller = self._caller(conn)
        s = caller.session
        if s is None or req.get("session") != s.id or s.leader_fd >= 0 or not s.pending_until:
            self._refuse(conn, "report as a native run's command", req.get("session"))
        planned = self._planned_reports().pop(s.id, {})
        mine = req.get("report")
        if not isinstance(mine, dict):
            raise P.ProtocolError(P.E_BAD_REQUEST, "'report' must be a map")
        s.leader_fd = os.dup(conn.peer.pidfd)
        s.leader_pid = conn.peer.pid
        s.pending_until = 0.0              # saved by report_confinement, below
        # What corrald planned (the view, the rules) with what the command did.
        return self.op_report_confinement(conn, dict(req, report={**planned, **mine}))

    def _planned_reports(self) -> dict:
        if not hasattr(self, "_run_reports"):
            self._run_reports = {}
        for sid in [k for k in self._run_reports if k not in self.sessions.by_id]:
            del self._run_reports[sid]
        return self._run_reports


def _ruleset(fs: dict | None, guard: dict) -> tuple[int, int, int]:
    """(ruleset fd, restrict_self flags, rules) for the view `guard` describes."""
    from corral.client import landlock
    v = landlock.abi()
    if v <= 0:
        raise Unsupported("no Landlock here")
    roots = guard.get("writable") or []
    ro_view = guard.get("read_only_view")

    def read_only_here(p: str) -> bool:
        """corral_paths' question, for the view the operations make: read-only
        there (bound read-only, or outside every writable root)."""
        if not guard.get("mountguard"):
            return False
        if any(under(p, r) for r in guard.get("read_only") or []):
            return True
        return bool(ro_view) and not any(under(p, r) for r in roots)
    pl = _cached_plan(fs, guard, read_only_here)
    fd, stats = landlock.build_ruleset(pl, v)
    return fd, landlock.restrict_flags(v), stats["rules"]


# Landlock plans by (file policy, view, mount table): walking the tree for the
# complement is most of a plan's cost and gives the same rules while the
# directories it listed are unchanged (landlock.dir_stamp). Bounded; a plan is
# kept only if those directories had settled when it was made (50 ms, 2 s on a
# filesystem of whole-second times: landlock._settle_ns). A plan that is stale
# anyway only lacks rules for entries made since: they are refused, never
# granted (a rule path is opened afresh for every ruleset).
_PLANS = Bounded(64)


def _cached_plan(fs: dict | None, guard: dict, read_only_here):
    import json
    from corral.client import landlock
    try:
        with open("/proc/self/mountinfo") as fh:
            table = fh.read()
    except OSError:
        return landlock.plan(fs, read_only_here=read_only_here)
    key = json.dumps([fs, guard.get("mountguard"), guard.get("read_only"), guard.get("writable"),
                      guard.get("read_only_view"), table], sort_keys=True, default=str)
    hit = _PLANS.get(key)
    if hit is not None and landlock.dir_stamp(hit[1].walked) == hit[0]:
        return hit[1]
    pl = landlock.plan(fs, read_only_here=read_only_here)
    stamp = landlock.dir_stamp(pl.walked, settle=True)
    _PLANS.pop(key, None)
    if stamp is not None:
        _PLANS.put(key, (stamp, pl))
    return pl


def _ns(path: str) -> int:
    return os.stat(path).st_ino
