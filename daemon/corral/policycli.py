"""`corral policy`, `corral allow`, `corral deny`."""
from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("action", choices=["show", "check", "list"])
    p.add_argument("target", nargs="?")


def main(args) -> int:
    print("not implemented yet")
    return 1


def add_adjust_arguments(p) -> None:
    p.add_argument("session")
    p.add_argument("--net", action="append", default=[])
    p.add_argument("--domain", action="append", default=[])
    p.add_argument("--write", action="append", default=[])


def adjust(args) -> int:
    print("not implemented yet")
    return 1
