"""Export of the audit log to other readers (docs/log-schema.md): each sink on its
own thread behind a bounded queue, so a slow or dead reader never slows the log.

EventLog hands every record it wrote (and every checkpoint) to Exports.on_write,
under its lock: that only enqueues. A record that finds its sink's queue full is
dropped and counted (back-pressure); a batch the sink fails to write is counted as
failed. The daemon writes what was counted into the log itself, as kind "lost",
op "export_backpressure" / "export_failed" records (every 5 s at most), and
`corral doctor` shows the counters: no record leaves an export silently."""
from __future__ import annotations

import logging
import queue
import threading
import time

log = logging.getLogger("corral.export")
BATCH = 512


class Export:
    """One sink (jsonl.JsonlSink, journald.JournaldSink, otlp.OtlpSink), its queue
    and its thread. A sink has .name, .write_batch(list of dicts), .close()."""

    def __init__(self, sink, queue_size: int = 10000):
        self.sink = sink
        self.name = sink.name
        self.queue_size = queue_size
        self.q: queue.Queue = queue.Queue(maxsize=queue_size)
        self.sent = 0
        self.dropped = 0               # queue full (back-pressure)
        self.failed = 0                # the sink could not take them
        self.error: str | None = None
        self.reported = (0, 0)         # (dropped, failed) already on record
        self._last_alarm = -1e9
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._thread = threading.Thread(target=self._run, name=f"export-{self.name}", daemon=True)
        self._thread.start()

    def put(self, obj: dict) -> None:
        self._idle.clear()          # before the put: the thread sets it once it drained
        try:
            self.q.put_nowait(obj)
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        while not self._stop.is_set() or not self.q.empty():
            try:
                first = self.q.get(timeout=0.2)
            except queue.Empty:
                self._idle.set()
                continue
            batch = [first]
            while len(batch) < BATCH:
                try:
                    batch.append(self.q.get_nowait())
                except queue.Empty:
                    break
            try:
                self.sink.write_batch(batch)
                self.sent += len(batch)
                self.error = None
            except Exception as e:
                self.failed += len(batch)
                self.error = f"{type(e).__name__}: {e}"
                now = time.monotonic()
                if now - self._last_alarm >= 60:
                    self._last_alarm = now
                    log.error("export %s: %s (%d record(s) not exported so far; they stay in "
                              "the audit log)", self.name, self.error, self.failed)
                self._stop.wait(0.5)       # a failing sink: the queue fills, then drops count
            if self.q.empty():
                self._idle.set()

    def flush(self, timeout: float = 2.0) -> bool:
        return self._idle.wait(timeout)

    def status(self) -> dict:
        return {"active": True, "queued": self.q.qsize(), "queue": self.queue_size,
                "sent": self.sent, "dropped": self.dropped, "failed": self.failed,
                "error": self.error, **getattr(self.sink, "describe", lambda: {})()}

    def close(self, timeout: float = 2.0) -> None:
        self.flush(timeout)
        self._stop.set()
        self._thread.join(timeout)
        try:
            self.sink.close()
        except Exception as e:
            log.warning("export %s: close: %s", self.name, e)


class Exports:
    def __init__(self, exports: list[Export] | None = None, skipped: dict | None = None):
        self.exports = list(exports or [])
        self.skipped = dict(skipped or {})     # name -> why it is not on

    def on_write(self, obj: dict) -> None:
        for e in self.exports:
            e.put(obj)

    def unreported(self) -> list[dict]:
        """Loss records to write for what was counted since the last call."""
        out = []
        for e in self.exports:
            d, f = e.dropped, e.failed
            rd, rf = e.reported
            if d > rd:
                out.append({"kind": "lost", "op": "export_backpressure", "verdict": "info",
                            "target": e.name, "count": d - rd, "dropped_total": d,
                            "rule": f"export queue full ({e.queue_size} records): the reader "
                                    "is slower than the log"})
            if f > rf:
                out.append({"kind": "lost", "op": "export_failed", "verdict": "info",
                            "target": e.name, "count": f - rf, "failed_total": f,
                            "rule": f"export could not write: {e.error or 'error'}"})
            e.reported = (d, f)
        return out

    def status(self) -> dict:
        out = {e.name: e.status() for e in self.exports}
        for name, why in self.skipped.items():
            out[name] = {"active": False, "why": why}
        return out

    def close(self) -> None:
        for e in self.exports:
            e.close()


def build(settings, log_dir, gid: int = 0) -> Exports:
    """The exports corral.toml [export] asks for (server/settings.py)."""
    exports, skipped = [], {}
    qsize = settings.get("export", "queue")
    path = settings.get("export", "jsonl")
    if path:
        from corral.server.export.jsonl import JsonlSink
        exports.append(Export(JsonlSink(path, gid), qsize))
    else:
        skipped["jsonl"] = "off ([export] jsonl in corral.toml)"
    mode = settings.get("export", "journald")
    from corral.server.export import journald
    if mode == "off":
        skipped["journald"] = "off ([export] journald = \"off\")"
    else:
        present, why = journald.available()
        if present or mode == "on":
            if not present:
                log.warning("export journald: %s; [export] journald = \"on\": records will be "
                            "counted as failed until it appears", why)
            exports.append(Export(journald.JournaldSink(), qsize))
        else:
            skipped["journald"] = why
    endpoint = settings.get("export", "otlp_endpoint")
    if endpoint:
        from corral.server.export import otlp
        try:
            exports.append(Export(otlp.OtlpSink(endpoint), qsize))
        except otlp.Unavailable as e:
            # Asked for and impossible: said at start (and in doctor), not silent.
            log.error("export otlp: %s", e)
            skipped["otlp"] = str(e)
    else:
        skipped["otlp"] = "off ([export] otlp_endpoint)"
    return Exports(exports, skipped)
