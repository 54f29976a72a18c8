"""A session reaches the loopback servers its own processes listen on without a
rule, and still not the host's (issue 13; bpf/net.c own_server4/own_server6).

Every session here has a network policy (default deny). The decision is the
kernel's: on the default-deny path to a loopback destination the connect and
sendmsg programs look the destination socket up and compare the cgroup it was
created in with the caller's session. Servers "outside" are this pytest
process's sockets (outside every session: the host's loopback services);
sessions are started through `corral run` in child processes only.

On a kernel whose verifier refuses the lookup in these programs (net.py
probes it), or with CORRAL_NO_OWN_LOOPBACK=1, the daemon compiles it out and
own servers are refused like any other address: the tests expect that."""
from __future__ import annotations

import errno
import json
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# Runs inside the sessions: start servers, run the client in another process
# of the same session, print what happened.
SCRIPT = r'''
import json, socket, subprocess, sys, threading

def accept_loop(s):
    while True:
        try:
            c, _ = s.accept()
            c.close()
        except OSError:
            return

def echo(s):
    while True:
        try:
            data, peer = s.recvfrom(2048)
            s.sendto(data, peer)
        except OSError:
            pass

def start(proto, host, opts):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    if proto == "tcp" or "reuseaddr" in opts:     # TCP servers nearly always set it
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if "reuseport" in opts:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((host, 0))
    if proto == "tcp":
        s.listen(64)
        threading.Thread(target=accept_loop, args=(s,), daemon=True).start()
    else:
        threading.Thread(target=echo, args=(s,), daemon=True).start()
    return s

def attempt(action, host, port):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    res = {"action": action, "target": f"{host}:{port}", "ok": False, "errno": None}
    try:
        if action == "tcp":
            s = socket.socket(fam, socket.SOCK_STREAM)
            s.settimeout(5)
            s.connect((host, port))
        else:
            s = socket.socket(fam, socket.SOCK_DGRAM)
            s.settimeout(3)
            if action == "udp":
                s.sendto(b"corral-own", (host, port))
            else:
                s.connect((host, port))
                s.send(b"corral-own")
            if s.recv(100) != b"corral-own":        # the server's reply came back
                raise OSError(0, "wrong reply")
        s.close()
        res["ok"] = True
    except socket.timeout:
        res["error"] = "timeout"
    except OSError as e:
        res["errno"] = e.errno
    return res

mode, arg = sys.argv[1], json.loads(sys.argv[2])
if mode == "client":
    for action, host, port in arg:
        print(json.dumps(attempt(action, host, int(port))), flush=True)
    sys.exit(0)
if mode == "late":                  # servers once the test has moved this process
    import os
    print(json.dumps({"pid": os.getpid()}), flush=True)
    sys.stdin.readline()
socks = {name: start(proto, host, opts) for name, proto, host, opts in arg["servers"]}
ports = {name: s.getsockname()[1] for name, s in socks.items()}
if mode == "serve":                 # another session's servers, until stdin closes
    print(json.dumps(ports), flush=True)
    sys.stdin.read()
    sys.exit(0)
if mode == "late":                  # and the client once it has moved it back
    print(json.dumps(ports), flush=True)
    sys.stdin.readline()
tries = [(a, h, ports.get(p, p)) for a, h, p in arg["tries"]]
p = subprocess.run([sys.executable, sys.argv[0], "client", json.dumps(tries)],
                   capture_output=True, text=True, timeout=120)
print(json.dumps({"ports": ports, "stderr": p.stderr,
                  "results": [json.loads(x) for x in p.stdout.splitlines()]}), flush=True)
'''


@pytest.fixture(scope="module")
def script():
    d = Path(tempfile.mkdtemp(prefix="corral-own-loopback-"))
    d.chmod(0o755)
    f = d / "own_loopback.py"
    f.write_text(SCRIPT)
    f.chmod(0o644)
    yield str(f)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def own():
    """Whether this kernel takes the lookup: the probe net.py runs. Where it
    does, own servers must be reached, so a daemon that compiled the lookup
    out anyway (CORRAL_NO_OWN_LOOPBACK=1) fails these tests."""
    from corral.backends.net import own_loopback_probe
    return own_loopback_probe()[0]


