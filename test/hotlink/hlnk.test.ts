import { describe, expect, test } from "bun:test";
import { StoaError } from "../../src/core/errors.ts";
import {
  HLNK_HEADER_BYTES,
  HLNK_VERSION,
  type HlnkFrame,
  type HlnkFrameInput,
  type HlnkGarbageReason,
  HlnkDecoder,
  HlnkStreamEncoder,
  MAX_HLNK_ETAG_BYTES,
  MAX_HLNK_PATH_BYTES,
  MAX_HLNK_PAYLOAD_BYTES,
  decodeHlnkOne,
  encodeHlnk,
  hlnkHeader,
} from "../../src/hotlink/hlnk.ts";
import { type Prng, fuzzSeed, prng } from "../helpers/prng.ts";

/** The random-input tests: up to about 0.8 s each on an idle machine, several times that on a loaded 2-core one (Bun's default is 5 s). */
const RANDOM_ROUNDS_TIMEOUT_MS = 20_000;

const utf8 = new TextEncoder();
const MAGIC = utf8.encode("HLNK");

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.byteLength;
  }
  return out;
}

/** A raw 21-byte header with any field values, valid or not. */
function rawHeader(fields: { version?: number; pathLen?: number; etagLen?: number; payloadLen?: number; seq?: bigint }): Uint8Array {
  const out = new Uint8Array(HLNK_HEADER_BYTES);
  out.set(MAGIC);
  const view = new DataView(out.buffer);
  view.setUint8(4, fields.version ?? HLNK_VERSION);
  view.setUint16(5, fields.pathLen ?? 0);
  view.setUint16(7, fields.etagLen ?? 0);
  view.setUint32(9, fields.payloadLen ?? 0);
  view.setBigUint64(13, fields.seq ?? 0n);
  return out;
}

function expected(input: HlnkFrameInput): HlnkFrame {
  return { path: input.path, etag: input.etag ?? "", seq: input.seq, payload: input.payload };
}

function randomFrame(rng: Prng, i: number): HlnkFrameInput {
  const size = rng.pick([0, 1, rng.int(64), rng.int(2000), rng.int(70_000)]);
  return {
    path: rng.pick(["alice/mpc/run1/0_to_1", "bob/x", "", "ünï/cödé/🚀", `p/${i}`]),
    etag: rng.pick([undefined, "", "v1", "e".repeat(MAX_HLNK_ETAG_BYTES)]),
    seq: BigInt(i + 1),
    payload: rng.bytes(size),
  };
}

/** Random cut points: single bytes, small pieces, larger pieces, or the whole rest. */
function split(rng: Prng, data: Uint8Array): Uint8Array[] {
  const chunks: Uint8Array[] = [];
  for (let at = 0; at < data.length; ) {
    const n = rng.pick([1, 1 + rng.int(8), 1 + rng.int(64), 1 + rng.int(5000), data.length]);
    chunks.push(data.subarray(at, at + n));
    at += n;
  }
  return chunks;
}

/** Garbage that holds no "HLNK" (nor does it form one with a frame that follows: the magic
 * has no border), biased towards bytes that look like the start of a header. */
function garbage(rng: Prng): Uint8Array {
  const length = 1 + rng.pick([rng.int(4), rng.int(40), rng.int(3000)]);
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) {
    out[i] = rng.int(3) === 0 ? rng.pick([0x48, 0x4c, 0x4e, 0x4b, 0x01, 0x00]) : rng.next() & 0xff;
  }
  // Break every "HLNK" by changing its "K".
  for (let at = Buffer.from(out).indexOf("HLNK"); at >= 0; at = Buffer.from(out).indexOf("HLNK")) out[at + 3] = 0x4a;
  return out;
}

function errorOf(fn: () => unknown): StoaError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(StoaError);
    return err as StoaError;
  }
  throw new Error("expected a StoaError");
}

