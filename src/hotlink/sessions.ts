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
 */
import { randomUUID } from "node:crypto";
import { describeError } from "../core/errors.ts";
import type { RelayLink } from "./link.ts";
import { type DataMessage, MessageType } from "./protocol.ts";
import { ReorderBuffer } from "./reorder.ts";

/** Frames a receiver holds while waiting for a gap (relay and direct paths can interleave). */
export const REORDER_MAX_FRAMES = 65_536;
/** Bytes a receiver holds while waiting for a gap. */
export const REORDER_MAX_BYTES = 64 * 1024 * 1024;

/** What an incoming session delivers, in seq order. */
export interface Delivery {
  readonly seq: number;
  readonly pay: Uint8Array;
  readonly pth: string | undefined;
  readonly etg: string | undefined;
  readonly byteLength: number;
}

export interface OutgoingEvents {
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

  /** Sends one Data; only while open. The payload is encoded at once (the caller may reuse it). */
  send(pay: Uint8Array, pth?: string, etg?: string): boolean {
    if (this.state !== "open") return false;
    const seq = ++this.#seq;
    const started = performance.now();
    const ok = this.#link.send({
      t: MessageType.Data,
      sid: this.sid,
      seq,
      pay,
      ...(pth === undefined ? {} : { pth }),
      ...(etg === undefined ? {} : { etg }),
    });
    if (!ok) {
      this.#end("the relay server connection was lost", false);
      return false;
    }
    this.sentBytes += pay.byteLength;
    const c = this.#link.counters;
    c.send.add((performance.now() - started) * 1000);
    c.relay.txPackets++;
    c.relay.txBytes += pay.byteLength;
    return true;
  }

  /** The orderly end: every Data sent so far, then Close with `lst`. */
  finish(): void {
    if (this.state === "closed") return;
    this.#link.send({ t: MessageType.Close, sid: this.sid, lst: this.#seq });
    this.#end(null, false);
  }

  abort(reason: string): void {
    if (this.state === "closed") return;
    this.#link.send({ t: MessageType.Close, sid: this.sid, rsn: reason });
    this.#end(reason, false);
  }

  /** From the server: */
  onAccept(frm: string | undefined): void {
    if (this.state !== "opening") return;
    this.state = "open";
    this.#events.accepted(frm);
  }

  onReject(reason: string): void {
    this.#end(reason, true);
  }

  onClose(reason: string | undefined): void {
    this.#end(reason ?? "closed by the receiver", false);
  }

  /** The link went down: the server has dropped the session. */
  onLinkDown(reason: string): void {
    this.#end(`the relay server connection was lost (${reason})`, false);
  }

  #end(reason: string | null, rejected: boolean): void {
    if (this.state === "closed") return;
    this.state = "closed";
    if (this.#link.outgoing.get(this.sid) === this) this.#link.outgoing.delete(this.sid);
    this.#events.ended(reason, rejected);
  }
}

export interface IncomingEvents {
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

  accept(): boolean {
    return this.#link.send({ t: MessageType.Accept, sid: this.sid });
  }

  onData(message: DataMessage): void {
    if (this.state === "closed") return;
    const c = this.#link.counters;
    c.relay.rxPackets++;
    c.relay.rxBytes += message.pay.byteLength;
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
    if (this.#link.incoming.get(this.sid) === this) this.#link.incoming.delete(this.sid);
    this.#events.ended(reason);
  }
}
