"""The daemon's own code is never writable from a session (protected.py): the
list of paths, and the policy rules for system trees. In real sessions:
tests/test_protected_paths.py."""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from corral.policy import model as pol

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
VENV = Path(os.path.realpath(BIN.parent))


def _site_file() -> str:
    hits = sorted(glob.glob(str(VENV / "lib/python3*/site-packages/dnslib/__init__.py")) +
                  glob.glob(str(VENV / "lib/python3*/site-packages/*/__init__.py")))
    assert hits, "no package in the venv's site-packages"
    return hits[0]


def _covered(path: str, paths: list[str]) -> bool:
    path = os.path.realpath(path)
    return any(path == q or path.startswith(q.rstrip("/") + "/") for q in paths)


# -- the list ------------------------------------------------------------------------
def _code_paths(*python_args, pre: str = "") -> list[str]:
    """protected.code_paths() computed in a fresh interpreter started like a daemon
    (cwd /, so no project directory is on sys.path)."""
    code = pre + "import json; from corral.server import protected; print(json.dumps(protected.code_paths()))"
    p = subprocess.run([str(BIN / "python"), *python_args, "-c", code], capture_output=True,
                       text=True, cwd="/", timeout=60)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.splitlines()[-1])


@pytest.mark.parametrize("launcher", ["venv", "python -S"])
def test_code_paths_cover_what_the_daemon_runs(launcher):
    if launcher == "venv":
        paths = _code_paths()
    else:
        # As .venv/bin/corral starts: no site, so sys.prefix is /usr even in the venv.
        entries = [str(REPO / "daemon"), *glob.glob(str(VENV / "lib/python3*/site-packages")),
                   "/usr/lib/python3/dist-packages"]
        paths = _code_paths("-S", pre=f"import sys; sys.path[1:1] = {entries!r}\n")
    import importlib.util
    bcc = importlib.util.find_spec("bcc")
    bpftool = shutil.which("bpftool") or "/usr/sbin/bpftool"
    must = {
        "venv": str(VENV), "package": str(REPO / "daemon/corral"), "bpf dir": str(REPO / "bpf"),
        "corrald": str(VENV / "bin/corrald"), "site-packages file": _site_file(),
        "interpreter": os.path.realpath(sys.executable),
        "stdlib": os.path.dirname(os.__file__),
        "bcc": list(bcc.submodule_search_locations)[0] if bcc else None,
        "bpftool": bpftool if os.path.exists(bpftool) else None,
    }
    for what, p in must.items():
        if p is not None:
            assert _covered(p, paths), f"{what} {p} not protected: {paths}"
    assert str(VENV) in paths and str(REPO / "bpf") in paths
    # The project itself, the temp dirs and the system prefix stay out.
    for p in ("/", "/usr", str(REPO), "/tmp", "/var/tmp"):
        assert p not in paths, paths
    assert all(os.path.isabs(p) and os.path.exists(p) and p == os.path.realpath(p) for p in paths)
    assert paths == sorted(set(paths))
    assert not any(a != b and b.startswith(a + "/") for a in paths for b in paths), "nested entries"


def test_normalize_adds_protected_paths_to_every_policy():
    prot = ["/opt/corral-code", "/work/x/.venv"]
    n = pol.normalize({"filesystem": {"allow_write": ["/work/x"], "deny_write": ["/work/x/a"]}},
                      cwd="/work/x", protected_write=prot)
    assert n["filesystem"]["allow_write"] == ["/work/x"]
    assert set(prot) | {"/work/x/a"} == set(n["filesystem"]["deny_write"])
    # A policy with no filesystem section: everything writable except corral's code.
    for p in (None, {}, {"network": {"allow": []}}):
        n = pol.normalize(p, protected_write=prot)
        assert n["filesystem"] == {"deny_read": [], "allow_read": [], "allow_write": ["/"],
                                   "deny_write": sorted(prot)}
        assert n["allow_system_write"] is True
        # ... and what the daemon returns is accepted back as it is
        assert pol.normalize(n, protected_write=prot) == n


# -- system trees -----------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/", "/usr", "/usr/local/bin", "/etc", "/etc/cron.d", "/boot",
                                  "/lib", "/bin", "/sbin", "/var", "/var/lib", "/var/spool/cron",
                                  "/opt", "/srv", "/run", "/run/systemd/system"])
def test_allow_write_of_a_system_tree_needs_the_flag(path):
    with pytest.raises(pol.PolicyError) as e:
        pol.normalize({"filesystem": {"allow_write": [path]}})
    msg = str(e.value)
    assert "filesystem.allow_write" in msg and path in msg and "--allow-system-write" in msg
    assert "system binaries and configuration" in msg and "cron and systemd units" in msg
    n = pol.normalize({"filesystem": {"allow_write": [path], "allow_system_write": True}})
    assert n["filesystem"]["allow_write"] == [os.path.realpath(path)]
    assert n["allow_system_write"] is True and "allow_system_write" not in n["filesystem"]


def test_ordinary_places_need_no_flag(tmp_path):
    n = pol.normalize({"filesystem": {"allow_write": [".", "/tmp", "/var/tmp", "/dev/shm",
                                                       "~", "/opt/app", "/srv/www", "/var/www",
                                                       "/run/user/1000"]}},
                      cwd=str(tmp_path), home="/home/u")
    assert "/home/u" in n["filesystem"]["allow_write"] and n["allow_system_write"] is False
    # "." is the working directory: from / that is everything
    with pytest.raises(pol.PolicyError, match=r"allow_write \. \(= /\)"):
        pol.normalize({"filesystem": {"allow_write": ["."]}}, cwd="/")


def test_flag_must_be_a_bool_and_turning_it_on_widens():
    with pytest.raises(pol.PolicyError, match="allow_system_write: expected true or false"):
        pol.normalize({"filesystem": {"allow_write": ["/"], "allow_system_write": "yes"}})
    old = pol.normalize({"filesystem": {"allow_write": ["/work"]}})
    new = pol.normalize({"filesystem": {"allow_write": ["/work"], "allow_system_write": True}})
    why = pol.narrowing_violations(old, new)
    assert any("allow_system_write" in w for w in why), why
    assert pol.narrowing_violations(new, old) == []
    assert pol.narrowing_violations(new, new) == []
