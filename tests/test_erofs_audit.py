"""Writes refused by the session's read-only mount view (EROFS) are audited.

`corral run` puts a session in a mount namespace where everything outside
allow_write is a read-only mount (client/mountguard.py). The kernel refuses a
write there (EROFS) before Landlock is asked, so Landlock logs nothing; corrald's
AuditLink adds a kernel audit exit rule (exit == -EROFS on the syscalls that
modify the file system, key "corral-erofs") and turns its SYSCALL/CWD/PATH
records into file records (server/auditlink.py).

Real sessions on the real kernel: a `corral run` child process (never pytest
registering a session) with cwd a fresh project does each write once on a
directory outside allow_write (/opt/corral-erofs-<id>, not a protected path)
and once at the project root (the control: it works and is not a denial).

To see these tests fail without the rule: CORRAL_TEST_EROFS_RULE=delete removes
the corral-erofs rules before the session runs (and loads them again after).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

import harness

from corral.server import auditlink
from harness import BIN

CORRAL = str(BIN / "corral")
WAIT = 15.0

# Each write on its own file or directory, so that every record has its own target.
# name -> (op, what the record names: "file" (the file) or "dir" (its directory,
# what the kernel logs when it refuses a new or removed entry))
OPS = {
    "chmod": ("setattr", "file"),
    "utime": ("setattr", "file"),
    "setxattr": ("setxattr", "file"),
    "removexattr": ("removexattr", "file"),
    "truncate": ("truncate", "file"),
    "open_write": ("open_write", "file"),
    "fchmod": ("setattr", "file"),          # fd only: the target comes from /proc/<pid>/fd
    "create": ("create", "dir"),
    "mkdir": ("mkdir", "dir"),
    "mkdirat": ("mkdir", "dir"),            # relative to a directory fd, not the cwd
    "mkfifo": ("mknod", "dir"),
    "unlink": ("unlink", "dir"),
    "rmdir": ("rmdir", "dir"),
    "rename": ("rename_from", "dir"),
    "symlink": ("symlink", "dir"),
    "link": ("link", "dir"),
    "chmod_rel": ("setattr", "file"),       # relative to the cwd (the CWD record)
}
if tuple(map(int, os.uname().release.split(".")[:2])) >= (6, 13):
    OPS["setxattrat"] = ("setxattr", "file")

SCRIPT = r"""
import ctypes, errno, json, os, sys
base = sys.argv[1]
libc = ctypes.CDLL(None, use_errno=True)
res = {"session": os.environ.get("CORRAL_SESSION")}
fds = []
def p(name, *rest):
    return os.path.join(base, name, *rest)
def rec(name, fn):
    try:
        fn(); res[name] = "ok"
    except OSError as e:
        res[name] = errno.errorcode.get(e.errno, str(e.errno))
def keep(fd):
    fds.append(fd)          # open until the end: the daemon reads the fd's path
    return fd
def setxattrat():
    class XattrArgs(ctypes.Structure):
        _fields_ = [("value", ctypes.c_uint64), ("size", ctypes.c_uint32), ("flags", ctypes.c_uint32)]
    v = ctypes.create_string_buffer(b"1")
    a = XattrArgs(ctypes.addressof(v), 1, 0)
    if libc.syscall(463, -100, p("setxattrat").encode(), 0, b"user.y", ctypes.byref(a),
                    ctypes.sizeof(a)) != 0:
        e = ctypes.get_errno(); raise OSError(e, os.strerror(e))
