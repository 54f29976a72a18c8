"""The Unix socket: frames in, answers out, one task per client.

A client that sends garbage gets an error answer (or, for a frame we cannot
even delimit, a closed connection); it never blocks or takes down the others.
Who is asking comes from SO_PEERCRED, never from the message."""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
from dataclasses import dataclass

from . import protocol as P

log = logging.getLogger("corral.server")
READ_TIMEOUT = 30.0          # a half-sent frame may not hold a task forever


@dataclass
class Peer:
    pid: int
    uid: int
    gid: int


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer):
        self.reader, self.writer, self.peer = reader, writer, peer
        self.lock = asyncio.Lock()
        self.closed = False

    async def send(self, obj: dict) -> None:
        if self.closed:
            return
        try:
            data = P.encode(obj)
        except P.ProtocolError as e:
            data = P.encode(P.error(obj.get("id"), e.code, e.message))
        async with self.lock:
            try:
                self.writer.write(data)
                await self.writer.drain()
            except (ConnectionError, RuntimeError):
                self.closed = True


class Server:
    def __init__(self, path, api):
        self.path = str(path)
        self.api = api
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self.server = await asyncio.start_unix_server(self._client, path=self.path,
                                                      limit=P.MAX_FRAME + 8)
        # Anyone may ask for a sandbox; what each peer may do is decided per request.
        os.chmod(self.path, 0o666)

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
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, gid = struct.unpack("3i", creds)
        conn = Connection(reader, writer, Peer(pid, uid, gid))
        try:
            while True:
                try:
                    header = await reader.readexactly(P.HEADER.size)
                except asyncio.IncompleteReadError:
                    return
                (length,) = P.HEADER.unpack(header)
                if length > P.MAX_FRAME:
                    # We cannot skip that many bytes safely: answer, then hang up.
                    await conn.send(P.error(None, P.E_BAD_FRAME,
                                            f"frame length {length} exceeds the {P.MAX_FRAME}-byte limit"))
                    return
                try:
                    body = await asyncio.wait_for(reader.readexactly(length), READ_TIMEOUT)
                except (asyncio.IncompleteReadError, asyncio.TimeoutError):
                    await conn.send(P.error(None, P.E_BAD_FRAME, "truncated frame"))
                    return
                try:
                    req = P.decode_body(body)
                except P.ProtocolError as e:
                    await conn.send(P.error(None, e.code, e.message))
                    continue
                await self._dispatch(conn, req)
        except Exception:
            log.exception("client %s: unexpected error", conn.peer)
        finally:
            conn.closed = True
            self.api.disconnected(conn)
            try:
                writer.close()
            except Exception:
                pass

    async def _dispatch(self, conn: Connection, req: dict) -> None:
        req_id = req.get("id")
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
            await conn.send(P.answer(req_id, result))
        except P.ProtocolError as e:
            await conn.send(P.error(req_id, e.code, e.message))
        except Exception as e:
            log.exception("op %s failed", op)
            await conn.send(P.error(req_id, P.E_INTERNAL, f"{type(e).__name__}: {e}"))
