"""The git gateway's pure logic: the [git] policy section and remotes
(policy/gitremote.py), the ref rules (server/gitgateway/refcheck.py), the
credentials file (server/gitgateway/config.py, as far as it needs no root).
The gateway itself, with real git: tests/test_git_gateway.py."""
from __future__ import annotations


import pytest

from corral.policy import files as pf
from corral.policy import model as pol
from corral.policy.gitremote import normalize_git, parse_remote, rewrites
from corral.server.gitgateway import refcheck

Z = "0" * 40
A, B = "a" * 40, "b" * 40


@pytest.mark.parametrize("url", ["https://github.com/ORG/REPO", "https://github.com/ORG/REPO.git",
                                 "git@github.com:ORG/REPO.git", "ssh://git@github.com/ORG/REPO",
                                 "https://GitHub.com/ORG/REPO/", "ssh://git@github.com:22/ORG/REPO"])
def test_spellings_of_one_repository_have_one_key(url):
    assert parse_remote(url)["key"] == "github.com/ORG/REPO"


def test_rewrites_cover_the_spellings():
    r = rewrites(parse_remote("git@github.com:ORG/REPO"))
    assert r == ["git@github.com:ORG/REPO", "https://github.com/ORG/REPO",
                 "ssh://git@github.com/ORG/REPO"]
    assert parse_remote("http://127.0.0.1:8080/a/b.git")["key"] == "127.0.0.1:8080/a/b"


@pytest.mark.parametrize("url,msg", [
    ("ftp://h/a/b", "scheme 'ftp'"), ("https://u:p@github.com/a/b", "no user or password"),
    ("https://github.com/a/../b", "is not ORG/REPO"), ("https://github.com/", "is not ORG/REPO"),
    ("https://github.com/a/b?x=1", "no query"), ("", "expected a URL"), (5, "expected a URL"),
    ("https://github.com/" + "a" * 1100, "more than the limit"),
])
def test_bad_remotes_say_why(url, msg):
    with pytest.raises(pol.PolicyError) as e:
        parse_remote(url)
    assert msg in str(e.value)


def test_git_section_defaults_and_errors():
    g = normalize_git({"remote": "git@github.com:a/b"})
    assert g == {"remote": "git@github.com:a/b", "repo": "github.com/a/b",
                 "push_branch": "corral/{session}/*", "allow_force": False,
                 "max_push_bytes": 1 << 30}
    for sec, msg in (({}, "remote is missing"), ({"remote": "git@h:a/b", "x": 1}, "unknown key"),
                     ({"remote": "git@h:a/b", "allow_force": "yes"}, "allow_force"),
                     ({"remote": "git@h:a/b", "max_push_bytes": 0}, "max_push_bytes"),
                     ({"remote": "git@h:a/b", "push_branch": "refs/heads/x"}, "without refs/heads"),
                     ({"remote": "git@h:a/b", "push_branch": "a/../b"}, "push_branch"),
                     ({"remote": "git@h:a/b", "push_branch": "{user}/*"}, "push_branch")):
        with pytest.raises(pol.PolicyError) as e:
            normalize_git(sec)
        assert msg in str(e.value), (sec, str(e.value))


def test_policy_normalizes_git_and_narrowing_refuses_changes():
    p = pol.normalize({"git": {"remote": "https://github.com/a/b"}})
    assert p["git"]["repo"] == "github.com/a/b"
    assert pol.normalize({})["git"] is None
    assert pol.normalize(p) == p            # a returned policy can be sent back
    other = pol.normalize({"git": {"remote": "https://github.com/a/c"}})
    assert any("git section" in w for w in pol.narrowing_violations(p, other))
    assert not any("git" in w for w in pol.narrowing_violations(p, pol.normalize({})))
    assert not pol.narrowing_violations(p, pol.normalize({"git": {"remote": "https://github.com/a/b"}}))


