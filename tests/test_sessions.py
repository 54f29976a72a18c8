"""Sessions: cgroup confinement of every descendant, isolation, cleanup, authority."""
from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from corral.kernel import cgroups
from entry import ENTRIES, sandbox

PROBE = str(Path(__file__).parent / "helpers" / "netprobe.py")


def listener():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    return s, s.getsockname()[1]


def map_entries(daemon, name: str, cgid: int) -> int:
    out = subprocess.run(["bpftool", "-j", "map", "dump", "pinned",
                          str(daemon.net_pin_dir() / name)],
                         capture_output=True, text=True, check=True).stdout
    n = 0
    for e in json.loads(out or "[]"):
        key = e.get("key")
        raw = bytes(int(x, 16) for x in key) if isinstance(key, list) else None
        if raw is None:
            continue
        if name == "sessions":
            if int.from_bytes(raw[:8], "little") == cgid:
                n += 1
        elif int.from_bytes(raw[4:12], "little") == cgid:
            n += 1
    return n


def _run(daemon, argv):
    return subprocess.run(argv, env=daemon.env, capture_output=True, text=True, timeout=60)


# Each way in (tests/entry.py): corral run (launcher -> Python, and corral-py), and
# corral exec into a corral session start session (native launcher, Python path).
@pytest.mark.parametrize("entry", ENTRIES)
def test_exit_status_is_the_commands(daemon, entry):
    with sandbox(daemon, entry, "--no-net") as argv_for:
        p = _run(daemon, argv_for(["sh", "-c", "exit 7"]))
        assert p.returncode == 7, p.stderr
        p = _run(daemon, argv_for(["/nonexistent/binary"]))
        assert p.returncode == 127
        assert "nonexistent" in p.stderr


DESCENDANTS = r"""
import json, os, socket, sys, time
port = int(sys.argv[1])
def attempt():
    s = socket.socket()
    try:
        s.connect(("127.0.0.1", port)); return "ok"
    except OSError as e:
        return e.errno
    finally:
        s.close()
def cg():
    return open("/proc/self/cgroup").read().strip().split("\n")[-1]
r, w = os.pipe()
if os.fork() == 0:                      # child
    if os.fork() == 0:                  # grandchild: setsid + double fork (daemonise)
        os.setsid()
        if os.fork() == 0:
            time.sleep(0.2)             # orphaned, reparented to init
            os.write(w, json.dumps({"who": "daemonised", "res": attempt(), "cg": cg()}).encode() + b"\n")
            os._exit(0)
        os._exit(0)
    os.write(w, json.dumps({"who": "child", "res": attempt(), "cg": cg()}).encode() + b"\n")
    os._exit(0)
os.close(w)
time.sleep(1)
print(os.read(r, 65536).decode(), end="")
print(json.dumps({"who": "leader", "res": attempt(), "cg": cg()}))
"""


@pytest.mark.parametrize("entry", ENTRIES)
def test_children_grandchildren_and_daemonised_stay_confined(daemon, entry):
    s, port = listener()
    with sandbox(daemon, entry, "--no-net") as argv_for:
        _descendants_confined(daemon, s, port, argv_for)


def _descendants_confined(daemon, s, port, argv_for):
    try:
        p = _run(daemon, argv_for([sys.executable, "-c", DESCENDANTS, str(port)]))
        assert p.returncode == 0, p.stderr
        rows = [json.loads(x) for x in p.stdout.splitlines() if x.strip()]
        assert {r["who"] for r in rows} == {"leader", "child", "daemonised"}, rows
        for r in rows:
            assert r["res"] == errno.EPERM, r
            assert f"/{daemon.instance}/" in r["cg"], r
        # nohup'd background children too
        p = _run(daemon, argv_for(["sh", "-c", f"nohup {sys.executable} {PROBE} tcp 127.0.0.1 {port} "
                                                 "> /dev/stdout 2>/dev/null & wait"]))
        res = json.loads(p.stdout.strip().splitlines()[-1])
        assert res["errno"] == errno.EPERM, res
    finally:
        s.close()


