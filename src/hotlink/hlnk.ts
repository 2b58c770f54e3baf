/**
 * HLNK frames: the binary framing of hotlink's IPC sockets and direct peer connections
 * (seed 003, "IPC Framing"), byte-compatible with the seed's Go and Rust clients.
 *
 *   offset size field
 *        0    4 magic "HLNK" (48 4c 4e 4b)
 *        4    1 version = 1
 *        5    2 path_len     u16 big-endian, UTF-8 bytes of path
 *        7    2 etag_len     u16 big-endian, UTF-8 bytes of etag
 *        9    4 payload_len  u32 big-endian
 *       13    8 seq          u64 big-endian
 *       21      path, etag, payload
 *
 * Limits (options, defaults below): path ≤ 4096 bytes, etag ≤ 128 bytes, payload ≤ 16 MiB. Path
 * and etag must be valid UTF-8; their meaning (channel paths, seq numbering) belongs to the
 * layer above. An empty path or etag and an empty payload are valid frames.
 *
 * `HlnkDecoder` reads a byte stream. It never throws on input: when the bytes at the head of
 * the stream are not a valid header (bad magic or version, a length over a limit, a path or
 * etag that is not UTF-8) it skips forward to the next "HLNK", counts what it skipped and
 * reports it to `onGarbage`. Each field is checked as soon as its bytes arrive, so garbage is
 * skipped without waiting for more input, and nothing is allocated for a length before it has
 * been checked. A header that passes every check is trusted: a stream that resumes in the
 * middle of a frame can take an "HLNK" inside a payload for a frame start, which is inherent in
 * the format (there is no checksum).
 *
 * Memory per decoder: one head buffer of 21 + path limit + etag limit bytes (allocated on the
 * first split header) and the payload of the frame being received, allocated at its announced
 * length (at most the payload limit) when its header is complete, so each payload byte is
 * copied exactly once — or, with `views`, none: a payload is a view of its chunk, or the views
 * of the chunks it spans (`HlnkFrame.parts`). `decodeHlnkOne` is for message-oriented transports, where one message
 * is one whole frame.
 */
import { Buffer, isUtf8 } from "node:buffer";
import { copyInto, copyRange, joinBytes, putU32BE, uninitializedBytes } from "../core/bytes.ts";
import { StoaError } from "../core/errors.ts";

/** Bytes of the fixed header: magic 4 + version 1 + path_len 2 + etag_len 2 + payload_len 4 + seq 8. */
export const HLNK_HEADER_BYTES = 21;

/** The only version the seed defined; any other value is treated as garbage. */
export const HLNK_VERSION = 1;

/** Default largest path, in UTF-8 bytes (the seed's limit; channel paths are far shorter). */
export const MAX_HLNK_PATH_BYTES = 4096;

/** Default largest etag, in UTF-8 bytes (the seed's limit). */
export const MAX_HLNK_ETAG_BYTES = 128;

/** Default largest payload (16 MiB, the seed's limit): one frame a peer can make us hold. */
export const MAX_HLNK_PAYLOAD_BYTES = 16 * 1024 * 1024;

/** "HLNK" in ASCII. */
const MAGIC = Buffer.from("HLNK", "latin1");
const M0 = 0x48;
const M1 = 0x4c;
const M2 = 0x4e;
const M3 = 0x4b;

const U16_MAX = 0xffff;
const U32_MAX = 0xffff_ffff;
const U64_MAX = 0xffff_ffff_ffff_ffffn;

/** Size limits; each defaults to the constant of the same name. Both ends must agree. */
export interface HlnkLimits {
  /** Largest path in UTF-8 bytes (0–65535, the u16 field's range). */
  maxPathBytes?: number;
  /** Largest etag in UTF-8 bytes (0–65535). */
  maxEtagBytes?: number;
  /** Largest payload in bytes (0–4294967295, the u32 field's range). */
  maxPayloadBytes?: number;
}

/** One decoded frame. `payload` is a fresh buffer the caller owns (see `HlnkDecoder`). */
export interface HlnkFrame {
  path: string;
  etag: string;
  seq: bigint;
  payload: Uint8Array;
  /**
   * Only from a decoder with `views`: a payload that arrived in several chunks, as views of
   * them in order (two or more, `payloadLength` bytes in all). `payload` then joins them when
   * first read (one copy); a consumer that can write the pieces one after another takes `parts`
   * and never reads `payload`, so those bytes are never copied.
   */
  parts?: readonly Uint8Array[];
  /** With `parts` or `src`: the payload's length (the sum of the parts'). */
  payloadLength?: number;
  /**
   * Only from a decoder with `views`: a payload whole in one chunk is that chunk from `srcAt`
   * on (`payloadLength` bytes), and `payload` a view of it made when first read. A consumer
   * that copies the payload copies the range (core/bytes.ts `copyRange`) and never reads
   * `payload`: the first view of a fresh Bun read gives it an ArrayBuffer of its own.
   */
  src?: Uint8Array;
  srcAt?: number;
}

