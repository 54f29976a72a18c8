"""OTLP logs export (server/export/otlp.py) through the OpenTelemetry SDK's real OTLP/HTTP
exporter to an in-process collector stand-in on 127.0.0.1 that decodes the protobuf
request; and a collector that refuses: the batch is counted as failed."""
from __future__ import annotations

import http.server
import json
import threading

import pytest

pytest.importorskip("opentelemetry.sdk", reason="OTLP export needs the optional extra "
                    "corral[otlp] (OpenTelemetry SDK), not installed here")
pytest.importorskip("opentelemetry.exporter.otlp.proto.http",
                    reason="opentelemetry-exporter-otlp-proto-http not installed")
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2  # noqa: E402

from corral.server.export import Export, Exports  # noqa: E402
from corral.server.export.otlp import OtlpSink  # noqa: E402
from unit.test_export import _wait  # noqa: E402


class Collector:
    def __init__(self, status=200):
        self.requests: list = []
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                req = logs_service_pb2.ExportLogsServiceRequest()
                req.ParseFromString(body)
                outer.requests.append((self.path, req))
                out = logs_service_pb2.ExportLogsServiceResponse().SerializeToString()
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *a):
                pass
        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}/v1/logs"
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


def _attrs(lr) -> dict:
    out = {}
    for kv in lr.attributes:
        v = kv.value
        out[kv.key] = v.string_value if v.HasField("string_value") else v.int_value
    return out


def test_records_reach_an_otlp_collector():
    c = Collector()
    e = Export(OtlpSink(c.url), queue_size=64)
    exp = Exports([e])
    recs = [{"schema": 1, "seq": i, "prev": "0" * 64, "hash": f"{i:064x}", "kind": "net",
             "op": "connect", "verdict": "deny", "session": "s1", "session_name": "job",
             "labels": {"team": "infra"}, "target": f"192.0.2.1:{i}", "time": 1000.0 + i}
            for i in range(5)]
    recs.append({"schema": 1, "kind": "checkpoint", "head_seq": 4, "head_hash": "f" * 64,
                 "reason": "interval", "key_id": "k", "sig": "00", "time": 1010.0})
    for r in recs:
        exp.on_write(r)
    try:
        assert _wait(lambda: e.sent == 6), e.status()
        logs = [lr for _, req in c.requests for rl in req.resource_logs
                for sl in rl.scope_logs for lr in sl.log_records]
        assert c.requests[0][0] == "/v1/logs" and len(logs) == 6
        res = {kv.key: kv.value.string_value
               for kv in c.requests[0][1].resource_logs[0].resource.attributes}
        assert res["service.name"] == "corrald" and res["host.name"]
        a = _attrs(logs[0])
        assert a["corral.seq"] == 0 and a["corral.kind"] == "net"
        assert a["corral.label.team"] == "infra" and a["corral.session_name"] == "job"
        assert json.loads(a["corral.record"]) == recs[0]
        assert logs[0].severity_text == "WARN" and logs[0].time_unix_nano == 1000 * 10**9
        assert "net/connect deny" in logs[0].body.string_value
        cp = _attrs(logs[5])
        assert cp["corral.kind"] == "checkpoint" and cp["corral.head_seq"] == 4
    finally:
        exp.close()
        c.close()


def test_a_refusing_collector_counts_failures():
    c = Collector(status=400)
    e = Export(OtlpSink(c.url), queue_size=64)
    exp = Exports([e])
    for i in range(3):
        exp.on_write({"seq": i, "kind": "net", "op": "connect", "verdict": "deny"})
    try:
        assert _wait(lambda: e.failed == 3), e.status()
        rec = exp.unreported()[0]
        assert rec["op"] == "export_failed" and rec["target"] == "otlp" and rec["count"] == 3
    finally:
        exp.close()
        c.close()
