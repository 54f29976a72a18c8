"""corrald's git gateway (issue 14): sessions fetch their repository and push
to their own branches through corrald, which holds the upstream token.

    config.py   the credentials file (root's), token sources
    refcheck.py which ref updates a push may make
    mirror.py   the per-session bare mirror and the git children (clean env)
    hook.py     the mirrors' pre-receive hook (asks the gateway)
    http.py     the per-session smart-HTTP endpoint on a loopback port

GitGateway is what the session table and the daemon use: open() an endpoint
for a session that has a [git] section, close() it when the session ends,
hint() on a refused direct connection to the upstream."""
from __future__ import annotations

import concurrent.futures
import ipaddress
import logging
import os
import secrets
import shutil
import socket
import threading
from urllib.parse import urlsplit

from corral import config as cfg
from corral.policy.errors import PolicyError
from corral.policy.gitremote import parse_remote, rewrites
from corral.server.gitgateway import config as creds
from corral.server.gitgateway import hook
from corral.server.gitgateway.http import Endpoint
from corral.server.gitgateway.mirror import GitFailed, Mirror

log = logging.getLogger("corral.git")


def base_dir():
    return cfg.RUN_DIR / "git"


def mirrors_dir():
    """On disk (a mirror holds a repository), one directory per instance."""
    return cfg.CACHE_DIR / "git-mirrors" / cfg.INSTANCE


