/* corral: the native launcher, the installed `corral` command.
 *
 * `corral exec [-v] [-q] SESSION [--] CMD...` is on the path of every shell
 * command an agent runs, and `corral run` on every agent's start (its common
 * form: do_run, server/runprep.py), so they are done here without Python: one request to
 * corrald (exec_prepare), which answers with what it prepared for the
 * session (its cgroup, Landlock ruleset and mount namespace as descriptors,
 * its seccomp programs as BPF, the environment names to remove); a child made
 * directly in the session's cgroup (clone3 CLONE_INTO_CGROUP: no migration
 * wait) enters the mount view, confines itself (descriptors, capabilities,
 * no_new_privs, Landlock, seccomp: confine.py's order), reports from inside
 * (report_exec: corrald checks it against /proc) and execs. The parent waits
 * outside with `corral run`'s semantics: SIGINT/SIGQUIT ignored, SIGTERM and
 * SIGHUP forwarded, the command's exit status or signal passed on.
 *
 * Not root, the child cannot be created in the cgroup (that needs write access
 * to the hierarchy root's cgroup.procs): corrald moves it in (join_child)
 * while it builds its view in a user namespace of its own (`run`) or enters
 * the user namespace of the session's view (`exec`).
 *
 * Everything else, and whatever this cannot serve (an option corrald says the
 * Python CLI must apply, another mount namespace, a
 * session without prepared state), is handed over: exec of the Python CLI
 * (CORRAL_PY, set at build time) with the same arguments.
 * Nothing is ever started half-confined: every failure ends the child. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <linux/filter.h>
#include <linux/sched.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "corral_native.h"
#include "mpack.h"

#define END_TIMEOUT_MS 5000     /* supervise.py END_TIMEOUT: for corrald to end a session */

#ifndef CORRAL_PY
#define CORRAL_PY "corral-py"
#endif
#ifndef CLONE_INTO_CGROUP
#define CLONE_INTO_CGROUP 0x200000000ULL
#endif
#ifndef __NR_clone3
#define __NR_clone3 435
#endif
#ifndef __NR_pidfd_send_signal
#define __NR_pidfd_send_signal 424
#endif

#define MAX_FRAME (1u << 20)
#define MAX_CMD_REPORTED 16

extern char **environ;
static char **orig_argv;

static void handover(void)
{
    orig_argv[0] = CORRAL_PY;
    execv(CORRAL_PY, orig_argv);
    fprintf(stderr, "corral: cannot run the Python CLI %s: %s (reinstall: make venv)\n",
            CORRAL_PY, strerror(errno));
    exit(127);
}

