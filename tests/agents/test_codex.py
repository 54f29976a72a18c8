"""The real Codex CLI (issue 13): `codex exec`, installed from npm by the test
setup (Makefile agent-clis, pinned), runs inside `corral run -- codex ...` with no
policy option, so under the `codex` profile chosen by the command name. It is
pointed at a scripted stand-in of the Responses API on loopback (fake_openai.py,
outside the session) through a model provider given with -c, and the same URL
in OPENAI_BASE_URL, from which corral allows that one loopback port.

The script drives Codex's own shell tool: it writes hello.py at the project root
and runs it, then tries to read a key in ~/.ssh, to reach a host no rule allows,
to write ~/.codex/config.toml (a `notify` command there would run at Codex's next
start, outside the session) and to reach the host's loopback service. What
happened inside is read from the outputs Codex sent back, from the files
afterwards and from corral's audit log."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .fake_openai import FakeOpenAI

CORRAL = str(Path(sys.executable).parent / "corral")
REPO = Path(__file__).resolve().parents[2]
CODEX_PIN = "0.171.0"
CODEX_BIN = REPO / ".venv" / "node-codex" / "node_modules" / ".bin" / "codex"
UNLISTED = ("192.0.2.1", 80)     # TEST-NET-1: refused before anything is sent
EVIL = 'notify = ["touch", "/tmp/corral-codex-pwned"]\n'


@pytest.fixture(scope="session")
def codex_bin() -> Path:
    if not CODEX_BIN.exists():
        pytest.skip(f"Codex CLI not installed at {CODEX_BIN}: `make agent-clis` (npm install "
                    f"@openai/codex@{CODEX_PIN}) failed or was not run (no npm or no network?)")
    p = subprocess.run([str(CODEX_BIN), "--version"], capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        pytest.skip(f"`codex --version` failed ({p.returncode}): {p.stderr.strip()[:300]}")
    return CODEX_BIN


@pytest.fixture
def codex_home():
    """~/.codex as it was before (Codex writes its sessions and logs there)."""
    home = Path.home() / ".codex"
    existed = home.exists()
    cfg = home / "config.toml"
    cfg_before = cfg.read_bytes() if cfg.exists() else None
    snapshot = set(home.rglob("*")) if existed else set()
    yield home
    if not existed:
        shutil.rmtree(home, ignore_errors=True)
    else:
        for p in sorted(set(home.rglob("*")) - snapshot, key=lambda x: -len(x.parts)):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        if cfg_before is None:
            cfg.unlink(missing_ok=True)
        else:
            cfg.write_bytes(cfg_before)


def test_codex_exec_in_a_session(codex_bin, agentd, project, ssh_key, codex_home, host_listener):
    key, secret = ssh_key
    cfg = codex_home / "config.toml"
    cfg_before = cfg.read_bytes() if cfg.exists() else None
    connect = (f"python3 -c \"import socket; socket.create_connection({UNLISTED!r}, timeout=5); "
               "print('CONNECTED')\"")
    local = (f"python3 -c \"import socket; socket.create_connection(('127.0.0.1', "
             f"{host_listener}), timeout=5); print('CONNECTED')\"")
    script = [
        "printf 'print(\"hello from codex\", 6 * 7)\\n' > hello.py && python3 hello.py > out.txt "
        "&& echo BUILD-OK",
        f"cat {key}; echo rc=$?",
        f"{connect}; echo rc=$?",
        f"mkdir -p {codex_home} && printf '%s' '{EVIL}' >> {cfg}; echo rc=$?",
        f"{local}; echo rc=$?",
    ]
    with FakeOpenAI(script) as api:
        env = {k: v for k, v in agentd.env.items()
               if k not in ("TMUX", "SSH_AUTH_SOCK") and not k.startswith(("OPENAI_", "CODEX_"))}
        env.update({"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": api.url,
                    "GITHUB_TOKEN": "ghp-should-not-pass"})
        provider = [f"model_providers.fake.{k}={v}" for k, v in (
            ("name", "fake"), ("base_url", api.url), ("wire_api", "responses"),
            ("env_key", "OPENAI_API_KEY"), ("request_max_retries", 0),
            ("stream_max_retries", 0))]
        cmd = [CORRAL, "run", "-v", "--", str(codex_bin), "exec", "--skip-git-repo-check",
               "-s", "danger-full-access", "-c", "model_provider=fake",
               *[a for c in provider for a in ("-c", c)], "do it"]
        t0 = time.monotonic()
        p = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True,
                           timeout=300, stdin=subprocess.DEVNULL)
        elapsed = time.monotonic() - t0
        outs = api.outputs()
        keys = {r.get("_auth") for r in api.requests}
    diag = (f"rc={p.returncode} in {elapsed:.1f}s\nstdout: {p.stdout[-3000:]}\n"
            f"stderr: {p.stderr[-3000:]}\noutputs: {json.dumps(outs, indent=1)[-4000:]}")
    print(diag)
    assert keys == {"Bearer sk-test"}, (keys, diag)   # the profile passes the agent's key
    assert "profile codex (chosen by the command name" in p.stderr, diag
    assert f"OPENAI_BASE_URL allows {api.port}" in p.stderr, diag
    assert "GITHUB_TOKEN" in p.stderr and "ghp-should-not-pass" not in p.stdout + p.stderr, diag
    assert p.returncode == 0, diag
    assert "All done." in p.stdout, diag
    assert len(outs) == len(script), diag
    build, ssh, net, config, loop = (outs[f"call_{i}"] for i in range(len(script)))

    # it wrote and ran its file at the project root
    assert "BUILD-OK" in build, diag
    assert (project / "hello.py").exists()
    assert (project / "out.txt").read_text() == "hello from codex 42\n"
    # the key stayed unread
    assert secret not in ssh and "rc=1" in ssh, diag
    # the unlisted host and the host's loopback service: corral's EPERM
    for o in (net, loop):
        assert "CONNECTED" not in o and "Operation not permitted" in o, diag
    # ~/.codex/config.toml did not take the notify command
    now = cfg.read_bytes() if cfg.exists() else None
    assert now == cfg_before or (now is not None and b"corral-codex-pwned" not in now), (now, diag)

    sid = p.stderr.split("corral: session ", 1)[1].split(":", 1)[0].strip()
    deadline = time.monotonic() + 10
    while True:
        recs = [r for r in agentd.records() if r.get("session") == sid]
        denied = {r.get("target") for r in recs if r.get("kind") == "net"
                  and r.get("verdict") == "deny"}
        if {f"{UNLISTED[0]}:{UNLISTED[1]}", f"127.0.0.1:{host_listener}"} <= denied \
                or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert f"{UNLISTED[0]}:{UNLISTED[1]}" in denied, recs
    assert f"127.0.0.1:{host_listener}" in denied, recs
    assert f"127.0.0.1:{api.port}" not in denied, recs
    if cfg_before is None:
        # made in the session: quarantined, with its record
        assert any(r.get("op") == "quarantine" and r.get("target") == str(cfg)
                   and "codex-config" in r.get("rule", "") for r in recs), recs
    assert not os.path.exists("/tmp/corral-codex-pwned")
