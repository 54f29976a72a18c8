"""Protected names that do not exist yet, watched instead of frozen: which
names to watch for a session, the fanotify marks, the reports, who made an
entry, and what is done with it (quarantine.py, nsmount.py).

The mandatory deny_write entries name agent and editor configuration that a
fresh project usually does not have yet (./.mcp.json, ./.vscode, ./.idea,
./.gitmodules, ./.claude/settings*.json). Landlock cannot guard a path that
does not exist except by refusing every new entry in its nearest existing
parent, which freezes the project root. Where Landlock is the file backend,
the daemon watches those names instead and `corral run` leaves them out of
what Landlock has to complement (unless --strict-protect). The same holds for
deny_read paths that do not exist yet inside an allow_write tree (~/.aws,
~/.netrc when the project is $HOME): Landlock's read complement would make
every file the session creates in their parent unreadable. Those secrets
(secretwatch.py says which, and what is done differently) are watched by the
same marks and walks; made outside they are hidden in the session's view
instead of made read-only; made by the session, quarantined on sight (never
content-checked). A watched name is left out of both Landlock lists.

* fanotify (kernel/fanotify.py; FAN_REPORT_DFID_NAME: directory file handle
  + name) reports FAN_CREATE and FAN_MOVED_TO in every existing directory on
  the way from the outermost allow_write root down to each protected name. A
  directory of that chain that appears later (.claude for
  .claude/settings.json) is marked when its creation is reported, then walked
  at once: what was made in it before the mark existed is found there.
* Every report is only a reason to walk the protected path again, one
  directory descriptor at a time (O_NOFOLLOW: the session may have replaced
  any component with a symlink). The creator is the reported pid, looked up
  in /proc and, once it has exited, in a map filled by a BPF program on the
  sched_process_exit tracepoint (kernel/exits.py, bpf/exits.c: pid -> cgroup
  id, comm): `sh -c 'echo > .mcp.json'` has exited long before its event is
  read.
* Made by a process of a session that protects it: **quarantined**
  (quarantine.py), i.e. renamed (renameat2 RENAME_NOREPLACE from the parent's
  descriptor: a symlink is moved, never followed) into
  LOG_DIR/quarantine/<session> (root, 0700); on another filesystem copied
  (regular file up to 1 MiB, O_NOFOLLOW; a directory tree bounded, symlinks
  recreated, never followed) and removed. Logged as kind "file", op
  "quarantine", verdict "deny".
* Content-checked instead (CHECKED: ./.git/config, which `git init` in a
  fresh project makes, then rewrites at each `git config`): made by a
  process of the session, or by an unknown one, it is read (from the
  parent's descriptor, O_NOFOLLOW: a regular file with one name, at most
  64 KiB) and its keys checked (gitconfig_check.py: a strict parser and
  git's own must agree, and every key be inert: no core.fsmonitor,
  hooksPath, sshCommand, pager, editor, alias.*, include*, filter/diff
  drivers, url.*.insteadOf, remote URLs with ext::/fd::/helper transports,
  ...). Harmless: left in place (op "checked", verdict "allow", with the
  count of keys); anything else, a symlink, a hard link, unreadable, too
  big or not parsed with certainty: quarantined, the record naming the
  key. Checked again at every creation or rename onto it, every write or
  close after writing in its directory (FAN_MODIFY, FAN_CLOSE_WRITE on the
  directory's children; once for the reports read together; rewritten more
  often than CHECK_RATE allows: quarantined), when the descriptor
  the daemon holds shows a change no report named (step(): a write
  through a second name or a mapping; a second name itself), and once more
  when the session ends. A regular file named .git where the chain needs
  the directory (a "gitdir:" pointer to a configuration elsewhere) is
  treated like a symlink on the way: quarantined. With every protected
  .git/config, in a .git that existed as well, two names git reads
  configuration through are watched (GIT_CONFIG_SIBLINGS): .git/commondir
  (quarantined on sight) and .git/config.worktree (content-checked).
* Made outside every session that protects it (the developer's editor): left
  in place and made read-only inside each protecting session's mount
  namespace (nsmount.py), on the mount its path crosses there (the only one
  the session's cwd and descriptors can lead through: nothing is stacked
  over a directory it may already hold; so the directories above it are not
  pinned, and the session can still rename them, which moves the name away
  and a new one it makes there is quarantined). Logged as op
  "protected_readonly".
* Creator unknown (an entry found by a walk rather than by its own report:
  made in a new directory before the mark reached it, while the daemon was
  down, or lost to a queue overflow; or made by a process that has exited
  and that the exit tracker does not know, or has not loaded): quarantined,
  fail closed.

Fail closed: a name is "covered" (covers()) only if every existing directory
of its chain is marked; the client takes only covered names out of Landlock's
list, so a session whose names could not be watched keeps Landlock's freeze.

What remains:
* Between a creation in the session and its quarantine (the reader's
  latency, ~1 ms here) the entry is in place; a process of the session that
  opened it keeps its descriptor (its writes land in the quarantined copy).
* An entry made in a new directory of the chain before the mark reached it
  (~1 ms) has no report of its own: quarantined, even if the developer made
  it (their file is then in the quarantine, with a record saying so).
* A secret (deny_read) made outside can be read by the session until its
  mask is in place (the same helper, tens of ms); see secretwatch.py.
* A name made outside can be written by the session until its read-only
  mount is in place (the helper process: ~20 ms on an idle host, more under
  load); a descriptor opened, or a hard link made, in that window stays
  writable (a link count above one is logged).
* The mount lands on the mount the path crosses in the session's view; a
  descriptor the session held on an older mount stacked at the same place
  would not see it (`corral run` leaves none: it changes directory after
  building the view and closes inherited descriptors).
* Nothing is watched while corrald is down; what appeared meanwhile is
  quarantined when it is back, unless it is a mount point of the session's
  view already (a content-checked name is checked then, not quarantined).
* A content-checked name is in place, as written, from a write until its
  check (~1 ms after the report, plus git's parse, ~5 ms): git run outside
  the session in that window reads it, and content written then changed
  back before the check (reports read together are one check) is never
  seen. Checks take the daemon's loop: a session rewriting .git/config in a
  loop costs up to CHECK_RATE checks a second (then it is quarantined).
* Writes no report names are seen through the held descriptor's size and
  times, at most SESSION_POLL later; a shared mapping written again in a
  page already dirty changes neither: seen by the check at session end.
* The allowlist (gitconfig_check.INERT) is a judgment. .git/commondir and
  .git/config.worktree (GIT_CONFIG_SIBLINGS) are watched only where they do
  not exist when the session starts: one that exists (made by the
  developer) is not read-only in the session, which can rewrite it in
  place; so is a .git "gitdir:" file that existed before the session (a
  linked worktree's). Other files git reads in .git (info/attributes,
  objects/info/alternates, ...) name no program. Making the existing ones
  read-only needs them on the mandatory list (policy/files.py).
"""
from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import os
import stat
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from corral.kernel import cgroups
from corral.kernel import fanotify as fan
from corral.kernel.exits import ExitTracker
from corral.kernel.mountinfo import under
from corral.server import gitconfig_check, nsmount, quarantine, secretwatch

