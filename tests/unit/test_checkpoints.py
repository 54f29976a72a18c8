"""Signed checkpoints of the audit chain (server/checkpoints.py): when they are made,
and `corral log verify --checkpoints FILE` against a log whose tail was cut off or
rewritten (and re-chained, so the chain alone still verifies)."""
from __future__ import annotations

import json
import os
import stat

import msgpack

from corral.server import checkpoints as C
from corral.server import eventlog as el
from unit.test_eventlog import corral


def _log(tmp_path, every=10, **kw):
    key = tmp_path / "etc" / "checkpoint.key"
    cp = C.Checkpointer(key, tmp_path / "log" / "checkpoints.jsonl", every, str(tmp_path / "log"))
    return el.EventLog(tmp_path / "log", checkpointer=cp, **kw), cp, key


def _events(log, n, start=0):
    for i in range(start, start + n):
        log.append({"kind": "net", "op": "connect", "verdict": "deny", "session": "s1",
                    "target": f"192.0.2.{i % 250}:{1000 + i}", "rule": "default-deny"})


def _checkpoints(tmp_path):
    return [json.loads(x) for x in (tmp_path / "log/checkpoints.jsonl").read_text().splitlines()]


def _verify(tmp_path, cps=None):
    cps = cps or tmp_path / "log/checkpoints.jsonl"
    return corral("log", "verify", "--dir", str(tmp_path / "log"), "--checkpoints", str(cps),
                  "--pubkey", str(tmp_path / "etc/checkpoint.pub"))


def test_key_made_private_and_checkpoints_when_due(tmp_path):
    log, cp, key = _log(tmp_path, every=10, segment_bytes=3000)
    _events(log, 25)
    log.append({"kind": "session", "op": "end", "verdict": "info", "session": "s1"})
    _events(log, 3, 25)
    stop = log.checkpoint("stop")
    log.close()
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(C.pub_path(key)).st_mode) == 0o644
    cps = _checkpoints(tmp_path)
    reasons = [c["reason"] for c in cps]
    assert {"interval", "rotation", "session_end", "stop"} <= set(reasons), reasons
    recs = {r["seq"]: r for r in el.read_records(tmp_path / "log")}
    end = next(r for r in recs.values() if r.get("op") == "end")
    assert any(c["reason"] == "session_end" and c["head_seq"] == end["seq"] for c in cps)
    assert stop["head_seq"] == max(recs) and stop["head_hash"] == recs[max(recs)]["hash"]
    pub = C.load_public_key(C.pub_path(key))
    assert all(C.signature_ok(c, pub) and c["key_id"] == cp.key_id for c in cps)
    # interval: never more than `every` records between two checkpoints
    seqs = sorted(c["head_seq"] for c in cps)
    assert all(b - a <= 10 for a, b in zip(seqs, seqs[1:])), seqs
    p = _verify(tmp_path)
    assert p.returncode == 0 and "checkpoints ok" in p.stdout, p.stdout + p.stderr


def test_key_is_reused_across_restarts(tmp_path):
    log, cp1, _ = _log(tmp_path)
    _events(log, 3)
    log.close()
    log, cp2, _ = _log(tmp_path)
    log.close()
    assert cp1.key_id == cp2.key_id


def _cut_after(seg, keep_seq):
    """Cut a segment after the record keep_seq (what someone hiding the end would do)."""
    data = seg.read_bytes()
    for it in el.scan_segment(seg, data):
        if it.record and it.record["seq"] == keep_seq:
            seg.write_bytes(data[:it.offset + it.length])
            return
    raise AssertionError(keep_seq)


def test_truncated_tail_is_reported(tmp_path):
    log, _, _ = _log(tmp_path, every=5)
    _events(log, 23)
    log.checkpoint("stop")
    log.close()
    seg = el.segments(tmp_path / "log")[-1]
    _cut_after(seg, 12)
    plain = corral("log", "verify", "--dir", str(tmp_path / "log"))
    assert plain.returncode == 0, plain.stdout + plain.stderr   # the chain alone cannot tell
    p = _verify(tmp_path)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "TRUNCATED" in p.stdout and "log ends at seq 12" in p.stdout, p.stdout


def test_rewritten_and_rechained_tail_is_reported(tmp_path):
    log, _, _ = _log(tmp_path, every=5)
    _events(log, 20)
    log.checkpoint("stop")
    log.close()
    seg = el.segments(tmp_path / "log")[-1]
    recs = [it.record for it in el.scan_segment(seg) if it.record]
    # Rewrite record 7 (a denial becomes an allow) and re-chain everything after it.
    recs[7]["verdict"] = "allow"
    for i in range(7, len(recs)):
        recs[i]["prev"] = recs[i - 1]["hash"]
        recs[i]["hash"] = el.record_hash(recs[i])
    seg.write_bytes(b"".join(msgpack.packb(r, use_bin_type=True) for r in recs))
    assert corral("log", "verify", "--dir", str(tmp_path / "log")).returncode == 0
    p = _verify(tmp_path)
    assert p.returncode == 1 and "REWRITTEN: record seq" in p.stdout, p.stdout + p.stderr


def test_forged_checkpoint_and_wrong_key(tmp_path):
    log, _, _ = _log(tmp_path, every=5)
    _events(log, 12)
    log.close()
    cps = _checkpoints(tmp_path)
    forged = dict(cps[-1], head_seq=cps[-1]["head_seq"] - 1)
    f = tmp_path / "forged.jsonl"
    f.write_text(json.dumps(forged) + "\n")
    p = _verify(tmp_path, f)
    assert p.returncode == 1 and "signature does not verify" in p.stdout, p.stdout + p.stderr
    # Another daemon's key: its checkpoints are not counted as verified.
    other = C.load_or_create_key(tmp_path / "other" / "checkpoint.key")
    assert C.key_id(other.public_key()) != cps[0]["key_id"]
    p = corral("log", "verify", "--dir", str(tmp_path / "log"), "--checkpoints",
               str(tmp_path / "log/checkpoints.jsonl"), "--pubkey",
               str(tmp_path / "other/checkpoint.pub"))
    assert p.returncode == 1 and "not the key given" in p.stderr, p.stdout + p.stderr


def test_checkpoints_in_an_export_stream_are_found(tmp_path):
    """A JSON-lines export holds records and checkpoints: verify picks the checkpoints."""
    out = []
    log, _, _ = _log(tmp_path, every=4)
    log.on_write = out.append
    _events(log, 9)
    log.close()
    f = tmp_path / "export.jsonl"
    from corral.server.export.schema import to_json
    f.write_text("".join(to_json(o) + "\n" for o in out))
    kinds = [o.get("kind") for o in out]
    assert kinds.count("checkpoint") >= 2 and kinds.count("net") == 9
    p = _verify(tmp_path, f)
    assert p.returncode == 0 and "checkpoints ok" in p.stdout, p.stdout + p.stderr


def test_checkpoint_file_moved_by_logrotate_is_started_anew(tmp_path):
    log, _, _ = _log(tmp_path, every=3)
    _events(log, 4)
    os.rename(tmp_path / "log/checkpoints.jsonl", tmp_path / "log/checkpoints.jsonl.1")
    _events(log, 4, 4)
    log.close()
    old = (tmp_path / "log/checkpoints.jsonl.1").read_text().splitlines()
    new = _checkpoints(tmp_path)
    assert old and new and json.loads(old[-1])["head_seq"] < new[0]["head_seq"]
