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


# -- policy from files and flags ----------------------------------------------
def add_policy_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", metavar="FILE", help="TOML policy file")
    p.add_argument("--profile", metavar="NAME", help="built-in profile (corral policy list)")
    p.add_argument("--srt-settings", metavar="FILE",
                   help="import Claude Code / sandbox-runtime settings JSON")
    p.add_argument("--allow-net", action="append", default=[], metavar="CIDR[:PORT[-PORT]]")
    p.add_argument("--deny-net", action="append", default=[], metavar="CIDR[:PORT[-PORT]]")
    p.add_argument("--no-net", action="store_true", help="network policy with nothing allowed")
    p.add_argument("--open-net", action="store_true",
                   help="no network policy: every host and port reachable (the profiles, "
                        "including the default one, allow only their domains)")
    p.add_argument("--allow-domain", action="append", default=[], metavar="NAME[:PORT]")
    p.add_argument("--deny-domain", action="append", default=[], metavar="NAME")
    p.add_argument("--allow-localhost-port", action="append", default=[], metavar="PORT[-PORT]")
    p.add_argument("--deny-read", action="append", default=[], metavar="PATH")
    p.add_argument("--allow-read", action="append", default=[], metavar="PATH")
    p.add_argument("--allow-write", action="append", default=[], metavar="PATH")
    p.add_argument("--deny-write", action="append", default=[], metavar="PATH")
    p.add_argument("--allow-system-write", action="store_true",
                   help="let --allow-write name system trees (/, /usr, /etc, /var/lib...): the "
                        "session could rewrite system binaries and configuration; corral's own "
                        "code stays read-only")
    p.add_argument("--allow-unix", action="append", default=[], metavar="PATH",
                   help="let the session connect to this Unix socket of a process outside it "
                        "(its own sockets always work)")
    p.add_argument("--allow-ssh-agent", action="store_true",
                   help="--allow-unix $SSH_AUTH_SOCK: the session may use your ssh-agent (sign "
                        "with its keys, not read them)")
    p.add_argument("--pass-env", action="append", default=[], metavar="NAME",
                   help="keep this credential-looking environment variable in the session "
                        "(by default *_TOKEN, *SECRET*, AWS_*, ... are removed)")
    p.add_argument("--deny-syscall", action="append", default=[], metavar="NAME")
    p.add_argument("--git-remote", metavar="URL",
                   help="fetch and push this repository through corrald's git gateway (which "
                        "holds the token; see README 'git gateway')")
    p.add_argument("--git-push-branch", metavar="PATTERN",
                   help="branches pushes may update (default corral/{session}/*)")
    p.add_argument("--git-allow-force", action="store_true",
                   help="let pushes to those branches be non-fast-forward")
    p.add_argument("--no-mandatory", action="append", default=[], metavar="NAME",
                   help="drop one named mandatory protection (see corral policy show)")


