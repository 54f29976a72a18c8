"""The shared file-policy suite through `corral run` on this host: what a user
gets (the mount view, Landlock, corrald's watch of missing protected names),
not one layer alone. Each case in a fresh tree, the policy exactly the suite's
(the mandatory protections dropped by name so they do not add to it)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import fspolicy_suite
from corral.policy.files import MANDATORY_NAMES

CORRAL = str(Path(sys.executable).parent / "corral")


def _toml(policy: dict) -> str:
    lines = ["[filesystem]"]
    for k, v in policy.items():
        lines.append(f"{k} = [" + ", ".join(f'"{p}"' for p in v) + "]")
    if "/" in policy.get("allow_write", []):
        lines.append("allow_system_write = true")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("case", fspolicy_suite.CASES, ids=lambda c: c.name)
def test_fspolicy_suite_through_corral_run(daemon, case, tmp_path):
    base = tmp_path / "t"
    base.mkdir()
    pol = tmp_path / "policy.toml"

    def runner(policy, argv):
        pol.write_text(_toml(policy))
        flags = [a for n in MANDATORY_NAMES for a in ("--no-mandatory", n)]
        p = subprocess.run([CORRAL, "run", "--policy", str(pol), *flags, "--", *argv],
                           cwd=str(base), env=daemon.env, capture_output=True, text=True,
                           timeout=120)
        return p.returncode, p.stdout, p.stderr
    fspolicy_suite.run_case(case, runner, "host", base)
