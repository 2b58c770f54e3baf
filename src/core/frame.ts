/**
 * Length-delimited framing for byte streams.
 *
 * Wire format: each frame is a 4-byte big-endian unsigned payload length followed by that many
 * payload bytes. Zero-length frames are allowed. The header does not count towards the limit.
 *
 * `FrameDecoder` is a streaming state machine: feed it whatever the socket delivers (a frame
 * split over many reads, a header split in two, many frames in one read) and it returns the
 * complete frames. A length over the limit is rejected as soon as its header is complete,
 * before any of the payload is buffered; a decoder that has rejected a frame stays failed,
 * because after a bad length the stream has no frame boundaries left to trust. Close the
 * connection.
 *
 * Memory: a frame that arrives whole in one chunk is copied once. A split frame is gathered
 * in a buffer that grows geometrically up to the announced length and becomes the returned
 * frame, so each byte is copied a constant number of times however the stream is split, and
 * what we allocate follows the bytes actually received, not the length a peer announces. (A
 * list of chunk copies would cost an object per read: a peer trickling one byte per read could
 * make a 16 MiB frame cost over a gigabyte.)
 */
import { copyBytes, copyInto, joinBytes, putU32BE, uninitializedBytes } from "./bytes.ts";
import { StoaError } from "./errors.ts";

/** Bytes in a frame header: a big-endian u32 payload length. */
export const FRAME_HEADER_BYTES = 4;

/** Default largest frame payload (16 MiB): room for bulk transfers in few frames, while one
 * connection can make us hold at most this much of a frame it has not finished sending. */
export const MAX_FRAME_BYTES = 16 * 1024 * 1024;

/** First allocation for a split frame; it doubles from here, capped at the frame's length. */
const MIN_GATHER_BYTES = 4096;

/** The header is a u32, so no limit above this can be expressed on the wire. */
const LARGEST_EXPRESSIBLE = 0xffff_ffff;

/** Options for framing; `maxBytes` (payload limit) defaults to `MAX_FRAME_BYTES`. */
interface FrameOptions {
  maxBytes?: number;
}

interface DecoderOptions extends FrameOptions {
  /**
   * Each frame comes with its header: the view starts at the 4-byte length, the payload
   * `FRAME_HEADER_BYTES` into it, so a forwarder writes it as it is — header and payload, one
   * write, the frame not built again — and reads the payload at that offset. Off: each frame
   * is the payload alone, its own buffer, offset 0.
   */
  withHeader?: boolean;
  /**
   * A split frame's buffer is its whole length, taken when its header is read, instead of
   * growing with the bytes received: one copy of each byte and one allocation per frame. Only
   * for a peer already authenticated, whose frames `maxBytes` bounds (the framed relay link).
   */
  preallocate?: boolean;
  /**
   * Frames are lent, not given: each is valid only until the next `push` (or until the
   * caller's chunk is reused). A frame whole in one chunk is a view of that chunk (with
   * `withHeader`, when its header is in the same chunk); a split one is gathered into one of
   * two buffers the decoder keeps, whole-frame sized (implies `preallocate`). No allocation
   * and at most one copy per frame: for a forwarder that writes each frame before the next read
   * and copies whatever it must keep (the framed relay link's relay).
   */
  lend?: boolean;
  /**
   * The caller's chunks are fresh and nobody writes them after `push` (a Bun socket's data
   * event): `pushViews` hands out views of them instead of copies — a frame whole in one chunk
   * as one view, a frame that spans chunks as the views of each (`FrameParts`), which keep
   * those chunks alive while they are held (a frame under a quarter of the reads it would pin
   * is copied instead). No copy and no allocation per large frame. A frame split
   * over more than `MAX_FRAME_PARTS` reads is gathered into one buffer of its length instead
   * (one copy; implies `preallocate`): a peer trickling a frame costs no object per read. Only
   * for a peer already authenticated, whose frames `maxBytes` bounds. With `withHeader` a frame
   * starts at its header, as a view when the header lies right before the payload in one read
   * (else the header is a part of its own, a copy of its 4 bytes when they spanned reads).
   * A frame that is its whole chunk is that chunk, no view made: the first view of a fresh Bun
   * read gives it an ArrayBuffer of its own (~0.6 µs here, and garbage), which cost a relayed
   * frame more than the rest of its handling at the relay, where a read is one frame when
   * messages come one at a time.
   */
  views?: boolean;
}

