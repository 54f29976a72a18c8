"""The daemon's own code is never writable from a session (protected.py).

The probes only ever open files for writing (O_WRONLY|O_APPEND) and close them:
no byte is written, so a failing test cannot damage the install."""
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

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
VENV = Path(os.path.realpath(BIN.parent))

PROBE = r"""
import errno, json, os, sys
out = {}
for p in sys.argv[1:]:
    try:
        fd = os.open(p, os.O_WRONLY | os.O_APPEND)     # never written to
    except OSError as e:
        out[p] = errno.errorcode.get(e.errno, str(e.errno))
    else:
        os.close(fd)
        out[p] = "OPENED"
print(json.dumps(out))
"""


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


# -- for real -------------------------------------------------------------------------------
def _probe(daemon, paths, *flags, cwd=REPO, extra=""):
    code = PROBE + extra
    p = daemon.corral("run", *flags, "--", str(BIN / "python"), "-S", "-c", code, *paths,
                      cwd=str(cwd))
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.splitlines()[0]), p


def _create_and_remove(path: Path) -> str:
    return (f"\nfd = os.open({str(path)!r}, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)\n"
            f"os.close(fd); os.unlink({str(path)!r}); print('created')\n")


def _absent_mandatory(cwd: Path) -> list[str]:
    """Mandatory protections of paths in `cwd` that do not exist: Landlock guards
    them by refusing new entries in their parent, the checkout root included."""
    from corral.policy import files as pf
    out = []
    for m in pf.MANDATORY:
        if m.kind == "deny_write" and any(p.startswith("./") and not (cwd / p).exists()
                                          for p in pf.mandatory_paths(m, str(cwd))):
            out.append(m.name)
    return out


def test_session_in_the_checkout_cannot_write_corral_code(daemon):
    """Default policy, cwd = the checkout (writable): corral's code is not."""
    targets = [str(VENV / "bin/corrald"), str(REPO / "bpf/net.c"), _site_file(),
               str(REPO / "daemon/corral/__init__.py")]
    control = REPO / "README.md"                     # an existing file of the checkout
    marker = REPO / "tests" / f".corral-test-{os.getpid()}"
    try:
        res, p = _probe(daemon, targets + [str(control)], extra=_create_and_remove(marker))
    finally:
        if marker.exists():
            marker.unlink()
    assert p.stdout.splitlines()[-1] == "created", p.stdout      # the checkout stays writable
    assert res[str(control)] == "OPENED", res
    for t in targets:
        assert res[t] in ("EROFS", "EACCES", "EPERM"), (t, res)

    # The protected paths all exist: they are read-only mounts, and do not stop
    # new files directly in the checkout (only not-yet-existing mandatory paths do).
    marker = REPO / f".corral-test-{os.getpid()}"
    flags = [a for m in _absent_mandatory(REPO) for a in ("--no-mandatory", m)]
    try:
        res, p = _probe(daemon, targets, *flags, extra=_create_and_remove(marker))
    finally:
        if marker.exists():
            marker.unlink()
    assert p.stdout.splitlines()[-1] == "created", p.stdout
    for t in targets:
        assert res[t] in ("EROFS", "EACCES", "EPERM"), (t, res)


def test_allow_write_root_is_refused_without_the_flag(daemon, tmp_path):
    p = daemon.corral("run", "--allow-write", "/", "--", "true", cwd=str(tmp_path))
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "allow_write /" in p.stderr and "--allow-system-write" in p.stderr, p.stderr
    assert "system binaries and configuration" in p.stderr


def test_allow_system_write_opens_system_trees_but_not_corral_code(daemon, tmp_path):
    d = Path(f"/opt/corral-test-{os.getpid()}")
    shutil.rmtree(d, ignore_errors=True)
    stdlib_os = os.path.realpath(os.__file__)        # /usr/lib/python3.X/os.py
    targets = [stdlib_os, str(VENV / "bin/corrald"), str(REPO / "bpf/net.c")]
    make = (f"\nos.mkdir({str(d)!r})\n"
            f"with open({str(d / 'f')!r}, 'w') as fh: fh.write('ok')\n"
            "print('made')\n")
    try:
        res, p = _probe(daemon, targets, "--allow-write", "/", "--allow-system-write",
                        cwd=tmp_path, extra=make)
        assert p.stdout.splitlines()[-1] == "made", p.stdout
        assert (d / "f").read_text() == "ok"
    finally:
        shutil.rmtree(d, ignore_errors=True)
    for t in targets:
        assert res[t] in ("EROFS", "EACCES", "EPERM"), (t, res)
    notes = [ln for ln in p.stderr.splitlines() if "--allow-system-write" in ln]
    assert len(notes) == 1 and "read-only" in notes[0], p.stderr
