/**
 * A worker's stream (protocol.ts's diagram): the SOCK_SEQPACKET pair between the supervisor and
 * one worker, carrying whole messages of up to MAX_CONTROL_FRAME_BYTES with descriptors attached.
 *
 * A SEQPACKET message must fit the socket's send buffer whole, so fdpass.ts caps one at
 * MAX_MESSAGE_BYTES (64 KiB); a longer message (a listing of thousands of rules) goes as several
 * pieces. Each piece starts with one byte — MORE (1): another piece of this message follows,
 * LAST (0): this one ends it — and the descriptors ride on the last piece only (at most
 * MAX_FDS_PER_MESSAGE). The receiver's reassembly is a state machine with the frame limit: a
 * piece with an unknown first byte, descriptors on a piece that is not the last, or a message
 * over the limit is a protocol error — the descriptors that came are closed and the stream is
 * given up (`broken`), since its message boundaries can no longer be trusted.
 *
 * Both ends are non-blocking: `send` queues (the queue owns the message's descriptors from then
 * on and closes each once its piece was sent — the kernel holds its own references in flight —
 * or at `close`), `flush` writes what the socket takes, `receive` reads what has arrived. Nothing
 * here ever blocks.
 *
 * Bun's event loop cannot watch a raw fd, so each direction has a doorbell the receiver can wait
 * on: after `flush` sent something it calls `ring` — the supervisor writes a data worker's eventfd
 * (its ring has a READ on it) or a byte to the control worker's stdin pipe; a worker writes a
 * byte to its stdout pipe, which the supervisor reads — and the receiver, woken, calls `receive`.
 * A message is always in the socket before its doorbell rings, so a wake-up never finds less
 * than was announced. The owners also read every HEALTH_EVERY_MS without a wake (a safety net)
 * and retry `flush` soon while `queued` > 0 (the socket was full).
 */
import { StoaError, describeError } from "../core/errors.ts";
import { MAX_FDS_PER_MESSAGE, MAX_MESSAGE_BYTES, type OwnedFd, recvFds, sendFds } from "../ffi/fdpass.ts";
import { MAX_CONTROL_FRAME_BYTES } from "./protocol.ts";

/** While pieces wait for room in the socket, the owner flushes again this soon. */
export const STREAM_RETRY_MS = 5;

const LAST = 0;
const MORE = 1;
/** A piece's message bytes: the rest of a SEQPACKET message after the one-byte mark. */
const PIECE_BYTES = MAX_MESSAGE_BYTES - 1;
/** Messages one `receive` call takes before it returns (the caller's loop goes on between). */
const MAX_MESSAGES_PER_RECEIVE = 64;

interface Piece {
  bytes: Uint8Array;
  fds: OwnedFd[];
}

export type StreamState = "open" | "closed" | "broken";

export class MessageStream {
  readonly #sock: OwnedFd;
  readonly #what: string;
  readonly #queue: Piece[] = [];
  /** Pieces of the message being reassembled. */
  #parts: Uint8Array[] = [];
  #partBytes = 0;
  #state: StreamState = "open";
  #problem = "";

  readonly #ring: () => void;

  /**
   * Takes ownership of `sock` (a non-blocking SEQPACKET end); `what` names the peer in errors;
   * `ring` is the peer's doorbell, rung after a `flush` that sent something (see the header).
   */
  constructor(sock: OwnedFd, what: string, ring: () => void = () => {}) {
    this.#sock = sock;
    this.#what = what;
    this.#ring = ring;
  }

  /** "open", "closed" (the peer went away, or `close`) or "broken" (a protocol error: `problem`). */
  get state(): StreamState {
    return this.#state;
  }

  get problem(): string {
    return this.#problem;
  }

  /** Pieces not yet taken by the socket. */
  get queued(): number {
    return this.#queue.length;
  }