__attribute__((noreturn, format(printf, 2, 3)))
static void die(int code, const char *fmt, ...)
{
    va_list ap;
    fputs("corral: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    _exit(code);
}

/* -- talking to corrald ----------------------------------------------------- */
static const char *socket_path(void)
{
    static char buf[PATH_MAX];
    const char *s = getenv("CORRAL_SOCKET");
    if (s && *s)
        return s;
    const char *run = getenv("CORRAL_RUN_DIR");
    char def[PATH_MAX];
    if (!run || !*run) {
        const char *inst = getenv("CORRAL_INSTANCE");
        snprintf(def, sizeof def, "/run/%s", inst && *inst ? inst : "corral");
        run = def;
    }
    /* config.py: "<parent of RUN_DIR>/<name of RUN_DIR>.sock" */
    size_t n = strlen(run);
    while (n > 1 && run[n - 1] == '/')
        n--;
    snprintf(buf, sizeof buf, "%.*s.sock", (int)n, run);
    return buf;
}

/* -1 (errno set) if corrald cannot be reached */
static int try_connect_daemon(void)
{
    const char *path = socket_path();
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof a.sun_path)
        die(1, "socket path too long: %s", path);
    strcpy(a.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

static int connect_daemon(void)
{
    int fd = try_connect_daemon();
    if (fd < 0)
        die(1, "corrald is not running (%s: %s); start it with `systemctl start corrald` or "
            "`make demo` (or run `corrald` as root)", socket_path(), strerror(errno));
    return fd;
}

/* 0, or -1 with errno (a short write as EPIPE) */
static int try_send_frame(int fd, struct mp_buf *b)
{
    if (b->err) {
        errno = EMSGSIZE;
        return -1;
    }
    unsigned char hdr[4] = {b->len >> 24, b->len >> 16, b->len >> 8, b->len};
    struct iovec iov[2] = {{hdr, 4}, {b->p, b->len}};
    struct msghdr m = {.msg_iov = iov, .msg_iovlen = 2};
    ssize_t n = sendmsg(fd, &m, MSG_NOSIGNAL);
    if (n == (ssize_t)(4 + b->len))
        return 0;
    if (n >= 0)
        errno = EPIPE;
    return -1;
}

static void send_frame(int fd, struct mp_buf *b)
{
    if (try_send_frame(fd, b) != 0)
        die(1, "cannot send to corrald: %s", strerror(errno));
}

/* One answer frame; descriptors that came with it (SCM_RIGHTS) into fds. */
static struct mp_node *recv_frame(int fd, int *fds, int maxfds, int *nfds)
{
    /* Fresh each time: the parsed nodes of an answer point into its buffer. */
    unsigned char *buf = malloc(MAX_FRAME + 4);
    size_t have = 0, want = 4;
    if (!buf)
        die(1, "out of memory");
    *nfds = 0;
    while (have < want) {
        char ctl[CMSG_SPACE(8 * sizeof(int))];
        struct iovec iov = {buf + have, want - have};
        struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl,
                           .msg_controllen = sizeof ctl};
        ssize_t n = recvmsg(fd, &m, MSG_CMSG_CLOEXEC);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            die(1, "corrald closed the connection%s%s", n < 0 ? ": " : "",
                n < 0 ? strerror(errno) : "");
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
            if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
                continue;
            int k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (int i = 0; i < k; i++) {
                int got;
                memcpy(&got, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
                if (*nfds < maxfds)
                    fds[(*nfds)++] = got;
                else
                    close(got);
            }
        }
        have += n;
        if (have == 4 && want == 4) {
            want = 4 + ((size_t)buf[0] << 24 | buf[1] << 16 | buf[2] << 8 | buf[3]);
            if (want > MAX_FRAME + 4)
                die(1, "corrald sent an oversized frame");
        }
    }
    struct mp_node *msg = mp_parse(buf + 4, want - 4);
    if (!msg || msg->type != MP_MAP)
        die(1, "corrald sent a frame this launcher cannot read");
    return msg;
}

/* The result of an answer; an error is printed (or handed over) here. */
static const struct mp_node *result_of(const struct mp_node *msg, const char *what, int handover_ok)
{
    const struct mp_node *ok = mp_get(msg, "ok");
    if (ok && ok->type == MP_BOOL && ok->i)
        return mp_get(msg, "result");
    const struct mp_node *err = mp_get(msg, "error");
    char *code = mp_cstr(mp_get(err, "code")), *text = mp_cstr(mp_get(err, "message"));
    /* unsupported: corrald says the Python CLI must serve this; unknown_op: a
     * corrald older than this launcher. */
    if (handover_ok && code && (!strcmp(code, "unsupported") || !strcmp(code, "unknown_op")))
        handover();
    die(1, "%s: %s", what, text ? text : "unknown error");
}

/* -- the command's side ------------------------------------------------------ */
struct plan {
    const char *sid;
    const struct mp_node *res;
    int cgroup_fd, ruleset_fd, mntns_fd, userns_fd;
    int landlock_flags;
    char **cmd;
    int run;                    /* corral run: a new view (mount_ops), report_run, end */
    int quiet;
    int keep_running;           /* corral run --keep-running: the session outlives it */
    int join;                   /* not root: corrald moves the child in (join_child) */
    int go_fd;                  /* the child's end: a byte once it is in the session */
};

static void set_env(const struct mp_node *res)
{
    const struct mp_node *rm = mp_get(res, "env_remove"), *set = mp_get(res, "env_set");
    for (uint32_t i = 0; rm && rm->type == MP_ARR && i < rm->len; i++) {
        char *name = mp_cstr(&rm->items[i]);
        if (name)
            unsetenv(name);
    }
    for (uint32_t i = 0; set && set->type == MP_MAP && i < set->len; i++) {
        char *k = mp_cstr(&set->items[2 * i]), *v = mp_cstr(&set->items[2 * i + 1]);
        if (k && v && setenv(k, v, 1) != 0)
            die(1, "setenv %s: %s", k, strerror(errno));
    }
    signal(SIGPIPE, SIG_DFL);
    signal(SIGXFSZ, SIG_DFL);
}

static __attribute__((noreturn)) void run_cmd(char **cmd)
{
    execvp(cmd[0], cmd);
    die(127, "%s: %s", cmd[0], strerror(errno));
}

static void load_seccomp(const struct mp_node *progs)
{
    if (!progs || progs->type != MP_ARR || progs->len == 0)
        die(1, "confinement failed, command not started: corrald sent no seccomp program");
    for (uint32_t i = 0; i < progs->len; i++) {
        const struct mp_node *p = &progs->items[i];
        if (p->type != MP_ARR || p->len != 2 || p->items[0].type != MP_INT ||
            p->items[1].type != MP_BIN || p->items[1].len % sizeof(struct sock_filter) ||
            p->items[1].len == 0)
            die(1, "confinement failed, command not started: a malformed seccomp program");
        /* Copied: the frame's bytes need not be aligned for struct sock_filter. */
        struct sock_filter *f = malloc(p->items[1].len);
        if (!f)
            die(1, "out of memory");
        memcpy(f, p->items[1].s, p->items[1].len);
        struct sock_fprog prog = {.len = p->items[1].len / sizeof(struct sock_filter), .filter = f};
        if (syscall(__NR_seccomp, SECCOMP_SET_MODE_FILTER, (unsigned)p->items[0].i, &prog) != 0)
            die(1, "confinement failed, command not started: seccomp: %s", strerror(errno));
    }
}

#ifndef __NR_mount_setattr
#define __NR_mount_setattr 442
#endif
struct corral_mount_attr {
    uint64_t attr_set, attr_clr, propagation, userns_fd;
};

static const char *opt_str(const struct mp_node *n)
{
    char *v = mp_cstr(n);
    return v && *v ? v : NULL;
}

/* corral run's view: a new mount namespace, then the operations corrald planned
 * (server/runprep.py view_ops: mountguard.apply's sequence), then our cwd again
 * (it still points into the old mounts). */
static void write_file(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    ssize_t n = fd >= 0 ? write(fd, text, strlen(text)) : -1;
    if (n != (ssize_t)strlen(text))
        die(1, "confinement failed, command not started: %s: %s", path, strerror(errno));
    close(fd);
}

/* Not root: the view is built in a user namespace of our own that maps only
 * our uid and gid (mountguard._enter_namespace, the Python CLI's way). */
static void enter_user_namespace(void)
{
    char map[64];
    uid_t uid = getuid();
    gid_t gid = getgid();
    if (unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0)
        die(1, "confinement failed, command not started: unshare(user+mount namespace): %s "
            "(unprivileged user namespaces are off: run as root, or allow them)", strerror(errno));
    write_file("/proc/self/setgroups", "deny");
    snprintf(map, sizeof map, "%u %u 1", (unsigned)uid, (unsigned)uid);
    write_file("/proc/self/uid_map", map);
    snprintf(map, sizeof map, "%u %u 1", (unsigned)gid, (unsigned)gid);
    write_file("/proc/self/gid_map", map);
}

static void build_view(const struct mp_node *ops, int userns)
{
    if (!ops || ops->type != MP_ARR)
        die(1, "confinement failed, command not started: corrald sent no mount plan");
    if (ops->len == 0)
        return;                             /* nothing to make read-only, mask or hide */
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof cwd))
        die(1, "confinement failed, command not started: getcwd: %s", strerror(errno));
    if (userns)
        enter_user_namespace();
    else if (unshare(CLONE_NEWNS) != 0)
        die(1, "confinement failed, command not started: unshare(mount namespace): %s",
            strerror(errno));
    for (uint32_t i = 0; i < ops->len; i++) {
        const struct mp_node *op = &ops->items[i];
        char *kind = op->type == MP_ARR && op->len >= 2 ? mp_cstr(&op->items[0]) : NULL;
        if (kind && strcmp(kind, "mount") == 0 && op->len == 7) {
            const char *src = opt_str(&op->items[1]), *dst = opt_str(&op->items[2]);
            const char *type = opt_str(&op->items[3]), *data = opt_str(&op->items[5]);
            if (!dst || op->items[4].type != MP_INT)
                die(1, "confinement failed, command not started: a malformed mount operation");
            if (mount(src, dst, type, (unsigned long)op->items[4].i, data) != 0) {
                if (errno == ENOENT && op->items[6].type == MP_BOOL && op->items[6].i)
                    continue;               /* a socket unlinked since it was listed */
                die(1, "confinement failed, command not started: mount view: %s: %s", dst,
                    strerror(errno));
            }
        } else if (kind && strcmp(kind, "setattr") == 0 && op->len == 6) {
            const char *path = opt_str(&op->items[1]);
            struct corral_mount_attr a = {(uint64_t)op->items[2].i, (uint64_t)op->items[3].i, 0, 0};
            if (!path)
                die(1, "confinement failed, command not started: a malformed mount operation");
            if (syscall(__NR_mount_setattr, AT_FDCWD, path, op->items[4].i ? 0x8000 : 0, &a,
                        sizeof a) != 0 && !op->items[5].i)
                die(1, "confinement failed, command not started: mount view: mount_setattr "
                    "%s: %s", path, strerror(errno));
        } else {
            die(1, "confinement failed, command not started: an unknown mount operation");
        }
    }
    if (chdir(cwd) != 0)
        die(1, "confinement failed, command not started: chdir %s: %s", cwd, strerror(errno));
}

