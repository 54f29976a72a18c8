"""Port ranges as policies write them: PORT or LO-HI, 1-65535 (network rules,
allow_localhost_ports and domain rules share this syntax)."""
from __future__ import annotations

from corral.policy.errors import PolicyError, short

MAX_PORT_LEN = 11         # "65535-65535"


def port_text(lo: int, hi: int) -> str:
    """A range as policies write it: "443" or "8000-8099"."""
    return str(lo) if lo == hi else f"{lo}-{hi}"


def parse_ports(text: str, what: str) -> tuple[int, int]:
    if len(text) > MAX_PORT_LEN:
        raise PolicyError(f"{what}: bad port {short(text)}: use PORT or PORT-PORT (1-65535)")
    lo_s, sep, hi_s = text.partition("-")
    try:
        lo = int(lo_s)
        hi = int(hi_s) if sep else lo
    except ValueError:
        raise PolicyError(f"{what}: bad port {text!r}: use PORT or PORT-PORT (1-65535)") from None
    if not (1 <= lo <= hi <= 65535):
        raise PolicyError(f"{what}: bad port range {text!r}: ports are 1-65535, low <= high")
    return lo, hi
