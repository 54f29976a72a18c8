"""Policy files, built-in profiles, sandbox-runtime imports, mandatory protections
-> the policy dict (see model.py; srt.py converts sandbox-runtime settings).

Policy file (TOML)::

    description = "optional one line, shown by `corral policy list`"

    [filesystem]                 # absent: files not restricted (except mandatory)
    deny_read   = ["~/.ssh"]     # paths; "~" = caller's home, relative = caller's cwd
    allow_read  = []             # exceptions inside deny_read (most specific wins)
    allow_write = [".", "/tmp"]  # writes are denied everywhere else
    deny_write  = [".env"]       # wins over allow_write
    allow_system_write = false   # true: allow_write may name "/", /usr, /etc... (see policy.py);
                                 # corral's own code stays read-only anyway

    [network]                    # absent: network not restricted; present: default deny
    allow = ["10.0.0.0/8:443", "[2001:db8::/32]:80-89"]
    deny  = ["10.1.0.0/16"]
    allow_domains = ["pypi.org:443", "*.githubusercontent.com:443"]
    deny_domains  = []
    allow_localhost_ports = [8080, "9000-9100"]

    [syscalls]
    deny = ["personality"]       # extra syscalls, EPERM

Every error names the file, the line and the key. Nothing is ignored: an
unknown key, a wrong type, a path or CIDR that cannot be parsed is an error.
The limits of policy.py (MAX_NET_RULES, MAX_DOMAINS, MAX_PATHS, MAX_SYSCALLS and
the lengths) are checked first, before any entry is parsed, with the daemon's
messages; paths may not contain "..".

Precedence when several sources are given (`corral run --profile P --policy F
--srt-settings S --allow-...`): they are merged (merge()): list entries are
unioned, a section present in any source is present. Then the mandatory
protections are added (apply_mandatory()); only `--no-mandatory NAME` removes
one.
"""
from __future__ import annotations

import copy
import glob as _glob
import hashlib
import json
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from corral.bounded import Bounded
from corral.kernel.mountinfo import under
from corral.policy import model as pol
from corral.policy.domains import file_rule_error
from corral.policy import srt
from corral.policy.paths import GLOB_CHARS, expand_path
from corral.policy.model import FS_FLAG_KEYS, FS_KEYS, NET_LIST_KEYS, PolicyError




# -- locating keys in the text (tomllib reports no positions for values) -----------
_HEADER_RE = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$")


def _strip_comment(line: str) -> str:
    out, q = [], None
    for ch in line:
        if q:
            out.append(ch)
            if ch == q:
                q = None
        elif ch in "\"'":
            q = ch
            out.append(ch)
        elif ch == "#":
            break
        else:
            out.append(ch)
    return "".join(out)


def _locate(text: str, section: str | None, key: str | None = None, value=None) -> int:
    """Best-effort 1-based line of [section] key (and of value inside it); 0 if not found."""
    lines = text.splitlines()
    cur = None
    key_line = 0
    sec_line = 0
    for i, raw in enumerate(lines, 1):
        line = _strip_comment(raw)
        m = _HEADER_RE.match(line)
        if m:
            cur = m.group(1).strip().strip('"')
            if section is not None and cur == section and not sec_line:
                sec_line = i
            if key_line:
                break
            continue
        if key_line:
            # Inside the value of the key we found: look for the literal.
            if value is not None and _value_on(line, value):
                return i
            if re.match(r"^\s*[A-Za-z0-9_\-\"']+\s*=", line):
                break
            continue
        if section is None:
            if key is not None and cur is None and re.match(rf"^\s*{re.escape(key)}\s*=", line):
                key_line = i
        elif key is None:
            if cur is None and re.match(rf"^\s*{re.escape(section)}\s*[.=]", line) and not sec_line:
                sec_line = i
        elif cur == section and re.match(rf"^\s*\"?{re.escape(key)}\"?\s*=", line):
            key_line = i
        elif cur is None and (re.match(rf"^\s*{re.escape(section)}\s*\.\s*{re.escape(key)}\s*=", line)
                              or re.match(rf"^\s*{re.escape(section)}\s*=\s*\{{.*\b{re.escape(key)}\s*=",
                                          line)):
            key_line = i
        elif cur is None and not sec_line and re.match(rf"^\s*{re.escape(section)}\s*[.=]", line):
            sec_line = i
        if key_line and value is not None and _value_on(line.split("=", 1)[1], value):
            return key_line
    return key_line or sec_line


