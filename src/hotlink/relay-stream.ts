/**
 * Relay streams: a tunnel connection's bytes on a TCP connection of their own through the relay,
 * spliced in the kernel at every hop (core/fdsplice.ts), instead of Data messages on the daemons'
 * framed links. The session protocol still opens, checks and ends the session (protocol.ts);
 * only its bytes move off the message link. A bare Bun process forwarding a stream costs more
 * CPU per byte than splice(2) does, so a tunnel carried this way outruns any chain of Bun hops.
 *
 * When. Only on a relay's framed link (plain TCP, so nothing is given away: the messages on that
 * link are not encrypted either): the relay says `stm` in the Welcome it sends there; a daemon
 * whose link has it, and that has no direct rung of its own (a direct path is what its user
 * asked for), opens its tunnel sessions with `stm`; a receiver that can attach too accepts with
 * `stm`, and the session carries no Data from then on. Anything else is the session as before.
 *
 * Wire, on the relay's framed-link port (framed-link.ts):
 *   client → server   frame: the `Authorization` value, as for a link     ← "200 ok" (or a refusal)
 *   client → server   frame: 0xFE, then the session's sid in ASCII, and from the receiver a
 *                     space and the key it sent in its Accept's `stk` (the attach; 0xFE never
 *                     begins a CBOR map, so it cannot be mistaken for a Hello). Nothing more
 *                     until the answer. The sender attaches once it has the Accept; the
 *                     receiver right after sending it (the relay holds an attach that comes
 *                     before it read the Accept, from a user the session was offered to).
 *   server → client   frame: "200 paired" once the other party of the session attached too,
 *                     or "<status> <text>" and the close: 404 no such stream session, 403 not a
 *                     party to it, 409 that party attached already, 429 too many receivers'
 *                     attaches (`MAX_RECEIVER_ATTACHES`), 408 the other party did not attach
 *                     within `ATTACH_TIMEOUT_MS`, 410 the session ended meanwhile.
 *   both ways         the tunnel's bytes, nothing else; FIN is the application's FIN.
 * The two parties are the session's sender and its one accepted receiver (the key tells that
 * daemon from another of the same user); the server pairs their attaches by sid and splices
 * the two connections. Every splice on the way (daemon: application ↔
 * stream; relay: stream ↔ stream) is abortive: a reset stays a reset at the other end, and a hop
 * that dies resets both of its sockets (its SO_LINGER is 0 until an orderly close), so a cut
 * stream never ends in a FIN. The session's end: the sender sends its orderly Close once its
 * splice finished in order (the relay lets its own splice finish), Close with a reason after a
 * reset; an aborted session, a lost link or a stopping relay resets the stream everywhere.
 */
import type { Socket } from "bun";
import { joinBytes } from "../core/bytes.ts";
import { describeError, StoaError } from "../core/errors.ts";
import { FdSplicer, closeReset } from "../core/fdsplice.ts";
import type { PipeStats } from "../core/pipe.ts";
import type { Logger } from "../core/log.ts";
import type { Counter, Gauge, Registry } from "../core/metrics.ts";
import { urlHost } from "../core/endpoint.ts";
import { FirstFrame, attachFrame, parseStatusFrame, textFrame } from "./framed-link.ts";

/** How long an attach waits for the other party's. */
export const ATTACH_TIMEOUT_MS = 45_000;
/** Largest status frame read (a code and a reason). */
const MAX_STATUS_BYTES = 1024;
/** Time for the connect, the authorization and the answer to the attach itself (the pairing
 * waits longer: see `ATTACH_TIMEOUT_MS`). */
const DIAL_TIMEOUT_MS = 10_000;

// --- the daemon's side ---------------------------------------------------------------------

/** Where a daemon attaches: its framed link's address and authorization. */
export interface StreamEndpoint {
  hostname: string;
  port: number;
  authorization: string;
}

/** A paired stream: its socket, paused, and what it read past the answer (the other party's first bytes). */
export interface AttachedStream {
  sock: Socket<undefined>;
  /** Every byte read past the answer so far (Bun may deliver a read after pause()), in order. */
  rest(): Uint8Array;
}

