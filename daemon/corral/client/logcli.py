"""`corral log`: read, filter, follow and verify the audit log.

    corral log [--session ID] [--since T] [--until T] [--kind K] [--verdict V] [--json] [-f]
    corral log verify [--checkpoints FILE [--pubkey FILE]]
    corral log verify --jsonl EXPORT.jsonl [--pubkey FILE]

T is an ISO time (2026-11-29T18:00, local time unless it carries an offset),
seconds since the epoch, or a relative time: 30s, 10m, 2h, 1d, 1w (ago).
Readable by root and by members of the audit group (corral-audit), which does
not give control of the daemon.
"""
from __future__ import annotations

import datetime as dt
import os
import re
import sys
import time
from pathlib import Path

from corral import config
from corral.server.eventlog import scan_segment, segments, verify, read_records

REL_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d|w)$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def add_arguments(p) -> None:
    p.add_argument("action", nargs="?", choices=["show", "verify"], default="show",
                   help="show (default) or verify the hash chain")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--session", action="append", default=[], help="only this session (repeatable)")
    p.add_argument("--since", metavar="TIME", help="ISO time, epoch seconds, or relative (10m, 2h, 1d)")
    p.add_argument("--until", metavar="TIME")
    p.add_argument("--kind", action="append", default=[],
                   help="net, file, dns, rate, lost, session, policy, control, daemon, log (repeatable)")
    p.add_argument("--verdict", action="append", default=[], choices=["allow", "deny", "info"])
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new records")
    p.add_argument("--dir", metavar="DIR", help=f"log directory (default {config.LOG_DIR})")
    p.add_argument("--checkpoints", metavar="FILE",
                   help="verify: also check the log against the signed checkpoints in FILE (a "
                        "copy kept elsewhere: checkpoints.jsonl or a JSON-lines export); a "
                        "truncated or rewritten tail is reported")
    p.add_argument("--jsonl", metavar="FILE",
                   help="verify: check a JSON-lines export on its own (hashes, chain, and the "
                        "signed checkpoints in it, with --pubkey), not the log directory")
    p.add_argument("--pubkey", metavar="FILE",
                   help=f"verify --checkpoints: the public key (default {config.CHECKPOINT_KEY}"
                        "'s .pub)")


def parse_time(text: str, now: float | None = None) -> float:
    now = time.time() if now is None else now
    s = text.strip()
    m = REL_RE.match(s)
    if m:
        return now - float(m.group(1)) * UNITS[m.group(2)]
    try:
        return float(s)
    except ValueError:
        pass
    try:
        t = dt.datetime.fromisoformat(s.replace("Z", "+00:00") if s.endswith("Z") else s)
    except ValueError:
        raise ValueError(f"bad time {text!r}: use ISO (2026-11-29T18:00), epoch seconds, "
                         "or relative (30s, 10m, 2h, 1d)") from None
    return t.timestamp()


class Filter:
    def __init__(self, args):
        self.sessions = set(args.session or [])
        self.kinds = set(args.kind or [])
        self.verdicts = set(args.verdict or [])
        self.since = parse_time(args.since) if args.since else None
        self.until = parse_time(args.until) if args.until else None

    def __call__(self, r: dict) -> bool:
        if self.sessions and r.get("session") not in self.sessions:
            return False
        if self.kinds and r.get("kind") not in self.kinds:
            return False
        if self.verdicts and r.get("verdict") not in self.verdicts:
            return False
        t = r.get("time") or 0
        if self.since is not None and t < self.since:
            return False
        if self.until is not None and t > self.until:
            return False
        return True


def fmt_time(t) -> str:
    try:
        return dt.datetime.fromtimestamp(float(t)).strftime("%Y-%m-%d %H:%M:%S")
    except (TypeError, ValueError, OverflowError):
        return "?"


HEADER = f"{'TIME':19} {'SEQ':>6} {'SESSION':8} {'KIND':7} {'OP':12} {'VERDICT':7} TARGET  [RULE]  WHO"


