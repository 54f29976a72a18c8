"""Protected names that do not exist yet (issue 12): watched by corrald, not
frozen by Landlock. End to end through `corral run` on the real kernel, in a
fresh `git init` project (no .mcp.json, .vscode, .claude, .idea, .gitmodules):

* new entries at the project root work (the control: --strict-protect keeps
  today's freeze);
* a protected name made in the session is quarantined (gone from its place,
  in LOG_DIR/quarantine/<session> with its content, logged);
* one made outside while the session runs stays in place, unchanged, and the
  session cannot modify it.

Sessions are started by `corral run` in child processes, never from pytest.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from harness import ppid

CORRAL = str(Path(sys.executable).parent / "corral")


@pytest.fixture(scope="session")
def daemon(agentd):
    # Most sessions here run with no policy option, so under the default profile,
    # which names domains: the daemon's resolver must run.
    return agentd


PROTECTED = (".mcp.json", ".vscode", ".idea", ".gitmodules", ".claude")


@pytest.fixture
def project():
    base = Path(tempfile.mkdtemp(prefix="corral-nw-"))
    proj = base / "proj"
    proj.mkdir()
    subprocess.run(["git", "init", "-q", str(proj)], check=True)
    for n in PROTECTED:
        assert not (proj / n).exists()
    (base / "out").mkdir()
    try:
        yield base, proj
    finally:
        shutil.rmtree(base, ignore_errors=True)


def run(daemon, proj, script: str, *flags, timeout=60):
    env = {k: v for k, v in daemon.env.items() if k not in ("TMUX", "SSH_AUTH_SOCK")}
    return subprocess.run([CORRAL, "run", *flags, "--", "sh", "-c", script], cwd=proj, env=env,
                          capture_output=True, text=True, timeout=timeout)


def log_records(daemon, session: str | None = None) -> list[dict]:
    args = ["log", "--json"] + (["--session", session] if session else [])
    p = daemon.corral(*args, check=True)
    return [json.loads(line) for line in p.stdout.splitlines() if line.strip()]


def quarantine_record(daemon, target: str, timeout=5.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        for r in log_records(daemon):
            if r.get("op") == "quarantine" and r.get("target") == target:
                return r
        if time.monotonic() > deadline:
            raise AssertionError(f"no quarantine record for {target}")
        time.sleep(0.05)


def gone_within(path: Path, timeout=2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not os.path.lexists(path):
            return True
        time.sleep(0.01)
    return not os.path.lexists(path)


# -- the project root stays writable ---------------------------------------------------
FRESH_WORK = """set -e
touch new.py
mkdir sub
printf 'print(1)\\n' > hello.py.tmp.$$
mv hello.py.tmp.$$ hello.py
"""


def test_fresh_project_root_takes_new_entries(daemon, project):
    _, proj = project
    p = run(daemon, proj, FRESH_WORK)
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert (proj / "new.py").exists() and (proj / "sub").is_dir()
    assert (proj / "hello.py").read_text() == "print(1)\n"
    assert not list(proj.glob("*.tmp.*"))
    assert str(proj) not in p.stderr, p.stderr          # no frozen_dirs note for the root


def test_strict_protect_keeps_the_freeze(daemon, project):
    """The control: what the watcher replaces, and what --strict-protect keeps."""
    _, proj = project
    p = run(daemon, proj, "touch new.py", "--strict-protect")
    assert p.returncode != 0, (p.stdout, p.stderr)
    assert "Permission denied" in p.stderr, p.stderr
    assert not (proj / "new.py").exists()
    assert str(proj) in p.stderr and "refusing new entries" in p.stderr, p.stderr


def test_strict_protect_still_refuses_protected_names(daemon, project):
    _, proj = project
    p = run(daemon, proj, "echo '{}' > .mcp.json; echo rc=$?", "--strict-protect")
    assert "rc=0" not in p.stdout, (p.stdout, p.stderr)
    assert not (proj / ".mcp.json").exists()


# -- made in the session: quarantined ----------------------------------------------------
CASES = {
    "mcp_json": ("printf '{\"mcpServers\": 1}' > .mcp.json", ".mcp.json",
                 lambda q: q.read_text() == '{"mcpServers": 1}'),
    "vscode_tasks": ("mkdir .vscode && printf '{\"tasks\": 1}' > .vscode/tasks.json "
                     "&& echo WROTE; true", ".vscode", None),
    "claude_settings": ("mkdir .claude && printf '{\"hooks\": 1}' > .claude/settings.json",
                        ".claude/settings.json", lambda q: q.read_text() == '{"hooks": 1}'),
    "rename_to_mcp": ("printf '{\"renamed\": 1}' > x.json && mv x.json .mcp.json", ".mcp.json",
                      lambda q: q.read_text() == '{"renamed": 1}'),
    "symlink_mcp": ("printf '{\"target\": 1}' > target.json && ln -s target.json .mcp.json",
                    ".mcp.json", lambda q: q.is_symlink() and os.readlink(q) == "target.json"),
    "gitmodules": ("printf '[submodule]\\n' > .gitmodules", ".gitmodules",
                   lambda q: q.read_text() == "[submodule]\n"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_protected_name_made_in_session_is_quarantined(daemon, project, case):
    _, proj = project
    script, rel, content_ok = CASES[case]
    p = run(daemon, proj, script + "; sleep 0.3")
    assert p.returncode == 0, (p.stdout, p.stderr)
    target = proj / rel
    assert gone_within(target), f"{target} still there"
    rec = quarantine_record(daemon, str(target))
    print(f"{case}: {json.dumps(rec)}")
    assert rec["kind"] == "file" and rec["verdict"] == "deny" and rec["creator"] == "session"
    assert "protected name created in the session (mandatory" in rec["rule"], rec
    assert rec["session"] and rec["pid"], rec
    q = Path(rec["moved_to"])
    assert q.parent.parent.name == "quarantine" and q.parent.name == rec["session"]
    assert os.path.lexists(q), rec
    st = os.stat(q.parent)
    assert st.st_uid == 0 and st.st_mode & 0o777 == 0o700
    if case == "vscode_tasks":
        assert q.is_dir()
        if "WROTE" in p.stdout:         # written before the move: moved with it
            assert (q / "tasks.json").read_text() == '{"tasks": 1}'
    else:
        assert content_ok(q), (case, q)
    if case == "symlink_mcp":           # the link was moved, not what it names
        assert (proj / "target.json").read_text() == '{"target": 1}'
    # corral log (text) shows it too
    text = daemon.corral("log", "--session", rec["session"], check=True).stdout
    assert "quarantine" in text and str(target) in text, text
    # the rest of the session's work is left alone
    assert (proj / ".git").is_dir()


def test_quarantine_delay(daemon, project):
    """Median delay between a creation in the session and the quarantine, as the
    session sees it (20 tries)."""
    base, proj = project
    probe = base / "delay.py"
    probe.write_text(r"""
