"""The one BPF runtime both programs use: compiling with corral's headers,
the bpf() calls (through libbpf, which libbcc links) for pins, maps, map and
program info, cgroup attachments and links, ring buffers, and the loss counters that a
restarted daemon reports exactly once. No bpftool: its JSON is not an API."""
from __future__ import annotations

import ctypes as ct
import errno
import os
import subprocess
from pathlib import Path

from corral.kernel import kheaders, mountinfo
from corral.kernel.bpfsrc import bpf_dir


class BpfError(OSError):
    pass


_libbpf = None
_SIGS = [("bpf_obj_get", [ct.c_char_p]),
         ("bpf_obj_pin", [ct.c_int, ct.c_char_p]),
         ("bpf_map_update_elem", [ct.c_int, ct.c_void_p, ct.c_void_p, ct.c_uint64]),
         ("bpf_map_lookup_elem", [ct.c_int, ct.c_void_p, ct.c_void_p]),
         ("bpf_map_delete_elem", [ct.c_int, ct.c_void_p]),
         ("bpf_map_get_next_key", [ct.c_int, ct.c_void_p, ct.c_void_p]),
         ("bpf_obj_get_info_by_fd", [ct.c_int, ct.c_void_p, ct.POINTER(ct.c_uint32)]),
         ("bpf_prog_query", [ct.c_int, ct.c_int, ct.c_uint32, ct.POINTER(ct.c_uint32),
                             ct.POINTER(ct.c_uint32), ct.POINTER(ct.c_uint32)]),
         ("bpf_prog_get_fd_by_id", [ct.c_uint32]),
         ("bpf_prog_detach2", [ct.c_int, ct.c_int, ct.c_int]),
         ("bpf_link_create", [ct.c_int, ct.c_int, ct.c_int, ct.c_void_p]),
         ("libbpf_num_possible_cpus", []),
         ("libbpf_find_vmlinux_btf_id", [ct.c_char_p, ct.c_int])]


def lib():
    global _libbpf
    if _libbpf is None:
        so = ct.CDLL("libbpf.so.1", use_errno=True)
        for fn, args in _SIGS:
            f = getattr(so, fn)
            f.argtypes = args
            f.restype = ct.c_int
        _libbpf = so
    return _libbpf


def chk(rc: int, what: str) -> int:
    if rc < 0:
        e = ct.get_errno() or -rc
        raise BpfError(e, f"{what}: {os.strerror(e)}")
    return rc


def obj_get(path: Path) -> int:
    """An fd for a pinned object."""
    fd = lib().bpf_obj_get(os.fsencode(path))
    if fd < 0:
        err = ct.get_errno() or -fd
        raise BpfError(err, os.strerror(err), str(path))
    return fd


def obj_pin(fd: int, path: Path) -> None:
    chk(lib().bpf_obj_pin(fd, os.fsencode(path)), f"pin {path}")


def ensure_bpffs(base: Path) -> None:
    """Mount bpffs at `base` unless it is there."""
    base = Path(base)
    if str(base) not in mountinfo.mountpoints(("bpf",), mountinfo.mounts(missing_ok=False)):
        base.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "bpf", "bpf", str(base)], check=True)


# ------------------------------------------------------------ compiling
def btf_cflags(mode: str, path) -> list[str]:
    """Extra cflags for a BTF-generated header tree. bcc 0.26's helpers.h names
    helper ids newer than some kernels (6.1 has no cgrp_storage helpers); the
    uapi enum then comes from vmlinux.h and lacks them."""
    if mode != "btf":
        return []
    flags = ["-DCORRAL_BTF_HEADERS"]
    try:
        text = (Path(path) / "vmlinux.h").read_text(errors="replace")
    except OSError:
        return flags
    for name, val in (("BPF_FUNC_cgrp_storage_get", 210), ("BPF_FUNC_cgrp_storage_delete", 211)):
        if name not in text:
            flags.append(f"-D{name}={val}")
    return flags


