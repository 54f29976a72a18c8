#!/usr/bin/env python3
"""Benchmark: cost of the BPF LSM file policy on open/close.

Measures an open(O_RDONLY)/close loop on a shallow path and on a 14-component
path: before any corral program is attached (baseline), outside any session
with the programs attached, and inside a session with 10 and 10,000 rules.
Needs root and a kernel with BPF LSM (run it in the VM tier:
`tests/vm/run_vm.py --bench-only`). --keep-pins leaves the programs attached
(the VM tier then reuses them for pytest instead of compiling again). Uses a tiny C loop when a C compiler is
available (python's own overhead otherwise hides the hook cost).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "daemon"))

from corral.backends import filelsm  # noqa: E402

N = int(os.environ.get("BENCH_N", "20000"))
SKIPPED = 77        # run_all.py: the host lacks what this bench needs (the line above says what)
REPEAT = int(os.environ.get("BENCH_REPEAT", "5"))

C_LOOP = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
    long n = atol(argv[2]);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) {
        int fd = open(argv[1], O_RDONLY);
        if (fd < 0) { perror("open"); return 1; }
        close(fd);
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%.1f\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n);
    return 0;
}
"""

PY_LOOP = ("import os,sys,time\nn=int(sys.argv[2]);p=sys.argv[1];t=time.perf_counter_ns()\n"
           "for i in range(n): os.close(os.open(p, os.O_RDONLY))\n"
           "print((time.perf_counter_ns()-t)/n)")


def build_loop(tmp: Path) -> list[str]:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc:
        src = tmp / "loop.c"
        src.write_text(C_LOOP)
        exe = tmp / "loop"
        if subprocess.run([cc, "-O2", "-o", str(exe), str(src)], capture_output=True).returncode == 0:
            return [str(exe)]
    return [sys.executable, "-S", "-c", PY_LOOP]


def measure(loop, path, cg: Path | None) -> float:
    def join():
        if cg is not None:
            with open(cg / "cgroup.procs", "w") as fh:
                fh.write(str(os.getpid()))
    best = None
    for _ in range(REPEAT):
        out = subprocess.run(loop + [str(path), str(N)], preexec_fn=join, capture_output=True,
                             text=True, check=True).stdout
        v = float(out.strip())
        best = v if best is None else min(best, v)
    return best


def main():
    if os.geteuid() != 0:
        sys.exit("bench_file_lsm: needs root")
    ok, why = filelsm.probe()
    if not ok:
        # Not a failure of corral: this host's kernel has no BPF LSM (run_all.py
        # reports it as skipped; --vm runs it in the VM tier).
        print(f"SKIPPED: this kernel cannot load BPF LSM programs: {why}", flush=True)
        sys.exit(SKIPPED)
    tmp = Path(tempfile.mkdtemp(prefix="corral-bench-"))
    loop = build_loop(tmp)
    shallow = tmp / "f"
    shallow.write_text("x")
    deep_dir = tmp.joinpath(*[f"c{i}" for i in range(14 - len(tmp.parts[1:]) - 1)])
    deep_dir.mkdir(parents=True)
    deep = deep_dir / "f"
    deep.write_text("x")
    assert len(deep.parts) - 1 == 14, deep
    root = filelsm.cgroup2_mount()
    res = {"loop": "c" if loop[0].endswith("loop") else "python", "n": N,
           "shallow_path": str(shallow), "deep_path": str(deep), "ns_per_open": {}}
    ns = res["ns_per_open"]
    ns["baseline"] = {"shallow": measure(loop, shallow, None), "deep": measure(loop, deep, None)}
    filelsm.unpin_all()
    t = time.time()
    lsm = filelsm.FileLsm()
    res["load_seconds"] = round(time.time() - t, 1)
    ns["outside_session"] = {"shallow": measure(loop, shallow, None), "deep": measure(loop, deep, None)}
    cg = root / f"corral-bench-{os.getpid()}"
    cg.mkdir()
    cgid = os.stat(cg).st_ino
    try:
        for nrules in (10, 10_000):
            rules = [str(tmp / "rules" / f"r{i}") for i in range(nrules - 2)]
            pol = {"deny_read": rules[: len(rules) // 2] + [str(tmp / "rules")],
                   "allow_write": rules[len(rules) // 2:] + ["/dev/null"]}
            t = time.time()
            lsm.update_session(cgid, pol)
            res[f"install_seconds_{nrules}"] = round(time.time() - t, 2)
            ns[f"session_{nrules}_rules"] = {"shallow": measure(loop, shallow, cg),
                                             "deep": measure(loop, deep, cg)}
        lsm.remove_session(cgid)
    finally:
        cg.rmdir()
        lsm.close()
        if "--keep-pins" not in sys.argv:
            filelsm.unpin_all()
        shutil.rmtree(tmp, ignore_errors=True)
    base = ns["baseline"]
    res["ratio_vs_baseline"] = {k: {p: round(v[p] / base[p], 2) for p in v} for k, v in ns.items()}
    print("BENCH " + json.dumps(res))
    print(f"{'config':<22}{'shallow ns':>12}{'deep(14) ns':>13}{'x base sh':>11}{'x base dp':>11}")
    for k, v in ns.items():
        r = res["ratio_vs_baseline"][k]
        print(f"{k:<22}{v['shallow']:>12.0f}{v['deep']:>13.0f}{r['shallow']:>11.2f}{r['deep']:>11.2f}")


if __name__ == "__main__":
    main()
