"""A scripted stand-in for Anthropic's Messages API, for driving the real Claude
Code CLI in tests (issue 13).

It listens on 127.0.0.1 (outside any corral session) and answers POST
/v1/messages the way the API does: with `stream: true` as server-sent events
(message_start, content_block_start/delta/stop for text and tool_use blocks,
the tool input sent as input_json_delta fragments, message_delta carrying the
stop_reason, message_stop), otherwise as one JSON message. The conversation
requests (the ones offering tools) are answered from a script: step N is
chosen by how many assistant turns the request already holds, so each step is
one tool_use turn and the step after the last is an end_turn. Requests
without tools (titles, topic checks, quota probes) get a short text answer;
count_tokens and /v1/models get plausible answers; anything else gets an
empty 200 JSON. Every request is kept (method, path, parsed body) so the test
can read the tool_result blocks the CLI sent back."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

from .loopback_server import LoopbackServer

MODEL = "claude-sonnet-4-5-20250929"


@dataclass
class ToolStep:
    """One scripted assistant turn: a short text, then one tool_use block."""
    name: str
    input: dict
    text: str = ""


@dataclass
class Request:
    method: str
    path: str
    headers: dict
    body: object = None


@dataclass
class FakeAnthropic(LoopbackServer):
    script: list[ToolStep]
    final_text: str = "All done."
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self):
        self._serve(self._handler())

    # -- what the test reads -------------------------------------------------
    def paths(self) -> list[str]:
        with self._lock:
            return [f"{r.method} {r.path}" for r in self.requests]

    def conversation_requests(self) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if _is_conversation(r.body)]

    def tool_results(self) -> dict[str, dict]:
        """tool_use id -> {"name", "input", "text", "is_error"}, from the last
        conversation request (it carries the whole history)."""
        reqs = self.conversation_requests()
        if not reqs:
            return {}
        uses, out = {}, {}
        for msg in reqs[-1].body.get("messages", []):
            content = msg.get("content")
            if not isinstance(content, list):
                continue
            for block in content:
                if block.get("type") == "tool_use":
                    uses[block["id"]] = block
                elif block.get("type") == "tool_result":
                    use = uses.get(block.get("tool_use_id"), {})
                    out[block.get("tool_use_id")] = {
                        "name": use.get("name"), "input": use.get("input"),
                        "text": _text_of(block.get("content")),
                        "is_error": bool(block.get("is_error"))}
        return out

    # -- the answers ---------------------------------------------------------
    def _next_id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids):024d}"

    def _answer_messages(self, body: dict):
        """(content blocks, stop_reason) for one POST /v1/messages."""
        if not _is_conversation(body):
            return [{"type": "text", "text": "Scripted task"}], "end_turn"
        step = sum(1 for m in body.get("messages", []) if m.get("role") == "assistant")
        if step >= len(self.script):
            return [{"type": "text", "text": self.final_text}], "end_turn"
        s = self.script[step]
        blocks = [{"type": "text", "text": s.text or f"Step {step + 1}: {s.name}."}]
        blocks.append({"type": "tool_use", "id": self._next_id("toolu"), "name": s.name,
                       "input": s.input})
        return blocks, "tool_use"

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _read_body(self):
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                try:
                    return json.loads(raw) if raw else None
                except ValueError:
                    return raw.decode(errors="replace")

            def _json(self, obj, status=200):
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("request-id", fake._next_id("req"))
                self.end_headers()
                self.wfile.write(data)

            def _record(self, body):
                with fake._lock:
                    fake.requests.append(Request(self.command, self.path, dict(self.headers), body))

            def do_GET(self):
                self._record(None)
                path = self.path.split("?")[0]
                if path.startswith("/v1/models"):
                    self._json({"data": [{"type": "model", "id": MODEL, "display_name": "Claude",
                                          "created_at": "2025-09-29T00:00:00Z"}],
                                "has_more": False, "first_id": MODEL, "last_id": MODEL})
                else:
                    self._json({})

            def do_HEAD(self):
                self._record(None)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self):
                body = self._read_body()
                self._record(body)
                path = self.path.split("?")[0]
                if path == "/v1/messages/count_tokens":
                    self._json({"input_tokens": 100})
                elif path == "/v1/messages" and isinstance(body, dict):
                    blocks, stop = fake._answer_messages(body)
                    if body.get("stream"):
                        self._stream(body, blocks, stop)
                    else:
                        self._json({"id": fake._next_id("msg"), "type": "message",
                                    "role": "assistant", "model": body.get("model", MODEL),
                                    "content": blocks, "stop_reason": stop, "stop_sequence": None,
                                    "usage": {"input_tokens": 100, "output_tokens": 20}})
                else:
                    self._json({})

            def _event(self, name, data):
                self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
                self.wfile.flush()

            def _stream(self, body, blocks, stop):
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Connection", "close")
                self.send_header("request-id", fake._next_id("req"))
                self.end_headers()
                self.close_connection = True
                self._event("message_start", {"type": "message_start", "message": {
                    "id": fake._next_id("msg"), "type": "message", "role": "assistant",
                    "model": body.get("model", MODEL), "content": [], "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": 100, "output_tokens": 1,
                              "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}})
                self._event("ping", {"type": "ping"})
                for i, b in enumerate(blocks):
                    if b["type"] == "text":
                        self._event("content_block_start", {"type": "content_block_start", "index": i,
                                                            "content_block": {"type": "text", "text": ""}})
                        self._event("content_block_delta", {"type": "content_block_delta", "index": i,
                                                            "delta": {"type": "text_delta",
                                                                      "text": b["text"]}})
                    else:
                        self._event("content_block_start", {"type": "content_block_start", "index": i,
                                                            "content_block": {"type": "tool_use",
                                                                              "id": b["id"],
                                                                              "name": b["name"],
                                                                              "input": {}}})
                        js = json.dumps(b["input"])
                        for k in range(0, len(js), 40):   # the input arrives in fragments
                            self._event("content_block_delta", {
                                "type": "content_block_delta", "index": i,
                                "delta": {"type": "input_json_delta", "partial_json": js[k:k + 40]}})
                    self._event("content_block_stop", {"type": "content_block_stop", "index": i})
                self._event("message_delta", {"type": "message_delta",
                                              "delta": {"stop_reason": stop, "stop_sequence": None},
                                              "usage": {"output_tokens": 20}})
                self._event("message_stop", {"type": "message_stop"})

        return Handler


def _is_conversation(body) -> bool:
    """The agent loop's requests offer the tools (Write, Bash...); side requests do not."""
    if not isinstance(body, dict):
        return False
    names = {t.get("name") for t in body.get("tools") or [] if isinstance(t, dict)}
    return "Bash" in names


def _text_of(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(c.get("text", "") for c in content if isinstance(c, dict))
    return ""
