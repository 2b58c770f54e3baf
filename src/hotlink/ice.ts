/**
 * The ICE rungs of a session (spec: "Transports and the upgrade ladder"; protocol.ts has the
 * Signal kinds): a WebRTC data channel between the two daemons, through host or
 * server-reflexive candidates (STUN: rung "ice") or a TURN server's relay candidate ("turn").
 *
 * - The receiver offers (`IceReceiver`): after its TLS offer failed, or when it makes none, it
 *   creates the peer connection and one negotiated data channel (id 0, ordered, reliable),
 *   sends sdp_offer and trickles ice_candidate; the sender answers (`IceDialer`) only under the
 *   rules of direct_offer (sessions.ts checks them), else webrtc_error.
 * - Either side gives up after `ICE_CONNECT_TIMEOUT_MS` without an open channel, or on
 *   webrtc_error, and says so with webrtc_error; the session stays on the relay.
 * - On the channel: the sender's `PathSender` (transport.ts) writes HLNK frames, packed into
 *   messages of up to `MAX_CHANNEL_MESSAGE` (the channel is ordered, so the receiver's
 *   `FrameIntake` reads one byte stream), and the receiver answers 8-byte acknowledgements
 *   (direct-wire.ts). A receiver held by its application (`pause()`) stops
 *   acknowledging, so the sender's retention bound stops the sender: the data channel has no
 *   read side to stop.
 * - The path fails when the channel closes or the connection goes to disconnected, failed or
 *   closed (a NAT that stops passing UDP: ICE consent checks lapse); the session then falls
 *   back to the relay and resends what was not acknowledged.
 * - Letting go: closing a connection closes the peer's channel under the peer's own sends,
 *   which can crash the peer (rtc.ts `close`). So a side closes an open channel at once only
 *   when the peer sends nothing more on it, and otherwise stops sending and keeps the
 *   connection until the peer closes its end (or the connection fails). The sender, done with
 *   its path (TLS took over, the relay did, the session ended), always waits so: its receiver
 *   acknowledges every delivery, whatever path brought it. The receiver closes at once when the
 *   sender has stopped writing on the channel: a frame came on TLS (the sender writes on one
 *   path at a time and never goes back down the ladder; it left the channel before its first
 *   TLS frame), or the session ended in order (the sender's Close follows its last frame).
 *   Otherwise (its application left, the relay connection was lost) the receiver waits up to
 *   `ICE_LINGER_MS`, time for the sender to hear of the end over the relay and stop.
 * - The WebRTC library is behind `RtcPeer` (rtc.ts), loaded on first use.
 */
import type { Logger } from "../core/log.ts";
import { describeError } from "../core/errors.ts";
import { encodeDirectAck } from "./direct-wire.ts";
import { type IceServer, rtcIceServers } from "./ice-servers.ts";
import { type DataMessage, InPlaceData } from "./protocol.ts";
import { type RtcCandidate, type RtcChannel, type RtcPeer, type SelectedPair, openRtcPeer } from "./rtc.ts";
import type { DaemonCounters } from "./telemetry.ts";
import { AckPacer, FrameIntake, type FramePipe, type PathReceiver, PathSender, type Rung } from "./transport.ts";

/** How long either side waits for the data channel to open before it gives up on ICE. */
export const ICE_CONNECT_TIMEOUT_MS = 10_000;
/**
 * How long a receiver done with an open channel keeps the connection for the sender to close
 * its end first, when the sender may still be writing (module header, "Letting go").
 */
export const ICE_LINGER_MS = 5_000;
/**
 * The largest message sent on the channel (libwebrtc's SDP offers a max-message-size of 256 KiB):
 * frames are packed into messages of this size (see `ChannelPipe`).
 */
export const MAX_CHANNEL_MESSAGE = 255 * 1024;
/**
 * Unacknowledged bytes past which a sender on a data channel waits. libwebrtc closes a channel
 * whose send queue passes 16 MiB, and what is queued is never more than what is unacknowledged.
 */
