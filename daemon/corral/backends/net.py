"""User-space half of bpf/net.c: compile once, attach at corral's root cgroup,
pin the maps, and turn a session's network rules into trie entries.

The event ring buffer and its loss counters are pinned too: what the kernel
emits while no daemon reads it (the daemon was killed, or is still starting)
is drained by the next daemon at load time (`take_downtime`), and losses are
reported once across restarts (`lost_seen`)."""
from __future__ import annotations

import ctypes as ct
import ipaddress
import json
import logging
import os
import re
import subprocess
from pathlib import Path

from corral.kernel import kheaders, mountinfo
from corral.kernel.bpfsrc import bpf_dir
from corral.config import PIN_DIR
from corral.kernel.events import EVENT
from corral.policy.model import MAX_PORT_RANGES, NetRule, PolicyError

log = logging.getLogger("corral.net")

BPF_F_ALLOW_MULTI = 2

# (function, attach type) — values of enum bpf_attach_type.
PROGRAMS = [
    ("corral_connect4", 10), ("corral_connect6", 11),
    ("corral_sendmsg4", 14), ("corral_sendmsg6", 15),
    ("corral_recvmsg4", 19), ("corral_recvmsg6", 20),
    ("corral_getpeername4", 29), ("corral_getpeername6", 30),
]
SOCK_CREATE = ("corral_sock_create", 2)
PINNED_MAPS = ["sessions", "allow4", "deny4", "allow6", "deny6", "dns_socks",
               "events", "lost", "lost_seen"]
# events, lost and lost_seen only carry reporting state: if an older corral
# left one with another layout it is read, then replaced (event_pin_layouts).
# The enforcement pins are never replaced: live sessions depend on them.
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
BPF_MAP_TYPE_RINGBUF = 27

SESS_NET_ENFORCE = 1 << 0
SESS_FILE_ENFORCE = 1 << 1
SESS_DNS_STEER = 1 << 2
RULE_USER = 16


def ensure_bpffs(base: Path | None = None) -> None:
    """Mount bpffs at `base` (default: where our pins live) unless it is there."""
    base = Path(base) if base is not None else PIN_DIR.parent
    if str(base) not in mountinfo.mountpoints(("bpf",), mountinfo.mounts(missing_ok=False)):
        base.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "bpf", "bpf", str(base)], check=True)


def ringbuf_pages(src: str) -> int:
    """Pages of the `events` ring buffer: as net.c declares it, unless
    CORRAL_RINGBUF_PAGES (a power of two; for tests) says otherwise."""
    env = os.environ.get("CORRAL_RINGBUF_PAGES")
    if env:
        return int(env)
    m = re.search(r"BPF_RINGBUF_OUTPUT\(events, (\d+)\);", src)
    if not m:
        raise RuntimeError("bpf/net.c no longer declares the events ring buffer")
    return int(m.group(1))


def event_pin_layouts(pages: int) -> dict[str, tuple[str, int, int, int]]:
    """name -> (bpftool type, key bytes, value bytes, max_entries) as declared below."""
    return {"events": ("ringbuf", 0, 0, pages * PAGE_SIZE),
            "lost": ("percpu_array", 4, 8, 1),
            "lost_seen": ("array", 4, 8, 1)}


