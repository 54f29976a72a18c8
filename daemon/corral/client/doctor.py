"""`corral doctor`: what is really enforced here, each backend probed.

Nothing is reported active unless the kernel accepted it: the network and
file backends are read from the running daemon (which loaded them), the rest
is probed on the spot."""
from __future__ import annotations

import os

from corral.kernel import probes
from corral.client.connection import Client, CorralError


def _daemon_hello() -> tuple[dict | None, str]:
    try:
        with Client(timeout=5) as c:
            hello = c.call("hello")
        return hello, "running"
    except CorralError as e:
        return None, e.message


def _bpf_lsm() -> dict:
    try:
        from corral.backends import filelsm
    except ImportError as e:
        return {"active": False, "why": f"BPF LSM backend not installed: {e}"}
    if os.geteuid() != 0:
        return {"active": False, "why": "probe needs root"}
    try:
        ok, why = filelsm.probe()
    except Exception as e:  # a probe that crashes is a "no"
        ok, why = False, f"probe failed: {e}"
    return {"active": ok, "why": why}


def report() -> dict:
    feats = probes.kernel_features()
    hello, status = _daemon_hello()
    daemon = hello.get("features", {}) if hello is not None else None
    rep: dict = {"kernel": feats["kernel"], "cgroup2": feats["cgroup2"],
                 "lsm_list": feats["lsm_list"], "daemon": status}
    pinned = ((hello or {}).get("peer") or {}).get("pinned_by")
    rep["peer_identity"] = {"active": pinned == "SO_PEERPIDFD", "pinned_by": pinned,
                            "why": "pidfd from SO_PEERPIDFD at accept" if pinned == "SO_PEERPIDFD"
                            else "pidfd_open after accept: a pid reused between connect() and "
                                 "accept() is not detected" if pinned == "pidfd_open"
                            else "daemon not running" if hello is None else "peer not pinned"}
    rep["audit_log"] = (hello or {}).get("log") or {"state": "unknown",
                                                     "error": f"daemon not running: {status}"}
    rep["exports"] = (hello or {}).get("exports") or {}
    rep["losses"] = losses(hello)
    rep["named_policies"] = (hello or {}).get("policies")
    rep["checkpoints_feature"] = (daemon or {}).get("checkpoints") if hello else None
    if daemon is None:
        rep["network"] = {"active": False, "why": f"daemon not running: {status}"}
    else:
        rep["network"] = daemon.get("network", {"active": False, "why": "daemon did not load it"})
    lsm = _bpf_lsm() if daemon is None or daemon.get("filesystem", {}).get("backend") != "bpf-lsm" \
        else {"active": True, "why": "loaded by corrald"}
    ll = feats["landlock"]
    rep["filesystem"] = {
        "bpf_lsm": lsm,
        "landlock": {"active": ll["active"], "abi": ll["abi"], "why": ll["detail"]},
        "backend": "bpf-lsm" if lsm["active"] and daemon is not None and
                   daemon.get("filesystem", {}).get("backend") == "bpf-lsm"
                   else ("landlock" if ll["active"] else "none"),
    }
    rep["seccomp"] = {"active": feats["seccomp"]["active"]}
    rep["boundary"] = boundary(rep, daemon)
    try:
        from corral.kernel import native
        native.load()
        rep["native_extension"] = {"active": True}
    except Exception as e:
        rep["native_extension"] = {"active": False, "why": str(e)}
    rep["dns"] = (daemon or {}).get("dns", {"active": False, "why": "daemon not running"})
    rep["git_gateway"] = (daemon or {}).get("git", {"active": False, "why": "daemon not running"})
    from corral.server import auditlink
    rep["erofs_audit"] = auditlink.erofs_report()   # writes the read-only mount view refuses
    rep["limits"] = [
        "network rules are IP-level: an allowed IP also reaches other sites hosted on it "
        "(shared CDN addresses)",
    ]
    if rep["filesystem"]["backend"] == "landlock":
        rep["limits"].append("file policy via Landlock: fixed at session start per process "
                             "(live updates apply to new sessions only); hard links that "
                             "existed before the session can expose a denied file")
    return rep


def losses(hello: dict | None) -> dict:
    """Every count of records lost since corrald started (server/losses.py), with
    what is counted but not yet on record: a degraded log's current episode and
    the exports' drops since their last report."""
    if hello is None:
        return {}
    out = dict(hello.get("losses") or {})
    lg = hello.get("log") or {}
    if lg.get("lost"):
        out["log_degraded (now, not yet on record)"] = lg["lost"]
    if lg.get("refused"):
        out["changes refused (log unwritable, now)"] = lg["refused"]
    for name, e in (hello.get("exports") or {}).items():
        for k in ("dropped", "failed"):
            if e.get(k):
                out[f"export {name} {k} (total)"] = e[k]
    return out


