"""Filesystem policy enforced by BPF LSM (user-space half of bpf/file_lsm.c).

One global set of LSM programs, keyed by the session's cgroup id. Programs
(links) and maps are pinned under /sys/fs/bpf/corral/file_lsm-<version>/ so
enforcement survives a crash of this process; a restarted FileLsm finds the
pins and reuses them without recompiling.

Policy dict (canonical absolute paths):
    deny_read   : read denied at and beneath these paths
    allow_read  : exceptions inside deny_read (deepest rule wins)
    allow_write : create/write/truncate/rename/delete/link/mkdir/chmod/chown allowed
    deny_write  : exceptions inside allow_write; always win
Reading is otherwise allowed, writing otherwise denied. Connecting to an
AF_UNIX path socket needs read and write permission on the socket file
(unix.allow lifts the default-deny of writing for the sockets it names; deny
rules still win).

The session boundary (issue 11; Landlock on 6.1 scopes neither signals nor
Unix sockets, so on the BPF LSM tier this backend enforces it):
    unix_peers : connect/sendto reach only sockets created in the session's
                 cgroup (or below: nested cgroups), socketpairs, and pathname
                 sockets named in the policy's unix.allow (plus corral's own
                 socket). unix.allow is matched by object -- (cgid, dev, ino)
                 of each socket that exists at install/update, RB_UNIX_ALLOW
                 in irules -- and by the bound socket's real path (prules), so
                 a socket re-created at the same place (a restarted agent or
                 daemon) still matches. Abstract sockets of processes outside
                 are always refused.
    signals    : kill/tgkill/pidfd_send_signal only to the session's tasks.
    ptrace     : attach, /proc/PID/mem|environ|fd..., PTRACE_TRACEME: same.
    metadata   : utimes (inode_setattr), setxattr, removexattr follow the
                 write rules, like chmod/chown/truncate.
Each refusal is EPERM (open() of /proc/PID/mem reports the kernel's EACCES)
and an event (kind file, op unix_connect/unix_send/signal/ptrace/traceme/
setattr/setxattr/removexattr, rule RULE_FILE_UNIX_FOREIGN or
RULE_FILE_TASK_FOREIGN for boundary refusals).

Rules are installed twice: by object, (cgid, dev, ino) for paths that exist
now (follows renames, bind mounts and hard links), and by name, (cgid,
H(path components)) for every rule path (covers paths created later and
delete-and-recreate). H is keyed with a random per-instance seed that lives in
the pinned config map.

Implicit rules, as in the Landlock backend: a few character devices are
always writable (DEVICE_WRITE_PATHS); /proc, /sys, /dev and other kernel
pseudo filesystems are not writable unless a *deeper* allow_write reopens a
subtree (RB_PSEUDO); cgroup/bpf filesystems and corral's own state, code and
venv are never writable; bpffs is not readable.

Hooks: file_open (read/write from f_mode), path_mknod/mkdir/symlink/link/
unlink/rmdir/rename (both ends; the source of a rename or link needs read and
write, so a read-denied file can't be moved or linked out of its tree)/
truncate/chmod/chown (the path_* hooks: they carry the vfsmount, so the walk
crosses mounts; needs CONFIG_SECURITY_PATH, which Debian has),
unix_stream_connect/unix_may_send (the *bound socket's* own path, i.e. the
real object; connecting needs read and write on the socket file, and the peer
must be the session's or allowed), inode_setattr/inode_setxattr/
inode_removexattr (dentry only: the mount is found among the superblock's
mounts the caller can see, see find_mount() in file_lsm.c), task_kill,
ptrace_access_check, ptrace_traceme.

Known limits:
* walks are bounded (MAX_DEPTH = 64 levels incl. mount roots): deeper paths
  are denied and logged (rule id RULE_FILE_TOO_DEEP, op too_deep);
  rule paths may have at most MAX_PDEPTH = 24 components (ValueError).
* not mediated: stat(), chdir, mount in a private mount namespace (a bind
  mount of a denied tree is still denied: the walk meets the denied
  directory's inode), SIGIO/SIGURG to an F_SETOWN target outside the session.
* dentry-only hooks (utimes, xattrs) use the first mount of the object's
  superblock that the caller can see and that holds the object; by-name rules
  of paths created after registration may differ between two bind mounts of
  the same tree. More than 16 mounts of one superblock before the caller's:
  denied (too_deep). Calls under overridden credentials (overlayfs copy-up)
  are not checked: the caller's own call on the overlay object was.
* "the session's own" is the session's cgroup and the cgroups below it. The
  daemon makes nested sessions as sibling cgroups (corral/<id>): to each other
  they are outside.
* unix.allow by object needs the socket to exist at install/update; a socket
  bound later is matched by name (its bound path), not by object.
* by-name rules use the path from the top of the mount tree the object
  lives in; pivot_root in a private mount namespace or detached mount trees
  (open_tree) only keep the by-object rules. Files hard-linked *later, by
  someone outside the session* into an allowed place are not deny-listed.
* dev is the superblock's (from mountinfo, not st_dev, which differs on
  overlayfs and btrfs); btrfs inode numbers are only unique per subvolume.
* per-CPU scratch: if a program is preempted and the scratch reused on the
  same CPU (PREEMPT kernels only), the check fails closed (RULE_FILE_RACE).
"""
from __future__ import annotations

