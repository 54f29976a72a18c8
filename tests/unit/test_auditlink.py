"""Kernel audit records -> corral records (corral.server.auditlink), from text:
the exclude rules, field parsing, grouping, syscall names, cgroup filtering, the
rate limit. What the real kernel reports: tests/test_auditlink.py."""
from __future__ import annotations

import os
import time

from corral.server import auditlink


def test_exclude_rules_cover_everything_but_kept_types():
    conds = auditlink._exclude_conds()

    def excluded(t):
        for c in conds:
            if all((t < v) if op == auditlink.AUDIT_LESS_THAN else (t > v) for op, v in c):
                return True
        return False

    for t in range(1000, 3000):
        assert excluded(t) == (t not in auditlink.KEEP_TYPES), t
    assert all(len(r) == auditlink.RULE_HEAD.size for r in auditlink.exclude_rules())


# ---- parsing (no kernel needed) --------------------------------------------------
def test_parse_fields_quoted_hex_and_plain():
    f = auditlink.parse_fields(
        'domain=1a1ec05e1 blockers=fs.read_file,fs.truncate '
        'path=2F746D702F6120622F63 dev="vda" ino=123 comm="my prog" exe=(null) '
        'ocomm=2220 key=(null) syscall=257')
    assert f["path"] == "/tmp/a b/c"
    assert f["blockers"] == "fs.read_file,fs.truncate"
    assert f["dev"] == "vda" and f["ino"] == "123"
    assert f["comm"] == "my prog"
    assert f["exe"] == "(null)" and f["key"] == "(null)"
    assert f["ocomm"] == '" '
    assert f["syscall"] == "257"                  # numbers are not "hex strings"
    assert auditlink.parse_fields('path="/x/ABCD"')["path"] == "/x/ABCD"
    assert auditlink.parse_fields("path=ABC")["path"] == "ABC"   # odd length: not hex
    # non-UTF-8 names stay printable and encodable (the audit log is msgpack)
    weird = auditlink.parse_fields("path=2FFF20")["path"]
    assert weird == "/\\xff " and weird.encode("utf-8")


def test_group_without_eoe_flushes_after_timeout():
    ln = auditlink.AuditLink.detached()
    out = ln.feed_text(1424, "audit(1700000000.100:7): domain=abc status=allocated "
                             "mode=enforcing pid=4242 uid=1000 exe=\"/bin/x\" comm=\"x\"")
    out += ln.feed_text(1423, "audit(1700000000.101:8): domain=abc blockers=fs.write_file "
                              "path=\"/etc/passwd\" dev=\"vda\" ino=5")
    assert out == [] and ln.flush() == []
    recs = ln.flush(force=True)
    assert len(recs) == 1
    r = recs[0]
    assert (r["kind"], r["op"], r["target"], r["pid"], r["domain_pid"], r["time"]) == (
        "file", "open_write", "/etc/passwd", None, 4242, 1700000000.101)


def test_group_with_eoe_and_signal_scope():
    ln = auditlink.AuditLink.detached()
    assert ln.feed_text(1423, "audit(1700000000.200:9): domain=abc blockers=scope.signal "
                              "opid=1 ocomm=\"systemd\"") == []
    assert ln.feed_text(1300, "audit(1700000000.200:9): arch=c000003e syscall=62 success=no "
                              "exit=-1 ppid=1 pid=77 uid=1000 comm=\"bash\" exe=\"/bin/bash\"") == []
    recs = ln.feed_text(1320, "audit(1700000000.200:9): ")
    assert [(r["kind"], r["op"], r["target"], r["pid"], r["uid"], r["syscall"]) for r in recs] == [
        ("signal", "kill", "pid 1 (systemd)", 77, 1000, "kill")]


def test_seccomp_record_names_syscalls_per_arch():
    ln = auditlink.AuditLink.detached()
    base = ("audit(1700000000.300:{s}): auid=4294967295 uid=0 gid=0 ses=4294967295 pid=5 "
            "comm=\"abi\" exe=\"/x\" sig={sig} arch={arch} syscall={nr} compat={c} ip=0x1 code={code}")
    r = ln.feed_text(1326, base.format(s=1, sig=0, arch="c000003e", nr=101, c=0, code="0x50000"))[0]
    assert (r["op"], r["verdict"], r["action"]) == ("ptrace", "deny", "errno")
    r = ln.feed_text(1326, base.format(s=2, sig=31, arch="40000003", nr=310, c=1,
                                       code="0x80000000"))[0]
    assert (r["op"], r["action"], r.get("compat")) == ("unshare", "kill_process", True)
    r = ln.feed_text(1326, base.format(s=3, sig=31, arch="c000003e", nr=1073741863, c=0,
                                       code="0x80000000"))[0]
    assert r["op"] == "getpid" and r.get("compat")            # x32 ABI
    r = ln.feed_text(1326, base.format(s=4, sig=0, arch="c000003e", nr=99999, c=0,
                                       code="0x7ffc0000"))[0]
    assert (r["op"], r["verdict"]) == ("syscall 99999", "allow")


def test_cgroup_prefix_filters_other_tenants():
    ln = auditlink.AuditLink.detached(cgroup_prefix="/corral-x")
    rec = ("audit(1700000000.400:1): auid=0 uid=0 gid=0 ses=1 pid={pid} comm=\"a\" exe=\"/a\" "
           "sig=0 arch=c000003e syscall=101 compat=0 ip=0x1 code=0x50000")
    # our own process lives outside /corral-x: dropped; a dead pid (cgroup unknown): kept
    assert ln.feed_text(1326, rec.format(pid=os.getpid())) == []
    assert len(ln.feed_text(1326, rec.format(pid=2 ** 22 + 12345))) == 1


def test_domain_remembers_cgroup_for_records_of_exited_tasks():
    ln = auditlink.AuditLink.detached()
    me = os.getpid()
    ln.feed_text(1423, 'audit(1700000000.500:20): domain=d1 blockers=fs.read_file path="/a" dev="vda" ino=1')
    ln.feed_text(1300, f'audit(1700000000.500:20): arch=c000003e syscall=257 pid={me} uid=0 comm="x" exe="/x"')
    first = ln.feed_text(1320, "audit(1700000000.500:20): ")
    assert first[0]["cgroup"] == auditlink.read_cgroup(me) is not None
    # same domain, no SYSCALL record (task without audit context) -> flushed by time
    ln.feed_text(1423, 'audit(1700000000.600:21): domain=d1 blockers=fs.make_reg path="/b" dev="vda" ino=2')
    late = ln.flush(force=True)
    assert [(r["pid"], r["cgroup"], r["op"], r["target"]) for r in late] == [
        (None, first[0]["cgroup"], "create", "/b")]


def test_rate_limit_summarises_a_flood():
    ln = auditlink.AuditLink.detached(rate=1, burst=5)
    rec = ("audit(1700000000.700:{s}): auid=0 uid=0 gid=0 ses=1 pid=424242 comm=\"a\" exe=\"/a\" "
           "sig=0 arch=c000003e syscall=101 compat=0 ip=0x1 code=0x50000")
    out = []
    for i in range(50):
        out += ln.feed_text(1326, rec.format(s=100 + i))
    assert [r["kind"] for r in out] == ["syscall"] * 5
    summary = []
    ln._rate_summaries(summary, time.monotonic() + 1.5)
    assert [(r["kind"], r["op"], r["count"], r["verdict"]) for r in summary] == [
        ("rate", "suppressed", 45, "info")]
    ln._rate_summaries(summary, time.monotonic() + 3)
    assert len(summary) == 1                        # reported once

