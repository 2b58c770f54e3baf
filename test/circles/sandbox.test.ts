import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { MAX_DB_FETCH_ROUNDS, Sandbox, SANDBOX_DEFAULTS, type PlayContext, type PlayResult } from "../../src/circles/sandbox.ts";
import { truncateUtf8 } from "../../src/circles/protocol.ts";
import { RedisClient } from "bun";
import { KV_LIMITS, RedisKv, SqliteKv, type CircleKv } from "../../src/circles/kv.ts";
import { startRedis } from "../fixtures/redis.ts";

/** Plays that run into a limit (memory, time, output): each takes a second or more on a loaded 2-core machine. */
const HEAVY_TIMEOUT_MS = 30_000;

const CIRCLE_A = "02" + "a".repeat(64);
const CIRCLE_B = "03" + "b".repeat(64);
const CALLER = "04" + "c".repeat(128);

/** An in-memory db whose every answer is a promise, as RedisKv's are; counts the reads it served. */
class AsyncKv implements CircleKv {
  readonly label = "async test store";
  readonly map = new Map<string, string>();
  reads = 0;
  fail = false;
  async #answer<T>(value: T): Promise<T> {
    await Bun.sleep(1);
    if (this.fail) throw new Error("Redis connection closed");
    return value;
  }
  get(key: string): Promise<string | null> {
    this.reads++;
    return this.#answer(this.map.get(key) ?? null);
  }
  set(key: string, value: string): Promise<void> {
    this.map.set(key, value);
    return this.#answer(undefined);
  }
  del(key: string): Promise<boolean> {
    return this.#answer(this.map.delete(key));
  }
  list(prefix: string): Promise<string[]> {
    this.reads++;
    return this.#answer([...this.map.keys()].filter((k) => k.startsWith(prefix)).sort());
  }
  close(): void {}
}

const root = mkdtempSync(join(tmpdir(), "stoa-sandbox-"));
let sandbox: Sandbox;
let dbA: SqliteKv;
let dbB: SqliteKv;
beforeAll(async () => {
  sandbox = await Sandbox.create();
  dbA = new SqliteKv(root, CIRCLE_A);
  dbB = new SqliteKv(root, CIRCLE_B);
});
afterAll(() => {
  sandbox.dispose();
  dbA.close();
  dbB.close();
  rmSync(root, { recursive: true, force: true });
});

const inA = (over: Partial<PlayContext> = {}): PlayContext => ({ circle: CIRCLE_A, caller: "", timeoutMs: 5000, db: dbA, ...over });
const play = (script: string, over: Partial<PlayContext> = {}): Promise<PlayResult> => sandbox.run(script, inA(over));
async function output(script: string, over: Partial<PlayContext> = {}): Promise<string> {
  const result = await play(script, over);
  if (!result.ok) throw new Error(`play ${script} failed: ${result.kind}: ${result.message}`);
  return result.output;
}
async function failure(script: string, over: Partial<PlayContext> = {}): Promise<{ kind: string; message: string }> {
  const result = await play(script, over);
  if (result.ok) throw new Error(`play ${script} succeeded with ${JSON.stringify(result.output)}`);
  return result;
}
/** The sandbox still works after whatever the test did to it. */
async function stillWorks(): Promise<void> {
  expect(await output("40 + 2")).toBe("42");
}

describe("output: printed lines, then the completion value", () => {
  test("40 + 2 is 42", async () => {
    expect(await output("40 + 2")).toBe("42");
  });

  test("print joins its arguments with spaces and ends the line; values converted like String(x)", async () => {
    expect(await output('print("a", 1, true, null, undefined, {x: 1}, [1, 2]); print()')).toBe("a 1 true null undefined [object Object] 1,2\n\n");
    expect(await output('print(Symbol("s"), {toString() { return "custom" }})')).toBe("Symbol(s) custom\n");
  });

  test("the completion value follows the printed lines, with no newline added; undefined adds nothing", async () => {
    expect(await output("print(1); 2")).toBe("1\n2");
    expect(await output("print(1)")).toBe("1\n");
    expect(await output("var x = 1")).toBe("");
    expect(await output('"text"')).toBe("text");
    expect(await output("null")).toBe("null");
    expect(await output("JSON.stringify({a: [1]})")).toBe('{"a":[1]}');
  });

  test("promise jobs run before the play ends", async () => {
    expect(await output("Promise.resolve(3).then((x) => print(x)); 1")).toBe("3\n1");
    expect(await output("(async () => { await null; print('later') })(); 'now'")).toBe("later\nnow");
  });
});

