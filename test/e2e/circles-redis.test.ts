/**
 * `stoa circles serve --redis-url` and `stoa circles worker` as black boxes (dist/stoa) on a real
 * redis-server: plays through the server's own worker and a second worker process, the circle's
 * db in its Redis hash, /health following Redis, and SIGTERM of both leaving no process and no
 * worker registration behind.
 */
import { afterAll, afterEach, beforeAll, expect, test } from "bun:test";
import { RedisClient } from "bun";
import { RpcClient, newPrivateKey, publicKeyHex } from "../fixtures/circles-client.ts";
import { Scope, freePorts, requireBinary } from "../fixtures/e2e-helpers.ts";
import { type TestRedis, startRedis } from "../fixtures/redis.ts";
import { eventually } from "../helpers/eventually.ts";

requireBinary();
const scope = new Scope();
let redis: TestRedis;
let client: RedisClient;

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

test("serve --redis-url -k A and a second worker process: plays run on both, db in Redis, clean SIGTERM", async () => {
  const A = publicKeyHex(newPrivateKey());
  const [port] = freePorts(1);
  const server = scope.stoa("circles serve", ["circles", "serve", "--port", String(port), "-k", A, "--redis-url", redis.url, "--task-timeout", "5s"]);
  const ws = (await server.waitFor("out", /^circles: (ws:\/\/\S+) /m))[1] ?? "";
  const worker = scope.stoa("circles worker", ["circles", "worker", "--redis-url", redis.url, "-k", A]);
  await worker.waitFor("out", /^circles worker: 1 circle from /m);
  await eventually("two workers serve A", async () => ((await client.send("SMEMBERS", [`rhai_workers:${A}`])) as string[]).length === 2);

  const rpc = await RpcClient.open(`${ws}/${A}`);
  expect((await rpc.call("play", { script: "40 + 2" })).result).toEqual({ output: "42" });
  // Slow plays side by side: with two workers they overlap, so the pair takes well under twice one.
  const slow = 'const t = Date.now(); while (Date.now() - t < 400) {} db.set("last", CALLER_ID || "anonymous"); CONTEXT_ID';
  const started = Date.now();
  const answers = await Promise.all(Array.from({ length: 4 }, () => rpc.call("play", { script: slow })));
  for (const answer of answers) expect(answer.result).toEqual({ output: A });
  expect(Date.now() - started).toBeLessThan(4 * 400);
  expect(await client.send("HGET", [`circle_db:${A}`, "last"])).toBe("anonymous");
  const health = await fetch(`${ws.replace("ws://", "http://")}/health`);
  expect(health.status).toBe(200);
  rpc.close();

  worker.proc.kill("SIGTERM");
  server.proc.kill("SIGTERM");
  expect(await worker.exitWithin(8_000)).toBe(0);
  expect(await server.exitWithin(10_000)).toBe(0);
  for (const proc of [worker, server]) expect(Bun.spawnSync(["pgrep", "-P", String(proc.pid)]).stdout.toString().trim()).toBe("");
  expect(await client.send("SMEMBERS", [`rhai_workers:${A}`])).toEqual([]);
  expect(await client.send("KEYS", ["rhai_worker:*"])).toEqual([]);
}, 40_000);

test("serve --redis-url with Redis down: plays answer -32000 naming Redis, /health 503; both recover when it is back", async () => {
  const A = publicKeyHex(newPrivateKey());
  const [port] = freePorts(1);
  const server = scope.stoa("circles serve", ["circles", "serve", "--port", String(port), "-k", A, "--redis-url", redis.url, "--task-timeout", "2s"]);
  const ws = (await server.waitFor("out", /^circles: (ws:\/\/\S+) /m))[1] ?? "";
  const http = ws.replace("ws://", "http://");
  const rpc = await RpcClient.open(`${ws}/${A}`);
  expect((await rpc.call("play", { script: "40 + 2" })).result).toEqual({ output: "42" });
  await redis.stop();
  const started = Date.now();
  const down = await rpc.call("play", { script: "40 + 2" });
  expect(down.error?.code).toBe(-32000);
  expect(down.error?.message).toContain(`Redis at ${redis.url}`);
  expect(Date.now() - started).toBeLessThan(2_000);
  expect((await fetch(`${http}/health`)).status).toBe(503);
  await redis.start();
  client.close();
  client = new RedisClient(redis.url);
  await client.connect();
  await eventually("plays run again", async () => (await rpc.call("play", { script: "40 + 2" })).result, { timeoutMs: 10_000 });
  expect((await fetch(`${http}/health`)).status).toBe(200);
  rpc.close();
}, 30_000);
