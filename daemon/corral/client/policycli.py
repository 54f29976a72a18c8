"""`corral policy`, `corral allow`, `corral deny`.

    corral policy list                 built-in profiles (and the mandatory protections)
    corral policy show NAME|FILE       a profile, a policy file, or `mandatory`
    corral policy check FILE           validate a policy file (exit 2 with file:line: key: why)

    corral allow SESSION --net CIDR[:PORT] --domain NAME --write PATH --read PATH
    corral deny  SESSION --net CIDR[:PORT] --domain NAME --write PATH --read PATH

allow/deny change a running session: they fetch its policy (session_info), edit
it and send update_policy with a reason ("corral allow --net X by uid N"); the
daemon applies the change to the kernel maps and writes a "policy"/"update"
record with the caller's pid and uid, the old and the new policy.

Files: a running process's Landlock rules cannot be changed (Landlock only ever
adds restrictions, and they are installed by the process itself). So --write
and --read are applied live only when the session's files are enforced by the
BPF LSM backend; on a Landlock session they are refused with an explanation
(start a new session with the new rule: it applies to new sessions only).
Network and domain changes are always live (BPF maps / corral's resolver).
"""
from __future__ import annotations

import json
import os
import sys

from corral.policy import model as pol
from corral.policy import files as policyfile
from corral.kernel.mountinfo import under
from corral.policy.paths import caller_home


def add_arguments(p) -> None:
    p.add_argument("action", choices=["show", "check", "list"])
    p.add_argument("target", nargs="?", help="profile name, policy file, or 'mandatory'")
    p.add_argument("--json", action="store_true", help="print the policy as JSON")
    p.add_argument("--resolved", action="store_true",
                   help="show the policy as the daemon would enforce it here (mandatory "
                        "protections added, paths resolved against this directory)")


def _resolved(p: dict, files: list[str]) -> dict:
    merged = policyfile.apply_mandatory(p, set(), files=files)
    return pol.normalize(merged, cwd=os.getcwd(), home=caller_home())


def _print_policy(p: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(p, indent=2))
        return
    for section in ("filesystem", "network", "syscalls"):
        vals = p.get(section)
        if vals is None:
            print(f"[{section}]  # not restricted" if section != "syscalls" else "")
            continue
        print(f"[{section}]")
        for k, v in vals.items():
            print(f"{k} = {json.dumps(v)}")
        print()


def show_mandatory(as_json: bool) -> None:
    if as_json:
        print(json.dumps([{"name": m.name, "kind": m.kind, "paths": list(m.paths), "why": m.why}
                          for m in policyfile.MANDATORY], indent=2))
        return
    print("Mandatory protections (in every session; drop one with --no-mandatory NAME):")
    for m in policyfile.MANDATORY:
        paths = ", ".join(m.paths) if m.paths else "the --policy/--profile/--srt-settings files used"
        what = "no writes" if m.kind == "deny_write" else "no reads"
        print(f"  {m.name:16} {what:9} {paths}")
        print(f"  {'':16} {'':9} ({m.why})")
    print("Relative paths are relative to the directory `corral run` starts in; "
          "./.claude/settings*.json is expanded against what exists there.")


def _list_named() -> None:
    """The operator's named policies (corrald's policies.d, for --policy-name), as the
    running daemon has them: the daemon, not this client, reads that directory."""
    from corral.client.connection import Client, CorralError
    try:
        with Client(timeout=5) as c:
            np = c.call("hello").get("policies")
    except CorralError:
        return
    if not np:
        return
    print(f"named policies (corral run --policy-name NAME; corrald reads {np.get('dir')}):")
    for name, p in (np.get("policies") or {}).items():
        print(f"  {name:10} {p.get('path')} (sha256 {str(p.get('sha256'))[:12]})")
    for name, why in (np.get("errors") or {}).items():
        print(f"  {name:10} REFUSED: {why}")
    if not np.get("policies") and not np.get("errors"):
        print("  (none)")


