"""The exported form of a record (docs/log-schema.md): the record as stored, with
bytes as hex; the same object `corral log --json` prints. One JSON object a line."""
from __future__ import annotations

import json


def _default(v):
    return v.hex() if isinstance(v, (bytes, bytearray)) else str(v)


def to_json(rec: dict) -> str:
    return json.dumps(rec, default=_default)


def summary(rec: dict) -> str:
    """One line for humans (journald MESSAGE, OTLP body)."""
    if rec.get("kind") == "checkpoint":
        return (f"corral checkpoint ({rec.get('reason')}): seq {rec.get('head_seq')} "
                f"hash {str(rec.get('head_hash'))[:16]} key {rec.get('key_id')}")
    parts = [f"{rec.get('kind')}/{rec.get('op')}", str(rec.get("verdict") or "-")]
    if rec.get("session"):
        name = rec.get("session_name")
        parts.append(f"session {rec['session']}" + (f" ({name})" if name else ""))
    if rec.get("target") not in (None, ""):
        parts.append(str(rec["target"])[:300])
    if rec.get("rule"):
        parts.append(f"[{str(rec['rule'])[:200]}]")
    if rec.get("pid"):
        parts.append(f"pid {rec['pid']}" + (f" {rec['comm']}" if rec.get("comm") else ""))
    return ("corral " + " ".join(parts) + f" seq {rec.get('seq')}").replace("\n", " ")
