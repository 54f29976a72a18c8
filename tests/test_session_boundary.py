"""The session boundary on the host (Landlock backend): what a session may reach
through Unix sockets, and which metadata it may change (issue 11).

Real processes on the real kernel, every refusal next to its control: the same
client run outside the session succeeds, against the same server, at the same
time. Servers outside the session are child processes of pytest (never pytest
registering a session itself), started before the session unless a test says
otherwise; sessions are `corral run` child processes with cwd a fresh project.

* Unix sockets: a session connects (stream, seqpacket) and sends datagrams only
  to sockets of its own processes, socketpairs and sockets its policy names
  (--allow-unix, --allow-ssh-agent, [network] allow_unix). Anything else is
  refused with EACCES or EPERM (never ECONNREFUSED/ENOENT: a refusal must not
  look like a missing server), whatever the spelling of the path.
* Metadata outside allow_write (chmod, chown, utimes, setxattr, truncate) is
  refused; inside the project it works.
* A refused connect to a foreign socket is an audit record naming the socket.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from harness import BIN

CORRAL = str(BIN / "corral")


@pytest.fixture(scope="session")
def daemon(agentd):
    # Most sessions here run with no policy option, so under the default profile,
    # which names domains: the daemon's resolver must run.
    return agentd


SERVERS = str(Path(__file__).resolve().with_name("boundary_servers.py"))
REFUSED = {"EACCES", "EPERM"}
META_REFUSED = {"EROFS", "EACCES", "EPERM"}
RUN_TIMEOUT = 90


def uid() -> str:
    return secrets.token_hex(4)


def wait_for(pred, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def outside_env(**extra) -> dict:
    e = {k: v for k, v in os.environ.items() if k not in ("TMUX", "SSH_AUTH_SOCK", "CORRAL_SESSION")}
    e.update(extra)
    return e


def corral_run(daemon, project, *cmd, flags=(), env=None, timeout=RUN_TIMEOUT):
    """`corral run FLAGS -- CMD` with cwd the project, as a child process."""
    e = {k: v for k, v in daemon.env.items() if k not in ("TMUX", "SSH_AUTH_SOCK")}
    e.update(env or {})
    return subprocess.run([CORRAL, "run", *flags, "--", *cmd], cwd=project, env=e,
                          capture_output=True, text=True, timeout=timeout)


def new_project(base: str | None = None) -> Path:
    """A fresh git project. Under $HOME, not /tmp, so "the project is writable" is
    not just "/tmp is writable"; short, so socket paths below it fit sun_path."""
    d = Path(tempfile.mkdtemp(prefix="csb-", dir=base or str(Path.home())))
    subprocess.run(["git", "init", "-q", str(d)], check=True, timeout=30, capture_output=True)
    return d


@pytest.fixture
def project():
    d = new_project()
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


class Servers:
    """boundary_servers.py serve, outside any session."""

    def __init__(self, args, ready: Path):
        self.ready = ready
        self.proc = subprocess.Popen([sys.executable, SERVERS, "serve", "--ready", str(ready), *args],
                                     env=outside_env(), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        try:
            wait_for(lambda: ready.exists() or self.proc.poll() is not None, 15, "servers")
        except AssertionError:
            self.stop()
            raise
        if self.proc.poll() is not None:
            raise RuntimeError(f"servers exited {self.proc.returncode}: {self.proc.stderr.read()}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        if self.proc.stderr:
            self.proc.stderr.close()


def probe_outside(specs, cwd) -> dict:
    p = subprocess.run([sys.executable, SERVERS, "probe", json.dumps(specs)], cwd=cwd,
                       env=outside_env(), capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def probe_in_session(daemon, project, specs, flags=(), env=None) -> dict:
    p = corral_run(daemon, project, sys.executable, SERVERS, "probe", json.dumps(specs),
                   flags=flags, env=env)
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    return json.loads(p.stdout)


def assert_refused(res: dict, spec: dict):
    r = res[spec["name"]]
    assert r["stage"] in ("connect", "sendto", "done"), (
        f"{spec['name']}: the probe failed before reaching the socket: {r}")
    assert r["result"] in REFUSED, (
        f"{spec['name']} ({spec['kind']} {spec['addr']}): expected EACCES/EPERM from the "
        f"session, got {r}")
    time.sleep(0.2)                # a datagram is executed asynchronously
    assert not os.path.exists(spec["marker"]), f"{spec['name']}: the server ran the session's command"


def assert_reached(res: dict, spec: dict):
    r = res[spec["name"]]
    assert r["result"] == "ok", f"control {spec['name']} ({spec['addr']}): {r}"
    wait_for(lambda: os.path.exists(spec["marker"]), 10, f"marker of control {spec['name']}")


def as_side(spec: dict, side: str) -> dict:
    """The same probe with its own marker (session and control must not share one)."""
    s = dict(spec)
    s["marker"] = f"{spec['marker']}-{side}"
    return s


# -- 1. tmux -------------------------------------------------------------------------
def test_tmux_server_outside_cannot_be_driven(daemon, project):
    name = f"corraltest-{uid()}"
    marker_in = Path(f"/tmp/corral-sb-tmux-{name}-in")
    marker_out = Path(f"/tmp/corral-sb-tmux-{name}-out")
    env = outside_env(TERM="xterm")
    subprocess.run(["tmux", "-L", name, "new-session", "-d", "sleep 300"], env=env, check=True,
                   timeout=30, capture_output=True)
    try:
        p = corral_run(daemon, project, "tmux", "-L", name, "new-window", f"touch {marker_in}",
                       env={"TERM": "xterm"})
        time.sleep(1.0)
        print(f"tmux in session: rc={p.returncode} stderr={p.stderr.strip()!r}")
        assert not marker_in.exists(), "the outside tmux server ran a command for the session"
        assert p.returncode != 0, (p.stdout, p.stderr)
        # tmux says "no server running" for ECONNREFUSED/ENOENT, "error connecting ... (strerror)"
        # otherwise: the refusal must be the second kind.
        assert "no server running" not in p.stderr, p.stderr
        assert re.search(r"Permission denied|Operation not permitted", p.stderr), p.stderr
        q = subprocess.run(["tmux", "-L", name, "new-window", f"touch {marker_out}"], env=env,
                           capture_output=True, text=True, timeout=30)
        assert q.returncode == 0, q.stderr
        wait_for(marker_out.exists, 10, "control tmux marker")
    finally:
        subprocess.run(["tmux", "-L", name, "kill-server"], env=env, timeout=30,
                       capture_output=True)
        Path(f"/tmp/tmux-{os.getuid()}/{name}").unlink(missing_ok=True)
        marker_in.unlink(missing_ok=True)
        marker_out.unlink(missing_ok=True)


# -- 2. dbus -------------------------------------------------------------------------
def test_dbus_session_bus_outside_is_unreachable(daemon, project):
    d = Path(tempfile.mkdtemp(prefix="corral-sb-dbus-", dir="/tmp"))
    pid = None
    try:
        p = subprocess.run(["dbus-daemon", "--session", "--fork", "--print-address=1", "--print-pid=1",
                            f"--address=unix:path={d}/bus"], env=outside_env(),
                           capture_output=True, text=True, timeout=30)
        assert p.returncode == 0, p.stderr
        lines = p.stdout.split()
        addr = next(x for x in lines if x.startswith("unix:"))
        pid = int(next(x for x in lines if x.isdigit()))
        cmd = ["dbus-send", f"--bus={addr}", "--print-reply", "--dest=org.freedesktop.DBus",
               "/org/freedesktop/DBus", "org.freedesktop.DBus.ListNames"]
        r = corral_run(daemon, project, *cmd)
        print(f"dbus-send in session: rc={r.returncode} stderr={r.stderr.strip()!r}")
        assert r.returncode != 0, r.stdout
        assert "org.freedesktop.DBus" not in r.stdout
        assert not re.search(r"Connection refused|No such file", r.stderr), r.stderr
        assert re.search(r"Permission denied|Operation not permitted", r.stderr), r.stderr
        c = subprocess.run(cmd, env=outside_env(), capture_output=True, text=True, timeout=30)
        assert c.returncode == 0 and "org.freedesktop.DBus" in c.stdout, c.stderr
    finally:
        if pid:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        shutil.rmtree(d, ignore_errors=True)


# -- 3. a command-executing server outside, and the spellings of its paths -----------
class Foreign:
    """Servers outside any session, bound before the sessions start, and the
    project the sessions run in (which holds one of the foreign sockets)."""


@pytest.fixture(scope="module")
def foreign():
    f = Foreign()
    f.id = uid()
    f.tmp = Path(f"/tmp/corral-sb-{f.id}")
    f.run = Path(f"/run/corral-test-{f.id}")
    f.project = new_project()
    f.marks = f.tmp / "m"
    created: list[Path] = []
    servers = None
    try:
        for d in (f.tmp, f.marks, f.run):
            d.mkdir(mode=0o700)
            created.append(d)
        docker = Path.home() / ".docker"
        for d in (docker, docker / "run"):
            if not d.exists():
                d.mkdir(mode=0o700)
                created.append(d)
        f.docker = docker / "run" / "docker.sock"
        f.paths = {
            "tmp": str(f.tmp / "s"),
            "run": str(f.run / "s"),
            "docker": str(f.docker),
            "project": str(f.project / "s"),
        }
        f.seqpacket = str(f.tmp / "q")
        f.dgram = str(f.tmp / "d")
        f.other = str(f.tmp / "s2")             # a second one, never allowed
        f.abstract = f"@corral-sb-{f.id}"
        f.abstract_dgram = f"@corral-sb-{f.id}-d"
        if f.docker.exists():
            pytest.skip(f"{f.docker} exists (a real Docker?): not touching it")
        args = []
        for p in (*f.paths.values(), f.other, f.abstract):
            args += ["--stream", p]
        args += ["--seqpacket", f.seqpacket, "--dgram", f.dgram, "--dgram", f.abstract_dgram]
        servers = Servers(args, f.tmp / "ready")
        # a symlink in the project pointing at the foreign socket, made before the session
        (f.project / "lnk").symlink_to(f.paths["tmp"])
        (f.project / "src").mkdir()
        yield f
    finally:
        if servers:
            servers.stop()
        shutil.rmtree(f.project, ignore_errors=True)
        for d in (f.tmp, f.run):
            shutil.rmtree(d, ignore_errors=True)
        if f.docker.exists():
            f.docker.unlink()
        for d in reversed(created):
            if d.exists():
                try:
                    d.rmdir()
                except OSError:
                    pass


def spec(f, name, addr, kind="stream", **kw) -> dict:
    return {"name": name, "kind": kind, "addr": addr, "marker": str(f.marks / name), **kw}


def spellings(f) -> dict[str, dict]:
    tmp_s = f.paths["tmp"]
    rel = os.path.relpath(tmp_s, f.project)             # ../../tmp/corral-sb-ID/s
    specs = [
        spec(f, "symlink_in_project", str(f.project / "lnk")),
        # in a subdirectory: the project root refuses new entries (see own_sockets_project_root)
        spec(f, "symlink_made_in_session", str(f.project / "src" / "lnk2"),
             symlink=[tmp_s, str(f.project / "src" / "lnk2")]),
        spec(f, "proc_self_root", "/proc/self/root" + tmp_s),
        spec(f, "relative_after_chdir", "s", chdir=str(f.tmp)),
        spec(f, "dotdot_from_project", f"{f.project}/{rel}"),
        spec(f, "relative_dotdot_from_project", rel),
        spec(f, "relative_in_project", "s"),            # the foreign socket in the project
    ]
    return {s["name"]: s for s in specs}


DIRECT = ("tmp", "run", "docker", "project")


@pytest.mark.parametrize("where", DIRECT)
def test_foreign_stream_socket_refused(daemon, foreign, where):
    """connect + "run this" to a command-executing server outside the session."""
    s = spec(foreign, f"direct_{where}", foreign.paths[where])
    res = probe_in_session(daemon, foreign.project, [as_side(s, "in")])
    print(f"{where}: session got {res}")
    ctl = probe_outside([as_side(s, "out")], foreign.project)
    assert_reached(ctl, as_side(s, "out"))
    assert_refused(res, as_side(s, "in"))


@pytest.mark.parametrize("entry", ("exec", "exec-py"))
def test_foreign_sockets_refused_to_corral_exec(daemon, foreign, entry):
    """The same refusals for commands `corral exec` runs in a `corral session start`
    session (tests/entry.py): native launcher (the holder's view, entered with
    setns) and Python path (a view of its own)."""
    from entry import sandbox
    specs = [as_side(spec(foreign, f"direct_{w}", foreign.paths[w]), "in") for w in DIRECT]
    with sandbox(daemon, entry, cwd=foreign.project) as argv_for:
        e = {k: v for k, v in daemon.env.items() if k not in ("TMUX", "SSH_AUTH_SOCK")}
        p = subprocess.run(argv_for([sys.executable, SERVERS, "probe", json.dumps(specs)]),
                           cwd=foreign.project, env=e, capture_output=True, text=True,
                           timeout=RUN_TIMEOUT)
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    res = json.loads(p.stdout)
    ctl = [as_side(spec(foreign, f"direct_{w}", foreign.paths[w]), "out") for w in DIRECT]
    out = probe_outside(ctl, foreign.project)
    for c in ctl:
        assert_reached(out, c)
    for sp in specs:
        assert_refused(res, sp)


SPELLINGS = ("symlink_in_project", "symlink_made_in_session", "proc_self_root", "relative_after_chdir", "dotdot_from_project",
             "relative_dotdot_from_project", "relative_in_project")


def test_hard_linked_foreign_socket_fails_closed(daemon, project):
    """A second name its owner gave a socket (a hard link) cannot be found to be
    masked (the kernel lists only the bound name): the session does not start,
    and says why; --allow-weaker starts it, the bound name still refused. A
    hard link the session itself tries to make fails (the name is a mount)."""
    d = Path(f"/tmp/corral-sb-hl-{uid()}")
    d.mkdir(mode=0o700)
    servers = None
    try:
        sock, link = str(d / "s"), str(d / "hl")
        servers = Servers(["--stream", sock], d / "ready")
        ok = corral_run(daemon, project, "true")
        assert ok.returncode == 0, ok.stderr          # control: no link, the session starts
        os.link(sock, link)
        p = corral_run(daemon, project, "true")
        assert p.returncode != 0 and "hard link" in p.stderr and sock in p.stderr, p.stderr
        spec = {"name": "bound", "kind": "stream", "addr": sock, "marker": str(d / "m-in")}
        res = probe_in_session(daemon, project, [spec], flags=("--allow-weaker",))
        assert_refused(res, spec)
        os.unlink(link)
        # the session cannot make one itself: the bound name is a mount in its view
        q = corral_run(daemon, project, sys.executable, "-c",
                       f"import os; os.link({sock!r}, {str(d / 'mine')!r})")
        assert q.returncode != 0 and "Invalid cross-device link" in q.stderr, q.stderr
        assert not os.path.exists(d / "mine")
    finally:
        if servers:
            servers.stop()
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("name", SPELLINGS)
def test_foreign_socket_refused_whatever_the_spelling(daemon, foreign, name):
    """The decision is on the socket, not on the path string."""
    s = spellings(foreign)[name]
    res = probe_in_session(daemon, foreign.project, [as_side(s, "in")])
    print(f"{name}: session got {res}")
    ctl = probe_outside([as_side(s, "out")], foreign.project)
    assert_reached(ctl, as_side(s, "out"))
    assert_refused(res, as_side(s, "in"))


def test_foreign_socket_refused_with_keep_caps(daemon, foreign):
    """Root keeping its capabilities (CAP_DAC_OVERRIDE, CAP_SYS_ADMIN) is still refused,
    with EACCES/EPERM rather than a connect that looks like a missing server."""
    specs = [spec(foreign, f"keepcaps_{w}", foreign.paths[w]) for w in DIRECT]
    specs += [spec(foreign, "keepcaps_dgram", foreign.dgram, kind="dgram")]
    res = probe_in_session(daemon, foreign.project, [as_side(x, "in") for x in specs],
                           flags=["--keep-caps"])
    print(f"--keep-caps: session got {res}")
    ctl = probe_outside([as_side(x, "out") for x in specs], foreign.project)
    for x in specs:
        assert_reached(ctl, as_side(x, "out"))
    for x in specs:
        assert_refused(res, as_side(x, "in"))


def test_foreign_seqpacket_socket_refused(daemon, foreign):
    s = spec(foreign, "seqpacket", foreign.seqpacket, kind="seqpacket")
    res = probe_in_session(daemon, foreign.project, [as_side(s, "in")])
    print(f"seqpacket: session got {res}")
    assert_reached(probe_outside([as_side(s, "out")], foreign.project), as_side(s, "out"))
    assert_refused(res, as_side(s, "in"))


def test_foreign_datagram_socket_sendto_refused(daemon, foreign):
    s = spec(foreign, "dgram", foreign.dgram, kind="dgram")
    res = probe_in_session(daemon, foreign.project, [as_side(s, "in")])
    print(f"dgram: session got {res}")
    assert_reached(probe_outside([as_side(s, "out")], foreign.project), as_side(s, "out"))
    assert_refused(res, as_side(s, "in"))


def test_allow_unix_opens_exactly_the_named_socket(daemon, foreign):
    """--allow-unix PATH (and [network] allow_unix in a policy file): that socket
    works from the session, another foreign one next to it is still refused."""
    ok = spec(foreign, "allowed_by_flag", foreign.paths["tmp"])
    no = spec(foreign, "not_named_by_flag", foreign.other)
    res = probe_in_session(daemon, foreign.project, [as_side(ok, "flag"), as_side(no, "flag")],
                           flags=["--allow-unix", foreign.paths["tmp"]])
    print(f"--allow-unix: session got {res}")
    assert_reached(res, as_side(ok, "flag"))
    assert_refused(res, as_side(no, "flag"))

    pdir = Path(tempfile.mkdtemp(prefix="corral-sb-policy-"))
    try:
        pf = pdir / "corral.toml"
        pf.write_text(f'[network]\nallow_unix = ["{foreign.paths["tmp"]}"]\n')
        res = probe_in_session(daemon, foreign.project, [as_side(ok, "file"), as_side(no, "file")],
                               flags=["--policy", str(pf)])
        print(f"policy file allow_unix: session got {res}")
        assert_reached(res, as_side(ok, "file"))
        assert_refused(res, as_side(no, "file"))
    finally:
        shutil.rmtree(pdir, ignore_errors=True)


# -- audit -----------------------------------------------------------------------------
def test_refused_connect_is_audited_with_the_socket_path(daemon, foreign):
    """Kept apart: the record type is not fixed yet. A record that names the socket
    path with a deny verdict (of this session, when the record names one)."""
    s = spec(foreign, "audited", foreign.paths["tmp"])
    p = corral_run(daemon, foreign.project, sys.executable, SERVERS, "probe",
                   json.dumps([as_side(s, "in")]), flags=["-v"])
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert res["audited"]["result"] in REFUSED, res
    m = re.search(r"corral: session (\S+):", p.stderr)
    assert m, p.stderr
    sid = m.group(1)
    path = foreign.paths["tmp"]

    def matches(r):
        if r.get("session") not in (None, sid):
            return False
        verdict = str(r.get("verdict", "")).lower()
        return path in json.dumps(r) and verdict in ("deny", "denied", "refused", "refuse",
                                                     "block", "blocked")
    rec = daemon.wait_record(matches, timeout=10)
    print(f"audit record: {rec}")


# -- 4. the session's own sockets --------------------------------------------------------
OWN = r"""
import errno, json, multiprocessing, os, socket, subprocess, sys, time
SERVERS, tag, cases = sys.argv[1], sys.argv[2], sys.argv[3:]
proj = os.getcwd()
res = {}

