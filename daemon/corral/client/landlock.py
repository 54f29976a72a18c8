"""Landlock filesystem backend: map a corral file policy to Landlock rules.

Policy (paths already canonical and absolute)::

    {"deny_read": [...], "allow_read": [...], "allow_write": [...], "deny_write": [...]}

* read: allowed everywhere except under ``deny_read``; ``allow_read`` paths are
  exceptions inside denied trees (the most specific path wins; on a tie deny
  wins).
* write (write, truncate, create, mkdir, mknod, symlink, rename, link, unlink,
  rmdir, device ioctl): denied everywhere except under ``allow_write``;
  ``deny_write`` paths win over any ``allow_write``.

Landlock can only *grant* rights beneath a file hierarchy, so "everything
except D" is expressed as a complement: walk from the granted root down to D
and grant the right on every sibling along the way (recursively where a
sibling itself contains a denied path). The directories on the way to D get no
rule for that class of rights. Consequences (all fail closed, documented):

* an entry created *after* the session started directly inside a directory on
  a complement path has no rule, so it is not readable (read complement) /
  not writable (write complement); e.g. with ``deny_write=[proj/.git/hooks]``
  nothing new can be created directly in ``proj/`` or ``proj/.git/`` (git's
  ``index.lock`` included), existing files there stay writable.
* a denied path that does not exist yet is complemented at its nearest
  existing ancestor: creating it later is impossible (write), and reading
  anything created later in that ancestor is denied (read).
* directories on a *read* complement path keep LANDLOCK_ACCESS_FS_READ_DIR
  (so ``ls`` keeps working) unless one of the denied paths below them is an
  existing directory; then they lose it too, otherwise the denied directory
  itself would be listable.

Always applied, whatever the policy says (also when the session has no file
policy, in which case the policy is "read everything, write everything"):

* implicit ``deny_write`` of every cgroup2 and bpf filesystem mount (from
  /proc/self/mountinfo; cgroup v1 mounts too): the agent must not be able to
  move itself out of its session cgroup or pin/alter BPF objects. Absolute.
  Same for corral's own run/log/cache directories, its package and venv
  (corral_paths()). bpf mounts are not *readable* either (pinned maps hold
  every session's policy); their names stay listable.
* /proc, /sys, /dev and every mount of a kernel pseudo filesystem
  (PSEUDO_FSTYPES) are not writable unless a *more specific* allow_write
  names a subtree (e.g. /dev/shm): uid 0 without capabilities can still write
  root-owned sysctls (kernel.core_pattern = escape), /proc/sysrq-trigger,
  sysfs attributes, tracefs... because only DAC guards them. Consequence:
  writes into /proc/self/* (oom_score_adj, attr/...) fail; /dev/stdout and
  /proc/self/fd/N still work since the reopened target is checked at its real
  path, not under /proc.
* implicit ``allow_write`` of a few character devices (DEVICE_WRITE_PATHS):
  /dev/null, /dev/zero, /dev/full, /dev/tty, /dev/ptmx, /dev/pts, /dev/random,
  /dev/urandom, with LANDLOCK_ACCESS_FS_IOCTL_DEV so terminals keep working.
  No /proc rule is needed: /proc/self/fd/N and /dev/stdout reopen the target
  object, which is checked at its real path (pipes/sockets are not
  path-based and not restricted by Landlock).

Also: every path where read is granted gets LANDLOCK_ACCESS_FS_EXECUTE;
bind-mount aliases of denied paths (same device and subtree mounted elsewhere)
are denied as well. Rules attach to inodes, so a regular file with more than
one hard link that sits in a directory on a complement path gets no rule (a
rule on it would open its other names too, possibly inside the denied tree):
it is unreadable/unwritable in the session (fail closed). Landlock does not mediate chmod/chown/utimes/xattr or
stat(); a hard link made *before* the session to a denied file from an allowed
directory stays readable/writable through that link (Landlock is path based).
ABI 6 scopes (signals, abstract unix sockets) are always requested; ABI 7
restrict_self asks the kernel to log denials across the exec of the agent.
"""
from __future__ import annotations

import bisect
import os
import stat as _stat
from dataclasses import dataclass, field

