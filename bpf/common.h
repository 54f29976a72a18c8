/* The ABI between corral's BPF programs and user space. Mirrored, field by
 * field, in daemon/corral/kernel/abi.py; tests/test_abi.py compares the two.
 * Everything is keyed by the session's cgroup id, like systemd's restrict-fs:
 * a process outside corral's sessions costs one hash lookup and nothing else. */
#ifndef CORRAL_COMMON_H
#define CORRAL_COMMON_H

#define CORRAL_EPERM 1

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

#ifndef AF_INET
#define AF_UNIX 1
#define AF_INET 2
#define AF_INET6 10
#endif

/* session_cfg.flags */
#define SESS_NET_ENFORCE  (1 << 0)   /* network policy present: default deny */
#define SESS_FILE_ENFORCE (1 << 1)   /* file policy present (BPF LSM backend) */
#define SESS_DNS_STEER    (1 << 2)   /* port-53 traffic goes to the session resolver */

/* event.kind */
#define EV_NET   1
#define EV_FILE  2
#define EV_DNS   3
#define EV_RATE  4   /* rate limiter suppressed `count` events */

/* event.op for EV_NET */
#define OP_CONNECT4 1
#define OP_CONNECT6 2
#define OP_SENDMSG4 3
#define OP_SENDMSG6 4
#define OP_SOCKET   5   /* socket(): a protocol the sock_addr hooks do not see */
#define OP_UNIX_CONNECT 6   /* connect() to a pathname Unix socket (kernel 6.7+ hooks) */
#define OP_UNIX_SENDMSG 7   /* sendto()/sendmsg() with a pathname Unix address */

/* rule ids: >= RULE_USER are indexes into the session's compiled rule list */
#define RULE_DEFAULT_DENY 0
#define RULE_UNSPECIFIED  1
#define RULE_UNIX_FOREIGN 2   /* a Unix socket bound by a process outside the session */
#define RULE_USER         16

/* Event rate limits per session (bpf/ratelimit.h): tokens per second, bucket size */
#define NET_RATE_PER_SEC  200
#define NET_RATE_BURST    400
#define FILE_RATE_PER_SEC 100
#define FILE_RATE_BURST   200

/* Pages of each program's event ring buffer (a power of two); the daemon may
 * pass another with -DEVENTS_RINGBUF_PAGES=N (tests) */
#ifndef EVENTS_RINGBUF_PAGES
#define EVENTS_RINGBUF_PAGES 64
#endif

struct session_cfg {
    u32 flags;
    u32 dns_port;          /* host order; resolver port on 127.0.0.1 for this session */
    u64 rate_tokens;       /* event rate limiter state (tokens * 1) */
    u64 rate_last_ns;
    u64 rate_suppressed;
};

struct event {
    u64 ts_ns;             /* bpf_ktime_get_ns (monotonic) */
    u64 cgid;
    u32 pid;
    u32 uid;
    char comm[16];
    u8  kind;
    u8  op;
    u16 port;              /* host order */
    u32 family;            /* AF_INET / AF_INET6 for net events */
    u32 rule;
    u32 verdict;           /* 0 allow, 1 deny */
    u64 count;             /* EV_RATE: events suppressed */
    u8  addr[16];          /* network order */
    char path[256];        /* file events: resolved path (may be truncated) */
};

/* ---- file events (bpf/file_lsm.c, backends/filelsm.py) ---- */
/* event.op for EV_FILE */
#define FOP_OPEN_READ     1
#define FOP_OPEN_WRITE    2   /* also read+write opens */
#define FOP_CREATE        3   /* regular file: open(O_CREAT) / mknod S_IFREG */
#define FOP_MKDIR         4
#define FOP_MKNOD         5   /* fifo, socket, device node */
#define FOP_SYMLINK       6
#define FOP_LINK          7
#define FOP_UNLINK        8
#define FOP_RMDIR         9
#define FOP_RENAME_FROM   10
#define FOP_RENAME_TO     11
#define FOP_TRUNCATE      12
#define FOP_SETATTR       13  /* chmod / chown / utimes (inode_setattr) */
#define FOP_UNIX_CONNECT  14
#define FOP_TOO_DEEP      15  /* path deeper than the walk bound (any op) */
/* the session boundary (issue 11): target is the peer socket or the task */
#define FOP_UNIX_SEND     16  /* datagram to a Unix socket (unix_may_send) */
#define FOP_SIGNAL        17  /* kill()/tgkill()/pidfd_send_signal() (task_kill) */
#define FOP_PTRACE        18  /* ptrace attach, /proc/PID/mem... (ptrace_access_check) */
#define FOP_TRACEME       19  /* PTRACE_TRACEME under a tracer outside (ptrace_traceme) */
#define FOP_SETXATTR      20
#define FOP_REMOVEXATTR   21

/* event.rule values for file denials that are not a user rule */
#define RULE_FILE_TOO_DEEP           2   /* path deeper than the walk bound: fail closed */
#define RULE_FILE_HARDLINK           3   /* inode of a read-denied file reached by another name */
#define RULE_FILE_RACE               4   /* per-CPU scratch reused under preemption: fail closed */
#define RULE_FILE_PROTECTED_ANCESTOR 5   /* moving/deleting a directory that holds deny rules */
#define RULE_FILE_UNIX_FOREIGN       6   /* Unix socket of a process outside the session, not in unix.allow */
#define RULE_FILE_TASK_FOREIGN       7   /* signal/ptrace target outside the session */

/* ---- network tries (bpf/net.c, backends/net.py) ---- */
#define MAX_PORT_RANGES 16

struct lpm4_key {            /* prefixlen counts 64 cgid bits + address bits */
    u32 prefixlen;
    u32 cg_lo;
    u32 cg_hi;
    u32 addr;
};

struct lpm6_key {
    u32 prefixlen;
    u32 cg_lo;
    u32 cg_hi;
    u32 addr[4];
};

struct port_rules {          /* every rule covering the prefix, merged by user space */
    u32 n;
    u32 rule[MAX_PORT_RANGES];
    u16 lo[MAX_PORT_RANGES];
    u16 hi[MAX_PORT_RANGES];
};

/* ---- file rule maps (bpf/file_lsm.c, backends/filelsm.py) ---- */
#define RB_DENY_READ   (1 << 0)
#define RB_ALLOW_READ  (1 << 1)
#define RB_ALLOW_WRITE (1 << 2)
#define RB_DENY_WRITE  (1 << 3)
#define RB_DENY_INODE  (1 << 4)  /* this inode is read-denied wherever it is reached */
#define RB_ANCESTOR    (1 << 5)  /* strict ancestor of a deny rule: can't be moved */
#define RB_PSEUDO      (1 << 6)  /* kernel interface tree (/proc, /sys, /dev...): not
                                  * writable unless a deeper allow_write reopens it */
#define RB_UNIX_ALLOW  (1 << 7)  /* a Unix socket named in unix.allow (by object and by name) */

struct ikey {
    u64 cgid;
    u64 dev;
    u64 ino;
};

struct pkey {
    u64 cgid;
    u64 hash;
};

struct rule_val {
    u32 bits;
    u16 rd_rule;
    u16 wr_rule;
};

struct fconf {
    u64 seed;          /* hash key, random per pinned instance */
    u64 level_mask;    /* cgroup levels sessions live at */
};

struct fsess {
    struct session_cfg cfg;   /* flags, rate limiter state */
    u32 max_pdepth;           /* deepest path rule, in components */
    u32 pad;
};

#endif
