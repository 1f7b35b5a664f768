/*
 * loadgen: the compiled half of benchmarks/bench.py (servers it talks to, and clients fast
 * enough to outrun the SOCKS servers under test). bench.py compiles it with `cc -O2 -pthread`
 * into a temporary directory at run time; it is not a product and has no install target.
 *
 * Everything binds to or connects to the addresses given on the command line (bench.py only
 * ever passes loopback ones). Every loop is bounded by a deadline or a count.
 *
 * Servers (print "port N" on stdout once listening, then serve until killed):
 *   loadgen echo    [bind=127.0.0.1]   TCP echo, one epoll thread; holds idle connections, and
 *                                      closes a connection after echoing a newline (so the
 *                                      server side closes first: see "TIME_WAIT" below)
 *   loadgen data    [bind=127.0.0.1]   throughput peer: sink for uploads, source for downloads
 *   loadgen udpecho [bind=127.0.0.1]   UDP echo
 *
 * Clients (print one JSON object on the last line of stdout):
 *   loadgen tput proxy=H:P|- target=H:P dir=up|down bytes=N streams=K verify=0|1
 *   loadgen rate proxy=H:P|- target=H:P conc=64 warmup=S duration=S [user=U pass=P]
 *       prints "start" and "end" lines around the measured interval (bench.py samples the
 *       server's CPU time when it reads them)
 *   loadgen idle proxy=H:P|- target=H:P n=N [conc=64] [timeout=S]
 *       prints {"open":..} once N sessions relay, then waits for a line (or EOF) on stdin,
 *       checks that each held session still echoes, prints {"alive":..} and exits
 *   loadgen udp proxy=H:P|- target=H:P size=N window=W warmup=S duration=S
 *
 * TIME_WAIT: whoever closes a TCP connection first keeps it in TIME_WAIT for 60 s. If that were
 * the client (on both legs: client -> proxy, proxy -> echo), tens of thousands of sessions
 * would fill the ephemeral port range, and servers that bind() their outgoing socket before
 * connecting (Dante does, to its "external" address) would fail with EADDRINUSE: a benchmark
 * artifact, not a property of the server. So a session ends the way an HTTP/1.0 exchange
 * does: the echo server closes after echoing the request (which ends in a newline), the proxy
 * passes the EOF on, the client sees it and closes. The TIME_WAIT sockets then sit on the
 * listening ports of the echo server and the proxy, which use up no ephemeral ports.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (1 << 20)
#define IO_TIMEOUT_S 30
#define SESSION_TIMEOUT_S 10.0
#define MAX_LATENCIES (4u << 20)
#define MAX_STREAMS 64
#define MAX_CONC 1024

/* ------------------------------------------------------------------------------------------ */
/* small utilities                                                                            */

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what) {
    fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void usage(const char *msg) {
    fprintf(stderr, "loadgen: %s\n", msg);
    exit(64);
}

static void raise_nofile(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* key=value arguments */
static int g_argc;
static char **g_argv;

static const char *opt(const char *key, const char *fallback) {
    size_t n = strlen(key);
    for (int i = 2; i < g_argc; i++)
        if (strncmp(g_argv[i], key, n) == 0 && g_argv[i][n] == '=') return g_argv[i] + n + 1;
    return fallback;
}

static double opt_f(const char *key, double fallback) {
    const char *v = opt(key, NULL);
    return v ? strtod(v, NULL) : fallback;
}

static unsigned long long opt_u(const char *key, unsigned long long fallback) {
    const char *v = opt(key, NULL);
    return v ? strtoull(v, NULL, 10) : fallback;
}

/* "1.2.3.4:80" or "[::1]:80" -> sockaddr; returns 0 on success */
static int parse_addr(const char *text, struct sockaddr_storage *ss, socklen_t *len) {
    char host[128];
    const char *colon = strrchr(text, ':');
    if (!colon || (size_t)(colon - text) >= sizeof host) return -1;
    memcpy(host, text, (size_t)(colon - text));
    host[colon - text] = 0;
    int port = atoi(colon + 1);
    memset(ss, 0, sizeof *ss);
    if (host[0] == '[') {
        size_t hl = strlen(host);
        if (hl < 2 || host[hl - 1] != ']') return -1;
        host[hl - 1] = 0;
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((uint16_t)port);
        if (inet_pton(AF_INET6, host + 1, &a->sin6_addr) != 1) return -1;
        *len = sizeof *a;
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)ss;
        a->sin_family = AF_INET;
        a->sin_port = htons((uint16_t)port);
        if (inet_pton(AF_INET, host, &a->sin_addr) != 1) return -1;
        *len = sizeof *a;
    }
    return 0;
}

/* SOCKS5 ATYP|ADDR|PORT of a sockaddr; returns its length */
static size_t socks_addr(const struct sockaddr_storage *ss, unsigned char *out) {
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        out[0] = 4;
        memcpy(out + 1, &a->sin6_addr, 16);
        memcpy(out + 17, &a->sin6_port, 2);
        return 19;
    }
    const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
    out[0] = 1;
    memcpy(out + 1, &a->sin_addr, 4);
    memcpy(out + 5, &a->sin_port, 2);
    return 7;
}

