"""Helpers for the control-plane tests: raw frames, clients as other users,
long-lived sessions that probe the network on request, a small full disk."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from harness import SmallDisk, frame, raw_socket, read_frame  # noqa: F401  (tests import them from here)

NOBODY = 65534
CORRAL = str(Path(sys.executable).parent / "corral")


def raw(daemon, timeout=10) -> socket.socket:
    return raw_socket(daemon.socket, timeout)


def call(s: socket.socket, op: str, **args) -> dict:
    s.sendall(frame({"op": op, "id": 1, **args}))
    while True:
        m = read_frame(s)
        if m is None or "event" not in m:
            return m


def as_user(uid: int):
    def fn():
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    return fn


def run_as(daemon, uid: int, code: str, *args, timeout=60, **kw):
    """Run python code as another user against the daemon; stdout parsed as JSON lines."""
    p = subprocess.run([sys.executable, "-c", code, *map(str, args)], env=daemon.env,
                       capture_output=True, text=True, timeout=timeout, cwd="/",
                       preexec_fn=as_user(uid), **kw)
    return p


def listener():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    return s, s.getsockname()[1]


PROBE_LOOP = r"""
import errno, os, socket, sys
port = int(sys.argv[1])
print(os.environ.get("CORRAL_SESSION", ""), flush=True)
for line in sys.stdin:
    s = socket.socket()
    try:
        s.connect(("127.0.0.1", port)); r = "ok"
    except OSError as e:
        r = errno.errorcode.get(e.errno, str(e.errno))
    finally:
        s.close()
    print(r, flush=True)
"""


class ProbeSession:
    """A session whose process connects to 127.0.0.1:port each time it is asked."""

    def __init__(self, daemon, port: int, *flags):
        self.proc = subprocess.Popen([CORRAL, "run", *flags, "--", sys.executable, "-c",
                                      PROBE_LOOP, str(port)], env=daemon.env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.id = self.proc.stdout.readline().strip()
        if not self.id:
            raise AssertionError(f"session did not start: {self.proc.stderr.read()}")

    def probe(self) -> str:
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def end(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(10)


REFUSE = r"""
import socket, struct, sys
import msgpack
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
for i in range(int(sys.argv[3])):
    b = msgpack.packb({"op": "end_session", "id": i, "session": sys.argv[2]})
    s.sendall(struct.pack(">I", len(b)) + b)
    h = s.recv(4); n = struct.unpack(">I", h)[0]; body = b""
    while len(body) < n: body += s.recv(n - len(body))
"""


def exhaust_log(daemon, session_id: str) -> None:
    """After SmallDisk.fill(): the log's last page may still have room. Make
    nobody's refusals (each an audit record) use it up until the log degrades."""
    for _ in range(20):
        with daemon.client() as c:
            if c.call("hello")["log"]["state"] == "degraded":
                return
        run_as(daemon, NOBODY, REFUSE, daemon.socket, session_id, 25)
    raise AssertionError("the audit log did not notice the full disk")


def wait_until(pred, timeout: float = 10.0, step: float = 0.1) -> bool:
    """Poll pred() until it is true or timeout passes; its last value."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() >= deadline:
            return bool(pred())
        time.sleep(step)
    return True


def records(daemon, **match):
    return [r for r in daemon.records() if all(r.get(k) == v for k, v in match.items())]


def dumps(x) -> str:
    return json.dumps(x, default=str)


SEND_RAW = r"""
import json, socket, struct, sys
import msgpack
s = socket.socket(socket.AF_UNIX); s.settimeout(20); s.connect(sys.argv[1])
def read():
    h = b""
    while len(h) < 4:
        c = s.recv(4 - len(h))
        if not c: return None
        h += c
    n = struct.unpack(">I", h)[0]; b = b""
    while len(b) < n: b += s.recv(n - len(b))
    return msgpack.unpackb(b, raw=False)
s.sendall(bytes.fromhex(sys.stdin.read()))
first = read()
h = msgpack.packb({"op": "hello", "id": 99}); s.sendall(struct.pack(">I", len(h)) + h)
second = read()
print(json.dumps({"reply": first, "hello_ok": bool(second and second.get("ok"))}, default=str))
"""


def child_request(daemon, data: bytes) -> dict:
    """Send raw bytes from a child process (a register_session that wrongly
    succeeded must move the child, never the test runner) and return its
    reply, and whether a hello on the same connection still works."""
    p = subprocess.run([sys.executable, "-c", SEND_RAW, str(daemon.socket)], env=daemon.env,
                       input=data.hex(), capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)