def policy_diff(old, new) -> list[str]:
    """What a policy update changed, e.g. ["+network.allow 10.0.0.1/32:443"]."""
    out = []
    old, new = old or {}, new or {}
    for section in ("network", "filesystem", "syscalls"):
        o, n = old.get(section), new.get(section)
        if o is None and n is None:
            continue
        if o is None or n is None:
            out.append(f"{'+' if o is None else '-'}{section} (section {'added' if o is None else 'removed'})")
        o, n = o or {}, n or {}
        for k in sorted(set(o) | set(n)):
            ov, nv = o.get(k) or [], n.get(k) or []
            out += [f"+{section}.{k} {x}" for x in nv if x not in ov]
            out += [f"-{section}.{k} {x}" for x in ov if x not in nv]
    if bool(old.get("allow_system_write")) != bool(new.get("allow_system_write")):
        out.append(f"{'+' if new.get('allow_system_write') else '-'}allow_system_write")
    return out


def fmt_row(r: dict) -> str:
    who = []
    if r.get("pid"):
        who.append(f"pid {r['pid']}")
    if r.get("comm"):
        who.append(str(r["comm"]))
    if r.get("uid") is not None:
        who.append(f"uid {r['uid']}")
    target = str(r.get("target") or "")
    if r.get("kind") == "rate" and r.get("count") is not None:
        target = f"{r['count']} event(s) suppressed"
    if r.get("kind") == "policy" and r.get("op") == "update" and isinstance(r.get("policy"), dict):
        target = ", ".join(policy_diff(r.get("old"), r.get("policy"))) or "(no change)"
    if r.get("kind") == "git" and r.get("new"):         # one ref update of a push
        target = f"{target} {str(r.get('old'))[:10]}..{str(r['new'])[:10]} ({r.get('remote')})"
    rule = r.get("rule") or ""
    if r.get("hint"):
        rule = f"{rule}; {r['hint']}" if rule else str(r["hint"])
    return (f"{fmt_time(r.get('time')):19} {r.get('seq', ''):>6} {str(r.get('session') or '-'):8} "
            f"{str(r.get('kind') or '-'):7} {str(r.get('op') or '-'):12} "
            f"{str(r.get('verdict') or '-'):7} {target}"
            + (f"  [{rule}]" if rule else "") + (f"  {' '.join(who)}" if who else ""))


def _emit(r: dict, as_json: bool) -> None:
    if as_json:
        from corral.server.export.schema import to_json
        print(to_json(r), flush=True)      # the export's form (docs/log-schema.md)
    else:
        print(fmt_row(r), flush=True)


def _warn(msg: str) -> None:
    print(f"corral: warning: {msg}", file=sys.stderr)


def follow(directory: Path, flt, as_json: bool, after_seq: int = -1, poll: float = 0.3) -> int:
    """Print records with seq > after_seq as they are appended (across rotation)."""
    seg: Path | None = None
    off = 0
    segs = segments(directory)
    if segs:
        seg = segs[-1]
    while True:
        segs = segments(directory)
        if seg is None and segs:
            seg, off = segs[0], 0
        if seg is not None:
            try:
                with open(seg, "rb") as fh:
                    fh.seek(off)
                    data = fh.read()
            except FileNotFoundError:
                data = b""
            consumed = 0
            for it in scan_segment(seg, data):
                if it.record is not None:
                    consumed = it.offset + it.length
                    if it.record["seq"] > after_seq and flt(it.record):
                        _emit(it.record, as_json)
                elif it.problem == "torn":
                    break           # write in progress: read it next time
                else:
                    _warn(f"{seg.name}: offset {off + it.offset}: undecodable bytes skipped")
                    consumed = it.offset + it.length
            off += consumed
            newer = [s for s in segs if s.name > seg.name]
            if newer and consumed == len(data):
                seg, off = newer[0], 0
                continue
        time.sleep(poll)


def verify_jsonl(path: str, pubkey: str | None) -> int:
    """`corral log verify --jsonl FILE`: an export checked away from the host."""
    from corral.server import checkpoints as C
    from corral.server.export import readback
    try:
        res = readback.check(Path(path))
    except OSError as e:
        print(f"corral: cannot read {path}: {e.strerror}", file=sys.stderr)
        return 1
    for n in res.notes:
        _warn(n)
    ok = not res.errors
    for e in res.errors:
        print(f"BROKEN: {e}")
    if ok:
        print(f"ok: {res.records} record(s) in {path}, seq {res.first_seq}..{res.last_seq}; "
              "hashes and chain intact")
    if res.checkpoints:
        key_file = Path(pubkey) if pubkey else C.pub_path(config.CHECKPOINT_KEY)
        try:
            key = C.load_public_key(key_file)
        except (OSError, ValueError, C.CheckpointKeyError) as e:
            print(f"CHECKPOINTS: cannot read the public key {key_file}: {e}")
            return 1
        errors, notes, summary = C.check(res.by_seq, res.first_seq, res.last_seq,
                                         res.checkpoints, key, source=path)
        for n in notes:
            _warn(n)
        for e in errors:
            print(f"CHECKPOINT FAILED: {e}")
        if errors or not summary["verified"]:
            return 1
        print(f"checkpoints ok: {summary['verified']} of {summary['checkpoints']} signed "
              f"checkpoint(s) match (newest: seq {summary['newest_seq']})")
    return 0 if ok else 1


