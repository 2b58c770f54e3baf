import { describe, expect, test } from "bun:test";
import { StoaError } from "../../src/core/errors.ts";
import { FRAME_HEADER_BYTES, FrameDecoder, type FrameParts, MAX_FRAME_BYTES, encodeFrame, messageStart, writeFrameHeader } from "../../src/core/frame.ts";
import { joinBytes } from "../../src/core/bytes.ts";

const bytes = (...values: number[]): Uint8Array => Uint8Array.from(values);

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.byteLength;
  }
  return out;
}

function header(length: number): Uint8Array {
  const out = new Uint8Array(FRAME_HEADER_BYTES);
  new DataView(out.buffer).setUint32(0, length);
  return out;
}

/** Pushes each chunk in turn and collects every frame. */
function decodeAll(decoder: FrameDecoder, chunks: Uint8Array[]): Uint8Array[] {
  return chunks.flatMap((chunk) => decoder.push(chunk));
}

function pushError(decoder: FrameDecoder, chunk: Uint8Array): StoaError {
  try {
    decoder.push(chunk);
  } catch (err) {
    expect(err).toBeInstanceOf(StoaError);
    return err as StoaError;
  }
  throw new Error("expected push to throw");
}

const payloads = [bytes(1, 2, 3), new Uint8Array(0), bytes(0xff), Uint8Array.from({ length: 300 }, (_, i) => i & 0xff)];
const stream = concat(payloads.map((p) => encodeFrame(p)));

describe("encodeFrame", () => {
  test("writes a 4-byte big-endian length, then the payload, in one buffer", () => {
    expect(encodeFrame(bytes(0xaa, 0xbb))).toEqual(bytes(0, 0, 0, 2, 0xaa, 0xbb));
    expect(encodeFrame(new Uint8Array(0x010203))).toHaveLength(4 + 0x010203);
    expect(encodeFrame(new Uint8Array(0x010203)).subarray(0, 4)).toEqual(bytes(0, 1, 2, 3));
  });

  test("writes an empty payload as a bare header", () => {
    expect(encodeFrame(new Uint8Array(0))).toEqual(bytes(0, 0, 0, 0));
  });

  test("encodes a payload that is a view into a larger buffer", () => {
    const big = bytes(9, 9, 1, 2, 9);
    expect(encodeFrame(big.subarray(2, 4))).toEqual(bytes(0, 0, 0, 2, 1, 2));
  });

  test("refuses a payload over the limit", () => {
    expect(() => encodeFrame(new Uint8Array(11), { maxBytes: 10 })).toThrow(/over the 10-byte limit/);
    expect(encodeFrame(new Uint8Array(10), { maxBytes: 10 })).toHaveLength(14);
  });
});