def _bump(d):
    d["k"] = d["k"] + 1

def forked(kind, addr):
    # bind here, fork a child that connects (or sends), exchange one message
    s = socket.socket(socket.AF_UNIX, kind)
    try:
        s.bind(addr)
        if kind != socket.SOCK_DGRAM:
            s.listen(4)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                c = socket.socket(socket.AF_UNIX, kind)
                if kind == socket.SOCK_DGRAM:
                    c.sendto(b"ping", addr)
                    code = 0
                else:
                    c.connect(addr)
                    c.sendall(b"ping")
                    code = 0 if c.recv(16) == b"pong" else 1
            except OSError as e:
                os.write(2, f"child {addr!r}: {e}\n".encode())
                code = 100 + (e.errno or 0)
            os._exit(code)
        s.settimeout(10)
        try:
            if kind == socket.SOCK_DGRAM:
                got = s.recv(16)
            else:
                conn, _ = s.accept()
                conn.settimeout(10)
                got = conn.recv(16)
                conn.sendall(b"pong")
                conn.close()
        except socket.timeout:
            got = None
        _, st = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(st)
        if code >= 100:
            return "child: " + errno.errorcode.get(code - 100, str(code - 100))
        return "ok" if got == b"ping" and code == 0 else f"got {got!r}, child exit {code}"
    except OSError as e:
        return "bind: " + errno.errorcode.get(e.errno, str(e.errno))
    finally:
        s.close()
        if not addr.startswith("\0"):
            try:
                os.unlink(addr)
            except OSError:
                pass

