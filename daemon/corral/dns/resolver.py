"""Forwarding to the upstream resolver, and a small answer cache.

A small pool of UDP sockets to the upstream is shared by every session: each
forwarded query gets a fresh random ID on a randomly chosen socket (sockets are
replaced regularly, so source ports change) and an answer is only accepted if
its socket, ID *and* question match an outstanding query.
TCP queries are forwarded over a fresh TCP connection each.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import socket
import struct
import time
from collections import OrderedDict

from dnslib import DNSRecord

log = logging.getLogger("corral.dns")

UDP_TRY = 1.5          # seconds before resending a UDP query to the upstream
UDP_TRIES = 2
TCP_TIMEOUT = 4.0


class UpstreamError(Exception):
    pass


def parse_hostport(text: str, default_port: int = 53) -> tuple[str, int]:
    """HOST[:PORT], [V6]:PORT or a bare IPv6 address -> (ip, port)."""
    t = text.strip()
    if t.startswith("["):
        host, _, rest = t[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else default_port
    elif t.count(":") == 1:
        host, _, p = t.partition(":")
        port = int(p)
    else:
        host, port = t, default_port
    ipaddress.ip_address(host)     # an address, not a name: no chicken-and-egg lookups
    if not 1 <= port <= 65535:
        raise ValueError(f"bad port {port}")
    return host, port


def resolv_conf_nameserver(path: str = "/etc/resolv.conf") -> str | None:
    try:
        with open(path) as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    return parts[1].split("%", 1)[0]
    except OSError:
        return None
    return None


def _question_key(rec: DNSRecord) -> tuple:
    q = rec.q
    return (str(q.qname).lower(), q.qtype, q.qclass)


class _Slot:
    """One upstream UDP socket (its own random source port) and its queries."""

    def __init__(self):
        self.transport = None
        self.pending: dict[int, tuple[asyncio.Future, tuple]] = {}
        self.uses = 0
        self.retired = False


class _UdpUpstream(asyncio.DatagramProtocol):
    def __init__(self, owner: "Upstream", slot: _Slot):
        self.owner, self.slot = owner, slot

    def datagram_received(self, data, addr):
        self.owner._udp_answer(self.slot, data)

    def error_received(self, exc):
        # ICMP port unreachable and friends: fail what is outstanding on it.
        self.owner._udp_error(self.slot, exc)


class Upstream:
    """Forwarded UDP queries leave from a small pool of sockets that are
    replaced after SLOT_USES queries each, so a spoofed answer has to guess a
    random source port as well as a random 16-bit ID (and match the question)."""

    SLOTS = 8
    SLOT_USES = 64

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
        self.slots: list[_Slot] = []
        self.stats = {"udp": 0, "tcp": 0, "timeouts": 0, "errors": 0}
        self.started = False

    def desc(self) -> str:
        return f"[{self.host}]:{self.port}" if self.family == socket.AF_INET6 else f"{self.host}:{self.port}"

    async def _open(self) -> _Slot:
        slot = _Slot()
        loop = asyncio.get_running_loop()
        slot.transport, _ = await loop.create_datagram_endpoint(
            lambda: _UdpUpstream(self, slot), remote_addr=(self.host, self.port), family=self.family)
        return slot

    async def start(self) -> None:
        self.started = True
        try:
            self.slots = [await self._open() for _ in range(self.SLOTS)]
        except OSError as e:
            # Not fatal: queries get SERVFAIL and the sockets are retried on use.
            log.error("DNS upstream %s: %s", self.desc(), e)
            self.slots = []

    def close(self) -> None:
        self.started = False
        for slot in self.slots:
            if slot.transport is not None:
                slot.transport.close()
            for fut, _ in slot.pending.values():
                if not fut.done():
                    fut.set_exception(UpstreamError("resolver stopping"))
            slot.pending.clear()
        self.slots = []

    # -- UDP ---------------------------------------------------------------
    def _udp_answer(self, slot: _Slot, data: bytes) -> None:
        try:
            rec = DNSRecord.parse(data)
        except Exception:
            self.stats["errors"] += 1
            return
        ent = slot.pending.get(rec.header.id)
        if ent is None or not rec.header.qr:
            return
        fut, key = ent
        if not rec.questions or _question_key(rec) != key:
            return                       # not the answer to what we asked: ignore
        slot.pending.pop(rec.header.id, None)
        if not fut.done():
            fut.set_result(rec)

    def _udp_error(self, slot: _Slot, exc) -> None:
        self.stats["errors"] += 1
        for qid, (fut, _) in list(slot.pending.items()):
            if not fut.done():
                fut.set_exception(UpstreamError(f"upstream {self.desc()}: {exc}"))
            slot.pending.pop(qid, None)

    async def _slot(self) -> _Slot:
        if not self.slots:
            try:
                self.slots = [await self._open() for _ in range(self.SLOTS)]
            except OSError as e:
                raise UpstreamError(f"upstream {self.desc()}: {e}") from None
        i = secrets.randbelow(len(self.slots))
        slot = self.slots[i]
        if slot.uses >= self.SLOT_USES:
            try:
                new = await self._open()
            except OSError as e:
                raise UpstreamError(f"upstream {self.desc()}: {e}") from None
            if self.slots and self.slots[i] is slot:
                self.slots[i] = new
                slot.retired = True
                if not slot.pending:
                    slot.transport.close()
            slot = new
        slot.uses += 1
        return slot

    async def query_udp(self, query: DNSRecord) -> DNSRecord:
        if not self.started:
            raise UpstreamError("upstream not started")
        slot = await self._slot()
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        client_id = query.header.id
        while True:
            qid = secrets.randbits(16)
            if qid not in slot.pending:
                break
        query.header.id = qid
        try:
            wire = query.pack()
        finally:
            query.header.id = client_id
        slot.pending[qid] = (fut, _question_key(query))
        self.stats["udp"] += 1
        try:
            for _ in range(UDP_TRIES):
                slot.transport.sendto(wire)
                try:
                    return await asyncio.wait_for(asyncio.shield(fut), UDP_TRY)
                except asyncio.TimeoutError:
                    continue
            self.stats["timeouts"] += 1
            raise UpstreamError(f"upstream {self.desc()} did not answer")
        finally:
            slot.pending.pop(qid, None)
            if not fut.done():
                fut.cancel()
            if slot.retired and not slot.pending:
                slot.transport.close()

    # -- TCP ---------------------------------------------------------------
    async def query_tcp(self, query: DNSRecord) -> DNSRecord:
        self.stats["tcp"] += 1
        client_id = query.header.id
        qid = secrets.randbits(16)
        query.header.id = qid
        try:
            wire = query.pack()
        finally:
            query.header.id = client_id
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, family=self.family), TCP_TIMEOUT)
        except (OSError, asyncio.TimeoutError) as e:
            raise UpstreamError(f"upstream {self.desc()} (tcp): {e}") from None
        try:
            writer.write(struct.pack("!H", len(wire)) + wire)
            await writer.drain()
            hdr = await asyncio.wait_for(reader.readexactly(2), TCP_TIMEOUT)
            body = await asyncio.wait_for(reader.readexactly(struct.unpack("!H", hdr)[0]), TCP_TIMEOUT)
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as e:
            raise UpstreamError(f"upstream {self.desc()} (tcp): {e!r}") from None
        finally:
            writer.close()
        try:
            rec = DNSRecord.parse(body)
        except Exception as e:
            raise UpstreamError(f"upstream {self.desc()} (tcp): unparsable answer: {e}") from None
        if rec.header.id != qid or not rec.questions or _question_key(rec) != _question_key(query):
            raise UpstreamError(f"upstream {self.desc()} (tcp): answer does not match the query")
        return rec


class Cache:
    """Upstream answers, shared by all sessions (each session's policy is
    applied to a cached answer exactly as to a fresh one). Positive answers
    only, for the smallest TTL in the answer section."""

    def __init__(self, size: int = 10000):
        self.size = size
        self.data: OrderedDict[tuple, tuple[float, DNSRecord, float]] = OrderedDict()
        self.hits = self.misses = 0

    @staticmethod
    def key(query: DNSRecord, qname_lc: str) -> tuple:
        do = any(rr.rtype == 41 and (rr.ttl & 0x8000) for rr in query.ar)
        return (qname_lc, query.q.qtype, query.q.qclass, do)

    def get(self, key) -> tuple[DNSRecord, float] | None:
        ent = self.data.get(key)
        if ent is None:
            self.misses += 1
            return None
        expires, rec, stored = ent
        now = time.monotonic()
        if now >= expires:
            del self.data[key]
            self.misses += 1
            return None
        self.data.move_to_end(key)
        self.hits += 1
        return rec, now - stored

    def put(self, key, rec: DNSRecord) -> None:
        if rec.header.rcode != 0 or rec.header.tc or not rec.rr:
            return
        ttl = min(rr.ttl for rr in rec.rr)
        if ttl <= 0:
            return
        now = time.monotonic()
        self.data[key] = (now + ttl, rec, now)
        self.data.move_to_end(key)
        while len(self.data) > self.size:
            self.data.popitem(last=False)

    def clear(self) -> None:
        self.data.clear()
