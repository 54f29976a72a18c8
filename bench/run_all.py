#!/usr/bin/env python3
"""`make bench`: run every benchmark in bench/ once, print one summary table,
write bench/results/latest.json.

    .venv/bin/python bench/run_all.py [--only net,run] [--skip peers] [--quick]

One private corrald (own CORRAL_INSTANCE, cgroup, pins, socket, log; its DNS
resolver pointed at a closed loopback port) is started
for the run and handed to the benches through BENCH_DAEMON_ENV; bench_rss
starts its own fresh one. Each bench runs as a subprocess; one that fails is
reported as FAILED with its exit status and last lines of output, the others
still run, and run_all exits 1 at the end. A bench that exits 77 (SKIPPED)
needs what this host lacks (bench_file_lsm: BPF LSM): it is listed as skipped
with the reason it printed, and does not fail the run. Benches that other engineers own
(bench_seccomp, bench_landlock, bench_file_lsm, bench_dns, attacks) are run
when their file exists.
"""
from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as B  # noqa: E402

# (short name, script, args, args with --quick)
BENCHES = [
    ("net", "bench_net.py", [], ["-n", "5000", "-r", "2"]),
    ("unix", "bench_unix.py", [], ["-n", "5000", "-r", "2", "--refused-n", "2000", "--refused-rounds", "1",
                                   "--cpu-seconds", "1"]),
    ("run", "bench_run.py", [], ["--runs", "10", "-k", "5"]),
    ("exec", "bench_exec.py", [], ["--runs", "10", "--loop", "50", "--cpu-n", "10"]),
    ("rss", "bench_rss.py", [], ["-n", "50", "--batches", "1"]),
    ("seccomp", "bench_seccomp.py", [], []),
    ("landlock", "bench_landlock.py", [], []),
    ("filepolicy", "bench_filepolicy.py", [], ["-n", "2000", "--reps", "3", "-r", "1"]),
    ("file_lsm", "bench_file_lsm.py", [], []),
    ("dns", "bench_dns.py", [], []),
    ("peers", "bench_peers.py", [], ["--runs", "5", "--true-runs", "5", "-n", "5000", "--rounds", "1"]),
    ("attacks", "attacks.py", [], []),
    ("control_plane", "bench_control_plane.py", [], ["--quick"]),
    ("log", "bench_log.py", [], ["--quick"]),
    ("git", "bench_git.py", [], ["--files", "1000", "--rounds", "3"]),
]
TIMEOUT = 30 * 60
SKIPPED = 77        # a bench's "this host cannot run me" (it printed "SKIPPED: why")


def run_one(name: str, script: Path, argv: list[str], env: dict, runner: list[str] | None = None) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tf:
        jpath = Path(tf.name)
    jpath.write_text("")
    env = dict(env)
    env["BENCH_JSON"] = str(jpath)
    shown = " ".join(runner) if runner else f"{script.name} {' '.join(argv)}"
    print(f"\n{'=' * 78}\n== {name}: {shown}\n{'=' * 78}", flush=True)
    tail: collections.deque[str] = collections.deque(maxlen=15)
    bench_lines: list[str] = []
    t0 = time.monotonic()
    rec: dict = {"script": script.name, "args": argv}
    try:
        p = subprocess.Popen(runner or [sys.executable, str(script), *argv], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, bufsize=1, cwd=B.REPO)
        deadline = time.monotonic() + TIMEOUT
        for line in p.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            tail.append(line.rstrip("\n"))
            if line.startswith("BENCH {"):
                bench_lines.append(line[6:])
            if time.monotonic() > deadline:
                p.kill()
                tail.append(f"killed after {TIMEOUT}s")
                break
        rc = p.wait()
    except OSError as e:
        rc = -1
        tail.append(str(e))
    rec["exit"] = rc
    rec["seconds"] = round(time.monotonic() - t0, 1)
    try:
        text = jpath.read_text()
        rec["results"] = json.loads(text) if text.strip() else None
    except ValueError as e:
        rec["results"] = None
        tail.append(f"unreadable BENCH_JSON: {e}")
    if bench_lines:
        try:
            rec["bench_line"] = json.loads(bench_lines[-1])
        except ValueError:
            pass
    jpath.unlink(missing_ok=True)
    rec["tail"] = list(tail)
    if rc != 0:
        print(f"\n!! {name}: FAILED (exit {rc}) — the other benches still run; last output above", flush=True)
    return rec


