"""`corral`: run commands in sandboxes, inspect sessions, read the audit log."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from corral.policy import model as pol
from corral.client.connection import Client, CorralError, DaemonNotRunning

EXIT_USAGE = 2
EXIT_NOT_FOUND = 127


def die(msg: str, code: int = 1):
    print(f"corral: {msg}", file=sys.stderr)
    sys.exit(code)


# -- policy from files and flags (policy/fromargs.py: shared with corrald) ------
from corral.policy.fromargs import add_policy_flags  # noqa: E402  (sessioncli takes it from here)


def policy_from_args(args) -> dict:
    """The policy the flags and files describe (policy/fromargs.py), its notes on
    stderr, and the allow_write paths that do not exist created as the caller."""
    from corral.policy import fromargs
    from corral.policy.paths import caller_homes
    caller = fromargs.Caller(cwd=os.getcwd(), homes=caller_homes(),   # "~": $HOME and passwd
                             environ=dict(os.environ))
    out, notes, missing = fromargs.policy_from_args(args, caller)
    for n in notes:
        print(n, file=sys.stderr)
    _create_missing_writable(missing)
    return out


def _create_missing_writable(paths: list[str]) -> None:
    """--allow-write of a path that does not exist grants nothing (a rule needs
    an object): create it, as the caller, and say so."""
    for p in paths:
        if os.path.lexists(p):
            continue
        # A name with a suffix (~/.claude.json, notes.txt) is a file, others a
        # directory (~/.claude, out/): the rule needs the object the agent expects.
        as_file = bool(os.path.splitext(os.path.basename(p))[1])
        try:
            if as_file:
                os.makedirs(os.path.dirname(p), exist_ok=True)
                fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
                if p.endswith(".json"):
                    os.write(fd, b"{}\n")    # an empty file is not JSON (Claude Code refuses it)
                os.close(fd)
            else:
                os.makedirs(p, exist_ok=True)
        except OSError as e:
            raise pol.PolicyError(f"allow_write {p} does not exist and cannot be created: "
                                  f"{e.strerror}") from None
        print(f"corral: note: created {p} as an empty {'file' if as_file else 'directory'} "
              f"{'({}) ' if p.endswith('.json') else ''}"
              "(allow_write names it; it did not exist)", file=sys.stderr)


# -- commands -------------------------------------------------------------------
def _profile_from_command(args) -> None:
    """No policy option: the command's profile, else agent (policy/fromargs.py); one line says so."""
    from corral.policy.fromargs import default_profile
    note = default_profile(args, args.cmd[0])
    if note:
        print(note, file=sys.stderr)


def _session_meta(args) -> dict:
    from corral.policy.fromargs import session_meta
    try:
        return session_meta(args)
    except pol.PolicyError as e:
        die(str(e), EXIT_USAGE)


def cmd_run(args) -> int:
    if not args.cmd:
        die("usage: corral run [options] -- CMD [ARGS...]", EXIT_USAGE)
    meta = _session_meta(args)
    if args.policy_name:
        policy = None           # corrald resolves the name in its policies.d
    else:
        _profile_from_command(args)
        try:
            policy = policy_from_args(args)
        except (pol.PolicyError, OSError) as e:
            die(f"bad policy: {e}", EXIT_USAGE)
    # The parent waits outside the session and ends it when the command exits
    # (client/supervise.py); this child goes on: it becomes the session's leader.
    from corral.client import enter, supervise
    report_session = supervise.start(keep_running=args.keep_running, quiet=args.quiet)
    try:
        c = Client()
        session = c.call("register_session", policy=policy, keep_running=args.keep_running,
                         **meta)
    except DaemonNotRunning as e:
        die(e.message)
    except CorralError as e:
        die(f"cannot start session: {e.message}")
    c.close()
    sid = session["id"]
    report_session(sid)         # before confinement closes inherited descriptors
    # Mount view, Landlock, seccomp, caps, fds (client/enter.py: shared with corral exec).
    report = enter.confine(session, allow_weaker=args.allow_weaker,
                           strict_protect=args.strict_protect, keep_caps=args.keep_caps)
    # Reported from inside the confinement; the daemon checks it against /proc.
    enter.send_report("report_confinement", sid, report, args.verbose, session["enforcement"])
    enter.exec_command(session, args.cmd, args.verbose)
    return 0


def _client() -> Client:
    try:
        return Client()
    except DaemonNotRunning as e:
        die(e.message)


