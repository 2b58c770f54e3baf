import { afterEach, describe, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { Registry } from "../../src/core/metrics.ts";
import { CLOSE_TOO_SLOW, decodeServiceFrame, type ServiceMessage } from "../../src/stream/protocol.ts";
import { createPublisher, type Publisher, type PublisherOptions } from "../../src/stream/publisher.ts";
import { subscribe, type Gap } from "../../src/stream/subscriber.ts";
import { closeCode, RawWsClient } from "./rawws.ts";
import { shortTempDir } from "./util.ts";
import { eventually } from "../helpers/eventually.ts";

const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

const VALUES = 3_000;
const PAYLOAD = "x".repeat(1_000); // 3 MB in all: far beyond what socket buffers hold
const QUEUE = { maxMessages: 100, maxBytes: 1024 * 1024 };

async function setup(options: Partial<PublisherOptions>) {
  const tmp = shortTempDir();
  cleanups.push(tmp.remove);
  const metrics = new Registry();
  const pub = await createPublisher({ pubId: "p1", runDir: tmp.dir, queue: QUEUE, metrics, ...options });
  cleanups.push(() => pub.close(100));

  // The fast one: our subscriber, reading everything as it comes.
  const fast: number[] = [];
  const fastGaps: Gap[] = [];
  const opened = Promise.withResolvers<void>();
  const sub = subscribe(pub.urls.service, {
    onValue: (v) => fast.push(v.seq),
    onGap: (g) => fastGaps.push(g),
    onOpen: () => opened.resolve(),
  });
  cleanups.push(() => sub.close());
  await opened.promise;
  return { pub, metrics, fast, fastGaps };
}

/** A raw client on `kind` that stops reading once connected (after the hello on service). */
async function stalled(pub: Publisher, kind: "service" | "string"): Promise<RawWsClient> {
  const ep = pub.endpoints[kind];
  if (ep.kind !== "unix") throw new Error("unix endpoints expected");
  const slow = await RawWsClient.connect(ep.path, "/pub/p1");
  cleanups.push(() => slow.end());
  if (kind === "service") await slow.waitFor("the hello", () => slow.dataFrames().length === 1);
  await eventually("the slow subscriber", () => pub.stats.subscribers[kind] === 1 + (kind === "service" ? 1 : 0));
  slow.pause();
  return slow;
}

/** Publishes VALUES values, each batch only once the fast subscriber has everything so far. */
async function publishPacedByFast(pub: Publisher, fast: number[]): Promise<void> {
  for (let i = 1; i <= VALUES; i++) {
    pub.publish(`${i} ${PAYLOAD}`);
    if (i % 50 === 0) await eventually(`the fast subscriber to reach ${i}`, () => fast.length === i);
  }
  await eventually("the fast subscriber to get everything", () => fast.length === VALUES);
}

function decodeAll(client: RawWsClient): ServiceMessage[] {
  return client
    .dataFrames()
    .filter((f) => f.opcode === 2)
    .map((f) => decodeServiceFrame(f.payload));
}

describe("a slow subscriber under drop-oldest", () => {
  test("does not slow a fast one, loses its oldest values and learns the gap when it reads again", async () => {
    const { pub, metrics, fast, fastGaps } = await setup({ slow: "drop-oldest" });
    const slow = await stalled(pub, "service");

    await publishPacedByFast(pub, fast);
    expect(fast).toEqual(Array.from({ length: VALUES }, (_, i) => i + 1));
    expect(fastGaps).toEqual([]);

    const dropped = pub.stats.dropped.service;
    expect(dropped).toBeGreaterThan(0);
    expect(metrics.render()).toContain(`stoa_pub_dropped_total{pub_id="p1",kind="service"} ${dropped}`);

    slow.resume();
    await slow.waitFor("the last value", () => {
      const last = decodeAll(slow).at(-1);
      return last?.t === "v" && last.seq === VALUES;
    });
    const messages = decodeAll(slow);
    expect(messages[0]?.t).toBe("hello");
    const gapAt = messages.findIndex((m) => m.t === "gap");
    const gap = messages[gapAt];
    if (gap?.t !== "gap") throw new Error("expected one gap notice");
    expect(messages.filter((m) => m.t === "gap")).toHaveLength(1);

    // Before the notice: 1..k without a hole; after it: next..VALUES without a hole.
    const before = messages.slice(1, gapAt).map((m) => (m.t === "v" ? m.seq : -1));
    const after = messages.slice(gapAt + 1).map((m) => (m.t === "v" ? m.seq : -1));
    expect(before).toEqual(Array.from({ length: before.length }, (_, i) => i + 1));
    expect(after).toEqual(Array.from({ length: after.length }, (_, i) => gap.next + i));
    expect(after.length).toBeLessThanOrEqual(QUEUE.maxMessages);
    expect(before.length + gap.dropped + 1).toBe(gap.next);
    expect(gap.dropped).toBe(dropped);
    expect(pub.stats.subscribers.service).toBe(2);
  }, 30_000);

  test("counts values dropped for a slow string subscriber without sending it a notice", async () => {
    const { pub, fast } = await setup({ slow: "drop-oldest" });
    const slow = await stalled(pub, "string");
    await publishPacedByFast(pub, fast);
    expect(pub.stats.dropped.string).toBeGreaterThan(0);
    expect(pub.stats.dropped.service).toBe(0);

    slow.resume();
    const seqOf = (payload: Uint8Array | undefined) => Number(new TextDecoder().decode(payload).split(" ")[0]);
    await slow.waitFor("the last value", () => seqOf(slow.dataFrames().at(-1)?.payload) === VALUES);
    const seqs = slow.dataFrames().map((f) => {
      expect(f.opcode).toBe(1);
      return seqOf(f.payload);
    });
    expect(seqs.at(-1)).toBe(VALUES);
    expect(seqs.length + pub.stats.dropped.string).toBe(VALUES);
    expect(seqs).toEqual([...seqs].sort((a, b) => a - b));
  }, 30_000);

  test("close() does not wait for a subscriber that never reads beyond its drain timeout", async () => {
    const { pub } = await setup({ slow: "drop-oldest" });
    const slow = await stalled(pub, "service");
    for (let i = 1; i <= VALUES; i++) pub.publish(`${i} ${PAYLOAD}`);
    await pub.close(200);
    expect(pub.dir !== undefined && existsSync(pub.dir)).toBe(false);
    slow.resume();
    await slow.waitFor("the close frame", () => slow.dataFrames().at(-1)?.opcode === 8);
    expect(closeCode(slow.dataFrames().at(-1) ?? { opcode: 8, payload: new Uint8Array() })).toBe(1001);
  }, 30_000);
});

describe("a slow subscriber under disconnect", () => {
  test("is closed with 4000 while the fast one keeps everything", async () => {
    const { pub, metrics, fast, fastGaps } = await setup({ slow: "disconnect" });
    const slow = await stalled(pub, "service");

    await publishPacedByFast(pub, fast);
    expect(fast).toEqual(Array.from({ length: VALUES }, (_, i) => i + 1));
    expect(fastGaps).toEqual([]);
    expect(pub.stats.disconnected.service).toBe(1);
    expect(pub.stats.dropped.service).toBe(0);
    expect(pub.stats.subscribers.service).toBe(1);
    expect(metrics.render()).toContain('stoa_pub_slow_disconnects_total{pub_id="p1",kind="service"} 1');

    slow.resume();
    await slow.waitFor("the close frame", () => slow.dataFrames().at(-1)?.opcode === 8);
    const close = slow.dataFrames().at(-1);
    if (close === undefined) throw new Error("no close frame");
    expect(closeCode(close)).toBe(CLOSE_TOO_SLOW);
    expect(new TextDecoder().decode(close.payload.subarray(2))).toContain("too slow");
    // What it did get is a hole-free prefix.
    const seqs = decodeAll(slow).flatMap((m) => (m.t === "v" ? [m.seq] : []));
    expect(seqs).toEqual(Array.from({ length: seqs.length }, (_, i) => i + 1));
  }, 30_000);
});
