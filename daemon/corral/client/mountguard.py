"""The session's mount view: what the kernel's mount table lets it change and reach.

`corral run` builds it in a private mount namespace after the session is
registered and before confine.apply drops capabilities; seccomp then forbids
mount/umount/mount_setattr/move_mount, so the agent cannot undo any of it.

* **Read-only outside allow_write.** Every mount is made read-only
  (mount_setattr AT_RECURSIVE), then each writable tree is bound onto itself and
  its mounts made writable again where they were before. Landlock does not
  mediate chmod, chown, utimes, setxattr or truncate by path; a read-only mount
  refuses them all (EROFS), the way bubblewrap's read-only root does. Device
  nodes, pipes and sockets stay usable on a read-only mount.
* **deny_write inside a writable tree** (existing paths): bound onto itself
  read-only, and every directory between the writable root and it bound onto
  itself, so none of them can be renamed away (a mount point cannot be renamed
  or removed: EBUSY). Landlock then grants the writable tree whole. Paths that do
  not exist yet stay with Landlock's complement (fails closed).
* **Unix sockets of processes outside the session** (every pathname socket
  bound on the host when the session starts, from the kernel's unix_diag dump,
  except the daemon's own and those in the policy's unix.allow): a root-owned
  mode-0000 file is bound over each. connect()/sendto() through any spelling (a
  symlink, a relative path, /proc/self/root/..., a directory renamed by the
  session) resolves to the mount and fails with EACCES: the kernel checks write
  permission on the file it found before it looks for a socket. Sockets named
  deny_read/deny_write get the same mask.

Needs CAP_SYS_ADMIN (root), or an unprivileged user namespace.
"""
from __future__ import annotations

import ctypes
import os
import stat

from corral.kernel import mountinfo
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


SYS_MOUNT_SETATTR = 442
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _setattr(path: str, set_: int = 0, clr: int = 0, recursive: bool = False) -> None:
    attr = _MountAttr(set_, clr, 0, 0)
    flags = AT_RECURSIVE if recursive else 0
    _check(_libc.syscall(SYS_MOUNT_SETATTR, -100, path.encode(), flags, ctypes.byref(attr),
                         ctypes.sizeof(attr)), f"mount_setattr {path}")


# -- Unix sockets -------------------------------------------------------------------
def refusal_file() -> str:
    """The file bound over refused sockets: owned by root, mode 0000, so a
    connect() through it fails with EACCES (write permission is checked before
    the kernel looks for a socket) for any agent without CAP_DAC_OVERRIDE; and
    with it still ECONNREFUSED, never a connection. Made by the daemon at start
    (ensure_refusal_file), or here when we are root."""
    from corral import config
    return str(config.RUN_DIR / mountinfo.REFUSAL_NAME)


def ensure_refusal_file() -> str:
    path = refusal_file()
    try:
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode) and st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0:
            return path
        os.unlink(path)
    except FileNotFoundError:
        pass
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0)
    os.fchmod(fd, 0)
    os.close(fd)
    return path


def git_template() -> str:
    """An empty git template directory for sessions (GIT_TEMPLATE_DIR): `git init`
    in a session then makes no .git/hooks, a protected name corrald would
    otherwise quarantine while git is still copying its sample hooks into it."""
    from corral import config
    return str(config.RUN_DIR / "git-template")


def ensure_git_template() -> str:
    path = git_template()
    os.makedirs(path, mode=0o755, exist_ok=True)
    return path


def foreign_sockets(fs: dict | None, unix: dict | None) -> dict:
    """Which pathname sockets to mask: {"mask": [paths], "skipped": [why...]}:
    every socket bound on the host now (unixdiag.foreign) but the daemon's
    control socket and the policy's unix.allow, plus the denied-socket entries."""
    from corral import config
    from corral.kernel import unixdiag
    mask, skipped = unixdiag.foreign((unix or {}).get("allow") or [], [str(config.SOCKET)])
    for p in denied_sockets(fs):
        if p not in mask:
            mask.append(p)
    return {"mask": mask, "skipped": skipped}


def denied_sockets(fs: dict | None) -> list[str]:
    """Denied paths that are Unix sockets (Landlock does not mediate connect())."""
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


_VIEW_BUILT = False      # this process is in the private namespace apply() made


def view_built() -> bool:
    return _VIEW_BUILT


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