def compile_program(name: str, defines: dict | None = None, force_btf: bool = False):
    """bcc-compile bpf/<name> against this kernel's headers (kheaders) and
    corral's own (common.h and friends). -> (BPF object, header mode)."""
    from bcc import BPF  # imported late: the CLI and pin reuse need no compiler
    mode, path = kheaders.select(force_btf=force_btf)
    cflags = [f"-I{bpf_dir()}", "-Wno-unused-function"] + btf_cflags(mode, path)
    for k, v in (defines or {}).items():
        cflags.append(f"-D{k}={v}")
    return BPF(text=(bpf_dir() / name).read_bytes(), cflags=cflags), mode


def c_string(s: str) -> str:
    """A -D value that is a C string literal."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


# ------------------------------------------------------------ info
# enum bpf_map_type values corral uses -> the names bpftool and logs use
MAP_TYPES = {1: "hash", 2: "array", 6: "percpu_array", 9: "lru_hash", 11: "lpm_trie", 27: "ringbuf"}
BPF_MAP_TYPE_RINGBUF = 27


class _MapInfo(ct.Structure):          # struct bpf_map_info, leading fields
    _fields_ = [("type", ct.c_uint32), ("id", ct.c_uint32), ("key_size", ct.c_uint32),
                ("value_size", ct.c_uint32), ("max_entries", ct.c_uint32),
                ("map_flags", ct.c_uint32), ("name", ct.c_char * 16), ("_rest", ct.c_uint8 * 64)]


class _ProgInfo(ct.Structure):         # struct bpf_prog_info, up to name
    _fields_ = [("type", ct.c_uint32), ("id", ct.c_uint32), ("tag", ct.c_uint8 * 8),
                ("jited_prog_len", ct.c_uint32), ("xlated_prog_len", ct.c_uint32),
                ("jited_prog_insns", ct.c_uint64), ("xlated_prog_insns", ct.c_uint64),
                ("load_time", ct.c_uint64), ("created_by_uid", ct.c_uint32),
                ("nr_map_ids", ct.c_uint32), ("map_ids", ct.c_uint64), ("name", ct.c_char * 16)]


def _info(fd: int, st) -> object:
    n = ct.c_uint32(ct.sizeof(st))
    chk(lib().bpf_obj_get_info_by_fd(fd, ct.byref(st), ct.byref(n)), "object info")
    return st


def map_info(fd: int) -> dict:
    i = _info(fd, _MapInfo())
    return {"id": i.id, "type": MAP_TYPES.get(i.type, i.type), "map_type": i.type,
            "bytes_key": i.key_size, "bytes_value": i.value_size,
            "max_entries": i.max_entries, "name": i.name.decode(errors="replace")}


def pin_info(path: Path) -> dict:
    """What a pinned map is; {} when it is not a readable map."""
    try:
        fd = obj_get(path)
    except OSError:
        return {}
    try:
        return map_info(fd)
    except OSError:
        return {}
    finally:
        os.close(fd)


# ------------------------------------------------------------ maps
class Map:
    """A map by fd, keys and values as bytes of the ABI's sizes."""

    def __init__(self, fd: int, ksize: int, vsize: int):
        self.fd, self.ksize, self.vsize = fd, ksize, vsize

    @classmethod
    def of(cls, fd: int, key, value) -> "Map":
        return cls(fd, ct.sizeof(key), ct.sizeof(value))

    def update(self, k: bytes, v: bytes) -> None:
        chk(lib().bpf_map_update_elem(self.fd, bytes(k), bytes(v), 0), "map update")

    def lookup(self, k: bytes) -> bytes | None:
        buf = ct.create_string_buffer(self.vsize)
        if lib().bpf_map_lookup_elem(self.fd, bytes(k), buf) < 0:
            return None
        return buf.raw

    def delete(self, k: bytes) -> None:
        if lib().bpf_map_delete_elem(self.fd, bytes(k)) < 0:
            e = ct.get_errno()
            if e != errno.ENOENT:
                raise BpfError(e, f"map delete: {os.strerror(e)}")

    def keys(self):
        cur = None
        nxt = ct.create_string_buffer(self.ksize)
        while lib().bpf_map_get_next_key(self.fd, cur, nxt) == 0:
            k = nxt.raw
            yield k
            cur = ct.create_string_buffer(k, self.ksize)

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


