"""Policy files, profiles and imports -> the policy dict (see policy.py).

(Minimal version; strict TOML validation, profiles, srt import and mandatory
protections land with issue 5.)"""
from __future__ import annotations

import tomllib

from .policy import PolicyError


def load_policy_file(path: str) -> dict:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as e:
        raise PolicyError(f"{path}: {e}") from None


def load_profile(name: str) -> dict:
    raise PolicyError(f"unknown profile {name!r}")


def import_srt_settings(path: str) -> tuple[dict, list[str]]:
    raise PolicyError("srt settings import not implemented yet")


def merge(base: dict, extra: dict) -> dict:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for section, vals in extra.items():
        if vals is None:
            continue
        cur = out.get(section)
        if cur is None:
            out[section] = {k: list(v) for k, v in vals.items()}
            continue
        for k, v in vals.items():
            cur[k] = list(cur.get(k) or []) + [x for x in v if x not in (cur.get(k) or [])]
    return out


def apply_mandatory(policy: dict, dropped: set[str]) -> dict:
    return policy
