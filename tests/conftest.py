"""Shared fixtures, and the split into two tiers.

tests/unit/ is the unit tier: pure logic, runs as any user in seconds. Everything
else here is the kernel tier: it needs root (BPF, cgroups, mounts, a private
corrald from tests/harness.py) and is skipped, with that reason, when not root."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
UNIT = TESTS / "unit"
# tests/vm loads this file by path, with only tests/vm on sys.path: find harness.py.
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

import harness  # noqa: E402
from harness import BIN, Daemon  # noqa: E402,F401  (re-exported: tests import them from here)

ROOT_REASON = ("kernel tier: needs root (loads BPF, manages cgroups, starts a private "
               "corrald); run as root, or run only the unit tier: pytest tests/unit")


def _require_root():
    if os.geteuid() != 0:
        pytest.skip(ROOT_REASON)


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason=ROOT_REASON)
    for item in items:
        if UNIT not in Path(str(item.fspath)).parents:
            item.add_marker(skip)


def make_daemon(name: str, extra_args=(), extra_env=None) -> Daemon:
    _require_root()
    return harness.make_daemon(name, extra_args, extra_env)


@pytest.fixture(scope="session")
def daemon():
    d = make_daemon("corral-test", extra_args=["--no-dns"])
    d.start()
    yield d
    d.cleanup()


@pytest.fixture(scope="session")
def agentd():
    """A daemon whose DNS resolver runs, upstream this machine's resolver: what the
    default profile and the agent profiles need (they name the package registries
    and the agents' APIs by domain; the registries are reachable here)."""
    d = make_daemon("corral-agentd")
    d.start()
    yield d
    d.cleanup()


@pytest.fixture
def host_listener():
    """A TCP listener of the host's on 127.0.0.1, outside every session (the kind
    of local service a session must not reach without a rule): its port."""
    import socket
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    yield srv.getsockname()[1]
    srv.close()
