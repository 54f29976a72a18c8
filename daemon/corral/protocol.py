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
