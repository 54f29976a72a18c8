"""User-space half of bpf/net.c: compile once, attach at corral's root cgroup,
pin the maps, and turn a session's network rules into trie entries.

The event ring buffer and its loss counters are pinned too: what the kernel
emits while no daemon reads it (the daemon was killed, or is still starting)
is drained by the next daemon at load time (`take_downtime`), and losses are
reported once across restarts (kernel/bpf.py LossCounter)."""
from __future__ import annotations

import ctypes as ct
import ipaddress
import logging
import os
from pathlib import Path

from corral.config import PIN_DIR
from corral.kernel import abi, bpf
from corral.kernel.events import describe_rule
from corral.kernel.abi import (MAX_PORT_RANGES, RULE_USER, SESS_DNS_STEER,  # noqa: F401
                               SESS_FILE_ENFORCE, SESS_NET_ENFORCE, PortRules)
from corral.backends.base import Backend
from corral.policy import model as pol
from corral.policy.model import NetRule, PolicyError

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
               "events", "lost", "lost_seen", "active_gen"]
# events, lost and lost_seen only carry reporting state: if an older corral
# left one with another layout it is read, then replaced (event_pin_layouts).
# The enforcement pins are never replaced: live sessions depend on them.
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def ensure_bpffs(base: Path | None = None) -> None:
    """Mount bpffs at `base` (default: where our pins live) unless it is there."""
    bpf.ensure_bpffs(Path(base) if base is not None else PIN_DIR.parent)


def ringbuf_pages() -> int:
    """Pages of the `events` ring buffer: common.h's EVENTS_RINGBUF_PAGES, unless
    CORRAL_RINGBUF_PAGES (a power of two; for tests) says otherwise."""
    env = os.environ.get("CORRAL_RINGBUF_PAGES")
    return int(env) if env else abi.EVENTS_RINGBUF_PAGES


def event_pin_layouts(pages: int) -> dict[str, tuple[str, int, int, int]]:
    """name -> (map type, key bytes, value bytes, max_entries) as net.c declares them."""
    return {"events": ("ringbuf", 0, 0, pages * PAGE_SIZE),
            "lost": ("percpu_array", 4, 8, 1),
            "lost_seen": ("array", 4, 8, 1)}


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


