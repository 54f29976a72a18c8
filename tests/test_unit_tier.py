"""The unit tier (tests/unit) runs as an unprivileged user: as nobody, with no
groups, from the checkout nobody can read but not write, writing no caches."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time

from conftest import REPO, UNIT

NOBODY = 65534


def test_unit_tier_passes_as_nobody():
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is missing"
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", HOME="/nonexistent")
    t0 = time.monotonic()
    p = subprocess.run([setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs",
                        str(UNIT)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    took = time.monotonic() - t0
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-5000:]
    summary = out.strip().splitlines()[-1]
    assert re.search(r"\d+ passed", summary), summary
    # Nothing in the unit tier may need root: as nobody it is neither skipped nor failed.
    for word in ("skipped", "failed", "error", "deselected"):
        assert word not in summary, summary
    print(f"unit tier as nobody: {summary} ({took:.1f}s)")

