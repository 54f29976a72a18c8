"""The seccomp deny list, as data.

Each rule is ``(syscall_name, errno, conditions)``; ``conditions`` is a tuple
of ``(arg_index, op, datum_a[, datum_b])`` that are ANDed (libseccomp
semantics); several rules for the same syscall are ORed. ``op`` is one of the
libseccomp comparison names: "EQ", "NE", "LT", "LE", "GE", "GT",
"MASKED_EQ" (``(arg & datum_a) == datum_b``). Comparisons are on the full
64-bit register; where the kernel itself only looks at the low 32 bits of an
``int``/``unsigned int`` argument (socket family, ioctl cmd) the rule masks
with 0xffffffff so that setting high bits cannot dodge the match.

The filter's default action is ALLOW: this is a deny list of kernel attack
surface and sandbox-escape primitives, not an allow list. It is compiled and
installed by :func:`corral.confine.build_seccomp` (libseccomp via cffi).

Architectures: only the native ABI (x86_64 here) is allowed at all. Syscalls
from any other ABI -- ia32 via ``int $0x80``/sysenter, or the x32 ABI
(nr | 0x40000000) -- hit libseccomp's bad-arch action, which we set to
KILL_PROCESS, so a 32-bit entry point cannot be used to dodge the rules.
"""
from __future__ import annotations

import errno

EPERM = errno.EPERM
ENOSYS = errno.ENOSYS

# namespace-creating clone()/unshare() flags (linux/sched.h)
CLONE_NEWTIME = 0x00000080
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
NAMESPACE_FLAGS = (CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER,
                   CLONE_NEWPID, CLONE_NEWNET, CLONE_NEWCGROUP, CLONE_NEWTIME)

AF_NETLINK = 16
AF_PACKET = 17
AF_VSOCK = 40
SOCK_RAW = 3
SOCK_TYPE_MASK = 0xF  # type argument also carries SOCK_NONBLOCK|SOCK_CLOEXEC

TIOCSTI = 0x5412
TIOCLINUX = 0x541C

U32 = 0xFFFFFFFF

Rule = tuple  # (name, errno, ((arg, op, a[, b]), ...))


def _always(*names: str, err: int = EPERM) -> list[Rule]:
    return [(n, err, ()) for n in names]


DEFAULT_RULES: list[Rule] = [
    # io_uring: a second syscall interface that seccomp cannot see into.
    *_always("io_uring_setup", "io_uring_enter", "io_uring_register"),
    # reading/writing other processes' memory or fds
    *_always("ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd"),
    # BPF and perf: large kernel attack surface, and BPF could tamper with corral
    *_always("bpf", "perf_event_open"),
    # the mount API, old and new
    *_always("mount", "umount2", "pivot_root", "move_mount", "open_tree",
             "fsopen", "fsmount", "fsconfig", "fspick", "mount_setattr"),
    # joining other namespaces
    *_always("setns"),
    # creating namespaces: one rule per flag, (flags & F) == F; rules are ORed.
    *[("unshare", EPERM, ((0, "MASKED_EQ", f, f),)) for f in NAMESPACE_FLAGS],
    *[("clone", EPERM, ((0, "MASKED_EQ", f, f),)) for f in NAMESPACE_FLAGS],
    # clone3 passes flags in a struct seccomp cannot read: ENOSYS makes glibc
    # (and most runtimes) fall back to clone(), whose flags we can check.
    ("clone3", ENOSYS, ()),
    # kernel keyrings
    *_always("keyctl", "add_key", "request_key"),
    # kernel code loading
    *_always("kexec_load", "kexec_file_load", "init_module", "finit_module",
             "delete_module"),
    # userfaultfd: classic race-widening primitive for kernel exploits
    *_always("userfaultfd"),
    # file handles bypass path-based checks (also needs CAP_DAC_READ_SEARCH)
    *_always("open_by_handle_at"),
    # terminal input injection (the kernel compares the cmd as 32 bits)
    ("ioctl", EPERM, ((1, "MASKED_EQ", U32, TIOCSTI),)),
    ("ioctl", EPERM, ((1, "MASKED_EQ", U32, TIOCLINUX),)),
    # raw/packet/vsock sockets (family is an int: mask to 32 bits)
    ("socket", EPERM, ((0, "MASKED_EQ", U32, AF_PACKET),)),
    ("socket", EPERM, ((0, "MASKED_EQ", U32, AF_VSOCK),)),
    # SOCK_RAW in any family except AF_NETLINK: netlink sockets are SOCK_RAW by
    # API convention and getifaddrs() needs one (Node os.networkInterfaces,
    # Go net.Interfaces, ...); with capabilities dropped netlink can only
    # read. NE is a full 64-bit compare, so (1<<32)|AF_NETLINK is denied too.
    ("socket", EPERM, ((0, "NE", AF_NETLINK), (1, "MASKED_EQ", SOCK_TYPE_MASK, SOCK_RAW))),
]

# Syscalls that policy["syscalls"]["deny"] may not name: denying them would
# stop `corral run` itself from exec'ing the agent after the filter is loaded.
UNDENIABLE = frozenset({"execve", "exit", "exit_group", "rt_sigreturn"})

# Denials that ordinary programs trigger all the time (glibc tries clone3 on
# every thread/posix_spawn before falling back): when audit logging of
# denials is requested they go into a second, non-logging filter so the audit
# log is not flooded. The kernel takes the action *and* its log flag from the
# filter that produced the winning action.
QUIET = frozenset({"clone3"})

OPS = ("NE", "LT", "LE", "EQ", "GE", "GT", "MASKED_EQ")


def rules_for(extra_deny: list[str] | tuple[str, ...] = ()) -> list[Rule]:
    """The default rules plus an unconditional EPERM rule per extra name.

    Validation of the names against the running architecture happens when the
    filter is built (libseccomp resolves them); this only checks form.
    """
    rules = list(DEFAULT_RULES)
    seen = {r[0] for r in rules if not r[2]}
    for name in extra_deny or ():
        if not isinstance(name, str) or not name or not name.replace("_", "").isalnum():
            raise ValueError(f"invalid syscall name in syscalls.deny: {name!r}")
        if name in UNDENIABLE:
            raise ValueError(f"syscalls.deny may not contain {name!r}: the agent could not be started")
        if name not in seen:
            rules.append((name, EPERM, ()))
            seen.add(name)
    return rules
