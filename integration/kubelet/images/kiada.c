/* kiada: a small HTTP app in the role of the Kubernetes in Action (2nd ed.) example image.
 *
 * Serves HTTP/1.0 on port 8080 (or $PORT), one request per connection:
 *   GET /          "Kiada version 0.1. Request processed by "HOSTNAME". Client IP: ADDR\n"
 *   GET /healthz   200 "OK\n", or 500 once told to fail (a GET /fail, or the file
 *                  /tmp/fail-health exists, or $FAIL_HEALTH is set)
 *   GET /fail      from now on /healthz answers 500
 * Each request is logged on stdout. SIGTERM ends it with status 0 ("kiada: SIGTERM, exiting"),
 * or is ignored when $IGNORE_SIGTERM is set (then only SIGKILL ends it).
 * Static, single-threaded, no dependencies: compiled by the harness with gcc -static. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

static volatile sig_atomic_t term;
static int failing;

static void on_term(int sig) { (void)sig; term = 1; }

static void answer(int fd, int code, const char *body)
{
    char head[256];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.0 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n\r\n",
                     code, code == 200 ? "OK" : code == 404 ? "Not Found" : "Internal Server Error",
                     strlen(body));
    if (write(fd, head, (size_t)n) < 0 || write(fd, body, strlen(body)) < 0)
        perror("kiada: write");
}

static void serve(int fd, const char *host, const char *client)
{
    char req[2048], path[512], body[512];
    ssize_t got = 0, n;
    struct stat st;

    while (got < (ssize_t)sizeof req - 1 && (n = read(fd, req + got, sizeof req - 1 - (size_t)got)) > 0) {
        got += n;
        req[got] = 0;
        if (strstr(req, "\r\n\r\n") || strstr(req, "\n\n"))
            break;
    }
    req[got < 0 ? 0 : got] = 0;
    if (sscanf(req, "%*s %511s", path) != 1)
        strcpy(path, "?");
    printf("kiada: %s GET %s\n", client, path);
    fflush(stdout);
    if (strcmp(path, "/") == 0) {
        snprintf(body, sizeof body, "Kiada version 0.1. Request processed by \"%s\". Client IP: %s\n",
                 host, client);
        answer(fd, 200, body);
    } else if (strcmp(path, "/healthz") == 0) {
        if (failing || getenv("FAIL_HEALTH") || stat("/tmp/fail-health", &st) == 0)
            answer(fd, 500, "failing\n");
        else
            answer(fd, 200, "OK\n");
    } else if (strcmp(path, "/fail") == 0) {
        failing = 1;
        answer(fd, 200, "the health check fails from now on\n");
    } else {
        answer(fd, 404, "not found\n");
    }
}

int main(void)
{
    char host[256] = "?", client[INET6_ADDRSTRLEN + 8];
    const char *p = getenv("PORT");
    int port = p ? atoi(p) : 8080, one = 1, ls;
    struct sockaddr_in6 addr = {0};
    struct sigaction sa = {0};

    gethostname(host, sizeof host - 1);
    if (getenv("IGNORE_SIGTERM")) {
        signal(SIGTERM, SIG_IGN);
        printf("kiada: ignoring SIGTERM\n");
    } else {
        sa.sa_handler = on_term; /* no SA_RESTART: accept returns EINTR */
        sigaction(SIGTERM, &sa, NULL);
    }
    ls = socket(AF_INET6, SOCK_STREAM, 0);
    if (ls < 0) {
        perror("kiada: socket");
        return 1;
    }
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    addr.sin6_family = AF_INET6; /* dual stack: IPv4 arrives as ::ffff:a.b.c.d */
    addr.sin6_port = htons((unsigned short)port);
    addr.sin6_addr = in6addr_any;
    if (bind(ls, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(ls, 64) < 0) {
        perror("kiada: bind/listen");
        return 1;
    }
    printf("kiada: listening on port %d as %s\n", port, host);
    fflush(stdout);
    while (!term) {
        struct sockaddr_in6 peer;
        socklen_t len = sizeof peer;
        int fd = accept(ls, (struct sockaddr *)&peer, &len);
        if (fd < 0) {
            if (errno == EINTR)
                continue;
            perror("kiada: accept");
            return 1;
        }
        if (!inet_ntop(AF_INET6, &peer.sin6_addr, client, sizeof client))
            strcpy(client, "?");
        if (strncmp(client, "::ffff:", 7) == 0)
            memmove(client, client + 7, strlen(client + 7) + 1);
        serve(fd, host, client);
        close(fd);
    }
    printf("kiada: SIGTERM, exiting\n");
    return 0;
}
