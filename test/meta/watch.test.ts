/**
 * GET /v1/watch against real metaservers (startMeta on loopback, a SQLite `:memory:` store or a
 * private redis-server): the stream's first event, every change once and in order under its
 * prefix, the watcher limit, slots freed on disconnect, streams ended by close(), the read
 * token, a slow watcher cut off. On Redis the changes are made through a second metaserver over
 * the same keys, so they reach the watch only through the store's events.
 */
import { afterEach, describe, expect, test } from "bun:test";
import { connect, type Socket } from "node:net";
import type { PingOutcome } from "../../src/meta/confirm.ts";
import { tokenDigest } from "../../src/core/token.ts";
import { MetaClient } from "../../src/meta/client.ts";
import type { ChangeEvent } from "../../src/meta/watch-wire.ts";
import { MAX_WATCHERS } from "../../src/meta/watch.ts";
import { MetaApiError } from "../../src/meta/protocol.ts";
import { forEachStore, freshKeyPrefix, redisMissing, testStoreOptions } from "../fixtures/meta-stores.ts";
import { startRedis } from "../fixtures/redis.ts";
import { startTestMeta, type TestMeta, type TestMetaOptions } from "../fixtures/meta-helpers.ts";
import { eventually } from "../helpers/eventually.ts";

const answers = async (): Promise<PingOutcome> => ({ ok: true, reply: { value: null, seq: 0, ts: "t" } });

const opened: TestMeta[] = [];
async function meta(options: TestMetaOptions = {}): Promise<TestMeta> {
  const t = await startTestMeta({ confirm: { ping: answers }, ...options });
  opened.push(t);
  return t;
}
afterEach(async () => {
  await Promise.all(opened.splice(0).map((t) => t.meta.close()));
});

/** A watch through the client, collecting its changes until `stop()`. */
function watching(client: MetaClient, prefix: string) {
  const events: ChangeEvent[] = [];
  const stop = new AbortController();
  let open = false;
  const done = client.watch(prefix, { onEvent: (e) => events.push(e), onOpen: () => (open = true), signal: stop.signal });
  return {
    events,
    done,
    opened: () => eventually(`the watch of ${JSON.stringify(prefix)} in place`, () => open),
    isOpen: () => open,
    stop: () => stop.abort(),
    seen: () => events.map((e) => `${e.type} ${e.publisher.name}`),
  };
}

function watchersGauge(t: TestMeta): number {
  const line = t.metrics.render().split("\n").find((l) => l.startsWith("stoa_meta_watchers "));
  return Number(line?.split(" ")[1]);
}

/** A raw HTTP/1.1 watch request on its own connection, never read from (paused). */
async function rawWatch(t: TestMeta, prefix = ""): Promise<Socket> {
  const url = new URL(t.meta.url);
  const sock = connect({ host: url.hostname, port: Number(url.port) });
  await new Promise((resolve, reject) => sock.once("connect", resolve).once("error", reject));
  sock.write(`GET /v1/watch?prefix=${prefix} HTTP/1.1\r\nHost: x\r\n\r\n`);
  return sock;
}

