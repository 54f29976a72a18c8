#!/usr/bin/env python3
"""bench_filepolicy: the file policy as `corral run` installs it (issue 12).

bench_landlock.py times corral's Landlock ruleset on its own, built from a fixed
policy. Since the session mount view (client/mountguard.py) hides existing
deny_read paths and makes existing deny_write paths read-only mounts, Landlock
gets a smaller policy than the session's; what an agent pays is Landlock *and*
the mount view. This bench measures both as `corral run` sets them up:

* Landlock rule count: `corral run -v` prints the confinement report
  (landlock_rules, hidden_paths, masked_sockets, read_only_view...), for the
  default policy and `--profile agent`;
* open(O_RDONLY)+close of a 3-component and a 14-component path under /tmp
  (bench/c/open_loop.c: N per repetition, REPS repetitions, thread CPU time,
  best and median; the same shape as bench_landlock.py), bare vs inside
  `corral run` with each policy; conditions interleaved over R rounds.

Optionally for other trees of corral (an older commit) in the same run, each
with a private corrald of its own code (PYTHONPATH=TREE/daemon,
CORRAL_BPF_DIR=TREE/bpf) and `corral` started as `python -S -c` with TREE/daemon
first on sys.path (the venv's launcher names /work/main/daemon):

    .venv/bin/python bench/bench_filepolicy.py                       # this tree
    .venv/bin/python bench/bench_filepolicy.py --before 65b2ceb~1    # + a worktree of that commit
    .venv/bin/python bench/bench_filepolicy.py --tree old=/path/to/checkout

`--before REV` adds a `git worktree` of REV under /tmp, copies the built native
extension into it (daemon/corral/_native.abi3.so; refused if native/ differs)
and removes the worktree at the end. `--bench-landlock` also runs
bench_landlock.py once per tree (its fixed-policy ruleset).
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as B  # noqa: E402

PY = str(B.BIN / "python")
POLICIES = {"default": [], "agent": ["--profile", "agent"]}


def launcher(tree: Path) -> list[str]:
    """argv prefix of `corral` running TREE's client code (the venv's launcher,
    with TREE/daemon in place of this checkout's daemon/ on sys.path)."""
    paths = None
    with contextlib.suppress(OSError, ValueError, SyntaxError):
        m = re.search(r"sys\.path\[1:1\] = (\[.*\])", Path(B.CORRAL).read_text())
        if m:
            paths = ast.literal_eval(m.group(1))
    if paths is None:
        import site
        paths = [str(B.REPO / "daemon"), *site.getsitepackages(), "/usr/lib/python3/dist-packages"]
    here = str(B.REPO / "daemon")
    paths = [str(tree / "daemon") if p == here else p for p in paths]
    if str(tree / "daemon") not in paths:
        paths.insert(0, str(tree / "daemon"))
    code = (f"import sys; sys.path[1:1] = {paths!r}; sys.argv[0] = 'corral'; "
            "from corral.client.cli import main; sys.exit(main())")
    return [PY, "-S", "-c", code]


def code_of(tree: Path, env: dict) -> str:
    """Where `import corral` comes from with the launcher's sys.path (a check)."""
    argv = launcher(tree)
    argv[-1] = argv[-1].split("; sys.argv[0]")[0] + "; import corral; print(corral.__file__)"
    return subprocess.run(argv, env=env, capture_output=True, text=True).stdout.strip()


def parse_verbose(stderr: str) -> dict | None:
    """The confinement report of `corral run -v`: 'corral: session ID: {enforcement} {verified}'."""
    for line in stderr.splitlines():
        m = re.match(r"corral: session (\S+): (.*)$", line)
        if not m:
            continue
        dec = json.JSONDecoder()
        text = m.group(2)
        try:
            enforcement, i = dec.raw_decode(text)
            verified, _ = dec.raw_decode(text[i:].lstrip())
        except ValueError:
            continue
        return {"session": m.group(1), "enforcement": enforcement, "report": verified}
    return None


