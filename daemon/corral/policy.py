"""The session policy: one plain dict that travels client -> daemon -> maps.

    {
      "network":    None | {"allow": [rule], "deny": [rule], "allow_domains": [...],
                            "deny_domains": [...], "allow_localhost_ports": [...]},
      "filesystem": None | {"deny_read": [path], "allow_read": [...],
                            "allow_write": [...], "deny_write": [...]},
      "syscalls":   {"deny": [name]},
    }

A missing section means "not restricted by corral" for that kind. A present
network section is default-deny. Paths are made absolute and canonical once,
at registration, relative to the client's cwd and home.
"""
from __future__ import annotations

import functools
import ipaddress
import os
from dataclasses import dataclass

NET_LIST_KEYS = ("allow", "deny", "allow_domains", "deny_domains", "allow_localhost_ports")
FS_KEYS = ("deny_read", "allow_read", "allow_write", "deny_write")
MAX_PORT_RANGES = 16


class PolicyError(ValueError):
    """A policy that cannot be enforced as written. The message names the fix."""


@dataclass(frozen=True)
class NetRule:
    net: ipaddress.IPv4Network | ipaddress.IPv6Network
    port_lo: int = 0
    port_hi: int = 65535

    @property
    def any_port(self) -> bool:
        return self.port_lo == 0 and self.port_hi == 65535

    def __str__(self) -> str:
        addr = str(self.net)
        if self.any_port:
            return addr
        ports = str(self.port_lo) if self.port_lo == self.port_hi else f"{self.port_lo}-{self.port_hi}"
        if self.net.version == 6:
            return f"[{addr}]:{ports}"
        return f"{addr}:{ports}"

    def covers(self, other: "NetRule") -> bool:
        return (self.net.version == other.net.version and other.net.subnet_of(self.net)
                and self.port_lo <= other.port_lo and other.port_hi <= self.port_hi)


def parse_ports(text: str, what: str) -> tuple[int, int]:
    lo_s, sep, hi_s = text.partition("-")
    try:
        lo = int(lo_s)
        hi = int(hi_s) if sep else lo
    except ValueError:
        raise PolicyError(f"{what}: bad port {text!r}: use PORT or PORT-PORT (1-65535)") from None
    if not (1 <= lo <= hi <= 65535):
        raise PolicyError(f"{what}: bad port range {text!r}: ports are 1-65535, low <= high")
    return lo, hi


def parse_net_rule(text: str) -> NetRule:
    """CIDR[:PORT[-PORT]]; IPv6 with a port is written [addr/len]:PORT."""
    if isinstance(text, str):
        return _parse_net_rule_cached(text)
    return _parse_net_rule(text)


@functools.lru_cache(maxsize=1 << 16)
def _parse_net_rule_cached(text: str) -> NetRule:
    # Every policy install re-parses the session's DNS-learned rules (one per
    # address); NetRule is immutable, so parse each text once.
    return _parse_net_rule(text)


def _parse_net_rule(text) -> NetRule:
    if not isinstance(text, str) or not text.strip():
        raise PolicyError(f"network rule {text!r}: expected a string like 10.0.0.0/8:443")
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


def _expand_path(p: str, cwd: str, home: str) -> str:
    if not isinstance(p, str) or not p or "\0" in p:
        raise PolicyError(f"path {p!r}: expected a non-empty path string")
    if p == "~" or p.startswith("~/"):
        p = home + p[1:]
    elif p.startswith("~"):
        raise PolicyError(f"path {p!r}: only '~' (the caller's home) is supported, not ~user")
    if not os.path.isabs(p):
        p = os.path.join(cwd, p)
    # Resolve symlinks of the part that exists; a rule for a path not yet
    # created keeps its (normalised) tail.
    return os.path.realpath(p)


def _section(policy: dict, name: str, keys) -> dict | None:
    """A section's table, checked for unknown keys and list values; None if absent."""
    sec = policy.get(name)
    if sec is None:
        return None
    if not isinstance(sec, dict):
        raise PolicyError(f"{name}: expected a table")
    bad = set(sec) - set(keys)
    if bad:
        raise PolicyError(f"{name}: unknown key(s) {sorted(bad)}: expected {list(keys)}")
    for k in keys:
        if not isinstance(sec.get(k) or [], list):
            raise PolicyError(f"{name}.{k}: expected a list")
    return sec


