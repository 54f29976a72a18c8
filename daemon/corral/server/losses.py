"""Every place a record can be lost, counted (since this corrald started) from the
records that say so, for `corral doctor` and hello:

    ringbuf_overrun   kernel events the ring buffer had no room for (kind lost)
    while_down        ... while no daemon read it (kind lost)
    rate_limited      kernel events the per-session rate limit suppressed (kind rate)
    audit_*           kernel audit records lost or suppressed (auditlink, kind lost/rate)
    log_degraded      records not written while the log's disk was full/failing (kind lost)
    refusals_suppressed  refusal records the per-principal rate limit only counted
    export_backpressure / export_failed   records an export dropped or could not write

Counts not yet on record (a degraded log's current episode, an export's drops since
its last report) are in the log's and the exports' own status."""
from __future__ import annotations


class Losses:
    # Shown even at 0, so `corral doctor` says what is counted.
    KEYS = ("ringbuf_overrun", "while_down", "rate_limited", "log_degraded",
            "refusals_suppressed", "export_backpressure", "export_failed")

    def __init__(self):
        self.counts: dict[str, int] = dict.fromkeys(self.KEYS, 0)

    def _add(self, key: str, n) -> None:
        if isinstance(n, int) and not isinstance(n, bool) and n > 0:
            self.counts[key] = self.counts.get(key, 0) + n

    def note(self, rec: dict) -> None:
        kind, op = rec.get("kind"), rec.get("op")
        if kind == "lost":
            self._add(str(op or "lost"), rec.get("count"))
        elif kind == "rate" and op == "suppressed":
            self._add("audit_rate_limited" if "kernel audit" in str(rec.get("rule") or "")
                      else "rate_limited", rec.get("count"))
        elif kind == "control" and op == "refusals_suppressed":
            self._add("refusals_suppressed", rec.get("count"))
        elif kind == "control" and rec.get("suppressed_before"):
            self._add("refusals_suppressed", rec.get("suppressed_before"))

    def snapshot(self) -> dict:
        return dict(self.counts)          # the KEYS first, in that order