describe("encoding", () => {
  test("into a scratch buffer: the same bytes as a fresh frame, in one buffer grown to the largest frame and reused", () => {
    const scratch = { buffer: new Uint8Array(0) };
    const big = { path: "a/b", etag: "e", seq: 7n, payload: new Uint8Array(5000).fill(3) };
    const small = { path: "a", seq: 8n, payload: Uint8Array.of(1, 2) };
    const first = encodeHlnk(big, undefined, scratch);
    expect(Array.from(first)).toEqual(Array.from(encodeHlnk(big)));
    const grown = scratch.buffer;
    expect(grown.byteLength).toBeGreaterThanOrEqual(first.byteLength);
    const second = encodeHlnk(small, undefined, scratch);
    expect(Array.from(second)).toEqual(Array.from(encodeHlnk(small)));
    expect(scratch.buffer).toBe(grown);
    expect(second.buffer).toBe(first.buffer); // a view of the same memory: valid until the next encode
    expect(decodeHlnkOne(second).seq).toBe(8n);
  });

  test("writes the seed's 21-byte big-endian header, then path, etag and payload", () => {
    const frame = encodeHlnk({ path: "a/b", etag: "e1", seq: 0x0102030405060708n, payload: Uint8Array.of(9, 8, 7) });
    expect(Array.from(frame)).toEqual([
      0x48, 0x4c, 0x4e, 0x4b, 1, 0, 3, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6, 7, 8, 0x61, 0x2f, 0x62, 0x65, 0x31, 9, 8, 7,
    ]);
  });

  test("round-trips empty payloads, empty paths and etags, and multi-byte UTF-8", () => {
    const inputs: HlnkFrameInput[] = [
      { path: "", seq: 1n, payload: new Uint8Array(0) },
      { path: "alice/mpc/run1/0_to_1", etag: "", seq: 2n, payload: new Uint8Array(0) },
      { path: "ünïcödé/🚀", etag: "ß", seq: 3n, payload: Uint8Array.of(0) },
      { path: "\uFEFFbom/first", etag: "\uFEFF", seq: 4n, payload: Uint8Array.of(1, 2) },
    ];
    for (const input of inputs) {
      expect(decodeHlnkOne(encodeHlnk(input))).toEqual(expected(input));
      expect(new HlnkDecoder().push(encodeHlnk(input))).toEqual([expected(input)]);
    }
  });

  test("round-trips seq over the whole u64 range", () => {
    for (const seq of [0n, 1n, 0xffff_ffffn, 0x1_0000_0000n, 2n ** 53n + 1n, 2n ** 63n, 2n ** 64n - 1n]) {
      expect(decodeHlnkOne(encodeHlnk({ path: "p", seq, payload: new Uint8Array(0) })).seq).toBe(seq);
    }
  });

  test("round-trips a path, etag and payload each at its size limit", () => {
    const input: HlnkFrameInput = {
      path: "p".repeat(MAX_HLNK_PATH_BYTES),
      etag: "e".repeat(MAX_HLNK_ETAG_BYTES),
      seq: 5n,
      payload: new Uint8Array(MAX_HLNK_PAYLOAD_BYTES).fill(0xab),
    };
    const bytes = encodeHlnk(input);
    expect(bytes.byteLength).toBe(HLNK_HEADER_BYTES + MAX_HLNK_PATH_BYTES + MAX_HLNK_ETAG_BYTES + MAX_HLNK_PAYLOAD_BYTES);
    expect(decodeHlnkOne(bytes)).toEqual(expected(input));
    const decoder = new HlnkDecoder();
    const frames: HlnkFrame[] = [];
    for (let at = 0; at < bytes.length; at += 65_536) frames.push(...decoder.push(bytes.subarray(at, at + 65_536)));
    expect(frames).toEqual([expected(input)]);
    expect(decoder.skipped).toBe(0);
  });

  test("refuses a path, etag or payload one byte over its limit", () => {
    const base = { path: "p", seq: 1n, payload: new Uint8Array(0) };
    expect(errorOf(() => encodeHlnk({ ...base, path: "p".repeat(MAX_HLNK_PATH_BYTES + 1) })).code).toBe("too_large");
    // The limit is in UTF-8 bytes: 2049 two-byte characters are 4098 bytes.
    expect(errorOf(() => encodeHlnk({ ...base, path: "ß".repeat(2049) })).code).toBe("too_large");
    expect(errorOf(() => encodeHlnk({ ...base, etag: "e".repeat(MAX_HLNK_ETAG_BYTES + 1) })).code).toBe("too_large");
    expect(errorOf(() => encodeHlnk({ ...base, payload: new Uint8Array(MAX_HLNK_PAYLOAD_BYTES + 1) })).code).toBe("too_large");
  });

  test("refuses a path with an unpaired surrogate and a seq outside u64", () => {
    const base = { path: "p", seq: 1n, payload: new Uint8Array(0) };
    expect(errorOf(() => encodeHlnk({ ...base, path: "a\uD800b" })).code).toBe("schema");
    expect(errorOf(() => encodeHlnk({ ...base, etag: "\uDC00" })).code).toBe("schema");
    expect(errorOf(() => encodeHlnk({ ...base, seq: -1n })).code).toBe("schema");
    expect(errorOf(() => encodeHlnk({ ...base, seq: 2n ** 64n })).code).toBe("schema");
  });

  test("applies custom limits on both ends and rejects limits the header cannot express", () => {
    const limits = { maxPathBytes: 8, maxEtagBytes: 0, maxPayloadBytes: 4 };
    expect(errorOf(() => encodeHlnk({ path: "123456789", seq: 1n, payload: new Uint8Array(0) }, limits)).code).toBe("too_large");
    expect(errorOf(() => encodeHlnk({ path: "p", etag: "e", seq: 1n, payload: new Uint8Array(0) }, limits)).code).toBe("too_large");
    const big = encodeHlnk({ path: "p", seq: 1n, payload: new Uint8Array(5) });
    expect(errorOf(() => decodeHlnkOne(big, limits)).code).toBe("too_large");
    expect(errorOf(() => new HlnkDecoder({ maxPathBytes: 65_536 })).code).toBe("config");
    expect(errorOf(() => new HlnkDecoder({ maxPayloadBytes: 2 ** 32 })).code).toBe("config");
    expect(errorOf(() => new HlnkDecoder({ maxEtagBytes: -1 })).code).toBe("config");
  });

  test("hlnkHeader followed by the payload is the same bytes as encodeHlnk", () => {
    const payload = Uint8Array.from({ length: 1000 }, (_, i) => i & 0xff);
    const head = hlnkHeader(utf8.encode("alice/x"), utf8.encode("v2"), payload.byteLength, 42n);
    expect(concat([head, payload])).toEqual(encodeHlnk({ path: "alice/x", etag: "v2", seq: 42n, payload }));
  });

  test("hlnkHeader refuses bytes the peer would skip as garbage", () => {
    const none = new Uint8Array(0);
    expect(errorOf(() => hlnkHeader(Uint8Array.of(0xff), none, 0, 1n)).code).toBe("schema");
    expect(errorOf(() => hlnkHeader(none, Uint8Array.of(0xc3), 0, 1n)).code).toBe("schema");
    expect(errorOf(() => hlnkHeader(new Uint8Array(MAX_HLNK_PATH_BYTES + 1), none, 0, 1n)).code).toBe("too_large");
    expect(errorOf(() => hlnkHeader(none, none, MAX_HLNK_PAYLOAD_BYTES + 1, 1n)).code).toBe("too_large");
    expect(errorOf(() => hlnkHeader(none, none, 1.5, 1n)).code).toBe("schema");
  });
});

