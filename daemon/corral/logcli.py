"""`corral log`: read the audit log as JSON lines or a table."""
from __future__ import annotations

import json

from .config import LOG_DIR
from .eventlog import read_records


def add_arguments(p) -> None:
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--session", help="only this session")
    p.add_argument("--follow", "-f", action="store_true")


def main(args) -> int:
    for rec in read_records(LOG_DIR):
        if args.session and rec.get("session") != args.session:
            continue
        print(json.dumps(rec, default=str) if args.json else
              f"{rec.get('time', 0):.3f} {rec.get('session') or '-':8} {rec.get('kind')} "
              f"{rec.get('op')} {rec.get('verdict')} {rec.get('target')} ({rec.get('rule')})")
    return 0
