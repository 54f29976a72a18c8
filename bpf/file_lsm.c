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
 */
#ifndef CORRAL_BTF_HEADERS
#include <linux/fs.h>
#include <linux/dcache.h>
#include <linux/mount.h>
#include <linux/path.h>
#include <linux/net.h>
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

/* Leading fields of the kernel's private struct mount (fs/mount.h); these
 * four have had this layout since 3.3. */
struct corral_mount {
    struct hlist_node mnt_hash;
    struct corral_mount *mnt_parent;
    struct dentry *mnt_mountpoint;
    struct vfsmount mnt;
};

/* Per-CPU scratch. Loop state lives here rather than in registers on
 * purpose: map memory is not value-tracked by the verifier, so paths through
 * the bounded loops converge instead of multiplying. */
struct scratch {
    u64 owner;                      /* pid_tgid of the invocation using it */
    u64 n;                          /* levels recorded by walk_up */
    u64 H;                          /* running path-prefix hash */
    u32 comp, rd_deny, rd_rule, has_aw, aw_rule, has_dw, dw_rule, leaf_bits, pos, soft, soft_rule, pad;
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

/* Session of the current task, if any: one lookup per configured level. */
static __always_inline struct fsess *cur_session(u64 *cgid_out)
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
            return s;
        }
    }
    return 0;
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
     * 512-byte scratch so every write has a constant bound. */
    sc->pos = 0;
    sc->pbuf[0] = '/';
    sc->pbuf[1] = 0;
#pragma clang loop unroll(disable)
    for (int k = 0; k < MAX_DEPTH; k++) {
        int i = (int)sc->n - 1 - k;
        if (i < 0 || sc->pos >= 255)
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

/* Full check of one object for the current session. Returns 0 or -EPERM. */
static __always_inline int check(struct fsess *s, u64 cgid, struct dentry *d,
                                 struct vfsmount *vm, int want, u8 op)
{
    u32 zero = 0;
    struct scratch *sc = scratch_map.lookup(&zero);
    struct fconf *c = fconf_map.lookup(&zero);
    if (!sc || !c)
        return -CORRAL_EPERM;
    u64 me = bpf_get_current_pid_tgid();
    sc->owner = me;
    int st = walk_up(sc, d, vm);
    struct verdict v = {};
    if (st == 0)
        return 0;               /* pipe/socket/anon inode: not a path object */
    if (st < 0) {
        v.deny = 1;
        v.rule = RULE_FILE_TOO_DEEP;
        op = FOP_TOO_DEEP;
    } else {
        evaluate(sc, cgid, s, c->seed, want, &v);
    }
    if (sc->owner != me) {
        /* another invocation preempted us on this CPU and reused the
         * scratch area: the walk is unreliable, fail closed */
        v.deny = 1;
        v.rule = RULE_FILE_RACE;
    }
    if (!v.deny)
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

/* AF_UNIX path sockets: connecting counts as writing the socket file (and
 * reading it: a read-denied socket can't be connected either). The check is
 * on the bound socket's own path (dentry + mount), not on sun_path. */
static __always_inline int check_unix(struct sock *other)
{
    u64 cgid = 0;
    struct fsess *s = cur_session(&cgid);
    if (!s || !(s->cfg.flags & SESS_FILE_ENFORCE))
        return 0;
    struct unix_sock *u = (struct unix_sock *)other;
    struct dentry *d = 0;
    struct vfsmount *vm = 0;
    RD(d, u->path.dentry);
    RD(vm, u->path.mnt);
    if (!d || !vm)
        return 0;   /* abstract or unbound: not a filesystem object */
    return check(s, cgid, d, vm, WANT_READ | WANT_WRITE, FOP_UNIX_CONNECT);
}

LSM_PROBE(unix_stream_connect, struct sock *sock, struct sock *other, struct sock *newsk, int ret)
{
    if (ret)
        return ret;
    return check_unix(other);
}

LSM_PROBE(unix_may_send, struct socket *sock, struct socket *other, int ret)
{
    if (ret)
        return ret;
    struct sock *osk = 0;
    RD(osk, other->sk);
    if (!osk)
        return 0;
    return check_unix(osk);
}
