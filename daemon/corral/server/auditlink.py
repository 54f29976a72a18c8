"""Kernel audit -> corral audit records (Landlock file denials, seccomp denials,
EROFS refusals of the session's read-only mount view).

Network denials reach corral from BPF ring buffers; file denials enforced by
Landlock and syscall denials enforced by seccomp are only reported by the
kernel's audit subsystem. :class:`AuditLink` listens on the NETLINK_AUDIT
multicast group (AUDIT_NLGRP_READLOG, the same read-only feed journald uses;
it needs CAP_AUDIT_READ, not the auditd role) and turns the kernel's text
records into corral-shaped dicts.

What the kernel sends (measured on 6.18, Landlock ABI 7, no auditd):

* **Landlock** logs a denial only when kernel audit is *enabled*
  (``audit_enabled``; ``auditctl -e 1`` / AUDIT_SET). With audit disabled
  nothing is emitted at all, whatever the restrict_self flags. By default a
  domain logs denials of the program that called landlock_restrict_self only;
  ``LANDLOCK_RESTRICT_SELF_LOG_NEW_EXEC_ON`` (what corral.landlock uses on ABI
  7) is needed to log denials after the agent is exec'd. One denial is::

      1423 audit(T:S): domain=1a1ec05e1 blockers=fs.read_file path="/x" dev="vda" ino=123
      1424 audit(T:S): domain=1a1ec05e1 status=allocated mode=enforcing pid=.. uid=.. exe=.. comm=..
      1300 audit(T:S): arch=c000003e syscall=257 success=no exit=-13 ... pid=.. uid=.. comm=.. exe=..
      1327 audit(T:S): proctitle=...          (dropped by our exclude rules)
      1320 audit(T:S):

  For create/remove/mkdir denials (fs.make_*, fs.remove_*) ``path=`` is the
  *parent directory* whose right is missing, not the new/removed entry.
  Landlock denials and BPF-LSM denials never duplicate: LSM order here is
  ``lockdown,capability,landlock,bpf`` and the first denying LSM ends the hook.

  The ACCESS record (1423) carries no pid: the actor comes from the SYSCALL
  record (1300) of the same serial. The DOMAIN record (1424, status=allocated)
  appears with the first denial of a domain only and names the process that
  created the domain (``corral run``, i.e. the session leader, in the session
  cgroup). Per the kernel source (audit_alloc), a task forked before audit
  was first enabled has no audit context: its records come without
  SYSCALL/EOE, each with its own serial; then the domain id -> cgroup memory
  (from the 1424 record or an earlier record of the domain) is the only link
  to a session.
* **seccomp** logs ERRNO (and TRAP/TRACE/USER_NOTIF) actions only when the
  filter was loaded with ``SECCOMP_FILTER_FLAG_LOG`` (libseccomp
  ``SCMP_FLTATR_CTL_LOG``; ``confine.build_seccomp(log=True)``) *and* the
  action is listed in /proc/sys/kernel/seccomp/actions_logged (default: all
  but allow). This does **not** need audit to be enabled. Kill actions are
  logged even without the flag. A SECCOMP record (1326) is complete on its own
  (pid, uid, comm, exe, arch, syscall, code) and has its own serial, no EOE:
  seccomp runs before the syscall's audit entry.
* **EROFS refusals** of the session's mount view (client/mountguard.py:
  everything outside allow_write is a read-only mount). The kernel refuses a
  write to a read-only mount (mnt_want_write) before any LSM hook runs, so
  Landlock never sees these and logs nothing. AuditLink adds one syscall
  *exit* rule per ABI (``-a always,exit -F arch=b64 -S chmod,... -F
  exit=-EROFS -k corral-erofs``, and arch=b32 for i386; :func:`erofs_auditctl`)
  on the syscalls that modify the file system (:data:`EROFS_SYSCALLS`). One
  refusal is::

      1300 audit(T:S): arch=c000003e syscall=268 success=no exit=-30 a0=ffffff9c ...
                       items=1 ppid=.. pid=.. uid=0 .. comm="chmod" exe="/usr/bin/chmod"
                       key="corral-erofs"
      1307 audit(T:S): cwd="/opt/x"
      1302 audit(T:S): item=0 name="f" inode=.. dev=fe:00 mode=0100644 .. nametype=NORMAL
      1327 audit(T:S): proctitle=...          (dropped by our exclude rules)
      1320 audit(T:S):

  ``name=`` is the string the program passed (relative names are joined with
  the CWD record, or with the directory fd's path), not a resolved path. When
  the refusal is about a new or removed entry (create, mkdir, mknod, symlink,
  link, unlink, rmdir, rename) the kernel fails before it looks the entry up
  and logs only the *parent directory* (nametype=PARENT), as Landlock does for
  fs.make_*/fs.remove_*. fd-based calls (fchmod, fsetxattr, ...) log
  ``name=(null)`` with the inode: the target is then read from
  /proc/<pid>/fd/<fd> when the SYSCALL record arrives (best effort, like the
  cgroup). rename's two PARENT items come in the order the kernel called
  getname() for its arguments (compiler-dependent; on this x86-64 build the
  new name first): ``target`` is the last one, ``paths`` lists both.

  The rule matches every process on the host (audit rules have no cgroup
  field): records of processes outside corral's cgroups are dropped here
  (``cgroup_prefix``), and for these records a process whose cgroup cannot be
  read any more is attributed through its parent (ppid) or dropped.

  Cost, measured (6.18, 2 vCPU VM, audit enabled with the exclude rules in
  both cases, median of 5 runs): getppid() 240 -> 445 ns, stat() 1110 -> 1755
  ns, open()+close() 2270 -> 3295 ns per call, for every task on the host that
  has an audit context. Not a mask test only: the first syscall rule
  (audit_n_rules > 0) turns off the kernel's "dummy" audit context, so every
  syscall's entry/exit is recorded and filtered and every path lookup collects
  names and inode data. The i386 rule adds nothing measurable on top.

  Not covered: x32 syscalls (their numbers carry bit 30, beyond any audit
  mask; corral's seccomp filter kills x32 and i386 calls anyway, so the i386
  rule only matters without that filter), io_uring (no syscall exit; corral's
  seccomp refuses io_uring_setup), tasks without an audit context (created
  before audit was first enabled: sessions always start later), writes refused
  while auditd owns audit and has not loaded the rule, and records the kernel
  drops (backlog, ``kind="lost"``).

Enabling audit (scoped). When the kernel's audit is disabled and no auditd is
registered, AuditLink enables it (logged at WARNING) and first installs
``never,exclude`` msgtype rules (``auditctl -l`` shows them as
``-a never,exclude -F msgtype<1300`` ...) that drop every record type
except SYSCALL (1300), PATH (1302), CWD (1307), EOE (1320), SECCOMP (1326),
LANDLOCK_ACCESS (1423) and LANDLOCK_DOMAIN (1424), and the EROFS exit rules
above. Landlock denials inside a syscall now come with PATH/CWD records too
(the names the syscall looked up); the Landlock record keeps them in ``raw``
only: its target is Landlock's own resolved ``path=``. Without the exclude
rules, enabling audit makes the kernel also
report every BPF program load/unload (1334 + SYSCALL, corrald loads dozens),
netfilter changes, user-space PAM/login messages, config changes, our own
netlink listener bind (1335), ... The exclude filter runs before a record is
built, so an excluded record does not turn on SYSCALL/EOE records for its
syscall either: what remains is Landlock denials (with their SYSCALL/EOE) and
seccomp records. Other effects of audit_enabled=1, documented, not avoidable:

* tasks created from then on get an audit context (syscall entry/exit take
  the audit slow path; without audit rules this is cheap but not free);
* with no auditd registered the kernel also printk()s each remaining record
  to the kernel log, rate-limited by printk_ratelimit ("kauditd_printk_skb:
  N callbacks suppressed"), then drops it (nothing is queued).
* a denial flood overruns the kernel's backlog (default 64 records): measured,
  20000 denied opens in a tight loop delivered 4588 records, 15412 lost (the
  kernel's ``lost`` counter). When AuditLink enables audit it raises the
  backlog limit to 8192 (then 16455 delivered, 3545 lost; the flooding task
  is slowed by the kernel's backlog wait). Losses are reported as
  ``kind="lost"`` records; AuditLink also rate-limits per cgroup.

Pitfall, measured: an exclude rule must have no filter key (``-k``): the
kernel's exclude filter stops at the first field it does not evaluate and
keeps the record, so a keyed rule silently excludes nothing.

AuditLink never touches the configuration when audit is locked, when an
auditd is registered (its owner decides; auditd's ``auditctl -D`` on start
removes our rules too), or when audit was enabled by someone else. One
exception: audit enabled, no auditd, and corral's complete exclude rule set
(this version's or the previous one, which did not keep PATH/CWD) loaded --
that is the configuration an earlier corrald left (close() keeps audit on):
AuditLink then brings it up to date (exclude rules, EROFS rules) and says so
(``adopted``). close() leaves audit enabled on purpose: other listeners
(another corrald instance, journald) may depend on it; :func:`restore_audit`
undoes it explicitly, EROFS rules included. When corral does not own audit,
:func:`erofs_report` / :func:`probe` (``corral doctor``) say whether the EROFS
rule is loaded and give the auditctl lines an administrator can add.
"""
from __future__ import annotations

