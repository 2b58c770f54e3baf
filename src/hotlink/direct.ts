/**
 * The direct path of a session (spec: "Transports and the upgrade ladder", step 2): after the
 * receiver accepted, it listens for this session alone over TLS with a fresh self-signed
 * certificate (cert.ts) and offers candidates over the relay (Signal direct_offer {adr, tok,
 * fpr}); the sender dials them one by one (`DIRECT_DIAL_TIMEOUT_MS` each, only the first
 * `MAX_DIALED_CANDIDATES`, and only while the session still wants them), pins the
 * certificate's SHA-256 fingerprint, presents the one-time token, answers direct_answer, and
 * from then on sends the session's Data as HLNK frames on that connection.
 *
 * Wire on the direct connection (the hello and the acknowledgements, and their readers, are in
 * direct-wire.ts):
 *   sender → receiver   "HLD1 <sid> <tok>\n", then HLNK frames (hlnk.ts): path = the frame's
 *                       path (the session's when Data had none), etag, seq = the session's seq,
 *                       payload.
 *   receiver → sender   acknowledgements: 8-byte big-endian integers, each the highest seq
 *                       delivered in order so far (sent after every chunk that advanced it).
 * A connection whose hello is malformed, or names another session or token, is refused; one
 * that then carries bytes that are not HLNK frames is closed. A sender that reads a malformed
 * acknowledgement (one that does not advance, or a seq over 2^53-1) cuts the connection and
 * falls back to the relay.
 * No loss on failure: the sender keeps every frame it sent directly until it is acknowledged
 * (transport.ts `PathSender`, shared with the ICE path). If the direct connection
 * fails, the session falls back to the relay and the unacknowledged frames are sent again there
 * with the same seqs; the receiver's reorder buffer drops whatever arrives twice. Close stays
 * on the relay and carries `lst`, so it cannot overtake the last direct frames.
 * Direct is used only while the session has one receiver (an IPC session that gains a second
 * one falls back to the relay for all).
 */
import type { Socket, TCPSocketListener } from "bun";
import { randomBytes, timingSafeEqual } from "node:crypto";
import { networkInterfaces } from "node:os";
import { copyRange } from "../core/bytes.ts";
import type { Logger } from "../core/log.ts";
import { Outbox } from "../core/outbox.ts";
import { DIRECT_TLS_SERVER_NAME, createSessionCertificate, verifyPinnedPeer } from "./cert.ts";
import { HelloReader, encodeDirectAck, encodeDirectHello } from "./direct-wire.ts";
import type { DataMessage } from "./protocol.ts";
import { InPlaceData, MAX_DIALED_CANDIDATES, MessageType } from "./protocol.ts";
import type { DaemonCounters } from "./telemetry.ts";
import { AckPacer, FrameIntake, type FramePipe, type PathReceiver, PathSender } from "./transport.ts";
import { describeError } from "../core/errors.ts";

const DIRECT_DIAL_TIMEOUT_MS = 1_500;
/** How long a receiver waits for the sender to dial before it closes its listener. */
const DIRECT_ACCEPT_TIMEOUT_MS = 10_000;
/** How long an accepted connection may take to send its whole hello before it is closed. */
export const DIRECT_HELLO_TIMEOUT_MS = 5_000;
/** Random bytes of a direct token: 32 characters of base64url, within the offer's limits. */
const DIRECT_TOKEN_BYTES = 24;

/** How a daemon uses direct paths (`--direct`, `--direct-listen`). */
export interface DirectConfig {
  /** Address to listen on for direct connections; "::" (default) or "0.0.0.0" or one address. */
  listen: string;
  /** Addresses to offer; default every address of this host's interfaces, loopback last. */
  advertise?: string[];
  log: Logger;
  counters: DaemonCounters;
}

/** What an offer carries (Signal direct_offer without the envelope). */
interface DirectOffer {
  adr: string[];
  tok: string;
  fpr: string;
}

function candidates(config: DirectConfig, port: number): string[] {
  let hosts = config.advertise;
  if (hosts === undefined) {
    const found: { host: string; loopback: boolean }[] = [];
    for (const list of Object.values(networkInterfaces())) {
      for (const a of list ?? []) {
        if (a.family === "IPv6" && a.address.startsWith("fe80")) continue; // needs a scope id
        const wildcardV4 = config.listen === "0.0.0.0";
        if (wildcardV4 && a.family !== "IPv4") continue;
        if (config.listen !== "::" && !wildcardV4 && a.address !== config.listen) continue;
        found.push({ host: a.address, loopback: a.internal });
      }
    }
    found.sort((x, y) => Number(x.loopback) - Number(y.loopback));
    hosts = found.map((f) => f.host);
  }
  // The sender dials only the first MAX_DIALED_CANDIDATES: offering more would be noise.
  return hosts.slice(0, MAX_DIALED_CANDIDATES).map((h) => (h.includes(":") ? `[${h}]:${port}` : `${h}:${port}`));
}

