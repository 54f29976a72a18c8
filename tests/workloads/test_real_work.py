"""Real tools doing a developer's everyday jobs inside a session (issue 13), with
no policy options (the default `agent` profile) and with the Claude Code and
Codex profiles: a venv and `pip install` from PyPI, `npm install` from the npm
registry, git init/add/commit/branch/checkout, a gcc/make build, and `pytest` of
a project whose tests start their own HTTP server on 127.0.0.1.

Each job runs in a fresh project under $HOME and is checked from outside. After
the job, the same session probes what must stay protected (probe.py): ~/.ssh
unreadable, a raw IP of an unlisted host and a name not in the profile refused,
the host's own loopback service refused. A job that works only because the
protections are off would show up there; a protection that breaks the job shows
up in the job's own assertions."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import harness

CORRAL = str(Path(sys.executable).parent / "corral")
PROBE = Path(__file__).with_name("probe.py")
PROFILES = {"default": (), "claude": ("--profile", "claude"), "codex": ("--profile", "codex")}


@pytest.fixture
def fresh():
    with harness.home_project("cwork-") as d:
        yield d


@pytest.fixture(autouse=True)
def home_state():
    """The profiles make agent state and caches in ~ writable, and corral creates
    the missing ones: put the home back as it was."""
    home = Path.home()
    names = [".claude", ".claude.json", ".codex", ".cache/pip", ".cache/claude-cli-nodejs",
             ".npm", ".cache"]
    before = {n for n in names if (home / n).exists()}
    yield
    for n in names:
        p = home / n
        if n not in before and p.exists():
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def work(d, cwd, profile: str, script: str, host_port: int, key: Path, timeout=600):
    """Run `script` then the probe in one session; (process, probe result)."""
    env = {k: v for k, v in d.env.items() if k not in ("TMUX", "SSH_AUTH_SOCK")}
    env.update({"GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@example.com",
                "GIT_COMMITTER_NAME": "a", "GIT_COMMITTER_EMAIL": "a@example.com",
                "PIP_DISABLE_PIP_VERSION_CHECK": "1", "npm_config_update_notifier": "false",
                "npm_config_fund": "false", "npm_config_audit": "false"})
    full = f"set -e\n{script}\n{sys.executable} {PROBE} {key} {host_port}\n"
    p = subprocess.run([CORRAL, "run", *PROFILES[profile], "--", "sh", "-c", full], cwd=cwd,
                       env=env, capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("PROBE ")]
    return p, (json.loads(lines[-1][6:]) if lines else None)


def assert_protected(p, probe, accepted_before, accepted):
    assert probe is not None, ("the job failed before the probe ran", p.stdout, p.stderr)
    assert probe["ssh_key"] != "read", probe
    assert probe["raw_ip"] == "EPERM", probe
    assert probe["unlisted_name"] != "connected", probe
    assert probe["host_loopback"] == "EPERM", probe
    assert len(accepted) == accepted_before, "the host's loopback service saw a connection"
    # and the session says how many things it refused, with the log command
    assert "refused" in p.stderr and "corral log --session" in p.stderr, p.stderr


@pytest.mark.parametrize("profile", PROFILES)
def test_venv_and_pip_install(agentd, fresh, profile, host_service, ssh_key):
    port, accepted = host_service
    n = len(accepted)
    p, probe = work(agentd, fresh, profile, """
python3 -m venv .venv
.venv/bin/pip install -q six==1.16.0
.venv/bin/python -c 'import six; print("six", six.__version__)'
""", port, ssh_key)
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert "six 1.16.0" in p.stdout
    out = subprocess.run([str(fresh / ".venv" / "bin" / "python"), "-c",
                          "import six; print(six.__file__)"], capture_output=True, text=True)
    assert out.returncode == 0 and str(fresh) in out.stdout, out
    assert_protected(p, probe, n, accepted)


@pytest.mark.parametrize("profile", PROFILES)
def test_npm_install(agentd, fresh, profile, host_service, ssh_key):
    if not shutil.which("npm"):
        pytest.skip("npm is not installed (apt install npm)")
    port, accepted = host_service
    n = len(accepted)
    p, probe = work(agentd, fresh, profile, """
