"""User-space half of bpf/net.c: compile once, attach at corral's root cgroup,
pin the maps, and turn a session's network rules into trie entries."""
from __future__ import annotations

import ctypes as ct
import ipaddress
import json
import logging
import os
import subprocess
from pathlib import Path

from . import kheaders
from .config import PIN_DIR
from .policy import MAX_PORT_RANGES, NetRule, PolicyError

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
PINNED_MAPS = ["sessions", "allow4", "deny4", "allow6", "deny6", "dns_socks"]

SESS_NET_ENFORCE = 1 << 0
SESS_FILE_ENFORCE = 1 << 1
SESS_DNS_STEER = 1 << 2
RULE_USER = 16


def bpf_dir() -> Path:
    env = os.environ.get("CORRAL_BPF_DIR")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for cand in (here.parents[2] / "bpf", here.parent / "bpf"):
        if (cand / "net.c").exists():
            return cand
    raise FileNotFoundError("corral BPF sources not found (set CORRAL_BPF_DIR)")


def ensure_bpffs(base: Path | None = None) -> None:
    """Mount bpffs at `base` (default: where our pins live) unless it is there."""
    base = Path(base) if base is not None else PIN_DIR.parent
    with open("/proc/self/mounts") as fh:
        mounted = any(f[1] == str(base) and f[2] == "bpf" for f in (l.split() for l in fh))
    if not mounted:
        base.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "bpf", "bpf", str(base)], check=True)


def _pinned_source(src: str) -> str:
    """Declare the maps pinned so a restarted daemon reuses the live state."""
    subs = {
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
        src = _pinned_source((bpf_dir() / "net.c").read_text())
        cflags = [f"-I{bpf_dir()}", "-Wno-unused-function"]
        if self.header_mode == "btf":
            cflags.append("-DCORRAL_BTF_HEADERS")
        self.bpf = BPF(text=src, cflags=cflags)
        self._attach()
        self.sessions = self.bpf["sessions"]
        self.tries = {k: self.bpf[k] for k in ("allow4", "deny4", "allow6", "deny6")}
        self.dns_socks = self.bpf["dns_socks"]
        # cgid -> {(trie name, prefix): leaf bytes} as last written by install_rules
        self._installed: dict[int, dict] = {}
        self.lost = self.bpf["lost"]

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

    def lost_events(self) -> int:
        return sum(int(v) for v in self.lost.getvalue(self.lost.Key(0)))


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
