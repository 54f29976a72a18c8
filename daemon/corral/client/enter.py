"""Entering a registered session: the mount view, confinement, the report, exec.

The same sequence for `corral run` (a new session, the caller its leader),
`corral exec` (a command in a session `corral session start` made) and the
holder process `corral session start` leaves in its session. Each step fails
closed: the command never runs unconfined."""
from __future__ import annotations

import json
import os
import signal
import sys


def die(msg: str, code: int = 1):
    print(f"corral: {msg}", file=sys.stderr)
    sys.exit(code)


def confine(session: dict, *, allow_weaker: bool = False, strict_protect: bool = False,
            keep_caps: bool = False, keep_fds: tuple[int, ...] = (),
            export: dict | None = None, join_view: tuple[str, int] | None = None) -> dict:
    """Build the session's mount view and confine this process (Landlock,
    seccomp, capabilities, no_new_privs, inherited descriptors). Returns the
    report for corrald. Exits (status 1) if anything cannot be applied.
    `export`: see confine.apply (what the session's next processes reuse).
    `join_view`: (namespace path, inode) of the session's existing view, entered
    instead of building one (mountguard.join)."""
    try:
        from corral.client import confine as cf, landlock
    except ImportError as e:
        die(f"{e}", 1)
    if session["enforcement"].get("filesystem") != "bpf-lsm":
        try:
            landlock.file_policy_decision(session["policy"].get("filesystem"), allow_weaker)
        except landlock.LandlockUnavailable as e:
            die(str(e), 1)
    try:
        from corral.client import mountguard
        fs = session["policy"].get("filesystem")
        if session["enforcement"].get("filesystem") == "bpf-lsm":
            # The kernel decides on the daemon's maps (live, exact); Landlock
            # then only keeps the always-on protections, or a live widening
            # would be blocked by rules frozen at exec.
            fs = None
        try:
            if join_view is not None:
                guard = mountguard.join(fs, *join_view)
            else:
                guard = mountguard.apply(fs, session["policy"].get("unix"),
                                         mask_sockets=session["enforcement"].get("unix_peers")
                                         != "bpf-lsm", allow_weaker=allow_weaker)
        except (mountguard.MountGuardError, OSError) as e:
            if not allow_weaker or "hard link" in str(e) or join_view is not None:
                raise
            # Asked for: start without the view, and say what that leaves open.
            print(f"corral: warning: no mount view ({e}); --allow-weaker: Unix sockets of "
                  "processes outside the session stay reachable and metadata outside "
                  "allow_write is not protected", file=sys.stderr)
            guard = {"mountguard": False, "policy": fs, "masked_sockets": [],
                     "sockets_skipped": [], "weaker": str(e)}
        # Protected names that do not exist yet and that corrald watches (it
        # quarantines them when the session makes them, makes them read-only --
        # or hides them, for deny_read -- in this mount view when someone else
        # does): Landlock need not refuse new entries in their parent for them.
        # --strict-protect keeps that freeze.
        watched = set(session["enforcement"].get("watched_names") or []) \
            if guard["mountguard"] and guard["policy"] and not strict_protect else set()
        guard["policy"] = without_watched(guard["policy"], watched)
        report = cf.apply(guard["policy"], session["policy"]["syscalls"]["deny"],
                          keep_caps=keep_caps, allow_weaker=allow_weaker, seccomp_log=True,
                          keep_fds=keep_fds, export=export)
        report["watched_names"] = sorted(watched)
        if guard["mountguard"]:
            report["read_only_mounts"] = guard["read_only"]
            report["read_only_view"] = guard["read_only_view"]
            report["writable_mounts"] = guard["writable"]
            report["masked_sockets"] = guard["masked_sockets"]
            report["hidden_paths"] = guard["hidden"]
            report["mount_namespace"] = guard["namespace"]
        if guard.get("weaker"):
            report["mount_view_missing"] = guard["weaker"]
        if guard["sockets_skipped"]:
            report["sockets_not_masked"] = guard["sockets_skipped"]
        frozen = frozen_dirs(guard["policy"])
        if frozen and report.get("landlock"):
            report["frozen_dirs"] = frozen
        unreadable = frozen_dirs(guard["policy"], "deny_read")
        if unreadable and report.get("landlock"):
            report["read_frozen_dirs"] = unreadable
    except Exception as e:
        # Fail closed: the command never runs unconfined (and a session whose
        # only process we are ends when we exit).
        die(f"confinement failed, command not started: {e}")
    return report


