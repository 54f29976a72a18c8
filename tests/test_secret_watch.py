"""Secret names that do not exist yet (deny_read: ~/.aws, ~/.netrc, ...) when
$HOME is the project root (an agent started in ~): corrald watches them
(server/secretwatch.py) instead of Landlock's read complement, which made
every file the session created at its root unreadable.

End to end through `corral run` child processes on the real kernel, in a fresh
directory under /root used as HOME and as the project:

* files made at the root, in a subdirectory, renamed, git, a venv: all work,
  by the native launcher and the Python CLI; the control: --strict-protect
  (with the deny_write mandatories dropped, so that only the read freeze is
  left) refuses reading a new root file back;
* made outside while the session runs (~/.aws/credentials, ~/.netrc):
  hidden in the session's view, recorded; readable outside;
* made by the session (~/.netrc, ~/.aws/): quarantined; credentials written
  later outside into a new ~/.aws: hidden;
* an existing ~/.ssh key stays hidden (regression).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from harness import CORRAL, CORRAL_PY

SECRETS = (".aws", ".netrc", ".kube", ".pypirc", ".docker", ".config", ".gnupg", ".ssh")


@pytest.fixture(scope="module")
def daemon(agentd):
    return agentd            # no policy option: the default profile, which names domains


@pytest.fixture
def home():
    """A fresh HOME under /root, also the project: none of the secrets exist."""
    d = Path(tempfile.mkdtemp(prefix="corral-sw-", dir="/root"))
    for n in SECRETS:
        assert not (d / n).exists()
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def sync():
    """Files the test and the session signal each other with (outside HOME)."""
    d = Path(tempfile.mkdtemp(prefix="corral-sw-sync-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def env_for(daemon, home: Path) -> dict:
    e = {k: v for k, v in daemon.env.items() if k not in ("TMUX", "SSH_AUTH_SOCK")}
    e["HOME"] = str(home)
    return e


def run(daemon, home, script: str, *flags, binary=CORRAL):
    return subprocess.run([str(binary), "run", *flags, "--", "sh", "-c", script], cwd=home,
                          env=env_for(daemon, home), capture_output=True, text=True, timeout=120)


def wait_for(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def record(daemon, op: str, target: Path):
    return [r for r in daemon.records() if r.get("op") == op and r.get("target") == str(target)]


# -- the project root ($HOME) takes new files, and reads them back ------------------------
WORK = """set -e
echo hi > newfile; cat newfile
mkdir sub; echo x > sub/f; cat sub/f
mv newfile renamed; cat renamed
mv sub/f moved; cat moved
git init -q . && echo 'print(1)' > a.py && git add a.py
git -c user.name=t -c user.email=t@example.com commit -qm init && git log --oneline | wc -l
python3 -m venv venv && ./venv/bin/python -c 'print("venv-ok")'
echo done
"""


@pytest.mark.parametrize("binary", [CORRAL, CORRAL_PY], ids=["native", "python"])
def test_home_as_project_root_reads_back_new_files(daemon, home, binary):
    p = run(daemon, home, WORK, binary=binary)
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert p.stdout.split() == ["hi", "x", "hi", "x", "1", "venv-ok", "done"], p.stdout
    assert "denied reads" not in p.stderr, p.stderr      # no read-frozen note
    assert (home / "renamed").read_text() == "hi\n" and (home / "venv" / "bin").is_dir()


def _deny_write_mandatories() -> list[str]:
    from corral.policy.files import MANDATORY
    return [f for m in MANDATORY if m.kind == "deny_write" for f in ("--no-mandatory", m.name)]


def test_strict_protect_keeps_the_read_freeze(daemon, home):
    """The control: with the deny_write names dropped (their freeze would refuse
    the creation first), --strict-protect leaves the missing secrets to
    Landlock, whose complement refuses reading the new file back; without it
    the same session reads it."""
    flags = _deny_write_mandatories()
    strict = run(daemon, home, "echo hi > newfile; cat newfile", *flags, "--strict-protect",
                 binary=CORRAL_PY)
    assert strict.returncode != 0, (strict.stdout, strict.stderr)
    assert "cat: newfile: Permission denied" in strict.stderr, strict.stderr
    assert (home / "newfile").read_text() == "hi\n"          # written, not readable back
    assert "refusing to read new entries directly in: " + str(home) in strict.stderr, \
        strict.stderr
    (home / "newfile").unlink()
    watched = run(daemon, home, "echo hi > newfile; cat newfile", *flags, binary=CORRAL_PY)
    assert watched.returncode == 0 and watched.stdout == "hi\n", (watched.stdout, watched.stderr)


# -- made outside while the session runs: hidden in its view ------------------------------
WAIT_AND_READ = r"""
import errno, json, os, sys, time
home, sync = sys.argv[1], sys.argv[2]
open(os.path.join(sync, "ready"), "w").close()
while not os.path.exists(os.path.join(sync, "go")):
    time.sleep(0.02)
