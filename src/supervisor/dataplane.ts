/**
 * One data-plane worker's loop (spec/supervisor.md, "Data plane"): frames from the ingress
 * AF_PACKET sockets → parse (packet-wire.ts) → match (rules.ts `MatchTable`) → for each output of
 * the rule a copy of the payload, sent with io_uring SEND on that output's connected UDP socket.
 * Everything here is the worker's own (protocol.ts's diagram): the ring, the eventfd, the buffer
 * pools; the sockets arrive with `addRule` and are closed once, here, when their rule goes (an
 * ingress socket once its RECVs are drained, below) or at `close()`.
 *
 * user_data (64 bits, below 2^53 so it is exact as a JS number):
 *
 *   bits 32..39  kind    RECV (1) a frame read into receive buffer `index`
 *                        SEND (2) a payload copy sent from send buffer `index`
 *                        EVENT (3) the 8-byte READ of the command eventfd (`index` 0)
 *                        CANCEL (4) an ASYNC_CANCEL: of the RECV on receive buffer `index`, or of
 *                                   the poll of ingress `index`
 *                        POLL (5) the multishot readiness poll of ingress socket `index`
 *   bits 0..31   index   the buffer's index in the pool of its kind (an ingress's number for POLL)
 *
 * Kind 0 is never used, so a zeroed user_data means nothing. A completion names its buffer, so
 * completions are handled in any order (the seed read every one from buffer 0).
 *
 * Ingress: poll, then read in bursts. Each ingress socket has one multishot POLL_ADD in the ring;
 * when it reports the socket readable, a burst of RECVs goes in, each into its own receive buffer
 * and each with MSG_DONTWAIT, so the kernel completes every one at once inside the submit: with a
 * frame, or -EAGAIN once the queue is empty. RECVs left waiting in the kernel would each sit on
 * the socket's wait queue, and every frame would wake them all (measured: 64 waiting RECVs cost
 * ~8 µs of worker CPU per frame at 25k pps, against ~4 µs when 4 wait). A burst that came back
 * full is followed by another, twice as large (up to RECV_BATCH); one that met -EAGAIN ends the
 * readiness, and the next burst is sized by what it got (at least MIN_BURST) — unless the poll
 * fired meanwhile, which may be for a frame the burst missed: then another burst goes at once.
 *
 * Buffers: two pools, so a burst of SENDs can never take the buffers the RECVs live on —
 * RECV_BUFFERS frames (RECV_BATCH per ingress socket, MAX_INPUTS sockets) and SEND_BUFFERS
 * payload copies in two size classes (SEND_CLASSES: small payloads — telemetry, market data —
 * take 256-byte buffers first, so a burst of them cannot use up the room of full-size ones; a
 * class that is empty lends from the larger one). A receive buffer goes back as soon as its
 * frame is parsed and copied; a send buffer when its SEND completes. An empty send pool drops
 * that copy and counts `buffer_exhausted`.
 *
 * One `runOnce`: arm the poll of every ingress socket that has none, post a burst on each
 * readable one, and one READ on the eventfd; submit and wait for at least one completion
 * (bounded), handle what completed, then — when the eventfd fired — call `onCommand` (the caller
 * drains its command queue there, through addRule / removeRule: rules change between batches,
 * never inside one); the next batch posts the READ again. A wake written while the READ is not
 * posted stays in the eventfd's counter and completes the next READ at once: no wake-up is lost.
 *
 * Removing the last rule of an ingress socket drains it: an ASYNC_CANCEL of its poll and of each
 * RECV it has in the ring (by user_data), and nothing is posted on it again. Each of its
 * completions — -ECANCELED, or a frame that came first (dropped, not counted) — gives its buffer
 * back; when the last one has been reaped (the poll's final completion, without
 * IORING_CQE_F_MORE, included) the fd is closed, once. Until then the fd stays open, so its
 * number is not reused while the ring still watches the socket. An interface may get a new
 * socket meanwhile: the draining one is no longer its ingress. `close()` closes the draining
 * sockets too; the kernel cancels everything left in flight with the ring.
 */
