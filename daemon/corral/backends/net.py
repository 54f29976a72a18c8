"""User-space half of bpf/net.c: compile once, attach at corral's root cgroup
as pinned links, pin the maps under a directory of the build, and turn a session's network rules into trie entries.

The event ring buffer and its loss counters are pinned too: what the kernel
emits while no daemon reads it (the daemon was killed, or is still starting)
is drained by the next daemon at load time (`take_downtime`), and losses are
reported once across restarts (kernel/bpf.py LossCounter)."""
from __future__ import annotations

import ctypes as ct
import errno
import ipaddress
import logging
import os
import re
import struct
import time
from pathlib import Path

from corral.bounded import Bounded
from corral.config import PIN_DIR
from corral.kernel import abi, bpf
from corral.kernel.events import describe_rule
from corral.kernel.abi import (MAX_PORT_RANGES, RULE_USER, SESS_DNS_STEER,  # noqa: F401
                               SESS_FILE_ENFORCE, SESS_NET_ENFORCE, PortRules)
from corral.backends.base import Backend
from corral.policy import model as pol
from corral.policy.model import NetRule, PolicyError

log = logging.getLogger("corral.net")

# (function, attach type) — values of enum bpf_attach_type.
PROGRAMS = [
    ("corral_connect4", 10), ("corral_connect6", 11),
    ("corral_sendmsg4", 14), ("corral_sendmsg6", 15),
    ("corral_recvmsg4", 19), ("corral_recvmsg6", 20),
    ("corral_getpeername4", 29), ("corral_getpeername6", 30),
]
SOCK_CREATE = ("corral_sock_create", 2)
# BPF_CGROUP_UNIX_CONNECT / _SENDMSG (kernel 6.7+): exact-path refusals with a record
UNIX_PROGRAMS = [("corral_connect_unix", 49), ("corral_sendmsg_unix", 50)]
PINNED_MAPS = ["sessions", "allow4", "deny4", "allow6", "deny6", "dns_socks",
               "events", "lost", "lost_seen", "active_gen", "denied"]
UNIX_PATH_MAX = 108


def unix_hooks_supported(release: str | None = None) -> bool:
    """cgroup connect_unix/sendmsg_unix exist from 6.7 on."""
    m = re.match(r"(\d+)\.(\d+)", release or os.uname().release)
    return bool(m) and (int(m.group(1)), int(m.group(2))) >= (6, 7)


# -- the session's own loopback servers (bpf/net.c, CORRAL_OWN_LOOPBACK) -------
_SYS_bpf = {"x86_64": 321, "aarch64": 280}.get(os.uname().machine, 321)
BPF_PROG_LOAD = 5
BPF_PROG_TYPE_CGROUP_SOCK_ADDR = 18
BPF_CGROUP_INET4_CONNECT = 10
# helper ids (enum bpf_func_id)
_SK_LOOKUP_TCP, _SK_LOOKUP_UDP, _SK_RELEASE, _PROBE_READ_KERNEL = 84, 85, 86, 113


