#!/usr/bin/env python3
"""VM test tier runner (`make vmtest`).

Boots a stock distro kernel with BPF LSM enabled (lsm=...,bpf) under
virtme-ng, runs `python -m pytest tests/vm` in the guest (which shares this
machine's userspace read-only over 9p) and exits with the guest pytest's exit
status, parsed from a marker line in the console output.

Usage: tests/vm/run_vm.py [--kernel /boot/vmlinuz-X] [--bench] [-- pytest args]

Needs (Debian): qemu-system-x86 busybox-static python3-bpfcc bpftool kmod
linux-image-<ver> linux-headers-<ver>; virtme-ng and pytest are pip-installed
into <checkout>/.venv by this script when missing.
Environment: CORRAL_VM_KERNEL, CORRAL_VM_ACCEL=kvm|tcg (skip the KVM probe),
CORRAL_VM_MEM (default 2G), CORRAL_VM_CPUS (default: host cpus, max 4),
CORRAL_VM_TIMEOUT seconds (default 1500).
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
VENV = REPO / ".venv"
MARK = "CORRAL-VMTEST-EXIT="
LSM_APPEND = "lsm=lockdown,capability,landlock,yama,bpf"


def log(msg):
    print(f"[vmtest] {msg}", file=sys.stderr, flush=True)


def ensure_venv() -> Path:
    py = VENV / "bin" / "python"
    if not py.exists():
        log(f"creating {VENV}")
        subprocess.run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", str(VENV)], check=True)
    need = []
    if not (VENV / "bin" / "vng").exists():
        need.append("virtme-ng")
    if subprocess.run([str(py), "-c", "import pytest"], capture_output=True).returncode != 0:
        need.append("pytest")
    if need:
        log(f"pip install {' '.join(need)}")
        subprocess.run([str(py), "-m", "pip", "install", "-q", *need], check=True)
    return py


def pick_kernel(arg: str | None) -> tuple[str, str]:
    k = arg or os.environ.get("CORRAL_VM_KERNEL")
    cands = [k] if k else sorted(glob.glob("/boot/vmlinuz-*"), reverse=True)
    for c in cands:
        ver = os.path.basename(c)[len("vmlinuz-"):]
        if os.path.exists(c) and (Path("/lib/modules") / ver).is_dir():
            return c, ver
    sys.exit("vmtest: no /boot/vmlinuz-<ver> with /lib/modules/<ver>: "
             "apt-get install linux-image-amd64 linux-headers-amd64")


def check_host_tools():
    missing = []
    if not shutil.which("qemu-system-x86_64"):
        missing.append("qemu-system-x86")
    bb = shutil.which("busybox")
    if not (bb and _is_static(bb)):
        missing.append("busybox-static")   # virtme builds its initramfs from it
    if missing:
        sys.exit(f"vmtest: missing host packages: apt-get install {' '.join(missing)}")


def _is_static(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            data = fh.read(1 << 20)
        return b"PT_INTERP" not in data and b"ld-linux" not in data
    except OSError:
        return False


def kvm_works(kernel: str) -> bool:
    forced = os.environ.get("CORRAL_VM_ACCEL")
    if forced:
        return forced == "kvm"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    # /dev/kvm may exist and still hang (nested virt): boot the kernel briefly
    # and look for its banner.
    try:
        p = subprocess.run(["qemu-system-x86_64", "-enable-kvm", "-cpu", "host", "-nographic",
                            "-no-reboot", "-m", "256", "-kernel", kernel,
                            "-append", "console=ttyS0 panic=-1"],
                           capture_output=True, timeout=12)
        out = p.stdout
    except subprocess.TimeoutExpired as e:
        out = e.stdout or b""
    return b"Linux version" in out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernel")
    ap.add_argument("--bench", action="store_true", help="also run bench/bench_file_lsm.py in the guest")
    ap.add_argument("--bench-only", action="store_true")
    ap.add_argument("pytest_args", nargs="*")
    a = ap.parse_args()

    if os.geteuid() != 0:
        sys.exit("vmtest: run as root (qemu + bpffs in the guest)")
    check_host_tools()
    py = ensure_venv()
    kernel, ver = pick_kernel(a.kernel)
    kvm = kvm_works(kernel)
    log(f"kernel {kernel}, accel {'kvm' if kvm else 'tcg'}")

    guest = HERE / "guest.sh"
    env_args = {
        "CORRAL_REPO": str(REPO), "CORRAL_PY": str(py), "CORRAL_KVER": ver,
        "CORRAL_BENCH": "1" if (a.bench or a.bench_only) else "0",
        "CORRAL_TESTS": "0" if a.bench_only else "1",
        "CORRAL_PYTEST_ARGS": " ".join(shlex.quote(x) for x in a.pytest_args),
    }
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env_args.items())
    cmd = f"env {exports} /bin/sh {shlex.quote(str(guest))}"
    cpus = os.environ.get("CORRAL_VM_CPUS") or str(min(os.cpu_count() or 2, 4))
    vng = [str(VENV / "bin" / "vng"), "--run", kernel, "--force-9p",
           "-m", os.environ.get("CORRAL_VM_MEM", "2G"), "--cpus", cpus,
           "--append", LSM_APPEND, "--exec", cmd]
    if not kvm:
        vng.insert(3, "--disable-kvm")
    env = dict(os.environ)
    env["PATH"] = f"{VENV / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
    t0 = time.time()
    timeout = int(os.environ.get("CORRAL_VM_TIMEOUT", "1500"))
    log("booting: " + " ".join(shlex.quote(x) for x in vng))
    rc = None
    lines = []
    with subprocess.Popen(vng, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                          cwd=str(REPO), stdin=subprocess.DEVNULL) as p:
        try:
            for raw in p.stdout:
                line = raw.decode(errors="replace").rstrip("\r\n")
                lines.append(line)
                print(line, flush=True)
                m = re.search(re.escape(MARK) + r"(\d+)", line)
                if m:
                    rc = int(m.group(1))
                if time.time() - t0 > timeout:
                    log(f"timeout after {timeout}s")
                    p.kill()
                    break
        finally:
            p.wait()
    dt = time.time() - t0
    if rc is None:
        log(f"no exit marker from the guest after {dt:.0f}s (vng exit {p.returncode}): treating as failure")
        sys.exit(2)
    summary = [ln for ln in lines if re.search(r"=+ .*(passed|failed|error|skipped).* =+", ln)]
    log(f"guest pytest summary: {summary[-1].strip() if summary else '(none)'}")
    log(f"VM runtime {dt:.0f}s, guest pytest exit status {rc}")
    sys.exit(rc)


if __name__ == "__main__":
    main()
