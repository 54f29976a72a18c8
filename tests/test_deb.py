"""`make deb` builds a package that installs corral like a system service: the unit
passes `systemd-analyze verify` with its fixed ExecStart, the installed corrald (from
/usr/lib/corral, not this checkout) runs a sandboxed command through the installed
`corral`, with a named policy from its policies.d, labels on the records, a JSON-lines
export and signed checkpoints that `corral log verify --checkpoints` accepts.

The installed daemon runs on private paths (its own socket, log, cgroup, pins and
config directory), never the host's /run/corral.sock; the package is purged at the
end (if this test installed it), so the checkout's own venv and daemon are untouched."""
from __future__ import annotations

import grp
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

import harness
from conftest import REPO, make_daemon

APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}


def _clean_env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV") and not k.startswith("CORRAL_")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"
    return env


def _installed() -> str | None:
    p = subprocess.run(["dpkg-query", "-W", "-f", "${Status} ${Version}", "corral"],
                       capture_output=True, text=True)
    return p.stdout if p.returncode == 0 and "install ok installed" in p.stdout else None


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else ""


@pytest.fixture(scope="module")
def deb():
    make_daemon("corral-deb-probe")         # skips (with the reason) unless root
    if not shutil.which("dpkg-deb"):
        pytest.skip("dpkg-deb not found: not a Debian host")
    if _installed():
        pytest.skip(f"a corral package is already installed ({_installed()}): not replacing it")
    out = Path(tempfile.mkdtemp(prefix="corral-deb-out-"))
    own = REPO / ".venv/bin/corral"
    before = _sha(own)
    # A checkout's system corrald (make start) keeps its settings and checkpoint key in
    # /etc/corral: put back exactly what was there after the purge.
    etc, logdir = Path("/etc/corral"), Path("/var/log/corral")
    saved = out / "etc-corral"
    had_etc, had_log = etc.exists(), logdir.exists()
    if had_etc:
        shutil.copytree(etc, saved, symlinks=True)
    try:
        p = subprocess.run(["bash", str(REPO / "packaging/build-deb.sh"), str(out)],
                           capture_output=True, text=True, timeout=900)
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
        path = Path(p.stdout.strip().splitlines()[-1])
        assert path.is_file() and path.suffix == ".deb", p.stdout
        # apt resolves the Depends (python3-bpfcc, python3-cryptography, libseccomp2...)
        p = subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends",
                            "-o", "DPkg::Lock::Timeout=300", "-o", "Dpkg::Options::=--force-confold",
                            str(path)],
                           capture_output=True, text=True, timeout=900,
                           env={**os.environ, **APT_ENV})
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        yield path
    finally:
        if _installed():
            subprocess.run(["dpkg", "--purge", "corral"], capture_output=True, timeout=300)
        if had_etc:
            shutil.rmtree(etc, ignore_errors=True)
            shutil.copytree(saved, etc, symlinks=True)
        if not had_log:
            try:
                logdir.rmdir()
            except OSError:
                pass
        shutil.rmtree(out, ignore_errors=True)
        assert _sha(own) == before, "the checkout's .venv/bin/corral changed"
    assert not Path("/usr/bin/corral").exists() and not Path("/usr/lib/corral").exists()


