"""Backend-independent file-policy test suite.

A backend provides a *runner*::

    run(policy: dict, argv: list[str]) -> (returncode, stdout, stderr)

that runs ``argv`` confined by the file ``policy`` (keys deny_read,
allow_read, allow_write, deny_write; absolute canonical paths). The suite
builds a fresh tree for every case *outside* the session, runs a small Python
probe inside it and compares what the probe observed with the expectation.

Usage from a backend's pytest module::

    from fspolicy_suite import CASES, run_case
    @pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
    def test_fspolicy(case, tmp_path):
        run_case(case, my_runner, "landlock", tmp_path)

Expectations are "OK" (operation succeeded) or "DENIED" (failed with one of
DENIED_ERRNOS). Where a backend legitimately differs, BACKEND_DIFFERENCES
holds the backend's expectation with a one-line reason; nothing else in this
file knows about any backend. The errno actually observed for each case is
kept in OBSERVED[backend][case] so each backend's errno can be reported.
"""
from __future__ import annotations

import json
import os
import sys
import textwrap
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

DENIED_ERRNOS = {"EACCES", "EPERM", "EXDEV", "EROFS", "EBUSY"}   # EBUSY: a mount point

# backend -> case name -> (expected, reason)
BACKEND_DIFFERENCES: dict[str, dict[str, tuple[str, str]]] = {
    "landlock": {
        "hardlink_preexisting_to_denied": (
            "OK", "Landlock is path based: a link made before the session from an allowed "
                  "directory is just another allowed path to the same inode"),
        "chmod_outside_allow_write": (
            "OK", "Landlock does not mediate chmod/chown/utimes/xattr (DAC still applies)"),
        "chmod_in_deny_write": (
            "OK", "Landlock does not mediate chmod/chown/utimes/xattr (DAC still applies)"),
        "create_in_dir_on_complement_path": (
            "DENIED", "deny_write inside allow_write is a complement: directories on the path "
                      "to the denied one get no create right (fails closed)"),
        "create_file_and_dir_at_writable_root": (
            ["DENIED", "DENIED", "ENOENT"], "Landlock alone (--strict-protect): the missing "
            "deny_write path freezes its parent; `corral run` adds the watch (backend 'host')"),
        "write_then_rename_at_writable_root": (
            ["DENIED", "DENIED"], "Landlock alone: as above (each save makes a new name at "
            "the root first)"),
    },
    # What `corral run` sets up on this host: the mount view (read-only outside
    # allow_write, deny_read hidden, deny_write binds), Landlock, and corrald's
    # watch of missing protected names.
    "host": {
        "hardlink_preexisting_to_denied": (
            "OK", "Landlock is path based and the mount view hides the denied directory, not "
                  "a link made before the session elsewhere"),
        "hardlink_preexisting_in_parent_of_denied": (
            ["OK", "DENIED"], "as hardlink_preexisting_to_denied: the link in work/ predates "
                              "the session; the denied directory itself stays hidden"),
        "mkdir_denied_not_yet_existing": (
            "OK", "made, then moved to quarantine by corrald within ~1 ms "
                  "(protected_name_created_at_root_never_stays checks it never stays)"),
        "protected_name_created_at_root_never_stays": (
            ["OK", "OK"], "made, then quarantined by corrald: it never stays"),
    },
    "bpf-lsm": {},
}

Runner = Callable[[dict, list], tuple]


@dataclass
class Case:
    name: str
    code: str                     # probe body; use {B} for the base dir
    expect: str | list            # "OK"/"DENIED" or a list for multi-result probes
    doc: str = ""
    during: Callable | None = field(default=None, repr=False)  # run outside while the probe waits
    policy_update: dict | None = None   # merged into the layout's policy (lists extended)


OBSERVED: dict[str, dict[str, list]] = {}

