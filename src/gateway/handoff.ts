/**
 * Connection hand-off: the gateway gives a routed client's TCP connection itself to the
 * publisher, which then serves it directly — the gateway is out of the data path (no copy, no
 * extra hop, no wake-up per message) and keeps only the routing.
 *
 * A publisher opts in by listening, beside its `<kind>.sock` endpoints, on
 * `<run_dir>/pub/<pub_id>/handoff.sock`: an AF_UNIX SOCK_SEQPACKET socket, owned by the
 * gateway's user like the endpoints (routes.ts `handoffTargetProblem`). For a plain-TCP client
 * (never a TLS one: the gateway holds its session) routed to a kind whose endpoint socket
 * exists, the gateway connects there, sends ONE message carrying the client's descriptor
 * (SCM_RIGHTS) and closes its own copies. Nothing comes back. Each connection to handoff.sock
 * carries exactly one message; the publisher accepts, reads it and closes.
 *
 * The message (big-endian; at most fdpass `MAX_MESSAGE_BYTES`, 64 KiB, in all):
 *
 *   offset  size  field
 *   0       4     magic "SHO1"
 *   4       1     kind: 0 service, 1 string, 2 ping (paths.ts KINDS order)
 *   5       1     pub_id length n, 1..64
 *   6       4     prefix length m
 *   10      n     pub_id (as routed: stream/names.ts isValidPubId)
 *   10+n    m     prefix: what the gateway read past the first line (with a `GET /pub/…` line,
 *                 the line too, as the proxy path forwards it); the publisher delivers it
 *                 before anything it reads from the socket itself
 *   + exactly one descriptor: a connected SOCK_STREAM AF_INET/AF_INET6 socket
 *
 * What the publisher side checks (`serveHandoffs`): the sender's uid (SO_PEERCRED) is its own or
 * root's; the bytes decode (`decodeHandoff`: a state machine over the fields, every length checked
 * against the limits and what arrived, nothing read past the message); one descriptor came, and
 * it is a TCP socket. Anything else is refused and closed — a bad message costs that message,
 * never the publisher. A message still in flight when the publisher accepted is waited for at
 * most `HANDOFF_RECEIVE_TIMEOUT_MS` (the gateway sends right after connecting).
 *
 * When the gateway cannot connect (no handoff.sock, nobody listening, backlog full) it proxies
 * the connection as before, so a publisher that stops taking hand-offs only loses the speed.
 * A handed-off connection is the publisher's alone: the gateway's byte counters, idle rules and
 * drain no longer apply to it, and a gateway restart leaves it open.
 */
import type { Socket, SocketHandler } from "bun";
import { ptr } from "bun:ffi";
import { KINDS, type Kind } from "../core/paths.ts";
import { StoaError, describeError } from "../core/errors.ts";
import { type UnixBinding, bindUnix } from "../core/unixsock.ts";
import { takeSocketFd } from "../core/fdsplice.ts";
import { MAX_MESSAGE_BYTES, OwnedFd, recvFds, sendFds } from "../ffi/fdpass.ts";
import { AF_INET, AF_INET6, AF_UNIX, F_SETFL, SOCK_CLOEXEC, SOCK_NONBLOCK, SOCK_SEQPACKET, SOCK_STREAM, errno, libc, strerror } from "../ffi/libc.ts";
import { peerCredentials, setReceiveTimeout, socketKind, unixSockaddr } from "../ffi/sockets.ts";
import { isValidPubId } from "../stream/names.ts";

const MAGIC = [0x53, 0x48, 0x4f, 0x31]; // "SHO1"
const HEADER_BYTES = 10;
/** Longest pub_id (stream/names.ts). */
const MAX_PUB_ID_BYTES = 64;
/** The most prefix bytes one hand-off carries: what fits one message with the longest pub_id. */
export const MAX_HANDOFF_PREFIX_BYTES = MAX_MESSAGE_BYTES - HEADER_BYTES - MAX_PUB_ID_BYTES;
/** How long a publisher waits for the message of a hand-off connection it accepted. */
export const HANDOFF_RECEIVE_TIMEOUT_MS = 1_000;
/** Queued hand-off connections the publisher's socket holds (listen backlog). */
const HANDOFF_BACKLOG = 512;

/** What comes with a handed-off connection. */
export interface Handoff {
  kind: Kind;
  pubId: string;
  /** Bytes to deliver before the socket's own (a view into the received message). */
  prefix: Uint8Array;
}

