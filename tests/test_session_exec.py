"""Many commands in one session (issue 15): `corral session start`, `corral exec
ID -- CMD` through the native launcher ("exec") and the Python path ("exec-py"),
`corral session stop`.

Each command runs in the session's cgroup with its policy and is confined as a
`corral run` command is (read from /proc and tried against the kernel, not taken
from a report); exit codes, signals, stdin/stdout and a terminal pass through;
only the owner, or a process already in the session, gets in; a stopped or
timed-out session refuses commands with a clear message."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from entry import binary, start_session, stop_session
from harness import assert_sigterm_reaches_command, frame, home_project, raw_socket, read_frame

EXECS = ("exec", "exec-py")
FLAGS = ("--no-net",)

PROBE = r"""
import ctypes, errno, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
def unshare_ns():
    if libc.unshare(0x00020000) != 0:               # CLONE_NEWNS
        raise OSError(ctypes.get_errno(), "unshare")
res = {"session": os.environ.get("CORRAL_SESSION"), "token": os.environ.get("GITHUB_TOKEN"),
       "cgroup": open("/proc/self/cgroup").read().strip().splitlines()[-1],
       "git_template": os.environ.get("GIT_TEMPLATE_DIR")}
st = dict(l.split(":", 1) for l in open("/proc/self/status") if ":" in l)
for k in ("Seccomp", "NoNewPrivs", "CapEff", "CapBnd"):
    res[k] = st[k].strip()
def attempt(fn):
    try:
        fn()
        return "allowed"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
