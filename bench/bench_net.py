#!/usr/bin/env python3
"""bench_net: cost of corral's network enforcement on a TCP connect loop.

A small C program (bench/c/connect_loop.c, compiled here with gcc -O2) does
N x (socket, SO_LINGER 0, connect, close) to a loopback listener that runs
outside any session; only the loop is timed, inside the program, so process
start-up and `corral run` itself are not in the number.

Conditions, interleaved round-robin (R rounds), median of each:
  bare              outside corral (no BPF program runs: they hang off corral's cgroup)
  session/no-net    in a session with no network section (programs run, look the
                    session up, enforce nothing)
  session/K rules   in a session whose allow list has K rules (1, 10, 1000), the
                    listener's 127.0.0.1/32:PORT among them (BPF only: registered
                    through the client library, no seccomp)
  corral run/K      `corral run --policy ... -- connect_loop`: BPF + seccomp + caps
                    (skipped with the error if `corral run` does not work here)
  nohooks: ...      (kernels with cgroup connect_unix, 6.7+; --no-compare-hooks to
                    skip) session/no-net, session/1 rules and corral run/1 rules
                    again against a second private corrald whose net.c is compiled
                    without the Unix hooks (CORRAL_NO_UNIX_HOOKS=1), in the same
                    rounds: TCP should not see them (they run for AF_UNIX only)

Goal: corral run / bare <= 1.05, flat in rule count.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as B  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def allow_rules(port: int, k: int) -> list[str]:
    """k rules: the listener's address+port, then k-1 distinct /32s in 10/8 on 443."""
    rules = [f"127.0.0.1/32:{port}"]
    for i in range(k - 1):
        rules.append(f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}/32:443")
    return rules


def policy_toml(rules: list[str]) -> str:
    return "[network]\nallow = [\n" + "".join(f'  "{r}",\n' for r in rules) + "]\n"


