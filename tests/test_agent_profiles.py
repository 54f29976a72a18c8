"""Profiles for the agents people run (issue 13): `claude` and `codex`, chosen by
the command name when no policy option is given; the agent's API endpoint from
ANTHROPIC_BASE_URL / OPENAI_BASE_URL; its own key passed, other tokens not."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_daemon
from corral.policy import files

CORRAL = str(Path(sys.executable).parent / "corral")


@pytest.fixture(scope="module")
def dnsd():
    # The profiles name domains: the daemon's resolver must run (its upstream is
    # never asked here).
    d = make_daemon("corral-prof", extra_args=["--dns-upstream", "127.0.0.1:9"])
    d.start()
    yield d
    d.cleanup()


@pytest.fixture(autouse=True)
def home_state():
    """The profiles' allow_write names agent state in ~ that corral creates when
    missing: leave the home as it was."""
    import shutil
    home = Path.home()
    names = [".claude", ".claude.json", ".codex", ".gemini", ".aider", ".cache", ".npm"]
    before = {n for n in names if (home / n).exists()}
    yield
    for n in names:
        if n not in before and (home / n).exists():
            p = home / n
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


@pytest.fixture
def fake_agents(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("claude", "codex", "gemini", "aider", "other-agent"):
        f = bin_dir / name
        f.write_text("#!/bin/sh\nexec python3 -c 'import json, os; "
                     "print(json.dumps({k: os.environ.get(k) for k in "
                     "(\"ANTHROPIC_API_KEY\", \"OPENAI_API_KEY\", \"GITHUB_TOKEN\", "
                     "\"CORRAL_SESSION\")}))'\n")
        f.chmod(0o755)
    return bin_dir


def _run(d, fake_agents, tmp_path, *argv, env=None):
    e = dict(d.env, PATH=f"{fake_agents}:{os.environ['PATH']}", ANTHROPIC_API_KEY="ak",
             OPENAI_API_KEY="ok", GITHUB_TOKEN="gh")
    e.update(env or {})
    return subprocess.run([CORRAL, "run", *argv], cwd=tmp_path, env=e, capture_output=True,
                          text=True, timeout=60)


def _policy(d, sid) -> dict:
    for r in d.records():
        if r.get("op") == "start" and r.get("session") == sid:
            return r["policy"]
    raise AssertionError(f"no start record for {sid}")


def test_profiles_extend_agent_and_name_their_api():
    agent = files.load_profile("agent")
    for name, host, key in (("claude", "api.anthropic.com:443", "ANTHROPIC_API_KEY"),
                            ("codex", "api.openai.com:443", "OPENAI_API_KEY"),
                            ("gemini", "generativelanguage.googleapis.com:443", "GEMINI_API_KEY"),
                            ("aider", "api.anthropic.com:443", "ANTHROPIC_API_KEY")):
        p = files.load_profile(name)
        assert host in p["network"]["allow_domains"]
        assert set(agent["network"]["allow_domains"]) <= set(p["network"]["allow_domains"])
        assert set(agent["filesystem"]["deny_read"]) == set(p["filesystem"]["deny_read"])
        assert key in p["env"]["pass"]


def test_claude_by_command_name_passes_its_key_only(dnsd, fake_agents, tmp_path):
    p = _run(dnsd, fake_agents, tmp_path, "--", "claude")
    assert p.returncode == 0, p.stderr
    assert "profile claude (chosen by the command name" in p.stderr
    env = json.loads(p.stdout.strip().splitlines()[-1])
    assert env["ANTHROPIC_API_KEY"] == "ak" and env["GITHUB_TOKEN"] is None
    assert env["OPENAI_API_KEY"] is None
    pol = _policy(dnsd, env["CORRAL_SESSION"])
    assert "api.anthropic.com:443" in pol["network"]["allow_domains"]
    assert any(w.endswith("/.claude") for w in pol["filesystem"]["allow_write"])
    # the settings that hold hooks stay protected
    assert any(w.endswith("/.claude/settings.json") for w in pol["filesystem"]["deny_write"])


def test_codex_by_command_name(dnsd, fake_agents, tmp_path):
    p = _run(dnsd, fake_agents, tmp_path, "--", "codex")
    assert p.returncode == 0, p.stderr
    env = json.loads(p.stdout.strip().splitlines()[-1])
    assert env["OPENAI_API_KEY"] == "ok" and env["ANTHROPIC_API_KEY"] is None
    assert "api.openai.com:443" in _policy(dnsd, env["CORRAL_SESSION"])["network"]["allow_domains"]


@pytest.mark.parametrize("name,own_state,settings", [
    ("gemini", "/.gemini", "/.gemini/settings.json"),
    ("aider", "/.aider", "/.aider.conf.yml")])
def test_gemini_and_aider_by_command_name(dnsd, fake_agents, tmp_path, name, own_state, settings):
    p = _run(dnsd, fake_agents, tmp_path, "--", name)
    assert p.returncode == 0, p.stderr
    assert f"profile {name} (chosen by the command name" in p.stderr
    env = json.loads(p.stdout.strip().splitlines()[-1])
    assert env["GITHUB_TOKEN"] is None
    pol = _policy(dnsd, env["CORRAL_SESSION"])
    assert any(w.endswith(own_state) for w in pol["filesystem"]["allow_write"]), pol
    # the file that makes the agent run commands at its next start stays read-only
    assert any(w.endswith(settings) for w in pol["filesystem"]["deny_write"]), pol


def test_any_policy_option_or_another_command_keeps_the_choice_to_the_user(dnsd, fake_agents,
                                                                         tmp_path):
    p = _run(dnsd, fake_agents, tmp_path, "--no-net", "--", "claude")
    assert p.returncode == 0 and "chosen by the command name" not in p.stderr, p.stderr
    env = json.loads(p.stdout.strip().splitlines()[-1])
    assert env["ANTHROPIC_API_KEY"] is None          # no profile passed it
    p = _run(dnsd, fake_agents, tmp_path, "--", "other-agent")
    assert p.returncode == 0 and "chosen by the command name" not in p.stderr, p.stderr


def test_base_url_makes_its_endpoint_allowed(dnsd, fake_agents, tmp_path):
    p = _run(dnsd, fake_agents, tmp_path, "--", "claude",
             env={"ANTHROPIC_BASE_URL": "http://127.0.0.1:8765/v1"})
    assert p.returncode == 0, p.stderr
    assert "ANTHROPIC_BASE_URL allows 8765" in p.stderr
    sid = json.loads(p.stdout.strip().splitlines()[-1])["CORRAL_SESSION"]
    assert "8765" in _policy(dnsd, sid)["network"]["allow_localhost_ports"]
    p = _run(dnsd, fake_agents, tmp_path, "--", "claude",
             env={"ANTHROPIC_BASE_URL": "https://llm.example.internal:8443"})
    assert p.returncode == 0 and "allows llm.example.internal:8443" in p.stderr, p.stderr


# -- the default: `corral run -- CMD` with no policy option --------------------------------
PROBE_DEFAULT = r"""
import errno, json, socket, sys
def tcp(port):
    s = socket.socket()
    s.settimeout(5)
    try:
        s.connect(("127.0.0.1", port)); return "connected"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e))
    finally:
        s.close()
