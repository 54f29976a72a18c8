"""Kernel event records (bpf/common.h `struct event`) -> audit log records."""
from __future__ import annotations

import ipaddress
import struct
import time

EVENT = struct.Struct("<QQII16sBBHIIIQ16s256s")

KINDS = {1: "net", 2: "file", 3: "dns", 4: "rate"}
NET_OPS = {1: "connect", 2: "connect", 3: "sendmsg", 4: "sendmsg", 5: "socket"}
FILE_OPS = {1: "open_read", 2: "open_write", 3: "create", 4: "mkdir", 5: "mknod",
            6: "symlink", 7: "link", 8: "unlink", 9: "rmdir", 10: "rename_from",
            11: "rename_to", 12: "truncate", 13: "setattr", 14: "unix_connect", 15: "too_deep"}
AF_INET, AF_INET6 = 2, 10
RULE_DEFAULT_DENY, RULE_UNSPECIFIED, RULE_USER = 0, 1, 16


def _boot_offset() -> float:
    """bpf_ktime_get_ns is CLOCK_MONOTONIC; add this to get wall time."""
    return time.time() - time.monotonic()


_OFFSET = _boot_offset()


def decode(raw: bytes) -> dict:
    (ts, cgid, pid, uid, comm, kind, op, port, family, rule, verdict, count, addr,
     path) = EVENT.unpack_from(raw)
    rec = {
        "time": ts / 1e9 + _OFFSET,
        "cgid": cgid,
        "pid": pid,
        "uid": uid,
        "comm": comm.split(b"\0", 1)[0].decode(errors="replace"),
        "kind": KINDS.get(kind, f"kind{kind}"),
        "verdict": "deny" if verdict else "allow",
        "rule_id": rule,
        "suppressed_before": count,
    }
    if kind == 1:
        rec["op"] = NET_OPS.get(op, f"op{op}")
        if op == 5:
            rec["target"] = f"protocol {port} (family {family})"
        elif family == AF_INET6:
            rec["target"] = f"[{ipaddress.IPv6Address(addr)}]:{port}"
        else:
            rec["target"] = f"{ipaddress.IPv4Address(addr[:4])}:{port}"
        rec["proto"] = "udp" if op in (3, 4) else "tcp/udp"
    elif kind == 2:
        rec["op"] = FILE_OPS.get(op, f"op{op}")
        rec["target"] = path.split(b"\0", 1)[0].decode(errors="replace")
    else:
        rec["op"] = f"op{op}"
        rec["target"] = path.split(b"\0", 1)[0].decode(errors="replace")
    return rec


FILE_RULES = {RULE_DEFAULT_DENY: "default-deny (not under allow_write)",
              2: "path deeper than the walk bound (fail closed)",
              3: "hard link to a read-denied file",
              4: "check interrupted (fail closed)",
              5: "moves a directory that holds protected paths"}


def describe_file_rule(rule_id: int, rule: tuple[str, str] | None) -> str:
    if rule is not None:
        return f"{rule[0]} {rule[1]}"
    return FILE_RULES.get(rule_id, f"rule#{rule_id}")


def describe_rule(rule_id: int, rules: list[str]) -> str:
    if rule_id == RULE_DEFAULT_DENY:
        return "default-deny"
    idx = rule_id - RULE_USER
    if 0 <= idx < len(rules):
        return rules[idx]
    return f"rule#{rule_id}"
