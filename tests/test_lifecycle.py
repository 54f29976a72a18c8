"""A session's lifetime is its command's (issue 11): when the command `corral run`
started exits, every process left in the session is killed (cgroup.kill), like
a systemd service with KillMode=control-group; `--keep-running` keeps the
session until its cgroup empties or `corral end`.

Real `corral run` processes against the private daemon; the pytest process
never registers a session itself (it would be moved into it, and killed)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from corral.kernel import cgroups
from cpharness import wait_until

CORRAL = str(Path(sys.executable).parent / "corral")


def writer(tmp: Path, then: str) -> list[str]:
    """A command that leaves a `setsid nohup` writer behind (appending a line to
    tmp/F every 50 ms, its pid in tmp/pid), waits until it runs, then does `then`."""
    f, pidfile = tmp / "F", tmp / "pid"
    bg = f'echo $$ > {pidfile}; while :; do date +%s%N >> {f}; sleep 0.05; done'
    return ["sh", "-c", f"setsid nohup sh -c '{bg}' >/dev/null 2>&1 </dev/null & "
                        f"while [ ! -s {f} ]; do sleep 0.01; done; {then}"]


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper is dead)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def growing(f: Path) -> bool:
    before = f.stat().st_size
    time.sleep(0.5)
    return f.stat().st_size > before


def sid_of(stderr: str) -> str:
    return stderr.split("session ", 1)[1].split(":", 1)[0]


def session_dir(daemon, sid: str) -> Path:
    return cgroups.cgroup2_mount() / daemon.instance / sid


def end_record(daemon, sid: str) -> dict:
    return daemon.wait_record(lambda r: r.get("session") == sid and r.get("kind") == "session"
                              and r.get("op") == "end")


def test_leftovers_die_when_the_command_exits(daemon, tmp_path):
    p = daemon.corral("run", "-v", "--no-net", "--", *writer(tmp_path, "exit 0"))
    assert p.returncode == 0, p.stderr
    sid = sid_of(p.stderr)
    pid = int((tmp_path / "pid").read_text())
    # Already when `corral run` returns: the end is synchronous.
    assert not alive(pid), "the setsid nohup writer outlived its session"
    assert not session_dir(daemon, sid).exists()
    assert not growing(tmp_path / "F")
    rec = end_record(daemon, sid)
    assert rec["reason"] in ("command exited", "leader exited"), rec
    assert rec["killed"] >= 1, rec
    assert rec["keep_running"] is False


def test_keep_running_outlives_the_command_until_corral_end(daemon, tmp_path):
    p = daemon.corral("run", "-v", "--keep-running", "--no-net", "--",
                      *writer(tmp_path, "exit 0"))
    pid = None
    try:
        assert p.returncode == 0, p.stderr
        sid = sid_of(p.stderr)
        pid = int((tmp_path / "pid").read_text())
        assert alive(pid)
        assert growing(tmp_path / "F")
        assert session_dir(daemon, sid).is_dir()
        ps = daemon.corral("ps", check=True).stdout.splitlines()
        row = [line for line in ps if line.startswith(sid)]
        assert len(row) == 1, ps
        assert "LEADER" in ps[0] and "KEEP" in ps[0], ps[0]
        assert row[0].split()[3:5] == ["exited", "yes"], row
        js = [json.loads(line) for line in daemon.corral("ps", "--json", check=True).stdout.split("\n")
              if line.strip()]
        s = [x for x in js if x["id"] == sid][0]
        assert s["keep_running"] is True and s["leader_alive"] is False, s
        assert pid in s["pids"], s
        out = daemon.corral("end", sid, check=True).stdout
        n = int(out.split("ended: ", 1)[1].split()[0])
        assert n >= 1, out
        assert not alive(pid)
        assert not session_dir(daemon, sid).exists()
        assert not growing(tmp_path / "F")
        rec = end_record(daemon, sid)
        assert rec["reason"] == "corral end" and rec["killed"] == n, rec
    finally:
        if pid and alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_exit_status_and_signals_pass_through(daemon):
    assert daemon.corral("run", "--no-net", "--", "sh", "-c", "exit 7").returncode == 7
    # Killed by a signal: `corral run` dies of the same signal.
    p = daemon.corral("run", "--no-net", "--", "sh", "-c", "kill -TERM $$")
    assert p.returncode == -signal.SIGTERM, (p.returncode, p.stderr)
    # SIGTERM to `corral run` reaches the command; SIGINT (sent by a terminal to the
    # whole foreground group, the command included) is left to the command.
    script = ("import signal, sys, time\n"
              "signal.signal(signal.SIGTERM, lambda *a: (print('term', flush=True), sys.exit(3)))\n"
              "print('ready', flush=True)\n"
              "time.sleep(30)\n")
    proc = subprocess.Popen([CORRAL, "run", "--no-net", "--", sys.executable, "-c", script],
                            env=daemon.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
        assert proc.poll() is None, "corral run must not die of a SIGINT its command ignores"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
        assert out.strip() == "term", (out, err)
        assert proc.returncode == 3, (proc.returncode, err)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_session_ends_with_its_command_even_if_corral_run_was_killed(daemon, tmp_path):
    go = tmp_path / "go"
    proc = subprocess.Popen([CORRAL, "run", "-v", "--no-net", "--",
                             *writer(tmp_path, f"while [ ! -e {go} ]; do sleep 0.02; done")],
                            env=daemon.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    pid = None
    try:
        sid = sid_of(proc.stderr.readline())
        assert wait_until(lambda: (tmp_path / "pid").exists() and (tmp_path / "F").exists())
        pid = int((tmp_path / "pid").read_text())
        proc.kill()                          # the `corral run` that would have ended it
        assert proc.wait(10) == -signal.SIGKILL
        time.sleep(0.5)
        assert alive(pid) and session_dir(daemon, sid).is_dir(), "the command still runs"
        go.touch()                           # the command exits
        assert wait_until(lambda: not alive(pid), timeout=5), "leftover survived its command"
        assert wait_until(lambda: not session_dir(daemon, sid).exists(), timeout=5)
        assert not growing(tmp_path / "F")
        rec = end_record(daemon, sid)
        assert rec["reason"] == "leader exited" and rec["killed"] >= 1, rec
    finally:
        go.touch()
        if pid and alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_stdin_and_stdout_pass_through(daemon):
    p = subprocess.run(f"echo hi | {CORRAL} run --no-net -- cat", shell=True, env=daemon.env,
                       capture_output=True, text=True, timeout=60)
    assert (p.returncode, p.stdout) == (0, "hi\n"), p.stderr
    # The waiting `corral run` holds no copy of the command's stdout: a reader sees
    # EOF when the command closes it, not when corral run exits.
    proc = subprocess.Popen([CORRAL, "run", "--no-net", "--", "sh", "-c",
                             "echo one; exec >&-; sleep 3"], env=daemon.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        t0 = time.monotonic()
        assert proc.stdout.read() == b"one\n"
        assert time.monotonic() - t0 < 2.5 and proc.poll() is None
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


NESTED = r"""
import json, os, time
from corral.client.connection import Client, CorralError
with Client() as c:
    policy = c.call("session_info")["policy"]      # the same: no broader than ours
