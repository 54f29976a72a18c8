#!/usr/bin/env python3
"""bench_unix: cost of the session boundary (issue 11) on Unix-socket connects.

A small C program (bench/c/unix_connect_loop.c, gcc -O2 at bench time) does
N x (socket(AF_UNIX), connect, close) to a listening pathname socket; only the
loop is timed, inside the program (chunks of 1000 connects: median/p10/p90 over
chunks, R interleaved rounds), so `corral run`'s start-up is not in the number.

Conditions (round-robin, the same program and work in each):
  bare/outside listener    no corral; the client connects to a listener the bench
                           started outside any session
  bare/self                no corral; the program forks its own listener first
                           (`self` mode) -- the control for the rows below
  session (BPF only)/self  `self` in a session registered through the client
                           library: the cgroup connect_unix program runs (a
                           unix_deny lookup that misses), no mount view, no
                           Landlock, no seccomp
  corral run/self          `corral run -- unix_connect_loop self ...`: the
                           session's own socket, in its mount view (read-only
                           outside allow_write, foreign sockets masked) with
                           Landlock, seccomp, caps dropped
  corral run --profile agent/self   the same under the agent profile
  nohooks: ...             (when the kernel has connect_unix, 6.7+) the same two
                           `corral run` rows against a second private corrald whose
                           net.c is compiled without the Unix hooks
                           (CORRAL_NO_UNIX_HOOKS=1): what the BPF program costs

For information, refused connects to a foreign socket (the outside listener,
bound before the session started), N/4 each, a few rounds:
  corral run/refused, exact path     the cgroup connect_unix program refuses the
                                     exact absolute path: EPERM, plus an audit
                                     record (rate-limited by the kernel limiter)
  corral run/refused, other spelling `DIR/./outside.sock`: the BPF lookup misses,
                                     the mode-0000 mask bound over the socket in
                                     the session's mount view refuses: EACCES
  nohooks: corral run/refused, exact path   only the mask: EACCES
  bare/refused (ECONNREFUSED)        reference: no corral, a socket file nobody
                                     listens on

Also the kernel's own ns per corral_connect_unix call (BPF_ENABLE_STATS, one
probe run per condition), and the daemon's CPU time per second with no session
and while one `corral run -- sleep` session lives (server/unixwatch.py polls
unix_diag every 0.2 s while sessions with a mount view live).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as B  # noqa: E402

CHUNK = 1000


def cpu_ns(pid: int) -> int:
    """ns on CPU of every live thread of pid (/proc/PID/task/*/schedstat, field 1)."""
    total = 0
    for t in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((t / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def daemon_cpu(d: B.Daemon, seconds: float) -> dict | None:
    """Daemon CPU ms per second: idle (no session of ours) vs one `corral run -- sleep` session."""
    if not d.pid or not Path(f"/proc/{d.pid}").exists():
        return None
    d.wait_no_sessions(timeout=10)
    c0 = cpu_ns(d.pid)
    time.sleep(seconds)
    idle = (cpu_ns(d.pid) - c0) / seconds / 1e6
    p = subprocess.Popen([B.CORRAL, "run", "--", "sleep", str(seconds + 1.0)], env=d.env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)                              # past registration and the mount view
    c0 = cpu_ns(d.pid)
    time.sleep(seconds)
    live = (cpu_ns(d.pid) - c0) / seconds / 1e6
    p.wait(timeout=60)
    return {"idle_ms_per_s": idle, "one_session_ms_per_s": live, "seconds": seconds}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=20000, help="connects per run (default 20000)")
    ap.add_argument("-r", "--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    ap.add_argument("--refused-n", type=int, default=5000, help="refused connects per run (default 5000)")
    ap.add_argument("--refused-rounds", type=int, default=3)
    ap.add_argument("--cpu-seconds", type=float, default=3.0,
                    help="seconds of each daemon CPU sample (0: skip)")
    ap.add_argument("--no-compare-hooks", action="store_true",
                    help="do not start the second corrald without the Unix hooks")
    args = ap.parse_args()
    if args.n % CHUNK or args.refused_n % CHUNK:
        ap.error(f"-n and --refused-n must be multiples of {CHUNK}")

    prog = str(B.compile_c("unix_connect_loop"))
    tmp = Path(tempfile.mkdtemp(prefix="bench-unix-"))
    outside = str(tmp / "outside.sock")
    dead = str(tmp / "dead.sock")
    results: dict = {"n": args.n, "rounds": args.rounds, "refused_n": args.refused_n,
                     "chunk": CHUNK, "conditions": {}, "refused": {}, "errors": {}}
    summary = []
    server = subprocess.Popen([prog, "serve", outside], stdout=subprocess.PIPE, text=True)
    compare = not args.no_compare_hooks and B.unix_hooks_supported()
    results["compare_no_unix_hooks"] = compare
    try:
        if server.stdout.readline().strip() != "ready":
            raise RuntimeError("outside listener did not start")
        import socket
        s = socket.socket(socket.AF_UNIX)            # a socket file with no listener
        s.bind(dead)
        s.close()
        with contextlib.ExitStack() as stack:
            d = stack.enter_context(B.daemon("corral-bench-unix"))
            d2 = stack.enter_context(B.no_unix_hooks_daemon()) if compare else None
            progs = B.corral_progs(d.instance)
            results["programs_attached"] = sorted(progs)

            def own(tag):
                return str(tmp / f"own-{tag}.sock")

            def loop(mode, path, n):
                return [prog, mode, path, str(n), str(CHUNK)]

            # name -> (argv, env)
            conds = {
                "bare/outside listener": (loop("client", outside, args.n), d.env),
                "bare/self": (loop("self", own("bare"), args.n), d.env),
                "session (BPF only)/self": (B.in_session_argv({}, loop("self", own("sess"), args.n)), d.env),
                "corral run/self": ([B.CORRAL, "run", "--", *loop("self", own("run"), args.n)], d.env),
                "corral run --profile agent/self": ([B.CORRAL, "run", "--profile", "agent", "--",
                                                     *loop("self", own("agent"), args.n)], d.env),
            }
            refused = {
                "bare/refused (ECONNREFUSED, no listener)": (loop("refused", dead, args.refused_n), d.env),
                "corral run/refused, exact path": (
                    [B.CORRAL, "run", "--", *loop("refused", outside, args.refused_n)], d.env),
                "corral run/refused, other spelling (DIR/./NAME)": (
                    [B.CORRAL, "run", "--", *loop("refused", str(tmp) + "/./outside.sock",
                                                   args.refused_n)], d.env),
            }
            if d2 is not None:
                conds["nohooks: session (BPF only)/self"] = (
                    B.in_session_argv({}, loop("self", own("sess2"), args.n)), d2.env)
                conds["nohooks: corral run/self"] = (
                    [B.CORRAL, "run", "--", *loop("self", own("run2"), args.n)], d2.env)
                refused["nohooks: corral run/refused, exact path"] = (
                    [B.CORRAL, "run", "--", *loop("refused", outside, args.refused_n)], d2.env)

            # Probe each once (a warm-up too), with BPF run-time stats on.
            want = {k: v for k, v in progs.items() if "unix" in k}
            results["bpf_programs_measured"] = sorted(want)
            stats_cm = None
            try:
                stats_cm = B.BpfStats().__enter__()
            except OSError as e:
                results["errors"]["bpf run-time stats"] = str(e)
            bpf_ns: dict[str, dict] = {}
            errnos: dict[str, int] = {}
            for table, expect_fail in ((conds, False), (refused, True)):
                for name in list(table):
                    argv, env = table[name]
                    before = B.prog_stats(want) if stats_cm else {}
                    for attempt in range(3):     # transient refusals: see rounds() below
                        p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
                        if "ok=" in p.stdout:
                            break
                        results.setdefault("retries", []).append(f"{name} (probe): {p.stderr.strip()[-300:]}")
                        time.sleep(1.0)
                    if stats_cm:
                        after = B.prog_stats(want)
                        bpf_ns[name] = {}
                        for pn in after:
                            dc = after[pn][0] - before.get(pn, (0, 0))[0]
                            dt = after[pn][1] - before.get(pn, (0, 0))[1]
                            bpf_ns[name][pn] = {"calls": dc, "ns_per_call": dt / dc if dc else None}
                    try:
                        r = B.loop_result(p.stdout, "unix_connect_loop", CHUNK)
                        if expect_fail and r["ok"]:
                            raise RuntimeError(f"{r['ok']} connects went through")
                        if not expect_fail and r["fail"]:
                            why = (f"{r['fail']} connects failed (first errno "
                                   f"{r['first_errno']}: {os.strerror(r['first_errno'])})")
                            results.setdefault("own_socket_refused", []).append(f"{name} (probe): {why}")
                            # once more: an intermittent refusal should not drop the condition
                            p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
                            r = B.loop_result(p.stdout, "unix_connect_loop", CHUNK)
                            if r["fail"]:
                                raise RuntimeError(why + f"; again on a second try: {r['fail']} failed")
                        errnos[name] = r["first_errno"]
                    except RuntimeError as e:
                        why = f"exit {p.returncode}: {e}; stderr: {p.stderr.strip()[-400:]}"
                        results["errors"][name] = why
                        print(f"[bench_unix] {name}: NOT MEASURED: {why}", file=sys.stderr)
                        del table[name]
            if stats_cm:
                stats_cm.__exit__(None, None, None)
            results["bpf_run_time"] = bpf_ns

            def rounds(table, n_rounds, expect_fail=False):
                times = {n: [] for n in table}
                for rnd in range(n_rounds):
                    for name, (argv, env) in table.items():
                        for attempt in range(3):
                            # A shared machine: another user's test can make `corral run` refuse
                            # to start for a moment (a hard-linked foreign socket): retry, counted.
                            p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
                            try:
                                r = B.loop_result(p.stdout, "unix_connect_loop", CHUNK)
                            except RuntimeError:
                                why = f"{name}: exit {p.returncode} in round {rnd}: {p.stderr.strip()[-300:]}"
                                results.setdefault("retries", []).append(why)
                                print(f"[bench_unix] {why} (retrying)", file=sys.stderr)
                                if attempt == 2:
                                    raise RuntimeError(why) from None
                                time.sleep(1.0)
                                continue
                            if not expect_fail and r["fail"]:
                                # The session's own socket refused: a finding, not a number
                                # (failed connects are fast and would bias the chunks).
                                why = (f"{name}: round {rnd}: {r['fail']} of {r['ok'] + r['fail']} connects "
                                       f"to its own socket failed (first errno {r['first_errno']}: "
                                       f"{os.strerror(r['first_errno'])})")
                                results.setdefault("own_socket_refused", []).append(why)
                                print(f"[bench_unix] {why} (run discarded, retrying)", file=sys.stderr)
                                if attempt == 2:
                                    raise RuntimeError(why)
                                continue
                            times[name].extend(r["chunks"])
                            break
                return times

            t0 = time.monotonic()
            times = rounds(conds, args.rounds)
            rtimes = rounds(refused, args.refused_rounds, expect_fail=True)
            results["seconds_measuring"] = round(time.monotonic() - t0, 1)
            if args.cpu_seconds > 0:
                cpu = daemon_cpu(d, args.cpu_seconds)
                if cpu:
                    results["daemon_cpu"] = cpu
            results["load_average"] = open("/proc/loadavg").read().split()[:3]
    finally:
        server.kill()
        server.wait()
        shutil.rmtree(tmp, ignore_errors=True)

    base_name = "bare/self"
    base = B.median(times.get(base_name) or times.get("bare/outside listener") or [])
    base10 = B.quantile(times.get(base_name, []), 0.1)
    print(f"\nUnix stream connect+close, N={args.n} per run, {args.rounds} interleaved rounds; samples = "
          f"ns per connect over chunks of {CHUNK}; ratio against {base_name}")
    print(f"{'condition':38} {'median ns':>10} {'ratio':>7} {'p10 ns':>8} {'ratio':>7} {'p90 ns':>8} {'samples':>7}")
    for name, ts in times.items():
        m, p10, p90 = B.median(ts), B.quantile(ts, 0.1), B.quantile(ts, 0.9)
        ratio, ratio10 = m / base, p10 / base10
        results["conditions"][name] = {"ns_per_connect_median": m, "ns_per_connect_p10": p10,
                                       "ns_per_connect_p90": p90, "samples": len(ts),
                                       "ratio_vs_bare_self_median": ratio, "ratio_vs_bare_self_p10": ratio10}
        print(f"{name:38} {m:10.0f} {ratio:7.3f} {p10:8.0f} {ratio10:7.3f} {p90:8.0f} {len(ts):7}")
        if name != base_name:
            summary.append(B.row("unix", f"unix connect {name} / bare self", round(ratio, 3), "x",
                                 "<= 1.05" if name == "corral run/self" else "",
                                 f"median {m / 1000:.1f} vs {base / 1000:.1f} us (p10 ratio {ratio10:.3f}, "
                                 f"p90 {p90 / 1000:.1f} us)"))
    print(f"\nRefused connects to a foreign socket (information), N={args.refused_n} per run, "
          f"{args.refused_rounds} rounds:")
    print(f"{'condition':48} {'errno':>7} {'median ns':>10} {'p10 ns':>8} {'p90 ns':>8} {'vs bare self':>12}")
    import errno as E
    for name, ts in rtimes.items():
        m, p10, p90 = B.median(ts), B.quantile(ts, 0.1), B.quantile(ts, 0.9)
        en = errnos.get(name, 0)
        results["refused"][name] = {"errno": en, "errno_name": E.errorcode.get(en, str(en)),
                                    "ns_per_connect_median": m, "ns_per_connect_p10": p10,
                                    "ns_per_connect_p90": p90, "samples": len(ts),
                                    "ratio_vs_bare_self_connect": m / base}
        print(f"{name:48} {E.errorcode.get(en, en):>7} {m:10.0f} {p10:8.0f} {p90:8.0f} {m / base:12.3f}")
        summary.append(B.row("unix", f"refused {name}", round(m), "ns", "",
                             f"{E.errorcode.get(en, en)}; {m / base:.2f}x a bare own-socket connect"))
    if bpf_ns and results.get("bpf_programs_measured"):
        print("\nKernel-measured BPF time per Unix connect (BPF_ENABLE_STATS, one probe run each):")
        for name, st in bpf_ns.items():
            parts = []
            for pn, v in st.items():
                if v["calls"]:
                    parts.append(f"{pn}: {v['calls']} calls, {v['ns_per_call']:.0f} ns/call")
            print(f"  {name:48} {'; '.join(parts) or 'no calls'}")
            cu = [v for pn, v in st.items() if "connect" in pn and v["calls"]]
            if cu and not name.startswith("nohooks"):
                summary.append(B.row("unix", f"BPF ns per Unix connect, {name}", round(cu[0]["ns_per_call"]),
                                     "ns", "", f"{cu[0]['calls']} calls; "
                                     f"{cu[0]['ns_per_call'] / base * 100:.2f}% of a bare connect"))
    cpu = results.get("daemon_cpu")
    if cpu:
        print(f"\ncorrald CPU: {cpu['idle_ms_per_s']:.2f} ms/s with no session, "
              f"{cpu['one_session_ms_per_s']:.2f} ms/s while one `corral run -- sleep` session lives "
              f"({cpu['seconds']:.0f} s each; unixwatch polls unix_diag every 0.2 s)")
        summary.append(B.row("unix", "corrald CPU while one session lives", round(cpu["one_session_ms_per_s"], 2),
                             "ms/s", "", f"{cpu['idle_ms_per_s']:.2f} ms/s with none (unixwatch poll 0.2 s)"))
    refused_own = results.get("own_socket_refused") or []
    print(f"\nruns whose connects to the session's own socket were refused: {len(refused_own)}")
    for why in refused_own:
        print(f"  {why}")
    summary.append(B.row("unix", "runs with own-socket connects refused (discarded, retried)", len(refused_own),
                         "runs", "0", refused_own[0][:160] if refused_own else ""))
    for name, why in results["errors"].items():
        summary.append(B.row("unix", f"{name}", None, "", "", f"NOT MEASURED: {why[:160]}"))
    results["summary"] = summary
    B.write_results(results)
    return 1 if "corral run/self" in results["errors"] or "bare/self" in results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