from corral.kernel import native
from corral.kernel import mountinfo
from corral.kernel.mountinfo import Mount, aliases, mountpoints, outermost, under
from corral.policy import paths
from corral.policy.errors import PolicyError

# ---- access rights (linux/landlock.h) ---------------------------------
FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_REMOVE_DIR = 1 << 4
FS_REMOVE_FILE = 1 << 5
FS_MAKE_CHAR = 1 << 6
FS_MAKE_DIR = 1 << 7
FS_MAKE_REG = 1 << 8
FS_MAKE_SOCK = 1 << 9
FS_MAKE_FIFO = 1 << 10
FS_MAKE_BLOCK = 1 << 11
FS_MAKE_SYM = 1 << 12
FS_REFER = 1 << 13        # ABI 2
FS_TRUNCATE = 1 << 14     # ABI 3
FS_IOCTL_DEV = 1 << 15    # ABI 5

SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1                # ABI 6

RESTRICT_SELF_LOG_SAME_EXEC_OFF = 1 << 0   # ABI 7
RESTRICT_SELF_LOG_NEW_EXEC_ON = 1 << 1     # ABI 7
RESTRICT_SELF_LOG_SUBDOMAINS_OFF = 1 << 2  # ABI 7

_FS_BY_ABI = {
    1: (1 << 13) - 1,
    2: (1 << 14) - 1,
    3: (1 << 15) - 1,
    4: (1 << 15) - 1,
    5: (1 << 16) - 1,
}

READ = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
WRITE = (FS_WRITE_FILE | FS_REMOVE_DIR | FS_REMOVE_FILE | FS_MAKE_CHAR | FS_MAKE_DIR
         | FS_MAKE_REG | FS_MAKE_SOCK | FS_MAKE_FIFO | FS_MAKE_BLOCK | FS_MAKE_SYM
         | FS_REFER | FS_TRUNCATE | FS_IOCTL_DEV)
# rights that make sense on a non-directory (others give EINVAL on a file rule)
FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV

DEVICE_WRITE_PATHS = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random",
                      "/dev/urandom", "/dev/tty", "/dev/ptmx", "/dev/pts")

# filesystem types the session must never write to, whatever the policy says
PROTECTED_FSTYPES = ("cgroup2", "cgroup", "bpf")

# Kernel interfaces where uid 0 *without capabilities* can still do damage
# because only DAC (owner root, mode 0644/0200) guards them: sysctls such as
# kernel.core_pattern (a pipe handler runs as full root outside the sandbox),
# /proc/sysrq-trigger, many sysfs attributes, tracefs kprobe_events, device
# nodes. Not writable by default, not even with allow_write "/"; a *more
# specific* allow_write (e.g. "/dev/shm") re-opens a subtree. DEVICE_WRITE_PATHS
# stay writable. Mounts of these types elsewhere are protected the same way.
PROTECTED_PATHS = ("/proc", "/sys", "/dev")
PSEUDO_FSTYPES = ("proc", "sysfs", "devtmpfs", "debugfs", "tracefs", "securityfs",
                  "configfs", "pstore", "efivarfs", "fusectl", "binfmt_misc")

POLICY_KEYS = paths.FS_KEYS


class LandlockError(RuntimeError):
    pass


class LandlockUnavailable(LandlockError):
    """The kernel has no (usable) Landlock."""


# ---- ABI probing -----------------------------------------------------------
def abi() -> int:
    """Landlock ABI version of the running kernel, 0 when unavailable/disabled."""
    if not native.available():
        return 0
    r = native.load().lib.corral_landlock_abi()
    return r if r > 0 else 0


def available() -> bool:
    return abi() > 0


def handled_fs(abi_version: int) -> int:
    return _FS_BY_ABI.get(abi_version, _FS_BY_ABI[5]) if abi_version > 0 else 0


def scopes(abi_version: int) -> int:
    return SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi_version >= 6 else 0


def restrict_flags(abi_version: int) -> int:
    return RESTRICT_SELF_LOG_NEW_EXEC_ON if abi_version >= 7 else 0


