"""pid -> (cgroup id, comm) of processes that exited recently: bpf/exits.c on
the sched_process_exit raw tracepoint, filling an LRU map.

It runs in the exiting task before it leaves its cgroup, so a creator that is
gone by the time its fanotify report is read (server/namewatch.py) is still
placed. What it cannot place:
* an exit evicted from the map (16384 entries, oldest first) before its
  report is read;
* anything, when the program cannot be compiled or attached (no bcc, no
  kernel headers or BTF, no raw tracepoints): the caller then treats every
  creator that has exited as unknown.
"""
from __future__ import annotations

import logging
import time

log = logging.getLogger("corral.exits")


class ExitTracker:
    """Compiled and attached while it is built (raises if it cannot be);
    detached by close(), or with the daemon's process."""

    def __init__(self):
        from corral.kernel import bpf
        t0 = time.monotonic()
        b, self.header_mode = bpf.compile_program("exits.c")
        try:
            b.attach_raw_tracepoint(tp=b"sched_process_exit", fn_name=b"corral_exits")
            self._map = b[b"exits"]
        except Exception:
            b.cleanup()
            raise
        self._bpf = b
        self.load_seconds = time.monotonic() - t0
        log.info("exit tracker: bpf/exits.c compiled and attached in %.2f s (%s headers)",
                 self.load_seconds, self.header_mode)

    def lookup(self, pid: int) -> tuple[int, str] | None:
        """(cgroup id, comm) of `pid` if it exited lately, else None."""
        if self._bpf is None:
            return None
        try:
            v = self._map[self._map.Key(pid)]
        except KeyError:
            return None
        return v.cgid, v.comm.decode(errors="replace")

    def close(self) -> None:
        if self._bpf is not None:
            self._bpf.cleanup()     # detaches the program, closes the map
            self._bpf = None