import ctypes
import errno
import logging
import os
import re
import socket
import struct
import time

log = logging.getLogger("corrald.audit")

__all__ = ["AuditLink", "probe", "status", "parse_fields", "syscall_name",
           "restore_audit", "exclude_rules", "erofs_rules", "erofs_auditctl", "erofs_report"]

NETLINK_AUDIT = 9
AUDIT_NLGRP_READLOG = 1

AUDIT_GET = 1000
AUDIT_SET = 1001
AUDIT_LIST_RULES = 1013
AUDIT_ADD_RULE = 1011
AUDIT_DEL_RULE = 1012

AUDIT_SYSCALL = 1300
AUDIT_PATH = 1302
AUDIT_CWD = 1307
AUDIT_EOE = 1320
AUDIT_SECCOMP = 1326
AUDIT_PROCTITLE = 1327
AUDIT_LANDLOCK_ACCESS = 1423
AUDIT_LANDLOCK_DOMAIN = 1424

AUDIT_STATUS_ENABLED = 0x0001
AUDIT_STATUS_BACKLOG_LIMIT = 0x0010

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLMSGHDR = struct.Struct("=IHHII")
AUDIT_STATUS = struct.Struct("=11I")   # struct audit_status (all u32)

# struct audit_rule_data
AUDIT_BITMASK_SIZE = 64
AUDIT_MAX_FIELDS = 64
AUDIT_FILTER_EXIT = 0x04
AUDIT_FILTER_EXCLUDE = 0x05
AUDIT_NEVER = 0
AUDIT_ALWAYS = 2
AUDIT_ARCH = 11
AUDIT_MSGTYPE = 12
AUDIT_EXIT = 103
AUDIT_FILTERKEY = 210
AUDIT_LESS_THAN = 0x10000000
AUDIT_GREATER_THAN = 0x20000000
AUDIT_EQUAL = 0x40000000
AUDIT_SYSCALL_CLASSES = 16      # the top bits of the syscall mask name classes, not syscalls

# record types that survive our exclude rules (everything else is dropped)
KEEP_TYPES = (AUDIT_SYSCALL, AUDIT_PATH, AUDIT_CWD, AUDIT_EOE, AUDIT_SECCOMP,
              AUDIT_LANDLOCK_ACCESS, AUDIT_LANDLOCK_DOMAIN)
# what corral kept before the EROFS rule (recognised, and replaced, on adoption)
LEGACY_KEEP_TYPES = (AUDIT_SYSCALL, AUDIT_EOE, AUDIT_SECCOMP, AUDIT_LANDLOCK_ACCESS,
                     AUDIT_LANDLOCK_DOMAIN)

# ---- EROFS refusals of the read-only mount view ------------------------------
EROFS_KEY = "corral-erofs"
EROFS_RULE = "read-only outside allow_write (mount view)"
AT_REMOVEDIR = 0x200
# syscall -> (op, index of the fd argument its path is relative to -- or, with
# no path, the fd it acts on -- or None). Ops are those of the Landlock records
# ("open" becomes open_write for an existing file, create for a new one).
EROFS_SYSCALLS = {
    "chmod": ("setattr", None), "fchmod": ("setattr", 0), "fchmodat": ("setattr", 0),
    "fchmodat2": ("setattr", 0),
    "chown": ("setattr", None), "fchown": ("setattr", 0), "lchown": ("setattr", None),
    "fchownat": ("setattr", 0),
    "utime": ("setattr", None), "utimes": ("setattr", None), "utimensat": ("setattr", 0),
    "futimesat": ("setattr", 0),
    "setxattr": ("setxattr", None), "lsetxattr": ("setxattr", None),
    "fsetxattr": ("setxattr", 0), "setxattrat": ("setxattr", 0),
    "removexattr": ("removexattr", None), "lremovexattr": ("removexattr", None),
    "fremovexattr": ("removexattr", 0), "removexattrat": ("removexattr", 0),
    "truncate": ("truncate", None), "ftruncate": ("truncate", 0),
    "open": ("open", None), "openat": ("open", 0), "openat2": ("open", 0),
    "creat": ("open", None),
    "mkdir": ("mkdir", None), "mkdirat": ("mkdir", 0),
    "mknod": ("mknod", None), "mknodat": ("mknod", 0),
    "unlink": ("unlink", None), "unlinkat": ("unlink", 0), "rmdir": ("rmdir", None),
    "rename": ("rename_from", None), "renameat": ("rename_from", 0),
    "renameat2": ("rename_from", 0),
    "link": ("link", None), "linkat": ("link", 2),
    "symlink": ("symlink", None), "symlinkat": ("symlink", 1),
    # i386 only (libseccomp resolves them to nothing on x86-64)
    "chown32": ("setattr", None), "fchown32": ("setattr", 0), "lchown32": ("setattr", None),
    "truncate64": ("truncate", None), "ftruncate64": ("truncate", 0),
    "utimensat_time64": ("setattr", 0),
}
# Numbers of the syscall table shared by all architectures since 5.1 (x86 and
# arm included), for names an older libseccomp does not know (2.5.4 has no
# setxattrat/removexattrat, 6.13).
EROFS_UNIFIED_NRS = {"openat2": 437, "fchmodat2": 452, "setxattrat": 463, "removexattrat": 466}

_GROUPED = frozenset({AUDIT_LANDLOCK_ACCESS, AUDIT_LANDLOCK_DOMAIN, AUDIT_SYSCALL, AUDIT_PATH,
                      AUDIT_CWD, AUDIT_EOE})
_EROFS_KEY_FIELD = f'key="{EROFS_KEY}"'

GROUP_TIMEOUT = 0.5     # seconds to wait for the EOE of a Landlock record group
MAX_PENDING = 4096      # serial groups held at most (then the oldest are flushed)
DOMAIN_CACHE = 4096     # Landlock domains remembered (creator pid/cgroup)
RCVBUF = 8 << 20
RATE_PER_SEC = 200      # per-cgroup records/s (as bpf/net.c)
RATE_BURST = 400
BACKLOG_LIMIT = 8192    # kernel audit backlog when we enable audit (default 64)

# seccomp actions (SECCOMP_RET_*), as in the audit code= field
SECCOMP_ACTIONS = {0x80000000: "kill_process", 0x00000000: "kill_thread",
                   0x00030000: "trap", 0x00050000: "errno", 0x7fc00000: "user_notif",
                   0x7ff00000: "trace", 0x7ffc0000: "log", 0x7fff0000: "allow"}