describe("FrameDecoder: split and coalesced reads", () => {
  test("decodes a stream split in two at every byte position", () => {
    for (let cut = 0; cut <= stream.length; cut++) {
      const decoder = new FrameDecoder();
      expect(decodeAll(decoder, [stream.subarray(0, cut), stream.subarray(cut)])).toEqual(payloads);
      expect(decoder.buffered).toBe(0);
    }
  });

  test("decodes a stream split in three at every pair of positions", () => {
    const short = concat([encodeFrame(bytes(1, 2, 3)), encodeFrame(new Uint8Array(0)), encodeFrame(bytes(4))]);
    const expected = [bytes(1, 2, 3), new Uint8Array(0), bytes(4)];
    for (let a = 0; a <= short.length; a++) {
      for (let b = a; b <= short.length; b++) {
        const chunks = [short.subarray(0, a), short.subarray(a, b), short.subarray(b)];
        expect(decodeAll(new FrameDecoder(), chunks)).toEqual(expected);
      }
    }
  });

  test("decodes a stream fed one byte at a time", () => {
    const decoder = new FrameDecoder();
    const chunks = Array.from(stream, (b) => bytes(b));
    expect(decodeAll(decoder, chunks)).toEqual(payloads);
  });

  test("returns every frame of a coalesced read, in order", () => {
    const many = Array.from({ length: 1000 }, (_, i) => Uint8Array.from({ length: i % 17 }, () => i & 0xff));
    const frames = new FrameDecoder().push(concat(many.map((p) => encodeFrame(p))));
    expect(frames).toEqual(many);
  });

  test("returns consecutive zero-length frames", () => {
    const decoder = new FrameDecoder();
    expect(decoder.push(new Uint8Array(12))).toEqual([new Uint8Array(0), new Uint8Array(0), new Uint8Array(0)]);
    expect(decoder.buffered).toBe(0);
  });

  test("returns nothing for an empty chunk", () => {
    const decoder = new FrameDecoder();
    expect(decoder.push(new Uint8Array(0))).toEqual([]);
    expect(decoder.buffered).toBe(0);
  });

  test("reports the bytes held for an incomplete frame, header included", () => {
    const decoder = new FrameDecoder();
    expect(decoder.push(bytes(0, 0))).toEqual([]);
    expect(decoder.buffered).toBe(2);
    expect(decoder.push(bytes(0, 5, 1, 2))).toEqual([]);
    expect(decoder.buffered).toBe(6);
    expect(decoder.push(bytes(3, 4, 5, 0, 0))).toEqual([bytes(1, 2, 3, 4, 5)]);
    expect(decoder.buffered).toBe(2);
  });
});

describe("FrameDecoder: ownership of buffers", () => {
  test("frames stay intact when the caller reuses its read buffer", () => {
    const readBuffer = new Uint8Array(7);
    const decoder = new FrameDecoder();
    const frames: Uint8Array[] = [];
    for (let at = 0; at < stream.length; at += readBuffer.length) {
      const n = Math.min(readBuffer.length, stream.length - at);
      readBuffer.set(stream.subarray(at, at + n));
      frames.push(...decoder.push(readBuffer.subarray(0, n)));
      readBuffer.fill(0xee);
    }
    expect(frames).toEqual(payloads);
  });

  test("a frame from a single chunk is a copy that owns exactly its bytes", () => {
    const chunk = encodeFrame(bytes(7, 8, 9));
    const [frame] = new FrameDecoder().push(chunk);
    chunk.fill(0);
    expect(frame).toEqual(bytes(7, 8, 9));
    expect(frame?.buffer.byteLength).toBe(3);
  });

  test("a frame from a Buffer chunk (what Bun sockets deliver) is a copy, not a view of it (regression: frames were views of the caller's memory)", () => {
    const chunk = Buffer.from(encodeFrame(bytes(9, 9, 9)));
    const [frame] = new FrameDecoder().push(chunk);
    chunk.fill(0);
    expect(frame).toEqual(bytes(9, 9, 9));
    expect(frame?.buffer).not.toBe(chunk.buffer);
  });

  test("a frame gathered from many chunks owns exactly its bytes", () => {
    const payload = Uint8Array.from({ length: 100_000 }, (_, i) => i % 251);
    const whole = encodeFrame(payload);
    const decoder = new FrameDecoder();
    const frames: Uint8Array[] = [];
    for (let at = 0; at < whole.length; at += 999) frames.push(...decoder.push(whole.slice(at, at + 999)));
    expect(frames).toHaveLength(1);
    expect(frames[0]).toEqual(payload);
    expect(frames[0]?.buffer.byteLength).toBe(payload.byteLength);
  });
});

