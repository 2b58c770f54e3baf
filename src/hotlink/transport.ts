/**
 * The one narrow interface a session's Data goes through, whatever carries it (spec: "Transports
 * and the upgrade ladder"), and the sender's half that every per-session path shares.
 *
 * - `Transport`: what an `Outgoing` (sessions.ts) needs of a path — send one Data in seq order,
 *   say when it is too full (`busy`), call back once it is not (`whenWritable`). The relay link
 *   (link.ts `RelayLink`, one for all sessions) is one; a `PathSender` over a TLS connection
 *   (direct.ts) or a data channel (ice.ts) is another. Like derp's Client, a transport knows
 *   nothing of sessions, peers or the ladder: the session picks one and falls back.
 * - `FramePipe`: what a `PathSender` needs of the connection under it — write one HLNK frame,
 *   without loss, in order; how much is still queued; an orderly close and a cut.
 * - `PathSender`: HLNK frames out, acknowledgements in (direct-wire.ts: 8-byte big-endian
 *   integers, each the highest seq the receiver delivered in order), and retention: every frame
 *   stays until acknowledged (at most `PATH_RETAIN_BYTES`; past that the source waits), so when
 *   the path fails the session resends `unacknowledged()` on the relay with the same seqs and the
 *   receiver's reorder buffer drops what arrives twice. A malformed acknowledgement cuts the path,
 *   and so do `PATH_ACK_TIMEOUT_MS` without one while frames wait.
 * - `FrameIntake`: the receiver's half — bytes of a path (a TLS stream, or data channel
 *   messages, which may split a frame) → the session's Data, counted; false once they are not
 *   HLNK frames (the path is then closed: it carried something else).
 * - `PathReceiver`: what an `Incoming` needs of its path (direct.ts `DirectReceiver`, ice.ts).
 */
import type { Logger } from "../core/log.ts";
import { AckReader } from "./direct-wire.ts";
import { HlnkDecoder, HlnkStreamEncoder } from "./hlnk.ts";
import { type DataMessage, InPlaceData, MessageType, payloadLength } from "./protocol.ts";
import type { PathCounters } from "./telemetry.ts";

/**
 * The rungs of the ladder, best first: a TLS connection dialled directly, a data channel over
 * ICE between host or server-reflexive candidates, the same through a TURN server's relay
 * candidate, and the WebSocket relay, which always works.
 */
export type Rung = "tls" | "ice" | "turn" | "relay";

export interface Transport {
  readonly rung: Rung;
  /** The source should stop for now: this transport holds too much unsent. */
  readonly busy: boolean;
  /** Calls `fn` once this transport can take more (or has failed). */
  whenWritable(fn: () => void): void;
  /**
   * Sends one Data of the session, in seq order. False when this transport can no longer carry
   * it (the relay link is down); a per-session path that fails later says so through its
   * owner's close event instead, and keeps what it did not deliver for `unacknowledged()`.
   */
  sendData(message: DataMessage): boolean;
}

/** A per-session connection under a `PathSender`. */
export interface FramePipe {
  /** Writes one HLNK frame: its header, then its payload (not copied: nobody reuses it). Never drops. */
  writeFrame(header: Uint8Array, payload: Uint8Array | InPlaceData): void;
  /** Bytes written and not yet taken by the kernel or the network stack. */
  readonly queued: number;
  /**
   * Unacknowledged bytes past which the source waits, when lower than `PATH_RETAIN_BYTES`: a
   * pipe whose queue cannot be read cheaply (a data channel) is bounded by what the receiver
   * has not acknowledged, which is always at least what is still queued.
   */
  readonly retainLimit?: number;
  /** The orderly end (what was written still goes). */
  close(): void;
  /** The abrupt end, as a network failure would be; the owner then falls back. */
  cut(): void;
}

/** A receiver's per-session path, as its `Incoming` sees it. */
export interface PathReceiver {
  /** The rung it is, once connected ("ice" or "turn" is known only then). */
  readonly rung: Rung;
  /** True while connected to the sender: its Data may come here. */
  readonly connected: boolean;
  /** Stop taking Data from the sender (the local application is behind) until `resume()`. */
  pause(): void;
  resume(): void;
  /** Acknowledges what was delivered in order, if that advanced. */
  ack(): void;
  close(): void;
}