class NetBpf(Backend):
    """The loaded network programs and their maps."""
    label = "bpf-cgroup-sock-addr"

    def __init__(self, cgroup_root: Path):
        self.cgroup_root = cgroup_root
        ensure_bpffs()
        PIN_DIR.mkdir(mode=0o700, exist_ok=True)
        pages = ringbuf_pages()
        stale = self._set_aside_event_pins(event_pin_layouts(pages))
        self.generation = (self._active_generation() + 1) & 0xFFFFFFFF
        # The pins are declared in net.c (bpf/pinned.h); only their directory comes from here.
        self.bpf, self.header_mode = bpf.compile_program(
            "net.c", {"CORRAL_PIN_DIR": bpf.c_string(str(PIN_DIR)), "EVENTS_RINGBUF_PAGES": pages,
                      "CORRAL_GENERATION": self.generation})
        self._check_pinned_layouts()
        self._attach()
        self.sessions = self.bpf["sessions"]
        self.tries = {k: self.bpf[k] for k in ("allow4", "deny4", "allow6", "deny6")}
        self.dns_socks = self.bpf["dns_socks"]
        # cgid -> {(trie name, prefix): leaf bytes} as last written by install_rules
        self._installed: dict[int, dict] = {}
        self._rules: dict[int, list[str]] = {}   # cgid -> rule id - RULE_USER -> text
        self._fast: dict[int, dict] = {}         # cgid -> what append_learned may append to
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
            info = bpf.pin_info(path)
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
                    fd = bpf.obj_get(path)
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
            if t.ttype != bpf.BPF_MAP_TYPE_RINGBUF:
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
                    records += bpf.drain_ringbuf(fd)
                elif str(info.get("type", "")).endswith("array"):
                    v = bpf.u64_sum(fd)
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
            records += bpf.drain_ringbuf(self.bpf["events"].map_fd)
        except OSError as e:
            log.error("cannot drain the pinned ring buffer: %s; what it holds is logged "
                      "as it arrives, without the while_down mark", e)
        good = [r for r in records if len(r) == abi.EVENT_SIZE]
        if "lost_seen" in stale and "lost_seen" not in salvaged:
            log.warning("how many lost events the previous daemon reported is unknown; "
                        "all counted are reported again")
        self.loss = bpf.LossCounter(self.bpf["lost"].map_fd, self.bpf["lost_seen"].map_fd,
                                    salvaged, replaced="lost" in stale)
        lost = self.loss.downtime
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
    @staticmethod
    def _active_generation() -> int:
        """The generation whose programs report now (a predecessor's), 0 if none."""
        try:
            fd = bpf.obj_get(PIN_DIR / "active_gen")
        except OSError:
            return 0
        try:
            raw = bpf.Map.of(fd, ct.c_int, ct.c_uint32).lookup(bytes(ct.c_int(0)))
            return int.from_bytes(raw, "little") if raw else 0
        finally:
            os.close(fd)

    def _attach(self) -> None:
        from bcc import BPF
        fd = os.open(self.cgroup_root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            old = self._attached_ids(fd)
            for name, atype in PROGRAMS:
                fn = self.bpf.load_func(name, BPF.CGROUP_SOCK_ADDR, attach_type=atype)
                BPF.attach_func(fn, fd, atype, BPF_F_ALLOW_MULTI)
            name, atype = SOCK_CREATE
            fn = self.bpf.load_func(name, BPF.CGROUP_SOCK, attach_type=atype)
            BPF.attach_func(fn, fd, atype, BPF_F_ALLOW_MULTI)
            # Ours enforce next to the predecessor's (which stay attached after
            # it dies: sessions stay confined); now ours report, and theirs go.
            gen = self.bpf["active_gen"]
            gen[gen.Key(0)] = gen.Leaf(self.generation)
            for atype, prog_id in old:
                try:
                    bpf.cgroup_detach(fd, prog_id, atype)
                except OSError as e:
                    log.warning("cannot detach the previous daemon's program %d: %s", prog_id, e)
        finally:
            os.close(fd)

    @staticmethod
    def _attached_ids(cgroup_fd: int) -> list[tuple[int, int]]:
        """(attach type, program id) of every corral program attached here."""
        out = []
        for atype in sorted({a for _, a in PROGRAMS + [SOCK_CREATE]}):
            for pid in bpf.cgroup_programs(cgroup_fd, atype):
                if (bpf.prog_name(pid) or "").startswith("corral_"):
                    out.append((atype, pid))
        return out

    # -- the backend interface ----------------------------------------------
    def install(self, cgid: int, policy: dict, learned: list[str] = (), flags: int = 0,
                dns_port: int = 0) -> list[str]:
        """The session's network policy and the rules its resolver learned
        ("CIDR[:PORT[-PORT]]") into the tries, then its flags. -> the rule
        texts, indexed by rule id - RULE_USER."""
        allow, deny = pol.net_rules(policy)
        has_net = policy.get("network") is not None
        learned_rules = [pol.parse_net_rule(t) for t in learned] if has_net else []
        texts = [f"allow {r}" for r in allow] + [f"deny {r}" for r in deny]
        texts += [f"allow {t} (from DNS)" for t in learned] if learned_rules else []
        # Learned rules get the last ids, so learning one never renumbers (and
        # rewrites) the static rules' trie entries.
        rid = RULE_USER
        allow_ids, deny_ids = [], []
        for r in allow:
            allow_ids.append((r, rid))
            rid += 1
        for r in deny:
            deny_ids.append((r, rid))
            rid += 1
        for r in learned_rules:
            allow_ids.append((r, rid))
            rid += 1
        self._fast.pop(cgid, None)
        # Entries before flags: turning enforcement on never sees an empty trie.
        self.install_rules(cgid, allow_ids, deny_ids)
        self.set_session(cgid, flags, dns_port)
        self._rules[cgid] = texts
        n_static = len(allow_ids) - len(learned_rules)
        self._fast[cgid] = {
            "policy": policy, "next_rid": rid, "learned": list(learned) if learned_rules else [],
            "static": [(r.net.version, int(r.net.network_address),
                        ((1 << r.net.prefixlen) - 1) << (r.net.max_prefixlen - r.net.prefixlen), r, i)
                       for r, i in allow_ids[:n_static]],
            "hosts": {(r.net.version, int(r.net.network_address)) for r, _ in allow_ids
                      if r.net.prefixlen == r.net.max_prefixlen},
        }
        return list(texts)

    def append_learned(self, cgid: int, policy: dict, learned: list[str]) -> list[str] | None:
        """Fast path for the common case, one more address learned: when the
        policy is the one installed and `learned` only appends host prefixes
        not already in the allow tries, write just their trie entries (the
        full install is O(all rules) per DNS answer). -> the added rule texts,
        or None: do a full install."""
        st = self._fast.get(cgid)
        old = st["learned"] if st is not None else None
        if st is None or st["policy"] is not policy or learned[:len(old)] != old:
            return None
        if len(learned) == len(old):
            return []                           # only expiries changed
        try:
            added = [pol.parse_net_rule(t) for t in learned[len(old):]]
        except pol.PolicyError:
            return None                         # the full install reports it
        groups: dict[tuple, list] = {}
        rid = st["next_rid"]
        for r in added:
            if r.net.prefixlen != r.net.max_prefixlen:
                return None
            key = (r.net.version, int(r.net.network_address))
            if key in st["hosts"]:
                return None                     # would change an existing entry
            groups.setdefault(key, []).append((r, rid))
            rid += 1
        entries = []
        for (ver, a), new in groups.items():
            covering = [(r, i) for v, net, mask, r, i in st["static"] if v == ver and a & mask == net]
            covering += new
            if len(covering) > MAX_PORT_RANGES:
                return None
            entries.append((f"allow{ver}", new[0][0].net, _leaf(covering)))
        self.add_entries(cgid, entries)
        texts = [f"allow {t} (from DNS)" for t in learned[len(old):]]
        self._rules[cgid] += texts
        st["learned"] = list(learned)
        st["hosts"].update(groups)
        st["next_rid"] = rid
        return texts

    def remove(self, cgid: int) -> None:
        self.remove_session(cgid)

    def describe(self, cgid: int, rule_id: int) -> str:
        return describe_rule(rule_id, self._rules.get(cgid, []))

    def snapshot(self, cgid: int) -> list[str]:
        return list(self._rules.get(cgid, []))

    def describe_snapshot(self, snapshot: list[str] | None, rule_id: int) -> str:
        return describe_rule(rule_id, snapshot or [])

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
        self._rules.pop(cgid, None)
        self._fast.pop(cgid, None)
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
        """Events lost to a full ring buffer since this daemon loaded (its
        predecessors' losses went to take_downtime)."""
        return self.loss.new()


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
        yield key, net, _leaf([(r, rid) for _, r, rid in covering])


def _leaf(covering: list[tuple[NetRule, int]]) -> PortRules:
    """The trie leaf for a prefix: the port ranges of every rule covering it, in rule order."""
    leaf = PortRules()
    leaf.n = len(covering)
    for i, (r, rid) in enumerate(covering):
        leaf.rule[i] = rid
        leaf.lo[i] = r.port_lo
        leaf.hi[i] = r.port_hi
    return leaf
