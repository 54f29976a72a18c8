"""Servers and clients for tests/test_session_boundary.py, run as scripts.

Only the standard library: the client half runs inside `corral run` sessions.

    python boundary_servers.py serve --ready FILE [--stream PATH] [--seqpacket PATH]
           [--dgram PATH] [--hardlink SRC DST] ...
        Binds every address (a name starting with "@" is abstract), makes the hard
        links asked for (this process is the one outside the session that makes
        them), writes FILE, then serves until killed. The one request it executes
        is "touch ABSPATH": the marker a test then looks for. Stream and seqpacket
        clients get b"ran rc=N" back; datagrams get no reply.

    python boundary_servers.py probe JSON [--announce FILE] [--wait FILE]
        JSON is a list of {"name", "kind": stream|seqpacket|dgram, "addr",
        "marker", optional "chdir", optional "symlink": [target, linkpath]}.
        For each: make the symlink if asked, chdir (and back), connect (or sendto),
        ask for "touch MARKER". Prints {name: {"result": "ok"|ERRNO_NAME,
        "errno": N|None, "stage": where it failed|"done", "reply": ...}} as JSON.
        --announce FILE is written before anything else, then --wait FILE is
        waited for (up to 60 s).
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import socket
import subprocess
import sys
import threading
import time

KINDS = {"stream": socket.SOCK_STREAM, "seqpacket": socket.SOCK_SEQPACKET,
         "dgram": socket.SOCK_DGRAM}


def sockaddr(addr: str) -> str:
    return "\0" + addr[1:] if addr.startswith("@") else addr


def execute(req: bytes) -> int:
    words = req.decode(errors="replace").split()
    if len(words) == 2 and words[0] == "touch" and os.path.isabs(words[1]):
        return subprocess.run(["touch", words[1]], check=False).returncode
    return 99


def serve_conn(conn: socket.socket) -> None:
    try:
        conn.settimeout(10)
        req = conn.recv(4096)
        rc = execute(req)
        conn.sendall(f"ran rc={rc}".encode())
    except OSError:
        pass
    finally:
        conn.close()


def serve_listener(srv: socket.socket) -> None:
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve_conn, args=(conn,), daemon=True).start()


def serve_dgram(srv: socket.socket) -> None:
    while True:
        req, _ = srv.recvfrom(4096)
        execute(req)


def cmd_serve(a) -> None:
    threads = []
    for kind in ("stream", "seqpacket", "dgram"):
        for addr in getattr(a, kind) or []:
            s = socket.socket(socket.AF_UNIX, KINDS[kind])
            s.bind(sockaddr(addr))
            if kind == "dgram":
                threads.append(threading.Thread(target=serve_dgram, args=(s,), daemon=True))
            else:
                s.listen(16)
                threads.append(threading.Thread(target=serve_listener, args=(s,), daemon=True))
    for src, dst in a.hardlink or []:
        os.link(src, dst)
    for t in threads:
        t.start()
    with open(a.ready, "w") as fh:
        fh.write(str(os.getpid()))
    threading.Event().wait()


def probe_one(spec: dict) -> dict:
    here = os.getcwd()
    s = None
    stage = "setup"
    try:
        if spec.get("symlink"):
            stage = "symlink"
            target, link = spec["symlink"]
            if os.path.lexists(link):
                os.unlink(link)
            os.symlink(target, link)
        if spec.get("chdir"):
            stage = "chdir"
            os.chdir(spec["chdir"])
        stage = "socket"
        s = socket.socket(socket.AF_UNIX, KINDS[spec["kind"]])
        s.settimeout(10)
        req = f"touch {spec['marker']}".encode()
        if spec["kind"] == "dgram":
            stage = "sendto"
            s.sendto(req, sockaddr(spec["addr"]))
            reply = None
        else:
            stage = "connect"
            s.connect(sockaddr(spec["addr"]))
            stage = "exchange"
            s.sendall(req)
            reply = s.recv(4096).decode(errors="replace")
        return {"result": "ok", "errno": None, "stage": "done", "reply": reply}
    except OSError as e:
        return {"result": errno.errorcode.get(e.errno, str(e.errno)) if e.errno else repr(e),
                "errno": e.errno, "stage": stage, "reply": str(e)}
    finally:
        if s is not None:
            s.close()
        os.chdir(here)


def cmd_probe(a) -> None:
    specs = json.loads(a.specs)
    if a.announce:
        with open(a.announce, "w") as fh:
            fh.write(str(os.getpid()))
    if a.wait:
        deadline = time.monotonic() + 60
        while not os.path.exists(a.wait):
            if time.monotonic() > deadline:
                sys.exit(f"probe: {a.wait} did not appear")
            time.sleep(0.05)
    print(json.dumps({sp["name"]: probe_one(sp) for sp in specs}))


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--ready", required=True)
    s.add_argument("--stream", action="append")
    s.add_argument("--seqpacket", action="append")
    s.add_argument("--dgram", action="append")
    s.add_argument("--hardlink", action="append", nargs=2, metavar=("SRC", "DST"))
    c = sub.add_parser("probe")
    c.add_argument("specs")
    c.add_argument("--announce", help="write this file first (the session has started)")
    c.add_argument("--wait", help="then wait for this file before probing")
    a = p.parse_args(argv)
    {"serve": cmd_serve, "probe": cmd_probe}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
