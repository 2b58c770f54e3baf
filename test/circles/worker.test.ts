/**
 * `stoa circles worker` (src/cli/circles.ts + src/circles/redis-queue.ts RedisWorkers), run from
 * source as its own process against a real redis-server: it takes its circles' plays; SIGKILL
 * mid-play loses nothing (another worker takes the play once the heartbeat expired, attempts 2);
 * a play lost twice fails with a reason; SIGTERM mid-play finishes or gives back the play,
 * removes the heartbeat and exits 0.
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { RedisClient } from "bun";
import { join } from "node:path";
import { HEARTBEAT_TTL_MS, RedisTaskQueue, RedisWorkers } from "../../src/circles/redis-queue.ts";
import { createLogger } from "../../src/core/log.ts";
import { newPrivateKey, publicKeyHex } from "../fixtures/circles-client.ts";
import { type Proc, Scope } from "../fixtures/e2e-helpers.ts";
import { type TestRedis, startRedis } from "../fixtures/redis.ts";
import { eventually } from "../helpers/eventually.ts";

const MAIN = join(import.meta.dir, "..", "..", "src", "main.ts");
const log = createLogger({ level: "error", name: "test" });
const scope = new Scope();
let redis: TestRedis;
let client: RedisClient;

const busy = (ms: number, text: string) => `const t = Date.now(); while (Date.now() - t < ${ms}) {} ${JSON.stringify(text)}`;

async function startWorker(circle: string): Promise<{ proc: Proc; id: string }> {
  const proc = scope.spawn("circles worker", [process.execPath, MAIN, "circles", "worker", "--redis-url", redis.url, "-k", circle]);
  const line = await proc.waitFor("out", /^circles worker: 1 circle from \S+ \((\S+)\)$/m, 15_000);
  return { proc, id: line[1] ?? "" };
}

/** Waits until `worker` has claimed a play of `circle` (in its processing list, status processing); answers the play's id. */
async function claimedBy(circle: string, worker: string): Promise<string> {
  return await eventually(`worker ${worker} claims a play`, async () => {
    const id = ((await client.send("LRANGE", [`rhai_processing:${circle}:${worker}`, "0", "-1"])) as string[])[0];
    return id !== undefined && (await client.send("HGET", [`rhai_task:${id}`, "status"])) === "processing" ? id : undefined;
  });
}

beforeAll(async () => {
  redis = await startRedis();
  client = new RedisClient(redis.url);
  await client.connect();
});
afterEach(() => scope.cleanup());
afterAll(async () => {
  client.close();
  await redis.close();
});

describe("stoa circles worker", () => {
  test("takes its circle's plays from Redis", async () => {
    const C = publicKeyHex(newPrivateKey());
    const queue = await RedisTaskQueue.start({ url: redis.url, circles: [C], log, workersHere: 0 });
    try {
      await startWorker(C);
      expect(await queue.submit({ circle: C, caller: "", script: "40 + 2", timeoutMs: 5_000 })).toEqual({ ok: true, output: "42" });
      expect(await queue.submit({ circle: C, caller: "", script: "CONTEXT_ID", timeoutMs: 5_000 })).toEqual({ ok: true, output: C });
    } finally {
      await queue.close(0);
    }
  }, 20_000);

  test("SIGKILL mid-play: another worker takes the play once the heartbeat expired", async () => {
    const C = publicKeyHex(newPrivateKey());
    const queue = await RedisTaskQueue.start({ url: redis.url, circles: [C], log, workersHere: 0 });
    let other: RedisWorkers | null = null;
    try {
      const first = await startWorker(C);
      const answer = queue.submit({ circle: C, caller: "", script: busy(1_500, "survived"), timeoutMs: 15_000 });
      const id = await claimedBy(C, first.id);
      first.proc.proc.kill("SIGKILL");
      await first.proc.exited;
      const killed = Date.now();
      other = await RedisWorkers.start({ url: redis.url, circles: [C], log, perCircle: 1 });
      expect(await answer).toEqual({ ok: true, output: "survived" });
      // Not before the dead worker's heartbeat could expire.
      expect(Date.now() - killed).toBeGreaterThanOrEqual(HEARTBEAT_TTL_MS - 1_000);
      expect(await client.send("HMGET", [`rhai_task:${id}`, "status", "attempts"])).toEqual(["completed", "2"]);
      expect(await client.send("SMEMBERS", [`rhai_workers:${C}`])).toEqual(other.workerIds);
    } finally {
      await other?.close();
      await queue.close(0);
    }
  }, 30_000);

  test("a play whose worker dies twice fails with the reason, once", async () => {
    const C = publicKeyHex(newPrivateKey());
    const queue = await RedisTaskQueue.start({ url: redis.url, circles: [C], log, workersHere: 0 });
    let sweeper: RedisWorkers | null = null;
    try {
      const answer = queue.submit({ circle: C, caller: "", script: busy(10_000, "never"), timeoutMs: 25_000 });
      const first = await startWorker(C);
      await claimedBy(C, first.id);
      first.proc.proc.kill("SIGKILL");
      const second = await startWorker(C);
      await claimedBy(C, second.id);
      second.proc.proc.kill("SIGKILL");
      // A process serving another circle does not sweep C; one serving C does.
      sweeper = await RedisWorkers.start({ url: redis.url, circles: [C], log, perCircle: 1 });
      const outcome = await answer;
      expect(outcome).toMatchObject({ ok: false, kind: "execution" });
      expect(!outcome.ok && outcome.message).toMatch(/stopped answering \(its heartbeat expired\), 2 times/);
    } finally {
      await sweeper?.close();
      await queue.close(0);
    }
  }, 40_000);

  test("SIGTERM mid-play: the play is finished or given back, the heartbeat removed, exit 0", async () => {
    const C = publicKeyHex(newPrivateKey());
    const queue = await RedisTaskQueue.start({ url: redis.url, circles: [C], log, workersHere: 0 });
    let other: RedisWorkers | null = null;
    try {
      const worker = await startWorker(C);
      const answer = queue.submit({ circle: C, caller: "", script: busy(500, "finished"), timeoutMs: 10_000 });
      await claimedBy(C, worker.id);
      worker.proc.proc.kill("SIGTERM");
      expect(await worker.proc.exitWithin(8_000)).toBe(0);
      expect(await client.send("EXISTS", [`rhai_worker:${worker.id}`])).toBe(0);
      expect(await client.send("SMEMBERS", [`rhai_workers:${C}`])).toEqual([]);
      other = await RedisWorkers.start({ url: redis.url, circles: [C], log, perCircle: 1 });
      expect(await answer).toEqual({ ok: true, output: "finished" });
    } finally {
      await other?.close();
      await queue.close(0);
    }
  }, 20_000);
});
