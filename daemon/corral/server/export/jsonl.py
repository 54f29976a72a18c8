"""JSON-lines export: one record (or checkpoint) a line, appended to a file that
Vector, Fluent Bit or the OpenTelemetry Collector tail. The file is root:corral-audit
0640. Log rotation: a file moved or removed is noticed at the next batch and a new
one started (create/move rotation); copytruncate works too (O_APPEND)."""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from corral.server.export.schema import to_json


class JsonlSink:
    name = "jsonl"

    def __init__(self, path, gid: int = 0):
        self.path = Path(path)
        self.gid = gid
        self._fd = -1
        self._ino = None
        self.reopened = 0
        self._open()

    def _open(self) -> None:
        """O_NOFOLLOW and a check of what was opened: corrald runs as root and gives the
        file to the audit group, so a symlink or someone else's file planted at the
        path (a world-writable directory) must not become readable by that group."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
                     | os.O_NOFOLLOW | os.O_NONBLOCK, 0o640)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_nlink != 1:
            os.close(fd)
            raise OSError(errno.EPERM, f"{self.path} is not a regular file of uid "
                                       f"{os.geteuid()} with one link: not written")
        if os.geteuid() == 0:
            os.fchown(fd, 0, self.gid)
        if self._fd >= 0:
            os.close(self._fd)
            self.reopened += 1
        self._fd = fd
        self._ino = os.fstat(fd).st_ino

    def _check_rotated(self) -> None:
        try:
            st = os.stat(self.path)
            if st.st_ino == self._ino:
                return
        except FileNotFoundError:
            pass
        self._open()

    def write_batch(self, objs: list[dict]) -> None:
        self._check_rotated()
        data = "".join(to_json(o) + "\n" for o in objs).encode()
        size = os.fstat(self._fd).st_size
        view = memoryview(data)
        try:
            while view:
                n = os.write(self._fd, view)
                if n <= 0:
                    raise OSError(errno.EIO, "write(2) wrote nothing")
                view = view[n:]
        except OSError:
            try:                # no torn line for the tailer: cut the partial batch off
                os.ftruncate(self._fd, size)
            except OSError:
                pass
            raise

    def describe(self) -> dict:
        return {"path": str(self.path)}

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
