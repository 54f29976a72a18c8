"""Shared fixtures: a private corrald instance per test session.

The instance has its own cgroup, pins, socket and log (CORRAL_INSTANCE), so the
tests never touch a corrald the developer is running."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _require_root():
    if os.geteuid() != 0:
        pytest.fail("corral's integration tests need root (they load BPF and manage cgroups)")


class Daemon:
    def __init__(self, instance: str, tmp: Path, extra_args=(), extra_env=None):
        self.instance = instance
        self.tmp = tmp
        self.env = dict(os.environ)
        self.env.update({
            "CORRAL_INSTANCE": instance,
            "CORRAL_RUN_DIR": str(tmp / "run"),
            "CORRAL_LOG_DIR": str(tmp / "log"),
            "PYTHONUNBUFFERED": "1",
        })
        self.env.update(extra_env or {})
        self.socket = tmp / "run.sock"
        self.log_dir = tmp / "log"
        self.extra_args = list(extra_args)
        self.proc = None
        self.stderr_path = tmp / "corrald.stderr"

    def start(self, timeout: float = 120.0):
        self.stderr = open(self.stderr_path, "ab")
        offset = self.stderr.tell()
        self.proc = subprocess.Popen([str(BIN / "corrald"), "-v", *self.extra_args], env=self.env,
                                     stdout=self.stderr, stderr=self.stderr)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"corrald exited {self.proc.returncode}:\n{self.stderr_text()}")
            if self.socket.exists() and b"listening on" in self.stderr_path.read_bytes()[offset:]:
                return self
            time.sleep(0.05)
        raise RuntimeError(f"corrald did not become ready:\n{self.stderr_text()}")

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def corral(self, *args, input=None, timeout=60, check=False, env=None, **kw):
        e = dict(self.env)
        e.update(env or {})
        p = subprocess.run([str(BIN / "corral"), *args], env=e, input=input, capture_output=True,
                           text=True, timeout=timeout, **kw)
        if check and p.returncode != 0:
            raise AssertionError(f"corral {args} -> {p.returncode}\n{p.stdout}\n{p.stderr}")
        return p

    def client(self):
        from corral.client.connection import Client
        return Client(self.socket)

    def records(self):
        from corral.server.eventlog import read_records
        return list(read_records(self.log_dir))

    def wait_record(self, pred, timeout=5.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for r in self.records():
                if pred(r):
                    return r
            time.sleep(0.05)
        raise AssertionError("no matching audit record; last records:\n" +
                             "\n".join(map(str, self.records()[-10:])))

    def cleanup(self):
        self.stop()
        # End anything a failed test left behind.
        from corral.kernel import cgroups
        root = cgroups.cgroup2_mount() / self.instance
        if root.is_dir():
            for d in root.iterdir():
                if d.is_dir():
                    cgroups.kill(d)
                    try:
                        cgroups.remove(d)
                    except Exception:
                        pass
            try:
                root.rmdir()
            except OSError:
                pass
        shutil.rmtree(f"/sys/fs/bpf/{self.instance}", ignore_errors=True)


def make_daemon(name: str, extra_args=(), extra_env=None) -> Daemon:
    _require_root()
    tmp = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    tmp.chmod(0o755)        # unprivileged clients must reach the socket, as under /run
    return Daemon(f"{name}-{os.getpid()}", tmp, extra_args, extra_env)


@pytest.fixture(scope="session")
def daemon():
    d = make_daemon("corral-test", extra_args=["--no-dns"])
    d.start()
    yield d
    d.cleanup()
