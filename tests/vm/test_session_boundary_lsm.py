"""The session boundary on the BPF LSM tier (issue 11): Unix socket peers,
signals, ptrace and metadata, on the VM's real 6.1 kernel (whose Landlock,
ABI 2, scopes none of them).

Every refusal is checked for its exact errno, for the state it was meant to
protect (the file's times unchanged, the target still alive), for its event,
and next to a control: the same operation from a process of the session on
its own objects, and from the test process outside every session on the same
object, succeeds. With the hook switched off the session process (root, all
capabilities, in these tests) would succeed too, so each refusal test fails.

Servers "outside" are sockets of this pytest process or its plain children;
session processes are children that joined the session cgroup before exec
(vmhelpers.Session)."""
from __future__ import annotations

import errno
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import textwrap
from pathlib import Path

import pytest

from vmhelpers import DEV_W
from corral.backends import filelsm
from corral.kernel import abi, events

# One probe, run inside a session (or outside, as the control): a JSON list of
# operations in argv[1], a JSON list of results ("OK" or the errno's name) out.
PROBE = textwrap.dedent(r"""
    import ctypes, errno, json, os, signal, socket, sys, time
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.restype = ctypes.c_long
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    PTRACE_TRACEME, PTRACE_ATTACH, PTRACE_DETACH = 0, 16, 17
    TYPES = {"stream": socket.SOCK_STREAM, "seqpacket": socket.SOCK_SEQPACKET,
             "dgram": socket.SOCK_DGRAM}

    def addr(a):
        return "\0" + a[1:] if a.startswith("@") else a

    def ptrace(req, pid):
        if libc.ptrace(req, pid, None, None) < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))

    def attach(pid):
        ptrace(PTRACE_ATTACH, pid)
        os.waitpid(pid, 0 if pid in KIDS else 0x40000000)    # __WALL
        ptrace(PTRACE_DETACH, pid)

    KIDS = set()

    def child_sleeping():
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            time.sleep(60)
            os._exit(0)
        KIDS.add(pid)
        return pid

    def op(name, *a):
        if name == "connect":
            s = socket.socket(socket.AF_UNIX, TYPES[a[1]])
            s.connect(addr(a[0]))
            s.close()
        elif name == "sendto":
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            s.sendto(b"hello", addr(a[0]))
        elif name == "dgram_connect":
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            s.connect(addr(a[0]))
        elif name == "socketpair":
            x, y = socket.socketpair(socket.AF_UNIX, TYPES[a[0]])
            x.send(b"ping")
            assert y.recv(10) == b"ping"
        elif name == "kill":
            os.kill(a[0], a[1])
        elif name == "kill_child":
            pid = child_sleeping()
            os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)
        elif name == "attach":
            attach(a[0])
        elif name == "attach_child":
            pid = child_sleeping()
            try:
                attach(pid)
            finally:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        elif name == "traceme":
            ptrace(PTRACE_TRACEME, 0)
        elif name == "traceme_child":
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                try:
                    ptrace(PTRACE_TRACEME, 0)
                    os.write(w, b"OK")
                except OSError as e:
                    os.write(w, errno.errorcode[e.errno].encode())
                os._exit(0)
            os.close(w)
            got = os.read(r, 32).decode()
            os.waitpid(pid, 0)
            if got != "OK":
                raise OSError(getattr(errno, got), got)
        elif name == "open":                 # open only: /proc/PID/mem at offset 0 is EIO
            os.close(os.open(a[0], os.O_RDONLY))
        elif name == "utime":
            os.utime(a[0], (a[1], a[1]))
        elif name == "futime":
            fd = os.open(a[0], os.O_RDONLY)
            try:
                os.utime(fd, (a[1], a[1]))
            finally:
                os.close(fd)
        elif name == "setxattr":
            os.setxattr(a[0], a[1], b"v")
        elif name == "removexattr":
            os.removexattr(a[0], a[1])
        elif name == "chmod":
            os.chmod(a[0], a[1])
        else:
            raise SystemExit("unknown op " + name)

    out = []
    for o in json.loads(sys.argv[1]):
        try:
            op(*o)
            out.append("OK")
        except OSError as e:
            out.append(errno.errorcode.get(e.errno, str(e.errno)))
    print(json.dumps(out))
""")


def _parse(res):
    rc, out, err = res
    assert rc == 0, f"probe failed rc={rc} out={out!r} err={err!r}"
    return json.loads(out.strip().splitlines()[-1])


