#!/usr/bin/env python3
"""bench_peers: corral beside its peers on the same work, in the same run.

Peers (installed by bench/peers.sh into bench/.peers/, npm):
  srt    @anthropic-ai/sandbox-runtime: bubblewrap namespaces + its own network
         namespace whose only way out is its HTTP/SOCKS proxies; seccomp
  codex  @openai/codex `codex sandbox -c sandbox_mode="workspace-write" -- CMD`:
         bubblewrap + seccomp (no network unless network_access=true)

Each tool gets the same policy as far as it can express it: no network, the
working directory (and /tmp) writable.
  corral run --no-net --allow-write . --allow-write /tmp -- CMD
  srt --settings {allowedDomains: [], allowWrite: ["."]} -c CMD
  codex sandbox -c sandbox_mode="workspace-write" -- CMD

Workloads (timed interleaved: the tools take turns, round-robin, median wall time
of --runs rounds; --hyperfine to use hyperfine -N instead; ratio vs bare):
  true        start-up cost
  git status  in a repository of 5000 files (a few modified)
  rg          search the same tree
  connect     the C connect loop to a loopback listener (timed inside the program);
              corral allows exactly 127.0.0.1/32:PORT; a peer that cannot allow one
              loopback port is run with what it can do, and its error is recorded.
A peer that cannot run here is recorded with its error: a result, not a failure.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as B  # noqa: E402

PEERS = B.BENCH / ".peers"
SRT = PEERS / "node_modules" / ".bin" / "srt"
CODEX = PEERS / "node_modules" / ".bin" / "codex"
CODEX_HOME = PEERS / "codex-home"    # codex refuses a CODEX_HOME under /tmp


def make_repo(root: Path, nfiles: int) -> Path:
    repo = root / "repo"
    repo.mkdir()
    per_dir = 50
    for i in range(nfiles):
        d = repo / f"src{i // per_dir:03d}"
        if i % per_dir == 0:
            d.mkdir()
        (d / f"file{i % per_dir:02d}.txt").write_text(
            f"file {i}\n" + "lorem ipsum dolor sit amet\n" * 20 + ("needle\n" if i % 97 == 0 else ""))
    git = ["git", "-c", "user.email=bench@corral", "-c", "user.name=bench", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q", "."], cwd=repo, check=True)
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "bench tree"], cwd=repo, check=True)
    for i in range(0, nfiles, 1000):     # a few modified files for status to find
        f = repo / f"src{i // per_dir:03d}" / f"file{i % per_dir:02d}.txt"
        f.write_text(f.read_text() + "changed\n")
    subprocess.run(["git", "status", "--short"], cwd=repo, capture_output=True)   # refresh the index
    return repo


def version(argv: list[str]) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        return (p.stdout.strip() or p.stderr.strip()).splitlines()[0]
    except (OSError, subprocess.TimeoutExpired, IndexError) as e:
        return f"? ({e})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=5000)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--true-runs", type=int, default=30)
    ap.add_argument("-n", type=int, default=20000, help="connects per connect-loop run")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the connect loop")
    ap.add_argument("--hyperfine", action="store_true",
                    help="time with hyperfine (each command's runs back to back) instead of the "
                         "default interleaved runner (tools take turns: fairer on a shared machine)")
    args = ap.parse_args()

    results: dict = {"tools": {}, "workloads": {}, "errors": {}}
    summary = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-peers-"))
    repo = make_repo(tmp, args.files)
    srt_settings = tmp / "srt-settings.json"
    srt_settings.write_text(json.dumps({
        "network": {"allowedDomains": [], "deniedDomains": []},
        "filesystem": {"denyRead": [], "allowWrite": ["."], "denyWrite": []}}))

    tools = {"corral": True, "srt": SRT.exists(), "codex": CODEX.exists()}
    for t, ok in tools.items():
        if not ok:
            results["errors"][t] = "not installed: run `sh bench/peers.sh`"
    results["tools"] = {
        "corral": "cgroup BPF sock_addr + Landlock + seccomp, no namespaces",
        "srt": version([str(SRT), "--version"]) if tools["srt"] else None,
        "codex": version([str(CODEX), "--version"]) if tools["codex"] else None,
    }
    CODEX_HOME.mkdir(parents=True, exist_ok=True)

    def wrap(tool: str, cmd: list[str], net_port: int | None = None) -> list[str]:
        if tool == "bare":
            return cmd
        if tool == "corral":
            net = ["--allow-net", f"127.0.0.1/32:{net_port}"] if net_port else ["--no-net"]
            return [B.CORRAL, "run", *net, "--allow-write", str(repo), "--allow-write", "/tmp", "--", *cmd]
        if tool == "srt":
            return [str(SRT), "--settings", str(srt_settings), "-c", shlex.join(cmd)]
        if tool == "codex":
            extra = ["-c", "sandbox_workspace_write.network_access=true"] if net_port else []
            return [str(CODEX), "sandbox", "-c", 'sandbox_mode="workspace-write"', *extra, "--", *cmd]
        raise ValueError(tool)

    prog = str(B.compile_c("connect_loop"))
    rg = shutil.which("rg") or "rg"
    workloads = {
        "true": (["/bin/true"], args.true_runs),
        f"git status ({args.files} files)": (["git", "status", "--short"], args.runs),
        f"rg over {args.files} files": ([rg, "-c", "needle", "."], args.runs),
    }
    with B.daemon("corral-bench-peers") as d:
        env = dict(d.env)
        env["CODEX_HOME"] = str(CODEX_HOME)
        active = ["bare"] + [t for t, ok in tools.items() if ok]
        for wname, (cmd, runs) in workloads.items():
            cmds = {}
            for t in active:
                argv = wrap(t, cmd)
                p = subprocess.run(argv, env=env, cwd=repo, capture_output=True, text=True, timeout=120)
                if p.returncode != 0 and not (cmd[0] == rg and p.returncode == 1):
                    why = f"exit {p.returncode}: {(p.stderr or p.stdout).strip()[-300:]}"
                    results["errors"][f"{t} / {wname}"] = why
                    print(f"[bench_peers] {t} / {wname}: NOT MEASURED: {why}", file=sys.stderr)
                    continue
                cmds[t] = argv
            # rg exits 1 when nothing matches; that is not a failure
            ok = (0, 1) if cmd[0] == rg else (0,)
            if args.hyperfine:
                hf = B.hyperfine(cmds, runs=runs, warmup=2, env=env, cwd=str(repo),
                                 extra=["-i"] if cmd[0] == rg else [])
            else:
                hf = B.interleaved(cmds, rounds=runs, warmup=2, env=env, cwd=str(repo), ok_codes=ok)
            results["workloads"][wname] = hf
        # connect loop
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = subprocess.Popen([prog, "serve", str(port)], stdout=subprocess.PIPE, text=True)
        try:
            server.stdout.readline()
            client = [prog, "client", "127.0.0.1", str(port), str(args.n), "1000"]
            conds = {}
            for t in active:
                argv = wrap(t, client, net_port=port)
                p = subprocess.run(argv, env=env, cwd=repo, capture_output=True, text=True, timeout=300)
                line = [ln for ln in p.stdout.splitlines() if ln.startswith("ok=")]
                kv = dict(x.split("=", 1) for x in line[-1].split()) if line else {}
                if not line or kv.get("fail") != "0":
                    e = int(kv.get("first_errno", "0") or 0)
                    why = (f"{kv.get('fail')} of {args.n} connects failed, errno {e} "
                           f"({os.strerror(e) if e else '?'})" if line else
                           f"exit {p.returncode}: {p.stderr.strip()[-300:]}")
                    if t == "srt":
                        why += ("; srt runs the command in its own network namespace: the host's "
                                "loopback is unreachable except through its HTTP/SOCKS proxy")
                    results["errors"][f"{t} / connect loop"] = why
                    print(f"[bench_peers] {t} / connect loop: NOT MEASURED: {why}", file=sys.stderr)
                    continue
                conds[t] = argv
            samples = {t: [] for t in conds}
            for _ in range(args.rounds):
                for t, argv in conds.items():
                    p = subprocess.run(argv, env=env, cwd=repo, capture_output=True, text=True, timeout=300)
                    line = [ln for ln in p.stdout.splitlines() if ln.startswith("ok=")][-1]
                    kv = dict(x.split("=", 1) for x in line.split())
                    samples[t] += [int(c) / 1000 for c in kv["chunks"].split(",") if c]
            results["workloads"]["connect loop (ns/connect)"] = {
                t: {"median_ns": B.median(v), "samples": len(v)} for t, v in samples.items()}
        finally:
            server.kill()
            server.wait()
        d.wait_no_sessions(timeout=30)
    shutil.rmtree(tmp, ignore_errors=True)

    # -- report ---------------------------------------------------------------------
    names = ["bare", "corral", "srt", "codex"]
    print("\nSame work, same run; median wall time (ms) and ratio vs bare "
          "(connect loop: median ns per connect inside the program)")
    print(f"{'workload':28}" + "".join(f"{n:>22}" for n in names))
    for wname, res in results["workloads"].items():
        is_conn = wname.startswith("connect")
        key = "median_ns" if is_conn else "median"
        base = res.get("bare", {}).get(key)
        cells = []
        for n in names:
            if n not in res:
                cells.append(f"{'—':>22}")
                continue
            v = res[n][key]
            ratio = v / base if base else float("nan")
            cells.append(f"{(f'{v:.0f} ns' if is_conn else f'{v * 1000:.1f} ms') + f' ({ratio:.2f}x)':>22}")
            if n != "bare":
                note = "network fully open (codex has no per-destination rule)" \
                    if is_conn and n == "codex" else ""
                summary.append(B.row("peers", f"{wname}: {n} / bare", round(ratio, 3), "x", "",
                                     (f"{v:.0f} ns" if is_conn else f"{v * 1000:.1f} ms") +
                                     (f"; {note}" if note else "")))
        print(f"{wname:28}" + "".join(cells))
    # Start-up subtracted: (tool on W - tool on `true`) / (bare on W - bare on `true`):
    # what the sandbox costs the work itself, once the process is running.
    tr = results["workloads"].get("true", {})
    print("\nStart-up subtracted: (tool W - tool true) / (bare W - bare true)")
    for wname, res in results["workloads"].items():
        if wname in ("true",) or wname.startswith("connect") or "bare" not in res or "bare" not in tr:
            continue
        b = res["bare"]["median"] - tr["bare"]["median"]
        cells = []
        for n in names:
            if n not in res or n not in tr:
                cells.append(f"{'—':>22}")
                continue
            v = (res[n]["median"] - tr[n]["median"]) / b if b > 0 else float("nan")
            cells.append(f"{f'{v:.2f}x':>22}")
            if n != "bare":
                summary.append(B.row("peers", f"{wname}: {n} / bare, start-up subtracted", round(v, 3), "x", "",
                                     f"{(res[n]['median'] - tr[n]['median']) * 1000:.1f} ms of work"))
        print(f"{wname:28}" + "".join(cells))
    if results["errors"]:
        print("\nNot measured (the error is the result):")
        for k, why in results["errors"].items():
            print(f"  {k}: {why}")
            summary.append(B.row("peers", f"{k}", None, "", "", f"NOT MEASURED: {why[:200]}"))
    print("\nTools: " + "; ".join(f"{k}: {v}" for k, v in results["tools"].items()))
    results["summary"] = summary
    B.write_results(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
