"""Network policy, enforced by the cgroup sock_addr programs on the real kernel."""
from __future__ import annotations

import errno
import json
import socket
import sys
from pathlib import Path

import pytest

PROBE = str(Path(__file__).parent / "helpers" / "netprobe.py")


def listener(host="127.0.0.1", family=socket.AF_INET):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, 0))
    s.listen(64)
    return s, s.getsockname()[1]


def udp_receiver(host="127.0.0.1", family=socket.AF_INET):
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.bind((host, 0))
    s.settimeout(2)
    return s, s.getsockname()[1]


def probe(daemon, flags, *actions):
    p = daemon.corral("run", *flags, "--", sys.executable, PROBE, *map(str, actions))
    assert p.returncode == 0, p.stderr
    return [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]


@pytest.fixture
def srv():
    s, port = listener()
    yield port
    s.close()


def test_allowed_connect_connects_denied_gets_eperm(daemon, srv):
    other, other_port = listener()
    try:
        res = probe(daemon, ["--allow-net", f"127.0.0.1:{srv}"],
                    "tcp", "127.0.0.1", srv, "tcp", "127.0.0.1", other_port)
    finally:
        other.close()
    assert res[0]["ok"], res[0]
    assert not res[1]["ok"] and res[1]["errno"] == errno.EPERM, res[1]


def test_protection_is_the_kernel_not_the_client(daemon, srv):
    """Without a network section the same connect works: the EPERM above came from policy."""
    res = probe(daemon, ["--deny-read", "/nonexistent-corral-test"], "tcp", "127.0.0.1", srv)
    assert res[0]["ok"], res


def test_port_ranges(daemon):
    socks = [listener() for _ in range(3)]
    ports = sorted(p for _, p in socks)
    try:
        lo, hi = ports[0], ports[1]
        res = probe(daemon, ["--allow-net", f"127.0.0.1:{lo}-{hi}"],
                    "tcp", "127.0.0.1", lo, "tcp", "127.0.0.1", hi, "tcp", "127.0.0.1", ports[2])
    finally:
        for s, _ in socks:
            s.close()
    assert [r["ok"] for r in res[:2]] == [True, True], res
    if ports[2] > hi:
        assert res[2]["errno"] == errno.EPERM


def test_deny_beats_allow(daemon, srv):
    res = probe(daemon, ["--allow-net", "127.0.0.0/8", "--deny-net", f"127.0.0.1:{srv}"],
                "tcp", "127.0.0.1", srv)
    assert res[0]["errno"] == errno.EPERM, res


def test_longer_prefix_does_not_hide_shorter_allow(daemon, srv):
    """LPM returns the longest prefix only; ports of covering rules must still apply."""
    res = probe(daemon, ["--allow-net", f"127.0.0.0/8:{srv}", "--allow-net", "127.0.0.1/32:1"],
                "tcp", "127.0.0.1", srv)
    assert res[0]["ok"], res


def test_ipv6_and_v4_mapped(daemon):
    s6, p6 = listener("::1", socket.AF_INET6)
    s4, p4 = listener()
    try:
        res = probe(daemon, ["--allow-net", f"[::1]:{p6}"],
                    "tcp", "::1", p6, "tcp", "::ffff:127.0.0.1", p4)
        assert res[0]["ok"], res
        assert res[1]["errno"] == errno.EPERM, "v4-mapped must be judged as the IPv4 address"
        res = probe(daemon, ["--allow-net", f"127.0.0.1:{p4}"], "tcp", "::ffff:127.0.0.1", p4,
                    "tcp", "::1", p6)
        assert res[0]["ok"], "v4-mapped address of an allowed IPv4 host must connect"
        assert res[1]["errno"] == errno.EPERM
    finally:
        s6.close()
        s4.close()


def test_unspecified_address_is_judged_as_loopback(daemon, srv):
    other, other_port = listener("0.0.0.0")
    try:
        # 0.0.0.0 delivers to loopback: an allow for 0.0.0.0 must not open 127.0.0.1
        res = probe(daemon, ["--allow-net", "0.0.0.0/32", "--allow-net", "10.255.255.1"],
                    "tcp", "0.0.0.0", other_port, "tcp", "::", other_port)
        assert all(r["errno"] == errno.EPERM for r in res), res
        res = probe(daemon, ["--allow-net", f"127.0.0.1:{other_port}"], "tcp", "0.0.0.0", other_port)
        assert res[0]["ok"], res
    finally:
        other.close()


def test_udp_denied_and_allowed(daemon):
    r_ok, p_ok = udp_receiver()
    r_no, p_no = udp_receiver()
    try:
        res = probe(daemon, ["--allow-net", f"127.0.0.1:{p_ok}"],
                    "udp", "127.0.0.1", p_ok, "udp", "127.0.0.1", p_no,
                    "udpconnect", "127.0.0.1", p_no, "udp", "::ffff:127.0.0.1", p_no)
        assert res[0]["ok"]
        assert r_ok.recv(100) == b"corral-probe"
        assert [r["errno"] for r in res[1:]] == [errno.EPERM] * 3, res
        r_no.settimeout(0.3)
        with pytest.raises(socket.timeout):
            r_no.recv(100)
    finally:
        r_ok.close()
        r_no.close()


def test_protocols_outside_the_hooks_are_refused(daemon):
    res = probe(daemon, ["--no-net"], "icmp", "raw", "sctp")
    for r in res:
        assert not r["ok"], r
        assert r["errno"] in (errno.EPERM, errno.EACCES, errno.EPROTONOSUPPORT,
                              errno.ESOCKTNOSUPPORT), r


def test_denial_is_logged_with_session_and_target(daemon):
    s, port = listener()
    s.close()
    p = daemon.corral("run", "-v", "--no-net", "--", sys.executable, PROBE, "tcp", "127.0.0.1", str(port))
    assert p.returncode == 0, p.stderr
    sid = p.stderr.split("session ", 1)[1].split(":", 1)[0]
    rec = daemon.wait_record(lambda r: r.get("session") == sid and r.get("kind") == "net")
    assert rec["verdict"] == "deny"
    assert rec["target"] == f"127.0.0.1:{port}"
    assert rec["rule"] == "default-deny"
    assert rec["comm"].startswith("python")
    # and through the CLI as JSON lines
    out = daemon.corral("log", "--json", "--session", sid, check=True).stdout
    lines = [json.loads(x) for x in out.splitlines()]
    assert any(x.get("kind") == "net" and x.get("target") == f"127.0.0.1:{port}" for x in lines)