/* Total length of a SOCKS5 reply whose first *have* bytes are in buf, or 0 if unknown yet. */
static size_t reply_length(const unsigned char *buf, size_t have) {
    if (have < 4) return 0;
    switch (buf[3]) {
    case 1: return 10;
    case 4: return 22;
    case 3: return have < 5 ? 0 : 4 + 1 + (size_t)buf[4] + 2;
    default: return (size_t)-1;
    }
}

static void set_timeouts(int fd) {
    struct timeval tv = {IO_TIMEOUT_S, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

static int write_all(int fd, const void *buf, size_t len) {
    const char *p = buf;
    while (len) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int read_exact(int fd, void *buf, size_t len) {
    char *p = buf;
    while (len) {
        ssize_t n = recv(fd, p, len, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Blocking SOCKS5 handshake on a connected fd: no auth (or user/pass), then *cmd* to *dst*.
 * Writes BND.ADDR into *bnd* when given. Returns 0, or -1 with a reason in *why*. */
static int socks5(int fd, int cmd, const struct sockaddr_storage *dst, const char *user,
                  const char *pass, struct sockaddr_storage *bnd, const char **why) {
    unsigned char buf[600];
    int auth = user && pass;
    unsigned char greet[3] = {5, 1, (unsigned char)(auth ? 2 : 0)};
    if (write_all(fd, greet, 3) || read_exact(fd, buf, 2)) { *why = "greeting"; return -1; }
    if (buf[0] != 5 || buf[1] != greet[2]) { *why = "method refused"; return -1; }
    if (auth) {
        size_t ul = strlen(user), pl = strlen(pass), n = 0;
        buf[n++] = 1;
        buf[n++] = (unsigned char)ul;
        memcpy(buf + n, user, ul);
        n += ul;
        buf[n++] = (unsigned char)pl;
        memcpy(buf + n, pass, pl);
        n += pl;
        if (write_all(fd, buf, n) || read_exact(fd, buf, 2)) { *why = "auth"; return -1; }
        if (buf[1] != 0) { *why = "auth refused"; return -1; }
    }
    buf[0] = 5;
    buf[1] = (unsigned char)cmd;
    buf[2] = 0;
    size_t n = 3 + socks_addr(dst, buf + 3);
    if (write_all(fd, buf, n) || read_exact(fd, buf, 5)) { *why = "request"; return -1; }
    size_t total = reply_length(buf, 5);
    if (total == (size_t)-1 || total > sizeof buf) { *why = "bad reply"; return -1; }
    if (read_exact(fd, buf + 5, total - 5)) { *why = "reply"; return -1; }
    if (buf[1] != 0) { *why = "request refused"; return -1; }
    if (bnd) {
        memset(bnd, 0, sizeof *bnd);
        if (buf[3] == 1) {
            struct sockaddr_in *a = (struct sockaddr_in *)bnd;
            a->sin_family = AF_INET;
            memcpy(&a->sin_addr, buf + 4, 4);
            memcpy(&a->sin_port, buf + 8, 2);
        } else if (buf[3] == 4) {
            struct sockaddr_in6 *a = (struct sockaddr_in6 *)bnd;
            a->sin6_family = AF_INET6;
            memcpy(&a->sin6_addr, buf + 4, 16);
            memcpy(&a->sin6_port, buf + 20, 2);
        } else {
            *why = "domain BND.ADDR";
            return -1;
        }
    }
    return 0;
}

/* Connect to the proxy (or straight to target when proxy is NULL) and CONNECT through it. */
static int open_stream(const struct sockaddr_storage *proxy, socklen_t plen,
                       const struct sockaddr_storage *target, socklen_t tlen, const char **why) {
    const struct sockaddr_storage *first = proxy ? proxy : target;
    int fd = socket(first->ss_family, SOCK_STREAM, 0);
    if (fd < 0) { *why = "socket"; return -1; }
    set_timeouts(fd);
    if (connect(fd, (const struct sockaddr *)first, proxy ? plen : tlen) != 0) {
        *why = "connect";
        close(fd);
        return -1;
    }
    if (proxy && socks5(fd, 1, target, NULL, NULL, NULL, why) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* ------------------------------------------------------------------------------------------ */
/* payload: a counter-mode pseudo-random stream both ends can regenerate (for verify=1)        */

static inline uint64_t mix64(uint64_t z) {
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* bytes [off, off+len) of stream *seed*: byte i of word k is (mix64(seed<<40 ^ k) >> 8i) */
static void gen(uint64_t seed, uint64_t off, unsigned char *buf, size_t len) {
    while (len) {
        uint64_t w = mix64((seed << 40) ^ (off >> 3));
        unsigned s = (unsigned)(off & 7);
        size_t n = 8 - s;
        if (n > len) n = len;
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        if (n == 8) {
            memcpy(buf, &w, 8);
        } else
#endif
        {
            for (size_t i = 0; i < n; i++) buf[i] = (unsigned char)(w >> ((s + i) * 8));
        }
        buf += n;
        off += n;
        len -= n;
    }
}

/* number of bytes in buf that differ from the stream at off */
static uint64_t check(uint64_t seed, uint64_t off, const unsigned char *buf, size_t len,
                      unsigned char *scratch) {
    gen(seed, off, scratch, len);
    if (memcmp(buf, scratch, len) == 0) return 0;
    uint64_t bad = 0;
    for (size_t i = 0; i < len; i++) bad += buf[i] != scratch[i];
    return bad;
}

static void put64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* ------------------------------------------------------------------------------------------ */
/* servers                                                                                     */

static int listen_on(const char *host, int type) {
    struct sockaddr_storage ss;
    socklen_t len;
    char text[160];
    snprintf(text, sizeof text, "%s:0", host);
    if (parse_addr(text, &ss, &len)) usage("bad bind address");
    int fd = socket(ss.ss_family, type, 0);
    if (fd < 0) die("socket");
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&ss, len)) die("bind");
    if (type == SOCK_STREAM && listen(fd, 4096)) die("listen");
    len = sizeof ss;
    getsockname(fd, (struct sockaddr *)&ss, &len);
    int port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                              : ((struct sockaddr_in *)&ss)->sin_port);
    printf("port %d\n", port);
    fflush(stdout);
    return fd;
}

static void set_nonblocking(int fd, int on) {
    int fl = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, on ? fl | O_NONBLOCK : fl & ~O_NONBLOCK);
}

static _Noreturn void serve_echo(void) {
    int lfd = listen_on(opt("bind", "127.0.0.1"), SOCK_STREAM);
    set_nonblocking(lfd, 1);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    static struct epoll_event events[512];
    static char buf[65536];
    for (;;) {
        int n = epoll_wait(ep, events, 512, -1);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) die("epoll_wait");
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == lfd) {
                for (int k = 0; k < 256; k++) {
                    int c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
                    if (c < 0) break;
                    int one = 1;
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct epoll_event cev = {.events = EPOLLIN, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
                }
                continue;
            }
            ssize_t got = recv(fd, buf, sizeof buf, 0);
            if (got < 0 && (errno == EAGAIN || errno == EINTR)) continue;
            if (got <= 0) {
                close(fd); /* also removes it from the epoll set */
                continue;
            }
            ssize_t sent = send(fd, buf, (size_t)got, MSG_NOSIGNAL);
            if (sent >= 0 && sent < got) {
                /* rare with small echoes: finish blocking, bounded by the send timeout */
                set_nonblocking(fd, 0);
                set_timeouts(fd);
                sent = write_all(fd, buf + sent, (size_t)(got - sent)) ? -1 : got;
                set_nonblocking(fd, 1);
            }
            if (sent < 0 || buf[got - 1] == '\n') close(fd); /* a newline ends the session */
        }
    }
}

/* data protocol: 24-byte header "BNCH" mode('U'|'D') verify 0 0 seed(u32) nbytes(u64) */
static void *data_conn(void *arg) {
    int fd = (int)(intptr_t)arg;
    unsigned char hdr[24], ack[16];
    unsigned char *buf = malloc(CHUNK), *scratch = malloc(CHUNK);
    set_timeouts(fd);
    if (!buf || !scratch || read_exact(fd, hdr, 24) || memcmp(hdr, "BNCH", 4)) goto out;
    int verify = hdr[5];
    uint64_t seed = (uint64_t)hdr[8] | (uint64_t)hdr[9] << 8 | (uint64_t)hdr[10] << 16 |
                    (uint64_t)hdr[11] << 24;
    uint64_t total = get64(hdr + 16), done = 0, bad = 0;
    if (hdr[4] == 'U') {
        while (done < total) {
            size_t want = total - done < CHUNK ? (size_t)(total - done) : CHUNK;
            ssize_t n = recv(fd, buf, want, 0);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) break;
            if (verify) bad += check(seed, done, buf, (size_t)n, scratch);
            done += (uint64_t)n;
        }
        put64(ack, done);
        put64(ack + 8, bad);
        if (write_all(fd, ack, 16)) goto out;
    } else if (hdr[4] == 'D') {
        if (!verify) gen(seed, 0, buf, CHUNK);
        while (done < total) {
            size_t want = total - done < CHUNK ? (size_t)(total - done) : CHUNK;
            if (verify) gen(seed, done, buf, want);
            if (write_all(fd, buf, want)) break;
            done += want;
        }
    }
    /* wait for the client's close so our FIN never races its last read */
    while (recv(fd, buf, CHUNK, 0) > 0) {
    }
out:
    free(buf);
    free(scratch);
    close(fd);
    return NULL;
}

static _Noreturn void serve_data(void) {
    int lfd = listen_on(opt("bind", "127.0.0.1"), SOCK_STREAM);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    for (;;) {
        int c = accept(lfd, NULL, NULL);
        if (c < 0) {
            if (errno == EINTR || errno == ECONNABORTED || errno == EMFILE) continue;
            die("accept");
        }
        pthread_t t;
        if (pthread_create(&t, &attr, data_conn, (void *)(intptr_t)c)) close(c);
    }
}

static _Noreturn void serve_udpecho(void) {
    int fd = listen_on(opt("bind", "127.0.0.1"), SOCK_DGRAM);
    int size = 8 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
    static char buf[65536];
    for (;;) {
        struct sockaddr_storage peer;
        socklen_t plen = sizeof peer;
        ssize_t n = recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&peer, &plen);
        if (n < 0) continue;
        sendto(fd, buf, (size_t)n, 0, (struct sockaddr *)&peer, plen);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* throughput client                                                                           */

struct stream {
    pthread_t thread;
    pthread_barrier_t *barrier;
    const struct sockaddr_storage *proxy, *target;
    socklen_t plen, tlen;
    int up, verify;
    uint32_t seed;
    uint64_t bytes, done, bad;
    double end;
    const char *error;
};

static void *stream_run(void *arg) {
    struct stream *s = arg;
    int fd = open_stream(s->proxy, s->plen, s->target, s->tlen, &s->error);
    pthread_barrier_wait(s->barrier);
    if (fd < 0) return NULL;
    unsigned char *buf = malloc(CHUNK), *scratch = malloc(CHUNK);
    unsigned char hdr[24] = "BNCH";
    hdr[4] = s->up ? 'U' : 'D';
    hdr[5] = (unsigned char)s->verify;
    for (int i = 0; i < 4; i++) hdr[8 + i] = (unsigned char)(s->seed >> (8 * i));
    put64(hdr + 16, s->bytes);
    if (!buf || !scratch || write_all(fd, hdr, 24)) {
        s->error = "header";
        goto out;
    }
    if (s->up) {
        if (!s->verify) gen(s->seed, 0, buf, CHUNK);
        while (s->done < s->bytes) {
            size_t want = s->bytes - s->done < CHUNK ? (size_t)(s->bytes - s->done) : CHUNK;
            if (s->verify) gen(s->seed, s->done, buf, want);
            if (write_all(fd, buf, want)) {
                s->error = "send";
                goto out;
            }
            s->done += want;
        }
        unsigned char ack[16];
        if (read_exact(fd, ack, 16)) {
            s->error = "ack";
            goto out;
        }
        s->end = now();
        if (get64(ack) != s->bytes) s->error = "sink received a different byte count";
        s->bad = get64(ack + 8);
    } else {
        while (s->done < s->bytes) {
            size_t want = s->bytes - s->done < CHUNK ? (size_t)(s->bytes - s->done) : CHUNK;
            ssize_t n = recv(fd, buf, want, 0);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) {
                s->error = n == 0 ? "early EOF" : "recv";
                goto out;
            }
            if (s->verify) s->bad += check(s->seed, s->done, buf, (size_t)n, scratch);
            s->done += (uint64_t)n;
        }
        s->end = now();
    }
out:
    free(buf);
    free(scratch);
    close(fd);
    return NULL;
}

static int client_tput(void) {
    struct sockaddr_storage proxy, target;
    socklen_t plen = 0, tlen;
    const char *p = opt("proxy", "-");
    int use_proxy = strcmp(p, "-") != 0;
    if (use_proxy && parse_addr(p, &proxy, &plen)) usage("bad proxy=");
    if (parse_addr(opt("target", ""), &target, &tlen)) usage("bad target=");
    int up = strcmp(opt("dir", "up"), "up") == 0;
    int streams = (int)opt_u("streams", 1), verify = (int)opt_u("verify", 0);
    uint64_t bytes = opt_u("bytes", 1ULL << 30);
    if (streams < 1 || streams > MAX_STREAMS) usage("streams must be 1..64");
    static struct stream st[MAX_STREAMS];
    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, (unsigned)streams + 1);
    for (int i = 0; i < streams; i++) {
        st[i] = (struct stream){.barrier = &barrier, .proxy = use_proxy ? &proxy : NULL,
                                .target = &target, .plen = plen, .tlen = tlen, .up = up,
                                .verify = verify, .seed = (uint32_t)(now() * 1000) + (uint32_t)i,
                                .bytes = bytes / (uint64_t)streams + (i == 0 ? bytes % (uint64_t)streams : 0)};
        if (pthread_create(&st[i].thread, NULL, stream_run, &st[i])) die("pthread_create");
    }
    double t0 = now();
    pthread_barrier_wait(&barrier);
    double end = t0;
    uint64_t done = 0, bad = 0;
    int errors = 0;
    const char *first_error = "";
    for (int i = 0; i < streams; i++) {
        pthread_join(st[i].thread, NULL);
        done += st[i].done;
        bad += st[i].bad;
        if (st[i].error) {
            if (!errors) first_error = st[i].error;
            errors++;
        }
        if (st[i].end > end) end = st[i].end;
    }
    printf("{\"bytes\": %llu, \"seconds\": %.6f, \"errors\": %d, \"error\": \"%s\", "
           "\"mismatched\": %llu, \"verified\": %s}\n",
           (unsigned long long)done, end - t0, errors, first_error, (unsigned long long)bad,
           verify ? "true" : "false");
    return errors || bad ? 1 : 0;
}

/* ------------------------------------------------------------------------------------------ */
/* session client (rate and idle): one epoll loop driving up to conc handshakes at once        */

enum { S_FREE, S_CONNECTING, S_METHOD, S_AUTH, S_REPLY, S_ECHO, S_EOF, S_HELD };

struct slot {
    int fd, state;
    double t0;
    size_t have;
    unsigned char buf[600];
};

struct sessions {
    int ep, use_proxy, hold, echo_len;
    struct sockaddr_storage proxy, target;
    socklen_t plen, tlen;
    const char *user, *pass;
    unsigned char request[32], auth[520], payload[32];
    size_t request_len, auth_len;
    uint64_t errors, err_connect, err_proto, err_timeout;
};

static void send_or_fail(struct sessions *g, struct slot *s, const void *data, size_t len,
                         int next);

static void slot_fail(struct sessions *g, struct slot *s, uint64_t *kind) {
    g->errors++;
    (*kind)++;
    close(s->fd);
    s->fd = -1;
    s->state = S_FREE;
}

static void slot_start(struct sessions *g, struct slot *s, int index) {
    const struct sockaddr_storage *dst = g->use_proxy ? &g->proxy : &g->target;
    s->fd = socket(dst->ss_family, SOCK_STREAM | SOCK_NONBLOCK, 0);
    s->t0 = now();
    s->have = 0;
    if (s->fd < 0) {
        g->errors++;
        g->err_connect++;
        s->state = S_FREE;
        return;
    }
    int one = 1;
    setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    s->state = S_CONNECTING;
    int rc = connect(s->fd, (const struct sockaddr *)dst, g->use_proxy ? g->plen : g->tlen);
    if (rc != 0 && errno != EINPROGRESS) {
        slot_fail(g, s, &g->err_connect);
        return;
    }
    struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = (uint32_t)index};
    epoll_ctl(g->ep, EPOLL_CTL_ADD, s->fd, &ev);
}