import ctypes as ct
import errno
import json
import logging
import os
import stat
import struct
from pathlib import Path

from corral.kernel import abi, bpf, cgroups, mountinfo
from corral.kernel.abi import (RB_ALLOW_READ, RB_ALLOW_WRITE, RB_ANCESTOR, RB_DENY_INODE,  # noqa: F401
                               RB_DENY_READ, RB_DENY_WRITE, RB_PSEUDO, RB_UNIX_ALLOW, RULE_USER,
                               SESS_FILE_ENFORCE)
from corral.kernel.bpf import BpfError, btf_cflags  # noqa: F401  (btf_cflags: tools, tests)
from corral.backends.base import Backend
from corral.kernel.events import describe_file_rule
from corral.kernel.mountinfo import under_any
from corral.policy.paths import canonical  # raises PolicyError, a ValueError

log = logging.getLogger("corral.filelsm")

ROOT = Path(__file__).resolve().parents[1]           # the corral package
BPFFS = Path(os.environ.get("CORRAL_BPFFS", "/sys/fs/bpf"))
PIN_ROOT = BPFFS / "corral"
STATE_DIR = Path(os.environ.get("CORRAL_RUN_DIR", "/run/corral")) / "filelsm"

MAX_DEPTH = 64        # dentry levels walked; deeper paths are denied (fail closed)
MAX_PDEPTH = 24       # components of a rule path (by-name matching)
MAX_RULES = 65535
HARDLINK_SCAN_LIMIT = 200_000

HOOKS = ["file_open", "path_truncate", "path_chmod", "path_chown", "path_mknod",
         "path_mkdir", "path_symlink", "path_unlink", "path_rmdir", "path_link",
         "path_rename", "unix_stream_connect", "unix_may_send",
         "inode_setattr", "inode_setxattr", "inode_removexattr",
         "task_kill", "ptrace_access_check", "ptrace_traceme"]
MAPS = ["fconf_map", "fsess", "irules", "prules", "file_events", "file_lost", "file_lost_seen"]

KINDS = [("deny_read", RB_DENY_READ, "rd"), ("allow_read", RB_ALLOW_READ, "rd"),
         ("allow_write", RB_ALLOW_WRITE, "wr"), ("deny_write", RB_DENY_WRITE, "wr")]

_M64 = (1 << 64) - 1

# What this backend enforces, for the session's `enforcement` (corral doctor,
# corral ps): each part of the policy and the layer that covers it.
ENFORCES = {"filesystem": "bpf-lsm", "unix_peers": "bpf-lsm", "signals": "bpf-lsm",
            "ptrace": "bpf-lsm", "metadata": "bpf-lsm"}

