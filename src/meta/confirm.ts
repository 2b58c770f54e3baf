/**
 * Confirmation: one ping to a publisher through the gateway of its host, the path every remote
 * client takes — `ws://[host]:<ping port>/pub/<pub_id>`, text `ping`, one text reply
 * `{"value", "seq", "ts"}` (src/stream/protocol.ts: `PingReply`, `MAX_PING_REPLY_BYTES`).
 *
 * It dials with core/ws.ts's `dialWebSocket` (the `ws` package's client, the one client stoa has
 * for one-shot WebSockets) rather than the global `WebSocket`: that one reports every failure as
 * "Failed to connect" or "Expected 101 status code", while a user needs to hear whether the
 * gateway does not know the pub_id (404), the publisher behind it is down (502), or it accepted
 * and stayed silent. `dialWebSocket` hands over a refused upgrade's status and body (at most
 * `MAX_REFUSAL_BODY_BYTES`), a 101's headers (`onUpgrade`), and fails a reply over
 * `MAX_PING_REPLY_BYTES` on its frame header (`maxPayload`); the response head is bounded by
 * Bun's HTTP client (about 16 KiB). It validates the handshake (Sec-WebSocket-Accept, no
 * unrequested extension or protocol) and the frames (unmasked, valid UTF-8 text, close codes),
 * answers the server's pings and joins fragments. The whole round trip has one deadline
 * (`timeoutMs`). It never throws: the outcome is a value, and the reason is a sentence for the
 * user. Once settled, the socket is closed (a close frame 1000 after a reply, otherwise dropped)
 * and the deadline timer cleared: nothing stays behind.
 *
 * Not a port scanner. `host` and the ping port come from whoever registered, so the reason must
 * not tell an attacker anything about a service that is not a stoa gateway: only two kinds of
 * answer are told apart —
 * - a stoa gateway's routing error (src/gateway/protocol.ts: an HTTP error whose JSON body's
 *   `error` is one of `ROUTE_ERRORS` with its status) is named by its code, never quoted;
 * - a `101` that is a valid WebSocket upgrade and names the pub_id asked for
 *   (`PUB_ID_HEADER`, src/stream/protocol.ts) is the publisher; what it then does wrong is
 *   named too (no reply, not JSON, wrong fields, binary, too large, not valid WebSocket, closed
 *   — a close frame by its code only), its bytes are not quoted.
 * Everything else — refused, reset, unreachable, a name that does not resolve, closed, silent
 * until the deadline, not HTTP, any other HTTP answer, a foreign WebSocket — is one reason,
 * `notAGateway`, with the same wording and the same `timedOut: false`, given only when the
 * deadline passes however soon it was known (a refused port and a silent one take as long).
 * Only the abort signal ends an attempt sooner ("the metaserver is shutting down").
 */
import { dialWebSocket, type UpgradeRefusal, WS_PAYLOAD_TOO_LARGE, wsErrorCode } from "../core/ws.ts";
import { ROUTE_ERRORS } from "../gateway/protocol.ts";
import { MAX_PING_REPLY_BYTES, PingReply, PUB_ID_HEADER } from "../stream/protocol.ts";
import { urlHost } from "../core/endpoint.ts";
import { publisherUrls } from "./protocol.ts";

interface PingTarget {
  host: string;
  /** The gateway's ping port on that host. */
  port: number;
  pubId: string;
}

export type PingOutcome =
  | { ok: true; reply: PingReply }
  | { ok: false; timedOut: boolean; reason: string };

interface PingOptions {
  timeoutMs: number;
  /** Aborting ends the attempt at once (the metaserver is shutting down). */
  signal?: AbortSignal;
}

/** A confirmation function: the server's default is `pingThroughGateway`; tests may swap it. */
export type Pinger = (target: PingTarget, options: PingOptions) => Promise<PingOutcome>;

/**
 * `handshake`: dialled, not yet identified; `reply`: the publisher upgraded, the ping is out;
 * `foreign`: what answered is not a stoa gateway, the outcome waits for the deadline.
 */