describe("decoding one frame per message", () => {
  const frame = encodeHlnk({ path: "a/b", etag: "e", seq: 9n, payload: Uint8Array.of(1, 2, 3) });

  test("returns a payload that does not alias the message", () => {
    const message = Buffer.from(frame);
    const decoded = decodeHlnkOne(message);
    message.fill(0);
    expect(Array.from(decoded.payload)).toEqual([1, 2, 3]);
    expect(decoded.payload.buffer.byteLength).toBe(3);
  });

  test("rejects truncated frames, trailing bytes and bad headers as decode errors", () => {
    for (const bad of [
      frame.subarray(0, 10),
      frame.subarray(0, frame.length - 1),
      concat([frame, Uint8Array.of(0)]),
      concat([frame, frame]),
      concat([Uint8Array.of(0x48, 0x4c, 0x4e, 0x4a), frame.subarray(4)]),
      concat([rawHeader({ version: 2 })]),
      concat([rawHeader({ pathLen: 1 }), Uint8Array.of(0xff)]),
      concat([rawHeader({ etagLen: 2 }), Uint8Array.of(0xc3, 0x28)]),
      new Uint8Array(0),
    ]) {
      expect(errorOf(() => decodeHlnkOne(bad)).code).toBe("decode");
    }
  });

  test("rejects lengths over the limits as too_large", () => {
    expect(errorOf(() => decodeHlnkOne(rawHeader({ payloadLen: 0xffff_ffff }))).code).toBe("too_large");
    expect(errorOf(() => decodeHlnkOne(rawHeader({ pathLen: MAX_HLNK_PATH_BYTES + 1 }))).code).toBe("too_large");
    expect(errorOf(() => decodeHlnkOne(rawHeader({ etagLen: MAX_HLNK_ETAG_BYTES + 1 }))).code).toBe("too_large");
  });
});