// ---------------------------------------------------------------- receiver side

interface DirectReceiverEvents {
  /** A Data frame that came on the direct connection (to merge through the reorder buffer). */
  data(message: DataMessage): void;
  /** The highest seq delivered in order, for acknowledgements. */
  delivered(): number;
}

/** What the receiver keeps per accepted socket: its hello until read, then its HLNK decoder. */
interface DirectConn {
  /** Null once the hello was read and accepted. */
  hello: HelloReader | null;
  /** Closes the connection if its hello is not complete within `DIRECT_HELLO_TIMEOUT_MS`. */
  deadline: ReturnType<typeof setTimeout> | undefined;
  intake: FrameIntake;
}

/** The receiver's listener and connection for one session. */
export class DirectReceiver implements PathReceiver {
  readonly rung = "tls";
  readonly offer: DirectOffer;
  readonly #sid: string;
  readonly #config: DirectConfig;
  readonly #events: DirectReceiverEvents;
  readonly #token: string;
  #listener: TCPSocketListener<DirectConn> | null;
  #conn: Socket<DirectConn> | null = null;
  #timer: ReturnType<typeof setTimeout> | undefined;
  readonly #acks: AckPacer;
  #closed = false;
  #paused = false;

  private constructor(sid: string, pth: string, config: DirectConfig, events: DirectReceiverEvents) {
    this.#sid = sid;
    this.#config = config;
    this.#events = events;
    this.#token = randomBytes(DIRECT_TOKEN_BYTES).toString("base64url");
    this.#acks = new AckPacer({
      delivered: events.delivered,
      ready: () => this.#conn !== null,
      // 8 bytes: a short write here would need a full send buffer the other way.
      send: (delivered) => void this.#conn?.write(encodeDirectAck(delivered)),
    });
    const cert = createSessionCertificate();
    this.#listener = Bun.listen({
      hostname: config.listen,
      port: 0,
      tls: { cert: cert.certPem, key: cert.keyPem },
      data: undefined as unknown as DirectConn, // set in open(), before any other event
      socket: {
        open: (s) => {
          s.data = { hello: new HelloReader(), deadline: undefined, intake: new FrameIntake(sid, pth, config.counters.direct, events.data) };
          s.data.deadline = setTimeout(() => {
            config.log.warn("closed a direct connection that sent no complete hello in time", { sid, ms: DIRECT_HELLO_TIMEOUT_MS });
            s.terminate();
          }, DIRECT_HELLO_TIMEOUT_MS);
        },
        data: (s, chunk) => this.#onData(s, chunk),
        close: (s) => {
          clearTimeout(s.data.deadline);
          if (s === this.#conn) {
            this.#conn = null;
            if (!this.#closed) config.log.debug("the direct connection closed", { sid });
          }
        },
        error: (s) => s.terminate(),
      },
    });
    this.offer = { adr: candidates(config, this.#listener.port), tok: this.#token, fpr: cert.fingerprint };
    this.#timer = setTimeout(() => this.#stopListening(), DIRECT_ACCEPT_TIMEOUT_MS);
    this.#timer.unref?.();
  }

  /** Starts listening for one session; null when there is nothing to offer. */
  static start(sid: string, pth: string, config: DirectConfig, events: DirectReceiverEvents): DirectReceiver | null {
    try {
      const r = new DirectReceiver(sid, pth, config, events);
      if (r.offer.adr.length === 0) {
        r.close();
        return null;
      }
      return r;
    } catch (err) {
      config.log.warn("cannot listen for a direct connection; the session stays on the relay", { sid, err });
      return null;
    }
  }

  get connected(): boolean {
    return this.#conn !== null;
  }

  /** Stop reading the connection (the local application is behind); what comes waits in the kernel. */
  pause(): void {
    this.#paused = true;
    this.#conn?.pause();
  }

  resume(): void {
    this.#paused = false;
    this.#conn?.resume();
  }

  close(): void {
    this.#closed = true;
    this.#acks.stop();
    this.#stopListening();
    this.#conn?.end();
    this.#conn = null;
  }

  #stopListening(): void {
    clearTimeout(this.#timer);
    this.#listener?.stop(false);
    this.#listener = null;
  }

  #onData(s: Socket<DirectConn>, chunk: Uint8Array): void {
    const hello = s.data.hello;
    if (hello !== null) {
      const read = hello.push(chunk);
      if (read.state === "more") return;
      if (read.state === "error") {
        this.#config.log.warn("refused a direct connection: its hello is malformed", { sid: this.#sid, err: read.error });
        s.terminate();
        return;
      }
      if (this.#conn !== null || read.sid !== this.#sid || !sameToken(read.tok, this.#token)) {
        this.#config.log.warn("refused a direct connection with a wrong session or token", { sid: this.#sid });
        s.terminate();
        return;
      }
      s.data.hello = null;
      clearTimeout(s.data.deadline);
      this.#conn = s;
      s.setNoDelay(true);
      if (this.#paused) s.pause();
      this.#stopListening(); // one connection per session, and the token is used up
      if (read.rest.byteLength === 0) return;
      chunk = read.rest;
    }
    if (s !== this.#conn) return;
    this.#acks.arrived(chunk.byteLength);
    if (!s.data.intake.push(chunk)) {
      this.#config.log.warn("the direct connection carried bytes that are not HLNK frames; closing it", { sid: this.#sid });
      s.terminate();
      return;
    }
    this.ack();
  }

  /**
   * Acknowledges what was delivered in order so far, if that advanced (transport.ts `AckPacer`).
   * Also called for frames that came on the relay: a direct frame can wait in the reorder
   * buffer for one of those, and the sender must hear when it was delivered.
   */
  ack(): void {
    this.#acks.ack();
  }
}

/** Whether the hello's token is ours, in time that does not depend on where they differ. */
function sameToken(got: string, expected: string): boolean {
  const a = Buffer.from(got, "latin1");
  const b = Buffer.from(expected, "latin1");
  return a.byteLength === b.byteLength && timingSafeEqual(a, b);
}

// ---------------------------------------------------------------- sender side

/**
 * Dials an offer: its first `MAX_DIALED_CANDIDATES` candidates in turn (the rest are the
 * peer's to waste, not ours to dial), each only while `wanted()` (the session still open);
 * resolves with a pinned, authenticated socket, or the reasons it failed. The caller sends the
 * hello first (`DirectSender`'s `hello`), so that every byte goes through one outbox.
 */
export async function dialDirect(
  sid: string,
  offer: DirectOffer,
  events: { data(ack: Uint8Array): void; drain(): void; close(): void },
  wanted: () => boolean = () => true,
): Promise<{ ok: true; socket: Socket<undefined>; via: string } | { ok: false; error: string }> {
  const errors: string[] = [];
  if (offer.adr.length > MAX_DIALED_CANDIDATES) {
    errors.push(`dialled only the first ${MAX_DIALED_CANDIDATES} of ${offer.adr.length} candidates`);
  }
  for (const candidate of offer.adr.slice(0, MAX_DIALED_CANDIDATES)) {
    if (!wanted()) {
      errors.push("the session ended while dialling");
      break;
    }
    const m = /^\[?([^\]]+)\]?:(\d+)$/.exec(candidate);
    if (m === null || m[1] === undefined) continue;
    const host = m[1];
    const port = Number(m[2]);
    const attempt = await new Promise<{ socket: Socket<undefined> } | { error: string }>((resolve) => {
      let settled = false;
      /** This attempt's socket became the session's: only then do its events reach `events`. */
      let won = false;
      let socket: Socket<undefined> | undefined;
      const done = (r: { socket: Socket<undefined> } | { error: string }) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        // A failed attempt's socket goes now: it must neither linger nor feed the session.
        if ("error" in r) socket?.terminate();
        else won = true;
        resolve(r);
      };
      const timer = setTimeout(() => done({ error: `${candidate}: no TLS handshake within ${DIRECT_DIAL_TIMEOUT_MS} ms` }), DIRECT_DIAL_TIMEOUT_MS);
      Bun.connect({
        hostname: host,
        port,
        tls: { rejectUnauthorized: false, serverName: DIRECT_TLS_SERVER_NAME },
        socket: {
          open(s) {
            socket = s;
            if (settled) s.terminate();
          },
          handshake(s) {
            if (settled) return void s.terminate(); // too late: this attempt already failed
            socket = s;
            const pin = verifyPinnedPeer(s, offer.fpr);
            if (!pin.ok) return done({ error: `${candidate}: ${pin.error.message}` });
            s.setNoDelay(true);
            done({ socket: s }); // the hello goes first through the DirectSender's outbox
          },
          data: (_s, d) => {
            if (won) events.data(d);
          },
          drain: () => {
            if (won) events.drain();
          },
          close: () => {
            if (won) events.close();
            else done({ error: `${candidate}: closed` });
          },
          error: (s) => s.terminate(),
        },
      }).then(
        (s) => {
          socket = s;
          if (settled && !won) s.terminate();
        },
        (err: unknown) => done({ error: `${candidate}: ${describeError(err)}` }),
      );
    });
    if ("socket" in attempt) return { ok: true, socket: attempt.socket, via: candidate };
    errors.push(attempt.error);
  }
  return { ok: false, error: errors.join("; ").slice(0, 1000) || "no usable candidate" };
}