def _insn(code, dst=0, src=0, off=0, imm=0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def _lookup_probe_program() -> bytes:
    """What own_server4() and own_lookup() in net.c do, as the verifier will see
    it: ctx->type and the caller's socket's fields read, TCP and UDP lookups in
    the caller's netns, the found socket's address copied through the stack as
    a number (bpf_probe_read_kernel), bpf_sk_release."""
    tuple_at = [_insn(0xbf, dst=2, src=10), _insn(0x07, dst=2, imm=-40),     # r2 = &tuple
                _insn(0xb7, dst=3, imm=12),                                  # sizeof(tuple.ipv4)
                _insn(0xb7, dst=4, imm=-1),                                  # BPF_F_CURRENT_NETNS
                _insn(0xb7, dst=5, imm=0), _insn(0xbf, dst=1, src=6)]        # flags, ctx
    return b"".join([
        _insn(0xbf, dst=6, src=1),                                           # r6 = ctx
        _insn(0x61, dst=1, src=6, off=32),                                   # ctx->type
        _insn(0x79, dst=1, src=6, off=64),                                   # ctx->sk
        _insn(0x61, dst=1, src=1, off=44),                                   # ctx->sk->src_port
        _insn(0xb7, dst=7, imm=0),
        *[_insn(0x7b, dst=10, src=7, off=-8 * i) for i in range(1, 6)],     # tuple = {}
        *tuple_at, _insn(0x85, imm=_SK_LOOKUP_TCP),
        _insn(0x15, dst=0, off=10),                                          # NULL: to the UDP lookup
        _insn(0x7b, dst=10, src=0, off=-48),                                 # slot = sk
        _insn(0xbf, dst=8, src=0),
        _insn(0xbf, dst=1, src=10), _insn(0x07, dst=1, imm=-56),
        _insn(0xb7, dst=2, imm=8),
        _insn(0xbf, dst=3, src=10), _insn(0x07, dst=3, imm=-48),
        _insn(0x85, imm=_PROBE_READ_KERNEL),                                 # p = (u64)slot
        _insn(0xbf, dst=1, src=8), _insn(0x85, imm=_SK_RELEASE),
        *tuple_at, _insn(0x85, imm=_SK_LOOKUP_UDP),
        _insn(0x15, dst=0, off=2),                                           # NULL: to the return
        _insn(0xbf, dst=1, src=0), _insn(0x85, imm=_SK_RELEASE),
        _insn(0xb7, dst=0, imm=1), _insn(0x95),                              # return 1
    ])


def own_loopback_probe() -> tuple[bool, str]:
    """Does this kernel's verifier take, in a cgroup connect program, the socket
    lookup bpf/net.c does for the session's own loopback servers? Loads (and
    closes) the same calls in a tiny program. -> (supported, why)."""
    libc = ct.CDLL(None, use_errno=True)
    libc.syscall.restype = ct.c_long
    insns = _lookup_probe_program()
    ibuf = ct.create_string_buffer(insns, len(insns))
    lic = ct.create_string_buffer(b"GPL")
    logbuf = ct.create_string_buffer(16384)
    attr = bytearray(144)
    struct.pack_into("<IIQQIIQ", attr, 0, BPF_PROG_TYPE_CGROUP_SOCK_ADDR, len(insns) // 8,
                     ct.addressof(ibuf), ct.addressof(lic), 1, len(logbuf), ct.addressof(logbuf))
    struct.pack_into("<16s", attr, 48, b"corral_ownprobe")
    struct.pack_into("<I", attr, 68, BPF_CGROUP_INET4_CONNECT)
    abuf = ct.create_string_buffer(bytes(attr), len(attr))
    fd = libc.syscall(_SYS_bpf, BPF_PROG_LOAD, abuf, len(attr))
    if fd < 0:
        e = ct.get_errno()
        lines = [ln for ln in logbuf.value.decode(errors="replace").splitlines() if ln.strip()]
        why = next((ln for ln in lines if "helper" in ln or "func" in ln), lines[-1] if lines else "")
        return False, f"{errno.errorcode.get(e, e)}: {why}".rstrip(": ")
    os.close(fd)
    return True, "socket lookup in cgroup sock_addr programs"


# active_gen is shared by every build (PIN_DIR/active_gen); the rest are one
# build's (PIN_DIR/net-<version>/). An older build's events, lost and
# lost_seen are read by its successor, whatever their layout (event_pin_layouts).
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
    """The loaded network programs and their maps.

    Maps and the cgroup links of one build of net.c are pinned together in
    PIN_DIR/net-<version>/ (bpf.VersionedPins; version: the source, its
    headers and the ring buffer size); the links keep the programs attached
    while no daemon runs. Each daemon attaches its own generation of programs
    next to what is attached, makes it the reporting one (the shared
    active_gen), then retires the others. A daemon of the same build reuses
    the pinned maps as they are. A daemon of another build starts on empty
    maps of its own: it attaches only when activate() is called, after the
    daemon re-installed every recovered session, then reads and removes the
    old build's pins (and a flat, unversioned layout's, detached by query)."""
    label = "bpf-cgroup-sock-addr"

    def __init__(self, cgroup_root: Path):
        self.cgroup_root = cgroup_root
        ensure_bpffs()
        PIN_DIR.mkdir(mode=0o700, exist_ok=True)
        pages = ringbuf_pages()
        self.layouts = event_pin_layouts(pages)
        self.unix_hooks = unix_hooks_supported() and os.environ.get("CORRAL_NO_UNIX_HOOKS") != "1"
        # The session's own loopback servers, found by the kernel's socket lookup
        # (CORRAL_NO_OWN_LOOPBACK=1: compiled out, loopback as any other address).
        if os.environ.get("CORRAL_NO_OWN_LOOPBACK") == "1":
            self.own_loopback, self.own_loopback_why = False, "CORRAL_NO_OWN_LOOPBACK=1"
        else:
            self.own_loopback, self.own_loopback_why = own_loopback_probe()
        if self.own_loopback:
            log.info("own loopback servers: reachable without a rule (%s)", self.own_loopback_why)
        else:
            log.warning("own loopback servers: need allow_localhost_ports, the kernel lookup is "
                        "off (%s)", self.own_loopback_why)
        self.version = bpf.source_version("net.c", f"pages={pages} unix={int(self.unix_hooks)} "
                                                   f"own={int(self.own_loopback)}")
        self.pins = bpf.VersionedPins(PIN_DIR, "net", self.version)
        self.pin_dir = self.pins.dir
        self.pin_dir.mkdir(mode=0o700, exist_ok=True)
        # Builds to migrate from: other versions, and a corral before versioned pins.
        self._old = self.pins.predecessors()
        if os.path.lexists(PIN_DIR / "sessions"):
            self._old.append(PIN_DIR)
        self.generation = (self._active_generation() + 1) & 0xFFFFFFFF
        # The pins are declared in net.c (bpf/pinned.h); only their directories come from here.
        defines = {"CORRAL_PIN_DIR": bpf.c_string(str(self.pin_dir)),
                   "CORRAL_SHARED_PIN_DIR": bpf.c_string(str(PIN_DIR)),
                   "EVENTS_RINGBUF_PAGES": pages, "CORRAL_GENERATION": self.generation}
        if self.unix_hooks:
            defines["CORRAL_UNIX_HOOKS"] = 1
        if self.own_loopback:
            defines["CORRAL_OWN_LOOPBACK"] = 1
        self.bpf, self.header_mode = bpf.compile_program("net.c", defines)
        self.pinned_maps = PINNED_MAPS + (["unix_deny"] if self.unix_hooks else [])
        self._check_pinned_layouts()
        self.sessions = self.bpf["sessions"]
        self.tries = {k: self.bpf[k] for k in ("allow4", "deny4", "allow6", "deny6")}
        self.dns_socks = self.bpf["dns_socks"]
        # cgid -> {(trie name, prefix): leaf bytes} as last written by install_rules
        self._installed: dict[int, dict] = {}
        self._rules: dict[int, list[str]] = {}   # cgid -> rule id - RULE_USER -> text
        self._fast: dict[int, dict] = {}         # cgid -> what append_learned may append to
        self._unix_written: dict[int, set] = {}  # cgid -> socket paths set_unix_refusals wrote
        # Sessions whose entries a previous daemon left in the pinned maps: the
        # only ones whose keys must be found by walking a whole map (every other
        # session's are the ones written here: cgroup ids are never reused).
        self._stale = self._cgids_in_maps()
        self._downtime = None
        if self._old:
            log.warning("pinned network programs of another build (%s): this daemon (%s) "
                        "migrates their sessions", ", ".join(d.name for d in self._old),
                        self.pin_dir.name)
        else:
            self.activate()

    def _cgids_in_maps(self) -> set[int]:
        out = set()
        for trie in self.tries.values():
            out.update(k.cg_lo | k.cg_hi << 32 for k in trie.keys())
        if self.unix_hooks:
            out.update(k.cgid for k in self.bpf["unix_deny"].keys())
        return out

    def activate(self) -> None:
        """Attach, make this generation the reporting one, retire the others and
        collect what they left (take_downtime). Migrating from another build,
        the daemon calls this once every recovered session is in the new maps:
        the new programs never see a session they do not know. Once."""
        if self._downtime is not None:
            return
        if self._old:
            self._copy_dns_socks()
            if self.unix_hooks:
                self._copy_map("unix_deny")
                self._stale |= self._cgids_in_maps()    # what the copy brought along
        self._attach()
        old = [self._open_reporting_pins(d) for d in self._old]
        self._retire_links()
        self._downtime = self._collect_downtime(old)
        for d in self._old:
            self._remove_pins(d)
        self._old = []

    # -- pins of a predecessor ----------------------------------------------
    def _check_pinned_layouts(self) -> None:
        """bcc reuses a pin as it finds it. The version covers the layouts, so a
        mismatch is a damaged directory: live sessions may depend on it, so
        refuse to start; the predecessor's programs stay attached and keep
        enforcing on it."""
        bad = []
        for name in self.pinned_maps:
            t = self.bpf[name]
            have = _fdinfo(t.map_fd)
            want = {"map_type": int(t.ttype), "max_entries": int(t.max_entries)}
            if t.ttype != bpf.BPF_MAP_TYPE_RINGBUF:
                want["key_size"] = ct.sizeof(t.Key)
                want["value_size"] = ct.sizeof(getattr(t, "sLeaf", t.Leaf))
            diff = {k: (have.get(k), v) for k, v in want.items() if have.get(k) != v}
            if diff:
                where = PIN_DIR if name == "active_gen" else self.pin_dir
                bad.append(f"{where / name}: " + ", ".join(
                    f"{k} {h} (declared {w})" for k, (h, w) in diff.items()))
        if bad:
            msg = ("pinned maps do not match this corral's bpf/net.c: " + "; ".join(bad) +
                   ". End the sessions (the running programs still enforce on these maps) and "
                   f"remove {self.pin_dir} to start fresh")
            log.error("%s", msg)
            raise RuntimeError(msg)

    def _copy_dns_socks(self) -> None:
        """Steered DNS sockets the old build's programs are un-steering: their
        replies reach the new programs once the old ones are gone."""
        self._copy_map("dns_socks")

    def _copy_map(self, name: str) -> None:
        """Entries of an old build's pinned map of the same layout into ours
        (the sessions' Unix refusals are not recomputed: by now the session's
        own sockets are bound too)."""
        t = self.bpf[name]
        mine = bpf.Map(t.map_fd, ct.sizeof(t.Key), ct.sizeof(t.Leaf))
        for d in self._old:
            if not (d / name).exists():
                continue
            info = bpf.pin_info(d / name)
            if (info.get("bytes_key"), info.get("bytes_value")) != (mine.ksize, mine.vsize):
                continue
            old = bpf.Map(bpf.obj_get(d / name), mine.ksize, mine.vsize)
            try:
                for k in list(old.keys()):
                    v = old.lookup(k)
                    if v is not None:
                        mine.update(k, v)
            except OSError as e:
                log.warning("copying %s: %s", d / name, e)
            finally:
                old.close()

    def _open_reporting_pins(self, d: Path) -> dict[str, tuple[int, dict]]:
        """fds of an old build's event pins (read once its programs are gone);
        one whose layout differs from this build's is named in "replaced".
        name -> (fd or -1, info, layout differs)."""
        out = {}
        for name, want in self.layouts.items():
            path = d / name
            if not os.path.lexists(path):
                continue
            info = bpf.pin_info(path)
            have = (info.get("type"), info.get("bytes_key"), info.get("bytes_value"),
                    info.get("max_entries")) if info else None
            if have != want:
                log.error("pinned %s has layout %s but this corral declares %s (type, key, value, "
                          "max_entries); replacing it: what it holds is read first", path,
                          have or "(not a map)", want)
            fd = -1
            if info:
                try:
                    fd = bpf.obj_get(path)
                except OSError as e:
                    log.error("cannot open %s: %s; what it holds is lost", path, e)
            out[name] = (fd, info, have != want)
        return out

    def _remove_pins(self, d: Path) -> None:
        if d == PIN_DIR:                  # the flat layout: its maps, not the shared pins
            for name in PINNED_MAPS:
                if name != "active_gen":
                    try:
                        os.unlink(d / name)
                    except FileNotFoundError:
                        pass
        else:
            self.pins.retire(d)

    def _collect_downtime(self, old: list[dict]) -> dict:
        records: list[bytes] = []
        salvaged: dict[str, int] = {}
        replaced = set()
        for pins in old:
            for name, (fd, info, differs) in pins.items():
                if differs:
                    replaced.add(name)
                if fd < 0:
                    continue
                try:
                    if name == "events" and info.get("type") == "ringbuf":
                        records += bpf.drain_ringbuf(fd)
                    elif str(info.get("type", "")).endswith("array"):
                        v = bpf.u64_sum(fd)
                        if v is None:
                            log.error("cannot read the old %s pin; its count is lost", name)
                        else:
                            salvaged[name] = salvaged.get(name, 0) + v
                    else:
                        log.error("the old %s pin (%s) cannot be read; what it held is lost",
                                  name, info.get("type"))
                except OSError as e:
                    log.error("reading the old %s pin: %s", name, e)
                finally:
                    os.close(fd)
        try:
            records += bpf.drain_ringbuf(self.bpf["events"].map_fd)
        except OSError as e:
            log.error("cannot drain the pinned ring buffer: %s; what it holds is logged "
                      "as it arrives, without the while_down mark", e)
        good = [r for r in records if len(r) == abi.EVENT_SIZE]
        if old and "lost_seen" not in salvaged:
            log.warning("how many lost events the previous daemon reported is unknown; "
                        "all counted are reported again")
        # Another build's counters are not this one's: what they hold is salvaged.
        self.loss = bpf.LossCounter(self.bpf["lost"].map_fd, self.bpf["lost_seen"].map_fd,
                                    salvaged, replaced=bool(old))
        lost = self.loss.downtime
        if records or lost:
            log.info("%d kernel event(s) were waiting in the pinned ring buffer; %d lost while "
                     "no daemon read it", len(records), lost)
        return {"records": good, "lost": lost, "undecodable": len(records) - len(good),
                "replaced": sorted(replaced)}

    def take_downtime(self) -> dict:
        """Once: what the kernel left while no daemon read the ring buffer (the
        previous daemon died, or this one was starting). "records": raw events,
        oldest first; "lost": events dropped because the buffer was full and no
        daemon has reported; "undecodable": records of another layout (dropped);
        "replaced": event pins of an older build whose layout differs."""
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

    def _link_prefix(self) -> str:
        return f"link_{self.generation}_"     # bpffs refuses dots

    def _attach(self) -> None:
        """This generation's programs as pinned links next to whatever is
        attached (both enforce: nothing is ever open), then make it the reporting one."""
        from bcc import BPF
        fd = os.open(self.cgroup_root, os.O_RDONLY | os.O_DIRECTORY)
        links: dict[str, int] = {}
        self._prog_ids = set()
        # Links of this generation already pinned are a daemon's that died
        # before it made them report: what attached before it still enforces.
        for f in self.pin_dir.glob(self._link_prefix() + "*"):
            f.unlink()
        try:
            for name, atype in self.programs():
                ptype = BPF.CGROUP_SOCK if (name, atype) == SOCK_CREATE else BPF.CGROUP_SOCK_ADDR
                fn = self.bpf.load_func(name, ptype, attach_type=atype)
                self._prog_ids.add(bpf.prog_id(fn.fd))
                links[self._link_prefix() + name] = bpf.cgroup_link(fn.fd, fd, atype)
            for n, lfd in links.items():
                bpf.obj_pin(lfd, self.pin_dir / n)
        finally:
            for lfd in links.values():
                os.close(lfd)
            os.close(fd)
        gen = self.bpf["active_gen"]
        gen[gen.Key(0)] = gen.Leaf(self.generation)

    def programs(self) -> list[tuple[str, int]]:
        return PROGRAMS + [SOCK_CREATE] + (UNIX_PROGRAMS if self.unix_hooks else [])

    def _retire_links(self) -> None:
        """Every other generation's programs off the cgroup: unpinning a link
        detaches it; programs a corral before pinned links attached are found
        by query and detached. Waits until they are gone."""
        for f in self.pin_dir.glob("link_*"):
            if not f.name.startswith(self._link_prefix()):
                f.unlink(missing_ok=True)
        for d in self._old:
            for f in d.glob("link_*"):
                f.unlink(missing_ok=True)
        fd = os.open(self.cgroup_root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            deadline = time.monotonic() + 2
            while True:
                others = [(a, p) for a, p in self._attached_ids(fd) if p not in self._prog_ids]
                if not others:
                    return
                for atype, prog_id in others:
                    try:
                        bpf.cgroup_detach(fd, prog_id, atype)
                    except OSError:
                        pass        # a link's: it goes when the kernel frees the link
                if time.monotonic() > deadline:
                    log.warning("previous programs still attached: %s", others)
                    return
                time.sleep(0.02)
        finally:
            os.close(fd)

    @staticmethod
    def _attached_ids(cgroup_fd: int) -> list[tuple[int, int]]:
        """(attach type, program id) of every corral program attached here."""
        out = []
        # The Unix attach types only where the kernel has them (6.1 says EINVAL).
        unix = UNIX_PROGRAMS if unix_hooks_supported() else []
        for atype in sorted({a for _, a in PROGRAMS + [SOCK_CREATE] + unix}):
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
        # "static" and "hosts" are made by the first learned address (_fast_index):
        # most sessions learn none, and a 1000-rule policy cost 2 ms here.
        self._fast[cgid] = {
            "policy": policy, "next_rid": rid, "learned": list(learned) if learned_rules else [],
            "allow_ids": allow_ids, "n_static": n_static, "static": None, "hosts": None}
        return list(texts)

    @staticmethod
    def _fast_index(st: dict) -> None:
        if st["static"] is not None:
            return
        st["static"] = [(r.net.version, int(r.net.network_address),
                         ((1 << r.net.prefixlen) - 1) << (r.net.max_prefixlen - r.net.prefixlen),
                         r, i) for r, i in st["allow_ids"][:st["n_static"]]]
        st["hosts"] = {(r.net.version, int(r.net.network_address)) for r, _ in st["allow_ids"]
                       if r.net.prefixlen == r.net.max_prefixlen}

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
        self._fast_index(st)
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

    # -- Unix sockets outside the session (bpf/net.c, CORRAL_UNIX_HOOKS) ----
    def set_unix_refusals(self, cgid: int, paths: list[str]) -> int:
        """Refuse connect/sendto to these exact absolute socket paths from the
        session, with a record (the mount view's masks enforce every spelling).
        Adds to what is there. -> entries written (0 without the hooks)."""
        if not self.unix_hooks:
            return 0
        t = self.bpf["unix_deny"]
        n = 0
        for p in paths:
            raw = os.fsencode(p)
            if not raw.startswith(b"/") or len(raw) > UNIX_PATH_MAX:
                continue        # such a name cannot be spelt absolutely in sun_path
            k = t.Key()
            k.cgid = cgid
            k.path = raw            # a c_char array: assigning bytes copies them
            t[k] = t.Leaf(abi.RULE_UNIX_FOREIGN)
            self._unix_written.setdefault(cgid, set()).add(raw)
            n += 1
        return n

    def clear_unix_refusals(self, cgid: int) -> None:
        if not self.unix_hooks:
            return
        t = self.bpf["unix_deny"]
        keys = []
        for raw in self._unix_written.pop(cgid, ()):
            k = t.Key()
            k.cgid = cgid
            k.path = raw
            keys.append(k)
        if cgid in self._stale:
            keys += [k for k in t.keys() if k.cgid == cgid]
        _delete(t, keys)

    def take_denials(self, cgid: int) -> int:
        """Refusals the kernel counted for this session (every one, whether its
        record was rate-limited or is still in the ring buffer), and forget them."""
        t = self.bpf["denied"]
        try:
            n = t[t.Key(cgid)].value
            del t[t.Key(cgid)]
        except KeyError:
            return 0
        return n

    def remove_session(self, cgid: int) -> None:
        self.take_denials(cgid)
        self.clear_unix_refusals(cgid)
        self.clear_rules(cgid)
        self._installed.pop(cgid, None)
        self._rules.pop(cgid, None)
        self._fast.pop(cgid, None)
        try:
            del self.sessions[self.sessions.Key(cgid)]
        except KeyError:
            pass

    def clear_rules(self, cgid: int) -> None:
        """The session's trie entries: those written here (install_rules keeps
        them), and for a session a previous daemon left, whatever the maps hold."""
        known = self._installed.pop(cgid, None) or {}
        lo, hi = cgid & 0xFFFFFFFF, cgid >> 32
        for tname, trie in self.tries.items():
            _delete_blob(trie, _key_blob(cgid, [k for k in known if k[0] == tname]))
            if cgid in self._stale:
                _delete(trie, [k for k in trie.keys() if k.cg_lo == lo and k.cg_hi == hi])
        self._stale.discard(cgid)

    def install_rules(self, cgid: int, allow: list[tuple[NetRule, int]],
                      deny: list[tuple[NetRule, int]]) -> None:
        """Replace the session's tries. Each rule comes with its id (for events)."""
        wanted = _wanted(allow, deny)
        # Write new entries first, then drop stale ones: a live update never
        # passes through an empty (wide-open or all-denied) state.
        lo, hi = cgid & 0xFFFFFFFF, cgid >> 32
        prev = self._installed.get(cgid)
        # unchanged entries are not rewritten: DNS-learned rules change one at a time
        changed = wanted if prev is None else \
            {k: v for k, v in wanted.items() if prev.get(k, (None, None))[1] != v[1]}
        for tname, trie in self.tries.items():
            keys = [k for k in changed if k[0] == tname]
            if keys:
                _write_blob(trie, _key_blob(cgid, keys), b"".join(changed[k][1] for k in keys))
        now = self._installed[cgid] = dict(wanted)     # add_entries adds to it; _WANTED's is shared
        if prev is not None:
            for tname, trie in self.tries.items():
                _delete_blob(trie, _key_blob(cgid, [k for k in prev.keys() - now.keys()
                                                    if k[0] == tname]))
            return
        if cgid not in self._stale:
            return                    # a new session: nothing of it in the maps but this
        # First install, in this daemon, of a session a previous one left: the
        # pinned tries may hold its old entries; sweep them.
        self._stale.discard(cgid)
        for tname, trie in self.tries.items():
            gone = []
            for k in trie.keys():
                if k.cg_lo == lo and k.cg_hi == hi:
                    net = self._net_of(tname, k)
                    if (tname, int(net.network_address), net.prefixlen) not in wanted:
                        gone.append(k)
            _delete(trie, gone)

    def add_entries(self, cgid: int, entries: list) -> None:
        """Write (trie name, prefix, leaf) entries for a session that
        install_rules already set up (SessionTable's learned-rule fast path)."""
        cache = self._installed[cgid]
        for tname, net, leaf in entries:
            k = (tname, int(net.network_address), net.prefixlen)
            _write_blob(self.tries[tname], _key_blob(cgid, [k]), bytes(leaf))
            cache[k] = (net, bytes(leaf))

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


_BATCH_MIN = 8        # fewer entries: one syscall each costs less than building arrays

# A rule set's trie entries, computed once: a native `corral run` per agent
# command installs the same policy again and again; only the cgroup id in the
# keys differs. Keyed by the rules' texts and ids. Bounded.
_WANTED = Bounded(64)


def _wanted(allow: list[tuple[NetRule, int]], deny: list[tuple[NetRule, int]]) -> dict:
    """{(trie name, address as int, prefix length): (net, leaf bytes)} for these rules
    (keyed by ints: hashing ipaddress objects dominated installs with thousands
    of DNS-learned rules)."""
    key = (tuple((str(r), i) for r, i in allow), tuple((str(r), i) for r, i in deny))
    hit = _WANTED.get(key)
    if hit is not None:
        return hit
    out = {}
    for kind, rules in (("allow", allow), ("deny", deny)):
        for fam in (4, 6):
            fam_rules = [(r, rid) for r, rid in rules if r.net.version == fam]
            tname = f"{kind}{fam}"
            for (addr, plen), net, leaf in _merged(fam_rules):
                out[(tname, addr, plen)] = (net, bytes(leaf))
    return _WANTED.put(key, out)


_KEY_HEAD = struct.Struct("<III")       # bpf/net.c lpm4_key/lpm6_key: prefixlen, cg_lo, cg_hi


def _key_blob(cgid: int, entries) -> bytes:
    """The trie keys of (trie name, address, prefix length) entries for a session,
    back to back as the kernel lays them out (the address in network order)."""
    lo, hi = cgid & 0xFFFFFFFF, cgid >> 32
    return b"".join(_KEY_HEAD.pack(64 + plen, lo, hi) + addr.to_bytes(4 if t[-1] == "4" else 16, "big")
                    for t, addr, plen in entries)


def _write_blob(table, keys: bytes, leaves: bytes) -> None:
    """Keys and leaves (as laid out in memory) into a map: one BPF_MAP_UPDATE_BATCH
    for many (a thousand rules in one syscall, not a thousand), else one each."""
    ks, vs = ct.sizeof(table.Key), ct.sizeof(table.Leaf)
    n = len(keys) // ks
    if n >= _BATCH_MIN:
        try:
            table.items_update_batch((table.Key * n).from_buffer_copy(keys),
                                     (table.Leaf * n).from_buffer_copy(leaves))
            return
        except Exception:  # noqa: BLE001 - bcc raises Exception; the loop below says what failed
            pass
    for i in range(n):
        table[table.Key.from_buffer_copy(keys, i * ks)] = table.Leaf.from_buffer_copy(leaves, i * vs)


def _delete_blob(table, keys: bytes) -> None:
    _delete(table, (table.Key * (len(keys) // ct.sizeof(table.Key))).from_buffer_copy(keys))


def _delete(table, keys) -> None:
    """Keys (a list, or a ctypes array of them) out of a map, missing ones
    ignored (batch when many and all there)."""
    if len(keys) >= _BATCH_MIN:
        try:
            arr = keys if isinstance(keys, ct.Array) else (table.Key * len(keys))(*keys)
            table.items_delete_batch(arr)
            return
        except Exception:  # noqa: BLE001 - a missing key stops the batch: the loop finishes
            pass
    for k in keys:
        try:
            del table[k]
        except KeyError:
            pass


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