def normalize(policy: dict | None, cwd: str = "/", home: str = "/root",
              protected_write=()) -> dict:
    """Validate and canonicalise a policy dict. Raises PolicyError."""
    if policy is None:
        policy = {}
    if not isinstance(policy, dict):
        raise PolicyError(f"policy must be a map of sections, not {type(policy).__name__}")
    policy = dict(policy)
    unknown = set(policy) - {"network", "filesystem", "syscalls"}
    if unknown:
        raise PolicyError(f"unknown policy section(s) {sorted(unknown)}: "
                          "expected network, filesystem, syscalls")
    out: dict = {"network": None, "filesystem": None, "syscalls": {"deny": []}}
    net = _section(policy, "network", NET_LIST_KEYS)
    if net is not None:
        n = {k: list(net.get(k) or []) for k in NET_LIST_KEYS}
        n["allow"] = [str(parse_net_rule(r)) for r in n["allow"]]
        n["deny"] = [str(parse_net_rule(r)) for r in n["deny"]]
        ports = []
        for p in n["allow_localhost_ports"]:
            lo, hi = parse_ports(str(p), "network.allow_localhost_ports")
            ports.append(f"{lo}" if lo == hi else f"{lo}-{hi}")
        n["allow_localhost_ports"] = ports
        from .dns.names import normalize_rules   # late: dns.names imports this module
        for key in ("allow_domains", "deny_domains"):
            n[key] = normalize_rules(n[key], key)
        out["network"] = n
    fs = _section(policy, "filesystem", FS_KEYS)
    if fs is not None:
        out["filesystem"] = {k: sorted({_expand_path(p, cwd, home) for p in (fs.get(k) or [])})
                             for k in FS_KEYS}
    sc = policy.get("syscalls") or {}
    if not isinstance(sc, dict) or set(sc) - {"deny"} or not isinstance(sc.get("deny") or [], list):
        raise PolicyError("syscalls: expected a table with one key, deny = [names]")
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


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


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
            from .dns.names import parse_domain_rule
            old_allow = [parse_domain_rule(d) for d in on.get("allow_domains", [])]
            for dom in nn.get("allow_domains", []):
                r = parse_domain_rule(dom)
                if not any(o.covers(r) for o in old_allow):
                    why.append(f"allows domain {dom} which the current policy does not")
            new_deny = [parse_domain_rule(d, "deny_domains") for d in nn.get("deny_domains", [])]
            for dom in on.get("deny_domains", []):
                r = parse_domain_rule(dom, "deny_domains")
                if not any(x.covers(r) for x in new_deny):
                    why.append(f"drops the denied domain {dom}")
    of, nf = old.get("filesystem"), new.get("filesystem")
    if of is not None:
        if nf is None:
            why.append("removes the filesystem policy")
        else:
            for p in of["deny_read"]:
                if not any(_under(p, q) for q in nf["deny_read"]):
                    why.append(f"no longer denies reading {p}")
            for p in nf["allow_read"]:
                if not any(_under(p, q) for q in of["allow_read"]):
                    why.append(f"allows reading {p} which the current policy denies")
            for p in nf["allow_write"]:
                if not any(_under(p, q) for q in of["allow_write"]):
                    why.append(f"allows writing {p} which the current policy does not")
            for p in of["deny_write"]:
                if not any(_under(p, q) for q in nf["deny_write"]):
                    why.append(f"no longer denies writing {p}")
    for s in (old.get("syscalls") or {}).get("deny", []):
        if s not in (new.get("syscalls") or {}).get("deny", []):
            why.append(f"no longer denies syscall {s}")
    return why


def rule_count(policy: dict) -> int:
    """Kernel trie entries a policy's network section needs (per-user accounting):
    allow + deny rules, and two (IPv4 and IPv6 loopback) per localhost port range."""
    net = (policy or {}).get("network") or {}
    return (len(net.get("allow") or []) + len(net.get("deny") or [])
            + 2 * len(net.get("allow_localhost_ports") or []))
