"""Who is on the other end of a connection, pinned when it is accepted.

A connection's authority is the authority of the process that opened it, and
only while that process lives. SO_PEERCRED gives a pid, and a pid alone can die
and be reused (by a root process, say) while the connection lives on in a
child or in another process it was passed to with SCM_RIGHTS. So the peer is
pinned by a pidfd taken at accept time:

* SO_PEERPIDFD (kernel 6.5+) hands us a pidfd for the very process that called
  connect(), with no race at all;
* otherwise pidfd_open(pid) right after accept(); what remains is the window
  between the client's connect() and our accept() (documented in the README).

Every question about the peer (is it alive, which cgroup is it in, what is its
cwd) is answered through the pidfd, or read from /proc by pid and then
confirmed by the pidfd still being alive: a pid cannot be reused while the
process we hold a pidfd for is alive, so "alive after the read" proves the read
was about our process. A peer that has exited has no authority at all."""
from __future__ import annotations

import errno
import fcntl
import os
import select
import socket
import struct
from dataclasses import dataclass, field

from corral.kernel import cgroups

SO_PEERPIDFD = getattr(socket, "SO_PEERPIDFD", 77)

# ioctl(pidfd, PIDFD_GET_INFO) (6.13+): struct pidfd_info, version 0 is 64 bytes.
_PIDFD_INFO_SIZE = 64
PIDFD_GET_INFO = (3 << 30) | (_PIDFD_INFO_SIZE << 16) | (0xFF << 8) | 11
PIDFD_INFO_PID = 1 << 0
PIDFD_INFO_CGROUPID = 1 << 2


class PeerGone(Exception):
    """The process that opened the connection has exited (or cannot be identified)."""


def _pidfd_info_cgid(pidfd: int) -> int | None:
    """The cgroup id of the pidfd's process; None if this kernel cannot say.
    Raises PeerGone if the process has exited."""
    buf = bytearray(_PIDFD_INFO_SIZE)
    struct.pack_into("<Q", buf, 0, PIDFD_INFO_PID | PIDFD_INFO_CGROUPID)
    try:
        fcntl.ioctl(pidfd, PIDFD_GET_INFO, buf)
    except OSError as e:
        if e.errno == errno.ESRCH:
            raise PeerGone("exited") from None
        return None          # ENOTTY/EINVAL: older kernel, no PIDFD_GET_INFO
    mask, cgid = struct.unpack_from("<QQ", buf)
    return cgid if mask & PIDFD_INFO_CGROUPID else None


@dataclass
class Peer:
    pid: int
    uid: int
    gid: int
    pidfd: int = field(default=-1, repr=False)
    how: str = ""                 # "SO_PEERPIDFD" | "pidfd_open" | "" (unidentified)
    # The principal at accept time, for per-principal limits: "session:<id>"
    # for a process inside a session, "uid:<n>" outside.
    principal: str = ""

    @classmethod
    def from_socket(cls, sock: socket.socket) -> "Peer":
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, gid = struct.unpack("3i", creds)
        peer = cls(pid, uid, gid)
        try:
            peer.pidfd = sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
            peer.how = "SO_PEERPIDFD"
        except OSError:
            # Older kernel: pin the pid now; the connect->accept window remains.
            try:
                peer.pidfd = os.pidfd_open(pid) if pid > 0 else -1
                peer.how = "pidfd_open" if peer.pidfd >= 0 else ""
            except OSError:
                peer.pidfd, peer.how = -1, ""
        return peer

    def public(self) -> dict:
        return {"pid": self.pid, "uid": self.uid, "gid": self.gid, "pinned_by": self.how}

    def alive(self) -> bool:
        if self.pidfd < 0:
            return False
        # A pidfd polls readable once its process has exited.
        p = select.poll()
        p.register(self.pidfd, select.POLLIN)
        return not p.poll(0)

    def check(self) -> None:
        if not self.alive():
            raise PeerGone(f"the process that opened this connection (pid {self.pid}) has exited")

    def confirm(self, value):
        """Return a value read from /proc by pid, once the pidfd shows that the
        pid still named our process while it was read."""
        self.check()
        return value

    def cgroup(self) -> tuple[int | None, str | None]:
        """(cgroup id or None, cgroup2 path relative to the mount or None)."""
        self.check()
        cgid = _pidfd_info_cgid(self.pidfd)
        path = self.confirm(cgroups.cgroup_of(self.pid))
        return cgid, path

    def cwd(self) -> str:
        try:
            cwd = os.readlink(f"/proc/{self.pid}/cwd")
        except OSError:
            cwd = None
        self.check()
        if cwd is None:
            raise PeerGone(f"cannot read the working directory of pid {self.pid}")
        return cwd

    def proc_status(self) -> dict:
        out = {}
        try:
            with open(f"/proc/{self.pid}/status") as fh:
                for line in fh:
                    k, _, v = line.partition(":")
                    out[k] = v.strip()
        except OSError:
            pass
        return self.confirm(out)

    def close(self) -> None:
        if self.pidfd >= 0:
            try:
                os.close(self.pidfd)
            except OSError:
                pass
            self.pidfd = -1