rec("chmod", lambda: os.chmod(p("chmod"), 0o600))
rec("utime", lambda: os.utime(p("utime"), (1000000000, 1000000000)))
rec("setxattr", lambda: os.setxattr(p("setxattr"), "user.x", b"1"))
rec("removexattr", lambda: os.removexattr(p("removexattr"), "user.x"))
rec("truncate", lambda: os.truncate(p("truncate"), 0))
rec("open_write", lambda: keep(os.open(p("open_write"), os.O_WRONLY)))
rec("fchmod", lambda: os.fchmod(keep(os.open(p("fchmod"), os.O_RDONLY)), 0o600))
rec("create", lambda: keep(os.open(p("create", "new"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)))
rec("mkdir", lambda: os.mkdir(p("mkdir", "sub")))
rec("mkdirat", lambda: os.mkdir("sub", dir_fd=keep(os.open(p("mkdirat"), os.O_RDONLY | os.O_DIRECTORY))))
rec("mkfifo", lambda: os.mkfifo(p("mkfifo", "fifo")))
rec("unlink", lambda: os.unlink(p("unlink", "f")))
rec("rmdir", lambda: os.rmdir(p("rmdir", "sub")))
rec("rename", lambda: os.rename(p("rename", "f"), p("rename", "g")))
rec("symlink", lambda: os.symlink("f", p("symlink", "s")))
rec("link", lambda: os.link(p("link", "f"), p("link", "l")))
if "setxattrat" in sys.argv[2:]:
    rec("setxattrat", setxattrat)
os.chdir(base)
rec("chmod_rel", lambda: os.chmod("chmod_rel", 0o600))
print(json.dumps(res), flush=True)
import time; time.sleep(1.5)     # alive (fds open) while corrald reads the records
"""


def make_tree(base: Path) -> dict[str, str]:
    """The files and directories OPS work on; returns op -> expected target."""
    base.mkdir(mode=0o755, exist_ok=True)
    out = {}
    for name, (op, kind) in OPS.items():
        if kind == "file":
            f = base / name
            f.write_bytes(b"content\n")
            f.chmod(0o644)
            if name == "removexattr":
                os.setxattr(f, "user.x", b"1")
            out[name] = str(f)
        else:
            d = base / name
            d.mkdir(mode=0o755)
            if name in ("unlink", "rename", "link"):
                (d / "f").write_bytes(b"x")
            if name == "rmdir":
                (d / "sub").mkdir()
            out[name] = str(d)
    return out


def corral_run(daemon, project: Path, base: Path) -> dict:
    env = {k: v for k, v in daemon.env.items() if k not in ("TMUX", "SSH_AUTH_SOCK")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"      # no __pycache__ writes of its own
    p = subprocess.run([CORRAL, "run", "--no-net", "--", sys.executable, "-c", SCRIPT,
                        str(base), *OPS], cwd=project, env=env, capture_output=True,
                       text=True, timeout=90)
    assert p.returncode == 0, (p.stdout, p.stderr)
    return json.loads(p.stdout.splitlines()[0])


def session_records(daemon, sid: str, pred, want: int, timeout: float = WAIT,
                    settle: float = 1.5) -> list[dict]:
    """Records of session ``sid`` matching ``pred``; once ``want`` are there,
    read ``settle`` s more so that duplicates are seen too."""
    deadline = time.monotonic() + timeout
    got: list[dict] = []
    while time.monotonic() < deadline:
        got = [r for r in daemon.records() if r.get("session") == sid and pred(r)]
        if len(got) >= want:
            deadline = min(deadline, time.monotonic() + settle)
        time.sleep(0.1)
    return got


def _under(path, base) -> bool:
    return isinstance(path, str) and (path == str(base) or path.startswith(str(base) + "/"))


@pytest.fixture(scope="module")
def daemon():
    """This module's own corrald, started with --audit-erofs (the rule is opt-in:
    it slows every syscall on the host while loaded); the rule goes with it."""
    from conftest import make_daemon
    d = make_daemon("corral-erofs", extra_args=["--no-dns", "--audit-erofs"])
    d.start()
    try:
        yield d
    finally:
        d.cleanup()
        auditlink.remove_erofs_rules()


@pytest.fixture
def erofs_rule(daemon):
    """The rule corrald loaded at start (or CORRAL_TEST_EROFS_RULE=delete: none)."""
    rep = auditlink.erofs_report()
    assert rep["active"], rep["why"]
    if os.environ.get("CORRAL_TEST_EROFS_RULE") == "delete":
        assert auditlink.remove_erofs_rules() >= 1
        yield False
        ctl = auditlink._Control()
        try:
            auditlink._install_erofs_rules(ctl)
        finally:
            ctl.close()
        return
    yield True


@pytest.fixture
def outside():
    d = Path(f"/opt/corral-erofs-{secrets.token_hex(4)}")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def project():
    with harness.home_project("cea-") as d:
        yield d


# ---- through corrald + `corral run` ---------------------------------------------
def test_erofs_refusals_are_one_record_each(daemon, erofs_rule, outside, project):
    targets = make_tree(outside)
    res = corral_run(daemon, project, outside)
    sid = res.pop("session")
    assert sid
    assert res == {name: "EROFS" for name in OPS}, res
    recs = session_records(daemon, sid, lambda r: r.get("backend") == "mount"
                           and _under(r.get("target"), outside), want=len(OPS))
    by_target: dict[str, list] = {}
    for r in recs:
        by_target.setdefault(r["target"], []).append(r)
    got = {t: [(r["op"], r["verdict"]) for r in rs] for t, rs in by_target.items()}
    want = {targets[name]: [(op, "deny")] for name, (op, _) in OPS.items()}
    assert got == want, json.dumps({"got": got, "want": want}, indent=1)
    for r in recs:
        assert r["kind"] == "file" and r["errno"] == "EROFS", r
        assert r["rule"] == "read-only outside allow_write (mount view)", r
        assert r["comm"].startswith("py") and r["uid"] == 0 and r["pid"], r
        parts = [x for x in (r.get("cgroup") or "").split("/") if x]
        assert parts[:2] == [daemon.instance, sid], r
        assert "key=\"corral-erofs\"" in r["raw"] and "exit=-30" in r["raw"], r
    # nothing changed outside
    assert oct((outside / "chmod").stat().st_mode & 0o777) == oct(0o644)
    assert not (outside / "create" / "new").exists()
    assert (outside / "unlink" / "f").exists() and (outside / "rmdir" / "sub").is_dir()


def test_same_writes_in_the_project_work_and_are_not_denials(daemon, erofs_rule, project):
    base = project / "w"
    make_tree(base)
    res = corral_run(daemon, project, base)
    sid = res.pop("session")
    assert res == {name: "ok" for name in OPS}, res
    time.sleep(1.5)
    denials = [r for r in daemon.records() if r.get("session") == sid
               and r.get("verdict") == "deny" and _under(r.get("target"), project)]
    assert denials == []
    assert (base / "create" / "new").exists() and not (base / "unlink" / "f").exists()


def test_rule_is_loaded_as_built(daemon):
    """The kernel holds the rules byte for byte as erofs_rules() builds them
    (it lists rules back as it stores them), for b64 and the i386 compat ABI."""
    ctl = auditlink._Control()
    try:
        listed = {r["body"] for r in auditlink._listed(ctl) if auditlink._is_erofs_rule(r)}
    finally:
        ctl.close()
    built = auditlink.erofs_rules()
    assert [abi for abi, _, _ in built] == ["b64", "b32"]
    assert {b for _, _, b in built} <= listed
    rep = auditlink.erofs_report()
    assert rep["active"] and rep["why"].startswith("EROFS refusals: audited"), rep
    assert rep["auditctl"][0].startswith("-a always,exit -F arch=b64 -S ")
    assert rep["auditctl"][0].endswith(" -F exit=-EROFS -k corral-erofs")


# ---- the rule's encoding (struct audit_rule_data) -----------------------------------
def _unpack(body: bytes) -> dict:
    n = auditlink.AUDIT_BITMASK_SIZE
    m = auditlink.AUDIT_MAX_FIELDS
    v = struct.unpack_from(f"=III{n}I{m}I{m}I{m}II", body)
    cnt = v[2]
    return {"flags": v[0], "action": v[1], "field_count": cnt, "mask": v[3:3 + n],
            "fields": v[3 + n:3 + n + cnt], "values": v[3 + n + m:3 + n + m + cnt],
            "fieldflags": v[3 + n + 2 * m:3 + n + 2 * m + cnt],
            "rest_zero": not any(v[3 + n + cnt:3 + n + m]) and not any(v[3 + n + m + cnt:3 + n + 2 * m])
            and not any(v[3 + n + 2 * m + cnt:3 + n + 3 * m]),
            "buflen": v[-1], "buf": body[struct.calcsize(f"=III{n}I{m}I{m}I{m}II"):]}


def test_rule_encoding():
    body = auditlink.erofs_rule(0xC000003E, [90, 268, 463])
    u = _unpack(body)
    assert len(body) == 4 * (3 + 64 + 3 * 64 + 1) + len("corral-erofs") == 1052
    assert (u["flags"], u["action"], u["field_count"]) == (0x04, 2, 3)   # exit list, always
    assert u["fields"] == (11, 103, 210)                 # AUDIT_ARCH, AUDIT_EXIT, AUDIT_FILTERKEY
    assert u["values"] == (0xC000003E, 0xFFFFFFE2, 12)   # x86-64, -30 (EROFS) as u32, len(key)
    assert u["fieldflags"] == (0x40000000,) * 3          # AUDIT_EQUAL
    assert u["rest_zero"]
    assert (u["buflen"], u["buf"]) == (12, b"corral-erofs")
    mask = list(u["mask"])
    assert mask[90 // 32] == 1 << (90 % 32) and mask[268 // 32] == 1 << (268 % 32)
    assert mask[463 // 32] == 1 << (463 % 32)
    assert sum(bin(w).count("1") for w in mask) == 3


def test_rules_cover_the_syscalls_that_modify_files():
    x86_64 = auditlink.erofs_syscalls(auditlink.AUDIT_ARCH_X86_64)
    by_name = {v: k for k, v in x86_64.items()}
    assert {"chmod": 90, "fchmodat": 268, "fchmodat2": 452, "openat": 257, "openat2": 437,
            "setxattrat": 463, "removexattrat": 466, "renameat2": 316, "unlinkat": 263,
            "truncate": 76, "utimensat": 280, "creat": 85}.items() <= by_name.items()
    assert "chown32" not in by_name                     # i386 only
    i386 = {v: k for k, v in auditlink.erofs_syscalls(auditlink.AUDIT_ARCH_I386).items()}
    assert i386["chmod"] == 15 and i386["chown32"] == 212 and i386["openat"] == 295
    for abi, arch, body in auditlink.erofs_rules():
        mask = _unpack(body)["mask"]
        bits = {i * 32 + b for i, w in enumerate(mask) for b in range(32) if w >> b & 1}
        assert bits == set(auditlink.erofs_syscalls(arch)), abi
        assert _unpack(body)["values"][0] == arch
    line = auditlink.erofs_auditctl()[0]
    assert line.split(" -S ")[1].split(" ")[0].split(",")[:3] == ["open", "truncate", "ftruncate"]
    assert ",463,466 " in line          # libseccomp 2.5 has no name for them: numbers


# ---- the parser, on text captured from the kernel (6.18) ----------------------------
# A dead pid: no cgroup, no /proc/<pid>/fd; the records are parsed from text only.
DEAD = 4194000
CAPTURED = {
    # chmod("f") with cwd /opt/corral-erofs-proto (coreutils: fchmodat)
    "chmod_rel": f"""\
