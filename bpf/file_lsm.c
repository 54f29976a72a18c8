/* corral filesystem policy, enforced by BPF LSM (issue 4).
 *
 * One global set of programs, keyed by the session's cgroup id (like systemd's
 * restrict-fs): a task outside every session pays one hash lookup per hook.
 *
 * Decisions are made on the kernel object, never on a user-supplied string:
 * each hook walks the object's dentry ancestors up to the top of the mount
 * tree (crossing mounts through struct mount), then evaluates the levels from
 * the top down against two rule maps:
 *   irules  (cgid, dev, ino)  -> bits   rule objects that existed at registration
 *                                       (follow renames, bind mounts, hard links
 *                                       of deny-listed files)
 *   prules  (cgid, H(prefix)) -> bits   rule paths by name, H = keyed hash of the
 *                                       path components from the mount-tree root;
 *                                       covers paths created after registration
 *                                       and delete/re-create.
 * A walk that cannot reach the root within MAX_DEPTH levels is DENIED (fail
 * closed) and logged.
 *
 * Semantics per session:
 *   read : deepest matching deny_read/allow_read rule wins (deny wins at equal
 *          depth); default allow; inodes listed with RB_DENY_INODE are always
 *          read-denied (hard links that predate the session).
 *   write: allowed iff some level matches allow_write and no level matches
 *          deny_write; default deny.
 * The user-space half (daemon/corral/filelsm.py) computes the same hash.
 *
 * The session boundary (issue 11). Landlock on 6.1 (ABI 2) scopes neither
 * signals nor Unix sockets, so on this tier the LSM keeps a session to itself:
 *   Unix sockets  connect (stream/seqpacket) and datagram sends reach only a
 *                 peer socket created in the session's cgroup or below it
 *                 (sk_cgrp_data, set when the socket was made: socketpairs and
 *                 the session's own servers), or a pathname socket that
 *                 unix.allow names (RB_UNIX_ALLOW, by object and by name). The
 *                 file rules still apply to the socket file.
 *   signals       task_kill: only to tasks in the session's cgroup or below.
 *   ptrace        ptrace_access_check (PTRACE_ATTACH, /proc/PID/mem, environ,
 *                 fd, root...) and ptrace_traceme: same.
 *   metadata      inode_setattr (utimes; chmod/chown/truncate again),
 *                 inode_setxattr, inode_removexattr: write rules, like the
 *                 other write hooks.
 * Tasks are compared by cgroup (cgroup->ancestors[], the table that
 * bpf_get_current_ancestor_cgroup_id() reads), never by pid or name.
 */
#ifndef CORRAL_BTF_HEADERS
#include <linux/fs.h>
#include <linux/dcache.h>
#include <linux/mount.h>
#include <linux/path.h>
#include <linux/net.h>
#include <linux/sched.h>
#include <linux/cred.h>
#include <linux/fs_struct.h>
#include <linux/cgroup-defs.h>
#include <linux/kernfs.h>
#include <net/sock.h>
#include <net/af_unix.h>
#endif
#include "common.h"
#include "ratelimit.h"

#ifndef MAX_DEPTH
#define MAX_DEPTH 64          /* dentry levels walked (incl. mount roots) */
#endif
#define MAX_LEVELS 16         /* cgroup levels a session may live at */
#ifndef MAX_PDEPTH
#define MAX_PDEPTH 24         /* components of a by-name rule path (filelsm.py enforces) */
#endif
#define MNT_INTERNAL_FLAG 0x4000
#define CORRAL_FMODE_READ  0x1
#define CORRAL_FMODE_WRITE 0x2

/* intent */
#define WANT_READ  1
#define WANT_WRITE 2
#define WANT_MOVE  4   /* object is being renamed/linked away */
#define WANT_SOCK  8   /* connecting to a socket: unix.allow lifts default-deny (not deny rules) */

#define MAX_SB_MOUNTS 16     /* mounts of one superblock looked at by dentry-only hooks */
#define MAX_MNT_DEPTH 16     /* mount levels climbed to the caller's root mount */
/* struct iattr.ia_valid bits (linux/fs.h) that change what a file is or says */
#define CORRAL_ATTR_META ((1 << 0) | (1 << 1) | (1 << 2) | (1 << 3) | (1 << 4) | (1 << 5) | \
                          (1 << 7) | (1 << 8))   /* MODE UID GID SIZE ATIME MTIME ATIME_SET MTIME_SET */
#define CORRAL_ATTR_FILE (1 << 13)
#define CORRAL_PTRACE_MODE_NOAUDIT 0x04
#define CORRAL_SEND_SIG_PRIV 1UL        /* (struct kernel_siginfo *)1: sent by the kernel */

/* Leading fields of the kernel's private struct mount (fs/mount.h): the
 * first four have had this layout since 3.3, the list heads up to
 * mnt_instance since 3.x too (checked against the real struct below when
 * the headers come from BTF, where struct mount is visible). */
struct corral_mount {
    struct hlist_node mnt_hash;
    struct corral_mount *mnt_parent;
    struct dentry *mnt_mountpoint;
    struct vfsmount mnt;
    struct callback_head mnt_rcu;   /* union { mnt_rcu; mnt_llist; } */
    void *mnt_pcp;                  /* CONFIG_SMP; else two ints: 8 bytes either way */
    struct list_head mnt_mounts;
    struct list_head mnt_child;
    struct list_head mnt_instance;  /* on sb->s_mounts */
};
#ifdef CORRAL_BTF_HEADERS
_Static_assert(__builtin_offsetof(struct corral_mount, mnt) == __builtin_offsetof(struct mount, mnt),
               "struct mount layout");