describe("FrameDecoder: size limit", () => {
  test("accepts a frame of exactly the limit", () => {
    const decoder = new FrameDecoder({ maxBytes: 1000 });
    expect(decoder.push(encodeFrame(new Uint8Array(1000).fill(7)))).toEqual([new Uint8Array(1000).fill(7)]);
  });

  test("rejects limit+1 as soon as the header is read, before any payload", () => {
    const decoder = new FrameDecoder({ maxBytes: 1000 });
    const error = pushError(decoder, header(1001));
    expect(error.code).toBe("too_large");
    expect(error.message).toContain("1001-byte frame");
    expect(decoder.buffered).toBeLessThanOrEqual(4);
  });

  test("rejects an oversize header split across pushes on its last byte", () => {
    const decoder = new FrameDecoder({ maxBytes: 1000 });
    const h = header(0xffff_ffff);
    expect(decoder.push(h.subarray(0, 1))).toEqual([]);
    expect(decoder.push(h.subarray(1, 3))).toEqual([]);
    expect(pushError(decoder, h.subarray(3)).code).toBe("too_large");
    expect(decoder.buffered).toBeLessThanOrEqual(4);
  });

  test("does not buffer the payload that follows an oversize header in the same chunk", () => {
    const decoder = new FrameDecoder({ maxBytes: 1000 });
    pushError(decoder, concat([header(1001), new Uint8Array(1001)]));
    expect(decoder.buffered).toBeLessThanOrEqual(4);
  });

  test("stays failed: every later push throws the same error", () => {
    const decoder = new FrameDecoder({ maxBytes: 10 });
    const first = pushError(decoder, header(11));
    expect(pushError(decoder, encodeFrame(bytes(1)))).toBe(first);
    expect(pushError(decoder, new Uint8Array(0))).toBe(first);
  });

  test("the default limit is MAX_FRAME_BYTES (16 MiB), exactly accepted", () => {
    expect(MAX_FRAME_BYTES).toBe(16 * 1024 * 1024);
    const whole = encodeFrame(new Uint8Array(MAX_FRAME_BYTES).fill(1));
    const decoder = new FrameDecoder();
    const frames: Uint8Array[] = [];
    for (let at = 0; at < whole.length; at += 65536) frames.push(...decoder.push(whole.subarray(at, at + 65536)));
    expect(frames).toHaveLength(1);
    expect(frames[0]?.byteLength).toBe(MAX_FRAME_BYTES);
    expect(pushError(new FrameDecoder(), header(MAX_FRAME_BYTES + 1)).code).toBe("too_large");
  });

  test("a limit of zero allows only empty frames", () => {
    const decoder = new FrameDecoder({ maxBytes: 0 });
    expect(decoder.push(header(0))).toEqual([new Uint8Array(0)]);
    expect(pushError(decoder, header(1)).code).toBe("too_large");
  });

  test("rejects a limit the 4-byte header cannot express", () => {
    for (const maxBytes of [-1, 1.5, 2 ** 32, NaN]) {
      expect(() => new FrameDecoder({ maxBytes })).toThrow(StoaError);
      expect(() => encodeFrame(new Uint8Array(0), { maxBytes })).toThrow(StoaError);
    }
  });
});