1300 audit(1796123431.399:4441): arch=c000003e syscall=268 success=no exit=-30 a0=ffffff9c a1=5619384f1c20 a2=180 a3=7f4576fedfb8 items=1 ppid={DEAD} pid={DEAD} auid=4294967295 uid=0 gid=0 euid=0 suid=0 fsuid=0 egid=0 sgid=0 fsgid=0 tty=(none) ses=4294967295 comm="chmod" exe="/usr/bin/chmod" key="corral-erofs"
1307 audit(1796123431.399:4441): cwd="/opt/corral-erofs-proto"
1302 audit(1796123431.399:4441): item=0 name="f" inode=1523787 dev=fe:00 mode=0100644 ouid=0 ogid=0 rdev=00:00 nametype=NORMAL cap_fp=0 cap_fi=0 cap_fe=0 cap_fver=0 cap_frootid=0
1320 audit(1796123431.399:4441): """,
    # open("/opt/corral-erofs-proto/sub2/../new", O_WRONLY|O_CREAT): only the parent is logged
    "create": f"""\
1300 audit(1796123535.015:4541): arch=c000003e syscall=257 success=no exit=-30 a0=ffffff9c a1=7f3a1c0a5f50 a2=41 a3=1b6 items=1 ppid={DEAD} pid={DEAD} auid=4294967295 uid=0 gid=0 euid=0 suid=0 fsuid=0 egid=0 sgid=0 fsgid=0 tty=(none) ses=4294967295 comm="python3" exe="/usr/bin/python3.11" key="corral-erofs"
1307 audit(1796123535.015:4541): cwd="/opt/corral-erofs-proto/sub2"
1302 audit(1796123535.015:4541): item=0 name="/opt/corral-erofs-proto/sub2/../" inode=1523786 dev=fe:00 mode=040755 ouid=0 ogid=0 rdev=00:00 nametype=PARENT cap_fp=0 cap_fi=0 cap_fe=0 cap_fver=0 cap_frootid=0
1320 audit(1796123535.015:4541): """,
    # rename("/opt/corral-erofs-proto/f", "/opt/corral-erofs-proto/sub2/g")
    "rename": f"""\
