"""A session's name and labels (`corral run --name NAME --label KEY=VALUE`): they
ride on every audit record of the session (session_name, labels), so the records of
a fleet's hosts can be joined. Checked the same way by the CLI and the daemon."""
from __future__ import annotations

import re

MAX_LABELS = 32
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}$")
KEY_RE = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{0,62}$")
MAX_VALUE = 256


class LabelError(ValueError):
    pass


def check_name(name) -> str | None:
    if name is None:
        return None
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise LabelError(f"session name {name!r}: 1-128 characters, letters, digits and "
                         "._:@/- (starting with a letter or digit)")
    return name


def check_labels(labels) -> dict[str, str]:
    if labels is None:
        return {}
    if not isinstance(labels, dict):
        raise LabelError("labels must be a map of KEY to VALUE")
    if len(labels) > MAX_LABELS:
        raise LabelError(f"{len(labels)} labels: at most {MAX_LABELS}")
    for k, v in labels.items():
        if not isinstance(k, str) or not KEY_RE.match(k):
            raise LabelError(f"label key {k!r}: a letter, then letters, digits, ._- "
                             "(at most 63 characters)")
        if not isinstance(v, str) or len(v) > MAX_VALUE or any(ord(c) < 32 for c in v):
            raise LabelError(f"label {k}: the value must be text of at most {MAX_VALUE} "
                             "characters without control characters")
    return dict(labels)


def parse_label_args(items: list[str]) -> dict[str, str]:
    """--label KEY=VALUE (repeatable; a repeated KEY keeps the last)."""
    out = {}
    for it in items:
        k, sep, v = it.partition("=")
        if not sep:
            raise LabelError(f"--label {it!r}: write KEY=VALUE")
        out[k] = v
    return check_labels(out)