# Landlock blockers -> (kind, op). fs ops use the names of events.FILE_OPS
# where one exists.
BLOCKER_OPS = {
    "fs.execute": ("file", "exec"),
    "fs.write_file": ("file", "open_write"),
    "fs.read_file": ("file", "open_read"),
    "fs.read_dir": ("file", "readdir"),
    "fs.remove_dir": ("file", "rmdir"),
    "fs.remove_file": ("file", "unlink"),
    "fs.make_char": ("file", "mknod"),
    "fs.make_dir": ("file", "mkdir"),
    "fs.make_reg": ("file", "create"),
    "fs.make_sock": ("file", "mknod"),
    "fs.make_fifo": ("file", "mknod"),
    "fs.make_block": ("file", "mknod"),
    "fs.make_sym": ("file", "symlink"),
    "fs.refer": ("file", "refer"),
    "fs.truncate": ("file", "truncate"),
    "fs.ioctl_dev": ("file", "ioctl"),
    "fs.change_topology": ("file", "mount"),
    "net.bind_tcp": ("net", "bind"),
    "net.connect_tcp": ("net", "connect"),
    "scope.abstract_unix_socket": ("net", "unix_connect"),
    "scope.signal": ("signal", "kill"),
}

# fields the kernel writes with audit_log_untrustedstring(): "quoted" when
# harmless, bare upper-case hex when they contain a space, quote, control or
# non-ASCII byte.
HEX_FIELDS = frozenset({"path", "name", "comm", "exe", "ocomm", "proctitle", "cwd",
                        "key", "laddr", "faddr"})

_HDR = re.compile(r"audit\((\d+)\.(\d+):(\d+)\):\s?")
_HEX = re.compile(r"[0-9A-F]+")


# ---- netlink plumbing ------------------------------------------------------
def _nlmsg(typ: int, flags: int, seq: int, payload: bytes = b"") -> bytes:
    return NLMSGHDR.pack(NLMSGHDR.size + len(payload), typ, flags, seq, 0) + payload


def _iter_msgs(data: bytes, with_seq: bool = False):
    off = 0
    while off + NLMSGHDR.size <= len(data):
        ln, typ, flags, seq, pid = NLMSGHDR.unpack_from(data, off)
        if ln < NLMSGHDR.size:
            break
        body = data[off + NLMSGHDR.size:off + ln]
        yield (typ, body, seq) if with_seq else (typ, body)
        off += (ln + 3) & ~3


class _Control:
    """A unicast NETLINK_AUDIT socket for requests (status, rules)."""

    def __init__(self):
        self.s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_AUDIT)
        self.s.bind((0, 0))
        self.s.settimeout(2.0)
        self.seq = 0

    def close(self):
        self.s.close()

    def request(self, typ: int, payload: bytes = b"", want: int | None = None,
                multi: bool = False) -> list[bytes]:
        """Send a request; return the payloads of the answer messages of type
        ``want`` (after the ACK). Raises OSError for a negative ACK."""
        self.seq += 1
        self.s.send(_nlmsg(typ, NLM_F_REQUEST | NLM_F_ACK, self.seq, payload))
        out: list[bytes] = []
        acked = False
        while True:
            data = self.s.recv(1 << 16)
            for t, body, seq in _iter_msgs(data, with_seq=True):
                if seq != self.seq:
                    continue        # a late answer to an earlier (timed out) request
                if t == NLMSG_ERROR:
                    err = struct.unpack_from("=i", body)[0]
                    if err:
                        raise OSError(-err, f"audit netlink request {typ}: {os.strerror(-err)}")
                    acked = True
                elif t == NLMSG_DONE:
                    return out
                elif want is not None and t == want:
                    out.append(body)
            if acked and (want is None or (out and not multi)):
                return out

    def status(self) -> dict:
        body = self.request(AUDIT_GET, want=AUDIT_GET)[0]
        body = body.ljust(AUDIT_STATUS.size, b"\0")
        names = ("mask", "enabled", "failure", "pid", "rate_limit", "backlog_limit",
                 "lost", "backlog", "feature_bitmap", "backlog_wait_time",
                 "backlog_wait_time_actual")
        return dict(zip(names, AUDIT_STATUS.unpack_from(body)))

    def set_enabled(self, on: bool) -> None:
        vals = [0] * 11
        vals[0] = AUDIT_STATUS_ENABLED
        vals[1] = 1 if on else 0
        self.request(AUDIT_SET, AUDIT_STATUS.pack(*vals))

    def list_rules(self) -> list[bytes]:
        return self.request(AUDIT_LIST_RULES, want=AUDIT_LIST_RULES, multi=True)


RULE_HEAD = struct.Struct(f"=III{AUDIT_BITMASK_SIZE}I{AUDIT_MAX_FIELDS}I{AUDIT_MAX_FIELDS}I"
                          f"{AUDIT_MAX_FIELDS}II")


def _pack(flags: int, action: int, mask: list[int], conds: list[tuple[int, int, int]],
          buf: bytes = b"") -> bytes:
    """struct audit_rule_data: ``conds`` [(field, op, value)] ANDed, ``buf``
    the strings of string fields (a filter key's value is its length)."""
    n = len(conds)
    pad = [0] * (AUDIT_MAX_FIELDS - n)
    return RULE_HEAD.pack(flags, action, n, *mask, *([c[0] for c in conds] + pad),
                          *([c[2] for c in conds] + pad), *([c[1] for c in conds] + pad),
                          len(buf)) + buf


def _rule(conds: list[tuple[int, int]]) -> bytes:
    """struct audit_rule_data for ``never,exclude`` with msgtype conditions
    [(op, value)] ANDed. No filter key: the kernel's exclude filter
    (audit_filter()) stops evaluating -- and keeps the record -- at the first
    field that is not msgtype/pid/uid/..., a key included."""
    return _pack(AUDIT_FILTER_EXCLUDE, AUDIT_NEVER, [0xFFFFFFFF] * AUDIT_BITMASK_SIZE,
                 [(AUDIT_MSGTYPE, op, v) for op, v in conds])


def _exclude_conds(keep=KEEP_TYPES) -> list[list[tuple[int, int]]]:
    keep = sorted(set(keep))
    out = [[(AUDIT_LESS_THAN, keep[0])]]
    for lo, hi in zip(keep, keep[1:]):
        if hi - lo > 1:
            out.append([(AUDIT_GREATER_THAN, lo), (AUDIT_LESS_THAN, hi)])
    out.append([(AUDIT_GREATER_THAN, keep[-1])])
    return out


def exclude_rules(keep=KEEP_TYPES) -> list[bytes]:
    """never,exclude rules dropping every msgtype not in ``keep``."""
    return [_rule(c) for c in _exclude_conds(keep)]


def _install_exclude_rules(ctl: _Control) -> int:
    n = 0
    for r in exclude_rules():
        try:
            ctl.request(AUDIT_ADD_RULE, r)
            n += 1
        except OSError as e:
            if e.errno != errno.EEXIST:
                raise
    return n


def _parse_rule(body: bytes) -> dict | None:
    """A listed rule: flags (filter list), action, mask, fields [(field, op,
    value)], buf, and ``body`` (the bytes AUDIT_DEL_RULE needs)."""
    if len(body) < RULE_HEAD.size:
        return None
    v = RULE_HEAD.unpack_from(body)
    flags, action, n = v[:3]
    if not 0 <= n <= AUDIT_MAX_FIELDS:
        return None
    m = 3 + AUDIT_BITMASK_SIZE
    fields = v[m:m + n]
    values = v[m + AUDIT_MAX_FIELDS:m + AUDIT_MAX_FIELDS + n]
    ops = v[m + 2 * AUDIT_MAX_FIELDS:m + 2 * AUDIT_MAX_FIELDS + n]
    buflen = v[-1]
    return {"flags": flags, "action": action, "mask": v[3:m],
            "fields": list(zip(fields, ops, values)),
            "buf": body[RULE_HEAD.size:RULE_HEAD.size + buflen],
            "body": body[:RULE_HEAD.size + buflen]}


def _is_our_exclude(r: dict) -> bool:
    """One of corral's exclude rules, this version's or the previous one's."""
    if r["flags"] != AUDIT_FILTER_EXCLUDE or r["action"] != AUDIT_NEVER \
            or not 0 < len(r["fields"]) <= 2 or r["buf"]:
        return False
    if {f for f, _, _ in r["fields"]} != {AUDIT_MSGTYPE}:
        return False
    conds = tuple((op, v) for _, op, v in r["fields"])
    return conds in {tuple(c) for k in (KEEP_TYPES, LEGACY_KEEP_TYPES) for c in _exclude_conds(k)}


