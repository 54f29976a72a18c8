#!/usr/bin/env python3
"""bench_run: what `corral run` adds to starting a command.

1. hyperfine (-N, --warmup, --runs 30, --export-json) over, in one run:
     bare `true`; `corral run -- true` (default policy: the mandatory file
     protections -> Landlock, seccomp, caps drop); `--no-net`; `--profile offline`;
     `--profile agent` (needs the daemon's DNS resolver); `corral exec ID -- true`
     (the native launcher into a `corral session start` session); and the Python floor:
     `python -c pass`, `python -c "import corral.client.cli, corral.client.connection, corral.client.confine"`.
   Reports added milliseconds over bare `true` (goal < 15 ms).
2. Break-down of `corral run` step by step, measured inside forked children that
   do exactly what cmd_run does (policy from flags, Landlock decision, register_session
   round trip, confine.apply, report_confinement round trip), median of K.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as B  # noqa: E402

PY = str(B.BIN / "python")


def breakdown_child(argv: list[str], socket_path: str) -> dict:
    """Runs in a forked child: the real cli.main(argv) with the functions cmd_run calls
    wrapped in timers, and os.execvp replaced by "stop here". Follows cmd_run as it
    changes; whatever is not wrapped shows up as "other"."""
    import importlib
    from corral.client import cli, connection as cl
    t: dict[str, float] = {}

    def timed(label, fn):
        def w(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                lab = label(*a, **kw) if callable(label) else label
                t[lab] = t.get(lab, 0.0) + time.perf_counter() - t0
        return w

    cli.policy_from_args = timed("policy_from_args (flags, profiles)", cli.policy_from_args)
    cli.build_parser = timed("build_parser (imports logcli, policycli; argparse)", cli.build_parser)
    orig_init = cl.Client.__init__

    def init(self, path=socket_path, timeout=30.0):   # this daemon, whatever config.SOCKET says
        orig_init(self, path, timeout)
    cl.Client.__init__ = timed("connect to corrald", init)
    cl.Client.call = timed(lambda self, op, **kw: f"{op} round trip", cl.Client.call)
    for mod, fn, label in (("landlock", "file_policy_decision", "Landlock decision"),
                           ("mountguard", "apply", "mountguard.apply (mount namespace)"),
                           ("confine", "apply", "confine.apply (Landlock, seccomp, caps)")):
        try:
            m = importlib.import_module(f"corral.client.{mod}")
            setattr(m, fn, timed(label, getattr(m, fn)))
        except (ImportError, AttributeError):
            pass

    # mountguard.apply split into its parts, timed here (not in the implementation).
    # Labels starting with two spaces are parts of a step above: not summed into "other".
    try:
        from corral.client import mountguard as mg
        from corral.kernel import unixdiag
    except ImportError:
        mg = None
    if mg is not None:
        depth = [0]

        def part(label, fn):
            def w(*a, **kw):
                depth[0] += 1
                t0 = time.perf_counter()
                try:
                    return fn(*a, **kw)
                finally:
                    depth[0] -= 1
                    lab = "  mountguard: " + (label(*a, **kw) if callable(label) else label)
                    t[lab] = t.get(lab, 0.0) + time.perf_counter() - t0
            return w

        for fn, label in (("foreign_sockets", "sockets to mask: unix_diag dump + stat each (foreign_sockets)"),
                          ("plan", "plan/writable_roots/read_masks (policy -> mounts)"),
                          ("writable_roots", "plan/writable_roots/read_masks (policy -> mounts)"),
                          ("read_masks", "plan/writable_roots/read_masks (policy -> mounts)"),
                          ("ensure_refusal_file", "ensure_refusal_file"),
                          ("_enter_namespace", "unshare(CLONE_NEWNS)"),
                          ("_read_only_view", "read-only view (bind roots, mount_setattr, mountinfo)"),
                          ("_bind", "deny_write binds (pins, read-only)"),
                          ("_mask_read", "deny_read masks (empty tmpfs / refusal file)")):
            if hasattr(mg, fn):
                setattr(mg, fn, part(label, getattr(mg, fn)))
        if hasattr(unixdiag, "bound_sockets"):
            unixdiag.bound_sockets = part("    of which unix_diag dump (bound_sockets)", unixdiag.bound_sockets)
        if hasattr(mg, "_mount"):
            raw_mount = mg._mount

            def mount(src, dst, flags, what):
                if depth[0]:                    # inside a part above: counted there
                    return raw_mount(src, dst, flags, what)
                lab = "make / private" if what == "make / private" else "foreign socket masks (bind + remount ro)"
                return part(lab, raw_mount)(src, dst, flags, what)
            mg._mount = mount
        if hasattr(mg, "apply"):
            raw_apply = mg.apply

            def apply(*a, **kw):
                r = raw_apply(*a, **kw)
                t["# sockets masked"] = float(len(r.get("masked_sockets") or []))
                t["# deny_read paths hidden"] = float(len(r.get("hidden") or []))
                t["# writable roots"] = float(len(r.get("writable") or []))
                return r
            mg.apply = apply

    class Exec(BaseException):
        pass

    def fake_exec(*a):
        raise Exec()
    os.execvp = fake_exec
    t0 = time.perf_counter()
    try:
        cli.main(argv)
    except Exec:
        pass
    except SystemExit as e:
        raise RuntimeError(f"corral run exited {e.code} before exec") from None
    total = time.perf_counter() - t0
    t["other"] = total - sum(v for k, v in t.items() if not k.startswith((" ", "#")))
    if "mountguard.apply (mount namespace)" in t:
        mparts = [k for k in t if k.startswith("  mountguard: ") and not k.startswith("  mountguard:   ")]
        t["  mountguard: rest (dicts, chdir, checks)"] = (t["mountguard.apply (mount namespace)"]
                                                       - sum(t[k] for k in mparts))
    t["total in-process (excl. interpreter start + imports)"] = total
    return t


def run_breakdown(d: B.Daemon, argv: list[str], k: int) -> dict:
    """Fork k children (each becomes a session and is confined), collect their timings."""
    # The children are `corral run` against THIS daemon: corral.config reads CORRAL_* at
    # import time (the run dir holds the refusal file mountguard binds over foreign
    # sockets, and the daemon's socket is the one it must not mask).
    import importlib
    os.environ.update(d.corral_env())
    importlib.reload(importlib.import_module("corral.config"))
    # Import in the parent so the children measure the steps, not the imports.
    for m in ("cli", "connection", "confine", "landlock", "mountguard"):   # not logcli/policycli:
        # build_parser imports those on every `corral run`, so that stays in the numbers
        try:
            importlib.import_module(f"corral.client.{m}")
        except ImportError:
            pass
    samples: list[dict] = []
    err = None
    for _ in range(k):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            os.dup2(w, 1)          # confine.apply closes every fd but 0, 1, 2
            try:
                res = breakdown_child(argv, str(d.socket))
                os.write(1, json.dumps({"ok": res}).encode())
            except BaseException as e:  # noqa: BLE001
                os.write(1, json.dumps({"error": f"{type(e).__name__}: {e}"}).encode())
            os._exit(0)
        os.close(w)
        data = b""
        while chunk := os.read(r, 65536):
            data += chunk
        os.close(r)
        os.waitpid(pid, 0)
        try:
            msg = json.loads(data)
        except ValueError:
            msg = {"error": f"child printed {data[:200]!r}"}
        if "error" in msg:
            err = msg["error"]
            break
        samples.append(msg["ok"])
    if not samples:
        return {"error": err}
    keys = list(dict.fromkeys(k2 for smp in samples for k2 in smp))
    return {k2: B.median([smp.get(k2, 0.0) for smp in samples]) for k2 in keys}


def cgroup_move_cost(n: int = 12) -> dict:
    """Kernel cost of what register_session does to the caller: write a pid into a new
    cgroup's cgroup.procs. A migration takes cgroup_threadgroup_rwsem for writing, whose
    rcu_sync pays a full RCU grace period unless another migration happened just before;
    so: after 0.3 s idle vs back to back. Uses its own top-level probe cgroup."""
    import subprocess
    from corral.kernel import cgroups
    root = cgroups.cgroup2_mount() / f"corral-benchprobe-{os.getpid()}"
    root.mkdir()
    out = {}
    try:
        for label, gap in (("after 0.3 s idle", 0.3), ("back to back", 0.0)):
            ts = []
            for i in range(n):
                p = subprocess.Popen(["sleep", "30"])
                d = root / f"c{i}"
                d.mkdir()
                time.sleep(gap)
                t0 = time.perf_counter()
                with open(d / "cgroup.procs", "w") as f:
                    f.write(str(p.pid))
                ts.append(time.perf_counter() - t0)
                p.kill()
                p.wait()
            for i in range(n):
                (root / f"c{i}").rmdir()
            out[label] = B.median(ts)
    finally:
        for d in root.iterdir() if root.exists() else []:
            if d.is_dir():
                try:
                    d.rmdir()
                except OSError:
                    pass
        root.rmdir()
    return out


def import_times(env) -> dict:
    """Cumulative import time of each top-level module `corral run` loads (site included)."""
    import subprocess
    p = subprocess.run([PY, "-X", "importtime", "-c",
                        "import corral.client.cli, corral.client.connection, corral.client.confine, corral.client.landlock; "
                        "corral.client.cli.build_parser()"],
                       env=env, capture_output=True, text=True)
    out = {}
    for line in p.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cum, name = line.split("|")
        if not cum.strip().isdigit():
            continue
        if name.startswith(" ") and not name.startswith("   "):   # depth 0 ("| name")
            n = name.strip()
            if n in ("site", "certifi") or n.startswith("corral") or float(cum) > 5000:
                out[n] = int(cum) / 1000
        elif name.strip() == "certifi":
            out["certifi (via a site .pth of this machine)"] = int(cum) / 1000
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("-k", type=int, default=20, help="break-down samples (default 20)")
    args = ap.parse_args()
    results: dict = {"errors": {}}
    summary = []
    true = "/bin/true" if os.path.exists("/bin/true") else "true"
    with B.daemon("corral-bench-run") as d:
        env = d.env
        cmds = {
            "bare true": [true],
            "python -S -c pass": [PY, "-S", "-c", "pass"],
            "python -c pass": [PY, "-c", "pass"],
            "python import corral": [PY, "-c", "import corral.client.cli, corral.client.connection, corral.client.confine, "
                                     "corral.client.landlock; corral.client.cli.build_parser()"],
            "corral run -- true": [B.CORRAL, "run", "--", true],
            "corral run --no-net -- true": [B.CORRAL, "run", "--no-net", "--", true],
            "corral run --profile offline -- true": [B.CORRAL, "run", "--profile", "offline", "--", true],
            "corral run --profile agent -- true": [B.CORRAL, "run", "--profile", "agent", "--", true],
        }
        import subprocess
        # A command in an existing session (issue 15; bench_exec.py has the rest).
        sp = subprocess.run([str(B.BIN / "corral-py"), "session", "start", "-q"], env=env,
                            capture_output=True, text=True, timeout=120)
        exec_sid = sp.stdout.strip() if sp.returncode == 0 else None
        if exec_sid:
            cmds["corral exec ID -- true"] = [B.CORRAL, "exec", exec_sid, "--", true]
        else:
            results["errors"]["corral exec ID -- true"] = f"session start: {sp.stderr.strip()[-300:]}"
        for name in list(cmds):
            p = subprocess.run(cmds[name], env=env, capture_output=True, text=True, timeout=60)
            if p.returncode != 0:
                why = f"exit {p.returncode}: {p.stderr.strip()[-300:]}"
                results["errors"][name] = why
                print(f"[bench_run] {name}: NOT MEASURED: {why}", file=sys.stderr)
                del cmds[name]
        hf = B.hyperfine(cmds, runs=args.runs, warmup=args.warmup, env=env)
        results["hyperfine"] = hf
        base = hf["bare true"]["mean"]
        print(f"\nhyperfine -N --warmup {args.warmup} --runs {args.runs} (mean ± stddev; added = mean - bare)")
        print(f"{'command':40} {'mean ms':>9} {'± ms':>7} {'median':>8} {'added ms':>9}")
        for name, r in hf.items():
            added = (r["mean"] - base) * 1000
            print(f"{name:40} {r['mean'] * 1000:9.2f} {r['stddev'] * 1000:7.2f} "
                  f"{r['median'] * 1000:8.2f} {added:9.2f}")
            if name.startswith(("corral run", "corral exec")):
                summary.append(B.row("run", f"{name}: added", round(added, 2), "ms",
                                     "< 5" if "exec" in name else "< 15",
                                     f"{r['mean'] * 1000:.1f} ms vs bare {base * 1000:.2f} ms"))
            elif name != "bare true":
                summary.append(B.row("run", f"{name}: added", round(added, 2), "ms", "",
                                     "floor: Python start-up" if "import" not in name else
                                     "floor: start-up + the CLI's imports + build_parser"))
        for name, why in results["errors"].items():
            summary.append(B.row("run", f"{name}: added", None, "ms", "< 15", f"NOT MEASURED: {why[:160]}"))

        results["breakdown"] = {}
        for label, argv in (("corral run -- true", ["run", "--", true]),
                            ("corral run --profile offline -- true", ["run", "--profile", "offline", "--", true]),
                            ("corral run --profile agent -- true", ["run", "--profile", "agent", "--", true])):
            bd = run_breakdown(d, argv, args.k)
            results["breakdown"][label] = bd
            print(f"\nBreak-down of `{label}` in-process (median of {args.k} forked children, ms):")
            if "error" in bd:
                print(f"  failed: {bd['error']}")
                continue
            main_steps = [k2 for k2 in bd if not k2.startswith((" ", "#"))]
            order = []
            for k2 in main_steps:
                order.append(k2)
                if k2.startswith("mountguard.apply"):
                    parts = [k3 for k3 in bd if k3.startswith("  ") and not k3.startswith("  mountguard:   ")]
                    for k3 in parts:
                        order.append(k3)
                        if "foreign_sockets" in k3:    # its own part right below it
                            order += [k4 for k4 in bd if k4.startswith("  mountguard:   ")]
            order += [k2 for k2 in bd if k2.startswith("#")]
            for step in order:
                v = bd[step]
                if step.startswith("#"):
                    print(f"  {step:65} {v:8.0f}")
                    continue
                print(f"  {step:65} {v * 1000:8.2f}")
                if label == "corral run -- true":
                    summary.append(B.row("run", f"  in corral run -- true: {step}", round(v * 1000, 2), "ms",
                                         "", f"median of {args.k} forked children"))
        if "python -c pass" in hf and "python import corral" in hf:
            imp = (hf["python import corral"]["mean"] - hf["python -c pass"]["mean"]) * 1000
            print(f"\n  Python start-up (python -c pass - bare): {(hf['python -c pass']['mean'] - base) * 1000:.2f} ms;"
                  f" importing corral.client.cli/client/confine: {imp:.2f} ms")
        try:
            mv = cgroup_move_cost()
            results["cgroup_move_ms"] = {k: v * 1000 for k, v in mv.items()}
            print("\nKernel: moving a process into a new cgroup (part of register_session), median ms:")
            for k, v in mv.items():
                print(f"  {k:55} {v * 1000:8.2f}")
                summary.append(B.row("run", f"  kernel: pid into new cgroup, {k}", round(v * 1000, 2), "ms", "",
                                     "cgroup_threadgroup_rwsem write: an RCU grace period unless "
                                     "migrations are back to back"))
        except OSError as e:
            results["errors"]["cgroup move probe"] = str(e)
        imp = import_times(env)
        results["import_times_ms"] = imp
        print("\nTop-level import cost of the CLI (python -X importtime, cumulative ms, one run):")
        for mod, ms in imp.items():
            print(f"  {mod:55} {ms:8.2f}")
        if exec_sid:
            subprocess.run([str(B.BIN / "corral-py"), "session", "stop", exec_sid], env=env,
                           capture_output=True, timeout=60)
        n = d.wait_no_sessions(timeout=30)
        if n:
            print(f"[bench_run] warning: {n} session(s) still live after the runs", file=sys.stderr)
    results["summary"] = summary
    B.write_results(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