/* confine.apply's order: descriptors, capabilities, no_new_privs, Landlock,
 * seccomp last. The mount view first (setns needs CAP_SYS_ADMIN). */
static void confine_child(struct plan *pl)
{
    if (pl->run)
        build_view(mp_get(pl->res, "mount_ops"), pl->join);
    if (pl->join) {
        /* Nothing of the command runs before corrald has moved us into the
         * session: the parent writes one byte once it has (EOF: it could not). */
        char c;
        ssize_t n;
        while ((n = read(pl->go_fd, &c, 1)) < 0 && errno == EINTR)
            ;
        if (n != 1)
            _exit(1);                       /* the parent says why */
        close(pl->go_fd);
    }
    if (pl->mntns_fd >= 0) {
        char cwd[PATH_MAX];
        if (!getcwd(cwd, sizeof cwd))
            die(1, "confinement failed, command not started: getcwd: %s", strerror(errno));
        /* Not root: the view is in the user namespace its holder made (ours to
         * enter: we own it), then its mount namespace. */
        if (pl->userns_fd >= 0 && setns(pl->userns_fd, CLONE_NEWUSER) != 0)
            die(1, "confinement failed, command not started: entering the session's user "
                "namespace: %s", strerror(errno));
        if (setns(pl->mntns_fd, CLONE_NEWNS) != 0)
            die(1, "confinement failed, command not started: entering the session's mount "
                "view: %s", strerror(errno));
        /* setns put us at the namespace's root: the same directory, in the view. */
        if (chdir(cwd) != 0)
            die(1, "confinement failed, command not started: the working directory %s is "
                "not reachable in the session's view: %s", cwd, strerror(errno));
    }
    /* Inherited descriptors: all but 0-2 and the ruleset (moved to 3). */
    int rs = -1;
    if (pl->ruleset_fd >= 0) {
        rs = 3;
        if (pl->ruleset_fd != 3 && dup3(pl->ruleset_fd, 3, O_CLOEXEC) < 0)
            die(1, "confinement failed, command not started: dup3: %s", strerror(errno));
    }
    int r = corral_close_range(rs >= 0 ? 4 : 3, ~0U);
    if (r < 0)
        die(1, "confinement failed, command not started: close_range: %s", strerror(-r));
    r = corral_set_securebits_noroot();
    if (r < 0 && r != -EPERM)
        die(1, "confinement failed, command not started: PR_SET_SECUREBITS: %s", strerror(-r));
    if ((r = corral_drop_all_caps(-1)) < 0)
        die(1, "confinement failed, command not started: dropping capabilities: %s",
            strerror(-r));
    if (corral_caps_effective_is_zero() != 1)
        die(1, "confinement failed, command not started: capabilities still present");
    if (corral_set_no_new_privs() < 0 || corral_get_no_new_privs() != 1)
        die(1, "confinement failed, command not started: no_new_privs not set");
    if (rs >= 0) {
        r = corral_landlock_restrict_self(rs, pl->landlock_flags);
        if (r < 0 && pl->landlock_flags)
            r = corral_landlock_restrict_self(rs, 0);   /* logging flags refused */
        if (r < 0)
            die(1, "confinement failed, command not started: landlock_restrict_self: %s",
                strerror(-r));
        close(rs);
    }
    load_seccomp(mp_get(pl->res, "seccomp"));
}

