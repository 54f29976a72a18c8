"""The [git] section of a policy: which repository a session reaches through
corrald's git gateway (server/gitgateway/), and which branches it may push.

    [git]
    remote = "https://github.com/ORG/REPO"   # or git@github.com:ORG/REPO, ssh://git@host/ORG/REPO
    push_branch = "corral/{session}/*"       # branches (under refs/heads/) pushes may update
    allow_force = false                      # non-fast-forward updates of those branches
    max_push_bytes = 1073741824              # one push's request body

A remote is known by its key, "host/ORG/REPO" ("host:port/..." for an http(s)
URL with a port of its own): the three spellings of one GitHub repository have
the same key, and the gateway's credentials file is matched on it."""
from __future__ import annotations

import re
from urllib.parse import urlsplit

from corral.policy.errors import PolicyError, short as _short

GIT_KEYS = ("remote", "push_branch", "allow_force", "max_push_bytes")
DEFAULT_PUSH_BRANCH = "corral/{session}/*"
DEFAULT_MAX_PUSH_BYTES = 1 << 30
MAX_REMOTE_LEN = 1024
MAX_PATTERN_LEN = 200
MAX_PUSH_BYTES = 1 << 40

_SEG = re.compile(r"^[A-Za-z0-9._~-]+$")
_HOST = re.compile(r"^[A-Za-z0-9.-]+$|^\[[0-9A-Fa-f:.]+\]$")
_SCP = re.compile(r"^(?:([A-Za-z0-9._-]+)@)?([A-Za-z0-9.-]+):(?!//)(.+)$")
_PATTERN = re.compile(r"^[A-Za-z0-9._/*{}-]+$")


def _path(path: str, what: str) -> str:
    p = path.strip("/")
    if p.endswith(".git"):
        p = p[:-4]
    parts = p.split("/") if p else []
    if not parts or any(not _SEG.match(x) or x in (".", "..") for x in parts):
        raise PolicyError(f"{what}: the repository path {_short(path)} is not ORG/REPO "
                          "(letters, digits, '.', '_', '-', '~' between slashes)")
    return "/".join(parts)


def parse_remote(url) -> dict:
    """-> {"scheme": "https"|"http"|"ssh", "host", "port" (0: default), "path", "key"}.
    Raises PolicyError naming what is wrong."""
    what = f"git remote {_short(url)}"
    if not isinstance(url, str) or not url.strip():
        raise PolicyError(f"{what}: expected a URL like https://github.com/ORG/REPO")
    if len(url) > MAX_REMOTE_LEN:
        raise PolicyError(f"{what}: {len(url)} characters, more than the limit of {MAX_REMOTE_LEN}")
    u = url.strip()
    m = _SCP.match(u) if "://" not in u else None
    if m:
        host, port, scheme, path = m.group(2), 0, "ssh", m.group(3)
    else:
        try:
            s = urlsplit(u)
            port = s.port or 0
        except ValueError as e:
            raise PolicyError(f"{what}: {e}") from None
        scheme = s.scheme.lower()
        if scheme not in ("https", "http", "ssh"):
            raise PolicyError(f"{what}: scheme {scheme or 'none'!r}: expected https://, http://, "
                              "ssh:// or git@host:ORG/REPO")
        if s.query or s.fragment:
            raise PolicyError(f"{what}: a remote has no query or fragment")
        if scheme != "ssh" and (s.username or s.password):
            raise PolicyError(f"{what}: no user or password in the URL (credentials are the "
                              "gateway's: /etc/corral/git-credentials.toml)")
        host, path = s.hostname or "", s.path
        if scheme == "ssh":
            port = 0            # the gateway speaks HTTPS upstream: an SSH port means nothing
    if not host or not _HOST.match(host):
        raise PolicyError(f"{what}: no host name")
    host = host.lower()
    path = _path(path, what)
    default = {"https": 443, "http": 80}.get(scheme)
    port = 0 if port == default else port
    hostport = f"{host}:{port}" if port else host
    return {"scheme": scheme, "host": host, "port": port, "path": path,
            "key": f"{hostport}/{path}"}


def check_pattern(pattern) -> str:
    what = f"git.push_branch {_short(pattern)}"
    if not isinstance(pattern, str) or not pattern:
        raise PolicyError(f"{what}: expected a branch name or pattern like \"corral/{{session}}/*\"")
    if len(pattern) > MAX_PATTERN_LEN:
        raise PolicyError(f"{what}: {len(pattern)} characters, more than the limit of "
                          f"{MAX_PATTERN_LEN}")
    if pattern.startswith("refs/"):
        raise PolicyError(f"{what}: name the branch without refs/heads/ (tags and other refs "
                          "are never pushed through the gateway)")
    rest = pattern.replace("{session}", "")
    if not _PATTERN.match(pattern) or "{" in rest or "}" in rest or ".." in pattern \
            or pattern.startswith("/") or pattern.endswith("/") or "//" in pattern \
            or pattern.endswith(".lock"):
        raise PolicyError(f"{what}: a branch name with '*' wildcards and {{session}} (the "
                          "session id); letters, digits, '.', '_', '-', '/'")
    return pattern


def normalize_git(sec) -> dict | None:
    """The [git] section as normalize() returns it, or None."""
    if sec is None:
        return None
    if not isinstance(sec, dict):
        raise PolicyError("git: expected a table with remote = URL")
    bad = set(sec) - set(GIT_KEYS) - {"repo"}     # "repo": normalize()'s own, recomputed
    if bad:
        raise PolicyError(f"git: unknown key(s) [{', '.join(sorted(_short(b, 40) for b in bad))}]: "
                          f"expected {list(GIT_KEYS)}")
    if "remote" not in sec:
        raise PolicyError("git: remote is missing: the repository the session may fetch and "
                          "push (--git-remote URL)")
    remote = parse_remote(sec["remote"])
    force = sec.get("allow_force", False)
    if not isinstance(force, bool):
        raise PolicyError("git.allow_force: expected true or false")
    size = sec.get("max_push_bytes", DEFAULT_MAX_PUSH_BYTES)
    if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= MAX_PUSH_BYTES:
        raise PolicyError(f"git.max_push_bytes {_short(size)}: expected a number of bytes "
                          f"from 1 to {MAX_PUSH_BYTES}")
    return {"remote": sec["remote"].strip(), "repo": remote["key"],
            "push_branch": check_pattern(sec.get("push_branch", DEFAULT_PUSH_BRANCH)),
            "allow_force": force, "max_push_bytes": size}


def rewrites(remote: dict) -> list[str]:
    """The URLs a session may spell the remote with (url.<gateway>.insteadOf)."""
    host, path = remote["host"], remote["path"]
    hp = f"{host}:{remote['port']}" if remote["port"] else host
    out = []
    for base in (f"https://{hp}/{path}" if remote["scheme"] != "http" else f"http://{hp}/{path}",
                 f"git@{host}:{path}", f"ssh://git@{host}/{path}"):
        out.append(base)
    if remote["scheme"] != "http":
        out.append(f"https://{host}/{path}")
    return sorted(set(out))
