"""Wire format between `corral` clients and `corrald`.

A frame is a 4-byte big-endian length followed by that many bytes of msgpack.
Requests: {"op": str, "id": int, ...args}. Answers: {"id", "ok": True, "result"}
or {"id", "ok": False, "error": {"code": str, "message": str}}. Events pushed
to subscribers: {"event": record}.
"""
from __future__ import annotations

import struct

import msgpack

VERSION = 1
MAX_FRAME = 1 << 20          # 1 MiB: a policy is a few KiB; more is an attack or a bug
HEADER = struct.Struct(">I")

# Stable error codes (clients match on these, humans read the message).
E_BAD_FRAME = "bad_frame"
E_BAD_REQUEST = "bad_request"
E_UNKNOWN_OP = "unknown_op"
E_BAD_POLICY = "bad_policy"
E_NOT_FOUND = "not_found"
E_FORBIDDEN = "forbidden"
E_WIDENS = "widens_policy"
E_UNSUPPORTED = "unsupported"
E_INTERNAL = "internal"
E_LIMIT = "limit"             # a per-principal limit (connections, sessions, rules, sizes)
E_RATE = "rate_limited"       # too many requests a second: slow down and retry
E_PEER_GONE = "peer_gone"     # the process that opened the connection has exited
E_LOG = "log_unavailable"     # the change could not be logged, so it was not made


class ProtocolError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def encode(obj: dict) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    if len(body) > MAX_FRAME:
        raise ProtocolError(E_BAD_FRAME, f"frame of {len(body)} bytes exceeds {MAX_FRAME}")
    return HEADER.pack(len(body)) + body


def decode_body(body: bytes) -> dict:
    try:
        obj = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises a zoo of types on garbage
        raise ProtocolError(E_BAD_FRAME, f"frame is not valid msgpack: {e}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(E_BAD_FRAME, "frame must be a msgpack map")
    return obj


def error(req_id, code: str, message: str) -> dict:
    return {"id": req_id, "ok": False, "error": {"code": code, "message": message}}


def answer(req_id, result) -> dict:
    return {"id": req_id, "ok": True, "result": result}


def check_shape(obj, max_depth: int, max_items: int, max_str: int, what: str = "request",
                code: str = E_BAD_REQUEST) -> None:
    """Refuse a value nested deeper than max_depth, with more than max_items
    entries in all, or a string/bytes longer than max_str. Iterative: a hostile
    value must not reach Python's recursion limit anywhere later."""
    stack = [(obj, 0)]
    items = 0
    while stack:
        v, depth = stack.pop()
        if isinstance(v, (str, bytes)):
            if len(v) > max_str:
                raise ProtocolError(code, f"{what}: a string of {len(v)} bytes exceeds the "
                                          f"{max_str}-byte limit")
            continue
        if isinstance(v, dict):
            children = [x for kv in v.items() for x in kv]
        elif isinstance(v, (list, tuple)):
            children = v
        else:
            continue
        if depth >= max_depth:
            raise ProtocolError(code, f"{what}: nested deeper than {max_depth} levels")
        items += len(children)
        if items > max_items:
            raise ProtocolError(code, f"{what}: more than {max_items} entries")
        stack.extend((c, depth + 1) for c in children)
