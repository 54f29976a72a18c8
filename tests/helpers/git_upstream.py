"""A git upstream for the gateway tests and the benchmark: `git http-backend`
behind a small HTTP server on loopback that wants HTTP basic auth with one
token, like a forge would. Run as a child process:

    python git_upstream.py ROOT TOKEN_FILE PORT_FILE [STATS_FILE]

serves the bare repositories under ROOT at http://127.0.0.1:PORT/<name>.git,
writes PORT to PORT_FILE once listening. While a file "slow-receive" exists
beside STATS_FILE, each push waits that many seconds (the tests look at the
gateway's git children meanwhile). STATS_FILE (json, rewritten on each
request) counts requests by whether their Authorization was the token (never
the token itself)."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT, TOKEN_FILE, PORT_FILE = sys.argv[1], sys.argv[2], sys.argv[3]
STATS_FILE = sys.argv[4] if len(sys.argv) > 4 else None
TOKEN = open(TOKEN_FILE).read().strip()
GOOD = "Basic " + base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()
STATS = {"good": 0, "bad": 0, "none": 0, "paths": [], "protocols": []}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def log_message(self, *a):
        pass

    def _stats(self, key):
        STATS[key] += 1
        STATS["paths"] = (STATS["paths"] + [self.command + " " + self.path])[-50:]
        proto = self.headers.get("Git-Protocol") or "none"
        if proto not in STATS["protocols"]:
            STATS["protocols"].append(proto)
        if STATS_FILE:
            tmp = STATS_FILE + ".tmp"
            with open(tmp, "w") as fh:
                json.dump(STATS, fh)
            os.replace(tmp, STATS_FILE)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _serve(self):
        auth = self.headers.get("Authorization")
        if auth != GOOD:
            self._stats("none" if auth is None else "bad")
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="upstream"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._stats("good")
        body = self._body() if self.command == "POST" else b""
        slow = os.path.join(os.path.dirname(STATS_FILE or PORT_FILE), "slow-receive")
        if self.path.endswith("/git-receive-pack") and os.path.exists(slow):
            time.sleep(float(open(slow).read() or 3))
        path, _, query = self.path.partition("?")
        env = {"PATH": "/usr/bin:/bin", "GIT_PROJECT_ROOT": ROOT, "GIT_HTTP_EXPORT_ALL": "1",
               "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null",
               "REQUEST_METHOD": self.command, "PATH_INFO": path, "QUERY_STRING": query,
               "CONTENT_TYPE": self.headers.get("Content-Type", ""),
               "CONTENT_LENGTH": str(len(body)), "REMOTE_USER": "x-access-token",
               "REMOTE_ADDR": self.client_address[0]}
        for h, v in (("Git-Protocol", "HTTP_GIT_PROTOCOL"), ("Content-Encoding",
                                                            "HTTP_CONTENT_ENCODING")):
            if self.headers.get(h):
                env[v] = self.headers[h]
        if self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        p = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True)
        head, _, out = p.stdout.partition(b"\r\n\r\n")
        status = 200
        headers = []
        for line in head.split(b"\r\n"):
            k, _, v = line.decode().partition(":")
            if k.lower() == "status":
                status = int(v.strip().split()[0])
            elif k:
                headers.append((k, v.strip()))
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = _serve


srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
srv.daemon_threads = True
with open(PORT_FILE + ".tmp", "w") as fh:
    fh.write(str(srv.server_address[1]))
os.replace(PORT_FILE + ".tmp", PORT_FILE)
srv.serve_forever()
