/* Who a process was, kept briefly after it exits (daemon/corral/kernel/exits.py).
 *
 * namewatch.py attributes a protected name to the process fanotify reports as
 * its creator, by that process's cgroup. `sh -c 'echo > .mcp.json'` has exited
 * long before its report is read, and /proc no longer knows it; this program
 * runs in every exiting task on sched_process_exit, which do_exit() reaches
 * before cgroup_exit(), so the task is still in its session's cgroup here.
 *
 * Keyed by tgid: fanotify reports the thread group, not the thread. Every
 * thread's exit rewrites the entry (the same cgroup unless the process uses a
 * threaded cgroup; comm is that thread's): the last one to go wins.
 * An LRU map: the oldest exits make room, and a creator evicted before its
 * report is read is unknown to the daemon (quarantined: fail closed).
 *
 * A raw tracepoint: it needs no tracefs mount and reads nothing of the
 * tracepoint's arguments, only the current task. Not pinned: it only serves
 * a running daemon's fanotify reader, and goes with it. */

struct exit_rec {
    u64 cgid;              /* bpf_get_current_cgroup_id: the task's cgroup v2 id */
    char comm[16];
    u64 ts_ns;             /* bpf_ktime_get_ns (monotonic) at the exit */
};

BPF_TABLE("lru_hash", u32, struct exit_rec, exits, 16384);

int corral_exits(struct bpf_raw_tracepoint_args *ctx)
{
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct exit_rec rec = {};

    rec.cgid = bpf_get_current_cgroup_id();
    bpf_get_current_comm(rec.comm, sizeof(rec.comm));
    rec.ts_ns = bpf_ktime_get_ns();
    exits.update(&tgid, &rec);
    return 0;
}
