"""Denials made while the daemon is down are logged, and counted, on restart.

The event ring buffer and its loss counters are pinned (netbpf), so what the
enforcing programs emit while no daemon reads them waits for the next daemon,
which drains it at load time: those records carry "while_down": True, and what
the full buffer dropped is one {"kind": "lost", "op": "while_down"} record.
Real kernel, private daemon, SIGKILL."""
from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from conftest import make_daemon

CORRAL = str(Path(sys.executable).parent / "corral")

# Every 0.2 s, try a connect the session policy denies; note when and how it went.
SLOW = r"""
import errno, json, os, socket, sys, time
port, duration = int(sys.argv[1]), float(sys.argv[2])
print(os.environ["CORRAL_SESSION"], flush=True)
out = []
end = time.time() + duration
while time.time() < end:
    s = socket.socket()
    t = time.time()
    try:
        s.connect(("127.0.0.1", port)); r = "connected"
    except OSError as e:
        r = errno.errorcode[e.errno]
    s.close()
    out.append([t, r])
    time.sleep(0.2)
print(json.dumps(out), flush=True)
"""

# On "go": connect in a tight loop for `duration` s; on "final" (the daemon is
# back): wait for the rate limiter's bucket to refill and make one more attempt,
# which carries the suppressed count.
FLOOD = r"""
import json, os, socket, sys, time
port, duration = int(sys.argv[1]), float(sys.argv[2])
print(os.environ["CORRAL_SESSION"], flush=True)
def attempt():
    s = socket.socket()
    try:
        s.connect(("127.0.0.1", port)); return 0
    except PermissionError:
        return 1
    except OSError:
        return 0
    finally:
        s.close()
assert sys.stdin.readline().strip() == "go"
n = denied = 0
end = time.monotonic() + duration
while time.monotonic() < end:
    denied += attempt(); n += 1
print(json.dumps({"attempts": n, "denied": denied}), flush=True)
assert sys.stdin.readline().strip() == "final"
time.sleep(1.5)
denied += attempt(); n += 1
print(json.dumps({"attempts": n, "denied": denied}), flush=True)
"""


def _readline(proc, timeout=30.0) -> str:
    r, _, _ = select.select([proc.stdout], [], [], timeout)
    assert r, "the session printed nothing"
    return proc.stdout.readline().strip()


def _listener():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    return srv, srv.getsockname()[1]