# event.rule of boundary refusals (bpf/file_lsm.c), for the log
BOUNDARY_RULES = {
    abi.RULE_FILE_UNIX_FOREIGN: "Unix socket of a process outside the session, not in unix.allow",
    abi.RULE_FILE_TASK_FOREIGN: "process outside the session",
}

# The implicit rules are the Landlock backend's: both backends must agree.
from corral.client.landlock import DEVICE_WRITE_PATHS, PROTECTED_FSTYPES, PROTECTED_PATHS, PSEUDO_FSTYPES

# ---------------------------------------------------------------- hashing
def _mix(h: int, v: int) -> int:
    h ^= v
    h = (h * 0xFF51AFD7ED558CCD) & _M64
    h ^= h >> 32
    return h


def name_hash(seed: int, name: bytes) -> int:
    """Same as name_hash() in bpf/file_lsm.c."""
    n = min(len(name), 255)
    h = _mix(seed, (n * 0x9E3779B97F4A7C15) & _M64)
    padded = name[:n].ljust(64 if n <= 64 else 256, b"\0")
    for off in range(0, len(padded), 8):
        h = _mix(h, int.from_bytes(padded[off:off + 8], "little"))
    return h


def path_hash(seed: int, comps: list[bytes]) -> int:
    h = seed
    for c in comps:
        h = _mix((h * 0xC4CEB9FE1A85EC53) & _M64, name_hash(seed, c))
    return h


def _comps(path: str) -> list[bytes]:
    return [os.fsencode(c) for c in path.split("/") if c]


def _kdev(st_dev: int) -> int:
    return ((os.major(st_dev) << 20) | os.minor(st_dev)) & 0xFFFFFFFF


class _DevMap:
    """The kernel's dev for a path = its superblock's s_dev, taken from the
    mount the path lives on (/proc/self/mountinfo field 3). stat()'s st_dev is
    not it on overlayfs (non-directories report the layer's dev) or btrfs
    (subvolumes report their own anonymous dev)."""

    def __init__(self):
        self.mounts = mountinfo.mounts()

    def key(self, path: str, st) -> tuple[int, int]:
        m = mountinfo.mount_of(os.path.realpath(path), self.mounts)
        return (m.kdev if m is not None else _kdev(st.st_dev), st.st_ino)


# ---------------------------------------------------------------- probe
_SYS_bpf = 321
BPF_PROG_LOAD = 5
BPF_RAW_TRACEPOINT_OPEN = 17
BPF_PROG_TYPE_LSM = 29
BPF_LSM_MAC = 27