describe("globals: CONTEXT_ID, CALLER_ID, and nothing of the host", () => {
  test("CONTEXT_ID is the circle, CALLER_ID the caller or empty", async () => {
    expect(await output("CONTEXT_ID + '|' + CALLER_ID")).toBe(`${CIRCLE_A}|`);
    expect(await output("CONTEXT_ID + '|' + CALLER_ID", { circle: CIRCLE_B, caller: CALLER, db: dbB })).toBe(`${CIRCLE_B}|${CALLER}`);
    expect(await output("CONTEXT_ID = 'other'; CONTEXT_ID")).toBe(CIRCLE_A);
  });

  test("no fs, net, process, timers, require, console or Bun", async () => {
    const names = ["require", "process", "Bun", "Deno", "fetch", "setTimeout", "setInterval", "setImmediate", "queueMicrotask", "console", "std", "os", "module", "exports", "WebSocket", "XMLHttpRequest"];
    expect(await output(`[${names.map((n) => `typeof ${n}`).join(", ")}].join(",")`)).toBe(names.map(() => "undefined").join(","));
  });

  test("import() fails, and a static import is a syntax error", async () => {
    expect(await output('import("fs").then(() => print("loaded"), (e) => print("refused:", e.name)); ""')).toMatch(/^refused: \w+Error\n$/);
    expect((await failure('import fs from "fs"')).message).toStartWith("SyntaxError");
  });
});

describe("no state leaks between plays", () => {
  test("globals, top-level let and var, patched built-ins are gone in the next play", async () => {
    await output("var v = 1; let l = 2; const c = 3; globalThis.g = 4; function f() {}; Array.prototype.leak = 5; Object.prototype.oops = 6; JSON.parse = () => 7; String = null; Math.random = () => 0; ({})");
    expect(await output("[typeof v, typeof l, typeof c, typeof g, typeof f, [].leak, ({}).oops, JSON.parse('8'), typeof String, Math.random() === 0].join(',')")).toBe("undefined,undefined,undefined,undefined,undefined,,,8,function,false");
    // Redeclaring a top-level let of the previous play is fine: every play starts from the saved state.
    expect(await output("let l = 9; l")).toBe("9");
  });

  test("a closure kept by one play is unreachable from the next", async () => {
    await output("globalThis.keep = () => 'old'; Object.defineProperty(Object.prototype, 'hook', { get() { return 'old' } })");
    expect(await output("[typeof keep, ({}).hook].join(',')")).toBe("undefined,");
  });

  test("state goes from play to play through db only", async () => {
    await output('db.set("carried", "yes")');
    expect(await output('db.get("carried")')).toBe("yes");
  });

  test("Math.random draws new numbers in every play (its state is not put back with the rest)", async () => {
    const draws = new Set<string>();
    for (let i = 0; i < 5; i++) draws.add(await output("Math.random()"));
    expect(draws.size).toBe(5);
    for (const draw of draws) expect(Number(draw)).toBeGreaterThanOrEqual(0);
  });

  test("a play that deletes print, db, Math.random, String and JSON: the next has them all, working", async () => {
    await output("delete globalThis.print; delete Math.random; delete globalThis.String; delete globalThis.JSON; try { delete globalThis.db } catch {}; [].concat(new Array(1e5).fill({})).length");
    expect(await output('print("still"); db.set("k", "v"); [db.get("k"), typeof Math.random(), String(1), JSON.stringify([1])].join(",")')).toBe("still\nv,number,1,[1]");
  });

  test("promise jobs left by a play that timed out never run in a later one", async () => {
    const { kind } = await failure('Promise.resolve().then(() => db.set("late", "ran")); for (;;) {}', { timeoutMs: 200 });
    expect(kind).toBe("timeout");
    expect(await output('String(db.get("late"))')).toBe("null");
  });

  test("after a stack overflow, plays recurse as deep as before; after big allocations, allocate as much again", async () => {
    const depth = "let d = 0; function down() { d++; down() } try { down() } catch {} d";
    const first = await output(depth);
    expect((await failure("function down(n) { return down(n + 1) + 1 } down(0)")).kind).toBe("stack");
    expect(await output(depth)).toBe(first);
    // 20 MB held of the 32 MiB limit, five times: the runtime's counters go back with the image.
    for (let i = 0; i < 5; i++) expect(await output('const s = "x".repeat(20 * 1024 * 1024); s.length')).toBe(String(20 * 1024 * 1024));
    expect(sandbox.footprint.imageBytes).toBeLessThan(1024 * 1024);
  }, HEAVY_TIMEOUT_MS);
});

