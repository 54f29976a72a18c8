"""What a process inside a session may change about its own policy: only narrow it."""
from corral.policy import model as p


def base():
    return p.normalize({"network": {"allow": ["10.0.0.0/8:443"], "deny": ["10.9.0.0/16"],
                                    "allow_domains": ["*.example.com:443"],
                                    "deny_domains": ["bad.example.com"]},
                        "filesystem": {"allow_write": ["/work"], "deny_write": ["/work/.git/hooks"],
                                       "deny_read": ["/root/.ssh"]}}, cwd="/work", home="/root")


def changed(**net):
    b = base()
    n = dict(b["network"])
    n.update(net)
    return dict(b, network=n)


def test_equal_and_narrower_are_accepted():
    assert p.narrowing_violations(base(), base()) == []
    assert p.narrowing_violations(base(), p.normalize(changed(allow=["10.1.0.0/16:443"]))) == []
    assert p.narrowing_violations(base(), p.normalize(changed(allow_domains=["api.example.com:443"]))) == []
    assert p.narrowing_violations(base(), p.normalize(changed(deny=["10.9.0.0/16", "10.8.0.0/16"]))) == []


def test_wider_is_refused():
    cases = [changed(allow=["0.0.0.0/0"]), changed(allow=["10.0.0.0/8"]),      # any port > 443
             changed(deny=[]), changed(allow_domains=["*.example.com"]),
             changed(allow_domains=["example.com:443"]),                       # wildcard excludes the bare name
             changed(deny_domains=[])]
    for c in cases:
        assert p.narrowing_violations(base(), p.normalize(c)), c
    nofs = dict(base(), filesystem=None)
    assert p.narrowing_violations(base(), nofs) == ["removes the filesystem policy"]
    wider_write = base()
    wider_write["filesystem"] = dict(wider_write["filesystem"], allow_write=["/"])
    assert p.narrowing_violations(base(), wider_write)
    no_hooks = base()
    no_hooks["filesystem"] = dict(no_hooks["filesystem"], deny_write=[])
    assert p.narrowing_violations(base(), no_hooks)
