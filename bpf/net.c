/* corral network enforcement: cgroup sock_addr programs attached once at
 * corral's root cgroup, deciding per session (cgroup id) from LPM tries.
 *
 * Decision order for a session with SESS_NET_ENFORCE:
 *   DNS steering (port 53, when the session has domain rules) -> deny trie
 *   -> allow trie -> default deny.
 * IPv4-mapped IPv6 is judged as IPv4; 0.0.0.0 / :: are judged as loopback,
 * because that is where the kernel delivers them.
 *
 * With CORRAL_OWN_LOOPBACK (net.py sets it when this kernel's verifier takes
 * the socket lookup in these programs), a loopback destination the rules
 * leave at default deny is allowed when the socket it would reach belongs to
 * the caller's session (own_server4/own_server6 below). */
#if defined(CORRAL_OWN_LOOPBACK) && !defined(CORRAL_BTF_HEADERS)
#include <linux/cgroup-defs.h>
#include <linux/kernfs.h>
#include <net/sock.h>
#endif
#include "common.h"
#include "ratelimit.h"
#include "pinned.h"

#define IPPROTO_TCP_ 6
#define IPPROTO_UDP_ 17
#define IPPROTO_MPTCP_ 262
#define SOCK_STREAM_ 1
#define SOCK_DGRAM_ 2
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

/* Every refusal per session, records or not (they are rate-limited, and those in
 * the ring buffer may not be read yet when the session ends): the count `corral
 * run` prints when its command exits is taken from here. */
BPF_TABLE_PINNED("hash", u64, u64, denied, 4096, PIN(denied));

static __always_inline void count_denial(u64 cgid)
{
    u64 one = 1;
    u64 *n = denied.lookup(&cgid);
    if (n) {
        __sync_fetch_and_add(n, 1);
        return;
    }
    if (denied.insert(&cgid, &one) != 0) {      /* BPF_NOEXIST: another CPU made it first */
        n = denied.lookup(&cgid);
        if (n)
            __sync_fetch_and_add(n, 1);
    }
}

