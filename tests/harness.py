"""A private corrald instance, for the tests (tests/conftest.py) and the
benchmarks (bench/benchlib.py), and the raw frames of its socket protocol.

The instance has its own cgroup, pins, socket and log (CORRAL_INSTANCE), so a
test or a benchmark never touches a corrald the developer is running. Only the
standard library is imported at module level: the unit tier imports nothing of
this, and bench/ imports it through sys.path."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The corrald/corral next to the running interpreter: the project's venv.
BIN = Path(sys.executable).parent
# The installed `corral` is the native launcher (native/launcher.c: serves `corral
# exec`, hands everything else to the Python CLI); corral-py is that Python CLI.
CORRAL = BIN / "corral"
CORRAL_PY = BIN / "corral-py"


class Daemon:
    """One private corrald: start it, talk to it, stop it, remove what it left."""

    def __init__(self, instance: str, tmp: Path, extra_args=(), extra_env=None,
                 bin_dir: Path = BIN):
        self.instance = instance
        self.tmp = tmp
        self.bin_dir = Path(bin_dir)
        self.env = dict(os.environ)
        self.env.update({
            "CORRAL_INSTANCE": instance,
            "CORRAL_RUN_DIR": str(tmp / "run"),
            "CORRAL_LOG_DIR": str(tmp / "log"),
            # corral.toml, policies.d and the checkpoint key: never the host's /etc/corral
            "CORRAL_CONFIG_DIR": str(tmp / "etc"),
            "PYTHONUNBUFFERED": "1",
        })
        self.env.update(extra_env or {})
        self.socket = tmp / "run.sock"
        self.log_dir = tmp / "log"
        self.extra_args = list(extra_args)
        self.proc = None
        self.pid = None
        self.start_seconds = None
        self.stderr_path = tmp / "corrald.stderr"

    def start(self, timeout: float = 120.0) -> "Daemon":
        """Start corrald and wait for its "listening on" line of this start (the
        stderr file is appended to across restarts)."""
        t0 = time.monotonic()
        with open(self.stderr_path, "ab") as err:
            offset = err.tell()
            self.proc = subprocess.Popen([str(self.bin_dir / "corrald"), "-v", *self.extra_args],
                                         env=self.env, stdout=err, stderr=err)
        self.pid = self.proc.pid
        deadline = t0 + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"corrald exited {self.proc.returncode}:\n{self.stderr_text()}")
            if self.socket.exists() and b"listening on" in self.stderr_path.read_bytes()[offset:]:
                self.start_seconds = time.monotonic() - t0
                return self
            time.sleep(0.05)
        raise RuntimeError(f"corrald did not become ready in {timeout:.0f}s:\n{self.stderr_text()}")

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def corral(self, *args, input=None, timeout=60, check=False, env=None, **kw):
        """`corral ARGS` against this instance, output captured as text."""
        e = dict(self.env)
        e.update(env or {})
        p = subprocess.run([str(self.bin_dir / "corral"), *args], env=e, input=input,
                           capture_output=True, text=True, timeout=timeout, **kw)
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

    def net_pin_dir(self) -> Path:
        """Where the network maps and links of the build now loaded are pinned
        (/sys/fs/bpf/<instance>/net-<version>/)."""
        dirs = sorted(Path(f"/sys/fs/bpf/{self.instance}").glob("net-*"))
        assert len(dirs) == 1, dirs
        return dirs[0]

    def cleanup(self, remove_tmp: bool = False) -> None:
        """Stop, then end and remove whatever a failed run left behind: session
        cgroups, the instance's cgroup, its BPF pins (and, if asked, its files)."""
        Daemon.stop(self)       # the process only, whatever a subclass's stop() does
        from corral.kernel import cgroups
        try:
            root = cgroups.cgroup2_mount() / self.instance
        except Exception:
            root = None
        if root is not None and root.is_dir():
            for d in root.iterdir():
                if d.is_dir():
                    try:
                        cgroups.kill(d)
                        cgroups.remove(d)
                    except Exception:
                        pass
            try:
                root.rmdir()
            except OSError:
                pass
        shutil.rmtree(f"/sys/fs/bpf/{self.instance}", ignore_errors=True)
        if remove_tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)


def new_tmp(name: str) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    tmp.chmod(0o755)        # unprivileged clients must reach the socket, as under /run
    return tmp


@contextlib.contextmanager
def home_project(prefix: str):
    """An empty project directory under $HOME (where a user starts an agent: not
    /tmp, so "the project is writable" is not just "/tmp is writable"), removed after."""
    d = Path(tempfile.mkdtemp(prefix=prefix, dir=str(Path.home())))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def ppid(pid: int) -> int | None:
    """The parent of a process (None if it is gone). A `corral run` command, the
    session's leader, is the child of the `corral run` that waits for it."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def make_daemon(name: str, extra_args=(), extra_env=None, bin_dir: Path = BIN) -> Daemon:
    """A new private instance named NAME-PID (not started)."""
    return Daemon(f"{name}-{os.getpid()}", new_tmp(name), extra_args, extra_env, bin_dir)


# -- a small full disk ---------------------------------------------------------------
class SmallDisk:
    """A tmpfs of its own (root: it mounts), filled to the last byte and freed on request."""

    def __init__(self, size="512k", prefix="corral-disk-"):
        self.dir = Path(tempfile.mkdtemp(prefix=prefix))
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                        str(self.dir)], check=True)
        self.filler = self.dir / "filler"

    def fill(self):
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for size in (65536, 4096, 1):            # down to the last byte
                try:
                    while os.write(fd, b"\0" * size):
                        pass
                except OSError:
                    pass
        finally:
            os.close(fd)

    def free(self):
        self.filler.unlink(missing_ok=True)

    def close(self):
        subprocess.run(["umount", "-l", str(self.dir)], check=False)
        try:
            self.dir.rmdir()
        except OSError:
            pass


# -- raw frames: a 4-byte big-endian length, then msgpack (corral.protocol) -------
def frame(obj) -> bytes:
    import msgpack
    body = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def read_frame(s: socket.socket):
    """The next frame's object, or None when the peer hangs up (even mid-frame)."""
    import msgpack
    hdr = b""
    while len(hdr) < 4:
        chunk = s.recv(4 - len(hdr))
        if not chunk:
            return None
        hdr += chunk
    (n,) = struct.unpack(">I", hdr)
    body = b""
    while len(body) < n:
        chunk = s.recv(n - len(body))
        if not chunk:
            return None
        body += chunk
    return msgpack.unpackb(body, raw=False)


def raw_socket(path, timeout: float = 10) -> socket.socket:
    """A connected AF_UNIX stream socket to the daemon, without the client library."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(str(path))
    return s


def assert_sigterm_reaches_command(argv: list[str], env: dict, cwd) -> None:
    """SIGTERM to `corral run`/`corral exec` (argv, ending in CMD) reaches the
    command: it traps it, says so and exits 5, which is what the caller sees."""
    import signal
    proc = subprocess.Popen([*argv, "sh", "-c", "trap 'echo got-term; exit 5' TERM; echo ready; "
                             "while :; do sleep 0.05; done"],
                            env=env, cwd=cwd, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 5
        assert proc.stdout.read().strip() == "got-term"
    finally:
        proc.kill()
        proc.wait()
