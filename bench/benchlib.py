"""Shared plumbing for the benchmarks in bench/: a private corrald instance,
result files, small timing helpers, and the C helpers compiled at bench time.

Conventions every bench script follows (run_all.py relies on them):
  * it runs standalone: `.venv/bin/python bench/bench_X.py`;
  * it prints a human-readable report on stdout;
  * if BENCH_JSON is set, it writes its results there as one JSON object with
    a "summary" list of rows {"bench", "metric", "value", "unit", "goal", "note"}
    (run_all.py prints those rows in its final table) plus anything else;
  * if BENCH_DAEMON_ENV is set (a JSON object of CORRAL_* variables), it uses
    that already running corrald instead of starting its own.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
VENV_BIN = REPO / ".venv" / "bin"
BIN = VENV_BIN if (VENV_BIN / "corrald").exists() else Path(sys.executable).parent
CORRAL = str(BIN / "corral")
CORRALD = str(BIN / "corrald")
BUILD = BENCH / "results" / "build"
C_DIR = BENCH / "c"


# -- the daemon -------------------------------------------------------------------
# One private-corrald harness for tests and benchmarks: tests/harness.py.
sys.path.insert(0, str(REPO / "tests"))
import harness  # noqa: E402


class Daemon(harness.Daemon):
    """A private corrald instance (tests/harness.py), or somebody else's running one
    (env: its CORRAL_* variables), which is then neither started nor stopped here."""

    def __init__(self, name: str = "corral-bench", extra_args=("--no-dns",), env: dict | None = None,
                 extra_env: dict | None = None):
        """extra_env: more variables for a private daemon and its clients (e.g.
        CORRAL_NO_UNIX_HOOKS=1, or PYTHONPATH/CORRAL_BPF_DIR of another tree)."""
        self.owned = env is None
        if env is not None:                     # somebody else's running instance
            run_dir = Path(env["CORRAL_RUN_DIR"])
            super().__init__(env["CORRAL_INSTANCE"], run_dir.parent, bin_dir=BIN)
            self.env = dict(os.environ)
            self.env.update(env)
            self.socket = Path(env.get("CORRAL_SOCKET") or run_dir.parent / (run_dir.name + ".sock"))
            self.log_dir = Path(env.get("CORRAL_LOG_DIR") or self.log_dir)
            self.pid = int(env.get("CORRAL_BENCH_PID", "0")) or None
            return
        super().__init__(f"{name}-{os.getpid()}", harness.new_tmp(name), extra_args, extra_env,
                         bin_dir=BIN)

    def corral_env(self) -> dict:
        """The CORRAL_* variables a child needs to talk to this instance."""
        out = {k: v for k, v in self.env.items() if k.startswith("CORRAL_")}
        if self.pid:
            out["CORRAL_BENCH_PID"] = str(self.pid)
        return out

    def start(self, timeout: float = 180.0) -> "Daemon":
        if not self.owned:
            return self
        if os.geteuid() != 0:
            raise RuntimeError("benchmarks need root: corrald loads BPF and manages cgroups")
        return super().start(timeout)

    def corral(self, *args, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("timeout", 120)
        return super().corral(*args, **kw)

    def wait_no_sessions(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        n = -1
        while time.monotonic() < deadline:
            with self.client() as c:
                n = len(c.call("list_sessions"))
            if n == 0:
                return 0
            time.sleep(0.1)
        return n

    def stop(self, sig=signal.SIGTERM) -> None:
        """Stop, then clean the instance's cgroup, pins and files (harness cleanup)."""
        if self.owned:
            self.cleanup(remove_tmp=True)

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()         # a daemon that failed to start leaves its cgroup and pins
            raise

    def __exit__(self, *exc):
        self.stop()


# The resolver runs (so profiles with domain rules, e.g. `agent`, can start) but
# its upstream is a closed loopback port: nothing in the benches resolves names.
DNS_ARGS = ("--dns-upstream", "127.0.0.1:9")


def daemon(name: str = "corral-bench", fresh: bool = False, extra_args=DNS_ARGS) -> Daemon:
    """The shared daemon run_all.py started (BENCH_DAEMON_ENV), or a new private one.
    Use as a context manager; a shared daemon is left running."""
    shared = os.environ.get("BENCH_DAEMON_ENV")
    if shared and not fresh:
        return Daemon(env=json.loads(shared))
    return Daemon(name, extra_args=extra_args)