describe("streaming decoder", () => {
  const rng = prng(fuzzSeed(0x41e7));
  const inputs = Array.from({ length: 300 }, (_, i) => randomFrame(rng, i));
  const stream = concat(inputs.map((input) => encodeHlnk(input)));
  const all = inputs.map(expected);

  test("decodes a stream of many frames pushed one byte at a time", () => {
    const decoder = new HlnkDecoder();
    const frames: HlnkFrame[] = [];
    for (let i = 0; i < stream.length; i++) frames.push(...decoder.push(stream.subarray(i, i + 1)));
    expect(frames).toEqual(all);
    expect(decoder.frames).toBe(all.length);
    expect(decoder.skipped).toBe(0);
    expect(decoder.buffered).toBe(0);
  }, RANDOM_ROUNDS_TIMEOUT_MS);

  test("decodes the same stream in one chunk and in random chunks", () => {
    expect(new HlnkDecoder().push(stream)).toEqual(all);
    for (let round = 0; round < 20; round++) {
      const decoder = new HlnkDecoder();
      expect(split(rng, stream).flatMap((chunk) => decoder.push(chunk))).toEqual(all);
      expect(decoder.buffered).toBe(0);
    }
  }, RANDOM_ROUNDS_TIMEOUT_MS);

  test("returns payloads that own their memory, so the caller may reuse its chunk", () => {
    const decoder = new HlnkDecoder();
    const reused = Buffer.alloc(stream.length);
    const frames: HlnkFrame[] = [];
    for (const chunk of split(rng, stream)) {
      const view = reused.subarray(0, chunk.length);
      view.set(chunk);
      frames.push(...decoder.push(view));
      view.fill(0xee);
    }
    expect(frames).toEqual(all);
    const buffers = new Set(frames.map((f) => f.payload.buffer));
    expect(buffers.size).toBe(frames.length);
    for (const frame of frames) {
      expect(Object.getPrototypeOf(frame.payload)).toBe(Uint8Array.prototype);
      expect(frame.payload.byteOffset).toBe(0);
      expect(frame.payload.buffer.byteLength).toBe(frame.payload.byteLength);
    }
  });

  test("with views on, a frame whole in one fresh chunk is a view of it; one spanning chunks is their views (parts), never copied", () => {
    let spanning = 0;
    for (let round = 0; round < 20; round++) {
      const decoder = new HlnkDecoder({ views: true });
      const frames: HlnkFrame[] = [];
      const chunks = new Set<ArrayBufferLike>();
      for (const chunk of split(rng, stream)) {
        const fresh = new Uint8Array(chunk); // as a socket's data event gives
        chunks.add(fresh.buffer);
        frames.push(...decoder.push(fresh));
      }
      for (const f of frames) {
        if (f.parts === undefined) continue;
        spanning++;
        expect(f.parts.length).toBeGreaterThanOrEqual(2);
        expect(f.payloadLength).toBe(f.parts.reduce((n, p) => n + p.byteLength, 0));
        // Every part past the first is a view of a chunk (the first may be a copy of the few bytes a split head left in the decoder).
        for (const part of f.parts.slice(1)) expect(chunks.has(part.buffer)).toBe(true);
      }
      expect(frames.map((f) => ({ path: f.path, etag: f.etag, seq: f.seq, payload: f.payload }))).toEqual(all);
      expect(decoder.buffered).toBe(0);
    }
    expect(spanning).toBeGreaterThan(0);
    // One chunk holding the whole stream: every non-empty payload is a view of it.
    const whole = new Uint8Array(stream);
    const frames = new HlnkDecoder({ views: true }).push(whole);
    expect(frames.map((f) => ({ path: f.path, etag: f.etag, seq: f.seq, payload: f.payload }))).toEqual(all);
    for (const f of frames) {
      // Its payload as a range of the chunk (src, srcAt, payloadLength), a view of it when read.
      expect(f.src).toBe(whole);
      expect(f.payloadLength).toBe(f.payload.byteLength);
      expect(Buffer.from(whole.subarray(f.srcAt ?? -1, (f.srcAt ?? 0) + (f.payloadLength ?? 0))).equals(Buffer.from(f.payload))).toBe(true);
      if (f.payload.byteLength > 0) expect(f.payload.buffer).toBe(whole.buffer);
    }
  });

  test("reports a frame in progress as buffered until it completes", () => {
    const frame = encodeHlnk({ path: "a", seq: 1n, payload: new Uint8Array(100) });
    const decoder = new HlnkDecoder();
    expect(decoder.push(frame.subarray(0, 10))).toEqual([]);
    expect(decoder.buffered).toBe(10);
    expect(decoder.push(frame.subarray(10, 50))).toEqual([]);
    expect(decoder.buffered).toBe(50);
    expect(decoder.push(frame.subarray(50))).toHaveLength(1);
    expect(decoder.buffered).toBe(0);
  });
});