log = logging.getLogger("corral.namewatch")

MASK = fan.FAN_CREATE | fan.FAN_MOVED_TO | fan.FAN_ONDIR
# The directory holding a content-checked name: writes to its children too.
CHILD_MASK = fan.FAN_MODIFY | fan.FAN_CLOSE_WRITE | fan.FAN_EVENT_ON_CHILD
WRITE_EVENTS = fan.FAN_MODIFY | fan.FAN_CLOSE_WRITE
# Checks of one content-checked name (a token bucket): a name rewritten more
# often is quarantined (fail closed), not checked later: a deferred check
# would let content that changes back in time stay unseen.
CHECK_RATE, CHECK_BURST = 200.0, 1000     # a check: ~2 ms (git config runs)
CHECK_TRIES = 8                          # a name replaced while it is read: read again
# Protected names whose content is checked, not quarantined on sight, when the
# session makes them: (the mandatory protection they come from) -> the check.
CHECKED = {"mandatory git-config": gitconfig_check.check}
# git reads configuration through these as well: <gitdir>/commondir (the
# common directory, whose config it then reads) and <gitdir>/config.worktree
# (with extensions.worktreeConfig). Watched with every protected .git/config
# (where they do not exist yet), in a .git that existed too: the first
# quarantined on sight, the second content-checked.
GIT_CONFIG_SIBLINGS = {"commondir": None, "config.worktree": gitconfig_check.check}
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
RECORDS_PER_SECOND = 20                  # per session; beyond, counted in one summary


