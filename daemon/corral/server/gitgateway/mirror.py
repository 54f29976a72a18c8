"""The gateway's git children: a per-session bare mirror that receives pushes
(git's own receive-pack and pack checks), and the pushes and fetches to the
upstream. Nothing of the session's reaches them: each child gets a clean
environment (no system or global config, the gateway's own hooks, no terminal
prompts), and the upstream token only as an extra header in the environment
of the one child that talks to the upstream (never on a command line)."""
from __future__ import annotations

import base64
import os
import shutil
import subprocess

GIT = shutil.which("git", path="/usr/bin:/bin") or "/usr/bin/git"
QUARANTINE_VARS = ("GIT_OBJECT_DIRECTORY", "GIT_ALTERNATE_OBJECT_DIRECTORIES",
                   "GIT_QUARANTINE_PATH")


class GitFailed(Exception):
    pass


def auth_header(username: str, token: str) -> str:
    return "Authorization: Basic " + base64.b64encode(f"{username}:{token}".encode()).decode()


def clean_env(home: str, header: str | None = None, extra: dict | None = None) -> dict:
    env = {"PATH": "/usr/bin:/bin", "HOME": home, "LANG": "C", "LC_ALL": "C",
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null",
           "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/false", "SSH_ASKPASS": "/bin/false",
           "GIT_PROTOCOL_FROM_USER": "0", "GIT_ALLOW_PROTOCOL": "http:https"}
    if header is not None:
        # No redirects: the header would follow them to another host.
        env.update({"GIT_CONFIG_COUNT": "3", "GIT_CONFIG_KEY_0": "http.extraHeader",
                    "GIT_CONFIG_VALUE_0": header,
                    "GIT_CONFIG_KEY_1": "credential.helper", "GIT_CONFIG_VALUE_1": "",
                    "GIT_CONFIG_KEY_2": "http.followRedirects", "GIT_CONFIG_VALUE_2": "false"})
    env.update(extra or {})
    return env


class Mirror:
    def __init__(self, path: str, hooks_dir: str, home: str, redact):
        self.path, self.hooks_dir, self.home = path, hooks_dir, home
        self.redact = redact        # str -> str without the token

    def _run(self, args, header=None, extra=None, ok=(0,), timeout=600) -> subprocess.CompletedProcess:
        p = subprocess.run([GIT, *args], env=clean_env(self.home, header, extra), cwd=self.home,
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
        if p.returncode not in ok:
            rejected = [x for x in p.stdout.decode(errors="replace").splitlines()
                        if x.startswith("!")]           # push --porcelain: refused refs
            text = "\n".join(rejected + [p.stderr.decode(errors="replace").strip()]).strip()
            raise GitFailed(self.redact(text or f"git {args[0]} exited {p.returncode}"))
        return p

    def create(self) -> None:
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        self._run(["init", "--bare", "-q", "--template=", self.path])
        # One write rather than a git child per key (this runs while a session registers).
        with open(os.path.join(self.path, "config"), "a") as fh:
            fh.write(f"[core]\n\thooksPath = {self.hooks_dir}\n\tfsmonitor = false\n"
                     "[receive]\n\tfsckObjects = true\n\tautogc = false\n\tdenyDeletes = true\n"
                     "\tadvertisePushOptions = false\n[gc]\n\tauto = 0\n")

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def sync(self, upstream: str, header: str) -> None:
        """The mirror's branches and tags := the upstream's (what a push is judged against)."""
        self._run(["--git-dir", self.path, "fetch", "-q", "--prune", "--no-tags", "--no-write-fetch-head",
                   upstream, "+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"], header)

    def advertise(self) -> bytes:
        return self._run(["receive-pack", "--stateless-rpc", "--advertise-refs", self.path]).stdout

    def receive(self, stdin, hook_fd: int) -> subprocess.Popen:
        return subprocess.Popen([GIT, "receive-pack", "--stateless-rpc", self.path], stdin=stdin,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=self.home,
                                env=clean_env(self.home, extra={"CORRAL_GW_FD": str(hook_fd)}),
                                pass_fds=(hook_fd,))

    def quarantine_env(self, env: dict) -> dict:
        """The object directories receive-pack gave its hook, if they are this mirror's."""
        out = {}
        for k in QUARANTINE_VARS:
            v = env.get(k)
            if v is None:
                continue
            for part in str(v).split(":"):
                if not os.path.realpath(part).startswith(os.path.realpath(self.path) + "/"):
                    raise GitFailed(f"{k} outside the mirror")
            out[k] = str(v)
        return out

    def is_ancestor(self, old: str, new: str, qenv: dict) -> bool:
        p = self._run(["--git-dir", self.path, "merge-base", "--is-ancestor", old, new],
                      extra=qenv, ok=(0, 1))
        return p.returncode == 0

    def push(self, upstream: str, header: str, decisions, qenv: dict) -> str:
        """Push the approved updates (a force only with a lease on the old id). -> git's output."""
        args = ["--git-dir", self.path, "push", "--porcelain", "--no-verify", upstream]
        for d in decisions:
            if d.force:
                args.insert(4, f"--force-with-lease={d.ref}:{d.old}")
                args.append(f"+{d.new}:{d.ref}")
            else:
                args.append(f"{d.new}:{d.ref}")
        p = self._run(args, header, qenv)
        return self.redact((p.stdout + p.stderr).decode(errors="replace"))