_Static_assert(__builtin_offsetof(struct corral_mount, mnt_instance) ==
               __builtin_offsetof(struct mount, mnt_instance), "struct mount layout");
#endif

/* Per-CPU scratch. Loop state lives here rather than in registers on
 * purpose: map memory is not value-tracked by the verifier, so paths through
 * the bounded loops converge instead of multiplying. */
struct scratch {
    u64 owner;                      /* pid_tgid of the invocation using it */
    u64 n;                          /* levels recorded by walk_up */
    u64 H;                          /* running path-prefix hash */
    u32 comp, rd_deny, rd_rule, has_aw, aw_rule, has_dw, dw_rule, leaf_bits, pos, soft, soft_rule;
    u32 text;                       /* 1: pbuf holds the event's target already (not a walk) */
    u64 dent[MAX_DEPTH];
    u64 named[MAX_DEPTH];           /* 1: level contributes a path component */
    u32 pbits[MAX_DEPTH];           /* by-name rule bits per level */
    u32 prr[MAX_DEPTH];
    u32 pwr[MAX_DEPTH];
    u32 comp_level[MAX_DEPTH];      /* level index of each component, bottom-up */
    u32 ncomp;
    u32 pad2;
    char name[264];
    char pbuf[512];
    /* dentry-only hooks: the object's dentry chain inside its superblock, and
     * the mount picked for it (find_mount) */
    u64 chain[MAX_DEPTH];
    u64 nchain;
    u64 pick;
    u64 found;
};

BPF_ARRAY(fconf_map, struct fconf, 1);
BPF_F_TABLE("hash", u64, struct fsess, fsess, 4096, BPF_F_NO_PREALLOC);
BPF_F_TABLE("hash", struct ikey, struct rule_val, irules, 262144, BPF_F_NO_PREALLOC);
BPF_F_TABLE("hash", struct pkey, struct rule_val, prules, 262144, BPF_F_NO_PREALLOC);
BPF_PERCPU_ARRAY(scratch_map, struct scratch, 1);
BPF_RINGBUF_OUTPUT(file_events, EVENTS_RINGBUF_PAGES);
/* events dropped because file_events was full (per cpu, kernel only), and how
 * much of that a daemon has reported (user space only): pinned with the rest */
BPF_PERCPU_ARRAY(file_lost, u64, 1);
BPF_ARRAY(file_lost_seen, u64, 1);

#define RD(dst, src) bpf_probe_read_kernel(&(dst), sizeof(dst), &(src))

static __always_inline u64 mix(u64 h, u64 v)
{
    h ^= v;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 32;
    return h;
}

/* Session of the current task, if any: one lookup per configured level
 * (*lvl_out: the level of the session's cgroup). */
static __always_inline struct fsess *cur_session_lvl(u64 *cgid_out, u32 *lvl_out)
{
    u32 zero = 0;
    struct fconf *c = fconf_map.lookup(&zero);
    if (!c || !c->level_mask)
        return 0;
    u64 mask = c->level_mask;
#pragma unroll
    for (int l = 0; l < MAX_LEVELS; l++) {
        if (!(mask & (1ULL << l)))
            continue;
        u64 id = bpf_get_current_ancestor_cgroup_id(l);
        if (!id)
            continue;
        struct fsess *s = fsess.lookup(&id);
        if (s) {
            *cgid_out = id;
            *lvl_out = l;
            return s;
        }
    }
    return 0;
}

static __always_inline struct fsess *cur_session(u64 *cgid_out)
{
    u32 lvl = 0;
    return cur_session_lvl(cgid_out, &lvl);
}

/* Is cgroup cg the session's (id cgid at level lvl) or below it? A nested
 * cgroup of a session is the session's own, as for cur_session(). Needs
 * cgroup->ancestors[] (6.0+; older kernels have ancestor_ids[]). */
static __always_inline int cg_in_session(struct cgroup *cg, u32 lvl, u64 cgid)
{
    int level = -1;
    struct cgroup *a = 0;
    struct kernfs_node *kn = 0;
    u64 id = 0;
    if (!cg)
        return 0;
    RD(level, cg->level);
    if (level < (int)lvl)
        return 0;
    RD(a, cg->ancestors[lvl & (MAX_LEVELS - 1)]);
    if (!a)
        return 0;
    RD(kn, a->kn);
    if (!kn)
        return 0;
    RD(id, kn->id);
    return id == cgid;
}

/* The task's cgroup on the unified hierarchy (cgroup2). */
static __always_inline struct cgroup *corral_task_cgroup(struct task_struct *t)
{
    struct css_set *cs = 0;
    struct cgroup *cg = 0;
    RD(cs, t->cgroups);
    if (cs)
        RD(cg, cs->dfl_cgrp);
    return cg;
}

/* ---- event targets that are not a walk: "pid 12 (comm) signal 15", "@name".
 * Written into sc->pbuf one character at a time through a masked offset, so
 * every store has a constant bound; literals are packed into integers
 * because bcc does not load .rodata. */