def _is_erofs_rule(r: dict) -> bool:
    """An exit rule keyed corral-erofs (ours, or an administrator's copy)."""
    key = EROFS_KEY.encode()
    return (r["flags"] == AUDIT_FILTER_EXIT and r["action"] == AUDIT_ALWAYS
            and (AUDIT_FILTERKEY, AUDIT_EQUAL, len(key)) in r["fields"] and key in r["buf"])


def _rule_arch(r: dict) -> int | None:
    return next((v for f, op, v in r["fields"] if f == AUDIT_ARCH and op == AUDIT_EQUAL), None)


def _listed(ctl: _Control) -> list[dict]:
    return [r for r in map(_parse_rule, ctl.list_rules()) if r is not None]


def _our_rules(ctl: _Control) -> list[bytes]:
    """Our rules currently loaded: the exclude rules (recognised by their exact
    conditions, this version's and the previous one's) and the EROFS exit
    rules (by their key)."""
    return [r["body"] for r in _listed(ctl) if _is_our_exclude(r) or _is_erofs_rule(r)]


def _exclude_state(rules: list[dict]) -> tuple[bool, list[bytes]]:
    """(a complete corral exclude set is loaded -- this version's or the
    previous one's --, loaded corral exclude rules this version does not use)."""
    loaded = {tuple((op, v) for _, op, v in r["fields"]): r["body"]
              for r in rules if _is_our_exclude(r)}
    cur = {tuple(c) for c in _exclude_conds()}
    legacy = {tuple(c) for c in _exclude_conds(LEGACY_KEEP_TYPES)}
    complete = cur <= loaded.keys() or legacy <= loaded.keys()
    return complete, [b for c, b in loaded.items() if c not in cur]


def _install_erofs_rules(ctl: _Control) -> list[str]:
    """Load the EROFS exit rules (replacing corral-erofs rules that differ,
    e.g. another build's syscall set). Returns the ABIs covered ("b64", "b32")."""
    want = erofs_rules()
    bodies = {b for _, _, b in want}
    for r in _listed(ctl):
        if _is_erofs_rule(r) and r["body"] not in bodies:
            try:
                ctl.request(AUDIT_DEL_RULE, r["body"])
            except OSError as e:
                if e.errno != errno.ENOENT:
                    raise
    done = []
    for abi, _, body in want:
        try:
            ctl.request(AUDIT_ADD_RULE, body)
        except OSError as e:
            if e.errno != errno.EEXIST:
                raise
        done.append(abi)
    return done


def _delete_erofs_rules(ctl: _Control) -> int:
    """Remove every exit rule keyed corral-erofs through `ctl`; -> how many."""
    n = 0
    for r in _listed(ctl):
        if _is_erofs_rule(r):
            ctl.request(AUDIT_DEL_RULE, r["body"])
            n += 1
    return n


def remove_erofs_rules() -> int:
    """Remove every exit rule keyed corral-erofs (tests; restore_audit does it too)."""
    ctl = _Control()
    try:
        return _delete_erofs_rules(ctl)
    finally:
        ctl.close()


def status() -> dict:
    """The kernel's audit status (AUDIT_GET); raises OSError."""
    ctl = _Control()
    try:
        return ctl.status()
    finally:
        ctl.close()


def restore_audit() -> dict:
    """Remove corral's exclude and EROFS rules and disable audit again if no
    auditd is registered. For administrators and tests; the daemon never calls it."""
    ctl = _Control()
    try:
        removed = 0
        for r in _our_rules(ctl):
            try:
                ctl.request(AUDIT_DEL_RULE, r)
                removed += 1
            except OSError as e:
                if e.errno != errno.ENOENT:
                    raise
        st = ctl.status()
        disabled = False
        if st["enabled"] == 1 and st["pid"] == 0:
            ctl.set_enabled(False)
            disabled = True
        return {"rules_removed": removed, "disabled": disabled}
    finally:
        ctl.close()


# ---- syscall names (libseccomp) ------------------------------------------------
AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
AUDIT_ARCH_AARCH64 = 0xC00000B7
AUDIT_ARCH_ARM = 0x40000028
AUDIT_ARCH_64BIT = 0x80000000
SCMP_ARCH_X32 = 0x4000003E
X32_SYSCALL_BIT = 0x40000000
# the 32-bit ABI a 64-bit kernel also runs (its syscall numbers differ)
COMPAT_ARCH = {AUDIT_ARCH_X86_64: AUDIT_ARCH_I386, AUDIT_ARCH_AARCH64: AUDIT_ARCH_ARM}

_resolve = None
_free = None
_lib = None


def _seccomp_lib():
    global _lib
    if _lib is None:
        try:
            _lib = ctypes.CDLL("libseccomp.so.2")
        except OSError:
            _lib = False
    return _lib or None


def _seccomp_fn():
    global _resolve, _free
    if _resolve is None:
        try:
            lib = _seccomp_lib()
            if lib is None:
                raise OSError("libseccomp.so.2 not found")
            f = lib.seccomp_syscall_resolve_num_arch
            f.restype = ctypes.c_void_p
            f.argtypes = [ctypes.c_uint32, ctypes.c_int]
            libc = ctypes.CDLL(None)
            libc.free.argtypes = [ctypes.c_void_p]
            libc.free.restype = None
            _resolve, _free = f, libc.free
        except (OSError, AttributeError):
            _resolve = False
    return _resolve or None


def native_arch() -> int:
    """The audit arch token of this kernel's native ABI (libseccomp's tokens
    are the AUDIT_ARCH_* values)."""
    lib = _seccomp_lib()
    if lib is not None:
        lib.seccomp_arch_native.restype = ctypes.c_uint32
        return int(lib.seccomp_arch_native())
    import platform
    return {"aarch64": AUDIT_ARCH_AARCH64}.get(platform.machine(), AUDIT_ARCH_X86_64)


def _resolve_name(name: str, arch: int) -> int:
    """libseccomp's number for ``name`` on ``arch`` (negative: not there)."""
    lib = _seccomp_lib()
    if lib is None:
        return -1
    f = lib.seccomp_syscall_resolve_name_arch
    f.restype = ctypes.c_int
    f.argtypes = [ctypes.c_uint32, ctypes.c_char_p]
    return int(f(arch & 0xFFFFFFFF, name.encode()))


def syscall_number(name: str, arch: int) -> int | None:
    """Number of syscall ``name`` on audit arch ``arch`` from libseccomp, else
    from EROFS_UNIFIED_NRS; None when unknown there (libseccomp's negative
    pseudo numbers, e.g. chown32 on x86-64, are None)."""
    nr = _resolve_name(name, arch)
    if nr < 0:
        nr = EROFS_UNIFIED_NRS.get(name, -1)
    return nr if nr >= 0 else None


_erofs_tables: dict = {}


def erofs_syscalls(arch: int) -> dict[int, str]:
    """{number: name} of the EROFS_SYSCALLS this arch has (cached)."""
    t = _erofs_tables.get(arch)
    if t is None:
        t = {}
        for name in EROFS_SYSCALLS:
            nr = syscall_number(name, arch)
            if nr is not None and nr < AUDIT_BITMASK_SIZE * 32 - AUDIT_SYSCALL_CLASSES:
                t.setdefault(nr, name)
        _erofs_tables[arch] = t
    return t


def _abi(arch: int) -> str:
    return "b64" if arch & AUDIT_ARCH_64BIT else "b32"