describe("FrameDecoder over a real TCP connection", () => {
  test("withHeader: each frame comes with its own header in a fresh buffer, the frame to forward in one write", () => {
    const stream = new Uint8Array([...encodeFrame(new Uint8Array([1, 2, 3])), ...encodeFrame(new Uint8Array(0)), ...encodeFrame(new Uint8Array(5000).fill(7))]);
    for (const cut of [1, 3, 4, 5, 7, 9, 100, stream.length]) {
      const decoder = new FrameDecoder({ withHeader: true });
      const frames = [...decoder.push(stream.subarray(0, cut)), ...decoder.push(stream.subarray(cut))];
      expect(frames.map((f) => f.byteLength - 4)).toEqual([3, 0, 5000]);
      for (const f of frames) {
        expect(f.byteOffset).toBe(0);
        expect(f.buffer.byteLength).toBe(f.byteLength);
        expect(f).toEqual(encodeFrame(f.subarray(4)));
      }
      expect([...(frames[0] ?? new Uint8Array(4)).subarray(4)]).toEqual([1, 2, 3]);
      expect(frames[2]?.subarray(4).every((b) => b === 7)).toBe(true);
    }
  });

  test("lend: a whole frame is a view of the chunk, a split one is gathered into one of two reused buffers and survives the next split frame's start", () => {
    const a = encodeFrame(new Uint8Array(100).fill(1));
    const b = encodeFrame(new Uint8Array(100).fill(2));
    const c = encodeFrame(new Uint8Array(100).fill(3));
    const decoder = new FrameDecoder({ withHeader: true, lend: true });
    const chunk1 = new Uint8Array([...a, ...b.subarray(0, 50)]);
    const [first] = decoder.push(chunk1);
    expect(first?.buffer).toBe(chunk1.buffer); // a view, no copy
    expect(first).toEqual(a);
    // b completes (gathered) and c starts in the same push: b must stay intact.
    const chunk2 = new Uint8Array([...b.subarray(50), ...c.subarray(0, 60)]);
    const [second] = decoder.push(chunk2);
    expect(second).toEqual(b);
    const bBuffer = second?.buffer;
    const [third] = decoder.push(c.subarray(60));
    expect(second).toEqual(b);
    expect(third?.buffer).not.toBe(bBuffer);
    expect(third).toEqual(c);
    // A third split frame reuses b's buffer: nothing new is allocated.
    decoder.push(b.subarray(0, 10));
    const [fourth] = decoder.push(b.subarray(10));
    expect(fourth?.buffer).toBe(bBuffer);
  });

  test("writeFrameHeader writes the big-endian length", () => {
    const out = new Uint8Array(6);
    writeFrameHeader(out, 1, 0x01020304);
    expect([...out]).toEqual([0, 1, 2, 3, 4, 0]);
  });

  test("recovers every frame however the kernel splits and coalesces the stream", async () => {
    const sent = Array.from({ length: 300 }, (_, i) => Uint8Array.from({ length: (i * 7919) % 70_000 }, (_, j) => (i + j) & 0xff));
    const wire = concat(sent.map((p) => encodeFrame(p)));
    const received: Uint8Array[] = [];
    const { promise: done, resolve, reject } = Promise.withResolvers<void>();
    const decoder = new FrameDecoder({ maxBytes: 70_000 });

    const server = Bun.listen({
      hostname: "127.0.0.1",
      port: 0,
      socket: {
        data(_socket, chunk) {
          try {
            received.push(...decoder.push(chunk));
            if (received.length === sent.length) resolve();
          } catch (err) {
            reject(err);
          }
        },
      },
    });
    let offset = 0;
    const writeMore = (socket: { write(data: Uint8Array): number }): void => {
      // write() takes what fits and drops the rest; resume on drain.
      while (offset < wire.length) {
        const written = socket.write(wire.subarray(offset, offset + 50_000));
        offset += written;
        if (written === 0) return;
      }
    };
    const client = await Bun.connect({
      hostname: "127.0.0.1",
      port: server.port,
      socket: { data() {}, drain: writeMore },
    });
    try {
      writeMore(client);
      await done;
      expect(received).toEqual(sent);
      expect(decoder.buffered).toBe(0);
    } finally {
      client.end();
      server.stop(true);
    }
  });
});

describe("FrameDecoder views: what a frame keeps alive", () => {
  test("a small frame in a large read is a copy; a frame that is most of its read is a view of it", () => {
    const d = new FrameDecoder({ views: true });
    const small = encodeFrame(new Uint8Array(10).fill(1));
    const read = new Uint8Array(4096);
    read.set(small, 0);
    writeFrameHeader(read, small.byteLength, read.byteLength - small.byteLength - 4);
    const [a, b] = d.pushViews(read) as Uint8Array[];
    expect(a?.buffer).not.toBe(read.buffer);
    expect(a).toEqual(new Uint8Array(10).fill(1));
    expect(b?.buffer).toBe(read.buffer);
  });

  test("reads that are slices of one buffer: a header ending one read is never taken for bytes before the next (regression)", () => {
    const d = new FrameDecoder({ views: true, withHeader: true });
    const stream = encodeFrame(Uint8Array.from({ length: 10 }, (_, i) => i + 1));
    const frames = [...d.pushViews(stream.subarray(0, 4)), ...d.pushViews(stream.subarray(4))];
    expect(frames).toHaveLength(1);
    // The header that ended the first read, then the payload: the stream's bytes, in two parts.
    const f = frames[0] as FrameParts;
    expect(f.parts).toHaveLength(2);
    expect(joinBytes(f.parts, f.byteLength)).toEqual(stream);
  });
});