# -- who made it: /proc, then the exit map ------------------------------------------
def cgroup_path_of_id(cgid: int) -> str | None:
    """A cgroup2 id -> its path relative to the mount ('/a/b'), while it exists."""
    try:
        mfd = os.open(cgroups.cgroup2_mount(), _DIR_FLAGS)
    except OSError:
        return None
    try:
        try:
            fd = fan.open_by_handle(mfd, fan.FILEID_KERNFS, struct.pack("<Q", cgid),
                                    os.O_PATH | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            p = os.readlink(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
    finally:
        os.close(mfd)
    base = str(cgroups.cgroup2_mount())
    if not under(p, base):
        return None
    rel = os.path.relpath(p, base)
    return "/" if rel == "." else "/" + rel


@dataclass
class Creator:
    kind: str                    # "session" (a live session), "outside", "unknown"
    pid: int | None = None
    session: str | None = None
    comm: str | None = None
    why: str = ""

    def text(self) -> str:
        who = f"pid {self.pid}" + (f" ({self.comm})" if self.comm else "")
        if self.kind == "session":
            return f"{who} of session {self.session}"
        return who if self.kind == "outside" else (self.why or "creator unknown")


# -- state ---------------------------------------------------------------------------
@dataclass
class Target:
    path: str                    # the protected path
    top: str                     # the outermost allow_write root holding it
    parts: list[str]             # components below top
    marks: dict = field(default_factory=dict)       # chain level -> mark key
    covered: bool = False        # every existing directory of the chain marked (last walk)
    checker: object = None       # content check (CHECKED) instead of quarantine on sight
    hide: bool = False           # a secret (deny_read, secretwatch.py): hidden when made outside

    @property
    def chain(self) -> list[str]:
        """top, top/p1, top/p1/p2, ..., path."""
        out = [self.top]
        for p in self.parts:
            out.append(os.path.join(out[-1], p))
        return out


@dataclass
class Mark:
    fd: int
    path: str
    ino: int
    dev: int
    refs: set = field(default_factory=set)           # (session id, target path, level)
    mask: int = MASK


@dataclass
class Checked:
    fd: int                      # held: its changes are seen even through another name
    ident: tuple                 # (ino, dev)
    sig: tuple                   # (size, mtime, ctime, links) when it was checked
    digest: bytes


@dataclass
class Watched:
    session: object
    targets: dict = field(default_factory=dict)      # path -> Target
    handled: dict = field(default_factory=dict)      # path -> (ino, dev) left in place, read-only
    pending: list = field(default_factory=list)      # read-only binds waiting for the mount view
    mounted: set = field(default_factory=set)        # recovered: mount points in its view
    live: list = field(default_factory=list)         # [fd, copy path, until, (size, mtime)]
    checked: dict = field(default_factory=dict)      # path -> Checked: content found harmless
    budget: dict = field(default_factory=dict)       # path -> [tokens, time] (CHECK_RATE)
    quarantined: int = 0
    records: list = field(default_factory=lambda: [0.0, 0, 0])   # window start, count, suppressed


class NameWatch:
    def __init__(self, sessions, audit, quarantine_root: Path | None = None,
                 enabled: bool = True):
        from corral import config
        self.sessions = sessions           # SessionTable
        self.audit = audit                 # callable(record, must=False)
        self.qroot = Path(quarantine_root or config.LOG_DIR / "quarantine")
        self.by_session: dict[str, Watched] = {}
        self.marks: dict[tuple, Mark] = {}
        self.fd = -1
        self.why = ""
        self.exits = None
        self._pool = None
        self._closing = False
        self._due: dict[tuple, int] = {}     # (session, path) -> pid of its last writer
        if not enabled:
            # BPF LSM decides by name in the kernel: nothing to watch, and no
            # exit tracker to compile (100+ s under TCG on the VM tier).
            self.why = "not needed: the BPF LSM backend guards names that do not exist"
            return
        try:
            self.fd = fan.init(fan.FAN_CLOEXEC | fan.FAN_NONBLOCK | fan.FAN_REPORT_DIR_FID
                               | fan.FAN_REPORT_NAME, os.O_RDONLY)
        except OSError as e:
            self.why = str(e)
            log.warning("protected names cannot be watched (%s): Landlock keeps refusing new "
                        "entries where they would appear", e)
            return
        try:
            self.exits = ExitTracker()
        except Exception as e:          # creators that exited count as unknown: quarantined
            self.why = f"exit tracker: {e}"
            log.warning("no exit tracker (%s): entries made by processes that exited before "
                        "their report was read are quarantined whoever made them", e)

    # -- the daemon's side ------------------------------------------------------
    def status(self) -> dict:
        return {"active": self.fd >= 0, "exit_tracker": self.exits is not None,
                **({"why": self.why} if self.why else {})}

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        self._closing = True    # from here, helpers run inline
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self.fd >= 0:
            self.read()         # what was reported before the daemon stops
        for m in self.marks.values():
            os.close(m.fd)
        self.marks.clear()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.exits is not None:
            self.exits.close()
            self.exits = None

    def covers(self, s) -> list[str]:
        """The deny_write paths of session `s` this watcher really covers (every
        existing directory of their chain marked): only those may be left out
        of Landlock's list."""
        w = self.by_session.get(s.id)
        if w is None:
            return []
        return sorted(p for p, t in w.targets.items() if t.covered)

    def watch(self, s) -> list[str]:
        """Start watching session `s` (admitted, or recovered after a restart);
        returns covers(s). Never raises: whatever cannot be watched stays with
        Landlock."""
        try:
            return self._watch(s)
        except Exception:
            log.exception("session %s: protected names not watched", s.id)
            self.forget(s)
            return []

    def forget(self, s) -> None:
        if s.id not in self.by_session:
            return
        if self.fd >= 0:
            self.read()         # what its last processes made is still its to quarantine
        w = self.by_session.get(s.id)
        if w is not None:
            # Its last word on a content-checked name: checked once more, held
            # descriptors or not (a write through a hard link or a mapping).
            for t in [t for t in w.targets.values() if t.checker]:
                self._check(w, t, None, mode="final", why="checked again as the session ended")
            for c in w.checked.values():
                os.close(c.fd)
            w.checked.clear()
        w = self.by_session.pop(s.id, None)
        if w is None:
            return
        quarantine.follow(w.live, final=True)
        for t in w.targets.values():
            for level in list(t.marks):
                self._release(w, t, level)

    def read(self) -> None:
        """The fanotify descriptor is readable (the daemon's loop)."""
        try:
            self._drain()
            self._flush()
        except Exception as e:
            log.exception("protected names: %s", e)

    def step(self) -> None:
        """Housekeeping: read-only binds that waited for a session's mount view."""
        if any(w.pending for w in self.by_session.values()):
            self._flush()
        now = time.monotonic()
        for w in list(self.by_session.values()):
            for path, c in list(w.checked.items()):
                # Writes no report names (through another link, a shared
                # mapping): the held descriptor shows them.
                try:
                    st = os.fstat(c.fd)
                    sig = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_nlink)
                except OSError:
                    sig = None
                if sig != c.sig:
                    self._due.setdefault((w.session.id, path), 0)
            if w.live:
                quarantine.follow(w.live)
        if self._due:
            self._run_due()
        for w in list(self.by_session.values()):
            start, _, suppressed = w.records
            if suppressed and now - start >= 1:
                self.audit({"kind": "rate", "op": "suppressed", "verdict": "info",
                            "session": w.session.id, "target": f"{suppressed} event(s)",
                            "count": suppressed, "rule": "protected names: per-session limit"},
                           must=False)
                w.records[:] = [now, 0, 0]

    # -- setting up --------------------------------------------------------------
    def candidates(self, fs: dict, extra=()) -> list[tuple[str, str]]:
        """(path, top) of the deny_write paths that do not exist and lie in an
        allow_write tree (and not under an existing denied path); then those of
        `extra` (paths not in deny_write), judged as if they were added to it.
        One pass for both: the deny_write list is long (every session has the
        same ~80 code paths), and walking it twice was most of a session's setup."""
        allow = fs.get("allow_write") or []
        deny = fs.get("deny_write") or []
        listed = set(deny)
        more = [p for p in dict.fromkeys(extra) if p not in listed]
        existing = {d.rstrip("/") or "/" for d in deny if os.path.lexists(d)}   # one stat each
        existing_more = existing | {d.rstrip("/") or "/" for d in more if os.path.lexists(d)}
        out = []
        for group, ex in ((deny, existing), (more, existing_more)):
            for p in group:
                if p.rstrip("/") in ex:
                    continue
                roots = [a for a in allow if under(p, a) and p != a]
                if not roots:
                    continue        # not writable at all: Landlock refuses it, no freeze
                if any(q in ex for q in _ancestors(p)):
                    continue        # inside a denied tree that exists (read-only mount)
                out.append((p, min(roots, key=len)))
        return out

    def _watch(self, s) -> list[str]:
        if self.fd < 0 or s.id in self.by_session:
            return self.covers(s)
        if s.enforcement.get("filesystem") == "bpf-lsm":
            return []           # the BPF LSM decides by path, live: nothing to freeze
        fs = s.policy.get("filesystem")
        if not fs:
            return []
        recovered = s.enforcement.get("watched_names")
        w = Watched(session=s)
        self.by_session[s.id] = w
        siblings = _git_siblings(fs)
        deny_read = set(fs.get("deny_read") or [])
        if recovered is not None:
            allow = fs.get("allow_write") or []
            names = []
            for p in recovered:
                roots = [a for a in allow if under(p, a) and p != a]
                if roots and (p in (fs.get("deny_write") or []) or p in siblings
                              or p in deny_read):
                    names.append((p, min(roots, key=len)))
            secrets = {p for p, _ in names if p in deny_read}
        else:
            names = self.candidates(fs, sorted(siblings))
            hidden = secretwatch.candidates(fs)
            secrets = {p for p, _ in hidden}
            # The client drops a watched name from deny_read too: one that is
            # also denied reading but cannot be hidden stays with Landlock.
            names = [c for c in names if c[0] not in deny_read or c[0] in secrets]
            have = {p for p, _ in names}
            names += [c for c in hidden if c[0] not in have]
        for p, top in names:
            rel = os.path.relpath(p, top)
            hide = p in secrets     # never content-checked: read by nobody in the session
            w.targets[p] = Target(path=p, top=top, parts=rel.split(os.sep), hide=hide,
                                  checker=None if hide else siblings[p] if p in siblings
                                  else CHECKED.get(_mandatory(p)))
        if recovered is not None:
            pidfd = nsmount.session_pidfd(self.sessions, s)
            if pidfd >= 0:
                pid = nsmount.pid_of(pidfd)
                w.mounted = (nsmount.mountpoints(pid) or set()) if pid else set()
                os.close(pidfd)
        for t in list(w.targets.values()):
            # A new session: nothing exists yet (candidates), so this only marks
            # the chain. Recovered: whatever appeared while no daemon watched.
            self._check(w, t, None, mode="recover" if recovered is not None else "initial")
        if recovered is not None:
            lost = sorted(set(recovered) - set(self.covers(s)))
            if lost:
                log.error("session %s: %s no longer watched although `corral run` left them "
                          "to the watcher", s.id, ", ".join(lost))
        self._flush()
        return self.covers(s)

    # -- marks -------------------------------------------------------------------
    def _hold(self, w: Watched, t: Target, level: int, fd: int) -> bool:
        """Target `t` needs the directory open at `fd` (chain level `level`)
        marked. Returns True if a new fanotify mark was added (then the caller
        reads what it reported meanwhile before it trusts a walk)."""
        try:
            key = fan.handle_key(fd)
        except OSError as e:
            log.warning("%s: %s", t.chain[level], e)
            return False
        want = MASK | (CHILD_MASK if t.checker and level == len(t.parts) - 1 else 0)
        if t.marks.get(level) == key:
            return False        # held with `want` already (it depends on t and level only)
        if level in t.marks:
            self._release(w, t, level)
        m = self.marks.get(key)
        fresh = m is None
        if m is not None and m.mask & want != want:
            try:        # another target's directory too: add the bits this one needs
                fan.mark(self.fd, fan.FAN_MARK_ADD | fan.FAN_MARK_ONLYDIR, want, m.fd)
                m.mask |= want
                fresh = True
            except OSError as e:
                log.warning("cannot watch writes in %s: %s", t.chain[level], e)
                return False
        if m is None:
            try:
                fan.mark(self.fd, fan.FAN_MARK_ADD | fan.FAN_MARK_ONLYDIR, want, fd)
            except OSError as e:
                log.warning("cannot watch %s: %s", t.chain[level], e)
                if level > 0:   # was covered: the name now depends on this directory
                    self._record(w, {"kind": "file", "op": "protected_unwatched",
                                     "verdict": "warn", "target": t.path,
                                     "rule": f"cannot watch {t.chain[level]}: {e.strerror}"})
                return False
            st = os.fstat(fd)
            m = Mark(fd=os.dup(fd), path=t.chain[level], ino=st.st_ino, dev=st.st_dev, mask=want)
            self.marks[key] = m
        m.refs.add((w.session.id, t.path, level))
        t.marks[level] = key
        return fresh

    def _release(self, w: Watched, t: Target, level: int) -> None:
        key = t.marks.pop(level, None)
        m = self.marks.get(key) if key else None
        if m is None:
            return
        m.refs.discard((w.session.id, t.path, level))
        if not m.refs:
            try:
                fan.mark(self.fd, fan.FAN_MARK_REMOVE | fan.FAN_MARK_ONLYDIR, m.mask, m.fd)
            except OSError:
                pass        # the kernel dropped it already: its directory was removed
            os.close(m.fd)
            del self.marks[key]

    # -- events ------------------------------------------------------------------
    def _drain(self) -> None:
        """Read and handle every queued report (also called after a new mark)."""
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return
            if not data:
                return
            for mask, pid, key, name in fan.parse_events(data):
                self._event(mask, pid, key, name)
            if self._due:
                self._run_due()

    def _event(self, mask: int, pid: int, key, name) -> None:
        if mask & fan.FAN_Q_OVERFLOW:
            log.warning("fanotify queue overflow: walking every protected name again")
            for w in list(self.by_session.values()):
                for t in list(w.targets.values()):
                    self._check(w, t, None, mode="rescan", why="reports lost to a queue overflow")
            return
        if pid == os.getpid() or key is None:
            return
        m = self.marks.get(key)
        if m is None:
            return
        write = not mask & (fan.FAN_CREATE | fan.FAN_MOVED_TO)
        hits = []
        for sid, path, level in list(m.refs):
            w = self.by_session.get(sid)
            t = w.targets.get(path) if w else None
            if t is None or level + 1 >= len(t.chain) or t.parts[level] != name:
                continue
            if write:
                # Written in place (or closed after writing): checked again,
                # once for the reports read together.
                if mask & WRITE_EVENTS and t.checker and level + 1 == len(t.parts):
                    self._due[(sid, path)] = pid
                continue
            hits.append((w, t, level + 1))
        if not hits:
            return
        who = self.creator(pid)
        for w, t, level in hits:
            self._check(w, t, (who, level, (m.ino, m.dev)))

    def creator(self, pid: int) -> Creator:
        if pid <= 0:
            return Creator("unknown", why="no pid in the report")
        try:
            cg = cgroups.cgroup_of(pid)
        except OSError:
            cg = None
        comm = None
        if cg is not None:
            try:
                with open(f"/proc/{pid}/comm") as fh:
                    comm = fh.read().strip()
            except OSError:
                pass
        elif self.exits is not None:
            hit = self.exits.lookup(pid)
            if hit is not None:
                cgid, comm = hit
                s = self.sessions.by_cgid.get(cgid)
                cg = ("/" + str(Path(s.cgroup).relative_to(cgroups.cgroup2_mount()))) if s \
                    else cgroup_path_of_id(cgid)
                if cg is None:
                    return Creator("unknown", pid, comm=comm,
                                   why=f"pid {pid} ({comm}) exited, its cgroup is gone")
        if cg is None:
            return Creator("unknown", pid, why=f"pid {pid} exited before it was placed")
        if not cgroups.in_tree(cg):
            return Creator("outside", pid, comm=comm)
        sid = cgroups.session_of_path(cg)
        if sid in self.sessions.by_id:
            return Creator("session", pid, sid, comm)
        return Creator("unknown", pid, comm=comm, why=f"pid {pid} of corral cgroup {cg} "
                                                       "(no live session)")

    # -- walking a protected path -----------------------------------------------
    def _check(self, w: Watched, t: Target, ev, mode: str = "event", why: str = "",
               writer: Creator | None = None) -> None:
        """Walk `t` from its top, marking each directory of its chain, and act on
        the protected entry (or a symlink on the way) if one is there. `ev`:
        (creator, level of the entry the report named, (ino, dev) of its
        directory). `mode`: "event", "initial" (a new session: what exists is
        the mount view's, made read-only by `corral run`), "recover" (after a
        restart), "rescan" (after a queue overflow), "write" (a content-checked
        name written in place, by `writer`), "final" (its session ended)."""
        try:
            fd = os.open(t.top, _DIR_FLAGS)
        except OSError as e:
            log.warning("session %s: %s: %s", w.session.id, t.top, e)
            return
        walked = [0]
        try:
            if self._hold(w, t, 0, fd):
                self._drain()
            for i in range(1, len(t.chain)):
                if w.session.id not in self.by_session or t.path not in w.targets:
                    return
                name = t.parts[i - 1]
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except (FileNotFoundError, NotADirectoryError):
                    self._release_below(w, t, i)    # the rest of the chain is gone
                    self._unchecked(w, t.path)
                    return
                final = i == len(t.chain) - 1
                # A regular file named .git is a "gitdir:" pointer: git outside
                # would read the configuration it names. Like a symlink here.
                gitfile = t.checker is not None and name == ".git" and stat.S_ISREG(st.st_mode)
                if final or stat.S_ISLNK(st.st_mode) or gitfile:
                    self._release_below(w, t, i)
                    if not final:
                        self._unchecked(w, t.path)
                    if mode == "initial":
                        w.handled[t.chain[i]] = fan.entry_key(fd, name, st)
                    else:
                        who = writer or self._attribute(ev, i, fd, mode, why)
                        self._found(w, t, i, fd, name, st, who, mode)
                    return
                if not stat.S_ISDIR(st.st_mode):
                    self._release_below(w, t, i)
                    self._unchecked(w, t.path)
                    return      # a file where a directory would be: nothing below it
                nfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = nfd
                walked.append(i)
                if self._hold(w, t, i, fd):
                    self._drain()       # what the new mark reported before we walk on
        except OSError as e:
            log.warning("session %s: walking %s: %s", w.session.id, t.path, e)
        finally:
            os.close(fd)
            t.covered = all(level in t.marks for level in walked)

    def _release_below(self, w: Watched, t: Target, i: int) -> None:
        for level in [lv for lv in t.marks if lv >= i]:
            self._release(w, t, level)

    @staticmethod
    def _attribute(ev, i: int, parent_fd: int, mode: str, why: str) -> Creator:
        if mode == "recover":
            return Creator("unknown", why="appeared while corrald was not watching")
        if ev is None:
            return Creator("unknown", why=why or "found by a walk, not reported")
        who, level, dir_key = ev
        if level == i:
            st = os.fstat(parent_fd)
            if (st.st_ino, st.st_dev) == dir_key:
                return who
            return Creator("unknown", why="reported in a directory that has moved since")
        if level > i:
            return Creator("unknown", why="the path changed since the report")
        if who.kind == "session":
            return Creator("session", who.pid, who.session, who.comm)
        return Creator("unknown", why=f"made in a new directory before the watch reached it "
                                      f"(the directory: {who.text()})")

    def _protecting(self, path: str) -> list[Watched]:
        """Sessions one of whose protected paths is `path` or lies beneath it."""
        return [w for w in self.by_session.values()
                if any(under(p, path) for p in w.targets)]

    @staticmethod
    def _hides(w: Watched, path: str) -> bool:
        """`path` is (or leads to) a secret of session `w`: hidden, not read-only."""
        return any(t.hide and under(p, path) for p, t in w.targets.items())

    @staticmethod
    def _what(w: Watched, path: str) -> str:
        """Where the protection of `path` (or of what it leads to) comes from."""
        t = w.targets.get(path)
        if t is not None:
            return secretwatch.rule(path) if t.hide else _mandatory(path)
        below = [p for p, t in w.targets.items() if t.hide and under(p, path)]
        if below:
            return f"{secretwatch.rule(below[0])}: the directory on the way to {below[0]}"
        return _mandatory(path)

    def _found(self, w: Watched, t: Target, i: int, parent_fd: int, name: str, st,
               who: Creator, mode: str) -> None:
        path = t.chain[i]
        key = fan.entry_key(parent_fd, name, st)
        if w.handled.get(path) == key:
            return
        if mode == "recover":
            rep = w.session.enforcement.get("client") or {}
            dropped = rep.get("watched_names")
            if path in w.mounted or (dropped is not None and path not in dropped):
                w.handled[path] = key       # read-only in its view already, or Landlock's
                return
        protecting = self._protecting(path)
        if who.kind == "session" and who.session not in {x.session.id for x in protecting}:
            who = Creator("outside", who.pid, comm=who.comm)    # a session that may make it
        checker = t.checker if i == len(t.chain) - 1 else None
        if checker is not None and who.kind == "outside" and mode in ("write", "final"):
            who = Creator("unknown", who.pid, comm=who.comm,
                          why=f"written by {who.text()} after the session made it")
        if who.kind == "outside":
            try:
                follow = os.stat(name, dir_fd=parent_fd)
            except OSError:
                follow = None
            for x in protecting:
                x.handled[path] = key
                hide = self._hides(x, path)
                if follow is None:
                    self._record(x, {"kind": "file", "op": "protected_unwatched",
                                     "verdict": "warn", "target": path, "pid": who.pid,
                                     "comm": who.comm,
                                     "rule": "protected name created outside the session is a "
                                             "symlink to nothing: not made read-only"})
                    continue
                x.pending.append({"path": path, "expect": [follow.st_ino, follow.st_dev],
                                  "key": key, "creator": who, "hide": hide,
                                  "rule": f"secret name created outside the session "
                                          f"({self._what(x, path)}): hidden in its view"
                                  if hide else f"protected name created outside the session "
                                               f"({_mandatory(path)})"})
            return
        owner = self.by_session.get(who.session) if who.kind == "session" else w
        if checker is not None:
            self._content(owner or w, t, parent_fd, name, st, path, who, checker)
            return
        self._quarantine(owner or w, parent_fd, name, st, path, who)

    # -- content-checked names ------------------------------------------------------
    def _content(self, w: Watched, t: Target, parent_fd: int, name: str, st, path: str,
                 who: Creator, checker, depth: int = 0) -> None:
        """Read the entry (a regular file with one name, bounded, never through
        a symlink) and check what it says; harmless: left in place, its
        descriptor held (step() sees writes no report names); otherwise, or if
        it cannot be read: quarantined. Fail closed."""
        now = time.monotonic()
        tokens, then = w.budget.get(path, (CHECK_BURST, now))
        tokens = min(CHECK_BURST, tokens + (now - then) * CHECK_RATE)
        w.budget[path] = (max(0.0, tokens - 1), now)
        res = {"ok": False, "why": "replaced again and again while it was checked"}
        for _ in range(CHECK_TRIES):
            if tokens < 1:
                res = {"ok": False, "why": f"rewritten more often than it can be checked "
                                           f"(over {CHECK_RATE:.0f}/s)"}
                break
            res, fd, sig, digest = _read_and_check(parent_fd, name, st, checker)
            if not res.get("moved"):
                break
            # Replaced between the look and the read (git renames config.lock
            # onto it): check what is there now.
            try:
                st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
            except FileNotFoundError:
                self._unchecked(w, path)
                return
        if not res["ok"]:
            self._unchecked(w, path)
            try:
                now_st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
            except FileNotFoundError:
                return
            if (now_st.st_ino, now_st.st_dev) != (st.st_ino, st.st_dev) and not res.get("moved") \
                    and tokens >= 1 and depth < CHECK_TRIES:
                # What was refused is gone; its replacement has its own report
                # (a rename onto the name), and is checked now all the same.
                return self._content(w, t, parent_fd, name, now_st, path, who, checker, depth + 1)
            self._quarantine(w, parent_fd, name, now_st, path, who, checked=res)
            return
        prev = w.checked.pop(path, None)
        if prev is not None:
            os.close(prev.fd)
        ident = (sig[4], sig[5])
        w.checked[path] = Checked(fd=fd, ident=ident, sig=sig[:4], digest=digest)
        if prev is None or prev.digest != digest or prev.ident != ident:
            self._record(w, {"kind": "file", "op": "checked", "verdict": "allow", "target": path,
                             "session": w.session.id, "pid": who.pid, "comm": who.comm,
                             "creator": who.kind, "keys": res.get("keys"),
                             "rule": f"protected name written in the session, content checked "
                                     f"({_mandatory(path)}): only inert keys"})

    def _unchecked(self, w: Watched, path: str) -> None:
        c = w.checked.pop(path, None)
        if c is not None:
            os.close(c.fd)

    def _run_due(self) -> None:
        """Check again the content-checked names written since their last check
        (each once for all the reports read together)."""
        todo, self._due = self._due, {}
        for (sid, path), pid in todo.items():
            w = self.by_session.get(sid)
            t = w.targets.get(path) if w else None
            if t is None:
                continue
            who = self.creator(pid) if pid else Creator("unknown", why="changed, no report "
                                                                        "(another name, a mapping)")
            self._check(w, t, None, mode="write", writer=who)

    # -- quarantine -------------------------------------------------------------
    def _quarantine(self, w: Watched, parent_fd: int, name: str, st, path: str,
                    who: Creator, checked: dict | None = None) -> None:
        sid = w.session.id
        noun = "secret name" if self._hides(w, path) else "protected name"
        what = self._what(w, path)
        rec = {"kind": "file", "op": "quarantine", "verdict": "deny", "target": path,
               "session": sid, "pid": who.pid, "comm": who.comm, "creator": who.kind,
               "rule": f"{noun} created in the session ({what})"
               if who.kind == "session" else f"{noun} created, {who.text()} ({what})",
               "file_type": _ftype(st.st_mode)}
        if checked is not None:     # content-checked: what was refused
            rec["rule"] += f", content refused: {checked['why']}"
            rec["check"] = "content"
            if checked.get("key"):
                rec["key"] = checked["key"]
        try:
            moved, live = quarantine.move_out(self.qroot, sid, parent_fd, name, st,
                                              w.quarantined >= quarantine.MAX_PER_SESSION, path)
        except FileNotFoundError:
            return              # gone already (removed by its maker, or quarantined)
        except OSError as e:
            rec.update(verdict="warn", op="quarantine_failed", moved_to=None, error=str(e))
            log.error("session %s: cannot quarantine %s: %s", sid, path, e)
        else:
            rec.update(moved)
            if live is not None:
                w.live.append(live)
            w.quarantined += 1
        self._record(w, rec)

    # -- read-only in the other sessions ----------------------------------------
    def _flush(self) -> None:
        for w in list(self.by_session.values()):
            if not w.pending:
                continue
            rep = w.session.enforcement.get("client")
            if rep is None:
                continue        # not confined yet: wait for its report (step)
            todo, w.pending = w.pending, []
            dropped = rep.get("watched_names")
            todo = [p for p in todo if dropped is None or p["path"] in dropped]
            if not todo:
                continue        # Landlock still has these names: nothing to add
            if not rep.get("mount_namespace"):
                self._bound(w, todo, ["the session has no mount view"] * len(todo))
                continue
            pidfd = nsmount.session_pidfd(self.sessions, w.session)
            if pidfd < 0:
                continue        # nobody left in the session
            ops = [nsmount.mask_op(p["path"], p["expect"]) if p.get("hide") else
                   {"src": p["path"], "dst": p["path"], "readonly": True, "recursive": True,
                    "expect": p["expect"]} for p in todo]
            self._bind(w, todo, pidfd, ops)

    def _bind(self, w: Watched, todo: list, pidfd: int, ops: list) -> None:
        """Run the helper (nsmount.py: a process start, tens of ms) on a worker
        thread when the daemon's loop runs, so quarantines do not wait for it;
        the results come back to the loop (_bound)."""
        def job():
            try:
                return nsmount.bind_many(pidfd, ops)
            finally:
                os.close(pidfd)
        try:
            loop = None if self._closing else asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None:
            self._bound(w, todo, job())
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="corral-nsmount")

        def done(fut):
            try:
                res = fut.result()
            except Exception as e:
                res = [f"helper: {e}"] * len(todo)
            self._bound(w, todo, res)
        loop.run_in_executor(self._pool, job).add_done_callback(done)

    def _bound(self, w: Watched, todo: list, res: list) -> None:
        if self.by_session.get(w.session.id) is not w:
            return              # the session ended meanwhile
        failed = False
        for item, r in zip(todo, res):
            if r in ("mismatch", "gone"):
                # Replaced or removed meanwhile: its replacement was (or will be)
                # reported on its own and handled by who made it.
                if w.handled.get(item["path"]) == item["key"]:
                    w.handled.pop(item["path"])
            elif item.get("hide"):
                links = _links(item["path"]) if r == "ok" else 1
                self._record(w, secretwatch.hidden_record(item, links, "" if r == "ok" else r))
                failed |= r != "ok"
            elif r == "ok":
                links = _links(item["path"])
                # A second name made before the mount (same mount, so link()
                # worked) stays writable: say so.
                self._readonly_record(w, item, "warn" if links > 1 else "info",
                                      f"it has {links} names: the others stay writable"
                                      if links > 1 else "")
            else:
                self._readonly_record(w, item, "warn", r)
        if failed:
            secretwatch.fail_closed(w.session)

    def _readonly_record(self, w: Watched, p: dict, verdict: str, error: str) -> None:
        who = p["creator"]
        rec = {"kind": "file", "op": "protected_readonly", "verdict": verdict,
               "target": p["path"], "session": w.session.id, "pid": who.pid, "comm": who.comm,
               "creator": who.kind, "rule": p["rule"]}
        if error:
            rec["error"] = error
        self._record(w, rec)

    def _record(self, w: Watched, rec: dict) -> None:
        now = time.monotonic()
        if now - w.records[0] >= 1:
            if w.records[2]:
                self.audit({"kind": "rate", "op": "suppressed", "verdict": "info",
                            "session": w.session.id, "target": f"{w.records[2]} event(s)",
                            "count": w.records[2], "rule": "protected names: per-session limit"},
                           must=False)
            w.records[:] = [now, 0, 0]
        w.records[1] += 1
        if w.records[1] > RECORDS_PER_SECOND:
            w.records[2] += 1
            return
        rec.setdefault("session", w.session.id)
        self.audit(rec, must=False)