def _pinned_source(src: str) -> str:
    """Declare the maps pinned so a restarted daemon reuses the live state."""
    pages = ringbuf_pages(src)
    m = re.search(r"BPF_RINGBUF_OUTPUT\(events, \d+\);", src)
    src = src[:m.start()] + f'BPF_RINGBUF_PINNED(events, {pages}, "{PIN_DIR}/events");' + src[m.end():]
    subs = {
        "BPF_PERCPU_ARRAY(lost, u64, 1);":
            f'BPF_TABLE_PINNED("percpu_array", int, u64, lost, 1, "{PIN_DIR}/lost");',
        "BPF_ARRAY(lost_seen, u64, 1);":
            f'BPF_TABLE_PINNED("array", int, u64, lost_seen, 1, "{PIN_DIR}/lost_seen");',
        "BPF_HASH(sessions, u64, struct session_cfg, 4096);":
            f'BPF_TABLE_PINNED("hash", u64, struct session_cfg, sessions, 4096, "{PIN_DIR}/sessions");',
        'BPF_TABLE("lru_hash", u64, struct dns_orig, dns_socks, 65536);':
            f'BPF_TABLE_PINNED("lru_hash", u64, struct dns_orig, dns_socks, 65536, "{PIN_DIR}/dns_socks");',
    }
    for name, key in (("allow4", "lpm4_key"), ("deny4", "lpm4_key"),
                      ("allow6", "lpm6_key"), ("deny6", "lpm6_key")):
        subs[f"BPF_LPM_TRIE({name}, struct {key}, struct port_rules, 65536);"] = (
            f'BPF_TABLE_PINNED("lpm_trie", struct {key}, struct port_rules, {name}, 65536, '
            f'"{PIN_DIR}/{name}", BPF_F_NO_PREALLOC);')
    for old, new in subs.items():
        if old not in src:
            raise RuntimeError(f"bpf/net.c no longer declares {old!r}")
        src = src.replace(old, new)
    return src


def _pin_info(path: Path) -> dict:
    """bpftool's description of a pinned map; {} when it is not a readable map."""
    proc = subprocess.run(["bpftool", "-j", "map", "show", "pinned", str(path)],
                          capture_output=True, text=True)
    try:
        info = json.loads(proc.stdout) if proc.returncode == 0 else {}
    except ValueError:
        return {}
    return info if isinstance(info, dict) and "id" in info else {}


def _fdinfo(fd: int) -> dict:
    out = {}
    with open(f"/proc/self/fdinfo/{fd}") as fh:
        for line in fh:
            k, _, v = line.partition(":")
            try:
                out[k.strip()] = int(v.strip(), 0)
            except ValueError:
                pass
    return out


_libbpf = None


def _obj_get(path: Path) -> int:
    """An fd for a pinned object (libbpf bpf_obj_get; libbcc links libbpf)."""
    global _libbpf
    if _libbpf is None:
        _libbpf = ct.CDLL("libbpf.so.1", use_errno=True)
        _libbpf.bpf_obj_get.argtypes = [ct.c_char_p]
        _libbpf.bpf_obj_get.restype = ct.c_int
    fd = _libbpf.bpf_obj_get(os.fsencode(path))
    if fd < 0:
        err = ct.get_errno() or -fd
        raise OSError(err, os.strerror(err), str(path))
    return fd


def _drain_ringbuf(fd: int) -> list[bytes]:
    """Every record waiting in a ring buffer map, oldest first. Uses its own
    libbpf ring_buffer, so the daemon's poller (opened later) is not involved;
    the consumer position lives in the map, so drained records are not seen twice."""
    from bcc.libbcc import _RINGBUF_CB_TYPE, lib
    out: list[bytes] = []

    def cb(_ctx, data, size):
        out.append(ct.string_at(data, size))
        return 0
    fn = _RINGBUF_CB_TYPE(cb)
    rb = lib.bpf_new_ringbuf(fd, fn, None)
    if not rb:
        raise OSError("cannot map the ring buffer")
    try:
        lib.bpf_consume_ringbuf(rb)
    finally:
        lib.bpf_free_ringbuf(rb)
    return out


def _map_u64_sum(map_id: int) -> int | None:
    """Sum of every u64 in an array / per-cpu array map; None if unreadable."""
    proc = subprocess.run(["bpftool", "-j", "map", "dump", "id", str(map_id)],
                          capture_output=True, text=True)
    try:
        entries = json.loads(proc.stdout) if proc.returncode == 0 else None
        total = 0
        for e in entries:
            vals = [v["value"] for v in e["values"]] if "values" in e else [e["value"]]
            for v in vals:
                raw = bytes(int(b, 16) for b in v)
                if len(raw) != 8:
                    return None
                total += int.from_bytes(raw, "little")
        return total
    except (TypeError, ValueError, KeyError):
        return None


