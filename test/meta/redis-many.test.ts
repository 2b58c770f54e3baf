/**
 * Several metaservers over one Redis, in one process (real redis-server, real HTTP): who pings
 * a publisher when two are asked to confirm it at once (the lease), what happens when the one
 * that holds the lease dies, and Redis going away and coming back under a running metaserver.
 * The same across hosts and processes: test/e2e/meta-redis.test.ts.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { RedisClient } from "bun";
import type { PingOutcome } from "../../src/meta/confirm.ts";
import { DEFAULT_PORTS, MetaApiError } from "../../src/meta/protocol.ts";
import { RedisStore } from "../../src/meta/redis-store.ts";
import { startTestMeta, type TestMetaOptions } from "../fixtures/meta-helpers.ts";
import { freshKeyPrefix, redisMissing } from "../fixtures/meta-stores.ts";
import { startRedis, type TestRedis } from "../fixtures/redis.ts";
import { eventually } from "../helpers/eventually.ts";
import { rejection } from "../helpers/rejection.ts";

const missing = redisMissing();
if (missing !== null) console.log(`skipping redis-many.test.ts: ${missing}`);

const ANSWERED: PingOutcome = { ok: true, reply: { value: null, seq: 0, ts: "t" } };


describe.if(missing === null)("metaservers over one Redis", () => {
  let redis: TestRedis;
  beforeAll(async () => {
    redis = await startRedis({ persist: true });
  });
  afterAll(async () => {
    await redis.close();
  });

  /** Two metaservers on one key prefix, each with its own ping. */
  async function pair(options: [TestMetaOptions, TestMetaOptions] = [{}, {}]) {
    const keyPrefix = freshKeyPrefix();
    const store = { kind: "redis" as const, url: redis.url };
    const a = await startTestMeta({ store, storeOptions: { keyPrefix }, ...options[0] });
    const b = await startTestMeta({ store, storeOptions: { keyPrefix }, ...options[1] });
    return { a, b, keyPrefix, close: () => Promise.all([a.meta.close(), b.meta.close()]) };
  }

  const reg = (name: string, pub_id: string) => ({ name, pub_id, host: "127.0.0.1", ports: { ...DEFAULT_PORTS } });

  test("two metaservers asked to confirm one publisher at once ping it once, and both answer live", async () => {
    let pinged = 0;
    const ping = async () => {
      pinged++;
      await Bun.sleep(200);
      return ANSWERED;
    };
    const { a, b, close } = await pair([{ confirm: { ping } }, { confirm: { ping } }]);
    try {
      await a.client.register(reg("lab/one", "one"));
      const [viaA, viaB] = await Promise.all([a.client.confirm("one"), b.client.confirm("one")]);
      expect([viaA.state, viaB.state]).toEqual(["live", "live"]);
      expect(pinged).toBe(1);
      expect((await b.client.get("one")).state).toBe("live");
    } finally {
      await close();
    }
  });

  test("a failed ping through one metaserver is the answer of the other one that waited for it", async () => {
    let pinged = 0;
    const ping = async (): Promise<PingOutcome> => {
      pinged++;
      await Bun.sleep(200);
      return { ok: false, timedOut: false, reason: "no stoa gateway answered (test)" };
    };
    const { a, b, close } = await pair([{ confirm: { ping } }, { confirm: { ping } }]);
    try {
      await a.client.register(reg("lab/two", "two"));
      const [viaA, viaB] = await Promise.all([rejection(a.client.confirm("two"), MetaApiError), rejection(b.client.confirm("two"), MetaApiError)]);
      expect([viaA.status, viaA.error, viaB.status, viaB.error]).toEqual([502, "confirm_failed", 502, "confirm_failed"]);
      expect(pinged).toBe(1);
      expect(await a.client.findByName("lab/two")).toBeNull();
    } finally {
      await close();
    }
  });

  test("a lease left by a metaserver that died mid-ping ends by itself: the next confirmation pings", async () => {
    let pinged = 0;
    const ping = async () => {
      pinged++;
      return ANSWERED;
    };
    const { a, keyPrefix, close } = await pair([{ confirm: { ping, timeoutMs: 300 } }, {}]);
    // The dead metaserver: it took the lease (its ping timeout + 1 s) and never gave it back.
    const dead = await RedisStore.open(redis.url, { keyPrefix, adminOwner: "" });
    try {
      await a.client.register(reg("lab/three", "three"));
      const stored = await dead.get("three");
      expect(stored).not.toBeNull();
      expect(await dead.lease("three", stored?.generation ?? 0, 600)).toBe(true);
      await dead.close();
      const info = await a.client.confirm("three");
      expect(info.state).toBe("live");
      expect(pinged).toBe(1);
    } finally {
      await dead.close();
      await close();
    }
  });

  test("Redis down: requests answer 503 store_unavailable at once; back up, the registrations are there and served", { timeout: 30_000 }, async () => {
    const { a, b, close } = await pair([{ confirm: { ping: async () => ANSWERED } }, {}]);
    try {
      await a.client.register(reg("lab/four", "four"));
      await a.client.confirm("four");
      await redis.stop();
      const down = await rejection(b.client.get("four"), MetaApiError);
      expect([down.status, down.error]).toEqual([503, "store_unavailable"]);
      expect(down.message).toContain(redis.url);
      const writing = await rejection(a.client.register(reg("lab/five", "five")), MetaApiError);
      expect([writing.status, writing.error]).toEqual([503, "store_unavailable"]);
      await redis.start();
      // Persistence on: the registration survived the restart; both metaservers reconnect.
      await eventually("lab/four served again", async () => (await b.client.get("four").catch(() => null))?.state === "live", { timeoutMs: 10_000 });
      await eventually("a registration accepted again", async () => (await a.client.register(reg("lab/five", "five")).catch(() => null))?.state === "pending", { timeoutMs: 10_000 });
      expect((await b.client.list("lab")).map((p) => p.name)).toEqual(["lab/five", "lab/four"]);
    } finally {
      await close();
    }
  });

  test("after an outage every TTL clock restarts: a publisher whose heartbeats could not arrive is not swept stale at once", { timeout: 30_000 }, async () => {
    const { a, close } = await pair([{ confirm: { ping: async () => ANSWERED }, ttlMs: 1_500, deregisterAfterMs: 60_000, sweepIntervalMs: 50 }, {}]);
    try {
      await a.client.register(reg("lab/six", "six"));
      await a.client.confirm("six");
      await redis.stop();
      await Bun.sleep(2_000); // longer than the TTL: no heartbeat could have been recorded
      await redis.start();
      await eventually("lab/six served again", async () => (await a.client.get("six").catch(() => null))?.state === "live", { timeoutMs: 10_000 });
      // Its clock restarted when the store came back: still live a moment later, stale only after a TTL of silence.
      await Bun.sleep(300);
      expect((await a.client.get("six")).state).toBe("live");
      await eventually("lab/six stale after a TTL of silence", async () => (await a.client.get("six")).state === "stale", { timeoutMs: 10_000 });
      expect(a.logs.some((l) => l.includes("the Redis store answers again"))).toBe(true);
    } finally {
      await close();
    }
  });

  test("lookups by name through another metaserver follow every change (answered from memory until the change's event)", { timeout: 20_000 }, async () => {
    const { a, b, keyPrefix, close } = await pair([{ confirm: { ping: async () => ANSWERED } }, {}]);
    const raw = new RedisClient(redis.url);
    try {
      await a.client.register(reg("lab/eight", "eight"));
      expect((await b.client.findByName("lab/eight"))?.state).toBe("pending");
      expect((await b.client.findByName("lab/eight"))?.state).toBe("pending");
      await a.client.confirm("eight");
      await eventually("b sees it live", async () => (await b.client.findByName("lab/eight"))?.state === "live");
      await a.client.deregister("eight");
      await eventually("b sees it gone", async () => (await b.client.findByName("lab/eight")) === null);
      // Through the metaserver that wrote it, at once.
      await b.client.register(reg("lab/nine", "nine"));
      expect((await b.client.findByName("lab/nine"))?.state).toBe("pending");
      await b.client.deregister("nine");
      expect(await b.client.findByName("lab/nine")).toBeNull();
      // A change no event told of (written around the scripts) shows within the cache's second.
      await a.client.register(reg("lab/ten", "ten"));
      expect((await b.client.findByName("lab/ten"))?.state).toBe("pending");
      await raw.send("HSET", [`${keyPrefix}pub:ten`, "state", "stale"]);
      await eventually("the unannounced change", async () => (await b.client.findByName("lab/ten"))?.state === "stale", { timeoutMs: 5_000 });
    } finally {
      raw.close();
      await close();
    }
  });

  test("a metaserver with another admin token refuses to start on the same Redis", { timeout: 15_000 }, async () => {
    const keyPrefix = freshKeyPrefix();
    const store = { kind: "redis" as const, url: redis.url };
    const admin = (hex: string) => ({ required: true, admin: hex.repeat(64), writers: [], read: null });
    const first = await startTestMeta({ store, storeOptions: { keyPrefix }, auth: admin("a") });
    try {
      const err = await startTestMeta({ store, storeOptions: { keyPrefix }, auth: admin("b") }).then(
        () => null,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(Error);
      expect(String((err as Error).message)).toContain("same --token-file");
      const none = await startTestMeta({ store, storeOptions: { keyPrefix } }).then(
        () => null,
        (e: unknown) => e,
      );
      expect(String((none as Error).message)).toContain("another admin token");
      const same = await startTestMeta({ store, storeOptions: { keyPrefix }, auth: admin("a") });
      await same.meta.close();
    } finally {
      await first.meta.close();
    }
  });

  test("events made through one metaserver are heard by every metaserver's store", async () => {
    const keyPrefix = freshKeyPrefix();
    const one = await RedisStore.open(redis.url, { keyPrefix });
    const two = await RedisStore.open(redis.url, { keyPrefix });
    try {
      const heard: string[] = [];
      two.onEvent((e) => heard.push(`${e.type} ${e.publisher.name}`));
      const { info } = await one.register(reg("lab/seven", "seven"));
      const stored = await one.get("seven");
      await one.markLive("seven", stored?.generation ?? 0);
      await one.remove("seven");
      await eventually("three events heard", () => heard.length >= 3);
      expect(heard).toEqual(["registered lab/seven", "confirmed lab/seven", "removed lab/seven"]);
      expect(info.name).toBe("lab/seven");
    } finally {
      await one.close();
      await two.close();
    }
  });
});