def unix_hooks_supported() -> bool:
    """Does this kernel have cgroup connect_unix/sendmsg_unix (6.7+), so that a daemon
    with and one without them (CORRAL_NO_UNIX_HOOKS=1) differ?"""
    sys.path.insert(0, str(REPO / "daemon"))
    from corral.backends.net import unix_hooks_supported as supported
    return supported()


def no_unix_hooks_daemon(name: str = "corral-bench-nohooks") -> Daemon:
    """A private corrald whose net.c is compiled without CORRAL_UNIX_HOOKS
    (backends/net.py reads CORRAL_NO_UNIX_HOOKS): the same daemon minus the
    cgroup connect_unix/sendmsg_unix programs. Use as a context manager."""
    return Daemon(name, extra_args=("--no-dns",), extra_env={"CORRAL_NO_UNIX_HOOKS": "1"})


# -- results ------------------------------------------------------------------------
def row(bench: str, metric: str, value, unit: str = "", goal: str = "", note: str = "") -> dict:
    return {"bench": bench, "metric": metric, "value": value, "unit": unit, "goal": goal, "note": note}


def write_results(results: dict) -> None:
    out = os.environ.get("BENCH_JSON")
    if out:
        Path(out).write_text(json.dumps(results, indent=2, default=str))


# -- helpers -------------------------------------------------------------------------
def compile_c(name: str) -> Path:
    """Compile bench/c/<name>.c to bench/results/build/<name> with gcc -O2 (cached by mtime)."""
    src = C_DIR / f"{name}.c"
    out = BUILD / name
    BUILD.mkdir(parents=True, exist_ok=True)
    if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
        cc = shutil.which("gcc") or shutil.which("cc")
        if cc is None:
            raise RuntimeError("gcc not found (apt-get install gcc)")
        subprocess.run([cc, "-O2", "-Wall", "-o", str(out), str(src)], check=True)
    return out


def loop_result(out: str, prog: str, chunk: int) -> dict:
    """The `ok=N fail=M chunks=t1,t2,...` line the C loops (bench/c/*_loop.c) print:
    counts as ints, chunks as ns per call (each chunk's total / `chunk`)."""
    line = [ln for ln in out.splitlines() if ln.startswith("ok=")]
    if not line:
        raise RuntimeError(f"{prog} printed no result: {out[-300:]!r}")
    r = {}
    for kv in line[-1].split():
        k, _, v = kv.partition("=")
        r[k] = [int(x) / chunk for x in v.split(",") if x] if k == "chunks" else int(v)
    return r


def quantile(xs, q):
    """The q-quantile (0..1) of xs, nearest rank below; nan for none."""
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def fmt_ratio(r: float) -> str:
    return f"{r:.3f}x" if r == r else "n/a"


def which_or_none(name: str) -> str | None:
    return shutil.which(name)


def hyperfine(commands: dict[str, list[str] | str], runs: int = 30, warmup: int = 3,
              env: dict | None = None, cwd: str | None = None, shell_none: bool = True,
              extra: list[str] | None = None) -> dict[str, dict]:
    """Run hyperfine once over all commands; returns {name: {"mean","stddev","median","min",
    "max"} in seconds}. Commands are argv lists (joined for hyperfine -N) or strings."""
    import shlex
    hf = shutil.which("hyperfine")
    if hf is None:
        raise RuntimeError("hyperfine not found (apt-get install hyperfine)")
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tf:
        jpath = tf.name
    argv = [hf, "--style", "basic", "--warmup", str(warmup), "--runs", str(runs),
            "--export-json", jpath]
    if shell_none:
        argv.append("-N")
    argv += extra or []
    names = list(commands)
    for n in names:
        c = commands[n]
        argv += ["-n", n, c if isinstance(c, str) else shlex.join(c)]
    p = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"hyperfine failed ({p.returncode}):\n{p.stderr[-3000:]}")
    data = json.loads(Path(jpath).read_text())
    os.unlink(jpath)
    out = {}
    for n, r in zip(names, data["results"]):
        out[n] = {k: r[k] for k in ("mean", "stddev", "median", "min", "max")}
        out[n]["runs"] = len(r.get("times", []))
        out[n]["p90"] = quantile(r["times"], 0.9) if r.get("times") else r["max"]
    return out


def rss_kib(pid: int) -> dict:
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM", "Threads"):
                out[k] = int(v.split()[0])
    return out


