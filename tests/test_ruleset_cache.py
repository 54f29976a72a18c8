"""corrald's kept Landlock plans and pinned rule inodes (runprep._cached_plan):
a kept ruleset never grants more than a fresh one would. In-process, root."""
import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "daemon"))
from corral.client import landlock  # noqa: E402
from corral.server import runprep  # noqa: E402

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or landlock.abi() <= 0,
                                reason="needs root and Landlock")
GUARD = {"mountguard": False}


@pytest.fixture(autouse=True)
def _fds():
    """Room to pin (corrald raises its limit the same way: daemon.raise_fd_limit)."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    yield
    runprep._drop_plans()
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _readable_under(fd: int, path: str) -> bool:
    """Whether a child confined by ruleset `fd` can read `path`."""
    pid = os.fork()
    if pid == 0:
        try:
            landlock.restrict(fd, close=False)
            with open(path, "rb"):
                os._exit(0)
        except PermissionError:
            os._exit(1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code in (0, 1), code
    return code == 0


def test_replaced_rule_path_is_not_reused(tmp_path):
    """pub/ is readable, secret/ not. Swap them (secret -> s0, pub -> secret) after
    the plan was kept and its inodes pinned: the inode that had pub's read rule
    is now secret/ and must not be readable. Fails if the stamp check goes."""
    runprep._drop_plans()
    (tmp_path / "pub").mkdir()
    (tmp_path / "pub" / "f").write_text("was public")
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "f").write_text("secret")
    fs = {"deny_read": [str(tmp_path / "secret")], "allow_write": [str(tmp_path)]}
    time.sleep(1.2)                  # settled: the plan is kept
    calls = []
    real = landlock.build_ruleset
    landlock.build_ruleset = lambda *a: calls.append(1) or real(*a)
    try:
        # Made, kept, then served from the pins (retried: a busy /tmp above
        # tmp_path keeps it unsettled for a while).
        for _ in range(30):
            before = len(calls)
            fd, _, _ = runprep._ruleset(fs, GUARD)
            try:
                assert _readable_under(fd, str(tmp_path / "pub" / "f"))
                assert not _readable_under(fd, str(tmp_path / "secret" / "f"))
            finally:
                os.close(fd)
            if len(calls) == before:
                break
            time.sleep(0.3)
        else:
            pytest.fail("the plan was never kept")
        built = len(calls)
        os.rename(tmp_path / "secret", tmp_path / "s0")
        os.rename(tmp_path / "pub", tmp_path / "secret")
        fd, _, _ = runprep._ruleset(fs, GUARD)
        try:
            assert not _readable_under(fd, str(tmp_path / "secret" / "f"))
        finally:
            os.close(fd)
        assert len(calls) == built + 1
    finally:
        landlock.build_ruleset = real
        runprep._drop_plans()


def test_pinned_matches_fresh(tmp_path):
    """Served from pins: the same rule count as a fresh build."""
    runprep._drop_plans()
    (tmp_path / "d").mkdir()
    fs = {"deny_read": [str(tmp_path / "d")], "allow_write": [str(tmp_path)]}
    time.sleep(1.2)
    counts = []
    for _ in range(3):
        fd, _, n = runprep._ruleset(fs, GUARD)
        os.close(fd)
        counts.append(n)
    assert len(set(counts)) == 1 and counts[0] > 0
    runprep._drop_plans()