import { ptr } from "bun:ffi";
import { StoaError } from "../core/errors.ts";
import { EFD_CLOEXEC, EFD_NONBLOCK, signalEventfd } from "../ffi/epoll.ts";
import { OwnedFd } from "../ffi/fdpass.ts";
import { IORING_CQE_F_MORE, IoUring, POLLIN } from "../ffi/io_uring.ts";
import { MSG_DONTWAIT, errno, libc, strerror } from "../ffi/libc.ts";
import { BufferPool } from "./buffers.ts";
import { parseUdpFrame, type UdpView } from "./packet-wire.ts";
import { MAX_INPUT_INTERFACES, type Rule, type WorkerCounters } from "./protocol.ts";
import { MatchTable } from "./rules.ts";

/** The most RECVs one burst on an ingress socket posts. */
export const RECV_BATCH = 64;
/** The fewest (see the header: bursts are sized by what the last one got). */
export const MIN_BURST = 2;
/** Ingress sockets (input interfaces) one worker reads. */
export const MAX_INPUTS = MAX_INPUT_INTERFACES;
/** A received frame: Ethernet + one VLAN tag + a 1500-byte IPv4 packet fit, with room. */
const RECV_BUFFER_BYTES = 2048;
const RECV_BUFFERS = RECV_BATCH * MAX_INPUTS;
/** Payload copies: small ones, and ones the largest payload a RECV buffer can hold fits. */
const SEND_CLASSES = [
  { size: 256, count: 512 },
  { size: 2048, count: 512 },
] as const;
export const SEND_BUFFERS = SEND_CLASSES.reduce((n, c) => n + c.count, 0);
/**
 * SQ entries (the CQ gets twice as many): every operation that can be in flight at once —
 * RECV_BUFFERS, a cancel for each, SEND_BUFFERS, 1 READ, a poll and its cancel per ingress —
 * fits the CQ, so no completion overflows it (a multishot poll's events between two reaps: should
 * the CQ ever be full, the kernel ends that poll — a completion without IORING_CQE_F_MORE — and
 * the next runOnce arms it again).
 */
const RING_ENTRIES = 1024;
/** A cancel's results that are not errors: it found nothing (the RECV had completed), or the RECV was already running and completes by itself. */
const ENOENT = 2;
const EALREADY = 114;
const EAGAIN = 11;
const ECANCELED = 125;

export const UserDataKind = { RECV: 1, SEND: 2, EVENT: 3, CANCEL: 4, POLL: 5 } as const;
export type UserDataKind = (typeof UserDataKind)[keyof typeof UserDataKind];
const KIND_SHIFT = 2 ** 32;

/** The user_data of an operation on buffer `index` of `kind` (see the header). */
export function encodeUserData(kind: UserDataKind, index: number): bigint {
  if (!Number.isInteger(index) || index < 0 || index >= KIND_SHIFT) throw new RangeError(`buffer index ${index} does not fit user_data's 32 bits`);
  return BigInt(kind * KIND_SHIFT + index);
}

/** The kind and index a completion's user_data names; kind 0 (or an unknown one) is not ours. */
export function decodeUserData(userData: bigint): { kind: number; index: number } {
  const n = Number(userData);
  return { kind: Math.floor(n / KIND_SHIFT), index: n % KIND_SHIFT };
}

/** The ring operations the loop uses (an `IoUring`; a test may drive the loop with its own). */
export type Ring = Pick<IoUring, "prepRecv" | "prepSend" | "prepRead" | "prepCancel" | "prepPollMultishot" | "submitAndWait" | "reap" | "close" | "sqSpace">;

interface Ingress {
  readonly iface: string;
  readonly fd: OwnedFd;
  /** `fd`'s number, read once (the RECVs are posted on it). */
  readonly number: number;
  /** Its POLL's `index` (never reused in a plane) and that poll's user_data. */
  readonly id: number;
  readonly pollData: bigint;
  /** The rules that read this socket; it drains when the last one goes. */
  readonly rules: Set<string>;
  /** RECVs in the ring (posted and not yet reaped). */
  outstanding: number;
  /** Its multishot poll is in the ring (posted, and its last completion not reaped). */
  polling: boolean;
  /** Frames may be queued: the next `runOnce` posts a burst. */
  readable: boolean;
  /** The poll fired while a burst was out. */
  woken: boolean;
  /** RECVs the next burst posts. */
  burst: number;
  /** Frames the current burst got, and whether one of its RECVs found the queue empty. */
  filled: number;
  drained: boolean;
  /** No rule reads it: its poll and RECVs are cancelled, nothing is posted again; the fd closes after the last completion. */
  draining: boolean;
}