/**
 * Where the message of a frame in parts (from its header on, `withHeader`) begins: the part its
 * first bytes are in, their offset there, and the index of the part after it. The first part
 * is the header alone when the header ended a read (or spanned two).
 */
export function messageStart(frame: FrameParts): { part: Uint8Array | undefined; at: number; next: number } {
  const first = frame.parts[0];
  if (first !== undefined && first.byteLength === FRAME_HEADER_BYTES) return { part: frame.parts[1], at: 0, next: 2 };
  return { part: first, at: FRAME_HEADER_BYTES, next: 1 };
}

/** A frame that spanned reads, as `pushViews` hands it out: views of each read, in order (`byteLength` bytes in all). */
export interface FrameParts {
  readonly parts: readonly Uint8Array[];
  readonly byteLength: number;
}

/** `pushViews` copies a frame whose bytes are less than 1/PINNED_SHARE of the reads its views would keep alive. */
const PINNED_SHARE = 4;
const EMPTY = new Uint8Array(0);

/** `pushViews` gathers a frame into one buffer once it spans more reads than this. */
export const MAX_FRAME_PARTS = 32;

/** Writes `length` as a frame header at `at` of `into`. */
export function writeFrameHeader(into: Uint8Array, at: number, length: number): void {
  putU32BE(into, at, length);
}

/**
 * Returns header + payload in one new buffer (one write, one syscall).
 * Throws `StoaError` "too_large" if the payload is over `maxBytes`: the peer would reject it.
 */
export function encodeFrame(payload: Uint8Array, options: FrameOptions = {}): Uint8Array {
  const maxBytes = checkMaxBytes(options.maxBytes);
  if (payload.byteLength > maxBytes) {
    throw new StoaError(
      "too_large",
      `frame payload of ${payload.byteLength} bytes is over the ${maxBytes}-byte limit; split the data into smaller frames`,
    );
  }
  const frame = new Uint8Array(FRAME_HEADER_BYTES + payload.byteLength);
  new DataView(frame.buffer).setUint32(0, payload.byteLength);
  frame.set(payload, FRAME_HEADER_BYTES);
  return frame;
}

/**
 * Splits a byte stream into frames.
 *
 * `push` copies whatever it keeps, so the caller may reuse `chunk` as soon as `push` returns;
 * returned frames are fresh buffers the caller owns and may keep (with `withHeader`, each
 * with its header in front). When the stream ends,
 * `buffered > 0` means the peer stopped in the middle of a frame.
 * @example
 * const frames = new FrameDecoder({ maxBytes: 1 << 20 });
 * // in the socket's data handler:
 * try {
 *   for (const frame of frames.push(data)) handle(frame);
 * } catch (err) {
 *   socket.end(); // a StoaError: the peer broke the framing, nothing more can be trusted
 * }
 */
export class FrameDecoder {
  readonly #maxBytes: number;
  /** Bytes kept before each payload: the header with `withHeader`, else 0. */
  readonly #room: number;
  readonly #preallocate: boolean;
  readonly #lend: boolean;
  /** With `lend`: the two gather buffers, and which one the next split frame goes into. */
  readonly #spares: Uint8Array[] = [new Uint8Array(0), new Uint8Array(0)];
  #spare = 0;
  readonly #header = new Uint8Array(FRAME_HEADER_BYTES);
  #headerFill = 0;
  /** Payload length of the frame being read, or -1 while reading a header. */
  #length = -1;
  /** The split frame being gathered (after `#room` bytes): `#fill` bytes received, capacity <= `#room + #length` (a lent spare may be larger). */
  #payload: Uint8Array = new Uint8Array(0);
  #fill = 0;
  readonly #views: boolean;
  /** With `views`: the views of the split frame being received (empty while gathering by copy or between frames). */
  #parts: Uint8Array[] = [];
  /** With `views` and `withHeader`: the header of the frame being received when it spanned reads (a copy), else EMPTY. */
  #head: Uint8Array = new Uint8Array(0);
  /** With `views` and `withHeader`: the read the header lies in (null: it is `#head`, a copy), and where. */
  #headChunk: Uint8Array | null = null;
  #headAt = 0;
  #failure: StoaError | null = null;

