"""A session's policy from `corral run` / `corral session start` options.

The options (add_policy_flags, add_run_options) and what they mean
(policy_from_args), for both places that read them: the Python CLI in the
caller's process (client/cli.py) and corrald preparing a native `corral run`
from the launcher's argv (server/runprep.py). So the caller's side comes in
as a `Caller`: its cwd, homes, the few environment values the options read,
and how to read the files it named (the launcher sends their bytes, read as
the caller). Nothing here prints or creates: notes come back as lines, the
allow_write paths that do not exist as a list (the CLI creates them as the
caller; corrald hands such a run to the CLI)."""
from __future__ import annotations

import argparse
import fnmatch
import os
from dataclasses import dataclass, field
from typing import Callable

from corral.policy import model as pol

# Options that choose a policy: with none of them, the command's profile (or agent).
POLICY_OPTIONS = ("policy", "profile", "srt_settings", "allow_net", "deny_net", "no_net",
                  "allow_domain", "deny_domain", "allow_localhost_port", "deny_read",
                  "allow_read", "allow_write", "deny_write", "allow_system_write",
                  "allow_unix", "allow_ssh_agent", "pass_env", "deny_syscall")

# The environment values the options read (everything else stays the caller's).
ENV_READ = ("SSH_AUTH_SOCK", "ANTHROPIC_BASE_URL", "OPENAI_BASE_URL")


@dataclass
class Caller:
    cwd: str
    homes: list[str]                    # "~": $HOME and the passwd home (paths.homes_of)
    environ: dict = field(default_factory=dict)
    # a named file's bytes, as the caller reads it (None: this process opens it,
    # as the loaders do by default)
    read: Callable[[str], bytes] | None = None

    def abspath(self, p: str) -> str:
        return os.path.normpath(os.path.join(self.cwd, p))


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


def add_run_options(run: argparse.ArgumentParser) -> None:
    """`corral run`'s own options besides the policy's, and the command."""
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


def default_profile(args, cmd0: str) -> str | None:
    """With no policy option a session is not left open: the profile made for the
    command (`corral run -- claude`), else `agent` (policy/compose.py); set on
    `args`. Returns the line that says which and how to choose otherwise (None:
    options chose, or -q)."""
    from corral.policy.compose import default_profile as pick, profile_note
    if any(getattr(args, k, None) for k in POLICY_OPTIONS):
        return None if getattr(args, "quiet", False) else _options_only_note(args)
    args.profile, why = pick(cmd0)
    if getattr(args, "quiet", False):
        return None
    return profile_note(args.profile, why, getattr(args, "open_net", False))


_NET_OPTIONS = ("no_net", "allow_net", "deny_net", "allow_domain", "deny_domain",
                "allow_localhost_port")
_FS_DENIALS = ("deny_read", "allow_read", "deny_write")


def _options_only_note(args) -> str | None:
    """Options without a profile or file are the whole policy: a user who adds one
    --deny-read may not expect the network to open and nothing to stay writable.
    Says so when it is so (None otherwise)."""
    if args.profile or args.policy or args.srt_settings:
        return None
    left = []
    if not any(getattr(args, k, None) for k in _NET_OPTIONS) and not args.open_net:
        left.append("the network is unrestricted")
    if any(getattr(args, k, None) for k in _FS_DENIALS) and not args.allow_write:
        left.append("nothing is writable (only --allow-write paths are)")
    if not left:
        return None
    return ("corral: note: no profile: these options are the whole policy: " + " and ".join(left)
            + "; --profile agent (or another) adds them to a profile instead")


def session_meta(args) -> dict:
    """--name, --label and --policy-name as register_session fields (corral/labels.py).
    A named policy is the operator's (policies.d, read by corrald): no other policy
    option may change it. Raises PolicyError (a usage error)."""
    from corral import labels as lb
    out = {}
    try:
        if args.name is not None:
            out["name"] = lb.check_name(args.name)
        if args.label:
            out["labels"] = lb.parse_label_args(args.label)
    except lb.LabelError as e:
        raise pol.PolicyError(str(e)) from None
    if args.policy_name:
        given = [k for k in POLICY_OPTIONS if getattr(args, k, None)]
        if given:
            raise pol.PolicyError(
                f"--policy-name {args.policy_name}: the named policy is the operator's (corrald "
                "reads it from its policies.d); it cannot be combined with --"
                + ", --".join(k.replace("_", "-") for k in given))
        out["policy_name"] = args.policy_name
    return out