#define L4(a, b, c, d) ((u64)(a) | (u64)(b) << 8 | (u64)(c) << 16 | (u64)(d) << 24)
#define L8(a, b, c, d, e, f, g, h) (L4(a, b, c, d) | L4(e, f, g, h) << 32)

static __always_inline void put_ch(struct scratch *sc, char c)
{
    u32 off = sc->pos;
    asm volatile("%[o] &= 255" : [o] "+r"(off));
    sc->pbuf[off] = c;
    sc->pos = off + 1;
}

static __always_inline void put_lit(struct scratch *sc, u64 w)
{
#pragma unroll
    for (int i = 0; i < 8; i++) {
        char c = (w >> (8 * i)) & 0xff;
        if (!c)
            break;
        put_ch(sc, c);
    }
}

static __always_inline void put_num(struct scratch *sc, u32 v)
{
    u32 div = 1000000000;
    u32 started = 0;
#pragma unroll
    for (int i = 0; i < 10; i++) {
        u32 dg = (v / div) % 10;
        if (dg || started || i == 9) {
            put_ch(sc, '0' + dg);
            started = 1;
        }
        div /= 10;
    }
}

static __always_inline void put_kstr(struct scratch *sc, const void *src)
{
    u32 off = sc->pos;
    asm volatile("%[o] &= 255" : [o] "+r"(off));
    long got = bpf_probe_read_kernel_str(&sc->pbuf[off], 256, src);
    if (got < 1)
        got = 1;
    sc->pos = off + (((u32)got - 1) & 255);
}

/* "pid 1234 (comm)": the thread group id and name of a task. */
static __always_inline void task_text(struct scratch *sc, struct task_struct *t)
{
    u32 pid = 0;
    RD(pid, t->tgid);
    sc->pos = 0;
    put_lit(sc, L4('p', 'i', 'd', ' '));
    put_num(sc, pid);
    put_lit(sc, L4(' ', '(', 0, 0));
    put_kstr(sc, &t->comm[0]);
    put_ch(sc, ')');
    sc->text = 1;
}

struct verdict {
    u32 deny;      /* 0 allow, 1 deny */
    u32 rule;
    u32 nlevels;
};

static __always_inline void emit(struct fsess *s, u64 cgid, u8 op, u32 rule,
                                 struct scratch *sc, u32 deny)
{
    u64 supp = 0;
    if (!rate_take(&s->cfg, FILE_RATE_PER_SEC, FILE_RATE_BURST, &supp))
        return;
    struct event *e = file_events.ringbuf_reserve(sizeof(struct event));
    if (!e) {
        u32 zero = 0;
        rate_reserve_failed(&s->cfg, supp, file_lost.lookup(&zero));
        return;
    }
    e->ts_ns = bpf_ktime_get_ns();
    e->cgid = cgid;
    u64 pt = bpf_get_current_pid_tgid();
    e->pid = pt >> 32;
    e->uid = (u32)bpf_get_current_uid_gid();
    bpf_get_current_comm(e->comm, sizeof(e->comm));
    e->kind = EV_FILE;
    e->op = op;
    e->port = 0;
    e->family = 0;
    e->rule = rule;
    e->verdict = deny;
    e->count = supp;
    __builtin_memset(e->addr, 0, sizeof(e->addr));
    /* Path from the walk: top-down component names (the real object's
     * location in the mount tree, not what the caller typed). Built in a
     * 512-byte scratch so every write has a constant bound. Targets that are
     * not files (sc->text) were written there by the caller. */
    if (!sc->text) {
        sc->pos = 0;
        sc->pbuf[0] = '/';
        sc->pbuf[1] = 0;
    }
#pragma clang loop unroll(disable)
    for (int k = 0; k < MAX_DEPTH; k++) {
        int i = (int)sc->n - 1 - k;
        if (sc->text || i < 0 || sc->pos >= 255)
            break;
        i &= MAX_DEPTH - 1;
        if (!sc->named[i])
            continue;
        struct dentry *d = (struct dentry *)sc->dent[i];
        const unsigned char *nm = 0;
        RD(nm, d->d_name.name);
        /* pos is kept in map memory (not value-tracked) and masked on use,
         * so the verifier does not fork a state per possible length */
        u32 off = sc->pos;
        asm volatile("%[o] &= 255" : [o] "+r"(off));
        sc->pbuf[off] = '/';
        off += 1;
        asm volatile("%[o] &= 255" : [o] "+r"(off));
        long got = bpf_probe_read_kernel_str(&sc->pbuf[off], 256, nm);
        if (got < 1)
            got = 1;
        sc->pos = off + (((u32)got - 1) & 255);
    }
    bpf_probe_read_kernel(e->path, sizeof(e->path), sc->pbuf);
    e->path[sizeof(e->path) - 1] = 0;
    file_events.ringbuf_submit(e, 0);
}

/* Walk from (dentry, vfsmount) up to the top of the mount tree, recording the
 * levels in sc (sc->n of them). Returns 1 for a policy object, 0 for "not a
 * policy object" (kernel-internal mounts: pipes, sockets, memfd), -1 when the
 * path is deeper than MAX_DEPTH (caller fails closed). */