def test_the_daemon_compiled_the_lookup_in_where_the_kernel_takes_it(daemon, own):
    err = daemon.stderr_text()
    assert ("own loopback servers: reachable without a rule" in err) == own, err[-2000:]


def run(daemon, script, flags, servers=(), tries=()):
    """`corral run -v FLAGS -- script own` -> (session id, ports by name, results)."""
    spec = {"servers": [list(s) for s in servers], "tries": [list(t) for t in tries]}
    p = daemon.corral("run", "-v", *flags, "--", sys.executable, script, "own", json.dumps(spec),
                      timeout=180)
    assert p.returncode == 0, p.stderr
    sid = p.stderr.split("session ", 1)[1].split(":", 1)[0]
    out = json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("{")][-1])
    assert len(out["results"]) == len(spec["tries"]), out
    return sid, out["ports"], out["results"]


def refused(r) -> bool:
    return not r["ok"] and r["errno"] == errno.EPERM


def expect(results, reached: bool):
    if reached:
        assert all(r["ok"] for r in results), results
    else:
        assert all(refused(r) for r in results), results


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def listener(host="127.0.0.1"):
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, 0))
    s.listen(64)
    return s, s.getsockname()[1]


def net_records(daemon, sid):
    return [r for r in daemon.records() if r.get("session") == sid and r.get("kind") == "net"]


def test_own_tcp_servers_are_reached_without_a_rule_and_not_logged(daemon, script, own):
    marker = closed_port()      # nothing listens: the last try is denied and logged
    sid, ports, res = run(daemon, script, ["--no-net"],
                          servers=[("t4", "tcp", "127.0.0.1", []), ("t6", "tcp", "::1", []),
                                   ("any4", "tcp", "0.0.0.0", []), ("any6", "tcp", "::", [])],
                          tries=[("tcp", "127.0.0.1", "t4"), ("tcp", "::1", "t6"),
                                 ("tcp", "127.0.0.1", "any4"), ("tcp", "0.0.0.0", "any4"),
                                 ("tcp", "127.0.0.2", "any4"),       # all of 127/8 is loopback
                                 ("tcp", "::ffff:127.0.0.1", "t4"),  # v4-mapped, as IPv4
                                 ("tcp", "::1", "any6"), ("tcp", "::", "any6"),
                                 ("tcp", "127.0.0.1", "any6"),       # dual-stack listener
                                 ("tcp", "127.0.0.1", marker)])
    expect(res[:-1], own)
    assert refused(res[-1]), res[-1]
    # Records come in order: once the marker's denial is logged, anything
    # logged for the session's own servers would be there too.
    daemon.wait_record(lambda r: r.get("session") == sid and r.get("kind") == "net"
                       and r.get("target") == f"127.0.0.1:{marker}")
    targets = [r.get("target", "") for r in net_records(daemon, sid)]
    own_ports = {str(p) for p in ports.values()}
    logged = [t for t in targets if t.rsplit(":", 1)[-1] in own_ports]
    assert (not logged) if own else logged, targets


def test_own_udp_echo_server_is_reached_by_sendto(daemon, script, own):
    _, _, res = run(daemon, script, ["--no-net"],
                    servers=[("u4", "udp", "127.0.0.1", []), ("u6", "udp", "::1", []),
                             ("uany", "udp", "0.0.0.0", [])],
                    tries=[("udp", "127.0.0.1", "u4"), ("udp", "::1", "u6"),
                           ("udp", "127.0.0.1", "uany"),
                           ("udp", "::ffff:127.0.0.1", "u4"),
                           # connect() on a UDP socket; the reply then has to find
                           # the client's connected socket (lookup with the source)
                           ("udpconnect", "127.0.0.1", "u4"), ("udpconnect", "::1", "u6")])
    if own:
        assert all(r["ok"] for r in res), res       # and each echo came back
    else:
        assert all(refused(r) for r in res), res