/** The most a TLS record holds (RFC 8446 5.1): a frame up to this size goes as one write. */
const ONE_RECORD_BYTES = 16 * 1024;
const COPY = { copy: true } as const;

/**
 * A dialled TLS connection as a `FramePipe` (transport.ts): frames and the hello go through one
 * outbox, in order; `flush()` belongs in the socket's drain handler.
 */
export class TlsPipe implements FramePipe {
  readonly #socket: Socket<undefined>;
  readonly #outbox: Outbox;
  #scratch = new Uint8Array(0);

  /** `hello`: `encodeDirectHello(sid, tok)` for a connection `dialDirect` made, written before any frame. */
  constructor(socket: Socket<undefined>, hello?: Uint8Array) {
    this.#socket = socket;
    this.#outbox = new Outbox(socket);
    if (hello !== undefined) this.#outbox.write(hello);
  }

  writeFrame(header: Uint8Array, payload: Uint8Array | InPlaceData): void {
    const length = payload instanceof InPlaceData ? payload.length : payload.byteLength;
    if (length > ONE_RECORD_BYTES) {
      this.#outbox.write(header);
      this.#outbox.write(payload instanceof InPlaceData ? payload.pay : payload);
      return;
    }
    // One write, one TLS record and one syscall for a small frame, not two of each: the copy
    // costs less than either. Into one reused buffer: the outbox copies what the socket leaves.
    // An in-place payload is copied from its read's range (no view of the read made).
    const size = header.byteLength + length;
    if (this.#scratch.byteLength < size) this.#scratch = new Uint8Array(Math.max(size, ONE_RECORD_BYTES + 1024));
    const frame = this.#scratch.subarray(0, size);
    frame.set(header);
    if (payload instanceof InPlaceData) copyRange(frame, header.byteLength, payload.src, payload.srcAt, payload.srcAt + length);
    else frame.set(payload, header.byteLength);
    this.#outbox.write(frame, COPY);
  }

  get queued(): number {
    return this.#outbox.queued;
  }

  flush(): void {
    this.#outbox.flush();
  }

  close(): void {
    this.#socket.end();
  }

  cut(): void {
    this.#socket.terminate();
  }
}

/**
 * Dials a session's offer and, when a candidate answers with the pinned certificate, returns the
 * session's TLS `PathSender`. `closed` is called once if that path's connection closes later
 * (the session then falls back); `wanted()` is asked before each candidate and after the dial.
 */
export async function dialTlsPath(
  sid: string,
  pth: string,
  offer: DirectOffer,
  config: Pick<DirectConfig, "counters" | "log">,
  wanted: () => boolean,
  closed: (sender: PathSender) => void,
): Promise<{ ok: true; sender: PathSender; via: string } | { ok: false; error: string }> {
  let pipe: TlsPipe | null = null;
  let sender: PathSender | null = null;
  const result = await dialDirect(
    sid,
    offer,
    {
      data: (ack) => sender?.onAck(ack),
      drain: () => {
        pipe?.flush();
        sender?.onDrain();
      },
      close: () => {
        if (sender !== null) closed(sender);
      },
    },
    wanted,
  );
  if (!result.ok) return result;
  if (!wanted()) {
    result.socket.end();
    return { ok: false, error: "the session changed while dialling" };
  }
  pipe = new TlsPipe(result.socket, encodeDirectHello(sid, offer.tok));
  sender = new PathSender("tls", pipe, pth, config.counters.direct, config.log);
  sender.via = result.via;
  return { ok: true, sender, via: result.via };
}
