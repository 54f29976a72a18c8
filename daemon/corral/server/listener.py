"""The Unix socket: frames in, answers out, one task per client.

A client that sends garbage gets an error answer (or, for a frame we cannot
even delimit, a closed connection); it never blocks or takes down the others.
Who is asking comes from the kernel, pinned when the connection is accepted
(peer.Peer), never from the message. What one principal may hold or send is
bounded (limits.py): connections, idle time, request rate, value shapes."""
from __future__ import annotations

import array
import asyncio
import contextvars
import logging
import os
import socket
import time

from corral.server import limits as L
from corral import protocol as P
from corral.server.peer import Peer, PeerGone

log = logging.getLogger("corral.server")


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer):
        self.reader, self.writer, self.peer = reader, writer, peer
        self.lock = asyncio.Lock()
        self.closed = False
        self.subscribed = False      # event subscribers may stay idle

    def push_event(self, obj: dict) -> bool:
        """Queue an event without waiting. A subscriber that does not read has
        at most EVENT_BACKLOG bytes queued; past that it is disconnected (its
        events would otherwise pile up in the daemon's memory)."""
        if self.closed:
            return False
        transport = self.writer.transport
        if transport.is_closing() or transport.get_write_buffer_size() > L.EVENT_BACKLOG:
            self.closed = True
            transport.abort()
            return False
        try:
            self.writer.write(P.encode(obj))
        except (P.ProtocolError, ConnectionError, RuntimeError):
            return False
        return True

    async def send(self, obj: dict) -> None:
        if self.closed:
            return
        try:
            data = P.encode(obj)
        except P.ProtocolError as e:
            # An answer too large for a frame: say so, with an id that fits.
            data = P.encode(P.error(_safe_id(obj.get("id")), P.E_INTERNAL,
                                    f"the answer could not be sent: {e.message}"))
        async with self.lock:
            try:
                self.writer.write(data)
                await self.writer.drain()
            except (ConnectionError, RuntimeError):
                self.closed = True


# The work deferred by the request being answered on this task (each
# connection's task has its own context); None outside a request.
_AFTER: contextvars.ContextVar = contextvars.ContextVar("corral_after_answer", default=None)


def after_answer(fn, *args) -> None:
    """Run fn(*args) once the answer to the request being served has been sent
    (_dispatch runs it then, whatever the answer, before it reads the next
    request of that connection): work the caller need not wait for (a record
    that is not written log-first: report_confinement's). Not a session's end:
    `corral run` exits on that answer and `corral log` must then find it.
    Outside a request (the daemon's own work, its shutdown, which then closes
    the log): now."""
    pending = _AFTER.get()
    if pending is None:
        fn(*args)
    else:
        pending.append((fn, args))


class WithFds:
    """An op's answer that carries descriptors (SCM_RIGHTS on its first byte):
    the session's cgroup, Landlock ruleset and mount namespace for `corral
    exec`'s launcher. They go to the connection's own peer only, and are closed
    here once sent."""
    def __init__(self, result, fds: list[int]):
        self.result, self.fds = result, list(fds)

    def close(self) -> None:
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = []


async def _send_with_fds(conn: "Connection", obj: dict, fds: list[int]) -> None:
    """One sendmsg with the frame and the descriptors, once nothing else is queued
    (so they ride on this answer's first byte); the rest of a short send queued."""
    data = P.encode(obj)
    async with conn.lock:
        transport = conn.writer.transport
        for _ in range(1000):
            if not transport.get_write_buffer_size():
                break
            await asyncio.sleep(0.001)
        else:
            conn.closed = True
            transport.abort()
            return
        sock = socket.socket(fileno=os.dup(conn.writer.get_extra_info("socket").fileno()))
        try:
            n = sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
        except OSError:
            conn.closed = True
            transport.abort()
            return
        finally:
            sock.close()
        if n < len(data):
            conn.writer.write(data[n:])
            await conn.writer.drain()


def _safe_id(req_id):
    """A request id we may echo: an int or a short string; anything else is None."""
    if isinstance(req_id, bool):
        return None
    if isinstance(req_id, int) and -2**63 <= req_id < 2**64:
        return req_id
    if isinstance(req_id, str) and len(req_id) <= L.MAX_ID:
        return req_id
    return None


