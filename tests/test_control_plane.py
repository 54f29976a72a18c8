"""The control plane under attack (issue 9): identity pinned at accept, log
before apply, per-principal limits, bad values, supervision.

Every test drives a real corrald and real processes; each finding's test fails
on the daemon that judged callers by a pid looked up at request time."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import make_daemon
from corral.kernel import cgroups
from corral import protocol as P
from cpharness import (NOBODY, ProbeSession, SmallDisk, call, exhaust_log, frame,
                       child_request, listener, raw, read_frame, records, run_as, wait_until)

# -- D1: a connection whose process has exited has no authority ---------------------
DEAD_CONNECTOR = r"""
import errno, json, os, socket, struct, sys, time
import msgpack
sock_path, port, other, how = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
def frame(o):
    b = msgpack.packb(o, use_bin_type=True); return struct.pack(">I", len(b)) + b
def read(s):
    h = b""
    while len(h) < 4: h += s.recv(4 - len(h))
    n = struct.unpack(">I", h)[0]; b = b""
    while len(b) < n: b += s.recv(n - len(b))
    return msgpack.unpackb(b, raw=False)
def ask(s, op, **a):
    s.sendall(frame({"op": op, "id": 7, **a})); m = read(s)
    return "ok" if m["ok"] else m["error"]["code"]
def probe():
    s = socket.socket()
    try: s.connect(("127.0.0.1", port)); return "ok"
    except OSError as e: return errno.errorcode[e.errno]
    finally: s.close()
def attacks(s):
    me = os.environ["CORRAL_SESSION"]
    wide = {"network": {"allow": [f"127.0.0.1:{port}"]}}
    return {"update_policy": ask(s, "update_policy", session=me, policy=wide, reason="x"),
            "session_info": ask(s, "session_info", session=me),
            "list_sessions": ask(s, "list_sessions"),
            "session_info_other": ask(s, "session_info", session=other),
            "end_other": ask(s, "end_session", session=other),
            "register": ask(s, "register_session", policy=wide)}
a, b = socket.socketpair()
if how == "scm_rights":
    pid = os.fork()
    if pid == 0:                              # A connects, hands the connection over, exits
        c = socket.socket(socket.AF_UNIX); c.connect(sock_path)
        socket.send_fds(a, [b"x"], [c.fileno()]); os._exit(0)
    os.waitpid(pid, 0)                        # ... and is reaped
    _, fds, _, _ = socket.recv_fds(b, 1, 1)
    res = attacks(socket.socket(fileno=fds[0]))
else:                                         # A connects, forks B, exits; B inherits
    pid = os.fork()
    if pid == 0:
        c = socket.socket(socket.AF_UNIX); c.connect(sock_path)
        if os.fork() == 0:
            b.recv(1)                         # wait until A is reaped
            b.sendall(json.dumps(attacks(c)).encode()); os._exit(0)
        os._exit(0)
    os.waitpid(pid, 0)
    a.sendall(b"g")
    res = json.loads(a.recv(65536).decode())
live = socket.socket(socket.AF_UNIX); live.connect(sock_path)   # control: a live peer
res["live_update_policy"] = ask(live, "update_policy", session=os.environ["CORRAL_SESSION"],
                                policy={"network": {"allow": [f"127.0.0.1:{port}"]}}, reason="x")
res["live_session_info"] = ask(live, "session_info", session=os.environ["CORRAL_SESSION"])
res["probe_after"] = probe()
print(json.dumps(res))
"""


@pytest.mark.parametrize("how", ["scm_rights", "fork"])
def test_dead_connector_gets_no_authority(daemon, how):
    """A root agent's process connects, passes the connection on (SCM_RIGHTS or
    fork) and is reaped: the connection may not widen, list, read or end anything."""
    srv, port = listener()
    other = ProbeSession(daemon, port, "--no-net")
    try:
        p = daemon.corral("run", "--no-net", "--", sys.executable, "-c", DEAD_CONNECTOR,
                          str(daemon.socket), str(port), other.id, how)
        assert p.returncode == 0, p.stderr
        r = json.loads(p.stdout)
        for k in ("update_policy", "session_info", "list_sessions", "session_info_other",
                  "end_other", "register"):
            assert r[k] == P.E_PEER_GONE, (k, r)
        # Controls: a live process in the same session is still served as itself.
        assert r["live_update_policy"] == P.E_WIDENS, r
        assert r["live_session_info"] == "ok", r
        assert r["probe_after"] == "EPERM", r
        assert other.probe() == "EPERM"
        with daemon.client() as c:
            assert other.id in {s["id"] for s in c.call("list_sessions")}
        daemon.wait_record(lambda x: x.get("kind") == "control" and x.get("verdict") == "deny"
                           and "exited" in str(x.get("reason")))
    finally:
        other.end()
        srv.close()


# -- D2: pid reuse -------------------------------------------------------------------
REUSE_CLIENT = r"""
import json, os, socket, struct, sys
import msgpack
sock_path = sys.argv[1]
def frame(o):
    b = msgpack.packb(o, use_bin_type=True); return struct.pack(">I", len(b)) + b
