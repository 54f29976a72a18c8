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
    names = [".claude", ".claude.json", ".codex", ".cache", ".npm"]
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
    for name in ("claude", "codex", "other-agent"):
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
                            ("codex", "api.openai.com:443", "OPENAI_API_KEY")):
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