def main(args) -> int:
    try:
        if args.action == "list":
            for name, desc in policyfile.list_profiles():
                print(f"{name:12} {desc}")
            print(f"{'mandatory':12} the protections added to every session (corral policy show mandatory)")
            _list_named()
            return 0
        if not args.target:
            print(f"corral: usage: corral policy {args.action} NAME|FILE", file=sys.stderr)
            return 2
        if args.action == "show":
            if args.target == "mandatory":
                show_mandatory(args.json)
                return 0
            loaded: list[str] = []
            if os.sep in args.target or os.path.exists(args.target):
                p = policyfile.load_policy_file(args.target, loaded)
                text = None
            else:
                p = policyfile.load_profile(args.target, loaded)
                text = policyfile.profile_path(args.target).read_text()
            if args.resolved:
                _print_policy(_resolved(p, loaded), args.json)
            elif text is not None and not args.json:
                print(f"# {policyfile.profile_path(args.target)}")
                print(text, end="" if text.endswith("\n") else "\n")
            else:
                _print_policy(p, args.json)
            return 0
        # check
        loaded = []
        p = policyfile.load_policy_file(args.target, loaded)
        r = _resolved(p, loaded)
        net = r["network"]
        fs = r["filesystem"]
        print(f"{args.target}: ok")
        if args.json:
            print(json.dumps(r, indent=2))
        else:
            print(f"  network: {'not restricted' if net is None else 'default deny; allow ' + str(len(net['allow']) + len(net['allow_domains'])) + ' rule(s)'}")
            print(f"  files: writes allowed under {fs['allow_write']}; "
                  f"{len(fs['deny_read'])} read denial(s), {len(fs['deny_write'])} write denial(s) "
                  "(with the mandatory protections)")
            if r["syscalls"]["deny"]:
                print(f"  syscalls denied: {', '.join(r['syscalls']['deny'])}")
        return 0
    except pol.PolicyError as e:
        print(f"corral: {e}", file=sys.stderr)
        return 2


# -- live changes ---------------------------------------------------------------------
def add_adjust_arguments(p) -> None:
    p.add_argument("session", help="session id (corral ps)")
    p.add_argument("--net", action="append", default=[], metavar="CIDR[:PORT[-PORT]]")
    p.add_argument("--domain", action="append", default=[], metavar="NAME[:PORT]")
    p.add_argument("--write", action="append", default=[], metavar="PATH",
                   help="live only with the BPF LSM file backend (Landlock: new sessions only)")
    p.add_argument("--read", action="append", default=[], metavar="PATH",
                   help="live only with the BPF LSM file backend (Landlock: new sessions only)")


def _add(lst: list, x) -> bool:
    if x in lst:
        return False
    lst.append(x)
    return True


def _remove(lst: list, x) -> bool:
    if x in lst:
        lst.remove(x)
        return True
    return False


