/*
 * addr.ts's floor: the add+del pairs stoa's binding sends (src/ffi/netlink.ts), written in C on
 * one NETLINK_ROUTE socket set up the same way (SO_RCVTIMEO 2 s, NETLINK_CAP_ACK, NETLINK_EXT_ACK),
 * so the bench can tell the binding's cost from the kernel's.
 *
 *   addr-baseline IFINDEX PREFIX COUNT WARMUP
 *
 * PREFIX is the run's /64 (e.g. fd12:3456:789a:b::); each pair takes a fresh random /128 in it.
 * One pair: RTM_NEWADDR (NLM_F_REQUEST|ACK|CREATE|EXCL, ifaddrmsg + IFA_LOCAL + IFA_ADDRESS +
 * IFA_FLAGS = IFA_F_NODAD), wait for its ACK, RTM_DELADDR (NLM_F_REQUEST|ACK, IFA_LOCAL), wait
 * for its ACK, timed with CLOCK_MONOTONIC as addr.ts times stoa's. WARMUP untimed pairs first,
 * then COUNT timed ones, printed one per line as "ADD_NS DEL_NS" (addr.ts takes the percentiles
 * of their sum, the pair, as of stoa's samples).
 * An address it added is deleted before it exits, on errors and SIGINT/SIGTERM too; it exits 1
 * on any kernel error.
 */
#include <arpa/inet.h>
#include <endian.h>
#include <errno.h>
#include <linux/if_addr.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#ifndef NETLINK_CAP_ACK
#define NETLINK_CAP_ACK 10
#endif
#ifndef NETLINK_EXT_ACK
#define NETLINK_EXT_ACK 11
#endif

static int fd;
static uint32_t seq;
static unsigned ifindex;
static unsigned char buf[64 * 1024];
static volatile sig_atomic_t stop;

static void on_signal(int sig) {
  (void)sig;
  stop = 1;
}

static void put_attr(unsigned char *msg, uint32_t *len, uint16_t type, const void *value, uint16_t n) {
  struct rtattr *rta = (struct rtattr *)(msg + NLMSG_ALIGN(*len));
  rta->rta_type = type;
  rta->rta_len = RTA_LENGTH(n);
  memcpy(RTA_DATA(rta), value, n);
  *len = NLMSG_ALIGN(*len) + RTA_ALIGN(rta->rta_len);
}

/* One request and its ACK; returns 0 or the kernel's errno (-1: a socket error, errno set). */
static int request(uint16_t type, uint16_t flags, const unsigned char addr[16]) {
  unsigned char msg[128] __attribute__((aligned(4)));
  memset(msg, 0, sizeof msg);
  struct nlmsghdr *h = (struct nlmsghdr *)msg;
  struct ifaddrmsg *ifa = NLMSG_DATA(h);
  uint32_t len = NLMSG_LENGTH(sizeof *ifa);
  h->nlmsg_type = type;
  h->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | flags;
  h->nlmsg_seq = ++seq;
  ifa->ifa_family = AF_INET6;
  ifa->ifa_prefixlen = 128;
  ifa->ifa_index = ifindex;
  put_attr(msg, &len, IFA_LOCAL, addr, 16);
  if (type == RTM_NEWADDR) {
    uint32_t nodad = IFA_F_NODAD;
    ifa->ifa_flags = IFA_F_NODAD;
    put_attr(msg, &len, IFA_ADDRESS, addr, 16);
    put_attr(msg, &len, IFA_FLAGS, &nodad, 4);
  }
  h->nlmsg_len = len;
  while (sendto(fd, msg, len, 0, NULL, 0) < 0)
    if (errno != EINTR) return -1;
  for (;;) {
    struct sockaddr_nl from;
    socklen_t fromlen = sizeof from;
    ssize_t n = recvfrom(fd, buf, sizeof buf, MSG_TRUNC, (struct sockaddr *)&from, &fromlen);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (n > (ssize_t)sizeof buf || from.nl_pid != 0) continue;
    for (struct nlmsghdr *r = (struct nlmsghdr *)buf; NLMSG_OK(r, (size_t)n); r = NLMSG_NEXT(r, n)) {
      if (r->nlmsg_seq != seq || r->nlmsg_type != NLMSG_ERROR) continue;
      return -((struct nlmsgerr *)NLMSG_DATA(r))->error;
    }
  }
}

static void fail(const char *what, int code) {
  fprintf(stderr, "addr-baseline: %s: %s\n", what, strerror(code < 0 ? errno : code));
  exit(1);
}

int main(int argc, char **argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: addr-baseline IFINDEX PREFIX COUNT WARMUP\n");
    return 2;
  }
  ifindex = (unsigned)atoi(argv[1]);
  unsigned char addr[16];
  if (inet_pton(AF_INET6, argv[2], addr) != 1) {
    fprintf(stderr, "addr-baseline: bad prefix %s\n", argv[2]);
    return 2;
  }
  long count = atol(argv[3]), warmup = atol(argv[4]);
  long *ns = calloc(2 * (size_t)count + 2, sizeof *ns);
  if (ns == NULL) fail("calloc", ENOMEM);

  struct sigaction sa = {.sa_handler = on_signal};
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);

  fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
  if (fd < 0) fail("socket", -1);
  struct sockaddr_nl local = {.nl_family = AF_NETLINK};
  if (bind(fd, (struct sockaddr *)&local, sizeof local) < 0) fail("bind", -1);
  struct timeval tv = {.tv_sec = 2};
  if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) < 0) fail("SO_RCVTIMEO", -1);
  int one = 1;
  setsockopt(fd, SOL_NETLINK, NETLINK_CAP_ACK, &one, sizeof one);
  setsockopt(fd, SOL_NETLINK, NETLINK_EXT_ACK, &one, sizeof one);
  getrandom(&seq, sizeof seq, 0);

  for (long i = 0; i < warmup + count && !stop; i++) {
    /* A random interface id: not all zeros (subnet-router anycast), not in the reserved top 128. */
    uint64_t iid;
    do {
      if (getrandom(&iid, sizeof iid, 0) != sizeof iid) fail("getrandom", -1);
    } while (iid == 0 || iid >= 0xfdffffffffffff80ull);
    iid = htobe64(iid);
    memcpy(addr + 8, &iid, 8);
    struct timespec t0, t1, t2;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int rc = request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, addr);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (rc != 0) fail("RTM_NEWADDR", rc);
    rc = request(RTM_DELADDR, 0, addr);
    clock_gettime(CLOCK_MONOTONIC, &t2);
    if (rc != 0) {
      /* Once more, so the address never stays behind; then report the first failure. */
      request(RTM_DELADDR, 0, addr);
      fail("RTM_DELADDR", rc);
    }
    if (i >= warmup) {
      ns[2 * (i - warmup)] = (t1.tv_sec - t0.tv_sec) * 1000000000L + (t1.tv_nsec - t0.tv_nsec);
      ns[2 * (i - warmup) + 1] = (t2.tv_sec - t1.tv_sec) * 1000000000L + (t2.tv_nsec - t1.tv_nsec);
    }
  }
  if (stop) return 130;
  for (long i = 0; i < count; i++) printf("%ld %ld\n", ns[2 * i], ns[2 * i + 1]);
  return 0;
}