forEachStore((kind) => {
  test("a watch starts with watching, then each change of a name under its prefix once, in order", async () => {
    const keyPrefix = freshKeyPrefix();
    const store = testStoreOptions(kind, keyPrefix);
    const ttlMs = 400;
    const a = await meta({ ...store, ttlMs, deregisterAfterMs: 60_000, sweepIntervalMs: 50 });
    // On Redis every change goes through another metaserver; on SQLite there is only the one.
    const b = kind === "redis" ? await meta({ ...store, ttlMs, deregisterAfterMs: 60_000, sweepIntervalMs: 50 }) : a;

    const lab = watching(a.client, "lab");
    const all = watching(a.client, "");
    await lab.opened();
    await all.opened();

    const first = await b.client.register({ name: "lab/a", host: "fd00::1" });
    await b.client.register({ name: "lab2/x", host: "fd00::2" });
    await b.client.confirm(first.pub_id);
    await eventually("lab/a stale", () => lab.seen().includes("stale lab/a"), { timeoutMs: 5_000 });
    await b.client.deregister(first.pub_id);
    await eventually("lab/a removed", () => lab.seen().includes("removed lab/a"));

    expect(lab.seen()).toEqual(["registered lab/a", "confirmed lab/a", "stale lab/a", "removed lab/a"]);
    expect(lab.events.map((e) => e.publisher.pub_id)).toEqual([first.pub_id, first.pub_id, first.pub_id, first.pub_id]);
    expect(lab.events.map((e) => e.publisher.state)).toEqual(["pending", "live", "stale", "stale"]);
    // The sibling lab2 is not under lab, but under "" it is.
    await eventually("lab2/x in the watch of everything", () => all.seen().includes("registered lab2/x"));
    expect(all.seen().filter((s) => s.endsWith(" lab/a"))).toEqual(lab.seen());
    lab.stop();
    all.stop();
    await lab.done;
    await all.done;
  }, 20_000);

  test("a watch opened at the other metaserver hears a re-registration under a new pub_id", async () => {
    const store = testStoreOptions(kind, freshKeyPrefix());
    const a = await meta(store);
    const b = kind === "redis" ? await meta(store) : a;
    const w = watching(a.client, "lab/temp");
    await w.opened();
    const old = await b.client.register({ name: "lab/temp", host: "fd00::1" });
    await b.client.confirm(old.pub_id);
    await b.client.deregister(old.pub_id);
    const moved = await b.client.register({ name: "lab/temp", host: "fd00::9" });
    await b.client.confirm(moved.pub_id);
    await eventually("the new pub_id confirmed", () => w.events.some((e) => e.type === "confirmed" && e.publisher.pub_id === moved.pub_id));
    expect(w.events.map((e) => `${e.type} ${e.publisher.pub_id} ${e.publisher.host}`)).toEqual([
      `registered ${old.pub_id} fd00::1`,
      `confirmed ${old.pub_id} fd00::1`,
      `removed ${old.pub_id} fd00::1`,
      `registered ${moved.pub_id} fd00::9`,
      `confirmed ${moved.pub_id} fd00::9`,
    ]);
    w.stop();
    await w.done;
  });
});

describe("the stream", () => {
  test("is text/event-stream, not cached, and its first bytes are the watching event", async () => {
    const t = await meta();
    const stop = new AbortController();
    const res = await fetch(`${t.meta.url}/v1/watch?prefix=lab/`, { signal: stop.signal });
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toBe("text/event-stream");
    expect(res.headers.get("cache-control")).toBe("no-store");
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    const { value } = await reader.read();
    expect(new TextDecoder().decode(value)).toBe('event: watching\ndata: {"type":"watching","prefix":"lab"}\n\n');
    stop.abort();
  });

  test("a bad prefix is 400 bad_prefix, before any stream", async () => {
    const t = await meta();
    const res = await fetch(`${t.meta.url}/v1/watch?prefix=a//b`);
    expect(res.status).toBe(400);
    expect(((await res.json()) as { error: string }).error).toBe("bad_prefix");
    await expect(t.client.watch("a//b", { onEvent: () => {} })).rejects.toMatchObject({ status: 400, error: "bad_prefix" });
  });

  test("needs the read token when the server has one", async () => {
    const admin = `stm_${"a".repeat(40)}`;
    const read = `stm_${"r".repeat(40)}`;
    const hex = (token: string) => tokenDigest(token).toString("hex");
    const t = await meta({ auth: { required: true, admin: hex(admin), writers: [], read: hex(read) } });
    const res = await fetch(`${t.meta.url}/v1/watch`);
    expect(res.status).toBe(401);
    expect(res.headers.get("www-authenticate")).toContain("Bearer");
    await expect(t.client.watch("", { onEvent: () => {} })).rejects.toMatchObject({ status: 401, error: "unauthorized" });
    const w = watching(new MetaClient(t.meta.url, { token: read }), "");
    await w.opened();
    await new MetaClient(t.meta.url, { token: admin }).register({ name: "x", host: "fd00::1" });
    await eventually("the registration watched with the read token", () => w.seen().includes("registered x"));
    w.stop();
  });
});

