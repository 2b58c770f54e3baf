/**
 * The embedded task queue (src/circles/embedded-queue.ts): plays through a real worker thread
 * per circle — output, CONTEXT_ID and db per circle, time and memory limits with the thread
 * surviving them, a thread killed mid-play losing nothing, deadlines, close with plays in flight.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Database } from "bun:sqlite";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { EmbeddedQueue } from "../../src/circles/embedded-queue.ts";
import type { PlayOutcome } from "../../src/circles/queue.ts";
import { createLogger } from "../../src/core/log.ts";
import { newPrivateKey, publicKeyHex } from "../fixtures/circles-client.ts";
import { eventually } from "../helpers/eventually.ts";

const log = createLogger({ level: "error", name: "test" });
const A = publicKeyHex(newPrivateKey());
const B = publicKeyHex(newPrivateKey());
let stateDir = "";
let queue: EmbeddedQueue;

/** A script that keeps its thread busy for `ms`, then answers `text`. */
const busy = (ms: number, text: string) => `const t = Date.now(); while (Date.now() - t < ${ms}) {} ${JSON.stringify(text)}`;

function play(circle: string, script: string, timeoutMs = 2_000): Promise<PlayOutcome> {
  return queue.submit({ circle, caller: "", script, timeoutMs });
}

beforeAll(async () => {
  stateDir = mkdtempSync(join(tmpdir(), "stoa-embedded-"));
  queue = await EmbeddedQueue.start({ circles: [A, B], stateDir, log });
});

afterAll(async () => {
  await queue.close(0);
  rmSync(stateDir, { recursive: true, force: true });
});

describe("plays", () => {
  test("40 + 2 answers 42; CONTEXT_ID is the circle; CALLER_ID the caller", async () => {
    expect(await play(A, "40 + 2")).toEqual({ ok: true, output: "42" });
    expect(await play(A, "CONTEXT_ID")).toEqual({ ok: true, output: A });
    expect(await play(B, "CONTEXT_ID")).toEqual({ ok: true, output: B });
    expect(await queue.submit({ circle: A, caller: B, script: "CALLER_ID", timeoutMs: 2_000 })).toEqual({ ok: true, output: B });
  });

  test("each circle has its own db, in SQLite under <stateDir>/circles/", async () => {
    expect(await play(A, 'db.set("k", "from A"); db.get("k")')).toEqual({ ok: true, output: "from A" });
    expect(await play(B, 'String(db.get("k"))')).toEqual({ ok: true, output: "null" });
    expect(await play(A, 'db.get("k")')).toEqual({ ok: true, output: "from A" });
    const file = new Database(join(stateDir, "circles", `${A}.sqlite`), { readonly: true });
    expect(file.query("SELECT value FROM kv WHERE key = 'k'").get()).toEqual({ value: "from A" });
    file.close();
  });

  test("nothing but db outlives a play", async () => {
    expect(await play(A, "globalThis.leak = 1; Array.prototype.x = 2; 'set'")).toEqual({ ok: true, output: "set" });
    expect(await play(A, "typeof leak + ' ' + typeof [].x")).toEqual({ ok: true, output: "undefined undefined" });
  });

  test("many plays at once are answered by their own ids, in batches", async () => {
    const outcomes = await Promise.all(Array.from({ length: 300 }, (_, i) => play(i % 2 ? A : B, `${i} * 2`)));
    outcomes.forEach((outcome, i) => expect(outcome).toEqual({ ok: true, output: String(i * 2) }));
  });

  test("a script error is an execution error with its message", async () => {
    const outcome = await play(A, "this is not javascript");
    expect(outcome).toMatchObject({ ok: false, kind: "execution" });
    expect(!outcome.ok && outcome.message).toContain("SyntaxError");
  });
});

describe("limits", () => {
  test("an infinite loop times out and the worker goes on", async () => {
    const started = Date.now();
    const outcome = await play(A, "for (;;) {}", 300);
    expect(outcome).toEqual({ ok: false, kind: "timeout", message: "the script ran over its time limit (300 ms) and was stopped" });
    expect(Date.now() - started).toBeLessThan(1_500);
    expect(await play(A, "40 + 2")).toEqual({ ok: true, output: "42" });
  });

  test("a memory bomb is an execution error naming the memory limit, and the worker goes on", async () => {
    const outcome = await play(A, "const a = []; for (;;) a.push({ n: a.length })", 10_000);
    expect(outcome).toMatchObject({ ok: false, kind: "execution" });
    expect(!outcome.ok && outcome.message).toContain("memory limit");
    expect(await play(A, "40 + 2")).toEqual({ ok: true, output: "42" });
  });

  test("output over the cap is an execution error naming the cap", async () => {
    const outcome = await play(A, 'const s = "x".repeat(1 << 16); for (let i = 0; i < 200; i++) print(s)', 5_000);
    expect(outcome).toMatchObject({ ok: false, kind: "execution" });
    expect(!outcome.ok && outcome.message).toContain("output is over 1048576 bytes");
  });

  test("a play that waited in the queue past its time limit does not run", async () => {
    const first = play(B, busy(600, "slow"), 2_000);
    const starved = play(B, 'db.set("starved", "ran"); 1', 200);
    expect(await starved).toMatchObject({ ok: false, kind: "timeout" });
    expect(await first).toEqual({ ok: true, output: "slow" });
    expect(await play(B, 'String(db.get("starved"))')).toEqual({ ok: true, output: "null" });
  });
});