static __always_inline struct event *reserve(struct session_cfg *cfg, u64 cgid,
                                             u64 *suppressed)
{
    if (!reporting())          /* not the active generation: deny, but silently */
        return 0;
    count_denial(cgid);
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
    struct event *e = reserve(cfg, cgid, &suppressed);
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

#ifdef CORRAL_OWN_LOOPBACK
/* ---- the session's own loopback servers (issue 13) ----
 *
 * Only on the default-deny path to a loopback destination: the kernel's own
 * socket lookup for the destination (bpf_sk_lookup_tcp for a stream socket,
 * bpf_sk_lookup_udp for a datagram one; the caller's network namespace) finds
 * the socket this connect or datagram would reach, and it is the session's
 * when the cgroup it was created in (sk_cgrp_data, what bpf_sk_cgroup_id
 * reads; that helper is not offered to these programs, 6.1 to 6.18) is the
 * caller's session cgroup or below it.
 *
 * The lookup runs without the packet, so where the real delivery could pick
 * another socket than the lookup did, the found one does not count:
 *   - SO_REUSEPORT on it (TCP or UDP): a group chooses by a hash of the source
 *     port the connect has not got yet (or by the group's BPF program), and a
 *     group of the same uid may mix owners;
 *   - SO_REUSEADDR on a UDP socket: other sockets may share the address and
 *     port, and which one a datagram reaches depends on the receiving CPU.
 * Without those a TCP listener or UDP socket holds its address and port alone
 * (bind() refuses anyone else, device-bound or wildcard), so what the lookup
 * found is what the kernel delivers to. A listener bound to 0.0.0.0 or ::
 * answers for 127.0.0.1 in the lookup as in the kernel. An explicit deny rule
 * still wins: this replaces only RULE_DEFAULT_DENY. Nothing is recorded for
 * what this allows.
 *
 * What stays open: the decision is made when the connect or datagram is; a
 * UDP socket connect()ed to the session's server sends later datagrams with
 * no hook, so if the server goes and something outside the session binds the
 * port, they reach that (as a host NAT rule rewriting a loopback destination
 * is invisible to these hooks, for rules and lookups alike). */
#define OWN_CG_WALK 4      /* cgroup levels climbed from the socket's cgroup */
#define SKC_HEAD 24        /* bytes of sock_common read: through the reuse bitfields */
#define OFF(type, field) __builtin_offsetof(type, field)
_Static_assert(OFF(struct sock_common, skc_bound_dev_if) <= SKC_HEAD,
               "sock_common: the reuse bits moved");
#define KRD(dst, addr) bpf_probe_read_kernel(&(dst), sizeof(dst), (void *)(addr))

/* Is the socket at kernel address p the session's (cgroup cgid or below)? */
static __always_inline int sk_in_session(u64 p, u64 cgid, int udp)
{
    u8 head[SKC_HEAD] __attribute__((aligned(8)));
    if (bpf_probe_read_kernel(head, sizeof(head), (void *)p))
        return 0;
    struct sock_common *c = (struct sock_common *)head;
    if (c->skc_reuseport || (udp && c->skc_reuse))
        return 0;
    u64 cg = 0;
    if (KRD(cg, p + OFF(struct sock, sk_cgrp_data) + OFF(struct sock_cgroup_data, cgroup)))
        return 0;
#pragma unroll
    for (int i = 0; i < OWN_CG_WALK; i++) {
        u64 kn = 0, id = 0, parent = 0;
        if (!cg || KRD(kn, cg + OFF(struct cgroup, kn)) || !kn)
            return 0;
        if (KRD(id, kn + OFF(struct kernfs_node, id)))
            return 0;
        if (id == cgid)
            return 1;
        if (KRD(parent, cg + OFF(struct cgroup, self) +
                        OFF(struct cgroup_subsys_state, parent)) || !parent)
            return 0;
        cg = parent - OFF(struct cgroup, self);
    }
    return 0;
}

/* Look the destination up as the kernel will deliver to it; 1 if the session owns it. */
static __always_inline int own_lookup(struct bpf_sock_addr *ctx, u64 cgid,
                                      struct bpf_sock_tuple *t, u32 len)
{
    u32 type = ctx->type;
    struct bpf_sock *sk;
    if (type == SOCK_STREAM_)
        sk = bpf_sk_lookup_tcp(ctx, t, len, BPF_F_CURRENT_NETNS, 0);
    else if (type == SOCK_DGRAM_)
        sk = bpf_sk_lookup_udp(ctx, t, len, BPF_F_CURRENT_NETNS, 0);
    else
        return 0;
    if (!sk)
        return 0;
    /* The verifier lets no arithmetic onto a socket pointer: its value, as a
     * number, is copied through the stack for the reads above. */
    struct bpf_sock *slot = sk;
    u64 p = 0;
    int own = 0;
    if (!bpf_probe_read_kernel(&p, sizeof(p), &slot) && p)
        own = sk_in_session(p, cgid, type == SOCK_DGRAM_);
    bpf_sk_release(sk);
    return own;
}

static __always_inline int is_loopback4(u32 addr)      /* network order */
{
    return (bpf_ntohl(addr) >> 24) == 127;
}

/* A field of the caller's struct bpf_sock, loaded from the socket pointer
 * itself: clang likes to fold neighbouring fields into one base address plus
 * offsets, arithmetic the verifier refuses on a socket pointer. */
#define SK_LD(sk, field) ({ u32 _v; \
    asm volatile("%0 = *(u32 *)(%1 + %2)" : "=r"(_v) \
                 : "r"(sk), "i"(__builtin_offsetof(struct bpf_sock, field))); _v; })