def read(p):
    try:
        open(p).read(1); return "read"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e))
print(json.dumps({"host_service": tcp(int(sys.argv[1])), "shadow": read("/etc/shadow")}))
"""


def test_no_option_runs_the_agent_profile_and_says_so(dnsd, fake_agents, tmp_path, host_listener):
    p = _run(dnsd, fake_agents, tmp_path, "--", sys.executable, "-c", PROBE_DEFAULT,
             str(host_listener))
    assert p.returncode == 0, p.stderr
    assert "corral: profile agent (the default; network: only its domains, --open-net" in p.stderr
    res = json.loads(p.stdout.strip().splitlines()[-1])
    # network default-deny (the host's own loopback service included), /etc/shadow
    # unreadable by a root agent (capabilities dropped, and the profile hides it)
    assert res == {"host_service": "EPERM", "shadow": "EACCES"}, res
    sid = p.stderr.split("corral: session ", 1)[1].split(":", 1)[0]
    pol = _policy(dnsd, sid)
    assert "pypi.org:443" in pol["network"]["allow_domains"]
    assert "refused 1 net" in p.stderr and f"corral log --session {sid}" in p.stderr, p.stderr


def test_open_net_lifts_only_the_network(dnsd, fake_agents, tmp_path, host_listener):
    """The control: the same connect goes through with --open-net; the files stay
    under the profile."""
    p = _run(dnsd, fake_agents, tmp_path, "--open-net", "--", sys.executable, "-c",
             PROBE_DEFAULT, str(host_listener))
    assert p.returncode == 0, p.stderr
    assert "network unrestricted (--open-net)" in p.stderr
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res == {"host_service": "connected", "shadow": "EACCES"}, res
    bad = _run(dnsd, fake_agents, tmp_path, "--open-net", "--no-net", "--", "true")
    assert bad.returncode == 2 and "--open-net lifts the network policy" in bad.stderr


def test_quiet_drops_the_profile_line_and_the_summary(dnsd, fake_agents, tmp_path, host_listener):
    p = _run(dnsd, fake_agents, tmp_path, "-q", "--", sys.executable, "-c", PROBE_DEFAULT,
             str(host_listener))
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout.strip().splitlines()[-1])["host_service"] == "EPERM"
    assert "profile agent" not in p.stderr and "refused" not in p.stderr, p.stderr


def test_without_the_resolver_the_default_fails_closed(daemon, fake_agents, tmp_path):
    """The suite's plain daemon runs --no-dns: a default session cannot be given its
    domains, so it does not start (and says what to do), rather than run open."""
    p = _run(daemon, fake_agents, tmp_path, "--", "true")
    assert p.returncode != 0
    assert "DNS resolver is not running" in p.stderr, p.stderr


def test_summary_counts_every_refusal_the_kernel_made(daemon, tmp_path, host_listener):
    """1000 refused connects, more than the records the kernel's rate limit lets
    through (burst 400): the line at the end counts them all (bpf/net.c
    count_denial), not only the records read by then."""
    loop = ("import socket\nfor _ in range(1000):\n    s = socket.socket()\n    try:\n"
            f"        s.connect(('127.0.0.1', {host_listener}))\n    except OSError:\n"
            "        pass\n    s.close()\n")
    p = subprocess.run([CORRAL, "run", "--no-net", "--", sys.executable, "-c", loop],
                       cwd=tmp_path, env=daemon.env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "refused 1000 net;" in p.stderr, p.stderr


ENDED_FIRST = r"""
import socket, sys, time
from corral.client.connection import Client
with Client() as c:
    sid = c.call("register_session", policy={"network": {}})["id"]