import json, os, sys, time
out = []
for i in range(20):
    name = ".mcp.json" if i % 2 == 0 else ".gitmodules"
    t0 = time.monotonic()
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.close(fd)
    while os.path.lexists(name):
        if time.monotonic() - t0 > 2:
            break
        time.sleep(0.0002)
    out.append(time.monotonic() - t0)
    time.sleep(0.02)
print(json.dumps(out))
""")
    env = {k: v for k, v in daemon.env.items() if k not in ("TMUX", "SSH_AUTH_SOCK")}
    p = subprocess.run([CORRAL, "run", "--", sys.executable, str(probe)], cwd=proj, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, (p.stdout, p.stderr)
    delays = json.loads(p.stdout)
    med = statistics.median(delays)
    print(f"creation -> quarantine: median {med * 1000:.2f} ms, min {min(delays) * 1000:.2f} "
          f"ms, max {max(delays) * 1000:.2f} ms over {len(delays)}")
    assert max(delays) < 2, delays
    assert not (proj / ".mcp.json").exists() and not (proj / ".gitmodules").exists()


def test_cross_filesystem_quarantine_copies(daemon):
    """The project on a tmpfs, the quarantine on the log's filesystem: copied
    (bounded, symlinks not followed), then removed."""
    base = Path(tempfile.mkdtemp(prefix="corral-nw-tmpfs-"))
    proj = base / "proj"
    proj.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(proj)], check=True)
    try:
        subprocess.run(["git", "init", "-q", str(proj)], check=True)
        p = run(daemon, proj, "printf 'x%.0s' $(seq 100) > .mcp.json; "
                              "mkdir .idea.tmp && printf w > .idea.tmp/workspace.xml && "
                              "ln -s /etc/passwd .idea.tmp/link && mv .idea.tmp .idea; sleep 0.3")
        assert p.returncode == 0, (p.stdout, p.stderr)
        for rel in (".mcp.json", ".idea"):
            assert gone_within(proj / rel), rel
        r = quarantine_record(daemon, str(proj / ".mcp.json"))
        assert r["how"] == "copy", r
        # copied when it appeared, again as its writer (holding it open) went on
        wait_for(lambda: Path(r["moved_to"]).read_text() == "x" * 100, 3, "the copy's content")
        r = quarantine_record(daemon, str(proj / ".idea"))
        q = Path(r["moved_to"])
        assert r["how"] == "copy", r
        assert (q / "workspace.xml").read_text() == "w"
        assert os.readlink(q / "link") == "/etc/passwd"
    finally:
        subprocess.run(["umount", "-l", str(proj)], check=False)
        shutil.rmtree(base, ignore_errors=True)


# -- made outside while the session runs: read-only in the session ----------------------
OUTSIDE_PROBE = r"""
import errno, json, os, sys, time
go, out = sys.argv[1], sys.argv[2]
open(out + ".ready", "w").close()
while not os.path.exists(go):
    time.sleep(0.02)
