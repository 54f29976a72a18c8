"""How `corral allow` / `corral deny` edit a policy, and how the log shows the
change. On a running session: tests/test_live_policy.py."""
from __future__ import annotations

from corral.client import policycli


def test_edit_policy_rules():
    base = {"network": None, "filesystem": None, "syscalls": {"deny": []}}
    p, notes = policycli.edit_policy(base, "deny", net=["10.0.0.0/8"])
    assert p["network"]["allow"] == ["0.0.0.0/0", "::/0"] and p["network"]["deny"] == ["10.0.0.0/8"]
    assert notes
    p, notes = policycli.edit_policy(base, "allow", net=["10.0.0.0/8"])
    assert p == base and notes
    fs = {"deny_read": [], "allow_read": [], "allow_write": ["/w"], "deny_write": ["/w/.git/hooks"]}
    p, notes = policycli.edit_policy({**base, "filesystem": fs}, "allow", writes=["/w/.git/hooks/x"])
    assert "/w/.git/hooks/x" in p["filesystem"]["allow_write"]
    assert any("deny_write" in n for n in notes)


def test_log_shows_what_a_policy_update_changed():
    from corral.client.logcli import fmt_row, policy_diff
    old = {"network": {"allow": ["10.0.0.0/8"], "deny": []}, "filesystem": None}
    new = {"network": {"allow": ["10.0.0.0/8", "127.0.0.1/32:80"], "deny": []}, "filesystem": None}
    assert policy_diff(old, new) == ["+network.allow 127.0.0.1/32:80"]
    row = fmt_row({"kind": "policy", "op": "update", "verdict": "info", "session": "s", "uid": 0,
                   "old": old, "policy": new, "rule": "corral allow --net 127.0.0.1:80 by uid 0"})
    assert "+network.allow 127.0.0.1/32:80" in row and "by uid 0" in row

