/**
 * The Redis task queue (src/circles/redis-queue.ts) against a real redis-server
 * (test/fixtures/redis.ts): plays through in-process worker threads, CONTEXT_ID and the db hash
 * per circle, the task record's statuses in `rhai_task:<id>`, limits with the worker surviving,
 * Redis killed mid-run (execution errors naming Redis within the timeout, then recovery), a
 * circle with no worker, close with plays in flight. A killed `stoa circles worker` process is
 * in worker.test.ts.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { RedisClient } from "bun";
import { RedisScripts, RedisTaskQueue, RedisWorkers } from "../../src/circles/redis-queue.ts";
import { decodeTaskRecord } from "../../src/circles/protocol.ts";
import type { PlayOutcome } from "../../src/circles/queue.ts";
import { createLogger } from "../../src/core/log.ts";
import { newPrivateKey, publicKeyHex } from "../fixtures/circles-client.ts";
import { type TestRedis, startRedis } from "../fixtures/redis.ts";
import { eventually } from "../helpers/eventually.ts";

const log = createLogger({ level: "error", name: "test" });
const A = publicKeyHex(newPrivateKey());
const B = publicKeyHex(newPrivateKey());
let redis: TestRedis;
let queue: RedisTaskQueue;
let client: RedisClient;

const busy = (ms: number, text: string) => `const t = Date.now(); while (Date.now() - t < ${ms}) {} ${JSON.stringify(text)}`;

function play(q: RedisTaskQueue, circle: string, script: string, timeoutMs = 2_000): Promise<PlayOutcome> {
  return q.submit({ circle, caller: "", script, timeoutMs });
}

beforeAll(async () => {
  redis = await startRedis();
  client = new RedisClient(redis.url);
  await client.connect();
  queue = await RedisTaskQueue.start({ url: redis.url, circles: [A, B], log, workersHere: 1 });
});

afterAll(async () => {
  await queue.close(0);
  client.close();
  await redis.close();
});

describe("plays over Redis", () => {
  test("40 + 2 answers 42; CONTEXT_ID is the circle; CALLER_ID the caller", async () => {
    expect(await play(queue, A, "40 + 2")).toEqual({ ok: true, output: "42" });
    expect(await play(queue, A, "CONTEXT_ID")).toEqual({ ok: true, output: A });
    expect(await play(queue, B, "CONTEXT_ID")).toEqual({ ok: true, output: B });
    expect(await queue.submit({ circle: B, caller: A, script: "CALLER_ID", timeoutMs: 2_000 })).toEqual({ ok: true, output: A });
  });

  test("each circle's db is its own Redis hash circle_db:<pk>", async () => {
    expect(await play(queue, A, 'db.set("k", "from A"); db.get("k")')).toEqual({ ok: true, output: "from A" });
    expect(await play(queue, B, 'String(db.get("k"))')).toEqual({ ok: true, output: "null" });
    expect(await play(queue, A, 'db.get("k")')).toEqual({ ok: true, output: "from A" });
    expect(await client.send("HGETALL", [`circle_db:${A}`])).toEqual({ k: "from A" });
    expect(await client.send("EXISTS", [`circle_db:${B}`])).toBe(0);
  });

  test("nothing but db outlives a play", async () => {
    expect(await play(queue, A, "globalThis.leak = 1; 'set'")).toEqual({ ok: true, output: "set" });
    expect(await play(queue, A, "typeof leak")).toEqual({ ok: true, output: "undefined" });
  });

  test("many plays at once are answered by their own ids", async () => {
    const outcomes = await Promise.all(Array.from({ length: 300 }, (_, i) => play(queue, i % 2 ? A : B, `${i} * 2`, 5_000)));
    outcomes.forEach((outcome, i) => expect(outcome).toEqual({ ok: true, output: String(i * 2) }));
  });

  test("an infinite loop times out and the worker goes on; so does a memory bomb, as an execution error", async () => {
    expect(await play(queue, A, "for (;;) {}", 300)).toEqual({ ok: false, kind: "timeout", message: "the script ran over its time limit (300 ms) and was stopped" });
    expect(await play(queue, A, "40 + 2")).toEqual({ ok: true, output: "42" });
    const bomb = await play(queue, A, "const a = []; for (;;) a.push({ n: a.length })", 10_000);
    expect(bomb).toMatchObject({ ok: false, kind: "execution" });
    expect(!bomb.ok && bomb.message).toContain("memory limit");
    expect(await play(queue, A, "40 + 2")).toEqual({ ok: true, output: "42" });
  });

  test("healthy: PING answers", async () => {
    expect(await queue.healthy()).toMatchObject({ ok: true });
  });
});

describe("the task record", () => {
  test("moves pending → processing → completed in rhai_task:<id>, claimed from rhai_tasks:<pk>", async () => {
    const C = publicKeyHex(newPrivateKey());
    const q = await RedisTaskQueue.start({ url: redis.url, circles: [C], log, workersHere: 0 });
    let workers: RedisWorkers | null = null;
    try {
      const answer = play(q, C, busy(400, "done"), 5_000);
      const id = await eventually("the play is queued", async () => ((await client.send("LRANGE", [`rhai_tasks:${C}`, "0", "-1"])) as string[])[0]);
      const pending = (await client.send("HGETALL", [`rhai_task:${id}`])) as Record<string, string>;
      expect(pending).toMatchObject({ id, circle: C, caller: "", status: "pending", output: "", error: "", timeout_ms: "5000", attempts: "0" });
      expect(pending.script).toContain("Date.now()");
      // A whole TaskRecord (protocol.ts), plus the waiting server's channel.
      expect(decodeTaskRecord(pending)).toMatchObject({ id, status: "pending", attempts: 0, timeout_ms: 5_000 });
      expect(pending.updated_at).toBe(pending.created_at as string);
      expect(pending.reply_to).toStartWith("rhai_done:");
      workers = await RedisWorkers.start({ url: redis.url, circles: [C], log, perCircle: 1 });
      await eventually("the worker claims it", async () => (await client.send("HGET", [`rhai_task:${id}`, "status"])) === "processing");
      const [worker] = workers.workerIds;
      expect(await client.send("LRANGE", [`rhai_processing:${C}:${worker}`, "0", "-1"])).toEqual([id]);
      expect(await client.send("HGET", [`rhai_task:${id}`, "attempts"])).toBe("1");
      expect(await answer).toEqual({ ok: true, output: "done" });
      const done = (await client.send("HGETALL", [`rhai_task:${id}`])) as Record<string, string>;
      expect(done).toMatchObject({ status: "completed", output: "done", error: "" });
      expect(Number(done.updated_at)).toBeGreaterThanOrEqual(Number(done.created_at));
      expect(await client.send("LLEN", [`rhai_processing:${C}:${worker}`])).toBe(0);
      const timedOut = await play(q, C, "for (;;) {}", 200);
      expect(timedOut).toMatchObject({ ok: false, kind: "timeout" });
      const failed = await play(q, C, "throw new Error('no')");
      expect(failed).toMatchObject({ ok: false, kind: "execution" });
      const statuses = await eventually("both are settled in their hashes", async () => {
        const ids = ((await client.send("KEYS", ["rhai_task:*"])) as string[]).filter((key) => key !== `rhai_task:${id}`);
        const all = await Promise.all(ids.map((key) => client.send("HGETALL", [key]) as Promise<Record<string, string>>));
        const ours = all.filter((record) => record.circle === C);
        return ours.length === 2 ? ours.map((record) => record.status).sort() : undefined;
      });
      expect(statuses).toEqual(["error", "timeout"]);
    } finally {
      await workers?.close();
      await q.close(0);
    }
  });

  test("a circle with no worker: the play answers that no worker took it, naming the command to start one", async () => {
    const C = publicKeyHex(newPrivateKey());
    const q = await RedisTaskQueue.start({ url: redis.url, circles: [C], log, workersHere: 0 });
    try {
      const outcome = await play(q, C, "1", 200);
      expect(outcome).toMatchObject({ ok: false, kind: "execution" });
      expect(!outcome.ok && outcome.message).toContain(`stoa circles worker --redis-url ${redis.url} -k ${C}`);
    } finally {
      await q.close(0);
    }
  });
});

/** EVALSHA and EVAL calls this redis-server ran so far (INFO commandstats). */
async function scriptCalls(): Promise<number> {
  const info = String(await client.send("INFO", ["commandstats"]));
  return [...info.matchAll(/^cmdstat_eval(?:sha)?:calls=(\d+)/gm)].reduce((sum, match) => sum + Number(match[1]), 0);
}

