"""Kernel audit -> corral records (corral.auditlink), on the real kernel.

A forked child confines itself with corral.confine.apply() (Landlock file
policy + seccomp) and then does something denied; the test reads what the
kernel reports on the audit multicast group. Other processes on the host may
produce audit records at the same time: everything is matched by pid.
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import select
import shutil
import socket
import struct
import tempfile
import time

import pytest

from corral.server import auditlink
from corral.client import confine, landlock

CLONE_NEWUSER = 0x10000000
WAIT = 5.0


def _require_root():
    if os.geteuid() != 0:
        pytest.fail("test_auditlink needs root (CAP_AUDIT_READ/CONTROL, Landlock, seccomp)")


@pytest.fixture(scope="module")
def link():
    _require_root()
    ln = auditlink.AuditLink()
    yield ln
    ln.close()


@pytest.fixture
def denied_dir():
    d = tempfile.mkdtemp(prefix="corral audit ")      # a space: the kernel hex-encodes it
    p = os.path.join(d, "secret file")
    with open(p, "w") as f:
        f.write("x")
    yield d, p
    shutil.rmtree(d, ignore_errors=True)


class Child:
    """A forked, confined child. ``action`` runs after confine.apply(); its
    (JSON-able) result comes back on a pipe; the child then stays alive until
    release() so that /proc/<pid>/cgroup is still readable."""

    def __init__(self, policy, action, deny=(), seccomp_log=False, exec_argv=None):
        r_go, self.w_go = os.pipe()
        self.r_out, w_out = os.pipe()
        libc = ctypes.CDLL(None, use_errno=True)
        self.pid = os.fork()
        if self.pid == 0:      # child: fds 0/1 survive confine's fd closing
            code = 0
            try:
                os.dup2(r_go, 0)
                os.dup2(w_out, 1)
                rep = confine.apply(policy, list(deny), seccomp_log=seccomp_log)
                if exec_argv:
                    os.write(1, b'{"exec": true}\n')
                    os.execv(exec_argv[0], exec_argv)
                res = action(libc)
                os.write(1, (json.dumps({"result": res, "report": rep}) + "\n").encode())
                os.read(0, 1)
            except BaseException as e:  # noqa: BLE001 - report anything to the parent
                try:
                    os.write(1, (json.dumps({"error": repr(e)}) + "\n").encode())
                except BaseException:
                    pass
                code = 1
            os._exit(code)
        os.close(r_go)
        os.close(w_out)
        self.out = self._read_line()
        self.cgroup = auditlink.read_cgroup(self.pid)

    def _read_line(self) -> dict:
        buf = b""
        deadline = time.monotonic() + 30
        while not buf.endswith(b"\n") and time.monotonic() < deadline:
            select.select([self.r_out], [], [], 1)
            chunk = os.read(self.r_out, 4096)
            if not chunk:
                break
            buf += chunk
        assert buf, "confined child said nothing"
        out = json.loads(buf.splitlines()[0])
        assert "error" not in out, out["error"]
        return out

    def release(self) -> int:
        os.close(self.w_go)
        os.close(self.r_out)
        return os.waitpid(self.pid, 0)[1]


def collect(link, pid, pred=lambda r: True, timeout=WAIT, settle=0.7):
    """Records of ``pid`` matching ``pred``; after the first match keep
    reading ``settle`` s more so that duplicates would be seen too."""
    got = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        select.select([link], [], [], 0.1)
        got += [r for r in link.read() if r.get("pid") == pid and pred(r)]
        if got:
            deadline = min(deadline, time.monotonic() + settle)
    return got


def _open_denied(path):
    def act(libc):
        try:
            fd = os.open(path, os.O_RDONLY)
            os.close(fd)
            return "opened"
        except OSError as e:
            return e.errno
    return act


# ---- Landlock ------------------------------------------------------------------
def test_probe_reports_receivable(link):
    ok, why = auditlink.probe()
    assert ok, why
    assert auditlink.status()["enabled"] in (1, 2), \
        "AuditLink() must leave kernel audit enabled (Landlock logs nothing otherwise)"


def test_landlock_file_denial_is_one_record(link, denied_dir):
    d, path = denied_dir
    link.read()
    c = Child({"deny_read": [d]}, _open_denied(path))
    try:
        assert c.out["result"] == errno.EACCES
        assert c.out["report"]["landlock"] and c.out["report"]["landlock_abi"] >= 7
        recs = collect(link, c.pid, lambda r: r["backend"] == "landlock")
    finally:
        c.release()
    assert len(recs) == 1, recs
    r = recs[0]
    assert r["kind"] == "file"
    assert r["verdict"] == "deny"
    assert r["op"] == "open_read"
    assert r["target"] == path                      # hex-decoded, with the spaces
    assert r["pid"] == c.pid
    assert r["comm"] == "python" or r["comm"].startswith("py")
    assert r["uid"] == 0
    assert r["syscall"] == "openat"
    assert r["blockers"] == ["fs.read_file"]
    assert r["rule"] == "landlock: missing fs.read_file"
    assert r["cgroup"] is not None and r["cgroup"] == c.cgroup
    assert "type=1423" in r["raw"] and "blockers=fs.read_file" in r["raw"]
    assert isinstance(r["time"], float) and abs(r["time"] - time.time()) < 60


def test_landlock_denial_after_exec_is_logged(link, denied_dir):
    """LANDLOCK_RESTRICT_SELF_LOG_NEW_EXEC_ON (corral.landlock.restrict_flags):
    the agent is a new executable; its denials must be logged too."""
    d, path = denied_dir
    link.read()
    c = Child({"deny_read": [d]}, None, exec_argv=["/bin/cat", path])
    recs = collect(link, c.pid, lambda r: r["backend"] == "landlock")
    status = c.release()
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 1     # cat: Permission denied
    assert [(r["comm"], r["op"], r["target"]) for r in recs] == [("cat", "open_read", path)]
    assert recs[0]["exe"] == os.path.realpath("/bin/cat")
    # measured: with flags 0 only the denials before the exec are logged
    assert landlock.restrict_flags(landlock.abi()) & landlock.RESTRICT_SELF_LOG_NEW_EXEC_ON


def test_landlock_write_denials(link):
    d = tempfile.mkdtemp(prefix="corral-audit-w")
    existing = os.path.join(d, "f")
    with open(existing, "w"):
        pass

    def act(libc):
        out = []
        for fn in (lambda: os.open(existing, os.O_WRONLY),
                   lambda: os.open(os.path.join(d, "new"), os.O_WRONLY | os.O_CREAT, 0o600),
                   lambda: os.mkdir(os.path.join(d, "sub")),
                   lambda: os.unlink(existing)):
            try:
                fn()
                out.append("ok")
            except OSError as e:
                out.append(e.errno)
        return out

    link.read()
    try:
        c = Child({"allow_write": []}, act)
        try:
            assert c.out["result"] == [errno.EACCES] * 4
            recs = collect(link, c.pid, lambda r: r["backend"] == "landlock")
        finally:
            c.release()
    finally:
        shutil.rmtree(d, ignore_errors=True)
    # creation/removal denials name the directory whose right is missing
    assert [(r["op"], r["target"]) for r in recs] == [
        ("open_write", existing), ("create", d), ("mkdir", d), ("unlink", d)], recs


# ---- seccomp --------------------------------------------------------------------
def _errno_logged() -> bool:
    with open("/proc/sys/kernel/seccomp/actions_logged") as f:
        return "errno" in f.read().split()


def _unshare_user(libc):
    r = libc.unshare(CLONE_NEWUSER)
    e1 = ctypes.get_errno()
    r2 = libc.syscall(101, 16, 1, 0, 0)         # ptrace(PTRACE_ATTACH, 1)
    return [r, e1, r2, ctypes.get_errno()]


def test_seccomp_denial_is_logged_with_flag(link):
    if not _errno_logged():
        ok, why = auditlink.probe()
        assert "seccomp errno denials NOT logged" in why, why
        return
    link.read()
    c = Child(None, _unshare_user, seccomp_log=True)
    try:
        assert c.out["result"] == [-1, errno.EPERM, -1, errno.EPERM]
        recs = collect(link, c.pid, lambda r: r["backend"] == "seccomp")
    finally:
        c.release()
    assert [(r["kind"], r["op"], r["verdict"], r["action"]) for r in recs] == [
        ("syscall", "unshare", "deny", "errno"), ("syscall", "ptrace", "deny", "errno")], recs
    r = recs[0]
    assert r["target"] == "unshare" and r["syscall_nr"] == 272
    assert r["pid"] == c.pid and r["uid"] == 0
    assert r["cgroup"] == c.cgroup
    assert r["rule"] == "seccomp: errno"
    assert r["raw"].startswith("type=1326 audit(") and "syscall=272" in r["raw"]


def test_seccomp_errno_not_logged_without_flag(link):
    """Why confine must load the filter with log=True (SECCOMP_FILTER_FLAG_LOG)."""
    link.read()
    c = Child(None, _unshare_user, seccomp_log=False)
    try:
        assert c.out["result"][:2] == [-1, errno.EPERM]
        recs = collect(link, c.pid, timeout=1.5)
    finally:
        c.release()
    assert recs == []


# ---- scoping of the kernel audit -------------------------------------------------
def _conds(rules) -> set:
    """Rules by their conditions (the kernel lists an exclude rule's mask with
    the syscall-class bits cleared: not byte for byte as sent)."""
    return {tuple(r["fields"]) for r in rules}


def test_other_audit_records_are_excluded(link):
    """With our exclude rules loaded, a record type we do not want
    (AUDIT_EVENT_LISTENER 1335, emitted when anyone joins the multicast group
    while audit is enabled) is not produced at all."""
    ctl = auditlink._Control()
    try:
        ours = [r for r in auditlink._listed(ctl) if auditlink._is_our_exclude(r)]
        st = ctl.status()
    finally:
        ctl.close()
    if link.enabled_by_us or link.adopted or len(ours) == len(auditlink.exclude_rules()):
        assert _conds(ours) == _conds(map(auditlink._parse_rule, auditlink.exclude_rules()))
    else:
        # audit was enabled by someone else (auditd/journald): not ours to scope
        assert st["enabled"] and (st["pid"] or not link.enabled_by_us)
        pytest.skip(f"audit enabled by its owner (status {st}); AuditLink did not scope it")
    watch = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 9)
    watch.bind((0, 1))
    watch.setblocking(False)
    other = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 9)
    other.bind((0, 1))                               # would log type 1335
    other.close()
    seen = set()
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        select.select([watch], [], [], 0.1)
        try:
            while True:
                data = watch.recv(1 << 16)
                seen.add(struct.unpack_from("=IH", data)[1])
        except BlockingIOError:
            pass
    watch.close()
    assert seen <= set(auditlink.KEEP_TYPES), seen


def test_earlier_corrald_configuration_is_brought_up_to_date(link):
    """Audit left enabled by an earlier corrald whose exclude rules dropped
    PATH/CWD and which had no EROFS rule: a new AuditLink replaces the old
    exclude rules and loads the EROFS rules (nothing else's is touched)."""
    if not (link.enabled_by_us or link.adopted):
        pytest.skip("audit is not corral's to configure here (auditd or another owner)")
    ctl = auditlink._Control()
    try:
        legacy = auditlink.exclude_rules(auditlink.LEGACY_KEEP_TYPES)
        for r in legacy:
            try:
                ctl.request(auditlink.AUDIT_ADD_RULE, r)
            except OSError as e:
                assert e.errno == errno.EEXIST
        for r in auditlink.exclude_rules():
            if r not in legacy:
                ctl.request(auditlink.AUDIT_DEL_RULE, r)
        auditlink.remove_erofs_rules()
        assert not auditlink.erofs_report()["active"]
        ln = auditlink.AuditLink(erofs=True)
        try:
            assert ln.adopted and not ln.enabled_by_us and ln.erofs_abis == ["b64", "b32"]
        finally:
            ln.close()
        excl = [r for r in auditlink._listed(ctl) if auditlink._is_our_exclude(r)]
        assert auditlink.erofs_report()["active"]
        # not opted in: the next link takes the (host-wide costly) rule away again
        auditlink.AuditLink().close()
        assert not auditlink.erofs_report()["active"]
    finally:
        ctl.close()
        auditlink.remove_erofs_rules()
    assert _conds(excl) == _conds(map(auditlink._parse_rule, auditlink.exclude_rules()))


def test_kernel_lost_counter_is_reported(link):
    base = auditlink.status()["lost"]
    link._kernel_lost = base - 3                    # as if 3 records were dropped since
    link._lost_checked = 0.0
    out = []
    link._check_kernel_lost(out, time.monotonic())
    assert [(r["kind"], r["op"]) for r in out] == [("lost", "audit_backlog")]
    assert out[0]["count"] >= 3


# ---- through corrald + `corral run` (the session's real cgroup) ---------------------
def test_corral_run_denial_carries_the_session_cgroup(link, daemon, denied_dir):
    """What the daemon will resolve: a denial inside a `corral run` session
    carries a cgroup "/<instance>/<session id>[/...]" even when the denied
    process (cat) has already exited when the record is read (then it comes
    from the Landlock domain's creator, the session leader).

    The allow_read exception inside keeps the denied directory on the Landlock
    path: without one the mount view hides an existing deny_read directory
    under an empty mode-0000 tmpfs, and cat's EACCES is then a plain
    permission check that no audit record reports."""
    import subprocess
    import sys
    from pathlib import Path
    d, path = denied_dir
    os.mkdir(os.path.join(d, "pub"))
    link.read()
    env = dict(daemon.env)
    proc = subprocess.Popen([str(Path(sys.executable).parent / "corral"), "run", "--no-net",
                             "--deny-read", d, "--allow-read", os.path.join(d, "pub"),
                             "--", "sh", "-c",
                             f'echo "$CORRAL_SESSION"; cat "{path}"; echo "rc=$?"; sleep 1.5'],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        recs = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not recs:
            select.select([link], [], [], 0.1)
            recs = [r for r in link.read() if r.get("target") == path]
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    sid, rc = out.split()[:2]
    assert rc == "rc=1", (out, err)
    assert len(recs) == 1, recs
    r = recs[0]
    assert (r["kind"], r["op"], r["verdict"], r["comm"], r["backend"]) == (
        "file", "open_read", "deny", "cat", "landlock")
    parts = [p for p in (r["cgroup"] or "").split("/") if p]
    assert parts[:2] == [daemon.instance, sid], r
