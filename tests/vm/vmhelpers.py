"""Guest-side helpers and fixtures for the VM tier (run by tests/vm/run_vm.py inside a VM
booted with lsm=...,bpf). Sessions are plain cgroups under the cgroup2 root;
policy is installed with FileLsm directly (no daemon)."""
from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "daemon"))
sys.path.insert(0, str(REPO))

from corral.backends import filelsm  # noqa: E402

IN_VM = os.environ.get("CORRAL_VMTEST") == "1"
_counter = itertools.count()


def _require_env():
    if os.geteuid() != 0:
        pytest.skip("VM tier needs root")
    ok, why = filelsm.probe()
    if not ok:
        if IN_VM:
            pytest.fail(f"BPF LSM unavailable in the test VM: {why}")
        pytest.skip(why)


def cgroup_root() -> Path:
    root = filelsm.cgroup2_mount()
    if root is None:
        root = Path("/sys/fs/cgroup")
        root.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "cgroup2", "none", str(root)], check=True)
    return root


@pytest.fixture(scope="session")
def lsm():
    _require_env()
    os.environ.setdefault("CORRAL_CACHE_DIR", "/tmp/corral-cache")
    # reuses programs pinned earlier in this boot (bench), else compiles
    inst = filelsm.FileLsm()
    yield inst
    inst.close()


class Session:
    """A cgroup with a file policy; run() executes argv inside it."""

    def __init__(self, lsm: filelsm.FileLsm, policy: dict, name: str | None = None):
        self.lsm = lsm
        self.path = cgroup_root() / (name or f"corral-vmt-{os.getpid()}-{next(_counter)}")
        self.path.mkdir()
        self.cgid = os.stat(self.path).st_ino
        self.policy = policy
        lsm.add_session(self.cgid, policy)

    def join(self):
        with open(self.path / "cgroup.procs", "w") as fh:
            fh.write(str(os.getpid()))

    def run(self, argv, input=None, timeout=60, cwd=None):
        if isinstance(argv, str):
            argv = ["/bin/sh", "-c", argv]
        p = subprocess.run(argv, preexec_fn=self.join, capture_output=True, text=True,
                           input=input, timeout=timeout, cwd=cwd)
        return p.returncode, p.stdout, p.stderr

    def sh(self, script, **kw):
        return self.run(["/bin/sh", "-c", script], **kw)

    def py(self, code, **kw):
        return self.run([sys.executable, "-S", "-c", code], **kw)

    def popen(self, argv, **kw):
        return subprocess.Popen(argv, preexec_fn=self.join, **kw)

    def update(self, policy: dict):
        self.policy = policy
        self.lsm.update_session(self.cgid, policy)

    def close(self):
        try:
            self.lsm.remove_session(self.cgid)
        except Exception:
            pass
        # move any stragglers out, then remove the cgroup
        try:
            for pid in (self.path / "cgroup.procs").read_text().split():
                try:
                    os.kill(int(pid), 9)
                except OSError:
                    pass
        except OSError:
            pass
        for _ in range(50):
            try:
                self.path.rmdir()
                break
            except OSError:
                import time
                time.sleep(0.1)


@pytest.fixture
def session(lsm):
    made = []

    def make(policy, name=None):
        s = Session(lsm, policy, name)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


@pytest.fixture
def ws():
    """A fresh workspace directory (on the guest's /tmp)."""
    d = Path(tempfile.mkdtemp(prefix="corral-vmt-", dir=os.environ.get("CORRAL_VMTEST_TMP", "/tmp")))
    d = Path(os.path.realpath(d))
    yield d
    shutil.rmtree(d, ignore_errors=True)


# Every policy in the tests lets the shell write to /dev/null etc.
DEV_W = ["/dev/null", "/dev/zero", "/dev/full", "/dev/tty", "/dev/pts"]