describe("limits and lifetime", () => {
  test(`at most ${MAX_WATCHERS} watchers: the next is 503 busy; one leaving frees its slot, and the gauge follows`, async () => {
    const t = await meta();
    expect(watchersGauge(t)).toBe(0);
    const socks: Socket[] = [];
    try {
      for (let i = 0; i < MAX_WATCHERS; i++) socks.push(await rawWatch(t));
      await eventually(`${MAX_WATCHERS} watchers`, () => watchersGauge(t) === MAX_WATCHERS, { timeoutMs: 10_000 });
      const refused = await fetch(`${t.meta.url}/v1/watch`);
      expect(refused.status).toBe(503);
      const body = (await refused.json()) as { error: string; message: string };
      expect(body.error).toBe("busy");
      expect(body.message).toMatch(/already serves 1024 watches, its limit; try again/);
      socks.pop()?.destroy();
      await eventually("the slot freed", () => watchersGauge(t) === MAX_WATCHERS - 1);
      const w = watching(t.client, "");
      await w.opened();
      expect(watchersGauge(t)).toBe(MAX_WATCHERS);
      w.stop();
      await w.done;
      await eventually("the client's slot freed", () => watchersGauge(t) === MAX_WATCHERS - 1);
    } finally {
      for (const s of socks) s.destroy();
    }
    await eventually("every slot freed", () => watchersGauge(t) === 0, { timeoutMs: 10_000 });
  }, 30_000);

  test("close() ends every watch at once: it is not held up by the 5 s grace", async () => {
    const t = await meta();
    const w1 = watching(t.client, "");
    const w2 = watching(t.client, "lab");
    await w1.opened();
    await w2.opened();
    const started = performance.now();
    await t.meta.close();
    await w1.done;
    await w2.done;
    expect(performance.now() - started).toBeLessThan(2_000);
    expect(watchersGauge(t)).toBe(0);
  });

  test("a watch outlives the server's idle timeout (10 s here): it stays open and hears a change made after it", async () => {
    const t = await meta({ confirm: { ping: answers, timeoutMs: 1_000 } });
    const w = watching(t.client, "");
    await w.opened();
    let ended = false;
    void w.done.then(() => (ended = true));
    await Bun.sleep(11_000);
    expect(ended).toBe(false);
    await t.client.register({ name: "late", pub_id: "late-1", host: "fd00::1" });
    await eventually("the change on the old watch", () => w.seen().includes("registered late"));
    w.stop();
    await w.done;
  }, 30_000);

  test("a watcher that does not read is cut off once its backlog passes 1 MiB, and its slot is freed", async () => {
    const t = await meta();
    const slow = await rawWatch(t);
    slow.pause();
    let closed = false;
    slow.on("close", () => (closed = true));
    await eventually("the slow watcher counted", () => watchersGauge(t) === 1);
    // Each register + deregister is two events of ~600 bytes; the socket buffers a few MiB first.
    const pubId = (i: number) => `p${i}-${"x".repeat(56)}`;
    for (let i = 0; watchersGauge(t) === 1 && i < 40_000; i++) {
      await t.client.register({ name: `n/${"y".repeat(100)}`, pub_id: pubId(i), host: "fd00::1" });
      await t.client.deregister(pubId(i));
    }
    expect(watchersGauge(t)).toBe(0);
    expect(t.logs.join("")).toContain("watch cut off: its client reads slower than the changes come");
    slow.resume();
    await eventually("the slow watcher's connection closed", () => closed);
  }, 60_000);
});

