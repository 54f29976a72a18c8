"""`corral run`'s two processes: the command, and the one that waits for it.

start() forks. The child returns and does what `corral run` always did:
register (the daemon moves it into the new session: it is the session's
leader), confine itself, exec the command. It hands the session id to the
parent through a pipe right after registering, before confinement closes its
inherited descriptors.

The parent never returns from start(). It stays outside the session,
unconfined, holding nothing of the child's (its stdin and stdout are
/dev/null; stderr stays, for its warnings). It ignores SIGINT and SIGQUIT
(the terminal sends them to the command too, which is in the same process
group), forwards SIGTERM and SIGHUP to the command, and waits for it. When it
exits, unless the session keeps running, the parent asks the daemon to end the
session, which kills whatever the command left in it (background jobs,
`setsid nohup` daemons) and answers once the cgroup is empty. Then the parent
exits with the command's status: the same code, or the same signal raised on
itself. If the parent is killed, the daemon still ends the session when its
leader exits."""
from __future__ import annotations

import os
import resource
import signal
import sys

FORWARDED = (signal.SIGTERM, signal.SIGHUP)
IGNORED = (signal.SIGINT, signal.SIGQUIT)
END_TIMEOUT = 5.0       # seconds for the daemon to end the session and answer


def start(keep_running: bool, quiet: bool = False):
    """Fork; in the child return report(sid), to be called once the session is
    registered. In the parent: supervise the child, then exit."""
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except (OSError, ValueError):
            pass
    r, w = os.pipe()                    # O_CLOEXEC (PEP 446)
    handled = FORWARDED + IGNORED
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, handled)
    try:
        pid = os.fork()
    except OSError as e:
        print(f"corral: cannot start the command: fork: {e.strerror}", file=sys.stderr)
        sys.exit(1)
    if pid == 0:
        os.close(r)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)

        def report(sid: str) -> None:
            try:
                os.write(w, sid.encode())
            except OSError:
                pass                    # the parent is gone: the daemon still ends the session
            os.close(w)
        return report
    os.close(w)
    _supervise(pid, r, keep_running, old_mask, quiet)


def _supervise(pid: int, r: int, keep_running: bool, old_mask, quiet: bool = False) -> None:
    try:
        child = os.pidfd_open(pid)      # signals reach this child, never a reused pid
    except OSError:
        child = -1                      # (pre-5.3) the pid: ours, not reaped until we wait
    for sig in IGNORED:
        signal.signal(sig, signal.SIG_IGN)

    def forward(sig, _frame):
        try:
            if child >= 0:
                signal.pidfd_send_signal(child, sig)
            else:
                os.kill(pid, sig)
        except OSError:
            pass
    for sig in FORWARDED:
        signal.signal(sig, forward)
    signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    sid = b""
    while True:
        chunk = os.read(r, 64)          # the id, then EOF (or EOF alone: no session)
        if not chunk:
            break
        sid += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    # The child is reaped: nothing to forward to any more, and the clean-up is bounded.
    for sig in FORWARDED:
        signal.signal(sig, signal.SIG_IGN)
    if child >= 0:
        os.close(child)
    code = os.waitstatus_to_exitcode(status)
    if sid and not keep_running:
        _end(sid.decode(errors="replace"),
             f"exit status {code}" if code >= 0 else f"killed by signal {-code}", quiet)
    _exit_like(code)


def _end(sid: str, note: str, quiet: bool = False) -> None:
    from corral.client.connection import Client, CorralError
    try:
        # Bounded: the daemon answers within seconds (its kill wait is bounded);
        # one that does not (overloaded) still ends the session on its own.
        with Client(timeout=END_TIMEOUT) as c:
            done = c.call("end_session", session=sid, reason=note)
        if not quiet:
            summary(sid, (done or {}).get("denied") or {})
    except CorralError as e:
        if e.code != "not_found":       # already ended (emptied, or the daemon was first)
            print(f"corral: warning: could not end session {sid}: {e.message}; corrald ends "
                  f"it when it next finds its command gone", file=sys.stderr)
    except OSError as e:
        print(f"corral: warning: could not end session {sid}: {e}", file=sys.stderr)


def summary(sid: str, denied: dict) -> None:
    """One line on stderr when something was refused: what, how often, and where
    to read about it (the tools' own errors rarely say a sandbox was involved)."""
    if not denied:
        return
    parts = ", ".join(f"{n} {kind}" for kind, n in sorted(denied.items(), key=lambda kv: -kv[1]))
    print(f"corral: session {sid}: refused {parts}; see `corral log --session {sid}` "
          "(-q: no summary)", file=sys.stderr)


def _exit_like(code: int) -> None:
    """Exit with `code` (waitstatus_to_exitcode: negative for a signal), so the
    shell sees what it would have seen of the command."""
    if code < 0:
        sig = -code
        try:
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))   # no core of ours
        except (OSError, ValueError):
            pass
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass                        # SIGKILL: no handler to reset
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
        os.kill(os.getpid(), sig)
        code = 128 + sig                # a signal whose default is not to die
    sys.stderr.flush()
    os._exit(code)