def verify_checkpoints(directory: Path, cp_file: str, pubkey: str | None) -> bool:
    """The log against signed checkpoints kept elsewhere (server/checkpoints.py).
    Prints what it found; False on any error (bad signature, truncated, rewritten)."""
    from corral.server import checkpoints as C
    key_file = Path(pubkey) if pubkey else C.pub_path(config.CHECKPOINT_KEY)
    try:
        key = C.load_public_key(key_file)
        cps, problems = C.read_checkpoints(Path(cp_file))
    except (OSError, ValueError, C.CheckpointKeyError) as e:
        print(f"CHECKPOINTS: cannot read: {e}")
        return False
    for p in problems:
        _warn(p)
    by_seq, first, last, retention = {}, None, None, None
    for r in read_records(directory, warn=lambda m: None, tail_ok=True):
        seq = r.get("seq")
        by_seq[seq] = r.get("hash")
        first = seq if first is None else first
        last = seq
        if r.get("kind") == "log" and r.get("op") == "retention":
            retention = r
    errors, notes, summary = C.check(by_seq, first, last, cps, key, source=cp_file,
                                     retention=retention)
    for n in notes:
        _warn(n)
    for e in errors:
        print(f"CHECKPOINT FAILED: {e}")
    if not cps:
        print(f"CHECKPOINTS: {cp_file} holds no checkpoint")
        return False
    if not errors:
        print(f"checkpoints ok: {summary['verified']} of {summary['checkpoints']} signed "
              f"checkpoint(s) match the log (newest: seq {summary['newest_seq']}, "
              f"{fmt_time(summary['newest_time'])})")
    return not errors and summary["verified"] > 0


def main(args) -> int:
    if args.action == "verify" and getattr(args, "jsonl", None):
        return verify_jsonl(args.jsonl, args.pubkey)
    directory = Path(args.dir) if getattr(args, "dir", None) else config.LOG_DIR
    if not directory.exists():
        print(f"corral: no audit log at {directory}", file=sys.stderr)
        return 1
    try:
        os.listdir(directory)
    except PermissionError:
        print(f"corral: cannot read the audit log in {directory}: permission denied "
              f"(root and members of group {config.AUDIT_GROUP} may read it)", file=sys.stderr)
        return 1
    if (directory / "current.log").exists():
        _warn(f"{directory}/current.log is a log from a corral version without a hash chain; "
              "it is not read or verified (any msgpack reader can read it)")
    try:
        if args.action == "verify":
            res = verify(directory)
            for w in res.warnings:
                _warn(w)
            cp_ok = True
            if getattr(args, "checkpoints", None):
                cp_ok = verify_checkpoints(directory, args.checkpoints, args.pubkey)
            if res.ok:
                print(f"ok: {res.records} record(s) in {res.segments} segment(s), "
                      f"seq {res.first_seq}..{res.last_seq}; hash chain intact")
                return 0 if cp_ok else 1
            e = res.error
            print(f"BROKEN: segment {e['segment']} offset {e['offset']} seq {e['seq']}: {e['reason']} "
                  f"({res.records} record(s) before it verified)")
            return 1
        try:
            flt = Filter(args)
        except ValueError as e:
            print(f"corral: {e}", file=sys.stderr)
            return 2
        if not args.json and sys.stdout.isatty():
            print(HEADER)
        last = -1
        for r in read_records(directory, warn=_warn, tail_ok=True):
            last = max(last, r.get("seq", -1))
            if flt(r):
                _emit(r, args.json)
        if args.follow:
            try:
                return follow(directory, flt, args.json, after_seq=last)
            except KeyboardInterrupt:
                return 0
        return 0
    except PermissionError as e:
        print(f"corral: cannot read the audit log: {e} (root and members of group "
              f"{config.AUDIT_GROUP} may read it)", file=sys.stderr)
        return 1