static void send_or_fail(struct sessions *g, struct slot *s, const void *data, size_t len,
                         int next) {
    if (send(s->fd, data, len, MSG_NOSIGNAL) != (ssize_t)len) {
        slot_fail(g, s, &g->err_proto);
        return;
    }
    s->state = next;
    s->have = 0;
}

/* Handle readiness of slot s. Returns 1 when the session finished its echo. */
static int slot_step(struct sessions *g, struct slot *s, int index) {
    if (s->state == S_CONNECTING) {
        int err = 0;
        socklen_t el = sizeof err;
        getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err) {
            slot_fail(g, s, &g->err_connect);
            return 0;
        }
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)index};
        epoll_ctl(g->ep, EPOLL_CTL_MOD, s->fd, &ev);
        if (!g->use_proxy) {
            send_or_fail(g, s, g->payload, (size_t)g->echo_len, S_ECHO);
        } else {
            unsigned char greet[3] = {5, 1, (unsigned char)(g->user ? 2 : 0)};
            send_or_fail(g, s, greet, 3, S_METHOD);
        }
        return 0;
    }
    ssize_t n = recv(s->fd, s->buf + s->have, sizeof s->buf - s->have, 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return 0;
    if (n == 0 && s->state == S_EOF) {
        close(s->fd);
        s->fd = -1;
        s->state = S_FREE;
        return 1;
    }
    if (n <= 0) {
        slot_fail(g, s, &g->err_proto);
        return 0;
    }
    s->have += (size_t)n;
    switch (s->state) {
    case S_METHOD:
        if (s->have < 2) return 0;
        if (s->have > 2 || s->buf[0] != 5 || s->buf[1] != (g->user ? 2 : 0)) break;
        if (g->user) send_or_fail(g, s, g->auth, g->auth_len, S_AUTH);
        else send_or_fail(g, s, g->request, g->request_len, S_REPLY);
        return 0;
    case S_AUTH:
        if (s->have < 2) return 0;
        if (s->have > 2 || s->buf[1] != 0) break;
        send_or_fail(g, s, g->request, g->request_len, S_REPLY);
        return 0;
    case S_REPLY: {
        size_t total = reply_length(s->buf, s->have);
        if (total == (size_t)-1) break;
        if (total == 0 || s->have < total) return 0;
        if (s->have > total || s->buf[1] != 0) break;
        send_or_fail(g, s, g->payload, (size_t)g->echo_len, S_ECHO);
        return 0;
    }
    case S_ECHO:
        if (s->have < (size_t)g->echo_len) return 0;
        if (s->have > (size_t)g->echo_len || memcmp(s->buf, g->payload, (size_t)g->echo_len))
            break;
        if (g->hold) {
            epoll_ctl(g->ep, EPOLL_CTL_DEL, s->fd, NULL);
            s->state = S_HELD;
            return 1;
        }
        s->state = S_EOF; /* the echo server closes after a newline: wait for its EOF */
        s->have = 0;
        return 0;
    case S_EOF:
        break; /* data after the echo */
    default:
        break;
    }
    slot_fail(g, s, &g->err_proto);
    return 0;
}

