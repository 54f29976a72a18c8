"""`~` in a policy means the caller's $HOME and its passwd home (issue 12)."""
from __future__ import annotations

from corral.policy import paths


def test_tilde_paths_are_written_out_for_each_home():
    pol = {"filesystem": {"deny_read": ["~/.ssh", "/etc/shadow"], "allow_write": ["~", "."]},
           "unix": {"allow": ["~/agent.sock"]}}
    out = paths.expand_homes(pol, ["/srv/x", "/root"])
    assert out["filesystem"]["deny_read"] == ["/srv/x/.ssh", "/root/.ssh", "/etc/shadow"]
    assert out["filesystem"]["allow_write"] == ["/srv/x", "/root", "."]
    assert out["unix"]["allow"] == ["/srv/x/agent.sock", "/root/agent.sock"]
    assert pol["filesystem"]["deny_read"] == ["~/.ssh", "/etc/shadow"]     # input untouched


def test_one_home_leaves_the_policy_alone():
    pol = {"filesystem": {"deny_read": ["~/.ssh"]}}
    assert paths.expand_homes(pol, ["/root"]) is pol


def test_caller_homes_puts_HOME_first_and_dedupes(monkeypatch):
    monkeypatch.setattr(paths, "caller_home", lambda: "/root")
    monkeypatch.setenv("HOME", "/tmp")
    assert paths.caller_homes() == ["/tmp", "/root"]
    monkeypatch.setenv("HOME", "/root")
    assert paths.caller_homes() == ["/root"]
    monkeypatch.setenv("HOME", "relative/dir")
    assert paths.caller_homes() == ["/root"]
