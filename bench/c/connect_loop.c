/* connect_loop: the TCP connect microbenchmark of bench_net.py / bench_peers.py.
 *
 *   connect_loop serve PORT            listen on 127.0.0.1:PORT, print "ready", accept+close forever
 *   connect_loop client IP PORT N [CHUNK]
 *                                      N x (socket, connect, close) and print one line:
 *                                      "ok=N fail=F ns=TOTAL ns_per=PER first_errno=E chunks=C1,C2,.."
 *                                      (Ci: ns of each CHUNK connects, default 1000, so a
 *                                      noisy neighbour shows as a few slow chunks)
 *
 * The client closes with SO_LINGER {1,0} (RST) so 20000 connections leave no
 * TIME_WAIT entries behind and back-to-back runs never run out of ports.
 * Only the loop is timed (CLOCK_MONOTONIC), so how the program was started
 * (corral run, srt, bare) is not part of the number. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int serve(int port)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(s, (struct sockaddr *)&a, sizeof a) < 0 || listen(s, 4096) < 0) {
        perror("serve: bind/listen");
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    printf("ready\n");
    fflush(stdout);
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c >= 0)
            close(c);
    }
}

#define MAX_CHUNKS 4096
static long long chunk_ns[MAX_CHUNKS];

static int client(const char *ip, int port, long n, long chunk)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (inet_pton(AF_INET, ip, &a.sin_addr) != 1) {
        fprintf(stderr, "bad address %s\n", ip);
        return 2;
    }
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
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
        int s = socket(AF_INET, SOCK_STREAM, 0);
        if (s < 0) {
            if (!first_errno)
                first_errno = errno;
            fail++;
            continue;
        }
        setsockopt(s, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        if (connect(s, (struct sockaddr *)&a, sizeof a) == 0) {
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
    return fail ? 1 : 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && !strcmp(argv[1], "serve"))
        return serve(atoi(argv[2]));
    if ((argc == 5 || argc == 6) && !strcmp(argv[1], "client")) {
        long chunk = argc == 6 ? atol(argv[5]) : 1000;
        return client(argv[2], atoi(argv[3]), atol(argv[4]), chunk > 0 ? chunk : 1000);
    }
    fprintf(stderr, "usage: %s serve PORT | client IP PORT N [CHUNK]\n", argv[0]);
    return 2;
}
