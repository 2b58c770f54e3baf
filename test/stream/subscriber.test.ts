import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import { Registry } from "../../src/core/metrics.ts";
import { encodeServiceMessage, type ServiceMessage } from "../../src/stream/protocol.ts";
import { createPublisher, type Publisher, type PublisherOptions } from "../../src/stream/publisher.ts";
import { type Gap, latest, type OpenInfo, type Received, subscribe, type SubscribeOptions } from "../../src/stream/subscriber.ts";
import { rejection, thrown, perTestCleanups } from "./util.ts";
import { eventually } from "../helpers/eventually.ts";

const { cleanups, tempDir } = perTestCleanups();

async function start(runDir: string, options: Partial<PublisherOptions> = {}): Promise<Publisher> {
  const pub = await createPublisher({ pubId: "p1", runDir, metrics: new Registry(), ...options });
  cleanups.push(() => pub.close(100));
  return pub;
}

/** A subscriber that records everything, in one list, in the order it happened. */
function recorder(url: string, extra: Partial<SubscribeOptions> = {}) {
  const events: (["value", Received] | ["gap", Gap] | ["open", OpenInfo] | ["close", number, boolean] | ["error", string])[] = [];
  const values = () => events.flatMap((e) => (e[0] === "value" ? [e[1]] : []));
  const gaps = () => events.flatMap((e) => (e[0] === "gap" ? [e[1]] : []));
  const opens = () => events.flatMap((e) => (e[0] === "open" ? [e[1]] : []));
  const errors = () => events.flatMap((e) => (e[0] === "error" ? [e[1]] : []));
  const sub = subscribe(url, {
    reconnect: { minDelayMs: 50, maxDelayMs: 50, jitter: "none" },
    ...extra,
    kind: "service",
    onValue: (v) => events.push(["value", v]),
    onGap: (g) => events.push(["gap", g]),
    onOpen: (i) => events.push(["open", i]),
    onClose: (code, _reason, willRetry) => events.push(["close", code, willRetry]),
    onError: (err) => events.push(["error", `${err.code}: ${err.message}`]),
  } as SubscribeOptions);
  cleanups.push(() => sub.close());
  return { sub, events, values, gaps, opens, errors };
}

/** A fake service endpoint that sends `frames` to every connection, for protocol edge cases. */
function fakeService(runDir: string, frames: (Uint8Array | string)[]): string {
  const path = join(runDir, "fake.sock");
  const server = Bun.serve({
    unix: path,
    fetch: (req, srv) => (srv.upgrade(req, { data: undefined }) ? undefined : new Response(null, { status: 426 })),
    websocket: {
      open(ws) {
        for (const f of frames) ws.send(f);
      },
      message() {},
    },
  });
  cleanups.push(() => server.stop(true));
  return `ws+unix://${path}:/`;
}

const frame = (m: ServiceMessage) => encodeServiceMessage(m);
const ts = new Date().toISOString();

