"""Sessions: a cgroup, a policy, and the backends that enforce it. The table
orchestrates -- order of installs, cgroups, persistence -- and leaves what
the kernel holds to the backends (backends/base.py)."""
from __future__ import annotations

import json
import logging
import os
import secrets
import select
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

from corral.kernel import cgroups
from corral.policy import model as pol
from corral.config import STATE_DIR
from corral.backends.landlock import LandlockBackend
from corral.kernel.abi import SESS_DNS_STEER, SESS_FILE_ENFORCE, SESS_NET_ENFORCE

# Seconds a session made for `corral run`'s native launcher may wait for its first
# process to report (admit_unmoved): it is created right after the answer.
PENDING_LEADER = 5.0

log = logging.getLogger("corral.sessions")


@dataclass
class Session:
    id: str
    cgid: int
    cgroup: str
    owner_uid: int
    owner_gid: int
    leader_pid: int
    policy: dict
    created: float
    rules: list[str] = field(default_factory=list)   # rule id - RULE_USER -> text
    enforcement: dict = field(default_factory=dict)  # what the kernel accepted
    parent: str | None = None
    dns_port: int = 0
    # Addresses learned from allowed DNS answers: [rule text, expiry epoch]; the
    # resolver's, as it last handed them over (SessionTable.set_dns_rules).
    dns_rules: list = field(default_factory=list)
    # False: the session ends, and whatever is left in it is killed, when its
    # leader (the process that registered it: `corral run`'s command) exits.
    # True: it lasts until its cgroup empties or it is ended (daemon-style use).
    keep_running: bool = False
    # `corral run --name/--label` (corral/labels.py), and the named policy it was
    # started with (policies.d: name, sha256): carried on every record of the session.
    name: str | None = None
    labels: dict = field(default_factory=dict)
    policy_name: dict | None = None
    # The git gateway's endpoint ({"port", "secret", "config", ...}: server/gitgateway),
    # for a policy with a [git] section; the secret is never in public().
    git: dict = field(default_factory=dict)
    # A pidfd for the leader (not a field: never saved; -1 when the leader is
    # gone or could not be pinned again after a daemon restart).
    leader_fd = -1
    # monotonic time until which an empty cgroup is a session still starting
    # (admit_unmoved; not a field either)
    pending_until = 0.0

    def leader_alive(self) -> bool:
        if self.leader_fd < 0:
            return False
        p = select.poll()
        p.register(self.leader_fd, select.POLLIN)     # readable once it has exited
        return not p.poll(0)

    def public(self) -> dict:
        # A copy the caller may change (asdict's, 1 ms for a 1000-rule policy)
        d = {f.name: _plain_copy(getattr(self, f.name)) for f in fields(self)}
        d["pids"] = cgroups.pids(Path(self.cgroup))
        d["leader_alive"] = self.leader_alive()
        d["git"] = {k: v for k, v in self.git.items() if k != "secret"}
        return d