def probe(s, ops):
    """Run the operations in session `s`; their results."""
    return _parse(s.run([sys.executable, "-S", "-c", PROBE, json.dumps(ops)], timeout=120))


def outside(ops):
    """The same operations from a process outside every session (the control)."""
    p = subprocess.run([sys.executable, "-S", "-c", PROBE, json.dumps(ops)],
                       capture_output=True, text=True, timeout=120)
    return _parse((p.returncode, p.stdout, p.stderr))


class Events:
    """The file LSM's events, decoded, as they arrive."""

    def __init__(self, lsm):
        self.lsm = lsm
        self.got = []
        lsm.open_events(lambda raw: self.got.append(events.decode(raw)))
        lsm.poll(0)
        self.got.clear()

    def wait(self, pred, timeout=10.0):
        end = time.monotonic() + timeout
        while True:
            self.lsm.poll(100)
            hit = [e for e in self.got if pred(e)]
            if hit or time.monotonic() > end:
                return hit

    def one(self, s, op, target, rule):
        hit = self.wait(lambda e: e["cgid"] == s.cgid and e["op"] == op and e["target"] == target)
        assert hit, (op, target, [(e["op"], e["target"]) for e in self.got if e["cgid"] == s.cgid])
        e = hit[0]
        assert e["kind"] == "file" and e["verdict"] == "deny", e
        assert e["rule_id"] == rule, e
        return e


@pytest.fixture
def evs(lsm):
    return Events(lsm)


def _name(tag: str) -> str:
    return f"@corral-vmt-{tag}-{os.getpid()}-{secrets.token_hex(3)}"


def _listen(addr: str, kind=socket.SOCK_STREAM) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, kind)
    s.bind("\0" + addr[1:] if addr.startswith("@") else addr)
    if kind != socket.SOCK_DGRAM:
        s.listen(16)
    return s


SERVE = textwrap.dedent(r"""
    import os, socket, sys, time
    kind = {"stream": socket.SOCK_STREAM, "dgram": socket.SOCK_DGRAM}[sys.argv[2]]
    a = sys.argv[1]
    s = socket.socket(socket.AF_UNIX, kind)
    s.bind("\0" + a[1:] if a.startswith("@") else a)
    if kind == socket.SOCK_STREAM:
        s.listen(16)
    print("ready", flush=True)
    time.sleep(120)
""")


def serve_in(s, addr, kind="stream"):
    """A server of session `s` (a process of the session binds it)."""
    p = s.popen([sys.executable, "-S", "-c", SERVE, addr, kind], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    return p


def _stop(*procs):
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)


# ---------------------------------------------------------------- unix sockets
def test_unix_abstract_peers(session, ws, evs):
    out_addr, own_addr = _name("out"), _name("own")
    srv = _listen(out_addr)
    s = session({"allow_write": [str(ws)] + DEV_W})
    own = serve_in(s, own_addr)
    try:
        assert probe(s, [["connect", out_addr, "stream"], ["connect", own_addr, "stream"]]) == \
            ["EPERM", "OK"]
        e = evs.one(s, "unix_connect", out_addr, abi.RULE_FILE_UNIX_FOREIGN)
        assert "outside the session" in s.lsm.describe(s.cgid, e["rule_id"])
        # controls: outside the session both servers take the connection
        assert outside([["connect", out_addr, "stream"], ["connect", own_addr, "stream"]]) == \
            ["OK", "OK"]
    finally:
        _stop(own)
        srv.close()


def test_unix_socketpair_is_the_sessions_own(session, ws):
    s = session({"allow_write": [str(ws)] + DEV_W})
    assert probe(s, [["socketpair", "stream"], ["socketpair", "dgram"],
                     ["socketpair", "seqpacket"]]) == ["OK", "OK", "OK"]