def make_paths() -> tuple[Path, str, str]:
    d = Path(os.path.realpath(tempfile.mkdtemp(prefix="corral-bench-fp-")))
    d.chmod(0o755)
    shallow = d / "f"
    shallow.touch()
    comps = [c for c in str(d).split("/") if c]
    deep_dir = d.joinpath(*[f"d{i}" for i in range(13 - len(comps))])
    deep_dir.mkdir(parents=True)
    deep = deep_dir / "f"
    deep.touch()
    assert len([c for c in str(shallow).split("/") if c]) == 3, shallow
    assert len([c for c in str(deep).split("/") if c]) == 14, deep
    return d, str(shallow), str(deep)


@contextlib.contextmanager
def worktree(rev: str):
    """A detached git worktree of REV with this checkout's native extension copied in."""
    path = Path(f"/tmp/corral-before-{os.getpid()}")
    subprocess.run(["git", "-C", str(B.REPO), "worktree", "add", "--detach", str(path), rev],
                   check=True, capture_output=True, text=True)
    try:
        diff = subprocess.run(["git", "-C", str(B.REPO), "diff", "--stat", rev, "HEAD", "--",
                               "native", "setup.py", "daemon/corral/kernel/native.py"],
                              capture_output=True, text=True).stdout.strip()
        if diff:
            raise RuntimeError(f"the native extension differs between {rev} and HEAD; build it in "
                               f"the worktree instead:\n{diff}")
        so = B.REPO / "daemon" / "corral" / "_native.abi3.so"
        if so.exists():
            shutil.copy2(so, path / "daemon" / "corral" / so.name)
        commit = subprocess.run(["git", "-C", str(path), "log", "-1", "--format=%h %s"],
                                capture_output=True, text=True).stdout.strip()
        yield path, commit
    finally:
        subprocess.run(["git", "-C", str(B.REPO), "worktree", "remove", "--force", str(path)],
                       capture_output=True, text=True)
        subprocess.run(["git", "-C", str(B.REPO), "worktree", "prune"], capture_output=True)


