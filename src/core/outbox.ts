/**
 * Writing to a Bun socket without losing bytes: `socket.write()` may take fewer bytes than
 * given and drops the rest, so what it does not take is queued here and written on `drain`.
 * Chunks are queued as views, not copies: pass buffers nobody reuses.
 *
 * @example
 * const out = new Outbox(socket);            // in the socket's drain handler: out.flush()
 * out.write(frame);
 * if (out.queued > HIGH_WATER) source.pause(); // and resume once it is low again
 */
export class Outbox {
  readonly #sock: { write(data: Uint8Array): number };
  #queue: Uint8Array[] = [];
  #queued = 0;

  constructor(sock: { write(data: Uint8Array): number }) {
    this.#sock = sock;
  }

  /** Bytes waiting for the socket. */
  get queued(): number {
    return this.#queued;
  }

  /** Writes `bytes` after whatever is queued. */
  write(bytes: Uint8Array): void {
    if (this.#queued === 0) {
      const n = Math.max(0, this.#sock.write(bytes));
      if (n === bytes.byteLength) return;
      bytes = bytes.subarray(n);
    }
    this.#queue.push(bytes);
    this.#queued += bytes.byteLength;
  }

  /** Writes what the socket takes of the queue; call it from the socket's drain handler. */
  flush(): void {
    while (this.#queue.length > 0) {
      const head = this.#queue[0];
      if (head === undefined) break;
      const n = Math.max(0, this.#sock.write(head));
      this.#queued -= n;
      if (n < head.byteLength) {
        this.#queue[0] = head.subarray(n);
        return;
      }
      this.#queue.shift();
    }
  }

  /** Drops everything queued (the socket is gone). */
  clear(): void {
    this.#queue = [];
    this.#queued = 0;
  }
}