r, w = os.pipe()
pid = os.fork()
if pid == 0:                                       # the inner session's leader
    with Client() as c:
        sid = c.call("register_session", policy=policy)["id"]
    left = os.fork()
    if left == 0:
        os.setsid()
        os.execvp("sleep", ["sleep", "60"])
    os.write(w, f"{sid} {left}".encode())
    os._exit(0)
os.close(w)
sid, left = os.read(r, 100).decode().split()
os.waitpid(pid, 0)
try:
    with Client() as c:
        out = c.call("end_session", session=sid, reason="test")
except CorralError as e:
    out = e.code
print(json.dumps({"sid": sid, "left": int(left), "end": out}))
"""


def test_a_session_may_end_its_child_session_once_its_command_exited(daemon):
    """What a `corral run` inside a session does: its command's session was
    registered from the outer one, and ending it after the command exited is not
    refused (the daemon would end it anyway); it kills what the command left."""
    p = daemon.corral("run", "-v", "--no-net", "--", sys.executable, "-c", NESTED)
    assert p.returncode == 0, p.stderr
    outer = sid_of(p.stderr)
    out = json.loads(p.stdout)
    # The daemon's own housekeeping may have been first: then it has already ended.
    assert out["end"] == "not_found" or out["end"]["killed"] == 1, out
    assert wait_until(lambda: not alive(out["left"]), timeout=5)
    rec = end_record(daemon, out["sid"])
    assert rec["reason"] in ("command exited", "leader exited") and rec["killed"] == 1, rec
    refused = [r for r in daemon.records() if r.get("kind") == "control"
               and r.get("session") == outer and r.get("verdict") == "deny"]
    assert not refused, refused


def test_a_command_that_exits_while_the_daemon_is_down_ends_its_session_at_restart(tmp_path):
    """The leader is pinned again when a restarted daemon re-adopts the session;
    one that exited meanwhile ends the session at the first housekeeping round."""
    from conftest import make_daemon
    d = make_daemon("corral-lifecycle", extra_args=["--no-dns"])
    go = tmp_path / "go"
    proc = pid = None
    try:
        d.start()
        proc = subprocess.Popen([CORRAL, "run", "-v", "--no-net", "--",
                                 *writer(tmp_path, f"while [ ! -e {go} ]; do sleep 0.02; done")],
                                env=d.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
        sid = sid_of(proc.stderr.readline())
        assert wait_until(lambda: (tmp_path / "pid").exists() and (tmp_path / "F").exists())
        pid = int((tmp_path / "pid").read_text())
        d.stop(signal.SIGKILL)
        go.touch()
        # corral run cannot reach the daemon: it says so, and exits with the status.
        assert proc.wait(20) == 0
        assert "could not end session" in proc.stderr.read()
        assert alive(pid) and growing(tmp_path / "F"), "no daemon: nothing ended it yet"
        d.start()
        assert wait_until(lambda: not alive(pid), timeout=5), "leftover survived the restart"
        assert wait_until(lambda: not session_dir(d, sid).exists(), timeout=5)
        rec = end_record(d, sid)
        assert rec["reason"] == "leader exited" and rec["killed"] >= 1, rec
    finally:
        go.touch()
        if proc is not None and proc.poll() is None:
            proc.kill()
        if pid and alive(pid):
            os.kill(pid, signal.SIGKILL)
        d.cleanup()


def test_end_sessions_on_exit_logs_each_end_before_the_stop(tmp_path):
    """corrald --end-sessions-on-exit: every live session is ended at SIGTERM, its
    end record written before the daemon's stop record and its cgroup removed
    (the work an answer defers runs at once outside a request: the log closes
    right after)."""
    from conftest import make_daemon
    d = make_daemon("corral-lifecycle-exit", extra_args=["--no-dns", "--end-sessions-on-exit"])
    proc = None
    try:
        d.start()
        proc = subprocess.Popen([CORRAL, "run", "-v", "--no-net", "--", "sleep", "300"],
                                env=d.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
        sid = sid_of(proc.stderr.readline())
        assert wait_until(lambda: session_dir(d, sid).exists())
        d.stop()
        assert proc.wait(20) != 0                  # its command was killed
        recs = d.records()
        ops = [(r.get("kind"), r.get("op"), r.get("session")) for r in recs]
        assert ("session", "end", sid) in ops, ops[-5:]
        assert ops.index(("session", "end", sid)) < ops.index(("daemon", "stop", None)), ops[-5:]
        assert not session_dir(d, sid).exists()
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        d.cleanup()
