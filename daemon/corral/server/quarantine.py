"""Moving an entry out of a session's reach: what namewatch.py does with a
protected name the session made (or whose maker it cannot tell).

* Into <root>/<session>/<ns>-<name> (root, 0700 at each level), renamed
  with renameat2 RENAME_NOREPLACE from the parent's descriptor: a symlink is
  moved, never followed, and nothing already quarantined is replaced.
* On another filesystem (EXDEV) copied, then removed if it is still the same
  object: a regular file up to COPY_FILE_MAX bytes (O_NOFOLLOW), a directory
  tree within COPY_TREE_* (symlinks recreated, never followed; fifos,
  sockets and devices counted, not copied), a symlink recreated. A regular
  file's writer may still hold it open: for COPY_FOLLOW seconds the copy is
  made again when the original changes (follow()).
* Beyond MAX_PER_SESSION entries, or without a quarantine directory:
  removed, not kept.

What remains: a copy is only as complete as the original was when it was
last copied (bounded, and not after COPY_FOLLOW); a file replaced while it
was copied is removed too, but the copy is of the first one.
"""
from __future__ import annotations

import ctypes as ct
import errno
import logging
import os
import shutil
import stat
import time
from pathlib import Path

log = logging.getLogger("corral.quarantine")

COPY_FILE_MAX = 1 << 20                  # cross-filesystem quarantine: bytes kept per file
COPY_FOLLOW = 10.0                       # ... and for so many seconds, copied again if it grows
COPY_TREE_BYTES = 8 << 20                # ... per directory tree
COPY_TREE_ENTRIES = 1000
COPY_TREE_DEPTH = 16
MAX_PER_SESSION = 256                    # beyond, entries are removed, not kept
RENAME_NOREPLACE = 1
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

_libc = ct.CDLL(None, use_errno=True)
_libc.renameat2.argtypes = [ct.c_int, ct.c_char_p, ct.c_int, ct.c_char_p, ct.c_uint]


def entry_name(name: str, now_ns: int | None = None) -> str:
    """The quarantined entry's name: when it was taken, then its own name
    (the same name quarantined twice is two entries)."""
    return f"{time.time_ns() if now_ns is None else now_ns}-{name}"


def session_dir(root: Path, sid: str) -> int:
    """A descriptor of <root>/<sid> (each level root's, mode 0700)."""
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    fd = os.open(root.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    for name in (root.name, sid):
        try:
            os.mkdir(name, 0o700, dir_fd=fd)
        except FileExistsError:
            pass
        try:
            nfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
        finally:
            os.close(fd)
        fd = nfd
        st = os.fstat(fd)
        if st.st_uid != 0 or st.st_gid != 0 or stat.S_IMODE(st.st_mode) != 0o700:
            os.fchown(fd, 0, 0)
            os.fchmod(fd, 0o700)
    return fd


def move_out(root: Path, sid: str, parent_fd: int, name: str, st, full: bool,
             path: str) -> tuple[dict, list | None]:
    """Take `name` (in `parent_fd`, lstat()ed as `st`; `path` for messages)
    out of session `sid`'s reach: into its quarantine, or removed when `full`
    or the quarantine directory cannot be had. -> (fields for the record:
    moved_to, how, and what a copy kept; a copy for follow() or None).
    Raises FileNotFoundError when it is gone already, OSError when it could
    not be moved."""
    try:
        qfd = session_dir(root, sid)
    except OSError as e:
        log.error("quarantine directory for %s: %s; removing %s instead", sid, e, path)
        qfd = -1
    try:
        if qfd < 0 or full:
            remove(parent_fd, name, st)
            return {"moved_to": None, "how": "removed",
                    "note": "quarantine full" if qfd >= 0 else "no quarantine directory"}, None
        qname = entry_name(name)
        out = {"moved_to": str(Path(root) / sid / qname)}
        if _libc.renameat2(parent_fd, os.fsencode(name), qfd, os.fsencode(qname),
                           RENAME_NOREPLACE) == 0:
            out["how"] = "rename"
            return out, None
        e = ct.get_errno()
        if e != errno.EXDEV:
            raise OSError(e, os.strerror(e))
        copied = _copy_out(parent_fd, name, st, qfd, qname)
        fd = copied.pop("_fd", -1)
        live = None
        if fd >= 0:     # a writer may still hold it: copied again while it grows
            fst = os.fstat(fd)
            live = [fd, out["moved_to"], time.monotonic() + COPY_FOLLOW,
                    (fst.st_size, fst.st_mtime_ns)]
        out.update(copied)
        out["how"] = "copy"
        return out, live
    finally:
        if qfd >= 0:
            os.close(qfd)


def follow(live: list, final: bool = False) -> None:
    """Cross-filesystem quarantine: what its writer added since, copied again.
    `live`: [fd, copy path, until, (size, mtime)] items from move_out(), kept
    while they are followed; `final`: the last time (all are closed)."""
    now = time.monotonic()
    keep = []
    for item in live:
        fd, path, until, seen = item
        try:
            st = os.fstat(fd)
            if (st.st_size, st.st_mtime_ns) != seen:
                item[3] = (st.st_size, st.st_mtime_ns)
                data = os.pread(fd, COPY_FILE_MAX, 0)
                out = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC)
                try:
                    os.write(out, data)
                finally:
                    os.close(out)
        except OSError as e:
            log.warning("quarantined copy %s: %s", path, e)
            until = 0
        if final or now >= until:
            os.close(fd)
        else:
            keep.append(item)
    live[:] = keep


