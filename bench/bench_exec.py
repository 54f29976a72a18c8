#!/usr/bin/env python3
"""bench_exec: the price of a sandbox per command (issue 15), side by side in one run.

1. hyperfine -N over bare `true`, `corral run -- true` (default profile),
   `corral run --profile agent -- true`, `corral exec ID -- true` through the
   native launcher and through the Python path (corral-py), and the peers
   `srt -c true`, `codex sandbox -- true` when installed (bench/peers.sh;
   said when not): added ms over bare (median, p90) and ratios. Goals:
   `corral run` < 15 ms added, `corral exec` < 5 ms added.
2. Flat in the number of rules: `corral exec` into sessions of 1, 100 and 1000
   network rules (and 100 deny_read paths); `corral run --policy FILE -- true`
   with 1, 100 and 1000 network rules in the file (native: corrald parses it).
2b. Not root: `corral run -- true` and `corral exec ID -- true` as a user of its
   own (made here, removed after), against `setpriv ... true` as that user.
3. A loop of 200 short commands (`git status` in a small repo) through each: total.
4. corrald CPU time (utime+stime from /proc) per `corral run` session and per
   `corral exec` command.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as B  # noqa: E402

CORRAL_PY = str(B.BIN / "corral-py")
PEERS = B.BENCH / ".peers" / "node_modules" / ".bin"
SRT, CODEX = PEERS / "srt", PEERS / "codex"
CODEX_HOME = B.BENCH / ".peers" / "codex-home"
CODEX_SANDBOX = [str(CODEX), "sandbox", "-c", 'sandbox_mode="workspace-write"']


def start_session(d, *flags, cwd=None) -> str:
    p = subprocess.run([CORRAL_PY, "session", "start", "-q", *flags], env=d.env, cwd=cwd,
                       capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        raise RuntimeError(f"corral session start {' '.join(flags)[:80]}: {p.stderr.strip()[-300:]}")
    return p.stdout.strip()


def stop_session(d, sid: str) -> None:
    subprocess.run([CORRAL_PY, "session", "stop", sid], env=d.env, capture_output=True, timeout=60)


@contextlib.contextmanager
def bench_user(base: Path):
    """A user of its own with a home under `base`, removed after."""
    import pwd
    name = f"corralb{os.getpid() % 100000}"
    home = base / "user-home"
    home.mkdir()
    subprocess.run(["useradd", "-M", "-d", str(home), "-s", "/bin/sh", "-U", name], check=True,
                   capture_output=True)
    try:
        pw = pwd.getpwnam(name)
        os.chown(home, pw.pw_uid, pw.pw_gid)
        os.chmod(base, 0o755)
        yield pw
    finally:
        subprocess.run(["userdel", name], capture_output=True)


def daemon_cpu(pid: int, children: bool = True) -> float:
    """utime + stime of a process (and of its reaped children: the helpers it
    runs, e.g. nsmount's), in seconds."""
    with open(f"/proc/{pid}/stat") as fh:
        f = fh.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return sum(int(x) for x in (f[11], f[12]) + ((f[13], f[14]) if children else ())) / tick


def make_repo(base: Path, files: int = 50) -> Path:
    repo = base / "repo"
    repo.mkdir()
    for i in range(files):
        (repo / f"f{i}.txt").write_text(f"{i}\n")
    env = dict(os.environ, GIT_AUTHOR_NAME="b", GIT_AUTHOR_EMAIL="b@b", GIT_COMMITTER_NAME="b",
               GIT_COMMITTER_EMAIL="b@b")
    for cmd in (["git", "init", "-q"], ["git", "add", "."], ["git", "commit", "-qm", "x"]):
        subprocess.run(cmd, cwd=repo, env=env, check=True)
    return repo


def loop_seconds(prefix: list[str], n: int, env: dict, cwd: Path) -> float:
    """Wall time of n `git status` through prefix, from one shell loop."""
    script = f"for i in $(seq {n}); do {shlex.join(prefix + ['git', 'status', '--short'])} " \
             f">/dev/null || exit 1; done"
    return _timed_shell(script, env, cwd)


def _timed_shell(script: str, env: dict, cwd: Path) -> float:
    """Wall time of one bash script (a loop of commands); its failure raises."""
    t0 = time.perf_counter()
    p = subprocess.run(["bash", "-c", script], env=env, cwd=cwd, capture_output=True, text=True,
                       timeout=3600)
    if p.returncode != 0:
        raise RuntimeError(p.stderr.strip()[-300:])
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--loop", type=int, default=200, help="commands in the git status loop")
    ap.add_argument("--cpu-n", type=int, default=30, help="sessions/commands for the CPU measure")
    args = ap.parse_args()
    results: dict = {"errors": {}, "peers": {}}
    summary = []
    true = "/bin/true"
    tmp = Path(tempfile.mkdtemp(prefix="bench-exec-"))
    repo = make_repo(tmp)
    for name, path in (("srt", SRT), ("codex", CODEX)):
        results["peers"][name] = str(path) if path.exists() else \
            "not installed (sh bench/peers.sh; needs npm and the network)"
    sessions = []
    with B.daemon("corral-bench-exec") as d:
        env = dict(d.env)
        env["CODEX_HOME"] = str(CODEX_HOME)
        try:
            sid = start_session(d, cwd=repo)
            sessions.append(sid)
            cmds = {
                "bare true": [true],
                "corral run -- true": [B.CORRAL, "run", "-q", "--", true],
                "corral run --profile agent -- true": [B.CORRAL, "run", "-q", "--profile", "agent",
                                                       "--", true],
                "corral exec ID -- true (native)": [B.CORRAL, "exec", sid, "--", true],
                "corral exec ID -- true (Python path)": [CORRAL_PY, "exec", sid, "--", true],
            }
            if SRT.exists():
                cmds["srt -- true"] = [str(SRT), "-c", true]
            if CODEX.exists():
                CODEX_HOME.mkdir(parents=True, exist_ok=True)
                # `codex sandbox linux` in older releases; this one takes the mode as config
                cmds["codex sandbox -- true"] = [*CODEX_SANDBOX, "--", true]
            for name in list(cmds):
                p = subprocess.run(cmds[name], env=env, cwd=repo, capture_output=True, text=True,
                                   timeout=120)
                if p.returncode != 0:
                    results["errors"][name] = f"exit {p.returncode}: {p.stderr.strip()[-300:]}"
                    print(f"[bench_exec] {name}: NOT MEASURED: {results['errors'][name]}",
                          file=sys.stderr)
                    del cmds[name]
            hf = B.hyperfine(cmds, runs=args.runs, warmup=args.warmup, env=env, cwd=str(repo))
            results["hyperfine"] = hf
            base = hf["bare true"]
            print(f"\nhyperfine -N --warmup {args.warmup} --runs {args.runs}: added over bare `true` "
                  f"(median {base['median'] * 1000:.2f} ms, p90 {base['p90'] * 1000:.2f} ms)")
            print(f"{'command':42} {'median':>8} {'p90':>8} {'added med':>10} {'added p90':>10} {'ratio':>8}")
            for name, r in hf.items():
                add_m, add_p = (r["median"] - base["median"]) * 1000, (r["p90"] - base["p90"]) * 1000
                ratio = r["median"] / base["median"]
                print(f"{name:42} {r['median'] * 1000:8.2f} {r['p90'] * 1000:8.2f} {add_m:10.2f} "
                      f"{add_p:10.2f} {ratio:7.1f}x")
                if name == "bare true":
                    continue
                goal = "< 5" if "exec" in name and "native" in name else \
                    "< 15" if name.startswith("corral run") else ""
                summary.append(B.row("exec", f"{name}: added (median)", round(add_m, 2), "ms", goal,
                                     f"p90 added {add_p:.2f} ms; {ratio:.1f}x bare"))
            for name, why in results["errors"].items():
                summary.append(B.row("exec", f"{name}: added", None, "ms", "", f"NOT MEASURED: {why[:150]}"))
            for name, why in results["peers"].items():
                if why.startswith("not installed"):
                    summary.append(B.row("exec", f"peer {name}", None, "", "", why))

            # 2. flat in the number of rules
            flat = {}
            rulesets = {"1 net rule": ["--allow-net", "10.0.0.1/32:443"],
                        "100 net rules": [a for i in range(100) for a in ("--allow-net", f"10.1.{i}.1/32:443")],
                        "1000 net rules": [a for i in range(1000)
                                           for a in ("--allow-net", f"10.{2 + i // 250}.{i % 250}.1/32:443")],
                        "100 deny_read paths": ["--no-net"] + [a for i in range(100)
                                                               for a in ("--deny-read", f"/nonexistent-{i}")]}
            fcmds = {"bare true": [true]}       # its own baseline: hyperfine runs differ
            for label, flags in rulesets.items():
                s2 = start_session(d, *flags, cwd=repo)
                sessions.append(s2)
                fcmds[f"exec, {label}"] = [B.CORRAL, "exec", s2, "--", true]
            fhf = B.hyperfine(fcmds, runs=args.runs, warmup=args.warmup, env=env, cwd=str(repo))
            fbase = fhf.pop("bare true")
            print("\n`corral exec ID -- true` (native) by the session's rule count:")
            for name, r in fhf.items():
                add = (r["median"] - fbase["median"]) * 1000
                flat[name] = {"added_median_ms": add, "p90_ms": r["p90"] * 1000}
                print(f"  {name:40} added {add:6.2f} ms (p90 {r['p90'] * 1000:.2f} ms)")
                summary.append(B.row("exec", f"{name}: added (median)", round(add, 2), "ms", "< 5",
                                     "flat in rules: prepared once per session"))
            results["by_rules"] = flat
            rcmds = {"bare true": [true]}
            for n in (1, 100, 1000):
                pf = tmp / f"rules-{n}.toml"
                rules = ", ".join(f'"10.{3 + i // 250}.{i % 250}.1/32:443"' for i in range(n))
                pf.write_text(f'[network]\nallow = [{rules}]\n')
                rcmds[f"run --policy FILE, {n} net rules"] = [B.CORRAL, "run", "-q", "--policy",
                                                              str(pf), "--", true]
            rhf = B.hyperfine(rcmds, runs=args.runs, warmup=args.warmup, env=env, cwd=str(repo))
            rbase = rhf.pop("bare true")
            print("\n`corral run --policy FILE -- true` (native) by the file's rule count:")
            for name, r in rhf.items():
                add = (r["median"] - rbase["median"]) * 1000
                addp = (r["p90"] - rbase["p90"]) * 1000
                flat[name] = {"added_median_ms": add, "added_p90_ms": addp}
                print(f"  {name:40} added {add:6.2f} ms (p90 added {addp:.2f} ms)")
                summary.append(B.row("exec", f"{name}: added (median)", round(add, 2), "ms", "< 15",
                                     f"p90 added {addp:.2f} ms; the file parsed by corrald"))

            # 2b. not root
            with bench_user(tmp) as user:
                as_user = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}",
                           "--init-groups"]
                uenv = dict(env, HOME=user.pw_dir)
                urepo = Path(user.pw_dir) / "repo"
                subprocess.run([*as_user, "git", "init", "-q", str(urepo)], env=uenv, check=True)
                # its first run makes the profile's ~/.npm, ~/.cache/pip (the Python CLI)
                subprocess.run([*as_user, B.CORRAL, "run", "-q", "--", true], env=uenv,
                               cwd=urepo, capture_output=True, timeout=120)
                sp = subprocess.run([*as_user, CORRAL_PY, "session", "start", "-q"], env=uenv,
                                    cwd=urepo, capture_output=True, text=True, timeout=120)
                usid = sp.stdout.strip()
                ucmds = {"setpriv true": [*as_user, true],
                         "user: corral run -- true": [*as_user, B.CORRAL, "run", "-q", "--", true],
                         "user: corral run --no-net -- true": [*as_user, B.CORRAL, "run", "-q",
                                                               "--no-net", "--", true],
                         "user: corral exec ID -- true": [*as_user, B.CORRAL, "exec", usid, "--",
                                                          true]}
                try:
                    for name in list(ucmds):
                        q = subprocess.run(ucmds[name], env=uenv, cwd=urepo, capture_output=True,
                                           text=True, timeout=120)
                        if q.returncode != 0:
                            results["errors"][name] = f"exit {q.returncode}: {q.stderr.strip()[-300:]}"
                            del ucmds[name]
                    uhf = B.hyperfine(ucmds, runs=args.runs, warmup=args.warmup, env=uenv,
                                      cwd=str(urepo))
                finally:
                    subprocess.run([*as_user, CORRAL_PY, "session", "stop", usid], env=uenv,
                                   capture_output=True, timeout=60)
                ubase = uhf.pop("setpriv true")
                results["not_root"] = {}
                print(f"\nNot root (uid {user.pw_uid}), added over `setpriv ... true` as that user:")
                for name, r in uhf.items():
                    add = (r["median"] - ubase["median"]) * 1000
                    addp = (r["p90"] - ubase["p90"]) * 1000
                    results["not_root"][name] = {"added_median_ms": add, "added_p90_ms": addp}
                    print(f"  {name:40} added {add:6.2f} ms (p90 added {addp:.2f} ms)")
                    summary.append(B.row("exec", f"{name}: added (median)", round(add, 2), "ms",
                                         "< 5" if "exec" in name else "< 15",
                                         f"p90 added {addp:.2f} ms; corrald moves the child in"))

            # 3. 200 short commands
            loops = {"bare": [],
                     "corral run": [B.CORRAL, "run", "-q", "--"],
                     "corral exec (native)": [B.CORRAL, "exec", sid, "--"],
                     "corral exec (Python path)": [CORRAL_PY, "exec", sid, "--"]}
            if SRT.exists():
                loops["srt"] = None         # srt takes a command string: wrapped below
            if CODEX.exists():
                loops["codex sandbox"] = [*CODEX_SANDBOX, "--"]
            results["loop_seconds"] = {}
            print(f"\n{args.loop} x `git status --short` in a {len(list(repo.iterdir())) - 1}-file repo, one shell loop:")
            for name, prefix in loops.items():
                try:
                    if prefix is None:
                        secs = loop_seconds_srt(args.loop, env, repo)
                    else:
                        secs = loop_seconds(prefix, args.loop, env, repo)
                except (RuntimeError, subprocess.TimeoutExpired) as e:
                    results["errors"][f"loop {name}"] = str(e)
                    print(f"  {name:30} FAILED: {e}")
                    continue
                results["loop_seconds"][name] = secs
                print(f"  {name:30} {secs:8.2f} s")
            bare = results["loop_seconds"].get("bare")
            for name, secs in results["loop_seconds"].items():
                if name != "bare":
                    summary.append(B.row("exec", f"{args.loop} x git status via {name}", round(secs, 2),
                                         "s", "", f"bare {bare:.2f} s" if bare else ""))

            # 4. daemon CPU
            if d.pid:
                c0, s0 = daemon_cpu(d.pid), daemon_cpu(d.pid, children=False)
                for _ in range(args.cpu_n):
                    subprocess.run([B.CORRAL, "run", "-q", "--no-net", "--", true], env=env, cwd=repo,
                                   capture_output=True, timeout=60)
                d.wait_no_sessions(timeout=30)
                per_run = (daemon_cpu(d.pid) - c0) / args.cpu_n * 1000
                per_run_self = (daemon_cpu(d.pid, children=False) - s0) / args.cpu_n * 1000
                c0 = daemon_cpu(d.pid)
                for _ in range(args.cpu_n):
                    subprocess.run([B.CORRAL, "exec", sid, "--", true], env=env, cwd=repo,
                                   capture_output=True, timeout=60)
                per_exec = (daemon_cpu(d.pid) - c0) / args.cpu_n * 1000
                results["daemon_cpu_ms"] = {"per corral run session": per_run,
                                            "per corral run session, corrald itself": per_run_self,
                                            "per corral exec command (native)": per_exec}
                print(f"\ncorrald CPU: {per_run:.2f} ms per `corral run --no-net` session (register, "
                      f"report, end; {per_run_self:.2f} ms of it corrald itself, the rest the helper "
                      f"processes it runs), {per_exec:.2f} ms per native `corral exec` command")
                summary.append(B.row("exec", "corrald CPU per corral run session", round(per_run, 2), "ms",
                                     "", f"{per_run_self:.1f} ms corrald itself, the rest its helpers"))
                summary.append(B.row("exec", "corrald CPU per corral exec command", round(per_exec, 2), "ms"))
        except RuntimeError as e:
            results["errors"]["bench"] = str(e)
            print(f"[bench_exec] {e}", file=sys.stderr)
            summary.append(B.row("exec", "FAILED", None, "", "", str(e)[:150]))
        finally:
            for s in sessions:
                stop_session(d, s)
    results["summary"] = summary
    B.write_results(results)
    print(json.dumps({"by_rules": results.get("by_rules"), "loop": results.get("loop_seconds")}))
    return 1 if "bench" in results["errors"] else 0


def loop_seconds_srt(n: int, env: dict, cwd: Path) -> float:
    script = f"for i in $(seq {n}); do {shlex.quote(str(SRT))} -c 'git status --short' >/dev/null " \
             "|| exit 1; done"
    return _timed_shell(script, env, cwd)


if __name__ == "__main__":
    sys.exit(main())