export const CHANNEL_RETAIN_BYTES = 8 * 1024 * 1024;
/** Unacknowledged bytes under which the path counts as idle: frames go at once, not batched. */
const CHANNEL_IDLE_BYTES = 64 * 1024;
/** First re-read of the selected candidate pair after the channel opened (then 2×, 4×, …). */
const PAIR_RECHECK_MS = 500;
/** Re-reads of the selected pair, at most (the last one ~30 s after the open). */
const PAIR_RECHECKS = 6;
/** Remote candidates held before the remote description is set, at most. */
const MAX_PENDING_CANDIDATES = 64;
/** ICE candidates a side takes from its peer in one session, at most. */
const MAX_REMOTE_CANDIDATES = 256;

/**
 * Peer connections a daemon holds at once, at most (each has a few libwebrtc threads and
 * sockets, released when the connection is collected): past it, a session stays on its rung.
 */
export const MAX_ICE_PATHS = 128;

/** How a daemon uses the ICE rungs (`--direct on|ice`, `--ice-servers`). */
export interface IceConfig {
  /** The ICE servers now: the daemon's own, else the relay server's from Welcome. */
  servers(): IceServer[];
  log: Logger;
  counters: DaemonCounters;
  /** Peer connections open now (kept by ice.ts; `MAX_ICE_PATHS` at most). */
  open: { count: number };
}

/** Why this daemon cannot start another ICE path now, or null. */
export function iceFull(config: IceConfig): string | null {
  return config.open.count >= MAX_ICE_PATHS ? `this daemon already has ${MAX_ICE_PATHS} ICE paths open` : null;
}

/** Sends a Signal of this session to the peer (over the relay). */
export type IceSignal = (knd: "sdp_offer" | "sdp_answer" | "ice_candidate" | "webrtc_error", fields: { tok?: string; err?: string }) => void;

/** An ICE Signal that came for the session. */
export interface IceSignalIn {
  knd: string;
  tok?: string | undefined;
  err?: string | undefined;
}

type Outcome = { ok: true; rung: Rung; via: string } | { ok: false; error: string };

/**
 * One side's peer connection while it connects: signalling in and out, candidates held until
 * the remote description is set, the timeout, and the outcome once.
 */
