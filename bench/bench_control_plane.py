#!/usr/bin/env python3
"""bench_control_plane: the long control-plane runs of issue 9, repeatable.

corrald driven as an attacker on the host would drive it. Four parts, each
against its own private corrald (benchlib.Daemon, --no-dns; never the shared
run_all daemon: these parts kill it, fill its disk and count its records):

  fuzz      N frames (default 20000, --quick 2000) from 5 processes: 2 as root,
            2 as nobody (65534), 1 as uid 4242 (no passwd entry). Random
            bytes, truncated headers and bodies, oversized length headers,
            hang-ups before the answer is read,
            random msgpack shapes, a wrong-typed value in every field of every
            op (cycled so that every (op, field, value) combination is sent),
            nesting up to 1100 deep, huge strings/ids/lists, mutated valid
            policies (register_session, update_policy on a live session), and
            a few valid requests; plus a slow-loris process (uid 4243) holding
            80 connections whose header never completes (longer than the
            daemon's 60 s idle timeout in the full run). A root client says
            hello every second throughout (new connection each time). Reports
            the answer-code histogram, `internal` answers (must be 0; the first
            request shapes that got one), complete frames that got no answer,
            hello max latency, daemon RSS before/after/after a pause, stderr
            Tracebacks, audit records written, log verify. Then a subscriber
            (nobody) that never reads its events while 4 of nobody's sessions
            deny as fast as they can: does the daemon's RSS stay bounded?
  sessions  200 concurrent sessions (each a process that registers itself over
            the raw protocol and then waits), each probed: a denied connect to
            a loopback listener must fail EPERM, the one session allowed that
            port must connect. Time to start all, register latency p50/p99,
            RSS at 0 / 200 / after all ended, time until every cgroup is gone
            after the processes exit, leftover cgroups and state files.
  sigkill   20 sessions making denied connects in a loop (20/s each); SIGKILL
            the daemon K times (default 10) at random moments, every other one
            right after a burst of 8 concurrent register_session calls (so some
            are cut mid-register); restart it each time. After each restart:
            no connect ever succeeded, the 20 sessions are in list_sessions,
            while_down records appeared, log verify ok; mid-register victims
            are either adopted (and confined) or killed, never loose in a
            session cgroup. Restart time to ready; denials made vs logged +
            suppressed + lost, and how many were logged twice (one connect
            denied by the new daemon's programs and the killed one's, attached
            together for a moment at restart).
  diskfull  the log on a 4 MiB tmpfs; one session makes 3500 denials at 150/s
            (below the in-kernel limiter's 200/s: nothing suppressed), the disk
            filled after 300 and freed after 3000. Records written, the `lost`
            count of the log_degraded record, written + lost == made, verify,
            daemon stderr lines during the episode, control changes refused
            with log_unavailable while full and accepted after; then a restart
            while full (hello says degraded, sessions still enforced).

    .venv/bin/python bench/bench_control_plane.py              # all four, ~3 min
    .venv/bin/python bench/bench_control_plane.py --quick      # ~70 s
    .venv/bin/python bench/bench_control_plane.py --only fuzz,sigkill

Exit status 1 when an invariant breaks (an internal answer, a complete frame
without an answer, the daemon dead or silent, a connect that should have been
denied, a leftover cgroup, a failed verify, written + lost != made).
Needs root (private corrald, setuid workers, tmpfs mount). All test traffic
goes to the daemon's Unix socket and to 127.0.0.1.
"""
from __future__ import annotations

import copy
import errno
import json
import os
import random
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import msgpack

HERE = Path(__file__).resolve()
NOBODY = 65534
ODD_UID = 4242            # no passwd entry: home falls back to "/"
LORIS_UID = 4243
MAX_FRAME = 1 << 20       # protocol.MAX_FRAME (the workers do not import corral)
NO_NET = {"network": {}}


# =====================================================================================
# wire helpers (used by the workers, which import only the standard library + msgpack)
# =====================================================================================
def _frame(obj) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def _recv_exact(s, n):
    buf = bytearray()
    while len(buf) < n:
        c = s.recv(min(n - len(buf), 1 << 20))
        if not c:
            return None
        buf += c
    return bytes(buf)


def _read_frame(s):
    h = _recv_exact(s, 4)
    if h is None:
        return None
    (n,) = struct.unpack(">I", h)
    b = _recv_exact(s, n)
    if b is None:
        return None
    return msgpack.unpackb(b, raw=False, strict_map_key=False)


def _answer(s):
    """The next answer on s, skipping pushed events; None on EOF."""
    while True:
        m = _read_frame(s)
        if m is None or "event" not in m:
            return m


def _code(m) -> str:
    if m is None:
        return "(no answer)"
    if m.get("ok"):
        return "ok"
    return str((m.get("error") or {}).get("code", "?"))


def _connect(path: str, timeout: float = 30.0) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
    except OSError:
        s.close()
        raise
    return s


def _call(s, op, **kw):
    s.sendall(_frame({"op": op, "id": 1, **kw}))
    return _answer(s)


def _probe(port: int) -> str:
    s = socket.socket()
    s.settimeout(5)
    try:
        s.connect(("127.0.0.1", port))
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno)) if e.errno else type(e).__name__
    finally:
        s.close()


def _my_session(instance: str):
    """The session cgroup this process is in (per /proc/self/cgroup), or None."""
    try:
        text = open("/proc/self/cgroup").read()
    except OSError:
        return None
    for ln in text.splitlines():
        if ln.startswith("0::"):
            parts = [p for p in ln[3:].split("/") if p]
            if len(parts) >= 2 and parts[0] == instance:
                return parts[1]
    return None


def _errname(e: OSError) -> str:
    return errno.errorcode.get(e.errno, type(e).__name__) if e.errno else type(e).__name__


# =====================================================================================
# worker: a session process (sessions, sigkill, diskfull)
# =====================================================================================
def w_session(cfg) -> int:
    """Register a session for this very process, print {"code","sid","ms"}; then
    commands on stdin: "probe PORT" -> one result line; "deny PORT N RATE" -> N
    connects paced at RATE/s, a JSON count line; "loop PORT INTERVAL" -> connect
    every INTERVAL s until a "stop" line, then a JSON count line."""
    try:
        s = _connect(cfg["socket"])
        t0 = time.perf_counter()
        m = _call(s, "register_session", policy=cfg["policy"])
        ms = (time.perf_counter() - t0) * 1000
        s.close()
    except OSError as e:
        print(json.dumps({"code": "oserror:" + _errname(e), "sid": None, "ms": None}), flush=True)
        return 1
    sid = m["result"]["id"] if m and m.get("ok") else None
    print(json.dumps({"code": _code(m), "sid": sid, "ms": ms,
                      "error": None if sid else (m or {}).get("error")}), flush=True)
    if sid is None:
        return 1
    for line in sys.stdin:
        w = line.split()
        if not w:
            continue
        if w[0] == "probe":
            print(_probe(int(w[1])), flush=True)
        elif w[0] == "deny":
            port, n, rate = int(w[1]), int(w[2]), float(w[3])
            c = Counter()
            t0 = time.monotonic()
            for i in range(n):
                c[_probe(port)] += 1
                delay = t0 + (i + 1) / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            print(json.dumps(c), flush=True)
        elif w[0] == "loop":
            port, interval = int(w[1]), float(w[2])
            c = Counter()
            bad = []
            while True:
                r, _, _ = select.select([sys.stdin], [], [], interval)
                if r:
                    break                     # "stop"
                res = _probe(port)
                c[res] += 1
                if res != "EPERM" and len(bad) < 20:
                    bad.append([time.time(), res])
            sys.stdin.readline()
            print(json.dumps({"counts": c, "not_eperm": bad}), flush=True)
        elif w[0] == "exit":
            break
    return 0


# =====================================================================================
# worker: a burst of concurrent registrations (sigkill)
# =====================================================================================
def w_burst(cfg) -> int:
    """Fork n children that each register a session at once (on "go"), probe the
    port, wait for "end", then report where they are and probe again."""
    path, n, port, inst = cfg["socket"], cfg["n"], cfg["port"], cfg["instance"]
    barrier_r, barrier_w = os.pipe()
    end_r, end_w = os.pipe()
    kids = []
    for _ in range(n):
        rep_r, rep_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(barrier_w)
            os.close(end_w)
            os.close(rep_r)
            os.read(barrier_r, 1)
            rep = {}
            try:
                s = _connect(path, 30)
                try:
                    s.sendall(_frame({"op": "register_session", "id": 1, "policy": NO_NET}))
                    m = _answer(s)
                    rep["answer"] = _code(m) if m is not None else "dropped"
                    if m is not None and m.get("ok"):
                        rep["sid"] = m["result"]["id"]
                except OSError as e:
                    rep["answer"] = "dropped:" + _errname(e)
                s.close()
            except OSError as e:
                rep["answer"] = "no_connect:" + _errname(e)
            rep["cg1"] = _my_session(inst)
            rep["probe1"] = _probe(port)
            os.write(rep_w, json.dumps(rep).encode() + b"\n")   # survives our being killed
            os.read(end_r, 1)
            os.write(rep_w, json.dumps({"cg2": _my_session(inst), "probe2": _probe(port)}).encode())
            os._exit(0)
        os.close(rep_w)
        kids.append((pid, rep_r))
    os.close(barrier_r)
    os.close(end_r)
    print("ready", flush=True)
    sys.stdin.readline()
    os.close(barrier_w)                       # go
    sys.stdin.readline()
    os.close(end_w)                           # end
    out = []
    for pid, r in kids:
        data = b""
        while True:
            c = os.read(r, 65536)
            if not c:
                break
            data += c
        os.close(r)
        _, status = os.waitpid(pid, 0)
        rep = {}
        for ln in data.decode().splitlines():
            rep.update(json.loads(ln))
        rep["status"] = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else "exited"
        out.append(rep)
    print(json.dumps(out), flush=True)
    return 0