static void report_exec(struct plan *pl)
{
    static unsigned char out[65536];
    struct mp_buf b = {out, 0, sizeof out, 0};
    int ncmd = 0;
    while (pl->cmd[ncmd] && ncmd < MAX_CMD_REPORTED)
        ncmd++;
    mp_map(&b, 4);
    mp_str(&b, "op"); mp_str(&b, pl->run ? "report_run" : "report_exec");
    mp_str(&b, "id"); mp_int(&b, 2);
    mp_str(&b, "session"); mp_str(&b, pl->sid);
    mp_str(&b, "report"); mp_map(&b, pl->run ? 6 : 7);
    mp_str(&b, "path"); mp_str(&b, "native");
    mp_str(&b, "landlock"); mp_bool(&b, pl->ruleset_fd >= 0);
    mp_str(&b, "seccomp"); mp_bool(&b, 1);
    mp_str(&b, "caps_dropped"); mp_bool(&b, 1);
    mp_str(&b, "no_new_privs"); mp_bool(&b, 1);
    if (!pl->run) {
        mp_str(&b, "mount_view"); mp_bool(&b, pl->mntns_fd >= 0);
    }
    mp_str(&b, "command"); mp_arr(&b, ncmd);
    for (int i = 0; i < ncmd; i++)
        mp_strn(&b, pl->cmd[i], strnlen(pl->cmd[i], 4096));
    int fd = connect_daemon(), fds[1], nfds;
    send_frame(fd, &b);
    const struct mp_node *res = result_of(recv_frame(fd, fds, 1, &nfds),
                                          "confinement report refused, command not started", 0);
    close(fd);
    /* report_exec answers "missing", report_confinement (run) "mismatch". */
    const struct mp_node *missing = mp_get(res, pl->run ? "mismatch" : "missing");
    if (missing && missing->type == MP_ARR && missing->len) {
        char *what = mp_cstr(&missing->items[0]);
        die(1, "confinement check failed, command not started: corrald does not see %s on "
            "this process", what ? what : "?");
    }
}

/* -- the parent: waits outside the session ------------------------------------ */
static int child_pidfd = -1;

static void forward(int sig)
{
    syscall(__NR_pidfd_send_signal, child_pidfd, sig, NULL, 0);
}

static __attribute__((noreturn)) void exit_like(int status)
{
    if (WIFSIGNALED(status)) {
        int sig = WTERMSIG(status);
        struct rlimit no = {0, 0};
        setrlimit(RLIMIT_CORE, &no);        /* no core of ours */
        signal(sig, SIG_DFL);
        sigset_t s;
        sigemptyset(&s);
        sigaddset(&s, sig);
        sigprocmask(SIG_UNBLOCK, &s, NULL);
        kill(getpid(), sig);
        _exit(128 + sig);                   /* a signal whose default is not to die */
    }
    _exit(WIFEXITED(status) ? WEXITSTATUS(status) : 1);
}

