"""Denied reads without freezing the directory around them (issue 12): the
mount view hides existing deny_read paths, so Landlock grants their parents
whole. Real kernel, through `corral run`; each refusal next to its control."""
from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

CORRAL = str(Path(sys.executable).parent / "corral")


@pytest.fixture(scope="session")
def daemon(agentd):
    # Most sessions here run with no policy option, so under the default profile,
    # which names domains: the daemon's resolver must run.
    return agentd


PROBE = r"""
import errno, json, os, sys
home = sys.argv[1]
res = {}
def rec(name, fn):
    try:
        v = fn(); res[name] = "ok" if v is None else v
    except OSError as e:
        res[name] = errno.errorcode.get(e.errno, str(e.errno))
def read(p):
    return lambda: open(p).read()
def write(p, data="x"):
    def f():
        with open(p, "w") as fh:
            fh.write(data)
    return f
ssh = os.path.join(home, ".ssh")
rec("write_newfile", write(os.path.join(home, ".newfile"), "mine"))
rec("read_newfile", read(os.path.join(home, ".newfile")))
rec("read_outside_new", read(os.path.join(home, ".made-outside-later")))
rec("read_key", read(os.path.join(ssh, "id_rsa")))
rec("list_ssh", lambda: os.listdir(ssh) and None)
rec("read_key_later", read(os.path.join(ssh, "made-later")))
rec("read_key_proc_root", read("/proc/self/root" + os.path.join(ssh, "id_rsa")))
rec("read_key_relative", lambda: (os.chdir(home), open(".ssh/id_rsa").read())[1])
def symlink_read():
    os.symlink(os.path.join(ssh, "id_rsa"), os.path.join(home, "lnk"))
    return open(os.path.join(home, "lnk")).read()
rec("read_via_new_symlink", symlink_read)
rec("hardlink_key", lambda: os.link(os.path.join(ssh, "id_rsa"), os.path.join(home, "hl")))
rec("rename_ssh_away", lambda: os.rename(ssh, os.path.join(home, ".ssh2")))
rec("rmdir_ssh", lambda: os.rmdir(ssh))
rec("read_after_rename", read(os.path.join(home, ".ssh2", "id_rsa")))
print(json.dumps(res))
"""


@pytest.fixture
def home():
    d = Path(tempfile.mkdtemp(prefix="crm-home-", dir="/var/tmp"))
    (d / ".ssh").mkdir(mode=0o700)
    (d / ".ssh" / "id_rsa").write_text("SECRET-KEY")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _run(daemon, home, *flags, env=None, go=None):
    e = {k: v for k, v in daemon.env.items() if k not in ("TMUX", "SSH_AUTH_SOCK")}
    e.update(env or {})
    return subprocess.run([CORRAL, "run", *flags, "--", sys.executable, "-c", PROBE, str(home)],
                          cwd=home, env=e, capture_output=True, text=True, timeout=60)


def test_denied_directory_hidden_and_its_parent_stays_readable(daemon, home):
    # made outside after the policy is written but before the session: readable
    (home / ".made-outside-later").write_text("visible")
    p = _run(daemon, home, "--allow-write", str(home), "--deny-read", str(home / ".ssh"))
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    # controls: a new file beside the denied directory is written and read back
    assert r["write_newfile"] == "ok" and r["read_newfile"] == "mine", r
    assert r["read_outside_new"] == "visible", r
    # the denied directory, by every name, and what it holds
    for k in ("read_key", "list_ssh", "read_key_proc_root", "read_key_relative",
              "read_via_new_symlink", "hardlink_key", "rename_ssh_away", "rmdir_ssh"):
        assert r[k] in ("EACCES", "EPERM", "EBUSY", "EXDEV", "ENOENT", "EROFS"), (k, r)
    assert "SECRET" not in p.stdout
    assert (home / ".ssh" / "id_rsa").read_text() == "SECRET-KEY"
    assert not (home / ".ssh2").exists()
    report = p.stderr
    assert "frozen" not in report or str(home) + "," not in report


