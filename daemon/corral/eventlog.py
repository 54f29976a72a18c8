"""Append-only, hash-chained audit log: msgpack records in size-rotated segments.

Layout (LOG_DIR, 0750 root:corral-audit; segments 0640 root:corral-audit)::

    audit-000000000000.msgpack    first record seq 0
    audit-000000004711.msgpack    first record seq 4711 (rotated at SEGMENT_BYTES)

A segment is a plain concatenation of msgpack maps (any msgpack reader can
read it). Every record carries

    seq   -- 0, 1, 2, ... across segments and daemon restarts
    prev  -- the previous record's hash (64 zeros for seq 0)
    hash  -- sha256(bytes.fromhex(prev) + canonical(record without "hash"))

where canonical() is msgpack of the record with every map's keys sorted. Editing,
removing, inserting or reordering a record breaks the chain at that point;
`corral log verify` reports the first broken record. (Cutting records off the
*end* of the newest segment cannot be detected by a chain alone: compare with
the daemon's "stop" record or a remote copy.)

Durability. Records are written with one unbuffered write(2) each, so a crash
of the daemon loses nothing that append() returned. Against a kernel crash or
power loss, fsync policy (FSYNC_KINDS are control-plane, always fsynced):

* records whose kind is in FSYNC_KINDS (session, policy, control, daemon, log:
  the control plane -- who started what with which policy, who changed it) are
  fsynced before append() returns;
* kernel events (net, file, dns) and their bookkeeping (rate, lost), which
  can arrive by the hundred per second, are fsynced in batches: when
  FSYNC_BATCH (default 64) are pending, or at most FSYNC_INTERVAL (default 1 s)
  after the first pending one (a flusher thread), and on close().

A record torn by a crash mid-write is detected on reading (bytes at the end of
a segment that do not decode to a whole record), reported as a warning and
skipped. On start-up the writer resumes the chain from the last good record;
if the newest segment ends in a torn record it is left as it is (evidence) and
a new segment is started, so nothing is ever appended after garbage.

Rotation and retention: a new segment starts when the current one reaches
SEGMENT_BYTES (env CORRAL_LOG_SEGMENT_BYTES, default 16 MiB); at most
KEEP_SEGMENTS (env CORRAL_LOG_KEEP_SEGMENTS, default 32) segments are kept. The
deletion of an old segment is itself logged (kind "log", op "retention", with
the last removed seq and hash), so the oldest remaining record's `prev` stays
verifiable and silent removal of old segments is detected.
"""
from __future__ import annotations

import grp
import hashlib
import io
import logging
import os
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import msgpack

log = logging.getLogger("corral.eventlog")

GENESIS = "0" * 64
SEGMENT_RE = re.compile(r"^audit-(\d{12})\.msgpack$")
FSYNC_KINDS = frozenset({"session", "policy", "control", "daemon", "log"})


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        log.warning("%s=%r is not an integer; using %d", name, os.environ.get(name), default)
        return default


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def segment_name(first_seq: int) -> str:
    return f"audit-{first_seq:012d}.msgpack"


def segments(directory: Path) -> list[Path]:
    """Segment files, oldest first."""
    d = Path(directory)
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        return []
    return [d / n for n in sorted(names) if SEGMENT_RE.match(n)]


# -- canonical form and hashing ---------------------------------------------
def _clean(v):
    """Make a value msgpack-able and stable through a round trip."""
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, (set, frozenset)):
        return sorted((_clean(x) for x in v), key=repr)
    if v is None or isinstance(v, (bool, int, float, str, bytes)):
        if isinstance(v, int) and not isinstance(v, bool) and not (-2**63 <= v < 2**64):
            return str(v)
        return v
    return str(v)


def _sorted(v):
    if isinstance(v, dict):
        return {k: _sorted(v[k]) for k in sorted(v)}
    if isinstance(v, list):
        return [_sorted(x) for x in v]
    return v


def record_hash(rec: dict) -> str:
    """The hash a record must carry: chained on rec["prev"], over everything but "hash"."""
    body = {k: v for k, v in rec.items() if k != "hash"}
    prev = rec.get("prev")
    try:
        prev_b = bytes.fromhex(prev) if isinstance(prev, str) else b""
    except ValueError:
        prev_b = prev.encode()
    h = hashlib.sha256(prev_b)
    h.update(msgpack.packb(_sorted(body), use_bin_type=True))
    return h.hexdigest()