class GitGateway:
    def __init__(self, credentials: str | None, audit, loop=lambda: None):
        self.path = creds.credentials_path(credentials)
        self._audit, self._loop = audit, loop
        self.endpoints: dict[str, Endpoint] = {}
        self.remotes: list = []
        self.token_files: list[str] = []
        self.error: str | None = None
        self._status: dict = {}        # kept current in place: the daemon's features["git"]
        self.lock = threading.Lock()
        self.hooks = str(base_dir() / "hooks")
        self.home = str(base_dir() / "home")
        self.sessions_dir = base_dir() / "sessions"
        for d, mode in ((base_dir(), 0o711), (self.sessions_dir, 0o711), (self.home, 0o700)):
            os.makedirs(d, mode=mode, exist_ok=True)
            os.chmod(d, mode)
        if os.path.exists(self.path):
            # Now, so that every session's deny_read names it (a missing path
            # would be guarded by Landlock freezing its parent).
            os.makedirs(mirrors_dir(), mode=0o700, exist_ok=True)
        hook.install(self.hooks)
        self.reload()

    # -- credentials ---------------------------------------------------------
    def reload(self) -> None:
        """Read the credentials file again (each new git session does): a broken
        file refuses git sessions with its error; every other session goes on."""
        try:
            remotes, files = creds.load(self.path)
        except creds.CredentialsError as e:
            if str(e) != self.error:
                log.warning("git gateway: %s", e)
            self.remotes, self.token_files, self.error = [], [], str(e)
        else:
            self.remotes, self.token_files, self.error = remotes, files, None
        self._status.clear()
        self._status.update({"active": self.error is None, "credentials": self.path,
                             "remotes": [r.pattern for r in self.remotes],
                             **({"why": self.error} if self.error else {})})

    def status(self) -> dict:
        """What `corral doctor` shows (the same dict, updated by each reload)."""
        return self._status

    def protected_read(self) -> list[str]:
        """What no session may read: the credentials, their token files, the mirrors."""
        out = []
        for p in [str(mirrors_dir()), self.path, *self.token_files]:
            if os.path.lexists(p):
                out.append(os.path.realpath(p))
        return out

    # -- endpoints --------------------------------------------------------------
    def open(self, s, saved: dict | None = None) -> dict:
        """An endpoint for session `s` (policy["git"]); -> what the session keeps
        (port, secret, config). `saved`: the same again after a daemon restart.
        Raises PolicyError with what is wrong and how to fix it."""
        g = s.policy["git"]
        self.reload()
        if self.error:
            raise PolicyError(f"git gateway unavailable: {self.error}")
        remote = parse_remote(g["remote"])
        entry = creds.find(self.remotes, remote["key"])
        if entry is None:
            known = ", ".join(r.pattern for r in self.remotes) or "none"
            raise PolicyError(f"git remote {g['remote']}: no credentials for {remote['key']} in "
                              f"{self.path} (it has: {known}); root adds a [[remote]] entry")
        mirror = Mirror(str(mirrors_dir() / f"{s.id}.git"), self.hooks, self.home, str)
        if not os.path.isdir(mirror.path):
            try:
                mirror.create()
            except GitFailed as e:
                raise PolicyError(f"git gateway: cannot create the mirror: {e}") from None
        secret = (saved or {}).get("secret") or secrets.token_urlsafe(24)
        sess = {"id": s.id, "cgid": s.cgid, "secret": secret, "repo": remote["key"],
                "remote": g["remote"], "upstream": entry.upstream_for(remote["key"], remote),
                "username": entry.username, "source": entry.source,
                "push_branch": g["push_branch"], "allow_force": g["allow_force"],
                "max_push_bytes": g["max_push_bytes"], "mirror": mirror}
        try:
            ep = Endpoint((saved or {}).get("port", 0), self, sess)
        except OSError as e:
            mirror.remove()
            raise PolicyError(f"git gateway: cannot listen on loopback: {e.strerror}") from None
        mirror.redact = ep.redact
        port = ep.server_address[1]
        url = f"http://127.0.0.1:{port}/{secret}/{remote['key']}"
        try:
            conf = self._write_config(s, url, remote)
        except OSError as e:
            ep.server_close()
            mirror.remove()
            raise PolicyError(f"git gateway: cannot write the session's git config: "
                              f"{e.strerror}") from None
        ep.upstream_addrs = set()
        threading.Thread(target=self._resolve, args=(ep,), daemon=True).start()
        ep.start()
        with self.lock:
            self.endpoints[s.id] = ep
        log.info("session %s: git gateway for %s on 127.0.0.1:%d", s.id, remote["key"], port)
        return {"port": port, "secret": secret, "config": conf, "url_base": remote["key"],
                "remote": g["remote"],
                "push": "refs/heads/" + g["push_branch"].replace("{session}", s.id)}

    def _write_config(self, s, url: str, remote: dict) -> str:
        path = self.sessions_dir / f"{s.id}.gitconfig"
        lines = ["# corral: this session's git remote goes through corrald's git gateway",
                 "[include]", "\tpath = ~/.gitconfig", f'[url "{url}"]']
        for r in rewrites(remote):
            lines += [f"\tinsteadOf = {r}", f"\tpushInsteadOf = {r}"]
        lines += ["[credential]", "\thelper =", ""]
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o400)
        try:
            os.write(fd, "\n".join(lines).encode())
            os.fchown(fd, s.owner_uid, s.owner_gid)
            os.fchmod(fd, 0o400)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        return str(path)

    @staticmethod
    def _resolve(ep) -> None:
        """The upstream's addresses, for the hint on a refused direct connection."""
        for url in (ep.sess["upstream"], ep.sess["remote"]):
            try:
                host = urlsplit(url).hostname if "://" in url else parse_remote(url)["host"]
                for ai in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP):
                    ep.upstream_addrs.add(ipaddress.ip_address(ai[4][0]))
            except (OSError, ValueError, PolicyError):
                pass

    def close(self, s) -> None:
        with self.lock:
            ep = self.endpoints.pop(s.id, None)
        if ep is not None:
            # Off the daemon's loop: shutdown() waits for the serving thread's poll.
            threading.Thread(target=self._retire, args=(s.id, ep), daemon=True).start()
        else:
            shutil.rmtree(mirrors_dir() / f"{s.id}.git", ignore_errors=True)
        try:
            (self.sessions_dir / f"{s.id}.gitconfig").unlink()
        except FileNotFoundError:
            pass

    @staticmethod
    def _retire(sid: str, ep) -> None:
        try:
            ep.stop()
        except Exception as e:
            log.warning("session %s: git endpoint: %s", sid, e)
        ep.sess["mirror"].remove()
        forget = getattr(ep.sess["source"], "forget", None)
        if forget is not None:
            forget(sid)                 # a minted token is not kept past its session

    def port(self, s) -> int:
        ep = self.endpoints.get(s.id)
        return ep.server_address[1] if ep is not None else 0

    def hint(self, s, rec: dict) -> None:
        """A refused connection of a git session to its upstream: say what to use."""
        ep = self.endpoints.get(s.id)
        if ep is None or rec.get("verdict") != "deny" or rec.get("kind") != "net":
            return
        target = str(rec.get("target") or "")
        host = target.rsplit(":", 1)[0].strip("[]")
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            return
        if addr in ep.upstream_addrs and not target.endswith(f":{ep.server_address[1]}"):
            rec["hint"] = (f"git: use the git gateway: {ep.sess['remote']} is rewritten to "
                           f"127.0.0.1:{ep.server_address[1]} by this session's GIT_CONFIG_GLOBAL "
                           "(git push origin HEAD:" +
                           ep.sess["push_branch"].replace("{session}", s.id).replace("*", "work")
                           + ")")

    # -- audit (from the endpoints' threads) ------------------------------------
    def audit(self, rec: dict, must: bool = False) -> dict:
        loop = self._loop()
        if loop is None or not loop.is_running():
            return self._audit(rec, must=must)
        fut: concurrent.futures.Future = concurrent.futures.Future()

        def run():
            try:
                fut.set_result(self._audit(rec, must=must))
            except BaseException as e:
                fut.set_exception(e)
        loop.call_soon_threadsafe(run)
        return fut.result(timeout=30)

    def audit_push(self, sess: dict, d, allowed: bool, rule: str, must: bool = False,
                   op: str = "push") -> None:
        rec = {"kind": "git", "op": op, "verdict": "allow" if allowed else "deny",
               "session": sess["id"], "remote": sess["remote"], "target": d.ref if d else "",
               "ref": d.ref if d else None, "old": d.old if d else None,
               "new": d.new if d else None, "rule": rule}
        try:
            self.audit(rec, must=must)
        except Exception:
            if must:
                raise
            log.exception("git audit record lost")

    def audit_refusal(self, sess: dict, info: dict) -> None:
        rec = {"kind": "git", "op": info.pop("op", "connect"), "verdict": "deny",
               "session": sess["id"], "remote": sess["remote"],
               "target": info.pop("target", sess["repo"]), **info}
        try:
            self.audit(rec)
        except Exception:
            log.exception("git audit record lost")

    def stop(self) -> None:
        with self.lock:
            eps = list(self.endpoints.values())
            self.endpoints.clear()
        threads = [threading.Thread(target=ep.stop, daemon=True) for ep in eps]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=5)
