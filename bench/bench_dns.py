#!/usr/bin/env python3
"""bench_dns: what the per-session DNS resolver costs.

Upstream: a real dnsmasq on loopback answering from its command line (so the
direct numbers are the floor: dnsmasq never recurses). A client program sends
A queries over one unconnected UDP socket and times sendto -> recvfrom of each
(process start-up is not in the number):

  direct             client outside corral -> dnsmasq
  corral/cached      client in a session (allow_domains *.bench.test) asking
                     127.0.0.99:53: BPF steering -> session resolver -> corral's
                     answer cache (the name was asked before) -> kernel rule
                     already present -> reply, un-steered by the recvmsg hook
  corral/uncached    every query a new name (q<i>.bench.test): cache miss ->
                     forwarded to dnsmasq -> answer filtered -> rule refresh
  corral/new-address every query a new name with a new address (from dnsmasq's
                     addn-hosts file): as uncached, plus a kernel rule install
                     (SessionTable.set_dns_rules) before the reply

Added latency = corral p50/p99 minus direct p50/p99. Goal: < 1 ms added, cached.

Throughput: 50 sessions, one load process in each (4 queries in flight,
cached names), all running for T seconds: answered lookups/s in total.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
import benchlib as B  # noqa: E402
from dnsutil import Background, Dnsmasq  # noqa: E402

LATENCY_CLIENT = textwrap.dedent("""
    import json, socket, sys, time
    from dnslib import DNSRecord
    server, port, n, warm, pattern = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    out = []
    for i in range(warm + n):
        name = pattern.replace("{i}", str(i))
        q = DNSRecord.question(name).pack()
        t0 = time.perf_counter_ns()
        s.sendto(q, (server, port))
        data, src = s.recvfrom(4096)
        t1 = time.perf_counter_ns()
        r = DNSRecord.parse(data)
        assert r.header.rcode == 0 and r.rr, (name, str(r))
        if i >= warm:
            out.append((t1 - t0) / 1000.0)
    print(json.dumps(out))
""")

LOAD_CLIENT = textwrap.dedent("""
    import json, select, socket, sys, time
    from dnslib import DNSRecord
    server, port, secs, window, names = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5].split(",")
    qs = [DNSRecord.question(n).pack() for n in names]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    print("ready", flush=True)
    start = float(sys.stdin.readline())     # all clients start together, once all are up
    while time.time() < start:
        time.sleep(0.005)
    end = start + secs
    sent = got = 0
    inflight = 0
    last_send = time.time()
    while True:
        now = time.time()
        if now >= end:
            break
        while inflight < window:
            s.sendto(qs[sent % len(qs)], (server, port)); sent += 1; inflight += 1
            last_send = now
        r, _, _ = select.select([s], [], [], 0.2)
        if not r:
            inflight = 0          # lost: refill the window
            continue
        while True:
            try:
                s.recv(4096)
            except BlockingIOError:
                break
            got += 1; inflight -= 1
    print(json.dumps({"sent": sent, "answered": got}))
