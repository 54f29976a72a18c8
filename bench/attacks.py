#!/usr/bin/env python3
"""attacks: the same attack list under bare, corral and each peer; which are blocked.

Every attack is one short python3 process started by the tool under test with
an agent-like policy: network only to one allowed loopback port, the work
repository (and /tmp) writable, ~/.ssh unreadable where the tool can say so.
  corral  corral run --allow-net 127.0.0.1/32:ALLOWED --allow-write REPO --allow-write /tmp
          (+ its mandatory protections: ~/.ssh unreadable, .git/hooks read-only, ...)
  srt     settings: allowedDomains ["127.0.0.1:ALLOWED"], denyRead ["~/.ssh"], allowWrite ["."]
  codex   codex sandbox -c sandbox_mode="workspace-write" (network off: it has no
          per-destination rule; the allowed-port control row shows that cost)
Targets are loopback and processes this script started; nothing else is touched.
A fake key /root/.ssh/id_corral_bench is created for the read test and removed.
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as B  # noqa: E402
from bench_peers import CODEX, CODEX_HOME, SRT  # noqa: E402

PAYLOAD = r'''
import ctypes, errno, json, os, signal, socket, sys
what, arg = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "")
def out(allowed, detail):
    print("ATTACK " + json.dumps({"allowed": allowed, "detail": detail}))
    sys.exit(0)
try:
    if what == "read":
        with open(arg) as f:
            out(True, f"read {len(f.read())} bytes")
    elif what == "write":
        with open(arg, "w") as f:
            f.write("#!/bin/sh\necho pwned\n")
        out(True, "wrote " + arg)
    elif what in ("tcp", "tcp6mapped"):
        fam, host = (socket.AF_INET, "127.0.0.1") if what == "tcp" else (socket.AF_INET6, "::ffff:127.0.0.1")
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.settimeout(3)
        s.connect((host, int(arg)))
        out(True, "connected")
    elif what == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.sendto(b"corral-attack", ("127.0.0.1", int(arg)))
        out(True, "sendto returned (arrival checked by the harness)")
    elif what == "ptrace":
        pid = os.getppid() if arg == "parent" else int(arg)
        libc = ctypes.CDLL(None, use_errno=True)
        libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
        if libc.ptrace(0x4206, pid, None, None) != 0:   # PTRACE_SEIZE: no stop; exit detaches
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        out(True, f"PTRACE_SEIZE of pid {pid} succeeded")
    elif what == "kill":
        os.kill(int(arg), signal.SIGTERM)
        out(True, "signal sent")
    elif what == "cgroup":
        with open(arg, "w") as f:
            f.write(str(os.getpid()))
        cg = [l for l in open("/proc/self/cgroup").read().splitlines() if l.startswith("0::")]
        out(True, "now in cgroup " + (cg[0][3:] if cg else "?"))
    else:
        raise SystemExit("unknown attack " + what)
except OSError as e:
    out(False, f"{errno.errorcode.get(e.errno, e.errno)}: {e.strerror}")
'''


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.parse_args()
    results: dict = {"attacks": {}, "errors": {}}
    py3 = shutil.which("python3") or "/usr/bin/python3"
    tmp = Path(tempfile.mkdtemp(prefix="bench-attacks-"))
    repo = tmp / "repo"
    (repo / ".git" / "hooks").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    hook = repo / ".git" / "hooks" / "pre-commit"
    ssh_dir = Path.home() / ".ssh"
    made_ssh = not ssh_dir.exists()
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    key = ssh_dir / "id_corral_bench"
    key.write_text("-----BEGIN FAKE KEY (corral bench)-----\n")
    from corral.kernel import cgroups
    cg_procs = str(cgroups.cgroup2_mount() / "cgroup.procs")

    def listen(kind):
        s = socket.socket(socket.AF_INET, kind)
        s.bind(("127.0.0.1", 0))
        if kind == socket.SOCK_STREAM:
            s.listen(16)
        return s
    allowed_l, denied_l, udp_l = listen(socket.SOCK_STREAM), listen(socket.SOCK_STREAM), listen(socket.SOCK_DGRAM)
    udp_l.setblocking(False)
    allowed, denied, udp = (s.getsockname()[1] for s in (allowed_l, denied_l, udp_l))
    srt_settings = tmp / "srt-settings.json"
    srt_settings.write_text(json.dumps({
        "network": {"allowedDomains": [f"127.0.0.1:{allowed}"], "deniedDomains": []},
        "filesystem": {"denyRead": ["~/.ssh"], "allowWrite": ["."], "denyWrite": []}}))

    attacks = [
        ("control: TCP to the allowed loopback port", "tcp", str(allowed)),
        ("read ~/.ssh/id_corral_bench", "read", str(key)),
        ("write .git/hooks/pre-commit", "write", str(hook)),
        ("TCP to a non-allowed loopback port", "tcp", str(denied)),
        ("same via IPv4-mapped IPv6 (::ffff:127.0.0.1)", "tcp6mapped", str(denied)),
        ("UDP to a non-allowed loopback port", "udp", str(udp)),
        ("ptrace the parent", "ptrace", "parent"),
        ("ptrace a process outside", "ptrace", "VICTIM"),
        ("kill a process outside", "kill", "VICTIM"),
        ("write the root cgroup's cgroup.procs (escape)", "cgroup", cg_procs),
    ]
    tools = ["bare", "corral"] + [t for t, p in (("srt", SRT), ("codex", CODEX)) if p.exists()]
    for t, p in (("srt", SRT), ("codex", CODEX)):
        if not p.exists():
            results["errors"][t] = "not installed: run `sh bench/peers.sh`"
    CODEX_HOME.mkdir(parents=True, exist_ok=True)

    def wrap(tool, cmd):
        if tool == "bare":
            return cmd
        if tool == "corral":
            return [B.CORRAL, "run", "--allow-net", f"127.0.0.1/32:{allowed}", "--allow-write", str(repo),
                    "--allow-write", "/tmp", "--", *cmd]
        if tool == "srt":
            return [str(SRT), "--settings", str(srt_settings), "-c", shlex.join(cmd)]
        return [str(CODEX), "sandbox", "-c", 'sandbox_mode="workspace-write"', "--", *cmd]

    try:
        with B.daemon("corral-bench-attacks") as d:
            env = dict(d.env)
            env["CODEX_HOME"] = str(CODEX_HOME)
            for label, what, arg in attacks:
                row = results["attacks"].setdefault(label, {})
                for tool in tools:
                    victim = None
                    a = arg
                    if arg == "VICTIM":
                        victim = subprocess.Popen(["sleep", "60"])
                        a = str(victim.pid)
                    if hook.exists():
                        hook.unlink()
                    while True:                     # drain UDP
                        try:
                            udp_l.recv(100)
                        except BlockingIOError:
                            break
                    p = subprocess.run(wrap(tool, [py3, "-c", PAYLOAD, what, a]), env=env, cwd=repo,
                                       capture_output=True, text=True, timeout=60)
                    line = [ln for ln in p.stdout.splitlines() if ln.startswith("ATTACK ")]
                    if line:
                        r = json.loads(line[-1][7:])
                    else:
                        r = {"allowed": None, "detail": f"no result (exit {p.returncode}): "
                                                       f"{(p.stderr or p.stdout).strip()[-200:]}"}
                    if what == "udp":              # did it arrive?
                        time.sleep(0.1)
                        try:
                            udp_l.recv(100)
                            arrived = True
                        except BlockingIOError:
                            arrived = False
                        if r["allowed"] and not arrived:
                            r = {"allowed": False, "detail": "sendto returned but nothing arrived"}
                        elif arrived:
                            r = {"allowed": True, "detail": "datagram arrived"}
                    if victim is not None:
                        time.sleep(0.05)
                        if what == "kill":
                            died = victim.poll() is not None
                            if r["allowed"] is not False and died:
                                r = {"allowed": True, "detail": "victim killed"}
                            elif r["allowed"] and not died:
                                r = {"allowed": False, "detail": "signal did not arrive"}
                        victim.kill()
                        victim.wait()
                    row[tool] = r
        d_ok = True
    finally:
        for s in (allowed_l, denied_l, udp_l):
            s.close()
        key.unlink(missing_ok=True)
        if made_ssh:
            try:
                ssh_dir.rmdir()
            except OSError:
                pass
        shutil.rmtree(tmp, ignore_errors=True)

    def cell(r):
        if r is None:
            return "—"
        if r["allowed"] is None:
            return "error"
        return "ALLOWED" if r["allowed"] else "blocked"
    w = 48
    print(f"\n{'attack':{w}}" + "".join(f"{t:>10}" for t in tools))
    for label, row in results["attacks"].items():
        print(f"{label:{w}}" + "".join(f"{cell(row.get(t)):>10}" for t in tools))
    print("\ndetails:")
    for label, row in results["attacks"].items():
        print(f"  {label}")
        for t in tools:
            r = row.get(t)
            print(f"    {t:7} {cell(r):8} {r['detail'] if r else ''}")
    summary = []
    for label, row in results["attacks"].items():
        summary.append(B.row("attacks", label, None, "", "",
                             "  ".join(f"{t}: {cell(row.get(t))}" for t in tools)))
    for t, why in results["errors"].items():
        summary.append(B.row("attacks", f"{t}", None, "", "", f"NOT RUN: {why}"))
    results["summary"] = summary
    B.write_results(results)
    return 0 if d_ok else 1


if __name__ == "__main__":
    sys.exit(main())