1300 audit(1796123535.015:4546): arch=c000003e syscall=82 success=no exit=-30 a0=7f3a1c0a6030 a1=7f3a1c0a60b0 a2=0 a3=0 items=2 ppid={DEAD} pid={DEAD} auid=4294967295 uid=0 gid=0 euid=0 suid=0 fsuid=0 egid=0 sgid=0 fsgid=0 tty=(none) ses=4294967295 comm="python3" exe="/usr/bin/python3.11" key="corral-erofs"
1307 audit(1796123535.015:4546): cwd="/opt/corral-erofs-proto/sub2"
1302 audit(1796123535.015:4546): item=0 name="/opt/corral-erofs-proto/sub2/" inode=1523715 dev=fe:00 mode=040755 ouid=0 ogid=0 rdev=00:00 nametype=PARENT cap_fp=0 cap_fi=0 cap_fe=0 cap_fver=0 cap_frootid=0
1302 audit(1796123535.015:4546): item=1 name="/opt/corral-erofs-proto/" inode=1523786 dev=fe:00 mode=040755 ouid=0 ogid=0 rdev=00:00 nametype=PARENT cap_fp=0 cap_fi=0 cap_fe=0 cap_fver=0 cap_frootid=0
1320 audit(1796123535.015:4546): """,
    # fchmod(5, 0600): no name, the inode only
    "fchmod": f"""\