# -- reading ------------------------------------------------------------------
@dataclass
class Item:
    """One thing found in a segment: a record, or a problem at an offset."""
    segment: Path
    offset: int
    record: dict | None = None
    problem: str = ""          # "torn" (incomplete final record) or "corrupt"
    length: int = 0


def _is_record(obj) -> bool:
    return (isinstance(obj, dict) and isinstance(obj.get("seq"), int)
            and isinstance(obj.get("hash"), str) and len(obj["hash"]) == 64
            and isinstance(obj.get("prev"), str))


def _resync(data: bytes, start: int) -> int:
    """Next offset >= start where a whole record decodes; len(data) if none."""
    bio = io.BytesIO(data)
    for i in range(start, len(data)):
        b = data[i]
        if not (0x80 <= b <= 0x8F or b in (0xDE, 0xDF)):
            continue
        bio.seek(i)
        u = msgpack.Unpacker(bio, raw=False, strict_map_key=False, read_size=4096)
        try:
            obj = u.unpack()
        except Exception:
            continue
        if _is_record(obj):
            return i
    return len(data)


def scan_segment(path: Path, data: bytes | None = None) -> Iterator[Item]:
    """Every record and every problem (torn tail, corrupt stretch) in one segment."""
    if data is None:
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            return
    pos, n = 0, len(data)
    while pos < n:
        base = pos
        u = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=0)
        u.feed(data[pos:])
        while pos < n:
            try:
                obj = u.unpack()
            except msgpack.OutOfData:
                nxt = _resync(data, pos + 1)
                if nxt < n:     # a damaged length swallowed whole records after it
                    yield Item(path, pos, problem="corrupt", length=nxt - pos)
                    pos = nxt
                    break
                yield Item(path, pos, problem="torn", length=n - pos)
                return
            except Exception:
                nxt = _resync(data, pos + 1)
                yield Item(path, pos, problem="corrupt", length=nxt - pos)
                pos = nxt
                break
            end = base + u.tell()
            if not _is_record(obj):
                stop = min(_resync(data, pos + 1), end)
                yield Item(path, pos, problem="corrupt", length=stop - pos)
                pos = stop
                break
            yield Item(path, pos, record=obj, length=end - pos)
            pos = end


def _default_warn(msg: str) -> None:
    log.warning("%s", msg)


def read_records(directory: Path, warn: Callable[[str], None] | None = None,
                 tail_ok: bool = False) -> Iterator[dict]:
    """Every readable record, oldest first. Torn or corrupt stretches are
    skipped with a warning (never an exception). tail_ok: an incomplete record
    at the very end of the newest segment is a write in progress, not a warning."""
    warn = warn or _default_warn
    segs = segments(directory)
    for i, seg in enumerate(segs):
        try:
            data = seg.read_bytes()
        except FileNotFoundError:   # removed by retention while we read
            continue
        for it in scan_segment(seg, data):
            if it.record is not None:
                yield it.record
            elif it.problem == "torn":
                if not (tail_ok and i == len(segs) - 1):
                    warn(f"{seg.name}: offset {it.offset}: incomplete final record "
                         f"({it.length} bytes, torn by a crash?) skipped")
            else:
                warn(f"{seg.name}: offset {it.offset}: {it.length} undecodable byte(s) skipped")


# -- verification --------------------------------------------------------------
@dataclass
class VerifyResult:
    ok: bool = True
    records: int = 0
    segments: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    error: dict | None = None            # {segment, offset, seq, reason}
    warnings: list[str] = field(default_factory=list)


