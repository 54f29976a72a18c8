"""The session policy: one plain dict that travels client -> daemon -> maps.

    {
      "network":    None | {"allow": [rule], "deny": [rule], "allow_domains": [...],
                            "deny_domains": [...], "allow_localhost_ports": [...]},
      "filesystem": None | {"deny_read": [path], "allow_read": [...],
                            "allow_write": [...], "deny_write": [...],
                            "allow_system_write": bool},          # input only, see below
      "syscalls":   {"deny": [name]},
      "unix":       {"allow": [socket path]},                     # normalize() output
      "env":        {"pass": [variable name]},                    # normalize() output
      "allow_system_write": bool,                                 # normalize() output
      "git":        None | {"remote", "repo", "push_branch", "allow_force",
                            "max_push_bytes"},                    # policy/gitremote.py
    }

Unix sockets. A session may always reach the Unix sockets its own processes
bound (and socketpairs); any other pathname socket only when ``unix.allow``
names it. Input: ``[network] allow_unix = [...]`` (what users write) or a
``unix = {"allow": [...]}`` section (what normalize() returns, so a returned
policy can be sent back). ``allow_unix`` does not make the IP network
default-deny: a network section holding nothing else is no network section.

A missing network section means "network not restricted by corral". A present
network section is default-deny. Paths are made absolute and canonical once,
at registration, relative to the client's cwd and home.

Files. The filesystem section that normalize() returns holds exactly the four
lists (both file backends take it as it is). Two things are always true of it:

* corral's own code (the daemon's ``protected_write``: its package, venv,
  interpreter, stdlib, bcc, BPF sources, the tools and libraries it runs, see
  protected.py) is in ``deny_write``, whatever the policy says. deny_write beats
  allow_write in both backends, and nothing is removed from the other lists.
* ``allow_write`` names no system tree (SYSTEM_TREES, SYSTEM_ROOTS: "/", /usr,
  /etc, /boot, /lib*, /bin, /sbin, /var/lib, /var/spool, /run/systemd, and /opt,
  /srv, /var, /run themselves) unless the policy says
  ``filesystem.allow_system_write = true`` (CLI ``--allow-system-write``): a
  session that may write there could rewrite system binaries and configuration,
  e.g. cron and systemd units, and so get out of any sandbox. The temp dirs,
  homes and projects (/tmp, /var/tmp, /dev/shm, /home/..., /opt/x, /srv/x) are not
  system trees. The flag comes back at the top level of the normalized policy
  (``"allow_system_write": true``), not in the section, so the section stays
  the four lists; normalize() accepts it in either place, so a policy the
  daemon returned can be sent back as it is.

A policy with no filesystem section (raw API clients; it used to mean "files
unrestricted") is normalized to what that always meant, made explicit:
``allow_write = ["/"]`` with ``allow_system_write`` on, plus the protected
``deny_write``; so corral's code is read-only in every session, and the client
applies the section the daemon returns.

Limits (MAX_*): counts and lengths are checked before anything is parsed, so a
huge policy costs a length check, not a parse, and leaves no state behind.
Paths may not contain ".." components (say the path you mean).
"""
from __future__ import annotations

import functools
import ipaddress
import os
import threading
from collections import OrderedDict, namedtuple
from dataclasses import dataclass

from corral.bounded import Bounded
from corral.kernel.mountinfo import under
from corral.policy.domains import normalize_rules, uncovered_domains
from corral.policy.errors import PolicyError, short as _short
from corral.policy.paths import FS_KEYS, MAX_PATH_BYTES, expand_path, unrestricted_fs
from corral.policy.ports import MAX_PORT_LEN, parse_ports, port_text

NET_LIST_KEYS = ("allow", "deny", "allow_domains", "deny_domains", "allow_localhost_ports")
UNIX_KEY = "allow_unix"          # in [network] as users write it; normalized to unix.allow
FS_FLAG_KEYS = ("allow_system_write",)
MAX_PORT_RANGES = 16