describe("failures are mapped, and the sandbox keeps working after each", () => {
  test("a thrown Error: its name, message and stack", async () => {
    const { kind, message } = await failure('function boom() { throw new TypeError("bad thing") }\nboom()');
    expect(kind).toBe("error");
    expect(message).toStartWith("TypeError: bad thing\n");
    expect(message).toContain("boom");
    expect((await failure("throw 5")).message).toBe("uncaught exception: 5");
    expect((await failure('throw {code: 1}')).message).toBe('uncaught exception: {"code":1}');
    expect((await failure("1 +")).message).toStartWith("SyntaxError");
    await stillWorks();
  });

  test("error text is cut to the cap", async () => {
    const small = await Sandbox.create({ errorBytes: 100 });
    try {
      const result = await small.run(`throw new Error("é".repeat(10000))`, inA());
      expect(result.ok).toBe(false);
      if (!result.ok) {
        expect(Buffer.byteLength(result.message)).toBeLessThanOrEqual(100);
        expect(result.message).toEndWith("…");
      }
    } finally {
      small.dispose();
    }
    expect(truncateUtf8("short", 100)).toBe("short");
    expect(truncateUtf8("ééé", 5)).toBe("é…");
  });

  test("an infinite loop is stopped by the interrupt handler at the deadline", async () => {
    const started = performance.now();
    const { kind, message } = await failure("for (;;) {}", { timeoutMs: 200 });
    expect(kind).toBe("timeout");
    expect(message).toContain("time limit");
    expect(performance.now() - started).toBeLessThan(10_000);
    // Also uncatchable, and also inside a toString called by the host.
    expect((await failure("try { for (;;) {} } catch (e) { 'caught' }", { timeoutMs: 200 })).kind).toBe("timeout");
    expect((await failure("({ toString() { for (;;) {} } })", { timeoutMs: 200 })).kind).toBe("timeout");
    await stillWorks();
  }, HEAVY_TIMEOUT_MS);

  test("a memory bomb is a memory error", async () => {
    const { kind, message } = await failure("const a = []; for (;;) a.push({ n: a.length })");
    expect(kind).toBe("memory");
    expect(message).toContain(String(SANDBOX_DEFAULTS.memoryBytes));
    expect((await failure("new Array(1e8).fill(0)")).kind).toBe("memory");
    await stillWorks();
  }, HEAVY_TIMEOUT_MS);

  test("a memory bomb does not leave its heap with the thread (the QuickJS instance is replaced)", async () => {
    await stillWorks();
    Bun.gc(true);
    const before = process.memoryUsage().rss;
    for (let i = 0; i < 3; i++) expect((await failure("const a = []; for (;;) a.push({ n: a.length })")).kind).toBe("memory");
    await stillWorks();
    Bun.gc(true);
    // Without the new instance the wasm memory stays at its high-water mark, ~130 MB over.
    expect(process.memoryUsage().rss - before).toBeLessThan(80 * 1024 * 1024);
  }, HEAVY_TIMEOUT_MS);

  test("deep recursion is a stack error", async () => {
    const { kind, message } = await failure("function down(n) { return down(n + 1) + 1 } down(0)");
    expect(kind).toBe("stack");
    expect(message).toContain("stack overflow");
    await stillWorks();
  }, HEAVY_TIMEOUT_MS);

  test("printing 10 MB stops at the output cap, promptly, uncatchably", async () => {
    const started = performance.now();
    const { kind, message } = await failure('print("x".repeat(10 * 1024 * 1024))');
    expect(kind).toBe("too_large");
    expect(message).toContain(String(SANDBOX_DEFAULTS.outputBytes));
    expect((await failure('for (;;) print("x".repeat(1000))')).kind).toBe("too_large");
    expect((await failure('for (;;) { try { print("x".repeat(100000)) } catch (e) {} }')).kind).toBe("too_large");
    expect((await failure('"x".repeat(2 * 1024 * 1024)')).kind).toBe("too_large");
    expect(performance.now() - started).toBeLessThan(5_000);
    await stillWorks();
  }, HEAVY_TIMEOUT_MS);

  test("output exactly at the cap passes", async () => {
    const exact = SANDBOX_DEFAULTS.outputBytes - 1;
    expect((await output(`print("x".repeat(${exact}))`)).length).toBe(SANDBOX_DEFAULTS.outputBytes);
  });
});

