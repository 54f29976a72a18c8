"""The git gateway's credentials: which upstream each remote is, and the token
that reaches it. Root writes them; they live only in corrald's memory.

/etc/corral/git-credentials.toml (corrald --git-credentials PATH, or
CORRAL_GIT_CREDENTIALS, for another path)::

    [[remote]]
    url = "https://github.com/ORG/REPO"      # what sessions name (--git-remote); its
                                             # git@ and ssh:// spellings match too
    upstream = "https://github.com/ORG/REPO.git"   # optional: where the gateway goes
    username = "x-access-token"              # optional (HTTP basic auth user)
    token = "ghs_..."                        # or token_file = "/root/gh-token"
                                             # or token_env = "GITHUB_TOKEN" (corrald's env)

The file must be root's and writable by nobody else; one that holds a token
inline must not be readable by anyone else either. An entry's url may end in
"/*" to cover every repository below it (https://github.com/ORG/*).

Short-lived tokens. Every entry becomes a TokenSource, asked for a token each
time a session's endpoint talks to its upstream (token(session_id, remote)).
StaticToken (token, token_file, token_env) and CommandToken::

    token_command = ["/usr/local/sbin/mint-gh-token", "{repo}", "{session}"]
    token_ttl = 300            # seconds a minted token is kept for a session

The command (root's) prints a token minted for that session, e.g. a GitHub App
installation token scoped to the one repository and contents:write. A native
GitHub App source (sign the JWT in corrald, cache until shortly before expiry)
would be one more TokenSource.
"""
from __future__ import annotations

import fnmatch
import os
import stat
import threading
import tomllib
from dataclasses import dataclass

from corral.policy.errors import PolicyError
from corral.policy.gitremote import parse_remote

DEFAULT_PATH = "/etc/corral/git-credentials.toml"
ENTRY_KEYS = ("url", "upstream", "username", "token", "token_file", "token_env", "token_command",
              "token_ttl")
TOKEN_KINDS = ("token", "token_file", "token_env", "token_command")


class CredentialsError(Exception):
    """The credentials file is missing, malformed or unsafe: the message names
    the file, the problem and the fix (never a token)."""


class TokenSource:
    """Where a remote's token comes from. Subclasses mint per session."""

    def token(self, session_id: str, remote: str) -> str:
        raise NotImplementedError


class TokenError(Exception):
    """A token could not be had (the message names the source, never a token)."""


class StaticToken(TokenSource):
    def __init__(self, value: str):
        self._value = value

    def token(self, session_id: str, remote: str) -> str:
        return self._value

    def __repr__(self) -> str:          # never the value
        return "StaticToken(***)"


class CommandToken(TokenSource):
    """A token minted per session by a command root configured (e.g. one that
    signs a GitHub App JWT and asks for an installation token scoped to the
    repository): argv with {session} and {repo} filled in, run with a clean
    environment, the token on the first line of its stdout; kept per session
    for `ttl` seconds (set it below the token's lifetime)."""

    def __init__(self, argv: list[str], ttl: float):
        self.argv, self.ttl = list(argv), ttl
        self._cache: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def token(self, session_id: str, remote: str) -> str:
        import subprocess
        import time
        with self._lock:
            hit = self._cache.get(session_id)
            if hit is not None and hit[1] > time.monotonic():
                return hit[0]
            argv = [a.replace("{session}", session_id).replace("{repo}", remote) for a in self.argv]
            try:
                p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=30,
                                   env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"})
            except (OSError, subprocess.TimeoutExpired) as e:
                raise TokenError(f"token_command {self.argv[0]}: {type(e).__name__}") from None
            value = p.stdout.decode(errors="replace").split("\n", 1)[0].strip()
            if p.returncode != 0 or not value:
                raise TokenError(f"token_command {self.argv[0]} exited {p.returncode} "
                                 f"{'without a token' if not value else ''}".strip())
            self._cache = {k: v for k, v in self._cache.items() if v[1] > time.monotonic()}
            self._cache[session_id] = (value, time.monotonic() + self.ttl)
            return value

    def forget(self, session_id: str) -> None:
        with self._lock:
            self._cache.pop(session_id, None)

    def __repr__(self) -> str:
        return f"CommandToken({self.argv[0]})"


@dataclass(frozen=True)
class Remote:
    pattern: str            # the key (host/ORG/REPO), maybe ending in "/*"
    upstream: str           # an https:// (or http:// on loopback, for tests) URL; "" = derived
    username: str
    source: TokenSource

    def upstream_for(self, key: str, parsed: dict) -> str:
        if self.upstream:
            return self.upstream.rstrip("/")
        host = parsed["host"] + (f":{parsed['port']}" if parsed["port"] else "")
        scheme = "http" if parsed["scheme"] == "http" else "https"
        return f"{scheme}://{host}/{parsed['path']}.git"


def credentials_path(explicit: str | None = None) -> str:
    return explicit or os.environ.get("CORRAL_GIT_CREDENTIALS") or DEFAULT_PATH


def _err(path: str, msg: str) -> CredentialsError:
    return CredentialsError(f"{path}: {msg}")