def test_unix_pathname_peer_outside(session, ws, evs):
    rw = ws / "rw"
    rw.mkdir()
    sock = ws / "out.sock"
    srv = _listen(str(sock))
    os.link(sock, rw / "hard.sock")                     # made by the process outside
    # allow_write covers the socket file: only the boundary can refuse it
    s = session({"allow_write": [str(ws)] + DEV_W})
    try:
        res = probe(s, [["connect", str(sock), "stream"],
                        ["connect", f"/proc/self/root{sock}", "stream"],
                        ["connect", str(rw / "hard.sock"), "stream"]])
        assert res == ["EPERM"] * 3
        # a symlink the session makes in its own writable dir
        rc, _, err = s.sh(f"ln -s {sock} {rw}/link.sock")
        assert rc == 0, err
        assert probe(s, [["connect", str(rw / "link.sock"), "stream"]]) == ["EPERM"]
        evs.one(s, "unix_connect", str(sock), abi.RULE_FILE_UNIX_FOREIGN)
        # the session's own server in the same directory works
        own = serve_in(s, str(rw / "own.sock"))
        try:
            assert probe(s, [["connect", str(rw / "own.sock"), "stream"]]) == ["OK"]
        finally:
            _stop(own)
        # control: every spelling reaches the server from outside
        assert outside([["connect", str(sock), "stream"],
                        ["connect", f"/proc/self/root{sock}", "stream"],
                        ["connect", str(rw / "hard.sock"), "stream"],
                        ["connect", str(rw / "link.sock"), "stream"]]) == ["OK"] * 4
    finally:
        srv.close()


def test_unix_allow_lists_a_socket(session, ws, evs):
    rw, elsewhere = ws / "rw", ws / "elsewhere"
    rw.mkdir()
    elsewhere.mkdir()
    sock = rw / "agent.sock"                  # under allow_write
    far = elsewhere / "far.sock"              # not under allow_write
    other = rw / "other.sock"                 # under allow_write, not listed
    denied_sock = rw / "denied.sock"          # listed, and in deny_write
    srvs = [_listen(str(p)) for p in (sock, far, other, denied_sock)]
    os.link(sock, rw / "hard.sock")
    os.symlink(sock, rw / "link.sock")
    s = session({"allow_write": [str(rw)] + DEV_W, "deny_write": [str(denied_sock)],
                 "unix": {"allow": [str(sock), str(far), str(denied_sock)]}})
    try:
        res = probe(s, [["connect", str(sock), "stream"],
                        ["connect", str(rw / "link.sock"), "stream"],
                        ["connect", str(rw / "hard.sock"), "stream"],
                        ["connect", f"/proc/self/root{sock}", "stream"],
                        ["connect", str(far), "stream"],          # unix.allow lifts default-deny
                        ["connect", str(other), "stream"],
                        ["connect", str(denied_sock), "stream"]])  # deny_write still wins
        assert res == ["OK", "OK", "OK", "OK", "OK", "EPERM", "EPERM"]
        evs.one(s, "unix_connect", str(other), abi.RULE_FILE_UNIX_FOREIGN)
        e = evs.one(s, "unix_connect", str(denied_sock), rule_id(s, "deny_write", denied_sock))
        assert s.lsm.rule_for(s.cgid, e["rule_id"]) == ("deny_write", str(denied_sock))
        # the listed socket re-created by its server after the install: matched by name
        srvs[0].close()
        sock.unlink()
        srvs[0] = _listen(str(sock))
        assert probe(s, [["connect", str(sock), "stream"]]) == ["OK"]
        # a session without the entries: refused (the control for the allow list)
        fs = {"allow_write": [str(rw)] + DEV_W}
        t = session(fs)
        assert probe(t, [["connect", str(sock), "stream"], ["connect", str(far), "stream"]]) == \
            ["EPERM", "EPERM"]
        # a live update that passes the unix section apart (as the session table may)
        t.lsm.install(t.cgid, fs, unix={"allow": [str(sock)]})
        assert probe(t, [["connect", str(sock), "stream"], ["connect", str(far), "stream"]]) == \
            ["OK", "EPERM"]
    finally:
        for x in srvs:
            x.close()


def rule_id(s, kind, path):
    """The event rule id of the session's `kind` rule for `path`."""
    for i, (k, p) in enumerate(s.lsm.rules_snapshot(s.cgid)):
        if k == kind and p == str(path):
            return abi.RULE_USER + i
    raise AssertionError(f"no {kind} rule for {path}")


