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
of the daemon loses nothing that append() returned with a seq. Against a kernel crash or
power loss, fsync policy (FSYNC_KINDS are control-plane, always fsynced):

* records whose kind is in FSYNC_KINDS (session, policy, control, daemon, log:
  the control plane -- who started what with which policy, who changed it) are
  fsynced before append() returns;
* kernel events (net, file, dns) and their bookkeeping (rate, lost), which
  can arrive by the hundred per second, are fsynced in batches: when
  FSYNC_BATCH (default 64) are pending, or at most FSYNC_INTERVAL (default 1 s)
  after the first pending one (a flusher thread), and on close().

Write failures (full disk, quota, I/O error): see EventLog. In short, a
failed write is truncated away again (never a torn record mid-segment),
control-plane records raise LogUnavailable instead of being applied unlogged,
kernel events are counted and the count is logged as a kind "lost", op
"log_degraded" record as soon as the log can be written again.

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
verifiable and silent removal of old segments is detected. That record is written and
fsynced before the segment is removed (if it cannot be written, the segment
stays).
"""
from __future__ import annotations

import errno
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
# Every record written carries "schema": RECORD_SCHEMA (docs/log-schema.md); records
# written before the field existed have none (schema 0, the same fields otherwise).
RECORD_SCHEMA = 1


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


def _when(t) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(t)))
    except (TypeError, ValueError, OverflowError, OSError):
        return "?"


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
            if r.get("kind") == "lost" and r.get("op") == "log_degraded":
                res.warnings.append(
                    f"seq {seq}: the log could not be written from {_when(r.get('since'))} to "
                    f"{_when(r.get('until'))} ({r.get('rule')}): {r.get('count')} record(s) lost, "
                    f"{r.get('refused') or 0} change(s) refused")
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


def _fix_hint(code: int | None) -> str:
    """What an operator does about a write error."""
    if code in (errno.ENOSPC, None):
        return "free space there"
    if code == errno.EDQUOT:
        return "free space there or raise the disk quota"
    if code == errno.EIO:
        return "the disk reports I/O errors: check it (dmesg) or move the log (CORRAL_LOG_DIR)"
    if code == errno.EFBIG:
        return "a file size limit was hit: lower CORRAL_LOG_SEGMENT_BYTES or raise the limit"
    if code == errno.EROFS:
        return "its filesystem is read-only: remount it read-write"
    if code in (errno.EACCES, errno.EPERM):
        return "check its ownership and permissions"
    return "fix the cause"


def _err_text(e: OSError) -> str:
    return e.strerror or str(e) or type(e).__name__


class LogUnavailable(OSError):
    """A control-plane record could not be written and fsynced; nothing of it
    is on disk. The daemon must not apply the change it describes.

    errno/strerror are those of the failed write (ENOSPC, EIO, ...);
    str() is a one-line message naming the directory, the error and the fix."""

    def __init__(self, directory, code: int | None, text: str,
                 action: str = "cannot be written",
                 consequence: str = "changes are refused until it can"):
        super().__init__(code, text)
        self.directory = str(directory)
        self.message = f"audit log {directory} {action}: {text}; {_fix_hint(code)}: {consequence}"

    def __str__(self) -> str:
        return self.message


class EventLog:
    """The writer. See the module docstring; write failures:

    * No torn record is ever left mid-segment: a failed or partial write (or a
      failed fsync of a control-plane record) is cut off again with
      ftruncate(2) to the size before that record; seq/prev do not advance,
      the record simply was not written. If the truncate fails too, the
      segment is *sealed*: the partial record stays as a torn tail (evidence,
      reported by verify as any torn tail), a "log"/"damaged" record is
      queued, and the next successful write starts a new segment.
    * A control-plane record (FSYNC_KINDS) that cannot be written and fsynced
      makes append() raise LogUnavailable ("log before apply").
    * Any other record that cannot be written is counted (self.lost) and
      append() returns the record dict *without* seq/prev/hash: that is how a
      caller tells an unwritten record from a written one. Never raises.
    * The first failure puts the log into state "degraded" (one log.error
      line). While degraded, appends of kernel events only count (no
      syscalls) except once per retry_interval (0.5 s), when a
      kind "lost", op "log_degraded" record with the count is written
      (fsynced); that ends the degraded state (one log.warning line) and the
      pending record follows. retry() (the daemon's watcher) and the fsync
      flusher thread make the same attempt. status() reports the state.
    * EventLog() does not raise because the log's filesystem is full or
      failing (resuming, opening, start-up notes, or a filesystem with no free
      block at all): it starts degraded. Only a directory that cannot be
      created or given its owner/mode raises LogUnavailable.
    * close() never raises.
    """

    def __init__(self, directory: Path, segment_bytes: int | None = None,
                 keep_segments: int | None = None, fsync_batch: int | None = None,
                 fsync_interval: float | None = None, group: str | None = None,
                 retry_interval: float | None = None, checkpointer=None, on_write=None):
        from corral.config import AUDIT_GROUP
        self.dir = Path(directory)
        self.segment_bytes = segment_bytes or _env_int("CORRAL_LOG_SEGMENT_BYTES", 16 << 20)
        self.keep_segments = max(1, keep_segments or _env_int("CORRAL_LOG_KEEP_SEGMENTS", 32))
        self.fsync_batch = fsync_batch or _env_int("CORRAL_LOG_FSYNC_BATCH", 64)
        self.fsync_interval = fsync_interval or _env_float("CORRAL_LOG_FSYNC_INTERVAL", 1.0)
        self.retry_interval = retry_interval if retry_interval is not None else 0.5
        self._lock = threading.Lock()
        self._gid = 0
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o750)
            if os.geteuid() == 0:
                self._gid = audit_gid(group or AUDIT_GROUP)
                os.chown(self.dir, 0, self._gid)
            os.chmod(self.dir, 0o750)
        except OSError as e:
            raise LogUnavailable(self.dir, e.errno, _err_text(e),
                                 action="cannot be created or given owner root:"
                                        f"{group or AUDIT_GROUP} mode 0750",
                                 consequence="the daemon cannot start without it") from e
        self._fd = -1
        self._size = 0
        self._pending = 0
        self._pending_since = 0.0
        self._closed = False
        self._seq, self._prev = 0, GENESIS
        self._resumed = False
        self._cur: Path | None = None
        self._new_segment = True
        self._force_rotate = False
        self._notes: list[dict] = []      # log/damaged notes still to be written
        # Every record written (and every checkpoint) goes to on_write(obj), under the
        # lock: it must only enqueue (server/export). The checkpointer (server/
        # checkpoints.py) signs the head after rotations, session ends, every N records.
        self.on_write = on_write
        self.checkpointer = checkpointer
        self._rotated = False
        self._hook_errors = 0
        # degraded-state bookkeeping
        self._state = "ok"
        self._errno: int | None = None
        self._error: str | None = None
        self._since: float | None = None
        self._next_try = 0.0
        self.lost = 0                     # records not written in this degraded episode
        self.lost_total = 0               # ... since this EventLog was opened
        self._refused = 0                 # control-plane records refused (LogUnavailable)
        self._unsynced = 0                # written records whose fsync failed
        self._last_alarm = -1e9           # monotonic time of the last log.error line
        self._episode_logged = False
        self._quiet = 0                   # outages not logged (rate limit)
        try:
            self._ensure_ready()
            self._drain_notes()
            self._probe_space()
        except OSError as e:
            self._fail(e, "at start-up")
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, name="eventlog-fsync", daemon=True)
        self._flusher.start()

    # -- start-up: find the last good record --
    def _resume(self) -> None:
        """Set seq/prev/current segment from the last good record. Raises OSError."""
        segs = segments(self.dir)
        notes: list[dict] = []
        cur, new_segment = None, True
        seq, prev = 0, GENESIS
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
                    notes.append({
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
                cur, new_segment = seg, False      # clean tail: keep appending to it
            if torn or notes:
                log.warning("audit log: damaged records after seq %d (see the 'damaged' record); "
                            "continuing the chain in a new segment", last["seq"])
            seq, prev = last["seq"] + 1, last["hash"]
            break
        self._seq, self._prev = seq, prev
        self._cur, self._new_segment = cur, new_segment
        self._notes = notes + self._notes
        self._resumed = True

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
        try:
            if os.geteuid() == 0:
                os.fchown(fd, 0, self._gid)
            os.fchmod(fd, 0o640)
            size = os.fstat(fd).st_size
        except OSError:
            os.close(fd)
            raise
        self._fd = fd
        self._size = size
        if self._new_segment:
            self._fsync_dir()
            self._new_segment = False

    def _fsync_dir(self) -> None:
        try:
            dfd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass

    def _probe_space(self) -> None:
        """At start-up: a filesystem with no free block at all is full, even if
        nothing had to be written yet (the first record would fail)."""
        st = os.fstatvfs(self._fd)
        if st.f_blocks and st.f_bfree == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC) + " (no free block)")

    def _ensure_ready(self) -> None:
        """Chain resumed, a segment open, rotated if due. Lock held. Raises OSError."""
        if not self._resumed:
            self._resume()
        if self._fd < 0:
            self._open_current()
        if self._force_rotate or self._size >= self.segment_bytes:
            self._rotate()

    # -- the one write step --
    def _put(self, rec: dict, durable: bool) -> None:
        """Link rec to the chain and write it (fsync too if durable). On success
        rec gains seq/prev/hash; on failure (OSError raised) nothing of it stays
        in the segment (truncated back, or the segment is sealed) and rec and
        the chain state are unchanged. Lock held, segment open."""
        rec.setdefault("time", time.time())
        full = {k: v for k, v in rec.items() if k not in ("seq", "prev", "hash")}
        full.setdefault("schema", RECORD_SCHEMA)
        full["seq"] = self._seq
        full["prev"] = self._prev
        full["hash"] = record_hash(full)
        data = msgpack.packb(full, use_bin_type=True)
        old = self._size
        written = False
        try:
            self._write_all(data)
            written = True
            if durable:
                os.fsync(self._fd)
        except OSError as e:
            if written:                    # fsync failed: earlier unsynced records too
                self._unsynced += self._pending
                self._pending = 0
            self._undo(old, e)
            raise
        self._size = old + len(data)
        self._seq += 1
        self._prev = full["hash"]
        for k in ("schema", "seq", "prev", "hash"):
            rec[k] = full[k]
        if durable:
            self._pending = 0
        else:
            self._pending += 1
            if self._pending == 1:
                self._pending_since = time.monotonic()
        self._after_write(full)

    def _after_write(self, rec: dict) -> None:
        """Lock held, rec written: hand it to the exports, and sign the head when
        a checkpoint is due (once the record is fsynced: a checkpoint never signs
        what a power cut could take back). Never raises."""
        try:
            if self.on_write is not None:
                self.on_write(rec)
            cp = self.checkpointer
            if cp is None:
                return
            reason = cp.due(rec, self._rotated)
            self._rotated = False
            if reason:
                self._sign(reason)
        except OSError:
            pass                        # fsync failed: the next durable write says so
        except Exception as e:
            self._hook_errors += 1
            if self._hook_errors == 1 or self._hook_errors % 1000 == 0:
                log.error("audit log: export/checkpoint hook failed (%d time(s)): %s: %s",
                          self._hook_errors, type(e).__name__, e)

    def _sign(self, reason: str) -> dict | None:
        if self._seq == 0:
            return None
        self._sync()
        c = self.checkpointer.sign(self._seq - 1, self._prev, reason)
        if self.on_write is not None:
            self.on_write(c)
        return c

    def checkpoint(self, reason: str) -> dict | None:
        """Sign the head now (daemon start and stop). None if there is nothing to
        sign, no checkpointer, or the log cannot be synced."""
        with self._lock:
            if self.checkpointer is None or self._state != "ok" or self._fd < 0:
                return None
            try:
                return self._sign(reason)
            except OSError as e:
                self._fail(e, "fsync")
                return None

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            if n <= 0:
                raise OSError(errno.EIO, "write(2) wrote nothing")
            view = view[n:]

    def _undo(self, old: int, err: OSError) -> None:
        """Cut a failed record off again; seal the segment if that fails."""
        try:
            os.ftruncate(self._fd, old)
            self._size = old
        except OSError as terr:
            self._seal(old, err, terr)

    def _seal(self, old: int, err: OSError, terr: OSError) -> None:
        try:
            torn = os.fstat(self._fd).st_size - old
        except OSError:
            torn = None
        self._close_fd()
        self._new_segment = True          # the next write starts a new segment
        name = self._cur.name if self._cur else "?"
        self._notes.append({
            "kind": "log", "op": "damaged", "verdict": "info", "target": f"{name}@{old}",
            "count": torn,
            "rule": f"a write failed ({_err_text(err)}) and its partial record could not be "
                    f"removed ({_err_text(terr)}): segment sealed, chain continues in the next"})
        log.warning("audit log: %s sealed at offset %d (write failed: %s; truncate failed: %s); "
                    "the chain continues in a new segment", name, old, _err_text(err), _err_text(terr))

    def _drain_notes(self) -> None:
        while self._notes:
            self._put(self._notes[0], durable=True)
            self._notes.pop(0)

    def _sync(self) -> None:
        if self._pending and self._fd >= 0:
            try:
                os.fsync(self._fd)
            except OSError:
                self._unsynced += self._pending
                self._pending = 0          # do not retry this fsync; the next durable write covers it
                raise
            self._pending = 0

    # -- degraded state --
    def _fail(self, e: OSError, during: str = "") -> None:
        """Enter (or stay in) the degraded state. Lock held (or in __init__)."""
        self._errno, self._error = e.errno, _err_text(e)
        self._next_try = time.monotonic() + self.retry_interval
        if e.errno == errno.EFBIG:
            self._force_rotate = True     # a new segment starts at size 0
        now = time.monotonic()
        if self._state != "degraded":
            self._state = "degraded"
            self._since = time.time()
            self._episode_logged = False
        # One line per outage, not per record. A log that flaps (space freed a
        # record at a time) gets at most one line a minute; an outage that is
        # still on when the minute is up always gets its line.
        if not self._episode_logged and now - self._last_alarm >= 60.0:
            self._episode_logged = True
            self._last_alarm = now
            quiet = (f" ({self._quiet} short outage(s) in the last minute not logged, "
                     "see the log_degraded records)") if self._quiet else ""
            self._quiet = 0
            log.error("audit log %s cannot be written: %s%s; %s. Kernel events are counted as "
                      "lost and control-plane changes are refused until it can (retrying every "
                      "%gs)%s", self.dir, self._error, f" ({during})" if during else "",
                      _fix_hint(self._errno), self.retry_interval, quiet)

    def _unavailable(self) -> LogUnavailable:
        return LogUnavailable(self.dir, self._errno, self._error or "unknown error")

    def _count_lost(self) -> None:
        self.lost += 1
        self.lost_total += 1

    def _recover(self) -> bool:
        """Degraded: try to put the outage on record. Lock held. True when ok again."""
        self._next_try = time.monotonic() + self.retry_interval
        note = {"kind": "lost", "op": "log_degraded", "verdict": "info", "target": str(self.dir),
                "count": self.lost, "rule": f"audit log unwritable: {self._error}",
                "since": self._since, "until": time.time(),
                "refused": self._refused, "unsynced": self._unsynced}
        try:
            self._ensure_ready()
            self._put(note, durable=True)
        except OSError as e:
            self._fail(e)
            return False
        lost, refused, since = self.lost, self._refused, self._since
        self._state, self._error, self._errno, self._since = "ok", None, None, None
        self.lost = self._refused = self._unsynced = 0
        if not self._episode_logged:
            self._quiet += 1
        (log.warning if self._episode_logged else log.debug)(
            "audit log %s writable again after %.1fs: %d record(s) lost, %d change(s) refused "
            "(on record at seq %d)", self.dir, time.time() - (since or time.time()), lost, refused,
            note["seq"])
        try:
            self._drain_notes()
        except OSError as e:
            self._fail(e)
            return False
        return True

    def retry(self) -> bool:
        """If degraded, try to write the "log_degraded" record now (the daemon's
        watcher calls this about once a second). True when the log is ok."""
        with self._lock:
            if self._closed:
                return False
            if self._state == "ok":
                return True
            return self._recover()

    def status(self) -> dict:
        """State for `corral doctor` and hello (read without the lock: a slow
        fsync must not stall the caller; the values are each current)."""
        return {"state": self._state, "error": self._error, "errno": self._errno,
                "since": self._since, "lost": self.lost, "lost_total": self.lost_total,
                "refused": self._refused, "dir": str(self.dir),
                "segment": self._cur.name if self._cur else None, "next_seq": self._seq,
                "hook_errors": self._hook_errors,
                "checkpoints": self.checkpointer.status() if self.checkpointer else None}

    # -- append --
    def append(self, record: dict, must: bool | None = None) -> dict:
        """Write one record; return it with seq/prev/hash when written.

        Control-plane kinds (FSYNC_KINDS) are written and fsynced, or
        LogUnavailable is raised and nothing of the record is on disk. Other
        kinds never raise: if unwritten, the record is counted as lost and
        returned without seq/prev/hash. must=False: a control-plane record
        that only reports what already happened (a session found empty, the
        daemon starting): fsynced like the others, but counted as lost
        rather than raised when it cannot be written."""
        rec = _clean(dict(record))
        rec.setdefault("time", time.time())
        for k in ("seq", "prev", "hash"):
            rec.pop(k, None)
        durable = rec.get("kind") in FSYNC_KINDS
        refuse = durable and must is not False
        with self._lock:
            if self._closed:
                raise ValueError("audit log is closed")
            if self._state != "ok":
                # Kernel events between attempts are only counted (no syscalls);
                # a control-plane change is always worth an attempt.
                if (not refuse and time.monotonic() < self._next_try) or not self._recover():
                    if refuse:
                        self._refused += 1
                        raise self._unavailable()
                    self._count_lost()
                    return rec
            try:
                self._ensure_ready()
                self._drain_notes()
                self._put(rec, durable)
            except OSError as e:
                self._fail(e)
                if refuse:
                    self._refused += 1
                    raise self._unavailable() from e
                self._count_lost()
                return rec
            if self._pending >= self.fsync_batch:
                try:
                    self._sync()
                except OSError as e:       # written, durability unknown: "unsynced"
                    self._fail(e, "fsync")
        return rec

    def _flush_loop(self) -> None:
        while not self._stop.wait(min(0.25, self.fsync_interval, max(0.05, self.retry_interval))):
            with self._lock:
                if self._closed:
                    return
                if self._state != "ok":
                    if time.monotonic() >= self._next_try:
                        self._recover()
                    continue
                if self._pending and time.monotonic() - self._pending_since >= self.fsync_interval:
                    try:
                        self._sync()
                    except OSError as e:
                        self._fail(e, "fsync")

    def _close_fd(self) -> None:
        if self._fd >= 0:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = -1

    def _rotate(self) -> None:
        """Lock held: close the full segment, open the next, apply retention.
        Raises OSError; every step can be repeated by the next attempt."""
        self._sync()
        self._close_fd()
        self._cur = None
        self._new_segment = True
        self._open_current()
        self._force_rotate = False
        self._rotated = True            # the next record written is checkpointed
        segs = segments(self.dir)
        excess = len(segs) - self.keep_segments
        for old in segs[:max(0, excess)]:
            if old == self._cur:
                break
            last = None
            count = 0
            for it in scan_segment(old, old.read_bytes()):
                if it.record is not None:
                    last = it.record
                    count += 1
            # On record (fsynced) before it is gone: a failure leaves it in place.
            note = {"kind": "log", "op": "retention", "verdict": "info", "target": old.name,
                    "count": count, "rule": f"keep {self.keep_segments} segments",
                    "time": time.time(),
                    "removed_through": last["seq"] if last else None,
                    "removed_last_hash": last["hash"] if last else None}
            self._put(note, durable=True)
            try:
                old.unlink()
            except FileNotFoundError:
                pass
            except OSError as e:
                log.warning("audit log: cannot remove %s: %s", old.name, _err_text(e))
        self._fsync_dir()

    @property
    def next_seq(self) -> int:
        return self._seq

    def close(self) -> None:
        """Sync and close; never raises (a failure is logged once)."""
        self._stop.set()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                if self._state != "ok":
                    self._recover()
                if self._state != "ok":
                    log.error("audit log %s closed while unwritable (%s): %d record(s) lost and "
                              "%d change(s) refused since %s are not on record", self.dir,
                              self._error, self.lost, self._refused,
                              time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self._since or 0)))
                else:
                    try:
                        self._sync()
                    except OSError as e:
                        log.error("audit log %s: final fsync failed: %s", self.dir, _err_text(e))
            except Exception as e:     # never raise from close
                log.error("audit log %s: error while closing: %s", self.dir, e)
            finally:
                self._close_fd()
