"""Domain-based network policy (issue 6): the per-session resolver in corrald,
the BPF steering of port-53 traffic, and the learned kernel allow rules.

Real kernel, real dnsmasq upstream on loopback, a network namespace with a
test server at a 198.19.x.2 "public-looking" address (benchmarking range; the
only route to it is the veth pair created here)."""
from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import make_daemon
from dnsutil import CONNECT, Background, Dnsmasq, Netns


RESOLVER_IP = "127.0.0.99"      # nothing listens there: only steering can answer


# -- fixtures -------------------------------------------------------------------
@pytest.fixture(scope="module")
def ns():
    n = Netns(ports=(8080, 8081))
    try:
        n.start()
        yield n
    finally:
        n.stop()


@pytest.fixture(scope="module")
def upstream(ns):
    v4, v6 = ns.v4, ns.v6
    dm = Dnsmasq([
        f"--host-record=svc.test,{v4},{v6}",
        f"--host-record=other.test,{v4}",
        f"--host-record=v6only.test,{v6}",
        f"--address=/wild.test/{v4}",
        f"--host-record=real.test,{v4}",
        "--cname=mid.test,real.test", "--cname=alias.test,mid.test",
        f"--host-record=short.test,{v4},2",
        f"--host-record=denied.test,{v4}", f"--host-record=unknown.test,{v4}",
        "--address=/rebind.test/127.0.0.1",
        "--host-record=private.test,10.1.2.3",
        "--host-record=meta.test,169.254.169.254",
        "--host-record=ula.test,fd00::1",
        "--host-record=loop.test,127.0.0.1",
        f"--address=/mixed.test/{v4}", "--address=/mixed.test/192.168.1.1",
        *[f"--address=/f{i}.fast.test/198.18.77.{i}" for i in range(1, 6)],
        "--address=/f6.fast.test/2001:2:77::6",
    ])
    dm.start()
    yield dm
    dm.stop()


@pytest.fixture(scope="module")
def dnsd(upstream):
    d = make_daemon("corral-dns", extra_args=["--dns-upstream", upstream.upstream,
                                               "--dns-min-ttl", "1"])
    d.start()
    yield d
    d.cleanup()


@pytest.fixture
def session(dnsd):
    made = []

    def make(*args):
        b = Background(dnsd, list(args))
        made.append(b)
        return b
    yield make
    for b in made:
        b.close()


