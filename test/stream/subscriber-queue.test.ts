import { describe, expect, test } from "bun:test";
import { type Frame, type Sink, SubscriberQueue } from "../../src/stream/subscriber-queue.ts";
import { CLOSE_TOO_SLOW, type QueueLimits, type SlowPolicy } from "../../src/stream/protocol.ts";

/** A sink that takes `room` frames, then reports backpressure until `open()` is called. */
function fakeSink(room: number) {
  const sent: (string | Uint8Array)[] = [];
  const closes: [number, string][] = [];
  let left = room;
  const sink: Sink = {
    send(data) {
      sent.push(data);
      left--;
      return left >= 0 ? 1 : -1;
    },
    close(code, reason) {
      closes.push([code, reason]);
    },
  };
  return { sink, sent, closes, open: (n: number) => (left = n) };
}

const frame = (seq: number, size = 10): Frame => ({ seq, data: `v${seq}`, size });

function subscriberQueue(sink: Sink, policy: SlowPolicy, limits: QueueLimits) {
  const counts = { dropped: 0, overflows: 0 };
  const queue = new SubscriberQueue(sink, {
    limits,
    policy,
    gapFrame: (next, dropped) => `gap ${next} ${dropped}`,
    onDrop: (n) => (counts.dropped += n),
    onOverflow: () => counts.overflows++,
  });
  return { queue, counts };
}

