"""Read-only bind mounts for deny_write paths inside writable trees.

Landlock can only grant: "write the project, except .git/hooks" becomes a
complement that also forbids creating anything new directly in the project and
in .git (git's index.lock included). For paths that exist, a private mount
namespace does it exactly: bind each protected path onto itself read-only, and
bind every directory between the writable root and it onto itself, so none of
them can be renamed away (a mount point cannot be renamed or removed: EBUSY).
Landlock then grants the writable tree whole. Paths that do not exist yet stay
with Landlock's complement (fails closed).

Runs in `corral run` after the session is registered and before confine.apply
drops capabilities; seccomp later forbids mount/umount, so the agent cannot
undo any of it. Needs CAP_SYS_ADMIN (root), or an unprivileged user namespace.
"""
from __future__ import annotations

import ctypes
import os
import stat

from corral.kernel.mountinfo import under

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_RELATIME = 1 << 21
# statvfs f_flag bits -> mount flags that must be kept on a remount (locked in a userns)
_ST_TO_MS = {1: MS_RDONLY, 2: MS_NOSUID, 4: MS_NODEV, 8: MS_NOEXEC, 1024: MS_NOATIME,
             2048: MS_NODIRATIME, 4096: MS_RELATIME}

_libc = ctypes.CDLL(None, use_errno=True)


class MountGuardError(RuntimeError):
    pass


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise MountGuardError(f"{what}: {os.strerror(err)}")


def _mount(src, dst, flags, what):
    _check(_libc.mount(src.encode() if src else None, dst.encode(), None,
                       ctypes.c_ulong(flags), None), what)


def sockets(fs: dict | None) -> list[str]:
    """Denied paths that are Unix sockets: Landlock (ABI < 8) does not mediate
    connect(), so a capability-less root agent could still reach e.g. the Docker
    socket. They get /dev/null bound over them."""
    out = []
    for k in ("deny_read", "deny_write"):
        for p in (fs or {}).get(k) or []:
            try:
                if stat.S_ISSOCK(os.stat(p).st_mode) and p not in out:
                    out.append(p)
            except OSError:
                pass
    return out


def plan(fs: dict | None) -> tuple[list[str], list[str]]:
    """(directories to pin, paths to make read-only) for a canonical file policy."""
    if not fs:
        return [], []
    allow = fs.get("allow_write") or []
    pins: list[str] = []
    ro: list[str] = []
    for p in fs.get("deny_write") or []:
        roots = [a for a in allow if under(p, a) and p != a]
        if not roots or not os.path.lexists(p) or os.path.islink(p):
            continue   # not inside a writable tree (Landlock denies it), or absent
        top = min(roots, key=len)
        d = os.path.dirname(p)
        chain = []
        while under(d, top) and d != "/":
            chain.append(d)
            if d == top:
                break
            d = os.path.dirname(d)
        for c in reversed(chain):
            if c not in pins:
                pins.append(c)
        ro.append(p)
    # A pin below a read-only path is pointless (and would be shadowed): drop it.
    pins = [d for d in pins if not any(under(d, r) for r in ro)]
    ro = [r for r in ro if not any(under(r, o) and r != o for o in ro)]
    return pins, ro


def _enter_namespace() -> str:
    if _libc.unshare(CLONE_NEWNS) == 0:
        return "mount namespace"
    uid, gid = os.getuid(), os.getgid()
    _check(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNS), "unshare(user+mount namespace)")
    with open("/proc/self/setgroups", "w") as fh:
        fh.write("deny")
    with open("/proc/self/uid_map", "w") as fh:
        fh.write(f"{uid} {uid} 1")
    with open("/proc/self/gid_map", "w") as fh:
        fh.write(f"{gid} {gid} 1")
    return "user+mount namespace"


def _bind(path: str, readonly: bool) -> None:
    _mount(path, path, MS_BIND | MS_REC, f"bind {path}")
    if readonly:
        st = os.statvfs(path)
        keep = 0
        for bit, ms in _ST_TO_MS.items():
            if st.f_flag & bit:
                keep |= ms
        _mount(None, path, MS_BIND | MS_REMOUNT | MS_RDONLY | keep, f"read-only {path}")


def apply(fs: dict | None, unix: dict | None = None) -> dict:
    """Set up the namespace; returns what was done and the file policy Landlock
    still has to enforce (deny_write entries handled here are removed)."""
    pins, ro = plan(fs)
    masked = sockets(fs)
    if not ro and not masked:
        return {"mountguard": False, "policy": fs}
    how = _enter_namespace()
    # Nothing we mount may leak back to the host's mount table.
    _mount(None, "/", MS_REC | MS_PRIVATE, "make / private")
    for d in pins:
        _bind(d, readonly=False)
    for p in ro:
        _bind(p, readonly=True)
    for p in masked:
        _mount("/dev/null", p, MS_BIND, f"mask socket {p}")
        _mount(None, p, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
               f"read-only mask {p}")
    # Our cwd still points into the old mounts; relative paths must see the new ones.
    os.chdir(os.getcwd())
    done = set(ro)
    rest = dict(fs)
    rest["deny_write"] = [p for p in fs.get("deny_write") or []
                          if p not in done and not any(under(p, r) for r in done)]
    return {"mountguard": True, "namespace": how, "read_only": ro, "pinned": pins,
            "masked_sockets": masked, "policy": rest}
