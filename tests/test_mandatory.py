"""Mandatory protections, end to end through `corral run` on the real kernel:
credentials are unreadable and agent-config / shell-startup files unwritable in
every session, including files created after the session began, unless the
protection is dropped by name."""
from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from harness import ppid

HOME = Path(pwd.getpwuid(os.getuid()).pw_dir)

PROBE = r"""
import json, os, sys, time
out, go = sys.argv[1], sys.argv[2]
while not os.path.exists(go):          # the test creates files after we started
    time.sleep(0.02)
home = os.path.expanduser("~")
tag = sys.argv[3]
res = {}
def attempt(name, fn):
    try:
        fn()
        res[name] = "ok"
    except OSError as e:
        res[name] = e.errno
def read(p):
    return lambda: open(p, "rb").read()
def append(p, data=b""):
    def f():
        with open(p, "ab") as fh:
            fh.write(data)
    return f
attempt("read_ssh_old", read(f"{home}/.ssh/corral-old-{tag}"))
attempt("read_ssh_new", read(f"{home}/.ssh/corral-new-{tag}"))
attempt("list_ssh", lambda: os.listdir(f"{home}/.ssh"))
attempt("read_aws_new", read(f"{home}/.aws/corral-new-{tag}"))
attempt("append_bashrc", append(f"{home}/.bashrc"))
attempt("append_hook", append(".git/hooks/pre-commit", b"echo pwned\n"))
attempt("create_hook", append(".git/hooks/post-checkout", b"echo pwned\n"))
attempt("write_git_config", append(".git/config", b"[core]\n\tfsmonitor = evil\n"))
attempt("create_gitmodules", append(".gitmodules", b"x"))
attempt("create_mcp", append(".mcp.json", b"{}"))
attempt("mkdir_vscode", lambda: os.mkdir(".vscode"))
attempt("write_idea", append(".idea/workspace.xml", b"x"))
attempt("write_claude_settings", append(".claude/settings.json", b"x"))
attempt("create_claude_local", append(".claude/settings.local.json", b"x"))
attempt("write_claude_team", append(".claude/settings.team.json", b"x"))
attempt("write_policy_file", append(sys.argv[4], b"# x\n"))
attempt("write_src", append("src/main.py", b"print(1)\n"))
attempt("read_src", read("src/main.py"))
with open(out, "w") as f:
    json.dump(res, f)
"""


@pytest.fixture
def project():
    base = Path(tempfile.mkdtemp(prefix="corral-mand-"))
    proj = base / "proj"
    (proj / ".git" / "hooks").mkdir(parents=True)
    (proj / ".git" / "hooks" / "pre-commit").write_text("#!/bin/sh\n")
    (proj / ".git" / "config").write_text("[core]\n")
    (proj / ".claude").mkdir()
    (proj / ".claude" / "settings.json").write_text("{}")
    (proj / ".claude" / "settings.team.json").write_text("{}")
    (proj / ".idea").mkdir()
    (proj / "src").mkdir()
    (proj / "src" / "main.py").write_text("")
    out = base / "out"
    out.mkdir()
    (base / "probe.py").write_text(PROBE)
    policy = base / "policy.toml"
    policy.write_text('[filesystem]\nallow_write = [".", "%s", "%s"]\n' % (out, base))
    tag = f"{os.getpid()}-{time.monotonic_ns()}"
    created = []
    for d in (HOME / ".ssh", HOME / ".aws"):
        if not d.exists():
            d.mkdir(mode=0o700)
            created.append(d)
    old = HOME / ".ssh" / f"corral-old-{tag}"
    old.write_text("secret")
    bashrc_existed = (HOME / ".bashrc").exists()
    bashrc_before = (HOME / ".bashrc").read_bytes() if bashrc_existed else None
    yield base, proj, policy, tag
    for p in (old, HOME / ".ssh" / f"corral-new-{tag}", HOME / ".aws" / f"corral-new-{tag}"):
        p.unlink(missing_ok=True)
    for d in created:
        shutil.rmtree(d, ignore_errors=True)
    if not bashrc_existed:
        (HOME / ".bashrc").unlink(missing_ok=True)
    else:
        assert (HOME / ".bashrc").read_bytes() == bashrc_before
    shutil.rmtree(base, ignore_errors=True)


