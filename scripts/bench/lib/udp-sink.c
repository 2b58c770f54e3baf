/*
 * udp-sink: the counting sink of scripts/bench/supervisor.ts (issue 14).
 *
 * Binds 0.0.0.0:--port (joining --group on the interface of address --ifaddr when given),
 * prints "ready" once it can receive, then counts datagrams with recvmmsg until SIGTERM, SIGINT
 * or SIGUSR1 — or until --idle-ms passes without a datagram after the first (0 = never). Each
 * payload's first 4 bytes are a big-endian sequence number (udp-gen.c): a bitmap of the numbers
 * seen tells unique datagrams from duplicates. At the end it prints one JSON line: received,
 * unique, duplicates, out_of_range (a number ≥ the bitmap's 2^26), short (< 4 bytes), wrong_size
 * (≠ --size when given), bytes.
 *
 *   udp-sink --port 5000 [--group 239.1.1.1 --ifaddr 10.0.3.2] [--size 1024] [--idle-ms 0]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define BUF_SIZE 65536
#define SEQ_BITS (1u << 26)
/** recvmmsg wakes this often to notice a stop or an idle timeout. */
#define POLL_MS 50

static volatile sig_atomic_t stop;
static void on_signal(int sig) {
  (void)sig;
  stop = 1;
}

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void die(const char *what) {
  fprintf(stderr, "udp-sink: %s: %s\n", what, strerror(errno));
  exit(1);
}

int main(int argc, char **argv) {
  const char *group = NULL, *ifaddr = NULL;
  int port = 5000, size = 0;
  double idle_ms = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    const char *k = argv[i], *v = argv[i + 1];
    if (!strcmp(k, "--port")) port = atoi(v);
    else if (!strcmp(k, "--group")) group = v;
    else if (!strcmp(k, "--ifaddr")) ifaddr = v;
    else if (!strcmp(k, "--size")) size = atoi(v);
    else if (!strcmp(k, "--idle-ms")) idle_ms = atof(v);
    else {
      fprintf(stderr, "udp-sink: unknown option %s (see the header of udp-sink.c)\n", k);
      return 2;
    }
  }
  struct sigaction sa = {.sa_handler = on_signal}; /* no SA_RESTART: recvmmsg returns EINTR */
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGUSR1, &sa, NULL);

  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  if (fd < 0) die("socket");
  int one = 1, rcvbuf = 32 << 20;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf) < 0) setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
  struct timeval tv = {0, POLL_MS * 1000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_ANY)};
  if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0) die("bind");
  if (group) {
    struct ip_mreq mreq = {0};
    if (inet_pton(AF_INET, group, &mreq.imr_multiaddr) != 1 || (ifaddr && inet_pton(AF_INET, ifaddr, &mreq.imr_interface) != 1)) {
      fprintf(stderr, "udp-sink: --group/--ifaddr must be IPv4 addresses\n");
      return 2;
    }
    if (setsockopt(fd, IPPROTO_IP, IP_ADD_MEMBERSHIP, &mreq, sizeof mreq) < 0) die("IP_ADD_MEMBERSHIP");
  }

  uint8_t *seen = calloc(SEQ_BITS / 8, 1);
  static uint8_t bufs[BATCH][BUF_SIZE];
  struct mmsghdr msgs[BATCH];
  struct iovec iov[BATCH];
  memset(msgs, 0, sizeof msgs);
  for (int i = 0; i < BATCH; i++) {
    iov[i].iov_base = bufs[i];
    iov[i].iov_len = BUF_SIZE;
    msgs[i].msg_hdr.msg_iov = &iov[i];
    msgs[i].msg_hdr.msg_iovlen = 1;
  }
  printf("ready\n");
  fflush(stdout);

  uint64_t received = 0, unique = 0, dups = 0, out_of_range = 0, shorts = 0, wrong = 0, bytes = 0;
  double last = 0;
  while (!stop) {
    int n = recvmmsg(fd, msgs, BATCH, MSG_WAITFORONE, NULL);
    if (n < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) die("recvmmsg");
      if (idle_ms > 0 && received > 0 && now_ms() - last > idle_ms) break;
      continue;
    }
    last = now_ms();
    for (int i = 0; i < n; i++) {
      unsigned len = msgs[i].msg_len;
      received++;
      bytes += len;
      if (size > 0 && (int)len != size) wrong++;
      if (len < 4) {
        shorts++;
        continue;
      }
      uint32_t seq;
      memcpy(&seq, bufs[i], 4);
      seq = ntohl(seq);
      if (seq >= SEQ_BITS) {
        out_of_range++;
        continue;
      }
      uint8_t bit = (uint8_t)(1u << (seq & 7));
      if (seen[seq >> 3] & bit) dups++;
      else {
        seen[seq >> 3] |= bit;
        unique++;
      }
    }
  }
  printf("{\"received\":%llu,\"unique\":%llu,\"duplicates\":%llu,\"out_of_range\":%llu,\"short\":%llu,\"wrong_size\":%llu,\"bytes\":%llu}\n",
         (unsigned long long)received, (unsigned long long)unique, (unsigned long long)dups, (unsigned long long)out_of_range,
         (unsigned long long)shorts, (unsigned long long)wrong, (unsigned long long)bytes);
  return 0;
}