static void sessions_init(struct sessions *g) {
    memset(g, 0, sizeof *g);
    const char *p = opt("proxy", "-");
    g->use_proxy = strcmp(p, "-") != 0;
    if (g->use_proxy && parse_addr(p, &g->proxy, &g->plen)) usage("bad proxy=");
    if (parse_addr(opt("target", ""), &g->target, &g->tlen)) usage("bad target=");
    g->user = opt("user", NULL);
    g->pass = opt("pass", NULL);
    if ((g->user == NULL) != (g->pass == NULL)) usage("user= and pass= go together");
    g->request[0] = 5;
    g->request[1] = 1;
    g->request[2] = 0;
    g->request_len = 3 + socks_addr(&g->target, g->request + 3);
    if (g->user) {
        size_t ul = strlen(g->user), pl = strlen(g->pass);
        if (ul > 255 || pl > 255) usage("user/pass longer than 255");
        g->auth[0] = 1;
        g->auth[1] = (unsigned char)ul;
        memcpy(g->auth + 2, g->user, ul);
        g->auth[2 + ul] = (unsigned char)pl;
        memcpy(g->auth + 3 + ul, g->pass, pl);
        g->auth_len = 3 + ul + pl;
    }
    for (int i = 0; i < 31; i++) g->payload[i] = (unsigned char)('a' + i % 26);
    g->payload[31] = '\n'; /* the echo server closes after echoing it */
    g->echo_len = 32;
    g->ep = epoll_create1(0);
    if (g->ep < 0) die("epoll_create1");
}