def _mount_view() -> tuple[bool, str]:
    """Whether `corral run` can build the session's mount view here."""
    if os.geteuid() == 0:
        return True, "private mount namespace (root)"
    try:
        with open("/proc/sys/kernel/unprivileged_userns_clone") as fh:
            if fh.read().strip() == "0":
                return False, "not root and unprivileged user namespaces are off"
    except OSError:
        pass
    return True, "private user+mount namespace"


def boundary(rep: dict, daemon: dict | None) -> dict:
    """Which layer covers each part of the session boundary (issue 11), from
    what was probed: never a layer the kernel did not accept."""
    lsm = rep["filesystem"]["backend"] == "bpf-lsm"
    abi = rep["filesystem"]["landlock"]["abi"] if rep["filesystem"]["landlock"]["active"] else 0
    mv_ok, mv_why = _mount_view()
    hooks = bool((daemon or {}).get("network", {}).get("unix_hooks"))
    cg = rep.get("cgroup2", "")
    from corral.config import CGROUP_NAME
    # The root cgroup has no cgroup.kill; corral's own (a child of it) does.
    kill_ok = cg.startswith("/") and os.path.exists(os.path.join(cg, CGROUP_NAME, "cgroup.kill"))

    def item(active: bool, by: str, why: str = "") -> dict:
        return {"active": active, "by": by if active else "none", "why": why}

    out = {}
    if lsm:
        out["unix_sockets"] = item(True, "bpf-lsm", "the peer socket's owner cgroup, every "
                                   "spelling and abstract names included")
    elif mv_ok:
        out["unix_sockets"] = item(True, "mount view" + (" + cgroup connect_unix" if hooks else ""),
                                   "sockets bound outside the session before it started are "
                                   "masked (EACCES, any spelling)" +
                                   ("; their exact paths are refused with EPERM and a record"
                                    if hooks else "; refusals have no records of their own "
                                    "(kernel < 6.7: no connect_unix hook)") +
                                   "; one bound outside after the session started is masked "
                                   "within 0.2 s (corrald's unix_diag poll; until then another "
                                   "spelling of its path reaches it); a session does not start "
                                   "while a foreign socket has a second name (hard link)")
    else:
        out["unix_sockets"] = item(False, "", mv_why)
    scoped = abi >= 6
    out["abstract_sockets"] = item(lsm or scoped, "bpf-lsm" if lsm else f"landlock ABI {abi} scope",
                                   "" if (lsm or scoped) else f"Landlock ABI {abi} < 6 and no BPF LSM")
    out["signals"] = item(lsm or scoped, "bpf-lsm" if lsm else f"landlock ABI {abi} scope",
                          "" if (lsm or scoped) else f"Landlock ABI {abi} < 6 and no BPF LSM")
    out["ptrace"] = item(lsm or abi > 0, "bpf-lsm" if lsm else "landlock",
                         "ptrace, /proc/<pid>/mem, environ, root of processes outside")
    if lsm:
        out["metadata"] = item(True, "bpf-lsm", "chmod, chown, utimes, xattrs, truncate by object")
    else:
        out["metadata"] = item(mv_ok, "read-only mount view",
                               "chmod, chown, utimes, xattrs, truncate (and every write) outside "
                               "allow_write: EROFS; each one a record only with corrald "
                               "--audit-erofs (see erofs audit)" if mv_ok else mv_why)
    pn = (daemon or {}).get("protected_names") or {}
    if lsm:
        out["protected_names"] = item(True, "bpf-lsm", "by name: a protected path that does not "
                                      "exist yet cannot be created, nothing else is refused")
    elif pn.get("active"):
        out["protected_names"] = item(True, "corrald fanotify watch",
                                      "a protected name that does not exist yet (.mcp.json, "
                                      ".vscode, .claude/settings.json...) made by the session is "
                                      "moved to quarantine within ~1 ms (corral log names it); "
                                      "made outside, it is made read-only in the session "
                                      "(tens of ms); a secret (deny_read: ~/.aws, ~/.netrc...) "
                                      "missing inside allow_write likewise: made by the session, "
                                      "quarantined; made outside, hidden in its view (readable "
                                      "there until then, tens of ms); --strict-protect: refused "
                                      "by Landlock, which then refuses every new entry in its "
                                      "directory (reading them, for a secret)" +
                                      ("" if pn.get("exit_tracker") else "; creators that exited "
                                       "before their event was read count as unknown: "
                                       "quarantined"))
    else:
        out["protected_names"] = item(False, "", "no fanotify watch (" + (pn.get("why") or
                                      "daemon not running") + "): Landlock refuses every new "
                                      "entry in the directory of a protected name that does "
                                      "not exist yet, and reading every new entry in the "
                                      "directory of a missing secret (deny_read)")
    out["lifecycle"] = item(kill_ok, "cgroup.kill", "what is left when the command exits is "
                            "killed (corral run --keep-running keeps it)" if kill_ok
                            else "no cgroup.kill (kernel < 5.14)")
    return out