def probe() -> tuple[bool, str]:
    """Can BPF LSM programs load and attach here? Loads `return 0` on file_open."""
    try:
        lsms = Path("/sys/kernel/security/lsm").read_text().strip()
    except OSError:
        lsms = None
    try:
        lib = bpf.lib()
    except OSError as e:
        return False, f"libbpf.so.1 not available: {e}"
    btf_id = lib.libbpf_find_vmlinux_btf_id(b"file_open", BPF_LSM_MAC)
    if btf_id < 0:
        return False, "kernel has no bpf_lsm_file_open in BTF (CONFIG_BPF_LSM off or no BTF)"
    libc = ct.CDLL(None, use_errno=True)
    libc.syscall.restype = ct.c_long
    insns = struct.pack("<BBhi", 0xB7, 0, 0, 0) + struct.pack("<BBhi", 0x95, 0, 0, 0)
    ibuf = ct.create_string_buffer(insns)
    lic = ct.create_string_buffer(b"GPL")
    logbuf = ct.create_string_buffer(4096)
    attr = bytearray(144)
    struct.pack_into("<IIQQIIQ", attr, 0, BPF_PROG_TYPE_LSM, 2, ct.addressof(ibuf),
                     ct.addressof(lic), 1, len(logbuf), ct.addressof(logbuf))
    struct.pack_into("<16s", attr, 48, b"corral_probe")
    struct.pack_into("<I", attr, 68, BPF_LSM_MAC)
    struct.pack_into("<I", attr, 108, btf_id)
    abuf = ct.create_string_buffer(bytes(attr), len(attr))
    fd = libc.syscall(_SYS_bpf, BPF_PROG_LOAD, abuf, len(attr))
    if fd < 0:
        e = ct.get_errno()
        hint = ""
        if lsms is not None and "bpf" not in lsms.split(","):
            hint = f" (lsm= does not include bpf; active: {lsms})"
        elif e == errno.EPERM:
            hint = " (lsm= does not include bpf?)"
        return False, f"kernel refused BPF LSM program: {errno.errorcode.get(e, e)}{hint}"
    try:
        tattr = ct.create_string_buffer(struct.pack("<QI", 0, fd) + bytes(116), 128)
        lfd = libc.syscall(_SYS_bpf, BPF_RAW_TRACEPOINT_OPEN, tattr, 128)
        if lfd < 0:
            e = ct.get_errno()
            return False, f"kernel refused to attach BPF LSM program: {errno.errorcode.get(e, e)}"
        os.close(lfd)
    finally:
        os.close(fd)
    return True, "BPF LSM available" + (f" (lsm={lsms})" if lsms else "")


# ---------------------------------------------------------------- policy compiler
class Compiled:
    """Map entries for one session: {ikey bytes: val bytes}, {pkey bytes: val bytes}."""

    def __init__(self):
        self.irules: dict[tuple[int, int], list] = {}
        self.prules: dict[int, list] = {}
        self.rules: list[tuple[str, str]] = []
        self.max_pdepth = 0


def _merge(table: dict, key, bit: int, slot: str, idx: int) -> None:
    ent = table.setdefault(key, [0, 0, 0])   # bits, rd_rule, wr_rule
    deny = bit in (RB_DENY_READ, RB_DENY_WRITE, RB_DENY_INODE)
    if slot == "rd" and (deny or not ent[0] & (RB_DENY_READ | RB_ALLOW_READ | RB_DENY_INODE)):
        ent[1] = idx
    if slot == "wr" and (deny or not ent[0] & (RB_ALLOW_WRITE | RB_DENY_WRITE)):
        ent[2] = idx
    ent[0] |= bit


def protected_mounts() -> list[str]:
    """Mount points of cgroup/bpf filesystems (never writable in a session)."""
    return sorted(mountinfo.mountpoints(PROTECTED_FSTYPES))


def bpf_mounts() -> list[str]:
    return sorted(mountinfo.mountpoints(("bpf",)))


def pseudo_paths() -> list[str]:
    """/proc, /sys, /dev and every other mount of a kernel pseudo filesystem."""
    return mountinfo.outermost(list(PROTECTED_PATHS) + mountinfo.mountpoints(PSEUDO_FSTYPES))


def corral_paths() -> list[str]:
    """corral's own state/log/cache/package (same list as the Landlock backend;
    the daemon's code paths come in the policy's deny_write, protected.py)."""
    try:
        from corral.client.landlock import corral_paths as lp
        return lp()
    except Exception:
        return ["/run/corral", "/var/log/corral", "/var/cache/corral", str(ROOT)]


def split_policy(policy: dict | None, unix: dict | None = None) -> tuple[dict, list[str]]:
    """-> (file policy, unix.allow list). Takes the filesystem section, that
    section with a "unix" key, or a whole normalized policy (with
    "filesystem" and "unix" sections); `unix` (a {"allow": [...]} section)
    wins over what the dict says. Missing unix (sessions recorded before
    unix.allow existed): nothing allowed."""
    pol = dict(policy or {})
    if {"filesystem", "network", "syscalls"} & set(pol):
        whole = pol
        pol = dict(whole.get("filesystem") or {})
        ux = whole.get("unix")
    else:
        ux = pol.pop("unix", None)
    if unix is not None:
        ux = unix
    allow = (ux.get("allow") or []) if isinstance(ux, dict) else []
    return pol, [str(p) for p in allow]