describe("the client's watch against a server that is not a metaserver's /v1/watch", () => {
  const bodies: Record<string, { type: string; body: string | Uint8Array; status?: number }> = {
    "/plain": { type: "text/plain", body: "hello" },
    "/binary": { type: "text/event-stream", body: Uint8Array.of(0x65, 0x76, 0x3a, 0xff, 0xfe, 0x0a, 0x0a) },
    "/badjson": { type: "text/event-stream", body: 'event: watching\ndata: {"type":"watching","prefix":""}\n\nevent: confirmed\ndata: {nope\n\n' },
    "/badshape": { type: "text/event-stream", body: 'event: stale\ndata: {"type":"stale","publisher":{"name":1}}\n\n' },
    "/longline": { type: "text/event-stream", body: `data: ${"x".repeat(100_000)}` },
    "/old": { type: "application/json", body: '{"error":"not_found","message":"no route GET /v1/watch"}', status: 404 },
    "/future": { type: "text/event-stream", body: 'event: watching\ndata: {"type":"watching","prefix":""}\n\nevent: moved\ndata: ???\n\n: note\n\n' },
  };
  let server: ReturnType<typeof Bun.serve>;
  const base = (path: string) => `http://127.0.0.1:${server.port}${path}`;

  test("garbage rejects with a StoaError that says so; an unknown event is skipped; an older server's 404 is its error", async () => {
    server = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      fetch(req) {
        // Each test base URL's path stands in for where a metaserver would be: …/v1/watch follows it.
        const at = bodies[new URL(req.url).pathname.replace(/\/v1\/watch$/, "")];
        if (at === undefined) return new Response("no", { status: 500 });
        return new Response(at.body, { status: at.status ?? 200, headers: { "Content-Type": at.type } });
      },
    });
    try {
      const watch = (path: string) => new MetaClient(base(path)).watch("", { onEvent: () => {} });
      await expect(watch("/plain")).rejects.toMatchObject({ code: "schema", message: expect.stringMatching(/something other than an event stream/) });
      await expect(watch("/binary")).rejects.toMatchObject({ code: "decode", message: expect.stringMatching(/not UTF-8/) });
      await expect(watch("/badjson")).rejects.toMatchObject({ code: "decode", message: expect.stringMatching(/confirmed event carries data that is not JSON/) });
      await expect(watch("/badshape")).rejects.toMatchObject({ code: "schema" });
      await expect(watch("/longline")).rejects.toMatchObject({ code: "too_large" });
      await expect(watch("/old")).rejects.toMatchObject({ status: 404, error: "not_found" });
      let opened = 0;
      await new MetaClient(base("/future")).watch("", { onEvent: () => {}, onOpen: () => opened++ });
      expect(opened).toBe(1);
    } finally {
      server.stop(true);
    }
  });
});

describe.if(redisMissing() === null)("a Redis store whose event feed breaks", () => {
  test("Redis stops: every watch ends (its client resyncs); once Redis is back a new watch hears changes again", async () => {
    await using redis = await startRedis();
    const t = await meta({ store: { kind: "redis", url: redis.url }, storeOptions: { keyPrefix: freshKeyPrefix() } });
    const w = watching(t.client, "");
    await w.opened();
    const started = performance.now();
    await redis.stop();
    await w.done;
    expect(performance.now() - started).toBeLessThan(5_000);
    await eventually("the watcher gone", () => watchersGauge(t) === 0);
    // Meanwhile a new watch would miss changes unseen: it is refused, not opened.
    const refused = await t.client.watch("", { onEvent: () => {}, signal: AbortSignal.timeout(5_000) }).then(
      () => null,
      (err: unknown) => err,
    );
    expect(refused).toBeInstanceOf(MetaApiError);
    expect([(refused as MetaApiError).status, (refused as MetaApiError).error]).toEqual([503, "store_unavailable"]);
    await redis.start();
    // Watches are refused until the metaserver's subscription is back (it dials every 250 ms).
    const again = await eventually("a watch accepted again", async () => {
      const w = watching(t.client, "");
      const outcome = await Promise.race([
        eventually("open", () => w.isOpen()).then(() => "open" as const),
        w.done.then(
          () => "ended" as const,
          () => "refused" as const,
        ),
      ]);
      return outcome === "open" ? w : undefined;
    }, { timeoutMs: 10_000, everyMs: 100 });
    await eventually("a registration once Redis is back", async () => {
      await t.client.register({ name: "back", pub_id: "back-1", host: "fd00::1" }).catch(() => undefined);
      return again.seen().includes("registered back");
    }, { timeoutMs: 10_000, everyMs: 200 });
    again.stop();
    await again.done;
  }, 30_000);
});
