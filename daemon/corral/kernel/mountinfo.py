"""/proc/self/mountinfo, parsed once and the same way everywhere, and the one
path-containment test (`under`) every layer uses.

mountinfo(5): `id parent major:minor root mountpoint options [optional...] - fstype source super`
Paths in it escape space, tab, newline and backslash as 3-digit octal (\\040 ...)."""
from __future__ import annotations

import re
from dataclasses import dataclass

_OCTAL = re.compile(r"\\([0-7]{3})")
_DEV = re.compile(r"\d+:\d+")


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
    """Every well-formed line of a mountinfo text, in order (others are skipped)."""
    out = []
    for line in text.splitlines():
        pre, sep, post = line.partition(" - ")
        a, b = pre.split(), post.split()
        if not sep or len(a) < 6 or not b or not _DEV.fullmatch(a[2]):
            continue
        try:
            out.append(Mount(int(a[0]), int(a[1]), a[2], unescape(a[3]), unescape(a[4]), a[5],
                             b[0], unescape(b[1]) if len(b) > 1 else ""))
        except ValueError:
            continue
    return out


def mounts(path: str = "/proc/self/mountinfo", *, missing_ok: bool = True) -> list[Mount]:
    """The mounts this process sees. If mountinfo cannot be read: [] with
    `missing_ok` (the daemon's file backend, which then only protects less of
    what it adds implicitly), else the OSError (the Landlock client: a sandbox
    that cannot see the cgroup/bpf mounts must not start without protecting them;
    the cgroup and bpffs lookups, which cannot work without it)."""
    try:
        with open(path) as fh:
            text = fh.read()
    except OSError:
        if missing_ok:
            return []
        raise
    if path != "/proc/self/mountinfo":
        return parse(text)
    # corrald reads its own table several times per session start: parse it
    # once per distinct text (Mount is frozen; the list is the caller's).
    hit = _OWN[0]
    if hit[0] != text:
        hit = _OWN[0] = (text, parse(text))
    return list(hit[1])


_OWN: list = [(None, [])]      # [(text, parsed)] of /proc/self/mountinfo


def mountpoints(fstypes, ms: list[Mount] | None = None) -> list[str]:
    """Each distinct mountpoint of a filesystem of one of `fstypes`, in mount order."""
    out: list[str] = []
    for m in mounts() if ms is None else ms:
        if m.fstype in fstypes and m.mountpoint not in out:
            out.append(m.mountpoint)
    return out


def under(path: str, root: str) -> bool:
    """`path` is `root` or lies beneath it, component-wise: /a/bc is not under /a/b.

    "/" holds every absolute path. A trailing "/" on `root` is ignored. Both are
    taken as given (canonical, absolute: the policy model makes them so; mountinfo
    prints them so); nothing is resolved here.

    Every caller used to have its own copy; they agreed on canonical absolute
    paths and differed only outside that domain, which no caller reaches:
    landlock's did not strip a trailing "/" from `root` (its roots come from
    os.path.normpath or mountinfo, which never end in "/" except "/" itself);
    mountguard's called every path, relative ones too, "under /" (its paths
    are the normalised policy's, all absolute); policy's, filelsm's and the
    mount lookups' are this one. A relative `path` is under no absolute root."""
    if root == "/":
        return path.startswith("/")
    root = root.rstrip("/")
    return path == root or path.startswith(root + "/")


def under_any(path: str, roots) -> bool:
    return any(under(path, r) for r in roots)


def outermost(paths) -> list[str]:
    """`paths` in order, without those under one kept before them (duplicates too)."""
    out: list[str] = []
    for p in paths:
        if not under_any(p, out):
            out.append(p)
    return out


def mount_of(path: str, ms: list[Mount] | None = None) -> Mount | None:
    """The mount a (canonical, absolute) path lives on: the longest mountpoint
    above it, the later of equal ones (a later mount stacks on an earlier)."""
    best = None
    for m in mounts() if ms is None else ms:
        if under(path, m.mountpoint) and (best is None or len(m.mountpoint) >= len(best.mountpoint)):
            best = m
    return best


# corral's masks (client/mountguard.py): an empty tmpfs of this source over a denied
# directory, the refusal file (RUN_DIR/unix-refused) bound over a denied file.
MASK_SOURCE = "corral-denied"
REFUSAL_NAME = "unix-refused"


def is_mask(m: Mount, path: str) -> bool:
    return m.mountpoint == path and (m.source == MASK_SOURCE or
                                     m.root.rsplit("/", 1)[-1] == REFUSAL_NAME)


def aliases(path: str, ms: list[Mount] | None = None) -> list[str]:
    """Other paths through which the same file can be reached via bind mounts.
    A mask corral put over `path` is not where its files are: looked through."""
    ms = mounts() if ms is None else ms
    ms = [m for m in ms if not is_mask(m, path)]
    best = mount_of(path, ms)
    if best is None:
        return []
    rel = path[len(best.mountpoint):] if best.mountpoint != "/" else path
    fs_path = (best.root.rstrip("/") + rel) or "/"
    out = []
    for m in ms:
        if m is best or m.dev != best.dev or not under(fs_path, m.root):
            continue
        tail = fs_path[len(m.root):] if m.root != "/" else fs_path
        alias = (m.mountpoint.rstrip("/") + tail) or "/"
        if alias != path and alias not in out:
            out.append(alias)
    return out