static __always_inline int walk_up(struct scratch *sc, struct dentry *d, struct vfsmount *vm)
{
    struct corral_mount *m = (struct corral_mount *)((char *)vm - __builtin_offsetof(struct corral_mount, mnt));
    struct dentry *mroot = 0;
    RD(mroot, vm->mnt_root);
    sc->n = MAX_DEPTH;
    sc->ncomp = 0;
    /* one latch, no `continue`: 6.1's CFG check rejects loops whose back
     * edge is a fall-through, which clang produces for multi-latch loops */
#pragma clang loop unroll(disable)
    for (int i = 0; i < MAX_DEPTH; i++) {
        sc->dent[i] = (u64)d;
        sc->named[i] = 0;
        sc->pbits[i] = 0;
        sc->n = i + 1;
        struct dentry *next = 0;
        if (d == mroot) {
            struct corral_mount *pm = 0;
            RD(pm, m->mnt_parent);
            if (pm == m || !pm) {
                int fl = 0;
                RD(fl, m->mnt.mnt_flags);
                return (fl & MNT_INTERNAL_FLAG) ? 0 : 1;
            }
            RD(next, m->mnt_mountpoint);
            m = pm;
            RD(mroot, m->mnt.mnt_root);
        } else {
            RD(next, d->d_parent);
            if (next == d || !next)
                return 1;   /* fs root that is not the mount root: detached tree */
            sc->named[i] = 1;
            u32 c = sc->ncomp;
            sc->comp_level[c & (MAX_DEPTH - 1)] = i;
            sc->ncomp = c + 1;
        }
        d = next;
    }
    return -1;
}

/* Keyed hash of one name: the name zero-padded to 64 bytes (256 if longer),
 * in little-endian u64 words, plus its length. Fixed trip counts, no
 * data-dependent branches inside the loops: the verifier walks them once. */
static __always_inline u64 name_hash(struct scratch *sc, struct dentry *d, u64 seed)
{
    u32 len = 0;
    const unsigned char *nm = 0;
    RD(len, d->d_name.len);
    RD(nm, d->d_name.name);
    if (len > 255)
        len = 255;
    u64 h = mix(seed, (u64)len * 0x9E3779B97F4A7C15ULL);
    u64 *wds = (u64 *)&sc->name[0];
    if (len <= 64) {
#pragma unroll
        for (int w = 0; w < 8; w++)
            wds[w] = 0;
        bpf_probe_read_kernel(&sc->name[0], len & 127, nm);
        for (int w = 0; w < 8; w++)
            h = mix(h, wds[w]);
    } else {
        for (int w = 0; w < 32; w++)
            wds[w] = 0;
        bpf_probe_read_kernel(&sc->name[0], len & 255, nm);
        for (int w = 0; w < 32; w++)
            h = mix(h, wds[w]);
    }
    return h;
}

/* Evaluate walk levels top-down, in three bounded passes so the verifier's
 * work stays linear: (1) index the components from the top, (2) hash the
 * first max_pdepth components (indexed by walk_up) and look up by-name rules, (3) look up
 * by-object rules on every level and fold everything into the verdict. */
static __always_inline void evaluate(struct scratch *sc, u64 cgid, struct fsess *s,
                                     u64 seed, int want, struct verdict *v)
{
    u32 maxp = s->max_pdepth;
    struct pkey pk = { .cgid = cgid };
    u64 H = seed;
#pragma clang loop unroll(disable)
    for (int j = 0; j < MAX_PDEPTH; j++) {
        u32 nn = sc->ncomp;
        if (j >= nn || j >= maxp)
            break;
        u32 i = sc->comp_level[(nn - 1 - j) & (MAX_DEPTH - 1)] & (MAX_DEPTH - 1);
        struct dentry *d = (struct dentry *)sc->dent[i];
        H = mix(H * 0xc4ceb9fe1a85ec53ULL, name_hash(sc, d, seed));
        pk.hash = H;
        struct rule_val *r = prules.lookup(&pk);
        if (r) {
            sc->pbits[i] = r->bits;
            sc->prr[i] = r->rd_rule;
            sc->pwr[i] = r->wr_rule;
        }
    }

    sc->rd_deny = 0;
    sc->rd_rule = RULE_UNSPECIFIED;
    sc->has_aw = 0;
    sc->aw_rule = RULE_DEFAULT_DENY;
    sc->has_dw = 0;
    sc->dw_rule = 0;
    sc->soft = 0;
    sc->soft_rule = 0;
    sc->leaf_bits = 0;
    struct ikey ik = { .cgid = cgid };
#pragma clang loop unroll(disable)
    for (int k = 0; k < MAX_DEPTH; k++) {
        int i = (int)sc->n - 1 - k;
        if (i < 0)
            break;
        i &= MAX_DEPTH - 1;
        struct dentry *d = (struct dentry *)sc->dent[i];
        u32 bits = 0;
        u32 rr = 0, wr = 0;
        struct inode *ino = 0;
        RD(ino, d->d_inode);
        if (ino) {
            struct super_block *sb = 0;
            u32 dev = 0;
            unsigned long inum = 0;
            RD(sb, ino->i_sb);
            RD(dev, sb->s_dev);
            RD(inum, ino->i_ino);
            ik.dev = dev;
            ik.ino = inum;
            struct rule_val *r = irules.lookup(&ik);
            if (r) {
                bits = r->bits;
                rr = r->rd_rule;
                wr = r->wr_rule;
            }
        }
        u32 pb = sc->pbits[i];
        if (pb) {
            /* deny-type rules win the attribution */
            if (!(bits & (RB_DENY_READ | RB_ALLOW_READ)) || (pb & RB_DENY_READ))
                rr = sc->prr[i];
            if (!(bits & (RB_DENY_WRITE | RB_ALLOW_WRITE)) || (pb & RB_DENY_WRITE))
                wr = sc->pwr[i];
            bits |= pb;
        }
        if (bits & (RB_DENY_READ | RB_ALLOW_READ)) {
            sc->rd_deny = bits & RB_DENY_READ;
            sc->rd_rule = RULE_USER + rr;
        }
        if (bits & RB_ALLOW_WRITE) {
            if (!sc->has_aw)
                sc->aw_rule = RULE_USER + wr;
            sc->has_aw = 1;
            sc->soft = 0;            /* a deeper allow_write reopens a pseudo tree */
        }
        if (bits & RB_PSEUDO) {
            sc->soft = 1;
            sc->soft_rule = RULE_USER + wr;
        }
        if ((bits & RB_DENY_WRITE) && !sc->has_dw) {
            sc->has_dw = 1;
            sc->dw_rule = RULE_USER + wr;
        }
        sc->leaf_bits = bits;   /* the last level evaluated is the object itself */
    }
    u32 leaf = sc->leaf_bits;
    if (leaf & RB_DENY_INODE) {
        sc->rd_deny = 1;
        sc->rd_rule = RULE_FILE_HARDLINK;
    }
    v->deny = 0;
    v->rule = 0;
    if ((want & WANT_READ) && sc->rd_deny) {
        v->deny = 1;
        v->rule = sc->rd_rule;
        return;
    }
    if (want & WANT_WRITE) {
        if (sc->has_dw) {
            v->deny = 1;
            v->rule = sc->dw_rule;
            return;
        }
        /* a socket unix.allow names may be connected to wherever it lives;
         * deny_write and deny_read on it still win */
        if ((want & WANT_SOCK) && (leaf & RB_UNIX_ALLOW))
            return;
        if (!sc->has_aw) {
            v->deny = 1;
            v->rule = RULE_DEFAULT_DENY;
            return;
        }
        if (sc->soft) {
            v->deny = 1;
            v->rule = sc->soft_rule;
            return;
        }
    }
    if ((want & WANT_MOVE) && (leaf & RB_ANCESTOR)) {
        v->deny = 1;
        v->rule = RULE_FILE_PROTECTED_ANCESTOR;
    }
}

