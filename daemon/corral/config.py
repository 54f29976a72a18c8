"""Where an instance of corral keeps its things.

CORRAL_INSTANCE (default "corral") names the cgroup, the bpffs pin directory,
the socket, the state and the log, so a test daemon can run beside the system
one without touching it. Each path can also be overridden on its own."""
from __future__ import annotations

import os
from pathlib import Path

INSTANCE = os.environ.get("CORRAL_INSTANCE", "corral")


def _path(var: str, default: str) -> Path:
    return Path(os.environ.get(var, default))


RUN_DIR = _path("CORRAL_RUN_DIR", f"/run/{INSTANCE}")
# Beside the run directory, not in it: sessions may never write corral's state,
# but connecting to the socket counts as a write for the BPF LSM backend.
SOCKET = _path("CORRAL_SOCKET", f"{RUN_DIR.parent}/{RUN_DIR.name}.sock")
STATE_DIR = RUN_DIR / "sessions"
LOG_DIR = _path("CORRAL_LOG_DIR", f"/var/log/{INSTANCE}")
PIN_DIR = _path("CORRAL_PIN_DIR", f"/sys/fs/bpf/{INSTANCE}")
CGROUP_NAME = os.environ.get("CORRAL_CGROUP_NAME", INSTANCE)
CACHE_DIR = _path("CORRAL_CACHE_DIR", "/var/cache/corral")
# Members of this group may read the audit log but not control the daemon.
AUDIT_GROUP = os.environ.get("CORRAL_AUDIT_GROUP", "corral-audit")
# Operator configuration: corrald's settings (corral.toml), the named policies an
# operator ships (policies.d/*.toml, owned by the daemon: see server/policydir.py),
# and the checkpoint signing key (server/checkpoints.py), made at first start.
CONFIG_DIR = _path("CORRAL_CONFIG_DIR", f"/etc/{INSTANCE}")
CONFIG_FILE = _path("CORRAL_CONFIG", str(CONFIG_DIR / "corral.toml"))
POLICIES_DIR = _path("CORRAL_POLICIES_DIR", str(CONFIG_DIR / "policies.d"))
CHECKPOINT_KEY = _path("CORRAL_CHECKPOINT_KEY", str(CONFIG_DIR / "checkpoint.key"))
