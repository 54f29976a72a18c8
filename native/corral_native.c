/* corral native helpers — see corral_native.h. Compiled into corral._native by
 * cffi (native/build_native.py), linked against libseccomp. */
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <linux/capability.h>
#include <linux/securebits.h>
#include <seccomp.h>

#include "corral_native.h"

/* ------------------------------------------------------------------ */
/* libseccomp glue: macros cffi cannot call                            */
/* ------------------------------------------------------------------ */
uint32_t corral_scmp_act_errno(int err) { return SCMP_ACT_ERRNO(err); }
uint32_t corral_scmp_act_allow(void) { return SCMP_ACT_ALLOW; }
uint32_t corral_scmp_act_kill_process(void) { return SCMP_ACT_KILL_PROCESS; }

/* ------------------------------------------------------------------ */
/* Landlock (syscalls 444-446 on every arch that has them)            */
/* ------------------------------------------------------------------ */
#ifndef __NR_landlock_create_ruleset
#define __NR_landlock_create_ruleset 444
#endif
#ifndef __NR_landlock_add_rule
#define __NR_landlock_add_rule 445
#endif
#ifndef __NR_landlock_restrict_self
#define __NR_landlock_restrict_self 446
#endif
#define CORRAL_LL_CREATE_RULESET_VERSION (1U << 0)
#define CORRAL_LL_RULE_PATH_BENEATH 1

/* Our own copies of the UAPI structs: the distro header may predate the
 * fields we need (handled_access_net: ABI 4, scoped: ABI 6). */
struct corral_ll_ruleset_attr {
    uint64_t handled_access_fs;
    uint64_t handled_access_net;
    uint64_t scoped;
};

struct corral_ll_path_beneath_attr {
    uint64_t allowed_access;
    int32_t parent_fd;
} __attribute__((packed));

int corral_landlock_abi(void)
{
    long r = syscall(__NR_landlock_create_ruleset, NULL, 0,
                     CORRAL_LL_CREATE_RULESET_VERSION);
    return r < 0 ? -errno : (int)r;
}

int corral_landlock_create_ruleset(uint64_t handled_fs, uint64_t handled_net,
                                   uint64_t scoped, int abi)
{
    struct corral_ll_ruleset_attr attr;
    size_t size;

    memset(&attr, 0, sizeof(attr));
    attr.handled_access_fs = handled_fs;
    attr.handled_access_net = handled_net;
    attr.scoped = scoped;
    /* Pass only the struct prefix the running ABI understands. */
    if (abi >= 6)
        size = sizeof(attr);
    else if (abi >= 4)
        size = offsetof(struct corral_ll_ruleset_attr, scoped);
    else
        size = offsetof(struct corral_ll_ruleset_attr, handled_access_net);
    long r = syscall(__NR_landlock_create_ruleset, &attr, size, 0);
    return r < 0 ? -errno : (int)r;
}

int corral_landlock_add_path_rule(int ruleset_fd, uint64_t allowed, int parent_fd)
{
    struct corral_ll_path_beneath_attr attr;
    attr.allowed_access = allowed;
    attr.parent_fd = parent_fd;
    long r = syscall(__NR_landlock_add_rule, ruleset_fd,
                     CORRAL_LL_RULE_PATH_BENEATH, &attr, 0);
    return r < 0 ? -errno : 0;
}

int corral_landlock_restrict_self(int ruleset_fd, uint32_t flags)
{
    long r = syscall(__NR_landlock_restrict_self, ruleset_fd, flags);
    return r < 0 ? -errno : 0;
}

/* ------------------------------------------------------------------ */
/* process hardening                                                  */
/* ------------------------------------------------------------------ */
int corral_set_no_new_privs(void)
{
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        return -errno;
    return 0;
}

int corral_get_no_new_privs(void)
{
    int r = prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0);
    return r < 0 ? -errno : r;
}

#ifndef __NR_close_range
#define __NR_close_range 436
#endif

int corral_close_range(unsigned int first, unsigned int last)
{
    if (syscall(__NR_close_range, first, last, 0) != 0)
        return -errno;
    return 0;
}

