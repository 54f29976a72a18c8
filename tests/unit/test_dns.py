"""Domain rules (issue 6) without a daemon: their syntax, and which name and port
a DomainPolicy allows. The resolver and the BPF steering: tests/test_dns.py."""
from __future__ import annotations

import pytest

from corral.policy import model as pol


# -- policy syntax (no daemon) ---------------------------------------------------
def test_domain_rule_validation():
    n = pol.normalize({"network": {"allow_domains": ["GitHub.com.", "*.PyPI.org:443-444",
                                                     "x.test:80", "x.test:80"],
                                   "deny_domains": ["bad.example.com"]}})["network"]
    assert n["allow_domains"] == ["github.com", "*.pypi.org:443-444", "x.test:80"]
    assert n["deny_domains"] == ["bad.example.com"]
    for bad in ["*", "a.*.com", "*example.com", "1.2.3.4", "[::1]:53", "exa mple.com", "x.com:0",
                "x.com:70000", "-x.com..", "", "a" * 64 + ".com"]:
        with pytest.raises(pol.PolicyError):
            pol.normalize({"network": {"allow_domains": [bad]}})


def test_wildcard_and_port_semantics():
    from corral.dns.names import DomainPolicy
    p = DomainPolicy(["*.wild.test", "exact.test:443", "*.ports.test:443-444"],
                     ["bad.wild.test", "*.ports.test:444"])
    assert p.decide("a.wild.test").ports == ((0, 65535),)
    assert p.decide("x.y.wild.test").ports
    assert not p.decide("wild.test").ports                 # wildcard: subdomains only
    assert not p.decide("bad.wild.test").ports             # deny wins
    assert p.decide("exact.test").ports == ((443, 443),)
    assert not p.decide("sub.exact.test").ports
    assert p.decide("a.ports.test").ports == ((443, 443),)  # deny with a port subtracts it

