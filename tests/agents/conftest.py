"""Fixtures for the real-agent tests (issue 13): the installed Claude Code CLI,
a fresh project under $HOME, a fake SSH key, and the user's Claude state put
back as it was."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

import harness

REPO = Path(__file__).resolve().parents[2]
# Installed by `make test` (the Makefile's agent-clis target); the pin lives there.
CLAUDE_PIN = "2.1.110"
CLAUDE_BIN = REPO / ".venv" / "node" / "node_modules" / ".bin" / "claude"


@pytest.fixture(scope="session")
def claude_bin() -> Path:
    if not CLAUDE_BIN.exists():
        pytest.skip(f"Claude Code CLI not installed at {CLAUDE_BIN}: `make agent-clis` "
                    f"(npm install @anthropic-ai/claude-code@{CLAUDE_PIN}) failed or was not run "
                    "(no npm or no network?)")
    if not shutil.which("node"):
        pytest.skip("Claude Code CLI is installed but `node` is not on PATH")
    p = subprocess.run([str(CLAUDE_BIN), "--version"], capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        pytest.skip(f"`claude --version` failed ({p.returncode}): {p.stderr.strip()[:300]}")
    return CLAUDE_BIN


@pytest.fixture
def project():
    """An empty project directory under $HOME, as a user starts an agent there."""
    with harness.home_project("cagent-") as d:
        yield d


@pytest.fixture
def ssh_key():
    """~/.ssh/id_rsa_corraltest with a recognisable secret; nothing else in ~/.ssh is touched."""
    ssh = Path.home() / ".ssh"
    made_dir = not ssh.exists()
    ssh.mkdir(mode=0o700, exist_ok=True)
    key = ssh / "id_rsa_corraltest"
    secret = "CORRAL-TEST-SECRET-" + os.urandom(8).hex()
    key.write_text(f"-----BEGIN OPENSSH PRIVATE KEY-----\n{secret}\n-----END OPENSSH PRIVATE KEY-----\n")
    key.chmod(0o600)
    try:
        yield key, secret
    finally:
        key.unlink(missing_ok=True)
        if made_dir:
            try:
                ssh.rmdir()
            except OSError:
                pass


def _snapshot(root: Path) -> set[Path]:
    return set(root.rglob("*")) if root.is_dir() else set()


@pytest.fixture
def claude_state():
    """Records ~/.claude/settings.json and ~/.claude.json as they are and puts them
    back afterwards; removes what the run added under ~/.claude (its project
    transcript, session env, shell snapshots), keeping everything that was there."""
    home = Path.home()
    settings = home / ".claude" / "settings.json"
    cfg = home / ".claude.json"
    before = {p: (p.read_bytes() if p.exists() else None) for p in (settings, cfg)}
    made_claude_dir = not (home / ".claude").exists()
    tree = _snapshot(home / ".claude")
    if before[cfg] is None:
        # `--allow-write` of a missing path makes a directory there: give the CLI
        # the file it would make itself (an empty JSON object is a valid config).
        cfg.write_text("{}\n")
    try:
        yield {"settings": settings, "settings_before": before[settings]}
    finally:
        if made_claude_dir:
            shutil.rmtree(home / ".claude", ignore_errors=True)
        else:
            for p in sorted(_snapshot(home / ".claude") - tree, key=lambda x: len(x.parts)):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    try:
                        p.unlink()
                    except OSError:
                        pass
        for p, data in before.items():
            if data is None:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                elif p.exists() and not (made_claude_dir and p == settings):
                    p.unlink()
            elif not p.exists() or p.read_bytes() != data:
                p.write_bytes(data)
