#!/usr/bin/env python3
"""Cost of corral's Landlock ruleset on path lookups.

A tiny C program (compiled now) times open(O_RDONLY)+close on a shallow path
and on a 14-component path (thread CPU time, best of many reps). It runs plain, and under a wrapper that installs
*only* corral's Landlock ruleset (landlock.plan/build_ruleset/restrict with a
realistic policy: deny_read of a secrets dir, allow_write of the bench dir,
the implicit protections). Landlock walks from the opened file up to the root
on every open, so the deep path is the interesting one.

    .venv/bin/python bench/bench_landlock.py [iterations] [rounds]
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

SRC = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t); return t.tv_sec * 1e9 + t.tv_nsec; }
int main(int argc, char **argv) {
    long n = atol(argv[1]);
    for (int p = 2; p < argc; p++) {
        double best = 1e18;
        for (int rep = 0; rep < 20; rep++) {
            double t0 = now();
            for (long i = 0; i < n; i++) { int fd = open(argv[p], O_RDONLY); if (fd < 0) { perror(argv[p]); return 1; } close(fd); }
            double t = (now() - t0) / n;
            if (t < best) best = t;
        }
        printf("%.1f\n", best);
    }
    return 0;
}
"""

WRAP = ("import json, os, sys\nfrom corral.client import landlock\nfrom corral.kernel import native\n"
        "pol = json.loads(sys.argv[1])\n"
        "native.check(native.load().lib.corral_set_no_new_privs(), 'nnp')\n"
        "landlock.apply(pol)\n"
        "os.execv(sys.argv[2], sys.argv[2:])\n")


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    d = os.path.realpath(tempfile.mkdtemp(prefix="corral-bench-ll-"))
    src, exe = os.path.join(d, "open.c"), os.path.join(d, "open")
    with open(src, "w") as f:
        f.write(SRC)
    subprocess.run(["gcc", "-O2", "-o", exe, src], check=True)
    shallow = os.path.join(d, "f")
    open(shallow, "w").close()
    # 14 components in total from /
    comps = [c for c in d.split("/") if c]
    deep_dir = os.path.join(d, *[f"d{i}" for i in range(13 - len(comps))])
    os.makedirs(deep_dir, exist_ok=True)
    deep = os.path.join(deep_dir, "f")
    open(deep, "w").close()
    assert len([c for c in deep.split("/") if c]) == 14, deep
    os.makedirs(os.path.join(d, "secrets"), exist_ok=True)
    policy = {"deny_read": [os.path.join(d, "secrets"), "/root/.ssh"], "allow_write": [d],
              "deny_write": [os.path.join(d, "secrets")]}

    def run(wrapped: bool):
        cmd = ([sys.executable, "-c", WRAP, json.dumps(policy)] if wrapped else []) + [exe, str(n), shallow, deep]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()
        return float(out[0]), float(out[1])

    plain, ll = [], []
    for _ in range(rounds):
        plain.append(run(False))
        ll.append(run(True))
    ps, pd = min(x[0] for x in plain), min(x[1] for x in plain)
    ls, ld = min(x[0] for x in ll), min(x[1] for x in ll)
    print(f"open+close, {n} iterations, best of {rounds} interleaved runs x 20 reps")
    print(f"shallow ({len([c for c in shallow.split('/') if c])} components): "
          f"{ps:7.1f} ns plain  {ls:7.1f} ns landlock  ratio {ls / ps:.2f}")
    print(f"deep    (14 components): {pd:7.1f} ns plain  {ld:7.1f} ns landlock  ratio {ld / pd:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