def pair():
    a, b = socket.socketpair()
    a.sendall(b"x")
    ok = b.recv(1) == b"x"
    c, d = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    c.send(b"y")
    ok = ok and d.recv(1) == b"y"
    e, f = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    e.send(b"z")
    ok = ok and f.recv(1) == b"z"
    return "ok" if ok else "wrong data"

def manager():
    with multiprocessing.Manager() as m:
        d = m.dict()
        d["k"] = 41
        p = multiprocessing.Process(target=_bump, args=(d,))
        p.start()
        p.join(30)
        return "ok" if d["k"] == 42 and p.exitcode == 0 else f"k={d['k']} exit={p.exitcode}"

def separate():
    # a server exec'd on its own in the session, a client exec'd on its own: both ours
    tmp = f"/tmp/corral-sb-own-{tag}-srv"
    os.mkdir(tmp)
    ready = os.path.join(tmp, "ready")
    addrs = {"stream_tmp": os.path.join(tmp, "s"),
             "stream_project_subdir": os.path.join(proj, "src", "srv.sock"),
             "dgram_tmp": os.path.join(tmp, "d"), "abstract": f"@corral-sb-own-{tag}-srv"}
    args = []
    for k, v in addrs.items():
        args += ["--dgram" if k.startswith("dgram") else "--stream", v]
    srv = subprocess.Popen([sys.executable, SERVERS, "serve", "--ready", ready, *args],
                           stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 15
        while not os.path.exists(ready) and time.time() < deadline and srv.poll() is None:
            time.sleep(0.05)
        if not os.path.exists(ready):
            srv.kill()
            return "server did not start: " + srv.communicate()[1][-300:]
        specs = [{"name": k, "kind": "dgram" if k.startswith("dgram") else "stream", "addr": v,
                  "marker": os.path.join(tmp, "m-" + k)} for k, v in addrs.items()]
        out = subprocess.run([sys.executable, SERVERS, "probe", json.dumps(specs)],
                             capture_output=True, text=True, timeout=60)
        got = json.loads(out.stdout)
        time.sleep(0.3)
        bad = {}
        for sp in specs:
            r = got[sp["name"]]
            if r["result"] != "ok" or not os.path.exists(sp["marker"]):
                bad[sp["name"]] = r
        return "ok" if not bad else f"failed: {bad}"
    finally:
        if srv.poll() is None:
            srv.kill()
        srv.wait()
        try:
            os.unlink(addrs["stream_project_subdir"])
        except OSError:
            pass
        subprocess.run(["rm", "-rf", tmp])

ST, SQ, DG = socket.SOCK_STREAM, socket.SOCK_SEQPACKET, socket.SOCK_DGRAM
CASES = {
    "fork_stream_project_root": lambda: forked(ST, os.path.join(proj, "own.sock")),
    "fork_dgram_project_root": lambda: forked(DG, os.path.join(proj, "own.dg")),
    "fork_stream_project_subdir": lambda: forked(ST, os.path.join(proj, "src", "own.sock")),
    "fork_dgram_project_subdir": lambda: forked(DG, os.path.join(proj, "src", "own.dg")),
    "fork_stream_tmp": lambda: forked(ST, f"/tmp/corral-sb-own-{tag}.sock"),
    "fork_seqpacket_tmp": lambda: forked(SQ, f"/tmp/corral-sb-own-{tag}.sq"),
    "fork_dgram_tmp": lambda: forked(DG, f"/tmp/corral-sb-own-{tag}.dg"),
    "fork_stream_abstract": lambda: forked(ST, f"\0corral-sb-own-{tag}"),
    "fork_dgram_abstract": lambda: forked(DG, f"\0corral-sb-own-{tag}-d"),
    "socketpair": pair,
    "multiprocessing_manager": manager,
    "separate_processes": separate,
}
for name in cases:
    try:
        res[name] = CASES[name]()
    except Exception as e:
        res[name] = repr(e)
print(json.dumps(res))
"""


def run_own(daemon, project, *cases) -> dict:
    (project / "src").mkdir(exist_ok=True)
    p = corral_run(daemon, project, sys.executable, "-c", OWN, SERVERS, uid(), *cases)
    assert p.returncode == 0, (p.stdout, p.stderr)
    res = json.loads(p.stdout)
    print(f"own sockets: {res}\nstderr: {p.stderr.strip()}")
    return res


def assert_all_ok(res: dict):
    bad = {k: v for k, v in res.items() if v != "ok"}
    assert not bad, bad


def test_session_own_sockets_in_tmp_and_project_subdir_work(daemon, project):
    """Bound by a process of the session, in /tmp and in a project subdirectory: a
    forked child, and separately exec'd server and client processes, reach them."""
    assert_all_ok(run_own(daemon, project, "fork_stream_tmp", "fork_seqpacket_tmp",
                          "fork_dgram_tmp", "fork_stream_project_subdir",
                          "fork_dgram_project_subdir", "separate_processes"))


def test_session_own_socket_in_project_root_works(daemon, project):
    """The spec's "a server that binds in the project root". Kept apart: on Landlock
    the fresh project's root refuses new entries (frozen_dirs: the mandatory
    deny_write paths ./.mcp.json, ./.vscode... do not exist yet), which is a
    filesystem rule, not the socket boundary."""
    assert_all_ok(run_own(daemon, project, "fork_stream_project_root", "fork_dgram_project_root"))


def test_session_own_abstract_sockets_work(daemon, project):
    """The other half of test 7: Landlock's abstract-socket scope lets the session
    reach its own abstract sockets."""
    assert_all_ok(run_own(daemon, project, "fork_stream_abstract", "fork_dgram_abstract"))


def test_socketpair_and_multiprocessing_manager_work(daemon, project):
    assert_all_ok(run_own(daemon, project, "socketpair", "multiprocessing_manager"))


# -- 5. ssh-agent ----------------------------------------------------------------------
@pytest.fixture
def agent():
    d = Path(tempfile.mkdtemp(prefix="corral-sb-agent-", dir="/tmp"))
    sock = d / "agent.sock"
    proc = None
    try:
        key = d / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"corral-sb-{uid()}",
                        "-f", str(key)], check=True, timeout=30, capture_output=True)
        fp = subprocess.run(["ssh-keygen", "-lf", f"{key}.pub"], check=True, timeout=30,
                            capture_output=True, text=True).stdout.split()[1]
        proc = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], env=outside_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(sock.exists, 10, "ssh-agent socket")
        env = outside_env(SSH_AUTH_SOCK=str(sock))
        subprocess.run(["ssh-add", str(key)], env=env, check=True, timeout=30, capture_output=True)
        c = subprocess.run(["ssh-add", "-l"], env=env, capture_output=True, text=True, timeout=30)
        assert c.returncode == 0 and fp in c.stdout, (c.stdout, c.stderr)     # control
        yield {"sock": str(sock), "fingerprint": fp, "dir": d}
    finally:
        if proc:
            proc.kill()
            proc.wait(10)
        shutil.rmtree(d, ignore_errors=True)