# -- BPF program run-time statistics ------------------------------------------------
class BpfStats:
    """BPF_ENABLE_STATS(BPF_STATS_RUN_TIME): the kernel counts run_cnt/run_time_ns of
    every program while the returned fd is open (no global sysctl left behind)."""

    def __enter__(self):
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        attr = (ctypes.c_uint8 * 128)()          # union bpf_attr; enable_stats.type = 0
        fd = libc.syscall(321, 32, attr, 128)    # __NR_bpf (x86_64), BPF_ENABLE_STATS
        if fd < 0:
            raise OSError(ctypes.get_errno(), "BPF_ENABLE_STATS failed")
        self.fd = fd
        return self

    def __exit__(self, *exc):
        os.close(self.fd)


def corral_progs(instance: str) -> dict[str, int]:
    """{program name: id} of the corral programs attached at the instance's root cgroup."""
    from corral.kernel import cgroups
    root = cgroups.cgroup2_mount() / instance
    p = subprocess.run(["bpftool", "-j", "cgroup", "show", str(root)], capture_output=True, text=True)
    try:
        out = {e["name"]: e["id"] for e in json.loads(p.stdout or "[]")}
    except ValueError:
        out = {}
    # bpftool before 7.3 does not list the attach types it does not know
    # (cgroup_unix_connect/sendmsg, 6.7+): take those from the pinned links.
    for link in Path(f"/sys/fs/bpf/{instance}").glob("net-*/link_*"):
        q = subprocess.run(["bpftool", "-j", "link", "show", "pinned", str(link)],
                           capture_output=True, text=True)
        try:
            pid = json.loads(q.stdout)["prog_id"]
            name = json.loads(subprocess.run(["bpftool", "-j", "prog", "show", "id", str(pid)],
                                             capture_output=True, text=True).stdout)["name"]
        except (ValueError, KeyError):
            continue
        out.setdefault(name, pid)
    return out


def prog_stats(ids: dict[str, int]) -> dict[str, tuple[int, int]]:
    """{name: (run_cnt, run_time_ns)}"""
    out = {}
    for name, pid in ids.items():
        p = subprocess.run(["bpftool", "-j", "prog", "show", "id", str(pid)], capture_output=True, text=True)
        try:
            j = json.loads(p.stdout)
        except ValueError:
            continue
        out[name] = (int(j.get("run_cnt", 0)), int(j.get("run_time_ns", 0)))
    return out


# -- a process in a session without `corral run` ----------------------------------
# `python bench/benchlib.py in-session POLICY_JSON CMD...` registers a session
# for itself over the client library (the daemon moves it into the session
# cgroup: BPF network/file enforcement applies) and execs CMD. No seccomp,
# no capability drop, no Landlock: it isolates the kernel-side cost from
# what `corral run` adds in the exec path.
def in_session_argv(policy: dict, cmd: list[str]) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "in-session", json.dumps(policy), *cmd]


def _in_session_main(argv: list[str]) -> int:
    sys.path.insert(0, str(REPO / "daemon"))
    from corral.client.connection import Client
    policy = json.loads(argv[0])
    with Client() as c:
        c.call("register_session", policy=policy)
    os.execvp(argv[1], argv[1:])


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "in-session":
        sys.exit(_in_session_main(sys.argv[2:]))
    print("usage: benchlib.py in-session POLICY_JSON CMD...", file=sys.stderr)
    sys.exit(2)


def interleaved(commands: dict[str, list[str]], rounds: int = 20, warmup: int = 2,
                env: dict | None = None, cwd: str | None = None,
                ok_codes: tuple[int, ...] = (0,)) -> dict[str, dict]:
    """Wall time of each command, the commands taking turns (round-robin) so a load change
    on a shared machine hits them all alike; {name: {"median","mean","min","max","runs"}}
    in seconds. Includes the fork+exec of the harness (~1 ms, the same for every command)."""
    samples: dict[str, list[float]] = {n: [] for n in commands}
    for r in range(warmup + rounds):
        for name, argv in commands.items():
            t0 = time.perf_counter()
            p = subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
            dt_ = time.perf_counter() - t0
            if p.returncode not in ok_codes:
                raise RuntimeError(f"{name}: exit {p.returncode} in round {r}")
            if r >= warmup:
                samples[name].append(dt_)
    return {n: {"median": statistics.median(v), "mean": statistics.fmean(v), "min": min(v),
                "max": max(v), "runs": len(v)} for n, v in samples.items()}