# =====================================================================================
# worker: slow loris (fuzz)
# =====================================================================================
def w_slowloris(cfg) -> int:
    """Open m connections, each sends 1..3 bytes of a frame header (one more byte
    every 10 s, never the 4th); note what comes back and when."""
    path, m, hold = cfg["socket"], cfg["m"], cfg["hold"]
    conns = {}
    out = {"opened": 0, "connect_failed": Counter(), "answers": Counter(), "closed_after_s": [],
           "eof_without_answer": 0}
    for _ in range(m):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            s.sendall(b"\x00")
        except OSError as e:
            out["connect_failed"][_errname(e)] += 1
            s.close()
            continue
        s.setblocking(False)
        conns[s] = [time.monotonic(), 1, b""]
        out["opened"] += 1
    t0 = time.monotonic()
    next_byte = t0 + 10
    while conns and time.monotonic() - t0 < hold:
        r, _, _ = select.select(list(conns), [], [], 1.0)
        for s in r:
            st = conns[s]
            try:
                chunk = s.recv(65536)
            except OSError:
                chunk = b""
            if chunk:
                st[2] += chunk
                continue
            # EOF: what did it say before closing?
            buf = st[2]
            if len(buf) >= 4 and len(buf) >= 4 + struct.unpack(">I", buf[:4])[0]:
                msg = msgpack.unpackb(buf[4:4 + struct.unpack(">I", buf[:4])[0]], raw=False)
                text = str((msg.get("error") or {}).get("message", ""))
                kind = ("connection limit" if "connections of" in text or "the daemon holds" in text
                        else "idle timeout" if "idle for" in text else _code(msg))
                out["answers"][kind] += 1
                if kind == "idle timeout":
                    out["closed_after_s"].append(round(time.monotonic() - st[0], 1))
            else:
                out["eof_without_answer"] += 1
            s.close()
            del conns[s]
        if time.monotonic() >= next_byte:
            next_byte += 10
            for s, st in list(conns.items()):
                if st[1] < 3:
                    try:
                        s.send(b"\x00")
                        st[1] += 1
                    except OSError:
                        pass
    out["open_at_end"] = len(conns)
    for s in conns:
        s.close()
    print(json.dumps(out), flush=True)
    return 0


# =====================================================================================
# worker: the fuzzer
# =====================================================================================
OP_FIELDS = {
    "hello": [],
    "register_session": ["policy"],
    "report_confinement": ["session", "report"],
    "session_info": ["session"],
    "list_sessions": [],
    "update_policy": ["session", "policy", "reason"],
    "end_session": ["session"],
    "subscribe_events": ["session"],
}
OPS = list(OP_FIELDS)

WRONG = [None, True, False, 0, -1, 1, 2**63 - 1, -2**63, 2**64 - 1, 1.5, float("inf"), float("nan"),
         "", "x", "\x00", "\u00e9\u202e" * 5, "../../etc/passwd", "a" * 8193, b"", b"\xff\xfe\x00",
         [], [None], ["a", 1, [2]], {}, {"a": 1}, {b"k": b"v"}, {"": {"": {"": ""}}},
         msgpack.ExtType(5, b"ext"), msgpack.Timestamp(0, 0), "hello", "register_session"]

BASE_POLICIES = [
    {"network": {"allow": ["127.0.0.1:8080", "10.0.0.0/8:443", "[::1]:22"],
                 "deny": ["10.1.0.0/16"], "allow_localhost_ports": ["3000-3010", 5432]}},
    {"network": {"allow_domains": ["example.com", "*.github.com"], "deny_domains": ["evil.example"]}},
    {"filesystem": {"allow_write": ["/tmp", "~/work"], "deny_read": ["~/.ssh", "/etc/shadow"],
                    "allow_read": ["/usr"], "deny_write": ["/tmp/x"]}},
    {"syscalls": {"deny": ["ptrace", "mount"]}, "network": {}},
    {"allow_system_write": True, "filesystem": {"allow_write": ["/etc/corral-fuzz-none"]}},
    {"network": {}, "filesystem": {"allow_write": ["/tmp"]}},
    {},
]
ODD_STRINGS = ["", " ", "\x00", "127.0.0.1:99999", "127.0.0.1:-1", "0.0.0.0/0", "::/0", "[::1",
               "10.0.0.0/33", "*", "*.", "..", "~", "~root/x", "/" + "a" * 4097, "\u00e9", "\n",
               "a" * 300 + ".com", "127.0.0.1:2-1", "localhost", "1.2.3.4:22:33", "/proc/self/root",
               "relative/path", "::ffff:127.0.0.1", "[::ffff:127.0.0.1]:1", "255.255.255.255/0:0",
               "-", "65536", "0-65535", "xn--", "*.*.com", "/" * 3000]
KEYS = ["op", "id", "session", "policy", "report", "reason", "network", "filesystem", "allow",
        "deny", "syscalls", "allow_domains", "", "\x00"]


def _shape(v, depth=0) -> str:
    """A short description of a request, for the report."""
    if depth > 3:
        return "..."
    if isinstance(v, dict):
        items = list(v.items())
        inner = ", ".join(f"{repr(k)[:30]}: {_shape(x, depth + 1)}" for k, x in items[:8])
        return "{" + inner + (", ..." if len(items) > 8 else "") + "}"
    if isinstance(v, (list, tuple)):
        inner = ", ".join(_shape(x, depth + 1) for x in v[:4])
        return "[" + inner + (f", ... ({len(v)} items)" if len(v) > 4 else "") + "]"
    if isinstance(v, str):
        return repr(v[:40]) + (f"...({len(v)} chars)" if len(v) > 40 else "")
    if isinstance(v, bytes):
        return f"bytes({len(v)})"
    return repr(v)[:40]


def _wrong(rng, i=None):
    """A value of WRONG (a copy: the fuzzer mutates what it sends)."""
    return copy.deepcopy(WRONG[i] if i is not None else rng.choice(WRONG))


def _rand_str(rng) -> str:
    r = rng.random()
    if r < 0.4:
        return rng.choice(KEYS + ODD_STRINGS)
    if r < 0.8:
        return "".join(chr(rng.randrange(0, 0x3000)) for _ in range(rng.randrange(0, 20)))
    return "".join(rng.choice("abc./:*~-0123456789[]") for _ in range(rng.randrange(1, 60)))


def _rand_value(rng, depth=0):
    r = rng.random()
    if depth > 5 or r < 0.45:
        return rng.choice([_wrong(rng), _wrong(rng), _rand_str(rng), rng.randrange(-2**63, 2**64),
                           rng.random() * 1e9])
    if r < 0.7:
        return [_rand_value(rng, depth + 1) for _ in range(rng.randrange(0, 6))]
    m = {}
    for _ in range(rng.randrange(0, 6)):
        k = _rand_str(rng) if rng.random() < 0.9 else rng.choice([b"bytes-key", 7, None, 1.5])
        try:
            m[k] = _rand_value(rng, depth + 1)
        except TypeError:
            pass
    return m


def _mutate(rng, pol):
    """1-3 mutations of a policy: replace a value, delete/add a key, duplicate a
    list, replace a string with an odd one, nest a value deeper."""
    for _ in range(rng.randrange(1, 4)):
        slots = []

        def walk(v):
            if isinstance(v, dict):
                for k in list(v):
                    slots.append((v, k))
                    walk(v[k])
            elif isinstance(v, list):
                for i in range(len(v)):
                    slots.append((v, i))
                    walk(v[i])
        walk(pol)
        what = rng.random()
        if not slots or what < 0.1:
            pol[rng.choice(KEYS + ["network", "filesystem", "syscalls", "allow_system_write"])] = \
                _rand_value(rng, 2)
            continue
        cont, key = rng.choice(slots)
        cur = cont[key]
        if what < 0.35:
            cont[key] = _wrong(rng) if rng.random() < 0.6 else _rand_value(rng, 3)
        elif what < 0.5 and isinstance(cont, dict):
            del cont[key]
        elif what < 0.6 and isinstance(cur, list) and cur:
            cont[key] = (cur * rng.choice([2, 50, 2000, 12000]))[:25000]
        elif what < 0.85:
            cont[key] = rng.choice(ODD_STRINGS) if isinstance(cur, str) or rng.random() < 0.3 \
                else _rand_str(rng)
        elif what < 0.95:
            cont[key] = [[cur]] if rng.random() < 0.5 else {"x": cur}
        elif isinstance(cur, dict):
            cur[_rand_str(rng)] = _rand_value(rng, 3)
    return pol