""")


def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = min(len(xs) - 1, max(0, int(round(p / 100.0 * (len(xs) - 1)))))
    return xs[k]


def summarize(xs):
    return {"n": len(xs), "p50_us": pct(xs, 50), "p99_us": pct(xs, 99), "mean_us": statistics.fmean(xs)}


def latency(run, server, port, n, warm, pattern):
    p = run([sys.executable, "-c", LATENCY_CLIENT, server, str(port), str(n), str(warm), pattern],
            timeout=900)
    if p.returncode != 0:
        raise RuntimeError(f"latency client failed: {p.stderr}")
    return json.loads(p.stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=1000, help="timed queries per latency condition")
    ap.add_argument("--sessions", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--window", type=int, default=4)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-dns-"))
    hosts = tmp / "newaddr.hosts"
    total_new = args.n + 200
    with open(hosts, "w") as fh:
        for i in range(total_new):
            fh.write(f"198.18.{i // 250}.{i % 250 + 1} a{i}.newaddr.test\n")
    dm = Dnsmasq(["--address=/bench.test/198.18.200.1", f"--addn-hosts={hosts}",
                  "--cache-size=10000"], local_ttl=3600, log_queries=False)
    dm.start()
    d = B.Daemon("corral-bench-dns", extra_args=["--dns-upstream", dm.upstream])
    sessions = []
    results: dict = {"summary": []}
    try:
        d.start()
        up_host, up_port = dm.addr, dm.port
        b = Background(d, ["--allow-domain", "*.bench.test", "--allow-domain", "*.newaddr.test"])
        sessions.append(b)

        def outside(cmd, timeout=900):
            return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)

        conds = {}
        conds["direct/same name"] = latency(outside, up_host, up_port, args.n, 200, "www.bench.test")
        conds["corral/cached"] = latency(b.run, "127.0.0.99", 53, args.n, 200, "www.bench.test")
        conds["direct/new names"] = latency(outside, up_host, up_port, args.n, 200, "d{i}.bench.test")
        conds["corral/uncached"] = latency(b.run, "127.0.0.99", 53, args.n, 200, "q{i}.bench.test")
        conds["corral/new-address"] = latency(b.run, "127.0.0.99", 53, args.n, 200, "a{i}.newaddr.test")
        learned = len(b.info()["dns_rules"])
        print(f"bench_dns: {args.n} timed UDP lookups per condition (after 200 warm-up); "
              f"session ended with {learned} learned rules\n")
        print(f"{'condition':22} {'p50 us':>9} {'p99 us':>9} {'mean us':>9}")
        stats = {k: summarize(v) for k, v in conds.items()}
        for k, s in stats.items():
            print(f"{k:22} {s['p50_us']:9.0f} {s['p99_us']:9.0f} {s['mean_us']:9.0f}")
        base = stats["direct/same name"]
        base_new = stats["direct/new names"]
        added = {
            "cached": (stats["corral/cached"], base),
            "uncached": (stats["corral/uncached"], base_new),
            "new-address": (stats["corral/new-address"], base_new),
        }
        print("\nadded by corral (vs direct to the upstream):")
        for k, (c, ref) in added.items():
            a50, a99 = c["p50_us"] - ref["p50_us"], c["p99_us"] - ref["p99_us"]
            print(f"  {k:12} p50 +{a50:.0f} us   p99 +{a99:.0f} us")
            results["summary"].append(B.row("dns", f"added latency {k} p50", round(a50), "us",
                                            "< 1000 us" if k == "cached" else ""))
            results["summary"].append(B.row("dns", f"added latency {k} p99", round(a99), "us"))
        results["latency"] = stats

        # -- throughput: N sessions, one load process each -------------------
        print(f"\nstarting {args.sessions} sessions ...", flush=True)
        for _ in range(args.sessions - 1):
            sessions.append(Background(d, ["--allow-domain", "*.bench.test"]))
        names = ",".join(f"n{i}.bench.test" for i in range(20))
        for s in sessions:     # warm the cache
            s.run(["dig", "+short", "@127.0.0.99", "n0.bench.test"])
        procs = []
        for s in sessions:
            wrapper = ['sh', '-c', f'echo $$ > {s.cgroup}/cgroup.procs && exec "$@"', "sh",
                       sys.executable, "-c", LOAD_CLIENT, "127.0.0.99", "53",
                       str(args.seconds), str(args.window), names]
            procs.append(subprocess.Popen(wrapper, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
        for p in procs:
            assert p.stdout.readline().strip() == "ready", p.stderr.read()
        start = time.time() + 0.5
        for p in procs:
            p.stdin.write(f"{start}\n")
            p.stdin.close()
        tot_sent = tot_got = 0
        for p in procs:
            out, err = p.stdout.read(), p.stderr.read()
            p.wait(timeout=args.seconds + 60)
            if p.returncode != 0:
                raise RuntimeError(f"load client failed: {err}")
            r = json.loads(out)
            tot_sent += r["sent"]
            tot_got += r["answered"]
        qps = tot_got / args.seconds
        print(f"throughput: {args.sessions} sessions x window {args.window}, {args.seconds:.0f}s: "
              f"{qps:,.0f} lookups/s answered ({tot_got} of {tot_sent} sent; the daemon and "
              f"{args.sessions} load processes share {os.cpu_count()} CPU(s))")
        results["throughput"] = {"sessions": args.sessions, "seconds": args.seconds,
                                 "window": args.window, "sent": tot_sent, "answered": tot_got,
                                 "lookups_per_s": qps, "cpus": os.cpu_count()}
        results["summary"].append(B.row("dns", f"lookups/s, {args.sessions} sessions (cached)",
                                        round(qps), "1/s"))
    finally:
        for s in sessions:
            s.close()
        d.stop()
        dm.stop()
        subprocess.run(["rm", "-rf", str(tmp)])
    B.write_results(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
