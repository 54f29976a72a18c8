"""`pip install .` into a fresh venv (not editable) gives a corrald that starts
on its own: it finds its BPF sources as package data, its native extension and
its profiles inside the venv, never in this checkout."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

import harness
from conftest import REPO

def _copy_checkout(dest: Path) -> Path:
    """The checkout's files (tracked, and new ones git does not ignore) copied to
    DEST: pip builds in the tree, and its build/ and egg-info must not land in
    the checkout other runs use."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    for f in filter(None, files):
        src = REPO / os.fsdecode(f)
        if src.is_file():
            (dest / os.fsdecode(f)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / os.fsdecode(f))
    return dest


def _clean_env() -> dict:
    """The environment without anything that points Python at this checkout."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV") and not k.startswith("CORRAL_")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


@pytest.fixture(scope="module")
def venv():
    top = Path(tempfile.mkdtemp(prefix="corral-install-"))
    top.chmod(0o755)
    try:
        src = _copy_checkout(top / "src")
        venv = top / "venv"
        env = _clean_env()
        subprocess.run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", str(venv)],
                       check=True, env=env, timeout=300)
        p = subprocess.run([str(venv / "bin/pip"), "install", "-q", "--no-cache-dir", str(src)],
                           capture_output=True, text=True, env=env, cwd="/", timeout=1500)
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
        shutil.rmtree(src)          # the install must not need its source tree
        yield venv
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_installed_package_carries_its_data(venv):
    code = ("import json, corral, corral.kernel.bpfsrc as b, corral.kernel.native as n, "
            "corral.policy.files as pf\n"
            "n.load()\n"
            "print(json.dumps({'pkg': corral.__file__, 'bpf': str(b.bpf_dir()), "
            "'native': n.load().__file__, 'profile': str(pf.profile_path('agent')), "
            "'profiles': sorted(name for name, _ in pf.list_profiles())}))")
    p = subprocess.run([str(venv / "bin/python"), "-c", code], capture_output=True, text=True,
                       env=_clean_env(), cwd="/", timeout=60)
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    for what in ("pkg", "bpf", "native", "profile"):
        assert Path(got[what]).resolve().is_relative_to(venv.resolve()), (what, got)
        assert not Path(got[what]).resolve().is_relative_to(REPO), (what, got)
    bpf = Path(got["bpf"])
    assert (bpf / "net.c").is_file() and (bpf / "file_lsm.c").is_file(), sorted(os.listdir(bpf))
    assert sorted(f.name for f in bpf.glob("*.[ch]")) == sorted(f.name for f in (REPO / "bpf").glob("*.[ch]"))
    assert {"agent", "offline", "readonly"} <= set(got["profiles"]), got


def test_installed_corrald_starts_and_runs_a_session(venv):
    d = harness.make_daemon("corral-install", extra_args=["--no-dns"], bin_dir=venv / "bin")
    d.env = {**_clean_env(), **{k: v for k, v in d.env.items() if k.startswith("CORRAL_")},
             "PYTHONUNBUFFERED": "1"}
    try:
        d.start(timeout=300)
        assert str(venv / "bin/corrald") in d.proc.args[0]
        p = d.corral("run", "--no-net", "--", "true", cwd=d.tmp)
        assert p.returncode == 0, p.stdout + p.stderr
        d.wait_record(lambda r: r.get("kind") == "session" and r.get("op") == "end", timeout=10)
    finally:
        d.cleanup(remove_tmp=True)