/** A frame's payload length, without joining its parts or making a view of an in-place payload. */
export function hlnkPayloadLength(f: HlnkFrame): number {
  return f.payloadLength ?? f.payload.byteLength;
}

/** What a frame to encode may leave out: the etag defaults to "". */
export interface HlnkFrameInput {
  path: string;
  etag?: string;
  seq: bigint;
  payload: Uint8Array;
}

/** Why bytes were skipped: the first check the would-be header at their start failed. */
export type HlnkGarbageReason =
  | "magic"
  | "version"
  | "path_length"
  | "etag_length"
  | "payload_length"
  | "path_utf8"
  | "etag_utf8";

/** Decoder options: the limits, and a callback for skipped bytes. */
interface HlnkDecoderOptions extends HlnkLimits {
  /**
   * Called for each run of skipped bytes, after the counters are updated. `bytes` is a view
   * into the caller's chunk or the decoder's own buffer, valid only during the call: copy it
   * to keep it. A long run of garbage may be reported in several calls (one per `push` at
   * least). It must not throw: an exception propagates out of `push`, and frames decoded
   * earlier in that call are lost.
   */
  onGarbage?: (bytes: Uint8Array, reason: HlnkGarbageReason) => void;
  /**
   * The caller's chunks are fresh and nobody writes them after `push` (a Bun socket's data
   * event): a frame that lies whole in one chunk gets its payload as a range of it instead of a
   * copy (`src`, `payload` a view of it made when read), and one that spans chunks gets `parts`, views of each (it keeps those chunks alive
   * until it is dropped). Off by default: a payload must not change under its frame.
   */
  views?: boolean;
}

/** A frame whose payload is `parts`; its `payload` is their join, made once when asked for. */
class PartsFrame implements HlnkFrame {
  readonly path: string;
  readonly etag: string;
  readonly seq: bigint;
  readonly parts: readonly Uint8Array[];
  readonly payloadLength: number;
  #joined: Uint8Array | null = null;

  constructor(path: string, etag: string, seq: bigint, parts: readonly Uint8Array[], payloadLength: number) {
    this.path = path;
    this.etag = etag;
    this.seq = seq;
    this.parts = parts;
    this.payloadLength = payloadLength;
  }

  get payload(): Uint8Array {
    this.#joined ??= joinBytes(this.parts, this.payloadLength);
    return this.#joined;
  }
}

/** A frame whose payload lies whole in one chunk (`views`): see `HlnkFrame.src`. */
class InPlaceFrame implements HlnkFrame {
  readonly path: string;
  readonly etag: string;
  readonly seq: bigint;
  readonly src: Uint8Array;
  readonly srcAt: number;
  readonly payloadLength: number;
  #view: Uint8Array | null = null;

  constructor(path: string, etag: string, seq: bigint, src: Uint8Array, srcAt: number, payloadLength: number) {
    this.path = path;
    this.etag = etag;
    this.seq = seq;
    this.src = src;
    this.srcAt = srcAt;
    this.payloadLength = payloadLength;
  }

  get payload(): Uint8Array {
    this.#view ??= this.src.subarray(this.srcAt, this.srcAt + this.payloadLength);
    return this.#view;
  }
}

interface Limits {
  path: number;
  etag: number;
  payload: number;
}

const DEFAULT_LIMITS: Readonly<Limits> = Object.freeze({
  path: MAX_HLNK_PATH_BYTES,
  etag: MAX_HLNK_ETAG_BYTES,
  payload: MAX_HLNK_PAYLOAD_BYTES,
});

/**
 * A buffer `encodeHlnk` may write into instead of allocating a frame each time; it grows to the
 * largest frame seen. The result is then a view of it, valid until the next encode with the
 * same scratch: only for a writer that copies what it keeps (`Outbox.write(…, { copy: true })`).
 */
export interface HlnkScratch {
  buffer: Uint8Array;
}

/**
 * Encodes one frame into one new buffer (a single allocation: one write, one syscall), or into
 * `scratch`.
 * Throws `StoaError` "too_large" for a path, etag or payload over its limit, and "schema" for
 * a path or etag that is not well-formed Unicode (a lone surrogate would silently become
 * U+FFFD) or a seq outside 0..2^64-1.
 * @example
 * socket.write(encodeHlnk({ path: "alice/mpc/run1/0_to_1", seq: 1n, payload }));
 */
