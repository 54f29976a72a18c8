"""Is a .git/config the session wrote harmless for git outside the session?
(namewatch.py: the git-config protected name is content-checked, not
quarantined on sight.)

Harmless means every key is on an allowlist of inert keys (INERT), each
value of the expected form; anything else is refused, and so is anything
this module cannot read with certainty. Two parsers must agree:

* parse(): a strict parser of a subset of git's config syntax, the subset
  git itself writes: UTF-8, no NUL, no CR, no BOM, sections `[name]` or
  `[name "sub"]` on a line of their own (no old-style `[name.sub]`, no
  backslash in a subsection), `key`, `key = value` with git's quoting and
  escapes (\\ \" \\n \\t \\b), no continuation lines. Anything else raises
  ConfigError.
* git's own parser (`git config --file - --no-includes --list -z`, reading
  the very bytes parse() read from stdin, with a clean environment:
  GIT_CONFIG_NOSYSTEM=1, GIT_CONFIG_GLOBAL=/dev/null, HOME=/nonexistent;
  reading a file executes nothing). Its (key, value) list must equal
  parse()'s, else refused; so is a git that fails or takes longer than
  GIT_TIMEOUT. Without a git binary, parse() alone decides.

Values are checked too: no control character in text (no escape sequences
for the developer's terminal), remote URLs by url_ok().

What remains: the allowlist is a judgment (INERT says why each key is
there); git versions that give an allowed key new powers would need it
revisited. git runs on the daemon's loop (~2 ms a check).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess

MAX_BYTES = 64 << 10                 # a .git/config larger than this is refused
GIT_TIMEOUT = 2.0                    # s; the daemon waits for it


class ConfigError(ValueError):
    pass


# -- values ------------------------------------------------------------------------------
_BOOL = {"true", "false", "yes", "no", "on", "off", "1", "0", ""}


def _bool(v):
    return v is None or v.lower() in _BOOL


def _one_of(*words):
    return lambda v: v is not None and v.lower() in words


def _bool_or(*words):
    return lambda v: _bool(v) or (v is not None and v.lower() in words)


def _text(v):
    """A string with no control character but tab (git prints some of these:
    no escape sequences for the developer's terminal)."""
    return v is not None and not any((ord(c) < 0x20 and c != "\t") or 0x7f <= ord(c) < 0xa0
                                     for c in v)


_URL_SCHEMES = {"http", "https", "git", "ssh", "git+ssh", "ssh+git", "file"}
_TRANSPORT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9+.-]*::")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def url_ok(v) -> bool:
    """A remote URL (or a path, or a remote's name) that git reaches with its
    own transports: no `<transport>::<address>` (ext:: runs a command, fd::
    and others start remote helpers), no scheme git would hand to a helper,
    nothing that could read as an option."""
    if not _text(v) or not v or v.startswith("-"):
        return False
    if any(ord(c) < 0x20 or ord(c) == 0x7f for c in v):
        return False
    if _TRANSPORT.match(v) or "::" in v.split("/", 1)[0]:
        return False
    low = v.lower()
    if low.startswith(("ext:", "fd:")):
        return False
    m = _SCHEME.match(v)
    if m:
        if m.group(1).lower() not in _URL_SCHEMES:
            return False
        rest = v[m.end():]
        host = rest.split("@", 1)[-1] if "@" in rest.split("/", 1)[0] else rest
        return not rest.startswith("-") and not host.startswith("-")
    # scp-like [user@]host:path, or a local path: nothing to start but git itself
    host = v.split(":", 1)[0]
    return not host.split("@", 1)[-1].startswith("-")


def _int(v):
    return v is not None and re.fullmatch(r"-?[0-9]{1,9}", v) is not None


