/**
 * STUN over UDP (stun-wire.ts has the format): the binding server `stoa hotlink serve
 * --stun-listen HOST:PORT` runs beside the relay, so a deployment needs nothing else for hole
 * punching, and the client that asks a server how it sees us (a server-reflexive address).
 *
 * Server contract:
 * - A Binding request gets a success response with XOR-MAPPED-ADDRESS of the address and port
 *   the datagram came from, and FINGERPRINT, sent back to that address and port — nothing more
 *   (no MAPPED-ADDRESS, no SOFTWARE), so an answer is at most 52 bytes for a request of at least
 *   20: a forged source gets at most 2.6× what was sent. IPv4-mapped senders of a dual-stack
 *   socket are answered as IPv4.
 * - A request with a comprehension-required attribute it does not know (0x0000–0x7fff; a binding
 *   server knows none it must act on) gets 420 with UNKNOWN-ATTRIBUTES, as RFC 5389 §7.3.1 asks.
 * - Anything else — not STUN, a response, an indication, another method, a bad FINGERPRINT — is
 *   dropped and counted (`stoa_hotlink_stun_dropped_total{reason}`), never answered: one bad peer
 *   costs one decode; an ICMP error for an answer is counted and ignored.
 */
import type { Logger } from "../core/log.ts";
import { metrics } from "../core/metrics.ts";
import { StoaError, describeError } from "../core/errors.ts";
import {
  decodeStun,
  encodeStun,
  errorCodeValue,
  plainAddress,
  readXorAddress,
  STUN_ATTRIBUTE,
  STUN_METHOD_BINDING,
  type StunAddress,
  StunDecodeError,
  type StunMessage,
  xorAddress,
} from "./stun-wire.ts";

/** The client sends its request again after this long, then twice as long, … (RFC 5389 §7.2.1's RTO, shortened for a LAN-first tool). */
const RETRANSMIT_MS = 250;
const DEFAULT_TIMEOUT_MS = 3_000;

const answered = metrics.counter("stoa_hotlink_stun_answered_total", "STUN binding requests answered, by outcome.", ["outcome"]);
const dropped = metrics.counter("stoa_hotlink_stun_dropped_total", "Datagrams on the STUN port that got no answer, by reason.", ["reason"]);

export interface StunServer {
  readonly hostname: string;
  readonly port: number;
  close(): void;
}

/** Binds the STUN port. Throws StoaError "in_use" or "io" when it cannot be had. */
export async function startStunServer(options: { hostname: string; port: number; log: Logger }): Promise<StunServer> {
  let socket: Bun.udp.Socket<"buffer">;
  try {
    socket = await Bun.udpSocket({
      hostname: options.hostname,
      port: options.port,
      socket: {
        data(sock, data, port, address) {
          const answer = answerStun(data, address, port);
          if (answer !== null) sock.send(answer, port, address);
        },
        // An answer to a port that is closed (or a forged source) comes back as ICMP, which Bun
        // reports here: that peer's problem, not the server's.
        error() {
          dropped.inc({ reason: "icmp_error" });
        },
      },
    });
  } catch (err) {
    const text = describeError(err);
    const inUse = /EADDRINUSE|in use/i.test(text);
    throw new StoaError(inUse ? "in_use" : "io", `cannot listen for STUN on udp ${options.hostname}:${options.port}: ${inUse ? "the port is in use" : text}; pick another with --stun-listen`, {
      cause: err,
    });
  }
  options.log.info("stun listening", { udp: `${options.hostname}:${socket.port}` });
  return {
    hostname: options.hostname,
    port: socket.port,
    close: () => socket.close(),
  };
}

