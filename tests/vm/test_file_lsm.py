"""BPF LSM file policy, exercised on a real kernel (VM tier)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vmhelpers import DEV_W, REPO, _require_env, cgroup_root
from corral.backends import filelsm
from corral.kernel import bpf, events

EPERM_RC = 1  # coreutils exit status on EPERM


def w(path: Path, data="x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data)
    return path


def ok(res):
    rc, out, err = res
    assert rc == 0, f"expected success, rc={rc} out={out!r} err={err!r}"
    return out


def denied(res):
    rc, out, err = res
    assert rc != 0, f"expected denial, got success: out={out!r}"
    assert "not permitted" in err or "EPERM" in err or "PermissionError" in err, \
        f"expected EPERM, got rc={rc} err={err!r}"
    return err


def test_probe():
    _require_env()
    ok_, why = filelsm.probe()
    assert ok_, why


# ---------------------------------------------------------------- read rules
def test_read_rules(session, ws):
    w(ws / "secret/a", "A")
    w(ws / "secret/deep/b", "B")
    w(ws / "secret/pub/c", "C")
    w(ws / "secret/pub/inner/d", "D")
    w(ws / "open/e", "E")
    s = session({"deny_read": [str(ws / "secret"), str(ws / "secret/pub/inner")],
                 "allow_read": [str(ws / "secret/pub")], "allow_write": DEV_W})
    denied(s.sh(f"cat {ws}/secret/a"))
    denied(s.sh(f"cat {ws}/secret/deep/b"))
    denied(s.sh(f"ls {ws}/secret"))
    assert ok(s.sh(f"cat {ws}/secret/pub/c")) == "C"
    denied(s.sh(f"cat {ws}/secret/pub/inner/d"))      # deepest rule wins
    assert ok(s.sh(f"cat {ws}/open/e")) == "E"
    assert ok(s.sh("cat /etc/hostname >/dev/null; echo fine")).strip() == "fine"


# ---------------------------------------------------------------- write rules
def test_write_rules(session, ws):
    rw, ro = ws / "rw", ws / "ro"
    w(rw / "a", "a")
    w(rw / ".git/config", "cfg")
    w(ro / "x", "x")
    s = session({"allow_write": [str(rw)] + DEV_W, "deny_write": [str(rw / ".git")]})
    ok(s.sh(f"echo hi > {rw}/new"))
    ok(s.sh(f"echo more >> {rw}/a"))
    ok(s.sh(f"mkdir {rw}/d && rmdir {rw}/d"))
    ok(s.sh(f"mkfifo {rw}/fifo && rm {rw}/fifo"))
    ok(s.sh(f"ln -s a {rw}/sym && rm {rw}/sym"))
    ok(s.sh(f"ln {rw}/a {rw}/hard && rm {rw}/hard"))
    ok(s.sh(f"chmod 600 {rw}/a"))
    ok(s.sh(f"chown 0:0 {rw}/a"))
    ok(s.sh(f"truncate -s 0 {rw}/a"))
    ok(s.sh(f"mv {rw}/new {rw}/new2 && rm {rw}/new2"))
    ok(s.sh(f"cat {ro}/x"))                                  # reading is allowed
    denied(s.sh(f"echo hi > {ro}/y"))                       # default deny: create
    denied(s.sh(f"echo hi >> {ro}/x"))                      # write
    denied(s.sh(f"truncate -s 0 {ro}/x"))
    denied(s.sh(f"chmod 600 {ro}/x"))
    denied(s.sh(f"chown 0:0 {ro}/x"))
    denied(s.sh(f"rm {ro}/x"))
    denied(s.sh(f"mkdir {ro}/d"))
    denied(s.sh(f"ln -s x {ro}/sym"))
    denied(s.sh(f"mkfifo {ro}/fifo"))
    denied(s.sh(f"mv {rw}/a {ro}/a"))                       # rename: dst not writable
    denied(s.sh(f"mv {ro}/x {rw}/x"))                       # rename: src not writable
    denied(s.sh(f"ln {ro}/x {rw}/xlink"))                   # link: src not writable
    denied(s.sh(f"echo evil >> {rw}/.git/config"))          # deny_write wins
    denied(s.sh(f"mkdir {rw}/.git/hooks"))
    denied(s.sh(f"rm {rw}/.git/config"))
    denied(s.sh(f"mv {rw}/.git {rw}/git2"))
    denied(s.sh(f"python3 -S -c 'open(\"{ro}/x\", \"r+\")'"))
    assert (ro / "x").read_text() == "x"
    assert (rw / ".git/config").read_text() == "cfg"
    # O_RDONLY|O_TRUNC truncates on Linux: must count as a write
    denied(s.py(f"import os; os.open('{ro}/x', os.O_RDONLY | os.O_TRUNC)"))
    assert (ro / "x").read_text() == "x"


# ---------------------------------------------------------------- created later
def test_paths_created_after_registration(session, ws):
    rw = ws / "rw"
    (rw / ".git").mkdir(parents=True)
    s = session({"allow_write": [str(rw)] + DEV_W,
                 "deny_write": [str(rw / ".git/hooks"), str(rw / "later/deep/prot")],
                 "deny_read": [str(ws / "future"), str(rw / "sec")]})
    # a new file in a read-denied dir that did not exist at registration
    w(ws / "future/f", "F")
    denied(s.sh(f"cat {ws}/future/f"))
    # mkdir of a protected path after the fact
    denied(s.sh(f"mkdir {rw}/.git/hooks"))
    (rw / ".git/hooks").mkdir()                              # created outside the session
    denied(s.sh(f"echo x > {rw}/.git/hooks/pre-commit"))
    ok(s.sh(f"echo x > {rw}/.git/HEAD"))
    # several missing levels
    ok(s.sh(f"mkdir -p {rw}/later/deep"))
    denied(s.sh(f"mkdir {rw}/later/deep/prot"))
    # a file created inside the session in a read-denied dir stays read-denied
    ok(s.sh(f"mkdir -p {rw}/sec && echo s > {rw}/sec/new"))
    denied(s.sh(f"cat {rw}/sec/new"))
    # delete and re-create (outside the session) is still protected
    import shutil
    shutil.rmtree(rw / ".git")
    (rw / ".git/hooks").mkdir(parents=True)
    denied(s.sh(f"echo x > {rw}/.git/hooks/post-commit"))
    # moving a directory that holds deny rules is refused
    denied(s.sh(f"mv {rw}/.git {rw}/git-old"))
    denied(s.sh(f"mv {rw}/later {rw}/later2"))


# ---------------------------------------------------------------- bypasses
OPENAT2 = textwrap.dedent("""
    import ctypes, os, struct, sys
    libc = ctypes.CDLL(None, use_errno=True)
    how = struct.pack('QQQ', os.O_RDONLY, 0, 0)
    fd = libc.syscall(437, -100, sys.argv[1].encode(), how, len(how))
    if fd < 0:
        e = ctypes.get_errno(); print(os.strerror(e), file=sys.stderr); sys.exit(1)
    print(os.read(fd, 100).decode(), end='')