res["write_etc"] = attempt(lambda: open("/etc/corral-exec-probe", "w").close())
res["write_project"] = attempt(lambda: open("written-by-exec", "w").close())
res["kill_init"] = attempt(lambda: os.kill(1, 0))
res["unshare"] = attempt(unshare_ns)
res["mount_ns_private"] = os.stat("/proc/self/ns/mnt").st_ino != int(sys.argv[1])
res["mnt_ns"] = os.stat("/proc/self/ns/mnt").st_ino
res["fds"] = sorted(int(x) for x in os.listdir("/proc/self/fd"))
print(json.dumps(res))
"""


@pytest.fixture
def project():
    with home_project("corral-exec-") as d:
        yield d


@pytest.fixture
def session(daemon, project):
    sid = start_session(daemon, *FLAGS, cwd=project)
    yield sid
    stop_session(daemon, sid)


def corral_exec(daemon, entry, sid, *cmd, cwd=None, env=None, **kw):
    e = dict(daemon.env)
    e.update(env or {})
    return subprocess.run([binary(entry), "exec", sid, "--", *cmd], env=e, cwd=cwd,
                          capture_output=True, text=True, timeout=kw.pop("timeout", 60), **kw)


@pytest.mark.parametrize("entry", EXECS)
def test_exec_runs_confined_in_the_session(daemon, session, project, entry):
    host_ns = os.stat("/proc/self/ns/mnt").st_ino
    fd = os.open(project, os.O_RDONLY)          # an inherited descriptor: must be closed
    try:
        p = corral_exec(daemon, entry, session, sys.executable, "-c", PROBE, str(host_ns),
                        cwd=project, env={"GITHUB_TOKEN": "ghp_notreal"}, pass_fds=(fd,))
    finally:
        os.close(fd)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["session"] == session
    assert r["cgroup"].endswith(f"/{daemon.instance}/{session}"), r["cgroup"]
    assert r["Seccomp"] == "2" and r["NoNewPrivs"] == "1", r
    assert int(r["CapEff"], 16) == 0 and int(r["CapBnd"], 16) == 0, r
    assert r["write_etc"] in ("EROFS", "EACCES"), r
    assert r["write_project"] == "allowed", r
    assert (project / "written-by-exec").exists()
    assert r["kill_init"] == "EPERM", r            # Landlock signal scope
    assert r["unshare"] == "EPERM", r              # seccomp
    assert r["mount_ns_private"], r                 # the session's mount view...
    with daemon.client() as c:
        leader = c.call("session_info", session=session)["leader_pid"]
    # ...the holder's, which corrald keeps up to date (sockets bound later, names
    # protected later), on both paths (root: the Python path enters it too)
    assert r["mnt_ns"] == os.stat(f"/proc/{leader}/ns/mnt").st_ino, r
    assert len([x for x in r["fds"] if x > 2]) <= 1, r["fds"]   # + the listdir fd
    assert r["token"] is None                       # credential-looking names stripped
    assert r["git_template"], r
    rec = daemon.wait_record(lambda x: x.get("op") == "exec" and x.get("session") == session
                             and "PROBE" not in str(x.get("target"))
                             and x["report"].get("path") == ("native" if entry == "exec"
                                                             else "python"))
    assert all(rec["report"]["kernel_checked"].values()), rec


@pytest.mark.parametrize("entry", EXECS)
def test_exit_status_signal_and_stdio_pass_through(daemon, session, project, entry):
    assert corral_exec(daemon, entry, session, "sh", "-c", "exit 7", cwd=project).returncode == 7
    p = corral_exec(daemon, entry, session, "sh", "-c", "kill -TERM $$", cwd=project)
    assert p.returncode == -signal.SIGTERM, (p.returncode, p.stderr)
    p = corral_exec(daemon, entry, session, "sh", "-c", "tr a-z A-Z; echo err >&2", cwd=project,
                    input="hello\n")
    assert (p.returncode, p.stdout, p.stderr.strip()) == (0, "HELLO\n", "err"), p
    p = corral_exec(daemon, entry, session, "no-such-command-corral", cwd=project)
    assert p.returncode == 127 and "no-such-command-corral" in p.stderr, p


@pytest.mark.parametrize("entry", EXECS)
def test_sigterm_to_corral_exec_reaches_the_command(daemon, session, project, entry):
    assert_sigterm_reaches_command([binary(entry), "exec", session, "--"], daemon.env, project)


@pytest.mark.parametrize("entry", EXECS)
def test_stop_kills_what_the_commands_left_and_exec_then_fails(daemon, project, entry):
    sid = start_session(daemon, *FLAGS, cwd=project)
    p = corral_exec(daemon, entry, sid, "sh", "-c", "setsid sleep 300 >/dev/null 2>&1 & echo $!",
                    cwd=project)
    assert p.returncode == 0, p.stderr
    left = int(p.stdout.strip())
    os.kill(left, 0)                                  # the command's leftover still runs
    stop = stop_session(daemon, sid)
    assert stop.returncode == 0 and "stopped" in stop.stdout, stop
    with pytest.raises(ProcessLookupError):
        for _ in range(50):
            os.kill(left, 0)
            time.sleep(0.1)
    p = corral_exec(daemon, entry, sid, "touch", "after-stop", cwd=project)
    assert p.returncode == 1 and f"no session '{sid}'" in p.stderr and "ended or was stopped" \
        in p.stderr, p.stderr
    assert not (project / "after-stop").exists()


def test_session_ends_at_its_timeout(daemon, project):
    sid = start_session(daemon, *FLAGS, cwd=project, timeout=1)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        p = corral_exec(daemon, "exec", sid, "true", cwd=project)
        if p.returncode != 0:
            break
        time.sleep(0.2)
    assert p.returncode == 1 and "no session" in p.stderr, p.stderr


@pytest.mark.parametrize("entry", EXECS)
def test_another_users_session_is_refused(daemon, session, entry, tmp_path):
    marker = tmp_path / "ran"
    tmp_path.chmod(0o777)
    p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        binary(entry), "exec", session, "--", "touch", str(marker)],
                       env=daemon.env, cwd="/", capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "another user's session" in p.stderr, (p.returncode, p.stderr)
    assert not marker.exists()


def test_exec_from_another_session_is_refused_and_from_inside_works(daemon, session, project):
    marker = project / "from-other-session"
    p = subprocess.run([str(binary("run")), "run", *FLAGS, "--", binary("exec"), "exec", session,
                        "--", "touch", str(marker)], env=daemon.env, cwd=project,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "exec into another session" in p.stderr, p.stderr
    assert not marker.exists()
    # A process already in the session (so already confined as it is) may.
    p = corral_exec(daemon, "exec", session, binary("exec"), "exec", session, "--", "sh", "-c",
                    "echo $CORRAL_SESSION; grep Seccomp: /proc/self/status", cwd=project)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == [session, "Seccomp:", "2"], p.stdout


def test_session_ops_refused_outside_the_session(daemon, session):
    """report_exec and session_ready come from inside the session only (here:
    this test process, in no session)."""
    s = raw_socket(daemon.socket)
    try:
        s.sendall(frame({"op": "report_exec", "id": 1, "session": session,
                         "report": {"seccomp": True}}))
        a = read_frame(s)
        assert not a["ok"] and a["error"]["code"] == "forbidden", a
        s.sendall(frame({"op": "session_ready", "id": 2, "session": session, "ruleset_fd": 3}))
        a = read_frame(s)
        assert not a["ok"] and a["error"]["code"] == "forbidden", a
    finally:
        s.close()


def test_launcher_hands_unknown_options_to_the_python_cli(daemon, session):
    p = subprocess.run([binary("exec"), "exec", "--no-such-option", session, "--", "true"],
                       env=daemon.env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "--no-such-option" in p.stderr, p.stderr
    p = subprocess.run([binary("exec"), "ps"], env=daemon.env, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0 and session in p.stdout, p


@pytest.mark.parametrize("entry", EXECS)
def test_interactive_bash_under_tmux(daemon, session, project, entry):
    """A terminal passes through: an interactive bash in the session reads the
    keys tmux sends and has the pane's tty on stdin."""
    name = f"corral-exec-{os.getpid()}-{entry}"
    out = project / "tty-result"
    cmd = f"{binary(entry)} exec {session} -- bash --norc --noprofile -i"
    subprocess.run(["tmux", "-L", name, "new-session", "-d", "-x", "120", "-y", "30", cmd],
                   env=daemon.env, cwd=project, check=True, timeout=30)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not out.exists():
            subprocess.run(["tmux", "-L", name, "send-keys",
                            f'[ -t 0 ] && echo "$CORRAL_SESSION $(tty)" > {out}', "Enter"],
                           env=daemon.env, timeout=10)
            time.sleep(0.5)
        got = out.read_text().split()
        assert got[0] == session and got[1].startswith("/dev/pts/"), got
        subprocess.run(["tmux", "-L", name, "send-keys", "exit", "Enter"], env=daemon.env,
                       timeout=10)
    finally:
        subprocess.run(["tmux", "-L", name, "kill-server"], env=daemon.env, capture_output=True,
                       timeout=10)