def test_ssh_agent_refused_without_flags(daemon, project, agent):
    p = corral_run(daemon, project, "ssh-add", "-l", env={"SSH_AUTH_SOCK": agent["sock"]})
    print(f"ssh-add -l in session: rc={p.returncode} out={p.stdout.strip()!r} "
          f"err={p.stderr.strip()!r}")
    assert p.returncode != 0
    assert agent["fingerprint"] not in p.stdout
    # "Could not open a connection" is ssh-add's ENOENT/ECONNREFUSED; a refusal prints strerror
    assert "Could not open a connection" not in p.stderr, p.stderr
    assert re.search(r"Permission denied|Operation not permitted", p.stderr), p.stderr


@pytest.mark.parametrize("how", ["allow-ssh-agent", "allow-unix", "policy-file"])
def test_ssh_agent_allowed_by_policy(daemon, project, agent, how):
    flags: list[str] = []
    if how == "allow-ssh-agent":
        flags = ["--allow-ssh-agent"]
    elif how == "allow-unix":
        flags = ["--allow-unix", agent["sock"]]
    else:
        pf = agent["dir"] / "corral.toml"
        pf.write_text(f'[network]\nallow_unix = ["{agent["sock"]}"]\n')
        flags = ["--policy", str(pf)]
    p = corral_run(daemon, project, "ssh-add", "-l", flags=flags,
                   env={"SSH_AUTH_SOCK": agent["sock"]})
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert agent["fingerprint"] in p.stdout, p.stdout