def send_report(op: str, sid: str, report: dict, verbose: bool = False,
                enforcement: dict | None = None):
    """Tell corrald what was installed, from inside the confinement (it checks
    what /proc shows). `report_confinement` once per session, `report_exec`
    once per `corral exec` command. Returns corrald's answer (None if it could
    not be told: a warning)."""
    from corral.client.connection import Client, CorralError
    try:
        with Client() as c:
            verified = c.call(op, session=sid, report=report)
    except CorralError as e:
        verified = None
        print(f"corral: warning: could not report confinement to corrald: {e.message}",
              file=sys.stderr)
    if verbose:
        print(f"corral: session {sid}: {json.dumps(enforcement)} {json.dumps(verified)}",
              file=sys.stderr)
    if report.get("frozen_dirs"):
        print(frozen_note(report["frozen_dirs"]), file=sys.stderr)
    if report.get("read_frozen_dirs"):
        print(frozen_note(report["read_frozen_dirs"], read=True), file=sys.stderr)
    return verified


def frozen_note(frozen: list[str], read: bool = False) -> str:
    """The line that says where Landlock's complement refuses new entries
    (`read`: refuses reading them) (also sent by corrald for the native `corral run`)."""
    if read:
        return ("corral: note: denied reads of paths that do not exist yet can only be "
                "guarded by Landlock by refusing to read new entries directly in: "
                + ", ".join(frozen) + " (files made there in the session cannot be read "
                "back; see `corral doctor`, protected names)")
    return ("corral: note: protected paths that do not exist yet can only be guarded by "
            "Landlock by refusing new entries directly in: " + ", ".join(frozen) +
            " (create them before the session, or see `corral policy show mandatory`)")


def without_watched(fs: dict | None, watched: set) -> dict | None:
    """The file policy Landlock still enforces once corrald watches the names
    in `watched` (covered, namewatch.covers: in deny_write, or in deny_read,
    or both: a watched name is covered for every list it is in)."""
    if not fs or not watched:
        return fs
    return dict(fs, **{k: [p for p in fs.get(k) or [] if p not in watched]
                       for k in ("deny_write", "deny_read")})


def exec_command(session: dict, cmd: list[str], verbose: bool = False):
    """The session's environment (credential-looking names removed, the git
    template, CORRAL_SESSION), default signal dispositions, then exec. Never
    returns."""
    from corral.policy.env import strip
    env, removed = strip(dict(os.environ), (session["policy"].get("env") or {}).get("pass") or [])
    if removed and verbose:
        print("corral: removed from the environment (credential-looking names; pass one with "
              "--pass-env NAME): " + ", ".join(removed), file=sys.stderr)
    os.environ.clear()
    os.environ.update(env)
    if "GIT_TEMPLATE_DIR" not in os.environ:
        from corral.client.mountguard import git_template
        if os.path.isdir(git_template()):
            os.environ["GIT_TEMPLATE_DIR"] = git_template()   # git init: no .git/hooks
    os.environ["CORRAL_SESSION"] = session["id"]
    git = session.get("git") or {}
    if git.get("config"):       # its remote goes through corrald's git gateway (not ~/.gitconfig)
        os.environ["GIT_CONFIG_GLOBAL"] = git["config"]
        if git.get("push"):
            print(f"corral: git: {git.get('remote')} goes through corrald's git gateway; pushes "
                  f"may update {git.get('push')} only", file=sys.stderr)
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):    # Python ignores them; the command must not
        signal.signal(sig, signal.SIG_DFL)
    try:
        os.execvp(cmd[0], cmd)
    except OSError as e:
        die(f"{cmd[0]}: {e.strerror}", 127)


def frozen_dirs(fs: dict | None, key: str = "deny_write") -> list[str]:
    """Directories where Landlock's complement refuses new entries: for each
    `key` path that does not exist yet inside a writable tree, its nearest
    existing ancestor and every directory above it up to that tree's root (the
    complement withholds "make" rights -- for deny_read, read rights -- on each
    of them). Outside the writable trees the session creates nothing, so
    nothing of its own is lost there. A deny_read path still in the list that
    exists (not hidden by the view: an allow_read exception inside) freezes
    reads in its parent the same way."""
    from corral.kernel.mountinfo import under
    fs = fs or {}
    roots = fs.get("allow_write") or []
    out: list[str] = []
    for p in fs.get(key) or []:
        if key == "deny_write" and os.path.lexists(p):
            continue
        inside = [r for r in roots if under(p, r) and p != r]
        if not inside:
            continue
        top = min(inside, key=len)
        d = os.path.dirname(p)
        while d != "/" and not os.path.isdir(d):
            d = os.path.dirname(d)
        while under(d, top):
            if d not in out:
                out.append(d)
            if d == top:
                break
            d = os.path.dirname(d)
    return out
