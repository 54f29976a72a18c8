"""Append-only audit log: msgpack records in segments under LOG_DIR.

(Minimal version; hash chaining, rotation and verify land with issue 5.)"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Iterator

import msgpack


class EventLog:
    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        self._lock = threading.Lock()
        self._fh = open(self.dir / "current.log", "ab")

    def append(self, record: dict) -> dict:
        record = dict(record)
        record.setdefault("time", time.time())
        with self._lock:
            self._fh.write(msgpack.packb(record, use_bin_type=True))
            self._fh.flush()
        return record

    def close(self) -> None:
        with self._lock:
            self._fh.close()


def read_records(directory: Path) -> Iterator[dict]:
    path = Path(directory) / "current.log"
    if not path.exists():
        return
    with open(path, "rb") as fh:
        for rec in msgpack.Unpacker(fh, raw=False):
            yield rec