def file_policy_decision(file_policy: dict | None, allow_weaker: bool = False) -> dict:
    """Decide whether `corral run` may start a session with this file policy.

    Returns ``{"enforce": bool, "backend": "landlock"|None, "weaker": bool,
    "reason": str}``. Raises LandlockUnavailable when a file policy is given,
    Landlock is not available and ``allow_weaker`` is false: a file policy
    must never be silently ignored.
    """
    v = abi()
    has_policy = bool(file_policy) and any(file_policy.get(k) for k in POLICY_KEYS)
    if v > 0:
        return {"enforce": True, "backend": "landlock", "abi": v, "weaker": False,
                "reason": f"landlock ABI {v}"}
    if not has_policy:
        return {"enforce": False, "backend": None, "abi": 0, "weaker": False,
                "reason": "no landlock; session has no file policy"}
    if allow_weaker:
        return {"enforce": False, "backend": None, "abi": 0, "weaker": True,
                "reason": "no landlock: file policy NOT enforced (--allow-weaker)"}
    raise LandlockUnavailable(
        "this kernel has no Landlock (and no BPF LSM file backend): refusing to run "
        "a session with a file policy; pass --allow-weaker to run without it")


# ---- mounts ----------------------------------------------------------------
def mounts() -> list[Mount]:
    """This process's mounts (kernel.mountinfo); an unreadable mountinfo is an
    error here, not "no mounts": the cgroup/bpf protections depend on it."""
    return mountinfo.mounts(missing_ok=False)


def protected_mounts(ms: list[Mount] | None = None) -> list[str]:
    """Mount points of cgroup/cgroup2/bpf filesystems (implicit deny_write)."""
    return mountpoints(PROTECTED_FSTYPES, mounts() if ms is None else ms)


def corral_paths(read_only_here=None) -> list[str]:
    """corral's own state, log, cache and package: never writable by a session
    (a root agent could otherwise forge the audit log, remove the socket, or
    poison the cached kernel headers / the daemon's code it runs as root).
    Nonexistent entries are kept (complemented at their parent, fail closed)
    except the optional /etc/corral.

    This runs in the client, which cannot know what the daemon runs (under
    `python -S` it cannot even tell it is in a venv): the authoritative list of
    the daemon's code (venv, interpreter, stdlib, bcc, BPF sources, tools) is
    computed in the daemon (protected.code_paths) and arrives in the session
    policy's deny_write."""
    def _in_this_view(p: str) -> bool:
        """p lies on a read-only mount of the private mount namespace this process
        made (mountguard's binds, made before Landlock; our parent's namespace is
        another one): no write reaches it and, the namespace being private and
        mount() forbidden by seccomp, nothing makes it writable again. A Landlock
        rule would add nothing but a complement, which refuses new entries in every
        directory above p (the project root, for an editable install). False
        whenever in doubt (the rule is kept)."""
        # Asked of mountguard, not of /proc/<ppid>/ns/mnt: reading another
        # process's namespace link is a ptrace access check, which the BPF LSM
        # refuses (and logs) for a parent outside the session.
        from corral.client import mountguard
        if not mountguard.view_built():
            return False
        try:
            return bool(os.statvfs(p).f_flag & os.ST_RDONLY)
        except OSError:
            return False

    out = []
    try:
        from corral import config
        out += [str(config.RUN_DIR), str(config.LOG_DIR), str(config.CACHE_DIR)]
    except Exception:   # pragma: no cover - config is part of the package
        out += ["/run/corral", "/var/log/corral", "/var/cache/corral"]
    if os.path.exists("/etc/corral"):
        out.append("/etc/corral")
    out.append(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))  # the package
    ro = read_only_here or _in_this_view      # corrald planning a view it did not build yet
    seen = []
    for p in out:
        p = os.path.normpath(p)
        if p.startswith("/") and p != "/" and p not in seen and not ro(p):
            seen.append(p)
    return seen


def pseudo_mounts(ms: list[Mount] | None = None) -> list[str]:
    """PROTECTED_PATHS plus every mount of a PSEUDO_FSTYPES filesystem."""
    ms = mounts() if ms is None else ms
    return outermost(list(PROTECTED_PATHS) + mountpoints(PSEUDO_FSTYPES, ms))


def _join(base: str, name: str) -> str:
    return "/" + name if base == "/" else base + "/" + name