/** The answer to one datagram from `address`:`port`, or null (dropped, counted). Exported for tests. */
export function answerStun(data: Uint8Array, address: string, port: number): Uint8Array | null {
  let request: StunMessage;
  try {
    request = decodeStun(data);
  } catch (err) {
    dropped.inc({ reason: err instanceof StunDecodeError ? "malformed" : "error" });
    return null;
  }
  if (request.class !== "request") {
    dropped.inc({ reason: "not_a_request" });
    return null;
  }
  if (request.method !== STUN_METHOD_BINDING) {
    dropped.inc({ reason: "not_binding" });
    return null;
  }
  const unknown = request.attributes
    .map((a) => a.type)
    .filter((t) => t < 0x8000)
    .slice(0, 16);
  if (unknown.length > 0) {
    answered.inc({ outcome: "unknown_attribute" });
    const list = new Uint8Array(unknown.length * 2);
    unknown.forEach((t, i) => new DataView(list.buffer).setUint16(i * 2, t));
    return encodeStun(
      {
        method: STUN_METHOD_BINDING,
        class: "error",
        transactionId: request.transactionId,
        attributes: [
          { type: STUN_ATTRIBUTE.ERROR_CODE, value: errorCodeValue(420, "Unknown Attribute") },
          { type: STUN_ATTRIBUTE.UNKNOWN_ATTRIBUTES, value: list },
        ],
      },
      { fingerprint: true },
    );
  }
  const from = plainAddress(address);
  answered.inc({ outcome: "ok" });
  const mapped = xorAddress(from, port, request.transactionId);
  return encodeStun(
    {
      method: STUN_METHOD_BINDING,
      class: "success",
      transactionId: request.transactionId,
      attributes: [
        { type: STUN_ATTRIBUTE.XOR_MAPPED_ADDRESS, value: mapped },
      ],
    },
    { fingerprint: true },
  );
}

/**
 * Asks a STUN server how it sees this host: sends a Binding request (again every RETRANSMIT_MS,
 * doubling) from a UDP socket (`localPort`, default any) until the answer with the same
 * transaction id comes, and resolves with its XOR-MAPPED-ADDRESS. Rejects with StoaError
 * "timeout" after `timeoutMs`, "decode" for an answer without a usable address or an error answer.
 */
export async function stunBinding(
  server: { host: string; port: number },
  options: { timeoutMs?: number; localPort?: number } = {},
): Promise<StunAddress> {
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const transactionId = crypto.getRandomValues(new Uint8Array(12));
  const request = encodeStun({ method: STUN_METHOD_BINDING, class: "request", transactionId, attributes: [] }, { fingerprint: true });
  const host = server.host.replace(/^\[(.*)\]$/, "$1");
  const outcome = Promise.withResolvers<StunAddress>();
  let refused = false;
  const socket = await Bun.udpSocket({
    hostname: host.includes(":") ? "::" : "0.0.0.0",
    port: options.localPort ?? 0,
    socket: {
      data(_sock, data) {
        let answer: StunMessage;
        try {
          answer = decodeStun(data);
        } catch {
          return; // not STUN, or garbled: keep waiting for ours
        }
        if (!sameId(answer.transactionId, transactionId) || answer.method !== STUN_METHOD_BINDING) return;
        if (answer.class === "error") {
          outcome.reject(new StoaError("decode", `the STUN server ${host}:${server.port} answered with an error`));
          return;
        }
        if (answer.class !== "success") return;
        const xor = answer.attributes.find((a) => a.type === STUN_ATTRIBUTE.XOR_MAPPED_ADDRESS);
        const plain = answer.attributes.find((a) => a.type === STUN_ATTRIBUTE.MAPPED_ADDRESS);
        const mapped = xor !== undefined ? readXorAddress(xor.value, transactionId) : plain !== undefined ? readXorAddress(plain.value, transactionId, false) : null;
        if (mapped === null) outcome.reject(new StoaError("decode", `the STUN server ${host}:${server.port} answered without a usable mapped address`));
        else outcome.resolve(mapped);
      },
      // ICMP port unreachable: nothing listens there (yet); retransmits go on until the timeout.
      error() {
        refused = true;
      },
    },
  });
  let wait = RETRANSMIT_MS;
  let timer: Timer | undefined;
  const send = () => {
    socket.send(request, server.port, host);
    timer = setTimeout(send, wait);
    wait *= 2;
  };
  const deadline = setTimeout(
    () =>
      outcome.reject(
        new StoaError(
          "timeout",
          `no STUN answer from ${host}:${server.port} within ${timeoutMs} ms (${refused ? "the host says nothing listens on that port" : "nothing listening there, or UDP blocked on the way"})`,
        ),
      ),
    timeoutMs,
  );
  try {
    send();
    return await outcome.promise;
  } finally {
    clearTimeout(timer);
    clearTimeout(deadline);
    socket.close();
  }
}

function sameId(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}