/**
 * A Data that came on a path. A payload that spanned the path's reads comes as `parts` (views
 * of them, `length` bytes in all); its `pay` then joins them when read, a copy a sink that
 * writes the pieces one by one never makes.
 */
export type PathData = DataMessage & {
  readonly parts?: readonly Uint8Array[];
  readonly length?: number;
  /** With `srcAt`: the payload is `src` from `srcAt`, `length` bytes (`InPlaceData`). */
  readonly src?: Uint8Array;
  readonly srcAt?: number;
};


/** The receiver's half of a path: HLNK bytes in, the session's Data out. */
export class FrameIntake {
  readonly #sid: string;
  readonly #pth: string;
  /** Where frames are counted (an ICE path learns whether it is "ice" or "turn" once open). */
  counters: PathCounters;
  readonly #decoder = new HlnkDecoder({ views: true });
  readonly #data: (message: PathData) => void;

  constructor(sid: string, pth: string, counters: PathCounters, data: (message: PathData) => void) {
    this.#sid = sid;
    this.#pth = pth;
    this.counters = counters;
    this.#data = data;
  }

  /** Decodes `chunk` and hands on every whole frame; false when the bytes are not HLNK frames. */
  push(chunk: Uint8Array): boolean {
    const counters = this.counters;
    for (const f of this.#decoder.push(chunk)) {
      counters.rxPackets++;
      const pth = f.path === this.#pth ? undefined : f.path;
      const etg = f.etag === "" ? undefined : f.etag;
      const parts = f.parts;
      const src = f.src;
      if (src !== undefined) {
        // Whole in its read: read in place, no view of the read made (protocol.ts `InPlaceData`).
        const length = f.payloadLength ?? 0;
        counters.rxBytes += length;
        this.#data(new InPlaceData(this.#sid, Number(f.seq), pth, etg, src, f.srcAt ?? 0, length));
        continue;
      }
      if (parts === undefined) {
        counters.rxBytes += f.payload.byteLength;
        this.#data({ t: MessageType.Data, sid: this.#sid, seq: Number(f.seq), pay: f.payload, pth, etg });
        continue;
      }
      // A frame that spanned reads: its payload stays the views of them (`pay` joins them only if read).
      const length = f.payloadLength ?? 0;
      counters.rxBytes += length;
      this.#data({ t: MessageType.Data, sid: this.#sid, seq: Number(f.seq), get pay() { return f.payload; }, pth, etg, parts, length });
    }
    return this.#decoder.skipped === 0;
  }
}

/**
 * A receiver acknowledges once this many bytes arrived on its path since its last
 * acknowledgement ... (each acknowledgement is a write on the receiver and a wake-up of the
 * sender: one per frame cost a direct tunnel a fifth of its CPU, and a latency probe an extra
 * round of both on its critical path)
 */
export const ACK_EVERY_BYTES = 1024 * 1024;
/** ... and at most this long after the first frame it has not acknowledged. */
export const ACK_DELAY_MS = 10;

/** When a path's receiver acknowledges what it delivered (`ACK_EVERY_BYTES`, `ACK_DELAY_MS`). */
export class AckPacer {
  readonly #delivered: () => number;
  readonly #ready: () => boolean;
  readonly #send: (delivered: number) => void;
  #acked = 0;
  #arrived = 0;
  #timer: ReturnType<typeof setTimeout> | undefined;

  /** `ready()`: whether acknowledgements may go now (connected, not held by the application). */
  constructor(events: { delivered(): number; ready(): boolean; send(delivered: number): void }) {
    this.#delivered = events.delivered;
    this.#ready = events.ready;
    this.#send = events.send;
  }

  /** Bytes that came on the path (towards `ACK_EVERY_BYTES`). */
  arrived(bytes: number): void {
    this.#arrived += bytes;
  }

