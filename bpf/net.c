/* corral network enforcement: cgroup sock_addr programs attached once at
 * corral's root cgroup, deciding per session (cgroup id) from LPM tries.
 *
 * Decision order for a session with SESS_NET_ENFORCE:
 *   DNS steering (port 53, when the session has domain rules) -> deny trie
 *   -> allow trie -> default deny.
 * IPv4-mapped IPv6 is judged as IPv4; 0.0.0.0 / :: are judged as loopback,
 * because that is where the kernel delivers them. */
#include "common.h"
#include "ratelimit.h"
#include "pinned.h"

#define IPPROTO_TCP_ 6
#define IPPROTO_UDP_ 17
#define IPPROTO_MPTCP_ 262
#define SOCK_RAW_ 3

struct dns_orig {            /* where a steered DNS socket really wanted to go */
    u32 family;
    u32 addr[4];
    u16 port;                /* network order */
    u16 via;                 /* network order: the resolver port it was sent to instead */
};

BPF_TABLE_PINNED("hash", u64, struct session_cfg, sessions, 4096, PIN(sessions));
BPF_TABLE_PINNED("lpm_trie", struct lpm4_key, struct port_rules, allow4, 65536, PIN(allow4),
                 BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("lpm_trie", struct lpm4_key, struct port_rules, deny4, 65536, PIN(deny4),
                 BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("lpm_trie", struct lpm6_key, struct port_rules, allow6, 65536, PIN(allow6),
                 BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("lpm_trie", struct lpm6_key, struct port_rules, deny6, 65536, PIN(deny6),
                 BPF_F_NO_PREALLOC);
/* Keyed by socket cookie. LRU: entries are never deleted when a socket closes,
 * so the oldest steered sockets make room (a plain hash would fill up and
 * silently stop un-steering replies after 64k lookups). */
BPF_TABLE_PINNED("lru_hash", u64, struct dns_orig, dns_socks, 65536, PIN(dns_socks));
/* Denials and what could not be reported, pinned so what the kernel emits
 * while no daemon reads -- the daemon was killed, or is starting -- waits
 * here for the next daemon:
 *   events     the records themselves (a full buffer counts into `lost`);
 *   lost       events dropped because `events` was full (per cpu, kernel only);
 *   lost_seen  how much of `lost` a daemon has already reported (user space
 *              only), so a restarted daemon reports the rest exactly once. */
BPF_RINGBUF_PINNED(events, EVENTS_RINGBUF_PAGES, PIN(events));
BPF_TABLE_PINNED("percpu_array", int, u64, lost, 1, PIN(lost));
BPF_TABLE_PINNED("array", int, u64, lost_seen, 1, PIN(lost_seen));
/* Which daemon's programs report. A restarted daemon attaches its programs
 * next to the killed one's (both enforce: nothing is ever open), then makes
 * its generation the active one, then detaches the old: at every moment
 * exactly one set emits, so no denial is logged twice. Shared by every build
 * (outside the versioned directory), so the switch is one write also when the
 * new programs run on a new build's maps. */
#ifndef CORRAL_GENERATION
#define CORRAL_GENERATION 0
#endif
BPF_TABLE_PINNED("array", int, u32, active_gen, 1, SHARED_PIN(active_gen));

static __always_inline int reporting(void)
{
    int zero = 0;
    u32 *g = active_gen.lookup(&zero);
    return g && *g == CORRAL_GENERATION;
}

static __always_inline struct event *reserve(struct session_cfg *cfg, u64 *suppressed)
{
    if (!reporting())          /* not the active generation: deny, but silently */
        return 0;
    if (!rate_take(cfg, NET_RATE_PER_SEC, NET_RATE_BURST, suppressed))
        return 0;
    struct event *e = events.ringbuf_reserve(sizeof(struct event));
    if (!e) {
        int zero = 0;
        rate_reserve_failed(cfg, *suppressed, lost.lookup(&zero));
    }
    return e;
}

static __always_inline void fill(struct event *e, u64 cgid, u8 op, u32 rule, u64 suppressed)
{
    u64 pid_tgid = bpf_get_current_pid_tgid();
    e->ts_ns = bpf_ktime_get_ns();
    e->cgid = cgid;
    e->pid = pid_tgid >> 32;
    e->uid = (u32)bpf_get_current_uid_gid();
    bpf_get_current_comm(&e->comm, sizeof(e->comm));
    e->kind = EV_NET;
    e->op = op;
    e->rule = rule;
    e->verdict = 1;
    e->count = suppressed;
}

static __always_inline void emit(u64 cgid, struct session_cfg *cfg, u8 op, u32 family,
                                 const u32 *addr, u16 port, u32 rule)
{
    u64 suppressed = 0;
    struct event *e = reserve(cfg, &suppressed);
    if (!e)
        return;
    fill(e, cgid, op, rule, suppressed);
    e->port = port;
    e->family = family;
    __builtin_memset(e->addr, 0, sizeof(e->addr));
    if (family == AF_INET6)
        __builtin_memcpy(e->addr, addr, 16);
    else
        __builtin_memcpy(e->addr, addr, 4);
    e->path[0] = 0;
    events.ringbuf_submit(e, 0);
}

static __always_inline int port_match(struct port_rules *r, u16 port, u32 *rule)
{
    if (!r)
        return 0;
#pragma unroll
    for (int i = 0; i < MAX_PORT_RANGES; i++) {
        if (i >= r->n)
            break;
        if (port >= r->lo[i] && port <= r->hi[i]) {
            *rule = r->rule[i];
            return 1;
        }
    }
    return 0;
}

/* Returns RULE id and sets *deny. */
static __always_inline u32 decide4(u64 cgid, u32 addr, u16 port, int *deny)
{
    struct lpm4_key k = {.prefixlen = 96, .cg_lo = (u32)cgid, .cg_hi = cgid >> 32, .addr = addr};
    u32 rule = RULE_DEFAULT_DENY;
    if (port_match(deny4.lookup(&k), port, &rule)) {
        *deny = 1;
        return rule;
    }
    if (port_match(allow4.lookup(&k), port, &rule)) {
        *deny = 0;
        return rule;
    }
    *deny = 1;
    return RULE_DEFAULT_DENY;
}

static __always_inline u32 decide6(u64 cgid, const u32 *addr, u16 port, int *deny)
{
    struct lpm6_key k = {.prefixlen = 192, .cg_lo = (u32)cgid, .cg_hi = cgid >> 32};
    k.addr[0] = addr[0]; k.addr[1] = addr[1]; k.addr[2] = addr[2]; k.addr[3] = addr[3];
    u32 rule = RULE_DEFAULT_DENY;
    if (port_match(deny6.lookup(&k), port, &rule)) {
        *deny = 1;
        return rule;
    }
    if (port_match(allow6.lookup(&k), port, &rule)) {
        *deny = 0;
        return rule;
    }
    *deny = 1;
    return RULE_DEFAULT_DENY;
}

#define LOOPBACK4 0x7f000001

static __always_inline int dns_steered(struct session_cfg *cfg, u16 port)
{
    return port == 53 && (cfg->flags & SESS_DNS_STEER) && cfg->dns_port;
}

/* Remember where the socket wanted to go, then send it to the session's
 * resolver: 127.0.0.1:P for IPv4 (and IPv4-mapped), [::1]:P for IPv6. */
static __always_inline int steer_dns4(struct bpf_sock_addr *ctx, struct session_cfg *cfg)
{
    struct dns_orig o = {.family = AF_INET, .port = (u16)ctx->user_port,
                         .via = bpf_htons((u16)cfg->dns_port)};
    o.addr[0] = ctx->user_ip4;
    u64 cookie = bpf_get_socket_cookie(ctx);
    dns_socks.update(&cookie, &o);
    ctx->user_ip4 = bpf_htonl(LOOPBACK4);
    ctx->user_port = bpf_htons((u16)cfg->dns_port);
    return 1;
}

static __always_inline int steer_dns6(struct bpf_sock_addr *ctx, struct session_cfg *cfg,
                                      const u32 *a, int mapped)
{
    struct dns_orig o = {.family = AF_INET6, .port = (u16)ctx->user_port,
                         .via = bpf_htons((u16)cfg->dns_port)};
    o.addr[0] = a[0]; o.addr[1] = a[1]; o.addr[2] = a[2]; o.addr[3] = a[3];
    u64 cookie = bpf_get_socket_cookie(ctx);
    dns_socks.update(&cookie, &o);
    if (mapped) {            /* stay IPv4 inside a dual-stack socket: ::ffff:127.0.0.1 */
        ctx->user_ip6[0] = 0; ctx->user_ip6[1] = 0;
        ctx->user_ip6[2] = bpf_htonl(0xffff);
        ctx->user_ip6[3] = bpf_htonl(LOOPBACK4);
    } else {
        ctx->user_ip6[0] = 0; ctx->user_ip6[1] = 0; ctx->user_ip6[2] = 0;
        ctx->user_ip6[3] = bpf_htonl(1);
    }
    ctx->user_port = bpf_htons((u16)cfg->dns_port);
    return 1;
}

static __always_inline int check4(struct bpf_sock_addr *ctx, u8 op)
{
    u64 cgid = bpf_get_current_cgroup_id();
    struct session_cfg *cfg = sessions.lookup(&cgid);
    if (!cfg || !(cfg->flags & SESS_NET_ENFORCE))
        return 1;
    u32 addr = ctx->user_ip4;
    u16 port = bpf_ntohs((u16)ctx->user_port);
    if (dns_steered(cfg, port))
        return steer_dns4(ctx, cfg);
    if (addr == 0)
        addr = bpf_htonl(0x7f000001);
    int deny = 1;
    u32 rule = decide4(cgid, addr, port, &deny);
    if (!deny)
        return 1;
    emit(cgid, cfg, op, AF_INET, &addr, port, rule);
    return 0;
}

static __always_inline int check6(struct bpf_sock_addr *ctx, u8 op)
{
    u64 cgid = bpf_get_current_cgroup_id();
    struct session_cfg *cfg = sessions.lookup(&cgid);
    if (!cfg || !(cfg->flags & SESS_NET_ENFORCE))
        return 1;
    u32 a[4];
    a[0] = ctx->user_ip6[0]; a[1] = ctx->user_ip6[1];
    a[2] = ctx->user_ip6[2]; a[3] = ctx->user_ip6[3];
    u16 port = bpf_ntohs((u16)ctx->user_port);
    int deny = 1;
    u32 rule;
    if (a[0] == 0 && a[1] == 0 && a[2] == bpf_htonl(0xffff)) {
        /* ::ffff:a.b.c.d is the IPv4 host; judge it so. */
        u32 v4 = a[3];
        if (dns_steered(cfg, port))
            return steer_dns6(ctx, cfg, a, 1);
        if (v4 == 0)
            v4 = bpf_htonl(0x7f000001);
        rule = decide4(cgid, v4, port, &deny);
        if (!deny)
            return 1;
        emit(cgid, cfg, op, AF_INET, &v4, port, rule);
        return 0;
    }
    if (dns_steered(cfg, port))
        return steer_dns6(ctx, cfg, a, 0);
    if ((a[0] | a[1] | a[2] | a[3]) == 0)
        a[3] = bpf_htonl(1);   /* :: connects to ::1 */
    rule = decide6(cgid, a, port, &deny);
    if (!deny)
        return 1;
    emit(cgid, cfg, op, AF_INET6, a, port, rule);
    return 0;
}

int corral_connect4(struct bpf_sock_addr *ctx) { return check4(ctx, OP_CONNECT4); }
int corral_sendmsg4(struct bpf_sock_addr *ctx) { return check4(ctx, OP_SENDMSG4); }
int corral_connect6(struct bpf_sock_addr *ctx) { return check6(ctx, OP_CONNECT6); }
int corral_sendmsg6(struct bpf_sock_addr *ctx) { return check6(ctx, OP_SENDMSG6); }

/* Replies from the session resolver must look as if they came from the server
 * the client asked (glibc drops answers from another source). Only what really
 * comes from the resolver address the socket was steered to is rewritten: a
 * datagram from anywhere else keeps its true source. */
static __always_inline int unsteer4(struct bpf_sock_addr *ctx)
{
    u64 cookie = bpf_get_socket_cookie(ctx);
    struct dns_orig *o = dns_socks.lookup(&cookie);
    if (!o || o->family != AF_INET)
        return 1;
    if (ctx->user_ip4 != bpf_htonl(LOOPBACK4) || (u16)ctx->user_port != o->via)
        return 1;
    ctx->user_ip4 = o->addr[0];
    ctx->user_port = o->port;
    return 1;
}

static __always_inline int unsteer6(struct bpf_sock_addr *ctx)
{
    u64 cookie = bpf_get_socket_cookie(ctx);
    struct dns_orig *o = dns_socks.lookup(&cookie);
    if (!o || (u16)ctx->user_port != o->via)
        return 1;
    u32 a0 = ctx->user_ip6[0], a1 = ctx->user_ip6[1], a2 = ctx->user_ip6[2], a3 = ctx->user_ip6[3];
    int lo6 = (a0 | a1 | a2) == 0 && a3 == bpf_htonl(1);
    int lo4 = (a0 | a1) == 0 && a2 == bpf_htonl(0xffff) && a3 == bpf_htonl(LOOPBACK4);
    if (o->family == AF_INET6 && (lo6 || lo4)) {
        ctx->user_ip6[0] = o->addr[0]; ctx->user_ip6[1] = o->addr[1];
        ctx->user_ip6[2] = o->addr[2]; ctx->user_ip6[3] = o->addr[3];
        ctx->user_port = o->port;
    } else if (o->family == AF_INET && lo4) {
        /* a dual-stack socket's sendto(::ffff:a.b.c.d) goes through the
         * sendmsg4 hook; its replies come back through this one */
        ctx->user_ip6[3] = o->addr[0];
        ctx->user_port = o->port;
    }
    return 1;
}

int corral_recvmsg4(struct bpf_sock_addr *ctx) { return unsteer4(ctx); }
int corral_getpeername4(struct bpf_sock_addr *ctx) { return unsteer4(ctx); }
int corral_recvmsg6(struct bpf_sock_addr *ctx) { return unsteer6(ctx); }
int corral_getpeername6(struct bpf_sock_addr *ctx) { return unsteer6(ctx); }

/* Only TCP, UDP and MPTCP pass the sock_addr hooks above; anything else
 * (raw IP, ICMP "ping" sockets, SCTP...) would be a way around them. */
int corral_sock_create(struct bpf_sock *sk)
{
    u64 cgid = bpf_get_current_cgroup_id();
    struct session_cfg *cfg = sessions.lookup(&cgid);
    if (!cfg || !(cfg->flags & SESS_NET_ENFORCE))
        return 1;
    if (sk->family != AF_INET && sk->family != AF_INET6)
        return 1;
    u32 proto = sk->protocol;
    if (sk->type != SOCK_RAW_ && (proto == 0 || proto == IPPROTO_TCP_ || proto == IPPROTO_UDP_ ||
                                  proto == IPPROTO_MPTCP_))
        return 1;
    u32 zero4[4] = {};
    emit(cgid, cfg, 5 /* OP_SOCKET */, sk->family, zero4, (u16)proto, RULE_DEFAULT_DENY);
    return 0;
}

#ifdef CORRAL_UNIX_HOOKS
/* Pathname Unix sockets (cgroup connect_unix / sendmsg_unix, kernel 6.7+).
 *
 * What enforces is the session's mount view: every socket bound outside the
 * session when it started has a mode-0000 file bound over it
 * (client/mountguard.py), so any spelling of its path fails with EACCES. These
 * hooks only see the address string, before the kernel resolves it, so they
 * cannot decide on the object; what they add is the refusal of the exact
 * absolute path of such a socket with EPERM and a record naming it (the
 * spelling agents use: $TMUX, $SSH_AUTH_SOCK, DOCKER_HOST...). Other spellings
 * hit the mask without a record of their own. Only Unix traffic passes here:
 * TCP and UDP never run this code. */
struct unix_key {
    u64 cgid;
    char path[108];          /* sun_path, zero-padded past the address length */
};
BPF_TABLE_PINNED("hash", struct unix_key, u32, unix_deny, 65536, PIN(unix_deny),
                 BPF_F_NO_PREALLOC);
/* The kernel's context behind struct bpf_sock_addr (include/linux/filter.h,
 * the same since 6.7): the hook's address is uaddr, uaddrlen bytes long. */
struct corral_sock_addr_kern {
    void *sk;
    void *uaddr;
    u64 tmp_reg;
    void *t_ctx;
    u32 uaddrlen;
};
BPF_PERCPU_ARRAY(unix_scratch, struct unix_key, 1);

static __always_inline int check_unix(struct bpf_sock_addr *ctx, u8 op)
{
    u64 cgid = bpf_get_current_cgroup_id();
    struct session_cfg *cfg = sessions.lookup(&cgid);
    if (!cfg)
        return 1;
    struct corral_sock_addr_kern k = {};
    if (bpf_probe_read_kernel(&k, sizeof(k), (void *)ctx))
        return 1;           /* the mask still refuses what it covers */
    int zero = 0;
    struct unix_key *key = unix_scratch.lookup(&zero);
    if (!key)
        return 1;
    u32 n = k.uaddrlen;
    if (n <= 2)
        return 1;           /* unnamed */
    n -= 2;                 /* sun_family */
    key->cgid = cgid;
    if (bpf_probe_read_kernel(key->path, sizeof(key->path), (char *)k.uaddr + 2))
        return 1;
    if (key->path[0] == 0)
        return 1;           /* abstract: Landlock's scope (ABI 6) decides */
    #pragma unroll
    for (int i = 0; i < 108; i++)
        if (i >= n)
            key->path[i] = 0;
    u32 *rule = unix_deny.lookup(key);
    if (!rule)
        return 1;
    u64 suppressed = 0;
    struct event *e = reserve(cfg, &suppressed);
    if (e) {
        fill(e, cgid, op, *rule, suppressed);
        e->port = 0;
        e->family = AF_UNIX;
        __builtin_memset(e->addr, 0, sizeof(e->addr));
        __builtin_memcpy(e->path, key->path, sizeof(key->path));
        e->path[sizeof(key->path)] = 0;
        events.ringbuf_submit(e, 0);
    }
    return 0;
}

int corral_connect_unix(struct bpf_sock_addr *ctx) { return check_unix(ctx, OP_UNIX_CONNECT); }
int corral_sendmsg_unix(struct bpf_sock_addr *ctx) { return check_unix(ctx, OP_UNIX_SENDMSG); }
#endif
