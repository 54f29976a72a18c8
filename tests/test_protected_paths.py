"""The daemon's own code is never writable from a session (protected.py), in
real sessions (the list of paths and the policy rules: unit/test_protected_paths.py).

The probes only ever open files for writing (O_WRONLY|O_APPEND) and close them:
no byte is written, so a failing test cannot damage the install."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from unit.test_protected_paths import BIN, REPO, VENV, _site_file


@pytest.fixture(scope="session")
def daemon(agentd):
    # Most sessions here run with no policy option, so under the default profile,
    # which names domains: the daemon's resolver must run.
    return agentd


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

