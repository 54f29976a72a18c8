"""The git gateway (issue 14): a session fetches its repository and pushes to
its own branches through corrald, which holds the upstream token.

Real git on both sides. The upstream is `git http-backend` behind a small
HTTP server on loopback (tests/helpers/git_upstream.py) that wants the token
(basic auth). Sessions are `corral run` child processes of a private daemon
started with --git-credentials. Every refusal has its control: the upstream
takes a push to main with the token (so the gateway is what stops it), the
session's own connection to its endpoint works (so the kernel's peer check is
what stops the others), the token scanner finds the token outside the session
(so finding nothing inside means something)."""
from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import make_daemon
from corral.policy.gitremote import parse_remote
from corral.server.gitgateway import config as creds

HELPER = Path(__file__).resolve().parent / "helpers" / "git_upstream.py"
GIT = shutil.which("git") or "/usr/bin/git"
CLEAN_GIT_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "GIT_CONFIG_NOSYSTEM": "1",
                 "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_TERMINAL_PROMPT": "0",
                 "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
                 "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}


def git(*args, cwd=None, check=True, env=None):
    p = subprocess.run([GIT, *args], cwd=cwd, env=dict(CLEAN_GIT_ENV, **(env or {})),
                       capture_output=True, text=True, timeout=120)
    if check and p.returncode != 0:
        raise AssertionError(f"git {args} -> {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p.stdout.strip()


class Upstream:
    def __init__(self, root: Path, token: str):
        self.root = root
        self.secret = root / "secret"           # token and credentials: hidden from sessions
        self.secret.mkdir(mode=0o700)
        self.token = token
        self.token_file = self.secret / "token"
        self.token_file.write_text(token + "\n")
        self.token_file.chmod(0o600)
        self.repos = root / "repos"
        self.stats_file = root / "stats.json"
        self.proc = None

    def bare(self, name: str, files: int = 3) -> Path:
        path = self.repos / f"{name}.git"
        git("init", "-q", "--bare", "-b", "main", str(path))
        work = Path(tempfile.mkdtemp(prefix="corral-git-seed-"))
        try:
            git("init", "-q", "-b", "main", cwd=work)
            for i in range(files):
                (work / f"f{i}.txt").write_text(f"file {i}\n")
            git("add", ".", cwd=work)
            git("commit", "-qm", "seed", cwd=work)
            git("push", "-q", str(path), "main", cwd=work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return path

    def start(self):
        port_file = self.root / "port"
        self.proc = subprocess.Popen([sys.executable, str(HELPER), str(self.repos),
                                      str(self.token_file), str(port_file), str(self.stats_file)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            if port_file.exists():
                self.port = int(port_file.read_text())
                return self
            time.sleep(0.05)
        raise RuntimeError("upstream did not start")

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}.git"

    def authed(self, name: str) -> list[str]:
        """git options that reach the upstream directly with the token (the control)."""
        auth = base64.b64encode(f"x-access-token:{self.token}".encode()).decode()
        return ["-c", f"http.extraHeader=Authorization: Basic {auth}"]

    def ref(self, name: str, ref: str) -> str | None:
        p = subprocess.run([GIT, "--git-dir", str(self.repos / f"{name}.git"), "rev-parse",
                            "--verify", "-q", ref], env=CLEAN_GIT_ENV, capture_output=True,
                           text=True)
        return p.stdout.strip() or None

    def stats(self) -> dict:
        if not self.stats_file.exists():
            return {"good": 0, "bad": 0, "none": 0, "paths": [], "protocols": []}
        return json.loads(self.stats_file.read_text())

    def stop(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def upstream():
    root = Path(tempfile.mkdtemp(prefix="corral-git-up-"))
    root.chmod(0o755)
    u = Upstream(root, "tok_" + secrets.token_hex(20))
    u.bare("test/repo")
    u.bare("test/other")
    u.start()
    u.creds = u.secret / "git-credentials.toml"
    u.mint = u.secret / "mint"
    u.mint.write_text(f'#!/bin/sh\necho "$@" >> {u.secret}/mint.log\ncat {u.token_file}\n')
    u.mint.chmod(0o700)
    u.creds_text = (f'[[remote]]\nurl = "{u.url("test/repo")}"\n'
                    f'token_file = "{u.token_file}"\n'
                    f'[[remote]]\nurl = "{u.url("test/other")}"\n'
                    f'token_command = ["{u.mint}", "{{repo}}", "{{session}}"]\ntoken_ttl = 60\n')
    u.creds.write_text(u.creds_text)
    u.creds.chmod(0o600)
    yield u
    u.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def gd(upstream):
    d = make_daemon("corral-git", extra_args=["--no-dns", "--git-credentials", str(upstream.creds)])
    d.start()
    yield d
    d.cleanup(remove_tmp=True)
    shutil.rmtree(f"/var/cache/corral/git-mirrors/{d.instance}", ignore_errors=True)


@pytest.fixture
def work():
    d = Path(tempfile.mkdtemp(prefix="corral-git-work-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


SESSION_ENV = {"GIT_AUTHOR_NAME": "agent", "GIT_AUTHOR_EMAIL": "agent@example.com",
               "GIT_COMMITTER_NAME": "agent", "GIT_COMMITTER_EMAIL": "agent@example.com",
               "GIT_TERMINAL_PROMPT": "0", "HOME": "/root"}


def run(gd, work, script, *flags, remote=None, timeout=180):
    """`corral run -v FLAGS --git-remote REMOTE -- sh -c SCRIPT` in `work`."""
    args = ["run", "-v", *flags]
    if remote:
        args += ["--git-remote", remote]
    p = gd.corral(*args, "--", "sh", "-c", script, cwd=str(work), timeout=timeout,
                  env=SESSION_ENV)
    m = re.search(r"corral: session ([0-9a-f]+):", p.stderr)
    p.sid = m.group(1) if m else None
    return p


def net_flags(work):
    return ["--no-net", "--allow-write", str(work)]


# -- the happy path ------------------------------------------------------------
def test_clone_fetch_push_own_branch(gd, upstream, work):
    url = upstream.url("test/repo")
    main_before = upstream.ref("test/repo", "main")
    p = run(gd, work, f"""set -e
git clone -q {url} c && cd c
test "$(git rev-parse HEAD)" = "{main_before}"
echo hello > new.txt && git add new.txt && git commit -qm new
git push origin HEAD:corral/$CORRAL_SESSION/work 2>&1
git fetch -q origin
git -c protocol.version=0 fetch -q origin
git -c protocol.version=0 ls-remote origin | grep -q refs/heads/corral/$CORRAL_SESSION/work
git ls-remote origin | grep -q refs/heads/main
echo "pushed=$(git rev-parse HEAD)"
""", *net_flags(work), remote=url)
    assert p.returncode == 0, p.stdout + p.stderr
    pushed = re.search(r"pushed=([0-9a-f]{40})", p.stdout).group(1)
    assert upstream.ref("test/repo", f"refs/heads/corral/{p.sid}/work") == pushed
    assert upstream.ref("test/repo", "main") == main_before
    assert "corral git gateway" in p.stdout and "pushed to" in p.stdout
    assert "version=2" in upstream.stats()["protocols"]     # Git-Protocol went through
    recs = [r for r in gd.records() if r.get("kind") == "git" and r.get("session") == p.sid]
    assert [(r["op"], r["verdict"], r["ref"]) for r in recs] == \
        [("push", "allow", f"refs/heads/corral/{p.sid}/work")], recs
    assert recs[0]["old"] == "0" * 40 and recs[0]["new"] == pushed
    assert recs[0]["remote"] == url
    # corral log --kind git shows it
    lg = gd.corral("log", "--kind", "git", "--json", "--session", p.sid, check=True)
    lines = [json.loads(x) for x in lg.stdout.splitlines() if x.strip()]
    assert [x["ref"] for x in lines] == [f"refs/heads/corral/{p.sid}/work"]
    text = gd.corral("log", "--kind", "git", "--session", p.sid, check=True).stdout
    assert f"refs/heads/corral/{p.sid}/work 0000000000..{pushed[:10]} ({url})" in text, text


def test_ssh_style_remotes_are_rewritten(gd, upstream, work):
    url = upstream.url("test/repo")
    p = run(gd, work, """set -e
git clone -q git@127.0.0.1:test/repo.git a
git clone -q ssh://git@127.0.0.1/test/repo b
git -C a remote get-url origin
test -f a/f0.txt && test -f b/f0.txt && echo both-cloned
""", *net_flags(work), remote=url)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "both-cloned" in p.stdout


# -- refusals ---------------------------------------------------------------------
def test_main_delete_tag_force_are_refused(gd, upstream, work):
    url = upstream.url("test/repo")
    main_before = upstream.ref("test/repo", "main")
    p = run(gd, work, f"""
git clone -q {url} c && cd c || exit 9
echo a > a.txt && git add a.txt && git commit -qm a || exit 9
git push origin HEAD:corral/$CORRAL_SESSION/work >/dev/null 2>&1 || exit 8
echo "first=$(git rev-parse HEAD)"
echo "== main"; git push origin HEAD:main 2>&1; echo "rc=$?"
echo "== delete"; git push origin :corral/$CORRAL_SESSION/work 2>&1; echo "rc=$?"
echo "== tag"; git tag v1 && git push origin v1 2>&1; echo "rc=$?"
echo "== force"; git commit -q --amend -m b && git push -f origin HEAD:corral/$CORRAL_SESSION/work 2>&1; echo "rc=$?"
echo "== other"; git push origin HEAD:refs/notes/x 2>&1; echo "rc=$?"
exit 0
""", *net_flags(work), remote=url)
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    first = re.search(r"first=([0-9a-f]{40})", out).group(1)
    parts = dict(x.split("\n", 1) for x in out.split("== ")[1:])
    for name, what in (("main", "refs/heads/main is not a branch this session may push"),
                       ("delete", "deleting refs/heads/corral/"), ("tag", "tags are not pushed"),
                       ("force", "non-fast-forward update"), ("other", "only branches")):
        assert "rc=0" not in parts[name], (name, parts[name])
        assert "remote: corral git gateway: refused" in parts[name] and what in parts[name], \
            (name, parts[name])
        assert f"refs/heads/corral/{p.sid}/*" in parts[name], (name, parts[name])
    assert upstream.ref("test/repo", "main") == main_before
    assert upstream.ref("test/repo", "refs/tags/v1") is None
    assert upstream.ref("test/repo", f"refs/heads/corral/{p.sid}/work") == first
    recs = [r for r in gd.records() if r.get("kind") == "git" and r.get("session") == p.sid]
    denied = {r["ref"] for r in recs if r["verdict"] == "deny"}
    assert {"refs/heads/main", f"refs/heads/corral/{p.sid}/work", "refs/tags/v1",
            "refs/notes/x"} <= denied, recs
    assert all(r["rule"] and r["old"] and r["new"] for r in recs if r["verdict"] == "deny")


def test_control_the_upstream_takes_a_push_to_main_with_the_token(upstream, work):
    """Without the gateway (the token in hand, as the gateway has it) main moves:
    the refusals above are the gateway's, not the upstream's."""
    repo = work / "direct"
    git(*upstream.authed("test/repo"), "clone", "-q", upstream.url("test/repo"), str(repo))
    git("-C", str(repo), "commit", "-q", "--allow-empty", "-m", "direct")
    git(*upstream.authed("test/repo"), "-C", str(repo), "push", "-q", "origin", "HEAD:main")
    assert upstream.ref("test/repo", "main") == git("-C", str(repo), "rev-parse", "HEAD")
    # and without the token the upstream refuses: the gateway really adds it
    p = subprocess.run([GIT, "-C", str(repo), "ls-remote", "origin"], env=CLEAN_GIT_ENV,
                       capture_output=True, text=True)
    assert p.returncode != 0


def test_force_push_with_allow_force_and_size_cap(gd, upstream, work):
    url = upstream.url("test/repo")
    pol = work.parent / f"{work.name}.toml"
    pol.write_text(f'[git]\nremote = "{url}"\npush_branch = "agent/*"\nallow_force = true\n'
                   f'max_push_bytes = 200000\n[network]\nallow = []\n'
                   f'[filesystem]\nallow_write = ["{work}"]\n')
    try:
        p = run(gd, work, f"""
git clone -q {url} c && cd c || exit 9
echo a > a.txt && git add a.txt && git commit -qm a && git push -q origin HEAD:agent/x || exit 8
git commit -q --amend -m b && git push -q -f origin HEAD:agent/x 2>&1 || exit 7
echo "forced=$(git rev-parse HEAD)"
echo "== own"; git push origin HEAD:corral/$CORRAL_SESSION/work 2>&1; echo "rc=$?"
head -c 600000 /dev/urandom > big.bin && git add big.bin && git commit -qm big
echo "== big"; git push origin HEAD:agent/x 2>&1; echo "rc=$?"
exit 0
""", "--policy", str(pol))
    finally:
        pol.unlink()
    assert p.returncode == 0, p.stdout + p.stderr
    forced = re.search(r"forced=([0-9a-f]{40})", p.stdout).group(1)
    assert upstream.ref("test/repo", "refs/heads/agent/x") == forced
    parts = dict(x.split("\n", 1) for x in p.stdout.split("== ")[1:])
    assert "rc=0" not in parts["own"] and "allowed: refs/heads/agent/*" in parts["own"]
    assert "rc=0" not in parts["big"] and "413" in parts["big"], parts["big"]
    recs = [r for r in gd.records() if r.get("kind") == "git" and r.get("session") == p.sid]
    assert any(r["verdict"] == "allow" and "allow_force" in r["rule"] for r in recs), recs
    assert any(r["verdict"] == "deny" and "max_push_bytes" in r["rule"] for r in recs), recs


def test_other_repository_and_client_authorization(gd, upstream, work):
    url = upstream.url("test/repo")
    bad_before = upstream.stats()["bad"]
    p = run(gd, work, f"""
base=$(git config --get-regexp '^url\\..*\\.insteadof$' | head -1 | sed 's/^url\\.//; s/\\.insteadof .*//')
echo "base=$base"
other=$(echo "$base" | sed 's,test/repo$,test/other,')
echo "== other"; git ls-remote "$other" 2>&1; echo "rc=$?"
echo "== secret"; git ls-remote "$(echo "$base" | sed -E 's,^(http://[^/]+)/[^/]+/,\\1/wrongsecret/,')" 2>&1; echo "rc=$?"
echo "== auth"; git -c "http.extraHeader=Authorization: Basic Ym9ndXM6Ym9ndXM=" ls-remote {url} 2>&1; echo "rc=$?"
""", *net_flags(work), remote=url)
    assert p.returncode == 0, p.stdout + p.stderr
    parts = dict(x.split("\n", 1) for x in p.stdout.split("== ")[1:])
    assert "rc=0" not in parts["other"] and "may only reach" in parts["other"], parts["other"]
    assert "rc=0" in parts["auth"] and "refs/heads/main" in parts["auth"], parts["auth"]
    assert "rc=0" not in parts["secret"] and "wrong endpoint secret" in parts["secret"], \
        parts["secret"]
    assert upstream.stats()["bad"] == bad_before       # the client's header never went up


# -- the endpoint is the session's alone -------------------------------------------
def _holder(gd, work, url, *flags):
    """A session that prints its gateway URL and waits for stdin to close."""
    code = ("import os,re,sys;t=open(os.environ['GIT_CONFIG_GLOBAL']).read();"
            "print(re.search(r'url \"(http://[^\"]+)\"',t).group(1),flush=True);"
            "sys.stdin.readline()")
    p = subprocess.Popen([str(gd.bin_dir / "corral"), "run", "-v", *flags, "--git-remote", url,
                          "--", sys.executable, "-c", code], cwd=str(work),
                         env=dict(gd.env, **SESSION_ENV), stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline().strip()
    assert line.startswith("http://127.0.0.1:"), (line, p.stderr.read() if not line else "")
    return p, line


def test_other_sessions_and_the_host_cannot_use_the_endpoint(gd, upstream, work):
    url = upstream.url("test/repo")
    holder, gw = _holder(gd, work, url, *net_flags(work))
    port = int(gw.split(":")[2].split("/")[0])
    try:
        # a session with a network policy: the kernel refuses the connect
        b = run(gd, work, f"""python3 -c '
import socket, errno
s = socket.socket()
try:
    s.connect(("127.0.0.1", {port})); print("connected")
except OSError as e:
    print("errno", errno.errorcode[e.errno])'
""", *net_flags(work))
        assert b.returncode == 0, b.stderr
        assert "errno EPERM" in b.stdout, b.stdout
        # a session without a network policy reaches the port, with the stolen
        # secret: the gateway asks the kernel whose socket it is, and refuses
        c = run(gd, work, f"git ls-remote {gw} 2>&1; echo rc=$?", "--allow-write", str(work))
        assert "rc=0" not in c.stdout, c.stdout
        assert "belongs to session" in c.stdout and "another cgroup" in c.stdout, c.stdout
        # the host (this process, outside every session), with the secret
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{gw}/info/refs?service=git-upload-pack", timeout=10)
        assert e.value.code == 403 and b"belongs to session" in e.value.read()
        # control: the holder's own git config works for it (test_clone... pushes), and
        # the refusals were logged
        refused = [r for r in gd.records() if r.get("kind") == "git" and r.get("op") == "connect"
                   and r.get("verdict") == "deny"]
        assert len(refused) >= 2, refused
    finally:
        holder.stdin.close()
        holder.wait(30)


def test_direct_connection_to_the_upstream_is_refused_with_a_hint(gd, upstream, work):
    url = upstream.url("test/repo")
    p = run(gd, work, f"GIT_CONFIG_GLOBAL=/dev/null git ls-remote {url} 2>&1; echo rc=$?",
            *net_flags(work), remote=url)
    assert "rc=0" not in p.stdout, p.stdout
    rec = gd.wait_record(lambda r: r.get("session") == p.sid and r.get("kind") == "net"
                         and r.get("verdict") == "deny"
                         and r.get("target") == f"127.0.0.1:{upstream.port}")
    assert "git gateway" in (rec.get("hint") or ""), rec


# -- the token never enters the session -------------------------------------------
SCAN = r'''
import base64, os, sys
tok = bytes(a ^ b for a, b in zip(bytes.fromhex(sys.argv[1]), bytes.fromhex(sys.argv[2])))
needles = (tok, base64.b64encode(b"x-access-token:" + tok))     # as is, and as basic auth
hits, files, procs, unreadable = [], 0, 0, []
def found(data):
    return any(n in data for n in needles)
if any(found((k + "=" + v).encode()) for k, v in os.environ.items()):
    hits.append("environment")
for root in sys.argv[3:]:
    shallow = root.startswith("=")          # this directory's files only
    root = root.lstrip("=")
    for d, dirs, names in os.walk(root):
        dirs[:] = [] if shallow else [x for x in dirs if not os.path.islink(os.path.join(d, x))]
        for n in names:
            p = os.path.join(d, n)
            try:
                if not os.path.isfile(p) or os.path.islink(p) or os.path.getsize(p) > 8 << 20:
                    continue
                with open(p, "rb") as fh:
                    data = fh.read()
            except OSError:
                continue
            files += 1
            if found(data):
                hits.append(p)
for pid in os.listdir("/proc"):
    if not pid.isdigit() or int(pid) == os.getpid():
        continue
    for f in ("cmdline", "environ"):
        try:
            with open(f"/proc/{pid}/{f}", "rb") as fh:
                data = fh.read()
        except OSError:
            if f == "environ":
                unreadable.append(int(pid))
            continue
        procs += 1
        if found(data):
            hits.append(f"/proc/{pid}/{f}")
print("files", files, "procs", procs)
print("hits", hits)
print("unreadable", unreadable)
'''


def _scan_roots(gd, upstream, work):
    from corral import config  # noqa: F401  (paths of the private instance come from its env)
    # Where corrald and its git children write (run, log, mirrors), the session's
    # own places, the credentials; /tmp and /root only their top level (other
    # people's work fills them).
    return [str(x) for x in (work, upstream.root, gd.tmp, "/var/tmp", "/dev/shm", "/etc", "/run",
                             "/var/cache/corral") if os.path.exists(x)] + ["=/tmp", "=/root"]


def test_token_is_not_readable_in_the_session(gd, upstream, work):
    url = upstream.url("test/repo")
    key = secrets.token_bytes(len(upstream.token))
    masked = bytes(a ^ b for a, b in zip(upstream.token.encode(), key))
    script = work / "scan.py"
    script.write_text(SCAN)
    roots = _scan_roots(gd, upstream, work)
    args = [sys.executable, str(script), masked.hex(), key.hex(), *roots]
    # control: outside the session the scanner finds it (the token file, the upstream's argv-free
    # memory is not scanned; corrald's token file is)
    out = subprocess.run(args, capture_output=True, text=True, timeout=300).stdout
    assert str(upstream.token_file) in out, out
    cmd = " ".join(f"'{a}'" for a in args)
    p = run(gd, work, f"""set -e
git clone -q {url} c && cd c && git commit -q --allow-empty -m x
git push -q origin HEAD:corral/$CORRAL_SESSION/scan
cd .. && {cmd}
""", *net_flags(work), remote=url, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "hits []" in p.stdout, p.stdout
    files, procs = map(int, re.search(r"files (\d+) procs (\d+)", p.stdout).groups())
    assert files > 50 and procs > 0, p.stdout


# -- a broken credentials file ------------------------------------------------------
def test_broken_credentials_refuse_git_sessions_only(gd, upstream, work):
    try:
        upstream.creds.write_text('[[remote]]\nurl = "https://example.com/a/b"\ntoken = \n')
        p = run(gd, work, "true", *net_flags(work), remote=upstream.url("test/repo"))
        assert p.returncode != 0
        assert str(upstream.creds) in p.stderr and "TOML" in p.stderr, p.stderr
        assert upstream.token not in p.stderr
        q = run(gd, work, "echo fine", *net_flags(work))
        assert q.returncode == 0 and "fine" in q.stdout, q.stderr
        doc = gd.corral("doctor").stdout
        assert re.search(r"git gateway UNAVAILABLE .*not valid TOML", doc), doc
        upstream.creds.write_text(upstream.creds_text.replace("test/repo", "test/nothere"))
        p = run(gd, work, "true", *net_flags(work), remote=upstream.url("test/repo"))
        assert p.returncode != 0 and "no credentials for" in p.stderr, p.stderr
    finally:
        upstream.creds.write_text(upstream.creds_text)
    p = run(gd, work, f"git ls-remote {upstream.url('test/repo')} >/dev/null && echo ok",
            *net_flags(work), remote=upstream.url("test/repo"))
    assert "ok" in p.stdout, p.stdout + p.stderr
    doc = gd.corral("doctor").stdout
    assert f"git gateway active      {upstream.creds}: 127.0.0.1:{upstream.port}/test/repo" in doc, doc


# -- a daemon restart ---------------------------------------------------------------
def test_endpoint_survives_a_daemon_restart(gd, upstream, work):
    """Sessions stay confined while corrald is down; the restarted daemon reopens
    each git session's endpoint on the same port with the same secret."""
    url = upstream.url("test/repo")
    code = ("import subprocess,sys\n"
            "for line in sys.stdin:\n"
            "    p = subprocess.run(['git', 'ls-remote', sys.argv[1]], capture_output=True, text=True)\n"
            "    print('rc=%d %s' % (p.returncode, 'refs/heads/main' in p.stdout), flush=True)\n")
    h = subprocess.Popen([str(gd.bin_dir / "corral"), "run", *net_flags(work), "--git-remote", url,
                          "--", sys.executable, "-c", code, url], cwd=str(work),
                         env=dict(gd.env, **SESSION_ENV), stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        h.stdin.write("go\n")
        h.stdin.flush()
        assert h.stdout.readline().strip() == "rc=0 True"
        gd.stop()
        gd.start()
        h.stdin.write("go\n")
        h.stdin.flush()
        assert h.stdout.readline().strip() == "rc=0 True", gd.stderr_text()[-3000:]
    finally:
        h.stdin.close()
        h.wait(30)


def test_token_in_the_gateways_git_child_is_not_readable_from_the_session(gd, upstream, work):
    """While the gateway pushes upstream (made slow here), its git child holds the
    token in its environment: this process (outside) sees it there; the session,
    scanning /proc at that moment, cannot read that environment."""
    import threading
    url = upstream.url("test/repo")
    key = secrets.token_bytes(len(upstream.token))
    masked = bytes(a ^ b for a, b in zip(upstream.token.encode(), key))
    script = work / "scan.py"
    script.write_text(SCAN)
    needle = base64.b64encode(f"x-access-token:{upstream.token}".encode())
    seen: set[int] = set()
    stop = threading.Event()

    def watch():                        # the control, outside every session
        while not stop.is_set():
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    try:
                        with open(f"/proc/{pid}/environ", "rb") as fh:
                            if needle in fh.read():
                                seen.add(int(pid))
                    except OSError:
                        pass
            time.sleep(0.05)
    slow = upstream.root / "slow-receive"
    slow.write_text("4")
    t = threading.Thread(target=watch, daemon=True)
    t.start()
    try:
        p = run(gd, work, f"""set -e
git clone -q {url} c && cd c && git commit -q --allow-empty -m slow
(git push -q origin HEAD:corral/$CORRAL_SESSION/slow >../push.out 2>&1; echo $? >../push.rc) &
sleep 2
{sys.executable} {script} {masked.hex()} {key.hex()}
wait
echo "push rc $(cat ../push.rc)"
""", *net_flags(work), remote=url)
    finally:
        stop.set()
        t.join()
        slow.unlink()
    assert p.returncode == 0, p.stdout + p.stderr
    assert "push rc 0" in p.stdout, p.stdout + (work / "push.out").read_text()
    assert seen, "control: the gateway's git child with the token was never seen from outside"
    assert "hits []" in p.stdout, p.stdout
    unreadable = set(json.loads(re.search(r"unreadable (\[.*\])", p.stdout).group(1)))
    assert seen & unreadable, (seen, unreadable)


def test_session_without_network_policy_uses_its_endpoint(gd, upstream, work):
    """No network section: no rule is added (it would make the session
    default-deny); its own connections still reach the endpoint."""
    url = upstream.url("test/repo")
    p = run(gd, work, f"git ls-remote {url} | grep -c refs/heads/main", "--allow-write", str(work),
            remote=url)
    assert p.returncode == 0 and p.stdout.strip() == "1", p.stdout + p.stderr
    info = json.loads(gd.corral("log", "--json", "--session", p.sid, "--kind", "session",
                                check=True).stdout.splitlines()[0])
    assert info["policy"]["network"] is None and info["policy"]["git"]["repo"] == \
        f"127.0.0.1:{upstream.port}/test/repo"


def test_token_minted_per_session_by_a_command(gd, upstream, work):
    """token_command: the gateway asks root's command for the session's token
    (once per session and ttl), with the repository and the session id."""
    url = upstream.url("test/other")
    p = run(gd, work, f"""set -e
git clone -q {url} c && cd c && git commit -q --allow-empty -m m
git push -q origin HEAD:corral/$CORRAL_SESSION/m && git fetch -q && echo done
""", *net_flags(work), remote=url)
    assert p.returncode == 0 and "done" in p.stdout, p.stdout + p.stderr
    calls = (upstream.secret / "mint.log").read_text().splitlines()
    mine = [c for c in calls if c.endswith(p.sid)]
    assert mine == [f"127.0.0.1:{upstream.port}/test/other {p.sid}"], calls
    assert upstream.ref("test/other", f"refs/heads/corral/{p.sid}/m")


def test_live_network_change_keeps_git(gd, upstream, work):
    """`corral allow` sends the session's policy back with a change: the [git]
    section goes with it unchanged, and the endpoint's rule stays installed."""
    url = upstream.url("test/repo")
    code = ("import subprocess,sys\n"
            "for line in sys.stdin:\n"
            "    p = subprocess.run(['git', 'ls-remote', sys.argv[1]], capture_output=True, text=True)\n"
            "    print('rc=%d' % p.returncode, flush=True)\n")
    h = subprocess.Popen([str(gd.bin_dir / "corral"), "run", "-v", *net_flags(work),
                          "--git-remote", url, "--", sys.executable, "-c", code, url],
                         cwd=str(work), env=dict(gd.env, **SESSION_ENV), stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        h.stdin.write("go\n")
        h.stdin.flush()
        assert h.stdout.readline().strip() == "rc=0"
        sid = next(s["id"] for s in map(json.loads, gd.corral("ps", "--json", check=True)
                                         .stdout.splitlines()) if s["leader_pid"] and
                   (s.get("policy") or {}).get("git"))
        a = gd.corral("allow", sid, "--net", "192.0.2.7:443")
        assert a.returncode == 0, a.stdout + a.stderr
        h.stdin.write("go\n")
        h.stdin.flush()
        assert h.stdout.readline().strip() == "rc=0"
    finally:
        h.stdin.close()
        h.wait(30)


def test_the_endpoint_rule_reaches_the_endpoint_only(gd, upstream, work):
    """The session's rule is 127.0.0.1:PORT exactly: a server another session
    runs on the same port of another loopback address (127.0.0.2, ::1) stays
    out of reach (allow_localhost_ports would have let the git session talk to it)."""
    url = upstream.url("test/repo")
    code = ("import os,re,sys,socket,errno\n"
            "t=open(os.environ['GIT_CONFIG_GLOBAL']).read()\n"
            "port=int(re.search(r'http://127.0.0.1:(\\d+)/',t).group(1))\n"
            "print(port,flush=True);sys.stdin.readline()\n"
            "for fam,host in ((socket.AF_INET,'127.0.0.1'),(socket.AF_INET,'127.0.0.2'),"
            "(socket.AF_INET6,'::1')):\n"
            "    s=socket.socket(fam)\n"
            "    try:\n"
            "        s.connect((host,port));print(host,'connected')\n"
            "    except OSError as e:\n"
            "        print(host,errno.errorcode[e.errno])\n"
            "    s.close()\n"
            "print('end',flush=True)\n")
    git_s = subprocess.Popen([str(gd.bin_dir / "corral"), "run", *net_flags(work), "--git-remote",
                              url, "--", sys.executable, "-c", code], cwd=str(work),
                             env=dict(gd.env, **SESSION_ENV), stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    other = None
    try:
        port = int(git_s.stdout.readline())
        serve = ("import socket,sys\n"
                 "a=socket.socket();a.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
                 f"a.bind(('127.0.0.2',{port}));a.listen()\n"
                 "b=socket.socket(socket.AF_INET6)\n"
                 "b.setsockopt(socket.IPPROTO_IPV6,socket.IPV6_V6ONLY,1)\n"
                 f"b.bind(('::1',{port}));b.listen()\n"
                 "print('listening',flush=True);sys.stdin.readline()\n")
        other = subprocess.Popen([str(gd.bin_dir / "corral"), "run", "--allow-write", str(work),
                                  "--", sys.executable, "-c", serve], cwd=str(work),
                                 env=dict(gd.env, **SESSION_ENV), stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert other.stdout.readline().strip() == "listening", other.stderr.read()
        # control: the listeners are there (this process, outside every session, reaches them)
        import socket
        for fam, host in ((socket.AF_INET, "127.0.0.2"), (socket.AF_INET6, "::1")):
            with socket.socket(fam) as c:
                c.connect((host, port))
        git_s.stdin.write("go\n")
        git_s.stdin.flush()
        out = {}
        for line in git_s.stdout:
            if line.strip() == "end":
                break
            host, res = line.split()
            out[host] = res
        assert out == {"127.0.0.1": "connected", "127.0.0.2": "EPERM", "::1": "EPERM"}, out
    finally:
        for p in (other, git_s):
            if p is not None:
                p.stdin.close()
                p.wait(30)


def test_unprivileged_user_session(gd, upstream, work):
    """A session of an ordinary user (nobody): its git config is its own to read,
    clone and push work through the gateway like root's."""
    if not shutil.which("setpriv"):
        pytest.skip("no setpriv")
    os.chown(work, 65534, 65534)
    url = upstream.url("test/repo")
    script = f"""set -e
git clone -q {url} c && cd c && git commit -q --allow-empty -m nobody
git push -q origin HEAD:corral/$CORRAL_SESSION/nobody && echo pushed
ls -l "$GIT_CONFIG_GLOBAL" | cut -c1-10
"""
    p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        str(gd.bin_dir / "corral"), "run", "-v", *net_flags(work), "--git-remote",
                        url, "--", "sh", "-c", script], cwd=str(work),
                       env=dict(gd.env, **dict(SESSION_ENV, HOME="/nonexistent")), capture_output=True,
                       text=True, timeout=180)
    sid = re.search(r"corral: session ([0-9a-f]+):", p.stderr).group(1)
    assert p.returncode == 0 and "pushed" in p.stdout, p.stdout + p.stderr + "\n".join(
        str(r) for r in gd.records() if r.get("session") == sid and r.get("verdict") == "deny")
    assert "-r--------" in p.stdout
    sid = re.search(r"corral: session ([0-9a-f]+):", p.stderr).group(1)
    assert upstream.ref("test/repo", f"refs/heads/corral/{sid}/nobody")


def test_push_branch_flag(gd, upstream, work):
    url = upstream.url("test/repo")
    p = run(gd, work, f"""
git clone -q {url} c && cd c && git commit -q --allow-empty -m f || exit 9
echo "== exact"; git push origin HEAD:feature/$CORRAL_SESSION 2>&1; echo "rc=$?"
echo "== below"; git push origin HEAD:feature/$CORRAL_SESSION/x 2>&1; echo "rc=$?"
""", *net_flags(work), "--git-push-branch", "feature/{session}", remote=url)
    assert p.returncode == 0, p.stdout + p.stderr
    parts = dict(x.split("\n", 1) for x in p.stdout.split("== ")[1:])
    assert "rc=0" in parts["exact"], parts["exact"]
    assert "rc=0" not in parts["below"] and f"allowed: refs/heads/feature/{p.sid})" in parts["below"]
    assert upstream.ref("test/repo", f"refs/heads/feature/{p.sid}")
    q = gd.corral("run", "--git-push-branch", "x/*", "--", "true")
    assert q.returncode == 2 and "need --git-remote" in q.stderr, q.stderr


def test_garbage_pushes_fail_closed(gd, upstream, work):
    """A receive-pack request git's own parser refuses changes nothing upstream,
    and the endpoint keeps serving."""
    url = upstream.url("test/repo")
    before = git("--git-dir", str(upstream.repos / "test/repo.git"), "for-each-ref")
    code = r'''
import os, re, sys, urllib.request
base = re.search(r'url "(http://[^"]+)"', open(os.environ["GIT_CONFIG_GLOBAL"]).read()).group(1)
for body in (b"garbage", b"00a0" + b"x" * 200, b"0000", b"0067" + b"0" * 40 + b" " + b"1" * 40
             + b" refs/heads/main\0report-status\n0000PACKjunk"):
    req = urllib.request.Request(base + "/git-receive-pack", data=body, method="POST",
        headers={"Content-Type": "application/x-git-receive-pack-request"})
    try:
        r = urllib.request.urlopen(req, timeout=30)
        print("status", r.status, r.read()[:200])
    except Exception as e:
        print("error", type(e).__name__, e)
'''
    (work / "garbage.py").write_text(code)
    p = run(gd, work, f"{sys.executable} garbage.py; git ls-remote {url} | grep -c refs/heads/main",
            *net_flags(work), remote=url)
    assert p.returncode == 0, p.stdout + p.stderr
    lines = p.stdout.splitlines()     # a bare flush-pkt is a push of nothing: fine
    assert [("400" in x) for x in lines[:4]] == [True, True, False, True], p.stdout
    assert p.stdout.strip().endswith("1"), p.stdout          # still serving
    assert git("--git-dir", str(upstream.repos / "test/repo.git"), "for-each-ref") == before
    assert "corral: git: " in p.stderr and "pushes may update refs/heads/corral/" in p.stderr


def test_git_section_is_fixed_for_a_live_session(gd, upstream, work):
    url = upstream.url("test/repo")
    holder, gw = _holder(gd, work, url, *net_flags(work))
    try:
        sid = next(s["id"] for s in map(json.loads, gd.corral("ps", "--json", check=True)
                                         .stdout.splitlines()) if (s.get("policy") or {}).get("git"))
        info = json.loads(gd.corral("ps", "--json", check=True).stdout.splitlines()[0])
        assert "secret" not in info["git"] and info["git"]["port"]     # never shown
        with gd.client() as c:
            from corral.client.connection import CorralError
            for new in (dict(info["policy"], git=None),
                        dict(info["policy"], git=dict(info["policy"]["git"], allow_force=True))):
                with pytest.raises(CorralError) as e:
                    c.call("update_policy", session=sid, policy=new)
                assert "fixed when a session starts" in e.value.message
    finally:
        holder.stdin.close()
        holder.wait(30)


# -- the credentials file (here, not in the unit tier: it must belong to root) ----------
def test_credentials_file_errors(tmp_path, monkeypatch):
    f = tmp_path / "c.toml"

    def err(text, mode=0o600):
        f.write_text(text)
        f.chmod(mode)
        with pytest.raises(creds.CredentialsError) as e:
            creds.load(str(f), environ={})
        assert "sekrit" not in str(e.value)
        return str(e.value)
    assert "not valid TOML" in err("[[remote]\n")
    assert "exactly one of token" in err('[[remote]]\nurl = "https://github.com/a/b"\n')
    assert "chmod 600" in err('[[remote]]\nurl = "https://github.com/a/b"\ntoken = "sekrit"\n',
                              0o644)
    assert "writable by others" in err('[[remote]]\nurl = "https://github.com/a/b"\n'
                                       'token_file = "/x"\n', 0o666)
    assert "token_env GH" in err('[[remote]]\nurl = "https://github.com/a/b"\ntoken_env = "GH"\n')
    assert "unknown key" in err('[[remote]]\nurl = "https://github.com/a/b"\ntokn = "sekrit"\n')
    assert "not an absolute path" in err('[[remote]]\nurl = "https://github.com/a/b"\n'
                                         'token_command = ["mint"]\n')
    assert "token_ttl goes with token_command" in err('[[remote]]\nurl = "https://github.com/a/b"\n'
                                                      'token = "sekrit"\ntoken_ttl = 5\n')
    assert "token_ttl: seconds" in err('[[remote]]\nurl = "https://github.com/a/b"\n'
                                       'token_command = ["/bin/true"]\ntoken_ttl = 0\n')
    assert "no git credentials file" in str(pytest.raises(
        creds.CredentialsError, creds.load, str(tmp_path / "none")).value)
    f.write_text('[[remote]]\nurl = "https://github.com/a/*"\ntoken_env = "GH"\n'
                 '[[remote]]\nurl = "git@github.com:a/b"\ntoken = "sekrit"\n')
    f.chmod(0o600)
    remotes, _ = creds.load(str(f), environ={"GH": "t1"})
    assert creds.find(remotes, "github.com/a/b").source.token("s", "r") == "sekrit"
    assert creds.find(remotes, "github.com/a/c").source.token("s", "r") == "t1"
    assert creds.find(remotes, "github.com/z/c") is None
    assert "sekrit" not in repr(remotes)
    assert creds.find(remotes, "github.com/a/c").upstream_for(
        "github.com/a/c", parse_remote("https://github.com/a/c")) == "https://github.com/a/c.git"