res = {}
def attempt(name, fn):
    try:
        fn()
        res[name] = "ok"
    except OSError as e:
        res[name] = errno.errorcode.get(e.errno, str(e.errno))
def append(p, data):
    def f():
        with open(p, "a") as fh:
            fh.write(data)
    return f
attempt("append_mcp", append(".mcp.json", "pwned"))
attempt("truncate_mcp", lambda: os.truncate(".mcp.json", 0))
attempt("rename_mcp_away", lambda: os.rename(".mcp.json", "mcp.bak"))
attempt("unlink_mcp", lambda: os.unlink(".mcp.json"))
attempt("replace_mcp", lambda: (open("evil.json", "w").write("{}"),
                                os.rename("evil.json", ".mcp.json")))
attempt("write_tasks", append(".vscode/tasks.json", "pwned"))
attempt("create_in_vscode", append(".vscode/launch.json", "pwned"))
attempt("rename_vscode_away", lambda: os.rename(".vscode", "vscode.bak"))
attempt("write_claude_settings", append(".claude/settings.json", "pwned"))
attempt("write_idea", lambda: open(".idea/workspace.xml", "w").write("pwned"))
attempt("write_new_py", append("new.py", "ok"))       # the control: still writable
with open(out, "w") as fh:
    json.dump(res, fh)