interface RuleSockets {
  ingress: Ingress;
  outputs: OwnedFd[];
  outputNumbers: number[];
}

export interface DataPlaneOptions {
  /** Called after a batch in which the eventfd was written (`wake`): apply queued commands here. */
  onCommand?: (plane: DataPlane) => void;
  /** The ring to use (default: a new IoUring of its own); the plane closes it either way. */
  ring?: Ring;
}

/**
 * One worker's data plane. Not thread-safe: one thread calls everything except writing the
 * eventfd (`eventFd`), which any thread or process may do.
 * @example
 *   const plane = new DataPlane({ onCommand: (p) => { for (const c of queue.splice(0)) p.addRule(c.rule, c.input, c.outputs); } });
 *   plane.addRule(rule, openPacketSocket(rule.input_interface, 7), rule.outputs.map((o) => openOutputSocket(o.interface, o.group, o.port)));
 *   while (running) plane.runOnce(100);
 *   plane.close();
 */
export class DataPlane {
  readonly #ring: Ring;
  readonly #recvPool = new BufferPool([{ size: RECV_BUFFER_BYTES, count: RECV_BUFFERS }]);
  readonly #sendPool = new BufferPool(SEND_CLASSES);
  /** Per buffer, made once: its bytes, its address, its user_data (nothing allocated per packet). */
  readonly #recvViews: Uint8Array[];
  readonly #recvAddrs: number[];
  readonly #recvData: bigint[];
  readonly #sendViews: Uint8Array[];
  readonly #sendAddrs: number[];
  readonly #sendData: bigint[];
  /** Which ingress each receive buffer's RECV was posted on. */
  readonly #recvOwner: (Ingress | undefined)[];
  readonly #table = new MatchTable();
  readonly #ingress = new Map<string, Ingress>();
  /** Every ingress with a poll in the ring, by id (draining ones too, until the poll's last completion). */
  readonly #byId = new Map<number, Ingress>();
  #nextId = 1;
  /** Sockets whose last rule went, until their last RECV is reaped (see the header). */
  readonly #draining = new Set<Ingress>();
  readonly #sockets = new Map<string, RuleSockets>();
  readonly #event: OwnedFd;
  readonly #eventNumber: number;
  readonly #eventBuffer = new BigUint64Array(1);
  readonly #eventData = encodeUserData(UserDataKind.EVENT, 0);
  #eventPosted = false;
  /** RECVs and SENDs prepared since the last submit (see runOnce's wait). */
  #preparedRecvs = 0;
  #preparedSends = 0;
  #commandPending = false;
  readonly #onCommand: ((plane: DataPlane) => void) | undefined;
  readonly #udp: UdpView = { dst: 0, dstPort: 0, srcPort: 0, payloadOffset: 0, payloadLength: 0 };
  readonly #counters: WorkerCounters = { received: 0, matched: 0, sent: 0, filtered: 0, no_match: 0, buffer_exhausted: 0, errors: 0 };
  readonly #onCompletion = (userData: bigint, res: number, flags: number): void => this.#complete(userData, res, flags);
  #closed = false;

