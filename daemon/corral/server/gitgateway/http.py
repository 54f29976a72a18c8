"""One session's git endpoint: a smart-HTTP server on a loopback port that
only that session reaches (its cgroup's allow rule, and here the kernel's
answer, when each connection is accepted, to "which cgroup made the socket at
the other end": kernel/inetdiag.py).

    http://127.0.0.1:PORT/<secret>/<host/ORG/REPO>[.git]/info/refs?service=...
                                                        /git-upload-pack
                                                        /git-receive-pack

Reads are passed to the upstream with the gateway's token (the client's
Authorization is dropped; Git-Protocol passed, so v0 and v2 both work).
Writes go into the session's mirror through git receive-pack, whose
pre-receive hook asks Endpoint.judge() (refcheck.py), which pushes what it
approved upstream before the hook returns."""
from __future__ import annotations

import hmac
import http.client
import json
import os
import socket
import tempfile
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from corral.kernel import inetdiag
from corral.server.gitgateway import refcheck
from corral.server.gitgateway.config import TokenError
from corral.server.gitgateway.mirror import GitFailed, auth_header

MAX_READ_BODY = 16 << 20            # an upload-pack request (wants, haves)
PASS_REQUEST = ("Git-Protocol", "Content-Type", "Content-Encoding", "Accept", "Accept-Encoding",
                "User-Agent")
PASS_RESPONSE = ("Content-Type", "Content-Encoding", "Cache-Control", "Expires", "Pragma")
SERVICES = ("git-upload-pack", "git-receive-pack")


def pkt(line: bytes) -> bytes:
    return b"%04x" % (len(line) + 4) + line


class Refused(Exception):
    def __init__(self, status: int, msg: str, audit: dict | None = None):
        super().__init__(msg)
        self.status, self.audit = status, audit


MAX_ACTIVE = 16            # requests of the session at once
MAX_REFUSING = 4           # threads answering refused connections at once
REFUSAL_RECORDS = 5        # audit records of refused connections a second (then counted)


