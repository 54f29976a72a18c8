"""corral.toml (server/settings.py) and the named policies directory
(server/policydir.py): good, broken (file:line, the previous version stays), removed."""
from __future__ import annotations

import os

import pytest

from corral.policy.errors import PolicyError
from corral.server import settings as S
from corral.server.policydir import PolicyDir


def test_settings_defaults_and_values(tmp_path):
    assert S.load(tmp_path / "missing.toml").get("export", "jsonl") == ""
    f = tmp_path / "corral.toml"
    f.write_text('[export]\njsonl = "/tmp/x.jsonl"\nqueue = 64\n[log]\ncheckpoint_every = 7\n')
    s = S.load(f)
    assert s.get("export", "jsonl") == "/tmp/x.jsonl" and s.get("log", "checkpoint_every") == 7
    assert s.get("export", "journald") == "auto"


@pytest.mark.parametrize("text,where,what", [
    ('[export]\njsonl = "a"\nbogus = 1\n', ":3:", "export.bogus: unknown key"),
    ('[log]\n\ncheckpoint_every = "ten"\n', ":3:", "is not a number of records"),
    ('[log]\ncheckpoint_every = true\n', ":2:", "is not a number"),
    ('[nope]\nx = 1\n', ":1:", "unknown section [nope]"),
    ('[export]\njsonl = \n', ":2:", "TOML syntax error"),
    ('[export]\njournald = "maybe"\n', ":2:", 'use "auto", "on" or "off"'),
    ('[export]\njsonl = "export.jsonl"\n', ":2:", "is not an absolute path"),
])
def test_settings_errors_name_file_line(tmp_path, text, where, what):
    f = tmp_path / "corral.toml"
    f.write_text(text)
    with pytest.raises(S.SettingsError) as e:
        S.load(f)
    assert f"{f}{where}" in str(e.value) and what in str(e.value), str(e.value)


class _Audit(list):
    def __call__(self, rec, **kw):
        self.append(rec)
        return rec


def _touch_newer(p):
    st = os.stat(p)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


def test_policydir_good_broken_removed(tmp_path):
    d = tmp_path / "policies.d"
    d.mkdir()
    (d / "team.toml").write_text('[network]\nallow = ["10.0.0.0/8:443"]\n')
    audit = _Audit()
    pd = PolicyDir(d, audit=audit, interval=0)
    assert pd.get("team").policy["network"]["allow"] == ["10.0.0.0/8:443"]
    first = pd.get("team").sha256
    assert audit[-1]["op"] == "named_loaded"
    # changed: the new version
    (d / "team.toml").write_text('[network]\nallow = ["10.0.0.0/8:22"]\n')
    _touch_newer(d / "team.toml")
    pd.step()
    assert pd.get("team").policy["network"]["allow"] == ["10.0.0.0/8:22"]
    assert audit[-1]["op"] == "named_changed" and audit[-1]["previous"] == first
    good = pd.get("team").sha256
    # broken: refused with file:line, the previous version stays in force
    (d / "team.toml").write_text('[network]\nallow = ["10.0.0.0/8:22"]\nbogus = 1\n')
    _touch_newer(d / "team.toml")
    pd.step()
    assert pd.get("team").sha256 == good
    assert f"{d / 'team.toml'}:3" in pd.errors["team"], pd.errors
    assert audit[-1]["op"] == "named_refused" and audit[-1]["kept"] == good
    assert f"{d / 'team.toml'}:3" in pd.status()["errors"]["team"]
    # a broken new file: the name is not usable, with the reason
    (d / "new.toml").write_text('[filesystem]\nallow_write = [1]\n')
    pd.step()
    with pytest.raises(PolicyError, match=r"refused: .*new.toml:2"):
        pd.get("new")
    # removed: the name goes away
    os.unlink(d / "team.toml")
    pd.step()
    with pytest.raises(PolicyError, match="no named policy 'team'"):
        pd.get("team")
    assert audit[-1]["op"] == "named_removed"
    with pytest.raises(PolicyError, match="letters, digits"):
        pd.get("../etc/passwd")


def test_policydir_refuses_files_others_can_write(tmp_path):
    """A root corrald trusts root's files only (owner=0); here the owner is whoever runs
    the test, so the unit tier checks the same rule as any user."""
    d = tmp_path / "policies.d"
    d.mkdir(mode=0o755)
    f = d / "team.toml"
    f.write_text('[network]\nallow = ["10.0.0.0/8:443"]\n')
    os.chmod(f, 0o666)
    me = os.geteuid()
    pd = PolicyDir(d, interval=0, owner=me)
    assert "writable by" in pd.errors["team"] and "team" not in pd.policies
    os.chmod(f, 0o644)
    pd.step()
    assert pd.get("team")
    other = PolicyDir(d, interval=0, owner=me + 1)       # someone else's directory: refused
    assert "is owned by uid" in other.status()["error"] and "team" not in other.policies
