"""Policy paths: the one canonicalisation of what a client writes
(expand_path, at normalisation) and the one shape check of the filesystem
section the file backends take (file_section, canonical)."""
from __future__ import annotations

import contextlib
import os
import threading

from corral.policy.errors import PolicyError, short

FS_KEYS = ("deny_read", "allow_read", "allow_write", "deny_write")
MAX_PATH_BYTES = 4096     # PATH_MAX, the terminating NUL included: at most 4095 bytes
GLOB_CHARS = frozenset("*?[")   # a path with one of these is a pattern, not a path


def unrestricted_fs() -> dict:
    """No filesystem section ("files unrestricted"), said explicitly: everything
    writable; normalize() and the backends add corral's own protections."""
    return {"deny_read": [], "allow_read": [], "allow_write": ["/"], "deny_write": []}


class _Memo(threading.local):
    table: dict | None = None


_MEMO = _Memo()


@contextlib.contextmanager
def one_resolution():
    """Within it, a path's symlinks are resolved once (corrald composes and then
    normalises one session's policy several times over while preparing a run);
    per thread, dropped at the end."""
    _MEMO.table = {}
    try:
        yield
    finally:
        _MEMO.table = None


def _realpath(p: str) -> str:
    t = _MEMO.table
    if t is None:
        return os.path.realpath(p)
    r = t.get(p)
    if r is None:
        r = t[p] = os.path.realpath(p)
    return r


def expand_path(p: str, cwd: str, home: str, what: str = "path") -> str:
    """A policy's path as the client wrote it -> canonical absolute path: "~" is
    `home`, relative is under `cwd`, symlinks of the existing part resolved.
    What normalize() (and so every backend) gets; policy files check with it."""
    if not isinstance(p, str) or not p or "\0" in p:
        raise PolicyError(f"{what} {short(p)}: expected a non-empty path string")
    if len(p.encode("utf-8", "surrogatepass")) >= MAX_PATH_BYTES:
        raise PolicyError(f"{what} {short(p)}: {len(p.encode('utf-8', 'surrogatepass'))} bytes, "
                          f"more than the limit of {MAX_PATH_BYTES - 1} (PATH_MAX)")
    orig = p
    if p == "~" or p.startswith("~/"):
        p = home + p[1:]
    elif p.startswith("~"):
        raise PolicyError(f"{what} {p!r}: only '~' (the caller's home) is supported, not ~user")
    if not os.path.isabs(p):
        p = os.path.join(cwd, p)
    if ".." in p.split("/"):
        raise PolicyError(f"{what} {orig!r}: '..' is not accepted in policy paths; it would "
                          f"resolve to {os.path.realpath(p)}: write that path if you mean it")
    # Resolve symlinks of the part that exists; a rule for a path not yet
    # created keeps its (normalised) tail.
    return _realpath(p)


def caller_home() -> str:
    """The home "~" means in this process's policy paths (its uid's, from passwd)."""
    import pwd
    try:
        return pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:
        return os.path.expanduser("~")


def caller_homes() -> list[str]:
    """Every home "~" must cover for this process (homes_of)."""
    return homes_of(os.environ.get("HOME"), caller_home())


def homes_of(home_env: str | None, passwd_home: str) -> list[str]:
    """$HOME (what the agent's tools use: ~/.ssh is $HOME/.ssh to ssh, git, the
    agent) and the passwd entry's home (what `su`, cron and the daemon see), once
    each when they are the same. corrald preparing a native `corral run` gives
    the caller's $HOME and passwd entry."""
    out = []
    if home_env and os.path.isabs(home_env) and ".." not in home_env.split("/"):
        out.append(os.path.realpath(home_env))
    pw = os.path.realpath(passwd_home)
    if pw not in out:
        out.append(pw)
    return out


def expand_homes(policy: dict, homes: list[str]) -> dict:
    """The policy with each "~" path of its filesystem and unix lists written out
    once per home (the first home first). Other entries are left as they are."""
    if len(homes) < 2:
        return policy
    out = dict(policy)

    def each(lst):
        res = []
        for p in lst or []:
            if isinstance(p, str) and (p == "~" or p.startswith("~/")):
                for h in homes:
                    x = h + p[1:]
                    if x not in res:
                        res.append(x)
            elif p not in res:
                res.append(p)
        return res

    fs = out.get("filesystem")
    if isinstance(fs, dict):
        out["filesystem"] = {k: (each(v) if k in FS_KEYS else v) for k, v in fs.items()}
    for sec, key in (("unix", "allow"), ("network", "allow_unix")):
        s = out.get(sec)
        if isinstance(s, dict) and key in s:
            out[sec] = dict(s, **{key: each(s[key])})
    return out


def canonical(p, what: str = "file policy") -> str:
    """An absolute path as a backend keys it: normalised, one leading "/".
    The policy's paths already are (expand_path); a backend's own (devices,
    mounts, corral's paths) go through here too."""
    if not isinstance(p, str) or not p.startswith("/"):
        raise PolicyError(f"{what}: path must be absolute: {p!r}")
    p = os.path.normpath(p)
    return "/" + p.lstrip("/") if p.startswith("//") else p


def file_section(fs: dict | None) -> dict:
    """The filesystem section in the shape both file backends take: the four
    lists, canonical absolute paths, duplicates dropped (order kept); None
    (no section) is unrestricted_fs(). A normalized policy's section passes
    unchanged (a lone string counts as a list of one); unknown keys and
    relative paths raise PolicyError."""
    fp = dict(fs or {})
    unknown = set(fp) - set(FS_KEYS)
    if unknown:
        raise PolicyError(f"unknown file policy keys: {sorted(unknown)}")
    if fs is None:
        return unrestricted_fs()
    out = {}
    for k in FS_KEYS:
        vals = fp.get(k) or []
        if isinstance(vals, str):
            vals = [vals]
        out[k] = list(dict.fromkeys(canonical(p, f"file policy {k}") for p in vals))
    return out
