"""Domain rules, the policy's `network.allow_domains` / `network.deny_domains`:
syntax, canonical form, matching and coverage. Part of the policy model (normalize
and narrowing use it; the resolver, dns/names.py, decides queries with it).

Rule syntax (same as Claude Code's sandbox settings):
    example.com           exactly example.com
    *.example.com         every name under example.com, NOT example.com itself
    github.com:443        ... only for connections to port 443
    *.pypi.org:443-444    ... or a port range
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from corral.policy.errors import PolicyError
from corral.policy.ports import parse_ports, port_text

_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
# What a policy file accepts as a domain rule before parsing it (ASCII names only:
# a file names the rule as it is written; the API also takes IDNA-able names).
FILE_SYNTAX = re.compile(r"^(\*\.)?([A-Za-z0-9_]([A-Za-z0-9_-]{0,62})?)(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})?)*\.?"
                         r"(:\d{1,5}(-\d{1,5})?)?$")


@dataclass(frozen=True)
class DomainRule:
    name: str            # lower case, no trailing dot; for a wildcard the part after "*."
    wildcard: bool
    port_lo: int = 0
    port_hi: int = 65535

    @property
    def any_port(self) -> bool:
        return self.port_lo == 0 and self.port_hi == 65535

    @property
    def pattern(self) -> str:
        return f"*.{self.name}" if self.wildcard else self.name

    def __str__(self) -> str:
        if self.any_port:
            return self.pattern
        return f"{self.pattern}:{port_text(self.port_lo, self.port_hi)}"

    def matches(self, qname: str) -> bool:
        """qname: lower case, no trailing dot."""
        if self.wildcard:
            return qname.endswith("." + self.name)
        return qname == self.name

    def covers(self, other: "DomainRule") -> bool:
        """Everything `other` grants, this grants too."""
        if not (self.port_lo <= other.port_lo and other.port_hi <= self.port_hi):
            return False
        if self.wildcard:
            return other.name.endswith("." + self.name) or (other.wildcard and other.name == self.name)
        return not other.wildcard and other.name == self.name


def normalize_name(name: str) -> str:
    """Lower case, no trailing dot, IDNA (punycode) for non-ASCII. Raises ValueError."""
    n = name.strip().rstrip(".").lower()
    if not n:
        raise ValueError("empty name")
    if not n.isascii():
        n = n.encode("idna").decode("ascii")
    if len(n) > 253:
        raise ValueError("longer than 253 characters")
    for label in n.split("."):
        if not _LABEL.match(label):
            raise ValueError(f"bad label {label!r}")
    return n


def parse_domain_rule(text, key: str = "allow_domains") -> DomainRule:
    what = f"network.{key}: {text!r}"
    if not isinstance(text, str) or not text.strip():
        raise PolicyError(f"{what}: expected a domain name like example.com or *.example.com")
    s = text.strip()
    name, sep, ports = s.rpartition(":")
    if not sep:
        name, ports = s, None
    elif "]" in s or name.count(":"):
        raise PolicyError(f"{what}: IP addresses go in network.allow / network.deny, not in {key}")
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        pass
    else:
        raise PolicyError(f"{what}: IP addresses go in network.allow / network.deny, not in {key}")
    wildcard = name.startswith("*.")
    base = name[2:] if wildcard else name
    if "*" in base:
        raise PolicyError(f"{what}: a wildcard is only allowed as a leading '*.' "
                          "(e.g. *.example.com matches its subdomains)")
    try:
        base = normalize_name(base)
    except (ValueError, UnicodeError) as e:
        raise PolicyError(f"{what}: not a domain name ({e})") from None
    lo, hi = (0, 65535) if ports is None else parse_ports(ports, what)
    return DomainRule(base, wildcard, lo, hi)


def normalize_rules(items, key: str) -> list[str]:
    """Validated, canonical, de-duplicated rule strings (order kept)."""
    out: list[str] = []
    for it in items:
        r = str(parse_domain_rule(it, key))
        if r not in out:
            out.append(r)
    return out


def uncovered_domains(items, cover, key: str = "allow_domains") -> list:
    """The rules of `items` that no rule of `cover` covers (narrowing: a new
    allow must be covered by an old one, an old deny by a new one)."""
    rules = [parse_domain_rule(d, key) for d in cover]
    return [d for d in items if not any(c.covers(parse_domain_rule(d, key)) for c in rules)]


def file_rule_error(x, key: str) -> str | None:
    """Why x is not a domain rule a policy file may hold (None: fine)."""
    if not isinstance(x, str) or not FILE_SYNTAX.match(x.strip()):
        return f"{x!r} is not a domain name (NAME or *.NAME, optionally :PORT or :LO-HI)"
    try:
        parse_domain_rule(x, key)
    except PolicyError as e:
        return str(e)
    return None