/**
 * Dials the relay's framed-link port, authorizes and attaches to session `sid` (a receiver
 * with the `key` of its Accept); resolves once
 * the other party attached too (the socket paused, to be handed to a splicer), rejects with the
 * relay's refusal or the failure. `signal` aborts the wait (the socket is closed).
 */
export function attachStream(endpoint: StreamEndpoint, sid: string, key: string | undefined, signal: AbortSignal): Promise<AttachedStream> {
  const where = `${urlHost(endpoint.hostname)}:${endpoint.port}`;
  return new Promise<AttachedStream>((resolve, reject) => {
    let sock: Socket<undefined> | null = null;
    let first = new FirstFrame(MAX_STATUS_BYTES);
    let stage: "auth" | "pair" | "done" = "auth";
    let timer: ReturnType<typeof setTimeout> | undefined = setTimeout(
      () => fail(`the relay did not answer within ${DIAL_TIMEOUT_MS} ms`),
      DIAL_TIMEOUT_MS,
    );
    const fail = (why: string): void => {
      if (stage === "done") return;
      stage = "done";
      clearTimeout(timer);
      signal.removeEventListener("abort", onAbort);
      sock?.terminate();
      reject(new StoaError("io", `relay stream ${where}: ${why}`));
    };
    const onAbort = (): void => fail(signal.reason instanceof Error ? signal.reason.message : "aborted");
    if (signal.aborted) {
      onAbort();
      return;
    }
    signal.addEventListener("abort", onAbort, { once: true });
    /** Bytes past the answer, once paired. */
    const late: Uint8Array[] = [];
    let paired = false;
    const onData = (s: Socket<undefined>, chunk: Uint8Array): void => {
      if (paired) {
        late.push(new Uint8Array(chunk));
        return;
      }
      while (stage !== "done") {
        const got = first.push(chunk);
        if (got === null) return;
        const status = got === "too_large" ? null : parseStatusFrame(got.frame);
        if (status === null) return fail("the relay's answer is not a status frame");
        if (status.status !== 200) return fail(`${status.status} ${status.text}`);
        if (stage === "auth") {
          // Authorized: the attach; the pairing may take as long as the relay lets it.
          stage = "pair";
          clearTimeout(timer);
          timer = undefined;
          first = new FirstFrame(MAX_STATUS_BYTES);
          s.write(attachFrame(sid, key));
          if (got === "too_large" || got.rest.byteLength === 0) return;
          chunk = got.rest;
          continue;
        }
        stage = "done";
        paired = true;
        signal.removeEventListener("abort", onAbort);
        s.pause();
        // The other party's first bytes may have come in the same read.
        if (got !== "too_large" && got.rest.byteLength > 0) late.push(new Uint8Array(got.rest));
        resolve({ sock: s, rest: () => joinBytes(late, late.reduce((n, c) => n + c.byteLength, 0)) });
        return;
      }
    };
    Bun.connect<undefined>({
      hostname: endpoint.hostname,
      port: endpoint.port,
      allowHalfOpen: true,
      socket: {
        open: (s) => {
          sock = s;
          if (stage === "done") {
            s.terminate();
            return;
          }
          s.setNoDelay(true);
          // Both frames are small: a socket takes them whole.
          s.write(textFrame(endpoint.authorization));
        },
        data: onData,
        end: () => fail("the relay closed the stream before it was paired"),
        close: (_s, err) => fail(err === undefined ? "the relay closed the stream before it was paired" : describeError(err)),
        connectError: (_s, err) => fail(describeError(err)),
        error: () => {},
      },
    }).catch((err: unknown) => fail(describeError(err)));
  });
}

// --- the relay's side ----------------------------------------------------------------------

/** An attach the relay holds: its socket (paused), and how to answer it. */
export interface PendingAttach {
  /** Takes the socket away from Bun: its descriptor for the splicer (-1 when it is gone). */
  take(): number;
  /** Answers "<status> <text>" and closes. */
  refuse(status: number, text: string): void;
  /** Called once if the socket goes away before it is taken. */
  onGone: (() => void) | null;
}

/** An attach held for its partner, with its own deadline. */
interface Held {
  readonly pending: PendingAttach;
  readonly timer: ReturnType<typeof setTimeout>;
}

