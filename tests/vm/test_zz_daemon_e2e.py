"""End to end on a BPF-LSM kernel: corrald picks the BPF LSM file backend, `corral run`
sessions are confined by it (EPERM from the LSM, not Landlock's EACCES), denials reach
the audit log with the rule, and a live `corral deny --read` reaches a running process.

Named test_zz_* so it runs after test_file_lsm.py: the `lsm` fixture has then compiled
and pinned the programs, and the daemon reuses the pins instead of compiling again."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "host_conftest", Path(__file__).resolve().parents[1] / "conftest.py")
host = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(host)

LOOP = r"""
import errno, sys
path = sys.argv[1]
for line in sys.stdin:
    try:
        open(path).read(); print("ok", flush=True)
    except OSError as e:
        print(errno.errorcode[e.errno], flush=True)
"""


def test_daemon_enforces_files_with_bpf_lsm_live(lsm, tmp_path):
    d = host.make_daemon("corral-vm", extra_args=["--no-dns"])
    proc = None
    try:
        d.start(timeout=900)
        doc = json.loads(d.corral("doctor", "--json", check=True).stdout)
        assert doc["filesystem"]["backend"] == "bpf-lsm", doc["filesystem"]

        secret_dir = tmp_path / "secrets"
        secret_dir.mkdir()
        (secret_dir / "key").write_text("s3cret")
        p = d.corral("run", "-v", "--deny-read", str(secret_dir), "--", "cat", str(secret_dir / "key"))
        assert p.returncode != 0
        assert "Operation not permitted" in p.stderr, p.stderr      # the LSM's EPERM
        assert "s3cret" not in p.stdout
        sid = p.stderr.split("corral: session ", 1)[1].split(":", 1)[0]
        rec = d.wait_record(lambda r: r.get("session") == sid and r.get("kind") == "file"
                            and r.get("backend") == "bpf-lsm", timeout=20)
        assert rec["verdict"] == "deny"
        assert rec["target"].endswith("secrets/key"), rec
        assert "deny_read" in rec["rule"] and str(secret_dir) in rec["rule"], rec

        # Live: a running session loses read access when the policy changes.
        target = tmp_path / "notes.txt"
        target.write_text("notes")
        proc = subprocess.Popen([str(host.BIN / "corral"), "run", "-v", "--no-net", "--",
                                 sys.executable, "-c", LOOP, str(target)], env=d.env,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        live = proc.stderr.readline().split("corral: session ", 1)[1].split(":", 1)[0]
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "ok"
        d.corral("deny", live, "--read", str(target), check=True)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "EPERM"
        proc.stdin.close()
        assert proc.wait(30) == 0
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        d.cleanup()
