"""What the resolver decides with a session's domain rules: ports, learned
addresses, and which answers we refuse to learn.

Pure functions (no DNS library, no kernel). The rules themselves (syntax,
DomainRule, matching) are the policy model's: corral.policy.domains.
A deny rule wins over any allow rule. A deny rule with ports only removes those
ports from what the name's allow rules grant.
"""
from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass

from corral.policy.domains import DomainRule, normalize_name, parse_domain_rule
from corral.policy.model import NetRule, parse_learned_rule
from corral.policy.ports import port_text

ANY_PORTS = ((0, 65535),)


# -- ports ----------------------------------------------------------------------
def _union(ranges) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return [(lo, hi) for lo, hi in out]


def _subtract(ranges, minus) -> list[tuple[int, int]]:
    out = list(ranges)
    for mlo, mhi in minus:
        nxt = []
        for lo, hi in out:
            if mhi < lo or mlo > hi:
                nxt.append((lo, hi))
                continue
            if lo < mlo:
                nxt.append((lo, mlo - 1))
            if mhi < hi:
                nxt.append((mhi + 1, hi))
        out = nxt
    return out


def union_ports(*range_lists) -> tuple[tuple[int, int], ...]:
    return tuple(_union([r for rl in range_lists for r in rl]))


@dataclass
class Decision:
    ports: tuple[tuple[int, int], ...]   # empty: refused
    rule: str                            # what decided, for the audit log
    learn: bool = True                   # answers become allow rules


class DomainPolicy:
    """One session's domain rules."""

    def __init__(self, allow: list[str], deny: list[str]):
        self.allow = [parse_domain_rule(r, "allow_domains") for r in allow]
        self.deny = [parse_domain_rule(r, "deny_domains") for r in deny]

    def denied_by(self, qname: str) -> DomainRule | None:
        """A deny rule that refuses the whole name (no ports left is checked in decide)."""
        for r in self.deny:
            if r.any_port and r.matches(qname):
                return r
        return None

    def decide(self, qname: str) -> Decision:
        allows = [r for r in self.allow if r.matches(qname)]
        denies = [r for r in self.deny if r.matches(qname)]
        full_deny = next((r for r in denies if r.any_port), None)
        if full_deny is not None:
            return Decision((), f"deny_domains {full_deny}")
        if not self.allow:
            # Only deny rules (e.g. `corral deny --domain` on an open network):
            # other names resolve, but grant nothing; the CIDR rules decide.
            return Decision(ANY_PORTS, "no allow_domains: answered, nothing learned", learn=False)
        if not allows:
            return Decision((), "not in allow_domains")
        ports = _union([(r.port_lo, r.port_hi) for r in allows])
        ports = _subtract(ports, [(r.port_lo, r.port_hi) for r in denies])
        desc = "allow_domains " + ", ".join(str(r) for r in allows)
        if not ports:
            return Decision((), "deny_domains " + ", ".join(str(r) for r in denies))
        if denies:
            desc += " minus deny_domains " + ", ".join(str(r) for r in denies)
        return Decision(tuple(ports), desc)


@functools.lru_cache(maxsize=1 << 16)
def _rule_text(addr: str, lo: int, hi: int) -> str:
    a = ipaddress.ip_address(addr)
    net = f"{a}/{a.max_prefixlen}"
    if (lo, hi) == (0, 65535):
        return net if a.version == 4 else f"[{net}]"
    ports = port_text(lo, hi)
    return f"{net}:{ports}" if a.version == 4 else f"[{net}]:{ports}"


def rule_text(addr: str, lo: int, hi: int) -> str:
    """A learned address as a policy.parse_net_rule string. The address comes
    from a DNS answer the daemon accepted (not from a client's text), so the
    parsed rule is kept in policy.LEARNED_RULES: installing the session's rules
    later does not parse it again."""
    text = _rule_text(addr, lo, hi)
    parse_learned_rule(text)
    return text


# -- DNS rebinding ----------------------------------------------------------------
_NON_PUBLIC = [(ipaddress.ip_network(n), why) for n, why in [
    ("0.0.0.0/8", "'this network' (0.0.0.0/8)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local (incl. cloud metadata 169.254.169.254)"),
    ("10.0.0.0/8", "private (RFC 1918)"),
    ("172.16.0.0/12", "private (RFC 1918)"),
    ("192.168.0.0/16", "private (RFC 1918)"),
    ("100.64.0.0/10", "carrier-grade NAT (RFC 6598)"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved/broadcast"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("fc00::/7", "unique-local (ULA)"),
    ("fe80::/10", "link-local"),
    ("ff00::/8", "multicast"),
]]


_NAT64 = int(ipaddress.IPv6Address("64:ff9b::"))


def _embedded_v4(a: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 answer really points at (mapped, NAT64 well-known
    prefix, deprecated IPv4-compatible), if any."""
    if a.ipv4_mapped is not None:
        return a.ipv4_mapped
    hi = int(a) & ~0xFFFFFFFF
    if hi == _NAT64 or (hi == 0 and int(a) > 1):
        return ipaddress.IPv4Address(int(a) & 0xFFFFFFFF)
    return None


def non_public(addr) -> tuple[ipaddress._BaseNetwork, str] | None:
    """(range, why) if an answer pointing here would be DNS rebinding."""
    a = ipaddress.ip_address(addr)
    if a.version == 6:
        v4 = _embedded_v4(a)
        if v4 is not None:
            hit = non_public(v4)
            if hit:
                return hit[0], hit[1] + f" (embedded in {a})"
            return None
    for net, why in _NON_PUBLIC:
        if a.version == net.version and a in net:
            return net, why
    return None


def rebinding_exempt(addr, blocked: ipaddress._BaseNetwork, static_allow: list[NetRule]) -> NetRule | None:
    """A static allow rule that explicitly opens (part of) the blocked range and
    contains the address. A catch-all like 0.0.0.0/0 does not count."""
    a = ipaddress.ip_address(addr)
    if a.version == 6 and a.ipv4_mapped is not None:
        a = a.ipv4_mapped
    for r in static_allow:
        if r.net.version == a.version == blocked.version and a in r.net and r.net.subnet_of(blocked):
            return r
    return None


# -- /etc/hosts ---------------------------------------------------------------------
def parse_hosts(text: str) -> dict[str, list[str]]:
    """name -> addresses, in file order."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].split()
        if len(line) < 2:
            continue
        addr = line[0]
        if "%" in addr:       # scoped link-local: no kernel rule can say that
            continue
        try:
            addr = str(ipaddress.ip_address(addr))
        except ValueError:
            continue
        for name in line[1:]:
            try:
                n = normalize_name(name)
            except (ValueError, UnicodeError):
                continue
            lst = out.setdefault(n, [])
            if addr not in lst:
                lst.append(addr)
    return out