# ---- policy -> plan ----------------------------------------------------------
def normalize_policy(file_policy: dict | None) -> dict:
    """The section the daemon returned, checked for the shape plan() needs
    (policy.paths.file_section); None: read everything, write everything
    (minus the implicit protections plan() adds)."""
    try:
        return paths.file_section(file_policy)
    except PolicyError as e:
        raise LandlockError(str(e)) from None


# The decisions below are asked for every entry the walk meets: rather than
# asking `under` of every rule (a hundred-odd with the mandatory protections),
# look the path and its ancestors up among the rules (the same answer for the
# canonical absolute paths a policy holds; a trailing "/" on a rule is ignored,
# as `under` ignores it).
def _chain(p: str) -> list[str]:
    """p and every directory above it, up to "/"."""
    p = p.rstrip("/") or "/"
    out = [p]
    while p != "/":
        p = p.rsplit("/", 1)[0] or "/"
        out.append(p)
    return out


def _lengths(paths) -> dict[str, int]:
    """rule (without a trailing "/") -> the longest length it was written with."""
    out: dict[str, int] = {}
    for q in paths:
        k = q.rstrip("/") or "/"
        out[k] = max(out.get(k, -1), len(q))
    return out


def _decide_read(deny: list[str], allow: list[str]):
    dmap, amap = _lengths(deny), _lengths(allow)

    def decide(p: str) -> bool:
        best_len, best = -1, True
        chain = _chain(p)
        for a in chain:
            n = dmap.get(a, -1)
            if n >= 0 and n >= best_len:
                best_len, best = n, False
        for a in chain:
            if amap.get(a, -1) > best_len:
                best_len, best = amap[a], True
        return best
    return decide


def _longest(p: str, roots: dict[str, int]) -> int:
    """The longest of `roots` (a _lengths map) that holds p; -1: none."""
    return max((roots.get(a, -1) for a in _chain(p)), default=-1)


def _decide_write(allow: list[str], deny: list[str], mandatory: list[str] = (),
                  devices: list[str] = (), protected: list[str] = ()):
    """Precedence: deny_write > mandatory (cgroup/bpf) > device allowances >
    protected pseudo filesystems (unless a more specific allow_write) >
    allow_write > default deny."""
    no = set(_lengths(list(deny) + list(mandatory)))
    dev = set(_lengths(devices))
    allow_len, prot_len = _lengths(allow), _lengths(protected)

    def decide(p: str) -> bool:
        chain = _chain(p)
        if any(a in no for a in chain):
            return False
        if any(a in dev for a in chain):
            return True
        a = _longest(p, allow_len)
        prot = _longest(p, prot_len)
        if prot >= 0:
            return a > prot
        return a >= 0
    return decide


@dataclass
class _Walk:
    grants: list = field(default_factory=list)    # paths granted the whole class
    partial: list = field(default_factory=list)   # dirs on a complement path
    unreadable: list = field(default_factory=list)  # dirs we could not list
    skipped_links: list = field(default_factory=list)  # multi-link files left without rule
    looked_in: list = field(default_factory=list)  # denied dirs whose named entries were looked up


def _complement(decide, rule_paths: list[str]) -> _Walk:
    """Paths to grant so that exactly the paths where decide() is true are covered."""
    w = _Walk()

    def rec(p: str, cands: list[str]) -> None:
        # cands: the rule paths under p's parent (all of them at "/"), sorted:
        # those under p are one run of them (they start with p + "/").
        want = decide(p)
        if p == "/":
            sub = [q for q in cands if q != "/" and q.startswith("/")]
        else:
            lo = bisect.bisect_left(cands, p + "/")
            sub = cands[lo:bisect.bisect_left(cands, p + "0", lo)]    # "0" follows "/"
        if want:
            if all(decide(q) for q in sub):
                w.grants.append(p)
                return
            w.partial.append(p)
            try:
                with os.scandir(p) as it:
                    names = sorted(e.name for e in it)
            except OSError:
                w.unreadable.append(p)   # no rule: fail closed
                return
            for n in names:
                c = _join(p, n)
                try:
                    st = os.lstat(c)
                except OSError:
                    continue
                if _stat.S_ISLNK(st.st_mode):
                    continue             # symlinks: the target is checked at its real path
                if not _stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
                    # Landlock rules attach to the inode: a rule on this name
                    # would also open every other hard link of it, possibly
                    # one inside the denied tree. No rule: fail closed.
                    w.skipped_links.append(c)
                    continue
                rec(c, sub)
        else:
            if not any(decide(q) for q in sub):
                return
            w.looked_in.append(p)
            comps = []
            for q in sub:
                rest = q[len(p):].lstrip("/") if p != "/" else q.lstrip("/")
                first = rest.split("/", 1)[0]
                if first and first not in comps:
                    comps.append(first)
            for n in sorted(comps):
                c = _join(p, n)
                try:
                    st = os.lstat(c)
                except OSError:
                    continue             # does not exist (yet): nothing to grant
                if _stat.S_ISLNK(st.st_mode):
                    continue
                rec(c, sub)

    rec("/", sorted(rule_paths))
    return w


