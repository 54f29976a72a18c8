"""How a test's command enters a sandbox, for tests that run the same checks
through every way in (issue 15):

* "run":     `corral run` of the installed `corral`: the native launcher (every
             policy option: corrald parses them and prepares, the launcher
             applies; --keep-caps, --allow-weaker, --strict-protect, -v are
             handed to the Python CLI);
* "run-py":  `corral run` of corral-py, the Python CLI itself;
* "exec":    `corral exec` into a `corral session start` session, through the
             native launcher (daemon-prepared seccomp/Landlock/mount view,
             clone3 into the cgroup);
* "exec-py": the same through corral-py (the Python path: joined by corrald,
             its own view and confinement).

sandbox(daemon, entry, *flags) yields argv_for(cmd): the argv that runs cmd that
way with those policy flags (a session is started for the exec entries and
stopped after)."""
from __future__ import annotations

import contextlib
import subprocess

from harness import CORRAL, CORRAL_PY

ENTRIES = ("run", "run-py", "exec", "exec-py")


def binary(entry: str) -> str:
    return str(CORRAL_PY if entry.endswith("-py") else CORRAL)


def start_session(daemon, *flags, cwd=None, timeout: float = 600) -> str:
    p = subprocess.run([str(CORRAL_PY), "session", "start", "--timeout", str(timeout), *flags],
                       env=daemon.env, cwd=cwd, capture_output=True, text=True, timeout=90)
    assert p.returncode == 0 and p.stdout.strip(), p.stderr
    return p.stdout.strip()


def stop_session(daemon, sid: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(CORRAL_PY), "session", "stop", sid], env=daemon.env,
                          capture_output=True, text=True, timeout=60)


@contextlib.contextmanager
def sandbox(daemon, entry: str, *flags, cwd=None):
    if entry.startswith("run"):
        yield lambda cmd: [binary(entry), "run", *flags, "--", *cmd]
        return
    sid = start_session(daemon, *flags, cwd=cwd)
    try:
        yield lambda cmd: [binary(entry), "exec", sid, "--", *cmd]
    finally:
        stop_session(daemon, sid)