/* Walk and evaluate one object for the current session, no event: 1 (deny,
 * with v->rule and *op) or 0. sc->leaf_bits: the object's own rule bits
 * (0 when it is not a path object). */
static __always_inline int decide(struct scratch *sc, struct fsess *s, u64 cgid, struct dentry *d,
                                  struct vfsmount *vm, int want, u8 *op, struct verdict *v)
{
    u32 zero = 0;
    struct fconf *c = fconf_map.lookup(&zero);
    v->deny = 1;
    v->rule = RULE_FILE_RACE;
    if (!c)
        return 1;
    u64 me = bpf_get_current_pid_tgid();
    sc->owner = me;
    sc->text = 0;
    sc->leaf_bits = 0;
    int st = walk_up(sc, d, vm);
    v->deny = 0;
    v->rule = 0;
    if (st == 0)
        return 0;               /* pipe/socket/anon inode: not a path object */
    if (st < 0) {
        v->deny = 1;
        v->rule = RULE_FILE_TOO_DEEP;
        *op = FOP_TOO_DEEP;
    } else {
        evaluate(sc, cgid, s, c->seed, want, v);
    }
    if (sc->owner != me) {
        /* another invocation preempted us on this CPU and reused the
         * scratch area: the walk is unreliable, fail closed */
        v->deny = 1;
        v->rule = RULE_FILE_RACE;
    }
    return v->deny;
}

/* Full check of one object for the current session. Returns 0 or -EPERM. */
static __always_inline int check(struct fsess *s, u64 cgid, struct dentry *d,
                                 struct vfsmount *vm, int want, u8 op)
{
    u32 zero = 0;
    struct scratch *sc = scratch_map.lookup(&zero);
    if (!sc)
        return -CORRAL_EPERM;
    struct verdict v = {};
    if (!decide(sc, s, cgid, d, vm, want, &op, &v))
        return 0;
    emit(s, cgid, op, v.rule, sc, 1);
    return -CORRAL_EPERM;
}

static __always_inline int check_path(struct fsess *s, u64 cgid, const struct path *p, int want, u8 op)
{
    struct dentry *d = 0;
    struct vfsmount *vm = 0;
    RD(d, p->dentry);
    RD(vm, p->mnt);
    if (!d || !vm)
        return 0;
    return check(s, cgid, d, vm, want, op);
}

static __always_inline int check_in_dir(struct fsess *s, u64 cgid, const struct path *dir,
                                        struct dentry *d, int want, u8 op)
{
    struct vfsmount *vm = 0;
    RD(vm, dir->mnt);
    if (!d || !vm)
        return 0;
    return check(s, cgid, d, vm, want, op);
}

#define SESSION_OR_ALLOW(ret)                    \
    if (ret)                                     \
        return ret;                              \
    u64 cgid = 0;                                \
    struct fsess *s = cur_session(&cgid);        \
    if (!s || !(s->cfg.flags & SESS_FILE_ENFORCE)) \
        return 0;

