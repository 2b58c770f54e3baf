/**
 * Hotlink sessions as a client daemon sees them (protocol.ts has the wire rules).
 *
 * - `Outgoing`: this daemon is the sender. Open → (Accept | Reject) → Data… → Close. Data may
 *   be sent only once accepted; `send` numbers it (seq from 1). `finish()` is the orderly end
 *   (Close with `lst`), `abort(reason)` the other kind.
 * - `Incoming`: this daemon is a receiver. Data goes through a per-session reorder buffer
 *   (seed 003, lesson 2) to one sink — the one writer of this session (lesson: never two
 *   writers); an orderly Close ends the session only once every seq up to `lst` was delivered.
 * Both report their end exactly once through `ended(reason)`: null for an orderly end.
 *
 * Direct offers (direct.ts) carry addresses the receiver chose, so an `Outgoing` dials for
 * one only as protocol.ts allows: the first offer of a session it opened, while that session
 * is open with exactly one receiver, from that receiver, and only its first
 * `MAX_DIALED_CANDIDATES` addresses; every other offer is answered with an error.
 */
import { randomUUID } from "node:crypto";
import { describeError } from "../core/errors.ts";
import { FdSplicer } from "../core/fdsplice.ts";
import type { RelayLink } from "./link.ts";
import type { StreamEndpoint } from "./relay-stream.ts";
import { type DirectConfig, DirectReceiver, dialTlsPath } from "./direct.ts";
import { type IceConfig, IceDialer, IceReceiver, type IceSignal, type IceSignalIn, iceFull } from "./ice.ts";
// A session remembers at most MAX_RUNG_FAILURES (tls, ice, turn and one fallback), each cut to
// MAX_RUNG_FAILURE_LENGTH (the whole reason is logged), so `ls` of thousands stays small.
import {
  type DataMessage,
  InPlaceData,
  type IncomingStatus,
  MAX_RUNG_FAILURE_LENGTH,
  MAX_PATH_VIA_LENGTH,
  MAX_RUNG_FAILURES,
  MessageType,
  type OutgoingStatus,
  payloadLength,
  type RungFailure,
} from "./protocol.ts";
import { ReorderBuffer } from "./reorder.ts";
import { DaemonCounters } from "./telemetry.ts";
import type { PathData, PathReceiver, PathSender, Rung, Transport } from "./transport.ts";

/**
 * How long a receiver waits for the sender's answer to its TLS offer before it offers ICE too:
 * on a LAN the TLS dial answers well within it; a dial to a private address across NATs fails
 * fast (unreachable) or only after its timeout (dropped), and ICE goes ahead meanwhile.
 */
export const ICE_AFTER_TLS_MS = 50;
/** Frames a receiver holds while waiting for a gap (relay and direct paths can interleave). */
const REORDER_MAX_FRAMES = 65_536;
/** Bytes a receiver holds while waiting for a gap. */
const REORDER_MAX_BYTES = 64 * 1024 * 1024;

/**
 * The daemon's sessions by sid, its path settings and its counters: the daemon owns one, the
 * sessions register in it when they start and leave when they end (so dispatch is one lookup),
 * and the relay link under it knows none of this.
 */
export class SessionTable {
  readonly link: RelayLink;
  readonly outgoing = new Map<string, Outgoing>();
  readonly incoming = new Map<string, Incoming>();
  readonly counters = new DaemonCounters();
  /** The TLS direct rung (direct.ts): null when off. Set by the daemon. */
  direct: DirectConfig | null = null;
  /** The ICE rungs (ice.ts): null when off. Set by the daemon. */
  ice: IceConfig | null = null;
  /** Tunnels may ride relay streams (relay-stream.ts) when the relay offers them. Set by the daemon. */
  streams = true;
  readonly #holders = new Set<unknown>();
  #splicer: FdSplicer | null = null;

  constructor(link: RelayLink) {
    this.link = link;
  }

