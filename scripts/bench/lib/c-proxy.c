/*
 * gateway.ts's native floor: a TCP → Unix socket proxy in C doing what a proxying gateway must
 * do and nothing more — no first line, no routing, no limits, no logs. One thread, one
 * level-triggered epoll set, recv/send through one buffer per direction (BUF), TCP_NODELAY on
 * every accepted socket, half-close forwarded (shutdown(SHUT_WR) once a side's bytes are all
 * written), a partial send parks the rest and stops reading that side until EPOLLOUT. It is the
 * shape of nginx's stream proxy with one worker, without nginx's own work, so it tells what any
 * user-space proxy of this shape could reach with the bench's clients and publishers (Bun).
 *
 *   c-proxy [--sockmap] PORT=PATH [PORT=PATH ...]
 *
 * Listens on 127.0.0.1:PORT and connects each accepted connection to the Unix socket PATH.
 * Prints "ready" once every port listens; runs until killed.
 *
 * --sockmap: the other shape, a proxy in the kernel. Both sockets of a pair go into a BPF
 * sockhash whose SK_SKB verdict program redirects every incoming skb to the other socket's
 * egress (bpf_sk_redirect_hash, keyed by bpf_get_socket_cookie: the receiving TCP socket's own
 * cookie; for the Unix socket, the sending peer's — the publisher's end, whose cookie unix_diag
 * tells), so no byte passes through this process; epoll sees only ends of file. A connection
 * it cannot put in the maps is closed (a port probe's, already closed, is); bytes the program
 * lets pass (none, unless a lookup fails) take the recv/send path. Measured for latency
 * only: a redirected skb is sent by a kworker from the destination's psock queue, which user
 * space cannot see drain, so a half-close forwarded here can overtake bytes still queued there
 * (the reason a gateway cannot be built on it as is). Needs root and CONFIG_BPF_STREAM_PARSER;
 * without them it exits 3 saying why.
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
#include <linux/bpf.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <linux/unix_diag.h>
#include <sys/stat.h>
#include <sys/syscall.h>

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

/* --sockmap: the member map (sockets keyed by their own cookie, the verdict program attached),
 * the target map (a source's key → the socket its bytes go to), a sock_diag socket. */
static int sockmap = 0, members = -1, targets = -1, diag = -1;

static long bpf(int cmd, union bpf_attr *attr) { return syscall(__NR_bpf, cmd, attr, sizeof *attr); }

static void unsupported(const char *what) {
  fprintf(stderr, "c-proxy --sockmap: %s: %s\n", what, strerror(errno));
  exit(3);
}

#define INSN(c, d, s, o, i) ((struct bpf_insn){.code = (c), .dst_reg = (d), .src_reg = (s), .off = (o), .imm = (i)})

static void sockmapInit(void) {
  union bpf_attr a;
  memset(&a, 0, sizeof a);
  a.map_type = BPF_MAP_TYPE_SOCKHASH;
  a.key_size = 8;
  a.value_size = 4;
  a.max_entries = 4096;
  if ((members = bpf(BPF_MAP_CREATE, &a)) < 0 || (targets = bpf(BPF_MAP_CREATE, &a)) < 0) unsupported("sockhash");
  /* key = bpf_get_socket_cookie(skb); bpf_sk_redirect_hash(skb, targets, &key, 0); return SK_PASS
   * (a redirect when the lookup found the target, else the bytes stay on this socket). */
  struct bpf_insn prog[] = {
      INSN(BPF_ALU64 | BPF_MOV | BPF_X, 6, 1, 0, 0),
      INSN(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_get_socket_cookie),
      INSN(BPF_STX | BPF_DW | BPF_MEM, 10, 0, -8, 0),
      INSN(BPF_ALU64 | BPF_MOV | BPF_X, 1, 6, 0, 0),
      INSN(BPF_LD | BPF_DW | BPF_IMM, 2, BPF_PSEUDO_MAP_FD, 0, targets),
      INSN(0, 0, 0, 0, 0),
      INSN(BPF_ALU64 | BPF_MOV | BPF_X, 3, 10, 0, 0),
      INSN(BPF_ALU64 | BPF_ADD | BPF_K, 3, 0, 0, -8),
      INSN(BPF_ALU64 | BPF_MOV | BPF_K, 4, 0, 0, 0),
      INSN(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_sk_redirect_hash),
      INSN(BPF_ALU64 | BPF_MOV | BPF_K, 0, 0, 0, SK_PASS),
      INSN(BPF_JMP | BPF_EXIT, 0, 0, 0, 0),
  };
  static char log[16384];
  memset(&a, 0, sizeof a);
  a.prog_type = BPF_PROG_TYPE_SK_SKB;
  a.expected_attach_type = BPF_SK_SKB_VERDICT;
  a.insns = (uintptr_t)prog;
  a.insn_cnt = sizeof prog / sizeof prog[0];
  a.license = (uintptr_t)"GPL";
  a.log_buf = (uintptr_t)log;
  a.log_size = sizeof log;
  a.log_level = 1;
  int fd = bpf(BPF_PROG_LOAD, &a);
  if (fd < 0) {
    fprintf(stderr, "%s", log);
    unsupported("loading the verdict program");
  }
  memset(&a, 0, sizeof a);
  a.target_fd = members;
  a.attach_bpf_fd = fd;
  a.attach_type = BPF_SK_SKB_VERDICT;
  if (bpf(BPF_PROG_ATTACH, &a) < 0) unsupported("attaching the verdict program");
  if ((diag = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG)) < 0) unsupported("sock_diag");
}