def _value_on(line: str, value) -> bool:
    if isinstance(value, str):
        return (json.dumps(value) in line or f"'{value}'" in line
                or (value and f'"{value}' in line))
    return bool(re.search(rf"(?<![\w.]){re.escape(str(value))}(?![\w.])", line))


class _Src:
    """Error formatting for one source file."""

    def __init__(self, path: str, text: str):
        self.path, self.text = path, text

    def err(self, section, key, msg, value=None) -> PolicyError:
        line = _locate(self.text, section, key, value)
        where = f"{self.path}:{line}" if line else self.path
        what = ".".join(x for x in (section, key) if x)
        return PolicyError(f"{where}: {what}: {msg}" if what else f"{where}: {msg}")


# -- validation ----------------------------------------------------------------------
def resolve_syscall(name: str) -> int:
    """Syscall number on this architecture via libseccomp; -1 if unknown."""
    try:
        from corral.kernel import native
        return int(native.load().lib.seccomp_syscall_resolve_name(name.encode()))
    except Exception:
        pass
    import ctypes
    lib = ctypes.CDLL("libseccomp.so.2")
    lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    return int(lib.seccomp_syscall_resolve_name(name.encode()))


def _check_path(src: _Src, section: str, key: str, p) -> None:
    if not isinstance(p, str):
        raise src.err(section, key, f"{p!r} is not a string: paths are strings", p)
    if not p:
        raise src.err(section, key, "empty path", p)
    if GLOB_CHARS & set(p):
        raise src.err(section, key, f"{p!r}: glob patterns are not supported here: list the paths "
                                    "(a rule for a directory covers everything under it)", p)
    try:
        expand_path(p, "/", "/root")
    except PolicyError as e:
        raise src.err(section, key, str(e), p) from None


def _list(src: _Src, section: str, key: str, v) -> list:
    if not isinstance(v, list):
        raise src.err(section, key, f"expected an array, got {type(v).__name__} {v!r} "
                                    f"(write {key} = [ ... ])")
    return v


def _only_key(src: _Src, section: str, table: dict, key: str, shown: str) -> None:
    """A section with one key (its name and how it is written in `shown`)."""
    for k in table:
        if k != key:
            raise src.err(section, k, f"unknown key {k!r}: the only key is {shown}")


