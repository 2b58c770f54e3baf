/*
 * hotlink.ts's native floor: lib/passthrough.ts's hop in C — accept one connection, connect
 * onward, copy bytes both ways, with OpenSSL TLS on either side when asked. No framing, no
 * protocol; one thread, non-blocking sockets and poll(2), a 256 KiB buffer per direction. It
 * tells what any data plane of a path's shape could reach on this machine (the bench's
 * applications, which are Bun, included), not only a Bun one.
 *
 *   c-hop --listen PORT --to PORT [--tls-in] [--tls-out]
 *
 * Both ends on 127.0.0.1; TCP_NODELAY on every TCP socket. --tls-in: the accepted connection is
 * TLS (a fresh P-256 key and self-signed certificate, OpenSSL's default TLS 1.3 suite);
 * --tls-out: the onward one is (the peer's certificate is not checked: a handshake-time cost, not
 * a data-path one). Prints "ready" once listening, the negotiated cipher on stderr; exits once
 * both directions have ended.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <fcntl.h>

#define BUF (256 * 1024)
enum { WANT_READ = -2, WANT_WRITE = -3, FAILED = -4 };

struct end {
  int fd;
  SSL *ssl;
};

struct dir {
  struct end *src, *dst;
  unsigned char *buf;
  int len, off, eof, shut;
};

static void die(const char *what) {
  fprintf(stderr, "c-hop: %s: %s\n", what, errno ? strerror(errno) : "failed");
  ERR_print_errors_fp(stderr);
  exit(1);
}

static int ssl_result(SSL *ssl, int r) {
  switch (SSL_get_error(ssl, r)) {
  case SSL_ERROR_WANT_READ: return WANT_READ;
  case SSL_ERROR_WANT_WRITE: return WANT_WRITE;
  case SSL_ERROR_ZERO_RETURN: return 0;
  default: return FAILED;
  }
}

static int xread(struct end *e, unsigned char *buf, int cap) {
  if (e->ssl != NULL) {
    int r = SSL_read(e->ssl, buf, cap);
    return r > 0 ? r : ssl_result(e->ssl, r);
  }
  ssize_t r = read(e->fd, buf, cap);
  if (r >= 0) return (int)r;
  return errno == EAGAIN || errno == EINTR ? WANT_READ : FAILED;
}

static int xwrite(struct end *e, const unsigned char *buf, int n) {
  if (e->ssl != NULL) {
    int r = SSL_write(e->ssl, buf, n);
    return r > 0 ? r : ssl_result(e->ssl, r);
  }
  ssize_t r = send(e->fd, buf, n, MSG_NOSIGNAL);
  if (r >= 0) return (int)r;
  return errno == EAGAIN || errno == EINTR ? WANT_WRITE : FAILED;
}

static void nodelay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static struct sockaddr_in loopback(int port) {
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  return a;
}

static SSL_CTX *server_ctx(void) {
  EVP_PKEY *key = EVP_EC_gen("P-256");
  X509 *cert = X509_new();
  if (key == NULL || cert == NULL) die("key");
  ASN1_INTEGER_set(X509_get_serialNumber(cert), 1);
  X509_gmtime_adj(X509_getm_notBefore(cert), -60);
  X509_gmtime_adj(X509_getm_notAfter(cert), 86400);
  X509_set_pubkey(cert, key);
  X509_NAME *name = X509_get_subject_name(cert);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"c-hop", -1, -1, 0);
  X509_set_issuer_name(cert, name);
  if (X509_sign(cert, key, EVP_sha256()) == 0) die("sign");
  SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
  if (ctx == NULL || SSL_CTX_use_certificate(ctx, cert) != 1 || SSL_CTX_use_PrivateKey(ctx, key) != 1) die("server context");
  return ctx;
}

static void tls(struct end *e, SSL_CTX *ctx, int server) {
  e->ssl = SSL_new(ctx);
  if (e->ssl == NULL || SSL_set_fd(e->ssl, e->fd) != 1) die("SSL_new");
  SSL_set_mode(e->ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  if ((server ? SSL_accept(e->ssl) : SSL_connect(e->ssl)) != 1) die("handshake");
  fprintf(stderr, "c-hop: %s %s\n", SSL_get_version(e->ssl), SSL_get_cipher_name(e->ssl));
}

/** One step of a direction; returns whether it moved, and adds the poll interest it waits on. */
static int step(struct dir *d, short *src_events, short *dst_events) {
  int moved = 0;
  if (d->off == d->len && !d->eof) {
    int r = xread(d->src, d->buf, BUF);
    if (r > 0) d->len = r, d->off = 0, moved = 1;
    else if (r == 0) d->eof = 1, moved = 1;
    else if (r == WANT_READ) *src_events |= POLLIN;
    else if (r == WANT_WRITE) *src_events |= POLLOUT;
    else d->eof = 1, moved = 1; /* a reset ends the direction */
  }
  if (d->off < d->len) {
    int w = xwrite(d->dst, d->buf + d->off, d->len - d->off);
    if (w > 0) d->off += w, moved = 1;
    else if (w == WANT_READ) *dst_events |= POLLIN;
    else if (w == WANT_WRITE) *dst_events |= POLLOUT;
    else exit(0); /* the far end went away: nothing left to carry */
  }
  if (d->eof && d->off == d->len && !d->shut) {
    if (d->dst->ssl != NULL) SSL_shutdown(d->dst->ssl);
    shutdown(d->dst->fd, SHUT_WR);
    d->shut = 1;
    moved = 1;
  }
  return moved;
}