  constructor(options: DecoderOptions = {}) {
    this.#maxBytes = checkMaxBytes(options.maxBytes);
    this.#room = options.withHeader === true ? FRAME_HEADER_BYTES : 0;
    this.#lend = options.lend === true;
    this.#views = options.views === true;
    if (this.#views && this.#lend) throw new Error("FrameDecoder: views and lend are two ways to hand out frames; choose one");
    this.#preallocate = options.preallocate === true || this.#lend || this.#views;
  }

  /** Bytes received for the incomplete frame, header included. Memory held for it is at most
   * twice this (geometric growth), or 4 KiB, whichever is larger. */
  get buffered(): number {
    return this.#length < 0 ? this.#headerFill : FRAME_HEADER_BYTES + this.#fill;
  }

  /**
   * Feeds bytes from the stream; returns the frames they complete, in order (often none).
   * Throws `StoaError` "too_large" for a length over the limit, then on every later call.
   * Frames completed earlier in the same chunk as a bad header are dropped with it.
   */
  push(chunk: Uint8Array): Uint8Array[] {
    if (this.#failure !== null) throw this.#failure;
    const frames: Uint8Array[] = [];
    let offset = 0;
    /** Where the header of the frame being read began in this chunk; -1: in an earlier one. */
    let headerAt = -1;
    while (offset < chunk.byteLength) {
      if (this.#length < 0) {
        headerAt = this.#headerFill === 0 && chunk.byteLength - offset >= FRAME_HEADER_BYTES ? offset : -1;
        offset = this.#readHeader(chunk, offset);
        if (this.#length === 0) {
          frames.push(new Uint8Array(this.#room));
          this.#length = -1;
        }
        continue;
      }
      const wanted = this.#length - this.#fill;
      const available = chunk.byteLength - offset;
      if (available < wanted) {
        // Copied, not kept as a view: the caller may reuse the chunk once we return.
        this.#reserve(this.#fill + available);
        copyInto(this.#payload, this.#room + this.#fill, chunk.subarray(offset));
        this.#fill += available;
        break;
      }
      if (this.#lend && this.#fill === 0 && (this.#room === 0 || headerAt >= 0)) {
        // Lent: the chunk's own bytes (from its header on, with withHeader).
        frames.push(chunk.subarray(this.#room === 0 ? offset : headerAt, offset + wanted));
        offset += wanted;
        this.#length = -1;
        continue;
      }
      const tail = chunk.subarray(offset, offset + wanted);
      offset += wanted;
      if (this.#fill === 0 && this.#room === 0) {
        // A copy (Buffer's own slice() would return a view of the caller's reusable memory).
        frames.push(copyBytes(tail));
      } else {
        this.#reserve(this.#length);
        copyInto(this.#payload, this.#room + this.#fill, tail);
        if (this.#room !== 0) writeFrameHeader(this.#payload, 0, this.#length);
        const whole = this.#room + this.#length;
        frames.push(this.#payload.byteLength === whole ? this.#payload : this.#payload.subarray(0, whole));
        if (this.#lend) this.#spare ^= 1; // the next split frame goes into the other buffer
        this.#payload = new Uint8Array(0);
        this.#fill = 0;
      }
      this.#length = -1;
    }
    return frames;
  }

  /**
   * With `views`: like `push`, but each frame is a view of `chunk` (a frame whole in it) or
   * `FrameParts` (a frame that spanned reads), nothing copied — see the `views` option. The
   * chunks must stay unwritten while their frames are held.
   */
  pushViews(chunk: Uint8Array): (Uint8Array | FrameParts)[] {
    if (!this.#views) throw new Error("FrameDecoder.pushViews: the decoder was made without views");
    if (this.#failure !== null) throw this.#failure;
    const room = this.#room;
    const frames: (Uint8Array | FrameParts)[] = [];
    let offset = 0;
    while (offset < chunk.byteLength) {
      if (this.#length < 0) {
        const inPlace = this.#headerFill === 0 && chunk.byteLength - offset >= FRAME_HEADER_BYTES;
        const headerAt = offset;
        offset = this.#readHeader(chunk, offset);
        if (this.#length < 0) continue; // the header goes on in the next chunk
        // withHeader: where the header's bytes lie (a copy when they spanned chunks); no view
        // of them is made unless the frame spans reads.
        if (room !== 0) {
          if (inPlace) {
            this.#headChunk = chunk;
            this.#headAt = headerAt;
          } else {
            this.#headChunk = null;
            this.#head = this.#header.slice();
          }
        }
        if (this.#length === 0) {
          frames.push(room === 0 ? new Uint8Array(0) : inPlace ? copyBytes(chunk.subarray(headerAt, offset)) : this.#head);
          this.#dropHead();
          this.#length = -1;
        }
        continue;
      }
      const take = Math.min(this.#length - this.#fill, chunk.byteLength - offset);
      const at = offset;
      offset += take;
      // With the header in front when it lies right before, in the same chunk.
      const joined = room !== 0 && this.#fill === 0 && this.#headChunk === chunk && this.#headAt + room === at;
      const from = joined ? at - room : at;
      if (this.#fill === 0 && take === this.#length) {
        // A frame that is its whole read is that read (no view made: a view of a fresh read
        // gives it an ArrayBuffer of its own, which costs more than the rest of a relayed frame).
        if (from === 0 && offset === chunk.byteLength && (room === 0 || joined)) {
          frames.push(chunk);
          this.#dropHead();
          this.#length = -1;
          continue;
        }
        const view = chunk.subarray(from, offset);
        // A view pins its whole read: a frame that is a small share of it is copied instead, so
        // what a holder counts (payload bytes) bounds what it keeps alive.
        const small = (room + take) * PINNED_SHARE < view.buffer.byteLength;
        if (room !== 0 && !joined && !small) {
          // Its header ended an earlier read: the header (4 bytes of its own, pinning no read),
          // then the payload's view, not a copy of the whole frame; the message starts in the
          // second part (`messageStart`).
          const head = this.#headChunk === null ? this.#head : copyBytes(this.#headView());
          frames.push({ parts: [head, view], byteLength: room + take });
          this.#dropHead();
          this.#length = -1;
          continue;
        }
        const whole = room === 0 || joined ? view : joinBytes([this.#headView(), view], room + take);
        frames.push(small && whole === view ? copyBytes(whole) : whole);
        this.#dropHead();
        this.#length = -1;
        continue;
      }
      const view = chunk.subarray(from, offset);
      if (this.#payload.byteLength > 0) {
        copyInto(this.#payload, room + this.#fill, view);
      } else {
        if (room !== 0 && this.#fill === 0 && !joined) this.#parts.push(this.#headView());
        this.#parts.push(view);
        if (this.#parts.length > MAX_FRAME_PARTS) {
          // Trickled: gathered by copy from here on (its length, checked, taken once).
          this.#payload = joinBytes(this.#parts, room + this.#length);
          this.#parts = [];
        }
      }
      this.#fill += take;
      if (this.#fill < this.#length) continue;
      if (this.#payload.byteLength > 0) frames.push(this.#payload);
      else {
        let pinned = 0;
        for (const part of this.#parts) pinned += part.buffer.byteLength;
        const byteLength = room + this.#length;
        frames.push(byteLength * PINNED_SHARE < pinned ? joinBytes(this.#parts, byteLength) : { parts: this.#parts, byteLength });
      }
      this.#dropHead();
      this.#payload = new Uint8Array(0);
      this.#parts = [];
      this.#fill = 0;
      this.#length = -1;
    }
    return frames;
  }

  /** With `withHeader`: the header of the frame being received, as bytes (a view of its read, or its copy). */
  #headView(): Uint8Array {
    const chunk = this.#headChunk;
    return chunk === null ? this.#head : chunk.subarray(this.#headAt, this.#headAt + FRAME_HEADER_BYTES);
  }

  #dropHead(): void {
    this.#head = EMPTY;
    this.#headChunk = null;
  }

  /**
   * Reads (the rest of) a frame header from `chunk` at `offset`; returns the offset after what
   * it took. Once the header is whole, `#length` is its length (checked against the limit),
   * else it stays -1 and the chunk is used up.
   */
  #readHeader(chunk: Uint8Array, offset: number): number {
    let length: number;
    if (this.#headerFill === 0 && chunk.byteLength - offset >= FRAME_HEADER_BYTES) {
      // The whole header in this chunk (the usual case): read in place, no view.
      length = (chunk[offset] ?? 0) * 0x100_0000 + ((chunk[offset + 1] ?? 0) << 16) + ((chunk[offset + 2] ?? 0) << 8) + (chunk[offset + 3] ?? 0);
      offset += FRAME_HEADER_BYTES;
    } else {
      const take = Math.min(FRAME_HEADER_BYTES - this.#headerFill, chunk.byteLength - offset);
      for (let i = 0; i < take; i++) this.#header[this.#headerFill + i] = chunk[offset + i] ?? 0;
      this.#headerFill += take;
      offset += take;
      if (this.#headerFill < FRAME_HEADER_BYTES) return offset;
      const h = this.#header;
      length = (h[0] ?? 0) * 0x100_0000 + ((h[1] ?? 0) << 16) + ((h[2] ?? 0) << 8) + (h[3] ?? 0);
    }
    if (length > this.#maxBytes) this.#fail(length);
    this.#headerFill = 0;
    this.#length = length;
    return offset;
  }

  /** Grows the gather buffer to hold `needed` payload bytes (after `#room`); capacity never
   * exceeds the frame, so once full the buffer is exactly the frame (with its header room). */
  #reserve(needed: number): void {
    const room = this.#room;
    if (room + needed <= this.#payload.byteLength) return;
    if (this.#lend) {
      let spare = this.#spares[this.#spare] ?? new Uint8Array(0);
      if (spare.byteLength < room + this.#length) {
        spare = uninitializedBytes(room + this.#length);
        this.#spares[this.#spare] = spare;
      }
      this.#payload = spare;
      return;
    }
    const capacity = room + (this.#preallocate ? this.#length : Math.min(this.#length, Math.max(needed, (this.#payload.byteLength - room) * 2, MIN_GATHER_BYTES)));
    // No zero fill: a frame is handed out only once every byte of it has been written.
    const grown = uninitializedBytes(capacity);
    if (this.#fill > 0 || room > 0) copyInto(grown, 0, this.#payload.subarray(0, room + this.#fill));
    this.#payload = grown;
  }

  #fail(length: number): never {
    this.#failure = new StoaError(
      "too_large",
      `peer announced a ${length}-byte frame, over the ${this.#maxBytes}-byte limit; close the connection (raise the limit only if such frames are expected)`,
    );
    throw this.#failure;
  }
}

function checkMaxBytes(maxBytes: number | undefined): number {
  if (maxBytes === undefined) return MAX_FRAME_BYTES;
  if (!Number.isInteger(maxBytes) || maxBytes < 0 || maxBytes > LARGEST_EXPRESSIBLE) {
    throw new StoaError(
      "config",
      `frame size limit must be a whole number of bytes from 0 to ${LARGEST_EXPRESSIBLE} (the 4-byte header's range), got ${maxBytes}`,
    );
  }
  return maxBytes;
}