# -- 6. metadata outside allow_write ----------------------------------------------------
META = r"""
import errno, json, os, subprocess, sys
pre = sys.argv[1]
res = {}
def rec(name, fn):
    try:
        fn(); res[name] = "ok"
    except OSError as e:
        res[name] = errno.errorcode.get(e.errno, str(e.errno))
rec("chmod", lambda: os.chmod(pre + "chmod", 0o600))
rec("chown_other", lambda: os.chown(pre + "chown_other", 12345, -1))
rec("chown_back", lambda: os.chown(pre + "chown_back", 0, -1))
rec("utime", lambda: os.utime(pre + "utime", (1000000000, 1000000000)))
rec("setxattr", lambda: os.setxattr(pre + "setxattr", "user.x", b"1"))
rec("truncate", lambda: os.truncate(pre + "truncate", 0))
def tool(name, *argv):
    p = subprocess.run([*argv, pre + name], capture_output=True, text=True, timeout=30)
    res[name] = "ok" if p.returncode == 0 else f"rc={p.returncode}: {p.stderr.strip()}"
tool("tool_chmod", "chmod", "600")
tool("tool_chown_other", "chown", "12345")
tool("tool_chown_back", "chown", "0")
tool("tool_touch", "touch", "-d", "2001-09-09 01:46:40")
tool("tool_setfattr", "setfattr", "-n", "user.x", "-v", "1")
tool("tool_truncate", "truncate", "-s", "0")
print(json.dumps(res))
"""

