"""The audit log with export on (issue 16): records per second EventLog sustains,
and what the fsynced control record adds to a session start.

1. Throughput: N kernel-event records (a net denial, ~300 bytes) appended as fast as
   one thread can, in a log directory on the same disk as /var/log, under:
   bare (no checkpoints, no export), checkpoints (ed25519, every 1000 records),
   + JSON-lines export, + JSON-lines and a journald-protocol export to a stand-in
   datagram socket read by another process. The exports' queues are made N deep so
   nothing drops: "sustained" is N / the time until the last export drained (the
   rate the whole path keeps up with). Then the same with the default queue (10000):
   what a burst of N beyond the readers drops (counted, as corrald would log it).
2. Session start: the latency of appending a control record (kind "session", which
   EventLog fsyncs before it returns: "log before apply") vs a kernel event (not
   fsynced), p50/p99 over --control appends, with checkpoints and export on; and the
   session-end record, which is also checkpointed (signed, written to
   checkpoints.jsonl and the exports).
3. End to end: `corral run --no-net -- true` (3 fsynced control records: session
   start, confined, end; and the session-end checkpoint), interleaved rounds against
   three private corralds: log on disk with no export; log on disk with JSON-lines +
   journald export; log on tmpfs (/dev/shm: fsync costs nothing), no export. Disk minus
   tmpfs is what the fsynced control records add to a session; on minus off the exports.

    .venv/bin/python bench/bench_log.py [--records 50000] [--control 300] [--rounds 20]
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib
from benchlib import row

sys.path.insert(0, str(benchlib.REPO / "daemon"))
from corral.server import eventlog as el  # noqa: E402
from corral.server.checkpoints import Checkpointer  # noqa: E402
from corral.server.export import Export, Exports  # noqa: E402
from corral.server.export.journald import JournaldSink  # noqa: E402
from corral.server.export.jsonl import JsonlSink  # noqa: E402

REC = {"kind": "net", "op": "connect", "verdict": "deny", "session": "5f2a9c01",
       "session_name": "build-7", "labels": {"team": "infra"}, "pid": 4242, "comm": "python3",
       "uid": 1000, "target": "192.0.2.1:443", "rule": "default-deny (no allow rule)",
       "cgid": 123456, "backend": "bpf-cgroup"}

READER = ("import socket,sys\n"
          "s=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM); s.bind(sys.argv[1])\n"
          "s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4<<20)\n"
          "print('ready', flush=True)\n"
          "while True: s.recv(1<<20)\n")


def _setup(base: Path, name: str, checkpoints: bool, sinks: list[str], queue: int, reader_sock):
    d = base / name
    d.mkdir()
    cp = Checkpointer(d / "etc/checkpoint.key", d / "log/checkpoints.jsonl", 1000,
                      str(d / "log")) if checkpoints else None
    exports = []
    for s in sinks:
        if s == "jsonl":
            exports.append(Export(JsonlSink(d / "export.jsonl"), queue))
        elif s == "journald":
            exports.append(Export(JournaldSink(reader_sock), queue))
    exp = Exports(exports)
    log = el.EventLog(d / "log", checkpointer=cp, on_write=exp.on_write if exports else None)
    return log, exp


def throughput(base: Path, n: int, name: str, checkpoints: bool, sinks: list[str], queue: int,
               reader_sock, tag: str = "") -> dict:
    log, exp = _setup(base, name + tag, checkpoints, sinks, queue, reader_sock)
    t0 = time.perf_counter()
    for i in range(n):
        log.append(dict(REC, target=f"192.0.2.{i % 250}:{443 + i % 1000}"))
    t_append = time.perf_counter() - t0
    for e in exp.exports:
        while e.q.qsize() or not e._idle.is_set():
            time.sleep(0.005)
    t_all = time.perf_counter() - t0
    log.close()
    st = {e.name: e.status() for e in exp.exports}
    exp.close()
    made = sum(1 for _ in el.read_records(base / (name + tag) / "log"))
    shutil.rmtree(base / (name + tag), ignore_errors=True)
    return {"name": name, "records": n, "append_s": t_append, "append_rate": n / t_append,
            "sustained_rate": n / t_all, "drained_s": t_all, "written": made,
            "exports": {k: {x: v[x] for x in ("sent", "dropped", "failed")} for k, v in st.items()}}


def control_latency(base: Path, n: int, reader_sock) -> dict:
    log, exp = _setup(base, "latency", True, ["jsonl", "journald"], 10000, reader_sock)
    out = {}
    for label, rec in (("kernel event (no fsync)", REC),
                       ("session start (fsynced)", {"kind": "session", "op": "start",
                                                    "verdict": "info", "session": "5f2a9c01",
                                                    "policy": {"network": {"allow": []}}}),
                       ("session end (fsynced + checkpoint)", {"kind": "session", "op": "end",
                                                               "verdict": "info",
                                                               "session": "5f2a9c01"})):
        xs = []
        for _ in range(n):
            t0 = time.perf_counter()
            log.append(dict(rec))
            xs.append((time.perf_counter() - t0) * 1e6)
        out[label] = {"p50_us": statistics.median(xs), "p99_us": benchlib.quantile(xs, 0.99)}
    log.close()
    exp.close()
    return out


def e2e(rounds: int, reader_sock: Path) -> dict:
    """corral run --no-net -- true against three private daemons, interleaved."""
    shm = Path(tempfile.mkdtemp(prefix="corral-bench-log-", dir="/dev/shm"))
    conds = {"disk, no export": ({}, 'journald = "off"\n'),
             "disk, JSON-lines + journald export": ({"CORRAL_JOURNAL_SOCKET": str(reader_sock)},
                                                    'journald = "on"\njsonl = "{tmp}/export.jsonl"\n'),
             "tmpfs log (no fsync cost), no export": ({"CORRAL_LOG_DIR": str(shm / "log")},
                                                      'journald = "off"\n')}
    daemons = {}
    try:
        for name, (env, export) in conds.items():
            d = benchlib.Daemon(f"corral-bench-log{len(daemons)}", extra_args=("--no-dns",),
                                extra_env=env)
            (d.tmp / "etc").mkdir(exist_ok=True)
            (d.tmp / "etc/corral.toml").write_text("[export]\n" + export.format(tmp=d.tmp))
            daemons[name] = d.start()
        times = {n: [] for n in daemons}
        for r in range(rounds + 2):
            for n, d in daemons.items():
                t0 = time.perf_counter()
                p = subprocess.run([str(benchlib.VENV_BIN / "corral"), "run", "-q", "--no-net", "--",
                                    "true"], env=d.env, cwd=d.tmp, capture_output=True)
                dt = (time.perf_counter() - t0) * 1000
                if p.returncode != 0:
                    raise RuntimeError(f"{n}: corral run failed: {p.stderr[-500:]}")
                if r >= 2:                      # two warm-up rounds
                    times[n].append(dt)
        return {n: {"p50_ms": statistics.median(x), "p90_ms": benchlib.quantile(x, 0.9)}
                for n, x in times.items()}
    finally:
        for d in daemons.values():
            d.stop()
        shutil.rmtree(shm, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=50000)
    ap.add_argument("--control", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--reps", type=int, default=3, help="throughput repetitions (best kept)")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.records, a.control, a.rounds, a.reps = 5000, 50, 5, 1
    base = Path(tempfile.mkdtemp(prefix="corral-bench-log-", dir="/var/tmp"))
    sock = base / "journal.socket"
    reader = subprocess.Popen([sys.executable, "-c", READER, str(sock)], stdout=subprocess.PIPE,
                              text=True)
    try:
        reader.stdout.readline()
        n = a.records
        conds = [("bare", False, [], n), ("checkpoints", True, [], n),
                 ("checkpoints+jsonl", True, ["jsonl"], n + 16),
                 ("checkpoints+jsonl+journald", True, ["jsonl", "journald"], n + 16),
                 ("burst, default queue (10000)", True, ["jsonl", "journald"], 10000)]
        best: dict = {}
        for rep in range(a.reps):         # interleaved; the best of each (a shared host)
            for name, cps, sinks, q in conds:
                r = throughput(base, n, f"{name}", cps, sinks, q, sock, tag=f"-{rep}")
                if name not in best or r["sustained_rate"] > best[name]["sustained_rate"]:
                    best[name] = r
        runs = [best[c[0]] for c in conds]
        lat = control_latency(base, a.control, sock)
        run = e2e(a.rounds, sock)
    finally:
        reader.kill()
        reader.wait()
        shutil.rmtree(base, ignore_errors=True)
    print(f"{'condition':32} {'append rec/s':>12} {'sustained rec/s':>15}  exports (sent/dropped)")
    for r in runs:
        ex = ", ".join(f"{k} {v['sent']}/{v['dropped']}" for k, v in r["exports"].items()) or "-"
        print(f"{r['name']:32} {r['append_rate']:12.0f} {r['sustained_rate']:15.0f}  {ex}")
    for k, v in lat.items():
        print(f"{k:36} p50 {v['p50_us']:8.0f} us  p99 {v['p99_us']:8.0f} us")
    for k, v in run.items():
        print(f"corral run -- true, {k:38} p50 {v['p50_ms']:6.1f} ms  p90 {v['p90_ms']:6.1f} ms")
    added = lat["session start (fsynced)"]["p50_us"] - lat["kernel event (no fsync)"]["p50_us"]
    disk, on, shm = (run[k]["p50_ms"] for k in run)
    summary = [
        row("log", "records/s, log alone", round(runs[0]["append_rate"])),
        row("log", "records/s sustained, checkpoints + JSON-lines + journald export",
            round(runs[3]["sustained_rate"])),
        row("log", "records/s sustained, checkpoints + JSON-lines export",
            round(runs[2]["sustained_rate"])),
        row("log", "session start: fsynced control record, added p50", round(added), "us",
            note=f"p99 {lat['session start (fsynced)']['p99_us']:.0f} us"),
        row("log", "session end record incl. checkpoint, p50",
            round(lat["session end (fsynced + checkpoint)"]["p50_us"]), "us"),
        row("log", "corral run -- true: fsynced records on disk vs tmpfs log, p50", round(disk - shm, 1),
            "ms", note=f"{disk:.1f} vs {shm:.1f} ms"),
        row("log", "corral run -- true: export on vs off, p50", round(on - disk, 1), "ms",
            note=f"{on:.1f} vs {disk:.1f} ms"),
    ]
    benchlib.write_results({"runs": runs, "latency": lat, "corral_run": run, "summary": summary})
    out = benchlib.REPO / "bench/results/log.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    import json
    out.write_text(json.dumps({"runs": runs, "latency": lat, "corral_run": run}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
