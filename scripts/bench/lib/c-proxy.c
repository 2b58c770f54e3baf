/*
 * gateway.ts's native floor: a TCP → Unix socket proxy in C doing what a proxying gateway must
 * do and nothing more — no first line, no routing, no limits, no logs. One thread, one
 * level-triggered epoll set, recv/send through one buffer per direction (BUF), TCP_NODELAY on
 * every accepted socket, half-close forwarded (shutdown(SHUT_WR) once a side's bytes are all
 * written), a partial send parks the rest and stops reading that side until EPOLLOUT. It is the
 * shape of nginx's stream proxy with one worker, without nginx's own work, so it tells what any
 * user-space proxy of this shape could reach with the bench's clients and publishers (Bun).
 *
 *   c-proxy PORT=PATH [PORT=PATH ...]
 *
 * Listens on 127.0.0.1:PORT and connects each accepted connection to the Unix socket PATH.
 * Prints "ready" once every port listens; runs until killed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define BUF (64 * 1024)
#define MAX_LISTEN 8

/* One end of a proxied connection: its socket, and the bytes read from it not yet written to the peer. */
struct end {
  int fd;
  struct end *peer;
  char *buf;
  size_t off, len;   /* buf[off, len) waits for the peer to take it */
  int eof;           /* its peer half-closed (recv returned 0) */
  int shut;          /* shutdown(SHUT_WR) done on this socket */
  uint32_t interest; /* what epoll watches on fd */
};

struct listener {
  int fd;
  const char *path;
};

static int ep;
static struct listener listeners[MAX_LISTEN];

static void die(const char *what) {
  perror(what);
  exit(1);
}

static void closePair(struct end *a) {
  struct end *b = a->peer;
  close(a->fd);
  close(b->fd);
  free(a->buf);
  free(b->buf);
  free(a);
  free(b);
}

/* What `e`'s socket must be watched for: input while it owes its peer nothing, output while the peer's bytes wait. */
static int watch(struct end *e) {
  uint32_t want = 0;
  if (!e->eof && e->off == e->len) want |= EPOLLIN;
  if (e->peer->off < e->peer->len) want |= EPOLLOUT;
  if (want == e->interest) return 0;
  struct epoll_event ev = {.events = want, .data.ptr = e};
  if (epoll_ctl(ep, EPOLL_CTL_MOD, e->fd, &ev) < 0) return -1;
  e->interest = want;
  return 0;
}

/* Writes what `src` holds to its peer; forwards src's EOF once all is written. -1: the pair is done with. */
static int flush(struct end *src) {
  struct end *dst = src->peer;
  while (src->off < src->len) {
    ssize_t w = send(dst->fd, src->buf + src->off, src->len - src->off, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
      return -1;
    }
    src->off += (size_t)w;
  }
  src->off = src->len = 0;
  if (src->eof && !dst->shut) {
    shutdown(dst->fd, SHUT_WR);
    dst->shut = 1;
  }
  return 0;
}

/* Reads from `src` and writes on at once, while reads fill the buffer. -1: the pair is done with. */
static int pump(struct end *src) {
  while (src->off == src->len && !src->eof) {
    ssize_t n = recv(src->fd, src->buf, BUF, MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
      return -1;
    }
    if (n == 0) src->eof = 1;
    src->off = 0;
    src->len = (size_t)n;
    if (flush(src) < 0) return -1;
    if ((size_t)n < BUF) break;
  }
  return 0;
}

static void accepted(struct listener *l, int c) {
  int one = 1;
  setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  int u = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  snprintf(addr.sun_path, sizeof addr.sun_path, "%s", l->path);
  if (u < 0 || connect(u, (struct sockaddr *)&addr, sizeof addr) < 0) {
    if (u >= 0) close(u);
    close(c);
    return;
  }
  fcntl(u, F_SETFL, fcntl(u, F_GETFL) | O_NONBLOCK);
  struct end *a = calloc(1, sizeof *a), *b = calloc(1, sizeof *b);
  a->fd = c;
  b->fd = u;
  a->peer = b;
  b->peer = a;
  a->buf = malloc(BUF);
  b->buf = malloc(BUF);
  a->interest = b->interest = EPOLLIN;
  struct epoll_event ea = {.events = EPOLLIN, .data.ptr = a}, eb = {.events = EPOLLIN, .data.ptr = b};
  if (epoll_ctl(ep, EPOLL_CTL_ADD, c, &ea) < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, u, &eb) < 0) closePair(a);
}

int main(int argc, char **argv) {
  if (argc < 2 || argc - 1 > MAX_LISTEN) {
    fprintf(stderr, "usage: c-proxy PORT=PATH [PORT=PATH ...] (at most %d)\n", MAX_LISTEN);
    return 2;
  }
  ep = epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) die("epoll_create1");
  for (int i = 1; i < argc; i++) {
    char *eq = strchr(argv[i], '=');
    if (eq == NULL) {
      fprintf(stderr, "c-proxy: %s is not PORT=PATH\n", argv[i]);
      return 2;
    }
    *eq = 0;
    struct listener *l = &listeners[i - 1];
    l->path = eq + 1;
    l->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(l->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[i])), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(l->fd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(l->fd, 128) < 0) die("listen");
    /* A listener's epoll data is its address, told from an end's by the table's bounds. */
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = l};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, l->fd, &ev) < 0) die("epoll_ctl");
  }
  printf("ready\n");
  fflush(stdout);
  struct epoll_event events[64];
  for (;;) {
    int n = epoll_wait(ep, events, 64, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      die("epoll_wait");
    }
    for (int i = 0; i < n; i++) {
      void *p = events[i].data.ptr;
      if (p == NULL) continue;
      if (p >= (void *)listeners && p < (void *)(listeners + MAX_LISTEN)) {
        struct listener *l = p;
        int c;
        while ((c = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) accepted(l, c);
        continue;
      }
      struct end *e = p;
      uint32_t got = events[i].events;
      int bad = (got & EPOLLERR) != 0;
      if (!bad && (got & EPOLLOUT)) bad = flush(e->peer) < 0;
      if (!bad && (got & (EPOLLIN | EPOLLHUP))) bad = pump(e) < 0;
      /* Done when both sides half-closed and everything was written, or on an error. */
      if (bad || (e->eof && e->peer->eof && e->off == e->len && e->peer->off == e->peer->len)) {
        /* A pair's two ends may both be in this batch: forget the other's pending event. */
        for (int j = i + 1; j < n; j++)
          if (events[j].data.ptr == e->peer) events[j].data.ptr = NULL, events[j].events = 0;
        closePair(e);
        continue;
      }
      if (watch(e) < 0 || watch(e->peer) < 0) closePair(e);
    }
  }
}