type Phase = "handshake" | "reply" | "foreign" | "done";

/**
 * Pings a publisher through its host's gateway. Never throws.
 *
 * @example
 * ```ts
 * const out = await pingThroughGateway({ host: "fd00::1", port: 8083, pubId: "abc" }, { timeoutMs: 3000 });
 * if (!out.ok) console.error(out.reason); // "no stoa gateway answered at [fd00::1]:8083 (…); check …"
 * ```
 */
export function pingThroughGateway(target: PingTarget, options: PingOptions): Promise<PingOutcome> {
  return new Promise<PingOutcome>((resolve) => new PingAttempt(target, options, resolve).start());
}

class PingAttempt {
  #phase: Phase = "handshake";
  #ws: WebSocket | null = null;
  /** `PUB_ID_HEADER` of the 101, once one arrived (undefined: absent). */
  #upgradedPubId: string | undefined;
  readonly #url: string;
  readonly #timer: Timer;
  readonly #onAbort = () => this.#fail("the metaserver is shutting down");
  readonly #target: PingTarget;
  readonly #options: PingOptions;
  readonly #resolve: (outcome: PingOutcome) => void;

  constructor(target: PingTarget, options: PingOptions, resolve: (outcome: PingOutcome) => void) {
    this.#target = target;
    this.#options = options;
    this.#resolve = resolve;
    this.#url = publisherUrls(target.host, { service: 1, string: 1, ping: target.port }, target.pubId).ping;
    this.#timer = setTimeout(() => this.#timeout(), options.timeoutMs);
  }

  start(): void {
    if (this.#options.signal?.aborted) return this.#onAbort();
    this.#options.signal?.addEventListener("abort", this.#onAbort, { once: true });
    let ws: WebSocket;
    try {
      ws = dialWebSocket(
        this.#url,
        {
          headers: { "User-Agent": "stoa-meta" },
          maxPayload: MAX_PING_REPLY_BYTES,
          onUpgrade: (headers) => {
            const value = headers[PUB_ID_HEADER.toLowerCase()];
            this.#upgradedPubId = typeof value === "string" ? value : undefined;
          },
        },
        (refusal) => this.#refused(refusal),
      );
    } catch {
      return this.#foreign(); // a URL it cannot dial
    }
    this.#ws = ws;
    ws.binaryType = "arraybuffer";
    ws.onopen = () => this.#opened();
    ws.onmessage = (event) => this.#message(event.data);
    ws.onerror = (event) => this.#errored(event);
    ws.onclose = (event) => this.#closed(event.code);
  }

  /** The one reason for every answer that is not a stoa gateway's or the publisher's. */
  #notAGateway(): string {
    const at = `${urlHost(this.#target.host)}:${this.#target.port}`;
    return (
      `no stoa gateway answered at ${at} (nothing listening, unreachable, silent, or another service); ` +
      `check the registered host and ping port, and that stoa gateway (or stoa up) runs there`
    );
  }

  /**
   * What answered is not a stoa gateway (or nothing did): drop the connection now, but say so
   * only at the deadline, so how soon the answer came (refused at once, a banner, silence) tells
   * nothing about the service either.
   */
  #foreign(): void {
    if (this.#phase === "done" || this.#phase === "foreign") return;
    this.#phase = "foreign";
    this.#drop();
  }