def policy_from_args(args, caller: Caller) -> tuple[dict, list[str], list[str]]:
    """(policy, notes, allow_write paths that do not exist) from the flags and
    files, checked the way the daemon will check it (limits, paths, rules), so a
    bad one fails before anything starts (PolicyError)."""
    from corral.policy import files as policyfile
    from corral.policy.compose import compose
    notes: list[str] = []
    base: dict = {}
    loaded: list[str] = []          # the files read: protected by "policy-files"
    if args.profile:
        base = policyfile.load_profile(args.profile, loaded)
    if args.policy:
        base = policyfile.merge(base, policyfile.load_policy_file(
            caller.abspath(args.policy), loaded, read=caller.read))
    if args.srt_settings:
        srt, warnings = policyfile.import_srt_settings(
            caller.abspath(args.srt_settings), cwd=caller.cwd, loaded=loaded, read=caller.read)
        notes += [f"corral: warning: {w}" for w in warnings]
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
        agent = caller.environ.get("SSH_AUTH_SOCK")
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
        f"{FLAG_OF.get((section, key), f'{section}.{key}')}: {msg}"))
    out, composed = compose(base, flags, open_net=open_net, dropped=set(args.no_mandatory),
                            loaded=loaded, cwd=caller.cwd, home_list=caller.homes,
                            environ=caller.environ)
    notes += composed
    if getattr(args, "allow_system_write", False):
        # Not a section of its own: --allow-system-write alone keeps the default
        # writable places (it only permits system trees in allow_write).
        if out.get("filesystem") is not None:
            out["filesystem"]["allow_system_write"] = True
        else:
            out["allow_system_write"] = True
    norm = pol.normalize(out, cwd=caller.cwd, home=caller.homes[0])  # raises what the daemon would
    missing = [p for p in norm["filesystem"]["allow_write"] if not os.path.lexists(p)]
    notes += _missing_denials(norm["filesystem"], args.deny_read + args.deny_write, caller)
    if pol.system_write_flag(out):
        notes.append("corral: note: --allow-system-write: this session may write system trees "
                     "(/, /usr, /etc, /var/lib...) where its allow_write says: it could rewrite "
                     "system binaries and configuration (cron, systemd units); corral's own "
                     "code paths stay read-only")
    return out, notes, missing


def _missing_denials(fs: dict, given: list[str], caller: Caller) -> list[str]:
    """A denial the user gave (a flag) of a path that does not exist is kept: say
    how it takes effect. Profiles' and mandatory lists name paths that usually
    do not exist (~/.azure...): not news for every session."""
    from corral.policy.paths import expand_path
    mine = set()
    for g in given:
        for h in caller.homes:
            try:
                mine.add(expand_path(g, caller.cwd, h))
            except pol.PolicyError:
                pass
    return [f"corral: note: {key} {p} does not exist: kept, it applies if the path appears "
            "during the session"
            for key in ("deny_read", "deny_write") for p in fs.get(key) or []
            if p in mine and not os.path.lexists(p) and not _is_mandatory_default(p)]


def _is_mandatory_default(p: str) -> bool:
    """Mandatory protections of names that usually do not exist (.vscode, ~/.zshrc...)
    are not news for every session."""
    from corral.policy.files import MANDATORY
    base = os.path.basename(p)
    return any(fnmatch.fnmatchcase(base, os.path.basename(x.rstrip("/")))
               for m in MANDATORY for x in m.paths)


FLAG_OF = {("network", "allow"): "--allow-net", ("network", "deny"): "--deny-net",
           ("network", "allow_domains"): "--allow-domain",
           ("network", "deny_domains"): "--deny-domain",
           ("network", "allow_localhost_ports"): "--allow-localhost-port",
           ("filesystem", "deny_read"): "--deny-read", ("filesystem", "allow_read"): "--allow-read",
           ("filesystem", "allow_write"): "--allow-write",
           ("filesystem", "deny_write"): "--deny-write", ("syscalls", "deny"): "--deny-syscall",
           ("unix", "allow"): "--allow-unix", ("env", "pass"): "--pass-env"}