# (section, key) -> value check; subsection "*" for any. Why each is inert: it
# is a boolean or an enumeration of git's own behaviours, a name, a refspec, or
# a URL checked by url_ok(); none names a program, a file git reads for more
# configuration, or another work tree.
INERT = {
    ("core", "repositoryformatversion"): _one_of("0", "1"),
    ("core", "filemode"): _bool,
    ("core", "bare"): _bool,
    ("core", "logallrefupdates"): _bool_or("always"),
    ("core", "ignorecase"): _bool,
    ("core", "precomposeunicode"): _bool,
    ("core", "symlinks"): _bool,
    ("core", "autocrlf"): _bool_or("input"),
    ("core", "eol"): _one_of("lf", "crlf", "native"),
    ("core", "safecrlf"): _bool_or("warn"),
    ("core", "quotepath"): _bool,
    ("core", "sparsecheckout"): _bool,
    ("core", "sparsecheckoutcone"): _bool,
    ("extensions", "objectformat"): _one_of("sha1", "sha256"),
    ("init", "defaultbranch"): _text,
    ("user", "name"): _text,
    ("user", "email"): _text,
    ("branch*", "remote"): url_ok,          # a remote's name, or a URL git fetches from
    ("branch*", "pushremote"): url_ok,
    ("branch*", "merge"): _text,
    ("branch*", "rebase"): _bool_or("merges", "interactive", "i", "m"),
    ("branch*", "description"): _text,
    ("remote*", "url"): url_ok,
    ("remote*", "pushurl"): url_ok,
    ("remote*", "fetch"): _text,
    ("remote*", "push"): _text,
    ("remote*", "tagopt"): _one_of("--no-tags", "--tags"),
    ("remote*", "prune"): _bool,
    ("remote*", "mirror"): _bool,
    ("pull", "rebase"): _bool_or("merges", "interactive", "i", "m"),
    ("pull", "ff"): _bool_or("only"),
    ("push", "default"): _one_of("nothing", "current", "upstream", "tracking", "simple",
                                 "matching"),
    ("push", "autosetupremote"): _bool,
    ("fetch", "prune"): _bool,
    ("branch", "autosetupmerge"): _bool_or("always", "inherit", "simple"),
    ("branch", "autosetuprebase"): _one_of("never", "local", "remote", "always"),
    ("commit", "gpgsign"): _one_of("false", "no", "off", "0"),     # not signing runs nothing
    ("tag", "gpgsign"): _one_of("false", "no", "off", "0"),
    ("merge", "conflictstyle"): _one_of("merge", "diff3", "zdiff3"),
    ("rerere", "enabled"): _bool,
    ("status", "showuntrackedfiles"): _one_of("no", "normal", "all"),
    ("color", "ui"): _bool_or("auto", "always", "never"),
    ("gc", "auto"): _int,
}


def refusal(entries) -> tuple[str, str] | None:
    """(key, why) of the first entry not on the allowlist, or None."""
    for key, value in entries:
        section, _, rest = key.partition(".")
        sub, _, name = rest.rpartition(".")
        if not name:
            return key, "not a key"
        check = INERT.get((section + ("*" if sub else ""), name))
        if check is None and section == "advice" and not sub:
            check = _bool                    # advice.*: which hints git prints
        if check is None:
            return key, "not an inert key"
        if sub and (not _text(sub) or sub.startswith("-")):
            return key, "subsection"
        if not check(value):
            return key, "value not allowed"
    return None


# -- the strict parser ----------------------------------------------------------------------
_SECTION = re.compile(r'\[([A-Za-z0-9-]+)(?:[ \t]+"([^"\\\n]*)")?\][ \t]*(?:[#;].*)?')
_KEY = re.compile(r"([A-Za-z][A-Za-z0-9-]*)[ \t]*")
_ESC = {"\\": "\\", '"': '"', "n": "\n", "t": "\t", "b": "\b"}


