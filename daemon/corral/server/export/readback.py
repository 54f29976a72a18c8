"""Checking a JSON-lines export on its own, away from the host (`corral log verify
--jsonl FILE`): every record's hash recomputed from the JSON (the chain's canonical
form is msgpack of the record with sorted keys, which JSON carries exactly for the
values records hold), seq and prev linking, and the signed checkpoints found in the
same file (server/checkpoints.py). Records missing from the file (an export that
dropped them) are an error unless the file itself holds the export_backpressure /
export_failed records that account for them."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from corral.server.checkpoints import is_checkpoint, json_lines
from corral.server.eventlog import GENESIS, record_hash


@dataclass
class Readback:
    records: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    by_seq: dict = field(default_factory=dict)
    checkpoints: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    notes: list = field(default_factory=list)


def check(path: Path, export_name: str = "jsonl") -> Readback:
    res = Readback()
    prev = None
    missing = 0
    accounted = 0
    for n, obj in json_lines(path):
        if obj is None:
            res.errors.append(f"{path}:{n}: not a JSON object (a torn or edited line)")
            continue
        if is_checkpoint(obj):
            res.checkpoints.append((n, obj))
            continue
        seq = obj.get("seq")
        if not isinstance(seq, int) or not isinstance(obj.get("hash"), str):
            res.errors.append(f"{path}:{n}: not a corral record (no seq/hash)")
            continue
        if obj["hash"] != record_hash(obj):
            res.errors.append(f"{path}:{n}: seq {seq}: record hash mismatch: the record was "
                              "altered")
            return res
        if prev is None:
            if seq == 0 and obj.get("prev") != GENESIS:
                res.errors.append(f"{path}:{n}: seq 0 does not start the chain")
            elif seq != 0:
                res.notes.append(f"the file starts at seq {seq} (earlier records are in an "
                                 "older file)")
        elif seq <= prev["seq"]:
            res.errors.append(f"{path}:{n}: seq {seq} after seq {prev['seq']}: reordered or "
                              "duplicated")
            return res
        elif seq == prev["seq"] + 1:
            if obj.get("prev") != prev["hash"]:
                res.errors.append(f"{path}:{n}: seq {seq}: prev does not match the hash of seq "
                                  f"{prev['seq']}: a record before it was altered")
                return res
        else:
            gap = seq - prev["seq"] - 1
            missing += gap
            res.notes.append(f"{path}:{n}: seq {prev['seq'] + 1}..{seq - 1} ({gap} record(s)) "
                             "not in the file")
        if obj.get("kind") == "lost" and obj.get("target") == export_name and \
                obj.get("op") in ("export_backpressure", "export_failed"):
            accounted += obj.get("count") or 0
        res.by_seq[seq] = obj["hash"]
        res.records += 1
        res.first_seq = seq if res.first_seq is None else res.first_seq
        res.last_seq = seq
        prev = obj
    if missing > accounted:
        res.errors.append(f"{missing} record(s) missing from the file, {accounted} accounted for "
                          f"by the log's own {export_name} export_backpressure/export_failed "
                          "records: removed from the copy")
    elif missing:
        res.notes.append(f"{missing} record(s) missing, which the export reported dropping "
                         f"({accounted}): the full chain is in the host's log")
    return res
