"""Kernel event records (bpf/common.h `struct event`, kernel/abi.py) -> audit log records."""
from __future__ import annotations

import ipaddress
import time

from corral.kernel import abi
from corral.kernel.abi import AF_INET6, FILE_OPS, KINDS, NET_OPS, RULE_DEFAULT_DENY, RULE_USER  # noqa: F401


def _boot_offset() -> float:
    """bpf_ktime_get_ns is CLOCK_MONOTONIC; add this to get wall time."""
    return time.time() - time.monotonic()


_OFFSET = _boot_offset()


def _text(b: bytes) -> str:
    return b.split(b"\0", 1)[0].decode(errors="replace")


def decode(raw: bytes) -> dict:
    e = abi.unpack_event(raw)
    kind, op, port, family = e.kind, e.op, e.port, e.family
    rec = {
        "time": e.ts_ns / 1e9 + _OFFSET,
        "cgid": e.cgid,
        "pid": e.pid,
        "uid": e.uid,
        "comm": _text(e.comm),
        "kind": KINDS.get(kind, f"kind{kind}"),
        "verdict": "deny" if e.verdict else "allow",
        "rule_id": e.rule,
        "suppressed_before": e.count,
    }
    addr = bytes(e.addr)
    path = e.path             # a c_char array reads up to its first NUL
    if kind == abi.EV_NET:
        rec["op"] = NET_OPS.get(op, f"op{op}")
        if op == abi.OP_SOCKET:
            rec["target"] = f"protocol {port} (family {family})"
        elif family == abi.AF_UNIX:
            rec["target"] = _text(path)
        elif family == AF_INET6:
            rec["target"] = f"[{ipaddress.IPv6Address(addr)}]:{port}"
        else:
            rec["target"] = f"{ipaddress.IPv4Address(addr[:4])}:{port}"
        rec["proto"] = ("unix" if family == abi.AF_UNIX else
                        "udp" if op in (abi.OP_SENDMSG4, abi.OP_SENDMSG6) else "tcp/udp")
    elif kind == abi.EV_FILE:
        rec["op"] = FILE_OPS.get(op, f"op{op}")
        rec["target"] = _text(path)
    else:
        rec["op"] = f"op{op}"
        rec["target"] = _text(path)
    return rec


FILE_RULES = {RULE_DEFAULT_DENY: "default-deny (not under allow_write)",
              abi.RULE_FILE_TOO_DEEP: "path deeper than the walk bound (fail closed)",
              abi.RULE_FILE_HARDLINK: "hard link to a read-denied file",
              abi.RULE_FILE_RACE: "check interrupted (fail closed)",
              abi.RULE_FILE_PROTECTED_ANCESTOR: "moves a directory that holds protected paths"}


def describe_file_rule(rule_id: int, rule: tuple[str, str] | None) -> str:
    if rule is not None:
        return f"{rule[0]} {rule[1]}"
    return FILE_RULES.get(rule_id, f"rule#{rule_id}")


def describe_rule(rule_id: int, rules: list[str]) -> str:
    if rule_id == RULE_DEFAULT_DENY:
        return "default-deny"
    if rule_id == abi.RULE_UNIX_FOREIGN:
        return "a Unix socket of a process outside the session (not in unix.allow)"
    idx = rule_id - RULE_USER
    if 0 <= idx < len(rules):
        return rules[idx]
    return f"rule#{rule_id}"