CHUNK = 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=20000, help="connects per run (default 20000)")
    ap.add_argument("-r", "--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    ap.add_argument("--rules", default="1,10,1000", help="rule counts (default 1,10,1000)")
    ap.add_argument("--no-compare-hooks", action="store_true",
                    help="do not start the second corrald without the Unix hooks")
    args = ap.parse_args()
    ks = [int(x) for x in args.rules.split(",")]

    prog = str(B.compile_c("connect_loop"))
    port = free_port()
    server = subprocess.Popen([prog, "serve", str(port)], stdout=subprocess.PIPE, text=True)
    results = {"n": args.n, "rounds": args.rounds, "port": port, "conditions": {}, "errors": {}}
    summary = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-net-"))
    try:
        if server.stdout.readline().strip() != "ready":
            raise RuntimeError("listener did not start")
        compare = not args.no_compare_hooks and B.unix_hooks_supported()
        results["compare_no_unix_hooks"] = compare
        with B.daemon("corral-bench-net") as d, \
                (B.no_unix_hooks_daemon("corral-bench-net-nohooks") if compare
                 else contextlib.nullcontext()) as d2:
            env = d.env
            conds: dict[str, list[str]] = {"bare": [prog, "client", "127.0.0.1", str(port), str(args.n),
                                                    str(CHUNK)]}
            client_cmd = conds["bare"]
            conds["session/no-net"] = B.in_session_argv({}, client_cmd)
            for k in ks:
                conds[f"session/{k} rules"] = B.in_session_argv(
                    {"network": {"allow": allow_rules(port, k)}}, client_cmd)
            for k in ks:
                pf = tmp / f"net{k}.toml"
                pf.write_text(policy_toml(allow_rules(port, k)))
                conds[f"corral run/{k} rules"] = [B.CORRAL, "run", "--policy", str(pf), "--", *client_cmd]
            conds["corral run/no-net"] = [B.CORRAL, "run", "--open-net", "--", *client_cmd]
            envs = {name: env for name in conds}     # which daemon each condition talks to
            if d2 is not None:
                for name in ("session/no-net", f"session/{ks[0]} rules", f"corral run/{ks[0]} rules"):
                    conds["nohooks: " + name] = conds[name]
                    envs["nohooks: " + name] = d2.env
            results["unix_hooks"] = {"main daemon": any("unix" in n for n in B.corral_progs(d.instance)),
                                     "nohooks daemon": (any("unix" in n for n in B.corral_progs(d2.instance))
                                                        if d2 is not None else None)}

            # Probe each condition once (also a warm-up); drop the broken ones with their error.
            # The probe runs with BPF run-time stats on: the kernel's own count of ns spent
            # in corral_connect4 per call, free of scheduler noise.
            progs = B.corral_progs(d.instance)
            want = {k: v for k, v in progs.items() if k in ("corral_connect4", "corral_sock_create")}
            want2 = {}
            if d2 is not None:
                want2 = {k: v for k, v in B.corral_progs(d2.instance).items()
                         if k in ("corral_connect4", "corral_sock_create")}
            bpf_ns: dict[str, dict] = {}
            stats_cm = None
            try:
                stats_cm = B.BpfStats().__enter__()
            except OSError as e:
                results["errors"]["bpf run-time stats"] = str(e)
            for name in list(conds):
                w = want2 if name.startswith("nohooks: ") else want
                before = B.prog_stats(w) if stats_cm else {}
                for attempt in range(3):         # transient refusals: see the rounds below
                    p = subprocess.run(conds[name], env=envs[name], capture_output=True, text=True, timeout=300)
                    if "ok=" in p.stdout:
                        break
                    results.setdefault("retries", []).append(f"{name} (probe): {p.stderr.strip()[-300:]}")
                    time.sleep(1.0)
                if stats_cm:
                    after = B.prog_stats(w)
                    bpf_ns[name] = {}
                    for pn in after:
                        dc = after[pn][0] - before.get(pn, (0, 0))[0]
                        dt = after[pn][1] - before.get(pn, (0, 0))[1]
                        bpf_ns[name][pn] = {"calls": dc, "ns_per_call": dt / dc if dc else None}
                try:
                    r = B.loop_result(p.stdout, "connect_loop", CHUNK)
                    if r["fail"]:
                        raise RuntimeError(f"{r['fail']} of {args.n} connects failed "
                                           f"(first errno {r['first_errno']}: {os.strerror(r['first_errno'])})")
                except RuntimeError as e:
                    why = f"exit {p.returncode}: {e}; stderr: {p.stderr.strip()[-400:]}"
                    results["errors"][name] = why
                    print(f"[bench_net] {name}: NOT MEASURED: {why}", file=sys.stderr)
                    del conds[name]
            if stats_cm:
                stats_cm.__exit__(None, None, None)
            results["bpf_run_time"] = bpf_ns
            times: dict[str, list[float]] = {n: [] for n in conds}
            for rnd in range(args.rounds):
                for name, argv in conds.items():
                    for attempt in range(3):
                        # A shared machine: another user's test can make `corral run` refuse to
                        # start for a moment (e.g. a hard-linked foreign Unix socket): retry, counted.
                        p = subprocess.run(argv, env=envs[name], capture_output=True, text=True, timeout=300)
                        try:
                            r = B.loop_result(p.stdout, "connect_loop", CHUNK)
                            break
                        except RuntimeError:
                            why = f"{name}: exit {p.returncode} in round {rnd}: {p.stderr.strip()[-300:]}"
                            results.setdefault("retries", []).append(why)
                            print(f"[bench_net] {why} (retrying)", file=sys.stderr)
                            if attempt == 2:
                                raise RuntimeError(why) from None
                            time.sleep(1.0)
                    if r["fail"]:
                        raise RuntimeError(f"{name}: {r['fail']} connects failed in round {rnd}")
                    times[name].extend(r["chunks"])
    finally:
        server.kill()
        server.wait()
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)

    base = B.median(times["bare"])
    base10 = B.quantile(times["bare"], 0.1)
    print(f"\nTCP connect+close to 127.0.0.1:{port}, N={args.n} per run, {args.rounds} interleaved "
          f"rounds; samples = ns per connect over chunks of {CHUNK} connects")
    print(f"{'condition':26} {'median ns':>10} {'ratio':>7} {'p10 ns':>8} {'ratio':>7} {'p90 ns':>8} {'samples':>7}")
    for name, ts in times.items():
        m, p10, p90 = B.median(ts), B.quantile(ts, 0.1), B.quantile(ts, 0.9)
        ratio, ratio10 = m / base, p10 / base10
        results["conditions"][name] = {"ns_per_connect_median": m, "ns_per_connect_p10": p10,
                                       "ns_per_connect_p90": p90, "samples": len(ts),
                                       "ratio_vs_bare_median": ratio, "ratio_vs_bare_p10": ratio10}
        print(f"{name:26} {m:10.0f} {ratio:7.3f} {p10:8.0f} {ratio10:7.3f} {p90:8.0f} {len(ts):7}")
        if name != "bare":
            goal = "<= 1.05" if name.removeprefix("nohooks: ").startswith("corral run") else ""
            summary.append(B.row("net", f"connect {name} / bare", round(ratio, 3), "x", goal,
                                 f"median {m / 1000:.1f} vs {base / 1000:.1f} us; "
                                 f"p10 ratio {ratio10:.3f}"))
    if bpf_ns:
        print("\nKernel-measured BPF program time (BPF_ENABLE_STATS, one probe run each):")
        print(f"{'condition':26} {'connect4 calls':>14} {'ns/call':>8} {'sock_create ns/call':>20}")
        for name, st in bpf_ns.items():
            c4 = st.get("corral_connect4", {})
            sc = st.get("corral_sock_create", {})
            ns4 = c4.get("ns_per_call")
            nssc = sc.get("ns_per_call")
            print(f"{name:26} {c4.get('calls', 0):14} {ns4 or 0:8.0f} {nssc or 0:20.0f}")
            if name.removeprefix("nohooks: ").startswith("session/") and ns4:
                both = ns4 + (nssc or 0)
                summary.append(B.row("net", f"BPF ns per connect (connect4+sock_create), {name}",
                                     round(both), "ns", "",
                                     f"connect4 {ns4:.0f} + sock_create {nssc or 0:.0f}; "
                                     f"noise-free ratio estimate {1 + both / base:.4f}x" if base else ""))
    for name, why in results["errors"].items():
        summary.append(B.row("net", f"connect {name} / bare", None, "x", "", f"NOT MEASURED: {why[:160]}"))
    results["summary"] = summary
    B.write_results(results)
    return 1 if results["errors"] and len(results["errors"]) == len(ks) * 2 + 2 else 0


if __name__ == "__main__":
    sys.exit(main())