def test_host_loopback_services_are_refused_and_logged(daemon, script, own):
    """Servers outside every session (this pytest process): EPERM, and a record."""
    s4, p4 = listener("127.0.0.1")
    sany, pany = listener("0.0.0.0")
    s6, p6 = listener("::1")
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", 0))
    u.settimeout(0.3)
    pu = u.getsockname()[1]
    try:
        sid, _, res = run(daemon, script, ["--no-net"],
                          tries=[("tcp", "127.0.0.1", p4), ("tcp", "0.0.0.0", p4),
                                 ("tcp", "::ffff:127.0.0.1", p4),
                                 ("tcp", "127.0.0.1", pany), ("tcp", "::1", p6),
                                 ("udp", "127.0.0.1", pu), ("udpconnect", "127.0.0.1", pu)])
        assert all(refused(r) for r in res), res
        with pytest.raises(socket.timeout):
            u.recv(100)
        for target in (f"127.0.0.1:{p4}", f"127.0.0.1:{pany}", f"127.0.0.1:{pu}"):
            rec = daemon.wait_record(lambda r: r.get("session") == sid and r.get("kind") == "net"
                                     and r.get("target") == target)
            assert rec["verdict"] == "deny" and rec["rule"] == "default-deny", rec
    finally:
        for s in (s4, sany, s6, u):
            s.close()


def test_allow_localhost_port_still_opens_the_host_service(daemon, script):
    """The control: the same outside server, with the rule, is reached."""
    s4, p4 = listener("127.0.0.1")
    try:
        _, _, res = run(daemon, script, ["--no-net", "--allow-localhost-port", str(p4)],
                        tries=[("tcp", "127.0.0.1", p4), ("tcp", "::ffff:127.0.0.1", p4)])
        assert all(r["ok"] for r in res), res
    finally:
        s4.close()


def test_another_sessions_server_is_not_own(daemon, script, own):
    spec = {"servers": [["a_tcp", "tcp", "127.0.0.1", []], ["a_tcp6", "tcp", "::1", []],
                        ["a_udp", "udp", "127.0.0.1", []]], "tries": []}
    a = subprocess.Popen([str(daemon.bin_dir / "corral"), "run", "--no-net", "--", sys.executable,
                          script, "serve", json.dumps(spec)], env=daemon.env, text=True,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = a.stdout.readline()
        assert line.startswith("{"), (line, a.poll())
        ports = json.loads(line)
        _, _, res = run(daemon, script, ["--no-net"],
                        tries=[("tcp", "127.0.0.1", ports["a_tcp"]), ("tcp", "::1", ports["a_tcp6"]),
                               ("tcp", "::ffff:127.0.0.1", ports["a_tcp"]),
                               ("udp", "127.0.0.1", ports["a_udp"])])
        assert all(refused(r) for r in res), res
    finally:
        a.stdin.close()
        try:
            a.wait(30)
        except subprocess.TimeoutExpired:
            a.kill()
            a.wait()


def test_a_server_in_a_cgroup_below_the_session_is_own(daemon, script, own):
    """Sockets keep the cgroup they were created in: one created in a cgroup
    below the session's (made and entered from outside: a session cannot) is
    the session's. The server process is moved back before the client runs,
    so the client is enforced as the session."""
    from corral.kernel import cgroups
    spec = {"servers": [["t4", "tcp", "127.0.0.1", []], ["u4", "udp", "127.0.0.1", []]],
            "tries": [["tcp", "127.0.0.1", "t4"], ["udp", "127.0.0.1", "u4"]]}
    a = subprocess.Popen([str(daemon.bin_dir / "corral"), "run", "--no-net", "--", sys.executable,
                          script, "late", json.dumps(spec)], env=daemon.env, text=True,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    sub = None
    try:
        line = a.stdout.readline()
        assert line.startswith("{"), (line, a.poll(), a.stderr.read() if a.poll() is not None else "")
        pid = json.loads(line)["pid"]
        top = cgroups.path_of(cgroups.cgroup_of(pid))
        sub = top / "own-loopback-sub"
        sub.mkdir()
        cgroups.move(pid, sub)
        a.stdin.write("go\n")
        a.stdin.flush()
        assert a.stdout.readline().startswith("{")        # servers bound, in the sub-cgroup
        cgroups.move(pid, top)
        sub.rmdir()                                        # the sockets keep it alive
        sub = None
        a.stdin.write("go\n")
        a.stdin.flush()
        out, err = a.communicate(timeout=120)
        assert a.returncode == 0, err
        res = json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1])["results"]
        expect(res, own)
    finally:
        if a.poll() is None:
            a.kill()
            a.wait()
        if sub is not None:
            try:
                cgroups.move(pid, top)
                sub.rmdir()
            except OSError:
                pass