"""


def wait_for(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_protected_name_made_outside_is_read_only_in_session(daemon, project):
    base, proj = project
    probe = base / "outside_probe.py"
    probe.write_text(OUTSIDE_PROBE)
    go, out = base / "out" / "go", base / "out" / "res.json"
    env = {k: v for k, v in daemon.env.items() if k not in ("TMUX", "SSH_AUTH_SOCK")}
    proc = subprocess.Popen([CORRAL, "run", "--", sys.executable, str(probe), str(go), str(out)],
                            cwd=proj, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: os.path.exists(str(out) + ".ready") or proc.poll() is not None, 30,
                 "the session")
        assert proc.poll() is None, proc.communicate()
        with daemon.client() as c:
            sid = next(s["id"] for s in c.call("list_sessions") if ppid(s["leader_pid"]) == proc.pid)
        # The developer, outside: an editor's files, and a short-lived process
        # that has exited before its report is read (the exit tracker places it).
        (proj / ".vscode").mkdir()
        (proj / ".vscode" / "tasks.json").write_text('{"dev": 1}')
        (proj / ".mcp.json").write_text('{"dev": 2}')
        subprocess.run(["mkdir", str(proj / ".idea")], check=True)
        (proj / ".claude").mkdir()
        (proj / ".claude" / "settings.json").write_text('{"dev": 3}')
        want = {str(proj / n) for n in (".vscode", ".mcp.json", ".idea")}

        def marked():
            got = {r["target"] for r in log_records(daemon, sid)
                   if r.get("op") == "protected_readonly" and r.get("verdict") == "info"}
            return want <= got
        wait_for(marked, 10, "protected_readonly records")
        recs = [r for r in log_records(daemon, sid) if r.get("op") in ("protected_readonly",
                                                                     "quarantine")]
        for r in recs:
            print(json.dumps(r))
        # .claude/settings.json: made in a directory before the watch reached it,
        # by whom cannot be told: quarantined (fail closed), or, if its own
        # report came after the mark, read-only like the others.
        cs = str(proj / ".claude" / "settings.json")
        wait_for(lambda: any(r["target"] == cs for r in log_records(daemon, sid)
                             if r.get("op") in ("protected_readonly", "quarantine")), 10,
                 "a record for .claude/settings.json")
        cs_recs = [r for r in log_records(daemon, sid) if r["target"] == cs
                   and r.get("op") in ("protected_readonly", "quarantine")]
        assert all(r["creator"] != "session" for r in recs), recs
        go.write_text("")
        o, e = proc.communicate(timeout=60)
        assert proc.returncode == 0, (o, e)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    res = json.loads(out.read_text())
    print(res)
    refused = ("EROFS", "EACCES", "EPERM", "EBUSY")
    for k in ("append_mcp", "truncate_mcp", "rename_mcp_away", "unlink_mcp", "replace_mcp",
              "write_tasks", "create_in_vscode", "rename_vscode_away", "write_idea"):
        assert res[k] in refused, (k, res)
    assert res["write_new_py"] == "ok", res
    if cs_recs[0]["op"] == "protected_readonly":
        assert res["write_claude_settings"] in refused, res
    # outside: all still there, unchanged, and the developer can still edit them
    assert (proj / ".mcp.json").read_text() == '{"dev": 2}'
    assert (proj / ".vscode" / "tasks.json").read_text() == '{"dev": 1}'
    assert not (proj / ".vscode" / "launch.json").exists()
    assert (proj / ".idea").is_dir() and not list((proj / ".idea").iterdir())
    assert not (proj / "mcp.bak").exists() and not (proj / "vscode.bak").exists()
    (proj / ".mcp.json").write_text('{"dev": 4}')


def test_daemon_restart_keeps_watching(project):
    """A restarted daemon re-adopts the watch of a live session: a name made
    then is still quarantined; one made read-only before stays so and in place."""
    from conftest import make_daemon
    base, proj = project
    d = make_daemon("corral-nw-restart")     # the default profile names domains: DNS on
    d.start()
    proc = None
    try:
        probe = base / "restart_probe.py"
        probe.write_text(r"""
import os, sys, time
go = sys.argv[1]
open(go + ".ready", "w").close()
while not os.path.exists(go):
    time.sleep(0.02)
open(".mcp.json", "w").write("{}")
time.sleep(1.0)
try:
    open(".vscode/tasks.json", "a").write("x")
    print("vscode: ok")
except OSError as e:
    print("vscode:", e.errno)
""")
        go = base / "out" / "go"
        env = {k: v for k, v in d.env.items() if k not in ("TMUX", "SSH_AUTH_SOCK")}
        proc = subprocess.Popen([CORRAL, "run", "--", sys.executable, str(probe), str(go)],
                                cwd=proj, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        wait_for(lambda: os.path.exists(str(go) + ".ready") or proc.poll() is not None, 30,
                 "the session")
        (proj / ".vscode").mkdir()
        (proj / ".vscode" / "tasks.json").write_text("dev")
        wait_for(lambda: any(r.get("op") == "protected_readonly" for r in d.records()), 10,
                 "protected_readonly")
        d.stop()
        d.start()
        go.write_text("")
        o, e = proc.communicate(timeout=60)
        assert proc.returncode == 0, (o, e)
        assert "vscode: 30" in o, o                 # EROFS
        assert gone_within(proj / ".mcp.json")
        r = next(r for r in d.records() if r.get("op") == "quarantine")
        assert r["target"] == str(proj / ".mcp.json") and os.path.exists(r["moved_to"]), r
        assert (proj / ".vscode" / "tasks.json").read_text() == "dev"
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        d.cleanup(remove_tmp=True)


# -- .git/config: content-checked, not quarantined on sight ------------------------------
# git init in a fresh project (no .git before the session) makes .git/config in
# the session: corrald reads it at each creation, rename onto it and write, and
# leaves it while every key is inert; anything else is quarantined.
@pytest.fixture
def fresh():
    base = Path(tempfile.mkdtemp(prefix="corral-nw-git-"))
    proj = base / "proj"
    proj.mkdir()
    (base / "out").mkdir()
    try:
        yield base, proj
    finally:
        shutil.rmtree(base, ignore_errors=True)


def outside_git(proj, *args):
    """git as the developer runs it, outside every session."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(proj.parent), "GIT_CONFIG_NOSYSTEM": "1"}
    return subprocess.run(["git", *args], cwd=proj, env=env, capture_output=True, text=True,
                          timeout=30)


