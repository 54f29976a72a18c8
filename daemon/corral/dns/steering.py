"""Per-session DNS resolvers: domain policy -> kernel allow rules.

Every session whose network policy names domains gets its own resolver port
P, bound on 127.0.0.1 and [::1] (UDP and TCP). bpf/net.c rewrites the
session's port-53 traffic - to any server - to that port and makes the replies
look as if they came from the server the client asked. For each query:

  * a name the policy does not allow (or denies) is answered REFUSED and never
    leaves the host; the refusal is an audit event (kind "dns");
  * an allowed name is forwarded to the upstream; the A/AAAA records of the
    answer (following CNAMEs) become allow rules of this session only, scoped
    to the ports the matching domain rules give, expiring with the record TTL
    (clamped to [--dns-min-ttl, --dns-max-ttl]) - and they are in the kernel
    before the answer is sent back;
  * answers pointing into loopback/private/link-local space are dropped (DNS
    rebinding) unless the session's static allow CIDRs open that range.

Names the policy allows that /etc/hosts resolves are added at registration
(and whenever /etc/hosts changes) without expiry: the C library never asks DNS
for them. Everything runs on the daemon's event loop: no locks.
"""
from __future__ import annotations

import asyncio
import copy
import errno
import ipaddress
import json
import logging
import math
import os
import re
import socket
import struct
import time

from dnslib import CLASS, DNSHeader, DNSRecord, QTYPE, RCODE, RR

from corral.policy import model as pol
from corral.config import RUN_DIR
from corral.dns import names
from corral.dns.resolver import Cache, Upstream, UpstreamError, parse_hostport, resolv_conf_nameserver

log = logging.getLogger("corral.dns")

HOSTS = "/etc/hosts"
HOSTS_POLL = 1.0             # seconds between /etc/hosts checks
TCP_IDLE = 10.0
MAX_TCP_PER_SESSION = 32
MAX_INFLIGHT_PER_SESSION = 256
AUDIT_RATE, AUDIT_BURST = 100.0, 200.0     # dns audit events per second per session
_LABEL_OK = re.compile(rb"^[A-Za-z0-9_-]{1,63}$")
A, AAAA, CNAME, OPT = QTYPE.A, QTYPE.AAAA, QTYPE.CNAME, 41
STATE = RUN_DIR / "dns"
SAVE_DELAY = 1.0            # learned state reaches disk at most this late (restart only)


class SessionDns:
    """One session's resolver: its sockets and what it has learned."""

    def __init__(self, session, port: int, socks: list):
        self.session = session
        self.port = port
        self.socks = socks                 # (proto, family, socket) bound, not yet served
        self.transports: list = []
        self.servers: list = []
        self.active = False
        self.closed = False
        self.net_snapshot = None
        self.policy = names.DomainPolicy([], [])
        self.static_allow: list[pol.NetRule] = []
        # (qname or None if recovered, address) -> [ports, expiry epoch, chain names]
        self.learned: dict[tuple, list] = {}
        self.by_addr: dict[str, set] = {}    # address -> qnames in learned
        self.addr_union: dict[str, tuple] = {}  # address -> union of its learned ports
        self.addr_exp: dict[str, float] = {}    # address -> latest expiry (0: none)
        self.union_stale: set[str] = set()       # ... needing a recount
        self.hosts: dict[tuple, tuple] = {}  # (name, address) -> ports; never expire
        self.hosts_addr: dict[str, tuple] = {}  # address -> ports, from hosts
        self.pushed: frozenset | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0
        self.save_timer: asyncio.TimerHandle | None = None
        self.tcp_conns = 0
        self.inflight = 0
        self.tokens = AUDIT_BURST
        self.tokens_at = time.monotonic()
        self.suppressed = 0


def _qname(rec: DNSRecord) -> str | None:
    """Lower-case name, or None if a label holds something no host name has
    (an escaped dot could otherwise fake a subdomain)."""
    labels = rec.q.qname.label
    for lab in labels:
        if not _LABEL_OK.match(lab):
            return None
    return b".".join(labels).decode("ascii").lower()


def _rname(rr) -> str:
    return str(rr.rname).rstrip(".").lower()