def test_an_explicit_deny_rule_beats_the_own_server(daemon, script, own):
    _, _, res = run(daemon, script, ["--deny-net", "127.0.0.1/32"],
                    servers=[("t4", "tcp", "127.0.0.1", []), ("t6", "tcp", "::1", [])],
                    tries=[("tcp", "127.0.0.1", "t4"), ("tcp", "::1", "t6")])
    assert refused(res[0]), res             # the deny rule, not default deny: not replaced
    expect(res[1:], own)                    # ::1 is left at default deny: own server


def test_shared_ports_are_not_trusted(daemon, script, own):
    """SO_REUSEPORT (TCP, UDP) and SO_REUSEADDR (UDP) let other sockets share the
    port, and which one the kernel delivers to is decided later than the
    lookup: such a server of the session's needs a rule (documented limitation)."""
    _, ports, res = run(daemon, script, ["--no-net"],
                        servers=[("rp", "tcp", "127.0.0.1", ["reuseport"]),
                                 ("urp", "udp", "127.0.0.1", ["reuseport"]),
                                 ("ura", "udp", "127.0.0.1", ["reuseaddr"]),
                                 ("plain", "tcp", "127.0.0.1", [])],
                        tries=[("tcp", "127.0.0.1", "rp"), ("udp", "127.0.0.1", "urp"),
                               ("udp", "127.0.0.1", "ura"), ("tcp", "127.0.0.1", "plain")])
    assert all(refused(r) for r in res[:3]), res
    expect(res[3:], own)


def test_without_the_lookup_own_servers_are_refused_as_before():
    """CORRAL_NO_OWN_LOOPBACK=1 compiles the lookup out: the own-server case
    above then fails (EPERM), i.e. it is the lookup that lets it through."""
    from conftest import make_daemon
    d = make_daemon("corral-test-noown", extra_args=["--no-dns"],
                    extra_env={"CORRAL_NO_OWN_LOOPBACK": "1"})
    tmp = Path(tempfile.mkdtemp(prefix="corral-own-loopback-"))
    try:
        d.start()
        assert "kernel lookup is off (CORRAL_NO_OWN_LOOPBACK=1)" in d.stderr_text()
        tmp.chmod(0o755)
        f = tmp / "own_loopback.py"
        f.write_text(SCRIPT)
        f.chmod(0o644)
        _, _, res = run(d, str(f), ["--no-net"],
                        servers=[("t4", "tcp", "127.0.0.1", []), ("u4", "udp", "127.0.0.1", [])],
                        tries=[("tcp", "127.0.0.1", "t4"), ("udp", "127.0.0.1", "u4")])
        assert all(refused(r) for r in res), res
    finally:
        d.cleanup(remove_tmp=True)
        shutil.rmtree(tmp, ignore_errors=True)
