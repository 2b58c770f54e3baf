/*
 * udp-relay: the C relay of scripts/bench/supervisor.ts (issue 14) — what stoa's data plane does,
 * with plain batched syscalls and no io_uring, so the bench can show the floor of this design on
 * this machine beside stoa's figures.
 *
 * Ingress is one AF_PACKET socket opened as src/supervisor/sockets.ts opens stoa's: SOCK_RAW with
 * protocol ETH_P_IP, bound to IN_IF's index, PACKET_IGNORE_OUTGOING, SO_RCVBUFFORCE 4 MiB, and a
 * PACKET_FANOUT_HASH group (of one: a new id the kernel picks), so the kernel does for it what it
 * does for one stoa worker. It reads with blocking recvmmsg, up to BATCH frames a call
 * (MSG_WAITFORONE: it waits for the first only), parses each frame as
 * src/supervisor/packet-wire.ts does — Ethernet, one 802.1Q tag skipped, IPv4 (version 4,
 * IHL ≥ 5 within the frame, total length within the frame, no fragment, protocol 17), UDP
 * (length ≥ 8, within the IPv4 total length) — and keeps the datagrams to GROUP:PORT. Their
 * payloads (pointers into the receive buffers, no copy) go out in one sendmmsg per batch on a UDP
 * socket bound to OUT_IF (SO_BINDTODEVICE) and connected to DST_ADDR:DST_PORT (TTL 8 and no
 * loopback when that is a group), as stoa's output socket is.
 *
 * It prints "ready" on stdout once both sockets are up. SIGTERM or SIGINT stops it (recvmmsg
 * wakes every WAKE_MS to notice); it prints one JSON line of its counters to stderr and exits 0:
 * received (frames read), filtered (not a well-formed unfragmented IPv4/UDP datagram), no_match
 * (another address or port), matched, sent, errors (datagrams sendmmsg refused), socket_drops
 * (frames the kernel dropped for a full AF_PACKET receive queue: PACKET_STATISTICS tp_drops).
 *
 *   udp-relay IN_IF GROUP PORT OUT_IF DST_ADDR DST_PORT
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#ifndef PACKET_IGNORE_OUTGOING
#define PACKET_IGNORE_OUTGOING 23
#endif
#ifndef PACKET_FANOUT_FLAG_UNIQUEID
#define PACKET_FANOUT_FLAG_UNIQUEID 0x2000
#endif

/** Frames one recvmmsg reads at most (stoa's RECV_BATCH). */
#define BATCH 64
/** A received frame: Ethernet + one VLAN tag + a 1500-byte IPv4 packet fit, with room (stoa's RECV_BUFFER_BYTES). */
#define FRAME_BYTES 2048
/** The ingress socket's receive queue (stoa's INGRESS_RECEIVE_BUFFER_BYTES). */
#define RCVBUF_BYTES (4 << 20)
/** Multicast hops for relayed packets (stoa's OUTPUT_MULTICAST_TTL). */
#define OUTPUT_TTL 8
/** recvmmsg wakes this often when nothing arrives, to notice a stop. */
#define WAKE_MS 50

#define ETHERNET_HEADER 14
#define VLAN_TAG 4
#define ETHERTYPE_IPV4 0x0800
#define ETHERTYPE_VLAN 0x8100
#define IPV4_MIN_HEADER 20
#define UDP_HEADER 8
#define PROTOCOL_UDP 17

static volatile sig_atomic_t stop;
static void on_signal(int sig) {
  (void)sig;
  stop = 1;
}

static void die(const char *what) {
  fprintf(stderr, "udp-relay: %s: %s\n", what, strerror(errno));
  exit(1);
}

static void set_int(int fd, int level, int option, int value, const char *what) {
  if (setsockopt(fd, level, option, &value, sizeof value) < 0) die(what);
}

static unsigned be16(const uint8_t *p) { return (unsigned)p[0] << 8 | p[1]; }

/**
 * The payload of the UDP datagram in frame[0, len) when it is one to group:port (both in
 * network order): its offset, and its length in *payload_len; -1 when the frame is not a
 * well-formed datagram, -2 when it is one to another address or port.
 */
static int parse(const uint8_t *frame, unsigned len, uint32_t group, uint16_t port, unsigned *payload_len) {
  if (len < ETHERNET_HEADER) return -1;
  unsigned at = 12, type = be16(frame + at);
  at += 2;
  if (type == ETHERTYPE_VLAN) {
    if (len < at + VLAN_TAG) return -1;
    type = be16(frame + at + 2);
    at += VLAN_TAG;
  }
  if (type != ETHERTYPE_IPV4 || len < at + IPV4_MIN_HEADER) return -1;
  unsigned version_ihl = frame[at], header = (version_ihl & 0x0f) * 4;
  if (version_ihl >> 4 != 4 || header < IPV4_MIN_HEADER || len < at + header) return -1;
  unsigned total = be16(frame + at + 2);
  if (total < header || at + total > len) return -1;
  if ((be16(frame + at + 6) & 0x3fff) != 0) return -1; /* MF or an offset: a fragment */
  if (frame[at + 9] != PROTOCOL_UDP) return -1;
  unsigned udp = at + header, room = total - header;
  if (room < UDP_HEADER) return -1;
  unsigned udp_len = be16(frame + udp + 4);
  if (udp_len < UDP_HEADER || udp_len > room) return -1;
  uint32_t dst;
  uint16_t dport;
  memcpy(&dst, frame + at + 16, 4);
  memcpy(&dport, frame + udp + 2, 2);
  if (dst != group || dport != port) return -2;
  *payload_len = udp_len - UDP_HEADER;
  return (int)(udp + UDP_HEADER);
}

