"""Who owns the other end of a loopback TCP connection, from the kernel
(NETLINK_SOCK_DIAG, inet_diag): the cgroup the peer socket was created in.

The git gateway (server/gitgateway/) accepts connections on loopback ports;
the accepted socket's 4-tuple, reversed, names the client's socket, and one
exact inet_diag lookup (no dump) returns it with INET_DIAG_CGROUP_ID: the id
of the cgroup of the process that created that socket (sk_cgrp_data, set at
socket creation, Linux 5.7+). A session's processes cannot leave its cgroup,
so that id is the session's. Nothing here is taken from the client."""
from __future__ import annotations

import ipaddress
import socket
import struct

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLMSG_ERROR, NLMSG_DONE = 2, 3
INET_DIAG_CGROUP_ID = 21
INET_DIAG_NOCOOKIE = 0xFFFFFFFF
_NLH = struct.Struct("=IHHII")                  # struct nlmsghdr
_REQ = struct.Struct("=BBBBI")                  # struct inet_diag_req_v2 (head)
_SOCKID = struct.Struct("!HH16s16s")            # inet_diag_sockid: ports, src, dst (network order)
_SOCKID_TAIL = struct.Struct("=III")            # idiag_if, cookie[2]
_MSG = struct.Struct("=BBBB")                   # inet_diag_msg head; sockid; then 5 x u32
_RTA = struct.Struct("=HH")


class PeerUnknown(Exception):
    """The kernel has no socket for that tuple (the peer closed it, or it is not local)."""


def _addr16(addr: str) -> tuple[int, bytes]:
    ip = ipaddress.ip_address(addr)
    if ip.version == 4:
        return socket.AF_INET, ip.packed + b"\0" * 12
    if ip.ipv4_mapped is not None:
        return socket.AF_INET, ip.ipv4_mapped.packed + b"\0" * 12
    return socket.AF_INET6, ip.packed


def peer_cgroup_id(conn: socket.socket) -> int:
    """The cgroup id of the socket at the other end of `conn` (an accepted TCP
    connection over a local address). Raises PeerUnknown."""
    local = conn.getsockname()
    remote = conn.getpeername()
    return socket_cgroup_id(remote[0], remote[1], local[0], local[1])


def socket_cgroup_id(src: str, sport: int, dst: str, dport: int) -> int:
    """The cgroup id of the TCP socket whose own address is src:sport and whose
    peer is dst:dport. Raises PeerUnknown."""
    fam, s16 = _addr16(src)
    _, d16 = _addr16(dst)
    req = _REQ.pack(fam, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF) + \
        _SOCKID.pack(sport, dport, s16, d16) + \
        _SOCKID_TAIL.pack(0, INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE)
    nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG)
    try:
        nl.settimeout(2)
        nl.sendto(_NLH.pack(_NLH.size + len(req), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, 1, 0) + req,
                  (0, 0))
        data = nl.recv(1 << 16)
    except OSError as e:
        raise PeerUnknown(f"inet_diag: {e}") from None
    finally:
        nl.close()
    if len(data) < _NLH.size:
        raise PeerUnknown("inet_diag: short answer")
    length, mtype, _, _, _ = _NLH.unpack_from(data, 0)
    if mtype == NLMSG_ERROR:
        err = -struct.unpack_from("=i", data, _NLH.size)[0]
        raise PeerUnknown(f"no socket {src}:{sport} -> {dst}:{dport} (errno {err})")
    if mtype != SOCK_DIAG_BY_FAMILY:
        raise PeerUnknown(f"inet_diag: unexpected message type {mtype}")
    off = _NLH.size + _MSG.size + _SOCKID.size + _SOCKID_TAIL.size + 5 * 4
    end = min(length, len(data))
    while off + _RTA.size <= end:
        alen, atype = _RTA.unpack_from(data, off)
        if alen < _RTA.size:
            break
        if atype == INET_DIAG_CGROUP_ID and alen >= _RTA.size + 8:
            return struct.unpack_from("=Q", data, off + _RTA.size)[0]
        off += (alen + 3) & ~3
    raise PeerUnknown("inet_diag: no cgroup id for the peer socket (it is closing, or the "
                      "kernel is older than 5.7)")