# -- limits (README.md, "Policy limits") ---------------------------------------------
MAX_NET_RULES = 1024      # kernel rules of one policy: allow + deny + 2 per localhost port entry
MAX_DOMAINS = 512         # allow_domains + deny_domains
MAX_PATHS = 512           # entries in each filesystem list
MAX_SYSCALLS = 512        # syscalls.deny
MAX_NET_RULE_LEN = 100    # characters of one network rule (the longest valid one is 63)
MAX_DOMAIN_LEN = 2 + 253 + 1 + 12   # "*." + name + "." + ":65535-65535"
MAX_SYSCALL_LEN = 64

# allow_write of one of these, of anything inside one, or of anything that
# contains one ("/") needs allow_system_write.
SYSTEM_TREES = ("/usr", "/etc", "/boot", "/bin", "/sbin", "/lib", "/lib32", "/lib64",
                "/libx32", "/var/lib", "/var/spool", "/run/systemd")
# These themselves (or what contains them) need it; their subdirectories do not
# (/opt/app, /srv/www, /var/tmp, /var/www, /run/user/1000 are ordinary places).
SYSTEM_ROOTS = ("/opt", "/srv", "/var", "/run")
SYSTEM_WRITE_MEANS = ("a session could rewrite system binaries and configuration, e.g. cron "
                      "and systemd units, and run code as root outside the sandbox")
SYSTEM_WRITE_HOW = ("pass --allow-system-write (allow_system_write = true in [filesystem]) to "
                    "allow it anyway; corral's own code paths stay read-only")


@dataclass(frozen=True)
class NetRule:
    net: ipaddress.IPv4Network | ipaddress.IPv6Network
    port_lo: int = 0
    port_hi: int = 65535

    @property
    def any_port(self) -> bool:
        return self.port_lo == 0 and self.port_hi == 65535

    def __str__(self) -> str:
        return self.text

    @functools.cached_property
    def text(self) -> str:
        """The canonical text (every normalisation writes it; kept on the rule,
        which the rule caches share)."""
        addr = str(self.net)
        if self.any_port:
            return addr
        ports = port_text(self.port_lo, self.port_hi)
        if self.net.version == 6:
            return f"[{addr}]:{ports}"
        return f"{addr}:{ports}"

    def covers(self, other: "NetRule") -> bool:
        return (self.net.version == other.net.version and other.net.subnet_of(self.net)
                and self.port_lo <= other.port_lo and other.port_hi <= self.port_hi)


# -- network rules --------------------------------------------------------------------
CacheInfo = namedtuple("CacheInfo", "hits misses maxsize currsize")


class _RuleCache:
    """A bounded LRU of parsed rules that only the daemon's own texts enter."""

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self._d: OrderedDict[str, NetRule] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, text: str) -> NetRule | None:
        with self._lock:
            r = self._d.get(text)
            if r is None:
                self.misses += 1
            else:
                self.hits += 1
                self._d.move_to_end(text)
            return r

    def put(self, text: str, rule: NetRule) -> None:
        with self._lock:
            self._d[text] = rule
            self._d.move_to_end(text)
            while len(self._d) > self.maxsize:
                self._d.popitem(last=False)

    def cache_info(self) -> CacheInfo:
        return CacheInfo(self.hits, self.misses, self.maxsize, len(self._d))

    def cache_clear(self) -> None:
        with self._lock:
            self._d.clear()
            self.hits = self.misses = 0


# Rules the daemon generated itself: the addresses its resolver learned
# (dns.names.rule_text). Every policy install re-parses a session's learned rules
# (one per address); those texts are canonical and bounded, so they are parsed
# once. A client's text is never added: a padded or bogus rule costs its parse
# and is gone.
LEARNED_RULES = _RuleCache(1 << 16)
# Clients' valid rule texts, apart (they cannot push the learned ones out): a
# policy's rules are parsed at every normalisation (a native run normalises
# its policy three times, installs it, and the next run sends the same texts).
# At most 16384 entries of a few hundred bytes; no lock and no LRU order (one
# lookup per rule per normalisation: the learned rules' LRU costs 2 us a rule).
CLIENT_RULES = Bounded(1 << 14)