def table(rows: list[dict]) -> str:
    def cell(r):
        v = r.get("value")
        if v is None:
            return "—"
        return f"{v:g}" if isinstance(v, (int, float)) else str(v)
    head = ("bench", "metric", "value", "unit", "goal", "note")
    data = [(r["bench"], r["metric"], cell(r), r.get("unit", ""), r.get("goal", ""), r.get("note", ""))
            for r in rows]
    widths = [max(len(h), *(len(str(d[i])) for d in data)) if data else len(h) for i, h in enumerate(head)]
    widths[1] = min(widths[1], 66)
    widths[5] = min(widths[5], 90)
    fmt = "  ".join(f"{{:{'>' if i == 2 else '<'}{w}}}" for i, w in enumerate(widths))
    out = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
    for d in data:
        d = list(d)
        d[1] = d[1][:widths[1]]
        d[5] = d[5][:widths[5]]
        out.append(fmt.format(*d))
    return "\n".join(out)


def goal_met(r: dict):
    """'<= 1.05', '< 15', '< 1000 us', '0' -> True/False; None when there is no goal or value."""
    import re
    g, v = (r.get("goal") or "").strip(), r.get("value")
    m = re.match(r"^(<=|>=|<|>|==)?\s*(-?[0-9.]+(?:e-?[0-9]+)?)", g)
    if not m or isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    op, x = m.group(1) or "==", float(m.group(2))
    return {"<=": v <= x, ">=": v >= x, "<": v < x, ">": v > x, "==": v == x}[op]


def flatten(d, prefix=""):
    """Numeric leaves of a nested dict as (dotted key, value)."""
    if isinstance(d, dict):
        for k, v in d.items():
            yield from flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(d, (int, float)) and not isinstance(d, bool):
        yield prefix, d