describe("gaps", () => {
  test("reports a restart, with the values the new publisher sent before we reconnected", async () => {
    const runDir = tempDir();
    const first = await createPublisher({ pubId: "p1", runDir, metrics: new Registry() });
    const r = recorder(first.urls.service, { reconnect: { minDelayMs: 300, maxDelayMs: 300, jitter: "none" } });
    await eventually("the first open", () => r.opens().length === 1);
    for (let i = 1; i <= 5; i++) first.publish(i);
    await eventually("five values", () => r.values().length === 5);

    await first.close();
    await eventually("the close", () => r.events.some((e) => e[0] === "close"));
    expect(r.events.find((e) => e[0] === "close")).toEqual(["close", 1001, true]);

    const second = await start(runDir);
    for (let i = 1; i <= 3; i++) second.publish(`new ${i}`);
    await eventually("the reconnect", () => r.opens().length === 2);
    second.publish("new 4");
    await eventually("the fourth new value", () => r.values().at(-1)?.value === "new 4");

    const [before, after] = r.opens();
    expect(after?.epoch).not.toBe(before?.epoch);
    const gap = r.gaps()[0];
    expect(r.gaps()).toHaveLength(1);
    expect(gap?.reason).toBe("restarted");
    // Normally the reconnect comes after the three publishes (next 4, dropped 3); if the
    // machine is slow it may come in between, and the gap is then smaller but still exact.
    expect(gap?.dropped).toBe((gap?.next ?? 0) - 1);
    const fromSecond = r.values().slice(5).map((v) => v.seq);
    expect(fromSecond).toEqual(Array.from({ length: 5 - (gap?.next ?? 0) }, (_, i) => (gap?.next ?? 0) + i));
    expect(r.values().slice(0, 5).map((v) => v.seq)).toEqual([1, 2, 3, 4, 5]);
    // The notice comes right before the first value of the new instance.
    const gapIndex = r.events.findIndex((e) => e[0] === "gap");
    expect(r.events.slice(gapIndex + 1).find((e) => e[0] === "value" || e[0] === "gap")?.[0]).toBe("value");
  });

  test("reports the values published while it was disconnected", async () => {
    const runDir = tempDir();
    const pub = await start(runDir, { slow: "disconnect", queue: { maxMessages: 10, maxBytes: 1024 * 1024 } });
    const r = recorder(pub.urls.service);
    await eventually("the open", () => r.opens().length === 1);
    // One synchronous burst: the subscriber cannot read, its queue overflows, it is cut off.
    const payload = "y".repeat(1_000);
    for (let i = 1; i <= 3_000; i++) pub.publish(payload);
    await eventually("the reconnect", () => r.opens().length === 2);
    pub.publish("after");
    await eventually("the value after the reconnect", () => r.values().at(-1)?.value === "after");

    expect(r.events.find((e) => e[0] === "close")).toEqual(["close", 4000, true]);
    const gaps = r.gaps();
    expect(gaps).toHaveLength(1);
    const received = r.values().map((v) => v.seq);
    // It resumed where it stopped: the history (1 value by default) still held 3,000.
    const beforeGap = received.slice(0, -2);
    expect(beforeGap).toEqual(Array.from({ length: beforeGap.length }, (_, i) => i + 1));
    expect(gaps[0]).toEqual({ next: 3_000, dropped: 2_999 - beforeGap.length, reason: "disconnected" });
    expect(received.slice(-2)).toEqual([3_000, 3_001]);
    expect(r.opens()[1]).toMatchObject({ epoch: pub.epoch, next: 3_000 });
  });

  test("passes on the publisher's gap notice, and notices a hole nobody announced", async () => {
    const url = fakeService(tempDir(), [
      frame({ t: "hello", v: 1, epoch: "e1", next: 7 }),
      frame({ t: "v", seq: 7, ts, value: "a" }),
      frame({ t: "gap", next: 11, dropped: 3 }),
      frame({ t: "v", seq: 11, ts, value: "b" }),
      frame({ t: "v", seq: 13, ts, value: "c" }),
      frame({ t: "v", seq: 13, ts, value: "duplicate" }),
      new Uint8Array([0xff, 0x00]),
      frame({ t: "v", seq: 14, ts, value: "d" }),
    ]);
    const r = recorder(url);
    await eventually("the last value", () => r.values().at(-1)?.value === "d");
    expect(r.opens()[0]).toEqual({ attempt: 1, epoch: "e1", next: 7 });
    expect(r.values().map((v) => v.value)).toEqual(["a", "b", "c", "d"]);
    expect(r.gaps()).toEqual([
      { next: 11, dropped: 3, reason: "dropped" },
      { next: 13, dropped: 1, reason: "skipped" },
    ]);
    expect(r.errors()).toHaveLength(2); // the duplicate and the malformed frame
    expect(r.sub.state).toBe("open");
  });

  test("does not report a gap for values published before it first subscribed", async () => {
    const pub = await start(tempDir());
    pub.publish(1);
    pub.publish(2);
    const r = recorder(pub.urls.service);
    await eventually("the open", () => r.opens().length === 1);
    pub.publish(3);
    await eventually("the values", () => r.values().length === 2);
    expect(r.gaps()).toEqual([]);
    expect(r.values().map((v) => v.seq)).toEqual([2, 3]);
  });
});