describe("db in a play", () => {
  test("get/set/del/list, strings only, within the limits", async () => {
    expect(await output('db.set("p:1", "one"); db.set("p:2", "two"); db.set("q", "x"); [db.get("p:1"), db.get("none"), db.del("p:2"), db.del("p:2"), db.list("p:").join("+"), db.list("p").length].join(",")')).toBe("one,,true,false,p:1,1");
    expect(await output('db.list().join(",")')).toContain("p:1,q");
    expect((await failure("db.set('k', 5)")).message).toStartWith("TypeError: db value must be a string");
    expect((await failure("db.get(1)")).message).toStartWith("TypeError: db key must be a string");
    expect((await failure(`db.get("k".repeat(${KV_LIMITS.keyBytes + 1}))`)).message).toStartWith("RangeError: db key is over");
    expect((await failure(`db.set("k", "v".repeat(${KV_LIMITS.valueBytes + 1}))`)).message).toStartWith("RangeError: db value is over");
    expect(await output('db.get("p:1")')).toBe("one");
  });

  test("a play that fails leaves db untouched; a play that succeeds applies all its writes", async () => {
    await failure('db.set("atomic", "half"); throw new Error("no")');
    await failure('db.set("atomic", "half"); for (;;) {}', { timeoutMs: 100 });
    expect(dbA.get("atomic")).toBeNull();
    await output('db.set("atomic", "whole"); db.set("atomic2", "too")');
    expect([dbA.get("atomic"), dbA.get("atomic2")]).toEqual(["whole", "too"]);
  });

  test("two circles: the same key, each its own value; one cannot list the other's", async () => {
    await output('db.set("name", "a")');
    await output('db.set("name", "b"); db.set("b-only", "1")', { circle: CIRCLE_B, db: dbB });
    expect(await output('db.get("name") + "," + db.get("b-only") + "," + db.list().includes("b-only")')).toBe("a,null,false");
    expect(await output('db.get("name")', { circle: CIRCLE_B, db: dbB })).toBe("b");
  });

  test("an asynchronous db: reads are awaited and the play restarts, printing once, writing once", async () => {
    const kv = new AsyncKv();
    kv.map.set("n", "41");
    const script = 'print("start"); const n = Number(db.get("n")) + 1; db.set("n", String(n)); print(db.list("").join(",")); n';
    expect(await output(script, { db: kv })).toBe("start\nn\n42");
    expect(kv.map.get("n")).toBe("42");
    expect(kv.reads).toBe(2); // the get, then the list: each once, however many restarts
    expect(await output("40 + 2", { db: kv })).toBe("42");
  });

  test("the real Redis: a counter over plays, two circles apart", async () => {
    const redis = await startRedis();
    const client = new RedisClient(redis.url);
    try {
      const a = new RedisKv(client, CIRCLE_A);
      const b = new RedisKv(client, CIRCLE_B);
      const counter = 'const n = Number(db.get("count") ?? "0") + 1; db.set("count", String(n)); db.set("by:" + n, CALLER_ID); n';
      for (let i = 1; i <= 3; i++) expect(await output(counter, { db: a, caller: CALLER })).toBe(String(i));
      expect(await output(counter, { circle: CIRCLE_B, db: b })).toBe("1");
      expect(await output('db.list("by:").join(",") + "|" + db.del("by:1") + "|" + db.list("by:").length', { db: a })).toBe("by:1,by:2,by:3|true|2");
      expect(await client.send("HGETALL", [`circle_db:${CIRCLE_B}`])).toEqual({ count: "1", "by:1": "" });
    } finally {
      client.close();
      await redis.close();
    }
  });

  test("an asynchronous db that fails: a db error; more reads than the round limit: a clear error", async () => {
    const kv = new AsyncKv();
    kv.fail = true;
    expect((await failure('db.get("k")', { db: kv })).message).toContain("Redis connection closed");
    kv.fail = false;
    const many = await failure(`for (let i = 0; i <= ${MAX_DB_FETCH_ROUNDS}; i++) db.get("k" + i)`, { db: kv });
    expect(many.message).toContain("read fewer keys");
    await stillWorks();
  });

  test("a db that does not answer within the deadline: an error naming the store, not a timeout", async () => {
    const hanging = (): Promise<never> => new Promise(() => {});
    const silent: CircleKv = { label: "Redis hash circle_db:x", get: hanging, set: hanging, del: hanging, list: hanging, close: () => {} };
    const started = performance.now();
    const read = await failure('db.get("k")', { db: silent, timeoutMs: 100 });
    expect(read).toMatchObject({ kind: "error", message: "db: Redis hash circle_db:x did not answer a read within the play's time limit (100 ms)" });
    const write = await failure('db.set("k", "v")', { db: silent, timeoutMs: 100 });
    expect(write.message).toContain("did not answer the play's writes");
    expect(performance.now() - started).toBeLessThan(2000);
    await stillWorks();
  });
});

describe("one play at a time", () => {
  test("concurrent runs are answered in order, each with its own globals", async () => {
    const results = await Promise.all(Array.from({ length: 20 }, (_, i) => sandbox.run(`var mine = ${i}; mine`, inA())));
    expect(results.map((r) => (r.ok ? r.output : r.message))).toEqual(Array.from({ length: 20 }, (_, i) => String(i)));
  });

  test("a disposed sandbox refuses new plays and finishes the queued ones", async () => {
    const gone = await Sandbox.create();
    const queued = gone.run('db.get("k"); "done"', inA({ db: new AsyncKv() }));
    gone.dispose();
    expect(gone.run("1", inA())).rejects.toThrow("disposed");
    expect(await queued).toEqual({ ok: true, output: "done" });
  });
});
