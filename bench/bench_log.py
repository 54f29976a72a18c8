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

    .venv/bin/python bench/bench_log.py [--records 50000] [--control 300]
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
               reader_sock) -> dict:
    log, exp = _setup(base, name, checkpoints, sinks, queue, reader_sock)
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
    made = sum(1 for _ in el.read_records(base / name / "log"))
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=50000)
    ap.add_argument("--control", type=int, default=300)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.records, a.control = 5000, 50
    base = Path(tempfile.mkdtemp(prefix="corral-bench-log-", dir="/var/tmp"))
    sock = base / "journal.socket"
    reader = subprocess.Popen([sys.executable, "-c", READER, str(sock)], stdout=subprocess.PIPE,
                              text=True)
    try:
        reader.stdout.readline()
        n = a.records
        runs = [
            throughput(base, n, "bare", False, [], n, sock),
            throughput(base, n, "checkpoints", True, [], n, sock),
            throughput(base, n, "checkpoints+jsonl", True, ["jsonl"], n + 16, sock),
            throughput(base, n, "checkpoints+jsonl+journald", True, ["jsonl", "journald"], n + 16,
                       sock),
            throughput(base, n, "burst, default queue (10000)", True, ["jsonl", "journald"], 10000,
                       sock),
        ]
        lat = control_latency(base, a.control, sock)
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
    added = lat["session start (fsynced)"]["p50_us"] - lat["kernel event (no fsync)"]["p50_us"]
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
    ]
    benchlib.write_results({"runs": runs, "latency": lat, "summary": summary})
    out = benchlib.REPO / "bench/results/log.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    import json
    out.write_text(json.dumps({"runs": runs, "latency": lat}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