def remove(parent_fd: int, name: str, st) -> None:
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=parent_fd)
    else:
        os.unlink(name, dir_fd=parent_fd)


def _same(st, parent_fd: int, name: str) -> bool:
    try:
        now = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return (now.st_ino, now.st_dev) == (st.st_ino, st.st_dev)


def _copy_file(src_dir: int, name: str, dst_dir: int, qname: str, limit: int,
               keep: list | None = None) -> tuple[int, bool]:
    """Copy up to `limit` bytes of a regular file (never through a symlink);
    `keep`: a list that receives the source descriptor, left open."""
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=src_dir)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        data = b""
        while len(data) <= limit:
            chunk = os.read(fd, min(1 << 16, limit + 1 - len(data)))
            if not chunk:
                break
            data += chunk
    except BaseException:
        os.close(fd)
        raise
    if keep is None:
        os.close(fd)
    else:
        keep.append(fd)
    out = os.open(qname, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                  0o600, dir_fd=dst_dir)
    try:
        os.write(out, data[:limit])
    finally:
        os.close(out)
    return min(len(data), limit), len(data) > limit


def _copy_tree(src_dir: int, name: str, dst_dir: int, qname: str, budget: dict,
               depth: int = 0) -> None:
    os.mkdir(qname, 0o700, dir_fd=dst_dir)
    sfd = os.open(name, _DIR_FLAGS, dir_fd=src_dir)
    dfd = os.open(qname, _DIR_FLAGS, dir_fd=dst_dir)
    try:
        for e in os.scandir(sfd):
            if budget["entries"] <= 0:
                budget["truncated"] = True
                return
            budget["entries"] -= 1
            if e.is_symlink():
                os.symlink(os.readlink(e.name, dir_fd=sfd), e.name, dir_fd=dfd)
            elif e.is_dir(follow_symlinks=False):
                if depth + 1 >= COPY_TREE_DEPTH:
                    budget["truncated"] = True
                    continue
                _copy_tree(sfd, e.name, dfd, e.name, budget, depth + 1)
            elif e.is_file(follow_symlinks=False):
                n, cut = _copy_file(sfd, e.name, dfd, e.name,
                                    max(0, min(COPY_FILE_MAX, budget["bytes"])))
                budget["bytes"] -= n
                budget["truncated"] |= cut
            else:
                budget["skipped"] += 1          # fifo, socket, device: not copied
    finally:
        os.close(sfd)
        os.close(dfd)


def _copy_out(parent_fd: int, name: str, st, qfd: int, qname: str) -> dict:
    """Quarantine across filesystems: copy what is there (bounded, never
    following a symlink), then remove it if it is still the same object. A
    regular file's descriptor comes back as "_fd" (its writer may go on)."""
    out: dict = {}
    kept: list = []
    try:
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(name, dir_fd=parent_fd), qname, dir_fd=qfd)
        elif stat.S_ISREG(st.st_mode):
            n, cut = _copy_file(parent_fd, name, qfd, qname, COPY_FILE_MAX, keep=kept)
            out.update(bytes_kept=n, truncated=cut)
        elif stat.S_ISDIR(st.st_mode):
            budget = {"entries": COPY_TREE_ENTRIES, "bytes": COPY_TREE_BYTES,
                      "truncated": False, "skipped": 0}
            _copy_tree(parent_fd, name, qfd, qname, budget)
            out.update(truncated=budget["truncated"], not_copied=budget["skipped"])
        else:
            out.update(moved_to=None, note="not a file, directory or symlink: removed")
        if _same(st, parent_fd, name):
            remove(parent_fd, name, st)
        else:
            out["note"] = "replaced while it was copied; the copy is of the first one"
            try:
                now = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
                remove(parent_fd, name, now)
            except FileNotFoundError:
                pass
    except BaseException:
        for fd in kept:
            os.close(fd)
        raise
    if kept:
        out["_fd"] = kept[0]
    return out