describe("resynchronisation on garbage", () => {
  const rng = prng(fuzzSeed(0x9a5b));

  test("recovers every frame after garbage between frames and counts exactly the garbage", () => {
    for (let round = 0; round < 30; round++) {
      const inputs = Array.from({ length: 40 }, (_, i) => randomFrame(rng, i));
      const parts: Uint8Array[] = [];
      const inserted: Uint8Array[] = [];
      for (const input of inputs) {
        if (rng.int(2) === 0) {
          const junk = garbage(rng);
          inserted.push(junk);
          parts.push(junk);
        }
        parts.push(encodeHlnk(input));
      }
      const reported: Uint8Array[] = [];
      const decoder = new HlnkDecoder({ onGarbage: (bytes) => reported.push(bytes.slice()) });
      const frames = split(rng, concat(parts)).flatMap((chunk) => decoder.push(chunk));
      expect(frames).toEqual(inputs.map(expected));
      expect(decoder.skipped).toBe(inserted.reduce((n, g) => n + g.length, 0));
      expect(concat(reported)).toEqual(concat(inserted));
      expect(decoder.resyncs).toBe(inserted.length);
      expect(decoder.buffered).toBe(0);
    }
  }, RANDOM_ROUNDS_TIMEOUT_MS);

  test("names why it skipped, for each kind of bad header, and decodes the next frame", () => {
    const next = encodeHlnk({ path: "ok", seq: 7n, payload: Uint8Array.of(1) });
    const cases: [HlnkGarbageReason, Uint8Array][] = [
      ["magic", utf8.encode("GET / HTTP/1.1\r\n")],
      ["version", rawHeader({ version: 2 })],
      ["path_length", rawHeader({ pathLen: MAX_HLNK_PATH_BYTES + 1 })],
      ["etag_length", rawHeader({ etagLen: MAX_HLNK_ETAG_BYTES + 1 })],
      ["payload_length", rawHeader({ payloadLen: MAX_HLNK_PAYLOAD_BYTES + 1 })],
      ["path_utf8", concat([rawHeader({ pathLen: 2 }), Uint8Array.of(0xc3, 0x28)])],
      ["etag_utf8", concat([rawHeader({ pathLen: 1, etagLen: 1 }), Uint8Array.of(0x61, 0x80)])],
    ];
    for (const [reason, junk] of cases) {
      for (const chunked of [false, true]) {
        const reasons: HlnkGarbageReason[] = [];
        const decoder = new HlnkDecoder({ onGarbage: (_bytes, why) => reasons.push(why) });
        const input = concat([junk, next]);
        const chunks = chunked ? Array.from(input, (b) => Uint8Array.of(b)) : [input];
        const frames = chunks.flatMap((chunk) => decoder.push(chunk));
        expect(frames).toEqual([{ path: "ok", etag: "", seq: 7n, payload: Uint8Array.of(1) }]);
        expect(reasons[0]).toBe(reason);
        expect(decoder.skipped).toBe(junk.length);
        expect(decoder.resyncs).toBe(1);
      }
    }
  });

  test("rejects a header announcing a 4 GiB payload as soon as its length arrives, holding nothing", () => {
    const huge = rawHeader({ pathLen: 3, payloadLen: 0xffff_ffff });
    const decoder = new HlnkDecoder();
    for (let i = 0; i < 12; i++) decoder.push(huge.subarray(i, i + 1));
    expect(decoder.skipped).toBe(0);
    expect(decoder.buffered).toBe(12);
    decoder.push(huge.subarray(12, 13)); // the last byte of payload_len
    expect(decoder.skipped).toBe(13);
    expect(decoder.buffered).toBe(0);
    const frame = encodeHlnk({ path: "after", seq: 1n, payload: Uint8Array.of(5) });
    expect(decoder.push(concat([huge.subarray(13), frame]))).toEqual([
      { path: "after", etag: "", seq: 1n, payload: Uint8Array.of(5) },
    ]);
    expect(decoder.skipped).toBe(huge.length);
  });

  test("finds a magic split across chunks at every possible cut", () => {
    const junk = utf8.encode("xxHLNxHLyyH");
    const frame = encodeHlnk({ path: "p", seq: 3n, payload: Uint8Array.of(1, 2, 3) });
    const input = concat([junk, frame]);
    for (let cut = 0; cut <= input.length; cut++) {
      for (let cut2 = cut; cut2 <= Math.min(input.length, cut + 5); cut2++) {
        const decoder = new HlnkDecoder();
        const frames = [input.subarray(0, cut), input.subarray(cut, cut2), input.subarray(cut2)].flatMap((c) =>
          decoder.push(c),
        );
        expect(frames).toHaveLength(1);
        expect(decoder.skipped).toBe(junk.length);
        expect(decoder.buffered).toBe(0);
      }
    }
  });

  test("holds back a trailing magic prefix, not skipping it, until the next chunk decides", () => {
    const decoder = new HlnkDecoder();
    decoder.push(utf8.encode("garbageHLN"));
    expect(decoder.skipped).toBe(7);
    expect(decoder.buffered).toBe(3);
    decoder.push(utf8.encode("x"));
    expect(decoder.skipped).toBe(11);
    expect(decoder.buffered).toBe(0);
    expect(decoder.resyncs).toBe(1);
  });

  test("resumes after a candidate whose long path turns out not to be UTF-8, with frames inside it", () => {
    // A header claiming a 3000-byte path makes the decoder gather 3000 bytes; the path fails
    // UTF-8 at its last byte, and the frames inside those bytes must still come out.
    const inner = Array.from({ length: 5 }, (_, i) => encodeHlnk({ path: "in", seq: BigInt(i), payload: new Uint8Array(100) }));
    const innerBytes = concat(inner);
    const fake = rawHeader({ pathLen: 3000 });
    const filler = new Uint8Array(3000 - innerBytes.length - 1).fill(0x41);
    const input = concat([fake, innerBytes, filler, Uint8Array.of(0xff)]);
    for (const chunking of ["whole", "bytes", "random"] as const) {
      const decoder = new HlnkDecoder();
      const chunks =
        chunking === "whole" ? [input] : chunking === "bytes" ? Array.from(input, (b) => Uint8Array.of(b)) : split(rng, input);
      const frames = chunks.flatMap((c) => decoder.push(c));
      expect(frames.map((f) => f.seq)).toEqual([0n, 1n, 2n, 3n, 4n]);
      expect(decoder.skipped).toBe(fake.length + filler.length + 1);
    }
  });
});