export function encodeHlnk(frame: HlnkFrameInput, limits?: HlnkLimits, scratch?: HlnkScratch): Uint8Array {
  const l = resolveLimits(limits);
  const etag = frame.etag ?? "";
  const pathLen = textBytes(frame.path, "path", l.path);
  const etagLen = textBytes(etag, "etag", l.etag);
  checkPayload(frame.payload.byteLength, l.payload);
  checkSeq(frame.seq);
  const headLen = HLNK_HEADER_BYTES + pathLen + etagLen;
  const size = headLen + frame.payload.byteLength;
  let out: Uint8Array;
  if (scratch === undefined) out = new Uint8Array(size);
  else {
    if (scratch.buffer.byteLength < size) scratch.buffer = new Uint8Array(Math.max(size, scratch.buffer.byteLength * 2));
    out = scratch.buffer.subarray(0, size);
  }
  writeHeader(out, pathLen, etagLen, frame.payload.byteLength, frame.seq);
  if (pathLen > 0) encoder.encodeInto(frame.path, out.subarray(HLNK_HEADER_BYTES, HLNK_HEADER_BYTES + pathLen));
  if (etagLen > 0) encoder.encodeInto(etag, out.subarray(HLNK_HEADER_BYTES + pathLen, headLen));
  copyInto(out, headLen, frame.payload);
  return out;
}

/**
 * Frames for one stream of deliveries (a daemon writing to its applications): the same bytes as
 * `encodeHlnk`, into one reused buffer, with the last path's and etag's UTF-8 remembered (a
 * session's frames repeat them) and seq as a number (a session's, 1, 2, …): no per-frame
 * allocation, no text encoding, no BigInt. The result is a view of the buffer, valid until the
 * next `encode`: only for a writer that copies what it keeps.
 */
export class HlnkStreamEncoder {
  #buffer = new Uint8Array(0);
  #path = "";
  #pathBytes = new Uint8Array(0);
  #etag = "";
  #etagBytes = new Uint8Array(0);
  readonly #limits: Limits;

  constructor(limits?: HlnkLimits) {
    this.#limits = resolveLimits(limits);
  }

  /** Throws like `encodeHlnk`; `seq` must be a whole number from 0 to 2^53-1. */
  encode(path: string, etag: string, seq: number, payload: Uint8Array): Uint8Array {
    return this.encodeRange(path, etag, seq, payload, 0, payload.byteLength);
  }