def policy_from_args(args) -> dict:
    """The policy the flags and files describe, checked here the way the daemon will
    check it (limits, paths, rules), so a bad one fails before anything starts."""
    from corral.policy import files as policyfile
    base: dict = {}
    loaded: list[str] = []          # the files read: protected by "policy-files"
    if args.profile:
        base = policyfile.load_profile(args.profile, loaded)
    if args.policy:
        base = policyfile.merge(base, policyfile.load_policy_file(args.policy, loaded))
    if args.srt_settings:
        srt, warnings = policyfile.import_srt_settings(args.srt_settings, loaded=loaded)
        for w in warnings:
            print(f"corral: warning: {w}", file=sys.stderr)
        base = policyfile.merge(base, srt)
    flags: dict = {}
    net_flags = {"allow": args.allow_net, "deny": args.deny_net, "allow_domains": args.allow_domain,
                 "deny_domains": args.deny_domain, "allow_localhost_ports": args.allow_localhost_port}
    open_net = getattr(args, "open_net", False)
    if open_net and (args.no_net or any(net_flags.values())):
        raise pol.PolicyError("--open-net lifts the network policy: it cannot be combined with "
                              "--no-net, --allow-net, --deny-net, --allow-domain, --deny-domain "
                              "or --allow-localhost-port (drop one or the other)")
    if args.no_net or any(net_flags.values()):
        flags["network"] = {k: v for k, v in net_flags.items() if v}
    fs_flags = {"deny_read": args.deny_read, "allow_read": args.allow_read,
                "allow_write": args.allow_write, "deny_write": args.deny_write}
    if any(fs_flags.values()):
        flags["filesystem"] = {k: v for k, v in fs_flags.items() if v}
    if args.deny_syscall:
        flags["syscalls"] = {"deny": args.deny_syscall}
    unix = list(args.allow_unix)
    if getattr(args, "allow_ssh_agent", False):
        agent = os.environ.get("SSH_AUTH_SOCK")
        if not agent:
            raise pol.PolicyError("--allow-ssh-agent: SSH_AUTH_SOCK is not set (no ssh-agent "
                                  "in this environment); start one (eval $(ssh-agent)) or drop "
                                  "the flag")
        unix.append(agent)
    if unix:
        flags["unix"] = {"allow": unix}
    if args.pass_env:
        flags["env"] = {"pass": list(args.pass_env)}
    if getattr(args, "git_remote", None):
        flags["git"] = {"remote": args.git_remote, **(
            {"push_branch": args.git_push_branch} if args.git_push_branch else {}),
            **({"allow_force": True} if args.git_allow_force else {})}
    elif getattr(args, "git_push_branch", None) or getattr(args, "git_allow_force", False):
        raise pol.PolicyError("--git-push-branch/--git-allow-force need --git-remote URL")
    # Counts and lengths before merging (merging is quadratic in the list sizes).
    pol.check_limits(flags, lambda section, key, msg: pol.PolicyError(
        f"{_FLAG_OF.get((section, key), f'{section}.{key}')}: {msg}"))
    from corral.policy.compose import compose
    from corral.policy.paths import caller_homes
    homes = caller_homes()       # "~" is $HOME and the passwd home when they differ
    out, notes = compose(base, flags, open_net=open_net, dropped=set(args.no_mandatory),
                         loaded=loaded, cwd=os.getcwd(), home_list=homes, environ=os.environ)
    for n in notes:
        print(n, file=sys.stderr)
    if getattr(args, "allow_system_write", False):
        # Not a section of its own: --allow-system-write alone keeps the default
        # writable places (it only permits system trees in allow_write).
        if out.get("filesystem") is not None:
            out["filesystem"]["allow_system_write"] = True
        else:
            out["allow_system_write"] = True
    norm = pol.normalize(out, cwd=os.getcwd(), home=homes[0])  # raises what the daemon would
    _create_missing_writable(norm["filesystem"]["allow_write"])  # refuse
    _note_missing_denials(norm["filesystem"], args.deny_read + args.deny_write, homes)
    if pol.system_write_flag(out):
        print("corral: note: --allow-system-write: this session may write system trees (/, /usr, "
              "/etc, /var/lib...) where its allow_write says: it could rewrite system binaries and "
              "configuration (cron, systemd units); corral's own code paths stay read-only",
              file=sys.stderr)
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


def _note_missing_denials(fs: dict, given: list[str], homes: list[str]) -> None:
    """A denial the user gave (a flag) of a path that does not exist is kept: say
    how it takes effect. Profiles' and mandatory lists name paths that usually
    do not exist (~/.azure...): not news for every session."""
    from corral.policy.paths import expand_path
    mine = set()
    for g in given:
        for h in homes:
            try:
                mine.add(expand_path(g, os.getcwd(), h))
            except pol.PolicyError:
                pass
    for key in ("deny_read", "deny_write"):
        for p in fs.get(key) or []:
            if p in mine and not os.path.lexists(p) and not _is_mandatory_default(p):
                print(f"corral: note: {key} {p} does not exist: kept, it applies if the path "
                      "appears during the session", file=sys.stderr)


