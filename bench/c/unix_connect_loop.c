/* unix_connect_loop: the Unix-socket connect microbenchmark of bench_unix.py.
 *
 *   unix_connect_loop serve PATH          bind+listen on PATH (unlinked first), print
 *                                         "ready", accept+close forever
 *   unix_connect_loop client PATH N [CHUNK]
 *                                         N x (socket(AF_UNIX), connect, close) to PATH and
 *                                         print one line:
 *                                         "ok=N fail=F ns=TOTAL ns_per=PER first_errno=E chunks=C1,.."
 *                                         (Ci: ns of each CHUNK connects, default 1000)
 *   unix_connect_loop self PATH N [CHUNK] fork a listener on PATH first (a child of this
 *                                         process: in a session, the session's own
 *                                         socket), wait until it listens, then the
 *                                         client loop; the listener is killed and PATH
 *                                         unlinked at the end
 *   unix_connect_loop refused PATH N [CHUNK]
 *                                         the client loop, expecting every connect to
 *                                         fail (exit 0 if all failed, 1 if any connected)
 *
 * Only the loop is timed (CLOCK_MONOTONIC), so how the program was started is
 * not part of the number. A Unix stream connect completes once the listener's
 * backlog has room; the listener accepts and closes, so the number is the
 * round of connect + accept + two closes, as for connect_loop.c. */
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int addr_of(const char *path, struct sockaddr_un *a, socklen_t *len)
{
    size_t n = strlen(path);
    if (n >= sizeof a->sun_path) {
        fprintf(stderr, "path too long for sun_path: %s\n", path);
        return -1;
    }
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    memcpy(a->sun_path, path, n);
    *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
    return 0;
}

/* Bind and listen; write "ready\n" to ready_fd; accept+close forever. */
static int serve(const char *path, int ready_fd)
{
    struct sockaddr_un a;
    socklen_t alen;
    if (addr_of(path, &a, &alen) < 0)
        return 2;
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    unlink(path);
    if (s < 0 || bind(s, (struct sockaddr *)&a, alen) < 0 || listen(s, 4096) < 0) {
        perror("serve: socket/bind/listen");
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    if (write(ready_fd, "ready\n", 6) != 6)
        return 1;
    if (ready_fd != 1)
        close(ready_fd);
    else
        fflush(stdout);
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c >= 0)
            close(c);
    }
}

#define MAX_CHUNKS 4096
static long long chunk_ns[MAX_CHUNKS];

static int client(const char *path, long n, long chunk, int expect_fail)
{
    struct sockaddr_un a;
    socklen_t alen;
    if (addr_of(path, &a, &alen) < 0)
        return 2;
    long ok = 0, fail = 0;
    int first_errno = 0;
    int nchunks = 0;
    long long t0 = now_ns(), tc = t0;
    for (long i = 0; i < n; i++) {
        if (i && i % chunk == 0 && nchunks < MAX_CHUNKS) {
            long long t = now_ns();
            chunk_ns[nchunks++] = t - tc;
            tc = t;
        }
        int s = socket(AF_UNIX, SOCK_STREAM, 0);
        if (s < 0) {
            if (!first_errno)
                first_errno = errno;
            fail++;
            continue;
        }
        if (connect(s, (struct sockaddr *)&a, alen) == 0) {
            ok++;
        } else {
            if (!first_errno)
                first_errno = errno;
            fail++;
        }
        close(s);
    }
    long long t1 = now_ns(), dt = t1 - t0;
    if (n % chunk == 0 && nchunks < MAX_CHUNKS)
        chunk_ns[nchunks++] = t1 - tc;
    printf("ok=%ld fail=%ld ns=%lld ns_per=%lld first_errno=%d chunks=", ok, fail, dt,
           n ? dt / n : 0, first_errno);
    for (int i = 0; i < nchunks; i++)
        printf(i ? ",%lld" : "%lld", chunk_ns[i]);
    printf("\n");
    fflush(stdout);
    if (expect_fail)
        return ok ? 1 : 0;
    return fail ? 1 : 0;
}

static int self(const char *path, long n, long chunk)
{
    int p[2];
    if (pipe(p) < 0) {
        perror("pipe");
        return 2;
    }
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        return 2;
    }
    if (pid == 0) {
        close(p[0]);
        _exit(serve(path, p[1]));
    }
    close(p[1]);
    char buf[8] = {0};
    ssize_t got = read(p[0], buf, 6);
    close(p[0]);
    if (got != 6 || strncmp(buf, "ready\n", 6)) {
        fprintf(stderr, "self: the listener did not start\n");
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        return 2;
    }
    int rc = client(path, n, chunk, 0);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    unlink(path);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc == 3 && !strcmp(argv[1], "serve"))
        return serve(argv[2], 1);
    if ((argc == 4 || argc == 5) &&
        (!strcmp(argv[1], "client") || !strcmp(argv[1], "self") || !strcmp(argv[1], "refused"))) {
        long n = atol(argv[3]);
        long chunk = argc == 5 ? atol(argv[4]) : 1000;
        if (chunk <= 0)
            chunk = 1000;
        if (!strcmp(argv[1], "self"))
            return self(argv[2], n, chunk);
        return client(argv[2], n, chunk, !strcmp(argv[1], "refused"));
    }
    fprintf(stderr, "usage: %s serve PATH | client PATH N [CHUNK] | self PATH N [CHUNK] | "
            "refused PATH N [CHUNK]\n", argv[0]);
    return 2;
}