def test_protected_read_is_added_to_deny_read():
    p = pol.normalize({"filesystem": {"allow_write": ["/tmp"]}}, protected_read=["/etc/corral/x"])
    assert "/etc/corral/x" in p["filesystem"]["deny_read"]
    assert "/etc/corral/x" in pol.normalize({}, protected_read=["/etc/corral/x"])["filesystem"]["deny_read"]


def test_policy_file_git_section(tmp_path):
    f = tmp_path / "p.toml"
    f.write_text('[git]\nremote = "https://github.com/a/b"\npush_branch = "agent/*"\n')
    assert pf.load_policy_file(str(f))["git"] == {"remote": "https://github.com/a/b",
                                                  "push_branch": "agent/*"}
    f.write_text('[network]\nallow = []\n\n[git]\nremote = "https://github.com/a/b"\n'
                 'allow_force = "yes"\n')
    with pytest.raises(pol.PolicyError) as e:
        pf.load_policy_file(str(f))
    assert f"{f}:6: git.allow_force" in str(e.value)
    f.write_text('[git]\nremote = "ftp://x/a/b"\n')
    with pytest.raises(pol.PolicyError) as e:
        pf.load_policy_file(str(f))
    assert f"{f}:2: git.remote" in str(e.value) and "scheme 'ftp'" in str(e.value)
    f.write_text('[git]\nremot = "https://github.com/a/b"\n')
    with pytest.raises(pol.PolicyError) as e:
        pf.load_policy_file(str(f))
    assert "unknown key 'remot'" in str(e.value)


def test_merge_keeps_scalar_values():
    m = pf.merge({"git": {"remote": "https://github.com/a/b"}},
                 {"git": {"remote": "https://github.com/a/c", "allow_force": True}})
    assert m["git"] == {"remote": "https://github.com/a/c", "allow_force": True}


# -- ref rules ------------------------------------------------------------------------
def decide(updates, pattern="corral/s1/*", force=False, ff=True):
    return refcheck.decide(updates, pattern, force, lambda o, n: ff)


def test_own_branch_create_and_fast_forward_are_allowed():
    d = decide([(Z, A, "refs/heads/corral/s1/work"), (A, B, "refs/heads/corral/s1/x/y")])
    assert [x.allowed for x in d] == [True, True]


@pytest.mark.parametrize("upd,msg", [
    ((A, B, "refs/heads/main"), "not a branch this session may push"),
    ((A, B, "refs/heads/corral/s2/work"), "not a branch this session may push"),
    ((A, Z, "refs/heads/corral/s1/work"), "deleting"),
    ((Z, A, "refs/tags/v1"), "tags are not pushed"),
    ((Z, A, "refs/notes/commits"), "only branches"),
    ((A, B, "refs/heads/corral/s1/work"), "non-fast-forward"),
])
def test_refusals_name_the_rule(upd, msg):
    (d,) = decide([upd], ff=False)
    assert not d.allowed and msg in d.rule, d


def test_force_only_when_allowed_and_errors_fail_closed():
    (d,) = decide([(A, B, "refs/heads/corral/s1/w")], force=True, ff=False)
    assert d.allowed and d.force

    def boom(o, n):
        raise RuntimeError("no objects")
    (d,) = refcheck.decide([(A, B, "refs/heads/corral/s1/w")], "corral/s1/*", False, boom)
    assert not d.allowed and "cannot tell" in d.rule


def test_unparsable_update_lines_are_refused():
    assert refcheck.parse_updates(f"{Z} {A} refs/heads/x\n") == [(Z, A, "refs/heads/x")]
    for bad in ("", "junk", f"{Z} {A}", f"{Z[:-1]} {A} refs/heads/x", f"{Z} {A} r extra"):
        with pytest.raises(ValueError):
            refcheck.parse_updates(bad)


def test_pattern_substitutes_the_session():
    assert refcheck.branch_pattern("corral/{session}/*", "ab12") == "corral/ab12/*"


# -- credentials -------------------------------------------------------------------
