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
StaticToken is the one implemented; a GitHub App installation token would be
another TokenSource (mint with the app's key, scoped to the one repository and
to contents:write, cache until a minute before it expires), chosen by a key
like `github_app = {app_id, private_key_file, installation_id}` in the entry.
"""
from __future__ import annotations

import fnmatch
import os
import stat
import tomllib
from dataclasses import dataclass

from corral.policy.errors import PolicyError
from corral.policy.gitremote import parse_remote

DEFAULT_PATH = "/etc/corral/git-credentials.toml"
ENTRY_KEYS = ("url", "upstream", "username", "token", "token_file", "token_env")


class CredentialsError(Exception):
    """The credentials file is missing, malformed or unsafe: the message names
    the file, the problem and the fix (never a token)."""


class TokenSource:
    """Where a remote's token comes from. Subclasses mint per session."""

    def token(self, session_id: str, remote: str) -> str:
        raise NotImplementedError


class StaticToken(TokenSource):
    def __init__(self, value: str):
        self._value = value

    def token(self, session_id: str, remote: str) -> str:
        return self._value

    def __repr__(self) -> str:          # never the value
        return "StaticToken(***)"


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
        kinds = [k for k in ("token", "token_file", "token_env") if k in e]
        if len(kinds) != 1:
            raise _err(path, f"{where} ({url}): give exactly one of token, token_file, token_env")
        kind, val = kinds[0], e[kinds[0]]
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
        user = e.get("username", "x-access-token")
        if not isinstance(user, str) or not user or ":" in user:
            raise _err(path, f"{where} ({url}): username: expected a name without ':'")
        key = parsed["key"] + ("/*" if star else "")
        out.append(Remote(key, (e.get("upstream") or "").strip(), user, StaticToken(token)))
    return out, files


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