LSM_PROBE(file_open, struct file *file, int ret)
{
    SESSION_OR_ALLOW(ret);
    unsigned int fmode = 0;
    RD(fmode, file->f_mode);
    int want = 0;
    if (fmode & CORRAL_FMODE_READ)
        want |= WANT_READ;
    if (fmode & CORRAL_FMODE_WRITE)
        want |= WANT_WRITE;
    if (!want)
        return 0;
    u8 op = (want & WANT_WRITE) ? FOP_OPEN_WRITE : FOP_OPEN_READ;
    return check_path(s, cgid, &file->f_path, want, op);
}

LSM_PROBE(path_truncate, const struct path *path, int ret)
{
    SESSION_OR_ALLOW(ret);
    return check_path(s, cgid, path, WANT_WRITE, FOP_TRUNCATE);
}

LSM_PROBE(path_chmod, const struct path *path, u64 mode, int ret)
{
    SESSION_OR_ALLOW(ret);
    return check_path(s, cgid, path, WANT_WRITE, FOP_SETATTR);
}

LSM_PROBE(path_chown, const struct path *path, u64 uid, u64 gid, int ret)
{
    SESSION_OR_ALLOW(ret);
    return check_path(s, cgid, path, WANT_WRITE, FOP_SETATTR);
}

LSM_PROBE(path_mknod, const struct path *dir, struct dentry *dentry, u64 mode, u64 dev, int ret)
{
    SESSION_OR_ALLOW(ret);
    u8 op = ((mode & 0170000) == 0100000 || (mode & 0170000) == 0) ? FOP_CREATE : FOP_MKNOD;
    return check_in_dir(s, cgid, dir, dentry, WANT_WRITE, op);
}

LSM_PROBE(path_mkdir, const struct path *dir, struct dentry *dentry, u64 mode, int ret)
{
    SESSION_OR_ALLOW(ret);
    return check_in_dir(s, cgid, dir, dentry, WANT_WRITE, FOP_MKDIR);
}

LSM_PROBE(path_symlink, const struct path *dir, struct dentry *dentry, const char *old_name, int ret)
{
    SESSION_OR_ALLOW(ret);
    return check_in_dir(s, cgid, dir, dentry, WANT_WRITE, FOP_SYMLINK);
}

LSM_PROBE(path_unlink, const struct path *dir, struct dentry *dentry, int ret)
{
    SESSION_OR_ALLOW(ret);
    return check_in_dir(s, cgid, dir, dentry, WANT_WRITE, FOP_UNLINK);
}

LSM_PROBE(path_rmdir, const struct path *dir, struct dentry *dentry, int ret)
{
    SESSION_OR_ALLOW(ret);
    return check_in_dir(s, cgid, dir, dentry, WANT_WRITE, FOP_RMDIR);
}

/* link(2) needs both mounts to be the same, so new_dir's mount is old's. */
LSM_PROBE(path_link, struct dentry *old_dentry, const struct path *new_dir,
          struct dentry *new_dentry, int ret)
{
    SESSION_OR_ALLOW(ret);
    int r = check_in_dir(s, cgid, new_dir, old_dentry, WANT_READ | WANT_WRITE | WANT_MOVE, FOP_LINK);
    if (r)
        return r;
    return check_in_dir(s, cgid, new_dir, new_dentry, WANT_WRITE, FOP_LINK);
}

LSM_PROBE(path_rename, const struct path *old_dir, struct dentry *old_dentry,
          const struct path *new_dir, struct dentry *new_dentry, unsigned int flags, int ret)
{
    SESSION_OR_ALLOW(ret);
    int r = check_in_dir(s, cgid, old_dir, old_dentry, WANT_READ | WANT_WRITE | WANT_MOVE, FOP_RENAME_FROM);
    if (r)
        return r;
    int want = WANT_WRITE | WANT_MOVE;
    if (flags & 2 /* RENAME_EXCHANGE */)
        want |= WANT_READ;
    return check_in_dir(s, cgid, new_dir, new_dentry, want, FOP_RENAME_TO);
}

/* ---- metadata: inode_setattr, inode_setxattr, inode_removexattr ----
 *
 * These hooks get a dentry and no vfsmount, and the walk needs the mount to
 * cross into the parent mounts (by-name rules are paths from the top of the
 * mount tree). find_mount() finds it the way the kernel would have, had it
 * passed the path on: a mount of the dentry's superblock (sb->s_mounts)
 * that the caller can see (its mount chain reaches the caller's root mount,
 * so mounts of other namespaces are skipped) and whose root is the dentry or
 * one of its ancestors (so a bind mount of an unrelated subtree is skipped).
 * The first such mount is used: by-object rules give the same answer through
 * any of them; only by-name rules of paths created after registration could
 * differ between two bind mounts of the same tree.
 * Returns the mount, 0 when no mount of the caller's tree holds the object
 * (pipes, sockets, internal and detached mounts: not a path object, as in
 * walk_up), or 1 when the superblock has more mounts than we look at (the
 * caller fails closed). */
