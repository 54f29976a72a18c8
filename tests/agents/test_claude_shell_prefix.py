"""Claude Code's per-command model through `corral exec` (issue 15): the CLI runs
outside any session, and every command its Bash tool runs goes through
CLAUDE_CODE_SHELL_PREFIX = `corral-exec --session ID` (the native launcher's
prefix form) into one `corral session start` session. The scripted Messages
API stand-in (fake_anthropic.py) drives the real CLI, as in test_claude_code.py.

What this shows, both ways: the Bash commands are confined (the session's
cgroup, ~/.ssh hidden, an unlisted host refused, each one an `exec` record);
the CLI's own Write tool is not (it runs outside: only `corral run -- claude`
confines that)."""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from entry import start_session, stop_session
from harness import BIN

from .fake_anthropic import FakeAnthropic, ToolStep
from .test_claude_code import CONNECT, HELLO, UNLISTED


def test_bash_commands_run_in_the_session_the_cli_does_not(claude_bin, daemon, project, ssh_key,
                                                          claude_state):
    key, secret = ssh_key
    outside = Path.home() / f"corral-prefix-outside-{os.getpid()}.txt"
    sid = start_session(daemon, "--no-net", "--allow-write", ".", "--allow-write", "/tmp",
                        cwd=project)
    script = [
        ToolStep("Write", {"file_path": str(project / "hello.py"), "content": HELLO},
                 "I will write hello.py."),
        ToolStep("Bash", {"command": "python3 hello.py > out.txt && echo BUILD-OK in $CORRAL_SESSION",
                          "description": "Run hello.py"}),
        ToolStep("Bash", {"command": f"cat {key}", "description": "Read the SSH key"}),
        ToolStep("Bash", {"command": CONNECT, "description": "Reach an unlisted host"}),
        ToolStep("Bash", {"command": f"echo x > {outside}; echo rc=$?",
                          "description": "Write outside the project from the shell"}),
        # The CLI's own tool, outside the session: corral does not see it.
        ToolStep("Write", {"file_path": str(outside), "content": "written by the CLI itself\n"},
                 "And with my own Write tool."),
    ]
    try:
        with FakeAnthropic(script) as api:
            env = {k: v for k, v in daemon.env.items()
                   if k not in ("TMUX", "SSH_AUTH_SOCK") and not k.startswith(("ANTHROPIC_", "CLAUDE"))}
            env.update({"ANTHROPIC_BASE_URL": api.url, "ANTHROPIC_API_KEY": "test", "IS_SANDBOX": "1",
                        "DISABLE_AUTOUPDATER": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
                        "DISABLE_TELEMETRY": "1",
                        "CLAUDE_CODE_SHELL_PREFIX": f"{BIN / 'corral-exec'} --session {sid}"})
            p = subprocess.run([str(claude_bin), "-p", "do it", "--permission-mode", "bypassPermissions",
                                "--output-format", "json"], cwd=project, env=env, capture_output=True,
                               text=True, timeout=300)
            results = list(api.tool_results().values())
        diag = f"rc={p.returncode}\nstdout: {p.stdout[-2000:]}\nstderr: {p.stderr[-2000:]}\n" \
               f"results: {json.dumps(results, indent=1)[-4000:]}"
        print(diag)
        assert p.returncode == 0, diag
        assert len(results) == len(script), diag
        _, build, ssh, net, shell_outside, cli_outside = results
        # the commands ran in the session, and their work is in the project
        assert not build["is_error"] and f"BUILD-OK in {sid}" in build["text"], diag
        assert (project / "out.txt").read_text() == "hello from the agent 42\n"
        # confined: the key is hidden, the host refused, outside the project read-only
        assert ssh["is_error"] and secret not in ssh["text"], diag
        assert net["is_error"] and "CONNECTED" not in net["text"], diag
        assert "PermissionError" in net["text"] or "Operation not permitted" in net["text"], diag
        assert "rc=0" not in shell_outside["text"], diag
        # ...but the CLI's own Write tool is not in the session
        assert not cli_outside["is_error"], diag
        assert outside.read_text() == "written by the CLI itself\n"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            recs = [r for r in daemon.records() if r.get("session") == sid]
            execs = [r for r in recs if r.get("op") == "exec"]
            denied = [r for r in recs if r.get("kind") == "net" and r.get("verdict") == "deny"
                      and r.get("target") == f"{UNLISTED[0]}:{UNLISTED[1]}"]
            if denied and len(execs) >= 4:
                break
            time.sleep(0.2)
        assert denied, recs
        assert len(execs) >= 4 and all(r["report"]["path"] == "native" for r in execs), execs
        assert any("hello.py" in r["target"] for r in execs), execs
    finally:
        stop_session(daemon, sid)
        outside.unlink(missing_ok=True)