def parse_learned_rule(text: str) -> NetRule:
    """parse_net_rule for a text the daemon made (cached). Not for client input."""
    r = LEARNED_RULES.get(text)
    if r is None:
        r = _parse_net_rule(text)
        LEARNED_RULES.put(text, r)
    return r


def parse_net_rule(text: str) -> NetRule:
    """CIDR[:PORT[-PORT]]; IPv6 with a port is written [addr/len]:PORT.

    A text the daemon learned (parse_learned_rule) comes from the cache; any
    other is parsed and not kept."""
    if isinstance(text, str):
        if len(text) > MAX_NET_RULE_LEN:
            raise PolicyError(f"network rule {_short(text)}: {len(text)} characters, more than "
                              f"the limit of {MAX_NET_RULE_LEN}")
        r = CLIENT_RULES.get(text) or LEARNED_RULES.get(text)
        if r is not None:
            return r
        r = _parse_net_rule(text)
        return CLIENT_RULES.put(text, r)    # valid only: a bogus one raised above
    return _parse_net_rule(text)


def _parse_net_rule(text) -> NetRule:
    if not isinstance(text, str) or not text.strip():
        raise PolicyError(f"network rule {_short(text)}: expected a string like 10.0.0.0/8:443")
    if len(text) > MAX_NET_RULE_LEN:
        raise PolicyError(f"network rule {_short(text)}: {len(text)} characters, more than "
                          f"the limit of {MAX_NET_RULE_LEN}")
    s = text.strip()
    ports = None
    if s.startswith("["):
        addr, sep, rest = s[1:].partition("]")
        if not sep:
            raise PolicyError(f"network rule {text!r}: missing ']'")
        if rest:
            if not rest.startswith(":"):
                raise PolicyError(f"network rule {text!r}: expected ':PORT' after ']'")
            ports = rest[1:]
    elif s.count(":") == 1:
        addr, _, ports = s.partition(":")
    else:
        addr = s
        _refuse_ambiguous_v6(text, s)
    try:
        net = ipaddress.ip_network(addr, strict=False)
    except ValueError:
        raise PolicyError(f"network rule {text!r}: {addr!r} is not an IP address or CIDR "
                          "(domains go in allow_domains)") from None
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 and net.network_address.ipv4_mapped:
        # ::ffff:a.b.c.d is the IPv4 address; the kernel programs judge it so.
        v4 = net.network_address.ipv4_mapped
        net = ipaddress.ip_network(f"{v4}/{net.prefixlen - 96}")
    lo, hi = (0, 65535) if ports is None else parse_ports(ports, f"network rule {text!r}")
    return NetRule(net, lo, hi)


def _refuse_ambiguous_v6(text: str, s: str) -> None:
    """`::1:80` is the address ::1:80 on every port, but reads as port 80 on ::1."""
    base, _, last = s.rpartition(":")
    if not (last.isdigit() and last.isascii() and len(last) <= 5 and base):
        return
    try:
        ipaddress.IPv6Address(base)
        ipaddress.IPv6Address(s)
    except ValueError:
        return
    raise PolicyError(f"network rule {text!r}: ambiguous: write [{base}]:{last} for port {last} "
                      f"on {base}, or [{s}] for the address {s} on every port")


