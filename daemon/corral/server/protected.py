"""What the root daemon runs, loads or compiles: never writable from a session.

Computed in the daemon's own process (its interpreter, its package, its BPF
sources, the tools it calls), so it is right whatever launcher started it: the
client cannot tell (`corral` runs under `python -S`, where sys.prefix is /usr
even in a venv). policy.normalize() adds every path to the session's
filesystem.deny_write, which wins over allow_write in both file backends.

What is in it (only paths that exist; canonical; nested ones collapsed):
* corral's package, the BPF C sources, the native extension;
* the interpreter (realpath of sys.executable), sys.prefix / sys.exec_prefix
  and the venv that holds sys.executable (not when the prefix is a system
  directory like /usr: its parts below are listed instead);
* the stdlib and site directories (sysconfig stdlib/platstdlib/purelib/platlib,
  site.getsitepackages, /usr/lib/python3/dist-packages) and every directory on
  sys.path: a module created in any of them could be imported by the daemon
  (as root) the next time it imports something lazily or starts;
* bcc's package, the shared libraries the daemon has mapped (libbcc, LLVM,
  libbpf, libc, ...; from /proc/self/maps) and those it loads by name, LLVM's
  directory (clang's builtin headers go into the BPF programs);
* the programs it runs (mount, groupadd, bpftool), the kernel headers it
  compiles against (config.CACHE_DIR, /lib/modules/<release>/build);
* its run, log and config directories (also in landlock.corral_paths).
"""
from __future__ import annotations

import glob
import importlib.util
import logging
import os
import platform
import shutil
import sys
import sysconfig

log = logging.getLogger("corral.protected")

# Programs the daemon runs (grep subprocess in daemon/corral).
PROGRAMS = ("mount", "groupadd", "bpftool")
PROGRAM_FALLBACK_DIRS = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")
# Libraries loaded by name with ctypes / cffi (maybe not mapped yet).
LIBRARIES = ("libbcc.so.0", "libbcc_bpf.so.0", "libbpf.so.1", "libseccomp.so.2")
# Prefixes too broad to protect whole: the parts the daemon uses are listed.
BROAD = ("/", "/usr", "/usr/local", "/opt", "/var", "/home", "/root", "/tmp", "/srv")
# Never code: kernel interfaces (protected anyway) and anonymous memory.
_SKIP = ("/proc", "/sys", "/dev", "/memfd:")


def _lib_dirs() -> list[str]:
    out = []
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    for d in (sysconfig.get_config_var("LIBDIR") or "", f"/usr/lib/{multiarch}" if multiarch else "",
              f"/lib/{multiarch}" if multiarch else "", "/usr/lib64", "/lib64", "/usr/lib", "/lib",
              "/usr/local/lib"):
        if d and d not in out:
            out.append(d)
    return out


def _mapped_files() -> list[str]:
    out = []
    try:
        with open("/proc/self/maps") as fh:
            for line in fh:
                parts = line.split(None, 5)
                if len(parts) == 6:
                    path = parts[5].strip()
                    if path.startswith("/") and not path.endswith(" (deleted)"):
                        out.append(path)
    except OSError:
        pass
    return out


def _venv_of(executable: str) -> str | None:
    """The venv whose bin/ holds this interpreter name (not its symlink target)."""
    d = os.path.dirname(os.path.dirname(os.path.abspath(executable)))
    return d if os.path.isfile(os.path.join(d, "pyvenv.cfg")) else None


def _candidates() -> list[str]:
    out: list[str] = []
    add = out.append
    here = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
    add(here)                                                  # the corral package
    try:
        from corral.kernel.bpfsrc import bpf_dir
        add(str(bpf_dir()))                            # BPF C sources
    except Exception as e:                                    # pragma: no cover
        log.warning("protected paths: BPF sources not found: %s", e)
    try:
        spec = importlib.util.find_spec("corral._native")     # the native extension
        add(spec.origin if spec else "")
    except (ImportError, ValueError):
        pass

    # The interpreter, its prefixes, the venv (whatever the launcher did with site).
    if sys.executable:
        add(os.path.realpath(sys.executable))
        venv = _venv_of(sys.executable)
        if venv:
            add(venv)
    for pre in (sys.prefix, sys.exec_prefix):
        if os.path.isfile(os.path.join(pre, "pyvenv.cfg")) or pre not in BROAD:
            add(pre)
    paths = sysconfig.get_paths()
    for k in ("stdlib", "platstdlib", "purelib", "platlib"):
        add(paths.get(k, ""))
    try:
        import site
        for d in site.getsitepackages():
            add(d)
    except Exception:
        pass
    add("/usr/lib/python3/dist-packages")
    cwd = os.getcwd()
    for entry in sys.path:
        d = os.path.abspath(entry or cwd)                     # "" is the cwd
        if d == cwd and d != "/":
            log.warning("corrald imports from its working directory %s (on sys.path): it is "
                        "protected from session writes; start corrald by its entry point", d)
        add(d)
    try:
        spec = importlib.util.find_spec("bcc")
        for loc in (spec.submodule_search_locations or []) if spec else []:
            add(loc)
    except (ImportError, ValueError):
        pass

    # Shared libraries: what is mapped now, and what is loaded by name later.
    for f in _mapped_files():
        add(f)
        parts = os.path.realpath(f).split("/")
        if len(parts) > 3 and parts[1:3] == ["usr", "lib"] and parts[3].startswith("llvm-"):
            add("/".join(parts[:4]))                         # /usr/lib/llvm-N (clang headers)
    for lib in LIBRARIES:
        for d in _lib_dirs():
            for hit in glob.glob(os.path.join(d, lib + "*")):
                add(hit)

    # Programs it runs, headers it compiles against, its own state.
    for prog in PROGRAMS:
        found = shutil.which(prog)
        if found:
            add(found)
        for d in PROGRAM_FALLBACK_DIRS:
            add(os.path.join(d, prog))
    try:
        from corral import config
        for d in (config.CACHE_DIR, config.RUN_DIR, config.LOG_DIR, config.CONFIG_DIR,
                  config.POLICIES_DIR, config.CHECKPOINT_KEY.parent):
            add(str(d))
    except Exception:                                         # pragma: no cover
        pass
    add("/etc/corral")
    # The packaged entry points and unit (make deb): they run as root or as the user,
    # outside every session.
    for f in ("/usr/bin/corral", "/usr/sbin/corrald", "/usr/lib/corral",
              "/lib/systemd/system/corrald.service", "/etc/systemd/system/corrald.service"):
        add(f)
    add(os.path.join("/lib/modules", platform.release(), "build"))
    return out


def collapse(paths) -> list[str]:
    """Existing paths, canonical, deduplicated, nested ones dropped for their
    outermost ancestor; never "/" or a BROAD prefix."""
    canon: set[str] = set()
    for p in paths:
        if not p or not isinstance(p, str) or not os.path.isabs(p):
            continue
        q = os.path.realpath(p)
        if q in BROAD or q.startswith(_SKIP) or not os.path.exists(q):
            continue
        canon.add(q)
    out: list[str] = []
    for p in sorted(canon):         # an ancestor sorts before its descendants
        if not any(p == o or p.startswith(o + "/") for o in out):
            out.append(p)
    return out


def code_paths() -> list[str]:
    """Absolute, canonical paths a session may never write, whatever its policy says."""
    out = collapse(_candidates())
    log.info("protected from session writes: %s", " ".join(out))
    return out