  constructor(o: DataPlaneOptions = {}) {
    this.#onCommand = o.onCommand;
    const efd = libc().eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (efd < 0) throw new StoaError("io", `eventfd for the data plane's commands: ${strerror(errno())} (too many open files? raise the fd limit)`);
    this.#event = new OwnedFd(efd, "the data plane's eventfd");
    this.#eventNumber = efd;
    try {
      // One thread submits and waits: completions' task work runs when it waits (DEFER_TASKRUN), not as interrupts.
      this.#ring = o.ring ?? IoUring.create(RING_ENTRIES, { singleIssuer: true });
    } catch (err) {
      this.#event.close();
      throw err;
    }
    const recvBase = ptr(this.#recvPool.memory);
    const sendBase = ptr(this.#sendPool.memory);
    this.#recvViews = Array.from({ length: RECV_BUFFERS }, (_, i) => this.#recvPool.view(i));
    this.#recvAddrs = this.#recvViews.map((v) => recvBase + v.byteOffset);
    this.#recvData = this.#recvViews.map((_, i) => encodeUserData(UserDataKind.RECV, i));
    this.#recvOwner = new Array<Ingress | undefined>(RECV_BUFFERS).fill(undefined);
    this.#sendViews = Array.from({ length: SEND_BUFFERS }, (_, i) => this.#sendPool.view(i));
    this.#sendAddrs = this.#sendViews.map((v) => sendBase + v.byteOffset);
    this.#sendData = this.#sendViews.map((_, i) => encodeUserData(UserDataKind.SEND, i));
  }

  /** The command eventfd: write an 8-byte 1 to it (`wake`, or from another thread or process). */
  get eventFd(): number {
    return this.#eventNumber;
  }

  /** A copy of the worker's counters. */
  counters(): WorkerCounters {
    return { ...this.#counters };
  }

  /** The rules' counters and rates (MatchTable). */
  get rules(): MatchTable {
    return this.#table;
  }

  /** Buffers held now (by operations in the ring): for checks that every one comes back. */
  buffersInUse(): { recv: number; send: number } {
    const free = (pool: BufferPool): number => pool.freeCounts().reduce((n, k) => n + k, 0);
    return { recv: RECV_BUFFERS - free(this.#recvPool), send: SEND_BUFFERS - free(this.#sendPool) };
  }

  /** Makes the next (or the current) `runOnce` call `onCommand`. */
  wake(): void {
    this.#open();
    signalEventfd(this.#eventNumber);
  }

  /**
   * Adds (or replaces, by id) a rule with its sockets: `outputFds[i]` sends to `rule.outputs[i]`.
   * `inputFd` is the AF_PACKET socket of `rule.input_interface`; leave it out when another rule
   * already reads that interface (a second socket for it is closed at once: one reader suffices).
   * Every fd passed is this plane's from the call on, also when the call throws (then it is closed).
   */
  addRule(rule: Rule, inputFd: number | undefined, outputFds: readonly number[]): void {
    const input = inputFd === undefined ? undefined : new OwnedFd(inputFd, `the AF_PACKET socket of ${rule.input_interface}`);
    const outputs = outputFds.map((fd, i) => new OwnedFd(fd, `rule ${rule.rule_id}'s output ${i}`));
    try {
      this.#open();
      if (outputs.length !== rule.outputs.length) {
        throw new StoaError("internal", `rule ${rule.rule_id} has ${rule.outputs.length} outputs but came with ${outputs.length} sockets: send one per output`);
      }
      let ingress = this.#ingress.get(rule.input_interface);
      if (ingress === undefined) {
        if (input === undefined) throw new StoaError("internal", `rule ${rule.rule_id} came without a socket for ${rule.input_interface}, which no rule reads yet: send its AF_PACKET socket with it`);
        if (this.#ingress.size >= MAX_INPUTS) throw new StoaError("too_large", `a data-plane worker reads at most ${MAX_INPUTS} interfaces: remove the rules of one first`);
        const id = this.#nextId++;
        ingress = {
          iface: rule.input_interface,
          fd: input,
          number: input.fd,
          id,
          pollData: encodeUserData(UserDataKind.POLL, id),
          rules: new Set(),
          outstanding: 0,
          polling: false,
          readable: true, // frames may have queued since the supervisor opened it
          woken: false,
          burst: MIN_BURST,
          filled: 0,
          drained: false,
          draining: false,
        };
        this.#ingress.set(ingress.iface, ingress);
      } else input?.close();
      ingress.rules.add(rule.rule_id);
      const old = this.#sockets.get(rule.rule_id);
      if (old !== undefined) {
        this.#submitPrepared();
        for (const fd of old.outputs) fd.close();
        if (old.ingress !== ingress) this.#leave(old.ingress, rule.rule_id);
      }
      this.#sockets.set(rule.rule_id, { ingress, outputs, outputNumbers: outputs.map((fd) => fd.fd) });
      this.#table.set(rule);
    } catch (err) {
      if (input !== undefined && this.#ingress.get(rule.input_interface)?.fd !== input) input.close();
      for (const fd of outputs) fd.close();
      throw err;
    }
  }

  /** Removes a rule and closes its output sockets (and drains its ingress socket when no other rule reads it: see the header). False for an unknown id. */
  removeRule(id: string): boolean {
    this.#open();
    const sockets = this.#sockets.get(id);
    if (sockets === undefined) return false;
    this.#sockets.delete(id);
    this.#table.remove(id);
    this.#submitPrepared();
    for (const fd of sockets.outputs) fd.close();
    this.#leave(sockets.ingress, id);
    return true;
  }

  /**
   * Hands every prepared SQE to the kernel (no wait) before an output socket is closed: a
   * prepared SEND names its socket by fd number, which the kernel resolves only at submit — closed
   * first, it would fail (EBADF), or reach whatever socket got that number next. A submitted
   * SEND holds the socket itself until it completes.
   */
  #submitPrepared(): void {
    this.#ring.submitAndWait(0, 0);
    this.#preparedRecvs = 0;
    this.#preparedSends = 0;
  }

  /**
   * One batch (see the header): answers the completions handled. Blocks the thread up to
   * `timeoutMs` when nothing completes sooner.
   */
  runOnce(timeoutMs: number): number {
    this.#open();
    for (const ingress of this.#ingress.values()) {
      if (!ingress.polling) {
        this.#room();
        this.#ring.prepPollMultishot(ingress.number, POLLIN, ingress.pollData);
        ingress.polling = true;
        this.#byId.set(ingress.id, ingress);
      }
      if (ingress.readable && ingress.outstanding === 0) this.#burst(ingress);
    }
    if (!this.#eventPosted) {
      this.#room();
      this.#ring.prepRead(this.#eventNumber, ptr(this.#eventBuffer), 8, this.#eventData);
      this.#eventPosted = true;
    }
    // A batch of SENDs alone completes inside the submit (UDP copies the payload at once): wait
    // for them and one event more, so the same io_uring_enter that sends also sleeps until the
    // next frame or command (a syscall per relayed packet less when traffic is light). A batch
    // with RECVs waits for one: they too complete inside the submit, and are handled at once.
    const min = this.#preparedRecvs > 0 ? 1 : 1 + this.#preparedSends;
    this.#preparedRecvs = 0;
    this.#preparedSends = 0;
    this.#ring.submitAndWait(min, timeoutMs);
    const handled = this.#ring.reap(this.#onCompletion);
    if (this.#commandPending) {
      this.#commandPending = false;
      this.#onCommand?.(this);
    }
    return handled;
  }

  /** Closes the ring (the kernel cancels what is in flight), the eventfd and every socket, draining ones too. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#ring.close();
    this.#event.close();
    for (const sockets of this.#sockets.values()) for (const fd of sockets.outputs) fd.close();
    for (const ingress of [...this.#ingress.values(), ...this.#draining]) {
      ingress.draining = true;
      ingress.fd.close();
    }
    this.#sockets.clear();
    this.#ingress.clear();
    this.#draining.clear();
    this.#byId.clear();
  }

  /** Drops rule `id` from `ingress`; the last one to go starts its drain (see the header). */
  #leave(ingress: Ingress, id: string): void {
    ingress.rules.delete(id);
    if (ingress.rules.size > 0) return;
    ingress.draining = true;
    this.#ingress.delete(ingress.iface);
    if (ingress.outstanding === 0 && !ingress.polling) {
      ingress.fd.close();
      return;
    }
    this.#draining.add(ingress);
    if (ingress.polling) {
      this.#room();
      this.#ring.prepCancel(ingress.pollData, encodeUserData(UserDataKind.CANCEL, ingress.id));
    }
    for (let index = 0; index < RECV_BUFFERS; index++) {
      if (this.#recvOwner[index] !== ingress) continue;
      this.#room();
      this.#ring.prepCancel(this.#recvData[index]!, encodeUserData(UserDataKind.CANCEL, index));
    }
  }

  /** Posts a burst of `ingress.burst` RECVs (fewer when the receive pool runs out; none: it stays readable). */
  #burst(ingress: Ingress): void {
    ingress.woken = false;
    ingress.filled = 0;
    ingress.drained = false;
    for (let n = 0; n < ingress.burst; n++) {
      const index = this.#recvPool.take(RECV_BUFFER_BYTES);
      if (index < 0) return;
      this.#postRecv(ingress, index);
    }
  }

  /** A burst's last RECV came back: size the next one, and post it now when the socket may have more (see the header). */
  #burstDone(ingress: Ingress): void {
    if (ingress.drained) {
      ingress.readable = ingress.woken;
      ingress.burst = Math.max(MIN_BURST, Math.min(RECV_BATCH, ingress.filled * 2));
    } else {
      ingress.readable = true;
      ingress.burst = Math.min(RECV_BATCH, ingress.burst * 2);
    }
    if (ingress.readable) this.#burst(ingress);
  }

  /** Closes a draining socket once nothing of it is in the ring. */
  #closeIfDrained(ingress: Ingress): void {
    if (ingress.outstanding === 0 && !ingress.polling && this.#draining.delete(ingress)) ingress.fd.close();
  }

  #postRecv(ingress: Ingress, index: number): void {
    this.#room();
    this.#recvOwner[index] = ingress;
    ingress.outstanding++;
    this.#ring.prepRecv(ingress.number, this.#recvAddrs[index]!, RECV_BUFFER_BYTES, this.#recvData[index]!, MSG_DONTWAIT);
    this.#preparedRecvs++;
  }

  /** Hands the prepared SQEs to the kernel when the SQ is full (no wait). */
  #room(): void {
    if (this.#ring.sqSpace === 0) this.#submitPrepared();
  }

  #complete(userData: bigint, res: number, flags: number): void {
    const { kind, index } = decodeUserData(userData);
    if (kind === UserDataKind.RECV) this.#received(index, res);
    else if (kind === UserDataKind.POLL) this.#polled(index, res, flags);
    else if (kind === UserDataKind.SEND) {
      this.#sendPool.give(index);
      if (res < 0) this.#counters.errors++;
      else this.#counters.sent++;
    } else if (kind === UserDataKind.EVENT) {
      this.#eventPosted = false;
      this.#commandPending = true;
    } else if (kind === UserDataKind.CANCEL) {
      // The RECV it aimed at completes (or completed) by itself; only a refused cancel is an error.
      if (res < 0 && res !== -ENOENT && res !== -EALREADY) this.#counters.errors++;
    } else throw new StoaError("internal", `a completion with user_data ${userData} that no operation of this data plane had: an ownership bug`);
  }

  #received(index: number, res: number): void {
    const ingress = this.#recvOwner[index];
    if (ingress === undefined) throw new StoaError("internal", `a RECV completion for receive buffer ${index}, which no RECV held: an ownership bug`);
    this.#recvOwner[index] = undefined;
    ingress.outstanding--;
    if (ingress.draining) {
      this.#recvPool.give(index);
      this.#closeIfDrained(ingress);
      return;
    }
    if (res === -EAGAIN) ingress.drained = true;
    else if (res < 0) this.#counters.errors++;
    else {
      this.#relay(ingress, this.#recvViews[index]!, res);
      ingress.filled++;
    }
    this.#recvPool.give(index);
    if (ingress.outstanding === 0) this.#burstDone(ingress);
  }

  #polled(id: number, res: number, flags: number): void {
    const ingress = this.#byId.get(id);
    if (ingress === undefined) throw new StoaError("internal", `a POLL completion for ingress ${id}, which has no poll: an ownership bug`);
    if ((flags & IORING_CQE_F_MORE) === 0) {
      ingress.polling = false; // its last: armed again by the next runOnce, unless draining
      this.#byId.delete(id);
    }
    if (ingress.draining) {
      this.#closeIfDrained(ingress);
      return;
    }
    if (res < 0) {
      if (res !== -ECANCELED) this.#counters.errors++;
      return;
    }
    if (ingress.outstanding > 0) ingress.woken = true;
    else {
      ingress.readable = true;
      this.#burst(ingress); // prepared now, submitted by the next batch
    }
  }

  #relay(ingress: Ingress, frame: Uint8Array, length: number): void {
    const c = this.#counters;
    c.received++;
    const udp = this.#udp;
    if (parseUdpFrame(frame, length, udp) !== null) {
      c.filtered++;
      return;
    }
    const live = this.#table.match(ingress.iface, udp.dst, udp.dstPort);
    if (live === undefined) {
      c.no_match++;
      return;
    }
    c.matched++;
    live.packets++;
    live.bytes += udp.payloadLength;
    const outputs = this.#sockets.get(live.rule.rule_id)!.outputNumbers;
    const payload = frame.subarray(udp.payloadOffset, udp.payloadOffset + udp.payloadLength);
    for (const fd of outputs) {
      const s = this.#sendPool.take(udp.payloadLength);
      if (s < 0) {
        c.buffer_exhausted++;
        continue;
      }
      this.#sendViews[s]!.set(payload);
      this.#room();
      this.#ring.prepSend(fd, this.#sendAddrs[s]!, udp.payloadLength, this.#sendData[s]!);
      this.#preparedSends++;
    }
  }

  #open(): void {
    if (this.#closed) throw new StoaError("closed", "the data plane is closed; create a new one");
  }
}
