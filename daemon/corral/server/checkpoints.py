"""Signed checkpoints of the audit chain's head (ed25519, python3-cryptography).

A chain alone cannot show that records were cut off its end, or that the whole
tail after some record was rewritten and re-chained by someone holding the log.
A checkpoint is the head (seq and hash of the newest record) signed with the
daemon's key, made when a segment rotates, every N records (corral.toml
[log] checkpoint_every), when a session ends and when corrald starts and stops,
and published on every export stream (JSON lines, journald, OTLP) and in
LOG_DIR/checkpoints.jsonl. A copy kept elsewhere is then checked against the log
by `corral log verify --checkpoints FILE`: every checkpoint's record must be in
the log with that hash (a rewritten record, or a tail cut off, is reported).

Object (schema 1; one JSON object per line in checkpoints.jsonl and the exports)::

    {"schema": 1, "kind": "checkpoint", "host": "...", "log": "/var/log/corral",
     "head_seq": 4711, "head_hash": "<64 hex>", "time": 1764600000.123,
     "reason": "rotation" | "interval" | "session_end" | "start" | "stop",
     "key_id": "<16 hex: sha256 of the raw public key>", "sig": "<128 hex>"}

sig = ed25519 over b"corral-checkpoint-v1\\n" + the JSON of every other field,
keys sorted, separators (",", ":"). It has no seq/prev/hash of its own, so no
reader mistakes it for a chain record.

Key: CONFIG_DIR/checkpoint.key (PKCS#8 PEM, root 0600), made at first start;
checkpoint.pub beside it (SubjectPublicKeyInfo PEM, 0644) is what auditors use.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from pathlib import Path

log = logging.getLogger("corral.checkpoints")

SCHEMA = 1
CONTEXT = b"corral-checkpoint-v1\n"
REASONS = ("rotation", "interval", "session_end", "start", "stop")


class CheckpointKeyError(Exception):
    pass


def _serialization():
    from cryptography.hazmat.primitives import serialization
    return serialization


def pub_path(key_path: Path) -> Path:
    return Path(key_path).with_suffix(".pub")


def load_or_create_key(path: Path):
    """The private key at PATH, made (0600) with its .pub (0644) if missing.
    A key file others can read is made 0600 (and said): the key is the anchor."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    ser = _serialization()
    path = Path(path)
    if path.exists():
        st = path.stat()
        if st.st_mode & 0o077:
            log.warning("checkpoint key %s was mode %04o: made 0600", path, st.st_mode & 0o777)
            os.chmod(path, 0o600)
        key = ser.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise CheckpointKeyError(f"{path}: not an ed25519 private key; move it away and restart "
                            "corrald to make a new one")
    else:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, pem)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        log.info("checkpoint signing key made: %s (public key %s)", path, pub_path(path))
    pub = key.public_key().public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo)
    pp = pub_path(path)
    if not pp.exists() or pp.read_bytes() != pub:
        tmp = pp.with_name(f".{pp.name}.tmp")
        tmp.write_bytes(pub)
        os.chmod(tmp, 0o644)
        os.replace(tmp, pp)
    return key