class Server:
    def __init__(self, path, api):
        self.path = str(path)
        self.api = api
        self.server: asyncio.base_events.Server | None = None
        self.conns: dict[str, int] = {}      # principal -> open connections
        self.total = 0
        self.rate = L.Buckets(L.REQ_RATE, L.REQ_BURST)

    async def start(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self._quiet_until = 0.0
        asyncio.get_running_loop().set_exception_handler(self._loop_error)
        self.server = await asyncio.start_unix_server(self._client, path=self.path,
                                                      limit=P.MAX_FRAME + 8, backlog=512)
        # Anyone may ask for a sandbox; what each peer may do is decided per request.
        os.chmod(self.path, 0o666)

    def _loop_error(self, loop, ctx) -> None:
        """asyncio reports a failing accept() (descriptors exhausted) once a
        second with a traceback; one line a minute says the same."""
        if "accept" in str(ctx.get("message", "")):
            now = time.monotonic()
            if now >= self._quiet_until:
                self._quiet_until = now + 60
                log.error("accept() fails: %s; new connections wait until descriptors free up",
                          ctx.get("exception"))
            return
        loop.default_exception_handler(ctx)

    async def close(self) -> None:
        if self.server:
            self.server.close()
            await self.server.wait_closed()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        try:
            peer = Peer.from_socket(sock)
        except OSError as e:
            log.warning("cannot identify a new peer: %s", e)
            writer.close()
            return
        conn = Connection(reader, writer, peer)
        peer.principal = self.api.principal(peer)
        held = self.conns.get(peer.principal, 0)
        limit = L.conn_limit(peer.uid, peer.principal)
        if held >= limit or self.total >= L.MAX_CONN_TOTAL:
            what = (f"{held} connections of {peer.principal} are open (limit {limit})"
                    if held >= limit else f"the daemon holds {self.total} connections "
                    f"(limit {L.MAX_CONN_TOTAL})")
            self.api.refused(peer, "open another connection", detail=what)
            await conn.send(P.error(None, P.E_LIMIT, f"refused: {what}: close idle connections"))
            conn.closed = True
            peer.close()
            writer.close()
            return
        self.conns[peer.principal] = held + 1
        self.total += 1
        try:
            await self._serve(conn)
        except (ConnectionError, BrokenPipeError):
            pass                     # the client hung up (maybe with answers unread)
        except Exception:
            log.exception("client %s: unexpected error", conn.peer)
        finally:
            conn.closed = True
            self.total -= 1
            left = self.conns.get(peer.principal, 1) - 1
            if left > 0:
                self.conns[peer.principal] = left
            else:
                self.conns.pop(peer.principal, None)
            self.api.disconnected(conn)
            peer.close()
            try:
                writer.close()
            except Exception:
                pass

    async def _serve(self, conn: Connection) -> None:
        reader = conn.reader
        while True:
            try:
                if conn.subscribed:
                    header = await reader.readexactly(P.HEADER.size)
                else:
                    # asyncio.timeout, not wait_for: no Task made per frame read
                    async with asyncio.timeout(L.IDLE_TIMEOUT):
                        header = await reader.readexactly(P.HEADER.size)
            except asyncio.IncompleteReadError:
                return
            except asyncio.TimeoutError:
                await conn.send(P.error(None, P.E_LIMIT, f"idle for {L.IDLE_TIMEOUT:.0f} s "
                                        "without a request: connection closed"))
                return
            (length,) = P.HEADER.unpack(header)
            if length > P.MAX_FRAME:
                # We cannot skip that many bytes safely: answer, then hang up.
                await conn.send(P.error(None, P.E_BAD_FRAME,
                                        f"frame length {length} exceeds the {P.MAX_FRAME}-byte limit"))
                return
            try:
                async with asyncio.timeout(L.BODY_TIMEOUT):
                    body = await reader.readexactly(length)
            except (asyncio.IncompleteReadError, asyncio.TimeoutError):
                await conn.send(P.error(None, P.E_BAD_FRAME, "truncated frame"))
                return
            if not self.rate.get(conn.peer.principal).take():
                self.api.refused(conn.peer, "send more requests",
                                 detail=f"over {L.REQ_RATE} requests/s", log_only=True)
                await conn.send(P.error(None, P.E_RATE, f"refused: more than {L.REQ_RATE} "
                                        "requests a second from "
                                        f"{conn.peer.principal}: slow down and retry"))
                continue
            req = None
            try:
                req = P.decode_body(body)
                # The policy is judged on its own, so a malformed one is bad_policy.
                P.check_shape({k: v for k, v in req.items() if k not in ("policy", "files")},
                              L.MAX_DEPTH, L.MAX_ITEMS, L.MAX_STR)
                P.check_shape(req.get("policy"), L.MAX_POLICY_DEPTH, L.MAX_ITEMS, L.MAX_STR,
                              "policy", P.E_BAD_POLICY)
                # run_prepare's policy files, as the launcher read them: larger strings
                P.check_shape(req.get("files"), 1, 2 * L.MAX_FILES, L.MAX_FILE_BYTES, "files")
            except P.ProtocolError as e:
                rid = _safe_id(req.get("id")) if isinstance(req, dict) else None
                await conn.send(P.error(rid, e.code, e.message))
                continue
            await self._dispatch(conn, req)

    async def _dispatch(self, conn: Connection, req: dict) -> None:
        token = _AFTER.set([])
        try:
            await self._answer(conn, req)
        finally:
            pending = _AFTER.get()
            _AFTER.reset(token)
            for fn, args in pending:
                try:
                    fn(*args)
                except Exception:
                    log.exception("after an answer: %s", getattr(fn, "__qualname__", fn))

    async def _answer(self, conn: Connection, req: dict) -> None:
        req_id = _safe_id(req.get("id"))
        if req_id is None and req.get("id") is not None:
            await conn.send(P.error(None, P.E_BAD_REQUEST, "'id' must be an integer or a string "
                                    f"of at most {L.MAX_ID} characters"))
            return
        op = req.get("op")
        if not isinstance(op, str):
            await conn.send(P.error(req_id, P.E_BAD_REQUEST, "request needs a string 'op'"))
            return
        handler = getattr(self.api, "op_" + op, None)
        if handler is None:
            await conn.send(P.error(req_id, P.E_UNKNOWN_OP, f"unknown op {op!r}"))
            return
        try:
            result = handler(conn, req)
            if asyncio.iscoroutine(result):
                result = await result
            if isinstance(result, WithFds):
                try:
                    await _send_with_fds(conn, P.answer(req_id, result.result), result.fds)
                finally:
                    result.close()
                return
            await conn.send(P.answer(req_id, result))
        except P.ProtocolError as e:
            await conn.send(P.error(req_id, e.code, e.message))
        except PeerGone as e:
            await conn.send(P.error(req_id, P.E_PEER_GONE, f"refused: {e}: a connection has "
                                    "no authority once the process that opened it has exited"))
        except Exception as e:
            log.exception("op %s failed", op)
            await conn.send(P.error(req_id, P.E_INTERNAL, f"{type(e).__name__}: {e}"))