def edit_policy(policy: dict, verb: str, net=(), domains=(), writes=(), reads=(),
                cwd: str = "/") -> tuple[dict, list[str]]:
    """(new policy, notes). Pure: used by adjust() and the tests."""
    p = json.loads(json.dumps(policy))
    notes: list[str] = []
    allow = verb == "allow"
    if net or domains:
        n = p.get("network")
        if n is None:
            if allow:
                notes.append("the session's network is not restricted: nothing to allow")
                net, domains = (), ()
            else:
                # Unrestricted network: keep it open except for what is denied now.
                n = p["network"] = {k: [] for k in pol.NET_LIST_KEYS}
                n["allow"] = ["0.0.0.0/0", "::/0"]
                notes.append("the session's network was not restricted: it now allows "
                             "everything except what is denied")
        for r in net:
            text = str(pol.parse_net_rule(r))
            if allow:
                _add(n["allow"], text)
                if _remove(n["deny"], text):
                    notes.append(f"removed the deny rule {text}")
            else:
                _add(n["deny"], text)
                if _remove(n["allow"], text):
                    notes.append(f"removed the allow rule {text}")
        for d in domains:
            if allow:
                _add(n["allow_domains"], d)
                _remove(n["deny_domains"], d)
            else:
                _add(n["deny_domains"], d)
                _remove(n["allow_domains"], d)
    if writes or reads:
        fs = p.get("filesystem")
        if fs is None:
            if allow:
                notes.append("the session's files are not restricted: nothing to allow")
            else:
                # Unrestricted files meant writing everywhere: say so explicitly,
                # as the daemon's normalisation does (no widening).
                fs = p["filesystem"] = {"deny_read": [], "allow_read": [], "allow_write": ["/"],
                                        "deny_write": []}
                p["allow_system_write"] = True
        if fs is not None:
            for w in writes:
                a = os.path.normpath(os.path.join(cwd, os.path.expanduser(w)))
                if allow:
                    _add(fs["allow_write"], a)
                    if any(under(a, d) for d in fs["deny_write"]):
                        notes.append(f"{a} is inside a deny_write rule, which wins: still not writable")
                else:
                    _add(fs["deny_write"], a)
            for r in reads:
                a = os.path.normpath(os.path.join(cwd, os.path.expanduser(r)))
                if allow:
                    _add(fs["allow_read"], a)
                else:
                    _add(fs["deny_read"], a)
                    _remove(fs["allow_read"], a)
    return p, notes


def adjust(args) -> int:
    from corral.client.connection import Client, CorralError, DaemonNotRunning
    verb = args.verb
    if not (args.net or args.domain or args.write or args.read):
        print(f"corral: {verb}: give at least one of --net, --domain, --write, --read", file=sys.stderr)
        return 2
    for r in args.net:
        try:
            pol.parse_net_rule(r)
        except pol.PolicyError as e:
            print(f"corral: {e}", file=sys.stderr)
            return 2
    try:
        c = Client()
    except DaemonNotRunning as e:
        print(f"corral: {e.message}", file=sys.stderr)
        return 1
    with c:
        try:
            info = c.call("session_info", session=args.session)
        except CorralError as e:
            print(f"corral: {e.message}", file=sys.stderr)
            return 1
        if args.write or args.read:
            backend = str((info.get("enforcement") or {}).get("filesystem") or "")
            if info["policy"].get("filesystem") is not None and backend != "bpf-lsm":
                flags = " ".join([f"--{'allow' if verb == 'allow' else 'deny'}-write {w}" for w in args.write]
                                 + [f"--{'allow' if verb == 'allow' else 'deny'}-read {r}" for r in args.read])
                print(f"corral: session {args.session} enforces its file policy with Landlock, "
                      "whose rules cannot change inside a running process: file rules apply to "
                      f"new sessions only (start one with `corral run {flags} ...`). Live file "
                      "changes need corrald's BPF LSM backend (corral doctor).", file=sys.stderr)
                return 1
        new, notes = edit_policy(info["policy"], verb, args.net, args.domain, args.write,
                                 args.read, cwd=os.getcwd())
        if new == info["policy"]:
            for n in notes:
                print(f"corral: {n}", file=sys.stderr)
            print(f"session {args.session}: nothing to change")
            return 0
        parts = ([f"--net {x}" for x in args.net] + [f"--domain {x}" for x in args.domain]
                 + [f"--write {x}" for x in args.write] + [f"--read {x}" for x in args.read])
        reason = f"corral {verb} {' '.join(parts)} by uid {os.getuid()}"
        try:
            c.call("update_policy", session=args.session, policy=new, reason=reason)
        except CorralError as e:
            print(f"corral: {verb} refused: {e.message}", file=sys.stderr)
            return 1
    for n in notes:
        print(f"corral: {n}", file=sys.stderr)
    print(f"session {args.session}: {verb} {' '.join(parts)} (applied, logged)")
    return 0
