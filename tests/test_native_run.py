"""`corral run` through the native launcher (issue 15): corrald prepares the policy,
the session, the mount view's operations and the Landlock ruleset
(server/runprep.py); the launcher creates the command in the session's cgroup,
builds the view, confines it and execs.

The native path must give the session the Python path gives: the same policy,
the same mount view (mount points and their options, read from the command's
/proc/self/mountinfo), the same number of Landlock rules, the same notes; and
`corral run`'s semantics: exit status and signals, what the command leaves is
killed when it exits, options it does not serve go to the Python CLI."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time

import pytest

from harness import CORRAL, CORRAL_PY, assert_sigterm_reaches_command, home_project

PROBE = ("awk '{print $5, $6}' /proc/self/mountinfo | sort; "
         "grep -E '^(Seccomp|NoNewPrivs|CapEff):' /proc/self/status; echo S=$CORRAL_SESSION")


@pytest.fixture(scope="module")
def daemon(agentd):
    return agentd            # the default profile names domains: the resolver must run


@pytest.fixture
def project():
    with home_project("corral-nrun-") as d:
        yield d


def run(binary, *args, cwd, env=None, **kw):
    e = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "OPENAI_"))}
    e.update(env or {})
    return subprocess.run([str(binary), "run", *args], cwd=cwd, env=e, capture_output=True,
                          text=True, timeout=kw.pop("timeout", 90), **kw)


def session_of(p) -> str:
    line = [x for x in p.stdout.splitlines() if x.startswith("S=")]
    assert line, (p.stdout, p.stderr)
    return line[0][2:]


def records(daemon, sid, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        recs = [r for r in daemon.records() if r.get("session") == sid]
        if any(r.get("op") == "end" for r in recs) or time.monotonic() > deadline:
            return recs
        time.sleep(0.1)


POLICY_FILE = """extends = "agent"
[network]
allow_domains = ["example.org"]
[filesystem]
deny_read = ["~/corral-nrun-secret"]
"""


@pytest.mark.parametrize("flags,env", [
    ((), {}), (("--no-net",), {}), (("--profile", "offline"), {}), (("--open-net",), {}),
    (("--policy", "p.toml"), {}),
    (("--policy=p.toml", "--allow-domain", "example.com:443", "--deny-read", "~/nope",
      "--allow-write", ".", "--pass-env", "FOO_TOKEN", "--name", "n1", "--label", "team=a"), {}),
    (("--profile", "agent", "--allow-localhost-port", "8080"),
     {"ANTHROPIC_BASE_URL": "http://127.0.0.1:9"}),
    (("--srt-settings", "srt.json"), {}),
], ids=["default", "no-net", "offline", "open-net", "policy-file", "many-flags", "base-url",
        "srt-settings"])
def test_native_run_gives_the_session_the_python_path_gives(daemon, project, flags, env):
    """Every policy option goes through the launcher (corrald parses them with the
    CLI's own parser, the launcher reads the files they name): same session."""
    (project / "p.toml").write_text(POLICY_FILE)
    (project / "srt.json").write_text('{"network": {"allowedDomains": ["pypi.org"]}, '
                                      '"filesystem": {"denyRead": ["~/.aws"]}}')
    env = dict(daemon.env, **env)
    native = run(CORRAL, *flags, "--", "sh", "-c", PROBE, cwd=project, env=env)
    python = run(CORRAL_PY, *flags, "--", "sh", "-c", PROBE, cwd=project, env=env)
    assert native.returncode == 0 and python.returncode == 0, (native.stderr, python.stderr)
    got = {}
    for name, p in (("native", native), ("python", python)):
        sid = session_of(p)
        recs = records(daemon, sid)
        start = [r for r in recs if r.get("op") == "start"][0]
        confined = [r for r in recs if r.get("op") == "confined"][0]
        view = [x for x in p.stdout.splitlines() if not x.startswith(("S=", "Seccomp", "NoNew",
                                                                        "CapEff"))]
        got[name] = {"policy": start["policy"], "report": confined["report"],
                     "start": {k: start.get(k) for k in ("session_name", "labels", "policy_name")},
                     "view": _view_without_foreign_sockets(view, confined["report"]),
                     "status": sorted(x for x in p.stdout.splitlines()
                                      if x.startswith(("Seccomp", "NoNew", "CapEff"))),
                     "stderr": p.stderr}
    n, py = got["native"], got["python"]
    assert n["report"].get("path") == "native" and py["report"].get("path") is None, n["report"]
    assert n["policy"] == py["policy"]
    assert n["start"] == py["start"]
    if "--name" in flags:
        assert n["start"] == {"session_name": "n1", "labels": {"team": "a"}, "policy_name": None}
    if "p.toml" in " ".join(flags):
        assert "example.org" in n["policy"]["network"]["allow_domains"], n["policy"]
    assert n["view"] == py["view"], "the mount views differ"
    assert n["status"] == py["status"] == ["CapEff:\t0000000000000000", "NoNewPrivs:\t1",
                                           "Seccomp:\t2"], n["status"]
    for k in ("landlock_rules", "read_only_mounts", "hidden_paths",
              "writable_mounts", "watched_names", "landlock"):
        assert n["report"].get(k) == py["report"].get(k), (k, n["report"].get(k), py["report"].get(k))
    # the same sockets masked, but for other corrald instances' that came or went between the runs
    differ = set(n["report"].get("masked_sockets") or []) ^ set(py["report"].get("masked_sockets")
                                                                 or [])
    assert all(x.endswith("/run.sock") and not x.startswith(str(daemon.tmp)) for x in differ), differ
    assert ("masked_sockets" in n["report"]) == ("masked_sockets" in py["report"])
    assert all(n["report"]["kernel_checked"].values()), n["report"]
    assert n["stderr"] == py["stderr"], (n["stderr"], py["stderr"])


def _view_without_foreign_sockets(view: list[str], report: dict) -> str:
    """The view's mounts, less the masks over other processes' Unix sockets: which
    sockets exist changes between two runs when other daemons come and go (the
    reports' masked_sockets, compared apart, say which each run masked)."""
    masked = set(report.get("masked_sockets") or [])
    kept = [x for x in view if x.split(" ", 1)[0] not in masked]
    return hashlib.sha256("\n".join(kept).encode()).hexdigest()


def test_native_run_semantics(daemon, project):
    env = daemon.env
    assert run(CORRAL, "--no-net", "--", "sh", "-c", "exit 7", cwd=project, env=env).returncode == 7
    p = run(CORRAL, "--no-net", "--", "sh", "-c", "kill -TERM $$", cwd=project, env=env)
    assert p.returncode == -signal.SIGTERM, p
    p = run(CORRAL, "--no-net", "--", "tr", "a-z", "A-Z", cwd=project, env=env, input="abc\n")
    assert p.stdout == "ABC\n", p
    p = run(CORRAL, "--no-net", "--", "no-such-command-corral", cwd=project, env=env)
    assert p.returncode == 127 and "no-such-command-corral" in p.stderr, p
    # what the command leaves is killed when it exits (the session ends with it)
    p = run(CORRAL, "--no-net", "--", "sh", "-c", "setsid sleep 300 >/dev/null 2>&1 & echo $!",
            cwd=project, env=env)
    left = int(p.stdout.strip())
    with pytest.raises(ProcessLookupError):
        for _ in range(50):
            os.kill(left, 0)
            time.sleep(0.1)
    # a refusal ends with the one summary line, -q silences it
    p = run(CORRAL, "--no-net", "--", "python3", "-c",
            "import socket; socket.create_connection(('192.0.2.1', 80), timeout=3)",
            cwd=project, env=env)
    assert p.returncode != 0 and "refused 1 net" in p.stderr, p.stderr


def test_sigterm_to_native_run_reaches_the_command(daemon, project):
    assert_sigterm_reaches_command([str(CORRAL), "run", "--no-net", "--"], daemon.env, project)


def test_native_keep_running_outlives_the_command(daemon, project):
    p = run(CORRAL, "--keep-running", "--no-net", "--", "sh", "-c",
            "setsid sleep 300 >/dev/null 2>&1 & echo $!; echo S=$CORRAL_SESSION", cwd=project,
            env=daemon.env)
    assert p.returncode == 0, p.stderr
    sid, left = session_of(p), int(p.stdout.split()[0])
    try:
        time.sleep(0.5)
        os.kill(left, 0)                            # still there: the session lives on
        with daemon.client() as c:
            s = c.call("session_info", session=sid)
        assert s["keep_running"] is True and s["leader_alive"] is False, s
        confined = [r for r in records(daemon, sid, timeout=0.5) if r.get("op") == "confined"]
        assert confined[0]["report"].get("path") == "native", confined
    finally:
        e = subprocess.run([str(CORRAL_PY), "end", sid], env=daemon.env, capture_output=True,
                           text=True, timeout=30)
    assert "1 process killed" in e.stdout, e
    with pytest.raises(ProcessLookupError):
        for _ in range(50):
            os.kill(left, 0)
            time.sleep(0.1)


@pytest.mark.parametrize("args", [("--keep-caps",), ("-v",), ("--allow-write", "new-dir"),
                                  ("--prof", "agent"), ("--policy", "missing.toml", "--open-net")],
                         ids=["keep-caps", "verbose", "allow-write-missing", "abbreviated",
                              "unreadable-file"])
def test_what_the_launcher_does_not_serve_goes_to_the_python_cli(daemon, project, args):
    """Options the launcher does not apply, an allow_write to create as the caller,
    and what only the Python CLI accepts or explains go there."""
    p = run(CORRAL, *args, "--", "sh", "-c", "echo S=$CORRAL_SESSION", cwd=project,
            env=daemon.env)
    if "missing.toml" in args:      # the Python CLI's own error, not the launcher's
        assert p.returncode == 2 and "missing.toml: cannot read policy file" in p.stderr, p
        return
    assert p.returncode == 0, p.stderr
    sid = session_of(p)
    confined = [r for r in records(daemon, sid, timeout=3) if r.get("op") == "confined"]
    assert confined and confined[0]["report"].get("path") is None, confined


def test_interactive_bash_under_tmux(daemon, project):
    """The terminal passes through the native `corral run`: an interactive bash in
    the session reads what tmux types and has the pane's tty on stdin."""
    name = f"corral-nrun-{os.getpid()}"
    out = project / "tty-result"
    subprocess.run(["tmux", "-L", name, "new-session", "-d", "-x", "120", "-y", "30",
                    f"{CORRAL} run --no-net -- bash --norc --noprofile -i"],
                   env=daemon.env, cwd=project, check=True, timeout=30)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not out.exists():
            subprocess.run(["tmux", "-L", name, "send-keys",
                            f'[ -t 0 ] && echo "$CORRAL_SESSION $(tty)" > {out}', "Enter"],
                           env=daemon.env, timeout=10)
            time.sleep(0.5)
        got = out.read_text().split()
        assert len(got) == 2 and got[1].startswith("/dev/pts/"), got
        recs = records(daemon, got[0], timeout=0.5)
        confined = [r for r in recs if r.get("op") == "confined"]
        assert confined and confined[0]["report"].get("path") == "native", recs
    finally:
        subprocess.run(["tmux", "-L", name, "kill-server"], env=daemon.env, capture_output=True,
                       timeout=10)


def test_cached_landlock_plan_follows_new_entries(daemon, project):
    """corrald keeps a session's Landlock plan while the directories it listed
    are unchanged (runprep._cached_plan). $HOME is one of them when the project
    is below it (the profile denies ~/.aws and others that do not exist, so
    Landlock grants its entries one by one): a file made there after a session
    is readable by the next one, also one made within the kernel clock's
    granularity of the last change (not cached then)."""
    time.sleep(1.2)                     # $HOME settled: the plan below is cached
    for _ in range(2):
        p = run(CORRAL, "-q", "--", "true", cwd=project, env=daemon.env)
        assert p.returncode == 0, p.stderr
    made = []
    try:
        for i in range(3):
            if i == 2:
                # $HOME settled again (50 ms on a nanosecond filesystem): this run's plan
                # is kept, and the file made next must still invalidate it
                time.sleep(0.1 if os.stat(os.path.expanduser("~")).st_mtime_ns % 10**9 else 2.2)
                assert run(CORRAL, "-q", "--", "true", cwd=project, env=daemon.env).returncode == 0
            f = os.path.join(os.path.expanduser("~"), f".corral-plan-test-{os.getpid()}-{i}")
            with open(f, "w") as fh:
                fh.write(f"fresh {i}")
            made.append(f)
            p = run(CORRAL, "-q", "--", "cat", f, cwd=project, env=daemon.env)
            assert p.returncode == 0 and p.stdout == f"fresh {i}", (i, p.stdout, p.stderr)
        # the control: what the profile denies stays denied, cached or not
        p = run(CORRAL, "-q", "--", "cat", "/etc/shadow", cwd=project, env=daemon.env)
        assert p.returncode != 0 and "Permission denied" in p.stderr, p.stderr
    finally:
        for f in made:
            os.unlink(f)


# -- not root: corrald moves the command in (join_child), the view is a user namespace's --
@pytest.fixture(scope="module")
def user():
    """A user of our own with a real home (the profiles write ~/.cache/pip: nobody's
    passwd home /nonexistent cannot hold it), removed after."""
    import pwd
    import shutil
    import tempfile
    from pathlib import Path
    name = f"corralt{os.getpid() % 100000}"
    home = Path(tempfile.mkdtemp(prefix="corral-nrun-user-"))
    subprocess.run(["useradd", "-M", "-d", str(home), "-s", "/bin/sh", "-U", name], check=True,
                   capture_output=True)
    try:
        pw = pwd.getpwnam(name)
        os.chown(home, pw.pw_uid, pw.pw_gid)
        yield pw
    finally:
        subprocess.run(["userdel", name], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def nobody_project(user):
    """A project at the root of the user's home (where a user starts an agent)."""
    from pathlib import Path
    home = Path(user.pw_dir)
    for p in home.iterdir():
        subprocess.run(["rm", "-rf", str(p)])
    # What a user who ever ran npm and pip has (the agent profile writes them; missing,
    # the launcher hands the run to the Python CLI, which creates them as the caller).
    subprocess.run([*as_user(user), "mkdir", "-p", str(home / ".npm"), str(home / ".cache/pip")],
                   check=True)
    return home


def as_user(user) -> list[str]:
    return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups"]


@pytest.mark.parametrize("flags", [(), ("--no-net",), ("--policy", "p.toml")],
                         ids=["default", "no-net", "policy-file"])
def test_non_root_native_run_gives_the_python_paths_session(daemon, user, nobody_project, flags):
    """A user's `corral run` through the launcher: the same policy, view, confinement
    and notes as the Python CLI's, the command in the session's cgroup as that user."""
    (nobody_project / "p.toml").write_text(POLICY_FILE)
    os.chown(nobody_project / "p.toml", user.pw_uid, user.pw_gid)
    env = dict(daemon.env, HOME=str(nobody_project))
    probe = PROBE + "; id -u; cat /proc/self/cgroup; touch made-$$ && echo wrote"
    got = {}
    # The Python CLI first: it creates the profile's allow_write places a new user
    # lacks (~/.npm...), which only it can do as the caller (the launcher hands such a
    # first run to it).
    for name, binary in (("python", CORRAL_PY), ("native", CORRAL)):
        p = subprocess.run([*as_user(user), str(binary), "run", *flags, "--", "sh", "-c", probe],
                           cwd=nobody_project, env=env, capture_output=True, text=True,
                           timeout=90)
        assert p.returncode == 0, (name, p.stderr)
        sid = session_of(p)
        recs = records(daemon, sid)
        start = [r for r in recs if r.get("op") == "start"][0]
        confined = [r for r in recs if r.get("op") == "confined"][0]
        lines = p.stdout.splitlines()
        assert str(user.pw_uid) in lines and "wrote" in lines, p.stdout
        assert any(x.startswith("0::/") and x.endswith("/" + sid) for x in lines), lines
        view = [x for x in lines if " " in x and not x.startswith(("S=", "0::"))]
        got[name] = {"policy": start["policy"], "uid": start["uid"], "report": confined["report"],
                     "view": view, "stderr": [x for x in p.stderr.splitlines()
                                              if not x.startswith("corral: note: created ")],
                     "status": sorted(x for x in lines if x.startswith(("Seccomp", "NoNew",
                                                                       "CapEff")))}
    n, py = got["native"], got["python"]
    assert n["report"].get("path") == "native" and py["report"].get("path") is None
    assert n["uid"] == py["uid"] == user.pw_uid
    assert n["policy"] == py["policy"]
    assert n["view"] == py["view"], "the mount views differ"
    assert n["status"] == py["status"] == ["CapEff:\t0000000000000000", "NoNewPrivs:\t1",
                                           "Seccomp:\t2"], n["status"]
    for k in ("landlock_rules", "read_only_mounts", "hidden_paths", "watched_names",
              "mount_namespace"):
        assert n["report"].get(k) == py["report"].get(k), (k, n["report"].get(k), py["report"].get(k))
    assert all(n["report"]["kernel_checked"].values()), n["report"]
    assert n["stderr"] == py["stderr"], (n["stderr"], py["stderr"])


def test_non_root_native_run_is_confined(daemon, user, nobody_project):
    """The non-root native command really is confined: ~/.ssh unreadable, a raw IP
    refused, its project writable at the root (the control), the exit status kept."""
    ssh = nobody_project / ".ssh"
    ssh.mkdir()
    (ssh / "id_ed25519").write_text("KEY\n")
    for x in (ssh, ssh / "id_ed25519"):
        os.chown(x, user.pw_uid, user.pw_gid)
    env = dict(daemon.env, HOME=str(nobody_project))
    script = ("cat ~/.ssh/id_ed25519 2>/dev/null && echo READ; "
              "python3 -c \"import socket; socket.create_connection(('192.0.2.1', 80), 2)\" "
              "2>/dev/null || echo NET-REFUSED; echo x > root-file && echo WROTE; "
              "echo S=$CORRAL_SESSION; exit 3")
    p = subprocess.run([*as_user(user), str(CORRAL), "run", "-q", "--", "sh", "-c", script],
                       cwd=nobody_project, env=env, capture_output=True, text=True, timeout=90)
    assert p.returncode == 3, p.stderr
    assert p.stdout.split()[:2] == ["NET-REFUSED", "WROTE"], p.stdout
    confined = [r for r in records(daemon, session_of(p)) if r.get("op") == "confined"]
    assert confined[0]["report"].get("path") == "native", confined
    assert (nobody_project / "root-file").read_text() == "x\n"
    outside = subprocess.run([*as_user(user), "cat", str(ssh / "id_ed25519")], capture_output=True,
                             text=True)
    assert outside.stdout == "KEY\n"                 # the control: readable outside


def _raw_call(daemon, op, **kw):
    from corral.client.connection import Client
    with Client(daemon.socket) as c:
        return c.call(op, **kw)


def test_join_child_moves_only_the_preparers_own_child(daemon, user, nobody_project):
    """join_child: only the process that prepared the session, only for its own child
    with its own ids; a session it did not prepare, its parent, a set-uid program it
    started, or a second join are refused."""
    import sys
    code = f"""
import os, sys, time
sys.path[:0] = {sys.path!r}
from corral.client.connection import Client, CorralError
def call(op, **kw):
    with Client({str(daemon.socket)!r}) as c:
        return c.call(op, **kw)
r = call("run_prepare", argv=["--no-net", "--", "true"], files={{}}, env={{}}, home=os.getcwd(),
         env_names=[])
sid = r["session"]
assert r["join"] is True, r
def refused(**kw):
    try:
        call("join_child", **kw)
    except CorralError as e:
        return e.code
    return "moved"
print("other-session", refused(session="00000000", pid=os.getpid()))
print("parent", refused(session=sid, pid=os.getppid()))
r2 = call("run_prepare", argv=["--no-net", "--", "true"], files={{}}, env={{}},
          home=os.getcwd(), env_names=[])
pid = os.fork()
if pid == 0:
    time.sleep(30)
    os._exit(0)
import subprocess
suid = subprocess.Popen(["/usr/bin/passwd"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL)      # set-uid root, waits for a password
time.sleep(0.3)
print("setuid-child", refused(session=r2["session"], pid=suid.pid))
suid.kill()
r2 = call("run_prepare", argv=["--no-net", "--", "true"], files={{}}, env={{}},
          home=os.getcwd(), env_names=[])
print("own-child", refused(session=r2["session"], pid=pid))
print("again", refused(session=r2["session"], pid=pid))
print("cgroup", open(f"/proc/{{pid}}/cgroup").read().strip().endswith("/" + r2["session"]))
os.kill(pid, 9)
"""
    p = subprocess.run([*as_user(user), sys.executable, "-c", code], cwd=nobody_project,
                       env=dict(daemon.env, HOME=str(nobody_project)), capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split("\n")[:6] == ["other-session forbidden", "parent forbidden",
                                       "setuid-child forbidden", "own-child moved",
                                       "again forbidden", "cgroup True"], p.stdout


@pytest.mark.parametrize("binary", [CORRAL, CORRAL_PY], ids=["native", "python"])
def test_options_without_a_profile_say_what_they_leave(daemon, project, host_listener, binary):
    """One --deny-read and no profile: the options are the whole policy, so the
    network is open and nothing is writable; one line says so, and it is true (the
    host's loopback service connects, the project root refuses a new file). The
    control: the same denial on top of --profile agent says nothing and keeps the
    profile's network refused and the project writable."""
    script = ("touch made-here 2>/dev/null && echo WROTE; "
              f"python3 -c \"import socket; socket.create_connection(('127.0.0.1', {host_listener}), 3)\" "
              "2>/dev/null && echo NET; true")
    p = run(binary, "--deny-read", "~/corral-nope", "--", "sh", "-c", script, cwd=project,
            env=daemon.env)
    assert p.returncode == 0, p.stderr
    assert ("no profile: these options are the whole policy: the network is unrestricted and "
            "nothing is writable") in p.stderr, p.stderr
    assert p.stdout.split() == ["NET"], p.stdout
    p = run(binary, "--profile", "agent", "--deny-read", "~/corral-nope", "--", "sh", "-c", script,
            cwd=project, env=daemon.env)
    assert p.returncode == 0 and "no profile" not in p.stderr, p.stderr
    assert p.stdout.split() == ["WROTE"], p.stdout