describe("batched round trips", () => {
  test("plays submitted at once (two circles) go in one SUBMIT each turn, in order, and all settle in their hashes", async () => {
    const [C, D] = [publicKeyHex(newPrivateKey()), publicKeyHex(newPrivateKey())];
    const q = await RedisTaskQueue.start({ url: redis.url, circles: [C, D], log, workersHere: 0 });
    let workers: RedisWorkers | null = null;
    try {
      const before = await scriptCalls();
      const answers = Array.from({ length: 150 }, (_, i) => play(q, i % 3 ? C : D, `${i} + 1`, 10_000));
      const queued = await eventually("all are queued", async () => {
        const [c, d] = (await Promise.all([client.send("LRANGE", [`rhai_tasks:${C}`, "0", "-1"]), client.send("LRANGE", [`rhai_tasks:${D}`, "0", "-1"])])) as [string[], string[]];
        return c.length + d.length === 150 ? [...c, ...d] : undefined;
      });
      // LPUSHed in submission order: the oldest at the right, taken first.
      const seqs = (await client.send("LRANGE", [`rhai_tasks:${C}`, "0", "-1"])) as string[];
      expect(seqs.map((id) => Number(id.split(".")[1]))).toEqual(seqs.map((id) => Number(id.split(".")[1])).sort((a, b) => b - a));
      for (const id of queued) expect(await client.send("HGET", [`rhai_task:${id}`, "status"])).toBe("pending");
      // 150 plays in one turn: a SUBMIT per 64 (and an EVAL after a NOSCRIPT at most), not one per play.
      expect((await scriptCalls()) - before).toBeLessThanOrEqual(6);
      workers = await RedisWorkers.start({ url: redis.url, circles: [C, D], log, perCircle: 1 });
      (await Promise.all(answers)).forEach((outcome, i) => expect(outcome).toEqual({ ok: true, output: String(i + 1) }));
      for (const id of queued) {
        const record = decodeTaskRecord((await client.send("HGETALL", [`rhai_task:${id}`])) as Record<string, string>);
        expect(record).toMatchObject({ status: "completed", error: "", attempts: 1 });
        expect(record.output).toBe(String(Number(record.script.split(" ")[0]) + 1));
      }
      expect(await client.send("KEYS", [`rhai_processing:${C}:*`])).toEqual([]);
    } finally {
      await workers?.close();
      await q.close(0);
    }
  }, 20_000);

  test("one COMPLETE of several plays skips the one reclaimed meanwhile (and one whose hash is gone) and completes the others", async () => {
    const C = publicKeyHex(newPrivateKey());
    const scripts = new RedisScripts(client);
    const now = Date.now();
    const ids = ["batch.1", "batch.2", "batch.3", "batch.4"].map((id) => `${C.slice(0, 8)}.${id}`);
    await scripts.submit("", ids.map((id, i) => ({ id, circle: C, caller: "", script: `${i}`, createdAt: now, timeoutMs: 5_000 })));
    const claimed = await scripts.claim(C, "w-test", 16, "", []);
    expect(claimed.map((record) => record.id)).toEqual(ids);
    expect(await client.send("LLEN", [`rhai_tasks:${C}`])).toBe(0);
    for (const record of claimed) {
      expect(decodeTaskRecord(record)).toMatchObject({ status: "processing", attempts: 1 });
      expect(await client.send("HGETALL", [`rhai_task:${record.id}`])).toEqual(record);
    }
    const [first, reclaimed, gone, last] = ids as [string, string, string, string];
    // Another worker took `reclaimed` meanwhile; `gone` expired.
    await client.send("LREM", [`rhai_processing:${C}:w-test`, "1", reclaimed]);
    await client.send("LPUSH", [`rhai_processing:${C}:w-other`, reclaimed]);
    await client.send("DEL", [`rhai_task:${gone}`]);
    await scripts.complete(C, "w-test", [
      { id: first, status: "completed", text: "0", replyTo: "" },
      { id: reclaimed, status: "completed", text: "stale answer", replyTo: "" },
      { id: gone, status: "error", text: "x", replyTo: "" },
      { id: last, status: "timeout", text: "too slow", replyTo: "" },
    ]);
    expect(await client.send("HGETALL", [`rhai_task:${first}`])).toMatchObject({ status: "completed", output: "0", error: "" });
    expect(await client.send("HGETALL", [`rhai_task:${last}`])).toMatchObject({ status: "timeout", output: "", error: "too slow" });
    expect(await client.send("HGETALL", [`rhai_task:${reclaimed}`])).toMatchObject({ status: "processing", output: "" });
    expect(await client.send("EXISTS", [`rhai_task:${gone}`])).toBe(0);
    // Nobody subscribed (reply_to ""): the replies wait in their lists; none for the skipped two.
    expect(await client.send("LRANGE", [`rhai_reply:${first}`, "0", "-1"])).toEqual(["completed\n0"]);
    expect(await client.send("LRANGE", [`rhai_reply:${last}`, "0", "-1"])).toEqual(["timeout\ntoo slow"]);
    expect(await client.send("EXISTS", [`rhai_reply:${reclaimed}`])).toBe(0);
    expect(await client.send("EXISTS", [`rhai_reply:${gone}`])).toBe(0);
    expect(await client.send("TTL", [`rhai_task:${first}`])).toBeGreaterThan(0);
    expect(await client.send("LRANGE", [`rhai_processing:${C}:w-test`, "0", "-1"])).toEqual([]);
    expect(await client.send("LRANGE", [`rhai_processing:${C}:w-other`, "0", "-1"])).toEqual([reclaimed]);
  });

  test("CLAIM completes the plays it is given first, then claims: one round trip", async () => {
    const C = publicKeyHex(newPrivateKey());
    const scripts = new RedisScripts(client);
    const [a, b, c] = ["1", "2", "3"].map((n) => `${C.slice(0, 8)}.claim.${n}`) as [string, string, string];
    await scripts.submit("", [{ id: a, circle: C, caller: "", script: "1", createdAt: Date.now(), timeoutMs: 5_000 }]);
    const one = await scripts.claim(C, "w-test", 16, "", []);
    expect(one.map((record) => record.id)).toEqual([a]);
    await scripts.submit("", [b, c].map((id) => ({ id, circle: C, caller: "", script: "2", createdAt: Date.now(), timeoutMs: 5_000 })));
    const two = await scripts.claim(C, "w-test", 1, "", [{ id: a, status: "completed", text: "1", replyTo: "" }]);
    expect(await client.send("HGET", [`rhai_task:${a}`, "status"])).toBe("completed");
    expect(two).toMatchObject([{ id: b, status: "processing", attempts: "1" }]);
    expect(await client.send("LRANGE", [`rhai_processing:${C}:w-test`, "0", "-1"])).toEqual([b]);
    expect(await client.send("LRANGE", [`rhai_tasks:${C}`, "0", "-1"])).toEqual([c]);
  });
});

