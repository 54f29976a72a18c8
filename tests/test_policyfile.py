"""A sandbox-runtime settings file and a profile enforced by `corral run` (the
parsing and merging of policy files: unit/test_policyfile.py)."""
from __future__ import annotations

import json
import sys


def test_corral_run_with_srt_settings_and_profile(daemon, tmp_path):
    """End to end: an srt settings file enforced by `corral run`, warnings on stderr."""
    import socket
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    port = srv.getsockname()[1]
    out = tmp_path / "out"
    out.mkdir()
    f = tmp_path / "srt.json"
    f.write_text(json.dumps({"network": {"allowedDomains": [f"127.0.0.1:{port}"],
                                         "allowLocalBinding": True},
                             "filesystem": {"allowWrite": [str(out)], "denyRead": ["/etc/hostname"]}}))
    code = ("import socket,sys\n"
            "def c(p):\n"
            "    s=socket.socket()\n"
            "    try:\n        s.connect(('127.0.0.1',p)); return 'ok'\n"
            "    except OSError as e: return e.errno\n"
            "def w(p):\n"
            "    try:\n        open(p,'w').write('x'); return 'ok'\n"
            "    except OSError as e: return e.errno\n"
            "def r(p):\n"
            "    try:\n        open(p).read(); return 'ok'\n"
            "    except OSError as e: return e.errno\n"
            f"print(c({port}), c({port + 1 if port < 65535 else port - 1}), w('{out}/a'), "
            f"w('{tmp_path}/b'), r('/etc/hostname'))\n")
    try:
        p = daemon.corral("run", "--srt-settings", str(f), "--", sys.executable, "-c", code, cwd=tmp_path)
    finally:
        srv.close()
    assert p.returncode == 0, p.stderr
    got = p.stdout.split()
    # a write outside allowWrite: the read-only mount view refuses it (EROFS, 30)
    assert got[:3] == ["ok", "1", "ok"] and got[3] in ("13", "30") and got[4] == "13", p.stdout
    assert "allowLocalBinding" in p.stderr
    # --profile offline: no network at all
    p = daemon.corral("run", "--profile", "offline", "--", sys.executable, "-c", code.replace(
        f"c({port})", "c(9)"), cwd=tmp_path)
    assert p.returncode == 0 and p.stdout.split()[0] == "1", (p.stdout, p.stderr)

