"""The audit log where it needs root: permissions for the audit group (files of
root read as another user), a daemon killed and restarted, a full disk (a tmpfs
mounted here). The log's pure logic is in unit/test_eventlog.py."""
from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import msgpack
import pytest

from corral.server import eventlog as el
from conftest import make_daemon
from unit.test_eventlog import BIN, ev, fill, problems, verify_cli


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

