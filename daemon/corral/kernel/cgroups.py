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


def tree_pids(path: Path) -> list[int]:
    """The processes in the cgroup and in every cgroup below it."""
    out: list[int] = []
    for d, _, _ in os.walk(path):
        out += pids(Path(d))
    return out


def events(path: Path) -> dict[str, str]:
    """cgroup.events as a map ("populated", "frozen"); {} if the cgroup is gone."""
    try:
        with open(path / "cgroup.events") as fh:
            return dict(line.split(None, 1) for line in fh.read().splitlines() if " " in line)
    except FileNotFoundError:
        return {}


def populated(path: Path) -> bool:
    return events(path).get("populated", "0").strip() == "1"


def _wait(cond, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    delay = 0.001
    while not cond():
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.02)
    return True


def freeze(path: Path, frozen: bool = True, timeout: float = 0.5) -> bool:
    """Freeze (or thaw) every process in the cgroup's tree (cgroup.freeze, 5.2+):
    a frozen process cannot fork, so what is counted is what gets killed. True
    once the kernel reports the tree frozen (thawing: once asked); False if this
    kernel cannot freeze or it did not finish within `timeout` (a process in
    uninterruptible sleep)."""
    try:
        with open(path / "cgroup.freeze", "w") as fh:
            fh.write("1" if frozen else "0")
    except OSError:
        return False
    if not frozen:
        return True
    return _wait(lambda: events(path).get("frozen", "1").strip() == "1", timeout)


def kill(path: Path, timeout: float = 2.0) -> int:
    """Kill every process in the cgroup's tree (cgroup.kill, 5.14+, else SIGKILL
    each pid) and wait until the kernel says it is empty (populated 0), at most
    `timeout` s. Returns how many processes are still there (0: empty). Frozen
    processes die too (a fatal signal gets through the freezer)."""
    try:
        with open(path / "cgroup.kill", "w") as fh:
            fh.write("1")
    except FileNotFoundError:
        if not path.is_dir():
            return 0

        def sigkill_all() -> bool:
            ps = tree_pids(path)
            for pid in ps:
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
            return not ps
        _wait(sigkill_all, timeout)
    _wait(lambda: not populated(path), timeout)
    return len(tree_pids(path)) if populated(path) else 0


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
