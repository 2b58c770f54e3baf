import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { RedisClient } from "bun";
import { KV_LIMITS, RedisKv, SqliteKv, type CircleKv } from "../../src/circles/kv.ts";
import { StoaError } from "../../src/core/errors.ts";
import { startRedis, type TestRedis } from "../fixtures/redis.ts";

const CIRCLE_A = "02" + "a".repeat(64);
const CIRCLE_B = "03" + "b".repeat(64);

const root = mkdtempSync(join(tmpdir(), "stoa-kv-"));
let redis: TestRedis;
let client: RedisClient;
beforeAll(async () => {
  redis = await startRedis();
  client = new RedisClient(redis.url);
  await client.connect();
});
afterAll(async () => {
  client.close();
  await redis.close();
  rmSync(root, { recursive: true, force: true });
});

let n = 0;
interface Backend {
  name: string;
  /** A fresh store pair for two circles (a new dir, or new circle ids in the same Redis). */
  open(): { a: CircleKv; b: CircleKv };
}
const backends: Backend[] = [
  {
    name: "SqliteKv",
    open: () => {
      const dir = join(root, `s${n++}`);
      return { a: new SqliteKv(dir, CIRCLE_A), b: new SqliteKv(dir, CIRCLE_B) };
    },
  },
  {
    name: "RedisKv",
    open: () => {
      const suffix = String(n++).padStart(4, "0");
      return { a: new RedisKv(client, CIRCLE_A + suffix), b: new RedisKv(client, CIRCLE_B + suffix) };
    },
  },
];

async function rejection(fn: () => unknown): Promise<StoaError> {
  try {
    await fn();
  } catch (err) {
    expect(err).toBeInstanceOf(StoaError);
    return err as StoaError;
  }
  throw new Error("expected a StoaError");
}

for (const backend of backends) {
  describe(`${backend.name}: the four operations`, () => {
    test("get of a missing key is null; set then get; set again replaces", async () => {
      const { a } = backend.open();
      expect(await a.get("k")).toBeNull();
      await a.set("k", "v1");
      expect(await a.get("k")).toBe("v1");
      await a.set("k", "v2");
      expect(await a.get("k")).toBe("v2");
      await a.set("empty", "");
      expect(await a.get("empty")).toBe("");
    });

    test("del says whether the key existed", async () => {
      const { a } = backend.open();
      await a.set("k", "v");
      expect(await a.del("k")).toBe(true);
      expect(await a.del("k")).toBe(false);
      expect(await a.get("k")).toBeNull();
    });

    test("list: prefix-filtered, sorted by code point, glob characters literal", async () => {
      const { a } = backend.open();
      for (const key of ["b:2", "a:1", "b:1", "b:10", "b*", "b?x", "c", "b:\u{1F600}", "b:\uFFFF"]) await a.set(key, "x");
      expect(await a.list("b:")).toEqual(["b:1", "b:10", "b:2", "b:\uFFFF", "b:\u{1F600}"]);
      expect(await a.list("b*")).toEqual(["b*"]);
      expect(await a.list("b?")).toEqual(["b?x"]);
      expect((await a.list("")).length).toBe(9);
      expect(await a.list("zzz")).toEqual([]);
    });

    test(`list answers at most ${KV_LIMITS.listKeys} keys, the first ones`, async () => {
      const { a } = backend.open();
      const total = KV_LIMITS.listKeys + 5;
      await Promise.all(Array.from({ length: total }, (_, i) => a.set(`k${String(i).padStart(5, "0")}`, "x")));
      const keys = await a.list("k");
      expect(keys.length).toBe(KV_LIMITS.listKeys);
      expect(keys[0]).toBe("k00000");
      expect(keys.at(-1)).toBe(`k${String(KV_LIMITS.listKeys - 1).padStart(5, "0")}`);
    });

    test("keys and values over their limits, and empty keys, are refused with what to do", async () => {
      const { a } = backend.open();
      expect((await rejection(() => a.set("k".repeat(KV_LIMITS.keyBytes + 1), "v"))).code).toBe("too_large");
      expect((await rejection(() => a.get("é".repeat(KV_LIMITS.keyBytes / 2 + 1)))).code).toBe("too_large");
      expect((await rejection(() => a.set("k", "v".repeat(KV_LIMITS.valueBytes + 1)))).message).toContain("split it");
      expect((await rejection(() => a.set("", "v"))).code).toBe("usage");
      await a.set("k".repeat(KV_LIMITS.keyBytes), "v".repeat(KV_LIMITS.valueBytes));
      expect((await a.get("k".repeat(KV_LIMITS.keyBytes)))?.length).toBe(KV_LIMITS.valueBytes);
    });

    test("two circles never see each other's keys", async () => {
      const { a, b } = backend.open();
      await a.set("shared-name", "a's");
      await b.set("shared-name", "b's");
      await b.set("only-b", "x");
      expect(await a.get("shared-name")).toBe("a's");
      expect(await b.get("shared-name")).toBe("b's");
      expect(await a.get("only-b")).toBeNull();
      expect(await a.list("")).toEqual(["shared-name"]);
      expect(await a.del("only-b")).toBe(false);
      expect(await b.get("only-b")).toBe("x");
    });
  });
}

