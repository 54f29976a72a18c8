"""`corral session start|stop` and `corral exec ID -- CMD` (the Python path).

An agent that sandboxes each shell command separately (Claude Code's Bash tool)
pays the start of a sandbox hundreds of times; a session started once takes
them all: same policy, same cgroup, same audit identity.

`session start` forks a holder that registers the session (it is its leader),
builds the mount view and confines itself as `corral run` would, hands corrald
its Landlock ruleset and mount namespace (server/sessionops.py), then waits in
its own process group until its timeout or `corral session stop`; the parent
prints the session id once the session is ready and exits.

`exec` here is the path for any caller (the native launcher, native/launcher.c,
is the fast one and hands over to this when it cannot serve): a parent waits
outside the session with `corral run`'s semantics (signals forwarded, the same
exit status) but does not end the session; the child is moved into the
session's cgroup, builds its view, confines itself, reports and execs."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from corral.client.connection import Client, CorralError, DaemonNotRunning

DEFAULT_TIMEOUT = 8 * 3600.0


def die(msg: str, code: int = 1):
    print(f"corral: {msg}", file=sys.stderr)
    sys.exit(code)


def add_parsers(sub, add_policy_flags) -> None:
    ss = sub.add_parser("session", help="a session for many commands (corral exec)")
    ssub = ss.add_subparsers(dest="session_cmd", required=True)
    st = ssub.add_parser("start", help="start a session; prints its id")
    add_policy_flags(st)
    st.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                    help=f"end the session after this long (default {DEFAULT_TIMEOUT:.0f}; 0: "
                         "only `corral session stop` ends it)")
    st.add_argument("--allow-weaker", action="store_true",
                    help="start even if a file policy cannot be fully enforced here")
    st.add_argument("--strict-protect", action="store_true",
                    help="protected names that do not exist yet are guarded by Landlock alone")
    st.add_argument("-q", "--quiet", action="store_true")
    st.add_argument("-v", "--verbose", action="store_true")
    st.set_defaults(func=cmd_session_start, cmd=[], keep_running=False)
    sp = ssub.add_parser("stop", help="end a session and kill what runs in it")
    sp.add_argument("session")
    sp.set_defaults(func=cmd_session_stop)

    ex = sub.add_parser("exec", help="run a command in a session `corral session start` made")
    ex.add_argument("-v", "--verbose", action="store_true")
    ex.add_argument("-q", "--quiet", action="store_true")
    ex.add_argument("session")
    ex.add_argument("cmd", nargs=argparse.REMAINDER)
    ex.set_defaults(func=cmd_exec)


# -- session start / stop ---------------------------------------------------------
def cmd_session_start(args) -> int:
    from corral.client import cli
    from corral.policy import model as pol
    args.cmd = [""]         # no command name: the default profile, as `corral run` picks it
    try:
        cli._profile_from_command(args)
    except AttributeError:
        pass
    args.cmd = []
    try:
        policy = cli.policy_from_args(args)
    except (pol.PolicyError, OSError) as e:
        die(f"bad policy: {e}", 2)
    for f in (sys.stdout, sys.stderr):
        f.flush()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            _holder(policy, args, w)
        finally:
            os._exit(1)
    os.close(w)
    got = b""
    while True:
        chunk = os.read(r, 256)
        if not chunk:
            break
        got += chunk
    if not got.startswith(b"ok "):
        os.waitpid(pid, 0)
        die("session not started (see above)")
    print(got[3:].decode())
    return 0


def _holder(policy: dict, args, w: int) -> None:
    """The session's leader: register, confine, hand over, wait. Never returns."""
    from corral.client import enter
    os.setsid()             # not the terminal's: ^C and hang-ups go to the commands
    try:
        with Client() as c:
            session = c.call("register_session", policy=policy, keep_running=False)
    except DaemonNotRunning as e:
        die(e.message)
    except CorralError as e:
        die(f"cannot start session: {e.message}")
    sid = session["id"]
    export: dict = {}
    report = enter.confine(session, allow_weaker=args.allow_weaker,
                           strict_protect=args.strict_protect, keep_fds=(w,), export=export)
    enter.send_report("report_confinement", sid, report, args.verbose, session["enforcement"])
    try:
        with Client() as c:
            c.call("session_ready", session=sid, ruleset_fd=export.get("ruleset_fd", -1),
                   options={"allow_weaker": args.allow_weaker,
                            "strict_protect": args.strict_protect})
    except CorralError as e:
        die(f"session {sid} could not be prepared for commands: {e.message}")
    if export.get("ruleset_fd") is not None:
        os.close(export["ruleset_fd"])      # corrald holds it now: none of ours may widen it
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)                   # `ID=$(corral session start)` must see EOF
    os.close(null)
    os.write(w, f"ok {sid}".encode())
    os.close(w)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    deadline = time.monotonic() + args.timeout if args.timeout > 0 else None
    while deadline is None or time.monotonic() < deadline:
        time.sleep(3600 if deadline is None else min(3600, max(0.0, deadline - time.monotonic())))
    os._exit(0)             # the leader is gone: corrald ends the session


def cmd_session_stop(args) -> int:
    try:
        with Client() as c:
            res = c.call("end_session", session=args.session, reason="corral session stop")
    except DaemonNotRunning as e:
        die(e.message)
    except CorralError as e:
        die(e.message)
    n = (res or {}).get("killed", 0)
    print(f"session {args.session} stopped: {n} process{'' if n == 1 else 'es'} killed")
    return 0


# -- exec ---------------------------------------------------------------------
def cmd_exec(args) -> int:
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        die("usage: corral exec SESSION -- CMD [ARGS...]", 2)
    from corral.client import enter, supervise
    # The parent waits outside with `corral run`'s semantics; the session goes on.
    report_session = supervise.start(keep_running=True, quiet=True)
    try:
        with Client() as c:
            joined = c.call("join_session", session=args.session)
    except DaemonNotRunning as e:
        die(e.message)
    except CorralError as e:
        die(f"cannot exec in session {args.session}: {e.message}")
    session = joined["session"]
    report_session(session["id"])
    if joined.get("inside"):
        # Already in this session, so already confined as it is.
        enter.exec_command(session, cmd, args.verbose)
    opts = joined.get("options") or {}
    view = joined.get("view")
    # As root, the session's own view (the holder's: corrald keeps it up to date);
    # otherwise one of our own (a user namespace cannot enter root's).
    join_view = (f"/proc/{view['pid']}/ns/mnt", view["ino"]) if view and os.geteuid() == 0 \
        else None
    report = enter.confine(session, allow_weaker=opts.get("allow_weaker", False),
                           strict_protect=opts.get("strict_protect", False), join_view=join_view)
    report["command"] = cmd[:16]
    report["path"] = "python"
    verified = enter.send_report("report_exec", session["id"], report, args.verbose,
                                 session["enforcement"])
    if verified and verified.get("missing"):
        die("confinement check failed, command not started: corrald does not see "
            + ", ".join(verified["missing"]) + " on this process")
    enter.exec_command(session, cmd, args.verbose)
    return 0