# -- helpers ----------------------------------------------------------------------------
def _git_siblings(fs: dict) -> dict:
    """<gitdir>/commondir and <gitdir>/config.worktree of each protected
    <gitdir>/config (git-config) -> their check (None: quarantined on sight)."""
    out = {}
    for p in fs.get("deny_write") or []:
        if os.path.basename(p) == "config" and _mandatory(p) == "mandatory git-config":
            for name, check in GIT_CONFIG_SIBLINGS.items():
                out[os.path.join(os.path.dirname(p), name)] = check
    return out


@functools.lru_cache(maxsize=4096)
def _mandatory(path: str) -> str:
    """Which mandatory protection a protected path comes from, for the record
    (pure in the path: every session asks again for the same ones)."""
    from corral.policy.files import mandatory_of
    if os.path.basename(path) in GIT_CONFIG_SIBLINGS and \
            os.path.basename(os.path.dirname(path)) == ".git":
        return "mandatory git-config, read by git"
    if os.path.basename(path) == ".git":       # only on the way to a .git/config
        return "mandatory git-config: the .git on its way"
    name = mandatory_of(path, "deny_write")
    return f"mandatory {name}" if name else "deny_write"


def _read_and_check(parent_fd: int, name: str, st, checker):
    """-> (result, held fd or -1, (size, mtime, ctime, links, ino, dev), digest)."""
    if not stat.S_ISREG(st.st_mode):
        return {"ok": False, "why": f"a {_ftype(st.st_mode)}, not a regular file"}, -1, None, b""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY,
                     dir_fd=parent_fd)
    except OSError as e:
        return {"ok": False, "why": f"cannot be read: {e.strerror}"}, -1, None, b""
    try:
        fst = os.fstat(fd)
        sig = (fst.st_size, fst.st_mtime_ns, fst.st_ctime_ns, fst.st_nlink, fst.st_ino, fst.st_dev)
        if (fst.st_ino, fst.st_dev) != (st.st_ino, st.st_dev) or fst.st_nlink == 0:
            res = {"ok": False, "moved": True, "why": "replaced while it was read"}
        elif not stat.S_ISREG(fst.st_mode):
            res = {"ok": False, "why": "not a regular file"}
        elif fst.st_nlink != 1:
            res = {"ok": False, "why": f"{fst.st_nlink} names (a hard link)"}
        elif fst.st_size > gitconfig_check.MAX_BYTES:
            res = {"ok": False, "why": f"{fst.st_size} bytes: too big to check"}
        else:
            data = os.pread(fd, gitconfig_check.MAX_BYTES + 1, 0)
            res = checker(data)
            digest = hashlib.sha256(data).digest()
            if res["ok"]:
                return res, fd, sig, digest
    except OSError as e:
        res = {"ok": False, "why": f"cannot be read: {e.strerror}"}
    os.close(fd)
    return res, -1, None, b""


def _links(path: str) -> int:
    try:
        st = os.stat(path)
    except OSError:
        return 1
    return 1 if stat.S_ISDIR(st.st_mode) else st.st_nlink


def _ftype(mode: int) -> str:
    for test, name in ((stat.S_ISREG, "file"), (stat.S_ISDIR, "directory"),
                       (stat.S_ISLNK, "symlink"), (stat.S_ISFIFO, "fifo"),
                       (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "other"


def _ancestors(p: str):
    """The directories above an absolute path, nearest first."""
    q = p.rstrip("/")
    while True:
        up = os.path.dirname(q)
        if up == q:
            return
        yield up
        q = up