GIT_WORK = """set -e
for i in $(seq 20); do
  rm -rf .git a
  git init -q -b main .
  git config user.name x
  git config user.email x@example.com
  echo "x$i" > a
  git add a
  git commit -qm "m$i"
  git branch "b$i"
  git checkout -q "b$i"
  git checkout -q main
  git remote add origin https://example.com/r.git
  git config branch.main.remote origin
  git config branch.main.merge refs/heads/main
  git status --short >/dev/null
done
# git renames config.lock onto .git/config each time: a check may read the
# file just replaced (no name left): the one in place is what counts.
for i in $(seq 200); do git config user.name "x$i"; done
git config user.name x
echo DONE
"""


def test_git_init_in_fresh_project_works(daemon, fresh):
    _, proj = fresh
    assert not (proj / ".git").exists()
    p = run(daemon, proj, GIT_WORK, timeout=180)
    assert p.returncode == 0 and "DONE" in p.stdout, (p.stdout, p.stderr)
    cfg = proj / ".git" / "config"
    assert cfg.is_file() and not cfg.is_symlink()
    got = outside_git(proj, "config", "--file", str(cfg), "--list")
    assert "user.name=x" in got.stdout and "remote.origin.url=https://example.com/r.git" \
        in got.stdout, got
    assert outside_git(proj, "log", "--oneline").stdout.count("\n") == 1
    # The empty GIT_TEMPLATE_DIR corral run sets: git init makes no .git/hooks
    # (still quarantined on sight if the session makes one).
    assert not os.path.lexists(proj / ".git" / "hooks")
    assert not [r for r in log_records(daemon) if r.get("op") == "quarantine"
                and r.get("target", "").startswith(str(proj))]
    recs = [r for r in log_records(daemon) if r.get("target") == str(cfg)]
    assert not [r for r in recs if r.get("op") == "quarantine"], recs
    ok = [r for r in recs if r.get("op") == "checked"]
    assert ok and all(r["verdict"] == "allow" and r["kind"] == "file" for r in ok), recs
    assert max(r["keys"] for r in ok) >= 9, ok
    print(f"{len(ok)} checked records, e.g. {json.dumps(ok[-1])}")


FSMON = "[core]\n\tfsmonitor = touch {mark}\n"
SETUP = "set -e; git init -q -b main .; git config user.name x; "
ATTACKS = {
    # name: (script after SETUP, where the session looks afterwards)
    "git_config": "git config core.fsmonitor 'touch {mark}'",
    "echo_append": "printf '{fsmon}' >> .git/config",
    "rename_over": "cp .git/config {out}/new; printf '{fsmon}' >> {out}/new; "
                   "mv {out}/new .git/config",
    "symlink_swap": "cp .git/config {out}/evil; printf '{fsmon}' >> {out}/evil; "
                    "ln -s {out}/evil .git/config.new; mv -f .git/config.new .git/config",
    "hard_link_in": "cp .git/config {out}/evil; printf '{fsmon}' >> {out}/evil; "
                    "rm .git/config; ln {out}/evil .git/config",
    "hard_link_out": "ln .git/config {out}/alias; printf '{fsmon}' >> {out}/alias",
    # written through a descriptor kept open, not closed: FAN_MODIFY
    "open_fd": "{py} -c \"import os, time; f = open('.git/config', 'a'); time.sleep(0.1); "
               "f.write('''{fsmon}'''); f.flush(); t = time.monotonic(); "
               "exec('while os.path.exists(\\'.git/config\\') and time.monotonic() < t + 2: "
               "time.sleep(0.001)'); "
               "print('open_fd:', 'gone' if not os.path.exists('.git/config') else 'there', "
               "'after %.1f ms' % ((time.monotonic() - t) * 1000))\"",
    "gitfile": "rm -rf .git; git init -q --bare {out}/evil.git; "
               "git --git-dir={out}/evil.git config core.bare false; "
               "printf '{fsmon}' >> {out}/evil.git/config; "
               "echo 'gitdir: {out}/evil.git' > .git",
}