def test_package_layout(deb):
    info = subprocess.run(["dpkg-deb", "-f", str(deb), "Depends"], capture_output=True,
                          text=True, check=True).stdout
    for dep in ("python3-bpfcc", "python3-cryptography", "libseccomp2"):
        assert dep in info, info
    assert os.access("/usr/sbin/corrald", os.X_OK) and os.access("/usr/bin/corral", os.X_OK)
    assert Path("/etc/corral/corral.toml").is_file() and Path("/etc/corral/policies.d").is_dir()
    conffiles = subprocess.run(["dpkg-query", "-W", "-f", "${Conffiles}", "corral"],
                               capture_output=True, text=True, check=True).stdout
    assert "/etc/corral/corral.toml" in conffiles and "/etc/logrotate.d/corral" in conffiles
    if shutil.which("logrotate"):       # the rotation config parses (-d: nothing is done)
        p = subprocess.run(["logrotate", "-d", "/etc/logrotate.d/corral"], capture_output=True,
                           text=True, timeout=60)
        assert p.returncode == 0 and "error" not in p.stderr.lower(), p.stdout + p.stderr
    gid = grp.getgrnam("corral-audit").gr_gid
    st = os.stat("/var/log/corral")
    assert st.st_gid == gid and st.st_mode & 0o777 == 0o750
    # The program is the package's, not this checkout's.
    p = subprocess.run(["/usr/lib/corral/venv/bin/python", "-c",
                        "import corral, corral.kernel.bpfsrc as b, corral.kernel.native as n; "
                        "n.load(); print(corral.__file__); print(b.bpf_dir())"],
                       capture_output=True, text=True, env=_clean_env(), cwd="/", timeout=60)
    assert p.returncode == 0, p.stderr
    for line in p.stdout.split():
        assert line.startswith("/usr/lib/corral/venv/"), p.stdout
    unit = Path("/lib/systemd/system/corrald.service").read_text()
    assert "ExecStart=/usr/sbin/corrald\n" in unit and "@REPO@" not in unit


def test_unit_verifies(deb):
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze not found (apt-get install systemd)")
    p = subprocess.run(["systemd-analyze", "verify", "/lib/systemd/system/corrald.service"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "corrald.service" not in p.stdout + p.stderr, p.stdout + p.stderr


def test_installed_corral_runs_a_sandboxed_command(deb):
    d = harness.make_daemon("corral-deb", extra_args=["--no-dns"], bin_dir=Path("/usr/sbin"))
    d.env = {**_clean_env(), **{k: v for k, v in d.env.items() if k.startswith("CORRAL_")},
             "PYTHONUNBUFFERED": "1"}
    etc = d.tmp / "etc"
    (etc / "policies.d").mkdir(parents=True)
    export = d.tmp / "export.jsonl"
    (etc / "corral.toml").write_text(f'[export]\njsonl = "{export}"\njournald = "off"\n')
    (etc / "policies.d/ci.toml").write_text('[network]\nallow = ["127.0.0.1:9"]\n')
    try:
        d.start(timeout=300)
        assert "/usr/lib/corral/venv/" in Path(f"/proc/{d.pid}/cmdline").read_text()
        p = subprocess.run(["/usr/bin/corral", "run", "--policy-name", "ci", "--name", "deb-ci",
                            "--label", "suite=deb", "--", "/usr/bin/python3", "-c",
                            "import socket,sys\n"
                            "try: socket.create_connection(('192.0.2.1', 80), timeout=3)\n"
                            "except PermissionError: print('refused'); sys.exit(0)\n"
                            "sys.exit(3)"],
                           capture_output=True, text=True, env=d.env, cwd=d.tmp, timeout=120)
        assert p.returncode == 0 and "refused" in p.stdout, p.stdout + p.stderr
        deny = d.wait_record(lambda r: r.get("kind") == "net" and r.get("verdict") == "deny",
                             timeout=10)
        assert deny.get("session_name") == "deb-ci" and deny.get("labels") == {"suite": "deb"}
        start = d.wait_record(lambda r: r.get("kind") == "session" and r.get("op") == "start")
        assert start["policy_name"]["name"] == "ci" and start["policy"]["network"]["allow"] == \
            ["127.0.0.1/32:9"]
    finally:
        d.stop()
        try:
            lines = [json.loads(x) for x in export.read_text().splitlines()]
            assert any(r.get("kind") == "net" and r.get("session_name") == "deb-ci"
                       for r in lines), lines[-5:]
            v = subprocess.run(["/usr/bin/corral", "log", "verify", "--dir", str(d.log_dir),
                                "--checkpoints", str(export), "--pubkey",
                                str(etc / "checkpoint.pub")],
                               capture_output=True, text=True, env=d.env, timeout=60)
            assert v.returncode == 0 and "checkpoints ok" in v.stdout, v.stdout + v.stderr
        finally:
            d.cleanup(remove_tmp=True)