  /**
   * Stop reading from the server, and every incoming session's own path, until every `hold` is
   * released: a local application that does not keep up stops what feeds it on every path (a
   * path connected meanwhile starts paused: see `held`).
   */
  hold(key: unknown): void {
    const first = this.#holders.size === 0;
    this.#holders.add(key);
    this.link.pause();
    if (first) for (const s of this.incoming.values()) s.pauseDirect();
  }

  release(key: unknown): void {
    if (!this.#holders.delete(key)) return;
    if (this.#holders.size > 0) return;
    this.link.resume();
    for (const s of this.incoming.values()) s.resumeDirect();
  }

  /** True while someone holds the table: incoming data waits in the kernel. */
  get held(): boolean {
    return this.#holders.size > 0;
  }

  /** Where a tunnel's relay stream attaches now, or null when it cannot have one. */
  get streamEndpoint(): StreamEndpoint | null {
    return this.streams ? this.link.streamEndpoint : null;
  }

  /** A sending tunnel asks for a relay stream only when no direct rung is on here: those are what its user asked for. */
  get opensStreams(): boolean {
    return this.direct === null && this.ice === null && this.streamEndpoint !== null;
  }

  /** The splice engine of this daemon's relay streams, started on first use. */
  splicer(): FdSplicer {
    // One that failed is replaced: its splices ended with it, the next ones need a live engine.
    if (this.#splicer === null || !this.#splicer.alive) this.#splicer = new FdSplicer();
    return this.#splicer;
  }

  /** Tunnel connections that went on a relay stream, and the bytes of all of them so far (both ways). */
  streamCounters(): { connections: number; txBytes: number; rxBytes: number } {
    // Every splice here is an application ↔ stream one: a is the application.
    const t = this.#splicer?.totals(0) ?? { aToB: 0, bToA: 0 };
    return { connections: this.streamConnections, txBytes: t.aToB, rxBytes: t.bToA };
  }

  /** Counted by the tunnels as they splice. */
  streamConnections = 0;

  /** Stops the splice engine (its streams are reset). */
  async closeSplicer(): Promise<void> {
    const splicer = this.#splicer;
    this.#splicer = null;
    await splicer?.close();
  }
}

/** What an incoming session delivers, in seq order. */
export interface Delivery {
  readonly seq: number;
  /** The payload; with `parts`, their join, made when read (a sink that can write pieces takes `parts`). */
  readonly pay: Uint8Array;
  /** A payload that spanned a path's reads: views of them, in order (transport.ts `PathData`). */
  readonly parts: readonly Uint8Array[] | undefined;
  readonly pth: string | undefined;
  readonly etg: string | undefined;
  readonly byteLength: number;
  /** With `srcAt`: the payload is `src` from `srcAt` on (`byteLength` bytes), for a sink that copies it from there without reading `pay` (protocol.ts `InPlaceData`). */
  readonly src?: Uint8Array;
  readonly srcAt?: number;
}

interface OutgoingEvents {
  accepted(by: string | undefined): void;
  /** The session ended: null when this side finished it, else why (rejected, closed, link lost). */
  ended(reason: string | null, rejected: boolean): void;
}

/** A session this daemon opened. */
export class Outgoing {
  readonly sid = randomUUID().replaceAll("-", "");
  readonly pth: string;
  readonly to: string | undefined;
  state: "opening" | "open" | "closed" = "opening";
  #seq = 0;
  readonly #table: SessionTable;
  readonly #link: RelayLink;
  readonly #events: OutgoingEvents;
  /** Bytes and frames sent, for telemetry. */
  sentBytes = 0;
  /** Receivers that accepted: direct is used only while there is exactly one (direct.ts). */
  #receivers = 0;
  /** The user of the first receiver that accepted (the server's `frm`). */
  #acceptedBy: string | undefined;
  /** The session's own path while it carries the Data (a rung above the relay). */
  #path: PathSender | null = null;
  /** A direct offer came: a session dials for one offer at most. */
  #offered = false;
  /** An ICE offer came: a session answers one at most. */
  #iceOffered = false;
  /** The ICE answer while it connects. */
  #ice: IceDialer | null = null;
  /** finish() was called while direct frames were unacknowledged: Close waits for them. */
  #finishing = false;
  /** Why the rungs above the one in use did not carry the session, in the order tried. */
  readonly failed: RungFailure[] = [];
  /** Set before `open`: ask for a relay stream (Open `stm`). */
  wantStream = false;
  /** The receiver accepted a relay stream: the session carries no Data (relay-stream.ts). */
  streamAccepted = false;

  constructor(table: SessionTable, pth: string, to: string | undefined, events: OutgoingEvents) {
    this.#table = table;
    this.#link = table.link;
    this.pth = pth;
    this.to = to;
    this.#events = events;
  }

  get seq(): number {
    return this.#seq;
  }

  /** Sends the Open; false when the link is down (the session is then already ended). */
  open(): boolean {
    this.#table.outgoing.set(this.sid, this);
    const ok = this.#link.send({
      t: MessageType.Open,
      sid: this.sid,
      pth: this.pth,
      ...(this.to === undefined ? {} : { to: this.to }),
      ...(this.wantStream ? { stm: true } : {}),
    });
    if (!ok) this.#end("the relay server is not connected", false);
    return ok;
  }

  /** The transport that carries the session's Data now: its own path, else the relay. */
  get transport(): Transport {
    return this.#path ?? this.#link;
  }

  /** The rung of the ladder the session is on (transport.ts). */
  get rung(): Rung {
    return this.transport.rung;
  }

  /** What `ls` shows of the session (protocol.ts `OutgoingStatus`). */
  status(): OutgoingStatus {
    const via = this.#path?.via.slice(0, MAX_PATH_VIA_LENGTH);
    return { sid: this.sid, state: this.state, seq: this.#seq, bytes: this.sentBytes, rung: this.rung, ...(via ? { via } : {}), failed: [...this.failed] };
  }

  /** Records why a rung failed (bounded: a session tries each rung once, falls back at most once per rung). */
  #noteFailure(rung: Rung, error: string): void {
    if (this.failed.length < MAX_RUNG_FAILURES) this.failed.push({ rung, error: error.slice(0, MAX_RUNG_FAILURE_LENGTH) });
  }

  /** The source should stop for now: the transport in use holds too much unsent. */
  get busy(): boolean {
    return this.transport.busy;
  }

  /** Calls `fn` once the transport in use can take more. */
  whenWritable(fn: () => void): void {
    this.transport.whenWritable(fn);
  }

  /**
   * Sends one Data; only while open. The payload is not copied when it goes direct: pass a
   * buffer nobody reuses (Bun's read chunks and decoded frames are fresh). `owned`: the caller
   * keeps no reference to `pay` nor to its buffer (a tunnel's read), so a direct path may free
   * that buffer once it is acknowledged (transport.ts `PathSender.sendData`).
   */
  send(pay: Uint8Array, pth?: string, etg?: string, owned = false): boolean {
    if (this.state !== "open") return false;
    const started = performance.now();
    // One object of one shape, no spreads: this runs for every message (less garbage, fewer GCs).
    // A path keeps it until acknowledged, and resends it on the relay after a failure.
    const message: DataMessage = { t: MessageType.Data, sid: this.sid, seq: ++this.#seq, pay, pth, etg };
    return this.#sendMessage(message, pay.byteLength, owned, started);
  }

  /**
   * `send` of the payload `src[srcAt, srcAt + length)`, a range of a read nobody writes again
   * (an application's HLNK frame in its read): no view of it is made unless a direct path needs
   * one (protocol.ts `InPlaceData`).
   */
  sendInPlace(src: Uint8Array, srcAt: number, length: number, pth?: string, etg?: string): boolean {
    if (this.state !== "open") return false;
    const started = performance.now();
    return this.#sendMessage(new InPlaceData(this.sid, ++this.#seq, pth, etg, src, srcAt, length), length, false, started);
  }

  #sendMessage(message: DataMessage, length: number, owned: boolean, started: number): boolean {
    const path = this.#path;
    if (path !== null) path.sendData(message, owned);
    else if (!this.#sendRelay(message, length)) return false;
    this.sentBytes += length;
    this.#table.counters.send.add((performance.now() - started) * 1000);
    return true;
  }

  #sendRelay(message: DataMessage, length: number): boolean {
    if (!this.#link.sendData(message)) {
      this.#end("the relay server connection was lost", false);
      this.#forget();
      return false;
    }
    const c = this.#table.counters.relay;
    c.txPackets++;
    c.txBytes += length;
    return true;
  }

  /**
   * The orderly end: every Data sent so far, then Close with `lst`. With frames still
   * unacknowledged on a direct connection, Close waits for them (a fallback may have to send
   * them on the relay, which the server would refuse after a Close).
   */
  finish(): void {
    if (this.state === "closed") return;
    this.#end(null, false);
    this.#finishing = true;
    this.#closeWhenAcknowledged();
  }

  #closeWhenAcknowledged(): void {
    const path = this.#path;
    if (path !== null && path.unacknowledged().length > 0) {
      path.whenAcknowledged(() => this.#closeWhenAcknowledged());
      return;
    }
    this.#link.send({ t: MessageType.Close, sid: this.sid, lst: this.#seq });
    this.#forget();
    this.#dropPath();
  }

  /** Closes the session's own path, if any (an orderly close: nothing is owed on it), and an ICE attempt. */
  #dropPath(): void {
    this.#path?.close();
    this.#path = null;
    this.#ice?.close();
    this.#ice = null;
  }