def _udp_limit(query: DNSRecord) -> int:
    for rr in query.ar:
        if rr.rtype == OPT:
            return max(512, min(rr.rclass, 65535))
    return 512


class DnsSteering:
    """The per-session resolvers. Given what it uses, not the daemon: `args`
    (upstream, TTL bounds), `audit` (writes a log record), `loop` (returns the
    daemon's event loop, None before it runs). It owns what sessions learn and
    hands it over through `on_learned(session, [(rule, expiry)])`, which the
    session table sets to put it into the kernel (raises PolicyError if refused)."""

    def __init__(self, args, audit, loop):
        self._audit_rec = audit
        self._loop = loop
        self.on_learned = None
        up = getattr(args, "dns_upstream", None) or resolv_conf_nameserver()
        if not up:
            raise RuntimeError("no upstream DNS server: /etc/resolv.conf names none; "
                               "pass --dns-upstream HOST[:PORT]")
        host, port = parse_hostport(up)
        self.upstream = Upstream(host, port)
        lo, hi = getattr(args, "dns_min_ttl", None), getattr(args, "dns_max_ttl", None)
        self.min_ttl = 30.0 if lo is None else float(lo)
        self.max_ttl = 86400.0 if hi is None else float(hi)
        if self.max_ttl < self.min_ttl:
            raise RuntimeError("--dns-max-ttl is below --dns-min-ttl")
        self.cache = Cache()
        self.by_id: dict[str, SessionDns] = {}
        self.hosts_sig = None
        self.hosts_map: dict[str, list[str]] = {}
        self._hosts_task = None
        self.running = False
        self.stats = {"queries": 0, "refused": 0, "forwarded": 0, "cached": 0, "servfail": 0}
        self._check_hosts()

    def upstream_desc(self) -> str:
        return self.upstream.desc()

    @property
    def loop(self):
        return self._loop()

    # -- daemon lifecycle --------------------------------------------------
    async def start(self) -> None:
        await self.upstream.start()
        self.running = True
        for sd in list(self.by_id.values()):
            await self._activate(sd)
            self._schedule_expiry(sd)
        self._hosts_task = asyncio.get_running_loop().create_task(self._watch_hosts())
        for f in STATE.glob("*.json") if STATE.is_dir() else ():
            if f.stem not in self.by_id:          # a session that ended while we were down
                f.unlink(missing_ok=True)
        log.info("DNS resolver: upstream %s, learned TTL %g-%gs", self.upstream_desc(),
                 self.min_ttl, self.max_ttl)

    async def stop(self) -> None:
        self.running = False
        if self._hosts_task:
            self._hosts_task.cancel()
        for sd in list(self.by_id.values()):
            self._close(sd)
        self.upstream.close()
        log.info("DNS resolver stopped: %s; cache hits %d misses %d; upstream %s", self.stats,
                 self.cache.hits, self.cache.misses, self.upstream.stats)

    # -- SessionTable hooks ------------------------------------------------
    def add_session(self, s) -> int:
        """Called on every install of a policy that names domains: idempotent."""
        sd = self.by_id.get(s.id)
        if sd is not None:
            sd.session = s
            self._refresh(sd)
            return sd.port
        port, socks = self._bind(s.dns_port)
        sd = SessionDns(s, port, socks)
        self.by_id[s.id] = sd
        self._check_hosts()
        # A recovered session keeps what it had learned until it expires; we
        # no longer know which name taught it, so any domain removal drops it.
        if not self._load_state(sd):
            now = time.time()
            for rule, exp in s.dns_rules:
                self._import_rule(sd, rule, exp, now)
        self._refresh(sd)
        if self.running and self.loop is not None:
            self.loop.create_task(self._activate(sd))
        log.info("session %s: DNS resolver on 127.0.0.1:%d and [::1]:%d", s.id, port, port)
        return port

    def update_session(self, s) -> None:
        sd = self.by_id.get(s.id)
        if sd is None:
            return
        sd.session = s
        self._refresh(sd)
        # The install that called add_session took learned() (revocations
        # included); if the kernel holds something else, push ours right after.
        if sd.pushed != frozenset(r for r, _ in s.dns_rules) and self.loop is not None:
            self.loop.call_soon(self._push, sd)

    def learned(self, s) -> list[tuple[str, float]]:
        """What the session has learned, as the kernel must hold it: one
        (rule, expiry) per address and port range (see _rules)."""
        sd = self.by_id.get(s.id)
        return self._rules(sd) if sd is not None else []

    def remove_session(self, s) -> None:
        sd = self.by_id.pop(s.id, None)
        if sd is None:
            return
        self._close(sd)
        try:
            (STATE / f"{s.id}.json").unlink()
        except OSError:
            pass

    # -- sockets -----------------------------------------------------------
    def _bind(self, preferred: int) -> tuple[int, list]:
        """A port free for UDP and TCP on both 127.0.0.1 and ::1."""
        last = None
        for attempt in range(64):
            want = preferred if attempt == 0 and preferred else 0
            socks = []
            try:
                u4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(("udp", socket.AF_INET, u4))
                u4.bind(("127.0.0.1", want))
                port = u4.getsockname()[1]
                t4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(("tcp", socket.AF_INET, t4))
                t4.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                t4.bind(("127.0.0.1", port))
                for kind, typ in (("udp", socket.SOCK_DGRAM), ("tcp", socket.SOCK_STREAM)):
                    try:
                        s6 = socket.socket(socket.AF_INET6, typ)
                    except OSError as e:
                        if e.errno == errno.EAFNOSUPPORT:
                            break
                        raise
                    socks.append((kind, socket.AF_INET6, s6))
                    s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    if typ == socket.SOCK_STREAM:
                        s6.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    try:
                        s6.bind(("::1", port))
                    except OSError as e:
                        if e.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                            socks.pop()[2].close()     # no IPv6 loopback here
                            break
                        raise
                for kind, _, so in socks:
                    so.setblocking(False)
                    if kind == "tcp":
                        so.listen(64)     # connections queue until the loop serves them
                    else:
                        try:
                            so.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
                        except OSError:
                            pass
                return port, socks
            except OSError as e:
                last = e
                for _, _, so in socks:
                    so.close()
        raise RuntimeError(f"no free port for a session DNS resolver: {last}")

    async def _activate(self, sd: SessionDns) -> None:
        if sd.active or sd.closed:
            return
        sd.active = True
        loop = asyncio.get_running_loop()
        for kind, fam, so in sd.socks:
            if kind == "udp":
                tr, _ = await loop.create_datagram_endpoint(lambda: _SessionUdp(self, sd), sock=so)
                sd.transports.append(tr)
            else:
                srv = await asyncio.start_server(
                    lambda r, w: self._tcp_client(sd, r, w), sock=so)
                sd.servers.append(srv)
            if sd.closed:
                break
        if sd.closed:
            self._close(sd)

    def _close(self, sd: SessionDns) -> None:
        sd.closed = True
        for t in (sd.timer, sd.save_timer):
            if t is not None:
                t.cancel()
        sd.timer = sd.save_timer = None
        for tr in sd.transports:
            tr.close()
        for srv in sd.servers:
            srv.close()
        for _, _, so in sd.socks:
            try:
                so.close()
            except OSError:
                pass
        sd.transports, sd.servers = [], []

    # -- policy view -------------------------------------------------------
    def _refresh(self, sd: SessionDns) -> bool:
        """Re-read the session's domain rules; drop what they no longer allow.
        The resulting learned set is what learned() returns (the caller,
        SessionTable._install, then puts exactly that into the kernel)."""
        s = sd.session
        net = s.policy.get("network") or {}
        snap = {k: list(net.get(k) or []) for k in ("allow", "deny", "allow_domains",
                                                     "deny_domains", "allow_localhost_ports")}
        if snap == sd.net_snapshot:
            return False
        old = sd.net_snapshot
        sd.net_snapshot = copy.deepcopy(snap)
        sd.policy = names.DomainPolicy(snap["allow_domains"], snap["deny_domains"])
        sd.static_allow = pol.net_rules(s.policy)[0]
        narrowed = old is not None and (set(old["allow_domains"]) - set(snap["allow_domains"])
                                        or set(snap["deny_domains"]) - set(old["deny_domains"]))
        revoked = []
        for key, ent in list(sd.learned.items()):
            qname, addr = key
            if qname is None:
                if narrowed:
                    revoked.append((None, addr, "policy narrowed"))
                    self._del_entry(sd, key)
                continue
            ports, why = self._ports_for(sd, qname, ent[2])
            if ports and self._rebinding(sd, addr):
                ports, why = (), "rebinding protection"
            if not ports:
                revoked.append((qname, addr, why))
                self._del_entry(sd, key)
            else:
                self._set_ports(sd, key, ports)
        self._hosts_entries(sd)
        rules = self._rules(sd)
        sd.pushed = frozenset(r for r, _ in rules)
        self._schedule_expiry(sd)
        if revoked:
            self._audit(sd, {"op": "revoke", "verdict": "info",
                             "target": ", ".join(sorted({q or "?" for q, _, _ in revoked})),
                             "rule": "policy update: " + "; ".join(sorted({w for _, _, w in revoked})),
                             "addresses": sorted({a for _, a, _ in revoked})}, force=True)
        return True

    # sd.learned is only changed through these, which keep the per-address
    # indexes right: a popular address (one CDN IP behind thousands of names)
    # must not make every answer cost O(names).
    @staticmethod
    def _set_entry(sd, key, ent) -> None:
        addr = key[1]
        old = sd.learned.get(key)
        sd.learned[key] = ent
        sd.by_addr.setdefault(addr, set()).add(key[0])
        if old is not None and (old[0] != ent[0] or old[1] != ent[1]):
            sd.union_stale.add(addr)
        elif addr not in sd.union_stale:
            sd.addr_union[addr] = names.union_ports(sd.addr_union.get(addr, ()), ent[0])
            DnsSteering._bump_exp(sd, addr, ent[1])

    @staticmethod
    def _bump_exp(sd, addr, exp) -> None:
        cur = sd.addr_exp.get(addr)
        if cur is None or (cur != 0 and (exp == 0 or exp > cur)):
            sd.addr_exp[addr] = exp

    @staticmethod
    def _set_ports(sd, key, ports) -> None:
        ent = sd.learned[key]
        if ent[0] != ports:
            ent[0] = ports
            sd.union_stale.add(key[1])

    @staticmethod
    def _del_entry(sd, key) -> None:
        addr = key[1]
        if sd.learned.pop(key, None) is None:
            return
        qs = sd.by_addr.get(addr)
        if qs is not None:
            qs.discard(key[0])
            if not qs:
                del sd.by_addr[addr]
                sd.addr_union.pop(addr, None)
                sd.addr_exp.pop(addr, None)
                sd.union_stale.discard(addr)
                return
        sd.union_stale.add(addr)

    @staticmethod
    def _addr_ports(sd, addr) -> tuple:
        """The ports the kernel allows to ADDR for this session's DNS rules."""
        if addr in sd.union_stale:
            sd.union_stale.discard(addr)
            ents = [sd.learned[(q, addr)] for q in sd.by_addr.get(addr, ())]
            sd.addr_union[addr] = names.union_ports(*(e[0] for e in ents))
            exps = [e[1] for e in ents]
            sd.addr_exp[addr] = 0 if (not exps or 0 in exps) else max(exps)
        learned = sd.addr_union.get(addr, ())
        hosts = sd.hosts_addr.get(addr)
        return names.union_ports(hosts, learned) if hosts else learned

    def _ports_for(self, sd, qname: str, chain) -> tuple[tuple, str]:
        dec = sd.policy.decide(qname)
        if not dec.ports or not dec.learn:
            return (), dec.rule
        for n in chain:
            r = sd.policy.denied_by(n)
            if r is not None:
                return (), f"deny_domains {r} (CNAME target {n})"
        return dec.ports, dec.rule

    def _rebinding(self, sd, addr) -> str | None:
        hit = names.non_public(addr)
        if hit is None:
            return None
        net, why = hit
        if names.rebinding_exempt(addr, net, sd.static_allow):
            return None
        return f"{why} address {addr} (allow {net} or a part of it in network.allow to permit)"

    def _import_rule(self, sd, rule: str, exp: float, now: float) -> None:
        try:
            r = pol.parse_net_rule(rule)
        except pol.PolicyError:
            return
        if exp and exp <= now:
            return
        addr = str(r.net.network_address)
        key = (None, addr)
        if key not in sd.learned:
            self._set_entry(sd, key, [(), exp or 0, ()])
        ent = sd.learned[key]
        self._set_ports(sd, key, names.union_ports(ent[0], [(r.port_lo, r.port_hi)]))
        ent[1] = max(ent[1], exp or 0) if ent[1] else 0
        sd.union_stale.add(addr)

    # -- /etc/hosts ---------------------------------------------------------
    def _check_hosts(self) -> bool:
        try:
            st = os.stat(HOSTS)
            sig = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            sig = None
        if sig == self.hosts_sig:
            return False
        self.hosts_sig = sig
        try:
            with open(HOSTS) as fh:
                self.hosts_map = names.parse_hosts(fh.read())
        except OSError:
            self.hosts_map = {}
        return True

    def _hosts_entries(self, sd) -> None:
        out, by_addr = {}, {}
        for name, addrs in self.hosts_map.items():
            dec = sd.policy.decide(name)
            if dec.ports and dec.learn:
                for a in addrs:
                    out[(name, a)] = dec.ports
                    by_addr[a] = names.union_ports(by_addr.get(a, ()), dec.ports)
        sd.hosts = out
        sd.hosts_addr = by_addr

    async def _watch_hosts(self) -> None:
        while True:
            await asyncio.sleep(HOSTS_POLL)
            try:
                if self._check_hosts():
                    log.info("%s changed: re-reading it for %d session(s)", HOSTS, len(self.by_id))
                    for sd in list(self.by_id.values()):
                        self._hosts_entries(sd)
                        self._push(sd)
            except Exception:
                log.exception("re-reading %s", HOSTS)

    # -- learned rules -> kernel -------------------------------------------
    def _rules(self, sd) -> list[tuple[str, float]]:
        """Everything learned, one rule per address and port range, in the
        order addresses were first learned (so learning one more is an append
        for SessionTable). The expiry timer, not this, drops what expired: the
        kernel must always hold exactly what this returns."""
        out = []
        rule_text = names.rule_text
        for addr in sd.by_addr:
            ports = self._addr_ports(sd, addr)
            exp = 0 if addr in sd.hosts_addr else sd.addr_exp.get(addr, 0)
            for lo, hi in ports:
                out.append((rule_text(addr, lo, hi), exp))
        for addr, ports in sd.hosts_addr.items():
            if addr not in sd.by_addr:
                for lo, hi in ports:
                    out.append((rule_text(addr, lo, hi), 0))
        return out

    def _push(self, sd: SessionDns) -> bool:
        """Make the kernel hold exactly the session's learned set. False if refused."""
        if sd.closed:
            return False
        s = sd.session
        rules = self._rules(sd)
        texts = frozenset(r for r, _ in rules)
        if texts == sd.pushed and texts == frozenset(r for r, _ in s.dns_rules):
            self.on_learned(s, rules)       # only expiries moved: nothing for the kernel
            return True
        before = [tuple(r) for r in s.dns_rules]
        pushed_before, sd.pushed = sd.pushed, texts    # what update_session will see
        try:
            self.on_learned(s, rules)
        except pol.PolicyError as e:
            sd.pushed = pushed_before
            log.warning("session %s: learned rules refused: %s", s.id, e)
            try:
                self.on_learned(s, before)
            except Exception:
                pass
            self._audit(sd, {"op": "learn", "verdict": "error", "target": "",
                             "rule": f"kernel rules refused: {e}"}, force=True)
            return False
        sd.pushed = texts
        self._save_later(sd)            # (expiry timers: _note_expiry / _expire)
        return True

    def _save_later(self, sd) -> None:
        if sd.save_timer is None and self.loop is not None:
            sd.save_timer = self.loop.call_later(SAVE_DELAY, self._save_state, sd)

    def _note_expiry(self, sd, exp: float) -> None:
        exp = math.ceil(exp)     # whole seconds: what expires together costs one reinstall
        if self.loop is None or sd.closed or (sd.timer is not None and sd.timer_at <= exp):
            return
        if sd.timer is not None:
            sd.timer.cancel()
        sd.timer_at = exp
        sd.timer = self.loop.call_later(max(0.0, exp - time.time()) + 0.005, self._expire, sd)

    def _schedule_expiry(self, sd) -> None:
        if self.loop is None or sd.closed:
            return
        exps = [e for _, e, _ in sd.learned.values() if e]
        if not exps:
            return
        at = math.ceil(min(exps))
        if sd.timer is not None and sd.timer_at <= at:
            return
        if sd.timer is not None:
            sd.timer.cancel()
        sd.timer_at = at
        sd.timer = self.loop.call_later(max(0.0, at - time.time()) + 0.005, self._expire, sd)

    def _expire(self, sd) -> None:
        sd.timer = None
        if sd.closed:
            return
        now = time.time()
        gone = [k for k, (_, e, _) in sd.learned.items() if e and e <= now]
        for k in gone:
            self._del_entry(sd, k)
        if gone:
            self._push(sd)
            log.debug("session %s: %d learned address(es) expired", sd.session.id, len(gone))
        self._schedule_expiry(sd)

    def _state_file(self, s):
        return STATE / f"{s.id}.json"

    def _save_state(self, sd) -> None:
        """So a restarted daemon knows which name taught which address."""
        sd.save_timer = None
        if sd.closed:
            return
        s = sd.session
        rules = self._rules(sd)
        if frozenset(r for r, _ in rules) == sd.pushed:
            self.on_learned(s, rules)       # refreshed expiries, for `corral ps`
        try:
            STATE.mkdir(parents=True, exist_ok=True, mode=0o700)
            f = self._state_file(sd.session)
            tmp = f.with_suffix(".tmp")
            tmp.write_text(json.dumps([[k[0], k[1], list(map(list, v[0])), v[1], list(v[2])]
                                       for k, v in sd.learned.items()]))
            os.replace(tmp, f)
        except OSError as e:
            log.debug("saving DNS state: %s", e)

    def _load_state(self, sd) -> bool:
        """Learned entries of a recovered session, keyed by name again."""
        try:
            data = json.loads(self._state_file(sd.session).read_text())
            now = time.time()
            for qname, addr, ports, exp, chain in data:
                if exp and exp <= now:
                    continue
                self._set_entry(sd, (qname, addr), [tuple(map(tuple, ports)), exp, tuple(chain)])
        except (OSError, ValueError, TypeError):
            return False
        return True

    # -- audit ---------------------------------------------------------------
    def _audit(self, sd, rec: dict, force: bool = False) -> None:
        now = time.monotonic()
        sd.tokens = min(AUDIT_BURST, sd.tokens + (now - sd.tokens_at) * AUDIT_RATE)
        sd.tokens_at = now
        if sd.tokens < 1 and not force:
            sd.suppressed += 1
            return
        sd.tokens = max(0.0, sd.tokens - 1)
        s = sd.session
        if sd.suppressed:
            self._audit_rec({"kind": "rate", "op": "suppressed", "verdict": "info", "session": s.id,
                          "target": f"{sd.suppressed} dns event(s)", "count": sd.suppressed,
                          "rule": "per-session dns audit rate limit", "uid": s.owner_uid})
            sd.suppressed = 0
        rec = dict(rec)
        rec.setdefault("kind", "dns")
        rec["session"] = s.id
        rec.setdefault("uid", s.owner_uid)
        self._audit_rec(rec)

    # -- queries -------------------------------------------------------------
    def _reply(self, query: DNSRecord, rcode: int) -> bytes:
        r = DNSRecord(DNSHeader(id=query.header.id, qr=1, opcode=query.header.opcode,
                                rd=query.header.rd, ra=1, rcode=rcode), questions=query.questions)
        return r.pack()

    def _handle(self, sd: SessionDns, data: bytes, proto: str):
        """bytes to send back, None to stay silent, or a coroutine (forwarding)."""
        self.stats["queries"] += 1
        try:
            query = DNSRecord.parse(data)
        except Exception:
            return None                      # not DNS: nothing sensible to answer
        if query.header.qr:
            return None
        if query.header.opcode != 0:
            return self._reply(query, RCODE.NOTIMP)
        if len(query.questions) != 1:
            return self._reply(query, RCODE.FORMERR)
        qname = _qname(query)
        qtype = QTYPE.get(query.q.qtype, str(query.q.qtype))
        if qname is None:
            dec = names.Decision((), "not a host name")
            qname = str(query.q.qname)
        elif query.q.qclass != CLASS.IN:
            dec = names.Decision((), f"class {CLASS.get(query.q.qclass)}: only IN is forwarded")
        elif query.q.qtype in (QTYPE.AXFR, QTYPE.IXFR):
            dec = names.Decision((), "zone transfers are not forwarded")
        else:
            dec = sd.policy.decide(qname)
        if not dec.ports:
            self.stats["refused"] += 1
            self._audit(sd, {"op": "query", "verdict": "deny", "target": qname, "rule": dec.rule,
                             "qtype": qtype, "proto": proto, "answer": "REFUSED"})
            return self._reply(query, RCODE.REFUSED)
        key = Cache.key(query, qname)
        hit = self.cache.get(key)
        if hit is not None:
            self.stats["cached"] += 1
            rec, age = hit
            return self._answer(sd, query, qname, dec, rec, age, proto)
        if sd.inflight >= MAX_INFLIGHT_PER_SESSION:
            return self._reply(query, RCODE.SERVFAIL)
        return self._forward(sd, query, qname, dec, key, proto)

    async def _forward(self, sd, query, qname, dec, key, proto) -> bytes | None:
        self.stats["forwarded"] += 1
        sd.inflight += 1
        try:
            if proto == "tcp":
                rec = await self.upstream.query_tcp(query)
            else:
                rec = await self.upstream.query_udp(query)
        except UpstreamError as e:
            self.stats["servfail"] += 1
            log.debug("session %s: %s %s: %s", sd.session.id, qname, query.q.qtype, e)
            return self._reply(query, RCODE.SERVFAIL)
        finally:
            sd.inflight -= 1
        if sd.closed:
            return None
        self.cache.put(key, rec)
        return self._answer(sd, query, qname, dec, rec, 0.0, proto)

    def _answer(self, sd, query: DNSRecord, qname: str, dec, rec: DNSRecord, age: float,
                proto: str) -> bytes:
        """Apply the session's policy to an upstream answer, put what it
        teaches in the kernel, and only then return the reply."""
        chain = [qname]
        seen = {qname}
        grew = True
        while grew:                          # follow CNAMEs in any order
            grew = False
            for rr in rec.rr:
                if rr.rtype == CNAME and _rname(rr) in seen:
                    t = str(rr.rdata.label).rstrip(".").lower()
                    if t not in seen:
                        seen.add(t)
                        chain.append(t)
                        grew = True
        for n in chain[1:]:
            r = sd.policy.denied_by(n)
            if r is not None:
                self.stats["refused"] += 1
                self._audit(sd, {"op": "query", "verdict": "deny", "target": qname,
                                 "rule": f"deny_domains {r} (CNAME target {n})",
                                 "qtype": QTYPE.get(query.q.qtype), "proto": proto,
                                 "answer": "REFUSED", "chain": chain})
                return self._reply(query, RCODE.REFUSED)
        now = time.time()
        answers, learned, blocked = [], [], []
        for rr in rec.rr:
            rn = _rname(rr)
            ttl = max(0, int(rr.ttl - age))
            ttl = min(ttl, int(self.max_ttl))
            if rr.rtype in (A, AAAA):
                if rn not in seen:
                    continue                 # not part of the answer to this name
                addr = str(ipaddress.ip_address(str(rr.rdata)))
                why = self._rebinding(sd, addr)
                if why:
                    blocked.append((addr, why))
                    continue
                if dec.learn:
                    learned.append((addr, ttl))
            elif rr.rtype == CNAME and rn not in seen:
                continue
            answers.append(RR(rr.rname, rr.rtype, rr.rclass, ttl, rr.rdata))
        auth = [RR(rr.rname, rr.rtype, rr.rclass, max(0, int(rr.ttl - age)), rr.rdata)
                for rr in rec.auth if rr.rtype not in (A, AAAA)]
        client_edns = any(rr.rtype == OPT for rr in query.ar)
        extra = [rr for rr in rec.ar if rr.rtype == OPT] if client_edns else []
        new, created = [], []
        via = tuple(chain[1:])
        for addr, ttl in learned:
            k = (qname, addr)
            exp = now + min(max(ttl, self.min_ttl), self.max_ttl)
            before = self._addr_ports(sd, addr)
            ent = sd.learned.get(k)
            if ent is None:
                created.append(k)
                self._set_entry(sd, k, [dec.ports, exp, via])
            else:
                self._set_ports(sd, k, dec.ports)
                if ent[1]:
                    ent[1] = max(ent[1], exp)
                    if k[1] not in sd.union_stale:
                        self._bump_exp(sd, k[1], ent[1])
                ent[2] = via
            if self._addr_ports(sd, addr) != before:
                new.append(addr)
            self._note_expiry(sd, exp)
        if new:
            # The kernel must allow it before the client can see the answer.
            if not self._push(sd):
                for k in created:            # the kernel refused them: forget them
                    self._del_entry(sd, k)
                return self._reply(query, RCODE.SERVFAIL)
        elif learned:
            self._save_later(sd)     # only expiries moved: nothing for the kernel
        if new:
            self._audit(sd, {"op": "learn", "verdict": "allow", "target": qname, "rule": dec.rule,
                             "addresses": new, "chain": chain, "proto": proto})
        for addr, why in blocked:
            self._audit(sd, {"op": "rebind", "verdict": "deny", "target": f"{qname} -> {addr}",
                             "rule": f"DNS rebinding protection: {why}", "proto": proto})
        h = rec.header
        reply = DNSRecord(DNSHeader(id=query.header.id, qr=1, opcode=0, aa=h.aa, tc=h.tc,
                                    rd=query.header.rd, ra=h.ra, rcode=h.rcode),
                          questions=query.questions, rr=answers, auth=auth, ar=extra)
        reply.header.ad = h.ad
        reply.header.cd = query.header.cd
        wire = reply.pack()
        if proto == "udp" and len(wire) > _udp_limit(query):
            t = DNSRecord(DNSHeader(id=query.header.id, qr=1, opcode=0, tc=1, rd=query.header.rd,
                                    ra=h.ra, rcode=h.rcode), questions=query.questions)
            wire = t.pack()
        return wire

    async def _tcp_client(self, sd, reader, writer) -> None:
        if sd.tcp_conns >= MAX_TCP_PER_SESSION or sd.closed:
            writer.close()
            return
        sd.tcp_conns += 1
        try:
            while not sd.closed:
                try:
                    hdr = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE)
                    (n,) = struct.unpack("!H", hdr)
                    data = await asyncio.wait_for(reader.readexactly(n), TCP_IDLE)
                except (asyncio.IncompleteReadError, asyncio.TimeoutError, OSError):
                    return
                out = self._handle(sd, data, "tcp")
                if asyncio.iscoroutine(out):
                    out = await out
                if out is None:
                    return
                writer.write(struct.pack("!H", len(out)) + out)
                await writer.drain()
        except Exception:
            log.exception("session %s: DNS over TCP", sd.session.id)
        finally:
            sd.tcp_conns -= 1
            writer.close()


class _SessionUdp(asyncio.DatagramProtocol):
    def __init__(self, steering: DnsSteering, sd: SessionDns):
        self.st, self.sd = steering, sd
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        try:
            out = self.st._handle(self.sd, data, "udp")
        except Exception:
            log.exception("session %s: DNS query", self.sd.session.id)
            return
        if out is None:
            return
        if asyncio.iscoroutine(out):
            task = asyncio.get_running_loop().create_task(out)
            task.add_done_callback(lambda t: self._sent(t, addr))
            return
        self.transport.sendto(out, addr)

    def _sent(self, task, addr):
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("session %s: DNS query failed: %r", self.sd.session.id, exc)
            return
        out = task.result()
        if out is not None and not self.transport.is_closing():
            self.transport.sendto(out, addr)

    def error_received(self, exc):
        pass