/* The highest capability number this kernel knows (drop_all_caps' default). */
static int corral_last_cap(void)
{
    FILE *f = fopen("/proc/sys/kernel/cap_last_cap", "re");
    int v = -1;
    if (f) {
        if (fscanf(f, "%d", &v) != 1)
            v = -1;
        fclose(f);
    }
    if (v < 0) {
        /* probe the bounding set: PR_CAPBSET_READ fails with EINVAL past the end */
        for (v = 0; v < 64; v++)
            if (prctl(PR_CAPBSET_READ, v, 0, 0, 0) < 0)
                break;
        v--;
    }
    return v;
}

/* Bit numbers (SECURE_*), not masks (SECBIT_* are 1 << SECURE_*). */
#ifndef SECURE_NO_CAP_AMBIENT_RAISE
#define SECURE_NO_CAP_AMBIENT_RAISE 6
#define SECURE_NO_CAP_AMBIENT_RAISE_LOCKED 7
#endif

int corral_set_securebits_noroot(void)
{
    unsigned long bits =
        (1UL << SECURE_NOROOT) | (1UL << SECURE_NOROOT_LOCKED) |
        (1UL << SECURE_NO_SETUID_FIXUP) | (1UL << SECURE_NO_SETUID_FIXUP_LOCKED) |
        (1UL << SECURE_KEEP_CAPS_LOCKED) |
        (1UL << SECURE_NO_CAP_AMBIENT_RAISE) | (1UL << SECURE_NO_CAP_AMBIENT_RAISE_LOCKED);
    if (prctl(PR_SET_SECUREBITS, bits, 0, 0, 0) != 0)
        return -errno;
    return 0;
}

/* Drop every capability from every set; returns 1, or 0 when the bounding
 * set was left alone for lack of CAP_SETPCAP. Order matters: the bounding set can
 * only be shrunk while CAP_SETPCAP is still effective, so capset() is last. */
int corral_drop_all_caps(int last_cap)
{
    struct __user_cap_header_struct hdr;
    struct __user_cap_data_struct data[2];
    int c;

    int bounding_dropped = 1;

    if (last_cap < 0)
        last_cap = corral_last_cap();
    /* Shrinking the bounding set needs CAP_SETPCAP. An unprivileged caller
     * without it cannot gain anything through the bounding set anyway once
     * no_new_privs is set (no setuid / file-capability gains on exec), so
     * that case is reported (return 0) rather than treated as failure. */
    if (prctl(PR_CAPBSET_READ, CAP_SETPCAP, 0, 0, 0) < 0)
        return -errno;
    memset(&hdr, 0, sizeof(hdr));
    hdr.version = _LINUX_CAPABILITY_VERSION_3;
    if (syscall(SYS_capget, &hdr, data) != 0)
        return -errno;
    if (!(data[0].effective & (1U << CAP_SETPCAP)))
        bounding_dropped = 0;
    for (c = 0; bounding_dropped && c <= last_cap; c++) {
        if (prctl(PR_CAPBSET_DROP, c, 0, 0, 0) != 0 && errno != EINVAL)
            return -errno;
    }
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL)
        return -errno;
    memset(&hdr, 0, sizeof(hdr));
    memset(data, 0, sizeof(data));
    hdr.version = _LINUX_CAPABILITY_VERSION_3;
    hdr.pid = 0;
    if (syscall(SYS_capset, &hdr, data) != 0)
        return -errno;
    return bounding_dropped;
}

/* 1 when the effective, permitted and inheritable sets are all empty. */
int corral_caps_effective_is_zero(void)
{
    struct __user_cap_header_struct hdr;
    struct __user_cap_data_struct data[2];
    memset(&hdr, 0, sizeof(hdr));
    hdr.version = _LINUX_CAPABILITY_VERSION_3;
    if (syscall(SYS_capget, &hdr, data) != 0)
        return -errno;
    return (data[0].effective | data[1].effective | data[0].permitted |
            data[1].permitted | data[0].inheritable | data[1].inheritable) == 0;
}
