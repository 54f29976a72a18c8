"""Client library: talk to corrald over its Unix socket."""
from __future__ import annotations

import itertools
import socket

from corral import protocol as P
from corral.config import SOCKET


class CorralError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(f"{message} [{code}]")
        self.code = code
        self.message = message


class DaemonNotRunning(CorralError):
    def __init__(self, path, why):
        super().__init__("not_running",
                         f"corrald is not running ({path}: {why}); start it with "
                         "`systemctl start corrald` or `make demo` (or run `corrald` as root)")


class Client:
    def __init__(self, path=SOCKET, timeout: float | None = 30.0):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(self.path)
        except OSError as e:
            self.sock.close()
            raise DaemonNotRunning(self.path, e.strerror or str(e)) from None
        self._ids = itertools.count(1)
        self._pending_events: list[dict] = []

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def fileno(self) -> int:
        return self.sock.fileno()

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise CorralError("disconnected", "corrald closed the connection")
            buf += chunk
        return bytes(buf)

    def recv(self) -> dict:
        (length,) = P.HEADER.unpack(self._recv_exact(P.HEADER.size))
        if length > P.MAX_FRAME:
            raise CorralError(P.E_BAD_FRAME, f"daemon sent an oversized frame ({length} bytes)")
        return P.decode_body(self._recv_exact(length))

    def call(self, op: str, **args):
        req_id = next(self._ids)
        self.sock.sendall(P.encode({"op": op, "id": req_id, **args}))
        while True:
            msg = self.recv()
            if "event" in msg:
                self._pending_events.append(msg["event"])
                continue
            if msg.get("id") not in (req_id, None):
                continue
            if msg.get("ok"):
                return msg.get("result")
            err = msg.get("error") or {}
            raise CorralError(err.get("code", "unknown"), err.get("message", "unknown error"))

    def events(self):
        """Subscribe, then yield event records forever."""
        self.call("subscribe_events")
        self.sock.settimeout(None)
        while self._pending_events:
            yield self._pending_events.pop(0)
        while True:
            msg = self.recv()
            if "event" in msg:
                yield msg["event"]