def u64_sum(fd: int) -> int | None:
    """Sum of every u64 in an array or per-CPU array map; None if it is not one."""
    info = map_info(fd)
    if info["bytes_value"] != 8 or info["bytes_key"] != 4:
        return None
    ncpu = chk(lib().libbpf_num_possible_cpus(), "possible cpus") \
        if info["type"] == "percpu_array" else 1
    buf = (ct.c_uint64 * ncpu)()
    total = 0
    for i in range(info["max_entries"]):
        k = ct.c_uint32(i)
        if lib().bpf_map_lookup_elem(fd, ct.byref(k), buf) == 0:
            total += sum(buf)
    return total


def _u64_write(fd: int, v: int) -> None:
    k, val = ct.c_uint32(0), ct.c_uint64(v)
    chk(lib().bpf_map_update_elem(fd, ct.byref(k), ct.byref(val), 0), "map update")


class LossCounter:
    """A program's pinned `lost` (per-CPU, bumped by the kernel when its ring
    buffer is full) and `lost_seen` (how much of it a daemon has reported).
    At load, what no daemon reported is the downtime's loss; after that
    new() is what this daemon has not reported yet, noted in lost_seen so a
    successor does not report it again."""

    def __init__(self, lost_fd: int, seen_fd: int, salvaged: dict | None = None,
                 replaced: bool = False):
        self.lost_fd, self.seen_fd = lost_fd, seen_fd
        salvaged = salvaged or {}
        total = u64_sum(lost_fd) or 0
        seen = salvaged.get("lost_seen", u64_sum(seen_fd) or 0)
        if replaced:          # `lost` itself was replaced: its old count was salvaged
            self.downtime = max(0, salvaged.get("lost", 0) - seen) + total
        else:
            self.downtime = total - seen if total >= seen else total
        self._base = self._reported = total
        _u64_write(seen_fd, total)

    def new(self) -> int:
        """Events lost since this daemon loaded (monotonic)."""
        total = u64_sum(self.lost_fd) or 0
        if total != self._reported:
            _u64_write(self.seen_fd, total)
            self._reported = total
        return total - self._base


# ------------------------------------------------------------ ring buffers
def drain_ringbuf(fd: int) -> list[bytes]:
    """Every record waiting in a ring buffer map, oldest first. Uses its own
    libbpf ring_buffer, so the daemon's poller is not involved; the consumer
    position lives in the map, so drained records are not seen twice."""
    from bcc.libbcc import _RINGBUF_CB_TYPE, lib as bcclib
    out: list[bytes] = []

    def cb(_ctx, data, size):
        out.append(ct.string_at(data, size))
        return 0
    fn = _RINGBUF_CB_TYPE(cb)
    rb = bcclib.bpf_new_ringbuf(fd, fn, None)
    if not rb:
        raise BpfError(errno.EINVAL, "cannot map the ring buffer")
    try:
        bcclib.bpf_consume_ringbuf(rb)
    finally:
        bcclib.bpf_free_ringbuf(rb)
    return out


class RingReader:
    """Calls back with each record of a ring buffer map (by fd), when polled."""

    def __init__(self, fd: int, callback, log):
        from bcc.libbcc import _RINGBUF_CB_TYPE, lib as bcclib
        self._lib = bcclib
        self.callback = callback            # may be replaced: the next record goes there

        def _cb(_ctx, data, size):
            try:
                self.callback(ct.string_at(data, size))
            except Exception:  # never let an exception unwind into C
                log.exception("event callback failed")
            return 0
        self._cb = _RINGBUF_CB_TYPE(_cb)
        self._mgr = bcclib.bpf_new_ringbuf(fd, self._cb, None)
        if not self._mgr:
            raise BpfError(errno.EINVAL, "could not open the event ring buffer")

    def poll(self, timeout_ms: int) -> None:
        if self._mgr:
            self._lib.bpf_poll_ringbuf(self._mgr, timeout_ms)

    def close(self) -> None:
        if self._mgr:
            self._lib.bpf_free_ringbuf(self._mgr)
            self._mgr = None


# ------------------------------------------------------------ cgroup programs
def prog_name(prog_id: int) -> str | None:
    fd = lib().bpf_prog_get_fd_by_id(prog_id)
    if fd < 0:
        return None
    try:
        return _info(fd, _ProgInfo()).name.decode(errors="replace")
    except OSError:
        return None
    finally:
        os.close(fd)