PROBE_PRELUDE = textwrap.dedent(r"""
    import ctypes, errno, json, os, sys, time
    RESULTS = []
    def rec(fn):
        try:
            fn()
            RESULTS.append("OK")
        except OSError as e:
            RESULTS.append(errno.errorcode.get(e.errno, str(e.errno)))
    def read(p):
        with open(p, "rb") as f:
            f.read(1)
    def append(p):
        with open(p, "ab") as f:
            f.write(b"x")
    def create(p):
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.close(fd)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    def wait_for(p, timeout=20.0):
        end = time.time() + timeout
        while time.time() < end:
            if os.path.exists(p):
                return True
            time.sleep(0.02)
        return False
""")


def layout(base: str) -> dict:
    """Create the tree (outside any session) and return the policy."""
    B = base

    def mk(p):
        os.makedirs(os.path.join(B, p), exist_ok=True)

    def wr(p, s="data\n"):
        with open(os.path.join(B, p), "w") as f:
            f.write(s)
    for d in ("secret/sub", "secret/pub", "ro", "work/src", "work/.git/hooks", "work/private"):
        mk(d)
    wr("secret/key.txt", "KEY\n")
    wr("secret/sub/inner.txt")
    wr("secret/pub/ok.txt")
    wr("secret.txt", "TOP SECRET\n")
    wr("ro/r.txt")
    wr("work/file.txt")
    wr("work/src/a.txt")
    wr("work/src/y.txt")
    wr("work/.git/config")
    wr("work/.git/hooks/pre-commit", "#!/bin/sh\n")
    wr("work/private/p.txt", "PRIVATE\n")
    # hard links to a denied file made before the session: one in a directory
    # that is allowed as a whole, one in a directory on a complement path
    os.link(os.path.join(B, "secret/key.txt"), os.path.join(B, "work/src/hl_pre"))
    os.link(os.path.join(B, "secret/sub/inner.txt"), os.path.join(B, "work/hl_pre2"))
    # a symlink to a denied file made before the session
    os.symlink(os.path.join(B, "secret/key.txt"), os.path.join(B, "work/src/sym_pre"))
    return {
        "deny_read": [f"{B}/secret", f"{B}/secret.txt", f"{B}/work/private"],
        "allow_read": [f"{B}/secret/pub"],
        "allow_write": [f"{B}/work"],
        "deny_write": [f"{B}/work/.git/hooks", f"{B}/work/blocked_future"],
    }


def _later_file(B: str) -> None:
    # runs outside the session once the probe signalled it is running
    with open(f"{B}/secret/later.txt", "w") as f:
        f.write("created after the session started\n")
    with open(f"{B}/work/src/go", "w") as f:
        f.write("go")