def test_file_created_in_the_denied_directory_during_the_session_stays_hidden(daemon, home):
    """Made outside while the session runs: the mask is over the directory, not
    over a list of files, so it is hidden too."""
    go = home / "go"
    script = PROBE.replace('print(json.dumps(res))', '')  # noqa: F841 (shape check below)
    assert script
    e = {k: v for k, v in daemon.env.items() if k not in ("TMUX", "SSH_AUTH_SOCK")}
    waiter = ("import os, sys, time\n"
              "while not os.path.exists(sys.argv[2]): time.sleep(0.02)\n"
              "try:\n    print(open(sys.argv[1]).read())\n"
              "except OSError as e:\n    print('refused', e.errno)\n")
    proc = subprocess.Popen([CORRAL, "run", "--allow-write", str(home), "--deny-read",
                             str(home / ".ssh"), "--", sys.executable, "-c", waiter,
                             str(home / ".ssh" / "made-later"), str(go)],
                            cwd=home, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        import time
        time.sleep(1.5)
        (home / ".ssh" / "made-later").write_text("LATER-SECRET")
        go.write_text("")
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "LATER-SECRET" not in out and out.startswith("refused"), out


def test_home_different_from_passwd_home_is_protected_in_both(daemon, home):
    """`~` is $HOME and the passwd home: the mandatory ~/.ssh protection covers both."""
    pw = Path(pwd.getpwuid(os.getuid()).pw_dir)
    assert pw != home
    code = ("import sys\nfor p in sys.argv[1:]:\n    try:\n        open(p).read(); print(p, 'ok')\n"
            "    except OSError as e:\n        print(p, 'refused', e.errno)\n")
    probe_pw = pw / ".ssh"
    made = not probe_pw.exists()
    probe_pw.mkdir(mode=0o700, exist_ok=True)
    key_pw = probe_pw / "corral-test-key"
    key_pw.write_text("PW-SECRET")
    try:
        e = {k: v for k, v in daemon.env.items() if k not in ("TMUX", "SSH_AUTH_SOCK")}
        e["HOME"] = str(home)
        p = subprocess.run([CORRAL, "run", "--", sys.executable, "-c", code,
                            str(home / ".ssh" / "id_rsa"), str(key_pw), str(home / "plain")],
                           cwd=home, env=e, capture_output=True, text=True, timeout=60)
        (home / "plain").write_text("ok")
    finally:
        key_pw.unlink()
        if made:
            probe_pw.rmdir()
    assert p.returncode == 0, p.stderr
    assert "SECRET" not in p.stdout, p.stdout
    assert f"{home / '.ssh' / 'id_rsa'} refused" in p.stdout, p.stdout
    assert f"{key_pw} refused" in p.stdout, p.stdout


def test_allow_write_of_a_missing_path_is_created_and_said(daemon, home):
    target = home / "new" / "out"
    e = {k: v for k, v in daemon.env.items() if k not in ("TMUX", "SSH_AUTH_SOCK")}
    p = subprocess.run([CORRAL, "run", "--allow-write", str(target), "--", "sh", "-c",
                        f"echo hi > {target}/f"], cwd=home, env=e, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert f"created {target}" in p.stderr, p.stderr
    assert (target / "f").read_text() == "hi\n"
    # a missing deny is kept and the user is told
    p = subprocess.run([CORRAL, "run", "--deny-read", str(home / "nothere"), "--", "true"],
                       cwd=home, env=e, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and f"deny_read {home / 'nothere'} does not exist: kept" in p.stderr, \
        p.stderr
    # a name with a suffix is made as a file (what ~/.claude.json must be)
    f = home / "state" / "agent.json"
    p = subprocess.run([CORRAL, "run", "--allow-write", str(f), "--", "sh", "-c",
                        f"echo '{{}}' > {f}"], cwd=home, env=e, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0 and "as an empty file" in p.stderr, p.stderr
    assert f.is_file() and f.read_text() == "{}\n"
    t = home / "state" / "notes.txt"
    p = subprocess.run([CORRAL, "run", "--allow-write", str(t), "--", "true"], cwd=home, env=e,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and t.is_file() and t.read_text() == "", p.stderr


ALIAS_PROBE = r"""
import errno, json, sys
out = {}
for name, p in (("primary", sys.argv[1]), ("alias", sys.argv[2])):
    try:
        out[name] = open(p).read()
    except OSError as e:
        out[name] = errno.errorcode.get(e.errno, str(e.errno))
print(json.dumps(out))
"""


def test_hidden_directory_stays_denied_through_a_bind_mount_alias(daemon, home):
    """The home is also mounted elsewhere (a bind mount): the mask over ~/.ssh
    covers one path, so Landlock keeps refusing the key by inode through the
    other; the control reads it through both outside the session."""
    alias = Path(tempfile.mkdtemp(prefix="crm-alias-", dir="/var/tmp"))
    subprocess.run(["mount", "--bind", str(home), str(alias)], check=True)
    try:
        key, via = str(home / ".ssh" / "id_rsa"), str(alias / ".ssh" / "id_rsa")
        assert open(via).read() == "SECRET-KEY"                   # the control, outside
        e = {k: v for k, v in daemon.env.items() if k not in ("TMUX", "SSH_AUTH_SOCK")}
        p = subprocess.run([CORRAL, "run", "--allow-write", str(home), "--deny-read",
                            str(home / ".ssh"), "--", sys.executable, "-c", ALIAS_PROBE, key, via],
                           cwd=home, env=e, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        r = json.loads(p.stdout)
        assert "SECRET" not in p.stdout, r
        assert r["primary"] in ("EACCES", "ENOENT") and r["alias"] in ("EACCES", "ENOENT"), r
    finally:
        subprocess.run(["umount", "-l", str(alias)], check=False)
        alias.rmdir()
