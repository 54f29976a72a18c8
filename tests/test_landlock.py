"""Landlock backend: the shared file-policy suite plus Landlock specifics,
on the real kernel (root). Confinement always happens in a child process
(`python -m corral.client.confine --policy ... -- argv`)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import fspolicy_suite  # noqa: E402

from corral.client import landlock  # noqa: E402

PY = sys.executable
ENV = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(not landlock.available(), reason="kernel has no Landlock"),
]


def landlock_runner(policy, argv, extra=()):
    cmd = [PY, "-m", "corral.client.confine", *extra]
    if policy is not None:
        cmd += ["--policy", json.dumps(policy)]
    p = subprocess.run(cmd + ["--"] + list(argv), capture_output=True, text=True, env=ENV,
                       timeout=120)
    return p.returncode, p.stdout, p.stderr


@pytest.mark.parametrize("case", fspolicy_suite.CASES, ids=lambda c: c.name)
def test_fspolicy_suite(case, tmp_path):
    fspolicy_suite.run_case(case, landlock_runner, "landlock", tmp_path)


def test_suite_controls_unconfined(tmp_path):
    """The same probes without confinement: every DENIED case must then succeed,
    otherwise the suite would be testing DAC, not the backend."""
    def unconfined(policy, argv):
        p = subprocess.run(argv, capture_output=True, text=True, env=ENV, timeout=120)
        return p.returncode, p.stdout, p.stderr
    res = fspolicy_suite.run_all(unconfined, "unconfined", tmp_path)
    for name, got in res.items():
        if name.endswith("_never_stays"):
            continue        # about corrald removing what was made: nothing removes it here
        assert not isinstance(got, str) or "expected" in got, (name, got)
        obs = fspolicy_suite.OBSERVED["unconfined"][name]
        assert all(g == "OK" for g in obs), (name, obs)


# --- Landlock specifics -----------------------------------------------------------
def test_abi_probe():
    v = landlock.abi()
    assert v >= 1
    assert landlock.handled_fs(v) & landlock.FS_READ_FILE
    if v >= 5:
        assert landlock.handled_fs(v) & landlock.FS_IOCTL_DEV
    if v >= 6:
        assert landlock.scopes(v) == landlock.SCOPE_SIGNAL | landlock.SCOPE_ABSTRACT_UNIX_SOCKET
    if v >= 7:
        assert landlock.restrict_flags(v) & landlock.RESTRICT_SELF_LOG_NEW_EXEC_ON


def test_decision_with_landlock_present():
    d = landlock.file_policy_decision({"deny_read": ["/root"]})
    assert d["enforce"] and d["backend"] == "landlock" and not d["weaker"]


def test_decision_without_landlock_refuses_policy():
    """Run the decision in a child where Landlock is made unavailable (seccomp
    denies landlock_create_ruleset, as on a kernel without Landlock)."""
    code = (
        "from corral.client import landlock, confine\n"
        "print(landlock.abi())\n"
        "try:\n"
        "    landlock.file_policy_decision({'deny_read': ['/root']})\n"
        "    print('accepted')\n"
        "except landlock.LandlockUnavailable as e:\n"
        "    print('refused')\n"
        "print(landlock.file_policy_decision({'deny_read': ['/root']}, allow_weaker=True)['weaker'])\n"
        "print(landlock.file_policy_decision(None)['enforce'])\n"
    )
    p = subprocess.run([PY, "-m", "corral.client.confine", "--keep-caps", "--deny",
                        "landlock_create_ruleset", "--", PY, "-c", code],
                       capture_output=True, text=True, env=ENV)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["0", "refused", "True", "False"]


def test_no_file_policy_still_installs_landlock(tmp_path):
    rc, out, err = landlock_runner(None, ["sh", "-c", f"echo ok > {tmp_path}/f && cat {tmp_path}/f"],
                                   extra=["--print-report"])
    assert rc == 0, err
    assert out.strip() == "ok"
    rep = json.loads([ln for ln in err.splitlines() if ln.startswith("CORRAL_CONFINE ")][0].split(" ", 1)[1])
    assert rep["landlock"] is True and rep["landlock_rules"] > 0


def test_protected_mounts_found():
    pm = landlock.protected_mounts()
    cg2 = [m.mountpoint for m in landlock.mounts() if m.fstype == "cgroup2"]
    assert set(cg2) <= set(pm)
    pl = landlock.plan({"allow_write": ["/"]})
    for m in pm:
        # nothing at or above a protected mount carries write rights
        for path, mask in pl.rules.items():
            if mask & landlock.FS_WRITE_FILE:
                assert not (m == path or m.startswith(path.rstrip("/") + "/")), (m, path)


def test_plan_complement_structure(tmp_path):
    B = str(tmp_path)
    for d in ("a/x", "a/y", "b"):
        os.makedirs(f"{B}/{d}")
    pl = landlock.plan({"deny_read": [f"{B}/a/x"], "allow_write": [B],
                        "deny_write": [f"{B}/b"]})
    r = pl.rules
    assert r[f"{B}/a/y"] & landlock.READ == landlock.READ
    assert f"{B}/a/x" not in r
    assert r.get(f"{B}/a", 0) & landlock.FS_READ_FILE == 0
    assert r[f"{B}/a"] & landlock.WRITE == landlock.WRITE          # sibling of b's path
    assert r.get(f"{B}/b", 0) & landlock.FS_WRITE_FILE == 0
    assert r.get(B, 0) & landlock.FS_MAKE_REG == 0                 # B is on the complement path
    assert r["/dev/null"] & landlock.FS_WRITE_FILE


def test_execute_follows_read(tmp_path):
    B = str(tmp_path)
    os.makedirs(f"{B}/bin")
    os.makedirs(f"{B}/hidden")
    for d in ("bin", "hidden"):
        with open(f"{B}/{d}/t.sh", "w") as f:
            f.write("#!/bin/sh\necho ran\n")
        os.chmod(f"{B}/{d}/t.sh", 0o755)
    rc, out, err = landlock_runner({"deny_read": [f"{B}/hidden"]},
                                   ["sh", "-c", f"{B}/bin/t.sh; {B}/hidden/t.sh || echo noexec"])
    assert rc == 0, err
    assert out.split() == ["ran", "noexec"]


def test_tty_and_dev_null_with_strict_policy(tmp_path):
    rc, out, err = landlock_runner({"allow_write": [str(tmp_path)]},
                                   ["sh", "-c", "echo a >/dev/null && echo b 2>/dev/null && "
                                    f"{PY} -c 'import pty,os; m,s=pty.openpty(); os.write(s,b\"x\"); print(os.read(m,1))'"])
    assert rc == 0, err
    assert out.split() == ["b", "b'x'"]


def test_bind_mount_alias_of_denied_path(tmp_path):
    B = str(tmp_path)
    os.makedirs(f"{B}/real/secret")
    os.makedirs(f"{B}/alias")
    with open(f"{B}/real/secret/k", "w") as f:
        f.write("k")
    subprocess.run(["mount", "--bind", f"{B}/real", f"{B}/alias"], check=True)
    try:
        assert f"{B}/alias/secret" in landlock.aliases(f"{B}/real/secret")
        rc, out, err = landlock_runner(
            {"deny_read": [f"{B}/real/secret"]},
            [PY, "-c", f"""
