/**
 * Where a subscription starts (`?from=`), the publisher's bounded history, and refused upgrades
 * reported with their status and message.
 */
import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import { Registry } from "../../src/core/metrics.ts";
import type { UpgradeRefusal } from "../../src/core/ws.ts";
import { MAX_HISTORY } from "../../src/stream/protocol.ts";
import { createPublisher, type Publisher, type PublisherOptions } from "../../src/stream/publisher.ts";
import { type Gap, latest, type Received, subscribe } from "../../src/stream/subscriber.ts";
import type { From } from "../../src/stream/protocol.ts";
import { rejection, perTestCleanups } from "./util.ts";
import { eventually } from "../helpers/eventually.ts";

const { cleanups, tempDir } = perTestCleanups();

async function start(options: Partial<PublisherOptions> = {}): Promise<Publisher> {
  const pub = await createPublisher({ pubId: "p1", runDir: tempDir(), metrics: new Registry(), ...options });
  cleanups.push(() => pub.close(100));
  return pub;
}

function record(url: string, from?: From) {
  const values: Received[] = [];
  const gaps: Gap[] = [];
  const refusals: UpgradeRefusal[] = [];
  let opens = 0;
  const sub = subscribe(url, {
    from,
    reconnect: { minDelayMs: 50, maxDelayMs: 50, jitter: "none" },
    onValue: (v) => values.push(v),
    onGap: (g) => gaps.push(g),
    onOpen: () => opens++,
    onRefused: (r) => refusals.push(r),
  });
  cleanups.push(() => sub.close());
  return { sub, values, gaps, refusals, opens: () => opens };
}

/** A server on a Unix socket that answers every request with `status` and `body`. */
function refuser(status: number, body: string): string {
  const path = join(tempDir(), "refuse.sock");
  const server = Bun.serve({ unix: path, fetch: () => new Response(body, { status, headers: { "Content-Type": "application/json" } }) });
  cleanups.push(() => server.stop(true));
  return `ws+unix://${path}:/pub/p1`;
}

describe("where a subscription starts", () => {
  test("by default (from=latest) a subscriber that connects after the last value still gets it, then live ones", async () => {
    const pub = await start();
    pub.publish("one");
    pub.publish("two");
    const r = record(pub.urls.service);
    await eventually("the latest value", () => r.values.length === 1);
    expect(r.values[0]).toMatchObject({ seq: 2, value: "two" });
    pub.publish("three");
    await eventually("the live value", () => r.values.length === 2);
    expect(r.values.map((v) => v.value)).toEqual(["two", "three"]);
    expect(r.gaps).toEqual([]);
  });

  test("from=now waits for the next value", async () => {
    const pub = await start();
    pub.publish("old");
    const r = record(pub.urls.service, { at: "now" });
    await eventually("the open", () => r.opens() === 1);
    await Bun.sleep(100); // at: now — the old value must not follow
    expect(r.values).toEqual([]);
    pub.publish("new");
    await eventually("the new value", () => r.values.length === 1);
    expect(r.values[0]).toMatchObject({ seq: 2, value: "new" });
  });

  test("from=oldest gets the whole history in order, then live values, with their seq", async () => {
    const pub = await start({ history: 100 });
    for (let i = 1; i <= 150; i++) pub.publish(i);
    const r = record(pub.urls.service, { at: "oldest" });
    await eventually("the history", () => r.values.length === 100);
    pub.publish(151);
    await eventually("the live value", () => r.values.length === 101);
    expect(r.values.map((v) => v.seq)).toEqual(Array.from({ length: 101 }, (_, i) => 51 + i));
    expect(r.values.map((v) => v.value)).toEqual(Array.from({ length: 101 }, (_, i) => 51 + i));
    expect(r.gaps).toEqual([]);
  });

  test("a history far larger than the subscriber's queue is replayed whole, even under policy disconnect", async () => {
    const pub = await start({ history: MAX_HISTORY, slow: "disconnect", queue: { maxMessages: 10, maxBytes: 4096 } });
    const payload = "z".repeat(500);
    for (let i = 0; i < MAX_HISTORY; i++) pub.publish(payload);
    const r = record(pub.urls.service, { at: "oldest" });
    await eventually("the history", () => r.values.length === MAX_HISTORY, { timeoutMs: 20_000 });
    expect(r.values.at(0)?.seq).toBe(1);
    expect(r.values.at(-1)?.seq).toBe(MAX_HISTORY);
    expect(r.opens()).toBe(1);
    expect(pub.stats.disconnected.service).toBe(0);
  });

  test("a string subscriber starts at the latest value too, or at the oldest", async () => {
    const pub = await start({ history: 3 });
    for (const v of ["a", "b", "c", "d"]) pub.publish(v);
    const texts: string[] = [];
    const oldest: string[] = [];
    const a = subscribe(pub.urls.string, { kind: "string", onText: (t) => texts.push(t) });
    const b = subscribe(pub.urls.string, { kind: "string", from: { at: "oldest" }, onText: (t) => oldest.push(t) });
    cleanups.push(() => a.close(), () => b.close());
    await eventually("both", () => texts.length === 1 && oldest.length === 3);
    expect(texts).toEqual(["d"]);
    expect(oldest).toEqual(["b", "c", "d"]);
  });

  test("asking for a seq the history no longer holds starts at its oldest and reports the gap", async () => {
    const pub = await start({ history: 3 });
    for (let i = 1; i <= 10; i++) pub.publish(i);
    const r = record(pub.urls.service, { at: "seq", seq: 5, epoch: pub.epoch });
    await eventually("the history", () => r.values.length === 3);
    expect(r.values.map((v) => v.seq)).toEqual([8, 9, 10]);
    expect(r.gaps).toEqual([{ next: 8, dropped: 3, reason: "disconnected" }]);
  });

  test("a reconnect resumes where it stopped: values published meanwhile come from the history, no gap", async () => {
    const pub = await start({ history: 1_000, slow: "disconnect", queue: { maxMessages: 10, maxBytes: 1024 * 1024 } });
    const r = record(pub.urls.service);
    await eventually("the open", () => r.opens() === 1);
    // A synchronous burst overflows the queue: policy disconnect cuts the subscriber off.
    for (let i = 1; i <= 500; i++) pub.publish(i);
    await eventually("the reconnect", () => r.opens() === 2);
    pub.publish(501);
    await eventually("everything", () => r.values.at(-1)?.seq === 501);
    expect(pub.stats.disconnected.service).toBe(1);
    expect(r.values.map((v) => v.seq)).toEqual(Array.from({ length: 501 }, (_, i) => i + 1));
    expect(r.gaps).toEqual([]);
  });
});