def cgroup_programs(cgroup_fd: int, attach_type: int) -> list[int]:
    """Ids of the programs attached to a cgroup for one attach type."""
    cnt = ct.c_uint32(64)
    while True:
        ids = (ct.c_uint32 * cnt.value)()
        flags = ct.c_uint32(0)
        want = cnt.value
        rc = lib().bpf_prog_query(cgroup_fd, attach_type, 0, ct.byref(flags), ids, ct.byref(cnt))
        if rc < 0 and ct.get_errno() == errno.ENOSPC:
            cnt = ct.c_uint32(want * 4)
            continue
        chk(rc, "prog query")
        return list(ids[:cnt.value])


def prog_id(prog_fd: int) -> int:
    return _info(prog_fd, _ProgInfo()).id


def cgroup_link(prog_fd: int, cgroup_fd: int, attach_type: int) -> int:
    """Attach a program to a cgroup as a bpf link (always multi): -> the link's
    fd. Pinned, the link keeps the program attached with no process holding
    it; unpinned (and closed), it detaches."""
    return chk(lib().bpf_link_create(prog_fd, cgroup_fd, attach_type, None), "link create")


def cgroup_detach(cgroup_fd: int, prog_id: int, attach_type: int) -> None:
    fd = lib().bpf_prog_get_fd_by_id(prog_id)
    if fd < 0:
        return                      # gone already
    try:
        chk(lib().bpf_prog_detach2(fd, cgroup_fd, attach_type), "prog detach")
    finally:
        os.close(fd)


# ------------------------------------------------------------ versioned pins
def source_version(program: str, extra: str = "") -> str:
    """Of a program and every header it may include (plus `extra`: its -D
    values): a changed program gets a new version, and so new pins."""
    import hashlib
    d = bpf_dir()
    h = hashlib.sha256((d / program).read_bytes())
    for hdr in sorted(d.glob("*.h")):
        h.update(b"\0" + hdr.name.encode() + b"\0" + hdr.read_bytes())
    h.update(b"\0" + extra.encode())
    return h.hexdigest()[:12]


class VersionedPins:
    """Maps and links of one build of a program, pinned together under
    <root>/<name>-<version>/: they enforce while no daemon runs, a restarted
    daemon of the same build reuses them as they are (no compile), and a new
    build publishes its own directory whole, then retires its predecessors
    (unpinning a link detaches its program)."""

    def __init__(self, root: Path, name: str, version: str):
        self.root, self.name, self.version = Path(root), name, version
        self.dir = self.root / f"{name}-{version}"

    def complete(self, names: list[str]) -> bool:
        return all((self.dir / n).exists() for n in names)

    def publish(self, objects: dict[str, int]) -> None:
        """Pin name -> fd, all or nothing: a reader never sees a partial directory."""
        import shutil
        self.root.mkdir(parents=True, exist_ok=True)
        # bpffs refuses names with dots
        tmp = self.root / f"tmp_{self.name}_{self.version}_{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for n, fd in objects.items():
            obj_pin(fd, tmp / n)
        if self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)
        try:
            os.rename(tmp, self.dir)
        except OSError:
            self.dir.mkdir(parents=True, exist_ok=True)
            for f in tmp.iterdir():
                fd = obj_get(f)
                try:
                    obj_pin(fd, self.dir / f.name)
                finally:
                    os.close(fd)
            shutil.rmtree(tmp, ignore_errors=True)

    def get(self, name: str) -> int:
        return obj_get(self.dir / name)

    def predecessors(self) -> list[Path]:
        """Directories of other builds of this program."""
        if not self.root.exists():
            return []
        return [d for d in self.root.iterdir()
                if d.name.startswith(f"{self.name}-") and d != self.dir]

    @staticmethod
    def retire(d: Path) -> None:
        import shutil
        shutil.rmtree(d, ignore_errors=True)

    @staticmethod
    def remove_all(root: Path, name: str) -> None:
        """Every build's pins, and half-published ones."""
        root = Path(root)
        if root.exists():
            for d in root.iterdir():
                if d.name.startswith(f"{name}-") or d.name.startswith(f"tmp_{name}_"):
                    VersionedPins.retire(d)
