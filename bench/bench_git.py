#!/usr/bin/env python3
"""bench_git: what corrald's git gateway (issue 14) costs a session's git.

An upstream on loopback (tests/helpers/git_upstream.py: `git http-backend`
behind a small HTTP server that wants a token) holds a repository of
--files files (default 3000, in 3 commits). One `corral run` session, with a
network policy that allows both the gateway (automatic) and, for the
comparison, the upstream port directly, runs in interleaved rounds:

  clone   `git clone` of the repository, direct (token as an extra header in
          the child's environment: the bench's own, not the gateway's) vs
          through the gateway (the session's GIT_CONFIG_GLOBAL rewrite);
  fetch   `git fetch` of one new upstream commit (made between rounds);
  push    `git push` of one small commit: direct to a branch of its own vs
          through the gateway (mirror sync, receive-pack, the hook's check,
          the push upstream: the latency the gateway adds).

Median wall time of --rounds rounds each; ratio gateway / direct. Results to
bench/results/git.json (and BENCH_JSON when run_all sets it).
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as B  # noqa: E402

HELPER = B.REPO / "tests" / "helpers" / "git_upstream.py"
ENV = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "GIT_CONFIG_NOSYSTEM": "1",
       "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@x",
       "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@x"}

# Runs inside the session: one round of each operation, both ways, as JSON.
SESSION = r'''
import json, os, subprocess, sys, time, shutil
url, direct_auth, work, rounds, signal_file = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
sid = os.environ["CORRAL_SESSION"]
gw_env = dict(os.environ)
direct_env = dict(os.environ, GIT_CONFIG_GLOBAL="/dev/null", GIT_CONFIG_COUNT="1",
                  GIT_CONFIG_KEY_0="http.extraHeader", GIT_CONFIG_VALUE_0=direct_auth)
out = {"clone": {"direct": [], "gateway": []}, "fetch": {"direct": [], "gateway": []},
       "push": {"direct": [], "gateway": []}}
def t(args, env, cwd=None):
    t0 = time.perf_counter()
    subprocess.run(["git", *args], env=env, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - t0
for r in range(rounds):
    for way, env in (("direct", direct_env), ("gateway", gw_env)) if r % 2 == 0 else \
            (("gateway", gw_env), ("direct", direct_env)):
        d = os.path.join(work, f"{way}{r}")
        out["clone"][way].append(t(["clone", "-q", url, d], env))
    print(json.dumps({"cloned": r}), flush=True)
    sys.stdin.readline()            # the bench adds a commit upstream
    for way, env in (("direct", direct_env), ("gateway", gw_env)):
        out["fetch"][way].append(t(["fetch", "-q", "origin"], env, os.path.join(work, f"{way}{r}")))
    for way, env in (("direct", direct_env), ("gateway", gw_env)):
        d = os.path.join(work, f"{way}{r}")
        subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", f"p{r}"], env=env, cwd=d,
                       check=True)
        ref = f"HEAD:corral/{sid}/{way}{r}"
        out["push"][way].append(t(["push", "-q", "origin", ref], env, d))
    for way in ("direct", "gateway"):
        shutil.rmtree(os.path.join(work, f"{way}{r}"), ignore_errors=True)
print(json.dumps({"result": out}), flush=True)
'''


def seed(repo: Path, files: int) -> None:
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(repo)], env=ENV, check=True)
    work = Path(tempfile.mkdtemp(prefix="corral-bench-git-seed-"))
    try:
        subprocess.run(["git", "init", "-q", "-b", "main"], cwd=work, env=ENV, check=True)
        for part in range(3):
            for i in range(part * files // 3, (part + 1) * files // 3):
                d = work / f"d{i % 50}"
                d.mkdir(exist_ok=True)
                (d / f"f{i}.txt").write_text(f"file {i}\n" + "x" * (i % 2000) + "\n")
            subprocess.run(["git", "add", "."], cwd=work, env=ENV, check=True)
            subprocess.run(["git", "commit", "-qm", f"part {part}"], cwd=work, env=ENV, check=True)
        subprocess.run(["git", "push", "-q", str(repo), "main"], cwd=work, env=ENV, check=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def add_commit(repo: Path, n: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="corral-bench-git-c-"))
    try:
        subprocess.run(["git", "clone", "-q", str(repo), str(work / "c")], env=ENV, check=True)
        (work / "c" / f"new{n}.txt").write_text(f"new {n}\n")
        subprocess.run(["git", "add", "."], cwd=work / "c", env=ENV, check=True)
        subprocess.run(["git", "commit", "-qm", f"new {n}"], cwd=work / "c", env=ENV, check=True)
        subprocess.run(["git", "push", "-q", "origin", "main"], cwd=work / "c", env=ENV, check=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="corral-bench-git-"))
    root.chmod(0o755)
    secret = root / "secret"
    secret.mkdir(mode=0o700)
    token = "tok_" + secrets.token_hex(20)
    (secret / "token").write_text(token)
    (secret / "token").chmod(0o600)
    repos = root / "repos"
    seed(repos / "bench" / "repo.git", args.files)
    up = subprocess.Popen([sys.executable, str(HELPER), str(repos), str(secret / "token"),
                           str(root / "port")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            if (root / "port").exists():
                break
            time.sleep(0.05)
        port = int((root / "port").read_text())
        url = f"http://127.0.0.1:{port}/bench/repo.git"
        creds = secret / "git-credentials.toml"
        creds.write_text(f'[[remote]]\nurl = "{url}"\ntoken_file = "{secret / "token"}"\n')
        creds.chmod(0o600)
        auth = "Authorization: Basic " + base64.b64encode(f"x-access-token:{token}".encode()).decode()
        work = root / "work"
        work.mkdir()
        (root / "session.py").write_text(SESSION)
        with B.Daemon("corral-bench-git", extra_args=("--no-dns", "--git-credentials", str(creds))) as d:
            cmd = [B.CORRAL, "run", "--allow-localhost-port", str(port), "--allow-write", str(work),
                   "--git-remote", url, "--", sys.executable, str(root / "session.py"), url, auth,
                   str(work), str(args.rounds), ""]
            p = subprocess.Popen(cmd, env=dict(d.env, HOME="/root", GIT_AUTHOR_NAME="b",
                                                GIT_AUTHOR_EMAIL="b@x", GIT_COMMITTER_NAME="b",
                                                GIT_COMMITTER_EMAIL="b@x"),
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                 cwd=str(work))
            result = None
            n = 0
            for line in p.stdout:
                msg = json.loads(line)
                if "cloned" in msg:
                    add_commit(repos / "bench" / "repo.git", n)
                    n += 1
                    p.stdin.write("\n")
                    p.stdin.flush()
                elif "result" in msg:
                    result = msg["result"]
            rc = p.wait(60)
            shutil.rmtree(f"/var/cache/corral/git-mirrors/{d.instance}", ignore_errors=True)
            if result is None:
                print(f"bench_git: the session failed (exit {rc})", file=sys.stderr)
                return 1
    finally:
        up.kill()
        up.wait()
        shutil.rmtree(root, ignore_errors=True)
    med = {op: {w: B.median(v) for w, v in ways.items()} for op, ways in result.items()}
    rows = []
    print(f"git through the gateway vs direct, {args.files} files, median of {args.rounds} rounds")
    print(f"{'op':8} {'direct ms':>10} {'gateway ms':>11} {'ratio':>7} {'added ms':>9}")
    for op in ("clone", "fetch", "push"):
        dm, gm = med[op]["direct"] * 1000, med[op]["gateway"] * 1000
        print(f"{op:8} {dm:10.1f} {gm:11.1f} {gm / dm:7.2f} {gm - dm:9.1f}")
        rows.append(B.row("git", f"{op} gateway/direct", round(gm / dm, 2), "x",
                          note=f"{dm:.0f} ms direct, {gm:.0f} ms gateway"))
    rows.append(B.row("git", "push latency added", round((med["push"]["gateway"] -
                                                         med["push"]["direct"]) * 1000, 1), "ms"))
    results = {"files": args.files, "rounds": args.rounds, "raw": result, "median_s": med,
               "summary": rows, "load": os.getloadavg()}
    out = B.BENCH / "results" / "git.json"
    out.write_text(json.dumps(results, indent=2))
    B.write_results(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