static __always_inline struct vfsmount *find_mount(struct scratch *sc, struct dentry *d)
{
    struct task_struct *t = (struct task_struct *)bpf_get_current_task();
    struct fs_struct *fs = 0;
    struct vfsmount *rootvm = 0;
    struct super_block *sb = 0;
    struct list_head *node = 0;
    RD(fs, t->fs);
    if (!fs)
        return 0;
    RD(rootvm, fs->root.mnt);
    struct corral_mount *rootm =
        (struct corral_mount *)((char *)rootvm - __builtin_offsetof(struct corral_mount, mnt));
    /* the dentry and its ancestors up to the superblock's root */
    sc->nchain = 0;
#pragma clang loop unroll(disable)
    for (int i = 0; i < MAX_DEPTH; i++) {
        struct dentry *p = 0;
        sc->chain[i] = (u64)d;
        sc->nchain = i + 1;
        RD(p, d->d_parent);
        if (p == d || !p)
            break;
        d = p;
    }
    RD(sb, d->d_sb);
    if (!sb)
        return 0;
    struct list_head *head = &sb->s_mounts;
    RD(node, head->next);
    sc->pick = 0;
    sc->found = 0;
#pragma clang loop unroll(disable)
    for (int k = 0; k < MAX_SB_MOUNTS; k++) {
        if (!node || node == head) {
            sc->found = 1;          /* every mount of the superblock looked at */
            break;
        }
        struct corral_mount *m =
            (struct corral_mount *)((char *)node - __builtin_offsetof(struct corral_mount, mnt_instance));
        struct dentry *mroot = 0;
        RD(mroot, m->mnt.mnt_root);
        u32 under = 0;
#pragma clang loop unroll(disable)
        for (int i = 0; i < MAX_DEPTH; i++) {
            if (i >= sc->nchain)
                break;
            if (sc->chain[i & (MAX_DEPTH - 1)] == (u64)mroot) {
                under = 1;
                break;
            }
        }
        u32 seen = 0;
        struct corral_mount *up = m;
#pragma clang loop unroll(disable)
        for (int j = 0; j < MAX_MNT_DEPTH; j++) {
            if (!under || !up)
                break;
            if (up == rootm) {
                seen = 1;
                break;
            }
            struct corral_mount *pm = 0;
            RD(pm, up->mnt_parent);
            if (pm == up)
                break;
            up = pm;
        }
        if (seen) {
            sc->pick = (u64)m;
            sc->found = 1;
            break;
        }
        RD(node, node->next);
    }
    if (sc->pick)
        return (struct vfsmount *)(sc->pick + __builtin_offsetof(struct corral_mount, mnt));
    return sc->found ? 0 : (struct vfsmount *)1;
}

/* Write check of an object the hook only knows by dentry. */
static __always_inline int check_dentry(struct fsess *s, u64 cgid, struct dentry *d, u8 op)
{
    u32 zero = 0;
    struct scratch *sc = scratch_map.lookup(&zero);
    if (!sc)
        return -CORRAL_EPERM;
    if (!d)
        return 0;
    /* Overridden credentials (override_creds) mean a stacking filesystem
     * (overlayfs copy-up) or a kernel service acting on its own layers; the
     * caller's operation on the upper object was checked when it arrived. */
    struct task_struct *t = (struct task_struct *)bpf_get_current_task();
    const struct cred *cr = 0, *rcr = 0;
    RD(cr, t->cred);
    RD(rcr, t->real_cred);
    if (cr != rcr)
        return 0;
    struct vfsmount *vm = find_mount(sc, d);
    if (!vm)
        return 0;
    if (vm == (struct vfsmount *)1) {
        /* more mounts than looked at: fail closed, logged as too deep */
        sc->n = 0;
        sc->text = 0;
        emit(s, cgid, FOP_TOO_DEEP, RULE_FILE_TOO_DEEP, sc, 1);
        return -CORRAL_EPERM;
    }
    return check(s, cgid, d, vm, WANT_WRITE, op);
}

/* utimensat (touch -d), and chmod/chown/truncate once more (their path hooks
 * ran first, with the mount). ATTR_FILE (ftruncate, open(O_TRUNC)) carries
 * the file, hence the exact mount. */
LSM_PROBE(inode_setattr, struct dentry *dentry, struct iattr *attr, int ret)
{
    SESSION_OR_ALLOW(ret);
    unsigned int valid = 0;
    RD(valid, attr->ia_valid);
    if (!(valid & CORRAL_ATTR_META))
        return 0;
    if (valid & CORRAL_ATTR_FILE) {
        struct file *f = 0;
        RD(f, attr->ia_file);
        if (f)
            return check_path(s, cgid, &f->f_path, WANT_WRITE, FOP_SETATTR);
    }
    return check_dentry(s, cgid, dentry, FOP_SETATTR);
}

LSM_PROBE(inode_setxattr, struct user_namespace *mnt_userns, struct dentry *dentry,
          const char *name, const void *value, size_t size, int flags, int ret)
{
    SESSION_OR_ALLOW(ret);
    return check_dentry(s, cgid, dentry, FOP_SETXATTR);
}

LSM_PROBE(inode_removexattr, struct user_namespace *mnt_userns, struct dentry *dentry,
          const char *name, int ret)
{
    SESSION_OR_ALLOW(ret);
    return check_dentry(s, cgid, dentry, FOP_REMOVEXATTR);
}

/* ---- AF_UNIX: connect (stream, seqpacket) and datagram sends ----
 * 1. A pathname socket is a file: read and write rules apply to the bound
 *    socket's own path (dentry + mount, the real object, not sun_path).
 *    Default-deny of writing does not apply to a socket unix.allow names.
 * 2. The peer must be the session's: created by a process in the session's
 *    cgroup or below (sk_cgrp_data is set when the socket is made, so a
 *    socketpair and a server the session started are its own), or a
 *    pathname socket unix.allow names (RB_UNIX_ALLOW on the socket inode,
 *    resolved at install, or on its path). Abstract and unbound sockets of
 *    processes outside are refused. */
