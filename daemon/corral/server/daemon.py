"""corrald: probe the kernel, load the BPF programs once, serve sessions.

Data path, top to bottom:
  client frame -> server.Server -> api.Api -> sessions.SessionTable
  -> netbpf / filelsm maps -> kernel decides -> ring buffer -> events.decode
  -> Daemon.audit -> eventlog + subscribers
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
import threading
import time

from corral import __version__
from corral.kernel import cgroups, events, probes
from corral.server.api import Api, Services
from corral.config import LOG_DIR, SOCKET
from corral.server.eventlog import EventLog
from corral.backends.net import NetBpf
from corral.server.listener import Server
from corral.server.sessions import SessionTable

log = logging.getLogger("corrald")
SESSION_POLL = 0.2      # seconds between checks for emptied session cgroups


def sd_notify(msg: str) -> None:
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.sendto(msg.encode(), addr)
        except OSError as e:
            log.warning("sd_notify failed: %s", e)


class Daemon:
    version = __version__

    def __init__(self, args):
        self.args = args
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop_event: asyncio.Event | None = None
        self.features: dict = {}
        self.filelsm = None
        self.dns = None
        self.auditlink = None
        self._lost_seen = 0
        # Kernel events can still be in flight when a session's cgroup empties:
        # remember ended sessions briefly so those events keep their session and rule.
        self._ended: dict[int, tuple[float, str, list, list | None]] = {}
        self._step_errors: dict[str, float] = {}
        self._refusals_flushed = 0.0
        self._denied: dict[str, dict[str, int]] = {}    # session id -> kind -> refusals
        from corral.server.losses import Losses
        from corral.server import settings
        self.settings = getattr(args, "settings", None) or settings.Settings()
        self.losses = Losses()          # every record lost, by cause (server/losses.py)
        self.exports = None
        self.policies = None

    # -- start-up ----------------------------------------------------------
    def load(self) -> None:
        t0 = time.monotonic()
        self.features = probes.kernel_features()
        root = cgroups.ensure_root()
        self.net = NetBpf(root)
        self.features["network"] = {"active": True, "backend": "bpf-cgroup-sock-addr",
                                    "headers": self.net.header_mode,
                                    "note": "IP-level: an allowed IP also reaches every other "
                                            "site hosted on it (shared CDN addresses)",
                                    "unix_hooks": self.net.unix_hooks,
                                    "own_loopback": getattr(self.net, "own_loopback", False)}
        self.filelsm = self._load_filelsm()
        self.dns = self._load_dns()
        self.log = self._open_log()
        from corral.server import settings
        from corral.server.policydir import PolicyDir
        self.policies = PolicyDir(settings.policies_dir(self.settings), audit=self.audit)
        self.sessions = SessionTable(self.net, self.filelsm, self.dns)
        self.auditlink = self._load_auditlink()
        # Protected names that do not exist yet: watched, not frozen (issue 12).
        from corral.server.namewatch import NameWatch
        self.namewatch = NameWatch(self.sessions, self.audit, enabled=self.filelsm is None)
        self.sessions.namewatch = self.namewatch
        self.features["protected_names"] = self.namewatch.status()
        self.git = self._load_git()         # before recover(): git sessions get their endpoints
        self.sessions.git = self.git
        from corral.client.mountguard import refusal_file
        from corral.server.unixwatch import UnixWatch
        self.unixwatch = UnixWatch(self.sessions, self.audit, refusal_file())
        recovered = self.sessions.recover()
        # Only now, migrating from another build of net.c: the sessions are in the new maps.
        self.net.activate()
        self._replay_downtime()
        self.api = Api(Services(sessions=self.sessions, audit=self.audit,
                                end_session=self.end_session, status=self.status,
                                policies=self.policies))
        from corral.server.namedsync import NamedSync
        self.policies.on_change = NamedSync(self.sessions, self.audit,
                                            self.api.protected_write).changed
        for named in list(self.policies.policies.values()):
            self.policies.on_change(named)   # changed while no corrald ran: recovered sessions
        log.info("BPF loaded in %.1fs (headers: %s); %d session(s) recovered",
                 time.monotonic() - t0, self.net.header_mode, len(recovered))
        self.audit({"kind": "daemon", "op": "start", "verdict": "info", "target": str(root),
                    "rule": "", "features": self.features,
                    "recovered": [s.id for s in recovered]})
        self.log.checkpoint("start")
        if not self.features["checkpoints"]["active"]:
            self.audit({"kind": "log", "op": "checkpoints_off", "verdict": "warn", "target": "",
                        "rule": self.features["checkpoints"]["why"]}, must=False)

    def _open_log(self) -> EventLog:
        """The audit log with its exports (server/export) and signed checkpoints
        (server/checkpoints.py), as corral.toml says."""
        from corral.server import export, settings
        from corral.server.checkpoints import Checkpointer
        from corral.server.eventlog import audit_gid
        gid = audit_gid(os.environ.get("CORRAL_AUDIT_GROUP", "corral-audit")) \
            if os.geteuid() == 0 else 0
        self.exports = export.build(self.settings, LOG_DIR, gid)
        key = settings.checkpoint_key(self.settings)
        try:
            cp = Checkpointer(key, LOG_DIR / "checkpoints.jsonl",
                              self.settings.get("log", "checkpoint_every"), str(LOG_DIR), gid)
            self.features["checkpoints"] = {"active": True, "key_id": cp.key_id}
        except Exception as e:
            # Enforcement does not wait for the anchor; doctor and the log say it is missing.
            cp = None
            why = f"signing key {key}: {type(e).__name__}: {e}"
            self.features["checkpoints"] = {"active": False, "why": why}
            log.error("audit log checkpoints are OFF: %s (fix it and restart corrald)", why)
        self.features["exports"] = self.exports.status()
        return EventLog(LOG_DIR, checkpointer=cp, on_write=self.exports.on_write)

    def _load_git(self):
        """The git gateway (server/gitgateway). A broken credentials file only
        refuses sessions that ask for git, with its error."""
        try:
            from corral.server.gitgateway import GitGateway
            gw = GitGateway(getattr(self.args, "git_credentials", None), audit=self.audit,
                            loop=lambda: self.loop)
        except Exception as e:
            self.features["git"] = {"active": False, "why": f"{type(e).__name__}: {e}"}
            log.error("git gateway: %s", e)
            return None
        self.features["git"] = gw.status()
        return gw

    def _load_filelsm(self):
        f = self.features.setdefault("filesystem", {})
        try:
            from corral.backends import filelsm
        except ImportError as e:
            f.update(active=False, backend="landlock", bpf_lsm=f"not built: {e}")
            return None
        ok, why = filelsm.probe()
        if not ok:
            f.update(backend="landlock", bpf_lsm=f"unavailable: {why}")
            return None
        try:
            fl = filelsm.FileLsm()
        except Exception as e:
            f.update(backend="landlock", bpf_lsm=f"failed to load: {e}")
            log.error("BPF LSM probe passed but loading failed: %s", e)
            return None
        f.update(active=True, backend="bpf-lsm", bpf_lsm="active")
        return fl

    def _load_dns(self):
        if self.args.no_dns:
            self.features["dns"] = {"active": False, "why": "disabled by --no-dns"}
            return None
        try:
            from corral.dns.steering import DnsSteering
        except ImportError as e:
            self.features["dns"] = {"active": False, "why": f"resolver not available: {e}"}
            return None
        try:
            d = DnsSteering(self.args, audit=self.audit, loop=lambda: self.loop)
        except Exception as e:
            self.features["dns"] = {"active": False, "why": f"resolver failed to start: {e}"}
            log.error("DNS resolver: %s", e)
            return None
        self.features["dns"] = {"active": True, "upstream": d.upstream_desc()}
        return d

    def _load_auditlink(self):
        """Landlock file denials and seccomp denials come from kernel audit."""
        f = self.features.setdefault("audit", {})
        try:
            from corral.server import auditlink
        except ImportError as e:
            f.update(active=False, why=f"not available: {e}")
            return None
        ok, why = auditlink.probe()
        f.update(probe=why)
        try:
            link = auditlink.AuditLink(cgroup_prefix="/" + cgroups.ROOT_NAME,
                                       erofs=self.args.audit_erofs)
        except OSError as e:
            f.update(active=False, why=str(e))
            log.warning("kernel audit link: %s (Landlock/seccomp denials not logged)", e)
            return None
        f.update(active=True, landlock=ok, enabled_by_corral=link.enabled_by_us)
        return link

    def audit_link_read(self) -> None:
        for rec in self.auditlink.read():
            cg = rec.pop("cgroup", None)
            sid = cgroups.session_of_path(cg)
            if sid is None and rec.get("pid"):
                s = self.sessions.for_pid(rec["pid"])
                sid = s.id if s else None
            rec["session"] = sid
            if cg is not None:
                rec["cgroup"] = cg
            self.audit(rec)

    # -- events ------------------------------------------------------------
    def status(self) -> dict:
        return {"version": self.version, "features": self.features, "log": self.log.status(),
                "losses": self.losses.snapshot(),
                "exports": self.exports.status() if self.exports else {},
                "policies": self.policies.status() if self.policies else None}

    def audit(self, rec: dict, must: bool = False) -> dict:
        """Every event reaches the log before any subscriber.

        must=True: the record is the proof of a change about to be made; if it
        cannot be written durably, LogUnavailable is raised and the caller makes
        no change. Otherwise a record that cannot be written is counted as lost
        by the log (reported when it recovers) and the daemon carries on."""
        rec.setdefault("time", time.time())
        for k in ("session", "pid", "comm", "uid", "kind", "op", "target", "verdict", "rule"):
            rec.setdefault(k, None)
        s = self.sessions.by_id.get(rec["session"]) if rec["session"] and hasattr(self, "sessions") \
            else None
        if s is not None:
            rec.update(self._meta(s))
        rec = self.log.append(rec, must=must)
        self.losses.note(rec)
        sid = rec.get("session")
        if rec.get("verdict") == "deny" and sid and hasattr(self, "sessions") \
                and sid in self.sessions.by_id:
            # per-session refusal counts for the line `corral run` prints at the end
            c = self._denied.setdefault(sid, {})
            c[rec.get("kind") or "other"] = c.get(rec.get("kind") or "other", 0) + 1
        if hasattr(self, "api"):
            self.api.publish(rec)
        return rec

    @staticmethod
    def _meta(s) -> dict:
        """What ties a session's records together across a fleet (corral run --name/--label)."""
        out = {}
        if getattr(s, "name", None):
            out["session_name"] = s.name
        if getattr(s, "labels", None):
            out["labels"] = s.labels
        return out

    def kernel_event(self, raw: bytes) -> None:
        rec = events.decode(raw)
        cgid = rec["cgid"]
        s = self.sessions.by_cgid.get(cgid)
        if s is not None:
            rec["session"], snap = s.id, None
        else:
            _, rec["session"], net_rules, file_rules = self._ended.get(cgid, (0, None, [], None))
            snap = file_rules if rec["kind"] == "file" else net_rules
        rule_id = rec.pop("rule_id")
        # The backend that emitted the event says what its rule id means.
        backend = self.net
        if rec["kind"] == "file":
            rec["backend"] = "bpf-lsm"
            backend = self.filelsm if self.filelsm is not None else self.sessions.files
        rec["rule"] = backend.describe(cgid, rule_id) if s is not None \
            else backend.describe_snapshot(snap, rule_id)
        if s is not None and s.git and getattr(self, "git", None) is not None:
            self.git.hint(s, rec)       # a direct connection to its git upstream: say why
        suppressed = rec.pop("suppressed_before")
        if suppressed:
            self.audit({"kind": "rate", "op": "suppressed", "verdict": "info",
                        "session": rec["session"], "target": f"{suppressed} event(s)",
                        "count": suppressed, "rule": "per-session rate limit", "time": rec["time"]})
        if rec["kind"] != "rate":     # a bare rate record only carries the count
            self.audit(rec)

    def _replay_downtime(self) -> None:
        """Log what the kernel emitted while no daemon read the pinned ring
        buffer (the previous daemon was killed, or this one was starting).
        Each record is decoded by kernel_event and marked "while_down": True
        (rate-limit summaries too); a session that ended meanwhile keeps its
        cgid, with session None. Events the full buffer dropped, and records
        of an older layout, become one {"kind": "lost", "op": "while_down"} record."""
        down = self.net.take_downtime()
        audit = self.audit
        bad = 0

        def while_down(rec: dict, *args, **kw):
            rec["while_down"] = True
            return audit(rec, *args, **kw)
        self.audit = while_down         # shadows the method for kernel_event only
        try:
            for raw in down["records"]:
                try:
                    self.kernel_event(raw)
                except Exception:       # one bad record must not keep the daemon down
                    log.exception("cannot log a kernel event left from downtime")
                    bad += 1
        finally:
            del self.audit
        down["undecodable"] += bad
        n = down["lost"] + down["undecodable"]
        if n:
            self.audit({"kind": "lost", "op": "while_down", "verdict": "info",
                        "target": f"{n} event(s)", "count": n, "overrun": down["lost"],
                        "undecodable": down["undecodable"],
                        "rule": "ring buffer full while no daemon read it"})
            log.warning("%d kernel event(s) lost while no daemon read the ring buffer", n)
        if down["replaced"]:
            self.audit({"kind": "daemon", "op": "pins_replaced", "verdict": "info",
                        "target": ", ".join(down["replaced"]),
                        "rule": "pinned event maps of another layout (older corral)"})

    def _pump(self, stop: threading.Event) -> None:
        """Ring buffers are polled on a thread; records go to the loop."""
        def on_raw(ctx, data, size):
            import ctypes
            raw = ctypes.string_at(data, size)
            self.loop.call_soon_threadsafe(self.kernel_event, raw)
        self.net.bpf["events"].open_ring_buffer(on_raw)
        if self.filelsm is not None:
            self.filelsm.open_events(lambda raw: self.loop.call_soon_threadsafe(self.kernel_event, raw))
        last_error = -1e9
        while not stop.is_set():
            try:
                self.net.bpf.ring_buffer_poll(200)
                if self.filelsm is not None:
                    self.filelsm.poll(0)
            except Exception as e:      # never let the event path die silently
                if time.monotonic() - last_error >= 60:
                    last_error = time.monotonic()
                    log.error("kernel event pump: %s: %s (retrying)", type(e).__name__, e)
                stop.wait(0.2)

    async def _watch(self) -> None:
        """Housekeeping every SESSION_POLL s. Each step fails on its own: one that
        raises is logged (once a minute) and the others, and the next round, go on."""
        while True:
            await asyncio.sleep(SESSION_POLL)
            for name, step in (("audit link", self._read_audit_link), ("sessions", self._reap),
                               ("lost events", self._count_lost), ("log", self.log.retry),
                               ("refusals", self._flush_refusals),
                               ("unix sockets", self.unixwatch.step),
                               ("exports", self._report_exports),
                               ("named policies", self.policies.step),
                               ("protected names", self.namewatch.step)):
                try:
                    step()
                except Exception as e:
                    self._step_failed(name, e)

    def _step_failed(self, name: str, e: Exception) -> None:
        now = time.monotonic()
        if now - self._step_errors.get(name, -1e9) >= 60:
            self._step_errors[name] = now
            log.error("housekeeping step %r failed: %s: %s (retrying every %.1f s)",
                      name, type(e).__name__, e, SESSION_POLL)

    def _read_audit_link(self) -> None:
        if self.auditlink is not None:
            self.audit_link_read()      # EOE-less groups, rate summaries, kernel losses

    def _read_audit_link_guarded(self) -> None:
        try:
            self.audit_link_read()
        except Exception as e:
            self._step_failed("audit link", e)

    def _reap(self) -> None:
        for s in self.sessions.ended():
            try:
                self.end_session(s, "cgroup empty", kill=False, reason="cgroup empty")
            except Exception as e:      # the next session still gets cleaned up
                self._step_failed(f"end session {s.id}", e)
        # A session ends with its command (unless keep_running), even if the
        # `corral run` that waited for it was killed and cannot ask.
        for s in self.sessions.leaders_gone():
            try:
                self.end_session(s, f"leader pid {s.leader_pid} exited", reason="leader exited")
            except Exception as e:
                self._step_failed(f"end session {s.id}", e)

    def _flush_refusals(self) -> None:
        now = time.monotonic()
        if now - self._refusals_flushed >= 5:
            self._refusals_flushed = now
            self.api.flush_refusals()

    def _report_exports(self) -> None:
        """What the exports dropped or could not write goes on record (every 5 s at most)."""
        now = time.monotonic()
        if self.exports is None or now - getattr(self, "_exports_reported", 0.0) < 5:
            return
        self._exports_reported = now
        for rec in self.exports.unreported():
            self.audit(rec)

    def _count_lost(self) -> None:
        lost = self.net.lost_events() + (self.filelsm.lost_events()
                                         if self.filelsm is not None else 0)
        if lost > self._lost_seen:
            self.audit({"kind": "lost", "op": "ringbuf_overrun", "verdict": "info",
                        "target": f"{lost - self._lost_seen} event(s)",
                        "count": lost - self._lost_seen, "rule": "ring buffer full"})
            log.warning("%d kernel event(s) lost to ring-buffer overrun", lost - self._lost_seen)
            self._lost_seen = lost

    async def _supervise(self, name: str, fn) -> None:
        """Run a daemon task forever: restarted, with the reason logged, if it dies."""
        delay = 0.5
        while True:
            started = time.monotonic()
            try:
                await fn()
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.error("task %s died: %s: %s; restarting in %.1f s", name,
                          type(e).__name__, e, delay)
                self.audit({"kind": "daemon", "op": "task_restart", "verdict": "info",
                            "target": name, "rule": f"{type(e).__name__}: {e}"})
            await asyncio.sleep(delay)
            delay = 0.5 if time.monotonic() - started > 60 else min(delay * 2, 30)

    def end_session(self, s, why: str, kill: bool = True, must: bool = False,
                    reason: str | None = None) -> dict:
        """End a session: kill what is left in it (kill=True), wait until its
        cgroup is empty (bounded), remove it. Asked for (must=True): logged first,
        with the count of processes about to be killed (frozen meanwhile, so the
        count is exact), and refused if the log cannot take it. The daemon's own
        ends (cgroup empty, leader exited) are logged when done, whatever the log
        says. Returns {"killed": N, "remaining": M} (M: still exiting after the wait)."""
        killed = self.sessions.hold(s) if kill else 0
        if self.auditlink is not None:
            try:        # kernel audit records still on their way count for this session too
                self.audit_link_read()
            except Exception:
                pass
        denied = self._denied.pop(s.id, {})
        try:        # the kernel's count: exact, records or not (bpf/net.c count_denial)
            kernel = self.net.take_denials(s.cgid)
        except Exception:
            kernel = 0
        if kernel > denied.get("net", 0):
            denied["net"] = kernel
        rec = {"kind": "session", "op": "end", "verdict": "info", "session": s.id,
               "target": s.cgroup, "rule": why, "uid": s.owner_uid,
               "reason": reason or why, "killed": killed, "keep_running": s.keep_running,
               "denied": denied, **self._meta(s)}
        if must:
            try:
                rec = self.audit(rec, must=True)
            except BaseException:
                if kill:
                    self.sessions.release(s)
                raise
        now = time.monotonic()
        self._ended = {k: v for k, v in self._ended.items() if v[0] > now - 60}
        file_rules = self.filelsm.snapshot(s.cgid) if self.filelsm is not None else None
        self._ended[s.cgid] = (now, s.id, self.net.snapshot(s.cgid), file_rules)
        left = self.sessions.end(s, kill=kill)
        if not must:
            if left:
                rec["remaining"] = left
            # Not log-first (the daemon's own end, or the command's exit), but
            # before the answer: `corral run` exits on it, and `corral log`
            # right after must find the end (and the session gone).
            self.audit(rec)
        elif left:
            self.audit({"kind": "session", "op": "end_incomplete", "verdict": "warn",
                        "session": s.id, "target": s.cgroup, "uid": s.owner_uid,
                        "remaining": left, "rule": f"{left} process(es) still in the cgroup "
                        "after SIGKILL and the wait (uninterruptible sleep?)"})
        log.info("session %s ended (%s): %d process(es) killed%s", s.id, reason or why, killed,
                 f", {left} still exiting" if left else "")
        out = {"session": s.id, "killed": killed, "remaining": left, "denied": denied}
        self.sessions.end_answers = {k: v for k, v in self.sessions.end_answers.items()
                                     if v[0] > now - 60}
        self.sessions.end_answers[s.id] = (now, s.owner_uid, out)
        return out

    # -- run ---------------------------------------------------------------
    async def serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.stop_event = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.stop_event.set)
        # What `corral run` binds over the Unix sockets a session may not reach
        # (client/mountguard.py); made here so unprivileged clients find it.
        from corral.client.mountguard import ensure_git_template, ensure_refusal_file
        ensure_refusal_file()
        ensure_git_template()
        server = Server(SOCKET, self.api)
        await server.start()
        if self.dns is not None:
            await self.dns.start()
        stop_pump = threading.Event()
        pump = threading.Thread(target=self._pump, args=(stop_pump,), daemon=True)
        pump.start()
        if self.auditlink is not None:
            self.loop.add_reader(self.auditlink.fileno(), self._read_audit_link_guarded)
        if self.namewatch.fileno() >= 0:
            self.loop.add_reader(self.namewatch.fileno(), self.namewatch.read)
        watcher = self.loop.create_task(self._supervise("watcher", self._watch))
        log.info("listening on %s", SOCKET)
        sd_notify("READY=1\nSTATUS=serving")
        await self.stop_event.wait()
        sd_notify("STOPPING=1")
        log.info("stopping")
        watcher.cancel()
        if self.auditlink is not None:
            self.loop.remove_reader(self.auditlink.fileno())
            self.audit_link_read()
            self.auditlink.close()
        if self.namewatch.fileno() >= 0:
            self.loop.remove_reader(self.namewatch.fileno())
        self.namewatch.close()
        if getattr(self, "git", None) is not None:
            self.git.stop()
        await server.close()
        if self.dns is not None:
            await self.dns.stop()
        stop_pump.set()
        pump.join(timeout=2)
        if self.args.end_sessions_on_exit:
            for s in list(self.sessions.by_id.values()):
                self.end_session(s, "daemon stopping", reason="daemon stopping")
        # Otherwise sessions stay confined: programs stay attached, maps stay
        # pinned, and the next daemon re-adopts them.
        self.audit({"kind": "daemon", "op": "stop", "verdict": "info", "target": "", "rule": ""})
        self.log.checkpoint("stop")
        self.log.close()
        if self.exports is not None:
            self._exports_reported = 0.0
            self.exports.close()


