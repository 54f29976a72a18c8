"""What this kernel offers, measured rather than assumed."""
from __future__ import annotations

import ctypes
import os
import platform
import subprocess

from corral.kernel import cgroups

SYS_landlock_create_ruleset = 444
LANDLOCK_CREATE_RULESET_VERSION = 1


def landlock_abi() -> tuple[int, str]:
    libc = ctypes.CDLL(None, use_errno=True)
    abi = libc.syscall(SYS_landlock_create_ruleset, None, ctypes.c_size_t(0),
                       ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION))
    if abi < 0:
        err = ctypes.get_errno()
        return 0, f"landlock unavailable: {os.strerror(err)}" + (
            " (not in the kernel's lsm= list?)" if err == 95 else "")
    return abi, f"ABI {abi}"


def active_lsms() -> list[str]:
    path = "/sys/kernel/security/lsm"
    if not os.path.exists(path) and os.path.isdir("/sys/kernel/security"):
        subprocess.run(["mount", "-t", "securityfs", "securityfs", "/sys/kernel/security"],
                       capture_output=True)
    try:
        with open(path) as fh:
            return fh.read().strip().split(",")
    except OSError:
        return []


def seccomp_filter() -> bool:
    # PR_GET_SECCOMP succeeds on kernels with seccomp; filter mode is in all of ours,
    # but check the status file so a kernel without CONFIG_SECCOMP_FILTER says so.
    with open("/proc/self/status") as fh:
        return any(line.startswith("Seccomp_filters:") for line in fh)


def kernel_features() -> dict:
    abi, ll = landlock_abi()
    try:
        cg2 = str(cgroups.cgroup2_mount())
    except cgroups.CgroupError as e:
        cg2 = f"missing: {e}"
    return {
        "kernel": platform.release(),
        "cgroup2": cg2,
        "lsm_list": active_lsms(),
        "landlock": {"active": abi > 0, "abi": abi, "detail": ll},
        "seccomp": {"active": seccomp_filter()},
        "btf": os.path.exists("/sys/kernel/btf/vmlinux"),
    }