int main(int argc, char **argv) {
  int listen_port = 0, to_port = 0, tls_in = 0, tls_out = 0;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--listen") == 0 && i + 1 < argc) listen_port = atoi(argv[++i]);
    else if (strcmp(argv[i], "--to") == 0 && i + 1 < argc) to_port = atoi(argv[++i]);
    else if (strcmp(argv[i], "--tls-in") == 0) tls_in = 1;
    else if (strcmp(argv[i], "--tls-out") == 0) tls_out = 1;
    else {
      fprintf(stderr, "usage: c-hop --listen PORT --to PORT [--tls-in] [--tls-out]\n");
      return 2;
    }
  }
  if (listen_port <= 0 || to_port <= 0) {
    fprintf(stderr, "usage: c-hop --listen PORT --to PORT [--tls-in] [--tls-out]\n");
    return 2;
  }
  SSL_CTX *sctx = tls_in ? server_ctx() : NULL;
  SSL_CTX *cctx = tls_out ? SSL_CTX_new(TLS_client_method()) : NULL;
  if (tls_out && cctx == NULL) die("client context");

  int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in la = loopback(listen_port);
  if (ls < 0 || bind(ls, (struct sockaddr *)&la, sizeof la) != 0 || listen(ls, 8) != 0) die("listen");
  printf("ready\n");
  fflush(stdout);

  struct end in = {.fd = accept(ls, NULL, NULL)}, out = {.fd = socket(AF_INET, SOCK_STREAM, 0)};
  if (in.fd < 0) die("accept");
  close(ls);
  struct sockaddr_in ta = loopback(to_port);
  if (out.fd < 0 || connect(out.fd, (struct sockaddr *)&ta, sizeof ta) != 0) die("connect");
  nodelay(in.fd);
  nodelay(out.fd);
  if (tls_in) tls(&in, sctx, 1);
  if (tls_out) tls(&out, cctx, 0);
  fcntl(in.fd, F_SETFL, fcntl(in.fd, F_GETFL) | O_NONBLOCK);
  fcntl(out.fd, F_SETFL, fcntl(out.fd, F_GETFL) | O_NONBLOCK);

  struct dir up = {.src = &in, .dst = &out, .buf = malloc(BUF)}, down = {.src = &out, .dst = &in, .buf = malloc(BUF)};
  if (up.buf == NULL || down.buf == NULL) die("malloc");
  while (!(up.shut && down.shut)) {
    struct pollfd p[2] = {{.fd = in.fd}, {.fd = out.fd}};
    int moved = step(&up, &p[0].events, &p[1].events);
    moved |= step(&down, &p[1].events, &p[0].events);
    if (!moved && poll(p, 2, -1) < 0 && errno != EINTR) die("poll");
  }
  return 0;
}