  /** `encode` of the payload `source[start, start + payloadLen)`, copied from there (core/bytes.ts `copyRange`: no view of `source` made). */
  encodeRange(path: string, etag: string, seq: number, source: Uint8Array, start: number, payloadLen: number): Uint8Array {
    this.#texts(path, etag, seq);
    checkPayload(payloadLen, this.#limits.payload);
    const pathLen = this.#pathBytes.byteLength;
    const etagLen = this.#etagBytes.byteLength;
    const headLen = HLNK_HEADER_BYTES + pathLen + etagLen;
    const size = headLen + payloadLen;
    if (this.#buffer.byteLength < size) this.#buffer = new Uint8Array(Math.max(size, this.#buffer.byteLength * 2, 4096));
    const out = this.#buffer;
    writeHeaderBytes(out, pathLen, etagLen, payloadLen, Math.floor(seq / 0x1_0000_0000), seq >>> 0);
    if (pathLen > 0) out.set(this.#pathBytes, HLNK_HEADER_BYTES);
    if (etagLen > 0) out.set(this.#etagBytes, HLNK_HEADER_BYTES + pathLen);
    copyRange(out, headLen, source, start, start + payloadLen);
    return out.subarray(0, size);
  }

  /**
   * Everything before a payload of `payloadLength` bytes (as `hlnkHeader` writes it), in a new
   * buffer of its own (a writer may queue it): for a payload written after it as it is.
   */
  head(path: string, etag: string, seq: number, payloadLength: number): Uint8Array {
    this.#texts(path, etag, seq);
    checkPayload(payloadLength, this.#limits.payload);
    const pathLen = this.#pathBytes.byteLength;
    const etagLen = this.#etagBytes.byteLength;
    const out = new Uint8Array(HLNK_HEADER_BYTES + pathLen + etagLen);
    writeHeaderBytes(out, pathLen, etagLen, payloadLength, Math.floor(seq / 0x1_0000_0000), seq >>> 0);
    if (pathLen > 0) out.set(this.#pathBytes, HLNK_HEADER_BYTES);
    if (etagLen > 0) out.set(this.#etagBytes, HLNK_HEADER_BYTES + pathLen);
    return out;
  }

  /** Checks and remembers the texts' UTF-8 when they changed; checks seq. */
  #texts(path: string, etag: string, seq: number): void {
    if (path !== this.#path || this.#pathBytes.byteLength === 0) {
      const length = textBytes(path, "path", this.#limits.path);
      this.#pathBytes = length === 0 ? new Uint8Array(0) : encoder.encode(path);
      this.#path = path;
    }
    if (etag !== this.#etag) {
      textBytes(etag, "etag", this.#limits.etag);
      this.#etagBytes = encoder.encode(etag);
      this.#etag = etag;
    }
    if (!Number.isSafeInteger(seq) || seq < 0) throw new StoaError("schema", `HLNK seq must be a whole number from 0 to 2^53-1 here, got ${seq}`);
  }
}

/**
 * Encodes everything before the payload (header, path, etag) for a frame whose payload the
 * caller writes itself, so a large payload is never copied into a frame buffer. Encode the
 * path once per session and reuse its bytes. Throws like `encodeHlnk`; path and etag bytes
 * must be valid UTF-8 (the peer's decoder would skip the frame as garbage otherwise).
 * @example
 * const pathBytes = new TextEncoder().encode(channel); // once
 * const head = hlnkHeader(pathBytes, new Uint8Array(0), chunk.byteLength, seq);
 * writer.write(head); writer.write(chunk);
 */
export function hlnkHeader(
  pathBytes: Uint8Array,
  etagBytes: Uint8Array,
  payloadLength: number,
  seq: bigint,
  limits?: HlnkLimits,
): Uint8Array {
  const l = resolveLimits(limits);
  checkTextBytes(pathBytes, "path", l.path);
  checkTextBytes(etagBytes, "etag", l.etag);
  if (!Number.isInteger(payloadLength) || payloadLength < 0) {
    throw new StoaError("schema", `HLNK payload length must be a whole number of bytes, got ${payloadLength}`);
  }
  checkPayload(payloadLength, l.payload);
  checkSeq(seq);
  const out = new Uint8Array(HLNK_HEADER_BYTES + pathBytes.byteLength + etagBytes.byteLength);
  writeHeader(out, pathBytes.byteLength, etagBytes.byteLength, payloadLength, seq);
  out.set(pathBytes, HLNK_HEADER_BYTES);
  out.set(etagBytes, HLNK_HEADER_BYTES + pathBytes.byteLength);
  return out;
}

/**
 * Decodes a buffer that must hold exactly one frame (a WebSocket or data-channel message).
 * The payload is copied: the result never aliases `bytes`. Throws `StoaError` "too_large" for
 * a length over a limit, "decode" for anything else that is not exactly one valid frame.
 */
export function decodeHlnkOne(bytes: Uint8Array, limits?: HlnkLimits): HlnkFrame {
  const l = resolveLimits(limits);
  const buf = plainView(bytes);
  const head = oneShotHead;
  const state = readHead(buf, 0, buf.byteLength, l, oneShotTexts, head);
  if (state > 0) {
    throw new StoaError(
      "decode",
      `HLNK frame truncated: ${buf.byteLength} bytes, its header needs ${state}; send one whole frame per message`,
    );
  }
  if (state < 0) {
    const tooLarge = head.reason === "path_length" || head.reason === "etag_length" || head.reason === "payload_length";
    throw new StoaError(tooLarge ? "too_large" : "decode", `not an HLNK frame: ${describeReason(head.reason, l)}`);
  }
  const total = head.headLen + head.payloadLen;
  if (buf.byteLength !== total) {
    const what = buf.byteLength < total ? "truncated" : `followed by ${buf.byteLength - total} extra bytes`;
    throw new StoaError(
      "decode",
      `HLNK frame ${what}: its header announces ${total} bytes, the message has ${buf.byteLength}; send one whole frame per message`,
    );
  }
  return { path: head.path, etag: head.etag, seq: head.seq, payload: buf.slice(head.headLen, total) };
}

/**
 * Splits a byte stream into HLNK frames, skipping garbage.
 *
 * Aliasing: `push` copies whatever it keeps, so the caller may reuse `chunk` as soon as `push`
 * returns. Every returned `payload` is a new Uint8Array over its own ArrayBuffer, shared with
 * nothing (not the chunk, not the decoder, not another frame): keep it, hand it to an async
 * send, or transfer it. Only the `onGarbage` view aliases the chunk or the decoder's buffer.
 * @example
 * const decoder = new HlnkDecoder({ onGarbage: (bytes, reason) => log.warn("hlnk garbage", { bytes: bytes.length, reason }) });
 * // in the socket's data handler:
 * for (const frame of decoder.push(data)) send(frame.path, frame.seq, frame.payload);
 */
export class HlnkDecoder {
  readonly #limits: Limits;
  readonly #onGarbage: HlnkDecoderOptions["onGarbage"];
  readonly #texts = new Texts();
  /** The header being checked; while a payload is gathered, the header of that frame. */
  readonly #head: Head = newHead();
  /** Bytes of a would-be frame that did not fit in one chunk: from its first byte up to at
   * most its whole head (21 + path + etag). Bytes after the first in here can also be
   * frames, when an earlier candidate in the buffer turns out to be garbage. */
  #stash: Uint8Array | null = null;
  #stashFill = 0;
  /** The payload of the frame being received, allocated at its full length. */
  #payload: Uint8Array | null = null;
  #payloadFill = 0;
  /** With `views`, instead of `#payload`: the views of the chunks that hold the payload so far. */
  #parts: Uint8Array[] | null = null;
  #skipped = 0;
  #resyncs = 0;
  #frames = 0;
  #inGarbage = false;
  readonly #views: boolean;

  constructor(options: HlnkDecoderOptions = {}) {
    this.#limits = resolveLimits(options);
    this.#onGarbage = options.onGarbage;
    this.#views = options.views === true;
  }

  /** Bytes skipped as garbage so far. */
  get skipped(): number {
    return this.#skipped;
  }

  /** Times the decoder lost sync: runs of garbage, each ended by a valid header. */
  get resyncs(): number {
    return this.#resyncs;
  }

  /** Frames decoded so far. */
  get frames(): number {
    return this.#frames;
  }

  /** Bytes received for an incomplete frame (or a possible magic at the end of garbage).
   * When the stream ends, `buffered > 0` means it stopped in the middle of a frame. */
  get buffered(): number {
    if (this.#payload !== null || this.#parts !== null) return this.#head.headLen + this.#payloadFill;
    return this.#stashFill;
  }

  /** Feeds bytes from the stream; returns the frames they complete, in order. Never throws
   * on any input (only an exception from `onGarbage` can escape). */
  push(chunk: Uint8Array): HlnkFrame[] {
    const frames: HlnkFrame[] = [];
    // With views the payloads are views of the chunk anyway (`subarray` is a view for a Buffer
    // too); only copies must not come from Buffer's aliasing `slice`.
    const buf = this.#views ? chunk : plainView(chunk);
    const end = buf.byteLength;
    let pos = 0;
    while (pos < end) {
      if (this.#parts !== null) {
        pos = this.#fillParts(buf, pos, end, frames);
      } else if (this.#payload !== null) {
        pos = this.#fillPayload(buf, pos, end, frames);
      } else if (this.#stashFill > 0) {
        pos = this.#fillStash(buf, pos, end, frames);
      } else {
        pos = this.#decodeFrom(buf, pos, end, frames);
      }
    }
    // Bytes pushed into the stash above may hold whole frames or garbage; settle them now,
    // so a complete frame is never held back waiting for the next chunk.
    while (this.#stashFill > 0 && this.#payload === null && this.#parts === null && this.#settleStash(frames)) {
      // each round consumes bytes from the stash
    }
    return frames;
  }

  /** The normal case: frames read straight from the chunk. */
  #decodeFrom(buf: Uint8Array, pos: number, end: number, frames: HlnkFrame[]): number {
    const head = this.#head;
    const state = readHead(buf, pos, end, this.#limits, this.#texts, head);
    if (state === 0) {
      this.#inGarbage = false;
      const start = pos + head.headLen;
      const stop = start + head.payloadLen;
      if (stop <= end) {
        if (this.#views) {
          this.#frames++;
          frames.push(new InPlaceFrame(head.path, head.etag, head.seq, buf, start, head.payloadLen));
        } else {
          frames.push(this.#frame(buf.slice(start, stop)));
        }
        return stop;
      }
      if (this.#views) {
        this.#beginParts(buf.subarray(start, end));
        return end;
      }
      this.#beginPayload().set(buf.subarray(start, end));
      this.#payloadFill = end - start;
      return end;
    }
    if (state > 0) {
      this.#keep(buf, pos, end);
      return end;
    }
    const next = findMagic(buf, pos + 1, end);
    if (next >= 0) {
      this.#garbage(buf, pos, next, head.reason);
      return next;
    }
    const keep = magicPrefixAtEnd(buf, pos + 1, end);
    this.#garbage(buf, pos, end - keep, head.reason);
    if (keep > 0) this.#keep(buf, end - keep, end);
    return end;
  }

  /** Adds bytes from the chunk to the stash, as many as its candidate still needs. */
  #fillStash(buf: Uint8Array, pos: number, end: number, frames: HlnkFrame[]): number {
    const stash = this.#stash as Uint8Array;
    const state = readHead(stash, 0, this.#stashFill, this.#limits, this.#texts, this.#head);
    if (state > 0) {
      const take = Math.min(state - this.#stashFill, end - pos);
      stash.set(buf.subarray(pos, pos + take), this.#stashFill);
      this.#stashFill += take;
      return pos + take;
    }
    this.#settleStash(frames);
    return pos;
  }

  /** Resolves the candidate at the start of the stash when its fate is known: a frame (whole,
   * or with its payload still to come) or garbage. Returns false if it needs more bytes. */
  #settleStash(frames: HlnkFrame[]): boolean {
    const stash = this.#stash as Uint8Array;
    const fill = this.#stashFill;
    const head = this.#head;
    const state = readHead(stash, 0, fill, this.#limits, this.#texts, head);
    if (state > 0) return false;
    if (state === 0) {
      this.#inGarbage = false;
      const stop = head.headLen + head.payloadLen;
      if (stop <= fill) {
        frames.push(this.#frame(stash.slice(head.headLen, stop)));
        this.#consumeStash(stop);
        return true;
      }
      // The stash is the decoder's own: its bytes are copied (fewer than a head's) either way.
      if (this.#views) this.#beginParts(stash.slice(head.headLen, fill));
      else {
        this.#beginPayload().set(stash.subarray(head.headLen, fill));
        this.#payloadFill = fill - head.headLen;
      }
      this.#stashFill = 0;
      return true;
    }
    const next = findMagic(stash, 1, fill);
    const skip = next >= 0 ? next : fill - magicPrefixAtEnd(stash, 1, fill);
    this.#garbage(stash, 0, skip, head.reason);
    this.#consumeStash(skip);
    return true;
  }

  #consumeStash(count: number): void {
    const stash = this.#stash as Uint8Array;
    stash.copyWithin(0, count, this.#stashFill);
    this.#stashFill -= count;
  }

  /** Stashes the tail of a chunk: fewer bytes than the candidate's head, so it fits. */
  #keep(buf: Uint8Array, from: number, end: number): void {
    this.#stash ??= new Uint8Array(HLNK_HEADER_BYTES + this.#limits.path + this.#limits.etag);
    this.#stash.set(buf.subarray(from, end), this.#stashFill);
    this.#stashFill += end - from;
  }

  /** Allocates the payload of the frame whose head was just read, at its checked length. */
  #beginPayload(): Uint8Array {
    // Not zero-filled: the frame is handed out only once every byte was written.
    const payload = uninitializedBytes(this.#head.payloadLen);
    this.#payload = payload;
    this.#payloadFill = 0;
    return payload;
  }

  /** Starts gathering a payload as views (`first`: what the chunk with its head held, maybe none). */
  #beginParts(first: Uint8Array): void {
    this.#parts = first.byteLength > 0 ? [first] : [];
    this.#payloadFill = first.byteLength;
  }

  #fillParts(buf: Uint8Array, pos: number, end: number, frames: HlnkFrame[]): number {
    const parts = this.#parts as Uint8Array[];
    const length = this.#head.payloadLen;
    const take = Math.min(length - this.#payloadFill, end - pos);
    parts.push(buf.subarray(pos, pos + take));
    this.#payloadFill += take;
    if (this.#payloadFill === length) {
      this.#parts = null;
      this.#payloadFill = 0;
      if (parts.length === 1) {
        frames.push(this.#frame(parts[0] as Uint8Array));
      } else {
        this.#frames++;
        const head = this.#head;
        frames.push(new PartsFrame(head.path, head.etag, head.seq, parts, length));
      }
    }
    return pos + take;
  }

  #fillPayload(buf: Uint8Array, pos: number, end: number, frames: HlnkFrame[]): number {
    const payload = this.#payload as Uint8Array;
    const take = Math.min(payload.byteLength - this.#payloadFill, end - pos);
    payload.set(buf.subarray(pos, pos + take), this.#payloadFill);
    this.#payloadFill += take;
    if (this.#payloadFill === payload.byteLength) {
      this.#payload = null;
      this.#payloadFill = 0;
      frames.push(this.#frame(payload));
    }
    return pos + take;
  }

  #frame(payload: Uint8Array): HlnkFrame {
    this.#frames++;
    const head = this.#head;
    return { path: head.path, etag: head.etag, seq: head.seq, payload };
  }

  #garbage(buf: Uint8Array, from: number, to: number, reason: HlnkGarbageReason): void {
    if (to <= from) return;
    this.#skipped += to - from;
    if (!this.#inGarbage) {
      this.#inGarbage = true;
      this.#resyncs++;
    }
    this.#onGarbage?.(buf.subarray(from, to), reason);
  }
}

/** What `readHead` found out about a would-be frame. */
interface Head {
  headLen: number;
  payloadLen: number;
  seq: bigint;
  path: string;
  etag: string;
  reason: HlnkGarbageReason;
}

function newHead(): Head {
  return { headLen: 0, payloadLen: 0, seq: 0n, path: "", etag: "", reason: "magic" };
}

const oneShotHead = newHead();

/**
 * Checks the would-be frame at `buf[pos..end)` field by field, as far as the bytes go.
 * Returns 0 when its head (header, path, etag) is complete and valid (`head` filled in), -1
 * when it is not a frame (`head.reason` says why), or the number of bytes from `pos` the head
 * needs before more can be said.
 */
function readHead(buf: Uint8Array, pos: number, end: number, limits: Limits, texts: Texts, head: Head): number {
  const avail = end - pos;
  if (avail >= HLNK_HEADER_BYTES) {
    if (buf[pos] !== M0 || buf[pos + 1] !== M1 || buf[pos + 2] !== M2 || buf[pos + 3] !== M3) return bad(head, "magic");
  } else {
    return readPartialHeader(buf, pos, avail, limits, head);
  }
  if (buf[pos + 4] !== HLNK_VERSION) return bad(head, "version");
  const pathLen = u16(buf, pos + 5);
  if (pathLen > limits.path) return bad(head, "path_length");
  const etagLen = u16(buf, pos + 7);
  if (etagLen > limits.etag) return bad(head, "etag_length");
  const payloadLen = u32(buf, pos + 9);
  if (payloadLen > limits.payload) return bad(head, "payload_length");
  const headLen = HLNK_HEADER_BYTES + pathLen + etagLen;
  if (avail < headLen) return headLen;
  const path = texts.path.decode(buf, pos + HLNK_HEADER_BYTES, pathLen);
  if (path === null) return bad(head, "path_utf8");
  const etag = texts.etag.decode(buf, pos + HLNK_HEADER_BYTES + pathLen, etagLen);
  if (etag === null) return bad(head, "etag_utf8");
  head.headLen = headLen;
  head.payloadLen = payloadLen;
  head.seq = seqOf(u32(buf, pos + 13), u32(buf, pos + 17));
  head.path = path;
  head.etag = etag;
  return 0;
}

/** The fields of a header that has not fully arrived, checked as far as they go. */
function readPartialHeader(buf: Uint8Array, pos: number, avail: number, limits: Limits, head: Head): number {
  const magicBytes = Math.min(avail, 4);
  for (let i = 0; i < magicBytes; i++) {
    if (buf[pos + i] !== MAGIC[i]) return bad(head, "magic");
  }
  if (avail > 4 && buf[pos + 4] !== HLNK_VERSION) return bad(head, "version");
  if (avail >= 7 && u16(buf, pos + 5) > limits.path) return bad(head, "path_length");
  if (avail >= 9 && u16(buf, pos + 7) > limits.etag) return bad(head, "etag_length");
  if (avail >= 13 && u32(buf, pos + 9) > limits.payload) return bad(head, "payload_length");
  return HLNK_HEADER_BYTES;
}

/** The 64-bit seq from its halves: one BigInt for the common small values, none for 0. */
function seqOf(hi: number, lo: number): bigint {
  if (hi === 0) return lo === 0 ? 0n : BigInt(lo);
  return (BigInt(hi) << 32n) | BigInt(lo);
}

function bad(head: Head, reason: HlnkGarbageReason): -1 {
  head.reason = reason;
  return -1;
}

function u16(buf: Uint8Array, at: number): number {
  return ((buf[at] ?? 0) << 8) | (buf[at + 1] ?? 0);
}

function u32(buf: Uint8Array, at: number): number {
  return (buf[at] ?? 0) * 0x100_0000 + (((buf[at + 1] ?? 0) << 16) | ((buf[at + 2] ?? 0) << 8) | (buf[at + 3] ?? 0));
}

/** Index of the first "HLNK" wholly inside `buf[from..end)`, or -1. */
function findMagic(buf: Uint8Array, from: number, end: number): number {
  if (end - from < MAGIC.byteLength) return -1;
  const at = Buffer.from(buf.buffer, buf.byteOffset + from, end - from).indexOf(MAGIC);
  return at < 0 ? -1 : from + at;
}

/** How many bytes at the end of `buf[from..end)` could be the start of a magic split across
 * chunks ("H", "HL" or "HLN"): those must wait for the next chunk, not be skipped. */
function magicPrefixAtEnd(buf: Uint8Array, from: number, end: number): number {
  for (let k = Math.min(MAGIC.byteLength - 1, end - from); k > 0; k--) {
    let match = true;
    for (let i = 0; i < k; i++) {
      if (buf[end - k + i] !== MAGIC[i]) {
        match = false;
        break;
      }
    }
    if (match) return k;
  }
  return 0;
}

const encoder = new TextEncoder();
// fatal: invalid UTF-8 is garbage, not U+FFFD; ignoreBOM: a leading U+FEFF is part of the path.
const fatalDecoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** Paths longer than this are decoded every time rather than compared with the last one. */
const CACHED_TEXT_BYTES = 256;

/**
 * Remembers the last string decoded, because frames on one socket nearly always repeat the
 * path and etag: comparing a few bytes is cheaper than decoding and validating them again.
 */
class TextCache {
  #bytes: Uint8Array | null = null;
  #length = -1;
  #text = "";

  /** The string, or null if the bytes are not valid UTF-8. */
  decode(buf: Uint8Array, from: number, length: number): string | null {
    if (length === 0) return "";
    const cached = this.#bytes;
    if (cached !== null && length === this.#length) {
      let same = true;
      for (let i = 0; i < length; i++) {
        if (buf[from + i] !== cached[i]) {
          same = false;
          break;
        }
      }
      if (same) return this.#text;
    }
    const bytes = buf.subarray(from, from + length);
    let text: string;
    try {
      text = fatalDecoder.decode(bytes);
    } catch {
      return null;
    }
    if (length <= CACHED_TEXT_BYTES) {
      this.#bytes ??= new Uint8Array(CACHED_TEXT_BYTES);
      this.#bytes.set(bytes);
      this.#length = length;
      this.#text = text;
    }
    return text;
  }
}

class Texts {
  readonly path = new TextCache();
  readonly etag = new TextCache();
}

const oneShotTexts = new Texts();

/** A plain Uint8Array view of the bytes: `slice` of a Buffer returns a view, not a copy, and
 * payloads must never alias the caller's buffer. */
function plainView(bytes: Uint8Array): Uint8Array {
  return Object.getPrototypeOf(bytes) === Uint8Array.prototype
    ? bytes
    : new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function writeHeader(out: Uint8Array, pathLen: number, etagLen: number, payloadLen: number, seq: bigint): void {
  const small = seq <= 0xffff_ffffn;
  writeHeaderBytes(out, pathLen, etagLen, payloadLen, small ? 0 : Number(seq >> 32n), small ? Number(seq) : Number(seq & 0xffff_ffffn));
}

/** The 21-byte header, byte by byte (no DataView: one fewer object and buffer lookup per frame). */
function writeHeaderBytes(out: Uint8Array, pathLen: number, etagLen: number, payloadLen: number, seqHi: number, seqLo: number): void {
  out[0] = M0;
  out[1] = M1;
  out[2] = M2;
  out[3] = M3;
  out[4] = HLNK_VERSION;
  out[5] = pathLen >>> 8;
  out[6] = pathLen & 0xff;
  out[7] = etagLen >>> 8;
  out[8] = etagLen & 0xff;
  putU32BE(out, 9, payloadLen);
  putU32BE(out, 13, seqHi);
  putU32BE(out, 17, seqLo);
}

function textBytes(text: string, what: "path" | "etag", limit: number): number {
  if (typeof text !== "string" || !text.isWellFormed()) {
    throw new StoaError("schema", `HLNK ${what} must be a well-formed Unicode string (no unpaired surrogates)`);
  }
  const length = Buffer.byteLength(text, "utf8");
  if (length > limit) {
    throw new StoaError("too_large", `HLNK ${what} is ${length} bytes of UTF-8, over the ${limit}-byte limit; use a shorter ${what}`);
  }
  return length;
}

function checkTextBytes(bytes: Uint8Array, what: "path" | "etag", limit: number): void {
  if (bytes.byteLength > limit) {
    throw new StoaError("too_large", `HLNK ${what} is ${bytes.byteLength} bytes, over the ${limit}-byte limit; use a shorter ${what}`);
  }
  if (!isUtf8(bytes)) {
    throw new StoaError("schema", `HLNK ${what} bytes are not valid UTF-8; encode the ${what} with TextEncoder`);
  }
}

function checkPayload(length: number, limit: number): void {
  if (length > limit) {
    throw new StoaError(
      "too_large",
      `HLNK payload of ${length} bytes is over the ${limit}-byte limit; split the data into smaller frames`,
    );
  }
}

function checkSeq(seq: bigint): void {
  if (typeof seq !== "bigint" || seq < 0n || seq > U64_MAX) {
    throw new StoaError("schema", `HLNK seq must be a bigint from 0 to 2^64-1, got ${String(seq)}`);
  }
}

function describeReason(reason: HlnkGarbageReason, limits: Limits): string {
  switch (reason) {
    case "magic":
      return 'it does not start with "HLNK"';
    case "version":
      return `unsupported version (only ${HLNK_VERSION} exists)`;
    case "path_length":
      return `path length over the ${limits.path}-byte limit`;
    case "etag_length":
      return `etag length over the ${limits.etag}-byte limit`;
    case "payload_length":
      return `payload length over the ${limits.payload}-byte limit`;
    case "path_utf8":
      return "path is not valid UTF-8";
    case "etag_utf8":
      return "etag is not valid UTF-8";
  }
}

function resolveLimits(limits: HlnkLimits | undefined): Limits {
  if (
    limits === undefined ||
    (limits.maxPathBytes === undefined && limits.maxEtagBytes === undefined && limits.maxPayloadBytes === undefined)
  ) {
    return DEFAULT_LIMITS;
  }
  return {
    path: checkLimit(limits.maxPathBytes, MAX_HLNK_PATH_BYTES, U16_MAX, "path"),
    etag: checkLimit(limits.maxEtagBytes, MAX_HLNK_ETAG_BYTES, U16_MAX, "etag"),
    payload: checkLimit(limits.maxPayloadBytes, MAX_HLNK_PAYLOAD_BYTES, U32_MAX, "payload"),
  };
}

function checkLimit(value: number | undefined, fallback: number, largest: number, what: string): number {
  if (value === undefined) return fallback;
  if (!Number.isInteger(value) || value < 0 || value > largest) {
    throw new StoaError(
      "config",
      `HLNK ${what} limit must be a whole number of bytes from 0 to ${largest} (the header field's range), got ${value}`,
    );
  }
  return value;
}
