"""deny_write inside allow_write via read-only binds in a private mount namespace:
exact for existing paths, and the rest of the project stays writable."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ATTACKS = r"""
import errno, json, os, sys
res = {}
def rec(name, fn):
    try:
        fn(); res[name] = "ok"
    except OSError as e:
        res[name] = errno.errorcode.get(e.errno, str(e.errno))
def append(p):
    return lambda: open(p, "a").write("pwned\n")
rec("append_hook_relative", append(".git/hooks/pre-commit"))
rec("append_hook_proc_cwd", append("/proc/self/cwd/.git/hooks/pre-commit"))
rec("append_hook_proc_root", append("/proc/self/root" + os.getcwd() + "/.git/hooks/pre-commit"))
rec("create_hook", append(".git/hooks/post-checkout"))
rec("rename_git_away", lambda: os.rename(".git", ".git2"))
rec("rename_hooks_away", lambda: os.rename(".git/hooks", ".git/hooks2"))
rec("rmdir_hooks", lambda: os.rmdir(".git/hooks"))
rec("unlink_hook", lambda: os.unlink(".git/hooks/pre-commit"))
rec("hardlink_hook_out", lambda: os.link(".git/hooks/pre-commit", "stolen-hook"))
rec("symlink_then_write", lambda: (os.symlink(".git/hooks/pre-commit", "lnk"), open("lnk", "a").write("x")))
rec("rename_into_hooks", lambda: (open("evil", "w").write("x"), os.rename("evil", ".git/hooks/pre-push")))
rec("write_git_config_via_lock", lambda: (open(".git/config.lock", "w").write("x"),
                                          os.rename(".git/config.lock", ".git/config")))
# what must keep working
rec("create_top_level_file", lambda: open("newfile.txt", "w").write("ok"))
rec("git_index_lock", lambda: (open(".git/index.lock", "w").write("x"), os.unlink(".git/index.lock")))
rec("mkdir_src", lambda: os.makedirs("src/pkg", exist_ok=True))
print(json.dumps(res))
"""


def test_read_only_binds_guard_existing_paths_and_keep_project_writable(daemon, tmp_path):
    proj = tmp_path / "proj"
    (proj / ".git" / "hooks").mkdir(parents=True)
    (proj / ".git" / "hooks" / "pre-commit").write_text("#!/bin/sh\n")
    (proj / ".git" / "config").write_text("[core]\n")
    hook = (proj / ".git" / "hooks" / "pre-commit").read_text()
    p = subprocess.run([str(Path(sys.executable).parent / "corral"), "run", "-v",
                        "--allow-write", str(proj), "--deny-write", ".git/hooks",
                        "--deny-write", ".git/config",
                        *[a for n in ("shell-startup", "vscode", "idea", "mcp-config", "gitmodules",
                                      "claude-settings", "codex-config", "gemini-settings", "aider-config",
                                      "policy-files")
                                  for a in ("--no-mandatory", n)],
                        "--", sys.executable, "-c", ATTACKS],
                       cwd=proj, env=daemon.env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    for k in ("append_hook_relative", "append_hook_proc_cwd", "append_hook_proc_root", "create_hook",
              "rename_git_away", "rename_hooks_away", "rmdir_hooks", "unlink_hook",
              "hardlink_hook_out", "symlink_then_write", "rename_into_hooks",
              "write_git_config_via_lock"):
        assert res[k] != "ok", (k, res)
    for k in ("create_top_level_file", "git_index_lock", "mkdir_src"):
        assert res[k] == "ok", (k, res, p.stderr)
    assert (proj / ".git" / "hooks" / "pre-commit").read_text() == hook
    assert (proj / ".git" / "config").read_text() == "[core]\n"
    assert not (proj / ".git" / "hooks" / "pre-push").exists()
    assert "read_only_mounts" in p.stderr


CONNECT = r"""
import errno, json, socket, sys
res = {}
for path in sys.argv[1:]:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path); res[path] = "ok"
    except OSError as e:
        res[path] = errno.errorcode.get(e.errno, str(e.errno))
print(json.dumps(res))
"""


def test_denied_unix_socket_cannot_be_connected_even_by_root(daemon, tmp_path):
    """Landlock does not mediate connect(); a root agent would reach a root-owned
    socket (think /run/docker.sock). A denied socket is masked in the session, even
    when unix.allow names it too (deny wins); the control is a socket unix.allow
    names (every other socket of a process outside the session is masked)."""
    import socket as s_
    denied, allowed = str(tmp_path / "runtime.sock"), str(tmp_path / "other.sock")
    servers = []
    for path in (denied, allowed):
        srv = s_.socket(s_.AF_UNIX)
        srv.bind(path)
        srv.listen(4)
        servers.append(srv)
    try:
        p = subprocess.run([str(Path(sys.executable).parent / "corral"), "run", "--deny-read", denied,
                            "--allow-unix", allowed, "--allow-unix", denied,
                            "--", sys.executable, "-c", CONNECT, denied, allowed],
                           env=daemon.env, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        res = json.loads(p.stdout)
        assert res[denied] != "ok", res
        assert res[allowed] == "ok", res
    finally:
        for srv in servers:
            srv.close()
