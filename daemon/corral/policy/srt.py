"""Anthropic sandbox-runtime / Claude Code sandbox settings (JSON) -> a corral
policy, with a warning for everything corral cannot enforce.

Two shapes are accepted:
* sandbox-runtime (`~/.srt-settings.json`): top-level `filesystem` and `network`;
  writes are allowed only where allowWrite says (empty: nowhere).
* Claude Code settings (`.claude/settings.json`): the `sandbox` object; writes
  go to the working directory and temp dir plus sandbox.filesystem.allowWrite,
  and permission rules Edit(...)/Read(...)/WebFetch(domain:...) are merged in
  the way Claude Code merges them. Path prefixes: `//x` absolute, `~/x` home,
  `/x` relative to the settings file's directory, `./x` or `x` the working dir.

Precedence (their docs): denyWrite wins over allowWrite (as in corral);
allowRead wins over denyRead except where the denyRead path is more specific
(corral's "most specific wins" rule; a path in both lists is dropped from
deny_read); deniedDomains win over allowedDomains (as in corral). Network
access not listed is denied (srt: empty allowedDomains = no network).

One converter per part of the settings: the shape (_claude_sections,
_srt_sections), filesystem (_filesystem), network (_network), Claude Code's
defaults and permission rules (_claude_defaults, _permissions), then the
precedence rules (_precedence).
"""
from __future__ import annotations

import glob as _glob
import ipaddress
import json
import os
import re
from dataclasses import dataclass, field

from corral.policy import model as pol
from corral.policy.domains import file_rule_error
from corral.policy.errors import PolicyError
from corral.policy.paths import FS_KEYS, GLOB_CHARS

MAX_GLOB_MATCHES = 1000
FS_MAP = {"denyRead": "deny_read", "allowRead": "allow_read",
          "allowWrite": "allow_write", "denyWrite": "deny_write"}
NET_IGNORED = {
    "allowUnixSockets": "unix socket allowances are not imported (corral does not filter "
                        "unix sockets by path in the network policy)",
    "allowAllUnixSockets": "corral does not block unix sockets in the network policy",
    "allowLocalBinding": "corral does not restrict bind(); listening sockets are allowed",
    "httpProxyPort": "corral enforces in the kernel and uses no HTTP proxy",
    "socksProxyPort": "corral enforces in the kernel and uses no SOCKS proxy",
    "tlsTerminate": "corral does not terminate TLS or filter requests",
    "filterRequest": "corral does not filter HTTP requests",
    "deniedDomainReasons": "corral does not show per-domain reasons",
    "allowManagedDomainsOnly": "managed-settings layering is Claude Code's, not corral's",
    "mitmProxy": "corral uses no proxy",
}
# Claude Code's permission rules that say something about the sandbox
_PERMISSION_RULE = re.compile(r"^(Edit|Read|WebFetch)\((.*)\)$")
_PERMISSION_FS = {("Edit", "allow"): "allowWrite", ("Edit", "deny"): "denyWrite",
                  ("Read", "deny"): "denyRead"}


@dataclass
class _Import:
    """One settings file being converted: where it is, which shape, what came out."""
    path: str
    cwd: str
    claude: bool
    warnings: list[str] = field(default_factory=list)
    fs: dict = field(default_factory=lambda: {k: [] for k in FS_KEYS})
    net: dict = field(default_factory=lambda: {"allow": [], "deny": [], "allow_domains": [],
                                               "deny_domains": []})
    deny_all_domains: bool = False

    @property
    def prefix(self) -> str:
        return "sandbox." if self.claude else ""

    def warn(self, msg: str) -> None:
        self.warnings.append(f"{self.path}: {msg}")

    def add_fs(self, srt_key: str, paths) -> None:
        lst = self.fs[FS_MAP[srt_key]]
        for e in paths:
            if e not in lst:
                lst.append(e)