def test_unix_datagrams(session, ws, evs):
    out_path, out_abs = ws / "out.dgram", _name("dg")
    srv1 = _listen(str(out_path), socket.SOCK_DGRAM)
    srv2 = _listen(out_abs, socket.SOCK_DGRAM)
    s = session({"allow_write": [str(ws)] + DEV_W})
    own = serve_in(s, str(ws / "own.dgram"), "dgram")
    try:
        res = probe(s, [["sendto", str(out_path)], ["sendto", out_abs],
                        ["dgram_connect", str(out_path)], ["sendto", str(ws / "own.dgram")]])
        assert res == ["EPERM", "EPERM", "EPERM", "OK"]
        evs.one(s, "unix_send", str(out_path), abi.RULE_FILE_UNIX_FOREIGN)
        evs.one(s, "unix_send", out_abs, abi.RULE_FILE_UNIX_FOREIGN)
        assert outside([["sendto", str(out_path)], ["sendto", out_abs]]) == ["OK", "OK"]
        srv1.settimeout(5)
        assert srv1.recv(16) == b"hello"              # only the control's datagram arrived
        srv1.settimeout(0.2)
        with pytest.raises(socket.timeout):
            srv1.recv(16)
    finally:
        _stop(own)
        srv1.close()
        srv2.close()


# ---------------------------------------------------------------- signals
def test_signals_stay_in_the_session(session, ws, evs):
    victim = subprocess.Popen(["sleep", "300"])
    s = session({"allow_write": DEV_W})
    mate = s.popen(["sleep", "300"])                  # another process of the session
    try:
        TERM, KILL = int(signal.SIGTERM), int(signal.SIGKILL)
        res = probe(s, [["kill", victim.pid, TERM], ["kill", victim.pid, 0],
                        ["kill", victim.pid, KILL], ["kill_child"],
                        ["kill", mate.pid, 0], ["kill", mate.pid, TERM]])
        assert res == ["EPERM", "EPERM", "EPERM", "OK", "OK", "OK"]
        assert mate.wait(timeout=10) == -signal.SIGTERM
        time.sleep(0.2)
        assert victim.poll() is None, "the process outside was signalled"
        e = evs.one(s, "signal", f"pid {victim.pid} (sleep) signal {int(signal.SIGTERM)}",
                    abi.RULE_FILE_TASK_FOREIGN)
        assert "outside the session" in s.lsm.describe(s.cgid, e["rule_id"])
        assert outside([["kill", victim.pid, 0]]) == ["OK"]
    finally:
        _stop(victim, mate)


def test_signals_reach_nested_cgroups(session, ws):
    s = session({"allow_write": DEV_W})
    sub = s.path / "child"
    sub.mkdir()
    procs = []

    def join_child():
        with open(sub / "cgroup.procs", "w") as fh:
            fh.write(str(os.getpid()))
    try:
        inner = subprocess.Popen(["sleep", "300"], preexec_fn=join_child)
        procs.append(inner)
        outer = s.popen(["sleep", "300"])
        procs.append(outer)
        # from the session into its nested cgroup, and back out to the session
        assert probe(s, [["kill", inner.pid, 0]]) == ["OK"]
        p = subprocess.run([sys.executable, "-S", "-c", PROBE, json.dumps([["kill", outer.pid, 0]])],
                           preexec_fn=join_child, capture_output=True, text=True, timeout=120)
        assert _parse((p.returncode, p.stdout, p.stderr)) == ["OK"]
    finally:
        _stop(*procs)
        for _ in range(50):
            try:
                sub.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def test_two_sessions_cannot_signal_each_other(session, ws):
    a = session({"allow_write": DEV_W})
    b = session({"allow_write": DEV_W})
    pb = b.popen(["sleep", "300"])
    try:
        assert probe(a, [["kill", pb.pid, 0]]) == ["EPERM"]
        assert probe(b, [["kill", pb.pid, 0]]) == ["OK"]
    finally:
        _stop(pb)


# ---------------------------------------------------------------- ptrace
def test_ptrace_stays_in_the_session(session, ws, evs):
    victim = subprocess.Popen(["sleep", "300"])
    s = session({"allow_write": DEV_W})
    try:
        res = probe(s, [["attach", victim.pid], ["open", f"/proc/{victim.pid}/mem"],
                        ["open", f"/proc/{victim.pid}/environ"], ["attach_child"],
                        ["traceme"], ["traceme_child"]])
        # open() of /proc/PID/mem|environ: mm_access() turns the LSM's refusal into EACCES
        assert res == ["EPERM", "EACCES", "EACCES", "OK", "EPERM", "OK"]
        evs.one(s, "ptrace", f"pid {victim.pid} (sleep)", abi.RULE_FILE_TASK_FOREIGN)
        tracer = evs.wait(lambda e: e["cgid"] == s.cgid and e["op"] == "traceme")
        assert tracer and tracer[0]["target"] == f"pid {os.getpid()} ({_comm(os.getpid())})", tracer
        assert victim.poll() is None
        # control: from outside, attach and /proc/PID/mem work on the same process
        assert outside([["attach", victim.pid], ["open", f"/proc/{victim.pid}/mem"],
                        ["open", f"/proc/{victim.pid}/environ"]]) == ["OK", "OK", "OK"]
    finally:
        _stop(victim)