def read(s):
    h = b""
    while len(h) < 4: h += s.recv(4 - len(h))
    n = struct.unpack(">I", h)[0]; b = b""
    while len(b) < n: b += s.recv(n - len(b))
    return msgpack.unpackb(b, raw=False)
a, b = socket.socketpair()
pid = os.fork()
if pid == 0:
    c = socket.socket(socket.AF_UNIX); c.connect(sock_path)
    socket.send_fds(a, [b"x"], [c.fileno()]); os._exit(0)
os.waitpid(pid, 0)
_, fds, _, _ = socket.recv_fds(b, 1, 1)
conn = socket.socket(fileno=fds[0])
print(pid, flush=True)
sys.stdin.readline()                     # the test reuses the pid for a root process
conn.sendall(frame({"op": "register_session", "id": 1, "policy": {}}))
reg = read(conn)
out = {"register": "ok" if reg["ok"] else reg["error"]["code"]}
if reg["ok"]:
    conn.sendall(frame({"op": "end_session", "id": 2, "session": reg["result"]["id"]}))
    e = read(conn)
    out["end"] = "ok" if e["ok"] else e["error"]["code"]
print(json.dumps(out), flush=True)
"""


def _spawn_with_pid(want: int, tries=200):
    """A root `sleep` whose pid is `want` (the kernel hands out ns_last_pid + 1)."""
    for _ in range(tries):
        with open("/proc/sys/kernel/ns_last_pid", "w") as fh:
            fh.write(str(want - 1))
        p = subprocess.Popen(["sleep", "60"])
        if p.pid == want:
            return p
        p.kill()
        p.wait()
    pytest.fail(f"could not get pid {want} reused")


def test_pid_reuse_cannot_move_or_kill_a_root_process(daemon):
    """nobody's connecting process exits; its pid goes to a root process; nobody's
    connection must not move that process into a session nor kill it."""
    h = subprocess.Popen([sys.executable, "-c", REUSE_CLIENT, str(daemon.socket)], env=daemon.env,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/",
                         preexec_fn=lambda: (os.setgroups([]), os.setgid(NOBODY), os.setuid(NOBODY)))
    victim = None
    try:
        old_pid = int(h.stdout.readline())
        victim = _spawn_with_pid(old_pid)
        before = cgroups.cgroup_of(victim.pid)
        h.stdin.write("go\n")
        h.stdin.flush()
        out = json.loads(h.stdout.readline())
        assert out["register"] == P.E_PEER_GONE, out
        time.sleep(0.3)
        assert victim.poll() is None, "the root process was killed"
        assert cgroups.cgroup_of(victim.pid) == before, "the root process was moved"
    finally:
        h.kill()
        if victim:
            victim.kill()
            victim.wait()


def test_peer_identity_is_pinned_by_pidfd(daemon):
    with daemon.client() as c:
        hello = c.call("hello")
    assert hello["peer"]["pinned_by"] == "SO_PEERPIDFD"
    assert hello["peer"]["alive"] is True


# -- D3 / D4 / D6: log before apply, a full disk ----------------------------------------
@pytest.fixture
def disk_daemon():
    disk = SmallDisk("1m")
    d = make_daemon("corral-disk", extra_args=["--no-dns"],
                    extra_env={"CORRAL_LOG_DIR": str(disk.dir / "log")})
    d.log_dir = disk.dir / "log"
    try:
        d.start()
        yield d, disk
    finally:
        disk.free()
        d.cleanup()
        disk.close()


def test_no_change_without_its_record(disk_daemon):
    d, disk = disk_daemon
    srv, port = listener()
    s = ProbeSession(d, port, "--no-net")
    try:
        assert s.probe() == "EPERM"
        with d.client() as c:
            pol = c.call("session_info", session=s.id)["policy"]
        wide = json.loads(json.dumps(pol))
        wide["network"]["allow"] = [f"127.0.0.1:{port}"]
        disk.fill()
        exhaust_log(d, s.id)
        with d.client() as c:
            with pytest.raises(Exception) as ei:
                c.call("update_policy", session=s.id, policy=wide, reason="while full")
            assert ei.value.code == P.E_LOG, ei.value
            assert "audit record could not be written" in ei.value.message
            assert c.call("session_info", session=s.id)["policy"] == pol
            assert c.call("hello")["log"]["state"] == "degraded"
        # Ending it is refused too, and it stays alive.
        with d.client() as c:
            with pytest.raises(Exception) as ei:
                c.call("end_session", session=s.id)
            assert ei.value.code == P.E_LOG, ei.value
        assert s.probe() == "EPERM"
        # New sessions are refused too (their start record is their proof).
        # (From a child: the test process itself must never land in a session.)
        r = json.loads(run_as(d, 0, HOLD, d.socket, 1, input="\n").stdout)
        assert r != "ok" and r["code"] == P.E_LOG, r
        assert s.probe() == "EPERM", "the refused widening must not have reached the kernel"
        disk.free()
        with d.client() as c:
            c.call("update_policy", session=s.id, policy=wide, reason="after free")
        assert s.probe() == "ok"
        ups = records(d, kind="policy", op="update", session=s.id)
        assert [u["rule"] for u in ups] == ["after free"], ups
    finally:
        s.end()
        srv.close()


def test_session_cleanup_goes_on_while_the_log_is_full(disk_daemon):
    d, disk = disk_daemon
    srv, port = listener()
    s = ProbeSession(d, port, "--no-net")
    try:
        path = cgroups.cgroup2_mount() / d.instance / s.id
        assert path.is_dir()
        disk.fill()
        exhaust_log(d, s.id)
        s.end()                                    # its cgroup empties while the disk is full
        assert wait_until(lambda: not path.exists()), \
            "the session was not cleaned up while the log was full"
        with d.client() as c:
            assert s.id not in {x["id"] for x in c.call("list_sessions")}
        disk.free()
        d.wait_record(lambda r: r.get("kind") == "lost" and r.get("op") == "log_degraded"
                      and r.get("count", 0) >= 1, timeout=10)
        # The daemon still works: a new session starts and is enforced.
        s2 = ProbeSession(d, port, "--no-net")
        assert s2.probe() == "EPERM"
        s2.end()
        from corral.server.eventlog import verify
        assert verify(d.log_dir).ok
    finally:
        s.end()
        srv.close()


def test_daemon_starts_on_a_full_disk_with_enforcement_intact(disk_daemon):
    d, disk = disk_daemon
    srv, port = listener()
    s = ProbeSession(d, port, "--no-net")
    try:
        disk.fill()
        exhaust_log(d, s.id)
        d.stop()
        assert s.probe() == "EPERM"
        d.start()
        with d.client() as c:
            hello = c.call("hello")
            assert hello["log"]["state"] == "degraded", hello["log"]
            assert s.id in {x["id"] for x in c.call("list_sessions")}
        assert s.probe() == "EPERM", "a recovered session must stay enforced"
        doctor = d.corral("doctor")
        assert "audit log   DEGRADED" in doctor.stdout, doctor.stdout
        err = d.stderr_text()
        assert err.count("Traceback") == 0, err[-3000:]
        disk.free()
        def log_ok():
            with d.client() as c:
                return c.call("hello")["log"]["state"] == "ok"
        assert wait_until(log_ok), "the log did not recover after space returned"
        from corral.server.eventlog import verify
        assert verify(d.log_dir).ok
    finally:
        s.end()
        srv.close()


# -- D4: a housekeeping step that fails is retried, not dead for good ----------------
def test_watcher_survives_descriptor_exhaustion():
    d = make_daemon("corral-emfile", extra_args=["--no-dns"])
    srv, port = listener()
    socks = []
    try:
        d.start()
        s = ProbeSession(d, port, "--no-net")
        pid = d.proc.pid
        nfd = len(os.listdir(f"/proc/{pid}/fd"))
        hard = _nofile(pid)[1]
        subprocess.run(["prlimit", f"--pid={pid}", f"--nofile={nfd + 4}:{hard}"], check=True)
        for _ in range(12):                       # use up the daemon's descriptors
            socks.append(raw(d))
        time.sleep(0.5)
        s.end()                                   # the watcher now needs cgroup.events: EMFILE
        time.sleep(1.5)
        for x in socks:
            x.close()
        socks.clear()
        subprocess.run(["prlimit", f"--pid={pid}", f"--nofile={hard}:{hard}"], check=True)
        path = cgroups.cgroup2_mount() / d.instance / s.id
        assert wait_until(lambda: not path.exists()), \
            "the watcher died: the ended session was never cleaned up"
        d.wait_record(lambda r: r.get("op") == "end" and r.get("session") == s.id)
        assert d.proc.poll() is None
    finally:
        for x in socks:
            x.close()
        srv.close()
        d.cleanup()


# -- D5: descriptors, idle connections ---------------------------------------------------
HOG = r"""
import json, socket, struct, sys, time
import msgpack
path, n = sys.argv[1], int(sys.argv[2])
socks, codes = [], {}
for i in range(n):
    s = socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(path); socks.append(s)