def parse(data: bytes) -> list[tuple[str, str | None]]:
    """(key, value) in file order, keys as git lists them (section and name
    lowercased, subsection kept); value None for a bare `key` (true)."""
    if len(data) > MAX_BYTES:
        raise ConfigError("too big")
    if b"\0" in data or b"\r" in data:
        raise ConfigError("NUL or CR")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError("not UTF-8") from None
    if text.startswith("\ufeff"):
        raise ConfigError("byte order mark")
    out = []
    section = None
    for n, line in enumerate(text.split("\n"), 1):
        s = line.lstrip(" \t")
        if not s or s[0] in "#;":
            continue
        if s[0] == "[":
            m = _SECTION.fullmatch(s)
            if not m:
                raise ConfigError(f"line {n}: section header")
            section = m.group(1).lower() + (f".{m.group(2)}" if m.group(2) is not None else "")
            continue
        if section is None:
            raise ConfigError(f"line {n}: key outside a section")
        m = _KEY.match(s)
        if not m:
            raise ConfigError(f"line {n}: key")
        rest = s[m.end():]
        key = f"{section}.{m.group(1).lower()}"
        if not rest or rest[0] in "#;":
            out.append((key, None))
            continue
        if rest[0] != "=":
            raise ConfigError(f"line {n}: expected '='")
        out.append((key, _value(rest[1:], n)))
    return out


def _value(s: str, n: int) -> str:
    """git's parse_value() on one line: quotes, escapes, comments, and spaces
    outside quotes (leading and trailing dropped, each inner one kept as ' ')."""
    buf: list[str] = []
    space = 0
    quote = False
    i = 0
    while i < len(s):
        c = s[i]
        i += 1
        if not quote and c in " \t":
            if buf:
                space += 1
            continue
        if not quote and c in "#;":
            break
        if space:
            buf.append(" " * space)
            space = 0
        if c == "\\":
            if i >= len(s):
                raise ConfigError(f"line {n}: continuation line")
            e = s[i]
            i += 1
            if e not in _ESC:
                raise ConfigError(f"line {n}: escape \\{e}")
            buf.append(_ESC[e])
        elif c == '"':
            quote = not quote
        else:
            buf.append(c)
    if quote:
        raise ConfigError(f"line {n}: unterminated quote")
    return "".join(buf)


# -- git's parser, as a second opinion ----------------------------------------------------------
def git_parse(data: bytes, git: str | None = None) -> list[tuple[str, str | None]] | None:
    """What git reads in `data` (no includes, nothing else read); None
    without a git binary. Raises ConfigError if git refuses it."""
    git = git or shutil.which("git", path="/usr/bin:/bin:/usr/local/bin")
    if not git:
        return None
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_CONFIG_GLOBAL": "/dev/null", "LC_ALL": "C"}
    try:
        p = subprocess.run([git, "config", "--file", "-", "--no-includes", "--list", "-z"],
                           input=data, env=env, cwd="/", capture_output=True,
                           timeout=GIT_TIMEOUT, close_fds=True)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ConfigError(f"git config: {e}") from None
    if p.returncode != 0:
        raise ConfigError("git config: " + p.stderr.decode(errors="replace").strip()[:200])
    out = []
    for item in p.stdout.split(b"\0")[:-1]:
        k, nl, v = item.partition(b"\n")
        out.append((os.fsdecode(k), v.decode("utf-8", "replace") if nl else None))
    return out


def check(data: bytes, git: str | None = None) -> dict:
    """{"ok": bool, "keys": n} or {"ok": False, "key": k?, "why": ...}."""
    try:
        entries = parse(data)
        theirs = git_parse(data, git)
    except ConfigError as e:
        return {"ok": False, "why": f"cannot be read with certainty: {e}"}
    if theirs is not None and theirs != entries:
        return {"ok": False, "why": "git reads it differently from corral's parser"}
    bad = refusal(entries)
    if bad is not None:
        return {"ok": False, "key": bad[0], "why": f"{bad[0]}: {bad[1]}"}
    return {"ok": True, "keys": len(entries)}