  /** Acknowledges what was delivered, now or within `ACK_DELAY_MS`, if that advanced. */
  ack(): void {
    if (!this.#ready() || this.#delivered() <= this.#acked) return;
    if (this.#arrived >= ACK_EVERY_BYTES) return this.#flush();
    this.#timer ??= setTimeout(() => this.#flush(), ACK_DELAY_MS);
  }

  #flush(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    if (!this.#ready()) return;
    const delivered = this.#delivered();
    if (delivered <= this.#acked) return;
    this.#acked = delivered;
    this.#arrived = 0;
    this.#send(delivered);
  }

  stop(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }
}

/** Frames sent on a path and not yet acknowledged, at most (then the source waits). */
export const PATH_RETAIN_BYTES = 32 * 1024 * 1024;
/** Unwritten bytes on a path above which the source waits. */
export const PATH_HIGH_WATER = 4 * 1024 * 1024;
/**
 * Frames unacknowledged this long with no acknowledgement coming: the path is cut and the session
 * falls back (a path that stopped delivering without closing must not hold a session for ever;
 * a receiver that only holds its acknowledgements for a slow application loses nothing by it:
 * the relay carries on, flow-controlled).
 */
export const PATH_ACK_TIMEOUT_MS = 20_000;

/**
 * Payloads this large, given whole to one path by their owner (`sendData(…, owned)`: a tunnel's
 * reads), are freed when acknowledged instead of left to the collector.
 */
export const RELEASE_MIN_BYTES = 64 * 1024;

/**
 * Frees the memory behind `pay` now: detaching its buffer (`transfer(0)`) returns those bytes to
 * the allocator at once. A tunnel's 512 KiB reads, kept until acknowledged, outlive the young
 * generation and wait for a full collection; meanwhile the allocator hands out fresh pages, and
 * the sender of a pinned direct tunnel spent a tenth of its CPU in page faults.
 */
function release(pay: Uint8Array): void {
  try {
    (pay.buffer as ArrayBuffer).transfer(0);
  } catch {
    // Not detachable (not a plain ArrayBuffer): the collector frees it.
  }
}

/** What an acknowledged slot of the retention array holds until the array is compacted. */
const ACKNOWLEDGED: DataMessage = { t: MessageType.Data, sid: "", seq: 0, pay: new Uint8Array(0), pth: undefined, etg: undefined };

/** The sender's side of a per-session path: frames out, acknowledgements in, retention. */
export class PathSender implements Transport {
  /** Changes only on ICE, when the connection moves to another candidate pair (`moved`). */
  rung: Rung;
  readonly #pipe: FramePipe;
  readonly #pth: string;
  /** Frame heads, with the last path's and etag's UTF-8 remembered. */
  readonly #heads = new HlnkStreamEncoder();
  #counters: PathCounters;
  readonly #log: Logger;
  #retained: DataMessage[] = [];
  #retainedHead = 0;
  #retainedBytes = 0;
  /** Retained frames whose payload buffer is this path's alone, freed when acknowledged (`release`). */
  readonly #owned = new WeakSet<DataMessage>();
  readonly #acks = new AckReader();
  #waiters: (() => void)[] = [];
  #ackWaiters: (() => void)[] = [];
  /** Set by the session when it fell back: waiters are woken, nothing more is expected. */
  failed = false;
  /** When acknowledgements last made progress (or frames began to wait for one). */
  #progressAt = 0;
  #stallTimer: ReturnType<typeof setInterval> | undefined;
  /** What carries it, for `ls`: the address dialled (TLS) or the candidate pair (ICE). */
  via = "";

  /** `pth`: the session's path (a frame carries it when its Data had none). */
  constructor(rung: Rung, pipe: FramePipe, pth: string, counters: PathCounters, log: Logger) {
    this.rung = rung;
    this.#pipe = pipe;
    this.#pth = pth;
    this.#counters = counters;
    this.#log = log;
  }

  /** The path now runs on `rung` through `via`, counted in `counters` from now on (ICE: another candidate pair). */
  moved(rung: Rung, via: string, counters: PathCounters): void {
    this.rung = rung;
    this.via = via;
    this.#counters = counters;
  }

  get busy(): boolean {
    return this.#pipe.queued > PATH_HIGH_WATER || this.#retainedBytes > (this.#pipe.retainLimit ?? PATH_RETAIN_BYTES);
  }

  /** Payload bytes sent and not yet acknowledged. */
  get unacknowledgedBytes(): number {
    return this.#retainedBytes;
  }

  whenWritable(fn: () => void): void {
    if (!this.busy || this.failed) fn();
    else this.#waiters.push(fn);
  }

  /**
   * `owned`: nobody but this path holds `message.pay`'s buffer (a tunnel's read, not a view into
   * a buffer with other frames); it is freed once acknowledged, unless this path failed or was
   * left first (then its frames may be in another path's queue: the collector frees them).
   */
  sendData(message: DataMessage, owned = false): boolean {
    // An in-place payload (an application's frame in its read) is not made a view of here: the
    // pipe copies its range (direct.ts) or takes `pay` when it must (ice.ts).
    const length = payloadLength(message);
    if (owned && length >= RELEASE_MIN_BYTES) {
      const pay = message.pay;
      if (pay.byteOffset === 0 && pay.byteLength === pay.buffer.byteLength) this.#owned.add(message);
    }
    // Retained first: a pipe that finds itself closed makes the session fall back from inside
    // writeFrame, and the fallback resends what is retained.
    if (this.#retainedHead >= this.#retained.length) this.#watchAcks();
    this.#retained.push(message);
    this.#retainedBytes += length;
    this.#counters.txPackets++;
    this.#counters.txBytes += length;
    this.#pipe.writeFrame(this.#heads.head(message.pth ?? this.#pth, message.etg ?? "", message.seq, length), message instanceof InPlaceData ? message : message.pay);
    return true;
  }

  /** Calls `fn` once every frame sent is acknowledged, or the path failed. */
  whenAcknowledged(fn: () => void): void {
    if (this.failed || this.#retainedHead >= this.#retained.length) fn();
    else this.#ackWaiters.push(fn);
  }

  /** Frames not acknowledged yet, in seq order (for the relay after a failure). */
  unacknowledged(): DataMessage[] {
    return this.#retained.slice(this.#retainedHead);
  }

  /** Bytes from the receiver: acknowledgements. A malformed one cuts the path. */
  onAck(bytes: Uint8Array): void {
    const read = this.#acks.push(bytes);
    if (!read.ok) {
      this.#log.warn(`the ${this.rung} path carried a malformed acknowledgement; back to the relay`, { pth: this.#pth, err: read.error });
      this.cut();
      return;
    }
    const acked = read.acked;
    const r = this.#retained;
    while (this.#retainedHead < r.length && (r[this.#retainedHead]?.seq ?? Infinity) <= acked) {
      const frame = r[this.#retainedHead] as DataMessage;
      this.#retainedBytes -= payloadLength(frame);
      // Delivered: no path resends it. Only while this path is the session's (see sendData).
      if (this.#owned.delete(frame) && !this.failed) release(frame.pay);
      // Let go of the payload now, not when the array is next compacted: 1,024 acknowledged
      // 512 KiB reads would otherwise stay reachable (half a gigabyte).
      r[this.#retainedHead] = ACKNOWLEDGED;
      this.#retainedHead++;
    }
    this.#progressAt = performance.now();
    if (this.#retainedHead > 1024 && this.#retainedHead * 2 > r.length) {
      this.#retained = r.slice(this.#retainedHead);
      this.#retainedHead = 0;
    }
    this.#wake();
  }

  /** The pipe took what was queued: waiting sources may go on. */
  onDrain(): void {
    this.#wake();
  }

  close(): void {
    clearInterval(this.#stallTimer);
    this.#stallTimer = undefined;
    this.#pipe.close();
    this.#wake();
  }

  /** From the first frame waiting for an acknowledgement: a check each second for PATH_ACK_TIMEOUT_MS. */
  #watchAcks(): void {
    this.#progressAt = performance.now();
    if (this.#stallTimer !== undefined) return;
    this.#stallTimer = setInterval(() => {
      if (this.#retainedHead >= this.#retained.length || this.failed) {
        clearInterval(this.#stallTimer);
        this.#stallTimer = undefined;
        return;
      }
      if (performance.now() - this.#progressAt < PATH_ACK_TIMEOUT_MS) return;
      clearInterval(this.#stallTimer);
      this.#stallTimer = undefined;
      this.#log.warn(`the ${this.rung} path acknowledged nothing for ${PATH_ACK_TIMEOUT_MS / 1000} s; back to the relay`, { pth: this.#pth });
      this.cut();
    }, 1000);
    this.#stallTimer.unref?.();
  }

  /** Ends the path abruptly (its close event then makes the session fall back to the relay). */
  cut(): void {
    this.#pipe.cut();
  }

  #wake(): void {
    if (this.failed || this.#retainedHead >= this.#retained.length) {
      const a = this.#ackWaiters;
      this.#ackWaiters = [];
      for (const fn of a) fn();
    }
    if (this.busy && !this.failed) return;
    const w = this.#waiters;
    this.#waiters = [];
    for (const fn of w) fn();
  }
}