def load_public_key(path: Path):
    """An ed25519 public key from a .pub PEM (or the private key file, for root)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    ser = _serialization()
    data = Path(path).read_bytes()
    if b"PRIVATE KEY" in data:
        key = ser.load_pem_private_key(data, password=None).public_key()
    else:
        key = ser.load_pem_public_key(data)
    if not isinstance(key, Ed25519PublicKey):
        raise CheckpointKeyError(f"{path}: not an ed25519 public key")
    return key


def key_id(public_key) -> str:
    ser = _serialization()
    raw = public_key.public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def message(cp: dict) -> bytes:
    body = {k: v for k, v in cp.items() if k != "sig"}
    return CONTEXT + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def signature_ok(cp: dict, public_key) -> bool:
    from cryptography.exceptions import InvalidSignature
    try:
        public_key.verify(bytes.fromhex(cp.get("sig") or ""), message(cp))
        return True
    except (InvalidSignature, ValueError, TypeError):
        return False


def is_checkpoint(obj) -> bool:
    return isinstance(obj, dict) and obj.get("kind") == "checkpoint" and "head_seq" in obj \
        and "seq" not in obj


class Checkpointer:
    """Signs heads; decides when (EventLog calls due() under its lock after each
    record it wrote, and sign() once the record is fsynced)."""

    def __init__(self, key_path: Path, out_path: Path | None, every: int = 1000,
                 log_dir: str = "", gid: int = 0):
        self.key = load_or_create_key(key_path)
        self.key_path = Path(key_path)
        self.key_id = key_id(self.key.public_key())
        self.out_path = Path(out_path) if out_path else None
        self.every = max(1, int(every))
        self.host = socket.gethostname()
        self.log_dir = str(log_dir)
        self.gid = gid
        self.last_seq = -1
        self.made = 0
        self.failed = 0
        self._fd = -1

    def due(self, rec: dict, rotated: bool) -> str | None:
        if rotated:
            return "rotation"
        if rec.get("kind") == "session" and rec.get("op") == "end":
            return "session_end"
        if self.last_seq < 0 or rec["seq"] - self.last_seq >= self.every:
            return "interval"
        return None

    def sign(self, seq: int, head_hash: str, reason: str) -> dict:
        cp = {"schema": SCHEMA, "kind": "checkpoint", "host": self.host, "log": self.log_dir,
              "head_seq": seq, "head_hash": head_hash, "time": time.time(), "reason": reason,
              "key_id": self.key_id}
        cp["sig"] = self.key.sign(message(cp)).hex()
        self.last_seq = seq
        self.made += 1
        self._write(cp)
        return cp

    def _write(self, cp: dict) -> None:
        if self.out_path is None:
            return
        line = (json.dumps(cp, sort_keys=True) + "\n").encode()
        try:
            if self._fd < 0 or not self._same_file():
                if self._fd >= 0:
                    os.close(self._fd)
                self._fd = os.open(self.out_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT
                                   | os.O_CLOEXEC | os.O_NOFOLLOW, 0o640)
                if os.geteuid() == 0:
                    os.fchown(self._fd, 0, self.gid)
            os.write(self._fd, line)
        except OSError as e:
            self.failed += 1
            log.warning("cannot append to %s: %s (the checkpoint still goes to the exports)",
                        self.out_path, e.strerror)

    def _same_file(self) -> bool:
        """Still writing the file at out_path (not one logrotate moved away)?"""
        try:
            return os.stat(self.out_path).st_ino == os.fstat(self._fd).st_ino
        except OSError:
            return False

    def status(self) -> dict:
        return {"key": str(self.key_path), "public_key": str(pub_path(self.key_path)),
                "key_id": self.key_id, "every": self.every, "made": self.made,
                "last_seq": self.last_seq, "file": str(self.out_path or ""),
                "file_failures": self.failed}

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


# -- checking a log against checkpoints kept elsewhere ---------------------------------
def json_lines(path: Path):
    """(line number, object or None) for each non-empty line of a JSON-lines file:
    None for a line that is not JSON (a torn or edited line; the caller says which)."""
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, 1):
            raw = raw.strip()
            if not raw:
                continue
            try:
                yield n, json.loads(raw)
            except ValueError:
                yield n, None


def read_checkpoints(path: Path) -> tuple[list[tuple[int, dict]], list[str]]:
    """(line number, checkpoint) for every checkpoint object in a JSON-lines file
    (checkpoints.jsonl, or an export stream where they sit among records); lines
    that are not JSON are reported."""
    out, problems = [], []
    for n, obj in json_lines(path):
        if obj is None:
            problems.append(f"{path}:{n}: not a JSON object: skipped")
        elif is_checkpoint(obj):
            out.append((n, obj))
    return out, problems


def check(records_by_seq: dict[int, str], first_seq: int | None, last_seq: int | None,
          checkpoints: list[tuple[int, dict]], public_key, source: str = "checkpoints",
          retention: dict | None = None) -> tuple[list[str], list[str], dict]:
    """Compare the log's (seq -> hash) with signed checkpoints.
    Returns (errors, notes, summary). Errors: a bad signature, a checkpointed
    record missing from the end of the log (truncated), or present with another
    hash (rewritten)."""
    errors, notes = [], []
    kid = key_id(public_key)
    good = 0
    newest = None
    for line, cp in checkpoints:
        where = f"{source}:{line}"
        if cp.get("key_id") != kid:
            notes.append(f"{where}: checkpoint by key {cp.get('key_id')} (not the key given, "
                         f"{kid}): not checked")
            continue
        if not signature_ok(cp, public_key):
            errors.append(f"{where}: signature does not verify: the checkpoint was altered or "
                          "forged")
            continue
        seq, h = cp.get("head_seq"), cp.get("head_hash")
        if not isinstance(seq, int):
            errors.append(f"{where}: no head_seq")
            continue
        good += 1
        if newest is None or seq > newest["head_seq"]:
            newest = cp
        if last_seq is None or seq > last_seq:
            errors.append(f"{where}: TRUNCATED: checkpoint ({cp.get('reason')}, "
                          f"{_when(cp.get('time'))}) signs seq {seq}, but the log ends at "
                          f"seq {last_seq if last_seq is not None else '(no records)'}: "
                          f"records {(last_seq + 1) if last_seq is not None else 0}..{seq} "
                          "(at least) were cut off")
            continue
        if first_seq is not None and seq < first_seq:
            if retention and retention.get("removed_through") == seq:
                if retention.get("removed_last_hash") != h:
                    errors.append(f"{where}: REWRITTEN: seq {seq} (removed by retention) had "
                                  "another hash than the signed checkpoint")
            else:
                notes.append(f"{where}: seq {seq} is older than the oldest record kept "
                             f"({first_seq}, retention): not checked")
            continue
        got = records_by_seq.get(seq)
        if got is None:
            errors.append(f"{where}: record seq {seq} is missing from the log")
        elif got != h:
            errors.append(f"{where}: REWRITTEN: record seq {seq} has hash {got[:16]}..., the "
                          f"signed checkpoint says {str(h)[:16]}...: the record (or one before "
                          "it) was rewritten")
    summary = {"checkpoints": len(checkpoints), "verified": good,
               "newest_seq": newest["head_seq"] if newest else None,
               "newest_time": newest.get("time") if newest else None}
    if newest is not None and last_seq is not None and last_seq > newest["head_seq"]:
        notes.append(f"{last_seq - newest['head_seq']} record(s) after the newest checkpoint "
                     f"(seq {newest['head_seq']}) are not anchored yet")
    return errors, notes, summary


def _when(t) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(t)))
    except (TypeError, ValueError, OverflowError):
        return "?"