/* corral run: the command has exited; corrald ends its session (kills what it
 * left, answers once the cgroup is empty), then one line if anything was refused
 * (supervise.py's _end and summary). */
static void end_run(const struct plan *pl, int status)
{
    char note[64];
    if (WIFSIGNALED(status))
        snprintf(note, sizeof note, "killed by signal %d", WTERMSIG(status));
    else
        snprintf(note, sizeof note, "exit status %d", WIFEXITED(status) ? WEXITSTATUS(status) : 1);
    static unsigned char out[4096];
    struct mp_buf b = {out, 0, sizeof out, 0};
    mp_map(&b, 4);
    mp_str(&b, "op"); mp_str(&b, "end_session");
    mp_str(&b, "id"); mp_int(&b, 3);
    mp_str(&b, "session"); mp_str(&b, pl->sid);
    mp_str(&b, "reason"); mp_str(&b, note);
    /* The command's status is what this process exits with, whatever corrald
     * does now: if it cannot be reached or does not answer within END_TIMEOUT
     * (supervise.py's too), say so and go on; corrald ends the session when it
     * next finds its command gone. */
    int fds[1], nfds, fd = try_connect_daemon();
    const char *why = NULL;
    if (fd < 0 || try_send_frame(fd, &b) != 0) {
        why = strerror(errno);
    } else {
        struct pollfd pfd = {fd, POLLIN, 0};
        int r = poll(&pfd, 1, END_TIMEOUT_MS);
        if (r <= 0)
            why = r == 0 ? "no answer within 5 s" : strerror(errno);
    }
    if (why) {
        fprintf(stderr, "corral: warning: corrald did not end session %s (%s); it ends it when "
                "it next finds its command gone\n", pl->sid, why);
        if (fd >= 0)
            close(fd);
        return;
    }
    struct mp_node *msg = recv_frame(fd, fds, 1, &nfds);
    close(fd);
    const struct mp_node *ok = mp_get(msg, "ok");
    if (!ok || !ok->i) {
        char *code = mp_cstr(mp_get(mp_get(msg, "error"), "code"));
        char *text = mp_cstr(mp_get(mp_get(msg, "error"), "message"));
        if (!code || strcmp(code, "not_found"))
            fprintf(stderr, "corral: warning: could not end session %s: %s; corrald ends it "
                    "when it next finds its command gone\n", pl->sid, text ? text : "?");
        return;
    }
    const struct mp_node *denied = mp_get(mp_get(msg, "result"), "denied");
    if (pl->quiet || !denied || denied->type != MP_MAP || denied->len == 0)
        return;
    /* most refused first, as supervise.summary orders them */
    char line[2048] = "";
    size_t n = 0;
    int used[64] = {0};
    for (uint32_t k = 0; k < denied->len && k < 64; k++) {
        int best = -1;
        for (uint32_t j = 0; j < denied->len && j < 64; j++)
            if (!used[j] && denied->items[2 * j + 1].type == MP_INT &&
                (best < 0 || denied->items[2 * j + 1].i > denied->items[2 * best + 1].i))
                best = (int)j;
        if (best < 0)
            break;
        used[best] = 1;
        char *kind = mp_cstr(&denied->items[2 * best]);
        n += snprintf(line + n, n < sizeof line ? sizeof line - n : 0, "%s%lld %s",
                      k ? ", " : "", (long long)denied->items[2 * best + 1].i, kind ? kind : "?");
    }
    fprintf(stderr, "corral: session %s: refused %s; see `corral log --session %s` "
            "(-q: no summary)\n", pl->sid, line, pl->sid);
}

static __attribute__((noreturn)) void supervise(pid_t pid, sigset_t *old, const struct plan *pl)
{
    struct sigaction ign = {.sa_handler = SIG_IGN}, fw = {.sa_handler = forward};
    sigaction(SIGINT, &ign, NULL);
    sigaction(SIGQUIT, &ign, NULL);
    sigaction(SIGTERM, &fw, NULL);
    sigaction(SIGHUP, &fw, NULL);
    sigprocmask(SIG_SETMASK, old, NULL);
    /* Hold nothing of the command's: its stdin and stdout close when it does. */
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null >= 0) {
        dup2(null, 0);
        dup2(null, 1);
        close(null);
    }
    int status;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR)
            die(1, "waitpid: %s", strerror(errno));
    }
    signal(SIGTERM, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    if (pl->run && !pl->keep_running)
        end_run(pl, status);
    exit_like(status);
}

/* Not root: corrald moves the child (ours, not yet the command) into the
 * session; if it cannot, the child is killed before it runs anything. */