describe("FrameDecoder views: no view of a read that is one frame", () => {
  test("with withHeader, a read that is exactly one frame comes back as that read; frames sharing a read are views of it", () => {
    const d = new FrameDecoder({ views: true, withHeader: true });
    const one = encodeFrame(new Uint8Array(2000).fill(7));
    const [f] = d.pushViews(one);
    expect(f).toBe(one);
    const two = new Uint8Array(one.byteLength * 2);
    two.set(one, 0);
    two.set(one, one.byteLength);
    const [a, b] = d.pushViews(two) as Uint8Array[];
    expect(a).not.toBe(two);
    expect(a?.buffer).toBe(two.buffer);
    expect(b?.byteOffset).toBe(one.byteLength);
    expect(a).toEqual(one);
    expect(b).toEqual(one);
  });

  test("without withHeader the frame is its payload, a view; a header split over reads still yields the whole frame", () => {
    const d = new FrameDecoder({ views: true });
    const one = encodeFrame(new Uint8Array(2000).fill(3));
    const [p] = d.pushViews(one) as Uint8Array[];
    expect(p?.byteLength).toBe(2000);
    expect(p?.buffer).toBe(one.buffer);
    const h = new FrameDecoder({ views: true, withHeader: true });
    const frames = [...h.pushViews(one.slice(0, 2)), ...h.pushViews(one.slice(2))];
    expect(frames).toHaveLength(1);
    // The split header (a copy of its 4 bytes) and the payload after it (a view): the frame in two parts.
    const f = frames[0] as FrameParts;
    expect(f.parts).toHaveLength(2);
    expect(f.parts[0]?.byteLength).toBe(4);
    expect(joinBytes(f.parts, f.byteLength)).toEqual(one);
  });

  test("an empty frame with its header in place is a copy of the header, not a view of the read", () => {
    const d = new FrameDecoder({ views: true, withHeader: true });
    const read = new Uint8Array([0, 0, 0, 0, ...encodeFrame(new Uint8Array(3000).fill(1))]);
    const [empty, full] = d.pushViews(read) as Uint8Array[];
    expect(empty).toEqual(new Uint8Array(4));
    expect(empty?.buffer).not.toBe(read.buffer);
    expect(full?.byteLength).toBe(3004);
  });
});

describe("FrameDecoder views: a header that ended a read", () => {
  test("a large frame whose header ended the previous read is the header (a copy) and its payload's view, not a copy of the frame; messageStart finds the message", () => {
    const payload = Uint8Array.from({ length: 100_000 }, (_, i) => i & 0xff);
    const frame = encodeFrame(payload);
    for (const cut of [4, 1, 2, 3]) {
      const d = new FrameDecoder({ views: true, withHeader: true });
      const a = new Uint8Array(frame.subarray(0, cut));
      const b = new Uint8Array(frame.subarray(cut));
      const out = [...d.pushViews(a), ...d.pushViews(b)];
      expect(out).toHaveLength(1);
      const f = out[0] as FrameParts;
      if (cut === 4) {
        expect(f.parts).toHaveLength(2);
        expect(f.parts[0]?.buffer).not.toBe(a.buffer);
        expect(f.parts[1]?.buffer).toBe(b.buffer);
        const s = messageStart(f);
        expect(s).toEqual({ part: f.parts[1], at: 0, next: 2 });
      }
      expect(f.byteLength).toBe(frame.byteLength);
      expect(joinBytes(f.parts, f.byteLength)).toEqual(frame);
    }
  });

  test("messageStart: a first part longer than the header holds the message from offset 4", () => {
    const parts = [new Uint8Array(10), new Uint8Array(5)];
    expect(messageStart({ parts, byteLength: 15 })).toEqual({ part: parts[0], at: 4, next: 1 });
  });
});