static int parse_port(const char *s) {
  char *end;
  long v = strtol(s, &end, 10);
  return *end == '\0' && v >= 1 && v <= 65535 ? (int)v : -1;
}

int main(int argc, char **argv) {
  if (argc != 7) {
    fprintf(stderr, "usage: udp-relay IN_IF GROUP PORT OUT_IF DST_ADDR DST_PORT\n");
    return 2;
  }
  const char *in_if = argv[1], *out_if = argv[4];
  struct in_addr group, dst_addr;
  int port = parse_port(argv[3]), dst_port = parse_port(argv[6]);
  unsigned in_index = if_nametoindex(in_if);
  if (inet_pton(AF_INET, argv[2], &group) != 1 || inet_pton(AF_INET, argv[5], &dst_addr) != 1 || port < 0 || dst_port < 0) {
    fprintf(stderr, "udp-relay: GROUP and DST_ADDR must be IPv4 addresses, PORT and DST_PORT 1..65535\n");
    return 2;
  }
  if (in_index == 0 || if_nametoindex(out_if) == 0) {
    fprintf(stderr, "udp-relay: no interface %s here (ip link shows the names)\n", in_index == 0 ? in_if : out_if);
    return 2;
  }
  struct sigaction sa = {.sa_handler = on_signal}; /* no SA_RESTART: recvmmsg returns EINTR */
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);

  int in = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_P_IP));
  if (in < 0) die("AF_PACKET socket (needs root or CAP_NET_RAW)");
  struct sockaddr_ll ll = {.sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_IP), .sll_ifindex = (int)in_index};
  if (bind(in, (struct sockaddr *)&ll, sizeof ll) < 0) die("bind AF_PACKET socket");
  set_int(in, SOL_PACKET, PACKET_IGNORE_OUTGOING, 1, "PACKET_IGNORE_OUTGOING");
  set_int(in, SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF_BYTES, "SO_RCVBUFFORCE");
  set_int(in, SOL_PACKET, PACKET_FANOUT, (PACKET_FANOUT_HASH | PACKET_FANOUT_FLAG_UNIQUEID) << 16, "PACKET_FANOUT");
  struct timeval wake = {0, WAKE_MS * 1000};
  if (setsockopt(in, SOL_SOCKET, SO_RCVTIMEO, &wake, sizeof wake) < 0) die("SO_RCVTIMEO");

  int out = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (out < 0) die("UDP socket");
  if (setsockopt(out, SOL_SOCKET, SO_BINDTODEVICE, out_if, (socklen_t)strlen(out_if)) < 0) die("SO_BINDTODEVICE");
  if (IN_MULTICAST(ntohl(dst_addr.s_addr))) {
    set_int(out, IPPROTO_IP, IP_MULTICAST_TTL, OUTPUT_TTL, "IP_MULTICAST_TTL");
    set_int(out, IPPROTO_IP, IP_MULTICAST_LOOP, 0, "IP_MULTICAST_LOOP");
  }
  struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)dst_port), .sin_addr = dst_addr};
  if (connect(out, (struct sockaddr *)&to, sizeof to) < 0) die("connect the output socket");

  static uint8_t frames[BATCH][FRAME_BYTES];
  struct mmsghdr rx[BATCH], tx[BATCH];
  struct iovec rx_iov[BATCH], tx_iov[BATCH];
  memset(rx, 0, sizeof rx);
  memset(tx, 0, sizeof tx);
  for (int i = 0; i < BATCH; i++) {
    rx_iov[i] = (struct iovec){frames[i], FRAME_BYTES};
    rx[i].msg_hdr.msg_iov = &rx_iov[i];
    rx[i].msg_hdr.msg_iovlen = 1;
    tx[i].msg_hdr.msg_iov = &tx_iov[i];
    tx[i].msg_hdr.msg_iovlen = 1;
  }
  printf("ready\n");
  fflush(stdout);

  const uint16_t port_be = htons((uint16_t)port);
  uint64_t received = 0, filtered = 0, no_match = 0, matched = 0, sent = 0, errors = 0;
  while (!stop) {
    int n = recvmmsg(in, rx, BATCH, MSG_WAITFORONE, NULL);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) continue;
      die("recvmmsg");
    }
    received += (uint64_t)n;
    int k = 0;
    for (int i = 0; i < n; i++) {
      unsigned payload_len = 0;
      int off = parse(frames[i], rx[i].msg_len, group.s_addr, port_be, &payload_len);
      if (off == -1) filtered++;
      else if (off == -2) no_match++;
      else tx_iov[k++] = (struct iovec){frames[i] + off, payload_len};
    }
    matched += (uint64_t)k;
    for (int done = 0; done < k;) {
      int r = sendmmsg(out, tx + done, (unsigned)(k - done), 0);
      if (r < 0) {
        if (errno == EINTR) continue;
        errors++; /* this datagram is refused (ENOBUFS, ECONNREFUSED, …): skip it, send the rest */
        done++;
        continue;
      }
      sent += (uint64_t)r;
      done += r;
    }
  }
  struct tpacket_stats st = {0};
  socklen_t st_len = sizeof st;
  if (getsockopt(in, SOL_PACKET, PACKET_STATISTICS, &st, &st_len) < 0) die("PACKET_STATISTICS");
  fprintf(stderr, "{\"received\":%llu,\"filtered\":%llu,\"no_match\":%llu,\"matched\":%llu,\"sent\":%llu,\"errors\":%llu,\"socket_drops\":%u}\n",
          (unsigned long long)received, (unsigned long long)filtered, (unsigned long long)no_match, (unsigned long long)matched,
          (unsigned long long)sent, (unsigned long long)errors, st.tp_drops);
  return 0;
}