def attack_script(case: str, base: Path) -> tuple[str, Path]:
    mark = base / "out" / "PWNED"
    # \n and \t as printf and Python both read them
    script = ATTACKS[case].format(mark=mark, out=base / "out", py=sys.executable,
                                  fsmon=FSMON.format(mark=mark).replace("\n", "\\n")
                                  .replace("\t", "\\t"))
    return SETUP + script, mark


@pytest.mark.parametrize("case", sorted(ATTACKS))
def test_git_config_attack_outside_any_session_runs(case):
    """The control: each write, in a repo outside any session, makes the
    developer's next `git status` run the command."""
    base = Path(tempfile.mkdtemp(prefix="corral-nw-ctl-"))
    try:
        proj = base / "proj"
        proj.mkdir()
        (base / "out").mkdir()
        script, mark = attack_script(case, base)
        p = subprocess.run(["sh", "-c", script], cwd=proj, capture_output=True, text=True,
                           timeout=30, env={"PATH": "/usr/bin:/bin", "HOME": str(base),
                                            "GIT_CONFIG_NOSYSTEM": "1"})
        assert p.returncode == 0, (p.stdout, p.stderr)
        assert not mark.exists()
        outside_git(proj, "status")
        assert mark.exists(), (case, "git status did not run core.fsmonitor")
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("case", sorted(ATTACKS))
def test_git_config_attack_in_session_is_quarantined(daemon, fresh, case):
    base, proj = fresh
    script, mark = attack_script(case, base)
    target = proj / (".git" if case == "gitfile" else ".git/config")
    # While the session still runs (the attack's process has returned): gone.
    p = run(daemon, proj, script + f"; sleep 0.6; test -L {target} || test -f {target} "
                                   "&& echo STILL || echo GONE")
    print(p.stdout, p.stderr)
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert "GONE" in p.stdout, (case, p.stdout)
    if case == "open_fd":
        # Seen by its FAN_MODIFY report (plus the check), not by step()'s look at
        # the held descriptors every 0.2 s.
        ms = float(p.stdout.split("open_fd: gone after ", 1)[1].split(" ms")[0])
        assert ms < 150, p.stdout
    rec = quarantine_record(daemon, str(target))
    print(json.dumps(rec))
    assert rec["verdict"] == "deny" and rec["creator"] in ("session", "unknown"), rec
    assert "mandatory git-config" in rec["rule"], rec
    if case in ("git_config", "echo_append", "rename_over", "open_fd"):
        assert rec["key"] == "core.fsmonitor", rec
    if case in ("hard_link_in", "hard_link_out"):
        assert "hard link" in rec["rule"], rec
    if case == "symlink_swap":
        assert rec["file_type"] == "symlink", rec
    assert not os.path.lexists(target) or "fsmonitor" not in target.read_text()
    outside_git(proj, "status")
    assert not mark.exists(), (case, "core.fsmonitor ran outside the session")


def test_git_remote_ext_url_is_quarantined_https_stays(daemon, fresh):
    base, proj = fresh
    mark = base / "out" / "EXT"
    p = run(daemon, proj, "set -e; git init -q -b main .; "
                          "git remote add origin https://example.com/r.git; sleep 0.3; "
                          "test -f .git/config && echo HTTPS_STAYS; "
                          f"git remote add evil 'ext::sh -c touch% {mark}'; sleep 0.6; "
                          "test -f .git/config && echo STILL || echo GONE")
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert "HTTPS_STAYS" in p.stdout and "GONE" in p.stdout, p.stdout
    rec = quarantine_record(daemon, str(proj / ".git" / "config"))
    assert rec["key"] == "remote.evil.url", rec
    assert "ext::" in Path(rec["moved_to"]).read_text()
    outside_git(proj, "-c", "protocol.ext.allow=always", "fetch", "evil")
    assert not mark.exists()


# git reads configuration through <gitdir>/commondir (the common directory's
# config) and <gitdir>/config.worktree (with extensions.worktreeConfig): watched
# with .git/config, in a .git that existed before the session too.
SIBLING_ATTACKS = {
    "commondir": "git init -q --bare {out}/evil.git; "
                 "git --git-dir={out}/evil.git config core.bare false; "
                 "printf '{fsmon}' >> {out}/evil.git/config; echo {out}/evil.git > .git/commondir",
    "config_worktree": "printf '{fsmon}' > .git/config.worktree",
}