def compile_policy(seed: int, pol: dict, implicit: bool = True,
                   unix_allow: list[str] | None = None) -> Compiled:
    """Policy dict -> map entries. With `implicit` (the default, as the Landlock
    backend does) a few character devices are always writable and cgroup/bpf
    filesystems are never writable, and corral's socket may be connected to.
    `unix_allow` (or a "unix" key in `pol`): sockets of processes outside the
    session it may connect to (RB_UNIX_ALLOW, by object and by name)."""
    c = Compiled()
    devs = _DevMap()
    pol, allow_unix = split_policy(pol, {"allow": unix_allow} if unix_allow is not None else None)
    unknown = set(pol) - {k for k, _, _ in KINDS}
    if unknown:
        log.warning("file policy: ignoring unknown keys %s", sorted(unknown))
    allow_read = [canonical(p) for p in pol.get("allow_read", []) or []]
    allow_read += [os.path.realpath(p) for p in allow_read]
    items = [(kind, bit, slot, raw, kind) for kind, bit, slot in KINDS
             for raw in pol.get(kind, []) or []]
    if implicit:
        items += [("allow_write", RB_ALLOW_WRITE, "wr", p, "implicit allow_write (device)")
                  for p in DEVICE_WRITE_PATHS]
        # corral's own socket: a session may always talk to the daemon (which
        # decides what it may do), and connect() counts as a write here.
        from corral.config import SOCKET
        items += [("allow_write", RB_ALLOW_WRITE, "wr", str(SOCKET), "implicit: corral's socket")]
        items += [("pseudo", RB_PSEUDO, "wr", p, "implicit: kernel interface, not writable")
                  for p in pseudo_paths()]
        items += [("deny_write", RB_DENY_WRITE, "wr", p, "implicit deny_write")
                  for p in protected_mounts() + corral_paths()]
        items += [("deny_read", RB_DENY_READ, "rd", p, "implicit deny_read (bpffs)")
                  for p in bpf_mounts()]
        items += [("unix.allow", RB_UNIX_ALLOW, "-", str(SOCKET), "implicit: corral's socket")]
    items += [("unix.allow", RB_UNIX_ALLOW, "-", p, "unix.allow") for p in allow_unix]
    for kind, bit, slot, raw, label in items:
        p = canonical(raw)
        idx = len(c.rules)
        if idx >= MAX_RULES:
            raise ValueError(f"file policy: more than {MAX_RULES} rules")
        c.rules.append((label, p))
        names = {p, os.path.realpath(p)}
        for q in names:
            comps = _comps(q)
            if len(comps) > MAX_PDEPTH:
                raise ValueError(f"file policy path has more than {MAX_PDEPTH} components: {q}")
            if comps:
                _merge(c.prules, path_hash(seed, comps), bit, slot, idx)
                c.max_pdepth = max(c.max_pdepth, len(comps))
            if bit in (RB_DENY_READ, RB_DENY_WRITE):
                for j in range(1, len(comps)):
                    _merge(c.prules, path_hash(seed, comps[:j]), RB_ANCESTOR, "-", idx)
                    anc = "/" + "/".join(os.fsdecode(x) for x in comps[:j])
                    try:
                        st = os.stat(anc)
                        _merge(c.irules, devs.key(anc, st), RB_ANCESTOR, "-", idx)
                    except OSError:
                        pass
        try:
            st = os.stat(p)
        except OSError:
            continue
        _merge(c.irules, devs.key(p, st), bit, slot, idx)
        if bit == RB_DENY_READ and stat.S_ISDIR(st.st_mode):
            _scan_hardlinks(c, p, allow_read, idx, devs)
    return c