def cmd_ps(args) -> int:
    with _client() as c:
        sessions = c.call("list_sessions")
    if args.json:
        for s in sessions:
            print(json.dumps(s))
        return 0
    print(f"{'SESSION':10} {'UID':>5} {'AGE':>7} {'LEADER':>8} {'KEEP':4} {'PIDS':16} POLICY")
    for s in sessions:
        age = f"{time.time() - s['created']:.0f}s"
        pids = ",".join(map(str, s["pids"][:4])) + ("…" if len(s["pids"]) > 4 else "")
        # A keep-running session outlives its command: "exited" is its leader.
        leader = str(s["leader_pid"]) if s.get("leader_alive") else "exited"
        keep = "yes" if s.get("keep_running") else "-"
        pol_desc = []
        p = s["policy"]
        if p.get("network") is not None:
            n = p["network"]
            pol_desc.append(f"net allow={n['allow'] + n['allow_domains']} deny={n['deny'] + n['deny_domains']}")
        if p.get("filesystem") is not None:
            f = p["filesystem"]
            pol_desc.append(f"fs write={f['allow_write']} deny_read={len(f['deny_read'])} paths")
        print(f"{s['id']:10} {s['owner_uid']:>5} {age:>7} {leader:>8} {keep:4} {pids:16} "
              f"{'; '.join(pol_desc) or 'unrestricted'}")
    return 0


def cmd_end(args) -> int:
    with _client() as c:
        try:
            res = c.call("end_session", session=args.session)
        except CorralError as e:
            die(e.message)
    n = res.get("killed", 0) if isinstance(res, dict) else 0
    msg = f"session {args.session} ended: {n} process{'' if n == 1 else 'es'} killed"
    left = res.get("remaining", 0) if isinstance(res, dict) else 0
    if left:
        msg += f" ({left} still exiting)"
    print(msg)
    return 0


def cmd_doctor(args) -> int:
    from corral.client.doctor import report, render
    rep = report()
    if args.json:
        print(json.dumps(rep, indent=2))
    else:
        print(render(rep))
    return 0


def cmd_log(args) -> int:
    from corral.client import logcli
    return logcli.main(args)


def cmd_policy(args) -> int:
    from corral.client import policycli
    return policycli.main(args)


def cmd_adjust(args) -> int:
    from corral.client import policycli
    return policycli.adjust(args)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole CLI, or (for speed: `corral run` is on every agent's start-up
    path) just the subcommand `only`, without importing the others' modules."""
    ap = argparse.ArgumentParser(prog="corral", description="kernel-enforced sandboxes for AI agents")
    sub = ap.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a command in a new session")
    add_policy_flags(run)
    from corral.policy.fromargs import add_run_options
    add_run_options(run)
    run.set_defaults(func=cmd_run)

    from corral.client import sessioncli     # session start|stop, exec
    sessioncli.add_parsers(sub, add_policy_flags)

    ps = sub.add_parser("ps", help="list sessions")
    ps.add_argument("--json", action="store_true")
    ps.set_defaults(func=cmd_ps)

    end = sub.add_parser("end", help="end a session (kills its processes)")
    end.add_argument("session")
    end.set_defaults(func=cmd_end)

    doc = sub.add_parser("doctor", help="what this kernel really enforces")
    doc.add_argument("--json", action="store_true")
    doc.set_defaults(func=cmd_doctor)

    if only in (None, "log"):
        lg = sub.add_parser("log", help="read the audit log")
        from corral.client import logcli
        logcli.add_arguments(lg)
        lg.set_defaults(func=cmd_log)
    if only in (None, "policy", "allow", "deny"):
        pc = sub.add_parser("policy", help="show or check policies and profiles")
        from corral.client import policycli
        policycli.add_arguments(pc)
        pc.set_defaults(func=cmd_policy)
        for verb in ("allow", "deny"):
            a = sub.add_parser(verb, help=f"{verb} something in a running session (logged)")
            policycli.add_adjust_arguments(a)
            a.set_defaults(func=cmd_adjust, verb=verb)
    return ap


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    fast = argv[0] if argv[:1] in (["run"], ["exec"], ["session"]) else None
    args = build_parser(fast).parse_args(argv)
    if getattr(args, "cmd", None) and args.cmd[:1] == ["--"]:
        args.cmd = args.cmd[1:]
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