interface Waiting {
  sender: Held | null;
  /** Receivers' attaches by their key: one may come before the relay read its Accept. */
  receivers: Map<string, Held>;
}

/** Receivers' attaches one session holds at most (a daemon of each user it was offered to, and slack). */
export const MAX_RECEIVER_ATTACHES = 4;
/** How long a stream may run on after its session's orderly end (the sender's Close follows its own splice's end, so only a last flush is left). */
export const ORDERLY_GRACE_MS = 120_000;

/** The relay's pairing of attaches and its splices (one engine thread, made on first use). */
export class StreamPairer {
  readonly #log: Logger;
  readonly #waiting = new Map<string, Waiting>();
  /** The key of each session's accepted stream receiver (from its Accept), until the session ends. */
  readonly #keys = new Map<string, string>();
  /** Splice ids of paired streams, by sid. */
  readonly #spliced = new Map<string, number>();
  #splicer: FdSplicer | null = null;
  #closed = false;
  /** Streams paired, their bytes once done (both directions), and those that ended in a reset. */
  readonly stats = { paired: 0, bytes: 0, resets: 0 };
  readonly #m: { active: Gauge; done: Counter; bytes: Counter };

  constructor(log: Logger, registry: Registry) {
    this.#log = log;
    this.#m = {
      active: registry.gauge("stoa_hotlink_streams", "Hotlink relay streams paired and running (tunnel connections spliced through the relay)."),
      done: registry.counter("stoa_hotlink_streams_total", "Hotlink relay streams ended, by outcome (orderly, reset).", ["outcome"]),
      bytes: registry.counter("stoa_hotlink_stream_bytes_total", "Bytes of ended hotlink relay streams, both directions."),
    };
    this.#m.active.inc(0);
    this.#m.bytes.inc(0);
  }

  /** Streams paired and still running. */
  get active(): number {
    return this.#spliced.size;
  }

  /** Attaches waiting for the other party. */
  get waiting(): number {
    let n = 0;
    for (const w of this.#waiting.values()) n += (w.sender === null ? 0 : 1) + w.receivers.size;
    return n;
  }

  /**
   * An attach to session `sid` (the switchboard checked that it may be a party): the sender's
   * (`key` null), or a receiver's with the key it will send (or sent) in its Accept. Each waits
   * at most `ATTACH_TIMEOUT_MS` for its partner.
   */
  attach(sid: string, key: string | null, pending: PendingAttach): void {
    if (this.#closed) return pending.refuse(503, "the relay is stopping");
    const role = key === null ? "sender" : "receiver";
    if (this.#spliced.has(sid)) return pending.refuse(409, `the ${role} of this session attached already`);
    let w = this.#waiting.get(sid);
    if (w === undefined) {
      w = { sender: null, receivers: new Map() };
      this.#waiting.set(sid, w);
    }
    const entry = w;
    if (key === null ? entry.sender !== null : entry.receivers.has(key)) return pending.refuse(409, `the ${role} of this session attached already`);
    if (key !== null && entry.receivers.size >= MAX_RECEIVER_ATTACHES) return pending.refuse(429, `a session holds at most ${MAX_RECEIVER_ATTACHES} receivers' attaches`);
    const drop = (): boolean => {
      const held = key === null ? entry.sender : entry.receivers.get(key);
      if (held?.pending !== pending) return false;
      clearTimeout(held.timer);
      if (key === null) entry.sender = null;
      else entry.receivers.delete(key);
      if (entry.sender === null && entry.receivers.size === 0 && this.#waiting.get(sid) === entry) this.#waiting.delete(sid);
      return true;
    };
    const timer = setTimeout(() => {
      if (drop()) pending.refuse(408, `the other party of the session did not attach within ${ATTACH_TIMEOUT_MS / 1000} s`);
    }, ATTACH_TIMEOUT_MS);
    timer.unref?.();
    const held: Held = { pending, timer };
    if (key === null) entry.sender = held;
    else entry.receivers.set(key, held);
    pending.onGone = () => void drop();
    this.#tryPair(sid);
  }

  /** Session `sid`'s stream receiver accepted with `key`: only its attach is paired. */
  accepted(sid: string, key: string): void {
    if (this.#closed) return;
    this.#keys.set(sid, key);
    this.#tryPair(sid);
  }

  #tryPair(sid: string): void {
    const w = this.#waiting.get(sid);
    const key = this.#keys.get(sid);
    const sender = w?.sender ?? null;
    const receiver = key === undefined ? undefined : w?.receivers.get(key);
    if (w === undefined || sender === null || receiver === undefined) return;
    this.#waiting.delete(sid);
    clearTimeout(sender.timer);
    for (const [k, other] of w.receivers) {
      clearTimeout(other.timer);
      if (k !== key) other.pending.refuse(409, "another receiver took this session's stream");
    }
    sender.pending.onGone = null;
    receiver.pending.onGone = null;
    const a = sender.pending.take();
    const b = receiver.pending.take();
    if (a < 0 || b < 0) {
      // One went in the meantime: the other is reset, as the stream would be.
      if (a >= 0) closeReset(a);
      if (b >= 0) closeReset(b);
      return;
    }
    const paired = textFrame("200 paired");
    let splice: { id: number; done: Promise<PipeStats> };
    try {
      if (this.#splicer === null || !this.#splicer.alive) this.#splicer = new FdSplicer();
      splice = this.#splicer.splice(a, b, { abortive: true, toA: paired, toB: paired });
    } catch (err) {
      this.#log.error("cannot splice a relay stream; both parties are reset", { sid, error: describeError(err) });
      closeReset(a);
      closeReset(b);
      return;
    }
    this.stats.paired++;
    this.#m.active.inc();
    this.#spliced.set(sid, splice.id);
    this.#log.debug("relay stream paired", { sid });
    void splice.done.then((stats) => {
      if (this.#spliced.get(sid) === splice.id) this.#spliced.delete(sid);
      // The counts include the two answers written first.
      const bytes = Math.max(0, stats.bytesAtoB - paired.byteLength) + Math.max(0, stats.bytesBtoA - paired.byteLength);
      this.stats.bytes += bytes;
      if (stats.error !== null) this.stats.resets++;
      this.#m.active.dec();
      this.#m.bytes.inc(bytes);
      this.#m.done.inc({ outcome: stats.error === null ? "orderly" : "reset" });
      this.#log.debug("relay stream done", { sid, toReceiver: stats.bytesAtoB - paired.byteLength, toSender: stats.bytesBtoA - paired.byteLength, error: stats.error?.message });
    });
  }

  /**
   * Session `sid` ended, or has no stream after all. In order (the sender's orderly Close): a
   * running stream finishes by itself, within `ORDERLY_GRACE_MS` (after that it is reset: it
   * answers to no session any more); attaches still waiting are refused. Otherwise the stream
   * is reset at once.
   */
  ended(sid: string, orderly: boolean): void {
    this.#keys.delete(sid);
    const w = this.#waiting.get(sid);
    if (w !== undefined) {
      this.#waiting.delete(sid);
      for (const held of [w.sender, ...w.receivers.values()]) {
        if (held === null) continue;
        clearTimeout(held.timer);
        held.pending.refuse(410, "the session ended, or has no stream");
      }
    }
    const id = this.#spliced.get(sid);
    if (id === undefined) return;
    if (orderly) {
      const grace = setTimeout(() => {
        if (this.#spliced.get(sid) !== id) return;
        this.#spliced.delete(sid);
        this.#log.info("reset a relay stream still running after its session's orderly end", { sid, graceMs: ORDERLY_GRACE_MS });
        this.#splicer?.destroy(id, "still running after its session ended");
      }, ORDERLY_GRACE_MS);
      grace.unref?.();
      return;
    }
    this.#spliced.delete(sid);
    this.#splicer?.destroy(id, "the session was aborted");
  }

  /** Refuses what waits, resets every stream and stops the engine. */
  async close(): Promise<void> {
    this.#closed = true;
    for (const sid of [...this.#waiting.keys()]) this.ended(sid, false);
    this.#spliced.clear();
    await this.#splicer?.close();
    this.#splicer = null;
  }
}
