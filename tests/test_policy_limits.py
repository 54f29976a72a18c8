"""The daemon refuses an over-limit policy and keeps serving (the limits
themselves: unit/test_policy_limits.py)."""
from __future__ import annotations

import json
import subprocess
import sys

from corral.policy import model as pol


def test_daemon_refuses_an_over_limit_frame(daemon):
    # From a child: were the policy accepted, the caller would be moved into the session.
    code = ("import json, sys\n"
            "from corral.client.connection import Client, CorralError\n"
            "policy = {'network': {'allow': [f' 10.2.{i // 256}.{i % 256} ' for i in range(5000)]}}\n"
            f"with Client({str(daemon.socket)!r}) as c:\n"
            "    try:\n"
            "        c.call('register_session', policy=policy)\n"
            "        print('ACCEPTED')\n"
            "    except CorralError as e:\n"
            "        print(json.dumps(e.message))\n"
            "    print(c.call('hello')['daemon'])\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=daemon.env, timeout=60)
    assert p.returncode == 0, p.stderr
    out = p.stdout.splitlines()
    assert out[-1] == "corrald" and out[0] != "ACCEPTED", p.stdout
    msg = json.loads(out[0])
    assert "network.allow" in msg and f"limit of {pol.MAX_NET_RULES}" in msg, msg