time.sleep(0.5)
for s in socks:
    try:
        s.sendall(struct.pack(">I", 1) + msgpack.packb({}))  # any frame: see what comes back
    except OSError:
        pass
for s in socks:
    try:
        h = s.recv(4)
        if not h:
            codes["closed"] = codes.get("closed", 0) + 1; continue
        n = struct.unpack(">I", h)[0]; b = b""
        while len(b) < n: b += s.recv(n - len(b))
        m = msgpack.unpackb(b, raw=False)
        k = m["error"]["code"] if not m.get("ok") else "ok"
        codes[k] = codes.get(k, 0) + 1
    except OSError as e:
        codes[type(e).__name__] = codes.get(type(e).__name__, 0) + 1
print(json.dumps(codes), flush=True)
sys.stdin.readline()
"""


def test_one_user_cannot_exhaust_connections(daemon):
    from corral.server import limits
    n = limits.MAX_CONN_PER_PRINCIPAL + 40
    hog = subprocess.Popen([sys.executable, "-c", HOG, str(daemon.socket), str(n)], env=daemon.env,
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/",
                           preexec_fn=lambda: (os.setgroups([]), os.setgid(NOBODY), os.setuid(NOBODY)))
    try:
        codes = json.loads(hog.stdout.readline())
        assert codes.get(P.E_LIMIT, 0) >= 40, codes
        assert codes.get(P.E_BAD_FRAME, 0) + codes.get(P.E_BAD_REQUEST, 0) \
            == limits.MAX_CONN_PER_PRINCIPAL, codes
        # While nobody holds its whole quota, root's sandbox still starts.
        p = daemon.corral("run", "--no-net", "--", "true")
        assert p.returncode == 0, p.stderr
    finally:
        hog.kill()
        hog.wait()
    soft, hard = _nofile(daemon.proc.pid)
    assert soft >= min(65536, hard), (soft, hard)


def _nofile(pid: int) -> tuple[int, int]:
    for ln in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if ln.startswith("Max open files"):
            soft, hard = ln.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open-files limit")


def test_idle_connection_is_closed_and_subscriber_is_not():
    d = make_daemon("corral-idle", extra_args=["--no-dns"], extra_env={"CORRAL_IDLE_TIMEOUT": "1"})
    try:
        d.start()
        idle = raw(d)
        sub = raw(d)
        assert call(sub, "subscribe_events")["ok"]
        t0 = time.monotonic()
        m = read_frame(idle)
        assert m["error"]["code"] == P.E_LIMIT and "idle" in m["error"]["message"], m
        assert read_frame(idle) is None and time.monotonic() - t0 < 5
        time.sleep(1.5)
        assert call(sub, "hello")["ok"], "an event subscriber may stay idle"
        idle.close()
        sub.close()
    finally:
        d.cleanup()


# -- D7: per-user sessions and rules ---------------------------------------------------
HOLD = r"""
import json, socket, struct, sys
import msgpack
path, n = sys.argv[1], int(sys.argv[2])
rules = [f"10.{i // 250}.{i % 250}.1" for i in range(n)]
s = socket.socket(socket.AF_UNIX); s.connect(path)
b = msgpack.packb({"op": "register_session", "id": 1, "policy": {"network": {"allow": rules}}})
s.sendall(struct.pack(">I", len(b)) + b)
h = s.recv(4); ln = struct.unpack(">I", h)[0]; body = b""
while len(body) < ln: body += s.recv(ln - len(body))
m = msgpack.unpackb(body, raw=False)
print(json.dumps("ok" if m["ok"] else m["error"]), flush=True)
sys.stdin.readline()
"""


def test_per_user_rule_and_session_limits():
    d = make_daemon("corral-quota", extra_args=["--no-dns"],
                    extra_env={"CORRAL_MAX_RULES_PER_USER": "50",
                               "CORRAL_MAX_SESSIONS_PER_USER": "2"})
    holders = []

    def hold(uid, n):
        p = subprocess.Popen([sys.executable, "-c", HOLD, str(d.socket), str(n)], env=d.env,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/",
                             preexec_fn=lambda: (os.setgroups([]), os.setgid(uid), os.setuid(uid)))
        holders.append(p)
        return json.loads(p.stdout.readline())

    try:
        d.start()
        assert hold(NOBODY, 30) == "ok"
        r = hold(NOBODY, 30)
        assert r != "ok" and r["code"] == P.E_LIMIT and "limit 50" in r["message"], r
        assert hold(NOBODY, 5) == "ok"
        r = hold(NOBODY, 1)
        assert r != "ok" and r["code"] == P.E_LIMIT and "sessions" in r["message"], r
        # Another user is not affected by nobody's quota.
        assert hold(0, 40) == "ok"
    finally:
        for p in holders:
            p.kill()
        d.cleanup()


# -- D9: refusals are logged at a bounded rate, with the count of the rest --------------
REFUSER = r"""
import json, socket, struct, sys, time
import msgpack
path, target, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_UNIX); s.connect(path)
codes = {}
t0 = time.monotonic()
for i in range(n):
    b = msgpack.packb({"op": "end_session", "id": i, "session": target})
    s.sendall(struct.pack(">I", len(b)) + b)
    h = s.recv(4); ln = struct.unpack(">I", h)[0]; body = b""
    while len(body) < ln: body += s.recv(ln - len(body))
    m = msgpack.unpackb(body, raw=False)
    k = "ok" if m["ok"] else m["error"]["code"]
    codes[k] = codes.get(k, 0) + 1