def erofs_rule(arch: int, nrs, key: str = EROFS_KEY) -> bytes:
    """``-a always,exit -F arch=<arch> -S <nrs> -F exit=-EROFS -k <key>`` as
    struct audit_rule_data."""
    mask = [0] * AUDIT_BITMASK_SIZE
    for nr in nrs:
        mask[nr // 32] |= 1 << (nr % 32)
    k = key.encode()
    return _pack(AUDIT_FILTER_EXIT, AUDIT_ALWAYS, mask,
                 [(AUDIT_ARCH, AUDIT_EQUAL, arch),
                  (AUDIT_EXIT, AUDIT_EQUAL, -errno.EROFS & 0xFFFFFFFF),
                  (AUDIT_FILTERKEY, AUDIT_EQUAL, len(k))], k)


def _erofs_arches() -> list[int]:
    native = native_arch()
    return [native] + ([COMPAT_ARCH[native]] if native in COMPAT_ARCH else [])


def erofs_rules() -> list[tuple[str, int, bytes]]:
    """[(abi, arch, rule)]: the native ABI's EROFS rule, and the compat ABI's
    (i386 on x86-64) -- whose syscalls corral's seccomp filter kills anyway
    (bad arch), so it only matters for a session without that filter."""
    out = []
    for arch in _erofs_arches():
        nrs = sorted(erofs_syscalls(arch))
        if nrs:
            out.append((_abi(arch), arch, erofs_rule(arch, nrs)))
    return out


def erofs_auditctl() -> list[str]:
    """The auditctl lines an administrator whose auditd owns audit can add
    (e.g. to /etc/audit/rules.d/corral.rules) so that corral reports these
    refusals. Names this libseccomp does not know are given by number (an
    older auditctl may not know them either)."""
    lines = []
    for arch in _erofs_arches():
        t = erofs_syscalls(arch)
        if not t:
            continue
        names = [name if _resolve_name(name, arch) == nr else str(nr)
                 for nr, name in sorted(t.items())]
        lines.append(f"-a always,exit -F arch={_abi(arch)} -S {','.join(names)} "
                     f"-F exit=-EROFS -k {EROFS_KEY}")
    return lines


_names: dict = {}


def syscall_name(nr: int, arch: int = 0) -> str | None:
    """Name of syscall ``nr`` for the audit arch token ``arch`` (0: native),
    from libseccomp; None when unknown."""
    if arch == AUDIT_ARCH_X86_64 and nr & X32_SYSCALL_BIT:
        arch = SCMP_ARCH_X32
    k = (arch, nr)
    if k in _names:
        return _names[k]
    f = _seccomp_fn()
    name = None
    if f is not None:
        p = f(arch & 0xFFFFFFFF, nr)
        if p:
            name = ctypes.string_at(p).decode()
            _free(p)
    _names[k] = name
    return name


# ---- record parsing ----------------------------------------------------------
def _unhex(v: str) -> str | None:
    if len(v) % 2 or not _HEX.fullmatch(v):
        return None
    try:
        return bytes.fromhex(v).decode("utf-8", errors="backslashreplace")
    except ValueError:
        return None


def parse_fields(text: str) -> dict:
    """``key=value`` pairs of one audit record body. Quoted values are
    unquoted (the kernel never escapes inside quotes: anything needing escapes
    is hex-encoded instead); bare hex in an untrusted-string field (path=,
    comm=, exe=, ...) is decoded; the rest stays a string. A key seen twice
    keeps its first value."""
    out: dict = {}
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] == " ":
            i += 1
        eq = text.find("=", i)
        if eq < 0:
            break
        key = text[i:eq]
        if " " in key:          # stray word without '=': skip it
            i = text.index(" ", i) + 1
            continue
        j = eq + 1
        if j < n and text[j] == '"':
            end = text.find('"', j + 1)
            if end < 0:
                end = n
            val = text[j + 1:end]
            i = end + 1
        elif j < n and text[j] == "'":     # user-space msg='...' blocks
            end = text.find("'", j + 1)
            if end < 0:
                end = n
            val = text[j + 1:end]
            i = end + 1
        else:
            end = text.find(" ", j)
            if end < 0:
                end = n
            val = text[j:end]
            if key in HEX_FIELDS:
                d = _unhex(val)
                if d is not None:
                    val = d
            i = end
        out.setdefault(key, val)
    return out


def _int(v, base=10):
    try:
        return int(v, base)
    except (TypeError, ValueError):
        return None