def _comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


# ---------------------------------------------------------------- metadata
def _xattr_name(path: Path) -> str:
    """user.* where the filesystem has it (tmpfs has it only from 6.6), else trusted.*"""
    for name in ("user.corral", "trusted.corral"):
        try:
            os.setxattr(path, name, b"probe")
            os.removexattr(path, name)
            return name
        except OSError as e:
            if e.errno != errno.EOPNOTSUPP:
                raise
    pytest.skip(f"no writable xattr namespace on {path}")


def test_metadata_outside_allow_write(session, ws, evs):
    rw, ro = ws / "rw", ws / "ro"
    (rw / ".git").mkdir(parents=True)
    ro.mkdir()
    for f in (rw / "f", ro / "f", rw / ".git/config", ro / "g"):
        f.write_text("x")
    xa = _xattr_name(rw / "f")
    os.setxattr(ro / "g", xa, b"keep")
    os.setxattr(rw / "f", xa + "2", b"drop")
    t0 = os.stat(ro / "f").st_mtime
    s = session({"allow_write": [str(rw)] + DEV_W,
                 "deny_write": [str(rw / ".git"), str(rw / "later/prot")]})
    (rw / "later/prot").mkdir(parents=True)          # a deny_write path created after the install
    (rw / "later/prot/h").write_text("x")
    res = probe(s, [["utime", str(ro / "f"), 1000000], ["futime", str(ro / "f"), 1000000],
                    ["setxattr", str(ro / "f"), xa], ["removexattr", str(ro / "g"), xa],
                    ["chmod", str(ro / "f"), 0o600],
                    ["utime", str(rw / ".git/config"), 1000000],
                    ["utime", str(rw / "later/prot/h"), 1000000],
                    ["utime", str(rw / "f"), 1000000], ["setxattr", str(rw / "f"), xa],
                    ["removexattr", str(rw / "f"), xa + "2"], ["chmod", str(rw / "f"), 0o600]])
    assert res == ["EPERM"] * 7 + ["OK"] * 4
    st = os.stat(ro / "f")
    assert st.st_mtime == t0 and st.st_mode & 0o777 != 0o600
    assert os.getxattr(ro / "g", xa) == b"keep"
    with pytest.raises(OSError):
        os.getxattr(ro / "f", xa)
    assert os.stat(rw / "f").st_mtime == 1000000 and os.getxattr(rw / "f", xa) == b"v"
    evs.one(s, "setattr", str(ro / "f"), abi.RULE_DEFAULT_DENY)
    evs.one(s, "setxattr", str(ro / "f"), abi.RULE_DEFAULT_DENY)
    evs.one(s, "removexattr", str(ro / "g"), abi.RULE_DEFAULT_DENY)
    e = evs.one(s, "setattr", str(rw / ".git/config"), rule_id(s, "deny_write", rw / ".git"))
    assert s.lsm.rule_for(s.cgid, e["rule_id"]) == ("deny_write", str(rw / ".git"))
    # touch -d: its open(O_WRONLY) is refused and ignored; the utimensat is what fails
    rc, _, err = s.sh(f"touch -d @981158400 {ro}/f")
    assert rc != 0 and "not permitted" in err, err
    assert os.stat(ro / "f").st_mtime == t0
    rc, _, err = s.sh(f"touch -d @981158400 {rw}/f")
    assert rc == 0, err
    assert os.stat(rw / "f").st_mtime == 981158400
    # control: outside the session the same calls on the read-only tree work
    assert outside([["utime", str(ro / "f"), 1000000], ["setxattr", str(ro / "f"), xa],
                    ["removexattr", str(ro / "g"), xa]]) == ["OK", "OK", "OK"]


def test_enforcement_keys(lsm):
    enf = lsm.enforcement()
    assert enf == filelsm.ENFORCES
    assert {k: enf[k] for k in ("filesystem", "unix_peers", "signals", "ptrace", "metadata")} == \
        dict.fromkeys(("filesystem", "unix_peers", "signals", "ptrace", "metadata"), "bpf-lsm")
