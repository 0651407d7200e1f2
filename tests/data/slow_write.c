/* Fault injection for tests/finetune.rs (LD_PRELOAD): a write(2) of at
 * least SLOW_WRITE_MIN_BYTES to a temporary file (a name starting with
 * ".tmp", as the tempfile crate makes them) writes half its bytes, then
 * sleeps SLOW_WRITE_MS milliseconds before returning the short count, so a
 * test can kill the process while a file it writes atomically is half
 * written. Everything else passes through. ferrite itself has no such hook. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static long env_long(const char *name, long dflt) {
    const char *v = getenv(name);
    return v ? atol(v) : dflt;
}

ssize_t write(int fd, const void *buf, size_t n) {
    static ssize_t (*real)(int, const void *, size_t);
    if (!real) real = (ssize_t (*)(int, const void *, size_t))dlsym(RTLD_NEXT, "write");
    if (n > 1 && (long)n >= env_long("SLOW_WRITE_MIN_BYTES", 0)) {
        char link[64], path[4096];
        snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        ssize_t len = readlink(link, path, sizeof path - 1);
        if (len > 0) {
            path[len] = 0;
            const char *base = strrchr(path, '/');
            if (base && strncmp(base + 1, ".tmp", 4) == 0) {
                ssize_t w = real(fd, buf, n / 2);
                long t = env_long("SLOW_WRITE_MS", 1000);
                struct timespec ts = {t / 1000, (t % 1000) * 1000000L};
                nanosleep(&ts, NULL);
                return w;
            }
        }
    }
    return real(fd, buf, n);
}