def _scan_hardlinks(c: Compiled, root: str, allow_read: list[str], idx: int, devs) -> None:
    """Files under a deny_read tree that have other names (nlink > 1) are denied
    by inode, so a hard link that predates the session can't leak them."""
    seen = 0
    for dirpath, dirnames, filenames in os.walk(root, onerror=lambda e: None):
        dirnames[:] = [d for d in dirnames if not under_any(os.path.join(dirpath, d), allow_read)]
        for fn in filenames:
            seen += 1
            full = os.path.join(dirpath, fn)
            if under_any(full, allow_read):
                continue
            try:
                st = os.lstat(full)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                _merge(c.irules, devs.key(full, st), RB_DENY_INODE, "rd", idx)
        if seen > HARDLINK_SCAN_LIMIT:
            log.warning("file policy: hard-link scan of %s stopped after %d files", root, seen)
            return


# ---------------------------------------------------------------- cgroups
def cgroup2_mount() -> Path | None:
    try:
        return cgroups.cgroup2_mount()
    except cgroups.CgroupError:
        return None


def cgroup_level(cgid: int) -> int:
    """Depth of the cgroup with this id below the cgroup2 root (root = 0)."""
    root = cgroup2_mount()
    if root is None:
        raise RuntimeError("no cgroup2 mount")
    if os.stat(root).st_ino == cgid:
        return 0
    for dirpath, dirnames, _ in os.walk(root):
        for d in dirnames:
            full = os.path.join(dirpath, d)
            try:
                if os.stat(full).st_ino == cgid:
                    rel = os.path.relpath(full, root)
                    return len(rel.split("/"))
            except OSError:
                pass
    raise LookupError(f"no cgroup with id {cgid} under {root}")


