"""OTLP logs export through the OpenTelemetry SDK (optional: pip install
'corral[otlp]'; corral.toml [export] otlp_endpoint = "http://HOST:4318/v1/logs").

Each record (and checkpoint) becomes one OTLP log record: body = the one-line
summary, severity WARN for a denial, INFO otherwise, timestamp = the record's
time, resource service.name=corrald and host.name, attributes:

    corral.schema, corral.seq, corral.prev, corral.hash, corral.kind, corral.op,
    corral.verdict, corral.session, corral.session_name, corral.target, corral.rule,
    corral.pid, corral.uid, corral.comm (when present); corral.label.<KEY> per label;
    checkpoints: corral.head_seq, corral.head_hash, corral.key_id, corral.sig,
    corral.reason; corral.record = the whole record as JSON (the JSON-lines line).

The batch our export thread takes is handed to the SDK's exporter directly (no SDK
batch processor, whose queue drops without telling anyone): a failed export raises,
so its records are counted as failed (server/export/__init__.py)."""
from __future__ import annotations

import socket

from corral.server.export.schema import summary, to_json

FIELDS = ("schema", "seq", "prev", "hash", "kind", "op", "verdict", "session", "session_name",
          "target", "rule", "pid", "uid", "comm", "head_seq", "head_hash", "key_id", "sig",
          "reason")


class Unavailable(Exception):
    pass


def _value(v):
    if isinstance(v, (bool, int, float, str)):
        return v
    return to_json(v)


def attributes(rec: dict) -> dict:
    out = {f"corral.{k}": _value(rec[k]) for k in FIELDS if rec.get(k) not in (None, "")}
    for k, v in sorted((rec.get("labels") or {}).items()):
        out[f"corral.label.{k}"] = str(v)
    out["corral.record"] = to_json(rec)
    return out


class OtlpSink:
    name = "otlp"

    def __init__(self, endpoint: str, exporter=None):
        try:
            from opentelemetry._logs import LogRecord, SeverityNumber
            from opentelemetry.sdk._logs import ReadableLogRecord
            from opentelemetry.sdk._logs.export import LogRecordExportResult
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        except ImportError as e:
            raise Unavailable(f"OTLP export needs the OpenTelemetry SDK (pip install "
                              f"'corral[otlp]' into corrald's venv): {e}") from None
        if exporter is None:
            try:
                from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
            except ImportError as e:
                raise Unavailable(f"OTLP export needs opentelemetry-exporter-otlp-proto-http "
                                  f"(pip install 'corral[otlp]'): {e}") from None
            exporter = OTLPLogExporter(endpoint=endpoint, timeout=10)
        self.endpoint = endpoint
        self.exporter = exporter
        self._LogRecord, self._Readable, self._Sev = LogRecord, ReadableLogRecord, SeverityNumber
        self._ok = LogRecordExportResult.SUCCESS
        from corral import __version__
        self.resource = Resource.create({"service.name": "corrald",
                                         "service.version": __version__,
                                         "host.name": socket.gethostname()})
        self.scope = InstrumentationScope("corral.audit", str(__version__))

    def _record(self, rec: dict):
        deny = rec.get("verdict") == "deny"
        t = rec.get("time")
        ns = int(float(t) * 1e9) if isinstance(t, (int, float)) else None
        lr = self._LogRecord(timestamp=ns, observed_timestamp=ns, body=summary(rec),
                             severity_number=self._Sev.WARN if deny else self._Sev.INFO,
                             severity_text="WARN" if deny else "INFO",
                             attributes=attributes(rec))
        return self._Readable(lr, resource=self.resource, instrumentation_scope=self.scope)

    def write_batch(self, objs: list[dict]) -> None:
        result = self.exporter.export([self._record(o) for o in objs])
        if result != self._ok:
            raise OSError(f"OTLP export to {self.endpoint} failed ({result})")

    def describe(self) -> dict:
        return {"endpoint": self.endpoint}

    def close(self) -> None:
        try:
            self.exporter.shutdown()
        except Exception:
            pass