def read_masks(fs: dict | None) -> list[str]:
    """deny_read paths the mount view hides: those that exist (not symlinks:
    the canonical path is the object), outermost, without an allow_read
    exception inside (Landlock keeps those: a mask would hide the exception)."""
    from corral.kernel.mountinfo import outermost
    fs = fs or {}
    allow = fs.get("allow_read") or []
    out = []
    for p in sorted(fs.get("deny_read") or [], key=len):
        if not os.path.lexists(p) or os.path.islink(p) or stat.S_ISSOCK(os.lstat(p).st_mode):
            continue            # missing (Landlock), or a socket (masked as one)
        if any(under(a, p) for a in allow):
            continue
        out.append(p)
    return outermost(out)


def _bind_refusal(refusal: str, p: str) -> bool:
    """The refusal file bound read-only over `p` (a denied file, a foreign
    socket). False if `p` is gone (unlinked since it was listed): nothing to reach."""
    if _libc.mount(refusal.encode(), p.encode(), None, ctypes.c_ulong(MS_BIND), None) != 0:
        if ctypes.get_errno() == 2:     # ENOENT
            return False
        _check(-1, f"mask {p}")
    _mount(None, p, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
           f"read-only mask {p}")
    return True


# The mount over a denied directory: (source, type, options). Also what corrald
# mounts over a deny_read name made after the session started (nsmount.mask_op).
MASK_TMPFS = (mountinfo.MASK_SOURCE, "tmpfs", "mode=000,size=4k,nr_inodes=1")


def _mask_read(p: str, refusal: str) -> None:
    """An empty, read-only, mode-0000 mount over a denied path: nothing under it
    is reachable by any name through it, nothing created in it later either, and
    it cannot be renamed or removed (EBUSY)."""
    flags = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC
    if os.path.isdir(p):
        src, fstype, opts = (x.encode() for x in MASK_TMPFS)
        _check(_libc.mount(src, p.encode(), fstype, ctypes.c_ulong(flags), opts), f"mask {p}")
    elif not _bind_refusal(refusal, p):
        raise MountGuardError(f"mask {p}: {os.strerror(2)}")


def writable_roots(fs: dict | None) -> list[str]:
    """The allow_write trees that exist, outermost first, none inside another."""
    from corral.kernel.mountinfo import outermost
    roots = [p for p in sorted((fs or {}).get("allow_write") or [], key=len) if os.path.lexists(p)]
    return outermost([os.path.realpath(p) for p in roots])


def _read_only_view(roots: list[str]) -> list[str]:
    """Every mount read-only, then each writable root bound onto itself and its
    mounts that were writable before made writable again. Returns the roots."""
    from corral.kernel import mountinfo
    before = {m.mountpoint: m for m in mountinfo.mounts(missing_ok=False)}

    def was_rw(mp: str) -> bool:
        m = before.get(mp)
        return m is not None and "ro" not in m.options.split(",")

    for r in roots:
        _mount(r, r, MS_BIND | MS_REC, f"bind {r}")
    _setattr("/", set_=MOUNT_ATTR_RDONLY, recursive=True)
    for r in roots:
        # The root's own mount: writable if the mount it lives on was.
        home = mountinfo.mount_of(r, list(before.values()))
        if home is not None and "ro" not in home.options.split(","):
            _setattr(r, clr=MOUNT_ATTR_RDONLY)
        for mp in sorted(before):
            if mp != r and under(mp, r) and was_rw(mp):
                try:
                    _setattr(mp, clr=MOUNT_ATTR_RDONLY)
                except MountGuardError:
                    pass    # shadowed or gone: it stays read-only (the safe side)
    return roots