# -- paths ------------------------------------------------------------------------------
def system_tree(path: str) -> str | None:
    """Why a canonical allow_write path would open a system tree ("/usr is a system
    tree", "/ contains the system trees /usr, /etc, ..."), or None."""
    for t in SYSTEM_TREES + SYSTEM_ROOTS:
        if path == t:
            return f"{path} is a system tree"
    for t in SYSTEM_TREES:
        if under(path, t):
            return f"{path} is inside the system tree {t}"
    inside = [t for t in SYSTEM_TREES + SYSTEM_ROOTS if under(t, path)]
    if inside:
        more = ", ..." if len(inside) > 4 else ""
        return f"{path} contains the system tree{'s' if len(inside) > 1 else ''} " \
               f"{', '.join(inside[:4])}{more}"
    return None


# -- limits -------------------------------------------------------------------------------
def _n(v) -> int:
    return len(v) if isinstance(v, list) else 0


def check_limits(policy: dict, err=None, protected=()) -> None:
    """Counts and lengths of a raw policy dict, before anything is parsed.

    `err(section, key, message)` makes the exception (policy files add file:line);
    lists that are not lists are left to the structure checks. Entries equal to a
    `protected` path (the daemon's own, in a policy it returned) are not counted."""
    if err is None:
        def err(section, key, msg):
            return PolicyError(f"{section}.{key}: {msg}")
    if not isinstance(policy, dict):
        return
    net = policy.get("network")
    if isinstance(net, dict):
        na, nd, npo = _n(net.get("allow")), _n(net.get("deny")), _n(net.get("allow_localhost_ports"))
        total = na + nd + 2 * npo
        if total > MAX_NET_RULES:
            key = max((("allow", na), ("deny", nd), ("allow_localhost_ports", 2 * npo)),
                      key=lambda kv: kv[1])[0]
            raise err("network", key, f"{total} kernel rules ({na} allow + {nd} deny + 2 x {npo} "
                                      f"allow_localhost_ports): more than the limit of "
                                      f"{MAX_NET_RULES} per policy (use CIDR ranges or domains)")
        ndom = _n(net.get("allow_domains")) + _n(net.get("deny_domains"))
        if ndom > MAX_DOMAINS:
            key = "allow_domains" if _n(net.get("allow_domains")) >= _n(net.get("deny_domains")) \
                else "deny_domains"
            raise err("network", key, f"{ndom} domain rules (allow_domains + deny_domains): more "
                                      f"than the limit of {MAX_DOMAINS} (use *.example.com)")
        for key, limit in (("allow", MAX_NET_RULE_LEN), ("deny", MAX_NET_RULE_LEN),
                           ("allow_domains", MAX_DOMAIN_LEN), ("deny_domains", MAX_DOMAIN_LEN),
                           ("allow_localhost_ports", MAX_PORT_LEN)):
            for x in net.get(key) if isinstance(net.get(key), list) else ():
                if isinstance(x, str) and len(x) > limit:
                    raise err("network", key, f"{_short(x)} is {len(x)} characters: more than "
                                              f"the limit of {limit}")
    fs = policy.get("filesystem")
    if isinstance(fs, dict):
        for key in FS_KEYS:
            v = fs.get(key)
            count = _n(v)
            if count > MAX_PATHS and protected:
                count = sum(1 for p in v if not (isinstance(p, str) and p in protected))
            if count > MAX_PATHS:
                raise err("filesystem", key, f"{count} paths: more than the limit of {MAX_PATHS} "
                                             "(a rule for a directory covers everything under it)")
            for p in v if isinstance(v, list) else ():
                if isinstance(p, str) and (len(p) >= MAX_PATH_BYTES or
                                           len(p.encode("utf-8", "surrogatepass")) >= MAX_PATH_BYTES):
                    raise err("filesystem", key, f"path {_short(p)} is "
                                                 f"{len(p.encode('utf-8', 'surrogatepass'))} bytes: "
                                                 f"more than the limit of {MAX_PATH_BYTES - 1} (PATH_MAX)")
    env = policy.get("env")
    if isinstance(env, dict) and _n(env.get("pass")) > MAX_PATHS:
        raise err("env", "pass", f"{len(env['pass'])} names: more than the limit of {MAX_PATHS}")
    for section, key, v in _unix_lists(policy):
        if _n(v) > MAX_PATHS:
            raise err(section, key, f"{len(v)} sockets: more than the limit of {MAX_PATHS}")
        for p in v if isinstance(v, list) else ():
            if isinstance(p, str) and len(p.encode("utf-8", "surrogatepass")) >= MAX_PATH_BYTES:
                raise err(section, key, f"path {_short(p)}: more than the limit of "
                                        f"{MAX_PATH_BYTES - 1} bytes (PATH_MAX)")
    sc = policy.get("syscalls")
    if isinstance(sc, dict):
        v = sc.get("deny")
        if _n(v) > MAX_SYSCALLS:
            raise err("syscalls", "deny", f"{len(v)} syscalls: more than the limit of {MAX_SYSCALLS}")
        for x in v if isinstance(v, list) else ():
            if isinstance(x, str) and len(x) > MAX_SYSCALL_LEN:
                raise err("syscalls", "deny", f"{_short(x)} is {len(x)} characters: more than the "
                                              f"limit of {MAX_SYSCALL_LEN}")