def sibling_script(case: str, base: Path) -> tuple[str, Path]:
    mark = base / "out" / "PWNED"
    return SIBLING_ATTACKS[case].format(out=base / "out", fsmon=FSMON.format(mark=mark)
                                        .replace("\n", "\\n").replace("\t", "\\t")), mark


@pytest.mark.parametrize("case", sorted(SIBLING_ATTACKS))
def test_git_config_sibling_in_existing_repo(daemon, project, case):
    base, proj = project
    script, mark = sibling_script(case, base)
    outside_git(proj, "config", "extensions.worktreeConfig", "true")   # the developer's
    # The control, in a copy of the repo outside any session: git runs it.
    ctl = base / "control"
    shutil.copytree(proj, ctl, symlinks=True)
    c = subprocess.run(["sh", "-c", script], cwd=ctl, capture_output=True, text=True, timeout=30)
    assert c.returncode == 0, c
    outside_git(ctl, "status")
    assert mark.exists(), (case, "the control did not run core.fsmonitor")
    mark.unlink()
    shutil.rmtree(base / "out" / "evil.git", ignore_errors=True)
    rel = ".git/commondir" if case == "commondir" else ".git/config.worktree"
    pre = ""
    if case == "config_worktree":   # an inert one stays (content-checked)
        pre = ("git config --worktree user.name y; sleep 0.3; "
               "test -f .git/config.worktree && echo INERT_STAYS; ")
    p = run(daemon, proj, pre + script + f"; sleep 0.6; test -e {rel} && echo STILL || echo GONE")
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert "GONE" in p.stdout, (p.stdout, p.stderr)
    if case == "config_worktree":
        assert "INERT_STAYS" in p.stdout, p.stdout
    rec = quarantine_record(daemon, str(proj / rel))
    print(json.dumps(rec))
    assert rec["creator"] == "session" and "mandatory git-config" in rec["rule"], rec
    if case == "config_worktree":
        assert rec["key"] == "core.fsmonitor", rec
    outside_git(proj, "status")
    assert not mark.exists(), (case, "core.fsmonitor ran outside the session")


# -- the check itself (server/gitconfig_check.py), against real git ---------------------
def git_written(tmp: Path, pairs) -> bytes:
    """A config file as `git config --file` writes it."""
    f = tmp / "config"
    f.unlink(missing_ok=True)
    for k, v in pairs:
        subprocess.run(["git", "config", "--file", str(f), "--add", k, v], check=True,
                       env={"PATH": "/usr/bin:/bin", "HOME": str(tmp), "GIT_CONFIG_NOSYSTEM": "1"})
    return f.read_bytes()


ODD_VALUES = ["a b", " lead", "trail ", 'q"uote', "back\\slash", "hash # x", "semi ; x",
              "tab\tin", "ünïcødé", "=eq", ""]


def test_git_written_inert_config_is_accepted(tmp_path):
    from corral.server import gitconfig_check as g
    for v in ODD_VALUES:
        data = git_written(tmp_path, [("user.name", v), ("branch.feat/x.y.merge", "refs/heads/" + v),
                                      ("remote.o-1.url", "https://example.com/r.git"),
                                      ("core.bare", "false")])
        res = g.check(data)
        assert res == {"ok": True, "keys": 4}, (v, data, res)
        assert g.parse(data) == g.git_parse(data)