def _deep_bytes(rng, depth: int) -> bytes:
    k = rng.random()
    if k < 0.5:
        return b"\x91" * depth + b"\xc0"
    if k < 0.8:
        return b"\x81\xa1k" * depth + b"\xc0"
    return (b"\x91\x81\xa1k" * (depth // 2 + 1))[: depth * 2] + b"\xc0"


def _raw_map(fields: dict, raw_key: str, raw_value: bytes) -> bytes:
    n = len(fields) + 1
    head = bytes([0x80 | n]) if n <= 15 else b"\xde" + struct.pack(">H", n)
    return head + b"".join(msgpack.packb(k) + msgpack.packb(v, use_bin_type=True)
                           for k, v in fields.items()) + msgpack.packb(raw_key) + raw_value


class FuzzCtx:
    def __init__(self, cfg, rng):
        self.cfg, self.rng = cfg, rng
        self.uid = cfg["uid"]
        self.victims = cfg["victims"]      # live sessions of root's the fuzzers know
        self.own = None                    # the session this process was moved into
        self.combos = [(op, f, i) for op in OPS for f in OP_FIELDS[op] + ["op", "id"]
                       for i in range(len(WRONG))]
        self.combo_i = cfg["index"] * 97

    def sid(self, op: str):
        rng = self.rng
        choices = [f"{rng.getrandbits(32):08x}", ""]
        if op != "end_session":            # never end ourselves; root never ends the victim
            if self.own:
                choices += [self.own] * 3
            choices += self.victims * 3
        elif self.uid != 0:
            choices += self.victims * 2    # nobody ending root's session: forbidden
        return rng.choice(choices)

    def valid(self, op: str) -> dict:
        rng = self.rng
        req = {"op": op, "id": rng.randrange(1, 1 << 31) if rng.random() < 0.8 else f"r{rng.random()}"}
        if op in ("register_session", "update_policy"):
            req["policy"] = copy.deepcopy(rng.choice(BASE_POLICIES))
        if "session" in OP_FIELDS[op]:
            req["session"] = self.sid(op)
        if op == "report_confinement":
            req["report"] = {"seccomp": True, "no_new_privs": True, "caps_dropped": False,
                             "landlock": {"abi": 7, "rules": 3}}
        if op == "update_policy":
            req["reason"] = "fuzz"
        return req

    # Each returns (case, kind, payload, request-or-None). kind "frame": one whole
    # frame on the persistent connection, answer expected; "stream": bytes on a new
    # connection, then SHUT_WR, every answer read until EOF; "stream-noanswer": the
    # same, and no answer is the right outcome (EOF inside a header); "hangup": a
    # whole frame on a new connection, closed before the answer is read.
    def gen(self):
        rng = self.rng
        r = rng.random()
        if r < 0.05:
            data = rng.randbytes(rng.choice([1, 3, 4, 5, 16, 300, 4096]))
            return "random bytes", "stream" if len(data) >= 4 else "stream-noanswer", data, None
        if r < 0.12:
            body = rng.randbytes(rng.randrange(0, 300))
            return "random body", "frame", struct.pack(">I", len(body)) + body, None
        if r < 0.15:
            return "truncated header", "stream-noanswer", \
                struct.pack(">I", rng.randrange(0, MAX_FRAME))[: rng.randrange(1, 4)], None
        if r < 0.18:
            body = _frame(self.valid(rng.choice(OPS)))[4:]
            cut = rng.randrange(0, len(body))
            return "truncated body", "stream", struct.pack(">I", len(body)) + body[:cut], None
        if r < 0.21:
            n = rng.choice([MAX_FRAME + 1, 1 << 24, 0xFFFFFFFF, rng.randrange(MAX_FRAME + 1, 1 << 32)])
            return "oversized length header", "stream", struct.pack(">I", n) + rng.randbytes(
                rng.choice([0, 10, 1000])), None
        if r < 0.33:
            v = _rand_value(rng)
            if isinstance(v, dict) and rng.random() < 0.5:
                v["op"] = rng.choice(OPS)
            try:
                return "random msgpack shape", "frame", _frame(v), v
            except (TypeError, ValueError, OverflowError):
                return "random msgpack shape", "frame", _frame({"op": "hello"}), {"op": "hello"}
        if r < 0.58:
            op, field, i = self.combos[self.combo_i % len(self.combos)]
            self.combo_i += 1
            req = self.valid(op)
            req[field] = _wrong(rng, i)
            if op == "end_session" and field == "session" and WRONG[i] in self.victims + [self.own]:
                req[field] = "0"
            return f"wrong type: {op}.{field}", "frame", _frame(req), req
        if r < 0.66:
            depth = rng.choice([8, 9, 10, 64, 500, 600, 900, 999, 1000, 1023, 1024, 1025, 1100])
            op = rng.choice(OPS)
            field = rng.choice(OP_FIELDS[op] + ["id", "op", "extra"])
            req = self.valid(op)
            req.pop(field, None)
            value = _deep_bytes(rng, depth)
            if field == "policy" and rng.random() < 0.6:
                value = b"\x81" + msgpack.packb("network") + b"\x81" + msgpack.packb("allow") + value
            body = _raw_map(req, field, value)
            shown = dict(req, **{field: f"<{depth} deep>"})
            return f"deep value ({op}.{field})", "frame", struct.pack(">I", len(body)) + body, shown
        if r < 0.70:
            op = rng.choice(OPS)
            req = self.valid(op)
            kind = rng.choice(["string", "id string", "id int", "many items", "bytes", "oversized frame"])
            field = rng.choice(OP_FIELDS[op] + ["extra"])
            if kind == "string":
                req[field] = "x" * rng.choice([8193, 65536, 900_000])
            elif kind == "id string":
                req["id"] = "i" * rng.choice([65, 4096, 900_000])
            elif kind == "id int":
                req["id"] = rng.choice([2**64 - 1, -2**63, 2**63])
            elif kind == "many items":
                if op in ("register_session", "update_policy"):
                    req["policy"] = {"network": {"allow": [f"10.{i // 65536 % 256}.{i // 256 % 256}."
                                                           f"{i % 256}" for i in range(rng.choice(
                                                               [20001, 30000, 60000]))]}}
                else:
                    req[field] = list(range(rng.choice([20001, 100_000])))
            elif kind == "bytes":
                req[field] = bytes(rng.choice([8193, 500_000]))
            else:
                req[field] = "y" * (MAX_FRAME + 10)
                return "huge: oversized frame", "stream", _frame(req), None
            shown = {k: (v if len(_shape(v)) < 60 else _shape(v)) for k, v in req.items()}
            return f"huge: {kind}", "frame", _frame(req), shown
        if r < 0.96:
            op = rng.choice(["register_session", "update_policy", "update_policy"])
            req = self.valid(op)
            req["policy"] = _mutate(rng, req["policy"])
            try:
                return f"mutated policy ({op})", "frame", _frame(req), req
            except (TypeError, ValueError, OverflowError):
                req["policy"] = {}
                return f"mutated policy ({op})", "frame", _frame(req), req
        if r < 0.975:
            req = self.valid(rng.choice(["hello", "list_sessions"]))
            return "hang up before reading the answer", "hangup", _frame(req), req
        op = rng.choice(["hello", "list_sessions", "session_info"])
        req = self.valid(op)
        return f"valid {op}", "frame", _frame(req), req


def w_fuzz(cfg) -> int:
    rng = random.Random(cfg["seed"])
    ctx = FuzzCtx(cfg, rng)
    path, n = cfg["socket"], cfg["n"]
    max_rate = cfg.get("max_rate") or 0
    st = {"uid": cfg["uid"], "frames": 0, "codes": Counter(), "by_case": {}, "internal": [],
          "internal_count": 0, "dropped": [], "dropped_count": 0, "timeouts": 0,
          "rate_retries": 0, "registered": 0, "no_answer_expected": 0, "connect_errors": Counter(),
          "answers_total": 0}
    conn = None
    t_start = time.monotonic()

    def note(case, code):
        st["codes"][code] += 1
        st["by_case"].setdefault(case, Counter())[code] += 1
        st["answers_total"] += 1

    def bad(which, case, req, payload, extra=""):
        key = which + "_count"
        st[key] += 1
        if len(st[which]) < 8:
            st[which].append({"case": case, "request": _shape(req) if req is not None
                              else payload[:48].hex(), "detail": extra[:300]})

    def connect():
        for _ in range(100):
            try:
                return _connect(path, 30)
            except OSError as e:
                st["connect_errors"][_errname(e)] += 1
                time.sleep(0.05)
        raise RuntimeError("cannot connect")

    for i in range(n):
        if max_rate:
            delay = t_start + i / max_rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        case, kind, payload, req = ctx.gen()
        st["frames"] += 1
        if kind == "frame" and len(payload) - 4 > MAX_FRAME:
            kind = "stream"                      # the daemon answers bad_frame and hangs up
        if kind == "frame":
            for attempt in range(400):
                if conn is None:
                    conn = connect()
                send_err = None
                try:
                    conn.sendall(payload)
                except OSError as e:            # the daemon hung up: its answer may be there
                    send_err = _errname(e)
                try:
                    m = _answer(conn)
                except socket.timeout:
                    st["timeouts"] += 1
                    bad("dropped", case, req, payload, "no answer within 30 s")
                    conn.close()
                    conn = None
                    break
                except OSError as e:
                    m = None
                    extra = _errname(e)
                else:
                    extra = "EOF"
                if send_err:
                    extra += f", send: {send_err}"
                    if m is not None:
                        conn.close()
                        conn = None
                if m is None:
                    bad("dropped", case, req, payload, f"connection closed without an answer ({extra})")
                    conn.close()
                    conn = None
                    break
                code = _code(m)
                if code == "rate_limited" and conn is not None:
                    st["rate_retries"] += 1
                    time.sleep(0.02 * min(attempt + 1, 10))
                    continue
                if code == "limit" and m.get("id") is None and "connections of" in str(m["error"]):
                    if conn is not None:
                        conn.close()             # refused at accept: try a new connection
                    conn = None
                    time.sleep(0.1)
                    continue
                note(case, code)
                if code == "internal":
                    bad("internal", case, req, payload, str(m.get("error")))
                if code == "ok" and isinstance(req, dict) and req.get("op") == "register_session":
                    st["registered"] += 1
                    ctx.own = m["result"]["id"]
                break
        elif kind == "hangup":
            try:
                s = connect()
                s.sendall(payload)
                time.sleep(0.05)             # the answer is written, never read
            except (RuntimeError, OSError):
                pass
            else:
                s.close()
            st["no_answer_expected"] += 1
            note(case, "(hung up: no answer read)")
        else:
            try:
                s = connect()
            except RuntimeError:
                continue
            got = 0
            try:
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass            # the daemon hung up mid-send (oversized header): read its answer
            try:
                while True:
                    m = _answer(s)
                    if m is None:
                        break
                    got += 1
                    note(case, _code(m))
                    if _code(m) == "internal":
                        bad("internal", case, req, payload, str(m.get("error")))
            except socket.timeout:
                st["timeouts"] += 1
                bad("dropped", case, req, payload, "no answer/EOF within 30 s")
            except OSError:
                pass
            finally:
                s.close()
            if not got:
                if kind == "stream-noanswer":
                    st["no_answer_expected"] += 1
                    note(case, "(EOF inside a header: closed, no answer)")
                else:
                    bad("dropped", case, req, payload, "closed without any answer")
    if conn is not None:
        conn.close()
    st["seconds"] = time.monotonic() - t_start
    st["own_session_at_end"] = ctx.own
    print(json.dumps(st, default=str), flush=True)
    return 0


def w_lazysub(cfg) -> int:
    """Subscribe to events and never read them, until stdin closes."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(cfg["socket"])
    s.sendall(_frame({"op": "subscribe_events", "id": 1}))
    print("subscribed", flush=True)
    sys.stdin.read()
    s.close()
    return 0


WORKERS = {"session": w_session, "burst": w_burst, "slowloris": w_slowloris, "fuzz": w_fuzz,
           "lazysub": w_lazysub}


# =====================================================================================
# the bench side
# =====================================================================================
def _module(*names):
    """The first of these modules that imports (corral's package layout moved:
    corral.cgroups -> corral.kernel.cgroups, ...)."""
    import importlib
    for n in names:
        try:
            return importlib.import_module(n)
        except ImportError:
            continue
    raise ImportError(f"none of {', '.join(names)}")


def _bench_imports():
    global B, cgroups_mod, eventlog, client_mod, KEEP
    sys.path.insert(0, str(HERE.parent))
    import benchlib as B  # noqa: F811
    KEEP = B.BENCH / "results" / "control_plane"
    cgroups_mod = _module("corral.kernel.cgroups", "corral.cgroups")
    eventlog = _module("corral.server.eventlog", "corral.eventlog")
    client_mod = _module("corral.client.connection", "corral.client")


B = cgroups_mod = eventlog = client_mod = None


def as_user(uid: int):
    def fn():
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    return fn if uid else None


def worker(name: str, cfg: dict, uid: int = 0, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(HERE), "--worker", name, json.dumps(cfg)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/",
                            preexec_fn=as_user(uid), **kw)


KEEP = None      # bench/results/control_plane: each part's corrald stderr is copied there


def private_daemon(name: str, extra_env: dict | None = None):
    d = B.Daemon(name, extra_args=("--no-dns",))
    d.tmp.chmod(0o755)          # nobody must reach the socket, as under /run
    d.env.update(extra_env or {})
    d.log_dir = Path(d.env["CORRAL_LOG_DIR"])
    stop = d.stop

    def stop_and_keep():
        """Stop, keep a copy of the daemon's stderr, then clean up (benchlib removes it)."""
        if d.proc and d.proc.poll() is None:
            d.proc.terminate()
            try:
                d.proc.wait(10)
            except subprocess.TimeoutExpired:
                d.proc.kill()
                d.proc.wait()
        try:
            KEEP.mkdir(parents=True, exist_ok=True)
            (KEEP / f"{name}.stderr").write_bytes(d.stderr_path.read_bytes())
        except OSError:
            pass
        stop()
    d.stop = stop_and_keep
    return d


def start_again(d, timeout: float = 60.0) -> tuple[float, float]:
    """Start the daemon again (after a kill or stop) with the same instance;
    (seconds to its "listening on" line, seconds to the first hello answered)."""
    Client = client_mod.Client
    off = d.stderr_path.stat().st_size
    t0 = time.monotonic()
    with open(d.stderr_path, "ab") as err:
        d.proc = subprocess.Popen([B.CORRALD, "-v", *d.extra_args], env=d.env, stdout=err, stderr=err)
    d.pid = d.proc.pid
    listening = None
    deadline = t0 + timeout
    while time.monotonic() < deadline:
        if d.proc.poll() is not None:
            raise RuntimeError(f"corrald exited {d.proc.returncode}:\n{d.stderr_text()[-3000:]}")
        if listening is None:
            with open(d.stderr_path, "rb") as fh:
                fh.seek(off)
                if b"listening on" in fh.read():
                    listening = time.monotonic() - t0
        if listening is not None:
            try:
                with Client(d.socket, timeout=5) as c:
                    c.call("hello")
                return listening, time.monotonic() - t0
            except Exception:
                pass
        time.sleep(0.01)
    raise RuntimeError(f"corrald did not become ready in {timeout:.0f}s")


def records(d) -> list[dict]:
    return list(eventlog.read_records(d.log_dir, warn=lambda m: None, tail_ok=True))


def verify(d):
    return eventlog.verify(d.log_dir)


def session_cgroups(d) -> list[str]:
    root = cgroups_mod.cgroup2_mount() / d.instance
    try:
        return sorted(p.name for p in root.iterdir() if p.is_dir())
    except FileNotFoundError:
        return []


def state_files(d) -> list[str]:
    sd = Path(d.env["CORRAL_RUN_DIR"]) / "sessions"
    try:
        return sorted(os.listdir(sd))
    except FileNotFoundError:
        return []


def rss_mib(d) -> float:
    return round(B.rss_kib(d.pid)["VmRSS"] / 1024, 1)


def tracebacks(d) -> int:
    return d.stderr_text().count("Traceback")


def traceback_kinds(d) -> Counter:
    """Tracebacks in the daemon's stderr by their exception type."""
    lines = d.stderr_text().splitlines()
    out = Counter()
    for i, ln in enumerate(lines):
        if ln.startswith("Traceback"):
            j = i + 1
            while j < len(lines) and lines[j].startswith(" "):
                j += 1
            out[lines[j].split(":")[0] if j < len(lines) else "?"] += 1
    return out


def traceback_texts(d, first: int = 3) -> list[str]:
    """The first Tracebacks in the daemon's stderr, each with the line before it."""
    lines = d.stderr_text().splitlines()
    out = []
    for i, ln in enumerate(lines):
        if ln.startswith("Traceback"):
            j = i + 1
            while j < len(lines) and (lines[j].startswith(" ") or not lines[j][:4].isdigit()):
                j += 1
            out.append("\n".join(lines[max(0, i - 1):j]))
            if len(out) >= first:
                break
    return out


def call(d, op, **kw):
    with d.client() as c:
        return c.call(op, **kw)


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


class Listener:
    """A loopback listener that accepts and closes: an allowed connect succeeds."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(512)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            c.close()

    def close(self):
        self.sock.close()


class HelloPoller(threading.Thread):
    """A root client says hello every `interval` s on a new connection."""

    def __init__(self, d, interval=1.0):
        super().__init__(daemon=True)
        self.d, self.interval = d, interval
        self.lat, self.fail, self.codes = [], [], Counter()
        self.stop = threading.Event()

    def run(self):
        Client, CorralError = client_mod.Client, client_mod.CorralError
        while not self.stop.wait(self.interval):
            t0 = time.perf_counter()
            try:
                with Client(self.d.socket, timeout=10) as c:
                    c.call("hello")
                self.codes["ok"] += 1
            except CorralError as e:
                self.codes[e.code] += 1
                if e.code in ("disconnected", "not_running"):
                    self.fail.append(f"{time.strftime('%H:%M:%S')} {e.code}")
            except OSError as e:
                self.codes[type(e).__name__] += 1
                self.fail.append(f"{time.strftime('%H:%M:%S')} {type(e).__name__}")
            self.lat.append(time.perf_counter() - t0)


def banner(text: str) -> None:
    print(f"\n{'=' * 78}\n{text}\n{'=' * 78}", flush=True)


# -- part 1: fuzz ----------------------------------------------------------------------
def lazy_subscriber(d, seconds: float) -> dict:
    """nobody subscribes to events and never reads; 4 of nobody's sessions make
    denied connects as fast as they can (the kernel passes 200 events/s each).
    Is the daemon's memory bounded?"""
    lis = Listener()
    sub = worker("lazysub", {"socket": str(d.socket)}, uid=NOBODY)
    assert sub.stdout.readline().strip() == "subscribed"
    ws = [worker("session", {"socket": str(d.socket), "policy": NO_NET}, uid=NOBODY) for _ in range(4)]
    for w in ws:
        json.loads(w.stdout.readline())
    time.sleep(0.5)
    r0 = rss_mib(d)
    for w in ws:
        w.stdin.write(f"loop {lis.port} 0.0005\n")
        w.stdin.flush()
    time.sleep(seconds)
    r1 = rss_mib(d)
    made = Counter()
    for w in ws:
        w.stdin.write("stop\n")
        w.stdin.flush()
        made.update(json.loads(w.stdout.readline())["counts"])
        w.stdin.close()
        w.wait(10)
    sub.stdin.close()
    sub.wait(10)
    lis.close()
    time.sleep(2)
    out = {"seconds": seconds, "rss_before": r0, "rss_after": r1, "rss_after_subscriber_gone": rss_mib(d),
           "growth_mib": round(r1 - r0, 1), "growth_mib_per_s": round((r1 - r0) / seconds, 2),
           "denials": made}
    print(f"subscriber that never reads (nobody), 4 of nobody's sessions denying: RSS {r0} -> {r1} MiB "
          f"in {seconds:.0f}s ({out['growth_mib_per_s']} MiB/s), {out['rss_after_subscriber_gone']} MiB "
          f"after it left; denials {dict(made)}", flush=True)
    return out


def part_fuzz(args, rows: list, res: dict) -> bool:
    n = args.frames
    loris_hold = args.loris_hold
    banner(f"fuzz: {n} frames from 5 processes + slow loris ({loris_hold:.0f} s)")
    d = private_daemon("corral-cp-fuzz")
    ok = True
    with d:
        victim = worker("session", {"socket": str(d.socket), "policy": NO_NET})
        vsid = json.loads(victim.stdout.readline())["sid"]
        time.sleep(1.0)
        rss0 = rss_mib(d)
        nrec0 = len(records(d))
        poller = HelloPoller(d)
        poller.start()
        loris = worker("slowloris", {"socket": str(d.socket), "m": 80, "hold": loris_hold},
                       uid=LORIS_UID)
        # (uid, share of the frames, frames/s it paces itself to). Root paces itself
        # below root's 200/s so the hello poller (also root) is rarely rate limited;
        # the others are paced by the daemon's rate_limited answers (and resend).
        plan = [(0, 0.13, 70), (0, 0.13, 70), (NOBODY, 0.18, 0), (NOBODY, 0.18, 0), (ODD_UID, 0.38, 0)]
        t0 = time.monotonic()
        fuzzers = []
        for i, (uid, share, rate) in enumerate(plan):
            cfg = {"socket": str(d.socket), "n": int(n * share), "seed": args.seed * 100 + i,
                   "uid": uid, "victims": [vsid], "index": i, "max_rate": rate}
            fuzzers.append(worker("fuzz", cfg, uid=uid))
        outs = []
        for f in fuzzers:
            out, _ = f.communicate()
            try:
                outs.append(json.loads(out.strip().splitlines()[-1]))
            except (ValueError, IndexError):
                outs.append({"error": f"fuzzer exited {f.returncode} without a report", "codes": {}})
                ok = False
        fuzz_s = time.monotonic() - t0
        lout, _ = loris.communicate()
        loris_r = json.loads(lout.strip().splitlines()[-1])
        poller.stop.set()
        poller.join()
        alive = d.proc.poll() is None
        rss1 = rss_mib(d) if alive else None
        time.sleep(5)
        rss2 = rss_mib(d) if alive else None
        nrec1 = len(records(d))
        tb = tracebacks(d)
        tb_kinds = traceback_kinds(d)
        tb_text = traceback_texts(d)
        lazy = lazy_subscriber(d, args.lazy_seconds) if alive else {}
        lazy["tracebacks"] = tracebacks(d) - tb
        lazy["traceback_text"] = traceback_texts(d, tb + 2)[tb:]
        # the fuzzers' sessions end with them; the victim is ended by us
        try:
            call(d, "end_session", session=vsid)
        except Exception as e:  # noqa: BLE001 -- a fuzzer may have ended it (it must not)
            res["fuzz_victim_end"] = str(e)
        victim.wait(10)
        left = d.wait_no_sessions(timeout=30)
        time.sleep(0.5)
        cg_left, st_left = session_cgroups(d), state_files(d)
        v = verify(d)
        err_lines = [ln for ln in d.stderr_text().splitlines() if " ERROR " in ln]

    codes = Counter()
    by_case: dict[str, Counter] = {}
    internal, dropped = [], []
    tot = Counter()
    for o in outs:
        codes.update(o.get("codes", {}))
        for case, c in o.get("by_case", {}).items():
            by_case.setdefault(case, Counter()).update(c)
        internal += o.get("internal", [])
        dropped += o.get("dropped", [])
        for k in ("frames", "internal_count", "dropped_count", "timeouts", "rate_retries",
                  "registered", "no_answer_expected", "answers_total"):
            tot[k] += o.get(k, 0)
    lat = poller.lat
    res["fuzz"] = {"frames": tot["frames"], "seconds": fuzz_s, "codes": codes, "by_case": by_case,
                   "internal": internal, "dropped": dropped, "totals": tot, "slowloris": loris_r,
                   "hello": {"n": len(lat), "max_ms": max(lat) * 1000 if lat else None,
                             "p50_ms": pct(lat, 50) * 1000 if lat else None,
                             "codes": poller.codes, "failures": poller.fail},
                   "rss_mib": {"before": rss0, "after": rss1, "after_5s_pause": rss2},
                   "records_written": nrec1 - nrec0, "verify_ok": v.ok, "verify_error": v.error,
                   "tracebacks": tb, "traceback_kinds": tb_kinds, "traceback_text": tb_text, "error_lines": len(err_lines), "error_line_sample": err_lines[:5],
                   "sessions_left": left, "cgroups_left": cg_left, "state_files_left": st_left,
                   "daemon_alive": alive, "lazy_subscriber": lazy, "per_worker": [{k: o.get(k) for k in (
                       "uid", "frames", "seconds", "rate_retries", "registered", "timeouts")}
                       for o in outs]}
    F = res["fuzz"]
    print(f"{tot['frames']} frames in {fuzz_s:.1f}s ({tot['frames'] / fuzz_s:.0f}/s; "
          f"{tot['rate_retries']} rate_limited answers resent after a pause); "
          f"{tot['answers_total']} answers/outcomes")
    print("answer codes:", ", ".join(f"{k} {v}" for k, v in codes.most_common()))
    print("by case:")
    for case in sorted(by_case):
        c = by_case[case]
        print(f"  {case:42} " + ", ".join(f"{k} {v}" for k, v in c.most_common(5)))
    print(f"internal answers: {tot['internal_count']}")
    for x in internal[:5]:
        print(f"  {x['case']}: {x['request'][:200]} -> {x['detail'][:200]}")
    print(f"complete frames without an answer: {tot['dropped_count']} "
          f"(timeouts {tot['timeouts']}); no answer expected (EOF inside a header, or the "
          f"client hung up): {tot['no_answer_expected']}")
    for x in dropped[:5]:
        print(f"  {x['case']}: {x['request'][:200]} ({x['detail']})")
    print(f"sessions registered by fuzzers (each moved the fuzzer into it): {tot['registered']}")
    closed = loris_r["closed_after_s"]
    print(f"slow loris (uid {LORIS_UID}, 80 connections, 1-3 header bytes, held {loris_hold:.0f} s): "
          f"{loris_r['opened']} opened, answers {dict(loris_r['answers'])}"
          + (f", idle-closed after {min(closed)}-{max(closed)} s" if closed else "")
          + f", EOF without answer {loris_r['eof_without_answer']}, still open at the end {loris_r['open_at_end']}")
    print(f"hello every 1 s from root: {len(lat)} polls, max {F['hello']['max_ms']:.0f} ms, "
          f"p50 {F['hello']['p50_ms']:.1f} ms, codes {dict(poller.codes)}, failures {poller.fail[:5]}")
    print(f"daemon RSS: {rss0} MiB before, {rss1} MiB after, {rss2} MiB after a 5 s pause")
    print(f"daemon alive: {alive}; stderr Tracebacks during the fuzz: {tb} {dict(tb_kinds)}; "
          f"ERROR lines in all: {len(err_lines)}")
    for t in tb_text[:2]:
        print("  " + t.replace("\n", "\n  ")[:3000])
    if lazy.get("tracebacks"):
        print(f"Tracebacks while/after the never-reading subscriber: {lazy['tracebacks']}")
        for t in lazy["traceback_text"][:1]:
            print("  " + t.replace("\n", "\n  ")[:3000])
    print(f"audit records written during the fuzz: {nrec1 - nrec0}; verify (at the end): "
          f"{'ok' if v.ok else v.error}")
    print(f"after the fuzzers exited: {left} sessions, {len(cg_left)} cgroups, {len(st_left)} state files left")

    hello_fail = len(poller.fail)
    rows += [
        B.row("control_plane", "fuzz: frames sent", tot["frames"], "", "",
              f"{fuzz_s:.0f} s, 5 processes (2 root, 2 nobody, uid {ODD_UID})"),
        B.row("control_plane", "fuzz: internal answers", tot["internal_count"], "", "0",
              internal[0]["request"][:80] if internal else ""),
        B.row("control_plane", "fuzz: complete frames without an answer", tot["dropped_count"], "", "0",
              dropped[0]["case"] if dropped else ""),
        B.row("control_plane", "fuzz: hello max latency", round(F["hello"]["max_ms"] or -1, 1), "ms",
              "< 1000", f"{len(lat)} polls, {hello_fail} failed"),
        B.row("control_plane", "fuzz: hello failures", hello_fail, "", "0"),
        B.row("control_plane", "fuzz: daemon RSS after (before)", rss1, "MiB", "",
              f"before {rss0}, after 5 s pause {rss2}"),
        B.row("control_plane", "fuzz: daemon stderr Tracebacks", tb, "", "0",
              ", ".join(f"{k} {v}" for k, v in tb_kinds.most_common(3))),
        B.row("control_plane", "fuzz: audit records written", nrec1 - nrec0, "", "",
              f"verify {'ok' if v.ok else 'FAILED'}"),
        B.row("control_plane", "fuzz: log verify failures", 0 if v.ok else 1, "", "0"),
        B.row("control_plane", "fuzz: slow-loris idle-closed / refused (limit)",
              loris_r["answers"].get("idle timeout", 0), "", "",
              f"{loris_r['answers'].get('connection limit', 0)} refused, "
              f"{loris_r['open_at_end']} open at end after {loris_hold:.0f} s"),
        B.row("control_plane", "fuzz: leftover cgroups", len(cg_left), "", "0"),
        B.row("control_plane", "fuzz: RSS growth, subscriber that never reads", lazy.get("growth_mib"),
              "MiB", "< 10", f"in {args.lazy_seconds:.0f} s, 4 of nobody's sessions denying"),
        B.row("control_plane", "fuzz: Tracebacks around the never-reading subscriber",
              lazy.get("tracebacks"), "", "0"),
    ]
    ok &= (tot["internal_count"] == 0 and tot["dropped_count"] == 0 and hello_fail == 0 and alive
           and tb == 0 and v.ok and not cg_left and not st_left and lazy.get("growth_mib", 99) < 10
           and lazy.get("tracebacks") == 0)
    return ok


# -- part 2: sessions --------------------------------------------------------------------
def part_sessions(args, rows: list, res: dict) -> bool:
    n = args.sessions
    banner(f"sessions: {n} concurrent sessions")
    d = private_daemon("corral-cp-sess")
    lis = Listener()
    ok = True
    with d:
        time.sleep(1.0)
        rss0 = rss_mib(d)
        allowed_i = n // 2
        t0 = time.monotonic()
        procs = []
        for i in range(n):
            pol = {"network": {"allow": [f"127.0.0.1:{lis.port}"]}} if i == allowed_i else NO_NET
            procs.append(worker("session", {"socket": str(d.socket), "policy": pol}))
        regs = [json.loads(p.stdout.readline() or "{}") for p in procs]
        t_all = time.monotonic() - t0
        failed = [r for r in regs if not r.get("sid")]
        ms = [r["ms"] for r in regs if r.get("sid")]
        live = {s["id"] for s in call(d, "list_sessions")}
        listed = sum(1 for r in regs if r.get("sid") in live)
        t1 = time.monotonic()
        probes = []
        for p in procs:
            if p.poll() is None:
                p.stdin.write(f"probe {lis.port}\n")
                p.stdin.flush()
        for p in procs:
            probes.append(p.stdout.readline().strip() if p.poll() is None else "(exited)")
        probe_s = time.monotonic() - t1
        denied = [x for i, x in enumerate(probes) if i != allowed_i]
        bad_denied = [x for x in denied if x != "EPERM"]
        allowed_res = probes[allowed_i]
        time.sleep(1.0)
        rss_n = rss_mib(d)
        cg_live = len(session_cgroups(d))
        t2 = time.monotonic()
        for p in procs:
            try:
                p.stdin.close()
            except OSError:
                pass
        for p in procs:
            p.wait(30)
        t_exit = time.monotonic()
        gone = None
        deadline = t_exit + 60
        while time.monotonic() < deadline:
            if not session_cgroups(d) and not call(d, "list_sessions"):
                gone = time.monotonic() - t_exit
                break
            time.sleep(0.02)
        time.sleep(0.3)
        cg_left, st_left = session_cgroups(d), state_files(d)
        time.sleep(1.5)
        rss_end = rss_mib(d)
        v = verify(d)
        tb = tracebacks(d)
        recs = records(d)
    lis.close()
    st_times = sorted(r["time"] for r in recs if r.get("kind") == "session" and r.get("op") == "start")
    starts = len(st_times)
    span = st_times[-1] - st_times[0] if len(st_times) > 1 else float("nan")
    ends = sum(1 for r in recs if r.get("kind") == "session" and r.get("op") == "end")
    res["sessions"] = {"n": n, "start_all_seconds": t_all, "register_ms": {
        "p50": pct(ms, 50), "p99": pct(ms, 99), "max": max(ms) if ms else None},
        "failed": failed[:5], "failed_count": len(failed), "listed": listed,
        "probe_seconds": probe_s, "denied_not_eperm": Counter(bad_denied), "allowed_probe": allowed_res,
        "rss_mib": {"0": rss0, str(n): rss_n, "ended": rss_end}, "cgroups_live": cg_live,
        "gone_seconds_after_exit": gone, "exit_seconds": t_exit - t2,
        "cgroups_left": cg_left, "state_files_left": st_left, "verify_ok": v.ok,
        "tracebacks": tb, "start_records": starts, "end_records": ends,
        "daemon_register_span_seconds": span}
    S = res["sessions"]
    print(f"{n} sessions started concurrently in {t_all:.1f}s (process start + register); "
          f"{len(failed)} failed {failed[:2]}")
    print(f"register_session round trip: p50 {S['register_ms']['p50']:.1f} ms, "
          f"p99 {S['register_ms']['p99']:.1f} ms, max {S['register_ms']['max']:.1f} ms (queued: the daemon "
          f"wrote the {starts} start records within {span:.2f}s, {span / max(1, starts - 1) * 1000:.1f} ms "
          "apart: one register at a time)")
    print(f"list_sessions shows {listed}/{n}; {cg_live} session cgroups")
    print(f"probes ({probe_s:.2f}s): denied sessions {len(denied) - len(bad_denied)}/{len(denied)} EPERM"
          f"{' others: ' + str(Counter(bad_denied)) if bad_denied else ''}; "
          f"the allowed session: {allowed_res}")
    print(f"daemon RSS: {rss0} MiB with 0, {rss_n} MiB with {n}, {rss_end} MiB after all ended")
    print(f"all cgroups gone {gone if gone is None else round(gone, 2)} s after the last process exited; "
          f"left: {len(cg_left)} cgroups, {len(st_left)} state files")
    print(f"log: {starts} start / {ends} end records, verify {'ok' if v.ok else v.error}; Tracebacks {tb}")
    rows += [
        B.row("control_plane", f"sessions: start {n} concurrently", round(t_all, 2), "s", "",
              f"{len(failed)} failed"),
        B.row("control_plane", "sessions: register p50", round(S["register_ms"]["p50"], 1), "ms", "",
              f"p99 {S['register_ms']['p99']:.1f} ms"),
        B.row("control_plane", "sessions: register p99", round(S["register_ms"]["p99"], 1), "ms", "",
              f"all concurrent; daemon: {span / max(1, starts - 1) * 1000:.1f} ms per register"),
        B.row("control_plane", "sessions: denied connects not EPERM", len(bad_denied), "", "0",
              f"of {len(denied)}; allowed session: {allowed_res}"),
        B.row("control_plane", f"sessions: daemon RSS with {n}", rss_n, "MiB", "",
              f"0: {rss0}, after end: {rss_end}"),
        B.row("control_plane", "sessions: cgroups gone after exit", round(gone, 2) if gone else None, "s"),
        B.row("control_plane", "sessions: leftover cgroups + state files", len(cg_left) + len(st_left),
              "", "0"),
    ]
    ok &= (not failed and listed == n and not bad_denied and allowed_res == "ok" and gone is not None
           and not cg_left and not st_left and v.ok and tb == 0)
    return ok


# -- part 3: sigkill ---------------------------------------------------------------------
def part_sigkill(args, rows: list, res: dict) -> bool:
    k_total, ns = args.kills, args.kill_sessions
    banner(f"sigkill: {ns} sessions denying in a loop, {k_total} SIGKILLs")
    rng = random.Random(args.seed + 3)
    d = private_daemon("corral-cp-kill")
    lis = Listener()
    ok = True
    cycles = []
    burst_reports = []
    interval = 0.05
    with d:
        loops = [worker("session", {"socket": str(d.socket), "policy": NO_NET}) for _ in range(ns)]
        sids = [json.loads(p.stdout.readline())["sid"] for p in loops]
        for p in loops:
            p.stdin.write(f"loop {lis.port} {interval}\n")
            p.stdin.flush()
        for k in range(k_total):
            time.sleep(rng.uniform(1.0, 3.0))
            burst = None
            if k % 2 == 0:
                burst = worker("burst", {"socket": str(d.socket), "n": 8, "port": lis.port,
                                         "instance": d.instance})
                assert burst.stdout.readline().strip() == "ready"
            nrec = len(records(d))
            if burst:
                burst.stdin.write("go\n")
                burst.stdin.flush()
                time.sleep(rng.uniform(0.0, 0.03))
            d.proc.kill()
            d.proc.wait()
            down = rng.uniform(0.2, 1.5)
            time.sleep(down)
            listen_s, ready_s = start_again(d)
            live = {s["id"] for s in call(d, "list_sessions")}
            missing = [s for s in sids if s not in live]
            time.sleep(0.3)
            new = records(d)[nrec:]
            wd = [r for r in new if r.get("while_down")]
            lost_wd = sum(r.get("count", 0) for r in new if r.get("kind") == "lost")
            v = verify(d)
            cyc = {"kill": k + 1, "mid_register_burst": bool(burst), "down_s": round(down, 2),
                   "listening_s": round(listen_s, 2), "ready_s": round(ready_s, 2),
                   "missing_sessions": missing, "while_down_records": len(wd), "lost": lost_wd,
                   "verify_ok": v.ok}
            if burst:
                # mid-register victims: adopted ones are listed (before they are told to end)
                burst.stdin.write("end\n")
                burst.stdin.flush()
                out, _ = burst.communicate(timeout=60)
                reps = json.loads(out.strip().splitlines()[-1])
                for r in reps:
                    r["listed_after_restart"] = r.get("sid") in live or r.get("cg1") in live
                burst_reports += reps
                cyc["burst"] = Counter(f"{r.get('answer')}/{r.get('status')}" for r in reps)
            cycles.append(cyc)
            print(f"kill {k + 1}: {'after a register burst, ' if burst else ''}down {down:.2f}s, "
                  f"listening after {listen_s:.2f}s, hello after {ready_s:.2f}s; "
                  f"{len(sids) - len(missing)}/{len(sids)} re-adopted; {len(wd)} while_down records, "
                  f"lost {lost_wd}; verify {'ok' if v.ok else v.error}"
                  + (f"; burst {dict(cyc['burst'])}" if burst else ""), flush=True)
        for p in loops:
            p.stdin.write("stop\n")
            p.stdin.flush()
        counts = Counter()
        not_eperm = []
        for p in loops:
            o = json.loads(p.stdout.readline())
            counts.update(o["counts"])
            not_eperm += o["not_eperm"]
            p.stdin.close()
            p.wait(10)
        time.sleep(2.0)                       # the last events reach the log
        recs = records(d)
        v = verify(d)
        d.wait_no_sessions(timeout=30)
        time.sleep(0.3)
        cg_left, st_left = session_cgroups(d), state_files(d)
        tb = tracebacks(d)
    lis.close()
    # -- accounting: denials made = records + suppressed + lost -------------------------
    sidset = set(sids)
    net_den = [r for r in recs if r.get("kind") == "net" and r.get("verdict") == "deny"]
    logged_loops = sum(1 for r in net_den if r.get("session") in sidset)
    logged_all = len(net_den)
    supp_loops = sum(r.get("count", 0) for r in recs if r.get("kind") == "rate" and r.get("session") in sidset)
    supp_all = sum(r.get("count", 0) for r in recs if r.get("kind") == "rate")
    lost_all = sum(r.get("count", 0) for r in recs if r.get("kind") == "lost")
    wd_all = sum(1 for r in net_den if r.get("while_down"))
    # One connect denied by two attached programs at once (the restarted daemon's and the
    # killed one's, between attach and detach) is two records microseconds apart.
    dups, last = 0, {}
    for r in sorted(net_den, key=lambda r: (r.get("pid") or 0, r.get("time") or 0)):
        key = (r.get("pid"), r.get("target"))
        if key in last and abs((r.get("time") or 0) - last[key]) < 0.001:
            dups += 1
        last[key] = r.get("time") or 0
    made_loops = counts.get("EPERM", 0)
    made_burst = sum((r.get("probe1") == "EPERM") + (r.get("probe2") == "EPERM") for r in burst_reports
                     if "probe1" in r)
    made_all = made_loops + made_burst
    accounted = logged_all + supp_all + lost_all
    # -- invariants for mid-register victims ----------------------------------------------
    loose = [r for r in burst_reports if (r.get("cg1") and r.get("probe1") != "EPERM")
             or (r.get("cg2") and r.get("probe2") != "EPERM")]
    ok_not_adopted = [r for r in burst_reports if r.get("answer") == "ok" and not r["listed_after_restart"]]
    ready = [c["ready_s"] for c in cycles]
    listen = [c["listening_s"] for c in cycles]
    res["sigkill"] = {"kills": k_total, "sessions": ns, "cycles": cycles, "loop_counts": counts,
                      "not_eperm": not_eperm, "burst_reports": burst_reports,
                      "made": {"loops": made_loops, "burst_children": made_burst},
                      "logged": {"loops": logged_loops, "all": logged_all, "while_down": wd_all},
                      "suppressed": {"loops": supp_loops, "all": supp_all}, "lost_all": lost_all,
                      "unaccounted": made_all - accounted, "double_records": dups,
                      "verify_ok": v.ok, "tracebacks": tb,
                      "cgroups_left": cg_left, "state_files_left": st_left}
    bc = Counter(f"{r.get('answer')}, {'in session' if r.get('cg1') else 'not in a session'}, "
                 f"{r.get('status')}" for r in burst_reports)
    print(f"restart to 'listening': median {B.median(listen):.2f}s, max {max(listen):.2f}s; "
          f"to first hello: median {B.median(ready):.2f}s, max {max(ready):.2f}s")
    print(f"loop sessions: {dict(counts)} connect results; not EPERM: {not_eperm[:5]}")
    print(f"mid-register burst children ({len(burst_reports)}): " +
          "; ".join(f"{k}: {v}" for k, v in bc.most_common()))
    print(f"  in a session cgroup but not EPERM: {len(loose)}; answered ok but not re-adopted: "
          f"{len(ok_not_adopted)}")
    print(f"denials made {made_all} (loops {made_loops}, burst children {made_burst}); logged {logged_all} "
          f"({wd_all} while_down), suppressed {supp_all}, lost {lost_all} -> unaccounted "
          f"{made_all - accounted}")
    print(f"denials logged twice (same pid and target < 1 ms apart: two programs attached): {dups}; "
          f"made - (logged - doubles) - suppressed - lost = {made_all - accounted + dups} (> 0: read "
          "but not written when killed; < 0: counted twice as lost while both programs were attached "
          "and the pinned buffer was full)")
    print(f"final verify {'ok' if v.ok else v.error}; Tracebacks {tb}; left {len(cg_left)} cgroups, "
          f"{len(st_left)} state files")
    missing_any = sum(len(c["missing_sessions"]) for c in cycles)
    rows += [
        B.row("control_plane", f"sigkill: restart to first hello (median of {k_total})",
              round(B.median(ready), 2), "s", "", f"max {max(ready):.2f} s"),
        B.row("control_plane", "sigkill: connects not EPERM (loops + victims)",
              sum(v for k, v in counts.items() if k != "EPERM") + len(loose), "", "0"),
        B.row("control_plane", "sigkill: sessions not re-adopted (sum over restarts)", missing_any, "", "0"),
        B.row("control_plane", "sigkill: restarts without while_down records",
              sum(1 for c in cycles if not c["while_down_records"]), "", "0"),
        B.row("control_plane", "sigkill: denials made", made_all, "", "",
              f"logged {logged_all}, suppressed {supp_all}, lost {lost_all}"),
        B.row("control_plane", "sigkill: denials unaccounted (made - logged - suppressed - lost)",
              made_all - accounted, "", "", "> 0: read from the ring buffer but not written when "
              "killed; < 0: emitted twice while the killed daemon's and the new one's programs were "
              f"both attached (as records: {dups}, next row; as lost while the buffer was full)"),
        B.row("control_plane", "sigkill: denials logged twice at restart", dups, "", "0"),
        B.row("control_plane", "sigkill: verify failures (after each restart + final)",
              sum(1 for c in cycles if not c["verify_ok"]) + (0 if v.ok else 1), "", "0"),
    ]
    ok &= (not not_eperm and not loose and not ok_not_adopted and missing_any == 0 and v.ok
           and all(c["verify_ok"] for c in cycles) and tb == 0 and not cg_left and not st_left
           and set(counts) <= {"EPERM"})
    return ok


# -- part 4: diskfull --------------------------------------------------------------------
def SmallDisk(size):
    """A tmpfs the bench fills and frees (tests/harness.py's, as the tests use)."""
    return B.harness.SmallDisk(size, prefix="corral-cp-disk-")


def part_diskfull(args, rows: list, res: dict) -> bool:
    total, fill_at, free_at, rate = args.denials, args.fill_at, args.free_at, args.deny_rate
    banner(f"diskfull: {total} denials at {rate:.0f}/s, disk filled at {fill_at}, freed at {free_at}")
    disk = SmallDisk("4m")
    d = private_daemon("corral-cp-disk", {"CORRAL_LOG_DIR": str(disk.dir / "log")})
    lis = Listener()
    ok = True
    made = Counter()
    ctl = {}

    def deny(n):
        denier.stdin.write(f"deny {lis.port} {n} {rate}\n")
        denier.stdin.flush()
        c = json.loads(denier.stdout.readline())
        made.update(c)
        return c

    def log_state():
        return call(d, "hello")["log"]

    def control_changes():
        """update_policy of the victim, a new session, end_session of a spare."""
        CorralError = client_mod.CorralError
        out = {}
        try:
            call(d, "update_policy", session=vsid, policy=NO_NET, reason="bench: control change")
            out["update_policy"] = "ok"
        except CorralError as e:
            out["update_policy"] = e.code
        p = worker("session", {"socket": str(d.socket), "policy": NO_NET})
        r = json.loads(p.stdout.readline())
        out["register_session"] = r["code"]
        if r.get("sid"):
            p.stdin.close()
        p.wait(10)
        try:
            call(d, "end_session", session=spare.pop())
            out["end_session"] = "ok"
        except CorralError as e:
            out["end_session"] = e.code
        return out

    try:
        with d:
            denier = worker("session", {"socket": str(d.socket), "policy": NO_NET})
            dsid = json.loads(denier.stdout.readline())["sid"]
            victim = worker("session", {"socket": str(d.socket), "policy": NO_NET})
            vsid = json.loads(victim.stdout.readline())["sid"]
            spares = [worker("session", {"socket": str(d.socket), "policy": NO_NET}) for _ in range(3)]
            spare = [json.loads(p.stdout.readline())["sid"] for p in spares]
            time.sleep(0.5)
            nrec0 = len(records(d))
            t0 = time.monotonic()
            deny(fill_at)
            err_off = d.stderr_path.stat().st_size
            disk.fill()
            t_fill = time.monotonic()
            degraded_after = None
            done = fill_at
            ctl_mid_at = fill_at + (free_at - fill_at) // 2
            while done < free_at:
                step = min(10 if degraded_after is None else 100, free_at - done)
                deny(step)
                done += step
                st = log_state()
                if degraded_after is None and st["state"] == "degraded":
                    degraded_after = done - fill_at
                if "full" not in ctl and done >= ctl_mid_at and st["state"] == "degraded":
                    ctl["full"] = control_changes()
                    ctl["full_log_state"] = log_state()
            hello_full = log_state()
            disk.free()
            t_free = time.monotonic()
            recovered = None
            while time.monotonic() - t_free < 15:
                if log_state()["state"] == "ok":
                    recovered = time.monotonic() - t_free
                    break
                time.sleep(0.05)
            ctl["after"] = control_changes()
            deny(total - free_at)
            t_end = time.monotonic()
            episode_made = Counter(made)
            time.sleep(2.0)
            with open(d.stderr_path, "rb") as fh:
                fh.seek(err_off)
                episode_lines = fh.read().decode(errors="replace").splitlines()
            recs = records(d)[nrec0:]
            v = verify(d)
            # -- phase B: a restart while the disk is full ------------------------------
            disk.fill()
            for _ in range(40):
                deny(20)
                if log_state()["state"] == "degraded":
                    break
            restart_off = d.stderr_path.stat().st_size
            d.proc.terminate()
            d.proc.wait(20)
            with open(d.stderr_path, "rb") as fh:
                fh.seek(restart_off)
                stop_text = fh.read().decode(errors="replace")
            import re
            m = re.search(r"(\d+) record\(s\) lost and (\d+) change\(s\) refused", stop_text)
            lost_at_stop = int(m.group(1)) if m else None
            _, ready_full = start_again(d)
            hello_restart = call(d, "hello")["log"]
            listed_restart = {s["id"] for s in call(d, "list_sessions")} >= {dsid, vsid}
            probe_restart = deny(5)
            try:
                call(d, "update_policy", session=vsid, policy=NO_NET, reason="bench: after restart")
                ctl_restart = "ok"
            except Exception as e:  # noqa: BLE001
                ctl_restart = getattr(e, "code", str(e))
            disk.free()
            rec_b = None
            t_fb = time.monotonic()
            while time.monotonic() - t_fb < 15:
                if log_state()["state"] == "ok":
                    rec_b = time.monotonic() - t_fb
                    break
                time.sleep(0.05)
            time.sleep(0.5)
            v_b = verify(d)
            recs_all = records(d)
            tb = tracebacks(d)
            for p in [denier, victim] + spares:
                try:
                    p.stdin.close()
                except OSError:
                    pass
            for p in [denier, victim] + spares:
                p.wait(10)
            d.wait_no_sessions(timeout=30)
            time.sleep(0.3)
            cg_left, st_left = session_cgroups(d), state_files(d)
    finally:
        lis.close()
        disk.free()
        disk.close()

    mine = [r for r in recs if r.get("session") == dsid]
    written = sum(1 for r in mine if r.get("kind") == "net" and r.get("verdict") == "deny")
    suppressed = sum(r.get("count", 0) for r in mine if r.get("kind") == "rate")
    degr = [r for r in recs if r.get("kind") == "lost" and r.get("op") == "log_degraded"]
    lost = sum(r.get("count", 0) for r in degr)
    other_lost = sum(r.get("count", 0) for r in recs if r.get("kind") == "lost" and r.get("op") != "log_degraded")
    refused_rec = sum(r.get("refused", 0) or 0 for r in degr)
    denied_made = episode_made.get("EPERM", 0)
    degr_b = [r for r in recs_all if r.get("kind") == "lost" and r.get("op") == "log_degraded"][len(degr):]
    res["diskfull"] = {
        "denials": total, "fill_at": fill_at, "free_at": free_at, "rate": rate, "made": episode_made,
        "written": written, "suppressed": suppressed, "lost_in_log_degraded": lost,
        "log_degraded_records": degr, "other_lost": other_lost, "refused_in_record": refused_rec,
        "written_plus_lost": written + suppressed + lost, "denied_made": denied_made,
        "degraded_after_denials": degraded_after, "recovered_s_after_free": recovered,
        "episode_seconds": t_end - t0, "full_seconds": t_free - t_fill,
        "stderr_lines_during_episode": len(episode_lines), "stderr_episode": episode_lines[:10],
        "control_changes": ctl, "hello_while_full": hello_full, "verify_ok": v.ok,
        "restart_while_full": {"ready_s": ready_full, "hello_log": hello_restart,
                               "sessions_listed": listed_restart, "denials_after": probe_restart,
                               "update_policy": ctl_restart, "lost_only_on_stderr_at_stop": lost_at_stop,
                               "recovered_s": rec_b, "log_degraded_after": degr_b, "verify_ok": v_b.ok},
        "tracebacks": tb, "cgroups_left": cg_left, "state_files_left": st_left}
    print(f"made {dict(episode_made)} ({denied_made} denials in the episode) in {t_end - t0:.1f}s; "
          f"the log degraded after {degraded_after} denials on the full disk")
    print(f"written {written} denial records, suppressed by the kernel limiter {suppressed}, lost "
          f"{lost} (log_degraded record{'s' if len(degr) != 1 else ''}: "
          f"{[(r.get('count'), r.get('refused')) for r in degr]} (count, refused)); "
          f"written + suppressed + lost = {written + suppressed + lost} vs made {denied_made}")
    print(f"control changes while full: {ctl.get('full')}; after free: {ctl.get('after')}")
    print(f"hello while full: state {hello_full['state']}, lost {hello_full['lost']}, refused "
          f"{hello_full['refused']}; recovered {recovered if recovered is None else round(recovered, 2)}s "
          f"after free")
    print(f"daemon stderr lines from fill to the end of the episode: {len(episode_lines)}")
    for ln in episode_lines[:6]:
        print(f"  {ln[:220]}")
    print(f"verify {'ok' if v.ok else v.error}")
    print(f"restart while full: hello after {ready_full:.2f}s, log {hello_restart['state']} "
          f"({hello_restart['error']}), sessions listed {listed_restart}, denials after {dict(probe_restart)}, "
          f"update_policy {ctl_restart}; lost count the stopped daemon could only print: {lost_at_stop}; "
          f"recovered {rec_b if rec_b is None else round(rec_b, 2)}s after free, log_degraded "
          f"{[(r.get('count'), r.get('refused')) for r in degr_b]}; verify {'ok' if v_b.ok else v_b.error}")
    print(f"Tracebacks {tb}; left {len(cg_left)} cgroups, {len(st_left)} state files")
    acc_ok = written + suppressed + lost == denied_made
    rows += [
        B.row("control_plane", "diskfull: denials made", denied_made, "", "",
              f"fill at {fill_at}, free at {free_at}, {rate:.0f}/s"),
        B.row("control_plane", "diskfull: denial records written", written, "", "",
              f"suppressed {suppressed}"),
        B.row("control_plane", "diskfull: lost (log_degraded count)", lost, "", "",
              f"{len(degr)} log_degraded record(s)"),
        B.row("control_plane", "diskfull: made - (written + suppressed + lost)",
              denied_made - (written + suppressed + lost), "", "0"),
        B.row("control_plane", "diskfull: daemon stderr lines during the episode", len(episode_lines), "",
              "<= 5"),
        B.row("control_plane", "diskfull: control changes refused while full (of 3)",
              sum(1 for k in ("update_policy", "register_session", "end_session")
                  if (ctl.get("full") or {}).get(k) == "log_unavailable"), "", "3",
              f"after free: {ctl.get('after')}"),
        B.row("control_plane", "diskfull: restart while full: hello log state", None, "", "",
              f"{hello_restart['state']}; sessions listed {listed_restart}; denials {dict(probe_restart)}"),
        B.row("control_plane", "diskfull: verify failures", (0 if v.ok else 1) + (0 if v_b.ok else 1), "", "0"),
    ]
    ok &= (acc_ok and v.ok and v_b.ok and tb == 0 and hello_restart["state"] == "degraded"
           and listed_restart and set(probe_restart) == {"EPERM"} and not cg_left and not st_left
           and all(x == "log_unavailable" for x in (ctl.get("full") or {"x": "missing"}).values())
           and all(x == "ok" for x in ctl["after"].values()))
    return ok


PARTS = {"fuzz": part_fuzz, "sessions": part_sessions, "sigkill": part_sigkill, "diskfull": part_diskfull}


def main() -> int:
    import argparse
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(PARTS), help="comma-separated parts (%(default)s)")
    ap.add_argument("--quick", action="store_true", help="smaller counts (a smoke run)")
    ap.add_argument("--seed", type=int, default=9)
    ap.add_argument("--frames", type=int, help="fuzz frames (default 20000, quick 2000)")
    ap.add_argument("--loris-hold", type=float, help="seconds the slow loris holds (default 68: past "
                    "the daemon's 60 s idle timeout; quick 10)")
    ap.add_argument("--lazy-seconds", type=float, help="how long the never-reading subscriber "
                    "is watched (default 15, quick 6)")
    ap.add_argument("--sessions", type=int, help="concurrent sessions (default 200, quick 50)")
    ap.add_argument("--kills", type=int, help="SIGKILLs (default 10, quick 3)")
    ap.add_argument("--kill-sessions", type=int, help="sessions denying during the kills (default 20, quick 5)")
    ap.add_argument("--denials", type=int, help="diskfull denials (default 3500, quick 1200)")
    ap.add_argument("--fill-at", type=int, help="disk filled after this many (default 300, quick 100)")
    ap.add_argument("--free-at", type=int, help="disk freed after this many (default 3000, quick 1000)")
    ap.add_argument("--deny-rate", type=float, default=150.0,
                    help="denials/s in diskfull (default 150: below the kernel's 200/s limiter)")
    args = ap.parse_args()
    q = args.quick
    for name, full, quick in (("frames", 20000, 2000), ("loris_hold", 68.0, 10.0), ("lazy_seconds", 15.0, 6.0), ("sessions", 200, 50),
                              ("kills", 10, 3), ("kill_sessions", 20, 5), ("denials", 3500, 1200),
                              ("fill_at", 300, 100), ("free_at", 3000, 1000)):
        if getattr(args, name) is None:
            setattr(args, name, quick if q else full)
    parts = [p for p in args.only.split(",") if p]
    unknown = set(parts) - set(PARTS)
    if unknown:
        ap.error(f"unknown part(s) {', '.join(sorted(unknown))}; choose from {', '.join(PARTS)}")
    if os.geteuid() != 0:
        print("bench_control_plane: needs root (private corrald, setuid workers, tmpfs)", file=sys.stderr)
        return 1
    _bench_imports()
    rows: list = []
    res: dict = {"args": vars(args), "parts": {}}
    failed = []
    t0 = time.monotonic()
    for p in parts:
        tp = time.monotonic()
        try:
            good = PARTS[p](args, rows, res)
        except Exception as e:  # noqa: BLE001 -- the other parts still run
            import traceback
            traceback.print_exc()
            rows.append(B.row("control_plane", f"{p}: FAILED", None, "", "", f"{type(e).__name__}: {e}"[:150]))
            good = False
        res["parts"][p] = {"ok": good, "seconds": round(time.monotonic() - tp, 1)}
        print(f"-- {p}: {'ok' if good else 'INVARIANT BROKEN'} ({time.monotonic() - tp:.0f}s)", flush=True)
        if not good:
            failed.append(p)
    res["seconds"] = time.monotonic() - t0
    res["summary"] = rows
    B.write_results(res)
    banner(f"bench_control_plane: {', '.join(parts)} in {res['seconds']:.0f}s"
           + (f"; invariants broken in: {', '.join(failed)}" if failed else "; all invariants held"))
    for r in rows:
        print(f"  {r['metric']:62} {str(r['value']):>10} {r['unit']:4} {r['goal']:8} {r['note']}")
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--worker":
        sys.exit(WORKERS[sys.argv[2]](json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}))
    sys.exit(main())