static void join_run(const struct plan *pl, pid_t pid, const char *what)
{
    static unsigned char out[512];
    struct mp_buf b = {out, 0, sizeof out, 0};
    mp_map(&b, 4);
    mp_str(&b, "op"); mp_str(&b, "join_child");
    mp_str(&b, "id"); mp_int(&b, 4);
    mp_str(&b, "session"); mp_str(&b, pl->sid);
    mp_str(&b, "pid"); mp_int(&b, pid);
    int fds[1], nfds, fd = try_connect_daemon();
    const struct mp_node *ok = NULL;
    struct mp_node *msg = NULL;
    if (fd >= 0 && try_send_frame(fd, &b) == 0) {
        msg = recv_frame(fd, fds, 1, &nfds);
        ok = mp_get(msg, "ok");
    }
    if (fd >= 0)
        close(fd);
    if (ok && ok->type == MP_BOOL && ok->i)
        return;
    syscall(__NR_pidfd_send_signal, child_pidfd, SIGKILL, NULL, 0);
    waitpid(pid, NULL, 0);
    char *text = msg ? mp_cstr(mp_get(mp_get(msg, "error"), "message")) : NULL;
    die(1, "%s: corrald did not move it into session %s: %s", what, pl->sid,
        text ? text : strerror(errno));
}

/* The descriptors corrald sent (cgroup, ruleset, mount namespace or /dev/null in
 * its place), then the command: created in the session's cgroup, confined,
 * reported, exec'ed; this process waits for it outside. */
static int start(struct plan *pl, int *fds, int nfds, const char *what)
{
    const struct mp_node *has = mp_get(pl->res, "has"), *llf = mp_get(pl->res, "landlock_flags");
    /* a fourth: the user namespace of a user's session view (exec, not root) */
    if (nfds < 3 || nfds > 4 || !has || has->type != MP_ARR || has->len != (uint32_t)nfds)
        die(1, "%s: corrald sent %d descriptors, expected 3 or 4", what, nfds);
    pl->userns_fd = nfds == 4 && has->items[3].i ? fds[3] : (nfds == 4 ? close(fds[3]) : 0, -1);
    pl->cgroup_fd = fds[0];
    pl->ruleset_fd = has->items[1].i ? fds[1] : (close(fds[1]), -1);
    pl->mntns_fd = has->items[2].i ? fds[2] : (close(fds[2]), -1);
    pl->landlock_flags = llf && llf->type == MP_INT ? (int)llf->i : 0;

    sigset_t handled, old;
    sigemptyset(&handled);
    sigaddset(&handled, SIGINT);
    sigaddset(&handled, SIGQUIT);
    sigaddset(&handled, SIGTERM);
    sigaddset(&handled, SIGHUP);
    sigprocmask(SIG_BLOCK, &handled, &old);
    const struct mp_node *join = mp_get(pl->res, "join");
    pl->join = join && join->type == MP_BOOL && join->i;
    int go[2] = {-1, -1};
    if (pl->join && pipe2(go, O_CLOEXEC) != 0)
        die(1, "%s: pipe: %s", what, strerror(errno));
    fflush(NULL);
    struct clone_args ca;
    memset(&ca, 0, sizeof ca);
    ca.flags = (pl->join ? 0 : CLONE_INTO_CGROUP) | CLONE_PIDFD;
    ca.pidfd = (uintptr_t)&child_pidfd;
    ca.exit_signal = SIGCHLD;
    ca.cgroup = pl->join ? 0 : (uint64_t)pl->cgroup_fd;
    long pid = syscall(__NR_clone3, &ca, sizeof ca);
    if (pid < 0) {
        if (errno == ENOSYS || errno == E2BIG || errno == EINVAL)
            handover();                     /* an older kernel: the Python path moves us */
        die(1, "%s: clone3 into the session's cgroup: %s", what, strerror(errno));
    }
    if (pid > 0 && pl->join) {
        close(go[0]);
        join_run(pl, (pid_t)pid, what);     /* the child waits for this byte */
        if (write(go[1], "g", 1) != 1)
            die(1, "%s: cannot start the command: %s", what, strerror(errno));
        close(go[1]);
    }
    if (pid > 0) {
        close(pl->cgroup_fd);
        if (pl->ruleset_fd >= 0)
            close(pl->ruleset_fd);
        if (pl->mntns_fd >= 0)
            close(pl->mntns_fd);
        if (pl->userns_fd >= 0)
            close(pl->userns_fd);
        supervise((pid_t)pid, &old, pl);
    }
    /* The child: born in the session's cgroup, or moved there before it goes on. */
    if (pl->join) {
        close(go[1]);
        pl->go_fd = go[0];
    }
    sigprocmask(SIG_SETMASK, &old, NULL);
    confine_child(pl);
    report_exec(pl);
    set_env(pl->res);
    run_cmd(pl->cmd);
}


/* -- corral exec --------------------------------------------------------------- */
static void put_env_names(struct mp_buf *b, uint32_t n)
{
    mp_str(b, "env_names");
    mp_arr(b, n);
    for (char **e = environ; *e; e++) {
        const char *eq = strchr(*e, '=');
        mp_strn(b, *e, eq ? (size_t)(eq - *e) : strlen(*e));
    }
}