@pytest.mark.parametrize("key,value", [
    ("core.fsmonitor", "touch /tmp/x"), ("core.hooksPath", "/tmp"), ("core.sshCommand", "sh"),
    ("core.pager", "sh"), ("core.editor", "sh"), ("core.askPass", "sh"), ("core.worktree", "/"),
    ("core.gitProxy", "sh"), ("credential.helper", "!sh"), ("diff.external", "sh"),
    ("diff.x.textconv", "sh"), ("filter.x.clean", "sh"), ("filter.x.process", "sh"),
    ("alias.st", "!sh"), ("include.path", "/tmp/c"), ("includeIf.gitdir:/.path", "/tmp/c"),
    ("uploadpack.packObjectsHook", "sh"), ("sequence.editor", "sh"), ("gpg.program", "sh"),
    ("url.ext::sh.insteadOf", "https://"), ("remote.o.url", "ext::sh -c x"),
    ("remote.o.url", "fd::3"), ("remote.o.url", "testgit::/tmp/x"), ("remote.o.url", "foo://x"),
    ("remote.o.pushurl", "ext::sh"), ("remote.o.uploadpack", "sh"), ("remote.o.receivepack", "sh"),
    ("remote.o.vcs", "x"), ("remote.o.url", "ssh://-oProxyCommand=sh/x"),
    ("branch.main.remote", "ext::sh"), ("extensions.worktreeConfig", "true"),
    ("submodule.x.update", "!sh"), ("commit.gpgSign", "true"), ("user.name", "a\nb"),
    ("user.name", "a\x1b]52;c;eA==\x07"), ('remote.a\x1bb.url', "https://x"),
])
def test_key_that_can_run_a_command_is_refused(tmp_path, key, value):
    from corral.server import gitconfig_check as g
    data = git_written(tmp_path, [("core.bare", "false"), (key, value)])
    res = g.check(data)
    assert not res["ok"], (key, value, res)
    if "\n" not in value:        # named as git lists it
        assert res["key"] == g.git_parse(data)[1][0], res


@pytest.mark.parametrize("data", [
    b"[core] fsmonitor = x\n", b"[core.x]\n\tbare = false\n", b"[core]\n\tbare = f\\\n\tx = y\n",
    b"[core]\r\n\tbare = false\r\n", b"\xef\xbb\xbf[core]\n\tbare = false\n", b"\tbare = false\n",
    b"[core]\n\tbare = \"false\n", b"[core]\n\tbare = \\q\n", b"[core]\n\tbare\0 = false\n",
    b"[core]\n\tbare = \xff\n", b"[remote \"a\\\"b\"]\n\turl = x\n",
    b"[core]\n" + b"#" * (70 << 10) + b"\n",
])
def test_syntax_not_read_with_certainty_is_refused(data):
    from corral.server import gitconfig_check as g
    assert not g.check(data)["ok"], data


def test_git_config_checked_after_daemon_restart(fresh):
    """A restarted daemon finds the .git/config the session made meanwhile (no
    report of its own): content-checked, so it stays; a later harmful write is
    quarantined as before the restart."""
    from conftest import make_daemon
    base, proj = fresh
    mark = base / "out" / "PAGER"
    go = base / "out" / "go"
    d = make_daemon("corral-nw-git-restart")
    d.start()
    proc = None
    try:
        script = (f"set -e; touch {go}.ready; while [ ! -e {go} ]; do sleep 0.02; done; "
                  "git init -q -b main .; git config user.name x; "
                  f"touch {go}.made; while [ ! -e {go}.back ]; do sleep 0.02; done; "
                  "git config user.name y && echo CFG_OK; "
                  f"git config core.pager 'touch {mark}'; sleep 0.6; "
                  "test -f .git/config && echo STILL || echo GONE")
        env = {k: v for k, v in d.env.items() if k not in ("TMUX", "SSH_AUTH_SOCK")}
        proc = subprocess.Popen([CORRAL, "run", "--", "sh", "-c", script], cwd=proj, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: os.path.exists(f"{go}.ready") or proc.poll() is not None, 30,
                 "the session")
        d.stop()                        # .git/config is made while nobody watches
        go.write_text("")
        wait_for(lambda: os.path.exists(f"{go}.made") or proc.poll() is not None, 30, "git init")
        d.start()
        cfg = str(proj / ".git" / "config")
        wait_for(lambda: any(r.get("op") == "checked" and r.get("target") == cfg
                             for r in d.records()), 10, "the check after the restart")
        Path(f"{go}.back").write_text("")
        o, e = proc.communicate(timeout=60)
        assert proc.returncode == 0, (o, e)
        assert "CFG_OK" in o and "GONE" in o, (o, e)
        checked = next(r for r in d.records() if r.get("op") == "checked" and r["target"] == cfg)
        assert checked["creator"] == "unknown" and checked["verdict"] == "allow", checked
        q = next(r for r in d.records() if r.get("op") == "quarantine" and r["target"] == cfg)
        assert q["key"] == "core.pager", q
        assert "\tname = y\n" in Path(q["moved_to"]).read_text()
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        d.cleanup(remove_tmp=True)