npm init -y >/dev/null
npm install --no-audit --no-fund --loglevel=error is-number@7.0.0
node -e 'console.log("is-number", require("is-number")(5))'
""", port, ssh_key)
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert "is-number true" in p.stdout
    pkg = json.loads((fresh / "package.json").read_text())
    assert pkg["dependencies"]["is-number"].endswith("7.0.0"), pkg
    assert (fresh / "node_modules" / "is-number" / "index.js").is_file()
    assert_protected(p, probe, n, accepted)


@pytest.mark.parametrize("profile", PROFILES)
def test_git_init_add_commit_branch_checkout(agentd, fresh, profile, host_service, ssh_key):
    port, accepted = host_service
    n = len(accepted)
    p, probe = work(agentd, fresh, profile, """
git init -q -b main .
echo one > README
git add README
git commit -qm first
git checkout -q -b feature
echo two >> README
git commit -qam second
git checkout -q main
git merge -q feature
git log --oneline | wc -l
""", port, ssh_key)
    assert p.returncode == 0, (p.stdout, p.stderr)
    log = subprocess.run(["git", "-C", str(fresh), "log", "--oneline", "main"],
                         capture_output=True, text=True, check=True).stdout
    assert "first" in log and "second" in log, log
    branches = subprocess.run(["git", "-C", str(fresh), "branch", "--format=%(refname:short)"],
                              capture_output=True, text=True, check=True).stdout.split()
    assert sorted(branches) == ["feature", "main"], branches
    hooks = fresh / ".git" / "hooks"
    assert not hooks.is_dir() or not [h for h in hooks.iterdir()
                                      if not h.name.endswith(".sample")]
    assert_protected(p, probe, n, accepted)


@pytest.mark.parametrize("profile", PROFILES)
def test_gcc_make_build(agentd, fresh, profile, host_service, ssh_key):
    port, accepted = host_service
    n = len(accepted)
    (fresh / "hello.c").write_text('#include <stdio.h>\n#include "greet.h"\n'
                                   'int main(void){ printf("%s\\n", GREETING); return 0; }\n')
    (fresh / "Makefile").write_text("CFLAGS = -O2 -Wall\nhello: hello.o\n\t$(CC) -o $@ $^\n"
                                    "hello.o: hello.c greet.h\n"
                                    "greet.h:\n\techo '#define GREETING \"built in corral\"' > $@\n"
                                    "clean:\n\trm -f hello hello.o greet.h\n")
    p, probe = work(agentd, fresh, profile, "make -s\n./hello\nmake -s clean\nmake -s\n./hello",
                    port, ssh_key)
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert p.stdout.count("built in corral") == 2, p.stdout
    out = subprocess.run([str(fresh / "hello")], capture_output=True, text=True)
    assert out.stdout.strip() == "built in corral"
    assert_protected(p, probe, n, accepted)


TEST_WITH_SERVER = '''
import socket, subprocess, sys, time, urllib.request

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    return port

def test_against_own_server(tmp_path):
    (tmp_path / "hello.txt").write_text("served")
    port = free_port()
    srv = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                            "127.0.0.1", "--directory", str(tmp_path)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/hello.txt",
                                              timeout=5).read()
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise AssertionError("own server never answered")
        assert body == b"served"
    finally:
        srv.kill()
'''


@pytest.mark.parametrize("profile", PROFILES)
def test_pytest_with_its_own_local_server(agentd, fresh, profile, host_service, ssh_key):
    """The project's tests start an HTTP server on 127.0.0.1 and talk to it: the
    session reaches its own listener with no rule, never the host's."""
    port, accepted = host_service
    n = len(accepted)
    (fresh / "test_app.py").write_text(TEST_WITH_SERVER)
    p, probe = work(agentd, fresh, profile,
                    f"{sys.executable} -m pytest -q -p no:cacheprovider test_app.py",
                    port, ssh_key)
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert "1 passed" in p.stdout, p.stdout
    assert_protected(p, probe, n, accepted)