@pytest.fixture
def loopback_server():
    """A TCP server on 127.0.0.1 (for rebinding / /etc/hosts tests)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    port = srv.getsockname()[1]
    stop = threading.Event()

    def serve():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                c, _ = srv.accept()
            except OSError:
                continue
            c.sendall(b"ok loop\n")
            c.close()
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield port
    stop.set()
    t.join()
    srv.close()


# -- helpers --------------------------------------------------------------------
def dig(b, name, qtype="A", server=RESOLVER_IP, tcp=False):
    """(status, [(type, data)]) of a dig run inside session B."""
    cmd = ["dig", "+noall", "+comments", "+answer", "+tries=1", "+time=3", f"@{server}", name, qtype]
    if tcp:
        cmd.insert(1, "+tcp")
    p = b.run(cmd)
    m = re.search(r"status: (\w+)", p.stdout)
    assert m, f"no answer from dig: {p.stdout}{p.stderr}"
    answers = []
    for line in p.stdout.splitlines():
        f = line.split()
        if line.startswith(";") or len(f) < 5:
            continue
        answers.append((f[3], f[4].rstrip(".")))
    return m.group(1), answers


def addrs(answers):
    return [a for t, a in answers if t in ("A", "AAAA")]


def connect(b, host, port):
    p = b.py(CONNECT, host, port)
    return p.stdout.strip() or p.stderr.strip()


def dns_records(d, session_id, op=None):
    return [r for r in d.records() if r.get("kind") == "dns" and r.get("session") == session_id
            and (op is None or r.get("op") == op)]


# -- end to end --------------------------------------------------------------------
def test_allowed_name_resolves_and_connects(session, ns, upstream, dnsd):
    b = session("--allow-domain", "svc.test:8080")
    assert b.info()["enforcement"]["dns"] == "corral-resolver"
    assert connect(b, ns.v4, 8080) == "EPERM"         # not resolved yet: default deny
    status, ans = dig(b, "svc.test")
    assert status == "NOERROR" and addrs(ans) == [ns.v4]
    assert upstream.queried("svc.test")
    assert connect(b, ns.v4, 8080) == "ok 8080"
    assert connect(b, ns.v4, 8081) == "EPERM"         # learned rule is scoped to the rule's port
    assert connect(b, ns.v6, 8080) == "EPERM"         # AAAA never asked: not learned
    rules = [r for r, _ in b.info()["dns_rules"]]
    assert rules == [f"{ns.v4}/32:8080"]
    rec = dnsd.wait_record(lambda r: r.get("kind") == "dns" and r.get("op") == "learn"
                           and r.get("session") == b.id)
    assert rec["verdict"] == "allow" and rec["target"] == "svc.test" and rec["addresses"] == [ns.v4]


def test_getaddrinfo_with_session_resolv_conf(dnsd, ns, tmp_path):
    """The C library's own resolver, through `corral run` end to end: the
    session's /etc/resolv.conf (bind-mounted in a private mount namespace by
    the harness, before the session starts) names a server nobody runs."""
    rc = tmp_path / "resolv.conf"
    rc.write_text(f"nameserver {RESOLVER_IP}\noptions timeout:2 attempts:1\n")
    code = ("import socket,sys\n"
            "ai = socket.getaddrinfo('svc.test', 8080, socket.AF_INET, socket.SOCK_STREAM)\n"
            "a = ai[0][4]\n"
            "c = socket.create_connection(a, timeout=3)\n"
            "print(a[0], c.recv(16).decode().strip())\n"
            "try:\n"
            "    socket.getaddrinfo('unknown.test', 80)\n"
            "    print('unknown resolved')\n"
            "except socket.gaierror as e:\n"
            "    print('unknown:', e.errno)\n")
    corral = Path(sys.executable).parent / "corral"
    p = subprocess.run(["unshare", "-m", "sh", "-c",
                        f'mount --bind {rc} /etc/resolv.conf && exec "$@"', "sh",
                        str(corral), "run", "--allow-domain", "svc.test:8080", "--deny-domain",
                        "unknown.test", "--", sys.executable, "-c", code],
                       env=dnsd.env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == f"{ns.v4} ok 8080"
    assert lines[1].startswith("unknown:")
    # `host` reads the same resolv.conf
    p = subprocess.run(["unshare", "-m", "sh", "-c",
                        f'mount --bind {rc} /etc/resolv.conf && exec "$@"', "sh",
                        str(corral), "run", "--allow-domain", "svc.test", "--",
                        "host", "-W", "3", "-t", "A", "svc.test"],
                       env=dnsd.env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and ns.v4 in p.stdout, p.stdout + p.stderr


def test_denied_and_unknown_names_never_reach_upstream(session, upstream, dnsd):
    b = session("--allow-domain", "*.wild.test", "--deny-domain", "bad.wild.test",
                "--deny-domain", "denied.test", "--allow-domain", "denied.test")
    for name in ("bad.wild.test", "unknown.test", "denied.test", "wild.test"):
        status, ans = dig(b, name)
        assert status == "REFUSED" and not ans, name
        status, _ = dig(b, name, "AAAA", tcp=True)
        assert status == "REFUSED"
    status, ans = dig(b, "a.wild.test")
    assert status == "NOERROR" and ans
    assert upstream.queried("a.wild.test")
    for name in ("bad.wild.test", "unknown.test", "denied.test", "wild.test"):
        assert not upstream.queried(name), name
    recs = {r["target"]: r for r in dns_records(dnsd, b.id, "query")}
    assert recs["bad.wild.test"]["verdict"] == "deny"
    assert recs["bad.wild.test"]["rule"] == "deny_domains bad.wild.test"
    assert recs["denied.test"]["rule"] == "deny_domains denied.test"
    assert recs["unknown.test"]["rule"] == "not in allow_domains"
    assert recs["wild.test"]["answer"] == "REFUSED"


def test_wildcard_matches_subdomains_not_bare(session, upstream):
    b = session("--allow-domain", "*.wild.test:8080")
    assert dig(b, "x.wild.test")[0] == "NOERROR"
    assert dig(b, "deep.x.wild.test")[0] == "NOERROR"
    assert dig(b, "wild.test")[0] == "REFUSED"
    assert dig(b, "notwild.test")[0] == "REFUSED"
    c = session("--allow-domain", "wild.test")
    assert dig(c, "wild.test")[0] == "NOERROR"
    assert dig(c, "x.wild.test")[0] == "REFUSED"


def test_query_to_any_server_is_steered(session, ns, upstream):
    b = session("--allow-domain", "svc.test:8080")
    # dig rejects a reply whose source is not the server it asked
    for server in ("127.0.0.99", "127.1.2.3", "::1", ns.v4, ns.v6):
        status, ans = dig(b, "svc.test", server=server)
        assert status == "NOERROR" and addrs(ans) == [ns.v4], server
    p = b.run(["host", "-W", "3", "-t", "A", "svc.test", "127.0.0.99"])
    assert p.returncode == 0 and ns.v4 in p.stdout, p.stdout + p.stderr
    # The sockets themselves: unconnected UDP (sendmsg + recvmsg hooks),
    # dual-stack IPv4-mapped, IPv6 and TCP (connect + getpeername hooks).
    p = b.py("""
        import socket, struct, sys
        from dnslib import DNSRecord
        q = DNSRecord.question("svc.test").pack()
        out = []
        for fam, addr in ((socket.AF_INET, ("127.0.0.99", 53)),
                          (socket.AF_INET6, ("::ffff:127.0.0.98", 53, 0, 0)),
                          (socket.AF_INET6, ("::1", 53, 0, 0))):
            s = socket.socket(fam, socket.SOCK_DGRAM)
            s.settimeout(3)
            s.sendto(q, addr)
            data, src = s.recvfrom(4096)
            out.append((src[0], src[1], str(DNSRecord.parse(data).a.rdata)))
        t = socket.create_connection(("127.0.0.97", 53), timeout=3)
        t.sendall(struct.pack("!H", len(q)) + q)
        n = struct.unpack("!H", t.recv(2))[0]
        data = t.recv(n)
        out.append((t.getpeername()[0], t.getpeername()[1], str(DNSRecord.parse(data).a.rdata)))
        for o in out: print(*o)
    """)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split("\n")[:4] == [f"127.0.0.99 53 {ns.v4}", f"::ffff:127.0.0.98 53 {ns.v4}",
                                        f"::1 53 {ns.v4}", f"127.0.0.97 53 {ns.v4}"]


def test_tcp_dns(session, ns, upstream):
    b = session("--allow-domain", "svc.test:8080")
    status, ans = dig(b, "svc.test", tcp=True)
    assert status == "NOERROR" and addrs(ans) == [ns.v4]
    assert connect(b, ns.v4, 8080) == "ok 8080"
    assert dig(b, "unknown.test", tcp=True)[0] == "REFUSED"


def test_aaaa(session, ns, upstream):
    b = session("--allow-domain", "v6only.test:8080")
    status, ans = dig(b, "v6only.test", "AAAA", server="::1")
    assert status == "NOERROR" and addrs(ans) == [ns.v6]
    assert connect(b, ns.v6, 8080) == "ok 8080"
    assert connect(b, ns.v6, 8081) == "EPERM"
    assert connect(b, ns.v4, 8080) == "EPERM"
    assert [r for r, _ in b.info()["dns_rules"]] == [f"[{ns.v6}/128]:8080"]


def test_cname_chain(session, ns, upstream):
    b = session("--allow-domain", "alias.test:8080")
    status, ans = dig(b, "alias.test")
    assert status == "NOERROR"
    assert ans == [("CNAME", "mid.test"), ("CNAME", "real.test"), ("A", ns.v4)]
    assert connect(b, ns.v4, 8080) == "ok 8080"
    assert dig(b, "real.test")[0] == "REFUSED"        # the target itself is not allowed
    # deny wins along the chain too
    c = session("--allow-domain", "alias.test:8080", "--deny-domain", "real.test")
    assert dig(c, "alias.test")[0] == "REFUSED"
    assert connect(c, ns.v4, 8080) == "EPERM"


def test_ttl_expiry_removes_access(session, ns, upstream, dnsd):
    b = session("--allow-domain", "short.test:8080")    # TTL 2 upstream, daemon floor 1 s
    status, ans = dig(b, "short.test")
    assert status == "NOERROR" and addrs(ans) == [ns.v4]
    assert connect(b, ns.v4, 8080) == "ok 8080"
    (rule, exp), = b.info()["dns_rules"]
    assert exp - time.time() <= 2.5
    time.sleep(3.5)          # TTL 2 s; the expiry timer works in whole seconds
    assert b.info()["dns_rules"] == []
    assert connect(b, ns.v4, 8080) == "EPERM"
    status, ans = dig(b, "short.test")                 # asking again restores it
    assert status == "NOERROR" and connect(b, ns.v4, 8080) == "ok 8080"


def test_dns_rebinding(session, upstream, dnsd, loopback_server, ns):
    b = session("--allow-domain", "x.rebind.test", "--allow-domain", "private.test",
                "--allow-domain", "meta.test", "--allow-domain", "ula.test",
                "--allow-domain", "mixed.test")
    for name, qtype, why in (("x.rebind.test", "A", "loopback"), ("private.test", "A", "RFC 1918"),
                             ("meta.test", "A", "metadata"), ("ula.test", "AAAA", "unique-local")):
        status, ans = dig(b, name, qtype)
        assert status == "NOERROR" and addrs(ans) == [], (name, ans)
        rec = dnsd.wait_record(lambda r: r.get("op") == "rebind" and r.get("session") == b.id
                               and r["target"].startswith(name + " "))
        assert rec["verdict"] == "deny" and why in rec["rule"], rec
    status, ans = dig(b, "mixed.test")                  # the public address survives
    assert addrs(ans) == [ns.v4]
    assert [r for r, _ in b.info()["dns_rules"]] == [f"{ns.v4}/32"]
    assert connect(b, "127.0.0.1", loopback_server) == "EPERM"
    # A static allow that explicitly opens (part of) the range lets it through.
    c = session("--allow-domain", "loop.test", "--allow-net", f"127.0.0.1/32:{loopback_server}")
    status, ans = dig(c, "loop.test")
    assert addrs(ans) == ["127.0.0.1"]
    assert "127.0.0.1/32" in [r for r, _ in c.info()["dns_rules"]]


def test_live_add_and_remove(session, ns, upstream):
    b = session("--allow-domain", "nothing.test")
    assert dig(b, "svc.test")[0] == "REFUSED"
    b.update({"allow_domains": ["nothing.test", "svc.test:8080"]})
    assert dig(b, "svc.test")[0] == "NOERROR"           # next query after the update
    assert connect(b, ns.v4, 8080) == "ok 8080"
    b.update({"allow_domains": ["nothing.test"]})
    assert b.info()["dns_rules"] == []                  # revoked by the update itself
    assert connect(b, ns.v4, 8080) == "EPERM"
    assert dig(b, "svc.test")[0] == "REFUSED"
    # A deny added later revokes too; so does dropping every domain rule.
    b.update({"allow_domains": ["nothing.test", "*.wild.test"]})
    assert dig(b, "a.wild.test")[0] == "NOERROR"
    assert connect(b, ns.v4, 8080) == "ok 8080"
    b.update({"allow_domains": ["nothing.test", "*.wild.test"], "deny_domains": ["a.wild.test"]})
    assert connect(b, ns.v4, 8080) == "EPERM"
    assert dig(b, "b.wild.test")[0] == "NOERROR"
    b.update({"allow": [f"{ns.v4}/32:8081"]})
    info = b.info()
    assert info["dns_rules"] == [] and info["dns_port"] == 0 and "dns" not in info["enforcement"]
    assert connect(b, ns.v4, 8080) == "EPERM"
    assert connect(b, ns.v4, 8081) == "ok 8081"


def test_ip_literal_and_two_sessions_sharing_an_address(session, ns, upstream):
    a = session("--allow-domain", "svc.test:8080")
    b = session("--allow-domain", "other.test:8080")
    assert connect(a, ns.v4, 8080) == "EPERM" and connect(b, ns.v4, 8080) == "EPERM"
    assert addrs(dig(a, "svc.test")[1]) == [ns.v4]
    assert connect(a, ns.v4, 8080) == "ok 8080"
    assert connect(b, ns.v4, 8080) == "EPERM"          # a's answer is a's alone
    assert addrs(dig(b, "other.test")[1]) == [ns.v4]
    assert connect(b, ns.v4, 8080) == "ok 8080"
    a.update({"allow_domains": ["nothing.test"]})
    assert connect(a, ns.v4, 8080) == "EPERM"
    assert connect(b, ns.v4, 8080) == "ok 8080"


@pytest.fixture
def hosts_lines():
    """Add lines to /etc/hosts (in place: it may be a bind mount); restore after."""
    path = Path("/etc/hosts")
    orig = path.read_text()
    added = []

    def add(line):
        added.append(line)
        with open(path, "w") as fh:
            fh.write(orig + ("" if orig.endswith("\n") else "\n") + "".join(ln + "\n" for ln in added))
    yield add
    with open(path, "w") as fh:
        fh.write(orig)


def test_etc_hosts_names_need_no_dns(session, ns, upstream, hosts_lines, loopback_server, dnsd):
    hosts_lines(f"{ns.v4} hostsname.test")
    hosts_lines("127.0.0.1 loophosts.test")
    b = session("--allow-domain", "hostsname.test:8080", "--allow-domain",
                f"loophosts.test:{loopback_server}", "--allow-domain", "later.test:8081")
    rules = [r for r, _ in b.info()["dns_rules"]]
    assert f"{ns.v4}/32:8080" in rules and f"127.0.0.1/32:{loopback_server}" in rules
    code = ("import socket,sys\n"
            "for name, port in (('hostsname.test', 8080), ('loophosts.test', int(sys.argv[1]))):\n"
            "    c = socket.create_connection((name, port), timeout=3)\n"
            "    print(c.recv(16).decode().strip())\n")
    p = b.py(code, loopback_server)
    assert p.stdout.split("\n")[:2] == ["ok 8080", "ok loop"], p.stdout + p.stderr
    assert not upstream.queried("hostsname.test") and not upstream.queried("loophosts.test")
    # /etc/hosts changing under a live session is picked up
    hosts_lines(f"{ns.v4} later.test")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if f"{ns.v4}/32:8080-8081" in [r for r, _ in b.info()["dns_rules"]]:
            break
        time.sleep(0.2)
    assert connect(b, ns.v4, 8081) == "ok 8081"


def test_daemon_restart_keeps_resolver_and_learned_rules(upstream, ns):
    """Sessions outlive corrald; the next daemon re-binds the same resolver
    port and still knows which name taught which address."""
    d = make_daemon("corral-dnsr", extra_args=["--dns-upstream", upstream.upstream,
                                                "--dns-min-ttl", "1"])
    b = None
    try:
        d.start()
        b = Background(d, ["--allow-domain", "svc.test:8080", "--allow-domain", "nothing.test"])
        port = b.info()["dns_port"]
        assert addrs(dig(b, "svc.test")[1]) == [ns.v4]
        time.sleep(1.5)                                # learned state reaches disk
        d.stop()
        assert connect(b, ns.v4, 8080) == "ok 8080"    # the kernel keeps enforcing
        d.start()
        deadline = time.monotonic() + 60
        while d.stderr_text().count("listening on") < 2:
            assert time.monotonic() < deadline, d.stderr_text()
            time.sleep(0.1)
        info = b.info()
        assert info["dns_port"] == port
        assert [r for r, _ in info["dns_rules"]] == [f"{ns.v4}/32:8080"]
        assert connect(b, ns.v4, 8080) == "ok 8080"
        assert dig(b, "svc.test")[0] == "NOERROR" and dig(b, "unknown.test")[0] == "REFUSED"
        b.update({"allow_domains": ["nothing.test", "other.test"]})
        assert b.info()["dns_rules"] == []
        assert connect(b, ns.v4, 8080) == "EPERM"
    finally:
        if b is not None:
            b.close()
        d.cleanup()


def test_corral_allow_and_deny_domain_live(session, ns, upstream, dnsd):
    """`corral allow/deny SESSION --domain` (policycli) go through the same path."""
    b = session("--allow-domain", "nothing.test")
    assert dig(b, "svc.test")[0] == "REFUSED"
    p = dnsd.corral("allow", b.id, "--domain", "svc.test:8080")
    assert p.returncode == 0, p.stderr
    assert addrs(dig(b, "svc.test")[1]) == [ns.v4]
    assert connect(b, ns.v4, 8080) == "ok 8080"
    p = dnsd.corral("deny", b.id, "--domain", "svc.test:8080")
    assert p.returncode == 0, p.stderr
    assert connect(b, ns.v4, 8080) == "EPERM"
    assert dig(b, "svc.test")[0] == "REFUSED"


def test_deny_domains_only_resolves_the_rest_and_grants_nothing(session, ns, upstream):
    """Only deny rules (e.g. `corral deny --domain` on an open network): other
    names resolve, denied ones do not, and no answer grants a connection."""
    b = session("--deny-domain", "denied.test", "--allow-net", f"{ns.v4}/32:8081")
    assert dig(b, "denied.test")[0] == "REFUSED"
    assert not upstream.queried("denied.test")
    assert addrs(dig(b, "svc.test")[1]) == [ns.v4]
    assert b.info()["dns_rules"] == []
    assert connect(b, ns.v4, 8080) == "EPERM"
    assert connect(b, ns.v4, 8081) == "ok 8081"


def _dump_tries(d):
    out = {}
    for name in ("allow4", "allow6", "deny4", "deny6"):
        p = subprocess.run(["bpftool", "-j", "map", "dump", "pinned", str(d.net_pin_dir() / name)],
                           capture_output=True, text=True, check=True)
        out[name] = sorted(str(e) for e in __import__("json").loads(p.stdout))
    return out


def test_learned_rule_fast_path_matches_full_install(session, upstream, dnsd):
    """New addresses are appended to the tries without a full reinstall; the
    result must be exactly what a full install writes."""
    b = session("--allow-domain", "*.fast.test:443", "--allow-net", "198.18.77.0/24:9999",
                "--allow-net", "198.18.77.3/32:22", "--deny-net", "198.18.77.5/32")
    for i in range(1, 6):
        assert dig(b, f"f{i}.fast.test")[0] == "NOERROR"
    assert addrs(dig(b, "f6.fast.test", "AAAA")[1]) == ["2001:2:77::6"]
    fast = _dump_tries(dnsd)
    rules = [r for r, _ in b.info()["dns_rules"]]
    assert rules == [f"198.18.77.{i}/32:443" for i in range(1, 6)] + ["[2001:2:77::6/128]:443"]
    b.update(b.info()["policy"]["network"])            # a full install of the same policy
    assert _dump_tries(dnsd) == fast
