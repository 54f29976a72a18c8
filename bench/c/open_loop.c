/* open_loop: open(O_RDONLY)+close cost per path, for bench_filepolicy.py.
 *
 *   open_loop N REPS PATH...   for each PATH: REPS x (N x open+close), timed with
 *                              the thread's CPU clock (CLOCK_THREAD_CPUTIME_ID: time
 *                              another process takes on a shared CPU is not counted);
 *                              prints one line per PATH: "best_ns median_ns" per
 *                              open+close over the REPS repetitions
 *
 * The same measurement as bench_landlock.py's inline program (best of 20 reps),
 * with the median as well, so it can run under `corral run` (Landlock, the
 * mount view, seccomp) as the agent's own processes do. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: %s N REPS PATH...\n", argv[0]);
        return 2;
    }
    long n = atol(argv[1]);
    int reps = atoi(argv[2]);
    if (n <= 0 || reps <= 0 || reps > 1000)
        return 2;
    double t[1000];
    for (int p = 3; p < argc; p++) {
        for (int rep = 0; rep < reps; rep++) {
            double t0 = now();
            for (long i = 0; i < n; i++) {
                int fd = open(argv[p], O_RDONLY);
                if (fd < 0) {
                    perror(argv[p]);
                    return 1;
                }
                close(fd);
            }
            t[rep] = (now() - t0) / n;
        }
        qsort(t, reps, sizeof t[0], cmp);
        printf("%.1f %.1f\n", t[0], reps % 2 ? t[reps / 2] : (t[reps / 2 - 1] + t[reps / 2]) / 2);
    }
    return 0;
}
