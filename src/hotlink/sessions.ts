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
import type { RelayLink } from "./link.ts";
import { DirectReceiver, DirectSender, dialDirect } from "./direct.ts";
import { encodeDirectHello } from "./direct-wire.ts";
import { type DataMessage, MessageType } from "./protocol.ts";
import { ReorderBuffer } from "./reorder.ts";

/** Frames a receiver holds while waiting for a gap (relay and direct paths can interleave). */
const REORDER_MAX_FRAMES = 65_536;
/** Bytes a receiver holds while waiting for a gap. */
const REORDER_MAX_BYTES = 64 * 1024 * 1024;

/** What an incoming session delivers, in seq order. */
export interface Delivery {
  readonly seq: number;
  readonly pay: Uint8Array;
  readonly pth: string | undefined;
  readonly etg: string | undefined;
  readonly byteLength: number;
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
  readonly #link: RelayLink;
  readonly #events: OutgoingEvents;
  /** Bytes and frames sent, for telemetry. */
  sentBytes = 0;
  /** Receivers that accepted: direct is used only while there is exactly one (direct.ts). */
  #receivers = 0;
  /** The user of the first receiver that accepted (the server's `frm`). */
  #acceptedBy: string | undefined;
  #direct: DirectSender | null = null;
  /** A direct offer came: a session dials for one offer at most. */
  #offered = false;
  /** finish() was called while direct frames were unacknowledged: Close waits for them. */
  #finishing = false;

  constructor(link: RelayLink, pth: string, to: string | undefined, events: OutgoingEvents) {
    this.#link = link;
    this.pth = pth;
    this.to = to;
    this.#events = events;
  }

  get seq(): number {
    return this.#seq;
  }

  /** Sends the Open; false when the link is down (the session is then already ended). */
  open(): boolean {
    this.#link.outgoing.set(this.sid, this);
    const ok = this.#link.send({ t: MessageType.Open, sid: this.sid, pth: this.pth, ...(this.to === undefined ? {} : { to: this.to }) });
    if (!ok) this.#end("the relay server is not connected", false);
    return ok;
  }

  /** "direct" once the session's Data goes on a direct connection, else "relay". */
  get path(): "relay" | "direct" {
    return this.#direct === null ? "relay" : "direct";
  }

  /** The source should stop for now: the transport in use holds too much unsent. */
  get busy(): boolean {
    return this.#direct !== null ? this.#direct.busy : this.#link.busy;
  }