def validate(data: dict, src: _Src) -> dict:
    """Check a parsed policy file; return the policy dict (sections as given).

    This transforms nothing (normalize() does, in the client before it sends
    and in the daemon): it runs the model's own parsers on each entry so a
    refusal names the file, line and key."""
    out: dict = {}
    for top, val in data.items():
        if top == "description":
            if not isinstance(val, str):
                raise src.err(None, "description", "expected a string")
            continue
        if top == "extends":
            if not isinstance(val, str) or not re.match(r"^[A-Za-z0-9_-]+$", val):
                raise src.err(None, "extends", "expected the name of a built-in profile")
            out["extends"] = val
            continue
        if top not in ("filesystem", "network", "syscalls", "unix", "env", "git"):
            raise src.err(None, top, f"unknown key {top!r}: expected [filesystem], [network], "
                                     "[syscalls] (or description)") if not isinstance(val, dict) else \
                src.err(top, None, f"unknown section [{top}]: expected [filesystem], [network], [syscalls]")
        if not isinstance(val, dict):
            raise src.err(None, top, f"expected a table [{top}], got {type(val).__name__}")
    # Counts and lengths first: a huge file fails here, before any entry is parsed.
    pol.check_limits(data, lambda section, key, msg: src.err(section, key, msg))
    fs = data.get("filesystem")
    if fs is not None:
        o = {}
        for k, v in fs.items():
            if k in FS_FLAG_KEYS:
                if not isinstance(v, bool):
                    raise src.err("filesystem", k, f"expected true or false, got {v!r}")
                o[k] = v
                continue
            if k not in FS_KEYS:
                raise src.err("filesystem", k, f"unknown key {k!r}: expected one of "
                                               f"{', '.join(FS_KEYS + FS_FLAG_KEYS)}")
            for p in _list(src, "filesystem", k, v):
                _check_path(src, "filesystem", k, p)
            o[k] = list(v)
        out["filesystem"] = o
    net = data.get("network")
    if net is not None:
        o = {}
        for k, v in net.items():
            if k not in NET_LIST_KEYS + (pol.UNIX_KEY,):
                raise src.err("network", k, f"unknown key {k!r}: expected one of "
                                            f"{', '.join(NET_LIST_KEYS + (pol.UNIX_KEY,))}")
            items = _list(src, "network", k, v)
            for x in items:
                if k == pol.UNIX_KEY:
                    _check_path(src, "network", k, x)
                elif k in ("allow", "deny"):
                    if not isinstance(x, str):
                        raise src.err("network", k, f"{x!r} is not a string like \"10.0.0.0/8:443\"", x)
                    try:
                        pol.parse_net_rule(x)
                    except PolicyError as e:
                        raise src.err("network", k, str(e), x) from None
                elif k in ("allow_domains", "deny_domains"):
                    why = file_rule_error(x, k)
                    if why:
                        raise src.err("network", k, why, x)
                else:
                    if isinstance(x, bool) or not isinstance(x, (int, str)):
                        raise src.err("network", k, f"{x!r}: expected a port number or \"LO-HI\"", x)
                    try:
                        pol.parse_ports(str(x), "port")
                    except PolicyError as e:
                        raise src.err("network", k, f"{x!r}: {e}", x) from None
            o[k] = list(items)
        out["network"] = o
    env = data.get("env")
    if env is not None:
        _only_key(src, "env", env, "pass", "pass = [names]")
        from corral.policy.env import check_names
        names = _list(src, "env", "pass", env.get("pass", []))
        try:
            check_names(names)
        except ValueError as e:
            raise src.err("env", "pass", str(e)) from None
        out["env"] = {"pass": list(names)}
    ux = data.get("unix")
    if ux is not None:
        _only_key(src, "unix", ux, "allow", "allow = [socket paths]")
        for p in _list(src, "unix", "allow", ux.get("allow", [])):
            _check_path(src, "unix", "allow", p)
        out["unix"] = {"allow": list(ux.get("allow", []))}
    git = data.get("git")
    if git is not None:
        from corral.policy.gitremote import GIT_KEYS, normalize_git
        for k in git:
            if k not in GIT_KEYS:
                raise src.err("git", k, f"unknown key {k!r}: expected one of {', '.join(GIT_KEYS)}")
        try:
            normalize_git(git)
        except PolicyError as e:
            key = next((k for k in GIT_KEYS if f"git.{k}" in str(e)), "remote")
            msg = str(e).removeprefix(f"git.{key}").lstrip(": ")
            raise src.err("git", key, msg) from None
        out["git"] = dict(git)
    sc = data.get("syscalls")
    if sc is not None:
        _only_key(src, "syscalls", sc, "deny", "deny = [names]")
        names = _list(src, "syscalls", "deny", sc.get("deny", []))
        from corral.client.seccomp_rules import UNDENIABLE
        for n in names:
            if not isinstance(n, str) or not re.match(r"^[a-z0-9_]+$", n):
                raise src.err("syscalls", "deny", f"{n!r} is not a syscall name", n)
            if n in UNDENIABLE:
                raise src.err("syscalls", "deny", f"{n!r} cannot be denied: the agent could not "
                                                  "be started", n)
            if resolve_syscall(n) == -1:
                raise src.err("syscalls", "deny", f"unknown syscall {n!r} (libseccomp does not "
                                                  "know it)", n)
        out["syscalls"] = {"deny": list(names)}
    return out


def parse_policy_text(text: str, path: str = "<policy>") -> dict:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        m = re.search(r"\(at line (\d+), column (\d+)\)", msg)
        if m:
            msg = msg[:m.start()].strip()
            raise PolicyError(f"{path}:{m.group(1)}: TOML syntax error: {msg} (column {m.group(2)})") from None
        if "(at end of document)" in msg:
            msg = msg.replace("(at end of document)", "").strip()
            raise PolicyError(f"{path}:{text.count(chr(10)) + 1}: TOML syntax error: {msg} "
                              "(at end of file)") from None
        raise PolicyError(f"{path}: TOML syntax error: {msg}") from None
    return validate(data, _Src(path, text))


def _note(loaded: list[str] | None, path: str) -> None:
    """Record a file policy came from (the mandatory protection "policy-files"
    makes it read-only in the session): the caller's list, no hidden state."""
    if loaded is not None and path not in loaded:
        loaded.append(path)


