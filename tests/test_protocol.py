"""The socket protocol under bad input: the daemon answers or hangs up, and keeps serving."""
from __future__ import annotations

import struct
import time

import msgpack

from corral import protocol as P
from harness import raw_socket, read_frame


def raw(daemon):
    return raw_socket(daemon.socket, timeout=5)


def hello_works(daemon):
    with daemon.client() as c:
        return c.call("hello")["daemon"] == "corrald"


def test_garbage_frame_gets_error_and_connection_survives(daemon):
    s = raw(daemon)
    s.sendall(struct.pack(">I", 5) + b"\xc1\xc1\xc1\xc1\xc1")
    ans = read_frame(s)
    assert ans["ok"] is False and ans["error"]["code"] == P.E_BAD_FRAME
    s.sendall(P.encode({"op": "hello", "id": 9}))
    assert read_frame(s)["id"] == 9
    s.close()


def test_non_map_missing_op_unknown_op(daemon):
    s = raw(daemon)
    for body, code in [(msgpack.packb([1, 2, 3]), P.E_BAD_FRAME),
                       (msgpack.packb({"id": 1}), P.E_BAD_REQUEST),
                       (msgpack.packb({"id": 2, "op": "format_disk"}), P.E_UNKNOWN_OP),
                       (msgpack.packb({"id": 3, "op": "register_session", "policy": "everything"}),
                        P.E_BAD_POLICY),
                       (msgpack.packb({"id": 4, "op": "register_session",
                                       "policy": {"network": {"allow": ["not-an-ip"]}}}), P.E_BAD_POLICY),
                       (msgpack.packb({"id": 5, "op": "session_info", "session": 17}), P.E_BAD_REQUEST)]:
        s.sendall(struct.pack(">I", len(body)) + body)
        ans = read_frame(s)
        assert ans["ok"] is False and ans["error"]["code"] == code, (body, ans)
        assert ans["error"]["message"]
    s.close()
    assert hello_works(daemon)


def test_100mb_length_prefix_is_refused_without_reading_it(daemon):
    s = raw(daemon)
    s.sendall(struct.pack(">I", 100 * 1024 * 1024) + b"x" * 1000)
    ans = read_frame(s)
    assert ans["error"]["code"] == P.E_BAD_FRAME
    assert read_frame(s) is None           # then it hangs up
    s.close()
    assert hello_works(daemon)


def test_truncated_frame_does_not_block_other_clients(daemon):
    stuck = raw(daemon)
    stuck.sendall(struct.pack(">I", 1000) + b"\x81")      # promises 1000 bytes, sends 1
    t0 = time.monotonic()
    assert hello_works(daemon)
    assert time.monotonic() - t0 < 5
    stuck.close()                                          # EOF mid-frame
    assert hello_works(daemon)


def test_many_garbage_clients_then_normal_service(daemon):
    for i in range(50):
        s = raw(daemon)
        s.sendall(bytes([i]) * (i + 1))
        s.close()
    assert hello_works(daemon)
    assert daemon.proc.poll() is None


def test_peer_identity_comes_from_the_kernel(daemon):
    import os
    with daemon.client() as c:
        hello = c.call("hello", peer={"pid": 1, "uid": 1234})
    assert hello["peer"]["pid"] == os.getpid()
    assert hello["peer"]["uid"] == os.getuid()
