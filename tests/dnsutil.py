"""Test helpers for the DNS resolver: a real dnsmasq upstream on loopback, a
network namespace with a "public-looking" test server, and ways to run
commands inside an existing session.

Traffic only ever goes to loopback or to the namespace created here (an
address from 198.18.0.0/15, the benchmarking range, on a veth pair whose only
route is the /30 between the two ends)."""
from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from harness import ppid

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"


def free_port(host: str = "127.0.0.1") -> int:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as u, socket.socket(fam, socket.SOCK_STREAM) as t:
        u.bind((host, 0))
        port = u.getsockname()[1]
        t.bind((host, port))
        return port


class Dnsmasq:
    """dnsmasq as the upstream, answering only from its command line, logging every query."""

    def __init__(self, records: list[str], addr: str | None = None, local_ttl: int = 300,
                 log_queries: bool = True):
        self.addr = addr or f"127.53.{random.randint(1, 250)}.{random.randint(1, 250)}"
        self.port = free_port(self.addr)
        self.dir = Path(tempfile.mkdtemp(prefix="corral-dnsmasq-"))
        self.logfile = self.dir / "queries.log"
        self.records = records
        self.local_ttl = local_ttl
        self.log_queries = log_queries
        self.proc = None

    @property
    def upstream(self) -> str:
        return f"{self.addr}:{self.port}"

    def start(self):
        cmd = [DNSMASQ, "-k", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
               "--no-poll", "--bind-interfaces", f"--listen-address={self.addr}",
               f"--port={self.port}", *(["--log-queries"] if self.log_queries else []),
               f"--log-facility={self.logfile}",
               f"--pid-file={self.dir / 'pid'}", "--user=root", "--group=root",
               f"--local-ttl={self.local_ttl}", *self.records]
        if not any(r.startswith("--cache-size") for r in self.records):
            cmd.append("--cache-size=1000")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dnsmasq exited: {self.proc.stderr.read().decode()}")
            if self.logfile.exists() and "started" in self.logfile.read_text():
                return self
            time.sleep(0.05)
        raise RuntimeError("dnsmasq did not start")

    def log(self) -> str:
        time.sleep(0.2)       # dnsmasq writes its log from its main loop
        return self.logfile.read_text() if self.logfile.exists() else ""

    def queried(self, name: str) -> bool:
        return any(f"] {name} from" in line and "query[" in line for line in self.log().splitlines())

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


SERVER = textwrap.dedent("""
    import socket, sys, threading
    def serve(fam, addr, port):
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((addr, port)); s.listen(64)
        while True:
            c, _ = s.accept()
            try: c.sendall(b"ok %d\\n" % port)
            finally: c.close()
    ports = [int(p) for p in sys.argv[1:]]
    for p in ports:
        threading.Thread(target=serve, args=(socket.AF_INET, "0.0.0.0", p), daemon=True).start()
        threading.Thread(target=serve, args=(socket.AF_INET6, "::", p), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()
""")


class Netns:
    """A namespace at 198.19.N.2 (and 2001:2:0:N::2) with TCP servers on PORTS."""

    def __init__(self, ports=(8080, 8081)):
        n = os.getpid() % 200 + random.randint(1, 50)
        self.name = f"corraldns{os.getpid()}"
        self.host_if = f"cdh{os.getpid() % 100000}"
        self.ns_if = f"cdn{os.getpid() % 100000}"
        self.v4_host, self.v4 = f"198.19.{n}.1", f"198.19.{n}.2"
        self.v6_host, self.v6 = f"2001:2:0:{n:x}::1", f"2001:2:0:{n:x}::2"
        self.ports = ports
        self.server = None

    def _ip(self, *args):
        subprocess.run(["ip", *args], check=True, capture_output=True)

    def start(self):
        self._ip("netns", "add", self.name)
        self._ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        self._ip("link", "set", self.ns_if, "netns", self.name)
        self._ip("addr", "add", f"{self.v4_host}/30", "dev", self.host_if)
        self._ip("addr", "add", f"{self.v6_host}/64", "dev", self.host_if, "nodad")
        self._ip("link", "set", self.host_if, "up")
        self._ip("-n", self.name, "addr", "add", f"{self.v4}/30", "dev", self.ns_if)
        self._ip("-n", self.name, "addr", "add", f"{self.v6}/64", "dev", self.ns_if, "nodad")
        self._ip("-n", self.name, "link", "set", self.ns_if, "up")
        self._ip("-n", self.name, "link", "set", "lo", "up")
        self.server = subprocess.Popen(["ip", "netns", "exec", self.name, sys.executable, "-c", SERVER,
                                        *map(str, self.ports)], stdout=subprocess.PIPE)
        assert self.server.stdout.readline().strip() == b"ready"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:       # wait for the link to come up
            try:
                with socket.create_connection((self.v4, self.ports[0]), timeout=1) as c:
                    c.recv(16)
                with socket.create_connection((self.v6, self.ports[0]), timeout=1) as c:
                    c.recv(16)
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("netns test server unreachable")

    def stop(self):
        if self.server:
            self.server.kill()
            self.server.wait()
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


class Background:
    """A session held open by `corral run ... -- sleep`, to run commands in."""

    def __init__(self, daemon, args: list[str]):
        self.d = daemon
        self.proc = subprocess.Popen([str(Path(sys.executable).parent / "corral"), "run", *args,
                                      "--", "sleep", "600"], env=daemon.env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        self.session = None
        while time.monotonic() < deadline and self.session is None:
            if self.proc.poll() is not None:
                raise RuntimeError(f"corral run failed: {self.proc.stderr.read().decode()}")
            with daemon.client() as c:
                for s in c.call("list_sessions"):
                    # The session leader is the command: `corral run`'s child.
                    if ppid(s["leader_pid"]) == self.proc.pid and s["leader_pid"] in s["pids"]:
                        self.session = s
            time.sleep(0.05)
        if self.session is None:
            raise RuntimeError("session did not appear")
        self.id = self.session["id"]
        self.cgroup = self.session["cgroup"]

    def info(self) -> dict:
        with self.d.client() as c:
            return c.call("session_info", session=self.id)

    def update(self, network: dict):
        pol = dict(self.info()["policy"])
        pol["network"] = network
        with self.d.client() as c:
            return c.call("update_policy", session=self.id, policy=pol)

    def run(self, cmd: list[str], timeout=30, input=None) -> subprocess.CompletedProcess:
        """Run CMD inside the session's cgroup (the harness moves it there before exec)."""
        wrapper = ['sh', '-c', f'echo $$ > {self.cgroup}/cgroup.procs && exec "$@"', "sh", *cmd]
        return subprocess.run(wrapper, capture_output=True, text=True, timeout=timeout, input=input)

    def py(self, code: str, *args, timeout=30) -> subprocess.CompletedProcess:
        return self.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], timeout=timeout)

    def close(self):
        self.proc.kill()
        self.proc.wait()
        try:
            with self.d.client() as c:
                c.call("end_session", session=self.id)
        except Exception:
            pass


# A probe run inside sessions: connect and report; exit codes tell the story.
CONNECT = """
import socket, sys, errno
host, port = sys.argv[1], int(sys.argv[2])
try:
    with socket.create_connection((host, port), timeout=3) as c:
        print(c.recv(16).decode().strip())
except PermissionError:
    print("EPERM"); sys.exit(3)
except OSError as e:
    print("ERR", e); sys.exit(4)
"""