def _is_mandatory_default(p: str) -> bool:
    """Mandatory protections of names that usually do not exist (.vscode, ~/.zshrc...)
    are not news for every session."""
    import fnmatch
    from corral.policy.files import MANDATORY
    base = os.path.basename(p)
    return any(fnmatch.fnmatchcase(base, os.path.basename(x.rstrip("/")))
               for m in MANDATORY for x in m.paths)


_FLAG_OF = {("network", "allow"): "--allow-net", ("network", "deny"): "--deny-net",
            ("network", "allow_domains"): "--allow-domain",
            ("network", "deny_domains"): "--deny-domain",
            ("network", "allow_localhost_ports"): "--allow-localhost-port",
            ("filesystem", "deny_read"): "--deny-read", ("filesystem", "allow_read"): "--allow-read",
            ("filesystem", "allow_write"): "--allow-write",
            ("filesystem", "deny_write"): "--deny-write", ("syscalls", "deny"): "--deny-syscall",
            ("unix", "allow"): "--allow-unix", ("env", "pass"): "--pass-env"}


# -- commands -------------------------------------------------------------------
_POLICY_OPTIONS = ("policy", "profile", "srt_settings", "allow_net", "deny_net", "no_net",
                   "allow_domain", "deny_domain", "allow_localhost_port", "deny_read",
                   "allow_read", "allow_write", "deny_write", "allow_system_write",
                   "allow_unix", "allow_ssh_agent", "pass_env", "deny_syscall")


def _profile_from_command(args) -> None:
    """With no policy option a session is not left open: the profile made for the
    command (`corral run -- claude`), else `agent` (policy/compose.py); one line
    says which and how to choose otherwise."""
    from corral.policy.compose import default_profile, profile_note
    if any(getattr(args, k, None) for k in _POLICY_OPTIONS):
        return
    args.profile, why = default_profile(args.cmd[0])
    if not getattr(args, "quiet", False):
        print(profile_note(args.profile, why, getattr(args, "open_net", False)), file=sys.stderr)


def _session_meta(args) -> dict:
    """--name, --label and --policy-name as register_session fields (corral/labels.py).
    A named policy is the operator's (policies.d, read by corrald): no other policy
    option may change it."""
    from corral import labels as lb
    out = {}
    try:
        if args.name is not None:
            out["name"] = lb.check_name(args.name)
        if args.label:
            out["labels"] = lb.parse_label_args(args.label)
    except lb.LabelError as e:
        die(str(e), EXIT_USAGE)
    if args.policy_name:
        given = [k for k in _POLICY_OPTIONS if getattr(args, k, None)]
        if given:
            die(f"--policy-name {args.policy_name}: the named policy is the operator's (corrald "
                "reads it from its policies.d); it cannot be combined with --"
                + ", --".join(k.replace("_", "-") for k in given), EXIT_USAGE)
        out["policy_name"] = args.policy_name
    return out


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
    run.add_argument("--allow-weaker", action="store_true",
                     help="start even if a file policy cannot be fully enforced here")
    run.add_argument("--keep-caps", action="store_true",
                     help="do not drop capabilities (root agents keep root powers)")
    run.add_argument("--keep-running", action="store_true",
                     help="let the session outlive the command: what it leaves running (a "
                          "daemon) stays until it exits or `corral end` (default: when the "
                          "command exits, everything left in its session is killed)")
    run.add_argument("--strict-protect", action="store_true",
                     help="protected names that do not exist yet (.mcp.json, .vscode...) are "
                          "guarded by Landlock alone: nothing new can be created in their "
                          "directory (default: corrald watches them, the rest stays writable)")
    run.add_argument("-v", "--verbose", action="store_true")
    run.add_argument("-q", "--quiet", action="store_true",
                     help="no summary line of what was refused when the command ends")
    run.add_argument("--policy-name", metavar="NAME",
                     help="the operator's named policy NAME (corrald's policies.d/NAME.toml)")
    run.add_argument("--name", metavar="NAME", help="a name for the session, on its audit records")
    run.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                     help="a label on the session's audit records (repeatable)")
    run.add_argument("cmd", nargs=argparse.REMAINDER)
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