describe("a delivery stream's encoder (HlnkStreamEncoder)", () => {
  test("writes what encodeHlnk writes, path and etag changing or not, seq up to 2^53-1", () => {
    const r = prng(fuzzSeed(0x51e4));
    const enc = new HlnkStreamEncoder();
    const paths = ["alice/ipc", "alice/ipc/sub", "", "ålice/ünïcode/路径"];
    const etags = ["", "e1", "ëtag"];
    let seq = 0;
    for (let i = 0; i < 500; i++) {
      const path = r.int(4) === 0 ? (paths[r.int(paths.length)] ?? "") : (paths[0] ?? "");
      const etag = r.int(4) === 0 ? (etags[r.int(etags.length)] ?? "") : "";
      seq = r.int(20) === 0 ? Number.MAX_SAFE_INTEGER - r.int(10) : r.int(20) === 0 || seq === Number.MAX_SAFE_INTEGER ? 2 ** 32 + r.int(1000) : seq + 1;
      const payload = r.bytes(r.int(3000));
      const got = enc.encode(path, etag, seq, payload);
      const want = encodeHlnk({ path, etag, seq: BigInt(seq), payload });
      expect(Buffer.from(got).equals(Buffer.from(want))).toBe(true);
      expect(decodeHlnkOne(got).seq).toBe(BigInt(seq));
      // encodeRange(): the same bytes, the payload copied from a range of a larger buffer.
      const around = new Uint8Array(payload.byteLength + 9);
      around.set(payload, 5);
      expect(Buffer.from(enc.encodeRange(path, etag, seq, Buffer.from(around), 5, payload.byteLength)).equals(Buffer.from(want))).toBe(true);
      // head(): the same bytes before the payload, as hlnkHeader writes them, in a buffer of its own.
      const head = enc.head(path, etag, seq, payload.byteLength);
      expect(Buffer.from(head).equals(Buffer.from(hlnkHeader(new TextEncoder().encode(path), new TextEncoder().encode(etag), payload.byteLength, BigInt(seq))))).toBe(true);
      expect(head.byteOffset).toBe(0);
      expect(head.buffer.byteLength).toBe(head.byteLength);
    }
  });

  test("refuses what encodeHlnk refuses, and a seq that is not a whole number in range", () => {
    const enc = new HlnkStreamEncoder({ maxPathBytes: 8, maxPayloadBytes: 4 });
    expect(() => enc.encode("a/too/long/path", "", 1, new Uint8Array(1))).toThrow(StoaError);
    expect(() => enc.encode("a", "", 1, new Uint8Array(5))).toThrow(StoaError);
    expect(() => enc.encode("a", "", -1, new Uint8Array(1))).toThrow(StoaError);
    expect(() => enc.encode("a", "", 1.5, new Uint8Array(1))).toThrow(StoaError);
    expect(() => enc.encode("a", "", 2 ** 53, new Uint8Array(1))).toThrow(StoaError);
    expect(() => enc.encode("a\ud800", "", 1, new Uint8Array(1))).toThrow(StoaError);
    expect(decodeHlnkOne(enc.encode("a", "", 7, new Uint8Array(4))).path).toBe("a");
  });
});