def _unix_lists(policy: dict):
    """(section, key, list) of each place a raw policy names allowed Unix sockets."""
    net, ux = policy.get("network"), policy.get("unix")
    if isinstance(net, dict) and UNIX_KEY in net:
        yield "network", UNIX_KEY, net.get(UNIX_KEY)
    if isinstance(ux, dict) and "allow" in ux:
        yield "unix", "allow", ux.get("allow")


def rule_count(policy: dict | None) -> int:
    """Kernel rule entries a (normalized) policy installs: network allow + deny +
    2 per allow_localhost_ports entry (127.0.0.0/8 and ::1). DNS-learned rules are
    not counted (they come and go with answers)."""
    net = (policy or {}).get("network")
    if not isinstance(net, dict):
        return 0
    return _n(net.get("allow")) + _n(net.get("deny")) + 2 * _n(net.get("allow_localhost_ports"))


# -- normalize ------------------------------------------------------------------------------
def _section(policy: dict, name: str, keys, flags=()) -> dict | None:
    """A section's table, checked for unknown keys, list values and bool flags; None if absent."""
    sec = policy.get(name)
    if sec is None:
        return None
    if not isinstance(sec, dict):
        raise PolicyError(f"{name}: expected a table")
    bad = set(sec) - set(keys) - set(flags)
    if bad:
        shown = sorted(_short(b, 40) for b in bad)
        more = f" and {len(shown) - 5} more" if len(shown) > 5 else ""
        raise PolicyError(f"{name}: unknown key(s) [{', '.join(shown[:5])}{more}]: expected "
                          f"{list(keys) + list(flags)}")
    for k in keys:
        if not isinstance(sec.get(k) or [], list):
            raise PolicyError(f"{name}.{k}: expected a list")
    for k in flags:
        if not isinstance(sec.get(k, False), bool):
            raise PolicyError(f"{name}.{k}: expected true or false")
    return sec


def system_write_flag(policy: dict | None) -> bool:
    """allow_system_write, wherever the policy carries it (top level: normalized)."""
    policy = policy or {}
    fs = policy.get("filesystem")
    return bool(policy.get("allow_system_write")) or \
        (isinstance(fs, dict) and bool(fs.get("allow_system_write")))


