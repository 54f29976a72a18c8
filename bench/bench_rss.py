#!/usr/bin/env python3
"""bench_rss: corrald's memory.

Always a fresh private daemon (DNS resolver on, upstream a closed loopback port). Reports VmRSS (and its anon/file
split) of the corrald process:
  * after start, BPF programs compiled, loaded and attached;
  * with 200 live sessions (each registered over corral.client.Client by a
    forked child that then waits);
  * after those 200 children exit and the daemon has ended their sessions;
  * the same again for a second batch of 200 (growth between the two = leak);
plus the kernel memory of the instance's pinned BPF maps (bpftool memlock).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as B  # noqa: E402


def settle_rss(pid: int, wait: float = 1.5) -> dict:
    time.sleep(wait)
    return B.rss_kib(pid)


def map_memlock(instance: str) -> int:
    total = 0
    pin = Path(f"/sys/fs/bpf/{instance}")
    for f in sorted(pin.rglob("*")):      # net-<version>/ and the shared pins
        p = subprocess.run(["bpftool", "-j", "map", "show", "pinned", str(f)], capture_output=True, text=True)
        try:
            total += int(json.loads(p.stdout).get("bytes_memlock", 0))
        except (ValueError, AttributeError):
            pass
    return total


def batch(d: B.Daemon, n: int, policy: dict) -> tuple[list, list]:
    """Fork n children that each register a session and wait; returns (pids, go pipes)."""
    from corral.client.connection import Client
    pids, gos, errors, lat = [], [], [], []
    for _ in range(n):
        t0 = time.perf_counter()
        st_r, st_w = os.pipe()
        go_r, go_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(st_r)
            os.close(go_w)
            try:
                with Client(d.socket) as c:
                    c.call("register_session", policy=policy)
                os.write(st_w, b"ok")
            except BaseException as e:  # noqa: BLE001
                os.write(st_w, f"error {type(e).__name__}: {e}".encode()[:500])
                os._exit(1)
            os.read(go_r, 1)            # until the parent closes the pipe
            os._exit(0)
        os.close(st_w)
        os.close(go_r)
        msg = os.read(st_r, 600)
        lat.append(time.perf_counter() - t0)
        os.close(st_r)
        if msg != b"ok":
            errors.append(msg.decode(errors="replace"))
        pids.append(pid)
        gos.append(go_w)
    return pids, gos, errors, lat


def release(pids, gos) -> None:
    for g in gos:
        os.close(g)
    for p in pids:
        os.waitpid(p, 0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=200, help="sessions per batch (default 200)")
    ap.add_argument("--batches", type=int, default=2)
    args = ap.parse_args()
    policy = {"network": {"allow": ["127.0.0.1/32:8080", "10.0.0.0/8:443"]}}
    results: dict = {"n": args.n, "points": {}, "errors": []}
    summary = []
    d = B.daemon("corral-bench-rss", fresh=True)
    with d:
        pid = d.pid
        pts = results["points"]
        pts["after start"] = settle_rss(pid)
        results["start_seconds"] = d.start_seconds
        results["map_memlock_bytes"] = map_memlock(d.instance)
        for b in range(1, args.batches + 1):
            t0 = time.monotonic()
            pids, gos, errs, lat = batch(d, args.n, policy)
            k = max(1, min(20, len(lat) // 4))
            first, last = B.median(lat[:k]) * 1000, B.median(lat[-k:]) * 1000
            results[f"batch {b} register ms (fork+connect+register), first {k} / last {k}"] = [first, last]
            print(f"[bench_rss] batch {b}: fork+register median {first:.1f} ms for the first {k} sessions, "
                  f"{last:.1f} ms for the last {k} (growth = per-session cost rising with live sessions)",
                  file=sys.stderr)
            summary.append(B.row("rss", f"register_session (+fork) ms, batch {b}: first {k} -> last {k}",
                                 round(last, 1), "ms", "", f"first {k}: {first:.1f} ms"))
            reg_s = time.monotonic() - t0
            results["errors"] += errs
            with d.client() as c:
                live = len(c.call("list_sessions"))
            pts[f"batch {b}: {live} sessions live"] = settle_rss(pid, 0.5)
            release(pids, gos)
            left = d.wait_no_sessions(timeout=60)
            pts[f"batch {b}: ended ({left} left)"] = settle_rss(pid)
            results[f"batch {b} register seconds"] = reg_s
            print(f"[bench_rss] batch {b}: {args.n} sessions registered in {reg_s:.1f}s "
                  f"({reg_s / args.n * 1000:.1f} ms each, sequential)", file=sys.stderr)
    print(f"\ncorrald RSS (KiB), {args.n} sessions per batch; started in {d.start_seconds:.1f}s")
    print(f"{'point':34} {'VmRSS':>8} {'RssAnon':>8} {'RssFile':>8} {'VmHWM':>8}")
    for name, r in pts.items():
        print(f"{name:34} {r['VmRSS']:8} {r['RssAnon']:8} {r['RssFile']:8} {r['VmHWM']:8}")
    print(f"pinned BPF maps (kernel memory, not in RSS): {results['map_memlock_bytes'] / 1024:.0f} KiB memlock")
    if results["errors"]:
        print(f"{len(results['errors'])} registration(s) failed, first: {results['errors'][0]}")
    start = pts["after start"]["VmRSS"]
    summary.append(B.row("rss", "corrald RSS after start (BPF loaded)", round(start / 1024, 1), "MiB", "",
                         f"anon {pts['after start']['RssAnon'] / 1024:.0f} MiB, "
                         f"file {pts['after start']['RssFile'] / 1024:.0f} MiB"))
    for name, r in pts.items():
        if name == "after start":
            continue
        summary.append(B.row("rss", f"corrald RSS {name}", round(r["VmRSS"] / 1024, 1), "MiB", "",
                             f"{(r['VmRSS'] - start) / 1024:+.1f} MiB vs start"))
    summary.append(B.row("rss", "pinned BPF map memlock", round(results["map_memlock_bytes"] / 1048576, 1),
                         "MiB", "", "kernel memory"))
    if results["errors"]:
        summary.append(B.row("rss", "failed registrations", len(results["errors"]), "", "0",
                             results["errors"][0][:160]))
    results["summary"] = summary
    B.write_results(results)
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