/** The message for a hand-off (see the module header). Throws StoaError for what the format cannot carry. */
export function encodeHandoff(h: Handoff): Uint8Array {
  const id = new TextEncoder().encode(h.pubId);
  if (!isValidPubId(h.pubId) || id.byteLength > MAX_PUB_ID_BYTES) throw new StoaError("internal", `hand-off: invalid pub_id ${JSON.stringify(h.pubId)}`);
  if (h.prefix.byteLength > MAX_HANDOFF_PREFIX_BYTES) {
    throw new StoaError("too_large", `hand-off: ${h.prefix.byteLength} prefix bytes is over ${MAX_HANDOFF_PREFIX_BYTES}`);
  }
  const out = new Uint8Array(HEADER_BYTES + id.byteLength + h.prefix.byteLength);
  out.set(MAGIC, 0);
  out[4] = KINDS.indexOf(h.kind);
  out[5] = id.byteLength;
  const m = h.prefix.byteLength;
  out[6] = m >>> 24;
  out[7] = (m >>> 16) & 0xff;
  out[8] = (m >>> 8) & 0xff;
  out[9] = m & 0xff;
  out.set(id, HEADER_BYTES);
  out.set(h.prefix, HEADER_BYTES + id.byteLength);
  return out;
}

type DecodeState = "magic" | "kind" | "pubIdLength" | "prefixLength" | "pubId" | "prefix" | "done";

/**
 * Reads one hand-off message: the hand-off, or why the bytes are not one. Never throws and
 * never reads past `bytes`; the prefix is a view into `bytes`.
 */
export function decodeHandoff(bytes: Uint8Array): Handoff | { error: string } {
  let state: DecodeState = "magic";
  let kind: Kind = "service";
  let idLength = 0;
  let prefixLength = 0;
  let pubId = "";
  let prefix: Uint8Array = new Uint8Array(0);
  if (bytes.byteLength > MAX_MESSAGE_BYTES) return { error: `${bytes.byteLength} bytes is over the ${MAX_MESSAGE_BYTES}-byte message limit` };
  if (bytes.byteLength < HEADER_BYTES) return { error: `${bytes.byteLength} bytes is shorter than the ${HEADER_BYTES}-byte header` };
  while (state !== "done") {
    switch (state) {
      case "magic":
        for (let i = 0; i < MAGIC.length; i++) if (bytes[i] !== MAGIC[i]) return { error: "not a hand-off message (bad magic)" };
        state = "kind";
        break;
      case "kind": {
        const k = KINDS[bytes[4] ?? 255];
        if (k === undefined) return { error: `unknown kind ${bytes[4]}` };
        kind = k;
        state = "pubIdLength";
        break;
      }
      case "pubIdLength":
        idLength = bytes[5] ?? 0;
        if (idLength < 1 || idLength > MAX_PUB_ID_BYTES) return { error: `pub_id length ${idLength} outside 1..${MAX_PUB_ID_BYTES}` };
        state = "prefixLength";
        break;
      case "prefixLength":
        prefixLength = (((bytes[6] ?? 0) << 24) >>> 0) + ((bytes[7] ?? 0) << 16) + ((bytes[8] ?? 0) << 8) + (bytes[9] ?? 0);
        if (HEADER_BYTES + idLength + prefixLength !== bytes.byteLength) {
          return { error: `the fields say ${HEADER_BYTES + idLength + prefixLength} bytes, the message has ${bytes.byteLength}` };
        }
        state = "pubId";
        break;
      case "pubId":
        // ASCII by isValidPubId: any other byte fails it.
        pubId = String.fromCharCode(...bytes.subarray(HEADER_BYTES, HEADER_BYTES + idLength));
        if (!isValidPubId(pubId)) return { error: `invalid pub_id ${JSON.stringify(pubId)}` };
        state = "prefix";
        break;
      case "prefix":
        prefix = bytes.subarray(HEADER_BYTES + idLength);
        state = "done";
        break;
    }
  }
  return { kind, pubId, prefix };
}

/**
 * Connects to a publisher's handoff.sock without blocking: the connection to send one hand-off
 * on, or why there is none (nobody listens, backlog full, …: the caller proxies instead).
 */
export function connectHandoff(path: string): OwnedFd | string {
  let target: { addr: Buffer; len: number };
  try {
    target = unixSockaddr(path);
  } catch (err) {
    return describeError(err);
  }
  const c = libc();
  const fd = c.socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return `socket: ${strerror(errno())}`;
  // A Unix connect completes at once or fails (EAGAIN: the backlog is full); it never pends.
  if (c.connect(fd, ptr(target.addr), target.len) !== 0) {
    const why = strerror(errno());
    c.close(fd);
    return `connect ${path}: ${why}`;
  }
  return new OwnedFd(fd, `the hand-off connection to ${path}`);
}

/**
 * Sends a hand-off of `client` (the gateway's copy; still the caller's to close) on `link`.
 * Returns null once sent, or what went wrong (the publisher went away, out of buffers).
 */
export function sendHandoff(link: OwnedFd, message: Uint8Array, client: OwnedFd): string | null {
  try {
    const outcome = sendFds(link, message, [client]);
    return outcome === "sent" ? null : outcome === "again" ? "the publisher's socket is full" : "the publisher closed the hand-off connection";
  } catch (err) {
    return describeError(err);
  }
}

