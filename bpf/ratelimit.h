/* The one event rate limiter, used by every corral program: a token bucket
 * per session (in its struct session_cfg) so a looping agent cannot flood the
 * log. What it suppresses is counted and rides, as event.count, on the next
 * event that gets through; what a full ring buffer drops is counted in the
 * program's pinned `lost` array. Nothing is unaccounted. */
#ifndef CORRAL_RATELIMIT_H
#define CORRAL_RATELIMIT_H

/* 1: the caller may emit, with *suppressed (already taken out of the bucket's
 * count) in event.count; 0: suppressed and counted. */
static __always_inline int rate_take(struct session_cfg *cfg, u64 per_sec, u64 burst,
                                     u64 *suppressed)
{
    u64 interval = 1000000000ULL / per_sec;
    u64 now = bpf_ktime_get_ns();
    u64 earned = (now - cfg->rate_last_ns) / interval;
    u64 tokens = cfg->rate_tokens + earned;
    /* Advance by whole tokens only, so partial intervals are not thrown away. */
    cfg->rate_last_ns = tokens > burst ? now : cfg->rate_last_ns + earned * interval;
    if (tokens > burst)
        tokens = burst;
    if (tokens == 0) {
        cfg->rate_tokens = 0;
        __sync_fetch_and_add(&cfg->rate_suppressed, 1);
        return 0;
    }
    cfg->rate_tokens = tokens - 1;
    *suppressed = cfg->rate_suppressed;
    if (*suppressed)
        __sync_fetch_and_add(&cfg->rate_suppressed, -*suppressed);
    return 1;
}

/* The ring buffer was full: count the event as lost (`lost_slot`: the
 * program's per-CPU `lost` entry) and give the suppressed count back to the
 * bucket, where it rides on the next event. */
static __always_inline void rate_reserve_failed(struct session_cfg *cfg, u64 suppressed,
                                                u64 *lost_slot)
{
    if (lost_slot)
        *lost_slot += 1;
    if (suppressed)
        __sync_fetch_and_add(&cfg->rate_suppressed, suppressed);
}

#endif