""")


def test_bypasses(session, ws):
    w(ws / "secret/a", "A")
    w(ws / "secret/b", "B")
    (ws / "rw").mkdir()
    os.link(ws / "secret/b", ws / "prelinked")               # hard link before the session
    os.symlink(ws / "secret/a", ws / "sym")
    os.symlink(ws / "secret", ws / "symdir")
    s = session({"deny_read": [str(ws / "secret")], "allow_write": [str(ws / "rw")] + DEV_W})
    denied(s.sh(f"cat {ws}/sym"))
    denied(s.sh(f"cat {ws}/symdir/a"))
    denied(s.sh(f"cat /proc/self/root{ws}/secret/a"))
    denied(s.sh(f"cd {ws}/secret && cat ./a"))
    denied(s.sh(f"cd {ws} && cat secret/../secret/a"))
    denied(s.sh(f"cd {ws}/secret && cat /proc/self/cwd/a"))
    denied(s.run([sys.executable, "-S", "-c", OPENAT2, f"{ws}/secret/a"]))
    # O_PATH is not an open for reading, but reopening it via /proc/self/fd is
    denied(s.py(textwrap.dedent(f"""
        import os
        fd = os.open('{ws}/secret/a', os.O_PATH)
        open('/proc/self/fd/%d' % fd).read()
    """)))
    # hard links: pre-existing one is denied by inode; new ones can't be made
    denied(s.sh(f"cat {ws}/prelinked"))
    denied(s.sh(f"ln {ws}/secret/a {ws}/rw/leak"))
    # a bind mount of the denied tree (private mount namespace) is still denied
    denied(s.sh(f"unshare -m sh -c 'mount --bind {ws}/secret {ws}/rw && cat {ws}/rw/a'"))
    # outside any session everything is readable
    assert (ws / "sym").read_text() == "A"


def test_rename_out_of_denied_dir(session, ws):
    rw = ws / "rw"
    w(rw / "sec/key", "K")
    w(rw / "keyfile", "K2")
    s = session({"allow_write": [str(rw)] + DEV_W,
                 "deny_read": [str(rw / "sec"), str(rw / "keyfile")]})
    denied(s.sh(f"mv {rw}/sec {rw}/pub"))
    denied(s.sh(f"mv {rw}/sec/key {rw}/key"))
    denied(s.sh(f"mv {rw}/keyfile {rw}/k"))
    denied(s.sh(f"cp {rw}/keyfile {rw}/k"))


def test_depth_bound_fails_closed(session, ws):
    deep = ws.joinpath(*["d"] * 70)
    deep.mkdir(parents=True)
    (deep / "f").write_text("F")
    ok14 = ws.joinpath(*["e"] * 11)
    ok14.mkdir(parents=True)
    (ok14 / "f").write_text("G")
    s = session({"allow_write": DEV_W})
    err = denied(s.sh(f"cat {deep}/f"))
    assert ok(s.sh(f"cat {ok14}/f")) == "G"
    del err


# ---------------------------------------------------------------- unix sockets
def _listen(path: Path) -> socket.socket:
    path.parent.mkdir(parents=True, exist_ok=True)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(8)
    return srv


CONNECT = "import socket,sys; c=socket.socket(socket.AF_UNIX); c.connect(sys.argv[1]); print('connected')"


def test_unix_socket_connect(session, ws):
    run = ws / "run"
    srv1 = _listen(run / "docker.sock")
    srv2 = _listen(ws / "rw/app.sock")
    srv3 = _listen(ws / "rw/hidden/x.sock")
    os.symlink(run, ws / "varrun")
    try:
        # app.sock is this (outside) process's: the session boundary refuses it
        # unless unix.allow names it (test_session_boundary_lsm.py)
        s = session({"allow_write": [str(ws / "rw")] + DEV_W, "deny_read": [str(ws / "rw/hidden")],
                     "unix": {"allow": [str(ws / "rw/app.sock"), str(ws / "rw/hidden/x.sock")]}})
        denied(s.run([sys.executable, "-S", "-c", CONNECT, str(run / "docker.sock")]))
        denied(s.run([sys.executable, "-S", "-c", CONNECT, str(ws / "varrun/docker.sock")]))
        assert "connected" in ok(s.run([sys.executable, "-S", "-c", CONNECT, str(ws / "rw/app.sock")]))
        denied(s.run([sys.executable, "-S", "-c", CONNECT, str(ws / "rw/hidden/x.sock")]))
    finally:
        for x in (srv1, srv2, srv3):
            x.close()


# ---------------------------------------------------------------- sessions
def test_two_sessions_and_outside(session, ws):
    w(ws / "x", "X")
    a = session({"deny_read": [str(ws / "x")], "allow_write": DEV_W})
    b = session({"allow_write": [str(ws)] + DEV_W})
    denied(a.sh(f"cat {ws}/x"))
    assert ok(b.sh(f"cat {ws}/x")) == "X"
    ok(b.sh(f"echo y > {ws}/y"))
    denied(a.sh(f"echo y > {ws}/z"))
    # the test process (outside sessions) is unaffected
    assert (ws / "x").read_text() == "X"
    (ws / "z").write_text("z")
    # a child cgroup of a session is still confined
    sub = a.path / "child"
    sub.mkdir()
    try:
        def join_child():
            with open(sub / "cgroup.procs", "w") as fh:
                fh.write(str(os.getpid()))
        p = subprocess.run(["cat", str(ws / "x")], preexec_fn=join_child, capture_output=True, text=True)
        assert p.returncode != 0 and "not permitted" in p.stderr
    finally:
        sub.rmdir()


def test_live_update(session, ws):
    w(ws / "f", "F")
    s = session({"allow_write": DEV_W})
    loop = "while read p; do if cat \"$p\" >/dev/null 2>&1; then echo ok; else echo denied; fi; done"
    p = s.popen(["/bin/sh", "-c", loop], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
    try:
        def probe_read():
            p.stdin.write(f"{ws}/f\n")
            p.stdin.flush()
            return p.stdout.readline().strip()
        assert probe_read() == "ok"
        s.update({"deny_read": [str(ws)], "allow_write": DEV_W})
        assert probe_read() == "denied"
        s.update({"allow_write": DEV_W})
        assert probe_read() == "ok"
    finally:
        p.stdin.close()
        p.wait(timeout=10)


def test_events(lsm, session, ws):
    w(ws / "secret/a", "A")
    s = session({"deny_read": [str(ws / "secret")], "allow_write": DEV_W})
    got = []
    lsm.open_events(lambda raw: got.append(events.decode(raw)))
    lsm.poll(0)
    got.clear()
    denied(s.sh(f"cat {ws}/secret/a"))
    for _ in range(20):
        lsm.poll(100)
        if any(e["cgid"] == s.cgid for e in got):
            break
    ev = [e for e in got if e["cgid"] == s.cgid]
    assert ev, got
    e = ev[0]
    assert e["kind"] == "file" and e["verdict"] == "deny" and e["op"] == "open_read"
    assert e["target"] == f"{ws}/secret/a"
    assert lsm.rule_for(s.cgid, e["rule_id"]) == ("deny_read", str(ws / "secret"))


def test_flood_is_rate_limited_and_overruns_are_counted(lsm, session, ws):
    """bpf/ratelimit.h in file_lsm.c: a denial flood passes a bounded number of
    events, the suppressed count rides on the next event, and what the full
    ring buffer dropped (nobody polls during the flood) is counted in the
    pinned file_lost: every denial is an event, suppressed, or lost."""
    import time
    w(ws / "secret/a", "A")
    got = []
    lsm.open_events(got.append)
    lsm.poll(0)                               # what earlier tests left
    got.clear()
    base = lsm.lost_events()
    n, k = 1000, 5                            # 5 full buckets overrun 64 pages of events
    sess = [session({"deny_read": [str(ws / "secret")], "allow_write": DEV_W}) for _ in range(k)]
    loop = (f"n = 0\nfor _ in range({n}):\n    try:\n        open({str(ws / 'secret/a')!r})\n"
            f"    except PermissionError:\n        n += 1\nprint(n)")
    for s in sess:
        assert ok(s.py(loop)).strip() == str(n)
    lost = lsm.lost_events() - base
    lsm.poll(0)
    time.sleep(1.5)                           # buckets refill: the next denial carries the count
    for s in sess:
        denied(s.sh(f"cat {ws}/secret/a"))
    cgids = {s.cgid for s in sess}
    for _ in range(50):
        lsm.poll(100)
        recs = [events.decode(r) for r in got]
        mine = [r for r in recs if r["cgid"] in cgids]
        if sum(1 for r in mine if r["comm"] == "cat") >= k:
            break
    assert all(r["kind"] == "file" and r["target"] == f"{ws}/secret/a" for r in mine), \
        {r["target"] for r in mine}
    suppressed = sum(r["suppressed_before"] for r in mine)
    assert lost > 0 and suppressed > 0, (lost, suppressed, len(mine))
    assert lsm.lost_events() - base == lost   # counted once
    assert len(mine) + suppressed + lost == k * (n + 1), (len(mine), suppressed, lost)
    # bounded per session: the burst plus the refill while it ran
    assert len(mine) < k * n // 2


def test_survives_sigkill_of_user_space(lsm, ws):
    """The user-space half dies with SIGKILL; pinned programs keep the session
    confined, and a restarted FileLsm reuses the pins (no recompile)."""
    w(ws / "secret/a", "A")
    cg = cgroup_root() / f"corral-vmt-kill-{os.getpid()}"
    cg.mkdir()
    cgid = os.stat(cg).st_ino
    code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(REPO / 'daemon')!r})
        from corral.backends import filelsm
        f = filelsm.FileLsm()
        assert f.reused, "expected pinned programs to be reused"
        f.add_session({cgid}, {{"deny_read": [{str(ws / 'secret')!r}]}})
        print("READY", flush=True)
        time.sleep(3600)
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "READY"
        p.send_signal(signal.SIGKILL)
        p.wait()

        def join():
            with open(cg / "cgroup.procs", "w") as fh:
                fh.write(str(os.getpid()))
        r = subprocess.run(["cat", str(ws / "secret/a")], preexec_fn=join, capture_output=True, text=True)
        assert r.returncode != 0 and "not permitted" in r.stderr
        # a new instance finds the pins and can manage the orphaned session
        f2 = filelsm.FileLsm()
        assert f2.reused
        f2.remove_session(cgid)
        r = subprocess.run(["cat", str(ws / "secret/a")], preexec_fn=join, capture_output=True, text=True)
        assert r.returncode == 0 and r.stdout == "A"
        f2.close()
    finally:
        if p.poll() is None:
            p.kill()
        cg.rmdir()


def test_btf_generated_headers_compile():
    """The same program compiles against the BTF-generated header tree and
    passes the real verifier (loaded, attached, then dropped)."""
    _require_env()
    if os.environ.get("CORRAL_VMTEST_SKIP_BTF") == "1":
        pytest.skip("CORRAL_VMTEST_SKIP_BTF=1")
    from bcc import BPF
    from corral.kernel import kheaders
    old = os.environ.get("BCC_KERNEL_SOURCE")
    try:
        mode, path = kheaders.select(force_btf=True)
        assert mode == "btf"
        bdir = REPO / "bpf"
        b = BPF(text=(bdir / "file_lsm.c").read_bytes(),
                cflags=[f"-I{bdir}", "-Wno-unused-function"] + bpf.btf_cflags(mode, path))
        try:
            assert len(b.lsm_fds) == len(filelsm.HOOKS)
        finally:
            b.cleanup()
    finally:
        if old is None:
            os.environ.pop("BCC_KERNEL_SOURCE", None)
        else:
            os.environ["BCC_KERNEL_SOURCE"] = old
