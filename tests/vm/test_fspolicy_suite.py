"""The backend-independent file policy suite (tests/fspolicy_suite.py) against
the BPF LSM backend: fork, join a fresh cgroup, FileLsm.add_session, exec."""
from __future__ import annotations

import sys

import pytest

from vmhelpers import REPO, Session

sys.path.insert(0, str(REPO / "tests"))
suite = pytest.importorskip("fspolicy_suite")


@pytest.fixture(scope="module")
def runner(lsm):
    def run(policy, argv):
        s = Session(lsm, policy)
        try:
            return s.run(argv, timeout=120)
        finally:
            s.close()
    return run


@pytest.mark.parametrize("case", suite.CASES, ids=lambda c: c.name)
def test_fspolicy(case, runner, tmp_path):
    suite.run_case(case, runner, "bpf-lsm", tmp_path)