def rows_for(name: str, rec: dict) -> list[dict]:
    """Summary rows of one bench: its BENCH_JSON "summary", else the numbers of its last
    `BENCH {json}` line, else its last output lines (nothing is dropped silently)."""
    res = rec.get("results")
    if isinstance(res, dict) and isinstance(res.get("summary"), list):
        return res["summary"]
    bench_line = rec.get("bench_line")
    if bench_line is not None:
        items = list(flatten(bench_line))
        pref = [kv for kv in items if "ratio" in kv[0] or "seconds" in kv[0]] or items
        rows = [B.row(name, k, v) for k, v in pref[:30]]
        if len(pref) > 30:
            rows.append(B.row(name, f"... {len(pref) - 30} more in latest.json", None))
        return rows
    if rec.get("exit") == 0:
        lines = [ln.strip() for ln in rec.get("tail", []) if ln.strip() and not ln.startswith("==")]
        return [B.row(name, "output", None, "", "", ln) for ln in lines[-4:]] or \
            [B.row(name, "ran (no results printed)", None)]
    return []


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="comma-separated bench names (" + ",".join(b[0] for b in BENCHES) + ")")
    ap.add_argument("--skip", default="", help="comma-separated bench names to skip")
    ap.add_argument("--quick", action="store_true", help="smaller counts (a smoke run, not for numbers)")
    ap.add_argument("--no-install", action="store_true", help="do not run peers.sh when peers are missing")
    ap.add_argument("--vm", action="store_true",
                    help="if bench_file_lsm cannot load BPF LSM here, run it in the VM tier "
                         "(tests/vm/run_vm.py --bench-only: boots qemu, slow without KVM)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run_all: the benchmarks need root (corrald loads BPF and manages cgroups)", file=sys.stderr)
        return 1
    only = set(args.only.split(",")) if args.only else None
    skip = set(filter(None, args.skip.split(",")))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    started = dt.datetime.now(dt.timezone.utc)
    report: dict = {
        "started": started.isoformat(timespec="seconds"),
        "host": {"kernel": platform.release(), "cpus": os.cpu_count(), "machine": platform.machine(),
                 "python": platform.python_version(),
                 "loadavg_at_start": open("/proc/loadavg").read().split()[:3]},
        "quick": args.quick, "benches": {}, "summary": []}
    selected = [b for b in BENCHES if (only is None or b[0] in only) and b[0] not in skip]

    if any(b[0] == "peers" for b in selected) and not args.no_install:
        if not (B.BENCH / ".peers" / "node_modules" / ".bin" / "srt").exists() or \
           not (B.BENCH / ".peers" / "node_modules" / ".bin" / "codex").exists():
            print("== installing peers (bench/peers.sh)", flush=True)
            p = subprocess.run(["sh", str(B.BENCH / "peers.sh")])
            if p.returncode != 0:
                print(f"!! peers.sh exited {p.returncode}; bench_peers records what is missing", flush=True)

    d = B.Daemon("corral-bench", extra_args=B.DNS_ARGS)
    failed = []
    try:
        try:
            d.start()
            env = dict(os.environ)
            env["BENCH_DAEMON_ENV"] = json.dumps(d.corral_env())
            report["daemon"] = {"instance": d.instance, "start_seconds": round(d.start_seconds, 2)}
            print(f"== shared corrald {d.instance} (pid {d.pid}) ready in {d.start_seconds:.1f}s", flush=True)
        except Exception as e:   # benches that need no daemon still run; the others start their own
            print(f"!! could not start the shared corrald: {e}", flush=True)
            env = dict(os.environ)
            report["daemon"] = {"error": str(e)}
        for name, script, full, quick in selected:
            path = B.BENCH / script
            if not path.exists():
                report["benches"][name] = {"script": script, "skipped": "not written yet"}
                continue
            rec = run_one(name, path, quick if args.quick else full, env)
            vm = B.REPO / "tests" / "vm" / "run_vm.py"
            if name == "file_lsm" and rec["exit"] != 0 and args.vm and vm.exists():
                print(f"!! file_lsm failed on this kernel; running it in the VM tier ({vm.name} --bench-only)",
                      flush=True)
                rec = run_one(name, path, [], env, runner=[sys.executable, str(vm), "--bench-only"])
                rec["via"] = "tests/vm/run_vm.py --bench-only"
                if "bench_line" not in rec:        # the runner exits 0 even when the guest bench fails
                    rec["exit"] = rec["exit"] or 1
                    rec["tail"].append("no BENCH result line from the guest bench")
            elif name == "file_lsm" and rec["exit"] != 0:
                rec["hint"] = "run_all.py --vm runs it in the VM tier"
            report["benches"][name] = rec
            if rec["exit"] == SKIPPED:
                why = next((ln.split("SKIPPED:", 1)[1].strip() for ln in reversed(rec["tail"])
                            if "SKIPPED:" in ln), "the host lacks what it needs")
                rec["skipped"] = why
                report["summary"].append(B.row(name, "SKIPPED", None, "", "", why[:150] +
                                               (f" ({rec['hint']})" if rec.get("hint") else "")))
                continue
            rows = rows_for(name, rec)
            if rec["exit"] != 0:
                failed.append(name)
                last = next((ln for ln in reversed(rec["tail"]) if ln.strip()), "")
                hint = f" ({rec['hint']})" if rec.get("hint") else ""
                report["summary"].append(B.row(name, "FAILED", None, "", "",
                                               f"exit {rec['exit']}: {last[:150]}{hint}"))
            report["summary"].extend(rows)
    finally:
        d.stop()

    report["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    report["host"]["loadavg_at_end"] = open("/proc/loadavg").read().split()[:3]
    for r in report["summary"]:
        r["goal_met"] = goal_met(r)
    out = B.BENCH / "results" / "latest.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))

    print(f"\n{'=' * 78}\nSUMMARY  ({report['started']}, kernel {report['host']['kernel']}, "
          f"{report['host']['cpus']} CPUs, load {' '.join(report['host']['loadavg_at_start'])} at start"
          f"{', QUICK run' if args.quick else ''})\n{'=' * 78}")
    rows = [dict(r, goal=(r["goal"] + (" ok" if r["goal_met"] else " MISSED")) if r["goal_met"] is not None
                 else r["goal"]) for r in report["summary"]]
    print(table(rows))
    not_written = [n for n, r in report["benches"].items() if r.get("skipped") == "not written yet"]
    if not_written:
        print(f"\nnot present (skipped): {', '.join(not_written)}")
    skipped = [f"{n} ({r['skipped']})" for n, r in report["benches"].items()
               if r.get("skipped") and r["skipped"] != "not written yet"]
    if skipped:
        print(f"\nskipped, this host cannot run them: {'; '.join(skipped)}")
    if failed:
        print(f"\nFAILED: {', '.join(failed)} (details above and in {out})")
    print(f"\nwrote {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
