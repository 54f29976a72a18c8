"""/proc/self/mountinfo, parsed once and the same way everywhere, and the one
path-containment test (`under`) every layer uses.

mountinfo(5): `id parent major:minor root mountpoint options [optional...] - fstype source super`
Paths in it escape space, tab, newline and backslash as 3-digit octal (\\040 ...)."""
from __future__ import annotations

import re
from dataclasses import dataclass

_OCTAL = re.compile(r"\\([0-7]{3})")


def unescape(s: str) -> str:
    """Undo mountinfo's octal escapes (\\040 is a space)."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), s)


@dataclass(frozen=True)
class Mount:
    mount_id: int
    parent_id: int
    dev: str            # "major:minor" of the superblock, as mountinfo prints it
    root: str           # the mounted directory inside its filesystem
    mountpoint: str
    options: str
    fstype: str
    source: str

    @property
    def kdev(self) -> int:
        """The superblock's dev as the kernel encodes it (major << 20 | minor)."""
        major, minor = (int(x) for x in self.dev.split(":"))
        return (major << 20) | minor


def parse(text: str) -> list[Mount]:
    out = []
    for line in text.splitlines():
        pre, sep, post = line.partition(" - ")
        a, b = pre.split(), post.split()
        if not sep or len(a) < 6 or not b:
            continue
        try:
            out.append(Mount(int(a[0]), int(a[1]), a[2], unescape(a[3]), unescape(a[4]), a[5],
                             b[0], unescape(b[1]) if len(b) > 1 else ""))
        except ValueError:
            continue
    return out


def mounts(path: str = "/proc/self/mountinfo") -> list[Mount]:
    """The mounts this process sees; [] if mountinfo cannot be read."""
    try:
        with open(path) as fh:
            return parse(fh.read())
    except OSError:
        return []


def under(path: str, root: str) -> bool:
    """`path` is `root` or lies beneath it, component-wise ("/" holds every absolute path)."""
    if root == "/":
        return path.startswith("/")
    root = root.rstrip("/")
    return path == root or path.startswith(root + "/")


def under_any(path: str, roots) -> bool:
    return any(under(path, r) for r in roots)


def mount_of(path: str, ms: list[Mount] | None = None) -> Mount | None:
    """The mount a (canonical, absolute) path lives on: the longest mountpoint
    above it, the later of equal ones (a later mount stacks on an earlier)."""
    best = None
    for m in mounts() if ms is None else ms:
        if under(path, m.mountpoint) and (best is None or len(m.mountpoint) >= len(best.mountpoint)):
            best = m
    return best
