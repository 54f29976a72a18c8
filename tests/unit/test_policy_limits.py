"""Policy limits and refused input: counts and lengths are checked before any
parsing, a refused policy leaves nothing behind, ambiguous or indirect input is
refused with the way to say it."""
from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

import pytest

from corral.policy import model as pol
from corral.policy import files as pf

BIN = Path(sys.executable).parent


def _rss_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


# -- counts, before parsing ------------------------------------------------------------
@pytest.mark.parametrize("policy,key,limit", [
    ({"network": {"allow": ["not a rule"] * (pol.MAX_NET_RULES + 1)}}, "network.allow", pol.MAX_NET_RULES),
    ({"network": {"allow": ["x"] * 600, "deny": ["y"] * 600}}, "network.", pol.MAX_NET_RULES),
    ({"network": {"allow_localhost_ports": ["nope"] * (pol.MAX_NET_RULES // 2 + 1)}},
     "network.allow_localhost_ports", pol.MAX_NET_RULES),
    ({"network": {"allow_domains": ["-bad-"] * (pol.MAX_DOMAINS + 1)}}, "network.allow_domains",
     pol.MAX_DOMAINS),
    ({"filesystem": {"deny_read": ["~nobody/x"] * (pol.MAX_PATHS + 1)}}, "filesystem.deny_read",
     pol.MAX_PATHS),
    ({"syscalls": {"deny": ["no such call"] * (pol.MAX_SYSCALLS + 1)}}, "syscalls.deny",
     pol.MAX_SYSCALLS),
])
def test_counts_are_refused_before_any_entry_is_parsed(policy, key, limit):
    # Every entry is invalid: the count, not a parse error, must be what is reported.
    with pytest.raises(pol.PolicyError) as e:
        pol.normalize(policy)
    msg = str(e.value)
    assert msg.startswith(key) and f"limit of {limit}" in msg, msg


def test_at_the_limits_is_fine():
    pol.normalize({"network": {"allow": [f"10.0.{i // 256}.{i % 256}" for i in range(pol.MAX_NET_RULES)]}})
    pol.normalize({"filesystem": {"deny_read": [f"/x/{i}" for i in range(pol.MAX_PATHS)]}})
    assert pol.rule_count({"network": {"allow": ["a"] * 1000, "deny": ["b"] * 20,
                                       "allow_localhost_ports": ["1", "2"]}}) == 1024


@pytest.mark.parametrize("policy,key,limit", [
    ({"network": {"allow": [" " * 200 + "10.0.0.1"]}}, "network.allow", pol.MAX_NET_RULE_LEN),
    ({"network": {"deny": ["10.0.0.1" + " " * 200]}}, "network.deny", pol.MAX_NET_RULE_LEN),
    ({"network": {"allow_domains": ["a" * 300 + ".com"]}}, "network.allow_domains", pol.MAX_DOMAIN_LEN),
    ({"network": {"allow_localhost_ports": ["8" * 20]}}, "network.allow_localhost_ports",
     pol.MAX_PORT_LEN),
    ({"filesystem": {"allow_write": ["/tmp/" + "d/" * 2100]}}, "filesystem.allow_write",
     pol.MAX_PATH_BYTES - 1),
    ({"syscalls": {"deny": ["x" * 100]}}, "syscalls.deny", pol.MAX_SYSCALL_LEN),
])
def test_lengths_are_refused_and_not_echoed(policy, key, limit):
    with pytest.raises(pol.PolicyError) as e:
        pol.normalize(policy)
    msg = str(e.value)
    assert msg.startswith(key) and f"limit of {limit}" in msg, msg
    assert len(msg) < 400, msg


def test_rule_count():
    assert pol.rule_count(None) == 0
    assert pol.rule_count({"network": None}) == 0
    n = pol.normalize({"network": {"allow": ["10.0.0.0/8:443", "::1"], "deny": ["10.1.0.0/16"],
                                   "allow_localhost_ports": [8080, "9000-9100"],
                                   "allow_domains": ["example.com"]}})
    assert pol.rule_count(n) == 2 + 1 + 2 * 2
    allow, deny = pol.net_rules(n)
    assert pol.rule_count(n) == len(allow) + len(deny)


# -- refused input leaves nothing behind --------------------------------------------------
def test_refused_policies_grow_neither_the_cache_nor_memory():
    gc.collect()
    size0 = pol.LEARNED_RULES.cache_info().currsize
    rss0 = _rss_kib()
    for i in range(200):
        # ~1 MB each: 10,000 distinct whitespace-padded rules
        pad = " " * (90 + i % 7)
        policy = {"network": {"allow": [f"{pad}10.{i}.{j // 256}.{j % 256}" for j in range(10000)]}}
        with pytest.raises(pol.PolicyError, match="limit of"):
            pol.normalize(policy)
        del policy
    gc.collect()
    assert pol.LEARNED_RULES.cache_info().currsize == size0
    grown = (_rss_kib() - rss0) / 1024
    assert grown < 8, f"RSS grew {grown:.1f} MiB"


def test_client_rules_are_never_cached_daemon_rules_are():
    from corral.dns import names
    size0 = pol.LEARNED_RULES.cache_info().currsize
    padded = [f"  10.77.{i // 256}.{i % 256}  " for i in range(1000)]
    n = pol.normalize({"network": {"allow": padded}})
    pol.net_rules(n)
    for r in padded[:10]:
        pol.parse_net_rule(r)
    assert pol.LEARNED_RULES.cache_info().currsize == size0
    # what the resolver learned is parsed once and found again
    t = names.rule_text("192.0.2.77", 443, 443)
    assert pol.LEARNED_RULES.cache_info().currsize == size0 + 1
    hits = pol.LEARNED_RULES.cache_info().hits
    assert pol.parse_net_rule(t) is pol.parse_net_rule(t)
    assert pol.LEARNED_RULES.cache_info().hits == hits + 2
    assert str(pol.parse_net_rule(t)) == "192.0.2.77/32:443"


# -- refused, with the way to say it --------------------------------------------------------
@pytest.mark.parametrize("text,port_form,addr_form", [
    ("::1:80", "[::1]:80", "[::1:80]"),
    ("fe80::1:443", "[fe80::1]:443", "[fe80::1:443]"),
    ("2001:db8::5:8080", "[2001:db8::5]:8080", "[2001:db8::5:8080]"),
])
def test_unbracketed_ipv6_that_looks_like_a_port_is_ambiguous(text, port_form, addr_form):
    with pytest.raises(pol.PolicyError) as e:
        pol.parse_net_rule(text)
    msg = str(e.value)
    assert "ambiguous" in msg and port_form in msg and addr_form in msg, msg


@pytest.mark.parametrize("text,canon", [
    ("::1", "::1/128"), ("[::1]:80", "[::1/128]:80"), ("[::1:80]", "::1:80/128"),
    ("2001:db8::/32", "2001:db8::/32"), ("2001:db8::1", "2001:db8::1/128"),
    ("::ffff:10.0.0.1", "10.0.0.1/32"), ("10.0.0.1:80", "10.0.0.1/32:80"),
    ("1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8/128"),
])
def test_unambiguous_rules_still_parse(text, canon):
    assert str(pol.parse_net_rule(text)) == canon


def test_dotdot_in_paths_is_refused_with_what_it_means(tmp_path):
    with pytest.raises(pol.PolicyError) as e:
        pol.normalize({"filesystem": {"allow_write": ["/tmp/x/../../etc"]}})
    msg = str(e.value)
    assert "filesystem.allow_write" in msg and "'..'" in msg and "resolve to /etc" in msg, msg
    with pytest.raises(pol.PolicyError, match=r"resolve to /home/u/b"):
        pol.normalize({"filesystem": {"deny_read": ["~/a/../b"]}}, home="/home/u")
    f = tmp_path / "p.toml"
    f.write_text('[filesystem]\nallow_write = ["."]\ndeny_write = ["sub/../.env"]\n')
    with pytest.raises(pol.PolicyError, match=r"p.toml:3: filesystem.deny_write: .*'\.\.'"):
        pf.load_policy_file(str(f))
    # "." components and trailing slashes are fine
    n = pol.normalize({"filesystem": {"allow_write": ["./src/", "/tmp/./x"]}}, cwd=str(tmp_path))
    assert n["filesystem"]["allow_write"] == sorted([str(tmp_path / "src"), "/tmp/x"])


# -- the same in files and on the command line ---------------------------------------------
def test_policy_file_limits_name_the_line(tmp_path):
    f = tmp_path / "big.toml"
    rules = ",\n".join(f'"10.{i // 65536}.{i // 256 % 256}.{i % 256}"' for i in range(2000))
    f.write_text(f"[network]\nallow = [\n{rules}\n]\n")
    with pytest.raises(pol.PolicyError, match=rf"big.toml:2: network.allow: 2000 kernel rules .*"
                                              rf"limit of {pol.MAX_NET_RULES}"):
        pf.load_policy_file(str(f))
    f.write_text('[filesystem]\nallow_write = ["."]\nallow_system_write = "yes"\n')
    with pytest.raises(pol.PolicyError, match=r"big.toml:3: filesystem.allow_system_write: "
                                              r"expected true or false"):
        pf.load_policy_file(str(f))
    f.write_text('[filesystem]\nallow_write = ["/"]\nallow_system_write = true\n')
    p = pf.load_policy_file(str(f))
    assert pol.normalize(p)["allow_system_write"] is True
    merged = pf.merge(pf.merge({}, {"filesystem": {"allow_write": ["/a"]}}), p)
    assert merged["filesystem"]["allow_system_write"] is True


def _corral(*args, cwd="/tmp"):
    env = dict(os.environ, CORRAL_SOCKET="/nonexistent/corral-test.sock")
    return subprocess.run([str(BIN / "corral"), *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=60)


def test_huge_policy_file_fails_fast_in_the_client(tmp_path):
    """40,000 rules: refused by the count, before the rules are parsed or merged
    (it used to take 22 s)."""
    f = tmp_path / "big.toml"
    rules = ",\n".join(f'"10.{i // 65536}.{i // 256 % 256}.{i % 256}:443"' for i in range(40000))
    f.write_text(f"[network]\nallow = [\n{rules}\n]\n")
    p = _corral("run", "--policy", str(f), "--", "true")
    assert p.returncode == 2, p.stderr
    assert "40000 kernel rules" in p.stderr and f"limit of {pol.MAX_NET_RULES}" in p.stderr, p.stderr
    p = _corral("policy", "check", str(f))
    assert p.returncode == 2 and "40000 kernel rules" in p.stderr, p.stderr


def test_cli_refuses_what_the_daemon_would_refuse():
    p = _corral("run", "--allow-net", "::1:80", "--", "true")
    assert p.returncode == 2 and "ambiguous" in p.stderr and "[::1]:80" in p.stderr, p.stderr
    p = _corral("run", "--allow-write", "/tmp/x/../../etc", "--", "true")
    assert p.returncode == 2 and "resolve to /etc" in p.stderr, p.stderr
    args = [a for i in range(pol.MAX_NET_RULES + 1) for a in ("--allow-net", f"10.1.{i // 256}.{i % 256}")]
    p = _corral("run", *args, "--", "true")
    assert p.returncode == 2 and "--allow-net" in p.stderr and "limit of" in p.stderr, p.stderr


def test_the_daemons_own_paths_do_not_count_against_the_limit():
    prot = [f"/protected/{i}" for i in range(60)]
    mine = [f"/mine/{i}" for i in range(pol.MAX_PATHS)]
    n = pol.normalize({"filesystem": {"allow_write": ["/tmp"], "deny_write": mine}},
                      protected_write=prot)
    assert len(n["filesystem"]["deny_write"]) == pol.MAX_PATHS + 60
    assert pol.normalize(n, protected_write=prot) == n          # sent back by `corral deny`
    with pytest.raises(pol.PolicyError, match="filesystem.deny_write: 572 paths"):
        pol.normalize(n)
    with pytest.raises(pol.PolicyError, match="filesystem.deny_write: 513 paths"):
        pol.normalize({"filesystem": {"deny_write": mine + [{"not": "a path"}]}}, protected_write=prot)