res = {}
def rec(name, fn):
    try:
        res[name] = fn()
    except OSError as e:
        res[name] = errno.errorcode.get(e.errno, str(e.errno))
rec("read_credentials", lambda: open(os.path.join(home, ".aws", "credentials")).read())
rec("list_aws", lambda: os.listdir(os.path.join(home, ".aws")))
rec("read_netrc", lambda: open(os.path.join(home, ".netrc")).read())
rec("rename_aws", lambda: os.rename(os.path.join(home, ".aws"), os.path.join(home, "aws2")))
rec("write_new", lambda: open(os.path.join(home, "after"), "w").write("after"))
rec("read_new", lambda: open(os.path.join(home, "after")).read())
with open(os.path.join(sync, "res.json"), "w") as fh:
    json.dump(res, fh)
"""

REFUSED = ("EACCES", "ENOENT", "EPERM")


def start_waiting(daemon, home, sync, pre: str = ""):
    """A session that runs `pre` (shell), says it is ready, waits for `go`,
    then tries the secrets (WAIT_AND_READ)."""
    probe = sync / "probe.py"
    probe.write_text(WAIT_AND_READ)
    script = f'{pre}\nexec "{sys.executable}" "{probe}" "{home}" "{sync}"'
    proc = subprocess.Popen([str(CORRAL), "run", "--", "sh", "-c", script], cwd=home,
                            env=env_for(daemon, home), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (sync / "ready").exists() or proc.poll() is not None, 60, "the session")
    assert proc.poll() is None, proc.communicate()
    return proc


def finish(proc, sync) -> dict:
    (sync / "go").write_text("")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, (out, err)
    return json.loads((sync / "res.json").read_text())


def test_secret_made_outside_is_hidden_in_the_session(daemon, home, sync):
    proc = start_waiting(daemon, home, sync)
    try:
        # The developer, outside: `aws configure` and an editor's ~/.netrc.
        (home / ".aws").mkdir()
        (home / ".aws" / "credentials").write_text("AWS-SECRET")
        (home / ".netrc").write_text("NETRC-SECRET")
        for name in (".aws", ".netrc"):
            wait_for(lambda: record(daemon, "secret_hidden", home / name), 10,
                     f"secret_hidden {name}")
        res = finish(proc, sync)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    print(res)
    for k in ("read_credentials", "list_aws", "read_netrc"):
        assert res[k] in REFUSED, (k, res)
    assert res["rename_aws"] in ("EBUSY", "EACCES", "EPERM"), res     # a mount point in its view
    assert res["write_new"] == 5 and res["read_new"] == "after", res  # the root still works
    for name in (".aws", ".netrc"):
        r = record(daemon, "secret_hidden", home / name)[0]
        assert r["verdict"] == "deny" and r["creator"] == "outside" and r["kind"] == "file", r
        assert "mandatory" in r["rule"], r
    # the control: outside, they are there and readable, unchanged
    assert (home / ".aws" / "credentials").read_text() == "AWS-SECRET"
    assert (home / ".netrc").read_text() == "NETRC-SECRET"


# -- made by the session: quarantined ----------------------------------------------------
def test_secret_made_in_the_session_is_quarantined(daemon, home, sync):
    proc = start_waiting(daemon, home, sync, pre='echo mine > "$HOME/.netrc"; mkdir "$HOME/.aws"')
    try:
        for name in (".netrc", ".aws"):
            wait_for(lambda: record(daemon, "quarantine", home / name), 10, f"quarantine {name}")
        assert not (home / ".netrc").exists() and not (home / ".aws").exists()
        # Later the developer's tool writes credentials (into a new ~/.aws: the
        # session's one is in the quarantine, out of its reach).
        (home / ".aws").mkdir()
        (home / ".aws" / "credentials").write_text("AWS-SECRET")
        wait_for(lambda: record(daemon, "secret_hidden", home / ".aws"), 10, "secret_hidden")
        res = finish(proc, sync)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    print(res)
    for name, ftype in ((".netrc", "file"), (".aws", "directory")):
        r = record(daemon, "quarantine", home / name)[0]
        assert r["creator"] == "session" and r["verdict"] == "deny", r
        assert r["file_type"] == ftype and "secret name" in r["rule"], r
        assert r["moved_to"] and os.path.lexists(r["moved_to"]), r
    assert Path(record(daemon, "quarantine", home / ".netrc")[0]["moved_to"]).read_text() == \
        "mine\n"
    assert res["read_credentials"] in REFUSED and res["list_aws"] in REFUSED, res
    assert res["read_netrc"] == "ENOENT", res
    assert (home / ".aws" / "credentials").read_text() == "AWS-SECRET"


# -- existing secrets: hidden by the view as before ---------------------------------------
def test_existing_ssh_key_stays_hidden(daemon, home):
    (home / ".ssh").mkdir(mode=0o700)
    (home / ".ssh" / "id_ed25519").write_text("SSH-SECRET")
    p = run(daemon, home, 'cat "$HOME/.ssh/id_ed25519"; echo "rc=$?"; echo hi > new; cat new')
    assert p.returncode == 0, p.stderr
    assert "SSH-SECRET" not in p.stdout and "rc=1" in p.stdout, p.stdout
    assert p.stdout.rstrip().endswith("hi"), p.stdout
    assert (home / ".ssh" / "id_ed25519").read_text() == "SSH-SECRET"


def test_missing_deny_read_in_the_project_is_watched(daemon, home):
    """A user's --deny-read ./secrets that does not exist yet: the root stays
    readable, and the session cannot make it (quarantined)."""
    p = run(daemon, home, "echo hi > new; cat new; mkdir secrets; sleep 0.3; ls -d secrets",
            "--allow-write", ".", "--deny-read", "./secrets", binary=CORRAL_PY)
    assert p.stdout.startswith("hi\n"), (p.stdout, p.stderr)
    assert "No such file" in p.stderr, p.stderr                 # gone before ls
    assert not (home / "secrets").exists()
    r = record(daemon, "quarantine", home / "secrets")[0]
    assert r["creator"] == "session" and r["rule"].startswith("secret name"), r


# -- a restarted daemon keeps watching ----------------------------------------------------
def test_daemon_restart_keeps_secrets_hidden(home, sync):
    """A secret hidden before the restart stays so and in place (a mount point in
    the session's view, not quarantined as "appeared while corrald was down");
    one made outside after the restart is hidden too."""
    from conftest import make_daemon
    d = make_daemon("corral-sw-restart")     # the default profile names domains: DNS on
    d.start()
    proc = None
    try:
        proc = start_waiting(d, home, sync)
        (home / ".netrc").write_text("NETRC-SECRET")
        wait_for(lambda: record(d, "secret_hidden", home / ".netrc"), 10, "secret_hidden .netrc")
        d.stop()
        d.start()
        (home / ".aws").mkdir()
        (home / ".aws" / "credentials").write_text("AWS-SECRET")
        wait_for(lambda: record(d, "secret_hidden", home / ".aws"), 10, "secret_hidden .aws")
        res = finish(proc, sync)
        assert res["read_netrc"] in REFUSED and res["read_credentials"] in REFUSED, res
        assert (home / ".netrc").read_text() == "NETRC-SECRET"
        assert not record(d, "quarantine", home / ".netrc")
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        d.cleanup(remove_tmp=True)


# -- corral exec into a `corral session start` session -----------------------------------
@pytest.mark.parametrize("layout", ["home-is-project", "project-below-home"])
def test_exec_refuses_a_secret_made_after_session_start(daemon, home, layout):
    """Made outside after `corral session start`: refused to `corral exec`
    commands by both ways in. Project = HOME: hidden by corrald in the view
    the commands join; project below HOME: Landlock keeps the name (the Python
    path joins the view, where it is no mount point: it must not be taken out
    of Landlock's list as if the view hid it)."""
    proj = home if layout == "home-is-project" else home / "proj"
    proj.mkdir(exist_ok=True)
    env = env_for(daemon, home)
    p = subprocess.run([str(CORRAL_PY), "session", "start", "--timeout", "300"], cwd=proj,
                       env=env, capture_output=True, text=True, timeout=90)
    assert p.returncode == 0 and p.stdout.strip(), p.stderr
    sid = p.stdout.strip()
    try:
        (home / ".aws").mkdir()
        (home / ".aws" / "credentials").write_text("AWS-SECRET")
        (home / ".netrc").write_text("NETRC-SECRET")
        if layout == "home-is-project":
            for name in (".aws", ".netrc"):
                wait_for(lambda: record(daemon, "secret_hidden", home / name), 10,
                         f"secret_hidden {name}")
        script = (f'cat "{home}/.aws/credentials"; cat "{home}/.netrc"; '
                  'echo hi > "new-$$"; cat "new-$$"')
        for binary in (CORRAL, CORRAL_PY):
            e = subprocess.run([str(binary), "exec", sid, "--", "sh", "-c", script], cwd=proj,
                               env=env, capture_output=True, text=True, timeout=90)
            assert "SECRET" not in e.stdout, (binary, e.stdout, e.stderr)
            assert e.stdout == "hi\n", (binary, e.stdout, e.stderr)
            assert e.stderr.count("Permission denied") == 2, (binary, e.stderr)
    finally:
        subprocess.run([str(CORRAL_PY), "session", "stop", sid], env=env, capture_output=True,
                       text=True, timeout=60)
    assert (home / ".aws" / "credentials").read_text() == "AWS-SECRET"