def normalize(policy: dict | None, cwd: str = "/", home: str = "/root",
              protected_write=(), protected_read=()) -> dict:
    """Validate and canonicalise a policy dict. Raises PolicyError.

    `protected_write`: canonical paths (the daemon's own code, protected.py)
    added to filesystem.deny_write whatever the policy says; `protected_read`
    (the git gateway's credentials and mirrors) to filesystem.deny_read."""
    if policy is None:
        policy = {}
    if not isinstance(policy, dict):
        raise PolicyError(f"policy must be a map of sections, not {type(policy).__name__}")
    policy = dict(policy)
    unknown = set(policy) - {"network", "filesystem", "syscalls", "unix", "env",
                             "allow_system_write", "git"}
    if unknown:
        shown = sorted(_short(u, 40) for u in unknown)
        raise PolicyError(f"unknown policy section(s) [{', '.join(shown[:5])}"
                          f"{' ...' if len(shown) > 5 else ''}]: expected network, filesystem, "
                          "syscalls, unix, env, git")
    if not isinstance(policy.get("allow_system_write", False), bool):
        raise PolicyError("allow_system_write: expected true or false")
    # Structure, then counts and lengths, then parsing.
    net = _section(policy, "network", NET_LIST_KEYS + (UNIX_KEY,))
    _section(policy, "unix", ("allow",))          # shape only: _unix_lists reads it
    env = _section(policy, "env", ("pass",))
    fs = _section(policy, "filesystem", FS_KEYS, FS_FLAG_KEYS)
    sc = policy.get("syscalls") or {}
    if not isinstance(sc, dict) or set(sc) - {"deny"} or not isinstance(sc.get("deny") or [], list):
        raise PolicyError("syscalls: expected a table with one key, deny = [names]")
    check_limits(policy, protected=frozenset(protected_write))

    out: dict = {"network": None, "filesystem": None, "syscalls": {"deny": []},
                 "unix": {"allow": []}, "env": {"pass": []}, "allow_system_write": False,
                 "git": None}
    from corral.policy.gitremote import normalize_git
    out["git"] = normalize_git(policy.get("git"))
    if env is not None:
        from corral.policy.env import check_names
        try:
            out["env"]["pass"] = sorted(check_names(env.get("pass")))
        except ValueError as e:
            raise PolicyError(str(e)) from None
    sockets = set()
    for section, key, v in _unix_lists(policy):
        for p in v or []:
            sockets.add(expand_path(p, cwd, home, f"{section}.{key}"))
    out["unix"]["allow"] = sorted(sockets)
    if net is not None and set(net) == {UNIX_KEY}:
        net = None          # [network] allow_unix = [...] alone leaves IP traffic as it is
    if net is not None:
        n = {k: list(net.get(k) or []) for k in NET_LIST_KEYS}
        n["allow"] = [str(parse_net_rule(r)) for r in n["allow"]]
        n["deny"] = [str(parse_net_rule(r)) for r in n["deny"]]
        ports = []
        for p in n["allow_localhost_ports"]:
            lo, hi = parse_ports(str(p), "network.allow_localhost_ports")
            ports.append(port_text(lo, hi))
        n["allow_localhost_ports"] = ports
        for key in ("allow_domains", "deny_domains"):
            n[key] = normalize_rules(n[key], key)
        out["network"] = n

    if fs is None:
        # "Files unrestricted", said explicitly: everything writable but corral's code.
        f = unrestricted_fs()
        system_ok = True
    else:
        system_ok = system_write_flag(policy)
        f = {}
        for k in FS_KEYS:
            f[k] = set()
            for p in fs.get(k) or []:
                canon = expand_path(p, cwd, home, f"filesystem.{k}")
                if k == "allow_write" and not system_ok:
                    why = system_tree(canon)
                    if why is not None:
                        shown = p if p == canon else f"{p} (= {canon})"
                        raise PolicyError(
                            f"filesystem.allow_write {shown}: {why}: {SYSTEM_WRITE_MEANS}. "
                            f"Refused: {SYSTEM_WRITE_HOW}")
                f[k].add(canon)
            f[k] = sorted(f[k])
    if protected_write:
        f["deny_write"] = sorted(set(f["deny_write"]) | {os.path.normpath(p) for p in protected_write})
    if protected_read:
        f["deny_read"] = sorted(set(f["deny_read"]) | {os.path.normpath(p) for p in protected_read})
    out["filesystem"] = f
    out["allow_system_write"] = system_ok

    out["syscalls"] = {"deny": sorted({str(s) for s in sc.get("deny") or []})}
    return out