def verify(directory: Path) -> VerifyResult:
    """Check the chain over every segment; stop at the first broken record."""
    res = VerifyResult()
    segs = segments(directory)
    res.segments = len(segs)
    prev_hash: str | None = None
    prev_seq: int | None = None
    retention: dict | None = None        # newest retention record seen
    first_rec: dict | None = None

    def fail(seg, off, seq, reason):
        res.ok = False
        res.error = {"segment": seg.name, "offset": off, "seq": seq, "reason": reason}

    for si, seg in enumerate(segs):
        m = SEGMENT_RE.match(seg.name)
        named_seq = int(m.group(1))
        first_in_seg = True
        for it in scan_segment(seg, seg.read_bytes()):
            if it.record is None:
                if it.problem == "torn":
                    res.warnings.append(f"{seg.name}: offset {it.offset}: incomplete final "
                                        f"record ({it.length} bytes) skipped (crash while writing?)")
                    continue
                fail(seg, it.offset, (prev_seq + 1) if prev_seq is not None else None,
                     f"{it.length} byte(s) that are not a log record")
                return res
            r = it.record
            seq = r.get("seq")
            if first_in_seg and seq != named_seq:
                fail(seg, it.offset, seq, f"segment named for seq {named_seq} starts at seq {seq}")
                return res
            first_in_seg = False
            if r.get("hash") != record_hash(r):
                fail(seg, it.offset, seq, "record hash mismatch: the record was altered")
                return res
            if prev_seq is None:
                first_rec = r
                if seq != 0:
                    # Older segments must have been removed by retention, and
                    # the removal must be on record (checked below).
                    pass
                elif r.get("prev") != GENESIS:
                    fail(seg, it.offset, seq, "first record does not start the chain")
                    return res
            else:
                if seq != prev_seq + 1:
                    fail(seg, it.offset, seq, f"expected seq {prev_seq + 1}: records missing or reordered")
                    return res
                if r.get("prev") != prev_hash:
                    fail(seg, it.offset, seq, "prev does not match the previous record's hash: "
                                              "a record before it was altered or removed")
                    return res
            if r.get("kind") == "log" and r.get("op") == "retention":
                retention = r
            if r.get("kind") == "log" and r.get("op") == "damaged":
                res.warnings.append(f"seq {seq}: the daemon found damaged log data at start-up "
                                    f"({r.get('target')}, {r.get('count')} bytes: {r.get('rule')})")
            prev_hash, prev_seq = r["hash"], seq
            res.records += 1
            if res.first_seq is None:
                res.first_seq = seq
            res.last_seq = seq
    if first_rec is not None and first_rec["seq"] != 0:
        seg0 = segs[0]
        ok = (retention is not None and retention.get("removed_through") == first_rec["seq"] - 1
              and retention.get("removed_last_hash") == first_rec.get("prev"))
        if not ok:
            fail(seg0, 0, first_rec["seq"], f"log starts at seq {first_rec['seq']} and no retention "
                                             "record accounts for the earlier records")
            return res
        res.warnings.append(f"records before seq {first_rec['seq']} were removed by retention "
                            f"(logged at seq {retention['seq']})")
    return res


# -- the group auditors read through ---------------------------------------------
def audit_gid(group: str) -> int:
    """gid of the audit group, created (groupadd -r) if missing; 0 if impossible."""
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        pass
    if os.geteuid() == 0:
        try:
            subprocess.run(["groupadd", "-r", group], check=True, capture_output=True, timeout=30)
            return grp.getgrnam(group).gr_gid
        except (OSError, subprocess.SubprocessError, KeyError) as e:
            log.warning("cannot create audit group %r (%s); log readable by root only", group, e)
    return 0