@pytest.mark.parametrize("entry", ENTRIES)
def test_two_sessions_are_isolated(daemon, entry):
    a, pa = listener()
    b, pb = listener()
    try:
        script = "import sys,time,subprocess; time.sleep(0.5); " \
                 f"subprocess.run([sys.executable, {PROBE!r}, 'tcp', '127.0.0.1', sys.argv[1], 'tcp', '127.0.0.1', sys.argv[2]])"
        env = dict(daemon.env)
        with sandbox(daemon, entry, "--allow-net", f"127.0.0.1:{pa}") as one, \
                sandbox(daemon, entry, "--allow-net", f"127.0.0.1:{pb}") as two:
            pr1 = subprocess.Popen(one([sys.executable, "-c", script, str(pa), str(pb)]),
                                   env=env, stdout=subprocess.PIPE, text=True)
            pr2 = subprocess.Popen(two([sys.executable, "-c", script, str(pa), str(pb)]),
                                   env=env, stdout=subprocess.PIPE, text=True)
            o1, _ = pr1.communicate(30)
            o2, _ = pr2.communicate(30)
        r1 = [json.loads(x) for x in o1.splitlines()]
        r2 = [json.loads(x) for x in o2.splitlines()]
        assert [r1[0]["ok"], r1[1]["ok"]] == [True, False], r1
        assert [r2[0]["ok"], r2[1]["ok"]] == [False, True], r2
    finally:
        a.close()
        b.close()


def test_session_cleanup_leaves_no_cgroup_and_no_map_entry(daemon):
    p = daemon.corral("run", "-v", "--allow-net", "127.0.0.1:80", "--allow-net", "[::1]:80",
                      "--deny-net", "10.0.0.0/8", "--", "cat", "/proc/self/cgroup")
    assert p.returncode == 0, p.stderr
    sid = p.stderr.split("session ", 1)[1].split(":", 1)[0]
    path = cgroups.cgroup2_mount() / daemon.instance / sid
    daemon.wait_record(lambda r: r.get("session") == sid and r.get("op") == "end")
    assert not path.exists()
    # The cgroup id is gone with the cgroup; find it from the start record.
    start = daemon.wait_record(lambda r: r.get("session") == sid and r.get("op") == "start")
    cgid = os.stat(cgroups.cgroup2_mount() / daemon.instance).st_ino  # sanity: root exists
    assert cgid
    with daemon.client() as c:
        assert sid not in [s["id"] for s in c.call("list_sessions")]
    session_cgid = start.get("cgid") or start.get("enforcement", {}).get("cgid")
    if session_cgid is None:
        pytest.fail("session start record must carry the cgroup id")
    for m in ("sessions", "allow4", "allow6", "deny4"):
        assert map_entries(daemon, m, session_cgid) == 0, m


def test_end_session_kills_its_processes(daemon):
    p = subprocess.Popen([str(Path(sys.executable).parent / "corral"), "run", "-v", "--no-net", "--",
                          "sleep", "300"], env=daemon.env, stderr=subprocess.PIPE, text=True)
    line = p.stderr.readline()
    sid = line.split("session ", 1)[1].split(":", 1)[0]
    daemon.corral("end", sid, check=True)
    assert p.wait(10) == -9
    assert not (cgroups.cgroup2_mount() / daemon.instance / sid).exists()


WIDEN = r"""
import json, sys
from corral.client.connection import Client, CorralError
sock, other = sys.argv[1], sys.argv[2]
out = {}
with Client(sock) as c:
    me = c.call("session_info")
    out["own"] = me["id"]
    for name, op, args in [
        ("widen", "update_policy", {"session": me["id"], "policy": {"network": {"allow": ["0.0.0.0/0"]}}}),
        ("drop_net", "update_policy", {"session": me["id"], "policy": {}}),
        ("broader", "register_session", {"policy": {"network": {"allow": ["127.0.0.0/8"]}}}),
        ("other_info", "session_info", {"session": other}),
        ("other_end", "end_session", {"session": other}),
        ("narrow", "update_policy", {"session": me["id"],
                                     "policy": dict(me["policy"], network={"allow": []})}),
    ]:
        try:
            c.call(op, **args)
            out[name] = "ok"
        except CorralError as e:
            out[name] = e.code
print(json.dumps(out))
"""


