"""Credential-looking variables of the caller never reach the session (issue 13)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

CORRAL = str(Path(sys.executable).parent / "corral")


@pytest.fixture(scope="session")
def daemon(agentd):
    # Most sessions here run with no policy option, so under the default profile,
    # which names domains: the daemon's resolver must run.
    return agentd


DUMP = "import json, os; print(json.dumps(dict(os.environ)))"


def _run(daemon, tmp_path, *flags, extra=None):
    env = dict(daemon.env)
    env.update(extra or {})
    return subprocess.run([CORRAL, "run", *flags, "--", sys.executable, "-c", DUMP], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=60)


def test_tokens_are_removed_and_names_listed_never_values(daemon, tmp_path):
    secrets = {"GITHUB_TOKEN": "ghp_s3cr3tvalue", "AWS_SECRET_ACCESS_KEY": "awsS3cr3t",
               "NPM_TOKEN": "npm_s3cr3t", "MY_SERVICE_API_KEY": "k3y", "DB_PASSWORD": "pw"}
    p = _run(daemon, tmp_path, "-v", extra=dict(secrets, FOO="bar", SSL_CERT_FILE="/etc/x.pem"))
    assert p.returncode == 0, p.stderr
    env = json.loads(p.stdout)
    for k in secrets:
        assert k not in env, k
    assert env["FOO"] == "bar" and env["SSL_CERT_FILE"] == "/etc/x.pem"   # controls
    for k, v in secrets.items():
        assert k in p.stderr and v not in p.stderr, p.stderr


def test_a_passed_name_stays(daemon, tmp_path):
    p = _run(daemon, tmp_path, "--pass-env", "GITHUB_TOKEN",
             extra={"GITHUB_TOKEN": "t", "GH_TOKEN": "u"})
    assert p.returncode == 0, p.stderr
    env = json.loads(p.stdout)
    assert env.get("GITHUB_TOKEN") == "t" and "GH_TOKEN" not in env


def test_policy_file_env_pass(daemon, tmp_path):
    pol = tmp_path / "p.toml"
    pol.write_text('[env]\npass = ["NPM_TOKEN"]\n')
    p = _run(daemon, tmp_path, "--policy", str(pol), extra={"NPM_TOKEN": "n"})
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout).get("NPM_TOKEN") == "n"
    pol.write_text('[env]\npass = ["NOT A NAME"]\n')
    p = _run(daemon, tmp_path, "--policy", str(pol))
    assert p.returncode == 2 and "not an environment variable name" in p.stderr, p.stderr