def bench_landlock(tree: Path, n: int) -> dict:
    """bench_landlock.py (its fixed policy, Landlock only) with TREE's corral code."""
    env = dict(os.environ, PYTHONPATH=str(tree / "daemon"))
    env.pop("BENCH_JSON", None)
    p = subprocess.run([PY, str(B.BENCH / "bench_landlock.py"), str(n), "5"], env=env,
                       capture_output=True, text=True, timeout=300)
    out = {"exit": p.returncode}
    for line in p.stdout.splitlines():
        m = re.match(r"(shallow|deep)\s+\((\d+) components\):\s+([\d.]+) ns plain\s+([\d.]+) ns landlock"
                     r"\s+ratio ([\d.]+)", line)
        if m:
            out[m.group(1)] = {"components": int(m.group(2)), "plain_ns": float(m.group(3)),
                               "landlock_ns": float(m.group(4)), "ratio": float(m.group(5))}
    if p.returncode:
        out["stderr"] = p.stderr[-400:]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=20000, help="open+close per repetition (default 20000)")
    ap.add_argument("--reps", type=int, default=8, help="repetitions per process (default 8)")
    ap.add_argument("-r", "--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    ap.add_argument("--before", metavar="REV", help="also a git worktree of REV (e.g. 65b2ceb~1)")
    ap.add_argument("--tree", action="append", default=[], metavar="LABEL=PATH",
                    help="also another checkout of corral (repeatable)")
    ap.add_argument("--bench-landlock", action="store_true",
                    help="also run bench_landlock.py once per tree")
    args = ap.parse_args()

    prog = str(B.compile_c("open_loop"))
    d_paths, shallow, deep = make_paths()
    head = subprocess.run(["git", "-C", str(B.REPO), "log", "-1", "--format=%h %s"],
                          capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(B.REPO), "status", "--porcelain", "--", "daemon", "bpf"],
                           capture_output=True, text=True).stdout.strip()
    results: dict = {"n": args.n, "reps": args.reps, "rounds": args.rounds,
                     "paths": {"shallow": shallow, "deep": deep}, "trees": {}, "conditions": {},
                     "errors": {}}
    summary = []
    try:
        with contextlib.ExitStack() as stack:
            trees: dict[str, tuple[Path, str]] = {
                "current": (B.REPO, f"{head}" + (" + uncommitted changes in daemon/ or bpf/" if dirty else ""))}
            if args.before:
                wt, commit = stack.enter_context(worktree(args.before))
                trees[f"before ({args.before})"] = (wt, commit)
            for spec in args.tree:
                label, _, p = spec.partition("=")
                trees[label] = (Path(p).resolve(), str(Path(p).resolve()))
            daemons: dict[str, B.Daemon] = {}
            for label, (path, desc) in trees.items():
                if path == B.REPO:
                    d = stack.enter_context(B.daemon("corral-bench-fp"))
                else:
                    d = stack.enter_context(B.Daemon(
                        "corral-bench-fp-tree", extra_args=B.DNS_ARGS,
                        extra_env={"PYTHONPATH": str(path / "daemon"), "CORRAL_BPF_DIR": str(path / "bpf")}))
                daemons[label] = d
                where = code_of(path, d.env)
                results["trees"][label] = {"path": str(path), "commit": desc, "client_code": where}
                if not where.startswith(str(path / "daemon")):
                    raise RuntimeError(f"{label}: `corral` imports {where!r}, not {path}/daemon")
                # corrald logs the directories on its sys.path ("protected from session writes")
                prot = [ln for ln in d.stderr_text().splitlines() if "protected from session writes" in ln]
                results["trees"][label]["daemon_code_on_path"] = bool(prot) and str(path / "daemon") in prot[-1]
                if prot and not results["trees"][label]["daemon_code_on_path"]:
                    print(f"[bench_filepolicy] warning: {label}: corrald does not list {path}/daemon "
                          "among its code paths", file=sys.stderr)
                print(f"[bench_filepolicy] {label}: {desc} ({where})", flush=True)

            conds: dict[str, tuple[list[str], dict]] = {
                "bare": ([prog, str(args.n), str(args.reps), shallow, deep], dict(os.environ))}
            for label, (path, _) in trees.items():
                for pname, pargs in POLICIES.items():
                    conds[f"{label}: corral run {pname}"] = (
                        [*launcher(path), "run", "-v", *pargs, "--", prog, str(args.n), str(args.reps),
                         shallow, deep], daemons[label].env)

            samples: dict[str, list[tuple[float, float, float, float]]] = {n: [] for n in conds}
            reports: dict[str, dict] = {}

            def once(name, tries=1):
                argv, env = conds[name]
                for attempt in range(tries):
                    p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300,
                                       cwd=B.REPO)
                    nums = [float(x) for x in p.stdout.split()]
                    if not p.returncode and len(nums) == 4:
                        break
                    why = f"exit {p.returncode}: {p.stdout[-200:]!r} {p.stderr.strip()[-400:]}"
                    if attempt == tries - 1:
                        raise RuntimeError(why)
                    # A shared machine: another user's test can make `corral run` refuse to
                    # start for a moment (a hard-linked foreign socket): retry, counted.
                    results.setdefault("retries", []).append(f"{name}: {why}")
                    print(f"[bench_filepolicy] {name}: {why} (retrying)", file=sys.stderr)
                    time.sleep(1.0)
                if name != "bare" and name not in reports:
                    reports[name] = parse_verbose(p.stderr) or {"unparsed_stderr": p.stderr[-1500:]}
                return tuple(nums)

            for name in list(conds):                 # probe (and warm-up); drop what fails
                try:
                    once(name, tries=3)
                except RuntimeError as e:
                    results["errors"][name] = str(e)
                    print(f"[bench_filepolicy] {name}: NOT MEASURED: {e}", file=sys.stderr)
                    del conds[name]
                    del samples[name]
            t0 = time.monotonic()
            for _ in range(args.rounds):
                for name in conds:
                    samples[name].append(once(name, tries=3))
            results["seconds_measuring"] = round(time.monotonic() - t0, 1)
            results["load_average"] = open("/proc/loadavg").read().split()[:3]
            if args.bench_landlock:
                results["bench_landlock"] = {label: bench_landlock(path, args.n)
                                             for label, (path, _) in trees.items()}
    finally:
        shutil.rmtree(d_paths, ignore_errors=True)

    def agg(name):
        s = samples[name]
        return {"shallow_best_ns": min(x[0] for x in s), "shallow_median_ns": B.median([x[1] for x in s]),
                "deep_best_ns": min(x[2] for x in s), "deep_median_ns": B.median([x[3] for x in s]),
                "processes": len(s)}
    base = agg("bare")
    results["conditions"]["bare"] = base
    print(f"\nopen(O_RDONLY)+close, {args.n} per repetition x {args.reps} reps (thread CPU time), "
          f"{args.rounds} interleaved rounds; ratio vs bare: best-of-all (as bench_landlock) / median")
    print(f"  shallow {shallow} (3 components), deep {deep} (14)")
    print(f"{'condition':40} {'rules':>5} {'hidden':>6} {'3c ns':>7} {'ratio':>11} {'14c ns':>7} {'ratio':>11}")
    print(f"{'bare':40} {'':>5} {'':>6} {base['shallow_best_ns']:7.1f} {'':>11} {base['deep_best_ns']:7.1f}")
    for name in conds:
        if name == "bare":
            continue
        a = agg(name)
        rep = (reports.get(name) or {}).get("report") or {}
        rules = rep.get("landlock_rules")
        a.update({
            "landlock_rules": rules, "landlock": rep.get("landlock"),
            "hidden_paths": rep.get("hidden_paths"), "masked_sockets": len(rep.get("masked_sockets") or []),
            "read_only_view": rep.get("read_only_view"), "read_only_mounts": rep.get("read_only_mounts"),
            "ratio_shallow_best": a["shallow_best_ns"] / base["shallow_best_ns"],
            "ratio_shallow_median": a["shallow_median_ns"] / base["shallow_median_ns"],
            "ratio_deep_best": a["deep_best_ns"] / base["deep_best_ns"],
            "ratio_deep_median": a["deep_median_ns"] / base["deep_median_ns"],
            "verbose_report": reports.get(name)})
        results["conditions"][name] = a
        hidden = len(a["hidden_paths"]) if a["hidden_paths"] is not None else "-"
        print(f"{name:40} {rules if rules is not None else '?':>5} {hidden:>6} {a['shallow_best_ns']:7.1f} "
              f"{a['ratio_shallow_best']:5.2f}/{a['ratio_shallow_median']:5.2f} {a['deep_best_ns']:7.1f} "
              f"{a['ratio_deep_best']:5.2f}/{a['ratio_deep_median']:5.2f}")
        summary.append(B.row("filepolicy", f"{name}: Landlock rules", rules, "rules", "",
                             f"hidden by the mount view: {hidden}; read-only view: {a['read_only_view']}"))
        summary.append(B.row("filepolicy", f"{name}: open+close 3 components / bare",
                             round(a["ratio_shallow_best"], 3), "x", "",
                             f"best {a['shallow_best_ns']:.0f} vs {base['shallow_best_ns']:.0f} ns; "
                             f"median ratio {a['ratio_shallow_median']:.3f}"))
        summary.append(B.row("filepolicy", f"{name}: open+close 14 components / bare",
                             round(a["ratio_deep_best"], 3), "x", "",
                             f"best {a['deep_best_ns']:.0f} vs {base['deep_best_ns']:.0f} ns; "
                             f"median ratio {a['ratio_deep_median']:.3f}"))
    for label, t in results["trees"].items():
        print(f"  {label}: {t['commit']}")
    if results.get("bench_landlock"):
        print("\nbench_landlock.py (its fixed policy, Landlock only), per tree:")
        for label, r in results["bench_landlock"].items():
            s, dp = r.get("shallow", {}), r.get("deep", {})
            print(f"  {label:30} shallow ratio {s.get('ratio', float('nan')):.2f}  "
                  f"deep ratio {dp.get('ratio', float('nan')):.2f}  (exit {r['exit']})")
    for name, why in results["errors"].items():
        summary.append(B.row("filepolicy", name, None, "", "", f"NOT MEASURED: {why[:160]}"))
    results["summary"] = summary
    B.write_results(results)
    return 1 if any(n.startswith("current:") for n in results["errors"]) else 0


if __name__ == "__main__":
    sys.exit(main())