class IceAttempt {
  readonly peer: RtcPeer;
  readonly channel: RtcChannel;
  readonly #signal: IceSignal;
  readonly #log: Logger;
  readonly #sid: string;
  #pending: RtcCandidate[] | null = [];
  #remoteCandidates = 0;
  #settled = false;
  #timer: ReturnType<typeof setTimeout>;
  readonly #done = Promise.withResolvers<Outcome>();
  readonly #open: { count: number };
  #released = false;
  /** Called once if the connection fails after the channel opened. */
  onLost: (why: string) => void = () => {};
  /** Called when, after the channel opened, the connection moved to another candidate pair. */
  onMoved: (rung: Rung, via: string) => void = () => {};
  #pairTimer: ReturnType<typeof setTimeout> | undefined;
  #pairChecks = 0;
  #via = "";
  /** This side is done with the connection and waits for the peer to close its end (`close`). */
  #leaving = false;
  #lingerTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(sid: string, config: IceConfig, signal: IceSignal) {
    this.#sid = sid;
    this.#signal = signal;
    this.#log = config.log;
    this.#open = config.open;
    this.peer = openRtcPeer(rtcIceServers(config.servers()));
    this.#open.count++;
    this.channel = this.peer.channel();
    this.peer.onCandidate((c) => signal("ice_candidate", { tok: JSON.stringify(c) }));
    this.peer.onState((state) => {
      if (state !== "disconnected" && state !== "failed" && state !== "closed") return;
      // Letting go: no packet reaches the peer any more, so closing cannot close its channel under it.
      if (this.#leaving && state !== "disconnected") return this.#closeSoon();
      if (!this.#settled) this.fail(`the ICE connection is ${state}`, true);
      else this.onLost(`the ICE connection is ${state}`);
    });
    this.channel.onOpen(() => void this.#opened());
    this.channel.onClose(() => {
      if (this.#leaving) return this.#closeSoon(); // the peer let go of its end
      if (!this.#settled) this.fail("the data channel closed before it opened", true);
      else this.onLost("the data channel closed");
    });
    this.#timer = setTimeout(() => this.fail(`no data channel within ${ICE_CONNECT_TIMEOUT_MS / 1000} s (no candidate pair answered)`, true), ICE_CONNECT_TIMEOUT_MS);
  }

  get outcome(): Promise<Outcome> {
    return this.#done.promise;
  }

  /** The remote description is set: held candidates go in now. */
  remoteSet(): void {
    const held = this.#pending ?? [];
    this.#pending = null;
    for (const c of held) this.#add(c);
  }

  /** A Signal from the peer: a candidate, or its webrtc_error. */
  onSignal(message: IceSignalIn): void {
    if (message.knd === "webrtc_error") {
      this.fail(`the peer gave up on ICE: ${message.err ?? "no reason given"}`, false);
      return;
    }
    if (message.knd !== "ice_candidate" || this.#settled) return;
    if (++this.#remoteCandidates > MAX_REMOTE_CANDIDATES) return this.fail(`the peer sent more than ${MAX_REMOTE_CANDIDATES} candidates`, true);
    const c = parseCandidate(message.tok);
    if (c === null) return this.fail("the peer sent a malformed ICE candidate", true);
    if (this.#pending === null) this.#add(c);
    else if (this.#pending.length < MAX_PENDING_CANDIDATES) this.#pending.push(c);
  }

  /** Gives up (once): lets go of the connection and, when `tell`, sends webrtc_error to the peer. */
  fail(why: string, tell: boolean): void {
    if (this.#settled) return;
    this.#settled = true;
    clearTimeout(this.#timer);
    if (tell) this.#signal("webrtc_error", { err: why });
    this.#done.resolve({ ok: false, error: why });
    // The channel is open only if it failed while its pair's statistics were read: the peer
    // hears webrtc_error over the relay meanwhile.
    this.close({ lingerMs: ICE_LINGER_MS });
  }

  /**
   * This side is done with the connection (module header, "Letting go"). It is closed now when
   * the channel never opened or `peerDone` (the peer sends nothing more on it); otherwise
   * nothing more is sent and it is closed once the peer closed its end, the connection failed,
   * or `lingerMs` passed (without it: only the peer's close or a failure end the wait).
   */
  close(options: { peerDone?: boolean; lingerMs?: number } = {}): void {
    clearTimeout(this.#timer);
    clearTimeout(this.#pairTimer);
    this.#settled = true;
    this.#done.resolve({ ok: false, error: "the session ended" });
    if (this.#released) return;
    if (options.peerDone === true || !this.channel.open) return this.#closePeer();
    // Unbounded once any caller said so: the wait is as long as the longest asked for.
    const first = !this.#leaving;
    this.#leaving = true;
    if (options.lingerMs === undefined) {
      clearTimeout(this.#lingerTimer);
      this.#lingerTimer = undefined;
    } else if (first) {
      this.#lingerTimer = setTimeout(() => this.#closePeer(), options.lingerMs);
      this.#lingerTimer.unref?.();
    }
  }

  /** Closes on the next turn, out of the library's event dispatch. */
  #closeSoon(): void {
    setImmediate(() => this.#closePeer());
  }

  #closePeer(): void {
    clearTimeout(this.#pairTimer);
    clearTimeout(this.#lingerTimer);
    this.peer.close();
    if (this.#released) return;
    this.#released = true;
    this.#open.count--;
  }

  #add(c: RtcCandidate): void {
    this.peer.addCandidate(c).catch((err: unknown) => this.#log.debug("an ICE candidate was not usable", { sid: this.#sid, err }));
  }

  async #opened(): Promise<void> {
    if (this.#settled) return;
    let pair: SelectedPair | null = null;
    try {
      pair = await this.peer.selectedPair();
    } catch (err) {
      this.#log.debug("no statistics for the ICE pair", { sid: this.#sid, err });
    }
    if (this.#settled) return;
    this.#settled = true;
    clearTimeout(this.#timer);
    const { rung, via } = describePair(pair);
    this.#via = via;
    this.#done.resolve({ ok: true, rung, via });
    this.#watchPair();
  }

  /**
   * The pair a channel opens on is the first that answered, which may be a TURN relay while a
   * direct (server-reflexive) pair is still being checked; libwebrtc moves to the better one
   * later. So the pair is read again `PAIR_RECHECK_MS` after the open, each interval twice as
   * long, `PAIR_RECHECKS` times; a change moves the path's rung and `via` (ls, counters).
   */
  #watchPair(): void {
    if (this.#pairChecks >= PAIR_RECHECKS || this.#released || this.#leaving) return;
    this.#pairTimer = setTimeout(() => {
      this.#pairTimer = undefined;
      this.#pairChecks++;
      this.peer.selectedPair().then(
        (pair) => {
          if (this.#released || this.#leaving || pair === null) return;
          const { rung, via } = describePair(pair);
          if (via !== this.#via) {
            this.#via = via;
            this.onMoved(rung, via);
          }
          this.#watchPair();
        },
        () => this.#watchPair(),
      );
    }, PAIR_RECHECK_MS * 2 ** this.#pairChecks);
    this.#pairTimer.unref?.();
  }
}

/** The rung a candidate pair makes ("turn" when either end is a TURN relay candidate) and how `ls` shows it. */
function describePair(pair: SelectedPair | null): { rung: Rung; via: string } {
  if (pair === null) return { rung: "ice", via: "an ICE pair" };
  const relayed = pair.local.type === "relay" || pair.remote.type === "relay";
  const end = (e: SelectedPair["local"]): string => `${e.address}:${e.port} (${e.type})`;
  return { rung: relayed ? "turn" : "ice", via: `${end(pair.local)} -> ${end(pair.remote)}` };
}

/** A candidate from a Signal's JSON, or null when it is not one. */
export function parseCandidate(tok: string | undefined): RtcCandidate | null {
  if (tok === undefined) return null;
  try {
    const value: unknown = JSON.parse(tok);
    if (typeof value !== "object" || value === null) return null;
    const { candidate, sdpMid, sdpMLineIndex } = value as Record<string, unknown>;
    if (typeof candidate !== "string" || candidate.length > 1024) return null;
    if (sdpMid !== undefined && sdpMid !== null && (typeof sdpMid !== "string" || sdpMid.length > 64)) return null;
    if (sdpMLineIndex !== undefined && sdpMLineIndex !== null && (!Number.isInteger(sdpMLineIndex) || (sdpMLineIndex as number) < 0 || (sdpMLineIndex as number) > 64)) return null;
    return { candidate, sdpMid: (sdpMid as string | null | undefined) ?? null, sdpMLineIndex: (sdpMLineIndex as number | null | undefined) ?? null };
  } catch {
    return null;
  }
}

/** An SDP from a Signal's JSON ({type, sdp}), or null. */
export function parseDescription(tok: string | undefined, type: "offer" | "answer"): string | null {
  if (tok === undefined) return null;
  try {
    const value: unknown = JSON.parse(tok);
    if (typeof value !== "object" || value === null) return null;
    const d = value as Record<string, unknown>;
    return d.type === type && typeof d.sdp === "string" ? d.sdp : null;
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------- receiver side (offerer)

interface IceReceiverEvents {
  data(message: DataMessage): void;
  /** The highest seq delivered in order, for acknowledgements. */
  delivered(): number;
  /** The ICE attempt ended without a channel (the session stays on the relay). */
  failed(error: string): void;
}

/** The receiver's ICE path for one session. */
export class IceReceiver implements PathReceiver {
  readonly #attempt: IceAttempt;
  readonly #events: IceReceiverEvents;
  readonly #intake: FrameIntake;
  #rung: Rung = "ice";
  #connected = false;
  #closed = false;
  #paused = false;
  readonly #acks: AckPacer;

  private constructor(sid: string, pth: string, config: IceConfig, signal: IceSignal, events: IceReceiverEvents) {
    this.#events = events;
    this.#attempt = new IceAttempt(sid, config, signal);
    this.#intake = new FrameIntake(sid, pth, config.counters.ice, events.data);
    const channel = this.#attempt.channel;
    // A receiver held by its application (`pause()`) does not acknowledge: the sender's window stops it.
    this.#acks = new AckPacer({
      delivered: events.delivered,
      ready: () => this.#connected && !this.#paused,
      send: (delivered) => void channel.send(encodeDirectAck(delivered)),
    });
    // Connected once the channel is open: the sender may send before this side's outcome (which
    // waits for the pair's statistics) is known, and a frame dropped here would never come again.
    channel.onOpen(() => {
      if (!this.#closed) this.#connected = true;
    });
    channel.onMessage((bytes) => {
      if (this.#closed) return;
      this.#acks.arrived(bytes.byteLength);
      if (!this.#intake.push(bytes)) {
        config.log.warn("the data channel carried bytes that are not HLNK frames; closing it", { sid });
        this.close();
        return;
      }
      this.ack();
    });
    this.#attempt.onLost = () => {
      this.#connected = false;
    };
    this.#attempt.onMoved = (rung, via) => {
      this.#rung = rung;
      this.#intake.counters = rung === "turn" ? config.counters.turn : config.counters.ice;
      config.log.info("the session's ICE path moved to another candidate pair", { sid, rung, via });
    };
    void this.#attempt.outcome.then((outcome) => {
      if (this.#closed) return;
      if (!outcome.ok) return events.failed(outcome.error);
      this.#rung = outcome.rung;
      if (outcome.rung === "turn") this.#intake.counters = config.counters.turn;
      this.#connected = true;
      config.counters.ice.answers++;
      config.log.info("the session's ICE path is open", { sid, rung: outcome.rung, via: outcome.via });
    });
    void this.#offer(signal);
  }

  /** Starts the attempt: sdp_offer goes out once the local description is ready. */
  static start(sid: string, pth: string, config: IceConfig, signal: IceSignal, events: IceReceiverEvents): IceReceiver | null {
    try {
      const r = new IceReceiver(sid, pth, config, signal, events);
      config.counters.ice.offers++;
      return r;
    } catch (err) {
      config.log.warn("cannot start ICE; the session stays on the relay", { sid, err });
      return null;
    }
  }

  async #offer(signal: IceSignal): Promise<void> {
    try {
      const sdp = await this.#attempt.peer.createOffer();
      if (!this.#closed) signal("sdp_offer", { tok: JSON.stringify({ type: "offer", sdp }) });
    } catch (err) {
      this.#attempt.fail(`cannot create an SDP offer: ${describeError(err)}`, true);
    }
  }

  get rung(): Rung {
    return this.#rung;
  }

  get connected(): boolean {
    return this.#connected;
  }

  /** The sender's sdp_answer, ice_candidate or webrtc_error. */
  onSignal(message: IceSignalIn): void {
    if (message.knd !== "sdp_answer") return this.#attempt.onSignal(message);
    const sdp = parseDescription(message.tok, "answer");
    if (sdp === null) return this.#attempt.fail("the sender's SDP answer is malformed", true);
    this.#attempt.peer.acceptAnswer(sdp).then(
      () => this.#attempt.remoteSet(),
      (err: unknown) => this.#attempt.fail(`the sender's SDP answer was refused: ${describeError(err)}`, true),
    );
  }

  pause(): void {
    this.#paused = true;
  }

  resume(): void {
    this.#paused = false;
    this.ack();
  }

  /** Acknowledges what was delivered (transport.ts `AckPacer`: each send blocks the event loop, up to ms under load). */
  ack(): void {
    this.#acks.ack();
  }

  /**
   * Nothing more is acknowledged on the channel. `senderDone`: the sender writes nothing more on
   * it (a frame came on TLS, or the session ended in order), so the connection is closed now;
   * otherwise it waits up to `ICE_LINGER_MS` for the sender to close its end (module header).
   */
  close(senderDone = false): void {
    this.#acks.stop();
    this.#closed = true;
    this.#connected = false;
    this.#attempt.close(senderDone ? { peerDone: true } : { lingerMs: ICE_LINGER_MS });
  }
}

// ---------------------------------------------------------------- sender side (answerer)

/**
 * A data channel as a `FramePipe`: frames written in one turn of the event loop are packed, in
 * order, into messages of up to `MAX_CHANNEL_MESSAGE` bytes (a message may hold several frames,
 * or part of a large one: the channel is ordered, and the receiver's decoder reads a stream).
 * Every call into the binding blocks the event loop until libwebrtc's network thread takes it,
 * which under load is milliseconds (profiled: a tunnel's sending daemon spent 41 % of its time
 * reading `bufferedAmount` and 40 % in `send`), so the pipe never reads the channel's queue:
 * what the receiver has not acknowledged bounds it (`retainLimit`), and acknowledgements wake
 * the source.
 */
class ChannelPipe implements FramePipe {
  readonly #attempt: IceAttempt;
  /** The sender's unacknowledged bytes (set once the `PathSender` exists). */
  unacknowledged: () => number = () => 0;
  readonly retainLimit = CHANNEL_RETAIN_BYTES;
  /** Frames' pieces written this turn and not yet sent. */
  #pending: Uint8Array[] = [];
  #pendingBytes = 0;
  #flushQueued = false;
  #failed = false;

  constructor(attempt: IceAttempt) {
    this.#attempt = attempt;
  }

  writeFrame(header: Uint8Array, data: Uint8Array | InPlaceData): void {
    if (this.#failed) return; // retained by the PathSender: the fallback resends it
    const payload = data instanceof InPlaceData ? data.pay : data;
    this.#pending.push(header, payload);
    this.#pendingBytes += header.byteLength + payload.byteLength;
    if (this.#pendingBytes >= MAX_CHANNEL_MESSAGE) this.#flush();
    else if (!this.#flushQueued) {
      // An idle path sends at the end of this task (latency); a busy one after this turn's I/O,
      // so that the reads of one wake-up (a tunnel's 64 KiB chunks) share messages.
      this.#flushQueued = true;
      if (this.unacknowledged() < CHANNEL_IDLE_BYTES) queueMicrotask(() => this.#flush());
      else setImmediate(() => this.#flush());
    }
  }

  /** Only what waits for this turn's flush: the channel's own queue is bounded by `retainLimit`. */
  get queued(): number {
    return this.#pendingBytes;
  }

  /** Sends what is pending as messages of up to MAX_CHANNEL_MESSAGE bytes. */
  #flush(): void {
    this.#flushQueued = false;
    const pieces = this.#pending;
    let left = this.#pendingBytes;
    this.#pending = [];
    this.#pendingBytes = 0;
    if (left === 0 || this.#failed) return;
    const channel = this.#attempt.channel;
    let message = new Uint8Array(Math.min(left, MAX_CHANNEL_MESSAGE));
    let at = 0;
    for (const piece of pieces) {
      let from = 0;
      while (from < piece.byteLength) {
        const n = Math.min(piece.byteLength - from, message.byteLength - at);
        message.set(piece.subarray(from, from + n), at);
        at += n;
        from += n;
        left -= n;
        if (at === message.byteLength) {
          if (!channel.send(message)) return this.#lost();
          if (left > 0) message = new Uint8Array(Math.min(left, MAX_CHANNEL_MESSAGE));
          at = 0;
        }
      }
    }
  }

  /** The channel closed under a write: the frames stay retained, and the session falls back. */
  #lost(): void {
    this.#failed = true;
    this.#attempt.onLost("the data channel closed");
  }

  /**
   * Nothing more is written, not even what waits for this turn's flush: the `PathSender` still
   * retains it, and the session resends it on the path it moves to (or has ended; an orderly
   * end waits until everything was acknowledged). The receiver acknowledges on the channel
   * until it closes its end, so the connection is kept until then (module header, "Letting go").
   */
  close(): void {
    this.#failed = true;
    this.#pending = [];
    this.#pendingBytes = 0;
    this.#attempt.close();
  }

  cut(): void {
    this.#failed = true;
    this.#attempt.onLost("the path was cut");
    this.close();
  }
}

/** The sender's side while it answers an offer, then its path. */
export class IceDialer {
  readonly #sid: string;
  readonly #pth: string;
  readonly #config: IceConfig;
  readonly #attempt: IceAttempt;

  constructor(sid: string, pth: string, config: IceConfig, signal: IceSignal) {
    this.#sid = sid;
    this.#pth = pth;
    this.#config = config;
    this.#attempt = new IceAttempt(sid, config, signal);
    this.#signalOut = signal;
  }

  readonly #signalOut: IceSignal;

  /**
   * Answers the receiver's sdp_offer and waits for the channel. `closed` is called once if the
   * path fails after it opened; `wanted()` is asked once it opened.
   */
  async answer(offerTok: string | undefined, wanted: () => boolean, closed: (sender: PathSender) => void): Promise<{ ok: true; sender: PathSender; via: string } | { ok: false; error: string }> {
    const sdp = parseDescription(offerTok, "offer");
    if (sdp === null) {
      this.#attempt.fail("the receiver's SDP offer is malformed", true);
      return { ok: false, error: "the receiver's SDP offer is malformed" };
    }
    try {
      const answer = await this.#attempt.peer.answer(sdp);
      this.#attempt.remoteSet();
      this.#signalOut("sdp_answer", { tok: JSON.stringify({ type: "answer", sdp: answer }) });
    } catch (err) {
      this.#attempt.fail(`cannot answer the SDP offer: ${describeError(err)}`, true);
    }
    const outcome = await this.#attempt.outcome;
    if (!outcome.ok) return outcome;
    if (!wanted()) {
      this.#attempt.close(); // kept until the receiver closes its end (it may acknowledge TLS's deliveries on it)
      return { ok: false, error: "the session changed while ICE connected" };
    }
    const pipe = new ChannelPipe(this.#attempt);
    const counters = outcome.rung === "turn" ? this.#config.counters.turn : this.#config.counters.ice;
    const sender = new PathSender(outcome.rung, pipe, this.#pth, counters, this.#config.log);
    sender.via = outcome.via;
    pipe.unacknowledged = () => sender.unacknowledgedBytes;
    this.#attempt.onMoved = (rung, via) => {
      sender.moved(rung, via, rung === "turn" ? this.#config.counters.turn : this.#config.counters.ice);
      this.#config.log.info("the session's ICE path moved to another candidate pair", { sid: this.#sid, rung, via });
    };
    this.#attempt.channel.onMessage((bytes) => sender.onAck(bytes));
    let lost = false;
    this.#attempt.onLost = () => {
      if (lost) return;
      lost = true;
      closed(sender);
    };
    this.#config.log.info("the session's ICE path is open", { sid: this.#sid, rung: outcome.rung, via: outcome.via });
    return { ok: true, sender, via: outcome.via };
  }

  /** The receiver's ice_candidate or webrtc_error. */
  onSignal(message: IceSignalIn): void {
    this.#attempt.onSignal(message);
  }

  /** While it connects (an open path is closed through its `PathSender`). */
  close(): void {
    this.#attempt.close();
  }
}