def test_exec_after_a_daemon_restart_goes_through_the_python_path(project):
    """A restarted corrald re-adopts the session but not what its holder handed
    over (the ruleset): the launcher hands over to the Python path, which joins
    the session and builds its own view; the command is confined all the same."""
    from conftest import make_daemon
    d = make_daemon("corral-exec-restart", extra_args=["--no-dns"])
    try:
        d.start()
        sid = start_session(d, *FLAGS, cwd=project)
        d.stop()
        d.start()
        p = corral_exec(d, "exec", sid, "sh", "-c",
                        "echo $CORRAL_SESSION; grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status; "
                        "touch /etc/corral-exec-probe", cwd=project)
        assert p.stdout.split() == [sid, "NoNewPrivs:", "1", "Seccomp:", "2"], (p.stdout, p.stderr)
        assert p.returncode != 0 and "Read-only file system" in p.stderr, p.stderr
        rec = d.wait_record(lambda x: x.get("op") == "exec" and x.get("session") == sid)
        assert rec["report"]["path"] == "python", rec
        assert rec["report"]["mount_namespace"] == "joined", rec    # the holder's view
        stop_session(d, sid)
    finally:
        d.cleanup(remove_tmp=True)


def test_daemon_not_running_is_one_clear_line(daemon, tmp_path):
    p = subprocess.run([binary("exec"), "exec", "nosuchid", "--", "true"],
                       env=dict(daemon.env, CORRAL_SOCKET=str(tmp_path / "nope.sock")),
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and "corrald is not running" in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr


@pytest.mark.parametrize("entry", EXECS)
def test_non_root_owner_execs_into_their_session(daemon, entry):
    """A user's own session, both ways: the launcher has corrald move its child in
    (join_child: CLONE_INTO_CGROUP needs root) and enters the view's user namespace,
    the Python path builds a view of its own; confined either way, in the view the
    holder has (a file the view hides stays hidden), the project writable; another
    user still gets nothing (see above)."""
    import shutil
    import tempfile
    from pathlib import Path
    work = Path(tempfile.mkdtemp(prefix="corral-exec-nobody-"))   # pytest's tmp is root's only
    work.chmod(0o777)
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    env = dict(daemon.env, HOME=str(work))
    (work / "hidden").write_text("SECRET\n")
    os.chmod(work / "hidden", 0o644)
    p = subprocess.run([*as_nobody, binary("exec-py"), "session", "start", *FLAGS,
                        "--deny-read", str(work / "hidden"), "--allow-write", str(work)],
                       env=env, cwd=work, capture_output=True, text=True, timeout=90)
    assert p.returncode == 0, p.stderr
    sid = p.stdout.strip()
    try:
        p = subprocess.run([*as_nobody, binary(entry), "exec", sid, "--", "sh", "-c",
                            "id -u; echo $CORRAL_SESSION; grep Seccomp: /proc/self/status; "
                            "cat hidden 2>/dev/null || echo HIDDEN; "
                            "touch made && echo wrote; tail -1 /proc/self/cgroup"],
                           env=env, cwd=work, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        out = p.stdout.split()
        assert out[:6] == ["65534", sid, "Seccomp:", "2", "HIDDEN", "wrote"], (p.stdout, p.stderr)
        assert out[6].endswith("/" + sid), out
        assert (work / "made").exists()
        rec = daemon.wait_record(lambda x: x.get("op") == "exec" and x.get("session") == sid)
        assert rec["report"]["path"] == ("native" if entry == "exec" else "python"), rec
        assert rec["uid"] == 65534 and all(rec["report"]["kernel_checked"].values()), rec
        outside = subprocess.run([*as_nobody, "cat", str(work / "hidden")], capture_output=True,
                                 text=True)
        assert outside.stdout == "SECRET\n"            # the control: readable outside
    finally:
        subprocess.run([*as_nobody, binary("exec-py"), "session", "stop", sid], env=env,
                       capture_output=True, timeout=60)
        shutil.rmtree(work, ignore_errors=True)
