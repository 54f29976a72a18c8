"""Where the BPF C sources are: package data in an installed corral
(setup.py copies bpf/ to corral/kernel/bpf/), bpf/ at the top of a source checkout."""
from __future__ import annotations

import os
from pathlib import Path

_PKG = Path(__file__).resolve().parent / "bpf"            # installed: package data
_CHECKOUT = Path(__file__).resolve().parents[3] / "bpf"   # daemon/corral/kernel -> repo


def bpf_dir() -> Path:
    env = os.environ.get("CORRAL_BPF_DIR")
    if env:
        return Path(env)
    for cand in (_PKG, _CHECKOUT):
        if (cand / "net.c").exists():
            return cand
    raise FileNotFoundError(f"corral's BPF sources are not in {_PKG} or {_CHECKOUT} "
                            "(reinstall corral, or set CORRAL_BPF_DIR)")