import errno
for p in ("{B}/real/secret/k", "{B}/alias/secret/k"):
    try:
        open(p).read(); print("OK")
    except OSError as e:
        print(errno.errorcode[e.errno])
"""])
        assert rc == 0, err
        assert out.split() == ["EACCES", "EACCES"]
    finally:
        subprocess.run(["umount", f"{B}/alias"], check=True)


def test_policy_path_validation():
    with pytest.raises(landlock.LandlockError):
        landlock.normalize_policy({"deny_read": ["relative/path"]})
    with pytest.raises(landlock.LandlockError):
        landlock.normalize_policy({"deny_reed": ["/x"]})


def test_abstract_unix_socket_scope():
    """A confined process cannot connect to an abstract unix socket outside its domain."""
    import socket
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    name = f"\0corral-test-{os.getpid()}"
    srv.bind(name)
    srv.listen(1)
    try:
        code = (f"import socket,errno\ns=socket.socket(socket.AF_UNIX)\n"
                f"try:\n    s.connect({name!r}); print('OK')\n"
                f"except OSError as e:\n    print(errno.errorcode[e.errno])\n")
        u = subprocess.run([PY, "-c", code], capture_output=True, text=True)
        assert u.stdout.strip() == "OK"
        rc, out, err = landlock_runner(None, [PY, "-c", code])
        assert rc == 0, err
        assert out.strip() == "EPERM"
    finally:
        srv.close()


SYSCTL_PROBE = """
import errno
def w(path):
    try:
        v = open(path).read()
        with open(path, "w") as f:
            f.write(v)           # same value back: harmless
        print("OK")
    except OSError as e:
        print(errno.errorcode[e.errno])
w("/proc/sys/vm/swappiness")
w("/proc/sys/kernel/core_pattern")
"""


def test_sysctls_not_writable_by_capless_root_even_with_allow_write_root():
    """uid 0 without capabilities passes DAC on most sysctls; kernel.core_pattern
    would be a full escape. The protected pseudo filesystems stop it."""
    code = SYSCTL_PROBE
    # control: uid 0 with *no capabilities at all* (empty bounding set) and no
    # Landlock can write them
    ctl = (["setpriv", "--bounding-set=-all", "--inh-caps=-all"]
           if subprocess.run(["which", "setpriv"], capture_output=True).returncode == 0 else [])
    u = subprocess.run(ctl + [PY, "-c", code], capture_output=True, text=True)
    assert u.stdout.split() == ["OK", "OK"], u.stderr
    for policy in ({"allow_write": ["/"]}, None):
        rc, out, err = landlock_runner(policy, [PY, "-c", code])
        assert rc == 0, err
        assert out.split() == ["EACCES", "EACCES"], (policy, out)


def test_more_specific_allow_write_reopens_dev_shm():
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm")
    code = ("import os, errno\np = '/dev/shm/corral-test-%d' % os.getpid()\n"
            "try:\n    open(p, 'w').close(); os.unlink(p); print('OK')\n"
            "except OSError as e:\n    print(errno.errorcode[e.errno])\n")
    rc, out, _ = landlock_runner({"allow_write": ["/"]}, [PY, "-c", code])
    assert out.split() == ["EACCES"]
    rc, out, err = landlock_runner({"allow_write": ["/tmp", "/dev/shm"]}, [PY, "-c", code])
    assert out.split() == ["OK"], err