print(json.dumps({"codes": codes, "secs": time.monotonic() - t0}))
"""


def test_refusals_are_rate_limited_and_counted(daemon):
    srv, port = listener()
    s = ProbeSession(daemon, port, "--no-net")
    try:
        before = len(daemon.records())
        p = run_as(daemon, NOBODY, REFUSER, daemon.socket, s.id, 1500)
        out = json.loads(p.stdout)
        refused = out["codes"].get(P.E_FORBIDDEN, 0) + out["codes"].get(P.E_RATE, 0)
        assert refused == 1500, out
        assert s.probe() == "EPERM"                # and the session was not ended
        time.sleep(6)                             # the watcher flushes counts every 5 s
        recs = [r for r in daemon.records()[before:] if r.get("kind") == "control"
                and r.get("uid") in (NOBODY, None) and r.get("verdict") == "deny"]
        written = [r for r in recs if r.get("op") != "refusals_suppressed"]
        counted = sum(r.get("suppressed_before", 0) for r in written) + \
            sum(r.get("count", 0) for r in recs if r.get("op") == "refusals_suppressed")
        assert len(written) <= 20 + 5 * (out["secs"] + 7), len(written)
        assert len(written) + counted == refused, (len(written), counted, refused)
    finally:
        s.end()
        srv.close()


# -- D10 / D12: bad values -------------------------------------------------------------
def _deep(n: int) -> bytes:
    return b"\x91" * n + b"\xc0"            # [[[...[nil]...]]] without msgpack's packer limit


def _raw_request(fields: dict, deep_key: str, depth: int, inside=()) -> bytes:
    """A request whose `deep_key` holds a value nested `depth` deep, wrapped in
    the maps named by `inside` (e.g. ("network", "allow") for a policy)."""
    import msgpack
    head = msgpack_map_header(len(fields) + 1)
    body = head + b"".join(msgpack.packb(k) + msgpack.packb(v) for k, v in fields.items())
    value = _deep(depth)
    for key in reversed(inside):
        value = msgpack_map_header(1) + msgpack.packb(key) + value
    body += msgpack.packb(deep_key) + value
    return len(body).to_bytes(4, "big") + body


def msgpack_map_header(n: int) -> bytes:
    return bytes([0x80 | n])


@pytest.mark.parametrize("depth", [600, 900, 1000])
def test_deep_policy_is_bad_policy_and_daemon_serves_on(daemon, depth):
    out = child_request(daemon, _raw_request({"op": "register_session", "id": 5}, "policy", depth,
                                             ("network", "allow")))
    m = out["reply"]
    assert m is not None and m["ok"] is False, m
    assert m["error"]["code"] in (P.E_BAD_POLICY, P.E_BAD_FRAME), m
    if m["error"]["code"] == P.E_BAD_FRAME:     # msgpack's own limit, below ours
        assert depth >= 1000
    assert out["hello_ok"]


def test_deep_reason_and_report_leave_no_trace(daemon):
    srv, port = listener()
    sess = ProbeSession(daemon, port, "--no-net")
    try:
        s = raw(daemon)
        with daemon.client() as c:
            pol = c.call("session_info", session=sess.id)["policy"]
        before = len(records(daemon, kind="policy", session=sess.id))
        body = _raw_request({"op": "update_policy", "id": 3, "session": sess.id,
                             "policy": pol}, "reason", 600)
        s.sendall(body)
        m = read_frame(s)
        assert m["error"]["code"] == P.E_BAD_REQUEST, m
        assert len(records(daemon, kind="policy", session=sess.id)) == before
        s.close()
        # A session's own process reports a 600-deep confinement report.
        code = (r"import os, sys; sys.path.insert(0, %r); from cpharness import raw, read_frame; "
                r"from test_control_plane import _raw_request; "
                r"s = raw(type('D', (), {'socket': os.environ['CORRAL_SOCK']})); "
                r"s.sendall(_raw_request({'op': 'report_confinement', 'id': 1, "
                r"'session': os.environ['CORRAL_SESSION']}, 'report', 600)); "
                r"print(read_frame(s)['error']['code'])") % str(Path(__file__).parent)
        p = daemon.corral("run", "--no-net", "--", sys.executable, "-c", code,
                          env={"CORRAL_SOCK": str(daemon.socket)})
        assert p.stdout.strip() == P.E_BAD_REQUEST, (p.stdout, p.stderr)
        ps = daemon.corral("ps")
        assert ps.returncode == 0 and sess.id in ps.stdout, ps.stderr
    finally:
        sess.end()
        srv.close()


def test_huge_id_gets_an_answer_without_it(daemon):
    s = raw(daemon)
    s.sendall(frame({"op": "hello", "id": "x" * 900_000}))
    m = read_frame(s)
    assert m is not None and m["ok"] is False and m["id"] is None, m
    assert call(s, "hello")["ok"]
    s.sendall(frame({"op": "hello", "id": [1, 2]}))
    m = read_frame(s)
    assert m["error"]["code"] == P.E_BAD_REQUEST and m["id"] is None, m
    s.close()


def test_oversized_policy_is_refused_and_not_installed(daemon):
    rules = [f"10.{i // 60000}.{(i // 250) % 240}.{i % 250}" for i in range(30000)]
    out = child_request(daemon, frame({"op": "register_session", "id": 1,
                                       "policy": {"network": {"allow": rules}}}))
    m = out["reply"]
    assert m["ok"] is False and m["error"]["code"] in (P.E_BAD_POLICY, P.E_LIMIT), m
    assert out["hello_ok"]
    with daemon.client() as c:
        assert all(len(x["policy"]["network"]["allow"]) < 30000 for x in c.call("list_sessions")
                   if x["policy"].get("network"))


# -- found by bench/bench_control_plane.py -------------------------------------------
def test_report_with_odd_keys_is_refused_and_state_stays_saveable(daemon):
    code = (r"import os, sys; sys.path.insert(0, %r); from cpharness import call, raw; "
            r"s = raw(type('D', (), {'socket': os.environ['CORRAL_SOCK']})); "
            r"print(call(s, 'report_confinement', session=os.environ['CORRAL_SESSION'], "
            r"report={b'k': 1})['error']['code'])") % str(Path(__file__).parent)
    srv, port = listener()
    sess = ProbeSession(daemon, port, "--allow-net", f"127.0.0.1:{port}")
    try:
        p = daemon.corral("run", "--no-net", "--", sys.executable, "-c", code,
                          env={"CORRAL_SOCK": str(daemon.socket)})
        assert p.stdout.strip() == P.E_BAD_REQUEST, (p.stdout, p.stderr)
        assert sess.probe() == "ok"
        with daemon.client() as c:
            pol = c.call("session_info", session=sess.id)["policy"]
            pol["network"]["allow"] = []
            c.call("update_policy", session=sess.id, policy=pol, reason="narrow")
        assert sess.probe() == "EPERM"
        assert not records(daemon, op="update_failed", session=sess.id)
    finally:
        sess.end()
        srv.close()


def test_a_second_confinement_report_from_inside_is_refused(daemon):
    """`corral run` reports once, before exec; the agent cannot rewrite the record
    of what was enforced (nor the Unix refusals computed with it)."""
    code = (r"import os, sys; sys.path.insert(0, %r); from cpharness import call, raw; "
            r"s = raw(type('D', (), {'socket': os.environ['CORRAL_SOCK']})); "
            r"r = call(s, 'report_confinement', session=os.environ['CORRAL_SESSION'], "
            r"report={'landlock': False, 'seccomp': False}); print(r['error']['code'])") \
        % str(Path(__file__).parent)
    p = daemon.corral("run", "--no-net", "--", sys.executable, "-c", code,
                      env={"CORRAL_SOCK": str(daemon.socket)})
    assert p.stdout.strip() == P.E_FORBIDDEN, (p.stdout, p.stderr)
    rec = [r for r in daemon.records() if r.get("op") == "confined"]
    assert rec and rec[-1]["report"].get("seccomp") is True, rec[-1:]


def test_hung_up_clients_leave_no_tracebacks(daemon):
    before = daemon.stderr_text().count("Traceback")
    for _ in range(5):
        s = raw(daemon)
        s.sendall(frame({"op": "hello", "id": 1}))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()
    time.sleep(0.5)
    with daemon.client() as c:
        assert c.call("hello")["daemon"] == "corrald"
    assert daemon.stderr_text().count("Traceback") == before, daemon.stderr_text()[-2000:]


FLOOD = r"""
import socket, sys, time
port = int(sys.argv[1]); t = time.monotonic()
while time.monotonic() - t < float(sys.argv[2]):
    s = socket.socket()
    try: s.connect(("127.0.0.1", port))
    except OSError: pass
    s.close()
    time.sleep(0.001)
