"""journald export through its native protocol (systemd's journal-native(7)): one
datagram per record to /run/systemd/journal/socket (CORRAL_JOURNAL_SOCKET), fields
KEY=VALUE, or KEY\\n<64-bit little-endian length>VALUE for values with newlines; a
record too large for one datagram is passed as a sealed memfd (SCM_RIGHTS), as
sd_journal_send does. Fields (docs/log-schema.md):

    MESSAGE              one line (schema.summary)
    PRIORITY             4 (warning) for verdict deny, 5 for lost/warn, 6 otherwise
    SYSLOG_IDENTIFIER    corrald
    CORRAL_SCHEMA, CORRAL_SEQ, CORRAL_PREV, CORRAL_HASH, CORRAL_KIND, CORRAL_OP,
    CORRAL_VERDICT, CORRAL_SESSION, CORRAL_SESSION_NAME, CORRAL_TARGET, CORRAL_RULE,
    CORRAL_PID, CORRAL_UID, CORRAL_COMM      when the record has them
    CORRAL_LABEL_<KEY>   each session label (key upper-cased, other than A-Z0-9 -> _)
    CORRAL_RECORD        the whole record as JSON (the JSON-lines export's line)
    checkpoints: CORRAL_KIND=checkpoint, CORRAL_HEAD_SEQ, CORRAL_HEAD_HASH,
                 CORRAL_KEY_ID, CORRAL_SIG, CORRAL_REASON

Without systemd as PID 1 there is usually no journald: then this export is skipped
(with that reason in `corral doctor`), unless corral.toml says journald = "on"."""
from __future__ import annotations

import array
import os
import re
import socket
import struct
from pathlib import Path

from corral.server.export.schema import summary, to_json

DEFAULT_SOCKET = "/run/systemd/journal/socket"
FIELDS = ("schema", "seq", "prev", "hash", "kind", "op", "verdict", "session", "session_name",
          "target", "rule", "pid", "uid", "comm", "head_seq", "head_hash", "key_id", "sig",
          "reason")
_BAD = re.compile(r"[^A-Z0-9_]")


def socket_path() -> Path:
    return Path(os.environ.get("CORRAL_JOURNAL_SOCKET", DEFAULT_SOCKET))


def available() -> tuple[bool, str]:
    p = socket_path()
    try:
        import stat
        if stat.S_ISSOCK(os.stat(p).st_mode):
            return True, f"{p}"
        return False, f"{p} is not a socket"
    except FileNotFoundError:
        return False, f"no {p} (journald is not running here; systemd is not PID 1)"
    except OSError as e:
        return False, f"{p}: {e.strerror}"


def field_name(key: str) -> str:
    name = _BAD.sub("_", key.upper()).lstrip("_")
    if not name or name[0].isdigit():
        name = "X" + name
    return name[:64]


def fields(rec: dict) -> list[tuple[str, str]]:
    v = rec.get("verdict")
    prio = 4 if v == "deny" else 5 if (rec.get("kind") == "lost" or v == "warn") else 6
    out = [("MESSAGE", summary(rec)), ("PRIORITY", str(prio)), ("SYSLOG_IDENTIFIER", "corrald")]
    for k in FIELDS:
        if rec.get(k) is not None and rec.get(k) != "":
            val = rec[k]
            out.append((f"CORRAL_{k.upper()}", val if isinstance(val, str) else to_json(val)))
    for k, val in sorted((rec.get("labels") or {}).items()):
        out.append((field_name(f"CORRAL_LABEL_{k}"), str(val)))
    out.append(("CORRAL_RECORD", to_json(rec)))
    return out


def encode(pairs: list[tuple[str, str]]) -> bytes:
    buf = bytearray()
    for k, v in pairs:
        b = v.encode("utf-8", "replace")
        if b"\n" in b:
            buf += k.encode() + b"\n" + struct.pack("<Q", len(b)) + b + b"\n"
        else:
            buf += k.encode() + b"=" + b + b"\n"
    return bytes(buf)


def decode(data: bytes) -> list[tuple[str, str]]:
    """The inverse of encode (for tests and stand-ins)."""
    out, i = [], 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            k, v = line.split(b"=", 1)
            out.append((k.decode(), v.decode()))
            i = nl + 1
        else:
            (n,) = struct.unpack("<Q", data[nl + 1:nl + 9])
            out.append((line.decode(), data[nl + 9:nl + 9 + n].decode()))
            i = nl + 9 + n + 1
    return out


class JournaldSink:
    name = "journald"

    def __init__(self, path: Path | None = None):
        self.path = str(path or socket_path())
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.via_memfd = 0

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendto(data, self.path)
            return
        except OSError as e:
            import errno
            if e.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                raise
        fd = os.memfd_create("corral-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.write(fd, data)
            import fcntl
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
                        | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)
            self.sock.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                    array.array("i", [fd]).tobytes())], 0, self.path)
            self.via_memfd += 1
        finally:
            os.close(fd)

    def write_batch(self, objs: list[dict]) -> None:
        for o in objs:
            self.send(encode(fields(o)))

    def describe(self) -> dict:
        return {"socket": self.path}

    def close(self) -> None:
        self.sock.close()
