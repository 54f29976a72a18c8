"""A dead daemon leaves sessions confined; a restarted one re-adopts them."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from conftest import make_daemon

LOOP = r"""
import errno, socket, sys, time
port = int(sys.argv[1])
for i in range(600):
    s = socket.socket()
    try:
        s.connect(("127.0.0.1", port)); print("connected", flush=True)
    except OSError as e:
        print(errno.errorcode[e.errno], flush=True)
    s.close()
    line = sys.stdin.readline()
    if not line or line.strip() == "quit":
        break
"""


def step(proc):
    proc.stdin.write("go\n")
    proc.stdin.flush()
    return proc.stdout.readline().strip()


def test_sigkill_daemon_keeps_session_confined_and_restart_readopts():
    d = make_daemon("corral-restart", extra_args=["--no-dns"])
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    port = srv.getsockname()[1]
    proc = None
    try:
        d.start()
        proc = subprocess.Popen([str(Path(sys.executable).parent / "corral"), "run", "-v", "--no-net",
                                 "--", sys.executable, "-c", LOOP, str(port)],
                                env=d.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        sid = proc.stderr.readline().split("session ", 1)[1].split(":", 1)[0]
        assert proc.stdout.readline().strip() == "EPERM"

        d.stop(signal.SIGKILL)
        time.sleep(0.3)
        assert step(proc) == "EPERM", "session must stay confined while the daemon is dead"

        d.start()
        assert step(proc) == "EPERM", "and after a new daemon replaced the programs"
        with d.client() as c:
            sessions = {s["id"]: s for s in c.call("list_sessions")}
        assert sid in sessions, "the restarted daemon must re-adopt the live session"
        # Exactly one set of corral programs attached: the old ones were retired.
        root = Path(json.loads(d.corral("doctor", "--json").stdout)["cgroup2"]) / d.instance
        shown = subprocess.run(["bpftool", "-j", "cgroup", "show", str(root)],
                               capture_output=True, text=True, check=True).stdout
        names = [e["name"] for e in json.loads(shown)]
        assert names.count("corral_connect4") == 1, names
        # The re-adopted session is still managed: live policy reaches it.
        with d.client() as c:
            pol = sessions[sid]["policy"]
            pol["network"]["allow"] = [f"127.0.0.1:{port}"]
            c.call("update_policy", session=sid, policy=pol)
        assert step(proc) == "connected"
        proc.stdin.write("quit\n")
        proc.stdin.flush()
        assert proc.wait(10) == 0
        d.wait_record(lambda r: r.get("session") == sid and r.get("op") == "end")
    finally:
        if proc and proc.poll() is None:
            proc.kill()
        srv.close()
        d.cleanup()


def test_a_second_generation_enforces_but_does_not_report():
    """A restarted daemon attaches its programs next to the killed one's before
    retiring them: for that moment both run on every connect. Only the active
    generation (pinned active_gen) emits, so a denial is logged once, while
    the other still denies. Here a second, inactive generation is attached by
    hand next to the daemon's."""
    from bcc import BPF

    from corral.kernel import bpf
    d = make_daemon("corral-gen", extra_args=["--no-dns"])
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    port = srv.getsockname()[1]
    proc = fd = fn = None
    try:
        d.start()
        proc = subprocess.Popen([str(Path(sys.executable).parent / "corral"), "run", "-v", "--no-net",
                                 "--", sys.executable, "-c", LOOP, str(port)],
                                env=d.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        sid = proc.stderr.readline().split("session ", 1)[1].split(":", 1)[0]
        assert proc.stdout.readline().strip() == "EPERM"

        def denials():
            return [r for r in d.records() if r.get("session") == sid and r.get("kind") == "net"
                    and r.get("verdict") == "deny" and r.get("target") == f"127.0.0.1:{port}"]
        d.wait_record(lambda r: len(denials()) == 1)

        b, _ = bpf.compile_program("net.c", {
            "CORRAL_PIN_DIR": bpf.c_string(str(d.net_pin_dir())),
            "CORRAL_SHARED_PIN_DIR": bpf.c_string(f"/sys/fs/bpf/{d.instance}"),
            "EVENTS_RINGBUF_PAGES": 64, "CORRAL_GENERATION": 0xC0FFEE})
        root = Path(json.loads(d.corral("doctor", "--json").stdout)["cgroup2"]) / d.instance
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        fn = b.load_func(b"corral_connect4", BPF.CGROUP_SOCK_ADDR, attach_type=10)
        BPF.attach_func(fn, fd, 10, 2)                  # BPF_F_ALLOW_MULTI
        assert step(proc) == "EPERM"
        d.wait_record(lambda r: len(denials()) >= 2)
        time.sleep(0.5)                                 # a duplicate would be here by now
        assert len(denials()) == 2, denials()

        BPF.detach_func(fn, fd, 10)
        fn = None
        assert step(proc) == "EPERM"
        d.wait_record(lambda r: len(denials()) >= 3)
        proc.stdin.write("quit\n")
        proc.stdin.flush()
        assert proc.wait(10) == 0
    finally:
        if fn is not None:
            BPF.detach_func(fn, fd, 10)
        if fd is not None:
            os.close(fd)
        if proc and proc.poll() is None:
            proc.kill()
        srv.close()
        d.cleanup()


PAIR = r"""
import errno, socket, sys
ports = [int(p) for p in sys.argv[1:]]
for line in sys.stdin:
    if line.strip() == "quit":
        break
    out = []
    for port in ports:
        s = socket.socket()
        try:
            s.connect(("127.0.0.1", port)); out.append("connected")
        except OSError as e:
            out.append(errno.errorcode[e.errno])
        s.close()
    print(" ".join(out), flush=True)
"""


def test_a_new_build_of_net_c_migrates_live_sessions(tmp_path):
    """A daemon whose net.c differs (another source version) starts on maps of
    its own: it re-installs the live session there before attaching, then
    retires the old build's links and pins. The session is confined
    throughout and keeps its allowed port; one set of programs is attached."""
    import shutil
    import threading

    from corral.kernel.bpfsrc import bpf_dir
    src = tmp_path / "bpf"
    shutil.copytree(bpf_dir(), src)
    with open(src / "net.c", "a") as f:
        f.write("\n/* another build */\n")
    d = make_daemon("corral-migrate", extra_args=["--no-dns"])
    denied, allowed = socket.socket(), socket.socket()
    for s in (denied, allowed):
        s.bind(("127.0.0.1", 0))
        s.listen(64)
    dport, aport = denied.getsockname()[1], allowed.getsockname()[1]
    proc = None
    try:
        d.start()
        old_dir = d.net_pin_dir()
        proc = subprocess.Popen([str(Path(sys.executable).parent / "corral"), "run", "-v",
                                 "--allow-net", f"127.0.0.1:{aport}",
                                 "--", sys.executable, "-c", PAIR, str(dport), str(aport)],
                                env=d.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        sid = proc.stderr.readline().split("session ", 1)[1].split(":", 1)[0]
        assert step(proc) == "EPERM connected"

        d.stop(signal.SIGKILL)
        d.env["CORRAL_BPF_DIR"] = str(src)
        started = threading.Thread(target=d.start)
        started.start()
        seen = []
        while started.is_alive():       # while the new daemon compiles, migrates, retires
            seen.append(step(proc))
            for s in (denied, allowed):
                s.setblocking(False)
                try:
                    s.accept()[0].close()
                except BlockingIOError:
                    pass
        started.join()
        seen.append(step(proc))
        assert set(seen) == {"EPERM connected"}, seen

        new_dir = d.net_pin_dir()
        assert new_dir != old_dir and not old_dir.exists(), "the old build's pins are removed"
        root = Path(json.loads(d.corral("doctor", "--json").stdout)["cgroup2"]) / d.instance
        shown = subprocess.run(["bpftool", "-j", "cgroup", "show", str(root)],
                               capture_output=True, text=True, check=True).stdout
        names = [e["name"] for e in json.loads(shown)]
        assert names.count("corral_connect4") == 1 and names.count("corral_sock_create") == 1, names
        from corral.backends import net as netmod
        want = len(netmod.PROGRAMS) + 1 + (len(netmod.UNIX_PROGRAMS)
                                           if netmod.unix_hooks_supported() else 0)
        assert len(list(new_dir.glob("link_*"))) == want, list(new_dir.iterdir())  # one per program
        assert "migrates their sessions" in d.stderr_text()
        assert "previous programs still attached" not in d.stderr_text()
        with d.client() as c:
            assert sid in {s["id"] for s in c.call("list_sessions")}
        # The new build's programs report: a denial after the migration is logged.
        t0 = time.time()
        assert step(proc) == "EPERM connected"
        d.wait_record(lambda r: r.get("session") == sid and r.get("kind") == "net"
                      and r.get("target") == f"127.0.0.1:{dport}" and r.get("time", 0) >= t0
                      and not r.get("while_down"))
        proc.stdin.write("quit\n")
        proc.stdin.flush()
        assert proc.wait(10) == 0
    finally:
        if proc and proc.poll() is None:
            proc.kill()
        denied.close()
        allowed.close()
        d.cleanup()
