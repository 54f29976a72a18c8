"""What one client may ask of corrald: the numbers, and the one rate limiter.

Every limit is per principal: a process inside a session counts against its
session ("session:<id>"), a process outside every session against its uid
("uid:<n>"). So a root agent inside a session cannot use up root's own quota,
and one user cannot starve another. Root outside sessions gets larger numbers,
not none: a runaway script of root's must not take the daemon down either.

The values are documented in README.md ("Limits"); a refusal names the limit
and the error code (protocol.E_LIMIT, E_RATE)."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass


def _env(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


# Connections open at once, per principal and in all.
MAX_CONN_PER_PRINCIPAL = _env("CORRAL_MAX_CONN_PER_PRINCIPAL", 64)
MAX_CONN_ROOT = _env("CORRAL_MAX_CONN_ROOT", 256)
MAX_CONN_TOTAL = _env("CORRAL_MAX_CONN_TOTAL", 4096)
# A connection must send a whole frame header within this many seconds of
# connecting or of its last answer (event subscribers are exempt: they only
# listen), and the body within BODY_TIMEOUT of its header.
IDLE_TIMEOUT = float(_env("CORRAL_IDLE_TIMEOUT", 60))
BODY_TIMEOUT = 10.0
# Bytes of events queued for one subscriber that does not read; past this it
# is disconnected (a reader that keeps up never gets near it).
EVENT_BACKLOG = _env("CORRAL_EVENT_BACKLOG", 1 << 20)
# Requests per second per principal (token bucket: rate, burst).
REQ_RATE, REQ_BURST = _env("CORRAL_REQ_RATE", 200), _env("CORRAL_REQ_BURST", 400)
# Refusals written to the audit log per principal (the rest are counted and
# the count is logged with the next written refusal, or within a few seconds).
REFUSAL_LOG_RATE, REFUSAL_LOG_BURST = 5, 20
# Sessions alive at once and kernel rule entries (policy.rule_count) per owner uid.
MAX_SESSIONS_PER_USER = _env("CORRAL_MAX_SESSIONS_PER_USER", 128)
MAX_SESSIONS_ROOT = _env("CORRAL_MAX_SESSIONS_ROOT", 1024)
MAX_RULES_PER_USER = _env("CORRAL_MAX_RULES_PER_USER", 8192)
MAX_RULES_ROOT = _env("CORRAL_MAX_RULES_ROOT", 32768)   # the shared tries hold 65536
# Shape of any client-supplied value: nesting, items, string bytes.
MAX_DEPTH = 8                 # a request {op, policy: {section: {key: [str]}}} is 4 deep
MAX_POLICY_DEPTH = 3          # {section: {key: [value]}} below "policy"
MAX_FILES = 8                 # run_prepare: policy files the launcher sends (launcher.c)
MAX_FILE_BYTES = 128 * 1024   # ... and their bytes (MAX_POLICY_BYTES there)
MAX_ITEMS = 20000             # list/map entries in one request, all levels together
MAX_STR = 8192                # bytes in one string (paths are at most 4096)
MAX_ID = 64                   # a request id: an int, or a string this short
MAX_REASON = 1024
MAX_REPORT_BYTES = 64 << 10   # a confinement report


def conn_limit(uid: int, principal: str) -> int:
    return MAX_CONN_ROOT if uid == 0 and principal.startswith("uid:") else MAX_CONN_PER_PRINCIPAL


def session_limit(uid: int) -> int:
    return MAX_SESSIONS_ROOT if uid == 0 else MAX_SESSIONS_PER_USER


def rule_limit(uid: int) -> int:
    return MAX_RULES_ROOT if uid == 0 else MAX_RULES_PER_USER


@dataclass
class Bucket:
    """Token bucket: `rate` tokens a second, at most `burst` saved up."""
    rate: float
    burst: float
    tokens: float = -1.0
    stamp: float = 0.0
    refused: int = 0              # takes refused since the last granted one

    def take(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        if self.tokens < 0:
            self.tokens, self.stamp = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        self.refused += 1
        return False


class Buckets:
    """One bucket per key, forgotten when full and idle (bounded memory)."""

    def __init__(self, rate: float, burst: float, max_keys: int = 65536):
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self.by_key: dict[str, Bucket] = {}

    def get(self, key: str) -> Bucket:
        b = self.by_key.get(key)
        if b is None:
            if len(self.by_key) >= self.max_keys:
                self.prune()
            b = self.by_key[key] = Bucket(self.rate, self.burst)
        return b

    def prune(self) -> list[tuple[str, int]]:
        """Drop buckets that have refilled; return (key, refused) still owed a record."""
        now = time.monotonic()
        owed = []
        for k, b in list(self.by_key.items()):
            if b.refused:
                owed.append((k, b.refused))
                b.refused = 0
            if b.tokens + (now - b.stamp) * b.rate >= b.burst:
                del self.by_key[k]
        return owed
