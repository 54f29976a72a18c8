"""What the API stand-ins (fake_anthropic.py, fake_openai.py) share: a threaded
HTTP server on 127.0.0.1, outside any corral session, started and stopped as a
context manager, with a lock for the requests it keeps and an id counter."""
from __future__ import annotations

import itertools
import threading
from http.server import ThreadingHTTPServer


class LoopbackServer:
    def _serve(self, handler, url_path: str = "") -> None:
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}{url_path}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()
