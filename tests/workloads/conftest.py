"""Fixtures for the workload tests (the daemon, `agentd`, is tests/conftest.py's:
its DNS resolver runs, so `pip install` and `npm install` under the profiles
reach the real registries): a service of the host's on loopback (outside every
session), and a fake SSH key in ~/.ssh."""
from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest



@pytest.fixture(scope="session")
def host_service():
    """A TCP listener of the host's on 127.0.0.1, the kind of service (a database,
    a dev server, a metadata proxy) a session must not reach: (port, accepted)."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    accepted: list[int] = []

    def serve():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            accepted.append(1)
            c.close()
    threading.Thread(target=serve, daemon=True).start()
    yield srv.getsockname()[1], accepted
    srv.close()


@pytest.fixture(scope="session")
def ssh_key():
    """~/.ssh/corral-workload-key with a known secret (removed after)."""
    d = Path.home() / ".ssh"
    made = not d.exists()
    d.mkdir(mode=0o700, exist_ok=True)
    key = d / "corral-workload-key"
    key.write_text("WORKLOAD-SSH-SECRET\n")
    yield key
    key.unlink()
    if made:
        d.rmdir()