def _plain_copy(x):
    """A deep copy of JSON-shaped data (dicts, lists, scalars)."""
    if isinstance(x, dict):
        return {k: _plain_copy(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain_copy(v) if isinstance(v, (dict, list, tuple)) else v for v in x]
    return x


class SessionTable:
    """Owns every live session; the only writer of the per-session maps."""

    def __init__(self, net, filelsm=None, dns=None):
        self.net = net
        self.filelsm = filelsm
        # file policy: BPF LSM when the kernel has it, else Landlock (in the client)
        self.files = filelsm if filelsm is not None else LandlockBackend()
        self.dns = dns                      # DNS steering backend (issue 6), optional
        if dns is not None:
            dns.on_learned = self.set_dns_rules     # how the resolver hands over what it learned
        self.by_id: dict[str, Session] = {}
        # session id -> (monotonic time, owner uid, what end_session answered), a
        # minute: `corral run` asks for the end after its command exits, and the
        # daemon may have ended it first (its leader gone): it still gets the counts.
        self.end_answers: dict[str, tuple[float, int, dict]] = {}
        self.by_cgid: dict[int, Session] = {}
        # Sessions ended in the last minute: id -> (monotonic time, parent id), so
        # a parent session asking to end a child that already ended hears so.
        self.recently_ended: dict[str, tuple[float, str | None]] = {}
        # Protected names that do not exist yet (server/namewatch.py), set by the daemon.
        self.namewatch = None
        self.git = None         # the git gateway (server/gitgateway), set by the daemon
        STATE_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)

    # -- lifecycle ----------------------------------------------------------
    def prepare(self, policy: dict, uid: int, gid: int, parent: str | None,
                leader_pid: int, keep_running: bool = False, name: str | None = None,
                labels: dict | None = None, policy_name: dict | None = None) -> Session:
        """A new session's cgroup with its policy in the kernel maps, nobody in it
        yet (so nothing is enforced on anyone, and nothing is decided, until admit())."""
        sid = secrets.token_hex(4)
        while sid in self.by_id or cgroups.session_path(sid).exists():
            sid = secrets.token_hex(4)
        path = cgroups.create(sid)
        s = Session(id=sid, cgid=cgroups.cgroup_id(path), cgroup=str(path), owner_uid=uid,
                    owner_gid=gid, leader_pid=leader_pid, policy=policy, created=time.time(),
                    parent=parent, keep_running=keep_running, name=name,
                    labels=dict(labels or {}), policy_name=policy_name)
        try:
            if policy.get("git") is not None:
                if self.git is None:
                    raise pol.PolicyError("this policy has a [git] section but the daemon's git "
                                          "gateway is not running")
                s.git = self.git.open(s)
            self._install(s)
        except Exception:
            self.discard(s)
            raise
        return s

    def admit(self, s: Session, peer) -> None:
        """Move the peer (pinned by its pidfd) into the prepared session.

        cgroup.procs takes a pid number, not a pidfd. If the peer is alive after
        the write, the number named it throughout (a pid is not reused while its
        process lives), so the right process moved. If it died meanwhile, the
        number may now name someone else: whatever landed in the cgroup goes
        back where the peer came from, and the session is refused."""
        self.move_in(s, peer)
        # The peer's own pin, so the leader is the process that asked, whatever
        # its pid names later.
        s.leader_fd = os.dup(peer.pidfd)
        self._enter(s)

    def move_in(self, s: Session, peer) -> None:
        """admit()'s move (also a non-root native run's command, server/runprep.py)."""
        _, origin = peer.cgroup()            # raises PeerGone
        cgroups.move(peer.pid, Path(s.cgroup))
        if not peer.alive():
            back = cgroups.path_of(origin)
            for pid in cgroups.pids(Path(s.cgroup)):
                try:
                    cgroups.move(pid, back)
                except OSError as e:
                    log.warning("cannot move pid %d back out of %s: %s", pid, s.id, e)
            from corral.server.peer import PeerGone
            raise PeerGone(f"pid {peer.pid} exited while it was being moved into its session")

    def admit_unmoved(self, s: Session) -> None:
        """admit() for a session whose first process is created in its cgroup
        (`corral run`'s native launcher: clone3 CLONE_INTO_CGROUP): nobody to move;
        the leader is pinned when that process reports (server/runprep.py). Until
        then the cgroup may be empty: ended() leaves it alone for a few seconds."""
        s.pending_until = time.monotonic() + PENDING_LEADER
        self._enter(s)

    def _enter(self, s: Session) -> None:
        self.by_id[s.id] = s
        self.by_cgid[s.cgid] = s
        if self.namewatch is not None:
            # In place before the reply: `corral run` leaves exactly these to it.
            self.namewatch.watch(s)
            s.enforcement["watched_names"] = self.namewatch.covers(s)
        self._save(s)

    def discard(self, s: Session) -> None:
        """Undo prepare() (or a failed admit())."""
        self._close_git(s)
        if self.namewatch is not None:
            self.namewatch.forget(s)
        self._close_leader(s)
        self._uninstall(s)
        try:
            cgroups.remove(Path(s.cgroup))
        except cgroups.CgroupError as e:
            log.warning("%s", e)

    def owned_by(self, uid: int) -> list[Session]:
        return [s for s in self.by_id.values() if s.owner_uid == uid]

    def update(self, s: Session, policy: dict) -> None:
        old = s.policy
        if policy.get("git") != old.get("git"):
            raise pol.PolicyError("the [git] section is fixed when a session starts (its git "
                                  "endpoint and config were made for it): start a new session")
        s.policy = policy
        try:
            self._install(s)
        except Exception:
            s.policy = old
            self._install(s)
            raise
        self._save(s)

    def hold(self, s: Session) -> int:
        """Freeze the session's processes (nothing forks any more) and count them,
        for the record written before they are killed. release() undoes it."""
        cgroups.freeze(Path(s.cgroup))
        return len(cgroups.tree_pids(Path(s.cgroup)))

    def release(self, s: Session) -> None:
        cgroups.freeze(Path(s.cgroup), frozen=False)

    def end(self, s: Session, kill: bool = True) -> int:
        """Kill what is left (kill=True), wait until the cgroup is empty (bounded),
        then remove its kernel state and cgroup. Returns how many processes were
        still there after the wait (0: the cgroup emptied)."""
        path = Path(s.cgroup)
        left = cgroups.kill(path) if kill else 0
        if left:
            log.warning("session %s: %d process(es) still in %s after SIGKILL (uninterruptible "
                        "sleep?); they die when they wake", s.id, left, path)
        if self.namewatch is not None:
            self.namewatch.forget(s)
        self._close_leader(s)
        self._remove(s, path, left)     # before the end record: it says the session is gone
        self.by_id.pop(s.id, None)
        self.by_cgid.pop(s.cgid, None)
        now = time.monotonic()
        self.recently_ended = {k: v for k, v in self.recently_ended.items() if v[0] > now - 60}
        self.recently_ended[s.id] = (now, s.parent)
        return left

    def _remove(self, s: Session, path: Path, left: int) -> None:
        """An ended session's kernel state, git gateway, cgroup and state file."""
        self._uninstall(s)
        self._close_git(s)
        try:
            cgroups.remove(path, timeout=0.1 if left else 2.0)
        except cgroups.CgroupError as e:
            log.warning("%s", e)
        try:
            (STATE_DIR / f"{s.id}.json").unlink()
        except FileNotFoundError:
            pass

    def ended(self) -> list[Session]:
        """Sessions whose cgroup has emptied (not one whose first process is still
        being created, admit_unmoved)."""
        now = time.monotonic()
        return [s for s in self.by_id.values() if not cgroups.populated(Path(s.cgroup))
                and s.pending_until < now]

    def leaders_gone(self) -> list[Session]:
        """Sessions that end with their leader, whose leader has exited."""
        now = time.monotonic()
        return [s for s in self.by_id.values() if not s.keep_running and not s.leader_alive()
                and s.pending_until < now]

    def _close_git(self, s: Session) -> None:
        if self.git is not None and (s.git or s.policy.get("git") is not None):
            try:
                self.git.close(s)
            except Exception as e:
                log.warning("git gateway cleanup for %s: %s", s.id, e)

    @staticmethod
    def _close_leader(s: Session) -> None:
        if s.leader_fd >= 0:
            try:
                os.close(s.leader_fd)
            except OSError:
                pass
            s.leader_fd = -1

    def _pin_leader(self, s: Session) -> None:
        """After a restart: a pidfd for the saved leader pid, if that pid is still
        in the session's cgroup once pinned (then it is a session process: the
        leader, unless the leader died and a session process got its pid)."""
        try:
            fd = os.pidfd_open(s.leader_pid)
        except OSError:
            return
        s.leader_fd = fd
        if cgroups.cgroup_of(s.leader_pid) != self._rel(s) or not s.leader_alive():
            self._close_leader(s)

    @staticmethod
    def _rel(s: Session) -> str:
        return "/" + str(Path(s.cgroup).relative_to(cgroups.cgroup2_mount()))

    # -- kernel state -------------------------------------------------------
    def set_dns_rules(self, s: Session, rules: list[tuple[str, float]]) -> None:
        """The resolver's learned allow rules ("CIDR[:PORT[-PORT]]", expiry) for
        the session, into the kernel: appended when that is all that changed,
        else a full install (of the same policy: the resolver is not asked again)."""
        new = [[r, exp] for r, exp in rules]
        added = self.net.append_learned(s.cgid, self._net_policy(s), [r for r, _ in new])
        s.dns_rules = new
        if added is not None:
            s.rules += added
            return
        self._install(s, dns_changed=False)

    def _install(self, s: Session, dns_changed: bool = True) -> None:
        """Every backend, in order. `dns_changed` False: only the learned rules
        changed, and they came from the resolver: it is not told again."""
        net = s.policy.get("network")
        domains = bool(net and (net.get("allow_domains") or net.get("deny_domains")))
        flags = 0
        enforcement = {}
        if net is not None:
            flags |= SESS_NET_ENFORCE
            enforcement["network"] = self.net.label
        if domains:
            if self.dns is None:
                raise pol.PolicyError("this policy names domains but the daemon's DNS resolver "
                                      "is not running; use CIDR rules or enable the resolver")
            flags |= SESS_DNS_STEER
            if dns_changed:
                # The resolver drops what a removed domain had learned, so
                # installing what it still holds revokes that.
                s.dns_port = self.dns.add_session(s)
                s.dns_rules = [list(r) for r in self.dns.learned(s)]
            enforcement["dns"] = "corral-resolver"
        elif self.dns is not None and s.dns_port:
            self.dns.remove_session(s)
            s.dns_port = 0
        if not domains:
            s.dns_rules = []
        fs = s.policy.get("filesystem")
        if fs is not None:
            if self.filelsm is not None:
                flags |= SESS_FILE_ENFORCE
            self.files.install(s.cgid, fs, unix=s.policy.get("unix"))
            enforcement["filesystem"] = self.files.label
            # what else the file backend covers (BPF LSM: Unix peers, signals, ptrace, metadata)
            enforcement.update({k: v for k, v in getattr(self.files, "enforces", {}).items()
                                if k != "filesystem"})
        elif s.enforcement.get("filesystem") == self.files.label:
            self.files.remove(s.cgid)
        s.rules = self.net.install(s.cgid, self._net_policy(s), [r for r, _ in s.dns_rules],
                                   flags, s.dns_port)
        if self.dns is not None and s.dns_port and dns_changed:
            self.dns.update_session(s)
        s.enforcement.update(enforcement)
        for k in [k for k in s.enforcement
                  if k not in enforcement and k not in ("client", "watched_names")]:
            del s.enforcement[k]

    def _net_policy(self, s: Session) -> dict:
        """The policy the network backend installs: a session with a network
        policy and a git endpoint may also reach that endpoint, 127.0.0.1:PORT
        exactly (its rule, keyed by its cgroup: no other session's; not
        allow_localhost_ports, which would also reach another process's server on
        127.0.0.2:PORT or [::1]:PORT). Without a network policy nothing is added
        (a network section would make it default-deny); the endpoint still
        answers only this session's sockets (inet_diag)."""
        port = s.git.get("port") if s.git else 0
        net = s.policy.get("network")
        if not port or net is None:
            return s.policy
        cached = getattr(s, "_net_eff", None)
        if cached is not None and cached[0] is s.policy:
            return cached[1]
        eff = dict(s.policy, network=dict(net, allow=list(net.get("allow") or []) +
                                          [f"127.0.0.1:{port}"]))
        s._net_eff = (s.policy, eff)
        return eff

    def _uninstall(self, s: Session) -> None:
        try:
            self.net.remove(s.cgid)
        except Exception as e:  # keep tearing down
            log.warning("net cleanup for %s: %s", s.id, e)
        if s.enforcement.get("filesystem") == self.files.label:
            try:
                self.files.remove(s.cgid)
            except Exception as e:
                log.warning("file cleanup for %s: %s", s.id, e)
        if self.dns is not None and s.dns_port:
            self.dns.remove_session(s)

    # -- persistence: a restarted daemon picks its sessions back up ---------
    def save(self, s: Session) -> None:
        """Persist a session's state after a change made outside the table
        (the client's confinement report)."""
        self._save(s)

    def _save(self, s: Session) -> None:
        tmp = STATE_DIR / f".{s.id}.tmp"
        # the fields as they are (json copies them anyway; asdict's deep copy cost 0.35 ms)
        tmp.write_text(json.dumps({f.name: getattr(s, f.name) for f in fields(s)}))
        os.replace(tmp, STATE_DIR / f"{s.id}.json")

    def recover(self) -> list[Session]:
        """Re-adopt sessions whose cgroup survived a daemon restart."""
        live = set(cgroups.sessions_on_disk())
        out = []
        for f in sorted(STATE_DIR.glob("*.json")):
            try:
                state = json.loads(f.read_text())
                # Saved before sessions ended with their leader: they keep the
                # lifetime they were started with.
                state.setdefault("keep_running", True)
                s = Session(**state)
            except (ValueError, TypeError, AttributeError) as e:
                log.warning("ignoring unreadable session state %s: %s", f, e)
                continue
            if s.id not in live or cgroups.cgroup_id(Path(s.cgroup)) != s.cgid:
                f.unlink(missing_ok=True)
                continue
            s.enforcement.pop("filesystem", None) if self.filelsm is None else None
            # A daemon that died between freezing a session and killing it.
            cgroups.freeze(Path(s.cgroup), frozen=False)
            self._pin_leader(s)
            self.by_id[s.id] = s
            self.by_cgid[s.cgid] = s
            if s.policy.get("git") is not None and self.git is not None:
                try:        # the same port and secret: the session's git config names them
                    s.git = self.git.open(s, saved=s.git)
                except Exception as e:
                    log.warning("session %s: git gateway not reopened: %s", s.id, e)
                    s.git = {}
            self._install(s)
            if self.namewatch is not None:
                self.namewatch.watch(s)     # the names `corral run` left to it
            out.append(s)
        # Session cgroups with no state cannot be re-adopted safely: end them.
        for sid in live - set(self.by_id):
            path = cgroups.session_path(sid)
            log.warning("session cgroup %s has no saved state; killing its processes", path)
            cgroups.kill(path)
            try:
                cgroups.remove(path)
            except cgroups.CgroupError as e:
                log.warning("%s", e)
        return out

    def for_pid(self, pid: int) -> Session | None:
        """By pid: only for records the kernel already tied to a pid (audit)."""
        sid = cgroups.session_of(pid)
        return self.by_id.get(sid) if sid else None

    def for_cgroup(self, cgid: int | None, path: str | None) -> Session | None:
        """The live session a cgroup is; with the kernel's cgroup id they must agree
        (anything else, e.g. a cgroup nested in a session, gets no session: no authority)."""
        sid = cgroups.session_of_path(path)
        s = self.by_id.get(sid) if sid else None
        if s is not None and cgid is not None and s.cgid != cgid:
            return None
        return s