1300 audit(1796123535.015:4544): arch=c000003e syscall=91 success=no exit=-30 a0=5 a1=180 a2=0 a3=0 items=1 ppid={DEAD} pid={DEAD} auid=4294967295 uid=0 gid=0 euid=0 suid=0 fsuid=0 egid=0 sgid=0 fsgid=0 tty=(none) ses=4294967295 comm="python3" exe="/usr/bin/python3.11" key="corral-erofs"
1307 audit(1796123535.015:4544): cwd="/opt/corral-erofs-proto/sub2"
1302 audit(1796123535.015:4544): item=0 name=(null) inode=1523787 dev=fe:00 mode=0100644 ouid=0 ogid=0 rdev=00:00 nametype=NORMAL cap_fp=0 cap_fi=0 cap_fe=0 cap_fver=0 cap_frootid=0
1320 audit(1796123535.015:4544): """,
    # rm -d sub2 (unlinkat AT_REMOVEDIR)
    "rmdir": f"""\
1300 audit(1796123431.403:4449): arch=c000003e syscall=263 success=no exit=-30 a0=ffffff9c a1=55dc67ad0bf0 a2=200 a3=7f3571e5ff80 items=1 ppid={DEAD} pid={DEAD} auid=4294967295 uid=0 gid=0 euid=0 suid=0 fsuid=0 egid=0 sgid=0 fsgid=0 tty=(none) ses=4294967295 comm="rm" exe="/usr/bin/rm" key="corral-erofs"
1307 audit(1796123431.403:4449): cwd="/opt/corral-erofs-proto"
1302 audit(1796123431.403:4449): item=0 name="/opt/corral-erofs-proto" inode=1523786 dev=fe:00 mode=040755 ouid=0 ogid=0 rdev=00:00 nametype=PARENT cap_fp=0 cap_fi=0 cap_fe=0 cap_fver=0 cap_frootid=0
1320 audit(1796123431.403:4449): """,
}


def _feed(ln, text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        typ, rest = line.split(" ", 1)
        out += ln.feed_text(int(typ), rest)
    return out


def test_parser_on_captured_erofs_records():
    ln = auditlink.AuditLink.detached()
    got = {k: _feed(ln, t) for k, t in CAPTURED.items()}
    assert {k: [(r["op"], r["target"], r["syscall"]) for r in v] for k, v in got.items()} == {
        "chmod_rel": [("setattr", "/opt/corral-erofs-proto/f", "fchmodat")],
        "create": [("create", "/opt/corral-erofs-proto", "openat")],
        "rename": [("rename_from", "/opt/corral-erofs-proto", "rename")],
        "fchmod": [("setattr", "fd 5", "fchmod")],
        "rmdir": [("rmdir", "/opt/corral-erofs-proto", "unlinkat")],
    }
    r = got["chmod_rel"][0]
    assert (r["kind"], r["verdict"], r["backend"], r["errno"], r["rule"]) == (
        "file", "deny", "mount", "EROFS", "read-only outside allow_write (mount view)")
    assert (r["pid"], r["uid"], r["comm"], r["exe"], r["time"]) == (
        DEAD, 0, "chmod", "/usr/bin/chmod", 1796123431.399)
    assert (r["dev"], r["ino"], r["nametype"]) == ("fe:00", "1523787", "NORMAL")
    assert r["raw"].count("\n") == 2 and r["raw"].startswith("type=1300 audit(")
    assert got["rename"][0]["paths"] == ["/opt/corral-erofs-proto/sub2", "/opt/corral-erofs-proto"]


def test_parser_keeps_erofs_records_of_sessions_only():
    """The rule matches every process on the host: with a cgroup prefix, a
    record whose process (and parent) cgroup is unknown or elsewhere is dropped."""
    ln = auditlink.AuditLink.detached(cgroup_prefix="/corral-nobody")
    assert _feed(ln, CAPTURED["chmod_rel"]) == []
    mine = CAPTURED["chmod_rel"].replace(f"pid={DEAD}", f"pid={os.getpid()}")
    assert _feed(ln, mine) == []                  # pytest's cgroup is not under the prefix
    ln = auditlink.AuditLink.detached(cgroup_prefix=auditlink.read_cgroup(os.getpid()))
    recs = _feed(ln, mine.replace(f" pid={os.getpid()}", f" pid={DEAD}"))  # gone: its parent's
    assert [(r["op"], r["cgroup"], r["cgroup_from"]) for r in recs] == [
        ("setattr", auditlink.read_cgroup(os.getpid()), "ppid")]


def test_other_syscall_records_and_landlock_path_records():
    """A SYSCALL/PATH/CWD group without our key is not a record; a Landlock
    denial that now comes with CWD/PATH records keeps Landlock's own target."""
    ln = auditlink.AuditLink.detached()
    other = CAPTURED["chmod_rel"].replace(' key="corral-erofs"', " key=(null)")
    assert _feed(ln, other) == [] and ln.flush(force=True) == []
    landlock = f"""\
1423 audit(1796124000.100:5000): domain=1a1ec05e1 blockers=fs.read_file path="/srv/secret file" dev="vda" ino=77
1300 audit(1796124000.100:5000): arch=c000003e syscall=257 success=no exit=-13 a0=ffffff9c a1=7ffd a2=0 a3=0 items=1 ppid={DEAD} pid={DEAD} auid=4294967295 uid=0 gid=0 euid=0 suid=0 fsuid=0 egid=0 sgid=0 fsgid=0 tty=(none) ses=4294967295 comm="cat" exe="/usr/bin/cat" key=(null)
1307 audit(1796124000.100:5000): cwd="/srv"
1302 audit(1796124000.100:5000): item=0 name="secret file" inode=77 dev=fe:00 mode=0100600 ouid=0 ogid=0 rdev=00:00 nametype=NORMAL cap_fp=0 cap_fi=0 cap_fe=0 cap_fver=0 cap_frootid=0
1320 audit(1796124000.100:5000): """
    recs = _feed(ln, landlock)
    assert [(r["backend"], r["op"], r["target"], r["pid"], r["syscall"]) for r in recs] == [
        ("landlock", "open_read", "/srv/secret file", DEAD, "openat")]
    assert "type=1302" in recs[0]["raw"] and "type=1307" in recs[0]["raw"]


def test_rate_limit_applies_to_erofs_records():
    ln = auditlink.AuditLink.detached(rate=1, burst=3)
    out = []
    for i in range(10):
        out += _feed(ln, CAPTURED["chmod_rel"].replace(":4441)", f":{9000 + i})"))
    assert [r["op"] for r in out] == ["setattr"] * 3
    summary = []
    ln._rate_summaries(summary, time.monotonic() + 1.5)
    assert [(r["kind"], r["count"]) for r in summary] == [("rate", 7)]