@dataclass
class Plan:
    rules: dict            # path -> access mask (before per-file masking)
    policy: dict           # the effective policy (with implicit entries)
    unreadable: list       # directories that could not be listed (denied)
    skipped: list = field(default_factory=list)  # unlistable dirs + multi-link files: no rule
    walked: list = field(default_factory=list)   # the directories whose entries decided it


# How long a directory must have been unchanged before a stamp of it can be
# trusted: a change right after the last one may get the same timestamp. On a
# filesystem with nanosecond timestamps that is within one tick of the kernel's
# coarse clock (at most 10 ms); one that keeps whole seconds (its times have no
# nanoseconds; FAT keeps two) needs them to have passed.
SETTLE_FINE_NS = 50_000_000
SETTLE_COARSE_NS = 2_000_000_000


def _settle_ns(st) -> int:
    whole = st.st_mtime_ns % 1_000_000_000 == 0 and st.st_ctime_ns % 1_000_000_000 == 0
    return SETTLE_COARSE_NS if whole else SETTLE_FINE_NS


def dir_stamp(dirs: list[str], settle: bool = False):
    """What the directories a plan listed look like now ((inode, device, mtime,
    ctime) each): the plan holds while this is unchanged, since an entry made,
    removed or renamed in one of them changes its mtime, a chmod its ctime.
    None if one is gone, or (settle) changed too recently to be told from a
    change still to come (_settle_ns)."""
    import time
    now = time.time_ns()
    out = []
    for d in dirs:
        try:
            st = os.lstat(d)
        except OSError:
            return None
        if settle and now - max(st.st_mtime_ns, st.st_ctime_ns) < _settle_ns(st):
            return None
        out.append((st.st_ino, st.st_dev, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(out)


def plan(file_policy: dict | None, ms: list[Mount] | None = None, read_only_here=None) -> Plan:
    """Compute the Landlock rules (path -> rights) for a file policy.

    Pure user space (reads the filesystem and mountinfo); run it while the
    caller still has the privileges to list every directory. `read_only_here`:
    whether a path is read-only in the mount view the rules are for (default:
    this process's own view, see corral_paths).
    """
    fp = normalize_policy(file_policy)
    ms = mounts() if ms is None else ms
    deny_read = list(fp["deny_read"])
    deny_write = list(fp["deny_write"])
    for p in list(deny_read):
        deny_read += [a for a in aliases(p, ms) if a not in deny_read]
    for p in list(deny_write):
        deny_write += [a for a in aliases(p, ms) if a not in deny_write]
    mandatory = protected_mounts(ms) + [p for p in corral_paths(read_only_here) if p not in deny_write]
    protected = pseudo_mounts(ms)
    devices = list(DEVICE_WRITE_PATHS)
    allow_write = list(fp["allow_write"])
    eff = {"deny_read": deny_read, "allow_read": list(fp["allow_read"]),
           "allow_write": allow_write, "deny_write": deny_write,
           "implicit_deny_write": mandatory, "protected_write": protected,
           "implicit_allow_write": devices}

    # pinned BPF objects (corral's maps: every session's policy) are not
    # readable either; absolute, like the write side
    bpf_mounts = [m.mountpoint for m in ms if m.fstype == "bpf"]
    bpf_mounts = [b for b in dict.fromkeys(bpf_mounts) if b not in deny_read]
    eff["implicit_deny_read"] = bpf_mounts
    rd_user = _decide_read(deny_read, eff["allow_read"])
    rd = lambda p: rd_user(p) and not any(under(p, b) for b in bpf_mounts)  # noqa: E731
    rw = _complement(rd, deny_read + eff["allow_read"] + bpf_mounts)
    wd = _decide_write(allow_write, deny_write, mandatory, devices, protected)
    ww = _complement(wd, allow_write + deny_write + mandatory + devices + protected)

    rules: dict[str, int] = {}
    for p in rw.grants:
        rules[p] = rules.get(p, 0) | READ
    # directories on a read-complement path: keep READ_DIR unless a denied
    # directory (of the policy) lies beneath: it would become listable. The
    # bpffs mount may be listed (pin names only), so `ls /` keeps working.
    for p in rw.partial:
        denied_dirs_below = any(
            q != p and under(q, p) and not rd_user(q) and os.path.isdir(q) for q in deny_read)
        if not denied_dirs_below:
            rules[p] = rules.get(p, 0) | FS_READ_DIR
    for p in ww.grants:
        rules[p] = rules.get(p, 0) | WRITE
    return Plan(rules=rules, policy=eff, unreadable=rw.unreadable + ww.unreadable,
                skipped=rw.unreadable + ww.unreadable + rw.skipped_links + ww.skipped_links,
                walked=list(dict.fromkeys(rw.partial + ww.partial + rw.looked_in + ww.looked_in)))


# ---- kernel side -------------------------------------------------------------
def build_ruleset(pl: Plan, abi_version: int | None = None) -> tuple[int, dict]:
    """Create a ruleset fd holding the plan's rules. Returns (fd, stats).

    Opening the rule paths uses the caller's privileges: call this before
    capabilities are dropped. Nothing is enforced until restrict().
    """
    v = abi() if abi_version is None else abi_version
    if v <= 0:
        raise LandlockUnavailable("Landlock is not available on this kernel")
    lib = native.load().lib
    hfs = handled_fs(v)
    fd = lib.corral_landlock_create_ruleset(hfs, 0, scopes(v), v)
    if fd < 0:
        native.check(fd, "landlock_create_ruleset")
    added = skipped = 0
    try:
        for path, mask in sorted(pl.rules.items()):
            try:
                pfd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
            except (FileNotFoundError, NotADirectoryError, PermissionError):
                skipped += 1            # vanished / not reachable by us: no rule, fail closed
                continue
            try:
                st = os.fstat(pfd)
                m = mask & hfs
                if not _stat.S_ISDIR(st.st_mode):
                    m &= FILE_RIGHTS
                if not m:
                    continue
                native.check(lib.corral_landlock_add_path_rule(fd, m, pfd),
                             f"landlock_add_rule({path})")
                added += 1
            finally:
                os.close(pfd)
    except BaseException:
        os.close(fd)
        raise
    return fd, {"rules": added, "skipped": skipped, "handled_fs": hfs,
                "scoped": scopes(v)}


def restrict(ruleset_fd: int, abi_version: int | None = None, close: bool = True) -> int:
    """Enforce the ruleset on the calling thread (needs no_new_privs or
    CAP_SYS_ADMIN). Closes the fd (unless `close` is False: the same ruleset
    for the session's next processes). Returns the restrict_self flags used."""
    v = abi() if abi_version is None else abi_version
    lib = native.load().lib
    flags = restrict_flags(v)
    try:
        r = lib.corral_landlock_restrict_self(ruleset_fd, flags)
        if r < 0 and flags:
            flags = 0   # logging flags refused: enforcement matters more
            r = lib.corral_landlock_restrict_self(ruleset_fd, 0)
        native.check(r, "landlock_restrict_self")
    finally:
        if close:
            os.close(ruleset_fd)
    return flags


def apply(file_policy: dict | None) -> dict:
    """plan + build + restrict in one go (the caller has set no_new_privs)."""
    v = abi()
    if v <= 0:
        raise LandlockUnavailable("Landlock is not available on this kernel")
    pl = plan(file_policy)
    fd, stats = build_ruleset(pl, v)
    flags = restrict(fd, v)
    return {"landlock": True, "landlock_abi": v, "landlock_log_flags": flags, **stats}