  /** Calls `fn` once the transport in use can take more. */
  whenWritable(fn: () => void): void {
    if (this.#direct !== null) this.#direct.whenWritable(fn);
    else this.#link.whenWritable(fn);
  }

  /**
   * Sends one Data; only while open. The payload is not copied when it goes direct: pass a
   * buffer nobody reuses (Bun's read chunks and decoded frames are fresh).
   */
  send(pay: Uint8Array, pth?: string, etg?: string): boolean {
    if (this.state !== "open") return false;
    const seq = ++this.#seq;
    const started = performance.now();
    const direct = this.#direct;
    if (direct !== null) {
      direct.send(seq, pay, pth, etg);
      this.sentBytes += pay.byteLength;
      this.#link.counters.send.add((performance.now() - started) * 1000);
      return true;
    }
    return this.#sendRelay(seq, pay, pth, etg, started);
  }

  #sendRelay(seq: number, pay: Uint8Array, pth: string | undefined, etg: string | undefined, started: number): boolean {
    // One object of one shape, no spreads: this runs for every message (less garbage, fewer GCs).
    const message: DataMessage = { t: MessageType.Data, sid: this.sid, seq, pay, pth, etg };
    const ok = this.#link.sendData(message);
    if (!ok) {
      this.#end("the relay server connection was lost", false);
      this.#forget();
      return false;
    }
    this.sentBytes += pay.byteLength;
    const c = this.#link.counters;
    c.send.add((performance.now() - started) * 1000);
    c.relay.txPackets++;
    c.relay.txBytes += pay.byteLength;
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
    const direct = this.#direct;
    if (direct !== null && direct.unacknowledged().length > 0) {
      direct.whenAcknowledged(() => this.#closeWhenAcknowledged());
      return;
    }
    this.#link.send({ t: MessageType.Close, sid: this.sid, lst: this.#seq });
    this.#forget();
    this.#direct?.close();
    this.#direct = null;
  }

  abort(reason: string): void {
    if (this.state === "closed" && !this.#finishing) return;
    this.#finishing = false;
    this.#link.send({ t: MessageType.Close, sid: this.sid, rsn: reason });
    this.#direct?.close();
    this.#direct = null;
    this.#end(reason, false);
    this.#forget();
  }

  /** From the server: */
  onAccept(frm: string | undefined): void {
    this.#receivers++;
    if (this.#receivers === 1) this.#acceptedBy = frm;
    if (this.#receivers > 1 && this.#direct !== null) this.#fallBack("a second receiver accepted the session");
    if (this.state !== "opening") return;
    this.state = "open";
    this.#events.accepted(frm);
  }

  /** A receiver offered a direct path (Signal direct_offer); see the module header for when it is dialled. */
  onDirectOffer(offer: { adr: string[]; tok: string; fpr: string; frm?: string | undefined }): void {
    const link = this.#link;
    const config = link.direct;
    const answer = (err?: string): void => {
      link.send({ t: MessageType.Signal, sid: this.sid, knd: "direct_answer", ...(err === undefined ? {} : { err }) });
    };
    if (config === null) return answer("direct paths are off on the sending daemon");
    if (this.#offered) return answer("a session takes one direct offer; this one was not dialled");
    this.#offered = true;
    if (this.state !== "open" || this.#receivers !== 1) return answer("the session has more than one receiver, or is not open");
    if (offer.frm !== undefined && offer.frm !== this.#acceptedBy) {
      return answer(`the offer came from ${offer.frm}, not from the receiver that accepted the session`);
    }
    const wanted = (): boolean => this.state === "open" && this.#receivers === 1;
    let sender: DirectSender | null = null;
    void dialDirect(
      this.sid,
      offer,
      {
        data: (ack) => sender?.onAck(ack),
        drain: () => sender?.onDrain(),
        close: () => {
          if (sender !== null && this.#direct === sender) this.#fallBack("the direct connection closed");
        },
      },
      wanted,
    ).then((result) => {
      if (!result.ok) {
        config.counters.direct.failures++;
        config.log.info("no direct path; the session stays on the relay", { sid: this.sid, err: result.error });
        return answer(result.error);
      }
      if (!wanted()) {
        result.socket.end();
        return answer("the session changed while dialling");
      }
      sender = new DirectSender(result.socket, this.pth, config, encodeDirectHello(this.sid, offer.tok));
      this.#direct = sender;
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
    const direct = this.#direct;
    if (direct === null) return false;
    direct.cut();
    return true;
  }

  /** The direct connection failed: resend what it did not acknowledge on the relay, stay there. */
  #fallBack(why: string): void {
    const direct = this.#direct;
    if (direct === null) return;
    this.#direct = null;
    direct.failed = true;
    const config = this.#link.direct;
    if (config !== null) {
      config.counters.direct.fallbacks++;
      config.log.info("back to the relay", { sid: this.sid, reason: why });
    }
    for (const f of direct.unacknowledged()) {
      if (!this.#sendRelay(f.seq, f.pay, f.pth, f.etg, performance.now())) break;
    }
    direct.close();
    if (this.#finishing) this.#closeWhenAcknowledged();
  }

  #forget(): void {
    if (this.#link.outgoing.get(this.sid) === this) this.#link.outgoing.delete(this.sid);
  }

  onReject(reason: string): void {
    this.#end(reason, true);
    this.#forget();
  }

  onClose(reason: string | undefined): void {
    this.#finishing = false;
    this.#direct?.close();
    this.#direct = null;
    this.#end(reason ?? "closed by the receiver", false);
    this.#forget();
  }

  /** The link went down: the server has dropped the session. */
  onLinkDown(reason: string): void {
    this.#finishing = false;
    this.#direct?.close();
    this.#direct = null;
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
  readonly #link: RelayLink;
  readonly #events: IncomingEvents;
  readonly #reorder = new ReorderBuffer<Delivery>({ maxFrames: REORDER_MAX_FRAMES, maxBytes: REORDER_MAX_BYTES });
  /** Set by an orderly Close: the session ends once every seq up to it was delivered. */
  #last: number | null = null;
  #direct: DirectReceiver | null = null;

  constructor(link: RelayLink, sid: string, pth: string, frm: string | undefined, events: IncomingEvents) {
    this.#link = link;
    this.sid = sid;
    this.pth = pth;
    this.frm = frm;
    this.#events = events;
    link.incoming.set(sid, this);
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

  /** Accepts, and offers a direct path when the daemon has them on (direct.ts). */
  accept(): boolean {
    const link = this.#link;
    if (!link.send({ t: MessageType.Accept, sid: this.sid })) return false;
    const config = link.direct;
    if (config !== null) {
      const direct = DirectReceiver.start(this.sid, this.pth, config, {
        data: (m) => this.onData(m, true),
        delivered: () => this.#reorder.nextSeq - 1,
      });
      if (direct !== null) {
        this.#direct = direct;
        if (link.held) direct.pause();
        config.counters.direct.offers++;
        link.send({ t: MessageType.Signal, sid: this.sid, knd: "direct_offer", ...direct.offer });
      }
    }
    return true;
  }

  /** Stop reading the direct connection (the link is held: see RelayLink.hold). */
  pauseDirect(): void {
    this.#direct?.pause();
  }

  resumeDirect(): void {
    this.#direct?.resume();
  }

  /** The sender's answer to our offer: on an error it stays on the relay. */
  onDirectAnswer(err: string | undefined): void {
    if (err === undefined || this.#direct === null) return;
    this.#link.direct?.log.info("the sender could not use the direct path; staying on the relay", { sid: this.sid, err });
    if (!this.#direct.connected) {
      this.#direct.close();
      this.#direct = null;
    }
  }

  /** Data from the relay, or (`direct`) from the direct connection (counted there). */
  onData(message: DataMessage, direct = false): void {
    if (this.state === "closed") return;
    const c = this.#link.counters;
    if (!direct) {
      c.relay.rxPackets++;
      c.relay.rxBytes += message.pay.byteLength;
    }
    const item: Delivery = { seq: message.seq, pay: message.pay, pth: message.pth, etg: message.etg, byteLength: message.pay.byteLength };
    let ready: Delivery[];
    try {
      ready = this.#reorder.push(message.seq, item);
    } catch (err) {
      this.close(describeError(err));
      return;
    }
    for (const r of ready) {
      const started = performance.now();
      this.#events.deliver(r);
      c.write.add((performance.now() - started) * 1000);
      if (this.#ended()) return; // the sink may end the session (e.g. over its hold bound)
    }
    if (!direct && ready.length > 0) this.#direct?.ack();
    this.#checkLast();
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
    this.#direct?.close();
    this.#direct = null;
    if (this.#link.incoming.get(this.sid) === this) this.#link.incoming.delete(this.sid);
    this.#events.ended(reason);
  }
}
