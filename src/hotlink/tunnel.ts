/**
 * A TCP tunnel: `--tunnel CHANNEL=HOST:PORT@PEER`. Both peers declare the same channel; each
 * listens on its own local port, and the application connection on one side and the one on the
 * other behave as one full-duplex TCP connection, half-close included.
 *
 * - One application connection per tunnel at a time (a second one is refused, with a warning).
 * - Each direction is its own session: the side whose application connected opens one to PEER
 *   (pth = CHANNEL, to = PEER) and reads its application only once that session is accepted.
 *   "no receiver" (the peer daemon is not there yet) is retried every `OPEN_RETRY_MS` for
 *   `HOLD_MS`; then the application connection is reset.
 * - The peer's session for CHANNEL is accepted whether or not an application is connected here:
 *   what arrives before it connects is held (at most `HOLD_BYTES`, for `HOLD_MS`) and written
 *   when it connects (seed 003, lesson 3); past either bound the session is closed with a
 *   reason that reaches the sender. Nothing is dropped silently.
 * - Close: the application's FIN becomes an orderly Close (with the last seq); the peer writes
 *   everything up to it, then half-closes its application's connection. A reset or a lost relay
 *   becomes an abort: the other side resets its application's connection, so a broken stream is
 *   never mistaken for a complete one.
 * - Backpressure: the application is not read while the transport its session uses (the relay
 *   socket or the direct connection) is over its high-water mark; the relay socket and direct
 *   connections are not read while the application's unsent bytes are over `APP_HIGH_WATER`.
 * This is the TCP path only; IPC channels (ipc.ts) are separate code (seed 003, lesson 4).
 */
import type { Socket, TCPSocketListener } from "bun";
import { randomBytes } from "node:crypto";
import { joinBytes } from "../core/bytes.ts";
import { describeError } from "../core/errors.ts";
import { closeReset, takeSocketFd } from "../core/fdsplice.ts";
import type { Logger } from "../core/log.ts";
import { Outbox } from "../core/outbox.ts";
import type { PipeStats } from "../core/pipe.ts";
import type { TunnelStatus } from "./protocol.ts";
import { type AttachedStream, attachStream } from "./relay-stream.ts";
import { type Delivery, Incoming, Outgoing, type SessionTable } from "./sessions.ts";

export const HOLD_BYTES = 64 * 1024 * 1024;
export const HOLD_MS = 30_000;
export const OPEN_RETRY_MS = 500;
/** Unsent bytes to the application above which the relay socket is not read. */
export const APP_HIGH_WATER = 4 * 1024 * 1024;

export interface TunnelSpec {
  channel: string;
  host: string;
  port: number;
  /** The other side's user; absent, every user with access to the channel (the server decides). */
  peer?: string;
}

type App = Socket<{ tunnel: Tunnel }>;

/** The application connection's relay stream (relay-stream.ts), from the attach to its end. */
interface Stream {
  readonly role: "sender" | "receiver";
  /** The session it belongs to (no longer `#out` or `#in`: its end is the stream's). */
  readonly session: Outgoing | Incoming;
  readonly abort: AbortController;
  /** The splice once paired (the application's socket and the stream's are the engine's then). */
  spliceId: number | null;
}

export class Tunnel {
  readonly spec: TunnelSpec;
  readonly #table: SessionTable;
  readonly #log: Logger;
  #listener: TCPSocketListener<{ tunnel: Tunnel }> | null = null;
  #app: App | null = null;
  #appEnded = false;
  #out: Outgoing | null = null;
  #openingSince = 0;
  #retry: ReturnType<typeof setTimeout> | undefined;
  #in: Incoming | null = null;
  /** The incoming session ended in order: FIN to the application once its queue is written. */
  #inFinished = false;
  #held: Uint8Array[] = [];
  #heldBytes = 0;
  #holdTimer: ReturnType<typeof setTimeout> | undefined;
  /** What the application sent before its session was accepted, in order. */
  #early: Uint8Array[] = [];
  /** Bytes for the application that its socket did not take yet. */
  #outbox: Outbox | null = null;
  #holdingLink = false;
  #stream: Stream | null = null;
  /** Counters for telemetry. */
  readonly counters = { connections: 0, txBytes: 0, rxBytes: 0, resets: 0 };