interface HandoffServerOptions<T> {
  /**
   * Handlers of every handed-off connection, as for `Bun.listen`: `open`, then `data` with the
   * prefix (when there is one), then the socket's own bytes.
   */
  socket: SocketHandler<T>;
  /** Each connection's `data`, made from what came with it. */
  data?: (h: Handoff) => T;
  allowHalfOpen?: boolean;
  /** A hand-off that was refused (sender, message or descriptor; see the module header): told, never thrown. */
  onRefused?: (why: string) => void;
}

/**
 * Serves `path` (a publisher's handoff.sock, bound safely: core/unixsock.ts, mode 0600) and adopts
 * every connection handed off there as a Bun socket with `options.socket`'s handlers.
 * @example
 * const handoff = await serveHandoffs(publisherHandoffPath(runDir, "echo"), {
 *   socket: { data: (s, chunk) => void s.write(chunk) },
 * });
 * onShutdown(() => handoff.close());
 */
export function serveHandoffs<T = undefined>(path: string, options: HandoffServerOptions<T>): Promise<UnixBinding<{ stop(): void }>> {
  const uid = process.geteuid?.() ?? -1;
  const refuse = (why: string) => {
    try {
      options.onRefused?.(why);
    } catch {
      // The caller's reporter failing costs nothing here.
    }
  };
  const accept = (conn: Socket<undefined>): void => {
    const fd = takeSocketFd(conn);
    if (fd < 0) return refuse("the hand-off connection closed before it was read");
    const link = new OwnedFd(fd, "a hand-off connection");
    try {
      const peer = peerCredentials(fd);
      if (peer === null || (peer.uid !== uid && peer.uid !== 0)) {
        return refuse(`a hand-off from uid ${peer?.uid ?? "unknown"} (pid ${peer?.pid ?? "unknown"}); only uid ${uid} or root may hand off`);
      }
      let got = recvFds(link);
      if (got === "again") {
        // Accepted between the gateway's connect and its send: wait for it, boundedly.
        if (libc().fcntl(fd, F_SETFL, 0) !== 0 || !setReceiveTimeout(fd, HANDOFF_RECEIVE_TIMEOUT_MS)) {
          return refuse(`cannot wait on a hand-off connection: ${strerror(errno())}`);
        }
        got = recvFds(link);
      }
      if (got === "again") return refuse(`no hand-off message within ${HANDOFF_RECEIVE_TIMEOUT_MS} ms`);
      if (got === "closed") return refuse("a hand-off connection closed without a message");
      const client = got.fds.shift();
      for (const extra of got.fds) extra.close();
      if (client === undefined) return refuse("a hand-off message without a descriptor");
      const h = decodeHandoff(got.data);
      if ("error" in h) {
        client.close();
        return refuse(`a malformed hand-off message: ${h.error}`);
      }
      const { type, domain } = socketKind(client.fd);
      if (type !== SOCK_STREAM || (domain !== AF_INET && domain !== AF_INET6)) {
        client.close();
        return refuse(`a hand-off descriptor that is not a TCP connection (type ${type}, family ${domain})`);
      }
      adopt(client, h);
    } catch (err) {
      refuse(`a hand-off failed: ${describeError(err)}`);
    } finally {
      link.close();
    }
  };
  const adopt = (client: OwnedFd, h: Handoff): void => {
    const user = options.socket;
    const prefix = h.prefix;
    const handlers: SocketHandler<T> = {
      ...user,
      open(sock) {
        user.open?.(sock);
        if (prefix.byteLength > 0) user.data?.(sock, Buffer.from(prefix.buffer, prefix.byteOffset, prefix.byteLength));
      },
    };
    const fd = client.take();
    const opened = Bun.connect<T>({
      fd,
      allowHalfOpen: options.allowHalfOpen ?? false,
      data: options.data?.(h),
      socket: handlers,
    } as unknown as Parameters<typeof Bun.connect<T>>[0]);
    opened.catch((err: unknown) => refuse(`cannot adopt a handed-off connection (fd ${fd}): ${describeError(err)}`));
  };
  return bindUnix(path, (unix) => {
    const c = libc();
    const lfd = c.socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0) throw new StoaError("io", `socket(AF_UNIX, SOCK_SEQPACKET): ${strerror(errno())}`);
    const { addr, len } = unixSockaddr(unix);
    if (c.bind(lfd, ptr(addr), len) !== 0 || c.listen(lfd, HANDOFF_BACKLOG) !== 0) {
      const why = strerror(errno());
      c.close(lfd);
      throw new StoaError("io", `cannot listen on ${unix}: ${why}`);
    }
    // Bun accepts; `open` takes each accepted connection back from it before it reads a byte.
    return Bun.listen({ fd: lfd, socket: { open: accept, data() {} } } as unknown as Parameters<typeof Bun.listen>[0]);
  });
}
