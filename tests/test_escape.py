"""A session must not reach out through what it did not create, even as root.

End to end through `corral run` (the installed native launcher, and corral-py
itself) and through `corral exec` into a `corral
session start` session (native launcher and Python path; tests/entry.py):
ptrace, /proc/<pid>/mem, signals, inherited descriptors, leaving its cgroup,
bpffs, capabilities."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from corral.kernel import cgroups
from entry import ENTRIES, sandbox

ATTACKS = r"""
import ctypes, errno, json, os, sys
outside = int(sys.argv[1])
cg_root = sys.argv[2]
pin_dir = sys.argv[3]
libc = ctypes.CDLL(None, use_errno=True)
res = {}
def rec(name, fn):
    try:
        fn()
        res[name] = "allowed"
    except OSError as e:
        res[name] = errno.errorcode.get(e.errno, str(e.errno))
def ptrace_attach():
    if libc.ptrace(16, outside, None, None) != 0:      # PTRACE_ATTACH
        e = ctypes.get_errno(); raise OSError(e, os.strerror(e))
    libc.ptrace(17, outside, None, None)
rec("ptrace_outside", ptrace_attach)
rec("proc_mem_outside", lambda: open(f"/proc/{outside}/mem", "rb").read(1))
rec("proc_environ_outside", lambda: open(f"/proc/{outside}/environ", "rb").read(1))
rec("kill_outside", lambda: os.kill(outside, 0))
rec("kill_init", lambda: os.kill(1, 0))
def leave_cgroup():
    with open(os.path.join(cg_root, "cgroup.procs"), "w") as fh:
        fh.write(str(os.getpid()))
rec("leave_cgroup_to_root", leave_cgroup)
rec("mkdir_in_cgroupfs", lambda: os.mkdir(os.path.join(cg_root, "corral-escape")))
rec("open_bpffs_pin", lambda: open(os.path.join(pin_dir, "sessions"), "rb"))
rec("write_bpffs", lambda: open(os.path.join(pin_dir, "evil"), "w"))
res["fds"] = sorted(int(x) for x in os.listdir("/proc/self/fd"))
status = dict(l.split(":", 1) for l in open("/proc/self/status") if ":" in l)
res["CapEff"] = status["CapEff"].strip()
res["CapBnd"] = status["CapBnd"].strip()
res["NoNewPrivs"] = status["NoNewPrivs"].strip()
res["cgroup"] = open("/proc/self/cgroup").read().strip().splitlines()[-1]
print(json.dumps(res))
"""


def run_attacks(daemon, *flags, pass_fds=(), entry="run"):
    outside = subprocess.Popen(["sleep", "60"])
    try:
        cg_root = str(cgroups.cgroup2_mount())
        pin_dir = str(daemon.net_pin_dir())
        with sandbox(daemon, entry, *flags) as argv_for:
            p = subprocess.run(argv_for([sys.executable, "-c", ATTACKS, str(outside.pid), cg_root,
                                         pin_dir]),
                               env=daemon.env, capture_output=True, text=True, timeout=60,
                               pass_fds=pass_fds)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout), outside
    finally:
        outside.kill()
        outside.wait()


@pytest.mark.parametrize("entry", ENTRIES)
def test_root_agent_cannot_reach_outside_its_session(daemon, entry):
    assert os.geteuid() == 0, "this test is about an agent running as root"
    r, _ = run_attacks(daemon, "--no-net", entry=entry)
    for k in ("ptrace_outside", "proc_mem_outside", "proc_environ_outside", "kill_outside",
              "kill_init", "leave_cgroup_to_root", "mkdir_in_cgroupfs", "open_bpffs_pin",
              "write_bpffs"):
        assert r[k] != "allowed", (k, r)
    assert r["kill_outside"] == "EPERM"
    assert r["ptrace_outside"] == "EPERM"
    assert int(r["CapEff"], 16) == 0 and int(r["CapBnd"], 16) == 0, r
    assert r["NoNewPrivs"] == "1"
    assert f"/{daemon.instance}/" in r["cgroup"]


@pytest.mark.parametrize("entry", ENTRIES)
def test_inherited_descriptors_are_closed_before_exec(daemon, tmp_path, entry):
    secret = tmp_path / "secret"
    secret.write_text("inherited secret")
    fd = os.open(secret, os.O_RDONLY)            # no O_CLOEXEC games: passed on purpose
    r_pipe, w_pipe = os.pipe()
    try:
        r, _ = run_attacks(daemon, "--no-net", pass_fds=(fd, r_pipe, w_pipe), entry=entry)
    finally:
        os.close(fd)
        os.close(r_pipe)
        os.close(w_pipe)
    # 0-2 plus the directory fd listdir itself holds open while listing
    assert len([x for x in r["fds"] if x > 2]) <= 1, r["fds"]
    assert fd not in r["fds"] or fd == max(r["fds"]), r["fds"]


def test_keep_caps_is_explicit(daemon):
    """The control the default removes: with --keep-caps root keeps its capabilities."""
    r, _ = run_attacks(daemon, "--no-net", "--keep-caps")
    assert int(r["CapEff"], 16) != 0
    # ...and the kernel-level guards that do not depend on capabilities still hold
    assert r["ptrace_outside"] == "EPERM"
    assert r["kill_outside"] == "EPERM"
    assert r["leave_cgroup_to_root"] != "allowed"