/* The source of the tuple is the caller's socket's own address and port
 * (bound, or autobound by sendmsg), an unbound address being the one the
 * kernel picks towards loopback (127.0.0.1, ::1): a connected UDP socket of
 * the session (a client waiting for its server's reply) matches only so.
 * Whatever the source, the destination's socket holds its port alone (see
 * above): the source decides only whether it is found.
 *
 * addr: network order, 0.0.0.0 already made 127.0.0.1 (also for ::ffff:a.b.c.d) */
static __always_inline int own_server4(struct bpf_sock_addr *ctx, u64 cgid, u32 addr, u16 port)
{
    if (!is_loopback4(addr))
        return 0;
    struct bpf_sock *me = ctx->sk;
    u32 fam = SK_LD(me, family), s4 = SK_LD(me, src_ip4), sport = SK_LD(me, src_port);
    u32 m0 = SK_LD(me, src_ip6[0]), m1 = SK_LD(me, src_ip6[1]);
    u32 m2 = SK_LD(me, src_ip6[2]), m3 = SK_LD(me, src_ip6[3]);
    u32 src = s4;
    if (fam != AF_INET)                 /* a dual-stack socket: bound to ::ffff:a.b.c.d? */
        src = ((m0 | m1) == 0 && m2 == bpf_htonl(0xffff)) ? m3 : 0;
    struct bpf_sock_tuple t = {};
    t.ipv4.saddr = src ? src : bpf_htonl(LOOPBACK4);
    t.ipv4.sport = bpf_htons((u16)sport);
    t.ipv4.daddr = addr;
    t.ipv4.dport = bpf_htons(port);
    return own_lookup(ctx, cgid, &t, sizeof(t.ipv4));
}

/* a: network order, :: already made ::1 */
static __always_inline int own_server6(struct bpf_sock_addr *ctx, u64 cgid, const u32 *a, u16 port)
{
    if ((a[0] | a[1] | a[2]) != 0 || a[3] != bpf_htonl(1))
        return 0;
    struct bpf_sock *me = ctx->sk;
    struct bpf_sock_tuple t = {};
    u32 s0 = SK_LD(me, src_ip6[0]), s1 = SK_LD(me, src_ip6[1]);
    u32 s2 = SK_LD(me, src_ip6[2]), s3 = SK_LD(me, src_ip6[3]);
    if ((s0 | s1 | s2 | s3) == 0)
        s3 = bpf_htonl(1);
    t.ipv6.saddr[0] = s0; t.ipv6.saddr[1] = s1; t.ipv6.saddr[2] = s2; t.ipv6.saddr[3] = s3;
    t.ipv6.sport = bpf_htons((u16)me->src_port);
    t.ipv6.daddr[3] = a[3];
    t.ipv6.dport = bpf_htons(port);
    return own_lookup(ctx, cgid, &t, sizeof(t.ipv6));
}
#define OWN_SERVER4(ctx, cgid, rule, addr, port) \
    ((rule) == RULE_DEFAULT_DENY && own_server4(ctx, cgid, addr, port))
#define OWN_SERVER6(ctx, cgid, rule, a, port) \
    ((rule) == RULE_DEFAULT_DENY && own_server6(ctx, cgid, a, port))
#else
#define OWN_SERVER4(ctx, cgid, rule, addr, port) 0
#define OWN_SERVER6(ctx, cgid, rule, a, port) 0
#endif

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
    if (!deny || OWN_SERVER4(ctx, cgid, rule, addr, port))
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
        if (!deny || OWN_SERVER4(ctx, cgid, rule, v4, port))
            return 1;
        emit(cgid, cfg, op, AF_INET, &v4, port, rule);
        return 0;
    }
    if (dns_steered(cfg, port))
        return steer_dns6(ctx, cfg, a, 0);
    if ((a[0] | a[1] | a[2] | a[3]) == 0)
        a[3] = bpf_htonl(1);   /* :: connects to ::1 */
    rule = decide6(cgid, a, port, &deny);
    if (!deny || OWN_SERVER6(ctx, cgid, rule, a, port))
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
    struct event *e = reserve(cfg, cgid, &suppressed);
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