def net_rules(policy: dict) -> tuple[list[NetRule], list[NetRule]]:
    """(allow, deny) as NetRule objects; localhost ports become allow rules."""
    net = policy.get("network") or {}
    allow = [parse_net_rule(r) for r in net.get("allow", [])]
    for p in net.get("allow_localhost_ports", []):
        lo, hi = parse_ports(str(p), "allow_localhost_ports")
        allow.append(NetRule(ipaddress.ip_network("127.0.0.0/8"), lo, hi))
        allow.append(NetRule(ipaddress.ip_network("::1/128"), lo, hi))
    deny = [parse_net_rule(r) for r in net.get("deny", [])]
    return allow, deny


# (list, whether an old entry no longer covered widens the policy, why)
_FS_NARROWING = (("deny_read", True, "no longer denies reading {}"),
                 ("allow_read", False, "allows reading {} which the current policy denies"),
                 ("allow_write", False, "allows writing {} which the current policy does not"),
                 ("deny_write", True, "no longer denies writing {}"))


def narrowing_violations(old: dict, new: dict) -> list[str]:
    """Why `new` would grant something `old` does not. Empty list: new is narrower or equal.

    Conservative: anything we cannot prove narrower is a violation."""
    why: list[str] = []
    on, nn = old.get("network"), new.get("network")
    if on is not None:
        if nn is None:
            why.append("removes the network policy")
        else:
            oa, od = net_rules(old)
            na, nd = net_rules(new)
            for r in na:
                if not any(o.covers(r) for o in oa):
                    why.append(f"allows {r} which the current policy does not")
                elif any(d.net.overlaps(r.net) if d.net.version == r.net.version else False for d in od) \
                        and not any(str(d) == str(x) for d in od for x in nd):
                    why.append(f"allows {r} inside a denied range")
            for d in od:
                if not any(x.covers(d) for x in nd):
                    why.append(f"drops the deny rule {d}")
            for dom in uncovered_domains(nn.get("allow_domains", []), on.get("allow_domains", [])):
                why.append(f"allows domain {dom} which the current policy does not")
            for dom in uncovered_domains(on.get("deny_domains", []), nn.get("deny_domains", []),
                                         "deny_domains"):
                why.append(f"drops the denied domain {dom}")
    of, nf = old.get("filesystem"), new.get("filesystem")
    if of is not None:
        if nf is None:
            why.append("removes the filesystem policy")
        else:
            if system_write_flag(new) and not system_write_flag(old):
                why.append("turns on allow_system_write (writes to system trees), which the "
                           "current policy does not allow")
            for key, widens, msg in _FS_NARROWING:
                # A deny list may only grow (each old entry still covered by a new
                # one), an allow list only shrink (each new entry inside an old one).
                have, need = (of, nf) if widens else (nf, of)
                for p in have[key]:
                    if not any(under(p, q) for q in need[key]):
                        why.append(msg.format(p))
    for s in (old.get("syscalls") or {}).get("deny", []):
        if s not in (new.get("syscalls") or {}).get("deny", []):
            why.append(f"no longer denies syscall {s}")
    old_env = set((old.get("env") or {}).get("pass") or [])
    for n in (new.get("env") or {}).get("pass") or []:
        if n not in old_env:
            why.append(f"passes the environment variable {n} which the current policy does not")
    if new.get("git") is not None and new.get("git") != old.get("git"):
        why.append("changes the git section (remote, push branches), which is fixed when a "
                   "session starts")
    old_unix = set((old.get("unix") or {}).get("allow") or [])
    for p in (new.get("unix") or {}).get("allow") or []:
        if p not in old_unix:
            why.append(f"allows the Unix socket {p} which the current policy does not")
    return why