def _session(d, script: str, *args) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([CORRAL, "run", "--no-net", "--", sys.executable, "-c", script,
                             *map(str, args)],
                            env=d.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    return proc, _readline(proc)


def _denies(d, sid, port):
    return [r for r in d.records() if r.get("session") == sid and r.get("kind") == "net"
            and r.get("verdict") == "deny" and r.get("target") == f"127.0.0.1:{port}"]


def test_denials_while_daemon_is_down_reach_the_log_on_restart():
    d = make_daemon("corral-down", extra_args=["--no-dns"])
    srv, port = _listener()
    proc = None
    try:
        d.start()
        proc, sid = _session(d, SLOW, port, 8)
        d.wait_record(lambda r: r.get("session") == sid and r.get("kind") == "net", timeout=10)
        t_kill = time.time()
        d.stop(signal.SIGKILL)
        time.sleep(2.5)
        t_restart = time.time()
        d.start()
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        attempts = json.loads(out.strip().splitlines()[-1])
        assert all(r == "EPERM" for _, r in attempts), attempts   # confined throughout
        # Made while no daemon existed: between the kill and the restart.
        dead = [t for t, _ in attempts if t_kill + 0.05 < t < t_restart]
        assert len(dead) >= 8, (len(dead), attempts)

        deadline = time.monotonic() + 10
        while True:
            denies = _denies(d, sid, port)
            down = [r for r in denies if r.get("while_down")]
            if len(denies) >= len(attempts) - 1 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert len(down) >= len(dead), (len(down), len(dead), down[-3:])
        for r in down:
            assert r["session"] == sid and r["cgid"] and r["op"] == "connect"
            assert r["rule"] == "default-deny"
            assert t_kill - 1 < r["time"] < time.time()
        # Every attempt is in the log (bar at most one consumed by the killed
        # daemon in the instant before SIGKILL and not yet written).
        assert len(denies) >= len(attempts) - 1, (len(denies), len(attempts))
        assert len(denies) <= len(attempts)
        # Nothing was lost, so there is no loss record to report.
        assert not [r for r in d.records() if r.get("kind") == "lost" and r.get("op") == "while_down"]
    finally:
        if proc and proc.poll() is None:
            proc.kill()
        srv.close()
        d.cleanup()


def test_ring_buffer_overflow_while_down_is_counted_once():
    d = make_daemon("corral-down", extra_args=["--no-dns"])
    srv, port = _listener()
    proc = None
    try:
        d.start()
        proc, sid = _session(d, FLOOD, port, 4)
        d.stop(signal.SIGKILL)
        # 4 s at full speed: the session's token bucket (net.c: burst 400,
        # 200/s) passes ~1200 events, the 64-page buffer holds ~760 of them.
        proc.stdin.write("go\n")
        proc.stdin.flush()
        first = json.loads(_readline(proc))
        assert first["denied"] == first["attempts"] > 2000, first
        d.start()
        proc.stdin.write("final\n")
        proc.stdin.flush()
        final = json.loads(_readline(proc))
        assert proc.wait(10) == 0
        attempts = final["attempts"]
        assert final["denied"] == attempts

        def tally():
            recs = d.records()
            denies = _denies(d, sid, port)
            suppressed = sum(r.get("count") or 0 for r in recs if r.get("kind") == "rate"
                             and r.get("session") == sid)
            lost = [r for r in recs if r.get("kind") == "lost"
                    and r.get("op") in ("while_down", "ringbuf_overrun")]
            return denies, suppressed, lost

        deadline = time.monotonic() + 15
        while True:
            denies, suppressed, lost = tally()
            n_lost = sum(r["count"] for r in lost)
            if len(denies) + suppressed + n_lost >= attempts or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        down_lost = [r for r in lost if r["op"] == "while_down"]
        assert len(down_lost) == 1, lost
        assert down_lost[0]["count"] > 0 and down_lost[0]["overrun"] == down_lost[0]["count"]
        assert down_lost[0]["rule"] == "ring buffer full while no daemon read it"
        # The buffer was full: what it held was drained and logged as while_down.
        assert len([r for r in denies if r.get("while_down")]) > 500
        assert suppressed > 0
        # Nothing unaccounted: logged, counted as suppressed, or counted as lost.
        assert len(denies) + suppressed + n_lost == attempts, (len(denies), suppressed, n_lost, attempts)

        # The old losses were reported once: a live daemon does not report them
        # again, and neither does the next one.
        time.sleep(1)
        assert [r for r in d.records() if r.get("kind") == "lost"] == lost
        d.stop(signal.SIGKILL)
        d.start()
        time.sleep(1)
        assert [r for r in d.records() if r.get("kind") == "lost"] == lost
    finally:
        if proc and proc.poll() is None:
            proc.kill()
        srv.close()
        d.cleanup()


STEP = r"""
import errno, os, socket, sys
port = int(sys.argv[1])
print(os.environ["CORRAL_SESSION"], flush=True)
for line in sys.stdin:
    if line.strip() == "quit":
        break
    s = socket.socket()
    try:
        s.connect(("127.0.0.1", port)); print("connected", flush=True)
    except OSError as e:
        print(errno.errorcode[e.errno], flush=True)
    s.close()
"""


def test_event_pins_of_another_layout_are_drained_and_replaced():
    """A predecessor with another ring-buffer size (an older corral): the new
    daemon starts anyway, logs it, drains the old buffer, pins a new one, and the
    sessions stay confined on the untouched enforcement maps."""
    d = make_daemon("corral-down", extra_args=["--no-dns"])
    srv, port = _listener()
    proc = None

    def step():
        proc.stdin.write("go\n")
        proc.stdin.flush()
        return _readline(proc)
    try:
        d.env["CORRAL_RINGBUF_PAGES"] = "16"
        d.start()
        pin = d.net_pin_dir() / "events"        # the first build's
        old = json.loads(subprocess.run(["bpftool", "-j", "map", "show", "pinned", str(pin)],
                                        capture_output=True, text=True, check=True).stdout)
        assert old["max_entries"] == 16 * os.sysconf("SC_PAGE_SIZE")
        proc, sid = _session(d, STEP, port)
        assert step() == "EPERM"
        d.wait_record(lambda r: r.get("session") == sid and r.get("kind") == "net")
        d.stop(signal.SIGKILL)
        assert [step() for _ in range(5)] == ["EPERM"] * 5
        del d.env["CORRAL_RINGBUF_PAGES"]
        d.start()
        assert step() == "EPERM", "still confined by the reused enforcement maps"
        new_pin = d.net_pin_dir() / "events"    # the only build's pins left
        new = json.loads(subprocess.run(["bpftool", "-j", "map", "show", "pinned", str(new_pin)],
                                        capture_output=True, text=True, check=True).stdout)
        assert new["max_entries"] == 64 * os.sysconf("SC_PAGE_SIZE") and new["id"] != old["id"]
        assert f"{pin} has layout ('ringbuf', 0, 0, {old['max_entries']})" in d.stderr_text()
        d.wait_record(lambda r: r.get("op") == "pins_replaced" and r.get("target") == "events")
        d.wait_record(lambda r: len(_denies(d, sid, port)) >= 7, timeout=10)
        down = [r for r in _denies(d, sid, port) if r.get("while_down")]
        assert len(down) == 5, down
        with d.client() as c:
            assert sid in {s["id"] for s in c.call("list_sessions")}
    finally:
        if proc and proc.poll() is None:
            proc.kill()
        srv.close()
        d.cleanup()
