"""A looping agent cannot flood the audit log: the per-session token bucket in
bpf/net.c (200/s, burst 400) passes a bounded number of denial events and the
daemon logs how many were suppressed ("rate" records), so nothing is unaccounted."""
from __future__ import annotations

import json
import sys
import time

ATTEMPTS = 5000

LOOP = r"""
import errno, json, os, socket, sys, time
n, port = int(sys.argv[1]), int(sys.argv[2])
denied = 0
t0 = time.monotonic()
for _ in range(n):
    s = socket.socket()
    try:
        s.connect(("127.0.0.1", port))
    except PermissionError:
        denied += 1
    except OSError:
        pass
    s.close()
loop_s = time.monotonic() - t0
# The suppressed count travels with the next event that gets through:
# wait for the bucket to refill, then make one more (denied) attempt.
time.sleep(1.5)
s = socket.socket()
try:
    s.connect(("127.0.0.1", port))
except PermissionError:
    denied += 1
s.close()
print(json.dumps({"denied": denied, "loop_s": loop_s, "session": os.environ["CORRAL_SESSION"]}))
"""


def test_denial_flood_is_rate_limited_and_accounted(daemon, tmp_path):
    script = tmp_path / "flood.py"
    script.write_text(LOOP)
    port = 9                                  # nothing listens; the policy denies first anyway
    p = daemon.corral("run", "--no-net", "--", sys.executable, str(script), str(ATTEMPTS), str(port),
                      timeout=120)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    sid = out["session"]
    attempts = ATTEMPTS + 1
    assert out["denied"] == attempts          # the kernel denied every one

    def tally():
        recs = [r for r in daemon.records() if r.get("session") == sid]
        denies = [r for r in recs if r.get("kind") == "net" and r.get("verdict") == "deny"
                  and r.get("target") == f"127.0.0.1:{port}"]
        suppressed = sum(r.get("count") or 0 for r in recs if r.get("kind") == "rate"
                         and r.get("rule") == "per-session rate limit")   # bpf/net.c's bucket
        return recs, denies, suppressed

    deadline = time.monotonic() + 15
    while True:
        recs, denies, suppressed = tally()
        lost = sum(r.get("count") or 0 for r in daemon.records() if r.get("kind") == "lost")
        if len(denies) + suppressed + lost >= attempts or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    # Bounded: the burst plus the refill over the loop's duration (+ the final attempt).
    bound = 400 + int(200 * (out["loop_s"] + 0.5)) + 1
    assert len(denies) <= bound, (len(denies), bound, out)
    assert len(denies) < ATTEMPTS // 2
    assert suppressed > 0
    rate = [r for r in recs if r.get("kind") == "rate" and r.get("rule") == "per-session rate limit"]
    assert rate and all(r["op"] == "suppressed" for r in rate)
    # Nothing unaccounted: every attempt is a logged denial, counted as suppressed, or
    # (if the ring buffer overflowed) counted as lost.
    assert len(denies) + suppressed + lost == attempts, (len(denies), suppressed, lost)
    # and the human view shows the count
    p = daemon.corral("log", "--session", sid, "--kind", "rate")
    assert "suppressed" in p.stdout