class Endpoint(ThreadingHTTPServer):
    """Connections are judged when accepted, before a thread or a byte of the
    request: only sockets the session's cgroup created get a handler (at most
    MAX_ACTIVE at once); any other gets a short 403 from a few bounded threads,
    and at most REFUSAL_RECORDS audit records a second (the rest counted in the next)."""
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, gw, sess: dict):
        """sess: id, cgid, secret, repo (key), remote (as named), upstream, username,
        source (TokenSource), push_branch, allow_force, max_push_bytes, mirror (Mirror)."""
        self.gw, self.sess = gw, sess
        self.push_lock = threading.Lock()
        self.active = threading.BoundedSemaphore(MAX_ACTIVE)
        self.refusing = threading.BoundedSemaphore(MAX_REFUSING)
        self.refusal_logged, self.refusal_count, self.refusals_unlogged = 0.0, 0, 0
        super().__init__(("127.0.0.1", port), Handler)

    def process_request(self, request, client_address):
        s = self.sess
        try:
            cgid = inetdiag.peer_cgroup_id(request)
            why = None if cgid == s["cgid"] else \
                (f"corral git gateway: refused: this endpoint belongs to session {s['id']}; the "
                 f"connection comes from another cgroup (id {cgid})",
                 {"rule": "peer cgroup is not the session's", "peer_cgid": cgid})
        except (inetdiag.PeerUnknown, OSError) as e:
            why = (f"corral git gateway: refused: cannot tell which session connected ({e})",
                   {"rule": "peer unknown", "reason": str(e)})
        if why is None:
            if not self.active.acquire(blocking=False):
                why = (f"corral git gateway: busy: more than {MAX_ACTIVE} requests at once", None)
            else:
                return super().process_request(request, client_address)
        if why[1] is not None:
            self._log_refusal(why[1])
        if self.refusing.acquire(blocking=False):
            threading.Thread(target=self._refuse, args=(request, why[0]), daemon=True).start()
        else:
            request.close()

    def shutdown_request(self, request):
        super().shutdown_request(request)
        try:
            self.active.release()
        except ValueError:
            pass

    def _refuse(self, request, msg: str) -> None:
        """A 403 with the reason, without reading what was sent (bounded drain, so
        the answer is not lost to a reset)."""
        try:
            request.settimeout(2)
            body = (msg + "\n").encode()
            request.sendall(b"HTTP/1.0 403 Forbidden\r\nContent-Type: text/plain; charset=utf-8\r\n"
                            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
            request.shutdown(socket.SHUT_WR)
            for _ in range(16):
                if not request.recv(65536):
                    break
        except OSError:
            pass
        finally:
            request.close()
            self.refusing.release()

    def _log_refusal(self, info: dict) -> None:
        now = time.monotonic()
        if int(now) != int(self.refusal_logged):
            self.refusal_logged, self.refusal_count = now, 0
        if self.refusal_count >= REFUSAL_RECORDS:
            self.refusals_unlogged += 1
            return
        self.refusal_count += 1
        if self.refusals_unlogged:
            info = dict(info, suppressed_before=self.refusals_unlogged)
            self.refusals_unlogged = 0
        self.gw.audit_refusal(self.sess, info)

    def start(self) -> None:
        threading.Thread(target=self.serve_forever, name=f"git-gw-{self.sess['id']}",
                         daemon=True).start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    # -- credentials --------------------------------------------------------
    def header(self) -> str:
        s = self.sess
        return auth_header(s["username"], s["source"].token(s["id"], s["repo"]))

    def redact(self, text: str) -> str:
        s = self.sess
        try:
            tok = s["source"].token(s["id"], s["repo"])
        except Exception:           # no token: none can be in the text
            return text
        for secret in (tok, auth_header(s["username"], tok).split(" ", 2)[-1]):
            text = text.replace(secret, "***")
        return text

    # -- pushes: what the pre-receive hook asks -------------------------------
    def judge(self, req: dict) -> dict:
        s = self.sess
        pattern = refcheck.branch_pattern(s["push_branch"], s["id"])
        allowed = refcheck.allowed_refs_text(pattern)
        mirror = s["mirror"]
        try:
            updates = refcheck.parse_updates(req.get("updates") or "")
            qenv = mirror.quarantine_env(req.get("env") or {})
        except (ValueError, GitFailed) as e:
            self.gw.audit_push(s, None, False, f"unparsable push: {e}")
            return {"ok": False, "messages": [f"corral git gateway: push refused: {e}"]}
        decisions = refcheck.decide(updates, pattern, s["allow_force"],
                                    lambda o, n: mirror.is_ancestor(o, n, qenv))
        refused = [d for d in decisions if not d.allowed]
        if refused:
            msgs = [f"corral git gateway: refused {d.ref}: {d.rule}" for d in refused]
            for d in decisions:
                rule = d.rule if not d.allowed else \
                    f"not pushed: another update of this push was refused ({refused[0].ref})"
                self.gw.audit_push(s, d, False, rule)
            example = pattern.replace("*", "work")
            msgs.append(f"corral git gateway: this session may push only to {allowed}, "
                        f"without deletes or tags (e.g. git push origin HEAD:{example})")
            return {"ok": False, "messages": msgs}
        try:
            header = self.header()
        except TokenError as e:
            for d in decisions:
                self.gw.audit_push(s, d, False, f"no token for the upstream: {e}")
            return {"ok": False, "messages": [f"corral git gateway: push refused: no token for "
                                              f"{s['remote']} ({e})"]}
        try:
            for d in decisions:        # logged before it is made
                self.gw.audit_push(s, d, True, d.rule, must=True)
        except Exception as e:
            return {"ok": False, "messages": [f"corral git gateway: push refused: its audit "
                                              f"record could not be written ({e})"]}
        try:
            mirror.push(s["upstream"], header, decisions, qenv)
        except GitFailed as e:
            for d in decisions:
                self.gw.audit_push(s, d, False, f"upstream refused: {e}", op="upstream")
            return {"ok": False, "messages": [f"corral git gateway: the upstream refused the "
                                              f"push: {line}" for line in str(e).splitlines()]}
        return {"ok": True, "messages": [f"corral git gateway: {d.ref} pushed to {s['remote']}"
                                         for d in decisions]}

    def serve_hook(self, sock: socket.socket) -> None:
        try:
            buf = b""
            while len(buf) < (16 << 20):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
            if not buf:
                return          # receive-pack ended before its hook ran: nothing to judge
            try:
                ans = self.judge(json.loads(buf))
            except Exception as e:                  # fail closed
                ans = {"ok": False, "messages": [f"corral git gateway: push refused "
                                                 f"({type(e).__name__})"]}
            sock.sendall(json.dumps(ans).encode())
        except OSError:
            pass
        finally:
            sock.close()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"       # one request per connection: checked at each
    timeout = 120                       # a stalled client frees its slot
    server: Endpoint

    def log_message(self, fmt, *args):     # the audit log says what matters
        pass

    def do_GET(self):
        self._serve("GET")

    def do_POST(self):
        self._serve("POST")

    # -- the checks ------------------------------------------------------------
    def _serve(self, method: str) -> None:
        ep = self.server
        s = ep.sess
        try:
            service = self._route(method)
            if service == "git-receive-pack":
                self._receive(method)
            else:
                self._proxy_read(method)
        except Refused as e:
            if e.audit is not None:
                ep.gw.audit_refusal(s, e.audit)
            self._text(e.status, str(e))
        except (BrokenPipeError, ConnectionResetError):
            pass
        except TokenError as e:
            self._text(502, f"corral git gateway: no token for {s['remote']}: {e}")
        except Exception as e:
            self._text(502, f"corral git gateway: {type(e).__name__}: {ep.redact(str(e))}")

    def _route(self, method: str) -> str:
        s = self.server.sess
        path, _, query = self.path.partition("?")
        parts = path.lstrip("/").split("/", 1)
        if len(parts) != 2 or not hmac.compare_digest(parts[0].encode(), s["secret"].encode()):
            raise Refused(403, "corral git gateway: refused: wrong endpoint secret",
                          {"rule": "endpoint secret"})
        rest = parts[1]
        for tail in ("/info/refs", "/git-upload-pack", "/git-receive-pack"):
            if rest.endswith(tail):
                repo, kind = rest[:-len(tail)], tail[1:]
                break
        else:
            raise Refused(404, f"corral git gateway: not a smart-HTTP git request: {path[:200]}")
        if repo.endswith(".git"):
            repo = repo[:-4]
        if repo != s["repo"]:
            raise Refused(403, f"corral git gateway: refused: this session may only reach "
                               f"{s['remote']} (asked for {repo[:200]})",
                          {"rule": "other repository", "target": repo[:200]})
        if kind == "info/refs":
            service = dict(x.split("=", 1) for x in query.split("&") if "=" in x).get("service")
            if method != "GET" or service not in SERVICES:
                raise Refused(403, "corral git gateway: only the smart-HTTP protocol is served "
                                   "(git 1.6.6 or later)")
            return service
        if method != "POST":
            raise Refused(405, "corral git gateway: POST expected")
        return kind

    # -- bodies -------------------------------------------------------------------
    def _body_chunks(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                line = self.rfile.readline(1024)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    return
                left = size
                while left:
                    data = self.rfile.read(min(left, 1 << 16))
                    if not data:
                        raise Refused(400, "corral git gateway: request body cut short")
                    left -= len(data)
                    yield data
                self.rfile.readline(16)
        else:
            left = int(self.headers.get("Content-Length") or 0)
            while left > 0:
                data = self.rfile.read(min(left, 1 << 16))
                if not data:
                    raise Refused(400, "corral git gateway: request body cut short")
                left -= len(data)
                yield data

    def _text(self, status: int, msg: str) -> None:
        body = (msg.rstrip("\n") + "\n").encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass

    # -- reads: passed upstream ------------------------------------------------
    def _proxy_read(self, method: str) -> None:
        ep = self.server
        s = ep.sess
        up = urlsplit(s["upstream"])
        cls = http.client.HTTPSConnection if up.scheme == "https" else http.client.HTTPConnection
        conn = cls(up.hostname, up.port, timeout=300)
        headers = {k: self.headers[k] for k in PASS_REQUEST if self.headers.get(k)}
        headers.setdefault("User-Agent", "git/2 (corral gateway)")
        headers["Authorization"] = ep.header().split(": ", 1)[1]    # the client's is never sent
        if method == "GET":
            target = up.path + "/info/refs?service=git-upload-pack"
            body = None
        else:
            target = up.path + "/git-upload-pack"
            body = bytearray()
            for chunk in self._body_chunks():
                body += chunk
                if len(body) > MAX_READ_BODY:
                    raise Refused(413, "corral git gateway: fetch request too large")
            body = bytes(body)
        try:
            conn.request(method, target, body=body, headers=headers)
            resp = conn.getresponse()
            if resp.status in (401, 403):
                raise Refused(502, f"corral git gateway: the upstream refused the gateway's "
                                   f"credentials for {s['remote']} (HTTP {resp.status}); ask "
                                   "root to check the git credentials file")
            if resp.status != 200:
                raise Refused(502, f"corral git gateway: the upstream answered HTTP "
                                   f"{resp.status} for {s['remote']}")
            self.send_response(200)
            for k in PASS_RESPONSE:
                if resp.getheader(k):
                    self.send_header(k, resp.getheader(k))
            self.end_headers()
            while True:
                data = resp.read(1 << 16)
                if not data:
                    break
                self.wfile.write(data)
        finally:
            conn.close()

    # -- writes: into the mirror, judged by its hook ---------------------------
    def _receive(self, method: str) -> None:
        ep = self.server
        s = ep.sess
        mirror = s["mirror"]
        if method == "GET":
            with ep.push_lock:
                try:
                    mirror.sync(s["upstream"], ep.header())
                    adv = mirror.advertise()
                except GitFailed as e:
                    raise Refused(502, f"corral git gateway: cannot read {s['remote']} from the "
                                       f"upstream: {e}") from None
            self.send_response(200)
            self.send_header("Content-Type", "application/x-git-receive-pack-advertisement")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            self.wfile.write(pkt(b"# service=git-receive-pack\n") + b"0000" + adv)
            return
        limit = s["max_push_bytes"]
        gz = self.headers.get("Content-Encoding", "").lower() in ("gzip", "x-gzip")
        inflate = zlib.decompressobj(16 + zlib.MAX_WBITS) if gz else None
        size = 0
        with tempfile.TemporaryFile(dir=os.path.dirname(mirror.path)) as body:  # on disk
            for chunk in self._body_chunks():
                if inflate is not None:
                    chunk = inflate.decompress(chunk)
                size += len(chunk)
                if size > limit:
                    raise Refused(413, f"corral git gateway: push refused: more than "
                                       f"git.max_push_bytes ({limit} bytes)",
                                  {"rule": f"git.max_push_bytes {limit}", "op": "push"})
                body.write(chunk)
            body.seek(0)
            with ep.push_lock:
                mine, theirs = socket.socketpair()
                try:
                    proc = mirror.receive(body, theirs.fileno())
                finally:
                    theirs.close()
                hook = threading.Thread(target=ep.serve_hook, args=(mine,), daemon=True)
                hook.start()
                try:
                    data = proc.stdout.read1(1 << 16)
                    if not data and proc.wait() != 0:
                        raise Refused(400, "corral git gateway: push refused: git receive-pack "
                                           "could not parse the request (nothing was changed)",
                                      {"rule": "unparsable receive-pack request", "op": "push"})
                    self.send_response(200)
                    self.send_header("Content-Type", "application/x-git-receive-pack-result")
                    self.send_header("Cache-Control", "no-cache")
                    self.end_headers()
                    while data:
                        self.wfile.write(data)
                        data = proc.stdout.read1(1 << 16)
                finally:
                    proc.stdout.close()
                    proc.wait()
                    hook.join(timeout=600)