def run_probe(daemon, base, proj, policy, tag, *flags):
    out = base / "out" / f"res-{time.monotonic_ns()}.json"
    go = base / "out" / f"go-{time.monotonic_ns()}"
    proc = subprocess.Popen([str(Path(sys.executable).parent / "corral"), "run", "--policy", str(policy),
                             *flags, "--", sys.executable, str(base / "probe.py"), str(out), str(go),
                             tag, str(policy)],
                            env=daemon.env, cwd=proj, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # Wait until the session exists, then create files it must not see.
    deadline = time.monotonic() + 20
    while True:
        with daemon.client() as c:
            # The session leader is the command: `corral run`'s child.
            if any(ppid(s["leader_pid"]) == proc.pid for s in c.call("list_sessions")):
                break
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(proc.communicate(timeout=5))
        time.sleep(0.05)
    time.sleep(0.3)
    (HOME / ".ssh" / f"corral-new-{tag}").write_text("secret")
    (HOME / ".aws" / f"corral-new-{tag}").write_text("secret")
    go.write_text("")
    o, e = proc.communicate(timeout=60)
    assert proc.returncode == 0, (o, e)
    return json.loads(out.read_text())


def test_mandatory_protections_hold(daemon, project):
    base, proj, policy, tag = project
    hook_before = (proj / ".git" / "hooks" / "pre-commit").read_text()
    res = run_probe(daemon, base, proj, policy, tag)
    denied = {k: v for k, v in res.items() if v != "ok"}
    for k in ("read_ssh_old", "read_ssh_new", "read_aws_new", "append_bashrc", "append_hook",
              "create_hook", "write_git_config", "write_idea", "write_claude_settings",
              "write_claude_team", "write_policy_file"):
        assert k in denied, (k, res)
    # the session still works where nothing is protected
    assert res["write_src"] == "ok" and res["read_src"] == "ok", res
    assert (proj / ".git" / "hooks" / "pre-commit").read_text() == hook_before
    assert "# x" not in policy.read_text()
    # Protected names that did not exist: the session may make them, corrald moves
    # them to quarantine at once (issue 12); none stays in the project.
    made = {"create_gitmodules": ".gitmodules", "create_mcp": ".mcp.json", "mkdir_vscode": ".vscode",
            "create_claude_local": ".claude/settings.local.json"}
    deadline = time.monotonic() + 5
    while any((proj / n).exists() for n in made.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    for k, n in made.items():
        assert not (proj / n).exists(), (k, n, res)
    quarantined = {r.get("target") for r in daemon.records() if r.get("op") == "quarantine"}
    for k, n in made.items():
        if res[k] == "ok":          # made, so moved away: and the log says where
            assert str(proj / n) in quarantined, (k, n, quarantined)


def test_strict_protect_keeps_the_freeze(daemon, project):
    """--strict-protect: protected names that do not exist cannot be created at all."""
    base, proj, policy, tag = project
    res = run_probe(daemon, base, proj, policy, tag, "--strict-protect")
    for k in ("create_gitmodules", "create_mcp", "mkdir_vscode", "create_claude_local"):
        assert res[k] != "ok", (k, res)


def test_allow_write_does_not_override_only_no_mandatory_does(daemon, project):
    base, proj, policy, tag = project
    res = run_probe(daemon, base, proj, policy, tag, "--allow-write", ".git/hooks",
                    "--allow-write", str(HOME / ".ssh"), "--allow-read", str(HOME / ".ssh"))
    assert res["append_hook"] != "ok" and res["read_ssh_old"] != "ok", res
    res = run_probe(daemon, base, proj, policy, tag, "--no-mandatory", "git-hooks",
                    "--no-mandatory", "ssh")
    assert res["append_hook"] == "ok", res
    assert res["read_ssh_old"] == "ok" and res["read_ssh_new"] == "ok", res
    assert res["read_aws_new"] != "ok", res
    assert not (proj / ".vscode").exists()     # refused, or made and quarantined


def test_unknown_no_mandatory_name_is_refused(daemon, project):
    base, proj, policy, tag = project
    p = daemon.corral("run", "--no-mandatory", "sshh", "--", "true")
    assert p.returncode == 2 and "no such protection" in p.stderr, p.stderr


GIT_SIDE_PROBE = r"""
import errno, json, os, sys
res = {}
for name in sys.argv[1:]:
    try:
        with open(name, "a") as fh:
            fh.write("\n")
        res[name] = "ok"
    except OSError as e:
        res[name] = errno.errorcode.get(e.errno, str(e.errno))
try:
    with open("made-here", "w") as fh:      # the control: the project root takes new files
        fh.write("x")
    res["made-here"] = open("made-here").read()
except OSError as e:
    res["made-here"] = errno.errorcode.get(e.errno, str(e.errno))
print(json.dumps(res))
"""


def _git(*a, cwd):
    subprocess.run(["git", "-c", "user.name=a", "-c", "user.email=a@example.com", *a], cwd=cwd,
                   check=True, capture_output=True, timeout=30)


@pytest.mark.parametrize("no_mandatory", [False, True])
def test_git_files_that_lead_to_more_config_are_read_only(agentd, no_mandatory):
    """.git/commondir and .git/config.worktree (git reads configuration through them)
    and a linked worktree's .git file ("gitdir: ..."): when they exist before the
    session, it cannot rewrite them; with --no-mandatory git-config it can (the
    control that this is the protection at work)."""
    base = Path(tempfile.mkdtemp(prefix="cgitside-", dir=str(HOME)))
    try:
        main, link = base / "main", base / "link"
        _git("init", "-q", "-b", "main", str(main), cwd=base)
        _git("commit", "-q", "--allow-empty", "-m", "m", cwd=main)
        _git("worktree", "add", "-q", str(link), "-b", "side", cwd=main)
        (main / ".git" / "config.worktree").write_text("[core]\n")
        (main / ".git" / "commondir").write_text(".\n")
        flags = ["--no-mandatory", "git-config"] if no_mandatory else []
        env = {k: v for k, v in agentd.env.items() if k not in ("TMUX", "SSH_AUTH_SOCK")}
        got = {}
        for cwd, names in ((main, [".git/config.worktree", ".git/commondir"]), (link, [".git"])):
            p = subprocess.run([str(Path(sys.executable).parent / "corral"), "run", "-q",
                                *flags, "--", sys.executable, "-c", GIT_SIDE_PROBE, *names],
                               cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
            assert p.returncode == 0, p.stderr
            got.update({f"{cwd.name}:{k}": v for k, v in json.loads(p.stdout).items()})
        assert got["main:made-here"] == got["link:made-here"] == "x", got
        for k in ("main:.git/config.worktree", "main:.git/commondir", "link:.git"):
            assert got[k] == ("ok" if no_mandatory else "EROFS"), (k, got)
    finally:
        shutil.rmtree(base, ignore_errors=True)