CASES: list[Case] = [
    Case("read_denied_file", 'rec(lambda: read("{B}/secret.txt"))', "DENIED"),
    Case("read_file_in_denied_dir", 'rec(lambda: read("{B}/secret/key.txt"))', "DENIED"),
    Case("read_nested_file_in_denied_dir", 'rec(lambda: read("{B}/secret/sub/inner.txt"))',
         "DENIED"),
    Case("list_denied_dir", 'rec(lambda: os.listdir("{B}/secret"))', "DENIED"),
    Case("allow_read_exception_inside_denied", 'rec(lambda: read("{B}/secret/pub/ok.txt"))',
         "OK"),
    Case("read_elsewhere", 'rec(lambda: read("{B}/ro/r.txt")); rec(lambda: read("/etc/passwd"))',
         ["OK", "OK"]),
    Case("write_existing_in_allow_write", 'rec(lambda: append("{B}/work/file.txt"))', "OK"),
    Case("create_in_allow_write_subdir",
         'rec(lambda: create("{B}/work/src/new.txt")); rec(lambda: read("{B}/work/src/new.txt"))',
         ["OK", "OK"]),
    Case("create_in_dir_on_complement_path", 'rec(lambda: create("{B}/work/new.txt"))', "OK",
         doc="work/ is allowed; only work/.git/hooks below it is denied"),
    Case("write_outside_allow_write", 'rec(lambda: append("{B}/ro/r.txt"))', "DENIED"),
    Case("create_outside_allow_write", 'rec(lambda: create("{B}/ro/new.txt"))', "DENIED"),
    Case("write_in_deny_write", 'rec(lambda: append("{B}/work/.git/hooks/pre-commit"))',
         "DENIED"),
    Case("create_in_deny_write", 'rec(lambda: create("{B}/work/.git/hooks/post-commit"))',
         "DENIED"),
    Case("sibling_of_deny_write_writable", 'rec(lambda: append("{B}/work/.git/config"))', "OK"),
    Case("mkdir_denied_not_yet_existing", 'rec(lambda: os.mkdir("{B}/work/blocked_future"))',
         "DENIED"),
    Case("file_created_later_in_denied_dir",
         'create("{B}/work/src/started")\n'
         'assert wait_for("{B}/work/src/go")\n'
         'rec(lambda: read("{B}/secret/later.txt"))',
         "DENIED", during=_later_file),
    Case("symlink_to_denied_made_inside",
         'os.symlink("{B}/secret/key.txt", "{B}/work/src/sym")\n'
         'rec(lambda: read("{B}/work/src/sym"))', "DENIED"),
    Case("symlink_to_denied_preexisting", 'rec(lambda: read("{B}/work/src/sym_pre"))', "DENIED"),
    Case("hardlink_to_denied_made_inside",
         'def f():\n'
         '    os.link("{B}/secret/key.txt", "{B}/work/src/hl")\n'
         '    read("{B}/work/src/hl")\n'
         'rec(f)', "DENIED"),
    Case("hardlink_preexisting_to_denied", 'rec(lambda: read("{B}/work/src/hl_pre"))', "DENIED"),
    Case("hardlink_preexisting_in_parent_of_denied",
         'rec(lambda: read("{B}/work/hl_pre2")); rec(lambda: read("{B}/secret/sub/inner.txt"))',
         ["DENIED", "DENIED"]),
    Case("proc_self_root", 'rec(lambda: read("/proc/self/root{B}/secret/key.txt"))', "DENIED"),
    Case("proc_self_cwd",
         'def f():\n'
         '    os.chdir("{B}/secret")\n'
         '    read("/proc/self/cwd/key.txt")\n'
         'rec(f)', "DENIED"),
    Case("relative_paths",
         'os.chdir("{B}")\n'
         'rec(lambda: read("secret/key.txt"))\n'
         'rec(lambda: read("./work/../secret.txt"))\n'
         'rec(lambda: read("ro/r.txt"))',
         ["DENIED", "DENIED", "OK"]),
    Case("openat_dirfd",
         'def f():\n'
         '    d = os.open("{B}", os.O_RDONLY | os.O_DIRECTORY)\n'
         '    os.close(os.open("secret/key.txt", os.O_RDONLY, dir_fd=d))\n'
         'rec(f)', "DENIED"),
    Case("rename_out_of_deny_read",
         'def f():\n'
         '    os.rename("{B}/work/private/p.txt", "{B}/work/src/p.txt")\n'
         '    read("{B}/work/src/p.txt")\n'
         'rec(f)', "DENIED"),
    Case("rename_into_deny_write",
         'rec(lambda: os.rename("{B}/work/src/y.txt", "{B}/work/.git/hooks/y"))', "DENIED"),
    Case("rename_out_of_deny_write",
         'rec(lambda: os.rename("{B}/work/.git/hooks/pre-commit", "{B}/work/src/pc"))', "DENIED"),
    Case("rename_into_read_only_area",
         'rec(lambda: os.rename("{B}/work/src/a.txt", "{B}/ro/a.txt"))', "DENIED"),
    Case("opath_then_proc_fd_reopen",
         'def f():\n'
         '    fd = os.open("{B}/secret/key.txt", os.O_PATH)\n'
         '    read(f"/proc/self/fd/{{fd}}")\n'
         'rec(f)', "DENIED"),
    Case("openat2",
         'import struct\n'
         'def oa2(p, resolve):\n'
         '    how = struct.pack("QQQ", os.O_RDONLY, 0, resolve)\n'
         '    buf = ctypes.create_string_buffer(how, len(how))\n'
         '    r = libc.syscall(ctypes.c_long(437), ctypes.c_long(-100), ctypes.c_char_p(p.encode()),\n'
         '                     buf, ctypes.c_size_t(len(how)))\n'
         '    if r < 0:\n'
         '        raise OSError(ctypes.get_errno(), "openat2")\n'
         '    os.close(r)\n'
         'rec(lambda: oa2("{B}/secret/key.txt", 0x02 | 0x04))   # NO_MAGICLINKS|NO_SYMLINKS\n'
         'rec(lambda: oa2("{B}/secret/key.txt", 0))\n'
         'rec(lambda: oa2("{B}/ro/r.txt", 0x04))',
         ["DENIED", "DENIED", "OK"]),
    Case("truncate",
         'rec(lambda: os.truncate("{B}/ro/r.txt", 0))\n'
         'rec(lambda: os.truncate("{B}/work/.git/hooks/pre-commit", 0))\n'
         'rec(lambda: os.truncate("{B}/work/file.txt", 0))',
         ["DENIED", "DENIED", "OK"]),
    Case("chmod_outside_allow_write", 'rec(lambda: os.chmod("{B}/ro/r.txt", 0o600))', "DENIED"),
    Case("chmod_in_deny_write", 'rec(lambda: os.chmod("{B}/work/.git/hooks/pre-commit", 0o755))',
         "DENIED"),
    Case("unlink_in_denied_places",
         'rec(lambda: os.unlink("{B}/ro/r.txt"))\n'
         'rec(lambda: os.unlink("{B}/work/.git/hooks/pre-commit"))\n'
         'rec(lambda: os.rmdir("{B}/work/.git/hooks"))\n'
         'rec(lambda: os.unlink("{B}/work/src/a.txt"))',
         ["DENIED", "DENIED", "DENIED", "OK"]),
    Case("kernel_interfaces_protected_under_allow_write_root",
         'def same_back(p):\n'
         '    v = open(p).read()\n'
         '    with open(p, "w") as f:\n'
         '        f.write(v)\n'
         'rec(lambda: same_back("/proc/sys/vm/swappiness"))\n'
         'def cg():\n'
         '    mnt = [l.split(" - ")[0].split()[4] for l in open("/proc/self/mountinfo")\n'
         '           if l.split(" - ")[1].split()[0] == "cgroup2"][0]\n'
         '    rel = [l.split("::", 1)[1].strip() for l in open("/proc/self/cgroup") if l.startswith("0::")][0]\n'
         '    with open(mnt + rel.rstrip("/") + "/cgroup.procs", "w") as f:\n'
         '        f.write(str(os.getpid()))\n'
         'rec(cg)\n'
         'rec(lambda: append("/dev/null"))\n'
         'rec(lambda: create("{B}/ro/now-writable.txt"))',
         ["DENIED", "DENIED", "OK", "OK"], policy_update={"allow_write": ["/"]},
         doc="sysctls (kernel.core_pattern!) and the cgroup tree stay read-only even for "
             "allow_write=/ : uid 0 without capabilities passes DAC there"),
    Case("create_file_and_dir_at_writable_root",
         'rec(lambda: create("{B}/work/new_at_root.py"))\n'
         'rec(lambda: os.mkdir("{B}/work/newdir"))\n'
         'rec(lambda: create("{B}/work/newdir/x"))',
         ["OK", "OK", "OK"],
         doc="new entries directly in the writable root, while a deny_write path below it "
             "(work/blocked_future) does not exist yet: what an agent does first in a fresh project"),
    Case("write_then_rename_at_writable_root",
         'def f():\n'
         '    with open("{B}/work/hello.py.tmp.123", "w") as fh:\n'
         '        fh.write("print(1)")\n'
         '    os.rename("{B}/work/hello.py.tmp.123", "{B}/work/hello.py")\n'
         '    read("{B}/work/hello.py")\n'
         'rec(f)\n'
         'def g():\n'
         '    with open("{B}/work/file.txt.tmp", "w") as fh:\n'
         '        fh.write("new")\n'
         '    os.rename("{B}/work/file.txt.tmp", "{B}/work/file.txt")\n'
         'rec(g)',
         ["OK", "OK"], doc="an editor's (Claude Code's Write tool's) save at the project root"),
    Case("protected_name_created_at_root_never_stays",
         'rec(lambda: create("{B}/work/blocked_future"))\n'
         'def gone():\n'
         '    end = time.time() + 3\n'
         '    while os.path.lexists("{B}/work/blocked_future") and time.time() < end:\n'
         '        time.sleep(0.01)\n'
         '    if os.path.lexists("{B}/work/blocked_future"):\n'
         '        raise OSError(errno.EEXIST, "still there")\n'
         'rec(gone)',
         ["DENIED", "OK"], doc="a deny_write name that did not exist: never ends up there"),
    Case("devices_usable",
         'rec(lambda: append("/dev/null")); rec(lambda: read("/dev/zero")); rec(lambda: read("/dev/urandom"))',
         ["OK", "OK", "OK"]),
]


