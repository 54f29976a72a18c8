"""corral.server.secretwatch: which missing deny_read paths corrald takes over
from Landlock, and what the client leaves Landlock once they are watched.
Pure logic on a temporary tree (any user)."""
from corral.client.enter import frozen_dirs, without_watched
from corral.kernel.mountinfo import Mount
from corral.server import secretwatch


def _fs(tmp_path, **kw):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".config").mkdir()
    fs = {"allow_write": [str(home)], "deny_read": [], "allow_read": [], "deny_write": []}
    fs.update({k: [str(home / p) if not p.startswith("/") else p for p in v]
               for k, v in kw.items()})
    return home, fs


def test_missing_secrets_inside_allow_write_are_candidates(tmp_path):
    home, fs = _fs(tmp_path, deny_read=[".aws", ".netrc", ".config/gcloud", ".docker/config.json",
                                        ".ssh"])
    got = dict(secretwatch.candidates(fs, ms=[]))
    assert got == {str(home / p): str(home) for p in (".aws", ".netrc", ".config/gcloud",
                                                      ".docker/config.json")}   # .ssh exists


def test_what_stays_with_landlock(tmp_path):
    home, fs = _fs(tmp_path, deny_read=[".aws", ".ssh", ".ssh/later", "/nowhere/.kube", ".kube"],
                   allow_read=[".kube/config"])
    fs["deny_read"].append(str(tmp_path / "outside" / ".netrc"))
    # .ssh/later: inside an existing denied tree (hidden); /nowhere, outside:
    # outside allow_write; .kube: an allow_read exception inside.
    assert [p for p, _ in secretwatch.candidates(fs, ms=[])] == [str(home / ".aws")]


def test_a_bind_mount_alias_stays_with_landlock(tmp_path):
    home, fs = _fs(tmp_path, deny_read=[".aws"])
    ms = [Mount(1, 0, "8:1", "/", "/", "rw", "ext4", "/dev/sda"),
          Mount(2, 1, "8:1", str(home), "/mnt/alias", "rw", "ext4", "/dev/sda")]
    assert secretwatch.candidates(fs, ms=ms) == []
    assert secretwatch.candidates(fs, ms=ms[:1]) == [(str(home / ".aws"), str(home))]


def test_rule_names_the_mandatory_protection():
    assert secretwatch.rule("/home/u/.aws") == "mandatory aws"
    assert secretwatch.rule("/home/u/.docker/config.json") == "mandatory docker-config"
    assert secretwatch.rule("/home/u/proj/secrets") == "deny_read"


def test_watched_names_leave_both_landlock_lists(tmp_path):
    home, fs = _fs(tmp_path, deny_read=[".aws", ".netrc"], deny_write=[".mcp.json", ".netrc"])
    assert frozen_dirs(fs, "deny_read") == [str(home)]
    rest = without_watched(fs, {str(home / ".aws"), str(home / ".netrc"), str(home / ".mcp.json")})
    assert rest["deny_read"] == [] and rest["deny_write"] == []
    assert frozen_dirs(rest, "deny_read") == [] and frozen_dirs(rest) == []
    assert without_watched(fs, set()) is fs