def raise_fd_limit() -> None:
    """Connections are bounded per principal and in all (limits.py); make sure
    the descriptor limit is well above that total, whatever started us."""
    import resource
    from corral.server.limits import MAX_CONN_TOTAL
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, min(hard, 65536))
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < MAX_CONN_TOTAL + 512:
        log.warning("RLIMIT_NOFILE is %d: below the %d connections corrald may hold "
                    "(set LimitNOFILE=65536)", want, MAX_CONN_TOTAL)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="corrald", description="corral sandbox daemon")
    ap.add_argument("--verbose", "-v", action="store_true")
    ap.add_argument("--no-dns", action="store_true", help="do not start the per-session DNS resolver")
    ap.add_argument("--dns-upstream", metavar="HOST[:PORT]",
                    help="where allowed DNS queries go (default: first nameserver in /etc/resolv.conf)")
    ap.add_argument("--dns-min-ttl", type=float, default=30, metavar="SECONDS",
                    help="an address learned from DNS stays allowed at least this long (default 30)")
    ap.add_argument("--dns-max-ttl", type=float, default=86400, metavar="SECONDS",
                    help="... and at most this long; answers' TTLs are capped to it (default 86400)")
    ap.add_argument("--audit-erofs", action="store_true",
                    default=os.environ.get("CORRAL_AUDIT_EROFS") == "1",
                    help="record each write the read-only mount view refuses (EROFS) through a "
                         "kernel audit exit rule; costs ~200 ns on every syscall of every "
                         "process on the host while loaded (measured), so it is off by default")
    ap.add_argument("--git-credentials", metavar="FILE",
                    help="the git gateway's credentials (default: CORRAL_GIT_CREDENTIALS or "
                         "/etc/corral/git-credentials.toml)")
    ap.add_argument("--end-sessions-on-exit", action="store_true",
                    help="kill sessions on SIGTERM (default: leave them confined for the next daemon)")
    ap.add_argument("--config", metavar="FILE",
                    help="settings file (default: CORRAL_CONFIG or /etc/corral/corral.toml; a "
                         "missing file means the defaults; options given here win)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from corral.server import settings
    try:
        args.settings = settings.load(args.config)
    except settings.SettingsError as e:
        print(f"corrald: cannot start: {e}. corrald does not start on a settings file it cannot "
              "read fully (an export or key asked for would be silently off): fix that line, or "
              "move the file away to run with the defaults", file=sys.stderr)
        return 1
    settings.apply(args.settings, args)
    if os.geteuid() != 0:
        print("corrald: must run as root (it loads BPF programs and manages cgroups)", file=sys.stderr)
        return 1
    raise_fd_limit()
    d = Daemon(args)
    try:
        d.load()
    except Exception as e:
        log.error("cannot start: %s", e)
        sd_notify(f"STATUS=failed: {e}")
        return 1
    # What loading made (bcc, the BPF tables, the parsed profiles...) lives as
    # long as the daemon: out of the collector's way, so a collection on the
    # path of a session start scans only what requests made.
    import gc
    gc.collect()
    gc.freeze()
    asyncio.run(d.serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
