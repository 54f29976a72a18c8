"""The audit log for fleets, through a private corrald: named policies from its
policies.d (reloaded on change into new and running sessions, a broken file refused
with file:line while the previous version stays, a removed one gone), session
name and labels on every record, the JSON-lines export and journald (a stand-in
socket speaking the native protocol) carrying them, back-pressure of a reader that
stops counted and logged, `corral doctor` showing the counters, checkpoints
verifying the export, and a broken corral.toml refusing to start."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import make_daemon
from corral.server.export import journald as J

CORRAL = str(Path(sys.executable).parent / "corral")
CONNECT = ("import socket,sys\n"
           "try: socket.create_connection(('192.0.2.1', 80), timeout=3)\n"
           "except PermissionError: print('refused'); sys.exit(0)\n"
           "sys.exit(3)")


class Standin:
    """A journald stand-in: a datagram socket collecting what corrald sends."""

    def __init__(self, path: Path, read=True):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.got: list[dict] = []
        self.stop = threading.Event()
        if read:
            self.t = threading.Thread(target=self._run, daemon=True)
            self.t.start()

    def _run(self):
        while not self.stop.is_set():
            try:
                data = self.sock.recv(1 << 20)
            except socket.timeout:
                continue
            except OSError:
                return
            self.got.append(dict(J.decode(data)))

    def close(self):
        self.stop.set()
        self.sock.close()


def _config(d, extra=""):
    etc = d.tmp / "etc"
    (etc / "policies.d").mkdir(parents=True, exist_ok=True)
    (etc / "corral.toml").write_text(f'[export]\njsonl = "{d.tmp}/export.jsonl"\n'
                                     f'journald = "on"\n{extra}')
    return etc


@pytest.fixture(scope="module")
def fleetd():
    d = make_daemon("corral-fleet", extra_args=["--no-dns"])
    d.env["CORRAL_JOURNAL_SOCKET"] = str(d.tmp / "journal.socket")
    standin = Standin(d.tmp / "journal.socket")
    etc = _config(d, "[log]\ncheckpoint_every = 50\n")
    (etc / "policies.d/team.toml").write_text('[network]\nallow = ["127.0.0.1:9"]\n')
    d.journal = standin
    d.etc = etc
    try:
        d.start()
        yield d
    finally:
        standin.close()
        d.cleanup(remove_tmp=True)


def _run(d, *args, timeout=60, **kw):
    return subprocess.run([CORRAL, "run", *args], capture_output=True, text=True, env=d.env,
                          cwd=d.tmp, timeout=timeout, **kw)


def _hello(d):
    with d.client() as c:
        return c.call("hello")


def _wait(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    return None


def _starts(d, after=-1):
    return [r for r in d.records() if r.get("kind") == "session" and r.get("op") == "start"
            and r["seq"] > after]


PROBE = ("import socket,sys,time\n"
         "port = int(sys.argv[1])\n"
         "for _ in range(300):\n"
         "    try:\n"
         "        socket.create_connection(('127.0.0.1', port), timeout=1).close()\n"
         "        print('connected', flush=True); sys.exit(0)\n"
         "    except PermissionError:\n"
         "        time.sleep(0.1)\n"
         "sys.exit(3)\n")


def test_named_policy_reloads_into_running_sessions(fleetd):
    d = fleetd
    f = d.etc / "policies.d/team.toml"
    p = _run(d, "--policy-name", "team", "--", "true")
    assert p.returncode == 0, p.stderr
    v1 = _starts(d)[-1]
    assert v1["policy"]["network"]["allow"] == ["127.0.0.1/32:9"]
    assert v1["policy_name"]["name"] == "team" and v1["policy_name"]["path"] == str(f)
    # A host loopback service the v1 policy does not allow; a session of v1 keeps
    # trying to reach it across the reload below.
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    port = srv.getsockname()[1]
    long = subprocess.Popen([CORRAL, "run", "--policy-name", "team", "--", sys.executable, "-c",
                             PROBE, str(port)], env=d.env, cwd=d.tmp, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert _wait(lambda: len(_starts(d, v1["seq"])) == 1)
        long_sid = _starts(d, v1["seq"])[0]["session"]
        d.wait_record(lambda r: r.get("session") == long_sid and r.get("kind") == "net"
                      and r.get("verdict") == "deny")            # refused under v1
        # changed: picked up within about a second; new sessions get it, and the running
        # one gets what can change live (the network), without a restart
        f.write_text(f'[network]\nallow = ["127.0.0.1:{port}"]\n[env]\npass = ["TEAM_TOKEN"]\n')
        rec = d.wait_record(lambda r: r.get("op") == "named_changed", timeout=10)
        assert rec["previous"] == v1["policy_name"]["sha256"]
        upd = d.wait_record(lambda r: r.get("op") == "update" and r.get("session") == long_sid)
        assert "named policy team changed" in upd["rule"] and upd["kept"] == ["env"]
        out, err = long.communicate(timeout=30)
        assert long.returncode == 0 and "connected" in out, out + err
        mark = d.records()[-1]["seq"]
        assert _run(d, "--policy-name", "team", "--", "true").returncode == 0
        v2 = _starts(d, mark)[-1]
        assert v2["policy"]["network"]["allow"] == [f"127.0.0.1/32:{port}"]
        assert v2["policy"]["env"]["pass"] == ["TEAM_TOKEN"]
        # broken: refused with file:line, the previous version stays in force
        f.write_text('[network]\nallow = ["127.0.0.1:11"]\nallow_everything = true\n')
        bad = d.wait_record(lambda r: r.get("op") == "named_refused", timeout=10)
        assert f"{f}:3" in bad["rule"] and bad["kept"] == v2["policy_name"]["sha256"]
        assert f"{f}:3" in _hello(d)["policies"]["errors"]["team"]
        doc = subprocess.run([CORRAL, "doctor"], capture_output=True, text=True, env=d.env,
                             timeout=60)
        assert f"refused   team: {f}:3" in doc.stdout, doc.stdout
        pl = subprocess.run([CORRAL, "policy", "list"], capture_output=True, text=True,
                            env=d.env, timeout=60)
        assert "named policies" in pl.stdout and f"team       REFUSED: {f}:3" in pl.stdout, pl.stdout
        mark = d.records()[-1]["seq"]
        assert _run(d, "--policy-name", "team", "--", "true").returncode == 0
        assert _starts(d, mark)[-1]["policy"]["network"]["allow"] == [f"127.0.0.1/32:{port}"]
        # removed: the name is gone
        f.unlink()
        d.wait_record(lambda r: r.get("op") == "named_removed", timeout=10)
        p = _run(d, "--policy-name", "team", "--", "true")
        assert p.returncode != 0 and "no named policy 'team'" in p.stderr, p.stderr
    finally:
        if long.poll() is None:
            long.kill()
            long.wait()
        srv.close()
    # A named policy is the operator's: no other policy option with it.
    p = _run(d, "--policy-name", "team", "--allow-net", "0.0.0.0/0", "--", "true")
    assert p.returncode == 2 and "cannot be combined with --allow-net" in p.stderr, p.stderr


def test_labels_ride_on_records_exports_and_journald(fleetd):
    d = fleetd
    p = _run(d, "--no-net", "--name", "build-7", "--label", "team=infra", "--label",
             "ci.run=42", "--", sys.executable, "-c", CONNECT)
    assert p.returncode == 0 and "refused" in p.stdout, p.stdout + p.stderr
    deny = d.wait_record(lambda r: r.get("kind") == "net" and r.get("session_name") == "build-7")
    sid = deny["session"]
    mine = [r for r in d.records() if r.get("session") == sid]
    assert {r["op"] for r in mine} >= {"start", "confined", "connect", "end"}, mine
    assert all(r.get("labels") == {"team": "infra", "ci.run": "42"} for r in mine), mine
    export = d.tmp / "export.jsonl"

    def exported():
        lines = [json.loads(x) for x in export.read_text().splitlines()]
        return lines if any(x.get("session") == sid and x.get("op") == "end" for x in lines) \
            else None
    lines = _wait(exported)
    assert lines, export.read_text()[-2000:]
    by_seq = {r["seq"]: r for r in d.records()}
    recs = [x for x in lines if x.get("kind") != "checkpoint"]
    assert recs and all(x == json.loads(json.dumps(by_seq[x["seq"]])) for x in recs)
    got = _wait(lambda: [m for m in d.journal.got if m.get("CORRAL_SESSION") == sid
                         and m.get("CORRAL_KIND") == "net"])
    assert got, d.journal.got[-3:]
    m = got[0]
    assert m["CORRAL_LABEL_TEAM"] == "infra" and m["CORRAL_LABEL_CI_RUN"] == "42"
    assert m["CORRAL_SESSION_NAME"] == "build-7" and m["PRIORITY"] == "4"
    assert m["CORRAL_HASH"] == deny["hash"] and json.loads(m["CORRAL_RECORD"]) == \
        json.loads(json.dumps(deny))
    # session end: a checkpoint, in the export and on journald too
    assert any(x.get("kind") == "checkpoint" and x.get("reason") == "session_end" for x in lines)
    assert any(m.get("CORRAL_KIND") == "checkpoint" for m in d.journal.got)
    v = subprocess.run([CORRAL, "log", "verify", "--dir", str(d.log_dir), "--checkpoints",
                        str(export), "--pubkey", str(d.etc / "checkpoint.pub")],
                       capture_output=True, text=True, env=d.env, timeout=60)
    assert v.returncode == 0 and "checkpoints ok" in v.stdout, v.stdout + v.stderr
    # the export on its own, as a pipeline far from the host would check it
    v = subprocess.run([CORRAL, "log", "verify", "--jsonl", str(export), "--pubkey",
                        str(d.etc / "checkpoint.pub")], capture_output=True, text=True, env=d.env,
                       timeout=60)
    assert v.returncode == 0 and "hashes and chain intact" in v.stdout, v.stdout + v.stderr
    doc = subprocess.run([CORRAL, "doctor"], capture_output=True, text=True, env=d.env, timeout=60)
    assert "checkpoints active" in doc.stdout and "export      jsonl    active" in doc.stdout
    assert "export      journald active" in doc.stdout, doc.stdout
    assert "records lost since corrald started: ringbuf_overrun 0" in doc.stdout, doc.stdout
    p = _run(d, "--label", "bad key=x", "--", "true")
    assert p.returncode == 2 and "label key" in p.stderr


def test_export_backpressure_is_counted_and_logged():
    """journald that stops reading: corrald's journald export fills, drops, counts, and
    says so in the log and in doctor; the log itself loses nothing."""
    d = make_daemon("corral-bp", extra_args=["--no-dns"])
    d.env["CORRAL_JOURNAL_SOCKET"] = str(d.tmp / "journal.socket")
    standin = Standin(d.tmp / "journal.socket", read=False)
    _config(d, "queue = 16\n")
    try:
        d.start()
        flood = ("import socket\n"
                 "for i in range(3000):\n"
                 "    try: socket.create_connection(('192.0.2.1', 80 + i % 1000), timeout=1)\n"
                 "    except OSError: pass\n")
        for _ in range(3):
            p = _run(d, "--no-net", "-q", "--", sys.executable, "-c", flood, timeout=120)
            assert p.returncode == 0, p.stderr
        rec = d.wait_record(lambda r: r.get("kind") == "lost" and r.get("op") ==
                            "export_backpressure" and r.get("target") == "journald", timeout=15)
        assert rec["count"] > 0
        st = _hello(d)["exports"]
        assert st["journald"]["dropped"] >= rec["count"]
        # Whatever an export did not write is counted: the JSON-lines file (whose queue of
        # 16 also overflows in such a burst) holds exactly what it says it sent.
        lines = (d.tmp / "export.jsonl").read_text().splitlines()
        assert len(lines) == st["jsonl"]["sent"] and st["jsonl"]["failed"] == 0
        on_record = sum(r["count"] for r in d.records() if r.get("op") == "export_backpressure")
        assert on_record <= st["journald"]["dropped"] + st["jsonl"]["dropped"]
        doc = subprocess.run([CORRAL, "doctor"], capture_output=True, text=True, env=d.env,
                             timeout=60)
        assert "export_backpressure" in doc.stdout and "export journald dropped" in doc.stdout
        denied = [r for r in d.records() if r.get("kind") == "net"]
        assert len(denied) > 100
        v = subprocess.run([CORRAL, "log", "verify", "--dir", str(d.log_dir)],
                           capture_output=True, text=True, env=d.env, timeout=60)
        assert v.returncode == 0, v.stdout + v.stderr
    finally:
        standin.close()
        d.cleanup(remove_tmp=True)


def test_broken_settings_refuse_to_start():
    d = make_daemon("corral-badconf", extra_args=["--no-dns"])
    etc = d.tmp / "etc"
    etc.mkdir()
    (etc / "corral.toml").write_text('[export]\njsonl = "/tmp/x"\nqueue = "lots"\n')
    try:
        with pytest.raises(RuntimeError) as e:
            d.start(timeout=60)
        assert f"{etc}/corral.toml:3: export.queue: 'lots' is not records each export may " \
               "hold" in str(e.value), str(e.value)
    finally:
        d.cleanup(remove_tmp=True)


def test_unusable_checkpoint_key_is_said_not_hidden():
    """A key corrald cannot use: it still enforces, and says the log is not anchored."""
    d = make_daemon("corral-badkey", extra_args=["--no-dns"])
    key = d.tmp / "etc" / "checkpoint.key"
    key.parent.mkdir(parents=True)
    key.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    key.chmod(0o600)
    try:
        d.start()
        rec = d.wait_record(lambda r: r.get("op") == "checkpoints_off")
        assert str(key) in rec["rule"]
        doc = subprocess.run([CORRAL, "doctor"], capture_output=True, text=True, env=d.env,
                             timeout=60)
        assert f"checkpoints UNAVAILABLE signing key {key}" in doc.stdout, doc.stdout
        p = _run(d, "--no-net", "--", sys.executable, "-c", CONNECT)
        assert p.returncode == 0 and "refused" in p.stdout, p.stdout + p.stderr
        assert not (d.log_dir / "checkpoints.jsonl").exists()
    finally:
        d.cleanup(remove_tmp=True)


def test_real_journald_if_present():
    ok, why = J.available()
    if not ok or os.environ.get("CORRAL_JOURNAL_SOCKET"):
        pytest.skip(f"no journald here: {why}")
    import shutil
    import uuid
    if not shutil.which("journalctl"):
        pytest.skip("journald runs but journalctl is missing: cannot read the fields back")
    marker = uuid.uuid4().hex
    sink = J.JournaldSink()
    sink.write_batch([{"seq": 0, "kind": "daemon", "op": "test", "verdict": "info",
                       "target": marker, "labels": {"team": "infra"}}])
    sink.close()
    got = []

    def found():
        p = subprocess.run(["journalctl", "-o", "json", "--no-pager", f"CORRAL_TARGET={marker}"],
                           capture_output=True, text=True, timeout=30)
        got[:] = [json.loads(x) for x in p.stdout.splitlines() if x.strip()]
        return bool(got)
    assert _wait(found, 10), "journald did not show the record"
    assert got[0]["CORRAL_OP"] == "test" and got[0]["CORRAL_LABEL_TEAM"] == "infra"
    assert got[0]["SYSLOG_IDENTIFIER"] == "corrald"


@pytest.fixture
def private_journald(tmp_path):
    """A real systemd-journald in a private mount namespace (its own tmpfs /run and
    /var/log/journal: the host's journal, if any, is untouched); its socket is reached
    through /proc/PID/root, its journal read with nsenter + journalctl."""
    import shutil
    jd = next((p for p in ("/lib/systemd/systemd-journald", "/usr/lib/systemd/systemd-journald")
               if os.access(p, os.X_OK)), None)
    if jd is None or not shutil.which("journalctl") or not shutil.which("unshare") \
            or not shutil.which("nsenter"):
        pytest.skip("systemd-journald, journalctl, unshare or nsenter missing (apt-get install "
                    "systemd util-linux)")
    script = ("set -e; mount -t tmpfs tmpfs /run; mkdir -p /run/systemd/journal /run/log; "
              "if [ -d /var/log/journal ]; then mount -t tmpfs tmpfs /var/log/journal; fi; "
              f"exec {jd}")
    err = open(tmp_path / "journald.stderr", "wb")
    proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                            stdout=err, stderr=err)
    sock = Path(f"/proc/{proc.pid}/root/run/systemd/journal/socket")
    try:
        if not _wait(lambda: sock.exists() or proc.poll() is not None, 10) or not sock.exists():
            pytest.skip("systemd-journald did not start here without systemd as PID 1: "
                        + (tmp_path / "journald.stderr").read_text(errors="replace")[-500:])

        def read(*match):
            p = subprocess.run(["nsenter", "-t", str(proc.pid), "-m", "journalctl", "-o", "json",
                                "--no-pager", "SYSLOG_IDENTIFIER=corrald", *match],
                               capture_output=True, text=True, timeout=30)
            return [json.loads(x) for x in p.stdout.splitlines() if x.strip()]
        yield sock, read
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        err.close()


def test_records_in_a_real_journald(private_journald):
    sock, read = private_journald
    d = make_daemon("corral-journal", extra_args=["--no-dns"])
    d.env["CORRAL_JOURNAL_SOCKET"] = str(sock)
    etc = d.tmp / "etc"
    etc.mkdir()
    (etc / "corral.toml").write_text('[export]\njournald = "auto"\n')   # on: the socket exists
    try:
        d.start()
        assert _hello(d)["exports"]["journald"]["active"]
        p = _run(d, "--no-net", "--name", "j-1", "--label", "team=infra", "--", sys.executable,
                 "-c", CONNECT)
        assert p.returncode == 0 and "refused" in p.stdout, p.stdout + p.stderr
        deny = d.wait_record(lambda r: r.get("kind") == "net" and r.get("session_name") == "j-1")
        got = _wait(lambda: read(f"CORRAL_SESSION={deny['session']}", "CORRAL_KIND=net"))
        assert got, read()[-3:]
        m = got[0]
        assert m["CORRAL_SEQ"] == str(deny["seq"]) and m["CORRAL_HASH"] == deny["hash"]
        assert m["CORRAL_PREV"] == deny["prev"] and m["CORRAL_VERDICT"] == "deny"
        assert m["CORRAL_LABEL_TEAM"] == "infra" and m["CORRAL_SESSION_NAME"] == "j-1"
        assert m["PRIORITY"] == "4" and "net/connect deny" in m["MESSAGE"]
        assert json.loads(m["CORRAL_RECORD"]) == json.loads(json.dumps(deny))
        assert _wait(lambda: read("CORRAL_KIND=checkpoint", "CORRAL_REASON=session_end"))
    finally:
        d.cleanup(remove_tmp=True)


def test_records_reach_an_otlp_collector_from_corrald():
    """corral.toml [export] otlp_endpoint: the daemon's records, labels included, reach an
    OTLP/HTTP collector (an in-process stand-in decoding the protobuf, on 127.0.0.1)."""
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http",
                        reason="the optional extra corral[otlp] is not installed")
    from unit.test_otlp import Collector, _attrs
    c = Collector()
    d = make_daemon("corral-otlp", extra_args=["--no-dns"])
    etc = d.tmp / "etc"
    etc.mkdir()
    (etc / "corral.toml").write_text(f'[export]\notlp_endpoint = "{c.url}"\njournald = "off"\n')
    try:
        d.start()
        assert _hello(d)["exports"]["otlp"]["active"]
        p = _run(d, "--no-net", "--label", "team=infra", "--", sys.executable, "-c", CONNECT)
        assert p.returncode == 0 and "refused" in p.stdout, p.stdout + p.stderr
        deny = d.wait_record(lambda r: r.get("kind") == "net" and r.get("labels"))

        def got():
            logs = [_attrs(lr) for _, req in c.requests for rl in req.resource_logs
                    for sl in rl.scope_logs for lr in sl.log_records]
            return [a for a in logs if a.get("corral.seq") == deny["seq"]]
        found = _wait(got)
        assert found, c.requests[-1:]
        a = found[0]
        assert a["corral.hash"] == deny["hash"] and a["corral.label.team"] == "infra"
        assert json.loads(a["corral.record"]) == json.loads(json.dumps(deny))
    finally:
        d.cleanup(remove_tmp=True)
        c.close()
