"""Real tools doing real work inside `corral run` (issue 12): git with a worktree,
a hook written in the session, an editor's write-then-rename at the project root
(the everyday jobs under each profile are in test_real_work.py). Each runs
in a fresh project directory under $HOME, the way a user starts an agent there,
and is checked from outside afterwards."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import harness

CORRAL = str(Path(sys.executable).parent / "corral")


def run(daemon, cwd, script: str, *flags, timeout=300):
    env = {k: v for k, v in daemon.env.items() if k not in ("TMUX", "SSH_AUTH_SOCK")}
    env.update({"GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@example.com",
                "GIT_COMMITTER_NAME": "a", "GIT_COMMITTER_EMAIL": "a@example.com",
                "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    return subprocess.run([CORRAL, "run", *flags, "--", "sh", "-c", script], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def fresh():
    """An empty directory (no .git, no .vscode...) under $HOME."""
    with harness.home_project("cwl-") as d:
        try:
            yield d
        finally:
            shutil.rmtree(str(d) + "-wt", ignore_errors=True)


def test_git_init_commit_branch_worktree(daemon, fresh):
    wt = str(fresh) + "-wt"
    p = run(daemon, fresh, f"""set -e
git init -q .
echo hello > a.txt
git add a.txt
git commit -qm first
git branch feature
git worktree add -q {wt} feature
echo more >> {wt}/a.txt
git -C {wt} commit -qam second
git log --all --oneline
""", "--allow-write", ".", "--allow-write", wt)
    assert p.returncode == 0, (p.stdout, p.stderr)
    log = subprocess.run(["git", "-C", str(fresh), "log", "--all", "--oneline"],
                         capture_output=True, text=True, check=True).stdout
    assert "first" in log and "second" in log, log
    assert (Path(wt) / "a.txt").read_text() == "hello\nmore\n"
    # the repository the session made carries no hook that would run outside
    hooks = fresh / ".git" / "hooks"
    live = [h.name for h in hooks.iterdir() if not h.name.endswith(".sample")] \
        if hooks.is_dir() else []
    assert live == [], live


def test_git_hook_written_in_session_never_takes_effect(agentd, fresh):
    """The control above works; writing a hook into the repository does not."""
    subprocess.run(["git", "init", "-q", str(fresh)], check=True)
    p = run(agentd, fresh, "printf '#!/bin/sh\\necho pwned\\n' > .git/hooks/pre-commit; "
                           "chmod +x .git/hooks/pre-commit; echo rc=$?")
    assert not (fresh / ".git" / "hooks" / "pre-commit").exists(), (p.stdout, p.stderr)


def test_editor_write_then_rename_at_the_project_root(agentd, fresh):
    (fresh / "old.py").write_text("print('old')\n")
    p = run(agentd, fresh, """set -e
printf 'print(1)\\n' > hello.py.tmp.$$
mv hello.py.tmp.$$ hello.py
printf "print('new')\\n" > old.py.tmp.$$
mv old.py.tmp.$$ old.py
mkdir sub
touch sub/x .hidden
""")
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert (fresh / "hello.py").read_text() == "print(1)\n"
    assert (fresh / "old.py").read_text() == "print('new')\n"
    assert (fresh / "sub" / "x").exists() and (fresh / ".hidden").exists()
    assert not list(fresh.glob("*.tmp.*"))
