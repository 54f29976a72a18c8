"""The exec-side hardening sequence of `corral run`.

Called after the daemon has moved the process into its session cgroup and
right before ``execvp(cmd)``::

    report = confine.apply(file_policy, syscalls_deny, keep_caps=False)
    os.execvp(cmd[0], cmd)

Order (everything that can fail on bad input is validated *first*, before
anything irreversible happens):

1. validate: compile the seccomp filter (unknown syscall names fail here) and
   plan the Landlock rules (needs our privileges to list directories);
2. close every inherited fd except 0, 1, 2;
3. build the Landlock ruleset (opens rule paths with our privileges);
4. drop all capabilities (securebits NOROOT+locks, bounding set, ambient,
   effective/permitted/inheritable) unless ``keep_caps``;
5. set no_new_privs;
6. landlock_restrict_self;
7. load the seccomp filter last (so the steps above may still use any syscall).

Any failure raises ConfineError: the caller must not exec the agent.
"""
from __future__ import annotations

import os

from corral.client import landlock
from corral.kernel import native
from corral.client.seccomp_rules import OPS, QUIET, rules_for

__all__ = ["ConfineError", "SeccompFilter", "build_seccomp", "close_inherited_fds",
           "drop_capabilities", "set_no_new_privs", "apply"]


class ConfineError(RuntimeError):
    pass


# ---- seccomp (libseccomp through cffi) ------------------------------------
class SeccompFilter:
    """Compiled-but-not-loaded libseccomp filter context(s).

    Usually one context; with ``log=True`` a second, non-logging one holds the
    QUIET rules (see seccomp_rules.QUIET)."""

    def __init__(self, ctxs: list, nrules: int, log: bool):
        self._ctxs = list(ctxs)
        self.nrules = nrules
        self.log = log

    def load(self) -> None:
        lib = native.load().lib
        if not self._ctxs:
            raise ConfineError("seccomp filter already loaded/released")
        for ctx in self._ctxs:
            r = lib.seccomp_load(ctx)
            if r < 0:
                raise ConfineError(f"seccomp_load failed: {os.strerror(-r)}")

    def export_pfc(self) -> str:
        """Human-readable pseudo filter code (for debugging)."""
        import tempfile
        lib = native.load().lib
        with tempfile.TemporaryFile(mode="w+") as f:
            for ctx in self._ctxs:
                lib.seccomp_export_pfc(ctx, f.fileno())
            f.seek(0)
            return f.read()

    def export_bpf(self) -> list[tuple[int, bytes]]:
        """The compiled programs as the kernel takes them (struct sock_filter
        arrays), each with the seccomp(2) flags its load would use, in load
        order: what corrald hands `corral exec`'s native launcher, which then
        loads them without libseccomp (seccomp_export_bpf)."""
        import ctypes
        import tempfile
        mod = native.load()
        # Not in the cffi module (adding it means rebuilding the extension others
        # load): the same libseccomp.so.2 through ctypes, the context by address.
        libseccomp = ctypes.CDLL("libseccomp.so.2", use_errno=True)
        out = []
        for i, ctx in enumerate(self._ctxs):
            with tempfile.TemporaryFile() as f:
                r = libseccomp.seccomp_export_bpf(
                    ctypes.c_void_p(int(mod.ffi.cast("uintptr_t", ctx))), f.fileno())
                if r < 0:
                    raise ConfineError(f"seccomp_export_bpf: {os.strerror(-r)}")
                f.seek(0)
                prog = f.read()
            if not prog or len(prog) % 8:
                raise ConfineError(f"seccomp_export_bpf gave {len(prog)} bytes, not sock_filters")
            # SECCOMP_FILTER_FLAG_LOG (2): the first filter logs its ERRNO denials.
            out.append((2 if self.log and i == 0 else 0, prog))
        return out

    def release(self) -> None:
        lib = native.load().lib if self._ctxs else None
        for ctx in self._ctxs:
            lib.seccomp_release(ctx)
        self._ctxs = []

    def __del__(self):  # pragma: no cover - best effort
        try:
            self.release()
        except Exception:
            pass