def test_in_session_process_cannot_widen_or_touch_others(daemon):
    other = subprocess.Popen([str(Path(sys.executable).parent / "corral"), "run", "-v", "--no-net",
                              "--", "sleep", "60"], env=daemon.env, stderr=subprocess.PIPE, text=True)
    try:
        other_sid = other.stderr.readline().split("session ", 1)[1].split(":", 1)[0]
        p = daemon.corral("run", "--allow-net", "127.0.0.1:1-1000", "--", sys.executable, "-c", WIDEN,
                          str(daemon.socket), other_sid)
        assert p.returncode == 0, p.stderr
        out = json.loads(p.stdout)
        assert out["widen"] == "widens_policy"
        assert out["drop_net"] == "widens_policy"
        assert out["broader"] == "widens_policy"
        assert out["other_info"] == "forbidden"
        assert out["other_end"] == "forbidden"
        assert out["narrow"] == "ok"
        assert other.poll() is None, "the other session must survive"
        daemon.wait_record(lambda r: r.get("kind") == "control" and r.get("session") == out["own"]
                           and r.get("verdict") == "deny")
    finally:
        other.kill()
        other.wait()


def test_other_users_sessions_are_off_limits(daemon):
    other = subprocess.Popen([str(Path(sys.executable).parent / "corral"), "run", "-v", "--no-net",
                              "--", "sleep", "60"], env=daemon.env, stderr=subprocess.PIPE, text=True)
    try:
        sid = other.stderr.readline().split("session ", 1)[1].split(":", 1)[0]
        code = ("import sys; from corral.client.connection import Client, CorralError\n"
                "c = Client(sys.argv[1])\n"
                "try:\n c.call('end_session', session=sys.argv[2]); print('ok')\n"
                "except CorralError as e: print(e.code)\n"
                "print(len(c.call('list_sessions')))\n")
        p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                            sys.executable, "-c", code, str(daemon.socket), sid],
                           env=daemon.env, capture_output=True, text=True, timeout=30)
        assert p.stdout.split() == ["forbidden", "0"], (p.stdout, p.stderr)
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_daemon_not_running_is_one_clear_line(daemon, tmp_path):
    env = {"CORRAL_SOCKET": str(tmp_path / "nope.sock")}
    p = daemon.corral("run", "--no-net", "--", "true", env=env)
    assert p.returncode != 0
    assert "corrald is not running" in p.stderr
    assert "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_many_rules_are_enforced_and_removed_whole(daemon, tmp_path):
    """300 rules from a policy file (native run: corrald parses it; one batched map
    write): all in the kernel while the session runs, the last one works and an
    address none allows is refused, and none is left when it ends."""
    srv, port = listener()
    rules = [f'"10.9.{i // 250}.{i % 250}/32:443"' for i in range(299)] + [f'"127.0.0.1:{port}"']
    pf = tmp_path / "many.toml"
    pf.write_text(f"[network]\nallow = [{', '.join(rules)}]\n")
    script = (f"import socket, sys, time\n"
              f"socket.create_connection(('127.0.0.1', {port}), 3).close()\n"
              f"try:\n    socket.create_connection(('127.0.0.2', {port}), 3)\n"
              f"except PermissionError:\n    print('REFUSED', flush=True)\n"
              f"print(open('/proc/self/cgroup').read().strip().rsplit('/', 1)[1], flush=True)\n"
              f"time.sleep(3)\n")
    proc = subprocess.Popen([str(daemon_binary()), "run", "-q", "--policy", str(pf), "--",
                             sys.executable, "-c", script], env=daemon.env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "REFUSED", proc.stderr.read()
    sid = proc.stdout.readline().strip()
    start = daemon.wait_record(lambda r: r.get("session") == sid and r.get("op") == "start")
    assert map_entries(daemon, "allow4", start["cgid"]) == 300
    assert proc.wait(timeout=30) == 0, proc.stderr.read()
    confined = daemon.wait_record(lambda r: r.get("session") == sid and r.get("op") == "confined")
    assert confined["report"].get("path") == "native", confined["report"]
    daemon.wait_record(lambda r: r.get("session") == sid and r.get("op") == "end")
    for m in ("sessions", "allow4", "allow6", "deny4"):
        assert map_entries(daemon, m, start["cgid"]) == 0, m
    srv.close()


def daemon_binary():
    from harness import CORRAL
    return CORRAL