/* Time out sessions stuck longer than SESSION_TIMEOUT_S (a server that stopped answering). */
static void sweep(struct sessions *g, struct slot *slots, int conc, double t) {
    for (int i = 0; i < conc; i++)
        if (slots[i].state != S_FREE && slots[i].state != S_HELD &&
            t - slots[i].t0 > SESSION_TIMEOUT_S)
            slot_fail(g, &slots[i], &g->err_timeout);
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static int client_rate(void) {
    struct sessions g;
    sessions_init(&g);
    int conc = (int)opt_u("conc", 64);
    if (conc < 1 || conc > MAX_CONC) usage("conc must be 1..1024");
    double warmup = opt_f("warmup", 1.0), duration = opt_f("duration", 5.0);
    static struct slot slots[MAX_CONC];
    uint32_t *lat = malloc(MAX_LATENCIES * sizeof *lat);
    if (!lat) die("malloc");
    size_t nlat = 0;
    uint64_t done = 0, errors_at_start = 0;
    double t_begin = now(), t_start = t_begin + warmup, t_end = t_start + duration;
    double t_drain = t_end + SESSION_TIMEOUT_S;
    int phase = 0; /* 0 warm-up, 1 measuring, 2 draining */
    for (int i = 0; i < conc; i++) slot_start(&g, &slots[i], i);
    struct epoll_event events[MAX_CONC];
    for (;;) {
        double t = now();
        if (phase == 0 && t >= t_start) {
            phase = 1;
            errors_at_start = g.errors;
            printf("start\n");
            fflush(stdout);
        }
        if (phase == 1 && t >= t_end) {
            phase = 2;
            printf("end\n");
            fflush(stdout);
        }
        int busy = 0;
        for (int i = 0; i < conc; i++) busy += slots[i].state != S_FREE;
        if (phase == 2 && (busy == 0 || t >= t_drain)) break;
        int n = epoll_wait(g.ep, events, MAX_CONC, 50);
        if (n < 0 && errno != EINTR) die("epoll_wait");
        t = now();
        for (int k = 0; k < n; k++) {
            int i = (int)events[k].data.u32;
            struct slot *s = &slots[i];
            if (s->state == S_FREE) continue;
            if (slot_step(&g, s, i) && phase == 1 && t < t_end) {
                done++;
                if (nlat < MAX_LATENCIES) lat[nlat++] = (uint32_t)((t - s->t0) * 1e6);
            }
        }
        sweep(&g, slots, conc, t);
        if (phase < 2)
            for (int i = 0; i < conc; i++)
                if (slots[i].state == S_FREE) slot_start(&g, &slots[i], i);
    }
    for (int i = 0; i < conc; i++)
        if (slots[i].fd >= 0 && slots[i].state != S_FREE) close(slots[i].fd);
    qsort(lat, nlat, sizeof *lat, cmp_u32);
    uint32_t p50 = nlat ? lat[nlat / 2] : 0, p99 = nlat ? lat[(nlat * 99) / 100] : 0;
    uint32_t pmax = nlat ? lat[nlat - 1] : 0;
    printf("{\"sessions\": %llu, \"seconds\": %.6f, \"p50_us\": %u, \"p99_us\": %u, "
           "\"max_us\": %u, \"errors\": %llu, \"errors_measured\": %llu, \"err_connect\": %llu, "
           "\"err_proto\": %llu, \"err_timeout\": %llu}\n",
           (unsigned long long)done, duration, p50, p99, pmax, (unsigned long long)g.errors,
           (unsigned long long)(g.errors - errors_at_start), (unsigned long long)g.err_connect,
           (unsigned long long)g.err_proto, (unsigned long long)g.err_timeout);
    free(lat);
    return 0;
}

static int client_idle(void) {
    struct sessions g;
    sessions_init(&g);
    g.hold = 1;
    g.echo_len = 1;
    g.payload[0] = 'z'; /* no newline: the echo server keeps the session open */
    size_t conc = (size_t)opt_u("conc", 64), want = (size_t)opt_u("n", 1000);
    double timeout = opt_f("timeout", 120.0);
    if (conc < 1 || conc > MAX_CONC) usage("conc must be 1..1024");
    /* every attempt gets a fresh slot (epoll data = its index); failures may be retried
     * until the budget of 256 extra attempts is spent */
    size_t cap = want + 256, started = 0, open = 0, lo = 0;
    struct slot *slots = calloc(cap, sizeof *slots);
    if (!slots) die("calloc");
    double t0 = now(), deadline = t0 + timeout;
    struct epoll_event events[MAX_CONC];
    while (open < want && now() < deadline) {
        while (lo < started && (slots[lo].state == S_FREE || slots[lo].state == S_HELD)) lo++;
        size_t inflight = 0;
        for (size_t i = lo; i < started; i++)
            inflight += slots[i].state != S_FREE && slots[i].state != S_HELD;
        while (inflight < conc && open + inflight < want && started < cap) {
            slot_start(&g, &slots[started], (int)started);
            inflight += slots[started].state != S_FREE;
            started++;
        }
        if (inflight == 0) break; /* attempts exhausted */
        int n = epoll_wait(g.ep, events, MAX_CONC, 50);
        if (n < 0 && errno != EINTR) die("epoll_wait");
        for (int k = 0; k < n; k++) {
            int i = (int)events[k].data.u32;
            if (slots[i].state == S_FREE || slots[i].state == S_HELD) continue;
            open += (size_t)slot_step(&g, &slots[i], i);
        }
        sweep(&g, slots + lo, (int)(started - lo), now());
    }
    printf("{\"open\": %zu, \"errors\": %llu, \"seconds\": %.3f}\n", open,
           (unsigned long long)g.errors, now() - t0);
    fflush(stdout);
    char line[64];
    (void)!fgets(line, sizeof line, stdin); /* bench.py measures memory, then writes a line */
    size_t alive = 0;
    for (size_t i = 0; i < started; i++) {
        if (slots[i].state != S_HELD) continue;
        struct pollfd pfd = {.fd = slots[i].fd, .events = POLLIN};
        unsigned char b = 'z';
        if (send(slots[i].fd, &b, 1, MSG_NOSIGNAL) == 1 && poll(&pfd, 1, 2000) == 1 &&
            recv(slots[i].fd, &b, 1, 0) == 1 && b == 'z')
            alive++;
    }
    /* end the sessions from the echo server's side (see TIME_WAIT above): a newline each,
     * then wait (bounded) for every EOF before closing */
    for (size_t i = 0; i < started; i++)
        if (slots[i].state == S_HELD) send(slots[i].fd, "\n", 1, MSG_NOSIGNAL);
    double close_deadline = now() + 10.0;
    for (size_t i = 0; i < started; i++) {
        if (slots[i].state != S_HELD) continue;
        char tmp[16];
        struct pollfd pfd = {.fd = slots[i].fd, .events = POLLIN};
        int wait_ms = (int)((close_deadline - now()) * 1000);
        while (wait_ms > 0 && poll(&pfd, 1, wait_ms) == 1 && recv(slots[i].fd, tmp, sizeof tmp, 0) > 0)
            wait_ms = (int)((close_deadline - now()) * 1000);
        close(slots[i].fd);
    }
    printf("{\"alive\": %zu}\n", alive);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* UDP ASSOCIATE client                                                                        */

static int client_udp(void) {
    struct sockaddr_storage proxy, target, relay;
    socklen_t plen = 0, tlen, rlen;
    const char *p = opt("proxy", "-");
    int use_proxy = strcmp(p, "-") != 0;
    if (use_proxy && parse_addr(p, &proxy, &plen)) usage("bad proxy=");
    if (parse_addr(opt("target", ""), &target, &tlen)) usage("bad target=");
    size_t size = (size_t)opt_u("size", 64);
    uint64_t window = opt_u("window", 64);
    double warmup = opt_f("warmup", 1.0), duration = opt_f("duration", 5.0);
    if (size < 8 || size > 65000) usage("size must be 8..65000");
    if (window < 1 || window > 4096) usage("window must be 1..4096");
    int udp = socket(target.ss_family, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    if (udp < 0) die("socket");
    int bufsize = 4 << 20;
    setsockopt(udp, SOL_SOCKET, SO_RCVBUF, &bufsize, sizeof bufsize);
    struct sockaddr_storage local;
    memset(&local, 0, sizeof local);
    local.ss_family = target.ss_family;
    if (target.ss_family == AF_INET)
        inet_pton(AF_INET, "127.0.0.1", &((struct sockaddr_in *)&local)->sin_addr);
    else
        inet_pton(AF_INET6, "::1", &((struct sockaddr_in6 *)&local)->sin6_addr);
    if (bind(udp, (struct sockaddr *)&local, tlen)) die("bind");
    socklen_t llen = sizeof local;
    getsockname(udp, (struct sockaddr *)&local, &llen);
    int ctl = -1;
    unsigned char header[32];
    size_t hlen = 0;
    if (use_proxy) {
        ctl = socket(proxy.ss_family, SOCK_STREAM, 0);
        set_timeouts(ctl);
        const char *why = "";
        if (connect(ctl, (struct sockaddr *)&proxy, plen) ||
            socks5(ctl, 3, &local, NULL, NULL, &relay, &why)) {
            printf("{\"error\": \"udp associate: %s\"}\n", why[0] ? why : "connect");
            return 1;
        }
        /* an unspecified BND.ADDR means "the address you reached me at" */
        if (relay.ss_family == AF_INET &&
            ((struct sockaddr_in *)&relay)->sin_addr.s_addr == htonl(INADDR_ANY))
            ((struct sockaddr_in *)&relay)->sin_addr = ((struct sockaddr_in *)&proxy)->sin_addr;
        rlen = relay.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
        header[0] = header[1] = header[2] = 0;
        hlen = 3 + socks_addr(&target, header + 3);
    } else {
        relay = target;
        rlen = tlen;
    }
    if (connect(udp, (struct sockaddr *)&relay, rlen)) die("connect udp");
    unsigned char *out = calloc(1, hlen + size), *in = malloc(65536);
    memcpy(out, header, hlen);
    /* received-sequence bitmap, bounded: the loop stops sending at max_seq */
    uint64_t max_seq = 64ULL << 20;
    uint8_t *seen = calloc(max_seq / 8, 1);
    if (!out || !in || !seen) die("calloc");
    uint64_t seq = 0, outstanding = 0, seq_start = 0, seq_end = 0, got_window = 0;
    uint64_t bad = 0, stalls = 0;
    double t_begin = now(), t_start = t_begin + warmup, t_end = t_start + duration;
    double t_stop = t_end + 0.3, last_rx = t_begin;
    int phase = 0;
    for (;;) {
        double t = now();
        if (phase == 0 && t >= t_start) {
            phase = 1;
            seq_start = seq;
        }
        if (phase == 1 && t >= t_end) {
            phase = 2;
            seq_end = seq;
        }
        if (t >= t_stop) break;
        while (phase < 2 && outstanding < window && seq < max_seq) {
            put64(out + hlen, seq);
            if (send(udp, out, hlen + size, 0) < 0) break;
            seq++;
            outstanding++;
        }
        struct pollfd pfd = {.fd = udp, .events = POLLIN};
        int rc = poll(&pfd, 1, 20);
        t = now();
        if (rc == 0) {
            /* nothing for 20 ms: the window's datagrams are lost; open it again */
            if (phase < 2 && outstanding && t - last_rx > 0.02) {
                stalls++;
                outstanding = 0;
            }
            continue;
        }
        for (int k = 0; k < 256; k++) {
            ssize_t n = recv(udp, in, 65536, 0);
            if (n < 0) break;
            size_t off = 0;
            if (use_proxy) {
                size_t rl = reply_length(in, (size_t)n); /* same ATYP layout as a reply */
                if (rl == 0 || rl == (size_t)-1 || (size_t)n < rl || in[2] != 0) {
                    bad++;
                    continue;
                }
                off = rl;
            }
            if ((size_t)n - off != size) {
                bad++;
                continue;
            }
            uint64_t s = get64(in + off);
            if (s >= seq || (seen[s / 8] >> (s % 8)) & 1) {
                bad++;
                continue;
            }
            seen[s / 8] |= (uint8_t)(1u << (s % 8));
            if (outstanding) outstanding--;
            last_rx = t;
            if (s >= seq_start && (phase == 1 || s < seq_end)) got_window++;
        }
    }
    if (seq_end == 0) seq_end = seq;
    uint64_t sent = seq_end - seq_start;
    printf("{\"sent\": %llu, \"received\": %llu, \"seconds\": %.6f, \"bad\": %llu, "
           "\"stalls\": %llu}\n",
           (unsigned long long)sent, (unsigned long long)got_window, duration,
           (unsigned long long)bad, (unsigned long long)stalls);
    if (ctl >= 0) close(ctl);
    close(udp);
    return 0;
}

int main(int argc, char **argv) {
    g_argc = argc;
    g_argv = argv;
    signal(SIGPIPE, SIG_IGN);
    raise_nofile();
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2) usage("usage: loadgen echo|data|udpecho|tput|rate|idle|udp key=value...");
    const char *cmd = argv[1];
    if (!strcmp(cmd, "echo")) serve_echo();
    if (!strcmp(cmd, "data")) serve_data();
    if (!strcmp(cmd, "udpecho")) serve_udpecho();
    if (!strcmp(cmd, "tput")) return client_tput();
    if (!strcmp(cmd, "rate")) return client_rate();
    if (!strcmp(cmd, "idle")) return client_idle();
    if (!strcmp(cmd, "udp")) return client_udp();
    usage("unknown command");
    return 64;
}