def read_cgroup(pid: int | None) -> str | None:
    """The cgroup2 path of a live process ("0::" line), None if gone."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/cgroup", "rb") as f:
            for line in f.read().decode(errors="replace").splitlines():
                if line.startswith("0::"):
                    return line[3:]
    except OSError:
        return None
    return None


class _Group:
    """The records of one audit event (one serial number)."""
    __slots__ = ("serial", "time", "first", "recs", "pid")

    def __init__(self, serial: int, ts: float):
        self.serial = serial
        self.time = ts
        self.first = time.monotonic()
        self.recs: list[tuple[int, dict, str]] = []
        self.pid = None


# ---- the link ------------------------------------------------------------------
class _Bucket:
    __slots__ = ("tokens", "last", "suppressed", "since", "pid", "cgroup", "backend")

    def __init__(self, burst: float, now: float):
        self.tokens = burst
        self.last = now
        self.suppressed = 0
        self.since = 0.0
        self.pid = None
        self.cgroup = None
        self.backend = None


class AuditLink:
    """NETLINK_AUDIT multicast listener producing corral audit records.

    ``enable`` (default True): if kernel audit is disabled and no auditd is
    registered, install the scoped exclude rules and enable it (see the module
    doc), with the EROFS exit rules; bring the configuration an earlier
    corrald left up to date (``adopted``). ``cgroup_prefix``: when given (e.g.
    ``"/" + cgroups.ROOT_NAME``), drop records whose actor's cgroup is known
    and not under it (other tenants' Landlock/seccomp records); EROFS records
    are kept only when the actor's (or its parent's) cgroup is known and under
    it, the rule matching every process on the host. ``rate``/``burst``: per-cgroup token
    bucket (the BPF events use 200/s, burst 400); the excess is summarised as
    a ``kind="rate"`` record; None disables it.

    Call :meth:`read` when :meth:`fileno` is readable *and* periodically
    (e.g. every 0.2 s): Landlock records of tasks without an audit context
    come without EOE and are flushed by time, rate summaries and the kernel's
    lost-record counter are checked there too.
    """

    def __init__(self, *, enable: bool = True, cgroup_prefix: str | None = None,
                 rate: float | None = RATE_PER_SEC, burst: float = RATE_BURST,
                 erofs: bool = False):
        self._init_state(cgroup_prefix, rate, burst)
        # The EROFS exit rule is opt-in: any audit syscall rule makes the kernel
        # collect every syscall's names on the whole host (measured here:
        # getppid 240 -> 445 ns, stat 1110 -> 1755 ns, open+close 2270 -> 3295 ns).
        self.erofs = erofs
        try:
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_AUDIT)
        except OSError as e:
            raise OSError(e.errno, f"kernel audit netlink unavailable (CONFIG_AUDIT off?): "
                                   f"{e.strerror}") from None
        try:
            try:
                s.setsockopt(socket.SOL_SOCKET, 33, RCVBUF)     # SO_RCVBUFFORCE
            except OSError:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            try:
                s.bind((0, 1 << (AUDIT_NLGRP_READLOG - 1)))
            except OSError as e:
                raise OSError(e.errno, "cannot join the audit multicast group "
                                       f"(needs CAP_AUDIT_READ): {e.strerror}") from None
            s.setblocking(False)
        except BaseException:
            s.close()
            raise
        self._sock = s
        try:
            self._setup(enable)
        except OSError as e:
            # listening still works (seccomp records need no audit_enabled)
            log.warning("kernel audit status/configuration not available: %s; "
                        "Landlock denials are reported only if audit is enabled", e)

    def _init_state(self, cgroup_prefix, rate, burst) -> None:
        self.enabled_by_us = False
        self.adopted = False        # audit left enabled by an earlier corrald, rules updated
        self.rules_installed = 0
        self.erofs_abis: list[str] = []     # ABIs whose EROFS rule this link loaded
        self.erofs = False
        self.lost = 0
        self.audit_status: dict = {}
        self.cgroup_prefix = cgroup_prefix.rstrip("/") if cgroup_prefix else None
        self.rate = rate
        self.burst = burst
        self._pending: dict[int, _Group] = {}
        self._domains: dict[str, dict] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._kernel_lost: int | None = None
        self._lost_checked = 0.0
        self._sock = None
        self._ctl: _Control | None = None

    @classmethod
    def detached(cls, *, cgroup_prefix: str | None = None, rate: float | None = RATE_PER_SEC,
                 burst: float = RATE_BURST) -> "AuditLink":
        """A link without a socket, fed with :meth:`feed_text` (tests, replay
        of saved audit text)."""
        self = cls.__new__(cls)
        self._init_state(cgroup_prefix, rate, burst)
        return self

    def _setup(self, enable: bool) -> None:
        ctl = _Control()
        try:
            st = ctl.status()
            self.audit_status = st
            if st["enabled"] == 0 and enable:
                if st["pid"]:
                    log.warning("kernel audit is disabled while auditd (pid %d) is registered: "
                                "not enabling it; Landlock file denials will not be reported",
                                st["pid"])
                    return
                self.rules_installed = _install_exclude_rules(ctl)
                self._install_erofs(ctl)
                if st["backlog_limit"] < BACKLOG_LIMIT:
                    vals = [0] * 11
                    vals[0], vals[5] = AUDIT_STATUS_BACKLOG_LIMIT, BACKLOG_LIMIT
                    ctl.request(AUDIT_SET, AUDIT_STATUS.pack(*vals))
                ctl.set_enabled(True)
                self.enabled_by_us = True
                self.audit_status = ctl.status()
                log.warning("enabled kernel audit (was disabled, no auditd) so that Landlock "
                            "denials and EROFS refusals are reported; exclude rules keep only "
                            "record types %s, exit rule key %s (auditctl -l); backlog limit %d; "
                            "with no auditd the kernel also prints these records to the kernel "
                            "log (rate-limited)", ",".join(map(str, KEEP_TYPES)), EROFS_KEY,
                            self.audit_status["backlog_limit"])
            elif st["enabled"] == 1 and enable and not st["pid"] and self._adopt(ctl):
                log.warning("kernel audit was left enabled by an earlier corrald (its exclude "
                            "rules are loaded, no auditd): updated its rules (exclude rules keep "
                            "record types %s; EROFS exit rule: %s)", ",".join(map(str, KEEP_TYPES)),
                            ",".join(self.erofs_abis) or "not loaded")
            elif st["enabled"] == 0:
                log.warning("kernel audit is disabled: Landlock file denials will not be reported")
            self._kernel_lost = self.audit_status.get("lost")
        finally:
            ctl.close()

    def _install_erofs(self, ctl: _Control) -> None:
        if not self.erofs:
            # Not asked for: take ours away if an earlier (opted-in) corrald left them.
            try:
                _delete_erofs_rules(ctl)
            except OSError as e:
                log.warning("could not remove an earlier EROFS audit rule: %s", e)
            return
        try:
            self.erofs_abis = _install_erofs_rules(ctl)
        except OSError as e:
            log.warning("could not load the kernel audit exit rule for EROFS refusals: %s; "
                        "writes refused by the read-only mount view are not reported", e)

    def _adopt(self, ctl: _Control) -> bool:
        """Audit enabled, no auditd: if corral's exclude rules are loaded (an
        earlier corrald enabled audit and close() kept it on), bring them and
        the EROFS rules up to date. Anything else is someone else's."""
        complete, stale = _exclude_state(_listed(ctl))
        if not complete:
            return False
        self.adopted = True
        self.rules_installed = _install_exclude_rules(ctl)
        for body in stale:          # after the new set is in: nothing slips through meanwhile
            try:
                ctl.request(AUDIT_DEL_RULE, body)
            except OSError as e:
                if e.errno != errno.ENOENT:
                    raise
        self._install_erofs(ctl)
        return True

    def fileno(self) -> int:
        if self._sock is None:
            raise ValueError("AuditLink is closed/detached")
        return self._sock.fileno()

    def close(self) -> None:
        """Stop listening. Kernel audit stays enabled (see the module doc)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._ctl is not None:
            self._ctl.close()
            self._ctl = None

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    # -- receive ---------------------------------------------------------
    def read(self) -> list[dict]:
        """Drain the socket; return the finished records (possibly none)."""
        out: list[dict] = []
        while self._sock is not None:
            try:
                data = self._sock.recv(1 << 17)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError as e:
                if e.errno == errno.ENOBUFS:    # our receive buffer overflowed
                    self.lost += 1
                    out.append(_lost_record("audit_overrun", None,
                                            "audit netlink receive buffer full"))
                    continue
                raise
            if not data:
                break
            for typ, body in _iter_msgs(data):
                self._feed(typ, body.rstrip(b"\0").decode("utf-8", errors="replace"), out)
        now = time.monotonic()
        self._flush(out, now)
        self._rate_summaries(out, now)
        self._check_kernel_lost(out, now)
        return out

    def feed_text(self, typ: int, text: str) -> list[dict]:
        """Process one record given as text (tests, replay)."""
        out: list[dict] = []
        self._feed(typ, text, out)
        return out

    def flush(self, force: bool = False) -> list[dict]:
        """Finish Landlock groups still waiting for their EOE (all of them
        with ``force``), and due rate summaries."""
        out: list[dict] = []
        now = float("inf") if force else time.monotonic()
        self._flush(out, now)
        self._rate_summaries(out, now)
        return out

    def _feed(self, typ: int, text: str, out: list) -> None:
        m = _HDR.match(text)
        if not m:
            return
        ts = int(m.group(1)) + int(m.group(2)) / 1000.0
        serial = int(m.group(3))
        body = text[m.end():]
        if typ == AUDIT_SECCOMP:
            # complete on its own: seccomp runs before the syscall's audit
            # entry, so the record has its own serial and no SYSCALL/EOE
            f = parse_fields(body)
            pid = _int(f.get("pid"))
            self._emit(self._seccomp_record(ts, f, f"type={typ} {text}", pid,
                                            read_cgroup(pid)), out)
            return
        if typ not in _GROUPED:
            return          # PROCTITLE and anything an auditd's rules let through
        g = self._pending.get(serial)
        f = None
        if g is None:
            if typ == AUDIT_SYSCALL and _EROFS_KEY_FIELD in body:
                f = parse_fields(body)      # an EROFS refusal: its SYSCALL record comes first
                if f.get("key") != EROFS_KEY or not self._erofs_actor(f):
                    return  # another tenant's, or nobody's we can name
            elif typ in (AUDIT_SYSCALL, AUDIT_PATH, AUDIT_CWD, AUDIT_EOE):
                return      # not ours: a Landlock event's ACCESS record would come first
            g = self._pending[serial] = _Group(serial, ts)
            if len(self._pending) > MAX_PENDING:
                oldest = min(self._pending.values(), key=lambda x: x.first)
                self._finish(self._pending.pop(oldest.serial), out)
        if typ == AUDIT_EOE:
            self._finish(self._pending.pop(serial), out)
            return
        if f is None:
            f = parse_fields(body)
        g.recs.append((typ, f, text))
        if typ == AUDIT_SYSCALL and g.pid is None:
            g.pid = _int(f.get("pid"))
            if "_cgroup" not in f:
                f["_cgroup"] = read_cgroup(g.pid)     # now: the process may exit soon
        elif typ == AUDIT_LANDLOCK_DOMAIN and f.get("status") == "allocated":
            pid = _int(f.get("pid"))
            self._remember_domain(f.get("domain"), {
                "pid": pid, "uid": _int(f.get("uid")), "comm": f.get("comm"),
                "exe": f.get("exe"), "cgroup": read_cgroup(pid)})
        # status=deallocated: keep the entry, late records of the domain may still come

    def _erofs_actor(self, f: dict) -> bool:
        """For an EROFS SYSCALL record, now (the process may exit soon): its
        cgroup (or, the process gone, its parent's: a session's processes stay
        in the session's cgroup) and the paths of the fd arguments it names.
        False when it is not ours to report."""
        pid = _int(f.get("pid"))
        cg = read_cgroup(pid)
        if cg is None:
            cg = read_cgroup(_int(f.get("ppid")))
            if cg is not None:
                f["_cgroup_from"] = "ppid"
        if self.cgroup_prefix is not None and (cg is None or not self._keep(cg)):
            return False
        f["_cgroup"] = cg
        nr, arch = _int(f.get("syscall")), _int(f.get("arch"), 16) or 0
        spec = EROFS_SYSCALLS.get(_erofs_name(nr, arch) or "")
        if spec is not None and spec[1] is not None:
            fd = _signed32(_int(f.get(f"a{spec[1]}"), 16))
            if fd is not None and fd >= 0:      # not AT_FDCWD (-100)
                f["_fd"] = fd
                try:
                    f["_fdpath"] = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    pass
        return True

    def _remember_domain(self, dom: str | None, info: dict) -> None:
        if not dom:
            return
        old = self._domains.get(dom)
        if old is not None:
            for k, v in info.items():
                if old.get(k) is None:
                    old[k] = v
            return
        self._domains[dom] = info
        while len(self._domains) > DOMAIN_CACHE:
            self._domains.pop(next(iter(self._domains)))

    def _flush(self, out: list, now: float) -> None:
        for serial in [s for s, g in self._pending.items() if now - g.first >= GROUP_TIMEOUT]:
            self._finish(self._pending.pop(serial), out)

    def _keep(self, cgroup: str | None) -> bool:
        if self.cgroup_prefix is None or cgroup is None:
            return True
        return cgroup == self.cgroup_prefix or cgroup.startswith(self.cgroup_prefix + "/")

    # -- rate limiting / loss ------------------------------------------------
    def _emit(self, rec: dict | None, out: list) -> None:
        if rec is None or not self._keep(rec.get("cgroup")):
            return
        if self.rate is None:
            out.append(rec)
            return
        key = rec.get("cgroup") or (f"domain:{rec['domain']}" if rec.get("domain")
                                    else f"pid:{rec.get('pid')}")
        now = time.monotonic()
        b = self._buckets.get(key)
        if b is None:
            b = self._buckets[key] = _Bucket(self.burst, now)
            if len(self._buckets) > DOMAIN_CACHE:
                for k in [k for k, x in self._buckets.items() if not x.suppressed][:1024]:
                    del self._buckets[k]
        b.tokens = min(self.burst, b.tokens + (now - b.last) * self.rate)
        b.last = now
        if b.tokens >= 1:
            b.tokens -= 1
            if b.suppressed:
                out.append(self._rate_record(b))
            out.append(rec)
        else:
            if not b.suppressed:
                b.since = now
            b.suppressed += 1
            b.pid, b.cgroup, b.backend = rec.get("pid"), rec.get("cgroup"), rec.get("backend")

    def _rate_record(self, b: _Bucket) -> dict:
        n, b.suppressed = b.suppressed, 0
        return {"time": time.time(), "pid": b.pid, "comm": None, "uid": None, "kind": "rate",
                "op": "suppressed", "target": f"{n} event(s)", "count": n, "verdict": "info",
                "rule": "per-session rate limit (kernel audit)", "backend": b.backend,
                "cgroup": b.cgroup}

    def _rate_summaries(self, out: list, now: float) -> None:
        for b in self._buckets.values():
            if b.suppressed and now - b.since >= 1.0:
                out.append(self._rate_record(b))

    def _check_kernel_lost(self, out: list, now: float) -> None:
        """The kernel drops records beyond its backlog limit (a denial
        flood); report its global lost counter's increase, at most 1/s."""
        if now - self._lost_checked < 1.0 or self._kernel_lost is None:
            return
        self._lost_checked = now
        try:
            if self._ctl is None:
                self._ctl = _Control()
            lost = self._ctl.status()["lost"]
        except (OSError, IndexError):
            if self._ctl is not None:
                self._ctl.close()
                self._ctl = None
            return
        if lost > self._kernel_lost:
            out.append(_lost_record("audit_backlog", lost - self._kernel_lost,
                                    "kernel audit backlog limit exceeded"))
        self._kernel_lost = lost

    # -- record building -------------------------------------------------------
    def _finish(self, g: _Group, out: list) -> None:
        access = [f for typ, f, t in g.recs if typ == AUDIT_LANDLOCK_ACCESS]
        sc = next((f for typ, f, t in g.recs if typ == AUDIT_SYSCALL), None)
        if not access and (sc is None or sc.get("key") != EROFS_KEY):
            return
        raw = "\n".join(f"type={typ} {t}" for typ, f, t in g.recs)
        if not access:
            self._emit(self._erofs_record(g, sc, raw), out)
        for f in access:
            self._emit(self._landlock_record(g, f, sc, raw), out)

    def _landlock_record(self, g: _Group, f: dict, sc: dict | None, raw: str) -> dict:
        blockers = [b for b in f.get("blockers", "").split(",") if b]
        kind, op = BLOCKER_OPS.get(blockers[0], ("file", blockers[0])) if blockers \
            else ("file", "unknown")
        domain = f.get("domain")
        rec = {"time": g.time, "pid": None, "comm": None, "uid": None, "kind": kind, "op": op,
               "target": None, "verdict": "deny",
               "rule": "landlock: missing " + (",".join(blockers) or "?"),
               "backend": "landlock", "raw": raw, "blockers": blockers,
               "domain": domain, "serial": g.serial, "cgroup": None}
        if sc is not None:
            rec["pid"] = _int(sc.get("pid"))
            rec["comm"] = sc.get("comm")
            rec["uid"] = _int(sc.get("uid"))
            rec["exe"] = sc.get("exe")
            rec["cgroup"] = sc.get("_cgroup")
            nr = _int(sc.get("syscall"))
            if nr is not None:
                rec["syscall"] = syscall_name(nr, _int(sc.get("arch"), 16) or 0) or f"syscall {nr}"
        dom = self._domains.get(domain or "")
        if rec["cgroup"] is not None:
            # every task of a domain stays in the session cgroup (cgroupfs is
            # write-protected by the file policy): remember it for records
            # whose task is already gone
            self._remember_domain(domain, {"cgroup": rec["cgroup"], "pid": None})
        elif dom is not None:
            rec["cgroup"] = dom.get("cgroup")
        if dom is not None and dom.get("pid"):
            rec["domain_pid"] = dom["pid"]
        if "path" in f:
            rec["target"] = f["path"]
        elif "name" in f:
            rec["target"] = f["name"]
        elif "opid" in f:
            rec["target"] = f"pid {f['opid']}" + (f" ({f['ocomm']})" if "ocomm" in f else "")
        elif "daddr" in f or "dport" in f or "lport" in f or "sport" in f:
            host = f.get("daddr") or f.get("saddr") or f.get("laddr") or ""
            port = f.get("dport") or f.get("sport") or f.get("lport") or ""
            rec["target"] = f"{host}:{port}"
        for k in ("dev", "ino", "ioctlcmd"):
            if k in f:
                rec[k] = f[k]
        return rec

    def _erofs_record(self, g: _Group, sc: dict, raw: str) -> dict:
        """A write the read-only mount view refused (EROFS): shaped like a
        Landlock file record, its target from the PATH/CWD records."""
        nr, arch = _int(sc.get("syscall")), _int(sc.get("arch"), 16) or 0
        name = _erofs_name(nr, arch)
        op, _ = EROFS_SYSCALLS.get(name or "", ("write", None))
        paths = [f for typ, f, t in g.recs if typ == AUDIT_PATH]
        cwd = next((f.get("cwd") for typ, f, t in g.recs if typ == AUDIT_CWD), None)
        want = "NORMAL" if op in ("setattr", "setxattr", "removexattr", "truncate", "open") \
            else "PARENT"
        cand = [p for p in paths if p.get("nametype") == want]
        if op == "rename_from":
            cand = cand[-1:]    # the old name's parent: getname() order, see the module doc
        item = (cand or [p for p in paths if p.get("name") not in (None, "(null)")] or
                paths or [None])[0]
        if op == "open":
            op = "create" if item is not None and item.get("nametype") == "PARENT" \
                else "open_write"
        elif name == "unlinkat" and (_int(sc.get("a2"), 16) or 0) & AT_REMOVEDIR:
            op = "rmdir"
        rec = {"time": g.time, "pid": _int(sc.get("pid")), "comm": sc.get("comm"),
               "uid": _int(sc.get("uid")), "kind": "file", "op": op,
               "target": _erofs_target(item, cwd, sc), "verdict": "deny", "rule": EROFS_RULE,
               "backend": "mount", "errno": "EROFS", "raw": raw, "serial": g.serial,
               "exe": sc.get("exe"), "cgroup": sc.get("_cgroup"),
               "syscall": name or (f"syscall {nr}" if nr is not None else None)}
        if item is not None:
            for k, src in (("dev", "dev"), ("ino", "inode"), ("nametype", "nametype")):
                if src in item:
                    rec[k] = item[src]
        named = []
        for p in paths:     # the names looked up (not a symlink's text, nametype=UNKNOWN)
            if p.get("name") not in (None, "(null)", "") and p.get("nametype") != "UNKNOWN":
                t = _erofs_target(p, cwd, {})
                if t not in named:
                    named.append(t)
        if len(named) > 1:
            rec["paths"] = named
        if sc.get("_cgroup_from"):
            rec["cgroup_from"] = sc["_cgroup_from"]
        return rec

    def _seccomp_record(self, ts: float, f: dict, text: str, pid, cgroup) -> dict:
        code = _int(f.get("code"), 16)
        action = SECCOMP_ACTIONS.get((code or 0) & 0xFFFF0000, f"code {f.get('code')}")
        arch = _int(f.get("arch"), 16) or 0
        nr = _int(f.get("syscall"))
        name = syscall_name(nr, arch) if nr is not None else None
        target = name or f"syscall {nr}"
        rec = {"time": ts, "pid": pid, "comm": f.get("comm"), "uid": _int(f.get("uid")),
               "kind": "syscall", "op": target, "target": target,
               "verdict": "allow" if action in ("log", "allow") else "deny",
               "rule": f"seccomp: {action}", "backend": "seccomp", "raw": text,
               "action": action, "syscall_nr": nr, "arch": f.get("arch"),
               "exe": f.get("exe"), "cgroup": cgroup}
        if f.get("compat") == "1" or (arch == AUDIT_ARCH_X86_64 and nr and nr & X32_SYSCALL_BIT):
            rec["compat"] = True
        return rec


def _erofs_name(nr: int | None, arch: int) -> str | None:
    if nr is None:
        return None
    return syscall_name(nr, arch) or erofs_syscalls(arch or native_arch()).get(nr)


def _signed32(v: int | None) -> int | None:
    if v is None:
        return None
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


def _erofs_target(item: dict | None, cwd: str | None, sc: dict) -> str | None:
    """The path a PATH item names: ``name=`` is the caller's string (for a
    PARENT item its directory part; a relative one with no directory part is
    logged as the cwd); relative names are joined with the fd argument's
    directory, else with the cwd. No usable name (fd-based calls): the fd's path."""
    name = item.get("name") if item is not None else None
    fdpath = sc.get("_fdpath")
    if name in (None, "(null)", ""):
        if fdpath:
            return fdpath
        return f"fd {sc['_fd']}" if "_fd" in sc else None
    if fdpath and name == cwd and item.get("nametype") == "PARENT":
        return fdpath       # the kernel logs the cwd where it means the directory fd
    base = fdpath or cwd
    if not name.startswith("/") and base:
        name = os.path.join(base, name)
    return os.path.normpath(name) if name.startswith("/") else name


def _lost_record(op: str, count: int | None, why: str) -> dict:
    return {"time": time.time(), "pid": None, "comm": None, "uid": None, "kind": "lost",
            "op": op, "target": f"{count} kernel audit record(s)" if count else
            "kernel audit records", "count": count, "verdict": "info", "rule": why,
            "backend": "audit"}


# ---- probe ---------------------------------------------------------------------
def _erofs_state(st: dict, rules: list[dict]) -> tuple[bool, str]:
    """(audited, "EROFS refusals: ...") from the audit status and rule list."""
    abis = sorted({_abi(a) for r in rules if _is_erofs_rule(r)
                   and (a := _rule_arch(r)) is not None}, reverse=True)
    native = any(_is_erofs_rule(r) and _rule_arch(r) == native_arch() for r in rules)
    add = "; ".join(erofs_auditctl())
    if st["enabled"] and native:
        return True, (f"EROFS refusals: audited (kernel audit exit rule {EROFS_KEY}, "
                      f"{','.join(abis)})")
    if st["pid"]:
        return False, (f"EROFS refusals: not audited (auditd pid {st['pid']} owns audit: add "
                       f"this rule to its rules (audit enabled too): {add})")
    if st["enabled"] == 0:
        return False, ("EROFS refusals: not audited (kernel audit disabled, no auditd: "
                       "a corrald started with --audit-erofs enables it and loads the rule; "
                       "off by default: ~200 ns on every syscall host-wide)")
    if st["enabled"] == 2:
        return False, ("EROFS refusals: not audited (audit configuration locked: add this "
                       f"rule before the lock (-e 2) at boot: {add})")
    if _exclude_state(rules)[0]:
        return False, ("EROFS refusals: not audited (kernel audit left enabled by an earlier "
                       "corrald: start corrald with --audit-erofs to load the rule; off by "
                       "default: ~200 ns on every syscall host-wide)")
    return False, ("EROFS refusals: not audited (kernel audit enabled by another owner, "
                   f"corrald leaves its rules alone: add this rule: {add})")


def erofs_report() -> dict:
    """For ``corral doctor``: are writes refused by the read-only mount view
    (EROFS) reported? {"active", "why", "abis", "auditctl"}; ``auditctl`` are
    the lines an administrator adds when corrald does not own audit."""
    rep = {"active": False, "why": "", "abis": [], "auditctl": erofs_auditctl()}
    if os.geteuid() != 0:
        rep["why"] = "probe needs root (listing audit rules needs CAP_AUDIT_CONTROL)"
        return rep
    try:
        ctl = _Control()
        try:
            st, rules = ctl.status(), _listed(ctl)
        finally:
            ctl.close()
    except OSError as e:
        rep["why"] = f"cannot read the kernel audit configuration: {e}"
        return rep
    rep["active"], rep["why"] = _erofs_state(st, rules)
    rep["abis"] = sorted({_abi(a) for r in rules if _is_erofs_rule(r)
                          and (a := _rule_arch(r)) is not None}, reverse=True)
    return rep


def _landlock_abi() -> int:
    try:
        from corral.client import landlock
        return landlock.abi()
    except Exception:
        return 0


def probe() -> tuple[bool, str]:
    """Can this host deliver Landlock/seccomp denials to corrald?

    True when the multicast group can be joined and Landlock records can
    flow (audit enabled, or disabled-but-enableable by AuditLink). The text
    says what is and is not reported, and why.
    """
    try:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_AUDIT)
    except OSError as e:
        return False, f"no kernel audit netlink (CONFIG_AUDIT off?): {e.strerror}"
    try:
        s.bind((0, 1 << (AUDIT_NLGRP_READLOG - 1)))
    except OSError as e:
        return False, f"cannot join the audit multicast group (needs CAP_AUDIT_READ): {e.strerror}"
    finally:
        s.close()
    notes = []
    try:
        with open("/proc/sys/kernel/seccomp/actions_logged") as f:
            logged = f.read().split()
    except OSError:
        logged = []
    if "errno" in logged:
        notes.append("seccomp errno denials logged (filters need SECCOMP_FILTER_FLAG_LOG)")
    else:
        notes.append("seccomp errno denials NOT logged: 'errno' missing from "
                     "/proc/sys/kernel/seccomp/actions_logged")
    abi = _landlock_abi()
    try:
        st = status()
    except OSError as e:
        return False, f"cannot read the audit status (needs CAP_AUDIT_CONTROL): {e}; " + "; ".join(notes)
    try:
        ctl = _Control()
        try:
            rules = _listed(ctl)
        finally:
            ctl.close()
        notes.append(_erofs_state(st, rules)[1])
    except OSError as e:
        notes.append(f"EROFS refusals: unknown (cannot list audit rules: {e})")
    if abi < 7:
        return False, (f"Landlock ABI {abi} < 7: the kernel cannot log Landlock denials; "
                       + "; ".join(notes))
    if st["enabled"] == 0:
        if st["pid"]:
            return False, (f"kernel audit disabled while auditd (pid {st['pid']}) is registered: "
                           "Landlock denials are not logged (enable it: auditctl -e 1); "
                           + "; ".join(notes))
        return True, ("kernel audit disabled, no auditd: AuditLink enables it with exclude rules "
                      "(only Landlock/seccomp/EROFS records) and the EROFS exit rule; "
                      + "; ".join(notes))
    return True, (f"kernel audit enabled ({'locked' if st['enabled'] == 2 else 'on'}"
                  f"{', auditd pid %d' % st['pid'] if st['pid'] else ''}); Landlock ABI {abi} "
                  "logs denials; " + "; ".join(notes))