describe("endpoints", () => {
  test("stops with a decode error when pointed at a string endpoint", async () => {
    const pub = await start(tempDir());
    const r = recorder(pub.urls.string);
    await eventually("the connection", () => pub.stats.subscribers.string === 1);
    pub.publish("text");
    await r.sub.closed;
    expect(r.errors()[0]).toStartWith("decode:");
    expect(r.errors()[0]).toContain("string endpoint");
    expect(r.events.at(-1)).toEqual(["close", 1000, false]);
  });

  test("throws endpoint at once for a URL that is not a WebSocket URL", () => {
    const err = thrown(() => subscribe("http://[::1]:8081/pub/p1", { onValue: () => {} }));
    expect(err.code).toBe("endpoint");
  });

  test("stops when the first frame is not a hello", async () => {
    const url = fakeService(tempDir(), [frame({ t: "v", seq: 1, ts, value: 1 })]);
    const r = recorder(url);
    await r.sub.closed;
    expect(r.errors()[0]).toContain("hello");
    expect(r.values()).toEqual([]);
  });

  test("kind string delivers each value's text", async () => {
    const pub = await start(tempDir());
    const texts: string[] = [];
    const sub = subscribe(pub.urls.string, { kind: "string", onText: (t) => texts.push(t) });
    cleanups.push(() => sub.close());
    await eventually("the connection", () => pub.stats.subscribers.string === 1);
    pub.publish("plain");
    pub.publish({ n: 1 });
    await eventually("two texts", () => texts.length === 2);
    expect(texts).toEqual(["plain", '{"n":1}']);
  });

  test("close() stops for good", async () => {
    const pub = await start(tempDir());
    const r = recorder(pub.urls.service);
    await eventually("the open", () => r.opens().length === 1);
    r.sub.close();
    await r.sub.closed;
    expect(r.sub.state).toBe("closed");
    await eventually("the publisher to notice", () => pub.stats.subscribers.service === 0);
    await Bun.sleep(150); // three backoff periods: no reconnect may happen
    expect(pub.stats.subscribers.service).toBe(0);
    expect(r.opens()).toHaveLength(1);
  });
});

describe("latest", () => {
  test("times out with a clear error when nobody answers", async () => {
    const runDir = tempDir();
    const path = join(runDir, "mute.sock");
    const server = Bun.serve({
      unix: path,
      fetch: (req, srv) => (srv.upgrade(req, { data: undefined }) ? undefined : new Response(null, { status: 426 })),
      websocket: { message() {} },
    });
    cleanups.push(() => server.stop(true));
    const err = await rejection(latest(`ws+unix://${path}:/`, { timeoutMs: 200 }));
    expect(err.code).toBe("timeout");
    expect(err.message).toContain("200 ms");
  });

  test("fails with io when nothing listens", async () => {
    const err = await rejection(latest(`ws+unix://${join(tempDir(), "none.sock")}:/`));
    expect(err.code).toBe("io");
  });

  test("fails with io when the peer closes before answering", async () => {
    const pub = await start(tempDir());
    // The string endpoint ignores the ping and closes when the publisher stops.
    const pending = rejection(latest(pub.urls.string, { timeoutMs: 5_000 }));
    await eventually("the connection", () => pub.stats.subscribers.string === 1);
    await pub.close();
    const err = await pending;
    expect(err.code).toBe("io");
    expect(err.message).toContain("1001");
  });

  test("fails with decode when pointed at a service endpoint", async () => {
    const pub = await start(tempDir());
    const err = await rejection(latest(pub.urls.service));
    expect(err.code).toBe("decode");
  });

  test("refuses a URL that is not a WebSocket URL", async () => {
    const err = await rejection(latest("http://[::1]:8083/pub/p1"));
    expect(err.code).toBe("endpoint");
  });
});