# ---------------------------------------------------------------- loader
class FileLsm(Backend):
    label = "bpf-lsm"
    #: what a session this backend installed is confined in, and by what
    enforces = ENFORCES

    def __init__(self, force_btf_headers: bool = False):
        bpf.ensure_bpffs(BPFFS)
        self.version = bpf.source_version("file_lsm.c", f"{MAX_DEPTH}/{MAX_PDEPTH}")
        self.pins = bpf.VersionedPins(PIN_ROOT, "file_lsm", self.version)
        self.pin_dir = self.pins.dir
        self.header_mode = None
        self.reused = self.pins.complete(MAPS + [f"link_{h}" for h in HOOKS])
        if not self.reused:
            self._load_and_pin(force_btf_headers)
        self._open_pins()
        self._reader = None
        self._keys: dict[int, tuple[set, set]] = {}
        self._rules: dict[int, list] = {}
        self._migrate_old_versions()

    # -- loading / pinning
    def _load_and_pin(self, force_btf: bool) -> None:
        log.info("compiling file_lsm.c")
        b, self.header_mode = bpf.compile_program(
            "file_lsm.c", {"MAX_DEPTH": MAX_DEPTH, "MAX_PDEPTH": MAX_PDEPTH}, force_btf=force_btf)
        try:
            seed = int.from_bytes(os.urandom(8), "little")
            bpf.Map.of(b["fconf_map"].map_fd, ct.c_uint32, abi.FConf).update(
                bytes(ct.c_uint32(0)), bytes(abi.FConf(seed=seed, level_mask=0)))
            objects = {m: b[m].map_fd for m in MAPS}
            for h in HOOKS:
                fd = b.lsm_fds.get(f"lsm__{h}".encode())
                if fd is None:
                    raise RuntimeError(f"LSM hook {h} not attached")
                objects[f"link_{h}"] = fd
            self.pins.publish(objects)
        finally:
            b.cleanup()   # closes our fds; the pins keep programs attached

    def _open_pins(self) -> None:
        def get(name, key, value):
            return bpf.Map.of(self.pins.get(name), key, value)
        self.fconf = get("fconf_map", ct.c_uint32, abi.FConf)
        self.fsess = get("fsess", ct.c_uint64, abi.FSess)
        self.irules = get("irules", abi.IKey, abi.RuleVal)
        self.prules = get("prules", abi.PKey, abi.RuleVal)
        self.events_fd = self.pins.get("file_events")
        self._lost = [self.pins.get(n) for n in ("file_lost", "file_lost_seen")]
        # The pins outlive daemons: what no daemon reported is this one's to report.
        self.loss = bpf.LossCounter(*self._lost)
        conf = abi.FConf.from_buffer_copy(self.fconf.lookup(bytes(ct.c_uint32(0))))
        self.seed, self.level_mask = conf.seed, conf.level_mask

    def _migrate_old_versions(self) -> None:
        """Pinned programs from an older file_lsm.c: re-add the sessions they
        enforce (from the recorded policies), then detach them."""
        for d in self.pins.predecessors():
            log.warning("replacing pinned file LSM %s with %s", d.name, self.pin_dir.name)
            for cgid, pol in self._recorded_policies():
                if self.fsess.lookup(bytes(ct.c_uint64(cgid))) is None:
                    try:
                        self.add_session(cgid, pol)
                    except (LookupError, OSError, ValueError) as e:
                        log.warning("could not migrate session %d: %s", cgid, e)
            self.pins.retire(d)

    # -- state records (for migration between versions)
    def _record(self, cgid: int, pol: dict | None) -> None:
        try:
            STATE_DIR.mkdir(parents=True, exist_ok=True)
            f = STATE_DIR / f"{cgid}.json"
            if pol is None:
                f.unlink(missing_ok=True)
            else:
                tmp = f.with_suffix(".tmp")
                tmp.write_text(json.dumps(pol))
                os.replace(tmp, f)
        except OSError as e:
            log.warning("could not record file policy of %d: %s", cgid, e)

    def _recorded_policies(self):
        if not STATE_DIR.exists():
            return
        for f in STATE_DIR.glob("*.json"):
            try:
                yield int(f.stem), json.loads(f.read_text())
            except (ValueError, OSError):
                continue

    # -- sessions
    def _current_keys(self, cgid: int) -> tuple[set, set]:
        if cgid not in self._keys:
            ik = {k for k in self.irules.keys() if abi.IKey.from_buffer_copy(k).cgid == cgid}
            pk = {k for k in self.prules.keys() if abi.PKey.from_buffer_copy(k).cgid == cgid}
            self._keys[cgid] = (ik, pk)
        return self._keys[cgid]

    def _install(self, cgid: int, policy: dict, unix: dict | None = None) -> Compiled:
        fs_policy, allow_unix = split_policy(policy, unix)
        comp = compile_policy(self.seed, fs_policy, unix_allow=allow_unix)
        level = cgroup_level(cgid)
        if level >= 16:
            raise ValueError(f"cgroup {cgid} is nested too deep (level {level} >= 16)")
        if not self.level_mask & (1 << level):
            self.level_mask |= 1 << level
            self.fconf.update(bytes(ct.c_uint32(0)),
                              bytes(abi.FConf(seed=self.seed, level_mask=self.level_mask)))
        old_i, old_p = self._current_keys(cgid)
        new_i, new_p = set(), set()
        for (dev, ino), (bits, rd, wr) in comp.irules.items():
            k = bytes(abi.IKey(cgid, dev, ino))
            self.irules.update(k, bytes(abi.RuleVal(bits, rd, wr)))
            new_i.add(k)
        for h, (bits, rd, wr) in comp.prules.items():
            k = bytes(abi.PKey(cgid, h))
            self.prules.update(k, bytes(abi.RuleVal(bits, rd, wr)))
            new_p.add(k)
        skey = bytes(ct.c_uint64(cgid))
        cur = self.fsess.lookup(skey)
        # A live session keeps its rate limiter state; a new one starts with a
        # second's worth of tokens.
        sess = abi.FSess.from_buffer_copy(cur) if cur else \
            abi.FSess(cfg=abi.SessionCfg(rate_tokens=abi.FILE_RATE_PER_SEC))
        sess.cfg.flags |= SESS_FILE_ENFORCE
        sess.max_pdepth = comp.max_pdepth
        sess.pad = 0
        self.fsess.update(skey, bytes(sess))
        for k in old_i - new_i:
            self.irules.delete(k)
        for k in old_p - new_p:
            self.prules.delete(k)
        self._keys[cgid] = (new_i, new_p)
        self._rules[cgid] = comp.rules
        self._record(cgid, {**fs_policy, "unix": {"allow": allow_unix}})
        return comp

    # -- the backend interface (backends/base.py)
    def install(self, cgid: int, policy: dict, unix: dict | None = None, **how) -> None:
        """`policy`: the filesystem section (optionally with a "unix" key) or a
        whole normalized policy; `unix`: the policy's unix section
        ({"allow": [socket paths]}), when the caller passes it apart."""
        self._install(cgid, policy, unix)

    def enforcement(self) -> dict:
        """What this backend enforces for a session it installed (merged into
        the session's `enforcement`)."""
        return dict(ENFORCES)

    def remove(self, cgid: int) -> None:
        self.remove_session(cgid)

    def describe(self, cgid: int, rule_id: int) -> str:
        if rule_id in BOUNDARY_RULES:
            return BOUNDARY_RULES[rule_id]
        return describe_file_rule(rule_id, self.rule_for(cgid, rule_id))

    def snapshot(self, cgid: int) -> list | None:
        return self.rules_snapshot(cgid)

    def describe_snapshot(self, snapshot: list | None, rule_id: int) -> str:
        if rule_id in BOUNDARY_RULES:
            return BOUNDARY_RULES[rule_id]
        idx = rule_id - RULE_USER
        rule = snapshot[idx] if snapshot and 0 <= idx < len(snapshot) else None
        return describe_file_rule(rule_id, rule)

    # the names tools and tests use
    add_session = update_session = install

    def remove_session(self, cgid: int) -> None:
        self.fsess.delete(bytes(ct.c_uint64(cgid)))
        ik, pk = self._current_keys(cgid)
        for k in ik:
            self.irules.delete(k)
        for k in pk:
            self.prules.delete(k)
        self._keys.pop(cgid, None)
        self._rules.pop(cgid, None)
        self._record(cgid, None)

    def rules_snapshot(self, cgid: int) -> list | None:
        """The session's compiled rule list (for events that arrive after it ended)."""
        rules = self._rules.get(cgid)
        return list(rules) if rules is not None else None

    def rule_for(self, cgid: int, rule: int) -> tuple[str, str] | None:
        """(kind, path) for an event's rule id, if it names a user rule."""
        rules = self._rules.get(cgid)
        if rules is None:
            for c, pol in self._recorded_policies() or []:
                if c == cgid:
                    rules = compile_policy(self.seed, pol).rules
        if rules and rule >= RULE_USER and rule - RULE_USER < len(rules):
            return rules[rule - RULE_USER]
        return None

    # -- events
    def open_events(self, callback) -> None:
        if self._reader is None:
            self._reader = bpf.RingReader(self.events_fd, callback, log)
        else:
            self._reader.callback = callback

    def poll(self, timeout_ms: int) -> None:
        if self._reader is not None:
            self._reader.poll(timeout_ms)

    def lost_events(self) -> int:
        """Events lost to a full ring buffer since this daemon loaded, plus
        those no earlier daemon reported (noted in the pinned file_lost_seen)."""
        return self.loss.downtime + self.loss.new()

    def close(self) -> None:
        """Close our fds; pinned programs keep enforcing."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        for m in (self.fconf, self.fsess, self.irules, self.prules):
            m.close()
        for fd in [self.events_fd] + self._lost:
            try:
                os.close(fd)
            except OSError:
                pass


def unpin_all() -> None:
    """Detach every corral file LSM program (removes the pins)."""
    bpf.VersionedPins.remove_all(PIN_ROOT, "file_lsm")