def join(fs: dict | None, ns_path: str, expect_ino: int) -> dict:
    """Enter a session's existing mount view (the one its `corral session start`
    holder built) instead of building one: `corral exec`'s Python path as root,
    so its commands share the view corrald keeps up to date (Unix sockets bound
    later, protected names made outside). `expect_ino` is the view's namespace
    inode as corrald saw it: anything else (a reused pid) is refused. Returns
    what apply() returns, for the same Landlock step."""
    global _VIEW_BUILT
    fd = os.open(ns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if os.fstat(fd).st_ino != expect_ino:
            raise MountGuardError(f"{ns_path} is not the session's mount view (its process "
                                  "is gone?)")
        cwd = os.getcwd()
        _check(_libc.setns(fd, CLONE_NEWNS), "setns(the session's mount view)")
    finally:
        os.close(fd)
    _VIEW_BUILT = True
    os.chdir(cwd)           # setns put us at the view's root: the same directory, in it
    pins, ro = plan(fs)
    # Only what this view really holds read-only or hidden leaves Landlock's
    # lists: a denied path made after the holder built it is a mount point here
    # only if corrald covered it (namewatch); any other stays with Landlock,
    # which refuses it by its existing path (it would be open otherwise).
    from corral.kernel import mountinfo
    here = {m.mountpoint for m in mountinfo.mounts(missing_ok=False)}
    ro = [p for p in ro if p in here]
    hidden = [p for p in read_masks(fs) if p in here]
    roots = writable_roots(fs) if fs is not None else []
    return {"mountguard": True, "namespace": "joined", "read_only": ro, "pinned": pins,
            "read_only_view": bool(roots) and "/" not in roots,
            "writable": roots, "hidden": hidden, "masked_sockets": [], "sockets_skipped": [],
            "policy": _rest(fs, ro, hidden)}


def _rest(fs: dict | None, ro: list[str], hidden: list[str]) -> dict | None:
    """What Landlock still enforces once the view holds `ro` read-only and
    `hidden` masked."""
    if fs is None:
        return None
    done = set(ro)
    rest = dict(fs)
    rest["deny_write"] = [p for p in fs.get("deny_write") or []
                          if p not in done and not any(under(p, r) for r in done)]
    # Hidden by a mask: Landlock need not refuse them, so it grants their
    # parents whole (files created there later stay readable). Unless another
    # mount reaches the same files (a bind mount of the home): the mask covers
    # one path only, so Landlock keeps refusing, by inode, through every one.
    ms = mountinfo.mounts()
    rest["deny_read"] = [p for p in fs.get("deny_read") or []
                         if not any(under(p, h) for h in hidden) or mountinfo.aliases(p, ms)]
    return rest


def apply(fs: dict | None, unix: dict | None = None, *, read_only_view: bool = True,
          mask_sockets: bool = True, allow_weaker: bool = False) -> dict:
    """Build the session's mount view (module docstring). Returns what was done
    and the file policy Landlock still has to enforce (deny_write entries made
    read-only here are removed).

    `read_only_view`: False when another layer (BPF LSM) decides file writes live
    and a frozen view would block a live widening. `mask_sockets`: False when the
    kernel decides Unix peers itself (BPF LSM)."""
    pins, ro = plan(fs)
    socks = foreign_sockets(fs, unix) if mask_sockets else {"mask": denied_sockets(fs),
                                                              "skipped": []}
    masked = socks["mask"]
    linked = [x for x in socks["skipped"] if "hard-linked" in x]
    if linked and not allow_weaker:
        raise MountGuardError(
            "a Unix socket of a process outside the session has another name (a hard link) "
            "that cannot be found to be masked: " + "; ".join(linked) + ". Remove the extra "
            "link, or start with --allow-weaker to accept that the other name stays reachable")
    roots = writable_roots(fs) if (read_only_view and fs is not None) else []
    ro_view = bool(roots) and "/" not in roots
    hidden = read_masks(fs) if read_only_view else []
    if not ro and not masked and not ro_view and not hidden:
        return {"mountguard": False, "policy": fs, "masked_sockets": [],
                "sockets_skipped": socks["skipped"]}
    refusal = ensure_refusal_file() if os.geteuid() == 0 else refusal_file()
    if (masked or hidden) and not os.path.exists(refusal):
        raise MountGuardError(f"{refusal} is missing: corrald creates it at start; is this "
                              "corral run talking to a corrald of another installation?")
    how = _enter_namespace()
    global _VIEW_BUILT
    _VIEW_BUILT = True
    # Nothing we mount may leak back to the host's mount table.
    _mount(None, "/", MS_REC | MS_PRIVATE, "make / private")
    if ro_view:
        _read_only_view(roots)
    for d in pins:
        _bind(d, readonly=False)
    for p in ro:
        _bind(p, readonly=True)
    for p in hidden:
        _mask_read(p, refusal)
    masked = [p for p in masked if _bind_refusal(refusal, p)]
    # Our cwd still points into the old mounts; relative paths must see the new ones.
    os.chdir(os.getcwd())
    rest = _rest(fs, ro, hidden)
    return {"mountguard": True, "namespace": how, "read_only": ro, "pinned": pins,
            "read_only_view": ro_view, "writable": roots if ro_view else [],
            "hidden": hidden,
            "masked_sockets": masked, "sockets_skipped": socks["skipped"], "policy": rest}
