/*
 * udp-gen: a paced UDP generator for scripts/bench/supervisor.ts (issue 14).
 *
 * Sends --size-byte datagrams to --dst:--port, --rate per second (0 = as fast as it can) for
 * --seconds, out of the interface of index --ifindex (IP_MULTICAST_IF, TTL 8, no loopback) when
 * --dst is a multicast group. --flows sockets, bound to source ports --sport, --sport+1, …, take
 * the batches in turn, so a relay that spreads flows by hash (PACKET_FANOUT_HASH) sees --flows
 * flows. Each payload starts with a 4-byte big-endian sequence number (0, 1, 2, … over all
 * flows); the rest is a fixed pattern.
 *
 * Pacing: the number due at time t is rate × t; when behind, it sends min(due − sent, batch)
 * datagrams in one sendmmsg (batch = rate / 5,000, 1…64: a burst every 200 µs); when ahead, it
 * nanosleeps until ~100 µs before the next batch is due and spins the rest. It prints one JSON
 * line at the end: what it really sent (sendmmsg's counts), failed calls, the elapsed time and
 * its own CPU time (getrusage: user + system, which includes the softirq work the kernel did in
 * its context — on veth, the receiving side's too).
 *
 *   udp-gen --dst 239.1.1.1 --port 5000 --ifindex 7 --rate 100000 --seconds 3 --size 1024 --flows 8
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_BATCH 64
#define MAX_FLOWS 64
#define MAX_SIZE 65507
/** One pacing burst is due every this many ns (rate / BURSTS_PER_S datagrams each). */
#define BURSTS_PER_S 5000
/** Sleep only when the next burst is further away than this; spin the last part. */
#define SPIN_NS 100000L

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what) {
  fprintf(stderr, "udp-gen: %s: %s\n", what, strerror(errno));
  exit(1);
}

int main(int argc, char **argv) {
  const char *dst = "239.1.1.1";
  int port = 5000, ifindex = 0, size = 1024, flows = 1, sport = 40000;
  double rate = 0, seconds = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    const char *k = argv[i], *v = argv[i + 1];
    if (!strcmp(k, "--dst")) dst = v;
    else if (!strcmp(k, "--port")) port = atoi(v);
    else if (!strcmp(k, "--ifindex")) ifindex = atoi(v);
    else if (!strcmp(k, "--rate")) rate = atof(v);
    else if (!strcmp(k, "--seconds")) seconds = atof(v);
    else if (!strcmp(k, "--size")) size = atoi(v);
    else if (!strcmp(k, "--flows")) flows = atoi(v);
    else if (!strcmp(k, "--sport")) sport = atoi(v);
    else {
      fprintf(stderr, "udp-gen: unknown option %s (see the header of udp-gen.c)\n", k);
      return 2;
    }
  }
  if (size < 4 || size > MAX_SIZE || flows < 1 || flows > MAX_FLOWS || seconds <= 0) {
    fprintf(stderr, "udp-gen: --size 4..%d, --flows 1..%d, --seconds > 0\n", MAX_SIZE, MAX_FLOWS);
    return 2;
  }

  struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(port)};
  if (inet_pton(AF_INET, dst, &to.sin_addr) != 1) {
    fprintf(stderr, "udp-gen: --dst %s is not an IPv4 address\n", dst);
    return 2;
  }
  int fds[MAX_FLOWS];
  for (int f = 0; f < flows; f++) {
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) die("socket");
    int one = 1, ttl = 8, zero = 0, sndbuf = 4 << 20;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &sndbuf, sizeof sndbuf) < 0) setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
    if (ifindex > 0) {
      struct ip_mreqn mreq = {.imr_ifindex = ifindex};
      if (setsockopt(fd, IPPROTO_IP, IP_MULTICAST_IF, &mreq, sizeof mreq) < 0) die("IP_MULTICAST_IF");
    }
    if (setsockopt(fd, IPPROTO_IP, IP_MULTICAST_TTL, &ttl, sizeof ttl) < 0) die("IP_MULTICAST_TTL");
    if (setsockopt(fd, IPPROTO_IP, IP_MULTICAST_LOOP, &zero, sizeof zero) < 0) die("IP_MULTICAST_LOOP");
    struct sockaddr_in from = {.sin_family = AF_INET, .sin_port = htons(sport + f)};
    if (bind(fd, (struct sockaddr *)&from, sizeof from) < 0) die("bind");
    if (connect(fd, (struct sockaddr *)&to, sizeof to) < 0) die("connect");
    fds[f] = fd;
  }

  static uint8_t bufs[MAX_BATCH][MAX_SIZE];
  struct mmsghdr msgs[MAX_BATCH];
  struct iovec iov[MAX_BATCH];
  memset(msgs, 0, sizeof msgs);
  for (int i = 0; i < MAX_BATCH; i++) {
    for (int j = 4; j < size; j++) bufs[i][j] = (uint8_t)(j * 131 + 7);
    iov[i].iov_base = bufs[i];
    iov[i].iov_len = size;
    msgs[i].msg_hdr.msg_iov = &iov[i];
    msgs[i].msg_hdr.msg_iovlen = 1;
  }

  int batch = rate > 0 ? (int)(rate / BURSTS_PER_S) : MAX_BATCH;
  if (batch < 1) batch = 1;
  if (batch > MAX_BATCH) batch = MAX_BATCH;
  uint64_t sent = 0, failed = 0, turn = 0;
  const double t0 = now_s();
  double elapsed = 0;
  for (;;) {
    elapsed = now_s() - t0;
    if (elapsed >= seconds) break;
    int n = batch;
    if (rate > 0) {
      double due = rate * elapsed + 1;
      if ((double)sent >= due) {
        double wait = ((double)sent + batch - due + 1) / rate; /* until a whole batch is due */
        if (wait * 1e9 > SPIN_NS) {
          struct timespec ts = {0, (long)(wait * 1e9) - SPIN_NS / 2};
          if (ts.tv_nsec >= 1000000000L) ts = (struct timespec){(time_t)(ts.tv_nsec / 1000000000L), ts.tv_nsec % 1000000000L};
          nanosleep(&ts, NULL);
        }
        continue;
      }
      if (due - (double)sent < n) n = (int)(due - (double)sent);
      if (n < 1) n = 1;
    }
    for (int i = 0; i < n; i++) {
      uint32_t seq = htonl((uint32_t)(sent + i));
      memcpy(bufs[i], &seq, 4);
    }
    int r = sendmmsg(fds[turn++ % flows], msgs, n, 0);
    if (r < 0) {
      if (errno != EINTR) failed++;
      continue;
    }
    sent += r;
  }
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  double cpu = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
  printf("{\"sent\":%llu,\"failed_calls\":%llu,\"elapsed_s\":%.6f,\"cpu_s\":%.6f}\n", (unsigned long long)sent, (unsigned long long)failed, elapsed, cpu);
  return 0;
}