def load(path: str, environ=None) -> tuple[list[Remote], list[str]]:
    """-> (remotes, token files read). Raises CredentialsError."""
    environ = os.environ if environ is None else environ
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise _err(path, "no git credentials file: root writes one ([[remote]] url = ..., "
                         "token_file = ...; see README 'git gateway'), or corrald "
                         "--git-credentials PATH names another") from None
    except OSError as e:
        raise _err(path, f"cannot open: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        raw = os.read(fd, 1 << 20)
    finally:
        os.close(fd)
    _check_owner(path, st, "credentials file")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise _err(path, f"not valid TOML: {e} (fix the syntax)") from None
    extra = set(data) - {"remote"}
    if extra:
        raise _err(path, f"unknown key(s) {sorted(extra)}: the file holds [[remote]] tables only")
    entries = data.get("remote", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise _err(path, "remote: expected [[remote]] tables")
    out, files = [], []
    for i, e in enumerate(entries, 1):
        where = f"[[remote]] #{i}"
        bad = set(e) - set(ENTRY_KEYS)
        if bad:
            raise _err(path, f"{where}: unknown key(s) {sorted(bad)}: expected {list(ENTRY_KEYS)}")
        url = e.get("url")
        if not isinstance(url, str):
            raise _err(path, f"{where}: url is missing: the remote sessions name, like "
                             "https://github.com/ORG/REPO")
        star = url.endswith("/*")
        try:
            parsed = parse_remote(url[:-2] if star else url)
            if e.get("upstream") is not None:
                up = parse_remote(e["upstream"])
                if up["scheme"] not in ("https", "http"):
                    raise PolicyError("upstream: the gateway talks smart HTTP: an https:// URL")
        except PolicyError as ex:
            raise _err(path, f"{where}: {ex}") from None
        kinds = [k for k in TOKEN_KINDS if k in e]
        if len(kinds) != 1:
            raise _err(path, f"{where} ({url}): give exactly one of {', '.join(TOKEN_KINDS)}")
        kind, val = kinds[0], e[kinds[0]]
        user = e.get("username", "x-access-token")
        if not isinstance(user, str) or not user or ":" in user:
            raise _err(path, f"{where} ({url}): username: expected a name without ':'")
        key = parsed["key"] + ("/*" if star else "")
        upstream = (e.get("upstream") or "").strip()
        if kind == "token_command":
            out.append(Remote(key, upstream, user, _command_source(path, where, url, val,
                                                                   e.get("token_ttl", 300))))
            files.append(val[0])        # hidden from sessions like the token files
            continue
        if "token_ttl" in e:
            raise _err(path, f"{where} ({url}): token_ttl goes with token_command")
        if not isinstance(val, str) or not val:
            raise _err(path, f"{where} ({url}): {kind}: expected a non-empty string")
        if kind == "token":
            if st.st_mode & 0o077:
                raise _err(path, f"{where} ({url}): a token inline in a file others may read "
                                 f"(mode {stat.S_IMODE(st.st_mode):04o}): chmod 600 {path}, or "
                                 "use token_file")
            token = val
        elif kind == "token_file":
            token = _read_token_file(path, where, val)
            files.append(val)
        else:
            token = environ.get(val, "")
            if not token:
                raise _err(path, f"{where} ({url}): token_env {val}: not set in corrald's "
                                 "environment (set it in the unit's Environment=, or use "
                                 "token_file)")
        token = token.strip()
        if not token or any(c in token for c in "\r\n\0"):
            raise _err(path, f"{where} ({url}): the token is empty or has a line break")
        out.append(Remote(key, upstream, user, StaticToken(token)))
    return out, files


def _command_source(path: str, where: str, url: str, argv, ttl) -> CommandToken:
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) and a for a in argv):
        raise _err(path, f"{where} ({url}): token_command: expected [\"/path/to/cmd\", args...]")
    if not os.path.isabs(argv[0]):
        raise _err(path, f"{where} ({url}): token_command: {argv[0]} is not an absolute path")
    try:
        st = os.stat(argv[0])
    except OSError as e:
        raise _err(path, f"{where} ({url}): token_command {argv[0]}: {e.strerror}") from None
    _check_owner(argv[0], st, "token command")
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 1 <= ttl <= 86400:
        raise _err(path, f"{where} ({url}): token_ttl: seconds from 1 to 86400")
    return CommandToken(argv, float(ttl))


def _check_owner(path: str, st, what: str) -> None:
    if st.st_uid != 0:
        raise _err(path, f"the {what} must belong to root (it is uid {st.st_uid}): "
                         f"chown root {path}")
    if st.st_mode & 0o022:
        raise _err(path, f"the {what} is writable by others (mode "
                         f"{stat.S_IMODE(st.st_mode):04o}): chmod go-w {path}")


def _read_token_file(path: str, where: str, tf: str) -> str:
    try:
        fd = os.open(tf, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise _err(path, f"{where}: token_file {tf}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        raw = os.read(fd, 65536)
    finally:
        os.close(fd)
    _check_owner(tf, st, "token file")
    if st.st_mode & 0o077:
        raise _err(tf, f"the token file is readable by others (mode "
                       f"{stat.S_IMODE(st.st_mode):04o}): chmod 600 {tf}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _err(tf, "the token file is not UTF-8 text") from None


def find(remotes: list[Remote], key: str) -> Remote | None:
    """The entry for a remote's key: an exact one first, else the longest "/*" one."""
    for r in remotes:
        if r.pattern == key:
            return r
    stars = [r for r in remotes if r.pattern.endswith("/*")
             and fnmatch.fnmatchcase(key, r.pattern[:-2] + "/*")]
    return max(stars, key=lambda r: len(r.pattern), default=None)