describe("SqliteKv: the file", () => {
  test("one 0600 file per circle under the given dir (0700), WAL, data kept across reopen", () => {
    const dir = join(root, `f${n++}`, "circles");
    const kv = new SqliteKv(dir, CIRCLE_A);
    kv.set("k", "v");
    expect(kv.path).toBe(join(dir, `${CIRCLE_A}.sqlite`));
    expect(statSync(dir).mode & 0o777).toBe(0o700);
    for (const file of [kv.path, `${kv.path}-wal`, `${kv.path}-shm`]) expect(statSync(file).mode & 0o777).toBe(0o600);
    kv.close();
    const again = new SqliteKv(dir, CIRCLE_A);
    expect(again.get("k")).toBe("v");
    again.close();
  });

  test("a circle id that could name a path is refused", () => {
    for (const bad of ["../x", "a/b", "", "a.b"]) expect(() => new SqliteKv(join(root, "bad"), bad)).toThrow(StoaError);
  });
});

describe("RedisKv: the hash", () => {
  test("lives in circle_db:<circle>", async () => {
    const kv = new RedisKv(client, `${CIRCLE_A}hash`);
    await kv.set("k", "v");
    expect(kv.hash).toBe(`circle_db:${CIRCLE_A}hash`);
    expect(await client.send("HGET", [`circle_db:${CIRCLE_A}hash`, "k"])).toBe("v");
  });

  test("the fixture's stop/start: the same port and a reconnecting client works again", async () => {
    const flaky = await startRedis();
    const reconnecting = new RedisClient(flaky.url);
    try {
      const kv = new RedisKv(reconnecting, CIRCLE_A);
      await kv.set("k", "v");
      await flaky.stop();
      expect(flaky.running()).toBe(false);
      await flaky.start();
      expect(await kv.get("k")).toBeNull(); // no persistence asked: a restart starts empty
      await kv.set("k", "again");
      expect(await kv.get("k")).toBe("again");
    } finally {
      reconnecting.close();
      await flaky.close();
    }
  });

  test("persist: true keeps the data across stop/start", async () => {
    const durable = await startRedis({ persist: true });
    try {
      const first = new RedisClient(durable.url);
      await new RedisKv(first, CIRCLE_A).set("k", "kept");
      first.close();
      await durable.stop();
      await durable.start();
      const second = new RedisClient(durable.url);
      expect(await new RedisKv(second, CIRCLE_A).get("k")).toBe("kept");
      second.close();
    } finally {
      await durable.close();
    }
  });

  test("Redis down: a prompt error that names Redis and says what to check", async () => {
    const down = await startRedis();
    const lone = new RedisClient(down.url, { autoReconnect: false, connectionTimeout: 1000 });
    await lone.connect();
    await down.close();
    const kv = new RedisKv(lone, CIRCLE_A);
    const started = Date.now();
    const err = await rejection(() => kv.get("k"));
    expect(err.message).toContain("Redis HGET");
    expect(err.message).toContain("redis-server");
    expect(Date.now() - started).toBeLessThan(5000);
    lone.close();
  });
});