static int do_exec(int argc, char **argv)
{
    int i = 2;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (strcmp(argv[i], "-v") && strcmp(argv[i], "--verbose") && strcmp(argv[i], "-q") &&
            strcmp(argv[i], "--quiet"))
            handover();                     /* an option only the Python CLI knows */
    }
    if (i >= argc)
        handover();                         /* usage: said by the Python CLI */
    struct plan pl = {.sid = argv[i++], .cgroup_fd = -1, .ruleset_fd = -1, .mntns_fd = -1,
                      .userns_fd = -1, .go_fd = -1};
    if (i < argc && strcmp(argv[i], "--") == 0)
        i++;
    if (i >= argc)
        handover();
    pl.cmd = argv + i;

    /* exec_prepare: the session, our environment's names (never values). */
    static unsigned char req[1 << 18];
    struct mp_buf b = {req, 0, sizeof req, 0};
    uint32_t nenv = 0;
    for (char **e = environ; *e; e++)
        nenv++;
    mp_map(&b, 4);
    mp_str(&b, "op"); mp_str(&b, "exec_prepare");
    mp_str(&b, "id"); mp_int(&b, 1);
    mp_str(&b, "session"); mp_str(&b, pl.sid);
    put_env_names(&b, nenv);
    if (b.err)
        handover();                         /* an environment this large: Python's job */
    int fd = connect_daemon(), fds[8], nfds;
    send_frame(fd, &b);
    char what[128];
    snprintf(what, sizeof what, "cannot exec in session %s", pl.sid);
    pl.res = result_of(recv_frame(fd, fds, 8, &nfds), what, 1);
    close(fd);
    if (!pl.res || pl.res->type != MP_MAP)
        die(1, "%s: corrald sent no result", what);

    const struct mp_node *inside = mp_get(pl.res, "inside");
    if (inside && inside->type == MP_BOOL && inside->i) {
        /* Already in this session, so already confined as it is. */
        set_env(pl.res);
        run_cmd(pl.cmd);
    }
    return start(&pl, fds, nfds, what);
}

/* -- corral run ----------------------------------------------------------------- */
#define MAX_POLICY_FILES 8
#define MAX_POLICY_BYTES (128 * 1024)    /* all files named together; more: the Python CLI */

struct named_file {
    const char *name;                   /* as given on the command line */
    unsigned char *data;
    size_t len;
};

/* The file behind --policy / --srt-settings NAME, read as the caller (corrald
 * parses it; it never opens a path for us). Only regular files; anything that
 * cannot be read is left out and corrald hands the run to the Python CLI,
 * which says why. Tokens after "--" are the command's and are not looked at. */
static int read_named_files(int n, char **args, struct named_file *out)
{
    int k = 0;
    size_t total = 0;
    for (int i = 0; i < n && k < MAX_POLICY_FILES; i++) {
        const char *a = args[i], *name = NULL;
        if (strcmp(a, "--") == 0)
            break;
        if ((!strcmp(a, "--policy") || !strcmp(a, "--srt-settings")) && i + 1 < n)
            name = args[++i];
        else if (!strncmp(a, "--policy=", 9))
            name = a + 9;
        else if (!strncmp(a, "--srt-settings=", 15))
            name = a + 15;
        if (!name || !*name)
            continue;
        int fd = open(name, O_RDONLY | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
        struct stat st;
        if (fd < 0)
            continue;
        if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) ||
            total + (size_t)st.st_size > MAX_POLICY_BYTES) {
            close(fd);
            continue;
        }
        unsigned char *d = malloc((size_t)st.st_size + 1);
        ssize_t got = d ? read(fd, d, (size_t)st.st_size + 1) : -1;
        close(fd);
        if (got < 0 || (size_t)got > (size_t)st.st_size || total + (size_t)got > MAX_POLICY_BYTES) {
            free(d);                        /* grew while read: left to the Python CLI */
            continue;
        }
        out[k++] = (struct named_file){name, d, (size_t)got};
        total += (size_t)got;
    }
    return k;
}

/* `corral run [options] [--] CMD...` by root: the options go to corrald as they
 * are, with the bytes of the policy files they name and the environment values
 * they read (SSH_AUTH_SOCK, the agents' base URLs); corrald parses them with
 * the Python CLI's own parser (policy/fromargs.py), computes the policy,
 * registers the session and plans its view and rules (server/runprep.py), and
 * says where the command starts. The command is created in the new session,
 * builds the view, confines itself, reports as the session's leader and execs;
 * this process waits and then ends the session, as supervise.py does. Options
 * it does not apply (--keep-caps, -v...), mistakes, or what corrald cannot
 * prepare (an allow_write to create): the Python CLI. */
static const char *const ENV_READ[] = {"SSH_AUTH_SOCK", "ANTHROPIC_BASE_URL", "OPENAI_BASE_URL"};

