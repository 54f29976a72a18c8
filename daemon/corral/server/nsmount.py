"""Mounts made by the daemon inside a session's mount namespace.

`corral run` builds the session's mount view (client/mountguard.py) in a
private mount namespace; later changes to it come from the daemon:
unixwatch.py masks Unix sockets bound after the session started, namewatch.py
makes read-only the protected names created outside the session and hides
the secret (deny_read) names created outside it (secretwatch.py).

setns(CLONE_NEWNS) refuses a multi-threaded caller and the daemon is
multi-threaded, so every change runs in a short-lived fresh interpreter
(`python -I -S`, ~15 ms here) that inherits a pidfd of a session process
(pass_fds), enters that process's mount namespace through it, and refuses to
go on if that namespace is its own (the session has no view of its own: a
mount there would change the host's). For each operation it opens the
destination (O_PATH, after setns: the session's view of the path), checks
that it is the object the daemon expects (st_ino, st_dev), and mounts on that
very descriptor with the new mount API: open_tree(OPEN_TREE_CLONE) of the
source, mount_setattr() of the detached copy (read-only, nosuid, nodev,
noexec) when asked, then move_mount() onto the descriptor. So the path
cannot be swapped between the check and the mount, and a read-only mount is
never attached writable, even for an instant. A "mask" operation hides the
destination as mountguard hides an existing deny_read path: a directory
under a new empty mode-000 tmpfs (fsopen/fsconfig/fsmount, read-only, nosuid,
nodev, noexec from the start: mountguard.MASK_TMPFS), anything else under the
refusal file (the root-owned mode-0000 file, bound read-only); which one is
decided on the descriptor, after the check.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from corral.kernel import cgroups

log = logging.getLogger("corral.nsmount")

# argv[1]: JSON list of {"src", "dst", "readonly", "recursive", "expect": [ino, dev] | null}
# or {"mask": refusal file, "tmpfs": [[key, value]...], "dst", "expect"};
# argv[2]: the pidfd. Prints a JSON list: "ok", "mismatch", "gone" (dst does not
# exist there) or an error, one per operation.
_HELPER = r"""
import ctypes, json, os, stat, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
ops, pidfd = json.loads(sys.argv[1]), int(sys.argv[2])
def sc(nr, *a):
    r = libc.syscall(nr, *a)
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r
class Attr(ctypes.Structure):
    _fields_ = [("set", ctypes.c_uint64), ("clr", ctypes.c_uint64), ("prop", ctypes.c_uint64),
                ("userns", ctypes.c_uint64)]
host = os.stat("/proc/self/ns/mnt").st_ino
if libc.setns(pidfd, 0x00020000) != 0:
    sys.exit("setns: " + os.strerror(ctypes.get_errno()))
if os.stat("/proc/self/ns/mnt").st_ino == host:
    sys.exit(3)                                     # no view of its own: never mount on the host
E, REC = b"", 0x8000                                # AT_EMPTY_PATH is 0x1000
LOCKED = 1 | 2 | 4 | 8                              # MOUNT_ATTR_RDONLY|NOSUID|NODEV|NOEXEC
def empty_tmpfs(fds, opts):
    fs = sc(430, b"tmpfs", 1)                       # fsopen(FSOPEN_CLOEXEC)
    fds.append(fs)
    for k, v in opts:
        sc(431, fs, 1, k.encode(), v.encode(), 0)   # fsconfig(FSCONFIG_SET_STRING)
    sc(431, fs, 6, None, None, 0)                   # fsconfig(FSCONFIG_CMD_CREATE)
    return sc(432, fs, 1, LOCKED)                   # fsmount(FSMOUNT_CLOEXEC): never writable
out = []
for op in ops:
    fds = []
    try:
        try:
            dst = os.open(op["dst"], os.O_PATH | os.O_CLOEXEC)
        except FileNotFoundError:
            out.append("gone")                      # removed meanwhile: nothing to cover
            continue
        fds.append(dst)
        st = os.fstat(dst)
        if op.get("expect") and [st.st_ino, st.st_dev] != list(op["expect"]):
            out.append("mismatch")                  # not that object here: nothing to do
            continue
        rec = REC if op.get("recursive") else 0
        if op.get("mask") and stat.S_ISDIR(st.st_mode):
            tree = empty_tmpfs(fds, op["tmpfs"])
        else:
            src = dst
            if op.get("mask") or op["src"] != op["dst"]:
                src = os.open(op.get("mask") or op["src"], os.O_PATH | os.O_CLOEXEC)
                fds.append(src)
            tree = sc(428, src, E, 1 | os.O_CLOEXEC | 0x1000 | rec)  # open_tree(OPEN_TREE_CLONE)
        fds.append(tree)
        if op.get("readonly") or op.get("mask"):
            a = Attr(LOCKED, 0, 0, 0)
            sc(442, tree, E, 0x1000 | rec, ctypes.byref(a), ctypes.sizeof(a))
        sc(429, tree, E, dst, E, 0x04 | 0x40)       # move_mount(F_EMPTY_PATH | T_EMPTY_PATH)
        out.append("ok")
    except OSError as e:
        out.append(f"{op['dst']}: {e.strerror}")
    finally:
        for fd in fds:
            os.close(fd)