def _mark(d: dict) -> str:
    return "active     " if d.get("active") else "UNAVAILABLE"


def _log_line(st: dict) -> str:
    if st.get("state") == "ok":
        return f"audit log   ok          {st.get('dir', '')}"
    if st.get("state") == "degraded":
        return (f"audit log   DEGRADED    {st.get('dir', '')}: {st.get('error')}; "
                f"{st.get('lost', 0)} record(s) lost, {st.get('refused', 0)} change(s) refused "
                "so far (enforcement goes on; changes wait until the log is writable)")
    return f"audit log   {st.get('state')}     {st.get('error', '')}"


def _audit_lines(rep: dict) -> list[str]:
    out = []
    cp = (rep.get("audit_log") or {}).get("checkpoints")
    off = (rep.get("checkpoints_feature") or {})
    if not cp and off.get("why"):
        out.append(f"checkpoints UNAVAILABLE {off['why']}: the log's tail is not anchored")
    if cp:
        out.append(f"checkpoints active      ed25519 key {cp.get('key_id')} ({cp.get('public_key')}): "
                   f"every {cp.get('every')} records, rotation, session end; last seq "
                   f"{cp.get('last_seq')}, {cp.get('made')} made; copies in {cp.get('file')} and "
                   "the exports")
    for name, e in sorted((rep.get("exports") or {}).items()):
        if e.get("active"):
            where = e.get("path") or e.get("socket") or e.get("endpoint") or ""
            out.append(f"export      {name:8} active {where}: {e.get('sent', 0)} sent, "
                       f"{e.get('queued', 0)} queued, {e.get('dropped', 0)} dropped, "
                       f"{e.get('failed', 0)} failed" + (f" ({e['error']})" if e.get("error") else ""))
        else:
            out.append(f"export      {name:8} off    {e.get('why', '')}")
    np = rep.get("named_policies")
    if np:
        names = ", ".join(np.get("policies") or {}) or "none"
        out.append(f"policies.d  {np.get('dir')}: {names}" +
                   (f"; ERROR {np['error']}" if np.get("error") else ""))
        for name, why in (np.get("errors") or {}).items():
            out.append(f"  refused   {name}: {why}")
    ls = rep.get("losses")
    if ls is not None and rep.get("daemon") == "running":
        out.append("records lost since corrald started: " +
                   (", ".join(f"{k} {v}" for k, v in ls.items()) if ls else "none counted"))
    return out


def render(rep: dict) -> str:
    fs = rep["filesystem"]
    lines = [
        f"kernel      {rep['kernel']}",
        f"cgroup2     {rep['cgroup2']}",
        f"lsm list    {','.join(rep['lsm_list']) or '(securityfs unreadable)'}",
        f"daemon      {rep['daemon']}",
        f"network     {_mark(rep['network'])} {rep['network'].get('backend') or rep['network'].get('why', '')}"
        + ("; the session's own loopback servers need no rule" if rep["network"].get("own_loopback")
           else ""),
        f"files       backend: {fs['backend']}",
        f"  bpf-lsm   {_mark(fs['bpf_lsm'])} {fs['bpf_lsm'].get('why', '')}",
        f"  landlock  {_mark(fs['landlock'])} {fs['landlock'].get('why', '')}",
        f"seccomp     {_mark(rep['seccomp'])}",
        f"native ext  {_mark(rep['native_extension'])} {rep['native_extension'].get('why', '')}",
        f"dns         {_mark(rep['dns'])} {rep['dns'].get('why') or rep['dns'].get('upstream', '')}",
        f"git gateway {_mark(rep['git_gateway'])} " + (rep["git_gateway"].get("why") or
                                                        f"{rep['git_gateway'].get('credentials')}: "
                                                        f"{', '.join(rep['git_gateway'].get('remotes') or [])}"),
        f"peer id     {_mark(rep['peer_identity'])} {rep['peer_identity']['why']}",
        f"erofs audit {_mark(rep['erofs_audit'])} {rep['erofs_audit']['why']}",
        _log_line(rep["audit_log"]),
    ]
    lines += _audit_lines(rep)
    lines += [
        "session boundary:",
    ]
    for name, b in rep["boundary"].items():
        what = ": ".join(x for x in (b["by"] if b["active"] else "", b["why"]) if x)
        lines.append(f"  {name:16} {_mark(b)} {what}")
    lines += [
        "limits:",
    ]
    lines += [f"  - {x}" for x in rep["limits"]]
    return "\n".join(lines)
