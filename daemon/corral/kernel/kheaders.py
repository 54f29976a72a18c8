"""Kernel headers for bcc.

bcc compiles against the running kernel's headers. When the distro headers for
*this* release exist we use them; otherwise we build a header tree from the
kernel's own BTF (vmlinux.h plus tiny shims for the headers bcc's helpers.h
includes). Headers of any other kernel release are never used: struct offsets
differ between releases and bcc would compile code that reads garbage.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import platform
import shutil
import subprocess
from pathlib import Path

from corral.config import CACHE_DIR

CACHE_ROOT = CACHE_DIR / "kheaders"
BTF_PATH = Path("/sys/kernel/btf/vmlinux")

# Headers that bcc's virtual helpers.h pulls in; each becomes a shim that
# includes the BTF-generated vmlinux.h once.
SHIMMED = [
    "include/linux/kconfig.h",
    "include/linux/types.h",
    "include/linux/version.h",
    "include/linux/log2.h",
    "include/linux/bpf_common.h",
    "include/asm/page.h",
    "include/uapi/linux/bpf.h",
    "include/uapi/linux/ptrace.h",
    "include/uapi/linux/if_ether.h",
    "include/uapi/linux/if_packet.h",
]


class HeaderError(RuntimeError):
    pass


def distro_headers(release: str | None = None) -> Path | None:
    """The distro header tree for exactly this release, if installed."""
    release = release or platform.release()
    build = Path("/lib/modules") / release / "build"
    if (build / "include").is_dir() or (build / "Makefile").exists():
        return build
    return None


def _version_code(release: str) -> int:
    nums = []
    for part in release.split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit()) or "0"
        nums.append(int(digits[:3]))
    while len(nums) < 3:
        nums.append(0)
    a, b, c = nums
    return (a << 16) + (b << 8) + min(c, 255)


def _kconfig_defines() -> str:
    """CONFIG_* macros from /proc/config.gz; bcc's helpers.h checks a few."""
    lines = []
    try:
        with gzip.open("/proc/config.gz", "rt") as fh:
            for raw in fh:
                raw = raw.strip()
                if not raw.startswith("CONFIG_") or "=" not in raw:
                    continue
                name, val = raw.split("=", 1)
                if val in ("y", "m"):
                    lines.append(f"#define {name} 1")
                elif val.startswith('"') or val.lstrip("-").isdigit() or val.startswith("0x"):
                    lines.append(f"#define {name} {val}")
    except OSError:
        # No config exported: the one option helpers.h insists on.
        lines.append("#define CONFIG_BPF_SYSCALL 1")
    return "\n".join(lines)


def _btf_digest() -> str:
    h = hashlib.sha256()
    with open(BTF_PATH, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def btf_header_tree(release: str | None = None, cache_root: Path = CACHE_ROOT) -> Path:
    """Build (once) and return a bcc-usable header tree generated from BTF."""
    release = release or platform.release()
    if not BTF_PATH.exists():
        raise HeaderError(
            f"no kernel headers for {release} and no BTF at {BTF_PATH}: "
            f"install linux-headers-{release} or use a kernel built with CONFIG_DEBUG_INFO_BTF"
        )
    digest = _btf_digest()
    tree = cache_root / f"{release}-{digest}"
    if (tree / ".complete").exists():
        return tree
    bpftool = shutil.which("bpftool") or "/usr/sbin/bpftool"
    if not os.path.exists(bpftool):
        raise HeaderError("bpftool not found: apt-get install bpftool")
    tmp = tree.with_name(tree.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "include").mkdir(parents=True)
    with open(tmp / "vmlinux.h", "wb") as out:
        proc = subprocess.run([bpftool, "btf", "dump", "file", str(BTF_PATH), "format", "c"],
                              stdout=out, stderr=subprocess.PIPE)
    if proc.returncode != 0:
        raise HeaderError(f"bpftool btf dump failed: {proc.stderr.decode(errors='replace').strip()}")
    shim = tree / "corral_shim.h"
    (tmp / "corral_shim.h").write_text(
        "#ifndef __CORRAL_SHIM_H\n#define __CORRAL_SHIM_H\n"
        # bcc rewrites field access itself; CO-RE relocations would only confuse it.
        "#define BPF_NO_PRESERVE_ACCESS_INDEX\n"
        f'#include "{tree}/vmlinux.h"\n'
        # vmlinux.h already carries every uapi bpf type; skip bcc's own copy.
        "#define _UAPI__LINUX_BPF_H__\n"
        f"#define LINUX_VERSION_CODE {_version_code(release)}\n"
        "#define KERNEL_VERSION(a,b,c) (((a) << 16) + ((b) << 8) + ((c) > 255 ? 255 : (c)))\n"
        f"#define PAGE_SIZE {os.sysconf('SC_PAGE_SIZE')}\n"
        "#define AF_INET 2\n#define AF_INET6 10\n#define AF_UNIX 1\n"
        f"{_kconfig_defines()}\n"
        "#endif\n")
    for rel in SHIMMED:
        p = tmp / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f'#include "{shim}"\n')
    (tmp / "arch/x86/include").mkdir(parents=True, exist_ok=True)
    (tmp / ".complete").write_text(release + "\n")
    shutil.rmtree(tree, ignore_errors=True)
    os.replace(tmp, tree)
    return tree


def select(force_btf: bool = False) -> tuple[str, Path]:
    """Pick the header strategy for the running kernel: ('distro'|'btf', path).

    Sets BCC_KERNEL_SOURCE so the next bcc compile in this process uses it."""
    release = platform.release()
    path = None if force_btf else distro_headers(release)
    if path is not None:
        os.environ.pop("BCC_KERNEL_SOURCE", None)
        return "distro", path
    path = btf_header_tree(release)
    os.environ["BCC_KERNEL_SOURCE"] = str(path)
    return "btf", path