def build_seccomp(syscalls_deny: list[str] | tuple[str, ...] = (), log: bool = False) -> SeccompFilter:
    """Compile the default deny rules plus ``syscalls_deny`` (EPERM each).

    Only the native architecture is in the filter; libseccomp's bad-arch
    action (any other ABI: ia32 ``int 0x80``, x32) is KILL_PROCESS.
    ``log=True`` sets SECCOMP_FILTER_FLAG_LOG (SCMP_FLTATR_CTL_LOG) so that
    ERRNO denials are audit-logged too (by default the kernel only logs kill
    actions); the QUIET rules (clone3) then live in a second filter without
    the flag. Raises ConfineError for an unknown syscall name.
    """
    try:
        mod = native.load()
    except native.NativeUnavailable as e:
        raise ConfineError(str(e)) from None
    ffi, lib = mod.ffi, mod.lib
    try:
        rules = rules_for(syscalls_deny)
    except ValueError as e:
        raise ConfineError(str(e)) from None
    groups = [rules]
    if log:
        groups = [[r for r in rules if r[0] not in QUIET], [r for r in rules if r[0] in QUIET]]
    filt = SeccompFilter([], len(rules), log)
    opmap = {name: getattr(lib, "SCMP_CMP_" + name) for name in OPS}

    def fail(msg):
        filt.release()
        raise ConfineError(msg)

    for gi, group in enumerate(groups):
        if gi > 0 and not group:
            continue
        ctx = lib.seccomp_init(lib.corral_scmp_act_allow())
        if ctx == ffi.NULL:
            fail("seccomp_init failed")
        filt._ctxs.append(ctx)

        def chk(r, what):
            if r < 0:
                fail(f"{what}: {os.strerror(-r)}")

        chk(lib.seccomp_attr_set(ctx, lib.SCMP_FLTATR_ACT_BADARCH,
                                 lib.corral_scmp_act_kill_process()), "seccomp: set bad-arch action")
        # we set no_new_privs ourselves (confine step 5); keep libseccomp's
        # default (NNP on load) anyway so a standalone load() is still valid.
        chk(lib.seccomp_attr_set(ctx, lib.SCMP_FLTATR_CTL_NNP, 1), "seccomp: set NNP")
        # binary-tree syscall dispatch instead of a linear chain: calls that
        # run the filter (those with argument rules, e.g. ioctl) pay ~log2(n)
        # comparisons instead of n. Best effort: older libseccomp lacks it.
        lib.seccomp_attr_set(ctx, lib.SCMP_FLTATR_CTL_OPTIMIZE, 2)
        if log and gi == 0:
            chk(lib.seccomp_attr_set(ctx, lib.SCMP_FLTATR_CTL_LOG, 1), "seccomp: set CTL_LOG")
        for name, err, conds in group:
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr < 0:
                fail(f"unknown syscall name {name!r} (not a syscall on this architecture)")
            arr = ffi.new("struct scmp_arg_cmp[]", max(1, len(conds)))
            for i, c in enumerate(conds):
                arg, op, a = c[0], c[1], c[2]
                b = c[3] if len(c) > 3 else 0
                if op not in opmap:
                    fail(f"bad seccomp comparison {op!r} in rule for {name}")
                arr[i].arg = arg
                arr[i].op = opmap[op]
                arr[i].datum_a = a & 0xFFFFFFFFFFFFFFFF
                arr[i].datum_b = b & 0xFFFFFFFFFFFFFFFF
            chk(lib.seccomp_rule_add_array(ctx, lib.corral_scmp_act_errno(err), nr, len(conds),
                                           arr if conds else ffi.NULL),
                f"seccomp_rule_add({name})")
    return filt


# ---- fds, caps, nnp --------------------------------------------------------
def _open_fds() -> list[int]:
    fds = []
    for n in os.listdir("/proc/self/fd"):
        fd = int(n)
        if _fd_open(fd):       # the listdir fd itself is closed by now
            fds.append(fd)
    return sorted(fds)


def close_inherited_fds(keep: tuple[int, ...] | list[int] = ()) -> int:
    """Close every fd >= 3 except those in ``keep``. Returns how many were closed."""
    keep_set = {k for k in keep if k > 2}
    before = [f for f in _open_fds() if f > 2 and f not in keep_set]
    lib = native.load().lib
    first = 3
    for k in sorted(keep_set) + [None]:
        last = (k - 1) if k is not None else 0xFFFFFFFF
        if last >= first:
            if lib.corral_close_range(first, last) < 0:      # pre-5.9 kernel
                for f in before:
                    if first <= f <= last:
                        try:
                            os.close(f)
                        except OSError:
                            pass
        if k is not None:
            first = k + 1
    left = [f for f in _open_fds() if f > 2 and f not in keep_set]
    if left:
        raise ConfineError(f"could not close inherited fds: {left}")
    return len(before)


def _fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def drop_capabilities() -> dict:
    """Lock securebits (NOROOT...), empty the bounding and ambient sets and the
    effective/permitted/inheritable sets. Without CAP_SETPCAP (unprivileged
    caller) securebits and the bounding set cannot be changed; no_new_privs
    then guarantees exec gains nothing. Returns what was done."""
    lib = native.load().lib
    r = lib.corral_set_securebits_noroot()
    if r < 0 and -r != 1:  # EPERM: no CAP_SETPCAP
        native.check(r, "prctl(PR_SET_SECUREBITS)")
    b = native.check(lib.corral_drop_all_caps(-1), "drop capabilities")
    if lib.corral_caps_effective_is_zero() != 1:
        raise ConfineError("capabilities still present after capset")
    return {"securebits_locked": r >= 0, "bounding_set_dropped": bool(b)}