def _read(path: str, read=None) -> dict:
    try:
        if read is not None:
            raw = read(path)
        else:
            with open(path, "rb") as fh:
                raw = fh.read()
        data = json.loads(raw.decode("utf-8"))
    except OSError as e:
        raise PolicyError(f"{path}: cannot read settings: {e.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PolicyError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise PolicyError(f"{path}: expected a JSON object")
    return data


def _is_claude(data: dict) -> bool:
    return "sandbox" in data or ("filesystem" not in data and "network" not in data
                                 and "permissions" in data)


def _claude_sections(data: dict, imp: _Import) -> tuple:
    """(filesystem, network) of a Claude Code settings file's `sandbox` object."""
    sb = data.get("sandbox") or {}
    if not isinstance(sb, dict):
        raise PolicyError(f"{imp.path}: sandbox: expected an object")
    for k in data:
        if k not in ("sandbox", "permissions"):
            imp.warn(f"{k}: not a sandbox setting, not imported")
    if sb.get("enabled") is False:
        imp.warn("sandbox.enabled is false; corral enforces these settings anyway")
    for k in sb:
        if k not in ("filesystem", "network", "enabled"):
            imp.warn(f"sandbox.{k}: Claude Code option, not enforced by corral")
    return sb.get("filesystem") or {}, sb.get("network") or {}


def _srt_sections(data: dict, imp: _Import) -> tuple:
    """(filesystem, network) of a sandbox-runtime settings file."""
    for k in data:
        if k not in ("filesystem", "network"):
            imp.warn(f"{k}: sandbox-runtime option, not enforced by corral")
    net_in = data.get("network")
    if net_in is None:
        imp.warn("no network section: all network access is denied (as in srt)")
        net_in = {}
    return data.get("filesystem") or {}, net_in


def _conv_path(p, key: str, imp: _Import) -> str | None:
    """A settings path in corral's terms (Claude Code's // and / prefixes)."""
    if not isinstance(p, str) or not p:
        imp.warn(f"{imp.prefix}filesystem.{key}: {p!r} is not a path, skipped")
        return None
    if imp.claude:
        if p.startswith("//"):
            return p[1:]
        if p.startswith("/"):
            return os.path.join(os.path.dirname(os.path.abspath(imp.path)), p[1:])
    return p


def _expand(p: str, key: str, imp: _Import) -> list[str]:
    """Literal paths for a pattern; globs expanded against what exists now."""
    if p.endswith("/**") and not (GLOB_CHARS & set(p[:-3])):
        return [p[:-3] or "/"]
    if p.endswith("/") and len(p) > 1:
        p = p.rstrip("/")
    if not (GLOB_CHARS & set(p)):
        return [p]
    if key == "allowWrite":
        imp.warn(f"{imp.prefix}filesystem.allowWrite: glob {p!r} skipped (as srt does on Linux): "
                 "corral cannot grant writes by pattern")
        return []
    base = os.path.expanduser(p) if p.startswith("~") else p
    if not os.path.isabs(base):
        base = os.path.join(imp.cwd, base)
    hits = sorted(_glob.glob(base, recursive=True))
    if len(hits) > MAX_GLOB_MATCHES:
        imp.warn(f"{imp.prefix}filesystem.{key}: glob {p!r} matches {len(hits)} paths; "
                 f"only the first {MAX_GLOB_MATCHES} are used")
        hits = hits[:MAX_GLOB_MATCHES]
    imp.warn(f"{imp.prefix}filesystem.{key}: glob {p!r} expanded to the {len(hits)} path(s) that "
             "exist now; paths created later that match it are not covered")
    return hits


def _add_path(p, key: str, imp: _Import) -> None:
    cp = _conv_path(p, key, imp)
    if cp is not None:
        imp.add_fs(key, _expand(cp, key, imp))


def _filesystem(fs_in: dict, imp: _Import) -> None:
    for k, v in fs_in.items():
        if k not in FS_MAP:
            imp.warn(f"{imp.prefix}filesystem.{k}: unknown option, not imported")
            continue
        if not isinstance(v, list):
            raise PolicyError(f"{imp.path}: {imp.prefix}filesystem.{k}: expected an array of paths")
        for p in v:
            _add_path(p, k, imp)


def _ip_literal(s: str) -> str | None:
    """'1.2.3.4' / '1.2.3.4:443' / '[::1]:443' -> the corral rule text, or None."""
    host, port = s, None
    if s.startswith("["):
        host, _, rest = s[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None
    elif s.count(":") == 1:
        host, port = s.split(":")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    cidr = f"{ip}/{ip.max_prefixlen}"
    if port:
        return f"[{cidr}]:{port}" if ip.version == 6 else f"{cidr}:{port}"
    return cidr


def _domain(d, k: str, imp: _Import) -> None:
    """One entry of allowedDomains / deniedDomains."""
    allow = k == "allowedDomains"
    if not isinstance(d, str) or not d.strip():
        imp.warn(f"{imp.prefix}network.{k}: {d!r} is not a domain, skipped")
        return
    d = d.strip()
    lit = _ip_literal(d)
    if lit:
        imp.net["allow" if allow else "deny"].append(lit)
        return
    if d == "*" or d.startswith("*:"):
        if allow:
            imp.warn(f"{imp.prefix}network.allowedDomains: {d!r} (any domain) is not "
                     "imported: corral does not allow every name; list the domains")
        elif d == "*":
            imp.net["allow_domains"] = []
            imp.deny_all_domains = True
        else:
            imp.warn(f"{imp.prefix}network.deniedDomains: {d!r} (every domain on one "
                     "port) cannot be expressed; not imported")
        return
    if file_rule_error(d, "allow_domains" if allow else "deny_domains"):
        imp.warn(f"{imp.prefix}network.{k}: {d!r} is not a domain pattern corral "
                 "understands, skipped")
        return
    imp.net["allow_domains" if allow else "deny_domains"].append(d)


def _network(net_in: dict, imp: _Import) -> None:
    for k, v in net_in.items():
        if k in ("allowedDomains", "deniedDomains"):
            if not isinstance(v, list):
                raise PolicyError(f"{imp.path}: {imp.prefix}network.{k}: expected an array of domains")
            for d in v:
                _domain(d, k, imp)
        elif k in NET_IGNORED:
            imp.warn(f"{imp.prefix}network.{k}: {NET_IGNORED[k]}")
        else:
            imp.warn(f"{imp.prefix}network.{k}: unknown option, not imported")


def _permissions(perms: dict, imp: _Import) -> None:
    """Claude Code's Edit/Read/WebFetch permission rules; the others govern its
    own tools, not the sandbox, and are counted in one warning."""
    other = 0
    for verdict in ("allow", "deny", "ask"):
        for rule in perms.get(verdict) or []:
            m = _PERMISSION_RULE.match(str(rule))
            if not m or verdict == "ask":
                other += 1
                continue
            tool, arg = m.groups()
            if tool == "WebFetch":
                if arg.startswith("domain:"):
                    imp.net["allow_domains" if verdict == "allow" else "deny_domains"].append(arg[7:])
                else:
                    other += 1
                continue
            key = _PERMISSION_FS.get((tool, verdict))
            if key is None:
                other += 1
                continue
            _add_path(arg, key, imp)
    if other:
        imp.warn(f"permissions: {other} rule(s) govern Claude Code's own tools, not the "
                 "sandbox; not imported")


def _claude_defaults(data: dict, net_in: dict, imp: _Import) -> None:
    """Claude Code's defaults: write the working directory and temp; then its
    permission rules; it would ask about unlisted domains, corral denies them."""
    imp.fs["allow_write"] = [".", os.environ.get("TMPDIR", "/tmp")] + \
        [p for p in imp.fs["allow_write"] if p not in (".",)]
    perms = data.get("permissions") or {}
    if isinstance(perms, dict):
        _permissions(perms, imp)
    if not net_in.get("allowedDomains"):
        imp.warn("sandbox.network.allowedDomains is empty: Claude Code would ask before new "
                 "domains; corral cannot ask, so they are denied")


def _precedence(imp: _Import) -> None:
    # allowRead wins over an equally specific denyRead.
    imp.fs["deny_read"] = [p for p in imp.fs["deny_read"] if p not in imp.fs["allow_read"]]
    if imp.deny_all_domains:
        if imp.net["allow_domains"]:
            imp.warn(f"deniedDomains '*' denies every domain: allowedDomains "
                     f"{imp.net['allow_domains']} dropped")
        imp.net["allow_domains"] = []
    # Dropping deny_domains entries already covered is not needed: deny wins in corral.


def import_settings(path: str, cwd: str | None = None,
                    loaded: list[str] | None = None, read=None) -> tuple[dict, list[str]]:
    """Sandbox settings JSON -> (policy, warnings). Anything corral cannot enforce
    is reported in the warnings. `loaded`, if given, gets the file's absolute
    path (the mandatory protection "policy-files")."""
    data = _read(path, read)
    imp = _Import(path, cwd or os.getcwd(), _is_claude(data))
    fs_in, net_in = (_claude_sections if imp.claude else _srt_sections)(data, imp)
    if not isinstance(fs_in, dict) or not isinstance(net_in, dict):
        raise PolicyError(f"{path}: {imp.prefix}filesystem and {imp.prefix}network must be objects")
    _filesystem(fs_in, imp)
    _network(net_in, imp)
    if imp.claude:
        _claude_defaults(data, net_in, imp)
    _precedence(imp)
    out = {"filesystem": dict(imp.fs), "network": dict(imp.net)}
    ap = os.path.abspath(path)
    if loaded is not None and ap not in loaded:
        loaded.append(ap)
    # Check the result the way the daemon will.
    pol.check_limits(out, lambda section, key, msg: PolicyError(f"{path}: {section}.{key}: {msg}"))
    for k in ("allow", "deny"):
        for r in out["network"][k]:
            pol.parse_net_rule(r)
    return out, imp.warnings
