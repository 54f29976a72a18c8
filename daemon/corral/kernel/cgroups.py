"""corral's cgroup2 tree: <cgroup2 mount>/corral/<session id>.

The cgroup id the BPF programs key on is the inode number of the session's
cgroup directory (the kernfs node id)."""
from __future__ import annotations

import errno
import functools
import os
import time
from pathlib import Path

from corral.config import CGROUP_NAME as ROOT_NAME
from corral.kernel import mountinfo


class CgroupError(RuntimeError):
    pass


@functools.lru_cache(maxsize=1)
def cgroup2_mount() -> Path:
    """Find the cgroup2 mount (unified or hybrid layout); never assume a path.
    If there are several, the first in mount order."""
    found = mountinfo.mountpoints(("cgroup2",), mountinfo.mounts(missing_ok=False))
    if found:
        return Path(found[0])
    raise CgroupError("no cgroup2 filesystem is mounted: mount -t cgroup2 none /sys/fs/cgroup/unified")


def root() -> Path:
    return cgroup2_mount() / ROOT_NAME


def session_path(session_id: str) -> Path:
    """A session's cgroup directory (it may not exist)."""
    return root() / session_id


def path_of(rel: str | None) -> Path:
    """The directory of a cgroup path as /proc/PID/cgroup gives it ('/a/b')."""
    return cgroup2_mount() / (rel or "/").lstrip("/")


def ensure_root() -> Path:
    r = root()
    r.mkdir(exist_ok=True)
    return r


def cgroup_id(path: Path) -> int:
    return os.stat(path).st_ino


def create(session_id: str) -> Path:
    path = session_path(session_id)
    path.mkdir()
    return path


def move(pid: int, path: Path) -> None:
    with open(path / "cgroup.procs", "w") as fh:
        fh.write(str(pid))


def pids(path: Path) -> list[int]:
    try:
        with open(path / "cgroup.procs") as fh:
            return [int(x) for x in fh.read().split()]
    except FileNotFoundError:
        return []


def populated(path: Path) -> bool:
    try:
        with open(path / "cgroup.events") as fh:
            for line in fh:
                k, _, v = line.partition(" ")
                if k == "populated":
                    return v.strip() == "1"
    except FileNotFoundError:
        return False
    return False


def kill(path: Path) -> None:
    """Kill every process in the cgroup (cgroup.kill, else SIGKILL each pid)."""
    try:
        with open(path / "cgroup.kill", "w") as fh:
            fh.write("1")
        return
    except FileNotFoundError:
        pass
    for _ in range(50):
        ps = pids(path)
        if not ps:
            return
        for pid in ps:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        time.sleep(0.02)


def remove(path: Path, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() > deadline:
                raise CgroupError(f"cannot remove cgroup {path}: {e.strerror}") from e
            time.sleep(0.02)


def cgroup_of(pid: int) -> str | None:
    """The cgroup2 path (relative to the mount) of a process, e.g. '/corral/ab12'."""
    try:
        with open(f"/proc/{pid}/cgroup") as fh:
            for line in fh:
                hid, _, rest = line.rstrip("\n").partition(":")
                ctrl, _, path = rest.partition(":")
                if hid == "0" and ctrl == "":
                    return path
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def session_of(pid: int) -> str | None:
    """The corral session id a process belongs to, or None."""
    return session_of_path(cgroup_of(pid))


def in_tree(path: str | None) -> bool:
    """Whether a cgroup path (relative to the mount) lies in corral's tree."""
    parts = [p for p in (path or "").split("/") if p]
    return bool(parts) and parts[0] == ROOT_NAME


def session_of_path(path: str | None) -> str | None:
    """The session id in a cgroup path like '/corral/ab12', or None."""
    if not path:
        return None
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 2 and parts[0] == ROOT_NAME:
        return parts[1]
    return None


def sessions_on_disk() -> list[str]:
    r = root()
    if not r.is_dir():
        return []
    return sorted(p.name for p in r.iterdir() if p.is_dir())