describe("subscriber queue", () => {
  test("replays history frames ahead of live ones, at the socket's pace and outside the bounds", () => {
    const s = fakeSink(2);
    const { queue, counts } = subscriberQueue(s.sink, "disconnect", { maxMessages: 2, maxBytes: 100 });
    queue.replay(Array.from({ length: 20 }, (_, i) => frame(i + 1)));
    expect(s.sent).toEqual(["v1", "v2", "v3"]); // v3 went into the socket's buffer with -1
    expect(queue.backlogLeft).toBe(17);
    queue.offer(frame(21));
    queue.offer(frame(22));
    expect(queue.idle).toBe(false);
    s.open(5);
    queue.drain();
    expect(s.sent).toHaveLength(9);
    s.open(100);
    queue.drain();
    expect(s.sent).toEqual(Array.from({ length: 22 }, (_, i) => `v${i + 1}`));
    expect(counts).toEqual({ dropped: 0, overflows: 0 });
    expect(queue.idle).toBe(true);
  });

  test("live values offered during a replay are still bounded, with a gap notice after the history", () => {
    const s = fakeSink(0);
    const { queue, counts } = subscriberQueue(s.sink, "drop-oldest", { maxMessages: 2, maxBytes: 100 });
    queue.replay([frame(1), frame(2)]);
    for (let i = 3; i <= 6; i++) queue.offer(frame(i));
    s.open(100);
    queue.drain();
    expect(s.sent).toEqual(["v1", "v2", "gap 5 2", "v5", "v6"]);
    expect(counts.dropped).toBe(2);
  });

  test("writes straight through while the socket takes data", () => {
    const s = fakeSink(100);
    const { queue } = subscriberQueue(s.sink, "drop-oldest", { maxMessages: 2, maxBytes: 100 });
    for (let i = 1; i <= 50; i++) queue.offer(frame(i));
    expect(s.sent).toHaveLength(50);
    expect(queue.length).toBe(0);
    expect(queue.idle).toBe(true);
  });

  test("queues behind backpressure and sends in order on drain", () => {
    const s = fakeSink(1);
    const { queue } = subscriberQueue(s.sink, "drop-oldest", { maxMessages: 10, maxBytes: 1000 });
    for (let i = 1; i <= 5; i++) queue.offer(frame(i));
    expect(s.sent).toEqual(["v1", "v2"]); // v2 went into the socket's buffer with -1
    expect(queue.length).toBe(3);
    s.open(100);
    queue.drain();
    expect(s.sent).toEqual(["v1", "v2", "v3", "v4", "v5"]);
    expect(queue.idle).toBe(true);
  });

  test("drops the oldest beyond the message bound and sends a gap notice before the next value", () => {
    const s = fakeSink(0);
    const { queue, counts } = subscriberQueue(s.sink, "drop-oldest", { maxMessages: 3, maxBytes: 1000 });
    for (let i = 1; i <= 10; i++) queue.offer(frame(i));
    // v1 is in the socket; v2..v10 competed for 3 slots.
    expect(counts.dropped).toBe(6);
    expect(queue.length).toBe(3);
    s.open(100);
    queue.drain();
    expect(s.sent).toEqual(["v1", "gap 8 6", "v8", "v9", "v10"]);
  });

  test("bounds the queue in bytes, letting a single oversized frame through alone", () => {
    const s = fakeSink(0);
    const { queue, counts } = subscriberQueue(s.sink, "drop-oldest", { maxMessages: 100, maxBytes: 25 });
    queue.offer(frame(1));
    for (let i = 2; i <= 4; i++) queue.offer(frame(i)); // 10 bytes each: two fit
    expect(queue.length).toBe(2);
    expect(counts.dropped).toBe(1);
    queue.offer(frame(5, 500));
    expect(queue.length).toBe(1);
    expect(queue.queuedBytes).toBe(500);
    s.open(100);
    queue.drain();
    expect(s.sent).toEqual(["v1", "gap 5 3", "v5"]);
  });

  test("keeps a gap notice that hit backpressure ahead of its value", () => {
    const s = fakeSink(0);
    const { queue } = subscriberQueue(s.sink, "drop-oldest", { maxMessages: 1, maxBytes: 1000 });
    for (let i = 1; i <= 4; i++) queue.offer(frame(i));
    s.open(0); // the notice is taken with -1, the value must wait
    queue.drain();
    expect(s.sent).toEqual(["v1", "gap 4 2"]);
    s.open(10);
    queue.drain();
    expect(s.sent).toEqual(["v1", "gap 4 2", "v4"]);
  });

  test("closes the subscriber with 4000 instead of dropping under disconnect", () => {
    const s = fakeSink(0);
    const { queue, counts } = subscriberQueue(s.sink, "disconnect", { maxMessages: 2, maxBytes: 1000 });
    for (let i = 1; i <= 10; i++) queue.offer(frame(i));
    expect(counts).toEqual({ dropped: 0, overflows: 1 });
    expect(s.closes).toHaveLength(1);
    expect(s.closes[0]?.[0]).toBe(CLOSE_TOO_SLOW);
    expect(s.closes[0]?.[1]).toContain("too slow");
    expect(queue.closed).toBe(true);
    expect(s.sent).toEqual(["v1"]);
  });

  test("flushAll hands everything over despite backpressure", () => {
    const s = fakeSink(0);
    const { queue } = subscriberQueue(s.sink, "drop-oldest", { maxMessages: 10, maxBytes: 1000 });
    for (let i = 1; i <= 4; i++) queue.offer(frame(i));
    queue.flushAll();
    expect(s.sent).toEqual(["v1", "v2", "v3", "v4"]);
    expect(queue.length).toBe(0);
  });

  test("compacts its storage while staying in order over many frames", () => {
    const s = fakeSink(0);
    const { queue } = subscriberQueue(s.sink, "drop-oldest", { maxMessages: 5_000, maxBytes: 1e9 });
    for (let i = 1; i <= 20_000; i++) {
      queue.offer(frame(i));
      if (i % 3 === 0) {
        s.open(2);
        queue.drain();
      }
    }
    s.open(1e9);
    queue.drain();
    const seqs = s.sent.map((d) => String(d)).filter((d) => d.startsWith("v")).map((d) => Number(d.slice(1)));
    expect(seqs).toEqual([...seqs].sort((a, b) => a - b));
    expect(seqs.at(-1)).toBe(20_000);
  });
});
