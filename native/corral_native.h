/* corral native helpers: thin, generic wrappers around kernel interfaces that
 * Python cannot reach safely (Landlock syscalls, capabilities, prctl,
 * close_range) plus the libseccomp macros cffi cannot express.
 *
 * Every function returns >= 0 on success and -errno on failure; none of them
 * print or abort. Policy (which syscalls, which paths) lives in Python.
 * Only what corral's Python code calls is here: an export nothing calls is
 * deleted, not kept "for later".
 */
#ifndef CORRAL_NATIVE_H
#define CORRAL_NATIVE_H

#include <stdint.h>

/* --- libseccomp glue ---------------------------------------------------- */
uint32_t corral_scmp_act_errno(int err);
uint32_t corral_scmp_act_allow(void);
uint32_t corral_scmp_act_kill_process(void);

/* --- Landlock ----------------------------------------------------------- */
int corral_landlock_abi(void);
int corral_landlock_create_ruleset(uint64_t handled_fs, uint64_t handled_net,
                                   uint64_t scoped, int abi);
int corral_landlock_add_path_rule(int ruleset_fd, uint64_t allowed, int parent_fd);
int corral_landlock_restrict_self(int ruleset_fd, uint32_t flags);

/* --- process hardening -------------------------------------------------- */
int corral_set_no_new_privs(void);
int corral_get_no_new_privs(void);
int corral_close_range(unsigned int first, unsigned int last);
int corral_drop_all_caps(int last_cap);      /* last_cap < 0: the kernel's */
int corral_set_securebits_noroot(void);
int corral_caps_effective_is_zero(void);

#endif
