"""`corral allow` / `corral deny` change a session that is already running, and the
daemon logs who asked for what."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest


LOOP = r"""
import json, os, socket, sys, time
port, out = int(sys.argv[1]), sys.argv[2]
with open(out + ".sid", "w") as f:
    f.write(os.environ["CORRAL_SESSION"])
while True:
    s = socket.socket()
    s.settimeout(1)
    try:
        s.connect(("127.0.0.1", port))
        r = "ok"
    except OSError as e:
        r = e.errno
    s.close()
    with open(out, "a") as f:
        f.write(json.dumps(r) + "\n")
    time.sleep(0.05)
"""


@pytest.fixture
def looping_session(daemon):
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(512)
    port = srv.getsockname()[1]
    work = Path(tempfile.mkdtemp(prefix="corral-live-"))
    out = work / "out" / "results"
    out.parent.mkdir()
    script = work / "loop.py"
    script.write_text(LOOP)
    proc = subprocess.Popen([str(Path(sys.executable).parent / "corral"), "run", "--no-net", "--",
                             sys.executable, str(script), str(port), str(out)],
                            env=daemon.env, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    sid_file = Path(str(out) + ".sid")
    deadline = time.monotonic() + 20
    while not sid_file.exists() or not sid_file.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"session did not start: {proc.communicate(timeout=5)}")
        time.sleep(0.05)
    yield sid_file.read_text(), port, out
    proc.kill()
    proc.wait()
    srv.close()


def wait_result(out: Path, want, timeout=10.0):
    """Wait until the newest results (written after this call) show `want`."""
    start = len(out.read_text().splitlines()) if out.exists() else 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = out.read_text().splitlines()[start:]
        if len(lines) >= 2 and json.loads(lines[-1]) == want and json.loads(lines[-2]) == want:
            return
        time.sleep(0.05)
    raise AssertionError(f"wanted {want!r}; last results: {out.read_text().splitlines()[-5:]}")


def test_allow_then_deny_net_in_running_session(daemon, looping_session):
    sid, port, out = looping_session
    wait_result(out, 1)                                   # EPERM: --no-net
    p = daemon.corral("allow", sid, "--net", f"127.0.0.1:{port}")
    assert p.returncode == 0, p.stderr
    assert "applied" in p.stdout
    wait_result(out, "ok")                                # same process, now allowed
    rec = daemon.wait_record(lambda r: r.get("kind") == "policy" and r.get("session") == sid
                             and "allow" in (r.get("rule") or ""))
    assert rec["rule"] == f"corral allow --net 127.0.0.1:{port} by uid {os.getuid()}"
    assert rec["uid"] == os.getuid() and rec["pid"]
    assert f"127.0.0.1/32:{port}" in rec["policy"]["network"]["allow"]
    assert f"127.0.0.1/32:{port}" not in rec["old"]["network"]["allow"]

    p = daemon.corral("deny", sid, "--net", f"127.0.0.1:{port}")
    assert p.returncode == 0, p.stderr
    wait_result(out, 1)                                   # revoked
    rec = daemon.wait_record(lambda r: r.get("kind") == "policy" and r.get("session") == sid
                             and (r.get("rule") or "").startswith("corral deny"))
    assert f"127.0.0.1/32:{port}" in rec["policy"]["network"]["deny"]
    assert f"127.0.0.1/32:{port}" not in rec["policy"]["network"]["allow"]
    assert daemon.corral("log", "verify").returncode == 0


def test_allow_write_on_landlock_session_is_refused_clearly(daemon, looping_session):
    sid, port, out = looping_session
    with daemon.client() as c:
        info = c.call("session_info", session=sid)
    if info["enforcement"].get("filesystem") == "bpf-lsm":
        pytest.skip("session files enforced by the BPF LSM backend: live file rules apply")
    p = daemon.corral("allow", sid, "--write", "/srv/data")
    assert p.returncode == 1
    assert "Landlock" in p.stderr and "new sessions only" in p.stderr, p.stderr
    with daemon.client() as c:
        assert c.call("session_info", session=sid)["policy"] == info["policy"]


def test_allow_unknown_session_and_bad_rule(daemon):
    p = daemon.corral("allow", "nosuch00", "--net", "10.0.0.1")
    assert p.returncode == 1 and "no session" in p.stderr
    p = daemon.corral("allow", "nosuch00", "--net", "10.0.0.300")
    assert p.returncode == 2 and "not an IP" in p.stderr
    p = daemon.corral("deny", "nosuch00")
    assert p.returncode == 2


def test_session_cannot_widen_itself(daemon, tmp_path):
    """`corral allow` from inside the session it targets is refused and logged."""
    corral_bin = str(Path(sys.executable).parent / "corral")
    p = daemon.corral("run", "--no-net", "--", "sh", "-c",
                      f'echo "$CORRAL_SESSION"; {corral_bin} allow "$CORRAL_SESSION" --net 127.0.0.1:1; '
                      'echo "rc=$?"', cwd=tmp_path)
    sid, *rest = p.stdout.split()
    assert rest == ["rc=1"], (p.stdout, p.stderr)
    assert "refused" in p.stderr and "widen" in p.stderr, p.stderr
    rec = daemon.wait_record(lambda r: r.get("kind") == "control" and r.get("session") == sid)
    assert rec["verdict"] == "deny" and "127.0.0.1/32:1" in rec["reason"]
    # narrowing from inside is allowed (and logged as a policy update)
    p = daemon.corral("run", "--allow-net", "127.0.0.1:1", "--", "sh", "-c",
                      f'{corral_bin} deny "$CORRAL_SESSION" --net 127.0.0.1:1 && echo "$CORRAL_SESSION"',
                      cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    sid = p.stdout.split()[-1]
    rec = daemon.wait_record(lambda r: r.get("kind") == "policy" and r.get("session") == sid)
    assert rec["rule"].startswith("corral deny --net 127.0.0.1:1 by uid")