/* unix_diag on the socket with inode `ino`: its cookie, and its peer's inode into *peer. -1 on failure. */
static int unixDiag(uint32_t ino, uint64_t *cookie, uint32_t *peer) {
  struct {
    struct nlmsghdr h;
    struct unix_diag_req r;
  } q = {.h = {.nlmsg_len = sizeof q, .nlmsg_type = SOCK_DIAG_BY_FAMILY, .nlmsg_flags = NLM_F_REQUEST},
         .r = {.sdiag_family = AF_UNIX, .udiag_states = ~0u, .udiag_ino = ino, .udiag_show = UDIAG_SHOW_PEER, .udiag_cookie = {~0u, ~0u}}};
  if (send(diag, &q, sizeof q, 0) != sizeof q) return -1;
  static char b[8192];
  ssize_t n = recv(diag, b, sizeof b, 0);
  struct nlmsghdr *h = (struct nlmsghdr *)b;
  if (n < (ssize_t)NLMSG_LENGTH(sizeof(struct unix_diag_msg)) || h->nlmsg_type != SOCK_DIAG_BY_FAMILY) return -1;
  struct unix_diag_msg *m = NLMSG_DATA(h);
  *cookie = m->udiag_cookie[0] | (uint64_t)m->udiag_cookie[1] << 32;
  char *at = (char *)(m + 1), *end = b + (h->nlmsg_len < (size_t)n ? h->nlmsg_len : (size_t)n);
  while (at + 4 <= end) {
    unsigned short len = *(unsigned short *)at, type = *(unsigned short *)(at + 2);
    if (len < 4 || at + len > end) break;
    if (type == UNIX_DIAG_PEER && len >= 8 && peer != NULL) *peer = *(uint32_t *)(at + 4);
    at += (len + 3) & ~3;
  }
  return 0;
}

static int mapPut(int map, uint64_t key, int fd) {
  union bpf_attr a;
  memset(&a, 0, sizeof a);
  a.map_fd = map;
  a.key = (uintptr_t)&key;
  a.value = (uintptr_t)&fd;
  a.flags = BPF_ANY;
  return bpf(BPF_MAP_UPDATE_ELEM, &a) < 0 ? -1 : 0;
}

/* Puts the pair (c: TCP, u: Unix) in the kernel's hands. NULL, or what failed (the pair then proxies in user space). */
static const char *redirect(int c, int u) {
  uint64_t kc, ku, kp;
  socklen_t len = sizeof kc;
  struct stat st;
  uint32_t peer = 0;
  if (getsockopt(c, SOL_SOCKET, SO_COOKIE, &kc, &len) < 0) return "SO_COOKIE";
  if (fstat(u, &st) < 0) return "fstat";
  /* The publisher's end has an inode once the publisher accepted it: wait for that, up to 50 ms. */
  for (int tries = 0; peer == 0 && tries < 500; tries++) {
    if (unixDiag((uint32_t)st.st_ino, &ku, &peer) < 0) return "unix_diag of its Unix socket";
    if (peer == 0) usleep(100);
  }
  if (peer == 0) return "the publisher did not accept within 50 ms";
  if (unixDiag(peer, &kp, NULL) < 0) return "unix_diag of the publisher's end";
  if (mapPut(targets, kc, u) < 0 || mapPut(targets, kp, c) < 0) return "the target map";
  if (mapPut(members, kc, c) < 0 || mapPut(members, ku, u) < 0) return "the sockhash";
  /* Bytes that arrived before c joined are read by the program on its next wake-up: make one now. */
  int one = 1;
  setsockopt(c, SOL_SOCKET, SO_RCVLOWAT, &one, sizeof one);
  return NULL;
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
  /* A pair the kernel cannot take is closed, not proxied here: a --sockmap figure is never user space's. */
  const char *failed = sockmap ? redirect(c, u) : NULL;
  if (failed != NULL) {
    int err = errno;
    char byte;
    if (recv(c, &byte, 1, MSG_PEEK | MSG_DONTWAIT) != 0) /* a client already gone (a port probe) goes quietly */
      fprintf(stderr, "c-proxy --sockmap: closing a connection the kernel could not take (%s: %s)\n", failed, strerror(err));
    close(c);
    close(u);
    return;
  }
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
  int first = 1;
  if (argc > 1 && strcmp(argv[1], "--sockmap") == 0) sockmap = first = 2;
  if (argc <= first || argc - first > MAX_LISTEN) {
    fprintf(stderr, "usage: c-proxy [--sockmap] PORT=PATH [PORT=PATH ...] (at most %d)\n", MAX_LISTEN);
    return 2;
  }
  if (sockmap) sockmapInit();
  ep = epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) die("epoll_create1");
  for (int i = first; i < argc; i++) {
    char *eq = strchr(argv[i], '=');
    if (eq == NULL) {
      fprintf(stderr, "c-proxy: %s is not PORT=PATH\n", argv[i]);
      return 2;
    }
    *eq = 0;
    struct listener *l = &listeners[i - first];
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