print(json.dumps(out))
"""

NOT_A_VIEW = "the session has no mount namespace of its own"


def session_pidfd(sessions, s) -> int:
    """A pidfd of a live process of session `s` (the leader's pin if it lives),
    or -1. Pinned first, then confirmed in the session's cgroup, so a pid
    reused meanwhile is never the one whose namespace is entered."""
    if getattr(s, "leader_fd", -1) >= 0 and s.leader_alive():
        return os.dup(s.leader_fd)
    rel = "/" + str(Path(s.cgroup).relative_to(cgroups.cgroup2_mount()))
    for pid in cgroups.pids(Path(s.cgroup)):
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            continue
        if cgroups.cgroup_of(pid) == rel:
            return fd
        os.close(fd)
    return -1


def pid_of(pidfd: int) -> int | None:
    """The pid a pidfd names (None once the process has been reaped)."""
    try:
        with open(f"/proc/self/fdinfo/{pidfd}") as fh:
            for line in fh:
                if line.startswith("Pid:"):
                    pid = int(line.split()[1])
                    return pid if pid > 0 else None
    except (OSError, ValueError):
        pass
    return None


def bind_many(pidfd: int, ops: list[dict]) -> list[str]:
    """Run `ops` (dicts: src, dst, readonly, recursive, expect; or mask_op())
    in the mount namespace of the process `pidfd` names, in order, in one
    helper. Returns one result per operation: "ok", "mismatch" (dst is not
    `expect` there: nothing mounted), "gone" (no dst there) or the error."""
    if not ops:
        return []
    t0 = time.monotonic()
    try:
        p = subprocess.run([sys.executable, "-I", "-S", "-c", _HELPER, json.dumps(ops), str(pidfd)],
                           pass_fds=(pidfd,), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as e:
        return [f"helper: {e}"] * len(ops)
    log.debug("nsmount helper: %d operation(s) in %.1f ms", len(ops), (time.monotonic() - t0) * 1e3)
    if p.returncode == 3:
        return [NOT_A_VIEW] * len(ops)
    try:
        res = json.loads(p.stdout.strip().splitlines()[-1])
        if isinstance(res, list) and len(res) == len(ops):
            return [str(r) for r in res]
    except (ValueError, IndexError):
        pass
    why = (p.stderr.strip() or f"helper exited {p.returncode}")[-200:]
    return [why] * len(ops)


def bind_in(pidfd: int, src: str, dst: str, readonly: bool,
            expect: tuple[int, int] | None = None, recursive: bool = False) -> bool:
    """Bind `src` onto `dst` inside the mount namespace of the process `pidfd`
    names (read-only, nosuid, nodev, noexec if `readonly`), if `dst` there is
    the object `expect` = (st_ino, st_dev). True if mounted."""
    r = bind_many(pidfd, [{"src": src, "dst": dst, "readonly": readonly, "recursive": recursive,
                           "expect": list(expect) if expect else None}])[0]
    if r not in ("ok", "mismatch", "gone"):
        log.warning("bind %s onto %s in a session's mount namespace: %s", src, dst, r)
    return r == "ok"


def mask_op(dst: str, expect: tuple[int, int] | list | None) -> dict:
    """The operation that hides `dst` in a session's view as mountguard hides
    an existing deny_read path (an empty mode-000 tmpfs over a directory, the
    refusal file over anything else), if `dst` there is `expect`."""
    from corral.client import mountguard
    opts = [kv.split("=", 1) for kv in mountguard.MASK_TMPFS[2].split(",")]
    return {"mask": mountguard.refusal_file(), "dst": dst,
            "tmpfs": [["source", mountguard.MASK_TMPFS[0]]] + opts,
            "expect": list(expect) if expect else None}


def mountpoints(pid: int) -> set[str] | None:
    """The mount points in the mount namespace of `pid`, as it sees them."""
    try:
        with open(f"/proc/{pid}/mountinfo") as fh:
            return {_unescape(line.split()[4]) for line in fh if len(line.split()) > 4}
    except OSError:
        return None


def _unescape(s: str) -> str:
    for code, ch in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        s = s.replace(code, ch)
    return s