  constructor(spec: TunnelSpec, table: SessionTable, log: Logger) {
    this.spec = spec;
    this.#table = table;
    this.#log = log.child({ tunnel: spec.channel });
  }

  get port(): number {
    return this.#listener?.port ?? this.spec.port;
  }

  /** Binds the local port. Throws like Bun.listen (EADDRINUSE …). */
  listen(): void {
    this.#listener = Bun.listen<{ tunnel: Tunnel }>({
      hostname: this.spec.host,
      port: this.spec.port,
      allowHalfOpen: true,
      data: { tunnel: this },
      socket: {
        open: (s) => this.#onAppOpen(s),
        data: (s, chunk) => this.#onAppData(s, chunk),
        drain: (s) => this.#onAppDrain(s),
        end: (s) => this.#onAppEnd(s),
        close: (s, err) => this.#onAppClose(s, err),
        error: (s) => s.terminate(),
      },
    });
  }

  /** An Open for this channel from the peer: accept it (or say why not). */
  offer(sid: string, frm: string | undefined, stream = false): Incoming | string {
    if (this.spec.peer !== undefined && frm !== this.spec.peer) return `tunnel ${this.spec.channel} here pairs with ${this.spec.peer}, not ${frm ?? "?"}`;
    if (this.#in !== null || this.#inFinished || this.#stream !== null) return `tunnel ${this.spec.channel} is busy with another connection`;
    // A relay stream carries both directions: taken unless this side's own session carries
    // Data, or is a stream too and wins (the lower sid; both sides decide the same).
    const out = this.#out;
    let streamed = stream && this.#table.streamEndpoint !== null && (out === null || out.wantStream);
    if (streamed && out !== null) {
      if (out.state !== "opening" || sid > out.sid) return `tunnel ${this.spec.channel}: crossed with session ${out.sid} from this side, which carries the stream`;
      // Theirs carries it: ours goes, the application stays.
      this.#out = null;
      out.abort(`crossed with session ${sid}, which carries the stream`);
    }
    if (!stream) streamed = false;
    const session = new Incoming(this.#table, sid, this.spec.channel, frm, {
      deliver: (item) => this.#deliver(item),
      ended: (reason) => this.#onInEnded(session, reason),
    });
    if (streamed) session.streamKey = randomBytes(18).toString("base64url");
    this.#in = session;
    if (this.#app === null) this.#startHoldTimer();
    return session;
  }

  /** The daemon sent the Accept of `session`: a stream's receiver attaches now if its application is here. */
  accepted(session: Incoming): void {
    if (this.#in === session && session.streamKey !== null && this.#app !== null) this.#startStream("receiver", session);
  }

  /** The relay connection came back: an application waiting for its session gets one now. */
  onLinkUp(): void {
    if (this.#app !== null && this.#out === null) this.#openOut();
  }

  /** The relay connection is gone, and every session with it. */
  onLinkDown(reason: string): void {
    this.#abortStream(`the relay server connection was lost (${reason})`);
    this.#out?.onLinkDown(reason);
    this.#in?.onLinkDown(reason);
  }

  status(): TunnelStatus {
    const stream = this.#stream;
    const out = this.#out ?? (stream?.session instanceof Outgoing ? stream.session : null);
    const inc = this.#in ?? (stream?.session instanceof Incoming ? stream.session : null);
    return {
      channel: this.spec.channel,
      listen: `${this.spec.host}:${this.port}`,
      peer: this.spec.peer ?? null,
      app: this.#app !== null || stream?.spliceId != null,
      out: out === null ? null : out.status(),
      in: inc === null ? null : inc.status(),
      held: this.#heldBytes,
      ...(stream === null ? {} : { stream: stream.spliceId === null ? "attaching" : "spliced" }),
    };
  }

  /** Stops listening and resets the application connection. */
  close(reason: string): void {
    this.#listener?.stop(true);
    this.#listener = null;
    this.#abortStream(reason);
    this.#out?.abort(reason);
    this.#closeIn(reason);
    this.#app?.terminate();
    clearTimeout(this.#retry);
    clearTimeout(this.#holdTimer);
  }

  /**
   * Ends the incoming session from this side (its reason reaches the sender). Detached first,
   * so that its end is not taken for the peer's (#onInEnded).
   */
  #closeIn(reason: string): void {
    const inc = this.#in;
    if (inc === null) return;
    this.#in = null;
    inc.close(reason);
  }

  /** No application took what the peer sent, within the bounds: say so, drop it, tell the sender. */
  #dropHeld(why: string): void {
    clearTimeout(this.#holdTimer);
    this.#holdTimer = undefined;
    if (this.#heldBytes > 0) this.#log.error("dropping held bytes; the sender is told", { reason: why, bytes: this.#heldBytes });
    else this.#log.warn("closing the peer's session; the sender is told", { reason: why });
    this.#held = [];
    this.#heldBytes = 0;
    this.#closeIn(why);
  }

  #onAppOpen(s: App): void {
    // A spliced connection is no longer `#app`, but it is the tunnel's one connection still.
    if (this.#app !== null || this.#stream !== null) {
      this.#log.warn("refused a second application connection: a tunnel carries one at a time", { peer: s.remoteAddress });
      s.end();
      return;
    }
    this.#app = s;
    this.#outbox = new Outbox(s);
    this.#appEnded = false;
    this.counters.connections++;
    s.setNoDelay(true);
    s.pause(); // read once our session is accepted
    clearTimeout(this.#holdTimer);
    this.#holdTimer = undefined;
    const held = this.#held;
    this.#held = [];
    this.#heldBytes = 0;
    for (const chunk of held) this.#write(chunk);
    if (this.#inFinished && this.#queued === 0) this.#app.shutdown();
    const inc = this.#in;
    if (inc !== null && inc.streamKey !== null) {
      this.#startStream("receiver", inc);
      return;
    }
    this.#openOut();
  }

  #openOut(): void {
    if (!this.#table.link.up) return; // onLinkUp opens it
    if (this.#stream !== null || (this.#in !== null && this.#in.streamKey !== null)) return; // the stream carries both ways
    const out = new Outgoing(this.#table, this.spec.channel, this.spec.peer, {
      accepted: () => {
        this.#openingSince = 0;
        if (this.#app === null || this.#out !== out) return;
        if (out.streamAccepted) {
          this.#startStream("sender", out);
          return;
        }
        const early = this.#early;
        this.#early = [];
        for (const chunk of early) {
          this.counters.txBytes += chunk.byteLength;
          out.send(chunk, undefined, undefined, true);
        }
        if (this.#appEnded) out.finish();
        else this.#readApp();
      },
      ended: (reason, rejected) => this.#onOutEnded(out, reason, rejected),
    });
    out.wantStream = this.#table.opensStreams;
    this.#out = out;
    if (this.#openingSince === 0) this.#openingSince = performance.now();
    out.open();
  }

  /** Reads the application again once the transport the session uses (relay or direct) can take more. */
  #readApp(): void {
    const out = this.#out;
    if (out !== null && out.busy) {
      out.whenWritable(() => this.#readApp());
      return;
    }
    this.#app?.resume();
  }

  #onAppData(s: App, chunk: Uint8Array): void {
    if (s !== this.#app) return;
    const out = this.#out;
    if (out === null || out.state !== "open" || this.#early.length > 0) {
      // Bun may deliver what it had already read after pause(): keep it for the session.
      this.#early.push(new Uint8Array(chunk));
      s.pause();
      return;
    }
    // The read is the session's from here (nothing else holds it): see Outgoing.send's `owned`.
    this.counters.txBytes += chunk.byteLength;
    out.send(chunk, undefined, undefined, true);
    if (out.busy) {
      s.pause();
      out.whenWritable(() => this.#readApp());
    }
  }

  #onAppEnd(s: App): void {
    if (s !== this.#app) return;
    this.#appEnded = true;
    const out = this.#out;
    // Still opening (or re-opening): the FIN goes after the early bytes, once accepted.
    if (out?.state === "open" && this.#early.length === 0) out.finish();
    this.#maybeDone();
  }

  /**
   * The application's connection closed. Without an error it is an orderly end of what it
   * sends: Bun reports a FIN on a socket whose write side is already shut as `close` without
   * `end` (measured, see core/pipe.ts), and an application that close()s has sent all it meant
   * to. With an error (a reset), its stream is broken. Either way it reads nothing more, so a
   * peer still sending to it is told.
   */
  #onAppClose(s: App, err?: Error): void {
    if (s !== this.#app) return;
    if (this.#stream !== null) {
      // Gone before its stream was paired: the stream has nothing to carry.
      this.#app = null;
      this.#abortStream(err === undefined ? "the application closed before its relay stream was paired" : "the application connection was reset");
      return;
    }
    this.#app = null;
    const out = this.#out;
    if (out !== null && out.state !== "closed") {
      if (err === undefined && out.state === "open" && this.#early.length === 0) out.finish();
      else out.abort(err === undefined ? "the application closed before its session was accepted" : "the application connection was reset");
    }
    this.#closeIn("the application connection closed");
    this.#resetConnection();
  }

  #onAppDrain(s: App): void {
    if (s !== this.#app) return;
    this.#flush();
  }

  #deliver(item: Delivery): void {
    this.counters.rxBytes += item.byteLength;
    if (this.#app === null) {
      if (this.#heldBytes + item.byteLength > HOLD_BYTES) {
        this.#dropHeld(`no application connected to ${this.spec.host}:${this.port} and ${HOLD_BYTES} bytes already held`);
        return;
      }
      if (item.parts === undefined) this.#held.push(item.pay);
      else this.#held.push(...item.parts);
      this.#heldBytes += item.byteLength;
      return;
    }
    // A payload that spanned a path's reads goes as those reads' views: never joined, never copied.
    if (item.parts === undefined) this.#write(item.pay);
    else for (const part of item.parts) this.#write(part);
  }

  #write(chunk: Uint8Array): void {
    const outbox = this.#outbox;
    if (outbox === null) return;
    outbox.write(chunk);
    if (outbox.queued > APP_HIGH_WATER && !this.#holdingLink) {
      this.#holdingLink = true;
      this.#table.hold(this);
    }
  }

  #flush(): void {
    const app = this.#app;
    const outbox = this.#outbox;
    if (app === null || outbox === null) return;
    outbox.flush();
    if (this.#holdingLink && outbox.queued < APP_HIGH_WATER / 4) {
      this.#holdingLink = false;
      this.#table.release(this);
    }
    if (outbox.queued === 0 && this.#inFinished) {
      app.shutdown();
      this.#maybeDone();
    }
  }

  /** Bytes queued for the application. */
  get #queued(): number {
    return this.#outbox?.queued ?? 0;
  }

  #onInEnded(session: Incoming, reason: string | null): void {
    if (this.#stream?.session === session) {
      // The sender's orderly Close: the stream finishes by itself.
      if (reason !== null) this.#abortStream(reason);
      return;
    }
    if (this.#in !== session) return;
    this.#in = null;
    if (reason !== null) {
      clearTimeout(this.#holdTimer);
      this.#holdTimer = undefined;
      this.#log.warn("the peer's side of the tunnel ended abnormally; resetting the application connection", { reason });
      this.#held = [];
      this.#heldBytes = 0;
      this.#fail();
      return;
    }
    this.#inFinished = true;
    if (this.#app !== null && this.#queued === 0) {
      this.#app.shutdown();
      this.#maybeDone();
    }
  }

  #onOutEnded(out: Outgoing, reason: string | null, rejected: boolean): void {
    if (this.#stream?.session === out) {
      if (reason !== null) this.#abortStream(reason);
      return;
    }
    if (this.#out !== out) return;
    if (reason === null) return; // finished by us: the application sent its FIN
    this.#out = null;
    const app = this.#app;
    if (app === null) return;
    const waited = performance.now() - this.#openingSince;
    if (rejected && this.#openingSince !== 0 && waited < HOLD_MS) {
      // The peer daemon (or its tunnel) is not there yet: try again, the application waits.
      this.#log.debug("session not accepted yet; retrying", { reason });
      this.#retry = setTimeout(() => {
        if (this.#app === app && this.#out === null && this.#stream === null) this.#openOut();
      }, OPEN_RETRY_MS);
      return;
    }
    this.#log.warn("the tunnel's session ended abnormally; resetting the application connection", { reason });
    this.#fail();
  }

  // --- the relay stream (relay-stream.ts) ---------------------------------------------------

  /** `session` carries the application connection on a relay stream: attach, then splice. */
  #startStream(role: "sender" | "receiver", session: Outgoing | Incoming): void {
    const endpoint = this.#table.streamEndpoint;
    const app = this.#app;
    if (role === "sender") this.#out = null;
    else this.#in = null;
    clearTimeout(this.#holdTimer);
    this.#holdTimer = undefined;
    const stream: Stream = { role, session, abort: new AbortController(), spliceId: null };
    this.#stream = stream;
    if (app === null || endpoint === null) {
      this.#streamFailed(stream, app === null ? "no application connection" : "the relay link cannot attach streams any more");
      return;
    }
    app.pause();
    const key = session instanceof Incoming ? (session.streamKey ?? undefined) : undefined;
    attachStream(endpoint, session.sid, key, stream.abort.signal)
      .then(
        (attached) => this.#splice(stream, attached),
        (err: unknown) => this.#streamFailed(stream, describeError(err)),
      )
      .catch((err: unknown) => this.#log.error("bug in the tunnel's relay stream", { error: describeError(err) }));
  }

  /** Paired: the application's socket and the stream's go to the splice engine, with what was read of each. */
  #splice(stream: Stream, attached: AttachedStream): void {
    const app = this.#app;
    if (this.#stream !== stream || app === null) {
      attached.sock.terminate();
      return;
    }
    // From here Bun's close of the application socket is the hand-over's, not the application's.
    this.#app = null;
    const early = this.#early.length === 0 ? undefined : joinBytes(this.#early, this.#early.reduce((n, c) => n + c.byteLength, 0));
    this.#early = [];
    const appFd = takeSocketFd(app);
    const streamFd = takeSocketFd(attached.sock);
    const rest = attached.rest();
    let splice: { id: number; done: Promise<PipeStats> } | null = null;
    if (appFd >= 0 && streamFd >= 0) {
      try {
        splice = this.#table.splicer().splice(appFd, streamFd, {
          abortive: true,
          ...(early === undefined ? {} : { toB: early }),
          ...(rest.byteLength === 0 ? {} : { toA: rest }),
          aEnded: this.#appEnded,
        });
      } catch (err) {
        this.#log.error("cannot splice the tunnel connection", { error: describeError(err) });
      }
    }
    if (splice === null) {
      // Whichever descriptor we hold is reset, as the stream would be.
      if (appFd >= 0) closeReset(appFd);
      if (streamFd >= 0) closeReset(streamFd);
      this.#stream = null;
      this.counters.resets++;
      this.#endSession(stream, "the tunnel connection could not be handed to the splice engine");
      this.#resetConnection();
      return;
    }
    stream.spliceId = splice.id;
    this.#table.streamConnections++;
    this.#log.debug("tunnel connection on a relay stream", { sid: stream.session.sid, role: stream.role });
    void splice.done
      .then((stats) => this.#onStreamDone(stream, stats))
      .catch((err: unknown) => this.#log.error("bug in the tunnel's relay stream", { error: describeError(err) }));
  }

  #onStreamDone(stream: Stream, stats: PipeStats): void {
    this.counters.txBytes += stats.bytesAtoB;
    this.counters.rxBytes += stats.bytesBtoA;
    if (this.#stream !== stream) return; // aborted: said and counted there
    this.#stream = null;
    if (stats.error === null) {
      // Both FINs went through: the sender's orderly Close ends the session.
      if (stream.session instanceof Outgoing) stream.session.finish();
    } else {
      this.counters.resets++;
      this.#log.warn("the tunnel's relay stream was reset", { error: stats.error.message });
      this.#endSession(stream, `the relay stream was reset: ${stats.error.message}`);
    }
    this.#resetConnection();
  }

  /** The stream could not be paired: its session ends with why, the application is reset. */
  #streamFailed(stream: Stream, why: string): void {
    if (this.#stream !== stream) return;
    this.#stream = null;
    this.#log.warn("no relay stream for the tunnel connection; resetting the application connection", { reason: why });
    this.#endSession(stream, why);
    this.counters.resets++;
    const app = this.#app;
    this.#app = null;
    app?.terminate();
    this.#resetConnection();
  }

  /** The stream's session ended abnormally (or the tunnel stops): the stream is reset everywhere. */
  #abortStream(reason: string): void {
    const stream = this.#stream;
    if (stream === null) return;
    this.#stream = null;
    stream.abort.abort(new Error(reason));
    this.#endSession(stream, reason);
    this.counters.resets++;
    this.#log.warn("the tunnel's relay stream ended abnormally; resetting the application connection", { reason });
    if (stream.spliceId !== null) this.#table.splicer().destroy(stream.spliceId, reason);
    const app = this.#app;
    this.#app = null;
    app?.terminate();
    this.#resetConnection();
  }

  /** Ends the stream's session with `reason` (a no-op once it is closed). */
  #endSession(stream: Stream, reason: string): void {
    if (stream.session instanceof Outgoing) stream.session.abort(reason);
    else stream.session.close(reason);
  }

  /** Reset the application connection: its stream cannot be completed faithfully. */
  #fail(): void {
    this.counters.resets++;
    const app = this.#app;
    this.#app = null;
    this.#out?.abort("the other direction of the tunnel failed");
    this.#closeIn("the other direction of the tunnel failed");
    app?.terminate();
    this.#resetConnection();
  }

  /** Both directions finished in order: close the application connection. */
  #maybeDone(): void {
    const out = this.#out;
    const outDone = this.#appEnded && (out === null || out.state === "closed");
    if (!outDone || !this.#inFinished || this.#queued > 0) return;
    const app = this.#app;
    this.#app = null;
    app?.end();
    this.#resetConnection();
  }

  #resetConnection(): void {
    clearTimeout(this.#retry);
    this.#out = null;
    this.#openingSince = 0;
    this.#appEnded = false;
    this.#inFinished = false;
    this.#early = [];
    this.#outbox = null;
    if (this.#holdingLink) {
      this.#holdingLink = false;
      this.#table.release(this);
    }
    if (this.#in !== null) this.#startHoldTimer();
  }

  #startHoldTimer(): void {
    clearTimeout(this.#holdTimer);
    this.#holdTimer = setTimeout(() => {
      this.#holdTimer = undefined;
      if (this.#app !== null) return;
      const why = `no application connected to ${this.spec.host}:${this.port} within ${HOLD_MS / 1000} s`;
      if (this.#in !== null) {
        this.#dropHeld(why);
      } else if (this.#inFinished) {
        // The sender finished before we could tell it: say so loudly, then free the tunnel.
        this.#log.error("dropping a finished stream nobody collected", { reason: why, bytes: this.#heldBytes });
        this.#held = [];
        this.#heldBytes = 0;
        this.#inFinished = false;
      }
    }, HOLD_MS);
  }
}
