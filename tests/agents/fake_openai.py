"""A scripted stand-in for OpenAI's Responses API, for driving the real Codex CLI
(`codex exec`) in tests (issue 13).

It listens on 127.0.0.1 (outside any corral session) and answers POST
/v1/responses as server-sent events: response.created, one
response.output_item.done, response.completed. Codex 0.171 offers its tools
nested under one freeform `exec` tool that runs JavaScript in an isolate
(`await tools.exec_command({cmd})`, `text(...)` for the output), so each
scripted step is one custom_tool_call of `exec` running one shell command and
returning its result as text. Step N is chosen by how many tool outputs the
request already carries; after the last step the answer is a plain assistant
message. Every request is kept so the test can read the outputs Codex sent
back (custom_tool_call_output items, by call id)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

from .loopback_server import LoopbackServer


def exec_js(cmd: str) -> str:
    """The `exec` tool input that runs one shell command and reports its result."""
    return (f"const r = await tools.exec_command({{cmd: {json.dumps(cmd)}, "
            "yield_time_ms: 20000});\ntext(typeof r === 'string' ? r : JSON.stringify(r));\n")


@dataclass
class FakeOpenAI(LoopbackServer):
    script: list[str]                      # shell commands, one per turn
    final_text: str = "All done."
    requests: list[dict] = field(default_factory=list)

    def __post_init__(self):
        self._serve(self._handler(), "/v1")

    def outputs(self) -> dict[str, str]:
        """call id -> the output Codex sent back for it (last request wins)."""
        out: dict[str, str] = {}
        with self._lock:
            reqs = list(self.requests)
        for body in reqs:
            for item in body.get("input") or []:
                if item.get("type") in ("custom_tool_call_output", "function_call_output"):
                    out[item.get("call_id")] = _text(item.get("output"))
        return out

    def _events(self, body: dict) -> list[dict]:
        done = sum(1 for it in body.get("input") or []
                   if it.get("type") in ("custom_tool_call_output", "function_call_output"))
        rid = f"resp_{next(self._ids):020d}"
        if done < len(self.script):
            item = {"type": "custom_tool_call", "id": f"ctc_{rid}", "status": "completed",
                    "call_id": f"call_{done}", "name": "exec",
                    "input": exec_js(self.script[done])}
        else:
            item = {"type": "message", "id": f"msg_{rid}", "role": "assistant",
                    "status": "completed",
                    "content": [{"type": "output_text", "text": self.final_text,
                                 "annotations": []}]}
        usage = {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 0},
                 "output_tokens": 5, "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": 15}
        return [
            {"type": "response.created", "response": {"id": rid, "status": "in_progress"}},
            {"type": "response.output_item.added", "output_index": 0, "item": item},
            {"type": "response.output_item.done", "output_index": 0, "item": item},
            {"type": "response.completed",
             "response": {"id": rid, "status": "completed", "usage": usage, "output": [item]}},
        ]

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _empty(self, status):
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self):
                # websocket upgrades and model lists: not offered, Codex falls back
                self._empty(404)

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(n) or b"{}")
                except ValueError:
                    return self._empty(400)
                if not self.path.split("?")[0].endswith("/responses"):
                    return self._empty(404)
                body["_auth"] = self.headers.get("Authorization")   # kept for the test
                with fake._lock:
                    fake.requests.append(body)
                data = b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode()
                                for e in fake._events(body))
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler


def _text(output) -> str:
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        return "".join(o.get("text", "") for o in output if isinstance(o, dict))
    return json.dumps(output)