def load_policy_file(path: str, loaded: list[str] | None = None, read=None) -> dict:
    """`read(path)`: the file's bytes as the caller reads them (default: open it
    here; corrald preparing a native run has the bytes the launcher read)."""
    try:
        if read is not None:
            raw = read(path)
        else:
            with open(path, "rb") as fh:
                raw = fh.read()
    except OSError as e:
        raise PolicyError(f"{path}: cannot read policy file: {e.strerror}") from None
    key = (path, hashlib.sha256(raw).digest())
    parsed = _PARSED_FILES.get(key)
    if parsed is None:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise PolicyError(f"{path}: not UTF-8 text ({e})") from None
        parsed = _PARSED_FILES.put(key, parse_policy_text(text, path))
    out = _extend(copy.deepcopy(parsed), loaded)
    _note(loaded, os.path.abspath(path))
    return out


# Policy files by (path, content): corrald parses the same file for every native
# `corral run` that names it (TOML in pure Python: ~8 ms for a 1000-rule file).
_PARSED_FILES = Bounded(32)


def _extend(policy: dict, loaded: list[str] | None, depth: int = 0) -> dict:
    """`extends = "agent"`: the named built-in profile, then this file's lists on top."""
    name = policy.pop("extends", None)
    if name is None:
        return policy
    if depth >= 3:
        raise PolicyError(f"extends {name!r}: profiles extend each other more than 3 deep")
    return merge(load_profile(name, loaded, _depth=depth + 1), policy)


# -- profiles ---------------------------------------------------------------------------
def profile_path(name: str) -> Path:
    return Path(__file__).with_name("profiles") / f"{name}.toml"


def list_profiles() -> list[tuple[str, str]]:
    """(name, description) of every built-in profile."""
    out = []
    for p in sorted(Path(__file__).with_name("profiles").glob("*.toml")):
        try:
            desc = tomllib.loads(p.read_text()).get("description", "")
        except (OSError, tomllib.TOMLDecodeError) as e:
            desc = f"(broken: {e})"
        out.append((p.stem, desc))
    return out


def load_profile(name: str, loaded: list[str] | None = None, _depth: int = 0) -> dict:
    if not re.match(r"^[A-Za-z0-9_-]+$", name or ""):
        raise PolicyError(f"bad profile name {name!r}")
    p = profile_path(name)
    hit = _PROFILES.get(str(p)) if _depth == 0 else None
    if hit is not None and hit[0] == _stamps(hit[1]):
        for f in hit[1]:
            _note(loaded, f)
        return copy.deepcopy(hit[2])
    if not p.is_file():
        names = ", ".join(n for n, _ in list_profiles())
        raise PolicyError(f"unknown profile {name!r}: built-in profiles are {names} "
                          "(or give a file with --policy)")
    mine: list[str] = []
    out = _extend(parse_policy_text(p.read_text(), str(p)), mine, _depth)
    _note(mine, str(p))
    for f in mine:
        _note(loaded, f)
    if _depth == 0:
        _PROFILES.put(str(p), (_stamps(mine), mine, copy.deepcopy(out)))
    return out


# Parsed profiles (corrald composes one for every native `corral run`): kept
# while every file they were read from is unchanged (inode, mtime, ctime, size).
_PROFILES = Bounded(64)


def _stamps(files: list[str]) -> list:
    out = []
    for f in files:
        try:
            st = os.stat(f)
            out.append((st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size))
        except OSError:
            out.append(None)
    return out


# `corral run -- NAME ...` with no policy options: the profile for that agent.
PROFILE_FOR_COMMAND = {"claude": "claude", "codex": "codex", "gemini": "gemini", "aider": "aider"}


# -- merging -------------------------------------------------------------------------
def merge(base: dict, extra: dict) -> dict:
    """Union of two policies: a section present in either is present; lists are unioned
    (order kept, duplicates dropped)."""
    out: dict = {}
    for src in (base or {}), (extra or {}):
        for section, vals in src.items():
            if vals is None:
                out.setdefault(section, None)
                continue
            if not isinstance(vals, dict):          # a top-level flag (allow_system_write)
                out[section] = bool(out.get(section)) or bool(vals)
                continue
            cur = out.get(section)
            if cur is None:
                cur = out[section] = {}
            for k, v in vals.items():
                if isinstance(v, bool):               # a flag: on if any source turns it on
                    cur[k] = bool(cur.get(k)) or v
                    continue
                if isinstance(v, (str, int)):         # a value ([git] remote): the later source's
                    cur[k] = v
                    continue
                lst = cur.setdefault(k, [])
                seen = _members(lst)
                for x in v or []:
                    try:
                        if x in seen:
                            continue
                        seen.add(x)
                    except TypeError:               # unhashable: the slow way
                        if x in lst:
                            continue
                    lst.append(x)
    return out


