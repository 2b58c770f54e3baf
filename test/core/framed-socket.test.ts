import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { StoaError } from "../../src/core/errors.ts";
import { encodeFrame, FrameDecoder } from "../../src/core/frame.ts";
import { type FramedServer, framedRequest, serveFramed } from "../../src/core/framed-socket.ts";
import { createLogger } from "../../src/core/log.ts";

/** Far more than a Unix socket's send buffer: writing it takes many short writes and drains. */
const BIG = 8 * 1024 * 1024;
const MAX_BYTES = 16 * 1024 * 1024;

let dir = "";
let server: FramedServer | undefined;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "stoa-framed-"));
});

afterEach(async () => {
  await server?.close();
  server = undefined;
  rmSync(dir, { recursive: true, force: true });
});

/** Bytes 0, 1, 2, … (mod 251) from `seed` on: a pattern in which a lost or moved byte shows. */
function pattern(length: number, seed: number): Uint8Array {
  return Uint8Array.from({ length }, (_, i) => (seed + i) % 251);
}

/** Answers a request [size(4 bytes BE), seed] with `pattern(size, seed)`; refusals are [0xff]. */
async function serve(maxPipelined = 8): Promise<string> {
  const path = join(dir, "control.sock");
  server = await serveFramed(path, {
    maxRequestBytes: MAX_BYTES,
    maxAnswerBytes: MAX_BYTES,
    maxPipelined,
    maxConnections: 4,
    idleTimeoutMs: 10_000,
    answer: async (frame) => {
      const view = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
      return pattern(view.getUint32(0), frame[4] ?? 0);
    },
    refusal: (_error: StoaError) => Uint8Array.of(0xff),
    log: createLogger({ level: "error", stream: { write: () => {} } }),
  });
  return path;
}

function request(size: number, seed: number): Uint8Array {
  const frame = new Uint8Array(5);
  new DataView(frame.buffer).setUint32(0, size);
  frame[4] = seed;
  return frame;
}

/** Sends `frames` in one write and collects `count` answer frames (or fewer, if the server closes). */
async function exchange(path: string, frames: Uint8Array[], count: number): Promise<Uint8Array[]> {
  const decoder = new FrameDecoder({ maxBytes: MAX_BYTES });
  const answers: Uint8Array[] = [];
  const done = Promise.withResolvers<Uint8Array[]>();
  const sock = await Bun.connect({
    unix: path,
    socket: {
      data(_s, chunk) {
        for (const frame of decoder.push(chunk)) answers.push(new Uint8Array(frame));
        if (answers.length >= count) done.resolve(answers);
      },
      close: () => done.resolve(answers),
      error: (_s, err) => done.reject(err),
    },
  });
  const all = Buffer.concat(frames.map((f) => encodeFrame(f)));
  expect(sock.write(all)).toBe(all.byteLength);
  try {
    return await done.promise;
  } finally {
    sock.end();
  }
}

describe("serveFramed", () => {
  test("answers pipelined requests in order, each whole, also one larger than the socket takes at once", async () => {
    const path = await serve();
    const answers = await exchange(path, [request(10, 1), request(BIG, 2), request(3, 3)], 3);
    expect(answers.map((a) => a.byteLength)).toEqual([10, BIG, 3]);
    expect(answers[0]).toEqual(pattern(10, 1));
    expect(Buffer.from(answers[1] ?? []).equals(pattern(BIG, 2))).toBe(true);
    expect(answers[2]).toEqual(pattern(3, 3));
  });

  test("refuses a connection that sends too many requests without waiting, and closes it", async () => {
    const path = await serve(2);
    const answers = await exchange(path, [request(BIG, 1), request(1, 2), request(1, 3), request(1, 4)], 10);
    expect(answers.at(-1)).toEqual(Uint8Array.of(0xff));
  });

  test("close() ends a connection once the answer queued for it is written", async () => {
    const path = await serve();
    const pending = exchange(path, [request(BIG, 5)], 1);
    await Bun.sleep(20);
    await server?.close();
    const [answer] = await pending;
    expect(answer?.byteLength).toBe(BIG);
  });
});

describe("framedRequest", () => {
  const options = {
    maxRequestBytes: MAX_BYTES,
    maxAnswerBytes: MAX_BYTES,
    timeoutMs: 10_000,
    peer: "the test server",
    what: "a test",
    noServer: (err: unknown) => new StoaError("not_found", `no server: ${String(err)}`),
  };

  test("sends a request larger than the socket takes at once, whole, and returns the answer", async () => {
    const path = await serve();
    // The server answers from the first five bytes, once the whole frame has arrived.
    const payload = new Uint8Array(BIG);
    payload.set(request(BIG, 7));
    const answer = await framedRequest(path, payload, options);
    expect(Buffer.from(answer).equals(pattern(BIG, 7))).toBe(true);
  });

  test("a missing server is the caller's noServer error", async () => {
    await expect(framedRequest(join(dir, "nobody.sock"), request(1, 1), options)).rejects.toThrow("no server");
  });
});
