"""Credential-looking variables stay outside the session (issue 13)."""
from __future__ import annotations

import pytest

from corral.policy import env as envfilter


def test_credential_names_are_removed_and_others_kept():
    env = {"GITHUB_TOKEN": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_PROFILE": "x",
           "NPM_TOKEN": "x", "MY_API_KEY": "x", "db_password": "x", "PATH": "/bin",
           "HOME": "/root", "SSH_AUTH_SOCK": "/tmp/a", "TERM": "xterm", "LANG": "C",
           "TOKENIZERS_PARALLELISM": "false", "ANTHROPIC_API_KEY": "k",
           "AWS_CA_BUNDLE": "/etc/ssl/x.pem", "NODE_EXTRA_CA_CERTS": "/etc/ssl/x.pem"}
    out, removed = envfilter.strip(env)
    assert removed == ["ANTHROPIC_API_KEY", "AWS_PROFILE", "AWS_SECRET_ACCESS_KEY", "GITHUB_TOKEN",
                       "MY_API_KEY", "NPM_TOKEN", "db_password"]
    assert set(out) == {"PATH", "HOME", "SSH_AUTH_SOCK", "TERM", "LANG", "TOKENIZERS_PARALLELISM",
                        "AWS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS"}


def test_passed_names_stay():
    out, removed = envfilter.strip({"ANTHROPIC_API_KEY": "k", "GH_TOKEN": "t"},
                                   passed=["ANTHROPIC_API_KEY"])
    assert out == {"ANTHROPIC_API_KEY": "k"} and removed == ["GH_TOKEN"]


def test_bad_names_in_a_policy_are_refused():
    assert envfilter.check_names(["A", "B_1", "A"]) == ["A", "B_1"]
    for bad in ("", "1A", "A-B", "A B", 3):
        with pytest.raises(ValueError):
            envfilter.check_names([bad])