def _members(lst: list) -> set:
    """The hashable entries of a list (a 1000-rule policy merged with `x in lst`
    cost half a million comparisons)."""
    out = set()
    for x in lst:
        try:
            out.add(x)
        except TypeError:
            pass
    return out


# -- mandatory protections -------------------------------------------------------------
@dataclass(frozen=True)
class Mandatory:
    name: str
    kind: str               # "deny_write" | "deny_read"
    paths: tuple[str, ...]
    why: str


SHELL_STARTUP = ("~/.bashrc", "~/.bash_profile", "~/.bash_login", "~/.profile", "~/.zshrc",
                 "~/.zprofile", "~/.zshenv", "~/.config/fish/config.fish")

# Only those that exist are added: Landlock would have to freeze /run for the rest.
CONTAINER_SOCKETS = ("/run/docker.sock", "/run/containerd/containerd.sock",
                     "/run/podman/podman.sock", "/run/crio/crio.sock", "/run/buildkit/buildkitd.sock")
# With no file section, a session may write its working directory and the temp
# dirs: "/" would let a capability-less root agent rewrite /etc (cron, systemd units).
DEFAULT_ALLOW_WRITE = [".", "/tmp", "/var/tmp", "/dev/shm"]

MANDATORY: tuple[Mandatory, ...] = (
    Mandatory("shell-startup", "deny_write", SHELL_STARTUP,
              "code in shell startup files runs in every later shell, outside the sandbox"),
    Mandatory("git-hooks", "deny_write", ("./.git/hooks",),
              "git hooks run on the next git command, outside the sandbox"),
    Mandatory("git-config", "deny_write", ("./.git/config", "./.git/commondir",
                                            "./.git/config.worktree"),
              "core.fsmonitor, core.hooksPath, aliases... run commands outside the sandbox "
              "(commondir and config.worktree lead git to more configuration; a .git file, "
              "as in a linked worktree, to another git directory)"),
    Mandatory("gitmodules", "deny_write", ("./.gitmodules",),
              "submodule URLs and update commands"),
    Mandatory("mcp-config", "deny_write", ("./.mcp.json",),
              "MCP server commands are started by the agent host, outside the sandbox"),
    Mandatory("vscode", "deny_write", ("./.vscode",), "tasks and settings run by the editor"),
    Mandatory("idea", "deny_write", ("./.idea",), "run configurations used by the IDE"),
    Mandatory("claude-settings", "deny_write",
              ("./.claude/settings.json", "./.claude/settings.local.json", "./.claude/settings*.json",
               "~/.claude/settings.json", "~/.claude/settings.local.json"),
              "agent permissions and hooks (the agent could grant itself anything); the user's "
              "~/.claude/settings.json holds hooks that run commands outside the session"),
    Mandatory("codex-config", "deny_write", ("~/.codex/config.toml", "./.codex/config.toml"),
              "Codex's config: `notify` and MCP server commands it starts, sandbox and approval "
              "settings for its next run (outside the session)"),
    Mandatory("gemini-settings", "deny_write", ("~/.gemini/settings.json", "./.gemini/settings.json"),
              "Gemini CLI settings: MCP servers and tool discovery commands it runs at its next "
              "start (outside the session)"),
    Mandatory("aider-config", "deny_write", ("~/.aider.conf.yml", "./.aider.conf.yml"),
              "aider's lint-cmd / test-cmd run commands at its next start"),
    Mandatory("policy-files", "deny_write", (),
              "the corral policy files this session was started from"),
    Mandatory("ssh", "deny_read", ("~/.ssh",), "SSH keys"),
    Mandatory("aws", "deny_read", ("~/.aws",), "AWS credentials"),
    Mandatory("gnupg", "deny_read", ("~/.gnupg",), "GnuPG keys"),
    Mandatory("gcloud", "deny_read", ("~/.config/gcloud",), "Google Cloud credentials"),
    Mandatory("kube", "deny_read", ("~/.kube",), "Kubernetes credentials"),
    Mandatory("netrc", "deny_read", ("~/.netrc",), "passwords for FTP/HTTP/git"),
    Mandatory("docker-config", "deny_read", ("~/.docker/config.json",), "registry credentials"),
    Mandatory("container-sockets", "deny_read", CONTAINER_SOCKETS,
              "whoever talks to a container runtime socket is root on the host"),
)
MANDATORY_NAMES = tuple(m.name for m in MANDATORY)