  #timeout(): void {
    if (this.#phase === "done") return;
    if (this.#phase !== "reply") return this.#fail(this.#notAGateway()); // foreign, handshake
    this.#settle({
      ok: false,
      timedOut: true,
      reason: `publisher ${this.#target.pubId} accepted the WebSocket at ${this.#url} but did not answer the ping within ${this.#options.timeoutMs / 1000}s`,
    });
  }

  /** A non-101 answer: a stoa gateway's routing error is named, anything else is foreign. */
  #refused(refusal: UpgradeRefusal): void {
    if (this.#phase !== "handshake") return;
    const code = gatewayErrorCode(refusal);
    const host = this.#target.host;
    const pubId = this.#target.pubId;
    if (code === null) return this.#foreign();
    if (code === "unknown_pub_id") {
      return this.#fail(`the stoa gateway on host ${host} does not serve publisher ${pubId} (404); is it running there, with the same --run-dir as the gateway?`);
    }
    if (code === "target_down") {
      return this.#fail(`the stoa gateway on host ${host} knows publisher ${pubId} but its ping socket does not answer (502)`);
    }
    this.#fail(`the stoa gateway on host ${host} refused the ping with ${refusal.status} ${code}`);
  }

  /** A valid upgrade; only the publisher asked for may answer: a foreign WebSocket server is not confirmed. */
  #opened(): void {
    if (this.#phase !== "handshake") return;
    if (this.#upgradedPubId !== this.#target.pubId) return this.#foreign();
    this.#phase = "reply";
    this.#ws?.send("ping");
  }

  #message(data: unknown): void {
    if (this.#phase !== "reply") return;
    const pubId = this.#target.pubId;
    if (typeof data !== "string") {
      return this.#fail(`publisher ${pubId} answered the ping with a binary frame; its ping endpoint answers text`);
    }
    let json: unknown;
    try {
      json = JSON.parse(data);
    } catch {
      return this.#fail(`publisher ${pubId} answered the ping with something that is not JSON`);
    }
    const reply = PingReply.safeParse(json);
    if (!reply.success) {
      return this.#fail(`publisher ${pubId} answered the ping without the fields {value, seq, ts}`);
    }
    this.#settle({ ok: true, reply: reply.data });
  }

  /** Before the publisher is identified, what went wrong is the foreign service's business. */
  #errored(event: Event): void {
    if (this.#phase !== "reply") return this.#foreign();
    const pubId = this.#target.pubId;
    const code = wsErrorCode(event);
    if (code === WS_PAYLOAD_TOO_LARGE) {
      return this.#fail(`publisher ${pubId}'s ping reply is larger than ${MAX_PING_REPLY_BYTES} bytes`);
    }
    if (code?.startsWith("WS_ERR_")) {
      return this.#fail(`publisher ${pubId} broke the WebSocket protocol at ${this.#url} (an invalid frame) instead of answering the ping`);
    }
    this.#fail(`the connection to publisher ${pubId} at ${this.#url} failed`);
  }

  /** 1006: no close frame (a hang-up or a reset); any other code came in the publisher's close frame. */
  #closed(code: number): void {
    if (this.#phase !== "reply") return this.#foreign();
    const pubId = this.#target.pubId;
    if (code === 1006) return this.#fail(`publisher ${pubId} closed the connection at ${this.#url} without answering the ping`);
    this.#fail(`publisher ${pubId} closed the WebSocket (code ${code}) instead of answering the ping`);
  }

  #fail(reason: string): void {
    this.#settle({ ok: false, timedOut: false, reason });
  }

  #settle(outcome: PingOutcome): void {
    if (this.#phase === "done") return;
    this.#phase = "done";
    clearTimeout(this.#timer);
    this.#options.signal?.removeEventListener("abort", this.#onAbort);
    this.#drop(outcome.ok);
    this.#resolve(outcome);
  }

  /**
   * Forget the socket and end it now: after a reply with a close frame (1000) first, sent before
   * the connection is cut, so nothing waits for the peer's close frame.
   */
  #drop(polite = false): void {
    const ws = this.#ws;
    if (ws === null) return;
    this.#ws = null;
    ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
    if (polite && ws.readyState === WebSocket.OPEN) ws.close(1000);
    ws.terminate();
  }
}

/**
 * The routing error code of a stoa gateway's error answer (`status` and a JSON body
 * `{"error": code, …}` with `ROUTE_ERRORS[code] === status`), or null for anything else.
 */
function gatewayErrorCode(refusal: UpgradeRefusal): string | null {
  const code = refusal.error;
  if (code === undefined || !Object.hasOwn(ROUTE_ERRORS, code)) return null;
  return (ROUTE_ERRORS as Record<string, number>)[code] === refusal.status ? code : null;
}