META_OPS = ("chmod", "chown_other", "chown_back", "utime", "setxattr", "truncate",
            "tool_chmod", "tool_chown_other", "tool_chown_back", "tool_touch", "tool_setfattr",
            "tool_truncate")
CONTENT = b"original\n"
MTIME = 1500000000


def make_meta_files(prefix: str) -> None:
    for op in META_OPS:
        p = prefix + op
        with open(p, "wb") as fh:
            fh.write(CONTENT)
        os.chmod(p, 0o644)
        os.chown(p, 12345 if op.endswith("chown_back") else 0, 0)
        os.utime(p, (MTIME, MTIME))


def meta_state(p: str) -> dict:
    st = os.stat(p)
    try:
        x = os.getxattr(p, "user.x")
    except OSError:
        x = None
    return {"mode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "mtime": int(st.st_mtime),
            "xattr": x, "content": open(p, "rb").read()}


@pytest.fixture
def outside_dir():
    d = Path(f"/var/lib/corral-test-{uid()}")
    d.mkdir(mode=0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("caps", ["dropped", "keep-caps"])
def test_metadata_outside_allow_write_is_refused(daemon, project, outside_dir, caps):
    pre = f"{outside_dir}/"
    make_meta_files(pre)
    before = {op: meta_state(pre + op) for op in META_OPS}
    flags = ["--keep-caps"] if caps == "keep-caps" else []
    p = corral_run(daemon, project, sys.executable, "-c", META, pre, flags=flags)
    assert p.returncode == 0, (p.stdout, p.stderr)
    res = json.loads(p.stdout)
    print(f"outside allow_write, caps {caps}: {res}")
    after = {op: meta_state(pre + op) for op in META_OPS}
    changed = {op: (before[op], after[op]) for op in META_OPS if before[op] != after[op]}
    syscall_ok = {op: res[op] for op in META_OPS if not op.startswith("tool_")
                  and res[op] not in META_REFUSED}
    tool_ok = {op: res[op] for op in META_OPS if op.startswith("tool_") and res[op] == "ok"}
    assert not changed, f"metadata changed outside allow_write: {changed}; results {res}"
    assert not syscall_ok, f"not refused with EROFS/EACCES/EPERM: {syscall_ok}"
    assert not tool_ok, f"tools succeeded: {tool_ok}"


@pytest.mark.parametrize("caps", ["dropped", "keep-caps"])
def test_metadata_inside_project_root_works(daemon, project, caps):
    pre = f"{project}/meta-"
    make_meta_files(pre)
    flags = ["--keep-caps"] if caps == "keep-caps" else []
    p = corral_run(daemon, project, sys.executable, "-c", META, pre, flags=flags)
    assert p.returncode == 0, (p.stdout, p.stderr)
    res = json.loads(p.stdout)
    print(f"project root, caps {caps}: {res}")
    # chown to another uid, and back from it, needs CAP_CHOWN: only with --keep-caps
    need_caps = {"chown_other", "chown_back", "tool_chown_other", "tool_chown_back"}
    expect_ok = [op for op in META_OPS if caps == "keep-caps" or op not in need_caps]
    bad = {op: res[op] for op in expect_ok if res[op] != "ok"}
    assert not bad, bad
    if caps == "dropped":
        assert res["chown_other"] == "EPERM", res        # no CAP_CHOWN, not the boundary
    st = {op: meta_state(pre + op) for op in META_OPS}
    assert st["chmod"]["mode"] == 0o600 and st["tool_chmod"]["mode"] == 0o600
    assert st["utime"]["mtime"] == 1000000000 and st["tool_touch"]["mtime"] == 1000000000
    assert st["setxattr"]["xattr"] == b"1" and st["tool_setfattr"]["xattr"] == b"1"
    assert st["truncate"]["content"] == b"" and st["tool_truncate"]["content"] == b""
    if caps == "keep-caps":
        assert st["chown_other"]["uid"] == 12345 and st["tool_chown_other"]["uid"] == 12345
        assert st["chown_back"]["uid"] == 0 and st["tool_chown_back"]["uid"] == 0


# -- 7. abstract sockets (Landlock scoping: a regression guard) ---------------------------
def test_abstract_socket_of_outside_process_refused(daemon, foreign):
    specs = [spec(foreign, "abstract_stream", foreign.abstract),
             spec(foreign, "abstract_dgram", foreign.abstract_dgram, kind="dgram")]
    res = probe_in_session(daemon, foreign.project, [as_side(s, "in") for s in specs])
    print(f"abstract: session got {res}")
    ctl = probe_outside([as_side(s, "out") for s in specs], foreign.project)
    for s in specs:
        assert_reached(ctl, as_side(s, "out"))
        assert_refused(res, as_side(s, "in"))
    # the session's own abstract sockets: test_session_own_sockets_work (fork_*_abstract)


# -- 8. a foreign socket bound after the session started --------------------------------
def test_foreign_socket_bound_after_session_start_refused(daemon, project):
    d = Path(f"/tmp/corral-sb-late-{uid()}")
    d.mkdir(mode=0o700)
    servers = None
    sess = None
    try:
        announce, go = d / "started", d / "go"
        s = {"name": "late", "kind": "stream", "addr": str(d / "s"), "marker": str(d / "m-in")}
        sd = {"name": "late_dgram", "kind": "dgram", "addr": str(d / "d"),
              "marker": str(d / "md-in")}
        e = {k: v for k, v in daemon.env.items() if k not in ("TMUX", "SSH_AUTH_SOCK")}
        sess = subprocess.Popen([CORRAL, "run", "--", sys.executable, SERVERS, "probe",
                                 json.dumps([s, sd]), "--announce", str(announce), "--wait", str(go)],
                                cwd=project, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        wait_for(lambda: announce.exists() or sess.poll() is not None, 60, "session start")
        assert sess.poll() is None, sess.communicate()
        servers = Servers(["--stream", s["addr"], "--dgram", sd["addr"]], d / "ready")
        # The daemon finds sockets bound after a session started within
        # unixwatch.POLL and masks them (the documented window); wait for its record.
        wait_for(lambda: sum(1 for r in daemon.records() if r.get("op") == "unix_masked"
                             and r.get("target") in (s["addr"], sd["addr"])) == 2,
                 10, "the daemon's unix_masked records")
        go.touch()
        out, err = sess.communicate(timeout=RUN_TIMEOUT)
        assert sess.returncode == 0, (out, err)
        res = json.loads(out)
        print(f"late socket: session got {res}")
        ctl = probe_outside([dict(s, marker=str(d / "m-out")),
                             dict(sd, marker=str(d / "md-out"))], project)
        assert_reached(ctl, dict(s, marker=str(d / "m-out")))
        assert_reached(ctl, dict(sd, marker=str(d / "md-out")))
        assert_refused(res, s)
        assert_refused(res, sd)
    finally:
        if sess and sess.poll() is None:
            sess.kill()
            sess.communicate()
        if servers:
            servers.stop()
        shutil.rmtree(d, ignore_errors=True)