def set_no_new_privs() -> None:
    lib = native.load().lib
    native.check(lib.corral_set_no_new_privs(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if lib.corral_get_no_new_privs() != 1:
        raise ConfineError("no_new_privs not set")


# ---- the sequence ------------------------------------------------------------
def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1


def apply(file_policy: dict | None, syscalls_deny: list[str] | tuple[str, ...] = (),
          keep_caps: bool = False, *, allow_weaker: bool = False,
          seccomp_log: bool = False, keep_fds: tuple[int, ...] = (),
          export: dict | None = None) -> dict:
    """Harden the calling process (single-threaded, about to exec).

    ``file_policy`` None means no file policy: Landlock is still installed
    (read all, write all except the protected mounts). Returns what was
    enforced, e.g. ``{"landlock_abi": 7, "landlock": True, "seccomp": True,
    "caps_dropped": True, "no_new_privs": True, "fds_closed": 2}``.

    The caller must be single-threaded (Landlock and seccomp apply to the
    calling thread; other threads would stay unconfined): ConfineError
    otherwise. ``keep_fds`` are left open (e.g. a status pipe to the caller).
    ``seccomp_log`` audit-logs ERRNO denials (see build_seccomp).
    ``export``: a dict that receives what the session's next processes reuse
    (`corral session start`): "ruleset_fd", the Landlock ruleset, left open (the
    caller hands it to corrald and closes it). Their seccomp programs corrald
    compiles itself (SeccompFilter.export_bpf).
    """
    report: dict = {"landlock": False, "landlock_abi": 0, "seccomp": False,
                    "caps_dropped": False, "no_new_privs": False, "fds_closed": 0}
    try:
        native.load()
    except native.NativeUnavailable as e:
        raise ConfineError(str(e)) from None
    try:
        # 1. validate everything
        if _threads() != 1:
            raise ConfineError("confine.apply must run in a single-threaded process "
                               f"({_threads()} threads): other threads would stay unconfined")
        filt = build_seccomp(syscalls_deny, log=seccomp_log)
        try:
            decision = landlock.file_policy_decision(file_policy, allow_weaker)
        except landlock.LandlockUnavailable as e:
            raise ConfineError(str(e)) from None
        pl = landlock.plan(file_policy) if decision["enforce"] else None
        if pl is not None and pl.skipped:
            report["landlock_unlisted"] = len(pl.skipped)
        report["landlock_abi"] = decision.get("abi", 0)
        if decision.get("weaker"):
            report["weaker"] = decision["reason"]
        # 2. inherited fds
        report["fds_closed"] = close_inherited_fds(keep_fds)
        # 3. ruleset (still privileged)
        ruleset = None
        if pl is not None:
            ruleset, stats = landlock.build_ruleset(pl, decision["abi"])
            report["landlock_rules"] = stats["rules"]
        # 4. capabilities
        if not keep_caps:
            report.update(drop_capabilities())
            report["caps_dropped"] = True
        # 5. no_new_privs
        set_no_new_privs()
        report["no_new_privs"] = True
        # 6. landlock
        if ruleset is not None:
            report["landlock_log_flags"] = landlock.restrict(ruleset, decision["abi"],
                                                             close=export is None)
            report["landlock"] = True
            if export is not None:
                export["ruleset_fd"] = ruleset
        # 7. seccomp last
        filt.load()
        filt.release()
        report["seccomp"] = True
    except ConfineError:
        raise
    except (OSError, landlock.LandlockError, native.NativeUnavailable) as e:
        raise ConfineError(f"confinement failed: {e}") from e
    return report


# ---- standalone entry point (tests, benchmarks, debugging) -------------------
def main(argv: list[str] | None = None) -> int:
    """``python -m corral.client.confine [--policy JSON] [--deny a,b] [--keep-caps]
    [--print-report] -- cmd args...``: confine this process, then exec cmd."""
    import argparse
    import json
    import sys

    ap = argparse.ArgumentParser(prog="python -m corral.client.confine")
    ap.add_argument("--policy", help="file policy as JSON (omit: no file policy)")
    ap.add_argument("--deny", default="", help="extra syscalls to deny, comma separated")
    ap.add_argument("--keep-caps", action="store_true")
    ap.add_argument("--allow-weaker", action="store_true")
    ap.add_argument("--seccomp-log", action="store_true")
    ap.add_argument("--print-report", action="store_true", help="JSON report on stderr")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args(argv)
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    if not cmd:
        ap.error("missing command")
    policy = json.loads(a.policy) if a.policy else None
    deny = [s for s in a.deny.split(",") if s]
    try:
        report = apply(policy, deny, a.keep_caps, allow_weaker=a.allow_weaker,
                       seccomp_log=a.seccomp_log)
    except ConfineError as e:
        print(f"corral: confinement failed, not starting {cmd[0]}: {e}", file=sys.stderr)
        return 126
    if a.print_report:
        print("CORRAL_CONFINE " + json.dumps(report), file=sys.stderr, flush=True)
    try:
        os.execvp(cmd[0], cmd)
    except OSError as e:
        print(f"corral: exec {cmd[0]}: {e}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    raise SystemExit(main())
