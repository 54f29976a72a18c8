"""The host's bound Unix sockets, from the kernel (NETLINK_SOCK_DIAG, unix_diag).

One dump request returns every AF_UNIX socket with, for bound pathname sockets,
the name it was bound to and the inode + device of the socket file the bind
created. That inode is the object a connect() reaches, whatever spelling the
connecting process uses; the name is where we look for it.

A small parser of our own rather than pyroute2: this runs in `corral run`,
before the agent starts, and importing pyroute2.netlink.diag costs 115 ms here
(measured) against well under 1 ms for the dump itself.
"""
from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
UDIAG_SHOW_NAME, UDIAG_SHOW_VFS = 0x1, 0x2
UNIX_DIAG_NAME, UNIX_DIAG_VFS = 0, 1
_REQ = struct.Struct("=BBHIII8s")           # struct unix_diag_req
_MSG = struct.Struct("=BBBBI8s")            # struct unix_diag_msg
_NLH = struct.Struct("=IHHII")              # struct nlmsghdr


@dataclass(frozen=True)
class BoundSocket:
    name: str           # as bound: absolute, or relative to the binder's cwd then
    ino: int            # the socket file's inode ...
    dev: int            # ... and its filesystem (st_dev encoding, os.makedev)
    type: int           # SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET
    sock_ino: int       # the socket's own inode (socket:[N] in /proc/<pid>/fd)


def _kdev_to_st(kdev: int) -> int:
    """unix_diag reports the superblock's dev_t as the kernel keeps it
    (major << 20 | minor); stat() returns the userspace encoding."""
    return os.makedev(kdev >> 20, kdev & 0xFFFFF)


def bound_sockets() -> list[BoundSocket]:
    """Every pathname Unix socket on this host that can be reached by its path:
    listening stream/seqpacket sockets and bound datagram sockets (all network
    namespaces share the filesystem). Abstract, unbound, connected and accepted
    stream sockets are left out. Raises OSError if the kernel refuses the dump."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG)
    try:
        req = _REQ.pack(socket.AF_UNIX, 0, 0, 0xFFFFFFFF, 0, UDIAG_SHOW_NAME | UDIAG_SHOW_VFS,
                        b"\xff" * 8)
        s.sendto(_NLH.pack(_NLH.size + len(req), SOCK_DIAG_BY_FAMILY,
                           NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + req, (0, 0))
        out: list[BoundSocket] = []
        while True:
            data = s.recv(1 << 16)
            off = 0
            while off + _NLH.size <= len(data):
                length, typ, _flags, _seq, _pid = _NLH.unpack_from(data, off)
                if length < _NLH.size:
                    return out
                if typ == NLMSG_DONE:
                    return out
                if typ == NLMSG_ERROR:
                    err = -struct.unpack_from("=i", data, off + _NLH.size)[0]
                    raise OSError(err, f"sock_diag unix dump: {os.strerror(err)}")
                if typ == SOCK_DIAG_BY_FAMILY:
                    b = _parse(data[off + _NLH.size: off + length])
                    if b is not None:
                        out.append(b)
                off += (length + 3) & ~3
    finally:
        s.close()


TCP_LISTEN = 10


def _parse(msg: bytes) -> BoundSocket | None:
    _fam, typ, state, _pad, sock_ino, _cookie = _MSG.unpack_from(msg, 0)
    if typ != socket.SOCK_DGRAM and state != TCP_LISTEN:
        # A stream or seqpacket socket is reached only through a listener. The
        # sockets a listener accepts carry its name and socket file too, and
        # come and go with every connection: not another socket to mask.
        return None
    name = vfs = None
    off = _MSG.size
    while off + 4 <= len(msg):
        alen, atype = struct.unpack_from("=HH", msg, off)
        if alen < 4:
            break
        payload = msg[off + 4: off + alen]
        if atype == UNIX_DIAG_NAME:
            name = payload
        elif atype == UNIX_DIAG_VFS and len(payload) >= 8:
            vfs = struct.unpack_from("=II", payload, 0)
        off += (alen + 3) & ~3
    if not name or name[:1] == b"\0" or vfs is None:
        return None                     # abstract, unbound, or no socket file
    return BoundSocket(name=os.fsdecode(name.rstrip(b"\0")), ino=vfs[0], dev=_kdev_to_st(vfs[1]),
                       type=typ, sock_ino=sock_ino)


def file_key(path: str) -> tuple[int, int] | None:
    """(st_ino, st_dev) of what `path` leads to (the identity unix_diag reports
    for a socket file), None if nothing is there."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_dev)


def foreign(allow: list[str] = (), keep: list[str] = ()) -> tuple[list[str], list[str]]:
    """(names, skipped) of the sockets bound now that a new session may not
    reach: all of them (it has none yet) but those whose socket file is one of
    `allow` or `keep` (matched by inode, whatever name they were given as).

    A name that no longer leads to its socket (renamed or unlinked since bind,
    or bound in another mount namespace) is not reachable by that name; a
    relative name was looked up under a cwd we cannot know: those come back in
    `skipped`, with the reason."""
    import stat as _stat
    # a path not there now lets nothing through
    exempt = {k for k in map(file_key, list(allow) + list(keep)) if k is not None}
    names: list[str] = []
    skipped: list[str] = []
    for b in bound_sockets():
        if not b.name.startswith("/"):
            skipped.append(f"{b.name} (relative name)")
            continue
        try:
            st = os.stat(b.name)
        except OSError:
            continue        # unlinked: no name reaches it
        if (st.st_ino, st.st_dev) != (b.ino, b.dev) or not _stat.S_ISSOCK(st.st_mode):
            skipped.append(f"{b.name} (the name leads elsewhere now)")
            continue
        if (st.st_ino, st.st_dev) not in exempt and b.name not in names:
            names.append(b.name)
            if st.st_nlink > 1:
                # Another name (a hard link its owner made) reaches the same
                # socket, and nothing tells us where it is.
                skipped.append(f"{b.name} (hard-linked: {st.st_nlink - 1} other name(s))")
    return names, skipped
