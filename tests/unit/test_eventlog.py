"""The audit log: hash chain, rotation/retention, torn and corrupted records,
`corral log verify`, filters, a failing fsync. (Audit-group permissions, daemon
restarts and a full disk need root: tests/test_eventlog.py.)"""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from corral.server import eventlog as el

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


# -- a failing disk (issue 9, D6; a full one: tests/test_eventlog.py) ---------------
def ev(i=0):
    return {"kind": "net", "verdict": "deny", "i": i}


def problems(d: Path) -> list:
    return [(s.name, it.offset, it.problem) for s in el.segments(d) for it in el.scan_segment(s)
            if it.record is None]


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


def test_unusable_directory_raises_clearly(tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(el.LogUnavailable) as ei:
        el.EventLog(f / "log")
    assert str(f / "log") in str(ei.value) and "cannot be created" in str(ei.value)