describe("a worker thread that dies", () => {
  test("loses no play: the one it ran and the ones queued behind it run on a fresh thread", async () => {
    const running = play(A, busy(400, "survived"), 5_000);
    const queued = Array.from({ length: 5 }, (_, i) => play(A, `${i} + 100`, 5_000));
    await eventually("the thread runs the busy play", () => queue.busy(A));
    queue.terminateBusy(A);
    expect(await running).toEqual({ ok: true, output: "survived" });
    expect(await Promise.all(queued)).toEqual([0, 1, 2, 3, 4].map((i) => ({ ok: true, output: String(i + 100) })));
    expect(await queue.healthy()).toMatchObject({ ok: true });
  });

  test("a play lost twice answers an execution error naming the crash; the others still run", async () => {
    const doomed = play(A, busy(1_000, "never"), 8_000);
    const after = play(A, "40 + 2", 8_000);
    for (let i = 0; i < 2; i++) {
      await eventually("the thread runs the doomed play", () => queue.busy(A), { timeoutMs: 5_000 });
      queue.terminateBusy(A);
      await eventually("the thread is gone", () => !queue.busy(A));
    }
    const outcome = await doomed;
    expect(outcome).toMatchObject({ ok: false, kind: "execution" });
    expect(!outcome.ok && outcome.message).toMatch(/worker thread of circle .* died running this play .*2 times/);
    expect(await after).toEqual({ ok: true, output: "42" });
  }, 15_000);
});

describe("a pool of threads per circle", () => {
  test("threadsPerCircle 2: a circle's plays run side by side, on one db", async () => {
    const dir = mkdtempSync(join(tmpdir(), "stoa-embedded-pool-"));
    const pool = await EmbeddedQueue.start({ circles: [A], stateDir: dir, log, threadsPerCircle: 2 });
    try {
      // Each play answers when it ran; side by side, the two spans overlap (one after the other, they could not).
      const span = (i: number) => `const from = Date.now(); ${busy(500, "")}; db.set("k${i}", "v"); from + "," + Date.now()`;
      const outcomes = await Promise.all([0, 1].map((i) => pool.submit({ circle: A, caller: "", script: span(i), timeoutMs: 5_000 })));
      const spans = outcomes.map((outcome) => {
        expect(outcome.ok).toBe(true);
        return (outcome.ok ? outcome.output : "").split(",").map(Number) as [number, number];
      });
      const [[from0, to0], [from1, to1]] = spans as [[number, number], [number, number]];
      expect(from0 < to1 && from1 < to0).toBe(true);
      expect(await pool.submit({ circle: A, caller: "", script: 'db.list("k").join()', timeoutMs: 2_000 })).toEqual({ ok: true, output: "k0,k1" });
      expect(await pool.healthy()).toEqual({ ok: true, detail: "embedded queue: 1 circle worker up" });
    } finally {
      await pool.close(0);
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("a pool of threads per circle, starting", () => {
  test("8 threads opening one fresh db file at once all start (regression: one got 'database is locked' switching it to WAL)", async () => {
    for (let round = 0; round < 4; round++) {
      const dir = mkdtempSync(join(tmpdir(), "stoa-embedded-race-"));
      const pool = await EmbeddedQueue.start({ circles: [A], stateDir: dir, log, threadsPerCircle: 8 });
      try {
        expect(await pool.healthy()).toEqual({ ok: true, detail: "embedded queue: 1 circle worker up" });
        expect(await pool.submit({ circle: A, caller: "", script: 'db.set("k", "v"); db.get("k")', timeoutMs: 2_000 })).toEqual({ ok: true, output: "v" });
      } finally {
        await pool.close(0);
        rmSync(dir, { recursive: true, force: true });
      }
    }
  }, 30_000);

  test("a pool whose threads cannot open the db fails its start with the reason, without waiting out the other threads' start timers", async () => {
    const dir = mkdtempSync(join(tmpdir(), "stoa-embedded-broken-"));
    // circles/ is a file: no thread can make its db there.
    writeFileSync(join(dir, "circles"), "");
    try {
      const started = Date.now();
      const error = await EmbeddedQueue.start({ circles: [A], stateDir: dir, log, threadsPerCircle: 4 }).then(
        () => null,
        (e: unknown) => e as Error,
      );
      expect(error?.message).toMatch(/worker thread of circle .* could not start/);
      // The start timer of a thread is 10 s: the failure ends every thread's start at once.
      expect(Date.now() - started).toBeLessThan(5_000);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 15_000);
});

describe("health and close", () => {
  test("healthy while the threads are up", async () => {
    expect(await queue.healthy()).toEqual({ ok: true, detail: "embedded queue: 2 circle workers up" });
  });

  test("close answers every play in flight, refuses new ones and stops the threads", async () => {
    const dir = mkdtempSync(join(tmpdir(), "stoa-embedded-close-"));
    const own = await EmbeddedQueue.start({ circles: [A], stateDir: dir, log });
    try {
      const inflight = Array.from({ length: 4 }, () => own.submit({ circle: A, caller: "", script: "for (;;) {}", timeoutMs: 10_000 }));
      await eventually("the first loop runs", () => own.busy(A));
      const started = Date.now();
      await own.close(200);
      expect(Date.now() - started).toBeLessThan(3_000);
      for (const outcome of await Promise.all(inflight)) expect(outcome).toEqual({ ok: false, kind: "execution", message: "server stopping" });
      expect(await own.submit({ circle: A, caller: "", script: "1", timeoutMs: 1_000 })).toEqual({ ok: false, kind: "execution", message: "server stopping" });
      expect((await own.healthy()).ok).toBe(false);
    } finally {
      await own.close(0);
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
