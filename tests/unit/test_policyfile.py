"""Policy files, profiles, sandbox-runtime / Claude Code settings import, merging,
and the `corral policy` command (no daemon; `corral run` with them:
tests/test_policyfile.py)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from corral.policy import model as pol
from corral.policy import files as pf

BIN = Path(sys.executable).parent


def write(tmp_path, text, name="p.toml"):
    f = tmp_path / name
    f.write_text(text)
    return str(f)


def err_of(tmp_path, text):
    f = write(tmp_path, text)
    with pytest.raises(pol.PolicyError) as ei:
        pf.load_policy_file(f)
    return f, str(ei.value)


# -- a good file --------------------------------------------------------------------
GOOD = """\
description = "test"
[filesystem]
deny_read = ["~/.ssh"]
allow_read = ["~/.ssh/known_hosts"]
allow_write = [".", "/tmp"]
deny_write = [".env"]

[network]
allow = ["10.0.0.0/8:443", "[2001:db8::/32]:80-89"]
deny = ["10.1.0.0/16"]
allow_domains = ["pypi.org:443", "*.githubusercontent.com"]
deny_domains = ["evil.example"]
allow_localhost_ports = [8080, "9000-9100"]

[syscalls]
deny = ["personality", "acct"]
"""


def test_good_file_loads_and_normalizes(tmp_path):
    p = pf.load_policy_file(write(tmp_path, GOOD))
    assert p["filesystem"]["allow_write"] == [".", "/tmp"]
    assert p["network"]["allow_localhost_ports"] == [8080, "9000-9100"]
    assert p["syscalls"]["deny"] == ["personality", "acct"]
    n = pol.normalize(p, cwd="/work", home="/home/u")
    assert n["filesystem"]["deny_read"] == ["/home/u/.ssh"]
    assert "/work" in n["filesystem"]["allow_write"]
    assert n["network"]["allow"] == ["10.0.0.0/8:443", "[2001:db8::/32]:80-89"]


# -- every kind of bad input names file, line and key ----------------------------------------
BAD = [
    # (text, line, key fragment, message fragment)
    ("[filesystem]\ndeny_read = [\"~/.ssh\"]\nallow_writes = [\".\"]\n", 3, "filesystem.allow_writes",
     "unknown key"),
    ("[filesystem]\n\n\ndeny_read = \"~/.ssh\"\n", 4, "filesystem.deny_read", "expected an array"),
    ("[filesystem]\nallow_write = [\n  \".\",\n  42,\n]\n", 4, "filesystem.allow_write", "not a string"),
    ("[filesystem]\nallow_write = [\n  \".\",\n  \"~bob/x\",\n]\n", 4, "filesystem.allow_write", "~user"),
    ("[filesystem]\ndeny_read = [\"**/.env\"]\n", 2, "filesystem.deny_read", "glob"),
    ("[network]\nallow = [\n  \"10.0.0.0/8\",\n  \"10.0.0.300/8\",\n]\n", 4, "network.allow",
     "not an IP address"),
    ("[network]\ndeny = [\"10.0.0.0/8:99999\"]\n", 2, "network.deny", "port"),
    ("[network]\nallow_domains = [\"exa mple.com\"]\n", 2, "network.allow_domains", "not a domain"),
    ("[network]\nallow_localhost_ports = [true]\n", 2, "network.allow_localhost_ports", "port"),
    ("[network]\nallowed = []\n", 2, "network.allowed", "unknown key"),
    ("[syscalls]\ndeny = [\"not_a_syscall_at_all\"]\n", 2, "syscalls.deny", "unknown syscall"),
    ("[syscalls]\ndeny = [\"execve\"]\n", 2, "syscalls.deny", "cannot be denied"),
    ("[syscalls]\nallow = [\"read\"]\n", 2, "syscalls.allow", "unknown key"),
    ("# a comment\n[filesytem]\ndeny_read = []\n", 2, "filesytem", "unknown section"),
    ("network = 5\n", 1, "network", "expected a table"),
    ("filesystem.deny_read = 5\n", 1, "filesystem.deny_read", "expected an array"),
    ("[network]\nallow = [\"10.0.0.0/8\"\n", 3, "", "TOML syntax error"),
]


@pytest.mark.parametrize("text,line,key,msg", BAD, ids=[b[3] + "-" + b[2] for b in BAD])
def test_bad_input_names_file_line_key(tmp_path, text, line, key, msg):
    f, e = err_of(tmp_path, text)
    assert e.startswith(f"{f}:{line}:"), e
    assert key in e, e
    assert msg in e, e


def test_unreadable_file_is_an_error(tmp_path):
    with pytest.raises(pol.PolicyError, match="cannot read"):
        pf.load_policy_file(str(tmp_path / "missing.toml"))


def test_policy_check_cli(tmp_path):
    good = write(tmp_path, GOOD, "good.toml")
    p = subprocess.run([str(BIN / "corral"), "policy", "check", good], capture_output=True, text=True)
    assert p.returncode == 0 and "ok" in p.stdout, p.stderr
    bad = write(tmp_path, "[network]\nallow = [\n\"1.2.3.4/33\"]\n", "bad.toml")
    p = subprocess.run([str(BIN / "corral"), "policy", "check", bad], capture_output=True, text=True)
    assert p.returncode == 2
    assert f"{bad}:3: network.allow" in p.stderr, p.stderr


# -- profiles -------------------------------------------------------------------------------
def test_builtin_profiles_are_valid_and_shaped():
    names = [n for n, _ in pf.list_profiles()]
    assert {"agent", "offline", "readonly"} <= set(names)
    agent = pol.normalize(pf.load_profile("agent"), cwd="/proj", home="/home/u")
    assert "/proj" in agent["filesystem"]["allow_write"] and "/tmp" in agent["filesystem"]["allow_write"]
    assert "/home/u/.ssh" in agent["filesystem"]["deny_read"]
    doms = agent["network"]["allow_domains"]
    for d in ("pypi.org", "files.pythonhosted.org", "registry.npmjs.org", "github.com",
              "*.githubusercontent.com"):
        assert f"{d}:443" in doms
    assert agent["network"]["allow"] == []
    off = pol.normalize(pf.load_profile("offline"))
    assert off["network"] is not None
    assert not any(off["network"][k] for k in pol.NET_LIST_KEYS)
    ro = pol.normalize(pf.load_profile("readonly"), cwd="/proj", home="/home/u")
    assert all(w in ("/tmp", "/var/tmp", "/dev/shm") for w in ro["filesystem"]["allow_write"])


def test_unknown_profile():
    with pytest.raises(pol.PolicyError, match="unknown profile 'nope'.*agent"):
        pf.load_profile("nope")


def test_policy_list_and_show_cli():
    p = subprocess.run([str(BIN / "corral"), "policy", "list"], capture_output=True, text=True)
    assert p.returncode == 0
    for n in ("agent", "offline", "readonly", "mandatory"):
        assert n in p.stdout
    p = subprocess.run([str(BIN / "corral"), "policy", "show", "agent"], capture_output=True, text=True)
    assert p.returncode == 0 and "pypi.org:443" in p.stdout
    p = subprocess.run([str(BIN / "corral"), "policy", "show", "mandatory"], capture_output=True, text=True)
    assert p.returncode == 0
    for n in pf.MANDATORY_NAMES:
        assert n in p.stdout


# -- merge precedence --------------------------------------------------------------------------
def test_merge_unions_sections_and_lists():
    a = {"network": {"allow": ["10.0.0.0/8"]}, "filesystem": None}
    b = {"network": {"allow": ["10.0.0.0/8", "1.2.3.4"], "deny": ["10.1.0.0/16"]},
         "syscalls": {"deny": ["acct"]}}
    m = pf.merge(a, b)
    assert m["network"] == {"allow": ["10.0.0.0/8", "1.2.3.4"], "deny": ["10.1.0.0/16"]}
    assert m["syscalls"] == {"deny": ["acct"]}
    assert m["filesystem"] is None
    # inputs untouched
    assert a["network"]["allow"] == ["10.0.0.0/8"]
    # an empty present section (offline) stays present: default deny
    assert pf.merge({}, {"network": {}})["network"] == {}


# -- mandatory protections (policy level; end to end in test_mandatory.py) ---------------------------
def test_mandatory_without_fs_section(tmp_path):
    m = pf.apply_mandatory({"network": {"allow": []}}, set(), cwd=str(tmp_path), files=[])
    fs = m["filesystem"]
    assert fs["allow_write"] == [".", "/tmp", "/var/tmp", "/dev/shm"]   # not "/": a root agent would own /etc
    for p in ("~/.ssh", "~/.aws", "~/.gnupg", "~/.config/gcloud", "~/.kube", "~/.netrc",
              "~/.docker/config.json"):
        assert p in fs["deny_read"]
    for p in pf.SHELL_STARTUP + ("./.git/hooks", "./.git/config", "./.gitmodules", "./.mcp.json",
                                 "./.vscode", "./.idea", "./.claude/settings.json",
                                 "./.claude/settings.local.json"):
        assert p in fs["deny_write"]
    assert m["network"] == {"allow": []}


def test_mandatory_merges_globs_and_policy_files(tmp_path):
    (tmp_path / ".claude").mkdir()
    (tmp_path / ".claude" / "settings.team.json").write_text("{}")
    base = {"filesystem": {"allow_write": ["."], "deny_write": ["x"],
                           "allow_read": ["~/.ssh/known_hosts", "/etc"]}}
    m = pf.apply_mandatory(base, set(), cwd=str(tmp_path), files=["/etc/corral/p.toml"])
    fs = m["filesystem"]
    assert fs["allow_write"] == ["."]
    assert "x" in fs["deny_write"] and "./.claude/settings.team.json" in fs["deny_write"]
    assert "/etc/corral/p.toml" in fs["deny_write"]
    # a more specific allow_read cannot reopen a mandatory read denial
    assert fs["allow_read"] == ["/etc"]
    # deny_write wins over allow_write in the enforced policy
    n = pol.normalize(pf.apply_mandatory({"filesystem": {"allow_write": ["./.git/hooks"]}}, set(),
                                         cwd=str(tmp_path), files=[]), cwd=str(tmp_path), home="/root")
    assert str(tmp_path / ".git/hooks") in n["filesystem"]["deny_write"]


def test_no_mandatory_drops_by_name_and_rejects_unknown(tmp_path):
    m = pf.apply_mandatory({}, {"ssh", "git-hooks"}, cwd=str(tmp_path), files=[])
    assert "~/.ssh" not in m["filesystem"]["deny_read"] and "~/.aws" in m["filesystem"]["deny_read"]
    assert "./.git/hooks" not in m["filesystem"]["deny_write"]
    with pytest.raises(pol.PolicyError, match="no such protection.*shell-startup"):
        pf.apply_mandatory({}, {"sshh"}, cwd=str(tmp_path), files=[])
    everything = set(pf.MANDATORY_NAMES)
    assert pf.apply_mandatory({}, everything, cwd=str(tmp_path), files=[]) == {}


# -- sandbox-runtime / Claude Code settings import ------------------------------------------------
# The examples below are the ones in the sandbox-runtime README and the Claude Code
# sandboxing documentation (paraphrased into JSON files).
SRT_COMPLETE = {
    "network": {
        "allowedDomains": ["github.com", "*.github.com", "lfs.github.com", "api.github.com",
                           "npmjs.org", "*.npmjs.org"],
        "deniedDomains": ["malicious.com"],
        "allowUnixSockets": ["/var/run/docker.sock"],
        "allowLocalBinding": False,
    },
    "filesystem": {
        "denyRead": ["~/.ssh"],
        "allowRead": [],
        "allowWrite": [".", "src/", "test/", "/tmp"],
        "denyWrite": [".env", "config/production.json"],
    },
    "ignoreViolations": {"*": ["/usr/bin", "/System"], "git push": ["/usr/bin/nc"]},
    "enableWeakerNestedSandbox": False,
}


def srt(tmp_path, obj, name="srt-settings.json"):
    f = tmp_path / name
    f.write_text(json.dumps(obj))
    return pf.import_srt_settings(str(f), cwd=str(tmp_path))


def test_srt_complete_example(tmp_path):
    p, warns = srt(tmp_path, SRT_COMPLETE)
    assert p["filesystem"]["allow_write"] == [".", "src", "test", "/tmp"]
    assert p["filesystem"]["deny_write"] == [".env", "config/production.json"]
    assert p["filesystem"]["deny_read"] == ["~/.ssh"]
    assert p["network"]["allow_domains"] == SRT_COMPLETE["network"]["allowedDomains"]
    assert p["network"]["deny_domains"] == ["malicious.com"]
    text = "\n".join(warns)
    for k in ("allowUnixSockets", "allowLocalBinding", "ignoreViolations", "enableWeakerNestedSandbox"):
        assert k in text, (k, warns)
    n = pol.normalize(p, cwd=str(tmp_path), home="/home/u")
    assert str(tmp_path / ".env") in n["filesystem"]["deny_write"]


def test_srt_mcp_example_and_empty_lists(tmp_path):
    # README: `~/.srt-settings.json` for sandboxing an MCP server.
    p, warns = srt(tmp_path, {"filesystem": {"denyRead": [], "allowWrite": ["."],
                                             "denyWrite": ["~/sensitive-folder"]},
                              "network": {"allowedDomains": [], "deniedDomains": []}})
    assert p["network"] == {"allow": [], "deny": [], "allow_domains": [], "deny_domains": []}
    assert p["filesystem"]["allow_write"] == ["."]
    assert p["filesystem"]["deny_write"] == ["~/sensitive-folder"]
    assert warns == []
    # Empty allowWrite = no writes at all (allow-only pattern); absent network = no network.
    p, warns = srt(tmp_path, {"filesystem": {"allowWrite": []}})
    n = pol.normalize(p)
    assert n["filesystem"]["allow_write"] == [] and n["network"] is not None
    assert any("no network section" in w for w in warns)


def test_srt_read_precedence_workspace_only(tmp_path):
    # README "Workspace-only filesystem access": deny /home, re-allow "."; allowRead wins.
    p, _ = srt(tmp_path, {"filesystem": {"denyRead": ["/home", "./secrets"], "allowRead": ["."],
                                         "allowWrite": ["."]},
                          "network": {"allowedDomains": []}})
    n = pol.normalize(p, cwd=str(tmp_path), home="/home/u")
    assert n["filesystem"]["deny_read"] == ["/home", str(tmp_path / "secrets")]
    assert n["filesystem"]["allow_read"] == [str(tmp_path)]
    # equal paths: allowRead wins (dropped from deny_read); corral's rule is "most specific
    # wins", so the more specific ./secrets denial stays, as their docs say.
    p, _ = srt(tmp_path, {"filesystem": {"denyRead": ["~/x"], "allowRead": ["~/x"]}, "network": {}})
    assert p["filesystem"]["deny_read"] == []


def test_srt_globs(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / ".env").write_text("")
    (tmp_path / ".env").write_text("")
    (tmp_path / "build").mkdir()
    p, warns = srt(tmp_path, {"filesystem": {"denyRead": ["**/.env", "build/**"],
                                             "allowWrite": [".", "src/**/*.ts"]},
                              "network": {"allowedDomains": []}})
    assert sorted(p["filesystem"]["deny_read"]) == sorted([str(tmp_path / ".env"),
                                                           str(tmp_path / "a" / ".env"), "build"])
    assert p["filesystem"]["allow_write"] == ["."]
    text = "\n".join(warns)
    assert "src/**/*.ts" in text and "skipped" in text
    assert "created later" in text


def test_srt_network_specials(tmp_path):
    p, warns = srt(tmp_path, {"network": {"allowedDomains": ["api.example.com:443", "[::1]:8080",
                                                             "192.0.2.7", "*"],
                                          "deniedDomains": ["github.com:22"],
                                          "httpProxyPort": 8888, "weird": 1},
                              "filesystem": {}})
    net = p["network"]
    assert net["allow_domains"] == ["api.example.com:443"]
    assert net["allow"] == ["[::1/128]:8080", "192.0.2.7/32"]
    assert net["deny_domains"] == ["github.com:22"]
    text = "\n".join(warns)
    assert "httpProxyPort" in text and "weird" in text and "'*'" in text
    p, warns = srt(tmp_path, {"network": {"allowedDomains": ["a.com"], "deniedDomains": ["*"]}})
    assert p["network"]["allow_domains"] == []


def test_claude_code_settings(tmp_path):
    proj = tmp_path / "proj"
    (proj / ".claude").mkdir(parents=True)
    settings = {
        "permissions": {"allow": ["Bash(npm run test:*)", "Edit(docs/**)", "WebFetch(domain:example.com)"],
                        "deny": ["Read(./.env)", "Edit(//etc/hosts)", "WebFetch(domain:bad.com)"]},
        "env": {"FOO": "1"},
        "sandbox": {
            "enabled": True,
            "autoAllowBashIfSandboxed": True,
            "excludedCommands": ["docker"],
            "filesystem": {"allowWrite": ["//tmp/build", "~/.kube", "/out"],
                           "denyRead": ["~/.aws/credentials"], "denyWrite": ["./prod.json"]},
            "network": {"allowedDomains": ["github.com"], "allowUnixSockets": ["/var/run/docker.sock"],
                        "allowLocalBinding": True},
        },
    }
    f = proj / ".claude" / "settings.json"
    f.write_text(json.dumps(settings))
    p, warns = pf.import_srt_settings(str(f), cwd=str(proj))
    fs = p["filesystem"]
    # defaults (working dir + temp) plus the settings, with Claude Code's path prefixes
    assert fs["allow_write"][:1] == ["."]
    assert "/tmp/build" in fs["allow_write"] and "~/.kube" in fs["allow_write"]
    assert str(proj / ".claude" / "out") in fs["allow_write"]
    assert "docs" in fs["allow_write"]                      # Edit(docs/**) allow rule
    assert "./.env" in fs["deny_read"] and "~/.aws/credentials" in fs["deny_read"]
    assert "/etc/hosts" in fs["deny_write"] and "./prod.json" in fs["deny_write"]
    assert p["network"]["allow_domains"] == ["github.com", "example.com"]
    assert p["network"]["deny_domains"] == ["bad.com"]
    text = "\n".join(warns)
    for k in ("autoAllowBashIfSandboxed", "excludedCommands", "allowUnixSockets", "allowLocalBinding",
              "env", "permissions: 1 rule"):
        assert k in text, (k, warns)
    pol.normalize(p, cwd=str(proj), home="/home/u")


def test_srt_bad_json(tmp_path):
    f = tmp_path / "s.json"
    f.write_text("{nope")
    with pytest.raises(pol.PolicyError, match="not valid JSON"):
        pf.import_srt_settings(str(f))