def mandatory_of(path: str, kind: str) -> str | None:
    """The mandatory protection of `kind` ("deny_read" | "deny_write") whose
    "./NAME" or "~/NAME" entry names this resolved path, by its tail (for
    records), or None."""
    import fnmatch
    for m in MANDATORY:
        if m.kind != kind:
            continue
        for pat in m.paths:
            if pat[:2] in ("./", "~/") and fnmatch.fnmatchcase(path, "*/" + pat[2:]):
                return m.name
    return None


def mandatory_paths(m: Mandatory, cwd: str | None = None, files: list[str] | None = None) -> list[str]:
    """The entries one protection adds, globs expanded against what exists in cwd;
    for "policy-files", `files` (the `loaded` list the loaders filled)."""
    cwd = cwd or os.getcwd()
    if m.name == "policy-files":
        return list(files or ())
    if m.name == "container-sockets":
        return [p for p in m.paths if os.path.exists(p)]
    if m.name == "git-config" and os.path.isfile(os.path.join(cwd, ".git")) \
            and not os.path.islink(os.path.join(cwd, ".git")):
        # a gitfile ("gitdir: PATH", a linked worktree's): where git finds everything
        # (nothing can be below it; its git directory is outside the project)
        return ["./.git"]
    out = []
    for p in m.paths:
        if GLOB_CHARS & set(p):
            rel = p[2:] if p.startswith("./") else p
            for hit in sorted(_glob.glob(os.path.join(_glob.escape(cwd), rel))):
                e = "./" + os.path.relpath(hit, cwd)
                if e not in out:
                    out.append(e)
        elif p not in out:
            out.append(p)
    return out


def _expand_local(p: str, cwd: str) -> str:
    p = os.path.expanduser(p) if p.startswith("~") else p
    return os.path.normpath(os.path.join(cwd, p))


def apply_mandatory(policy: dict, dropped: set[str], cwd: str | None = None,
                    files: list[str] | None = None) -> dict:
    """Add every mandatory protection not named in `dropped`; `files` are the
    policy files the session was built from (load_policy_file's `loaded`).

    No filesystem section: one is created with DEFAULT_ALLOW_WRITE. allow_read exceptions inside a mandatory deny_read path
    are removed (they would otherwise win as the more specific rule); deny_write
    already wins over allow_write."""
    unknown = set(dropped) - set(MANDATORY_NAMES)
    if unknown:
        raise PolicyError(f"--no-mandatory {', '.join(sorted(unknown))}: no such protection; "
                          f"names are {', '.join(MANDATORY_NAMES)} (corral policy show mandatory)")
    cwd = cwd or os.getcwd()
    out = merge({}, policy or {})
    add = {"deny_read": [], "deny_write": []}
    for m in MANDATORY:
        if m.name in dropped:
            continue
        for p in mandatory_paths(m, cwd, files):
            if p not in add[m.kind]:
                add[m.kind].append(p)
    if not add["deny_read"] and not add["deny_write"]:
        return out
    fs = out.get("filesystem")
    if fs is None:
        fs = out["filesystem"] = {"allow_write": list(DEFAULT_ALLOW_WRITE), "deny_read": [],
                                  "deny_write": []}
    for k in ("deny_read", "deny_write"):
        lst = fs.setdefault(k, [])
        for p in add[k]:
            if p not in lst:
                lst.append(p)
    denied = [_expand_local(p, cwd) for p in add["deny_read"]]
    if fs.get("allow_read"):
        fs["allow_read"] = [a for a in fs["allow_read"]
                            if not any(under(_expand_local(a, cwd), d) for d in denied)]
    return out


# -- Anthropic sandbox-runtime / Claude Code settings import ----------------------------
def import_srt_settings(path: str, cwd: str | None = None,
                        loaded: list[str] | None = None, read=None) -> tuple[dict, list[str]]:
    """Sandbox settings JSON -> (policy, warnings): policy/srt.py."""
    return srt.import_settings(path, cwd, loaded, read=read)