s = socket.socket()
try:
    s.connect(("127.0.0.1", int(sys.argv[1])))
except OSError:
    pass
print(sid, flush=True)
"""


def test_an_end_asked_after_the_daemon_ended_it_still_gets_the_counts(daemon, host_listener):
    """The command exits and corrald ends its session on its own (the leader is
    gone) before `corral run` asks: the late ask gets the same answer, with the
    refusal counts for the summary line, not "no such session"."""
    p = subprocess.run([sys.executable, "-c", ENDED_FIRST, str(host_listener)], env=daemon.env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    sid = p.stdout.strip()
    import time
    deadline = time.monotonic() + 10
    while not any(r.get("op") == "end" and r.get("session") == sid for r in daemon.records()):
        assert time.monotonic() < deadline, "corrald did not end the session on its own"
        time.sleep(0.1)
    ask = ("import json, sys\nfrom corral.client.connection import Client\n"
           "print(json.dumps(Client().call('end_session', session=sys.argv[1])))")
    q = subprocess.run([sys.executable, "-c", ask, sid], env=daemon.env, capture_output=True,
                       text=True, timeout=60)
    assert q.returncode == 0, q.stderr
    res = json.loads(q.stdout)
    assert res.get("already_ended") and res["denied"].get("net") == 1, res