class PortRules(ct.Structure):
    _fields_ = [("n", ct.c_uint32), ("rule", ct.c_uint32 * MAX_PORT_RANGES),
                ("lo", ct.c_uint16 * MAX_PORT_RANGES), ("hi", ct.c_uint16 * MAX_PORT_RANGES)]


class NetBpf:
    """The loaded network programs and their maps."""

    def __init__(self, cgroup_root: Path):
        from bcc import BPF  # imported late: `corral` CLI must not need bcc
        self.BPF = BPF
        self.cgroup_root = cgroup_root
        self.header_mode, _ = kheaders.select()
        ensure_bpffs()
        PIN_DIR.mkdir(mode=0o700, exist_ok=True)
        net_c = (bpf_dir() / "net.c").read_text()
        stale = self._set_aside_event_pins(event_pin_layouts(ringbuf_pages(net_c)))
        src = _pinned_source(net_c)
        cflags = [f"-I{bpf_dir()}", "-Wno-unused-function"]
        if self.header_mode == "btf":
            cflags.append("-DCORRAL_BTF_HEADERS")
        self.bpf = BPF(text=src, cflags=cflags)
        self._check_pinned_layouts()
        self._attach()
        self.sessions = self.bpf["sessions"]
        self.tries = {k: self.bpf[k] for k in ("allow4", "deny4", "allow6", "deny6")}
        self.dns_socks = self.bpf["dns_socks"]
        # cgid -> {(trie name, prefix): leaf bytes} as last written by install_rules
        self._installed: dict[int, dict] = {}
        self.lost = self.bpf["lost"]
        self.lost_seen = self.bpf["lost_seen"]
        # After _attach: the predecessor's programs are retired, so nothing
        # more can land in a set-aside ring buffer.
        self._downtime = self._collect_downtime(stale)

    # -- pins from a predecessor --------------------------------------------
    def _set_aside_event_pins(self, layouts: dict) -> dict[str, tuple[int, dict]]:
        """Unpin event pins whose layout differs from what net.c declares (bcc
        would silently reuse them), keeping an fd so their contents can still
        be read once the new programs are attached. name -> (fd or -1, info)."""
        stale = {}
        for name, want in layouts.items():
            path = PIN_DIR / name
            if not os.path.lexists(path):
                continue
            info = _pin_info(path)
            have = (info.get("type"), info.get("bytes_key"), info.get("bytes_value"),
                    info.get("max_entries")) if info else None
            if have == want:
                continue
            log.error("pinned %s has layout %s but this corral declares %s (type, key, value, "
                      "max_entries); replacing it: what it holds is read first", path,
                      have or "(not a map)", want)
            fd = -1
            if info:
                try:
                    fd = _obj_get(path)
                except OSError as e:
                    log.error("cannot open %s: %s; what it holds is lost", path, e)
            try:
                os.unlink(path)
            except OSError as e:
                if fd >= 0:
                    os.close(fd)
                raise RuntimeError(f"cannot remove incompatible pin {path}: {e}") from e
            stale[name] = (fd, info)
        return stale

    def _check_pinned_layouts(self) -> None:
        """bcc reuses a pin as it finds it. A mismatched enforcement map (from
        another corral version) is not replaced -- live sessions depend on it --
        so refuse to start: the predecessor's programs stay attached and keep
        enforcing on it."""
        bad = []
        for name in PINNED_MAPS:
            t = self.bpf[name]
            have = _fdinfo(t.map_fd)
            want = {"map_type": int(t.ttype), "max_entries": int(t.max_entries)}
            if t.ttype != BPF_MAP_TYPE_RINGBUF:
                want["key_size"] = ct.sizeof(t.Key)
                want["value_size"] = ct.sizeof(getattr(t, "sLeaf", t.Leaf))
            diff = {k: (have.get(k), v) for k, v in want.items() if have.get(k) != v}
            if diff:
                bad.append(f"{PIN_DIR / name}: " + ", ".join(
                    f"{k} {h} (declared {w})" for k, (h, w) in diff.items()))
        if bad:
            msg = ("pinned maps do not match this corral's bpf/net.c: " + "; ".join(bad) +
                   ". End the sessions (the running programs still enforce on these maps) and "
                   f"remove {PIN_DIR} to start fresh")
            log.error("%s", msg)
            raise RuntimeError(msg)

    def _collect_downtime(self, stale: dict[str, tuple[int, dict]]) -> dict:
        records: list[bytes] = []
        salvaged: dict[str, int] = {}
        for name, (fd, info) in stale.items():
            if fd < 0:
                continue
            try:
                if name == "events" and info.get("type") == "ringbuf":
                    records += _drain_ringbuf(fd)
                elif info.get("bytes_value") == 8 and str(info.get("type", "")).endswith("array"):
                    v = _map_u64_sum(info["id"])
                    if v is None:
                        log.error("cannot read the replaced %s pin; its count is lost", name)
                    else:
                        salvaged[name] = v
                else:
                    log.error("the replaced %s pin (%s) cannot be read; what it held is lost",
                              name, info.get("type"))
            except OSError as e:
                log.error("reading the replaced %s pin: %s", name, e)
            finally:
                os.close(fd)
        try:
            records += _drain_ringbuf(self.bpf["events"].map_fd)
        except OSError as e:
            log.error("cannot drain the pinned ring buffer: %s; what it holds is logged "
                      "as it arrives, without the while_down mark", e)
        good = [r for r in records if len(r) == EVENT.size]
        total = self._lost_total()
        if "lost_seen" in stale and "lost_seen" not in salvaged:
            log.warning("how many lost events the previous daemon reported is unknown; "
                        "all %d counted are reported again", total)
        seen = salvaged.get("lost_seen", self._seen())
        if "lost" in stale:
            lost = max(0, salvaged.get("lost", 0) - seen) + total
        else:
            lost = total - seen if total >= seen else total
        self._lost_base = self._lost_reported = total
        self._write_seen(total)
        if records or lost:
            log.info("%d kernel event(s) were waiting in the pinned ring buffer; %d lost while "
                     "no daemon read it", len(records), lost)
        return {"records": good, "lost": lost, "undecodable": len(records) - len(good),
                "replaced": sorted(stale)}

    def take_downtime(self) -> dict:
        """Once: what the kernel left while no daemon read the ring buffer (the
        previous daemon died, or this one was starting). "records": raw events,
        oldest first; "lost": events dropped because the buffer was full and no
        daemon has reported; "undecodable": records of another layout (dropped);
        "replaced": event pins replaced because their layout changed."""
        d = self._downtime
        self._downtime = {"records": [], "lost": 0, "undecodable": 0, "replaced": []}
        return d

    # -- programs -----------------------------------------------------------
    def _attach(self) -> None:
        old = self._attached_ids()
        fd = os.open(self.cgroup_root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for name, atype in PROGRAMS:
                fn = self.bpf.load_func(name, self.BPF.CGROUP_SOCK_ADDR, attach_type=atype)
                self.BPF.attach_func(fn, fd, atype, BPF_F_ALLOW_MULTI)
            name, atype = SOCK_CREATE
            fn = self.bpf.load_func(name, self.BPF.CGROUP_SOCK, attach_type=atype)
            self.BPF.attach_func(fn, fd, atype, BPF_F_ALLOW_MULTI)
        finally:
            os.close(fd)
        # A previous daemon's programs stay attached after it dies (sessions
        # stay confined); now that ours are in place, retire theirs.
        for atype_name, prog_id in old:
            subprocess.run(["bpftool", "cgroup", "detach", str(self.cgroup_root), atype_name,
                            "id", str(prog_id)], capture_output=True)

    def _attached_ids(self) -> list[tuple[str, int]]:
        proc = subprocess.run(["bpftool", "-j", "cgroup", "show", str(self.cgroup_root)],
                              capture_output=True, text=True)
        if proc.returncode != 0 or not proc.stdout.strip():
            return []
        try:
            entries = json.loads(proc.stdout)
        except ValueError:
            return []
        return [(e["attach_type"], e["id"]) for e in entries
                if str(e.get("name", "")).startswith("corral_")]

    def detach(self) -> None:
        for atype_name, prog_id in self._attached_ids():
            subprocess.run(["bpftool", "cgroup", "detach", str(self.cgroup_root), atype_name,
                            "id", str(prog_id)], capture_output=True)

    # -- session state ------------------------------------------------------
    def set_session(self, cgid: int, flags: int, dns_port: int = 0) -> None:
        key = self.sessions.Key(cgid)
        try:
            cur = self.sessions[key]
            cur.flags = flags
            cur.dns_port = dns_port
            self.sessions[key] = cur
        except KeyError:
            leaf = self.sessions.Leaf()
            leaf.flags = flags
            leaf.dns_port = dns_port
            leaf.rate_tokens = 400
            self.sessions[key] = leaf

    def remove_session(self, cgid: int) -> None:
        self.clear_rules(cgid)
        self._installed.pop(cgid, None)
        try:
            del self.sessions[self.sessions.Key(cgid)]
        except KeyError:
            pass

    def clear_rules(self, cgid: int) -> None:
        self._installed.pop(cgid, None)
        lo, hi = cgid & 0xFFFFFFFF, cgid >> 32
        for trie in self.tries.values():
            for k in [k for k in trie.keys() if k.cg_lo == lo and k.cg_hi == hi]:
                try:
                    del trie[k]
                except KeyError:
                    pass

    def install_rules(self, cgid: int, allow: list[tuple[NetRule, int]],
                      deny: list[tuple[NetRule, int]]) -> None:
        """Replace the session's tries. Each rule comes with its id (for events)."""
        # Keyed by (trie, address as int, prefix length): hashing ipaddress
        # objects dominated installs with thousands of DNS-learned rules.
        wanted = {}
        for kind, rules in (("allow", allow), ("deny", deny)):
            for fam in (4, 6):
                fam_rules = [(r, rid) for r, rid in rules if r.net.version == fam]
                tname = f"{kind}{fam}"
                for (addr, plen), net, leaf in _merged(fam_rules):
                    wanted[(tname, addr, plen)] = (net, leaf)
        # Write new entries first, then drop stale ones: a live update never
        # passes through an empty (wide-open or all-denied) state.
        lo, hi = cgid & 0xFFFFFFFF, cgid >> 32
        prev = self._installed.get(cgid)
        now = {}
        for k, (net, leaf) in wanted.items():
            b = bytes(leaf)
            now[k] = (net, b)
            if prev is not None:
                old = prev.get(k)
                if old is not None and old[1] == b:
                    continue          # unchanged: DNS-learned rules change one at a time
            trie = self.tries[k[0]]
            trie[self._key(trie, cgid, net)] = leaf
        self._installed[cgid] = now
        if prev is not None:
            for k in prev.keys() - now.keys():
                trie = self.tries[k[0]]
                try:
                    del trie[self._key(trie, cgid, prev[k][0])]
                except KeyError:
                    pass
            return
        # First install for this cgid in this daemon: the pinned tries may hold
        # a previous daemon's entries; sweep them.
        for tname, trie in self.tries.items():
            for k in list(trie.keys()):
                if k.cg_lo != lo or k.cg_hi != hi:
                    continue
                net = self._net_of(tname, k)
                if (tname, int(net.network_address), net.prefixlen) not in wanted:
                    try:
                        del trie[k]
                    except KeyError:
                        pass

    def add_entries(self, cgid: int, entries: list) -> None:
        """Write (trie name, prefix, leaf) entries for a session that
        install_rules already set up (SessionTable's learned-rule fast path)."""
        cache = self._installed[cgid]
        for tname, net, leaf in entries:
            trie = self.tries[tname]
            trie[self._key(trie, cgid, net)] = leaf
            cache[(tname, int(net.network_address), net.prefixlen)] = (net, bytes(leaf))

    @staticmethod
    def _key(trie, cgid: int, net) -> object:
        k = trie.Key()
        k.prefixlen = 64 + net.prefixlen
        k.cg_lo = cgid & 0xFFFFFFFF
        k.cg_hi = cgid >> 32
        packed = net.network_address.packed
        if net.version == 4:
            k.addr = int.from_bytes(packed, "little")
        else:
            for i in range(4):
                k.addr[i] = int.from_bytes(packed[4 * i:4 * i + 4], "little")
        return k

    @staticmethod
    def _net_of(tname: str, k) -> object:
        plen = k.prefixlen - 64
        if tname.endswith("4"):
            return ipaddress.ip_network((int(k.addr).to_bytes(4, "little"), plen))
        raw = b"".join(int(k.addr[i]).to_bytes(4, "little") for i in range(4))
        return ipaddress.ip_network((raw, plen))

    def _lost_total(self) -> int:
        return sum(int(v) for v in self.lost.getvalue(self.lost.Key(0)))

    def _seen(self) -> int:
        return int(self.lost_seen[self.lost_seen.Key(0)].value)

    def _write_seen(self, n: int) -> None:
        self.lost_seen[self.lost_seen.Key(0)] = self.lost_seen.Leaf(n)

    def lost_events(self) -> int:
        """Events lost to a full ring buffer since this daemon loaded (the
        pinned counter also holds its predecessors' losses: those went to
        take_downtime). The caller reports what it gets, so the total is noted
        in the pinned lost_seen for the next daemon."""
        total = self._lost_total()
        if total != self._lost_reported:
            self._write_seen(total)
            self._lost_reported = total
        return total - self._lost_base


def _merged_entries(rules: list[tuple[NetRule, int]]):
    for _, net, leaf in _merged(rules):
        yield net, leaf


def _merged(rules: list[tuple[NetRule, int]]):
    """(key, net, leaf): one trie entry per distinct prefix, carrying the port ranges of every
    rule whose prefix covers it: the LPM lookup returns only the longest match,
    so a /16 must also answer for the /8 around it.

    Covering prefixes are found by masking each prefix down to the (few)
    prefix lengths in use, not by comparing every pair: learned DNS rules make
    thousands of /32s, and this runs before every DNS answer that adds one."""
    groups: dict[tuple[int, int], list] = {}
    nets = {}
    for idx, (r, rid) in enumerate(rules):
        key = (int(r.net.network_address), r.net.prefixlen)
        groups.setdefault(key, []).append((idx, r, rid))
        nets[key] = r.net
    if not groups:
        return
    bits = next(iter(nets.values())).max_prefixlen
    plens = sorted({p for _, p in groups})
    for key in sorted(groups, key=lambda k: k[1]):
        addr, plen = key
        covering = []
        for p in plens:
            if p > plen:
                break
            mask = ((1 << p) - 1) << (bits - p)
            covering.extend(groups.get((addr & mask, p), ()))
        covering.sort(key=lambda c: c[0])          # rule order, as written
        net = nets[key]
        if len(covering) > MAX_PORT_RANGES:
            raise PolicyError(f"{net}: {len(covering)} port rules cover this prefix; "
                              f"at most {MAX_PORT_RANGES} are supported — merge port ranges")
        leaf = PortRules()
        leaf.n = len(covering)
        for i, (_, r, rid) in enumerate(covering):
            leaf.rule[i] = rid
            leaf.lo[i] = r.port_lo
            leaf.hi[i] = r.port_hi
        yield key, net, leaf