def expectation(case: Case, backend: str):
    diff = BACKEND_DIFFERENCES.get(backend, {}).get(case.name)
    return (diff[0] if diff else case.expect), (diff[1] if diff else None)


def _matches(expected: str, got: str) -> bool:
    if expected == "OK":
        return got == "OK"
    if expected == "DENIED":
        return got in DENIED_ERRNOS
    return expected == got


def run_case(case: Case, runner: Runner, backend: str, tmp_path,
             python: str | None = None) -> list:
    """Run one case; raises AssertionError on a mismatch. Returns the results."""
    B = os.path.realpath(str(tmp_path))
    policy = layout(B)
    for k, v in (case.policy_update or {}).items():
        policy[k] = list(policy.get(k, [])) + [p.format(B=B) for p in v]
    code = PROBE_PRELUDE + case.code.format(B=B) + "\nprint(json.dumps(RESULTS))\n"
    argv = [python or sys.executable, "-c", code]
    helper = None
    if case.during is not None:
        def outside():
            end = time.time() + 20
            while time.time() < end and not os.path.exists(f"{B}/work/src/started"):
                time.sleep(0.02)
            case.during(B)
        helper = threading.Thread(target=outside, daemon=True)
        helper.start()
    rc, out, err = runner(policy, argv)
    if helper is not None:
        helper.join(timeout=25)
    assert rc == 0, f"{case.name}: probe failed rc={rc}\nstdout={out}\nstderr={err}"
    lines = [ln for ln in out.splitlines() if ln.startswith("[")]
    assert lines, f"{case.name}: no result\nstdout={out}\nstderr={err}"
    got = json.loads(lines[-1])
    exp, reason = expectation(case, backend)
    exp_list = exp if isinstance(exp, list) else [exp]
    OBSERVED.setdefault(backend, {})[case.name] = got
    assert len(got) == len(exp_list), (case.name, got, exp_list)
    bad = [(i, e, g) for i, (e, g) in enumerate(zip(exp_list, got)) if not _matches(e, g)]
    assert not bad, (f"{case.name} [{backend}]: expected {exp_list}, got {got}"
                     + (f" (backend note: {reason})" if reason else ""))
    return got


def run_all(runner: Runner, backend: str, tmp_root) -> dict:
    """Run every case (outside pytest); returns {case: results or 'FAIL: ...'}."""
    out = {}
    for i, case in enumerate(CASES):
        d = os.path.join(str(tmp_root), f"case{i}")
        os.makedirs(d)
        try:
            out[case.name] = run_case(case, runner, backend, d)
        except AssertionError as e:
            out[case.name] = f"FAIL: {e}"
    return out