  /** Sends a Signal of this session (ICE's kinds) to its receiver. */
  readonly #signal: IceSignal = (knd, fields) => {
    this.#link.send({ t: MessageType.Signal, sid: this.sid, knd, ...fields });
  };

  /**
   * The receiver offered an ICE path (sdp_offer): answered under the rules of a direct offer
   * (module header), else refused with webrtc_error.
   */
  onIceOffer(offer: IceSignalIn & { frm?: string | undefined }): void {
    const ice = this.#table.ice;
    const refuse = (err: string): void => this.#signal("webrtc_error", { err });
    if (!this.#offered && !this.#iceOffered) this.#noteFailure("tls", "the receiver offered no direct TLS connection");
    if (ice === null) {
      this.#noteFailure("ice", "ICE is off on this daemon");
      return refuse("ICE is off on the sending daemon");
    }
    if (this.#iceOffered) return refuse("a session takes one ICE offer; this one was not answered");
    this.#iceOffered = true;
    const problem = this.#offerProblem(offer.frm);
    if (problem !== null) return refuse(problem);
    if (this.#path !== null) return refuse(`the session is already on its ${this.#path.rung} path`);
    const full = iceFull(ice);
    if (full !== null) {
      this.#noteFailure("ice", full);
      return refuse(`the sending daemon is full: ${full}`);
    }
    const servers = ice.servers();
    let dialer: IceDialer;
    try {
      dialer = new IceDialer(this.sid, this.pth, ice, this.#signal);
    } catch (err) {
      ice.log.warn("cannot start ICE; the session stays on the relay", { sid: this.sid, err });
      this.#noteFailure("ice", describeError(err));
      return refuse("the sending daemon cannot start ICE");
    }
    this.#ice = dialer;
    const wanted = (): boolean => this.state === "open" && this.#receivers === 1 && this.#path === null && this.#ice === dialer;
    const closed = (sender: PathSender): void => {
      if (this.#path === sender) this.#fallBack("the ICE path failed");
    };
    void dialer.answer(offer.tok, wanted, closed).then((result) => {
      if (this.#ice === dialer) this.#ice = null;
      // Not failures: TLS connected meanwhile, or the session ended while ICE connected.
      if (!result.ok && (this.#path?.rung === "tls" || this.state === "closed")) return;
      if (!result.ok) {
        ice.counters.ice.failures++;
        ice.log.info("no ICE path; the session stays on the relay", { sid: this.sid, err: result.error });
        this.#noteFailure("ice", result.error);
        if (!servers.some((s) => s.kind === "turn")) this.#noteFailure("turn", "no TURN server is configured (--ice-servers turn:USER:PASS@HOST:PORT)");
        return;
      }
      if (this.#path !== null) {
        // TLS connected first: it carries the session, this path is not needed.
        result.sender.close();
        return;
      }
      this.#adopt(result.sender);
      ice.counters.ice.answers++;
    });
  }

  /** The receiver's ice_candidate or webrtc_error, for the ICE answer in progress. */
  onIceSignal(message: IceSignalIn): void {
    this.#ice?.onSignal(message);
  }

  abort(reason: string): void {
    if (this.state === "closed" && !this.#finishing) return;
    this.#finishing = false;
    this.#link.send({ t: MessageType.Close, sid: this.sid, rsn: reason });
    this.#dropPath();
    this.#end(reason, false);
    this.#forget();
  }

  /** From the server: */
  onAccept(frm: string | undefined, stm?: boolean): void {
    this.#receivers++;
    if (this.#receivers === 1) {
      this.#acceptedBy = frm;
      this.streamAccepted = this.wantStream && stm === true;
    }
    if (this.#receivers > 1 && this.#path !== null) this.#fallBack("a second receiver accepted the session");
    if (this.state !== "opening") return;
    this.state = "open";
    this.#events.accepted(frm);
  }

  /** Why an offer from `frm` is not taken (the module header's rules for any rung), or null. */
  #offerProblem(frm: string | undefined): string | null {
    if (this.state !== "open" || this.#receivers !== 1) return "the session has more than one receiver, or is not open";
    if (frm !== undefined && frm !== this.#acceptedBy) return `the offer came from ${frm}, not from the receiver that accepted the session`;
    return null;
  }

  /** A receiver offered a direct path (Signal direct_offer); see the module header for when it is dialled. */
  onDirectOffer(offer: { adr: string[]; tok: string; fpr: string; frm?: string | undefined }): void {
    const link = this.#link;
    const config = this.#table.direct;
    const answer = (err?: string): void => {
      link.send({ t: MessageType.Signal, sid: this.sid, knd: "direct_answer", ...(err === undefined ? {} : { err }) });
    };
    if (config === null) {
      this.#noteFailure("tls", "direct paths are off on this daemon");
      return answer("direct paths are off on the sending daemon");
    }
    if (this.#offered) return answer("a session takes one direct offer; this one was not dialled");
    this.#offered = true;
    const problem = this.#offerProblem(offer.frm);
    if (problem !== null) return answer(problem);
    // Dialled even while the session is on ICE (the receiver offers ICE too when TLS is slow to
    // answer): TLS, the better rung, takes over when it connects.
    const wanted = (): boolean => this.state === "open" && this.#receivers === 1 && this.#path?.rung !== "tls";
    const closed = (sender: PathSender): void => {
      if (this.#path === sender) this.#fallBack("the direct connection closed");
    };
    void dialTlsPath(this.sid, this.pth, offer, config, wanted, closed).then((result) => {
      if (!result.ok) {
        config.counters.direct.failures++;
        config.log.info("no direct path; the session stays on the relay", { sid: this.sid, err: result.error });
        this.#noteFailure("tls", result.error);
        return answer(result.error);
      }
      this.#adopt(result.sender);
      config.counters.direct.answers++;
      config.log.info("session upgraded to a direct connection", { sid: this.sid, via: result.via });
      answer();
    });
  }

  /**
   * Cuts the direct connection, as a network failure would: the session falls back to the
   * relay, resending what was not acknowledged. False when the session is not direct.
   */
  cutDirect(): boolean {
    const path = this.#path;
    if (path === null) return false;
    path.cut();
    return true;
  }

  /**
   * `next` carries the session's Data from now on. When another path did until now (ICE, and TLS
   * connected later), what that one did not acknowledge goes again on `next`, with the same seqs
   * (the receiver drops what arrives twice), and it is closed: it writes nothing more, and its
   * connection goes once the receiver closed its end, at the first frame `next` brings (ice.ts).
   */
  #adopt(next: PathSender): void {
    const prev = this.#path;
    this.#path = next;
    if (prev === null) return;
    prev.failed = true;
    for (const f of prev.unacknowledged()) next.sendData(f);
    prev.close();
    (this.#table.direct ?? this.#table.ice)?.log.info("the session moved to a better path", { sid: this.sid, from: prev.rung, to: next.rung });
  }

  /** The session's own path failed: resend what it did not acknowledge on the relay, stay there. */
  #fallBack(why: string): void {
    const path = this.#path;
    if (path === null) return;
    this.#path = null;
    path.failed = true;
    this.#noteFailure(path.rung, why);
    const c = this.#table.counters;
    if (path.rung === "tls") c.direct.fallbacks++;
    else c.ice.fallbacks++;
    (this.#table.direct ?? this.#table.ice)?.log.info("back to the relay", { sid: this.sid, from: path.rung, reason: why });
    for (const f of path.unacknowledged()) {
      if (!this.#sendRelay(f, payloadLength(f))) break;
    }
    path.close();
    if (this.#finishing) this.#closeWhenAcknowledged();
  }

  #forget(): void {
    if (this.#table.outgoing.get(this.sid) === this) this.#table.outgoing.delete(this.sid);
  }

  onReject(reason: string): void {
    this.#end(reason, true);
    this.#forget();
  }

  onClose(reason: string | undefined): void {
    this.#finishing = false;
    this.#dropPath();
    this.#end(reason ?? "closed by the receiver", false);
    this.#forget();
  }

  /** The link went down: the server has dropped the session. */
  onLinkDown(reason: string): void {
    this.#finishing = false;
    this.#dropPath();
    this.#end(`the relay server connection was lost (${reason})`, false);
    this.#forget();
  }

  #end(reason: string | null, rejected: boolean): void {
    if (this.state === "closed") return;
    this.state = "closed";
    this.#events.ended(reason, rejected);
  }
}

interface IncomingEvents {
  deliver(item: Delivery): void;
  ended(reason: string | null): void;
}

/** A session another daemon opened towards this one. */
export class Incoming {
  readonly sid: string;
  readonly pth: string;
  readonly frm: string | undefined;
  state: "open" | "closed" = "open";
  readonly #table: SessionTable;
  readonly #link: RelayLink;
  readonly #events: IncomingEvents;
  readonly #reorder = new ReorderBuffer<Delivery>({ maxFrames: REORDER_MAX_FRAMES, maxBytes: REORDER_MAX_BYTES });
  /** Set by an orderly Close: the session ends once every seq up to it was delivered. */
  #last: number | null = null;
  /** The session's own paths into this daemon: the TLS listener, and the ICE offer. */
  #tls: DirectReceiver | null = null;
  #ice: IceReceiver | null = null;
  /** ICE is offered once per session: after the TLS answer failed, or `ICE_AFTER_TLS_MS` without one. */
  #iceOffered = false;
  #iceTimer: ReturnType<typeof setTimeout> | undefined;
  /** Set before `accept`: take the session on a relay stream with this attach key (relay-stream.ts). */
  streamKey: string | null = null;

  constructor(table: SessionTable, sid: string, pth: string, frm: string | undefined, events: IncomingEvents) {
    this.#table = table;
    this.#link = table.link;
    this.sid = sid;
    this.pth = pth;
    this.frm = frm;
    this.#events = events;
    table.incoming.set(sid, this);
  }

  get delivered(): number {
    return this.#reorder.delivered;
  }

  get deliveredBytes(): number {
    return this.#reorder.deliveredBytes;
  }

  get duplicates(): number {
    return this.#reorder.duplicates;
  }

  /** The rung the session's Data comes on now (the better one while two are connected). */
  get rung(): Rung {
    if (this.#tls?.connected === true) return "tls";
    if (this.#ice?.connected === true) return this.#ice.rung;
    return "relay";
  }

  /** What `ls` shows of the session (protocol.ts `IncomingStatus`). */
  status(): IncomingStatus {
    return { sid: this.sid, delivered: this.delivered, bytes: this.deliveredBytes, duplicates: this.duplicates, rung: this.rung };
  }

  #paths(): PathReceiver[] {
    const paths: PathReceiver[] = [];
    if (this.#tls !== null) paths.push(this.#tls);
    if (this.#ice !== null) paths.push(this.#ice);
    return paths;
  }

  /**
   * Accepts, and offers the rungs this daemon has on: TLS (direct.ts) first; ICE (ice.ts) once
   * the sender's TLS answer is an error, or after `ICE_AFTER_TLS_MS` without one — a dial to an
   * address that drops packets takes seconds to fail, and ICE should not wait for it. If TLS
   * connects later, the sender moves there.
   */
  accept(): boolean {
    const link = this.#link;
    const stream = this.streamKey === null ? {} : { stm: true, stk: this.streamKey };
    if (!link.send({ t: MessageType.Accept, sid: this.sid, ...stream })) return false;
    // A relay stream carries no Data: no rung above it to offer.
    if (this.streamKey !== null) return true;
    const config = this.#table.direct;
    if (config !== null) {
      const tls = DirectReceiver.start(this.sid, this.pth, config, {
        data: (m) => {
          this.#dropIceForTls();
          this.onData(m, true);
        },
        delivered: () => this.#reorder.nextSeq - 1,
      });
      if (tls !== null) {
        this.#tls = tls;
        if (this.#table.held) tls.pause();
        config.counters.direct.offers++;
        link.send({ t: MessageType.Signal, sid: this.sid, knd: "direct_offer", ...tls.offer });
        if (this.#table.ice !== null) this.#iceTimer = setTimeout(() => this.#offerIce(), ICE_AFTER_TLS_MS);
        return true;
      }
    }
    this.#offerIce();
    return true;
  }

  /** The next rung after TLS: offer an ICE path (once), when ICE is on here. */
  #offerIce(): void {
    clearTimeout(this.#iceTimer);
    const ice = this.#table.ice;
    if (ice === null || this.state === "closed" || this.#iceOffered || this.#tls?.connected === true) return;
    this.#iceOffered = true;
    const full = iceFull(ice);
    if (full !== null) {
      ice.log.info("no ICE path offered; the session stays on the relay", { sid: this.sid, reason: full });
      return;
    }
    const signal: IceSignal = (knd, fields) => {
      this.#link.send({ t: MessageType.Signal, sid: this.sid, knd, ...fields });
    };
    const receiver: IceReceiver | null = IceReceiver.start(this.sid, this.pth, ice, signal, {
      data: (m) => this.onData(m, true),
      delivered: () => this.#reorder.nextSeq - 1,
      failed: (error) => {
        // Not a failure when TLS connected meanwhile (the sender then refuses or drops ICE).
        if (this.#tls?.connected !== true) {
          ice.counters.ice.failures++;
          ice.log.info("no ICE path; the session stays on the relay", { sid: this.sid, err: error });
        }
        if (this.#ice === receiver) {
          this.#ice = null;
          receiver?.close();
        }
      },
    });
    if (receiver === null) return;
    this.#ice = receiver;
    if (this.#table.held) receiver.pause();
  }

  /** The sender's sdp_answer, ice_candidate or webrtc_error, for the ICE offer in progress. */
  onIceSignal(message: IceSignalIn): void {
    this.#ice?.onSignal(message);
  }

  /**
   * A frame came on TLS: the sender left its ICE path for good before writing it (it writes on
   * one path at a time, and TLS is the top rung), and keeps that connection until this side
   * closes its end (ice.ts, "Letting go"). Closed here before this frame is acknowledged, so
   * nothing more goes on the channel.
   */
  #dropIceForTls(): void {
    const ice = this.#ice;
    if (ice === null) return;
    this.#ice = null;
    ice.close(true);
  }

  /** Stop reading the session's own paths (the table is held: see SessionTable.hold). */
  pauseDirect(): void {
    for (const p of this.#paths()) p.pause();
  }

  resumeDirect(): void {
    for (const p of this.#paths()) p.resume();
  }

  /** The sender's answer to our TLS offer: on an error, the next rung (ICE) or the relay. */
  onDirectAnswer(err: string | undefined): void {
    const tls = this.#tls;
    if (tls === null) return;
    if (err === undefined) {
      // TLS carries it: no ICE, and an attempt still connecting is dropped.
      clearTimeout(this.#iceTimer);
      if (this.#ice !== null && !this.#ice.connected) {
        this.#ice.close();
        this.#ice = null;
      }
      return;
    }
    this.#table.direct?.log.info("the sender could not use the direct path", { sid: this.sid, err, next: this.#table.ice === null ? "relay" : "ice" });
    if (tls.connected) return;
    tls.close();
    this.#tls = null;
    this.#offerIce();
  }

  /** Data from the relay, or (`direct`) from the direct connection (counted there). */
  onData(message: PathData, direct = false): void {
    if (this.state === "closed") return;
    const c = this.#table.counters;
    const parts = message.parts;
    // Not `pay` of a payload in parts or in place: reading it would join them, or make a view.
    const length = message.length ?? message.pay.byteLength;
    if (!direct) {
      c.relay.rxPackets++;
      c.relay.rxBytes += length;
    }
    const item: Delivery =
      message instanceof InPlaceData
        ? message
        : parts === undefined
          ? { seq: message.seq, pay: message.pay, parts, pth: message.pth, etg: message.etg, byteLength: length }
          : { seq: message.seq, get pay() { return message.pay; }, parts, pth: message.pth, etg: message.etg, byteLength: length };
    // In order with nothing held (nearly always): `takeNext`, delivered now, no array.
    let ready: Delivery[] | null = null;
    try {
      if (!this.#reorder.takeNext(message.seq, item.byteLength)) ready = this.#reorder.push(message.seq, item);
    } catch (err) {
      this.close(describeError(err));
      return;
    }
    // The sink may end the session (e.g. over its hold bound): nothing more after that.
    if (ready === null) {
      this.#deliverOne(item, c);
      if (this.#ended()) return;
    } else {
      for (const r of ready) {
        this.#deliverOne(r, c);
        if (this.#ended()) return;
      }
    }
    // Every path hears what was delivered: a frame from one can complete a gap another is waiting on.
    if (ready === null || ready.length > 0) {
      this.#tls?.ack();
      this.#ice?.ack();
    }
    this.#checkLast();
  }

  #deliverOne(item: Delivery, c: DaemonCounters): void {
    const started = performance.now();
    this.#events.deliver(item);
    c.write.add((performance.now() - started) * 1000);
  }

  /** From the server (the sender's Close, or the server's). */
  onClose(reason: string | undefined, last: number | undefined): void {
    if (this.state === "closed") return;
    if (reason !== undefined) {
      this.#end(reason);
      return;
    }
    this.#last = last ?? this.#reorder.nextSeq - 1;
    this.#checkLast();
  }

  onLinkDown(reason: string): void {
    this.#end(`the relay server connection was lost (${reason})`);
  }

  /** This receiver leaves (its reason reaches the sender). */
  close(reason: string): void {
    if (this.state === "closed") return;
    this.#link.send({ t: MessageType.Close, sid: this.sid, rsn: reason });
    this.#end(reason);
  }

  #ended(): boolean {
    return this.state === "closed";
  }

  #checkLast(): void {
    if (this.#last !== null && this.#reorder.nextSeq > this.#last) this.#end(null);
  }

  #end(reason: string | null): void {
    if (this.state === "closed") return;
    this.state = "closed";
    clearTimeout(this.#iceTimer);
    this.#tls?.close();
    // An orderly end (the sender's Close came after its last frame): it writes nothing more on
    // the channel, which is closed now; else it is kept a while for the sender to stop (ice.ts).
    this.#ice?.close(reason === null);
    this.#tls = null;
    this.#ice = null;
    if (this.#table.incoming.get(this.sid) === this) this.#table.incoming.delete(this.sid);
    this.#events.ended(reason);
  }
}