static int do_run(int argc, char **argv)
{
    struct plan pl = {.cgroup_fd = -1, .ruleset_fd = -1, .mntns_fd = -1, .userns_fd = -1, .run = 1,
                      .go_fd = -1};
    if (argc < 3)
        handover();                         /* usage: said by the Python CLI */
    int nargs = argc - 2;
    char **args = argv + 2;
    struct named_file files[MAX_POLICY_FILES];
    int nfiles = read_named_files(nargs, args, files);

    static unsigned char req[1 << 18];
    struct mp_buf b = {req, 0, sizeof req, 0};
    uint32_t nenv = 0, nread = 0;
    for (char **e = environ; *e; e++)
        nenv++;
    for (size_t k = 0; k < sizeof ENV_READ / sizeof *ENV_READ; k++)
        nread += getenv(ENV_READ[k]) != NULL;
    const char *home = getenv("HOME");
    mp_map(&b, 7);
    mp_str(&b, "op"); mp_str(&b, "run_prepare");
    mp_str(&b, "id"); mp_int(&b, 1);
    mp_str(&b, "argv"); mp_arr(&b, (uint32_t)nargs);
    for (int k = 0; k < nargs; k++)
        mp_str(&b, args[k]);
    mp_str(&b, "files"); mp_map(&b, (uint32_t)nfiles);
    for (int k = 0; k < nfiles; k++) {
        mp_str(&b, files[k].name);
        mp_bin(&b, files[k].data, files[k].len);
        free(files[k].data);
    }
    mp_str(&b, "env"); mp_map(&b, nread);
    for (size_t k = 0; k < sizeof ENV_READ / sizeof *ENV_READ; k++) {
        const char *v = getenv(ENV_READ[k]);
        if (v) {
            mp_str(&b, ENV_READ[k]);
            mp_str(&b, v);
        }
    }
    mp_str(&b, "home"); mp_str(&b, home ? home : "");
    put_env_names(&b, nenv);
    if (b.err)
        handover();                         /* arguments this large: Python's job */
    int fd = try_connect_daemon(), fds[8], nfds;
    if (fd < 0)
        handover();                         /* it checks the options first, then says so */
    send_frame(fd, &b);
    pl.res = result_of(recv_frame(fd, fds, 8, &nfds), "cannot start session", 1);
    close(fd);
    const struct mp_node *at = pl.res ? mp_get(pl.res, "cmd_at") : NULL;
    if (!pl.res || pl.res->type != MP_MAP || !(pl.sid = mp_cstr(mp_get(pl.res, "session"))) ||
        !at || at->type != MP_INT || at->i < 0 || at->i >= nargs)
        die(1, "cannot start session: corrald sent no session or command");
    pl.cmd = args + at->i;
    const struct mp_node *q = mp_get(pl.res, "quiet"), *keep = mp_get(pl.res, "keep_running");
    pl.quiet = q && q->type == MP_BOOL && q->i;
    pl.keep_running = keep && keep->type == MP_BOOL && keep->i;
    const struct mp_node *notes = mp_get(pl.res, "notes");
    for (uint32_t k = 0; notes && notes->type == MP_ARR && k < notes->len; k++) {
        char *line = mp_cstr(&notes->items[k]);
        if (line)
            fprintf(stderr, "%s\n", line);
    }
    return start(&pl, fds, nfds, "cannot start the command");
}

/* `corral-exec --session ID CMDSTRING`: the form a shell-command prefix takes
 * (Claude Code's CLAUDE_CODE_SHELL_PREFIX runs `PREFIX 'the whole command'` from
 * its shell): CMDSTRING runs in the session through the same shell that called
 * us, as `corral exec ID -- SHELL -c CMDSTRING`. More than one word after the
 * id: they are the command's argv. */
static int shell_prefix(int argc, char **argv)
{
    if (argc < 4 || (strcmp(argv[1], "--session") && strcmp(argv[1], "-s")))
        die(2, "usage: corral-exec --session ID CMDSTRING (a shell-command prefix; "
            "`corral session start` prints the id)");
    static char shell[PATH_MAX];
    char proc[64];
    snprintf(proc, sizeof proc, "/proc/%d/exe", (int)getppid());
    ssize_t n = readlink(proc, shell, sizeof shell - 1);
    const char *known[] = {"bash", "zsh", "sh", "dash", NULL}, *sh = "/bin/sh";
    if (n > 0) {
        shell[n] = 0;
        const char *b = strrchr(shell, '/');
        for (int i = 0; known[i]; i++)
            if (strcmp(b ? b + 1 : shell, known[i]) == 0)
                sh = shell;
    }
    int extra = argc - 3;
    char **nv = calloc(8 + extra, sizeof(char *));
    if (!nv)
        die(1, "out of memory");
    int k = 0;
    nv[k++] = "corral";
    nv[k++] = "exec";
    nv[k++] = argv[2];
    nv[k++] = "--";
    if (extra == 1) {
        nv[k++] = (char *)sh;
        nv[k++] = "-c";
    }
    for (int i = 3; i < argc; i++)
        nv[k++] = argv[i];
    orig_argv = nv;                 /* what a hand-over passes to the Python CLI */
    return do_exec(k, nv);
}

int main(int argc, char **argv)
{
    orig_argv = argv;
    const char *name = strrchr(argv[0], '/');
    if (strcmp(name ? name + 1 : argv[0], "corral-exec") == 0)
        return shell_prefix(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "exec") == 0)
        return do_exec(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "run") == 0)
        return do_run(argc, argv);
    handover();
}
