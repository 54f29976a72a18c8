"""Export of the audit log (server/export): the JSON-lines file read back and checked
against the chain, rotation of the file, back-pressure and failures counted, the
journald native protocol against a stand-in socket (datagram and memfd)."""
from __future__ import annotations

import array
import json
import os
import socket
import threading
import time

import pytest


from corral.server import eventlog as el
from corral.server.export import Export, Exports
from corral.server.export import journald as J
from corral.server.export.jsonl import JsonlSink
from unit.test_eventlog import corral


def _wait(pred, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return False


def test_jsonl_export_is_the_log(tmp_path):
    path = tmp_path / "export.jsonl"
    exp = Exports([Export(JsonlSink(path))])
    log = el.EventLog(tmp_path / "log", on_write=exp.on_write, segment_bytes=2000)
    for i in range(40):
        log.append({"kind": "net", "op": "connect", "verdict": "deny", "session": "s1",
                    "session_name": "job", "labels": {"team": "infra"},
                    "target": f"192.0.2.1:{i}", "rule": "default-deny"})
    log.close()
    exp.close()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    # The same objects `corral log --json` prints, including the log's own records
    # (retention at rotation), in order.
    shown = corral("log", "--json", "--dir", str(tmp_path / "log"))
    assert shown.returncode == 0, shown.stderr
    kept = [json.loads(x) for x in shown.stdout.splitlines()]
    assert lines[-len(kept):] == kept
    assert [r["seq"] for r in lines] == list(range(len(lines)))
    for a, b in zip(lines, lines[1:]):
        assert b["prev"] == a["hash"]
    assert all(r["hash"] == el.record_hash(r) and r["schema"] == el.RECORD_SCHEMA for r in lines)
    assert all(r["labels"] == {"team": "infra"} for r in lines if r["kind"] == "net")


def test_jsonl_reopens_a_moved_file(tmp_path):
    path = tmp_path / "export.jsonl"
    sink = JsonlSink(path)
    sink.write_batch([{"seq": 0}])
    os.rename(path, tmp_path / "export.jsonl.1")          # logrotate's create mode
    sink.write_batch([{"seq": 1}])
    sink.close()
    assert json.loads((tmp_path / "export.jsonl.1").read_text()) == {"seq": 0}
    assert json.loads(path.read_text()) == {"seq": 1} and sink.reopened == 1


class _Stuck:
    name = "stuck"

    def __init__(self):
        self.go = threading.Event()
        self.got = []

    def write_batch(self, objs):
        self.go.wait(10)
        self.got += objs

    def close(self):
        pass


def test_backpressure_is_counted_and_reported(tmp_path):
    sink = _Stuck()
    e = Export(sink, queue_size=16)
    exp = Exports([e])
    for i in range(100):
        exp.on_write({"seq": i})
    assert e.dropped >= 100 - 16 - 1          # one batch may sit in the stuck sink
    recs = exp.unreported()
    assert recs and recs[0]["kind"] == "lost" and recs[0]["op"] == "export_backpressure"
    assert recs[0]["count"] == e.dropped and recs[0]["target"] == "stuck"
    assert exp.unreported() == []             # reported once
    sink.go.set()
    assert _wait(lambda: e.sent + e.dropped == 100)
    assert e.status()["dropped"] == e.dropped and len(sink.got) == e.sent
    exp.close()


class _Broken:
    name = "broken"

    def write_batch(self, objs):
        raise OSError(28, "No space left on device")

    def close(self):
        pass


def test_failed_writes_are_counted():
    e = Export(_Broken(), queue_size=64)
    exp = Exports([e])
    for i in range(5):
        exp.on_write({"seq": i})
    assert _wait(lambda: e.failed == 5)
    recs = exp.unreported()
    assert recs[0]["op"] == "export_failed" and recs[0]["count"] == 5
    assert "No space left" in recs[0]["rule"]
    exp.close()


def test_journald_fields_and_encoding():
    rec = {"schema": 1, "seq": 7, "prev": "a" * 64, "hash": "b" * 64, "kind": "net",
           "op": "connect", "verdict": "deny", "session": "s1", "session_name": "job",
           "labels": {"team": "infra", "ci.run-id": "42"}, "target": "192.0.2.1:80",
           "rule": "line one\nline two", "pid": 12, "uid": 0}
    pairs = J.fields(rec)
    d = dict(J.decode(J.encode(pairs)))
    assert d["PRIORITY"] == "4" and d["SYSLOG_IDENTIFIER"] == "corrald"
    assert d["CORRAL_SEQ"] == "7" and d["CORRAL_HASH"] == "b" * 64 and d["CORRAL_KIND"] == "net"
    assert d["CORRAL_SESSION_NAME"] == "job" and d["CORRAL_LABEL_TEAM"] == "infra"
    assert d["CORRAL_LABEL_CI_RUN_ID"] == "42"
    assert d["CORRAL_RULE"] == "line one\nline two"            # the binary-safe form
    assert json.loads(d["CORRAL_RECORD"]) == rec
    assert "net/connect deny session s1 (job)" in d["MESSAGE"]


def _standin(tmp_path):
    path = tmp_path / "journal.socket"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    s.settimeout(5)
    return s, path


def _recv(s):
    data, anc, _, _ = s.recvmsg(1 << 20, socket.CMSG_SPACE(4))
    for level, typ, raw in anc:
        if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
            fd = array.array("i", raw[:4])[0]
            try:
                return os.pread(fd, 1 << 24, 0), True
            finally:
                os.close(fd)
    return data, False


def test_journald_sink_against_a_standin(tmp_path):
    s, path = _standin(tmp_path)
    sink = J.JournaldSink(path)
    try:
        sink.write_batch([{"seq": 1, "kind": "session", "op": "start", "verdict": "info"}])
        data, via_fd = _recv(s)
        assert not via_fd and dict(J.decode(data))["CORRAL_OP"] == "start"
        big = {"seq": 2, "kind": "session", "op": "start", "policy": {"x": "y" * 400000}}
        sink.write_batch([big])                # beyond a datagram: a sealed memfd
        data, via_fd = _recv(s)
        assert via_fd and sink.via_memfd == 1
        assert json.loads(dict(J.decode(data))["CORRAL_RECORD"]) == big
    finally:
        sink.close()
        s.close()


def test_journald_availability(tmp_path, monkeypatch):
    monkeypatch.setenv("CORRAL_JOURNAL_SOCKET", str(tmp_path / "none"))
    ok, why = J.available()
    assert not ok and "journald is not running" in why
    s, path = _standin(tmp_path)
    monkeypatch.setenv("CORRAL_JOURNAL_SOCKET", str(path))
    assert J.available()[0]
    s.close()


def _export_with_checkpoints(tmp_path, n=30):
    from corral.server.checkpoints import Checkpointer
    path = tmp_path / "export.jsonl"
    exp = Exports([Export(JsonlSink(path))])
    cp = Checkpointer(tmp_path / "etc/checkpoint.key", None, 10, str(tmp_path / "log"))
    log = el.EventLog(tmp_path / "log", on_write=exp.on_write, checkpointer=cp)
    for i in range(n):
        log.append({"kind": "net", "op": "connect", "verdict": "deny", "target": f"192.0.2.1:{i}",
                    "labels": {"team": "infra"}, "time": 1000.25 + i / 7})
    log.checkpoint("stop")
    log.close()
    exp.close()
    return path


def _verify_jsonl(tmp_path, path):
    return corral("log", "verify", "--jsonl", str(path), "--pubkey",
                  str(tmp_path / "etc/checkpoint.pub"))


def test_jsonl_export_verifies_on_its_own(tmp_path):
    path = _export_with_checkpoints(tmp_path)
    p = _verify_jsonl(tmp_path, path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "hashes and chain intact" in p.stdout and "checkpoints ok" in p.stdout, p.stdout


def test_jsonl_export_edited_or_cut_is_reported(tmp_path):
    path = _export_with_checkpoints(tmp_path)
    lines = path.read_text().splitlines()
    recs = [i for i, x in enumerate(lines) if '"kind": "net"' in x]
    edited = list(lines)
    edited[recs[5]] = edited[recs[5]].replace('"verdict": "deny"', '"verdict": "allow"')
    path.write_text("\n".join(edited) + "\n")
    p = _verify_jsonl(tmp_path, path)
    assert p.returncode == 1 and "record hash mismatch" in p.stdout, p.stdout + p.stderr
    # a record taken out of the copy (no export record accounts for it)
    path.write_text("\n".join(lines[:recs[5]] + lines[recs[5] + 1:]) + "\n")
    p = _verify_jsonl(tmp_path, path)
    assert p.returncode == 1 and "1 record(s) missing from the file, 0 accounted" in p.stdout, \
        p.stdout + p.stderr
    # the tail cut off, checkpoints kept: truncated
    keep = [x for x in lines[:recs[20]]] + [x for x in lines if '"kind": "checkpoint"' in x]
    path.write_text("\n".join(keep) + "\n")
    p = _verify_jsonl(tmp_path, path)
    assert p.returncode == 1 and "TRUNCATED" in p.stdout, p.stdout + p.stderr


def test_jsonl_refuses_a_symlink_or_a_hard_link(tmp_path):
    target = tmp_path / "secret"
    target.write_text("keep me\n")
    (tmp_path / "export.jsonl").symlink_to(target)
    with pytest.raises(OSError):
        JsonlSink(tmp_path / "export.jsonl")
    os.link(target, tmp_path / "linked.jsonl")
    with pytest.raises(OSError, match="one link"):
        JsonlSink(tmp_path / "linked.jsonl")
    assert target.read_text() == "keep me\n"