"""


def test_subscriber_that_never_reads_is_dropped():
    d = make_daemon("corral-lazysub", extra_args=["--no-dns"],
                    extra_env={"CORRAL_EVENT_BACKLOG": "16384"})
    srv, port = listener()
    try:
        d.start()
        sub = raw(d)
        sub.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        assert call(sub, "subscribe_events")["ok"]
        rss0 = _rss(d.proc.pid)
        p = d.corral("run", "--no-net", "--", sys.executable, "-c", FLOOD, str(port), "6")
        assert p.returncode == 0, p.stderr
        assert "dropped" in d.stderr_text(), d.stderr_text()[-2000:]
        sub.settimeout(5)
        got = b""
        while True:                      # what was queued, then the end of the connection
            chunk = sub.recv(1 << 16)
            if not chunk:
                break
            got += chunk
        assert len(got) < 2 << 20
        assert _rss(d.proc.pid) - rss0 < 32 << 20
        with d.client() as c:
            assert c.call("hello")["daemon"] == "corrald"
        sub.close()
    finally:
        srv.close()
        d.cleanup()


def _rss(pid: int) -> int:
    for ln in Path(f"/proc/{pid}/status").read_text().splitlines():
        if ln.startswith("VmRSS:"):
            return int(ln.split()[1]) * 1024
    return 0