  /**
   * Queues one message with `fds` (this stream's from now on, closed once sent) and flushes.
   * Answers false, closing `fds`, when the stream is no longer open.
   */
  send(message: Uint8Array, fds: OwnedFd[] = []): boolean {
    if (message.byteLength === 0 || message.byteLength > MAX_CONTROL_FRAME_BYTES || fds.length > MAX_FDS_PER_MESSAGE) {
      for (const fd of fds) fd.close();
      throw new StoaError("internal", `a stream message is 1..${MAX_CONTROL_FRAME_BYTES} bytes with at most ${MAX_FDS_PER_MESSAGE} descriptors (got ${message.byteLength} bytes, ${fds.length}): split it`);
    }
    if (this.#state !== "open") {
      for (const fd of fds) fd.close();
      return false;
    }
    for (let at = 0; at < message.byteLength; at += PIECE_BYTES) {
      const end = Math.min(at + PIECE_BYTES, message.byteLength);
      const bytes = new Uint8Array(end - at + 1);
      bytes[0] = end === message.byteLength ? LAST : MORE;
      bytes.set(message.subarray(at, end), 1);
      this.#queue.push({ bytes, fds: end === message.byteLength ? fds : [] });
    }
    this.flush();
    return true;
  }

  /** Writes queued pieces until the socket takes no more; answers the pieces sent. */
  flush(): number {
    let sent = 0;
    while (this.#state === "open" && this.#queue.length > 0) {
      const piece = this.#queue[0]!;
      let outcome: ReturnType<typeof sendFds>;
      try {
        outcome = sendFds(this.#sock, piece.bytes, piece.fds);
      } catch (err) {
        this.#fail(`sending to ${this.#what}: ${describeError(err)}`);
        break;
      }
      if (outcome === "again") break;
      if (outcome === "closed") {
        this.#end("closed");
        break;
      }
      this.#queue.shift();
      for (const fd of piece.fds) fd.close();
      sent++;
    }
    if (sent > 0) this.#ring();
    return sent;
  }

  /**
   * Reads the messages that have arrived and hands each whole one to `onMessage` with its
   * descriptors (the callback's from then on). Answers the stream's state afterwards.
   */
  receive(onMessage: (message: Uint8Array, fds: OwnedFd[]) => void): StreamState {
    for (let n = 0; n < MAX_MESSAGES_PER_RECEIVE && this.#state === "open"; ) {
      let got: ReturnType<typeof recvFds>;
      try {
        got = recvFds(this.#sock);
      } catch (err) {
        this.#fail(`reading from ${this.#what}: ${describeError(err)}`);
        break;
      }
      if (got === "again") break;
      if (got === "closed") {
        this.#end("closed");
        break;
      }
      const mark = got.data[0];
      const body = got.data.subarray(1);
      if ((mark !== LAST && mark !== MORE) || (mark === MORE && got.fds.length > 0) || this.#partBytes + body.byteLength > MAX_CONTROL_FRAME_BYTES) {
        for (const fd of got.fds) fd.close();
        this.#fail(
          mark !== LAST && mark !== MORE
            ? `${this.#what} sent a piece marked ${mark} (only 0 and 1 exist)`
            : mark === MORE && got.fds.length > 0
              ? `${this.#what} sent descriptors on a piece that is not its message's last`
              : `${this.#what} sent a message over ${MAX_CONTROL_FRAME_BYTES} bytes`,
        );
        break;
      }
      this.#parts.push(body);
      this.#partBytes += body.byteLength;
      if (mark === MORE) continue;
      const message = this.#parts.length === 1 ? this.#parts[0]! : Buffer.concat(this.#parts);
      this.#parts = [];
      this.#partBytes = 0;
      n++;
      if (message.byteLength === 0) {
        for (const fd of got.fds) fd.close();
        this.#fail(`${this.#what} sent an empty message`);
        break;
      }
      onMessage(message, got.fds);
    }
    return this.#state;
  }

  /** Closes the socket and every queued descriptor. Idempotent. */
  close(): void {
    this.#end("closed");
  }

  #fail(problem: string): void {
    this.#problem = problem;
    this.#end("broken");
  }

  #end(state: "closed" | "broken"): void {
    if (this.#state === "open") this.#state = state;
    for (const piece of this.#queue.splice(0)) for (const fd of piece.fds) fd.close();
    this.#parts = [];
    this.#partBytes = 0;
    this.#sock.close();
  }
}