describe("a worker thread that dies", () => {
  test("its play is reclaimed at once and runs on the thread that replaces it", async () => {
    const C = publicKeyHex(newPrivateKey());
    const q = await RedisTaskQueue.start({ url: redis.url, circles: [C], log, workersHere: 0 });
    const workers = await RedisWorkers.start({ url: redis.url, circles: [C], log, perCircle: 1 });
    try {
      const answer = play(q, C, busy(600, "survived"), 10_000);
      const [first] = workers.workerIds;
      const id = await eventually("the thread claims the play", async () => {
        const claimed = ((await client.send("LRANGE", [`rhai_processing:${C}:${first}`, "0", "-1"])) as string[])[0];
        return claimed !== undefined && (await client.send("HGET", [`rhai_task:${claimed}`, "status"])) === "processing" ? claimed : undefined;
      });
      workers.terminateThread(first as string);
      expect(await answer).toEqual({ ok: true, output: "survived" });
      expect(await client.send("HGET", [`rhai_task:${id}`, "attempts"])).toBe("2");
      expect(workers.workerIds).toHaveLength(1);
      expect(workers.workerIds[0]).not.toBe(first);
      expect(await client.send("SMEMBERS", [`rhai_workers:${C}`])).toEqual(workers.workerIds);
    } finally {
      await workers.close();
      await q.close(0);
    }
  }, 15_000);
});

