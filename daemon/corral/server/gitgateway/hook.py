"""The gateway's own pre-receive hook (the only hook the mirrors run:
core.hooksPath). receive-pack gives it the ref updates on stdin and the
quarantined objects in its environment; it hands both to the gateway over the
socket it inherited (CORRAL_GW_FD) and prints the answer, which receive-pack
sends to the pushing git as "remote:" lines. It decides nothing itself: no
answer, a broken answer or anything unexpected refuses the push."""
from __future__ import annotations

import os
import sys

SCRIPT = r'''
import json, os, socket, sys
try:
    data = sys.stdin.read()
    env = {k: os.environ[k] for k in ("GIT_OBJECT_DIRECTORY", "GIT_ALTERNATE_OBJECT_DIRECTORIES",
                                      "GIT_QUARANTINE_PATH") if k in os.environ}
    s = socket.socket(fileno=int(os.environ["CORRAL_GW_FD"]))
    s.sendall(json.dumps({"updates": data, "env": env}).encode())
    s.shutdown(socket.SHUT_WR)
    buf = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    ans = json.loads(buf)
except Exception as e:
    print("corral git gateway: internal error (%s): nothing was pushed" % type(e).__name__,
          file=sys.stderr)
    sys.exit(1)
for m in ans.get("messages") or []:
    print(m, file=sys.stderr)
sys.exit(0 if ans.get("ok") is True else 1)
'''


def install(hooks_dir: str) -> None:
    """Write the hook (root's, read-only) into the gateway's hooks directory."""
    os.makedirs(hooks_dir, mode=0o700, exist_ok=True)
    os.chmod(hooks_dir, 0o700)
    path = os.path.join(hooks_dir, "pre-receive")
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(f"#!{sys.executable} -I\n{SCRIPT}")
    os.chmod(tmp, 0o500)
    os.replace(tmp, path)
