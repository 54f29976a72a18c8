"""The audit log: hash chain, rotation/retention, torn and corrupted records,
`corral log verify`, filters, permissions for the audit group, daemon restarts."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgpack
import pytest

from corral.server import eventlog as el
from conftest import make_daemon

BIN = Path(sys.executable).parent


def corral(*args, **kw):
    return subprocess.run([str(BIN / "corral"), *args], capture_output=True, text=True, timeout=60, **kw)


def fill(d: Path, n: int, **kw) -> None:
    log = el.EventLog(d, **kw)
    for i in range(n):
        log.append({"kind": "net", "op": "connect", "verdict": "deny", "session": f"s{i % 3}",
                    "target": f"192.0.2.{i % 250}:{1000 + i}", "rule": "default-deny", "pid": 100 + i})
    log.close()


def verify_cli(d: Path):
    return corral("log", "verify", "--dir", str(d))


def test_chain_fields_and_verify(tmp_path):
    d = tmp_path / "log"
    fill(d, 20)
    recs = list(el.read_records(d))
    assert [r["seq"] for r in recs] == list(range(20))
    assert recs[0]["prev"] == el.GENESIS
    for a, b in zip(recs, recs[1:]):
        assert b["prev"] == a["hash"]
    assert all(r["hash"] == el.record_hash(r) for r in recs)
    p = verify_cli(d)
    assert p.returncode == 0 and "hash chain intact" in p.stdout, p.stdout + p.stderr


def test_append_returns_stored_record(tmp_path):
    log = el.EventLog(tmp_path / "log")
    r = log.append({"kind": "x", "set": {2, 1}, "path": tmp_path, "tuple": (1, 2)})
    log.close()
    assert r == list(el.read_records(tmp_path / "log"))[0]
    assert r["set"] == [1, 2] and r["tuple"] == [1, 2] and r["path"] == str(tmp_path)


def test_rotation_and_retention_are_verifiable(tmp_path):
    d = tmp_path / "log"
    fill(d, 300, segment_bytes=4096, keep_segments=4)
    segs = el.segments(d)
    assert len(segs) == 4
    recs = list(el.read_records(d))
    first = recs[0]["seq"]
    assert first > 0                         # older segments were removed
    ret = [r for r in recs if r.get("kind") == "log" and r.get("op") == "retention"]
    assert ret and ret[-1]["removed_through"] == first - 1
    p = verify_cli(d)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "removed by retention" in p.stderr
    # Removing the oldest remaining segment by hand is not covered by a retention record.
    segs[0].unlink()
    p = verify_cli(d)
    assert p.returncode == 1 and "no retention record" in p.stdout, p.stdout


def test_resume_chain_across_restart_and_segments(tmp_path):
    d = tmp_path / "log"
    fill(d, 50, segment_bytes=2048)
    fill(d, 50, segment_bytes=2048)
    recs = list(el.read_records(d))
    assert [r["seq"] for r in recs] == list(range(100))
    assert el.verify(d).ok


def test_corrupted_record_is_reported_with_segment_offset_seq(tmp_path):
    d = tmp_path / "log"
    fill(d, 60, segment_bytes=2048)
    seg = el.segments(d)[1]
    data = bytearray(seg.read_bytes())
    i = data.index(b"192.0.2.")
    data[i] = ord("9")                      # 192 -> 992 in one record's target
    seg.write_bytes(bytes(data))
    items = list(el.scan_segment(seg))
    bad = next(it for it in items if it.record and it.offset <= i < it.offset + it.length)
    p = verify_cli(d)
    assert p.returncode == 1
    assert f"segment {seg.name} offset {bad.offset} seq {bad.record['seq']}" in p.stdout, p.stdout
    assert "altered" in p.stdout
    # The reader still returns every record (an auditor can look at the bad one).
    assert len(list(el.read_records(d))) == 60


def test_structurally_corrupt_bytes_are_skipped_not_fatal(tmp_path):
    d = tmp_path / "log"
    fill(d, 10)
    seg = el.segments(d)[0]
    items = list(el.scan_segment(seg))
    data = bytearray(seg.read_bytes())
    off = items[4].offset
    data[off:off + 3] = b"\xc1\xc1\xc1"     # 0xc1 is never valid msgpack
    seg.write_bytes(bytes(data))
    warns = []
    recs = list(el.read_records(d, warn=warns.append))
    assert len(recs) == 9 and [r["seq"] for r in recs] == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    assert warns and "undecodable" in warns[0]
    res = el.verify(d)
    assert not res.ok and res.error["seq"] == 4 and res.error["offset"] == off


def test_deleted_record_breaks_the_chain(tmp_path):
    d = tmp_path / "log"
    fill(d, 10)
    seg = el.segments(d)[0]
    items = list(el.scan_segment(seg))
    data = seg.read_bytes()
    cut = items[5]
    seg.write_bytes(data[:cut.offset] + data[cut.offset + cut.length:])
    res = el.verify(d)
    assert not res.ok and res.error["seq"] == 6 and "missing" in res.error["reason"]


def test_torn_final_record_is_skipped_and_chain_resumes(tmp_path):
    d = tmp_path / "log"
    fill(d, 10)
    seg = el.segments(d)[0]
    data = seg.read_bytes()
    last = list(el.scan_segment(seg))[-1]
    seg.write_bytes(data[:last.offset + last.length // 2])       # crash mid-write of seq 9
    warns = []
    recs = list(el.read_records(d, warn=warns.append))
    assert [r["seq"] for r in recs] == list(range(9))
    assert warns and "incomplete final record" in warns[0]
    p = verify_cli(d)
    assert p.returncode == 0 and "incomplete final record" in p.stderr, p.stdout + p.stderr
    # The next writer leaves the damaged segment alone and continues the chain.
    log = el.EventLog(d)
    r = log.append({"kind": "daemon", "op": "start"})
    log.close()
    assert len(el.segments(d)) == 2
    recs = list(el.read_records(d, warn=lambda m: None))
    assert r["seq"] == recs[-1]["seq"] and r["prev"] == recs[-2]["hash"]
    assert any(x.get("op") == "damaged" for x in recs)
    assert el.verify(d).ok


def test_truncated_older_segment_breaks_the_chain(tmp_path):
    d = tmp_path / "log"
    fill(d, 60, segment_bytes=2048)
    seg = el.segments(d)[0]
    data = seg.read_bytes()
    seg.write_bytes(data[:len(data) - 10])
    p = verify_cli(d)
    assert p.returncode == 1, p.stdout
    nxt = el.segments(d)[1]
    assert f"segment {nxt.name} offset 0" in p.stdout, p.stdout


def test_fsync_policy(tmp_path, monkeypatch):
    calls = []
    real = os.fsync
    monkeypatch.setattr(el.os, "fsync", lambda fd: (calls.append(fd), real(fd)))
    log = el.EventLog(tmp_path / "log", fsync_batch=5, fsync_interval=0.5)
    calls.clear()
    for _ in range(3):
        log.append({"kind": "net", "verdict": "deny"})
    assert calls == []                       # kernel events wait for the batch / interval
    log.append({"kind": "session", "op": "start"})
    assert len(calls) == 1                   # control-plane records are synced at once
    for _ in range(5):
        log.append({"kind": "file", "verdict": "deny"})
    assert len(calls) == 2                   # a full batch
    log.append({"kind": "net", "verdict": "deny"})
    deadline = time.monotonic() + 3
    while len(calls) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(calls) == 3                   # the interval flusher
    log.close()


def test_log_filters_and_json(tmp_path):
    d = tmp_path / "log"
    log = el.EventLog(d)
    now = time.time()
    log.append({"kind": "net", "verdict": "deny", "session": "aaa", "time": now - 3600, "target": "old"})
    log.append({"kind": "net", "verdict": "allow", "session": "aaa", "time": now - 5, "target": "n1"})
    log.append({"kind": "file", "verdict": "deny", "session": "bbb", "time": now - 5, "target": "f1"})
    log.append({"kind": "rate", "verdict": "info", "session": "aaa", "time": now - 1, "count": 77})
    log.close()

    def q(*a):
        p = corral("log", "--dir", str(d), "--json", *a)
        assert p.returncode == 0, p.stderr
        return [json.loads(x)["target"] if "target" in json.loads(x) else json.loads(x)["count"]
                for x in p.stdout.splitlines()]
    assert q("--session", "aaa") == ["old", "n1", 77]
    assert q("--since", "10m") == ["n1", "f1", 77]
    assert q("--until", "30m") == ["old"]
    assert q("--kind", "file") == ["f1"]
    assert q("--verdict", "deny", "--since", "10m") == ["f1"]
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now - 600))
    assert q("--since", iso, "--kind", "net") == ["n1"]
    p = corral("log", "--dir", str(d), "--kind", "rate")
    assert p.returncode == 0 and "77 event(s) suppressed" in p.stdout
    p = corral("log", "--dir", str(d), "--since", "yesterday-ish")
    assert p.returncode == 2 and "bad time" in p.stderr


def test_follow_prints_new_records_across_rotation(tmp_path):
    d = tmp_path / "log"
    log = el.EventLog(d, segment_bytes=600)
    log.append({"kind": "net", "target": "before"})
    proc = subprocess.Popen([str(BIN / "corral"), "log", "--dir", str(d), "--json", "--follow"],
                            stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        for i in range(20):
            log.append({"kind": "net", "target": f"t{i}", "pad": "x" * 50})
        got = []
        deadline = time.monotonic() + 10
        while len(got) < 21 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line:
                got.append(json.loads(line)["target"])
    finally:
        proc.kill()
        proc.wait()
        log.close()
    assert len(el.segments(d)) > 1
    assert got == ["before"] + [f"t{i}" for i in range(20)]


def _as(uid, gids):
    def pre():
        os.setgroups(gids)
        os.setgid(65534)
        os.setuid(uid)
    return pre


def test_audit_group_can_read_others_cannot(tmp_path):
    base = Path(tempfile.mkdtemp(prefix="corral-audit-"))
    os.chmod(base, 0o755)
    d = base / "log"
    fill(d, 5)
    import grp
    gid = grp.getgrnam("corral-audit").gr_gid
    st = d.stat()
    assert st.st_gid == gid and (st.st_mode & 0o777) == 0o750
    for s in el.segments(d):
        st = s.stat()
        assert st.st_gid == gid and (st.st_mode & 0o777) == 0o640 and st.st_uid == 0
    env = dict(os.environ, HOME="/")
    ok = subprocess.run([str(BIN / "corral"), "log", "--dir", str(d), "--json"], capture_output=True,
                        text=True, preexec_fn=_as(65534, [gid]), env=env, cwd="/")
    assert ok.returncode == 0 and len(ok.stdout.splitlines()) == 5, ok.stderr
    ok = subprocess.run([str(BIN / "corral"), "log", "verify", "--dir", str(d)], capture_output=True,
                        text=True, preexec_fn=_as(65534, [gid]), env=env, cwd="/")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    no = subprocess.run([str(BIN / "corral"), "log", "--dir", str(d)], capture_output=True,
                        text=True, preexec_fn=_as(65534, []), env=env, cwd="/")
    assert no.returncode == 1 and "permission denied" in no.stderr and "corral-audit" in no.stderr
    # and the group cannot write
    w = subprocess.run(["sh", "-c", f"echo x >> {el.segments(d)[0]}"], capture_output=True,
                       preexec_fn=_as(65534, [gid]))
    assert w.returncode != 0


def test_daemon_log_verifies_after_crash_and_restart():
    """A SIGKILLed daemon with a torn record: the restarted daemon continues the chain."""
    d = make_daemon("corral-logtest", extra_args=["--no-dns"],
                    extra_env={"CORRAL_LOG_SEGMENT_BYTES": "3000", "CORRAL_LOG_KEEP_SEGMENTS": "3"})
    try:
        d.start()
        with d.client() as c:
            c.call("hello")
        d.wait_record(lambda r: r.get("kind") == "daemon" and r.get("op") == "start")
        d.stop(signal.SIGKILL)
        seg = el.segments(d.log_dir)[-1]
        with open(seg, "ab") as f:           # a record cut short by the crash
            f.write(msgpack.packb({"kind": "net", "seq": 99999, "prev": "0" * 64,
                                   "hash": "0" * 64, "target": "x" * 40})[:30])
        before = list(el.read_records(d.log_dir, warn=lambda m: None))
        d.start()
        rec = d.wait_record(lambda r: r.get("kind") == "daemon" and r.get("op") == "start"
                            and r["seq"] > before[-1]["seq"])
        recs = list(el.read_records(d.log_dir, warn=lambda m: None))
        assert [r["seq"] for r in recs] == list(range(len(recs)))
        assert any(r.get("op") == "damaged" for r in recs)
        assert rec["seq"] > before[-1]["seq"]
        p = d.corral("log", "verify")
        assert p.returncode == 0, p.stdout + p.stderr
        assert "incomplete final record" in p.stderr
        # The daemon honours the rotation/retention settings from its environment.
        for _ in range(8):
            assert d.corral("run", "--no-net", "--", "true").returncode == 0
        d.wait_record(lambda r: r.get("kind") == "log" and r.get("op") == "retention")
        assert len(el.segments(d.log_dir)) == 3
        p = d.corral("log", "verify")
        assert p.returncode == 0 and "removed by retention" in p.stderr, p.stdout + p.stderr
    finally:
        d.cleanup()


# -- a full disk (issue 9, D6) -----------------------------------------------------
import errno
import logging


class SmallFs:
    """A 256 KiB tmpfs of our own that can be filled and freed."""

    def __init__(self, root: Path):
        self.root = root
        self.filler = root / "filler"

    def fill(self) -> int:
        n = 0
        with open(self.filler, "ab", buffering=0) as f:
            for chunk in (65536, 4096, 512, 1):
                try:
                    while True:
                        n += f.write(b"\0" * chunk)
                except OSError as e:
                    assert e.errno == errno.ENOSPC
        assert os.statvfs(self.root).f_bfree == 0
        return n

    def free(self) -> None:
        self.filler.unlink()


@pytest.fixture
def smallfs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs", str(mnt)], check=True)
    try:
        yield SmallFs(mnt)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def ev(i=0):
    return {"kind": "net", "verdict": "deny", "i": i}


def problems(d: Path) -> list:
    return [(s.name, it.offset, it.problem) for s in el.segments(d) for it in el.scan_segment(s)
            if it.record is None]


def exhaust(log, limit=5000) -> None:
    """On a full fs: append kernel events (and let the log recover into the
    page slack) until not even the log_degraded record fits any more."""
    for i in range(limit):
        if log.status()["state"] == "degraded" and not log.retry():
            return
        r = log.append(ev(i))
        assert ("seq" in r) == (log.status()["state"] == "ok")   # unwritten: no seq/hash
    raise AssertionError("never degraded")


def test_disk_fills_mid_stream_no_torn_bytes_and_lost_count(smallfs, caplog):
    d = smallfs.root / "log"
    log = el.EventLog(d, segment_bytes=16384, keep_segments=64, retry_interval=0.2)
    appended = 0
    for i in range(100):
        log.append(ev(i))
        appended += 1
    smallfs.fill()
    for i in range(900):                  # the slack of the last page, then ENOSPC
        log.append(ev(i))
        appended += 1
        if i % 100 == 0:
            time.sleep(0.25)              # let retries (throttled) happen while full
    st = log.status()
    assert st["state"] == "degraded" and "No space left" in st["error"] and st["lost"] > 0
    assert st["since"] and st["dir"] == str(d)
    assert problems(d) == []              # a failed write was cut off again
    assert el.verify(d).ok
    lost_while_full = st["lost"]
    smallfs.free()
    r = log.append(ev(-1))                # within retry_interval of the last attempt: counted
    appended += 1
    assert "seq" not in r
    time.sleep(0.25)
    r = log.append(ev(-2))                # retried: the outage goes on record, then this
    appended += 1
    assert "seq" in r and log.status()["state"] == "ok" and log.status()["lost"] == 0
    log.close()
    recs = list(el.read_records(d))
    degraded = [x for x in recs if x.get("op") == "log_degraded"]
    events = [x for x in recs if x["kind"] == "net"]
    assert degraded and degraded[-1]["kind"] == "lost" and degraded[-1]["target"] == str(d)
    assert "No space left on device" in degraded[-1]["rule"]
    assert degraded[-1]["since"] < degraded[-1]["until"]
    assert degraded[-1]["count"] >= lost_while_full
    assert recs[-1]["hash"] == r["hash"] and recs[-2] == degraded[-1]
    assert len(events) + sum(x["count"] for x in degraded) == appended
    assert problems(d) == []
    res = el.verify(d)
    assert res.ok and any("could not be written" in w for w in res.warnings), res.warnings
    assert [x["seq"] for x in recs] == list(range(len(recs)))


def test_control_record_on_full_disk_raises_and_leaves_nothing(smallfs):
    d = smallfs.root / "log"
    log = el.EventLog(d, retry_interval=0.1)
    log.append({"kind": "session", "op": "start"})
    smallfs.fill()
    seg = el.segments(d)[-1]
    before = seg.read_bytes()
    seq = log.next_seq
    # state ok, a record larger than the page slack: a real partial write, cut off
    with pytest.raises(el.LogUnavailable) as ei:
        log.append({"kind": "policy", "op": "update", "policy": "x" * 6000})
    e = ei.value
    assert isinstance(e, OSError) and e.errno == errno.ENOSPC
    assert str(d) in str(e) and "No space left on device" in str(e) and "free space there" in str(e)
    assert seg.read_bytes() == before and log.next_seq == seq
    # degraded, the page slack used up: a control record is refused again
    exhaust(log)
    seg = el.segments(d)[-1]
    before = seg.read_bytes()
    seq = log.next_seq
    refused = log.status()["refused"]
    for _ in range(3):
        with pytest.raises(el.LogUnavailable):
            log.append({"kind": "control", "op": "x"})
    assert seg.read_bytes() == before and log.next_seq == seq
    assert log.status()["refused"] == refused + 3
    lost = log.status()["lost"]
    smallfs.free()
    r = log.append({"kind": "control", "op": "after"})
    recs = list(el.read_records(d))
    note = recs[-2]
    assert note["op"] == "log_degraded" and note["seq"] == seq and r["seq"] == seq + 1
    assert note["refused"] == refused + 3 and note["count"] == lost
    log.close()
    assert el.verify(d).ok


def test_start_on_full_disk_new_segment(smallfs):
    d = smallfs.root / "log"
    d.mkdir()
    smallfs.fill()
    log = el.EventLog(d, retry_interval=0.1)         # creates segment 0 on a full fs
    st = log.status()
    assert st["state"] == "degraded" and "No space left" in st["error"]
    assert log.append(ev()).get("seq") is None
    with pytest.raises(el.LogUnavailable):
        log.append({"kind": "daemon", "op": "start"})
    assert log.retry() is False
    smallfs.free()
    assert log.retry() is True and log.status()["state"] == "ok"
    log.append({"kind": "daemon", "op": "start"})
    log.close()
    log = el.EventLog(d)
    log.append({"kind": "daemon", "op": "restart"})
    log.close()
    recs = list(el.read_records(d))
    assert recs[0]["op"] == "log_degraded" and recs[0]["count"] == 1 and recs[0]["refused"] == 1
    assert [x.get("op") for x in recs] == ["log_degraded", "start", "restart"]
    assert el.verify(d).ok


def test_start_on_full_disk_with_torn_tail(smallfs):
    """The newest segment is torn: a new segment and a 'damaged' note are needed."""
    d = smallfs.root / "log"
    fill(d, 10)
    seg = el.segments(d)[0]
    last = list(el.scan_segment(seg))[-1]
    seg.write_bytes(seg.read_bytes()[:last.offset + last.length // 2])
    smallfs.fill()
    log = el.EventLog(d, retry_interval=0.1)
    assert log.status()["state"] == "degraded"
    assert len(el.segments(d)) == 2 and el.segments(d)[1].stat().st_size == 0
    log.close()                                        # never raises, still full
    log = el.EventLog(d, retry_interval=0.1)
    assert log.status()["state"] == "degraded"
    smallfs.free()
    assert log.retry()
    log.close()
    recs = list(el.read_records(d, warn=lambda m: None))
    assert [x["seq"] for x in recs] == list(range(11))
    assert [x.get("op") for x in recs[-2:]] == ["log_degraded", "damaged"]
    res = el.verify(d)
    assert res.ok and any("incomplete final record" in w for w in res.warnings)


def test_degraded_logs_one_line_not_one_per_record(smallfs, caplog):
    d = smallfs.root / "log"
    log = el.EventLog(d, retry_interval=0.05)
    smallfs.fill()
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="corral.eventlog"):
        t0 = time.monotonic()
        for i in range(500):
            log.append(ev(i))
            if i % 50 == 0:
                time.sleep(0.06)           # retries happen (and fail) in between
        dt = time.monotonic() - t0
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR and str(d) in r.getMessage()]
        assert 1 <= len(errors) <= 2, [r.getMessage() for r in errors]
        assert all(r.exc_info is None for r in caplog.records)
        assert "cannot be written: No space left on device" in errors[0].getMessage()
        assert str(d) in errors[0].getMessage()
        assert log.status()["lost"] + sum(1 for r in el.read_records(d) if r["kind"] == "net") == 500
        smallfs.free()
        assert log.retry()
        warns = [r.getMessage() for r in caplog.records
                 if r.levelno == logging.WARNING and str(d) in r.getMessage()]
        assert len(warns) == 1 and "writable again" in warns[0] and "record(s) lost" in warns[0]
        log.close()
    assert dt < 5


def test_sealed_segment_when_truncate_fails(smallfs, monkeypatch):
    """The write fails for real (full tmpfs); ftruncate is made to fail (tmpfs
    never refuses it): the partial record stays as a torn tail, the segment is
    sealed and the chain continues in a new segment."""
    d = smallfs.root / "log"
    log = el.EventLog(d, retry_interval=0.05)
    for i in range(5):
        log.append(ev(i))
    smallfs.fill()

    def no_truncate(fd, size):
        raise OSError(errno.EIO, os.strerror(errno.EIO))
    monkeypatch.setattr(el.os, "ftruncate", no_truncate)
    r = log.append({"kind": "net", "verdict": "deny", "pad": "y" * 6000})   # partial write
    assert "seq" not in r and log.status()["state"] == "degraded"
    monkeypatch.undo()
    probs = problems(d)
    assert probs and probs[0][2] == "torn" and len(probs) == 1
    smallfs.free()
    time.sleep(0.06)
    r = log.append(ev(99))
    log.close()
    segs = el.segments(d)
    assert len(segs) == 2 and segs[1].name == el.segment_name(5)
    recs = list(el.read_records(d, warn=lambda m: None))
    assert [x["seq"] for x in recs] == list(range(8))
    assert [x.get("op") for x in recs[5:8]] == ["log_degraded", "damaged", None]
    assert recs[-1]["hash"] == r["hash"] and recs[5]["count"] == 1
    res = el.verify(d)
    assert res.ok and any("incomplete final record" in w for w in res.warnings), res
    p = verify_cli(d)
    assert p.returncode == 0 and "hash chain intact" in p.stdout, p.stdout + p.stderr
    log = el.EventLog(d)                  # and across a restart
    log.append({"kind": "daemon", "op": "start"})
    log.close()
    assert el.verify(d).ok and len(el.segments(d)) == 2


def test_fsync_failure_control_record_and_flusher(tmp_path, monkeypatch):
    """fsync cannot be made to fail for real here: it is replaced by one that
    raises EIO. A control record is cut off again; a batch fsync failure
    degrades the log; both recover."""
    d = tmp_path / "log"
    log = el.EventLog(d, fsync_interval=0.1, retry_interval=0.05)
    log.append({"kind": "session", "op": "start"})
    real = os.fsync
    monkeypatch.setattr(el.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "Input/output error")))
    seg = el.segments(d)[0]
    size = seg.stat().st_size
    with pytest.raises(el.LogUnavailable) as ei:
        log.append({"kind": "session", "op": "end"})
    assert "Input/output error" in str(ei.value) and "dmesg" in str(ei.value)
    assert seg.stat().st_size == size
    monkeypatch.setattr(el.os, "fsync", real)
    assert log.retry()
    log.append(ev())
    monkeypatch.setattr(el.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "Input/output error")))
    deadline = time.monotonic() + 3
    while log.status()["state"] == "ok" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert log.status()["state"] == "degraded"           # the flusher's fsync failed
    monkeypatch.setattr(el.os, "fsync", real)
    deadline = time.monotonic() + 3
    while log.status()["state"] != "ok" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert log.status()["state"] == "ok"                 # the flusher recovered it
    log.close()
    recs = list(el.read_records(d))
    notes = [x for x in recs if x.get("op") == "log_degraded"]
    assert len(notes) == 2 and notes[1]["unsynced"] == 1 and notes[0]["refused"] == 1
    assert el.verify(d).ok


def test_close_never_raises_on_full_disk(smallfs, caplog):
    d = smallfs.root / "log"
    log = el.EventLog(d)
    smallfs.fill()
    exhaust(log)
    with caplog.at_level(logging.ERROR, logger="corral.eventlog"):
        caplog.clear()
        log.close()
        log.close()
    assert len(caplog.records) == 1 and "closed while unwritable" in caplog.records[0].getMessage()
    assert el.verify(d).ok and problems(d) == []


def test_unusable_directory_raises_clearly(tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(el.LogUnavailable) as ei:
        el.EventLog(f / "log")
    assert str(f / "log") in str(ei.value) and "cannot be created" in str(ei.value)