# -- writing ---------------------------------------------------------------------
class EventLog:
    def __init__(self, directory: Path, segment_bytes: int | None = None,
                 keep_segments: int | None = None, fsync_batch: int | None = None,
                 fsync_interval: float | None = None, group: str | None = None):
        from .config import AUDIT_GROUP
        self.dir = Path(directory)
        self.segment_bytes = segment_bytes or _env_int("CORRAL_LOG_SEGMENT_BYTES", 16 << 20)
        self.keep_segments = max(1, keep_segments or _env_int("CORRAL_LOG_KEEP_SEGMENTS", 32))
        self.fsync_batch = fsync_batch or _env_int("CORRAL_LOG_FSYNC_BATCH", 64)
        self.fsync_interval = fsync_interval or _env_float("CORRAL_LOG_FSYNC_INTERVAL", 1.0)
        self._lock = threading.Lock()
        self._gid = 0
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        if os.geteuid() == 0:
            self._gid = audit_gid(group or AUDIT_GROUP)
            os.chown(self.dir, 0, self._gid)
        os.chmod(self.dir, 0o750)
        self._fd = -1
        self._size = 0
        self._pending = 0
        self._pending_since = 0.0
        self._closed = False
        self._startup_notes: list[dict] = []
        self._seq, self._prev = self._resume()
        self._open_current()
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, name="eventlog-fsync", daemon=True)
        self._flusher.start()
        for note in self._startup_notes:
            self.append(note)

    # -- start-up: find the last good record --
    def _resume(self) -> tuple[int, str]:
        segs = segments(self.dir)
        self._cur: Path | None = None
        self._new_segment = True
        for idx in range(len(segs) - 1, -1, -1):
            seg = segs[idx]
            last = None
            torn = False
            for it in scan_segment(seg, seg.read_bytes()):
                if it.record is not None:
                    last = it.record
                    torn = False
                else:
                    torn = True
                    self._startup_notes.append({
                        "kind": "log", "op": "damaged", "verdict": "info",
                        "target": f"{seg.name}@{it.offset}", "count": it.length,
                        "rule": "incomplete record at the end of a segment (crash while writing?)"
                        if it.problem == "torn" else "undecodable bytes in a segment"})
            if last is None:
                # Empty (reused below: same name), or nothing whole in it: set it
                # aside as evidence (out of the chain) and resume from the one before.
                if seg.stat().st_size > 0:
                    aside = seg.with_name(f"{seg.name}.damaged-{int(time.time())}")
                    os.rename(seg, aside)
                    log.warning("audit log: %s holds no whole record; kept as %s", seg.name, aside.name)
                continue
            if idx == len(segs) - 1 and not torn:
                self._cur = seg      # clean tail: keep appending to it
                self._new_segment = False
            if torn or self._startup_notes:
                log.warning("audit log: damaged records after seq %d (see the 'damaged' record); "
                            "continuing the chain in a new segment", last["seq"])
            return last["seq"] + 1, last["hash"]
        return 0, GENESIS

    def _open_current(self) -> None:
        if self._new_segment or self._cur is None:
            path = self.dir / segment_name(self._seq)
            if path.exists() and path.stat().st_size > 0:
                # A segment with no whole record carries this name (crash during
                # its first write): keep it aside as evidence, never append after garbage.
                aside = path.with_name(f"{path.name}.damaged-{int(time.time())}")
                os.rename(path, aside)
                log.warning("audit log: %s holds no whole record; kept as %s", path.name, aside.name)
            self._cur = path
        fd = os.open(self._cur, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        if os.geteuid() == 0:
            os.fchown(fd, 0, self._gid)
        os.fchmod(fd, 0o640)
        self._fd = fd
        self._size = os.fstat(fd).st_size
        if self._new_segment:
            self._fsync_dir()

    def _fsync_dir(self) -> None:
        try:
            dfd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass

    # -- append --
    def _chain_write(self, rec: dict) -> None:
        """Link rec to the chain (seq, prev, hash) and write it. Caller holds the lock."""
        rec["seq"] = self._seq
        rec["prev"] = self._prev
        rec["hash"] = record_hash(rec)
        data = msgpack.packb(rec, use_bin_type=True)
        self._write_all(data)
        self._seq += 1
        self._prev = rec["hash"]
        self._size += len(data)
        self._pending += 1

    def append(self, record: dict) -> dict:
        rec = _clean(dict(record))
        rec.setdefault("time", time.time())
        for k in ("seq", "prev", "hash"):
            rec.pop(k, None)
        with self._lock:
            if self._closed:
                raise ValueError("audit log is closed")
            if self._size >= self.segment_bytes:
                self._rotate()
            self._chain_write(rec)
            if self._pending == 1:
                self._pending_since = time.monotonic()
            if rec.get("kind") in FSYNC_KINDS or self._pending >= self.fsync_batch:
                self._sync()
        return rec

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]

    def _sync(self) -> None:
        if self._pending:
            os.fsync(self._fd)
            self._pending = 0

    def _flush_loop(self) -> None:
        while not self._stop.wait(min(0.25, self.fsync_interval)):
            with self._lock:
                if (not self._closed and self._pending
                        and time.monotonic() - self._pending_since >= self.fsync_interval):
                    try:
                        self._sync()
                    except OSError as e:
                        log.error("audit log fsync failed: %s", e)

    def _rotate(self) -> None:
        """Called with the lock held: close the full segment, open the next, apply retention."""
        self._sync()
        os.close(self._fd)
        self._cur = self.dir / segment_name(self._seq)
        self._new_segment = True
        self._open_current()
        segs = segments(self.dir)
        excess = len(segs) - self.keep_segments
        for old in segs[:max(0, excess)]:
            last = None
            count = 0
            for it in scan_segment(old, old.read_bytes()):
                if it.record is not None:
                    last = it.record
                    count += 1
            old.unlink()
            note = {"kind": "log", "op": "retention", "verdict": "info", "target": old.name,
                    "count": count, "rule": f"keep {self.keep_segments} segments",
                    "time": time.time(),
                    "removed_through": last["seq"] if last else None,
                    "removed_last_hash": last["hash"] if last else None}
            self._chain_write(note)
        self._fsync_dir()
        self._sync()

    @property
    def next_seq(self) -> int:
        return self._seq

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            if self._closed:
                return
            try:
                self._sync()
            finally:
                os.close(self._fd)
                self._closed = True