describe("the history", () => {
  test("keeps at most `history` values, oldest trimmed first", async () => {
    const pub = await start({ history: 5 });
    for (let i = 1; i <= 12; i++) pub.publish(i);
    const r = record(pub.urls.service, { at: "oldest" });
    await eventually("the history", () => r.values.length === 5);
    await Bun.sleep(50); // nothing more may follow the history
    expect(r.values.map((v) => v.seq)).toEqual([8, 9, 10, 11, 12]);
  });

  test("keeps at most `historyBytes`, and always the latest value", async () => {
    const pub = await start({ history: 1_000, historyBytes: 10_000 });
    for (let i = 1; i <= 100; i++) pub.publish("x".repeat(1_000));
    pub.publish("y".repeat(20_000)); // alone over the bound: still kept, as the latest
    const r = record(pub.urls.service, { at: "oldest" });
    await eventually("the history", () => r.values.length >= 1);
    await Bun.sleep(50); // nothing more may follow the history
    expect(r.values.map((v) => v.seq)).toEqual([101]);

    for (let i = 1; i <= 30; i++) pub.publish("x".repeat(1_000));
    const s = record(pub.urls.service, { at: "oldest" });
    await eventually("the history", () => s.values.length >= 4);
    await Bun.sleep(50); // nothing more may follow the history
    // Each value costs its service frame and its text: about 2,000 bytes.
    expect(s.values.length).toBeGreaterThanOrEqual(4);
    expect(s.values.length).toBeLessThanOrEqual(5);
    expect(s.values.at(-1)?.seq).toBe(131);
  });

  test("refuses a history outside 1..MAX_HISTORY", async () => {
    for (const history of [0, MAX_HISTORY + 1, 1.5]) {
      const err = await rejection(createPublisher({ pubId: "p1", runDir: tempDir(), metrics: new Registry(), history }));
      expect(err.code).toBe("config");
      expect(err.message).toContain("history");
    }
  });

  test("a bad ?from= is answered 400 bad_query before the upgrade", async () => {
    const pub = await start();
    const ep = pub.endpoints.service;
    if (ep.kind !== "unix") throw new Error("unix endpoint expected");
    const upgrade = { Upgrade: "websocket", Connection: "Upgrade", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13" };
    for (const query of ["?from=yesterday", "?from=now&from=oldest", "?from=0", "?from=oldest&epoch=x", `?from=${"9".repeat(20)}`]) {
      const res = await fetch(`http://localhost/pub/p1${query}`, { unix: ep.path, headers: upgrade });
      expect(res.status, query).toBe(400);
      expect(((await res.json()) as { error: string }).error).toBe("bad_query");
    }
    expect(pub.stats.subscribers.service).toBe(0);
  });
});

describe("refused upgrades", () => {
  test("a subscriber reports the status and JSON message of a refusal, and keeps retrying", async () => {
    const url = refuser(502, JSON.stringify({ error: "target_down", message: "publisher p1 does not answer" }));
    const closes: string[] = [];
    const refusals: UpgradeRefusal[] = [];
    const sub = subscribe(url, {
      reconnect: { minDelayMs: 20, maxDelayMs: 20, jitter: "none" },
      onValue: () => {},
      onRefused: (r) => refusals.push(r),
      onClose: (_code, reason) => closes.push(reason),
    });
    cleanups.push(() => sub.close());
    await eventually("two refusals", () => refusals.length >= 2 && closes.length >= 2);
    expect(refusals[0]).toEqual({ status: 502, error: "target_down", message: "publisher p1 does not answer" });
    expect(closes[0]).toBe("502 target_down: publisher p1 does not answer");
  });

  test("latest() rejects with the refusal's status and message (404, 502)", async () => {
    const notFound = await rejection(latest(refuser(404, JSON.stringify({ error: "unknown_pub_id", message: "no publisher p1 on this host" }))));
    expect(notFound.code).toBe("not_found");
    expect(notFound.message).toContain("404 unknown_pub_id: no publisher p1 on this host");
    const down = await rejection(latest(refuser(502, JSON.stringify({ error: "target_down", message: "p1 is not running" }))));
    expect(down.message).toContain("502 target_down: p1 is not running");
    expect(down.message).not.toContain("Expected 101");
  });

  test("a body that is not stoa's JSON is shown as text, bounded", async () => {
    const err = await rejection(latest(refuser(503, `busy\n${"x".repeat(10_000)}`)));
    expect(err.message).toContain("503: busy x");
    expect(err.message.length).toBeLessThan(5_000);
  });
});