static __always_inline int check_unix(struct sock *other, u8 op)
{
    u64 cgid = 0;
    u32 lvl = 0;
    struct fsess *s = cur_session_lvl(&cgid, &lvl);
    if (!s || !(s->cfg.flags & SESS_FILE_ENFORCE) || !other)
        return 0;
    u32 zero = 0;
    struct scratch *sc = scratch_map.lookup(&zero);
    if (!sc)
        return -CORRAL_EPERM;
    struct unix_sock *u = (struct unix_sock *)other;
    struct dentry *d = 0;
    struct vfsmount *vm = 0;
    RD(d, u->path.dentry);
    RD(vm, u->path.mnt);
    struct verdict v = {};
    struct cgroup *cg = 0;
    RD(cg, other->sk_cgrp_data.cgroup);
    if (d && vm) {
        if (!decide(sc, s, cgid, d, vm, WANT_READ | WANT_WRITE | WANT_SOCK, &op, &v)) {
            if (sc->leaf_bits & RB_UNIX_ALLOW)
                return 0;
            if (cg_in_session(cg, lvl, cgid))
                return 0;
            v.rule = RULE_FILE_UNIX_FOREIGN;    /* the walk in sc names the socket */
        }
    } else {
        if (cg_in_session(cg, lvl, cgid))
            return 0;
        /* abstract ("@name") or unbound: no path to walk */
        struct unix_address *a = 0;
        RD(a, u->addr);
        sc->pos = 0;
        if (a) {
            put_ch(sc, '@');
            put_kstr(sc, &a->name[0].sun_path[1]);
        } else {
            put_lit(sc, L8('(', 'u', 'n', 'b', 'o', 'u', 'n', 'd'));
            put_ch(sc, ')');
        }
        put_ch(sc, 0);
        sc->text = 1;
        v.rule = RULE_FILE_UNIX_FOREIGN;
    }
    emit(s, cgid, op, v.rule, sc, 1);
    return -CORRAL_EPERM;
}

LSM_PROBE(unix_stream_connect, struct sock *sock, struct sock *other, struct sock *newsk, int ret)
{
    if (ret)
        return ret;
    return check_unix(other, FOP_UNIX_CONNECT);
}

/* datagrams: sendto() with an address, connect() of a datagram socket and
 * every send on a connected one */
LSM_PROBE(unix_may_send, struct socket *sock, struct socket *other, int ret)
{
    if (ret)
        return ret;
    struct sock *osk = 0;
    RD(osk, other->sk);
    return check_unix(osk, FOP_UNIX_SEND);
}

/* ---- signals and ptrace: only within the session ---- */
static __always_inline int check_task(struct task_struct *target, u8 op, int sig, int quiet)
{
    u64 cgid = 0;
    u32 lvl = 0;
    struct fsess *s = cur_session_lvl(&cgid, &lvl);
    if (!s || !(s->cfg.flags & SESS_FILE_ENFORCE) || !target)
        return 0;
    if (cg_in_session(corral_task_cgroup(target), lvl, cgid))
        return 0;
    if (quiet)
        return -CORRAL_EPERM;
    u32 zero = 0;
    struct scratch *sc = scratch_map.lookup(&zero);
    if (!sc)
        return -CORRAL_EPERM;
    task_text(sc, target);
    if (sig >= 0) {
        put_lit(sc, L8(' ', 's', 'i', 'g', 'n', 'a', 'l', ' '));
        put_num(sc, (u32)sig);
    }
    put_ch(sc, 0);
    emit(s, cgid, op, RULE_FILE_TASK_FOREIGN, sc, 1);
    return -CORRAL_EPERM;
}

/* kill(), tgkill(), rt_sigqueueinfo(), pidfd_send_signal(), kill(pid, 0).
 * Signals the kernel sends (SEND_SIG_PRIV; those never reach this hook from
 * check_kill_permission either) and signals sent on behalf of other
 * credentials (cred != NULL: USB async I/O completions, which run in
 * whatever task happens to be current) are not the session's doing. */
LSM_PROBE(task_kill, struct task_struct *p, struct kernel_siginfo *info, int sig,
          const struct cred *cred, int ret)
{
    if (ret)
        return ret;
    if ((unsigned long)info == CORRAL_SEND_SIG_PRIV || cred)
        return 0;
    return check_task(p, FOP_SIGNAL, sig, 0);
}

/* PTRACE_ATTACH/SEIZE, /proc/PID/{mem,environ,fd,cwd,root,exe,maps...},
 * process_vm_readv, pidfd_getfd, kcmp. PTRACE_MODE_NOAUDIT asks are the
 * kernel's own quiet probes (ps reading /proc/PID/stat): refused, no event. */
LSM_PROBE(ptrace_access_check, struct task_struct *child, unsigned int mode, int ret)
{
    if (ret)
        return ret;
    return check_task(child, FOP_PTRACE, -1, mode & CORRAL_PTRACE_MODE_NOAUDIT);
}

/* PTRACE_TRACEME: the parent becomes the tracer. */
LSM_PROBE(ptrace_traceme, struct task_struct *parent, int ret)
{
    if (ret)
        return ret;
    return check_task(parent, FOP_TRACEME, -1, 0);
}