describe("Redis down", () => {
  test("plays in flight and new ones answer execution errors naming Redis within the timeout; all recovers when it is back", async () => {
    const inflight = Array.from({ length: 3 }, () => play(queue, A, busy(1_500, "late"), 4_000));
    await eventually("a play runs", async () => {
      const keys = (await client.send("KEYS", [`rhai_processing:${A}:*`])) as string[];
      return keys.length > 0 && (await client.send("LLEN", [keys[0] as string])) > 0;
    });
    const stopped = Date.now();
    await redis.stop();
    for (const outcome of await Promise.all(inflight)) {
      expect(outcome).toMatchObject({ ok: false, kind: "execution" });
      expect(!outcome.ok && outcome.message).toContain(`Redis at ${redis.url}`);
    }
    expect(Date.now() - stopped).toBeLessThan(4_000);
    const meanwhile = await play(queue, A, "40 + 2");
    expect(meanwhile).toMatchObject({ ok: false, kind: "execution" });
    expect(!meanwhile.ok && meanwhile.message).toContain(`Redis at ${redis.url} is unavailable`);
    expect(await queue.healthy()).toMatchObject({ ok: false });
    await redis.start();
    client.close();
    client = new RedisClient(redis.url);
    await client.connect();
    await eventually("plays run again", async () => (await play(queue, A, "40 + 2")).ok, { timeoutMs: 10_000 });
    expect(await play(queue, B, "CONTEXT_ID")).toEqual({ ok: true, output: B });
    expect(await queue.healthy()).toMatchObject({ ok: true });
  }, 30_000);
});

describe("close", () => {
  test("answers every play in flight, refuses new ones, removes its workers' heartbeats", async () => {
    const C = publicKeyHex(newPrivateKey());
    const q = await RedisTaskQueue.start({ url: redis.url, circles: [C], log, workersHere: 1 });
    const inflight = Array.from({ length: 4 }, () => play(q, C, "for (;;) {}", 10_000));
    await eventually("a loop runs", async () => (await client.send("KEYS", [`rhai_processing:${C}:*`])).length > 0);
    const started = Date.now();
    await q.close(200);
    expect(Date.now() - started).toBeLessThan(6_000);
    for (const outcome of await Promise.all(inflight)) expect(outcome).toEqual({ ok: false, kind: "execution", message: "server stopping" });
    expect(await play(q, C, "1")).toEqual({ ok: false, kind: "execution", message: "server stopping" });
    expect(await client.send("SMEMBERS", [`rhai_workers:${C}`])).toEqual([]);
    expect(await client.send("KEYS", [`rhai_processing:${C}:*`])).toEqual([]);
  }, 15_000);
});
