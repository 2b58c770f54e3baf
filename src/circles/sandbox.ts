/**
 * The play sandbox: a circle's script runs in QuickJS (quickjs-emscripten, the single-file
 * build with the wasm embedded, so it works inside the compiled binary) with no host access.
 *
 * One `Sandbox` owns one QuickJS runtime (its memory limit, stack limit and interrupt handler)
 * and runs one play at a time (calls to `run` queue). Every play gets a fresh context: nothing a
 * play defines — globals, changed built-ins, closures — reaches the next one. The only state
 * that outlives a play is what it wrote to `db`. (Building the context is most of a play's cost
 * — ~110-170 µs with `SANDBOX_INTRINSICS`, against ~5 µs to evaluate `40 + 2` — but a reused
 * context cannot be reset: top-level `let`, patched prototypes and kept closures would leak.
 * scripts/bench/lib/sandbox-probe.ts measures it.)
 *
 * What a script sees (`SANDBOX_INTRINSICS` + these globals, nothing else: no fs, net, process,
 * timers, require, import):
 *   CONTEXT_ID   the circle's id (string)
 *   CALLER_ID    the authenticated caller's public key, "" when unauthenticated
 *   print(...a)  appends the arguments, each converted like String(x), joined by " ", plus "\n"
 *   db.get(k)    string | null          db.set(k, v)  undefined (k, v strings)
 *   db.del(k)    boolean (k existed)    db.list(prefix = "")  sorted keys, at most KV_LIMITS.listKeys
 *
 * Output: everything printed, then — when the script's completion value is not undefined — that
 * value converted like String(x), with no newline added: `40 + 2` → "42", `print(1); 2` →
 * "1\n2", `print(1)` → "1\n". Promise jobs queued by the script run before the play ends, within
 * its time limit (a job stopped at the deadline makes the play a "timeout").
 *
 * db writes are a play's own until it succeeds: `set`/`del` go to an overlay the play reads back,
 * applied to the store when the play ends well and dropped when it fails (error, timeout, limit);
 * at most `KV_LIMITS.playWriteBytes` of them per play (a `db.set` past it throws a RangeError),
 * applied all or none where the store can (SQLite: one transaction, which also fails whole when
 * it would take the circle's file over its quota, `KV_LIMITS.circleBytes`).
 * Reads from a synchronous store (SQLite) are direct. An asynchronous store (Redis) cannot answer
 * inside a synchronous QuickJS call, so a read it has not answered yet stops the attempt, the
 * host awaits the answer, and the play starts again in a fresh context with the answer cached
 * (output and writes of the stopped attempt are dropped; at most `MAX_DB_FETCH_ROUNDS` rounds).
 * A script that reads k new keys from Redis therefore runs k + 1 times; `40 + 2` runs once and
 * pays nothing. (Measured alternatives: the asyncify build of QuickJS halves the rate of every
 * play, `40 + 2` included; a per-play snapshot of the hash costs a round trip for every play and
 * grows with the db.)
 *
 * Failures (`PlayResult.kind`): "error" (the script threw — the message is the error's name,
 * message and stack — or the db failed or did not answer before the deadline: "db: …" naming
 * the store), "timeout" (the interrupt handler stopped the script at the deadline), "too_large"
 * (output over the cap: print() stops the script at once, uncatchably), "memory" (over the
 * runtime's memory limit), "stack" (over the stack limit). Messages are cut to `errorBytes`.
 * After "stack" the runtime is replaced, after "memory" the whole QuickJS instance (its wasm
 * memory grew and cannot shrink), before the next play: it starts from a clean heap.
 */
import {
  Lifetime,
  newQuickJSWASMModuleFromVariant,
  type Intrinsics,
  type QuickJSContext,
  type QuickJSHandle,
  type QuickJSRuntime,
  type QuickJSWASMModule,
} from "quickjs-emscripten-core";
import variant from "@jitl/quickjs-singlefile-mjs-release-sync";
import { checkKey, checkValue, KV_LIMITS, type CircleKv } from "./kv.ts";
import { describeError } from "../core/errors.ts";
import { truncateUtf8 } from "./protocol.ts";

/**
 * The built-ins a script gets. Left out: Proxy, TypedArrays, StringNormalize, BigInt — each
 * costs context build time on every play (TypedArrays alone ~30 µs) and a db of strings needs none.
 */
export const SANDBOX_INTRINSICS: Intrinsics = {
  BaseObjects: true,
  Eval: true, // evalCode needs it
  JSON: true,
  RegExp: true,
  MapSet: true,
  Date: true,
  Promise: true,
};

/** Defaults of `SandboxOptions`; the server passes the protocol's limits instead. */
export const SANDBOX_DEFAULTS = {
  /** The runtime's heap: room for a few MB of strings and objects, far from the worker's own. */
  memoryBytes: 32 * 1024 * 1024,
  /** QuickJS's stack limit: a few thousand frames of ordinary recursion. */
  stackBytes: 512 * 1024,
  /** Printed output plus the completion value, UTF-8 bytes. */
  outputBytes: 1024 * 1024,
  /** An error message handed back, UTF-8 bytes (a stack of a deep recursion is long). */
  errorBytes: 4 * 1024,
  intrinsics: SANDBOX_INTRINSICS,
} as const;

/** Restarts a play may take to await reads of an asynchronous db (see the header). */
export const MAX_DB_FETCH_ROUNDS = 64;

interface SandboxOptions {
  memoryBytes?: number;
  stackBytes?: number;
  outputBytes?: number;
  errorBytes?: number;
  /** The built-ins of every play's context (default `SANDBOX_INTRINSICS`; `Eval` is required). */
  intrinsics?: Intrinsics;
}

export interface PlayContext {
  /** The circle's id: `CONTEXT_ID`. */
  circle: string;
  /** The authenticated public key, "" when none: `CALLER_ID`. */
  caller: string;
  /** The play's time limit (the task timeout), db round trips included. */
  timeoutMs: number;
  db: CircleKv;
}

type PlayFailureKind = "error" | "timeout" | "too_large" | "memory" | "stack";
export type PlayResult = { ok: true; output: string } | { ok: false; kind: PlayFailureKind; message: string };

type Settings = Required<SandboxOptions>;

/** Why the host stopped the running attempt; the interrupt handler turns it into an uncatchable stop. */
type Abort = { kind: "too_large" } | { kind: "fetch"; answer: Promise<unknown> } | { kind: "db"; message: string };

/** The state of one play across its attempts. */
interface PlayState {
  ctx: PlayContext;
  deadline: number;
  /** Answers of an asynchronous db, by "g:<key>" / "l:<prefix>", kept across attempts. */
  fetched: Map<string, unknown>;
}

/** One attempt: a fresh context's output and writes. */
interface Attempt {
  output: string[];
  outputBytes: number;
  writes: Map<string, string | null>;
  /** UTF-8 bytes of `writes` (keys, and values set), held to KV_LIMITS.playWriteBytes. */
  writeBytes: number;
}

function isPromise(value: unknown): value is Promise<unknown> {
  return value instanceof Promise;
}

export class Sandbox {
  #module: QuickJSWASMModule;
  #settings: Settings;
  #runtime: QuickJSRuntime;
  #deadline = 0;
  #abort: Abort | null = null;
  /** Set by a failed attempt: what to build anew before the next one. */
  #renew: "runtime" | "module" | null = null;
  #tail: Promise<unknown> = Promise.resolve();
  #disposed = false;

  private constructor(module: QuickJSWASMModule, settings: Settings) {
    this.#module = module;
    this.#settings = settings;
    this.#runtime = this.#newRuntime();
  }

  /**
   * A sandbox with its own QuickJS instance (loading one costs ~50 ms) and runtime.
   * @example
   *   const sandbox = await Sandbox.create();
   *   await sandbox.run("40 + 2", { circle, caller: "", timeoutMs: 5000, db }); // { ok: true, output: "42" }
   */
  static async create(options: SandboxOptions = {}): Promise<Sandbox> {
    return new Sandbox(await newQuickJSWASMModuleFromVariant(variant), { ...SANDBOX_DEFAULTS, ...options });
  }

  /** Runs `script` as one play, after the plays already queued on this sandbox. */
  run(script: string, ctx: PlayContext): Promise<PlayResult> {
    if (this.#disposed) return Promise.reject(new Error("the sandbox is disposed: create a new one"));
    const result = this.#tail.then(() => this.#play(script, ctx));
    this.#tail = result.catch(() => undefined);
    return result;
  }

  /** Refuses new plays; the runtime is freed once the plays already queued have ended. */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    void this.#tail.then(() => this.#runtime.dispose());
  }

  #newRuntime(): QuickJSRuntime {
    const runtime = this.#module.newRuntime();
    runtime.setMemoryLimit(this.#settings.memoryBytes);
    runtime.setMaxStackSize(this.#settings.stackBytes);
    runtime.setInterruptHandler(() => this.#abort !== null || Date.now() >= this.#deadline);
    return runtime;
  }

  /**
   * After a stack overflow, a new runtime (a clean heap). After running out of memory, a new
   * QuickJS instance too: wasm memory never shrinks, and the runtime's heap grew to the limit
   * (~130 MB of linear memory for the 32 MiB default), which would stay with the thread for good.
   */
  async #renewEngine(): Promise<void> {
    const renew = this.#renew;
    this.#renew = null;
    try {
      this.#runtime.dispose();
    } catch {
      // A runtime that cannot be freed cleanly is dropped with its instance.
      this.#module = await newQuickJSWASMModuleFromVariant(variant);
    }
    if (renew === "module") this.#module = await newQuickJSWASMModuleFromVariant(variant);
    this.#runtime = this.#newRuntime();
  }

  #fail(kind: PlayFailureKind, message: string): PlayResult {
    return { ok: false, kind, message: truncateUtf8(message, this.#settings.errorBytes) };
  }

  async #play(script: string, ctx: PlayContext): Promise<PlayResult> {
    const state: PlayState = { ctx, deadline: Date.now() + ctx.timeoutMs, fetched: new Map() };
    for (let round = 0; ; round++) {
      const attempt: Attempt = { output: [], outputBytes: 0, writes: new Map(), writeBytes: 0 };
      this.#deadline = state.deadline;
      this.#abort = null;
      if (this.#renew !== null) await this.#renewEngine();
      const result = this.#attempt(script, state, attempt);
      const abort = this.#abort as Abort | null;
      this.#abort = null;
      if (abort?.kind !== "fetch") {
        if (!result.ok || attempt.writes.size === 0) return result;
        return (await this.#dbWithin(this.#commit(ctx.db, attempt.writes), state, "the play's writes")) ?? result;
      }
      if (round >= MAX_DB_FETCH_ROUNDS) {
        abort.answer.catch(() => undefined); // not awaited any more
        return this.#fail("error", `the script read more than ${MAX_DB_FETCH_ROUNDS} db entries not yet loaded: read fewer keys per play (db.list gives many keys at once)`);
      }
      const failed = await this.#dbWithin(abort.answer, state, "a read");
      if (failed !== null) return failed;
    }
  }

  /**
   * Waits for db work until the play's deadline: null when it is done, else the play's failure —
   * an "error" naming the store, not a "timeout": a db that does not answer (Redis down, say) is
   * not the script's fault.
   */
  async #dbWithin(work: Promise<unknown>, state: PlayState, what: string): Promise<PlayResult | null> {
    const { db, timeoutMs } = state.ctx;
    const done = work.then(
      () => null,
      (err: unknown) => this.#fail("error", `db: ${describeError(err)}`),
    );
    let timer: Timer | undefined;
    const late = new Promise<PlayResult>((resolve) => {
      const failure = (): PlayResult => this.#fail("error", `db: ${db.label} did not answer ${what} within the play's time limit (${timeoutMs} ms)`);
      timer = setTimeout(() => resolve(failure()), Math.max(0, state.deadline - Date.now()));
    });
    try {
      return await Promise.race([done, late]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Applies a play's writes, all at once: SQLite in one transaction (applyAll); Bun's RedisClient pipelines them. */
  async #commit(db: CircleKv, writes: Map<string, string | null>): Promise<void> {
    if (db.applyAll !== undefined) return db.applyAll(writes);
    const pending: unknown[] = [];
    for (const [key, value] of writes) pending.push(value === null ? db.del(key) : db.set(key, value));
    await Promise.all(pending);
  }

  /** One attempt in a fresh context; `this.#abort` says afterwards whether the host stopped it. */
  #attempt(script: string, state: PlayState, attempt: Attempt): PlayResult {
    const vm = this.#runtime.newContext({ intrinsics: this.#settings.intrinsics });
    let result: PlayResult;
    try {
      // String(x) for what is neither a string nor a number, taken before the script runs: a
      // script that replaces String does not change how its output is converted.
      const toStringFn = vm.getProp(vm.global, "String");
      const stringifyFn = vm.getProp(vm.global, "JSON").consume((json) => vm.getProp(json, "stringify"));
      try {
        const exact = (handle: QuickJSHandle): string => {
          // getString goes through a C string: it stops at a NUL and makes a lone surrogate three
          // U+FFFD. When that may have happened, the string comes over as JSON (escapes are exact).
          const text = vm.getString(handle);
          if (!text.includes("\uFFFD") && text.length === vm.getProp(handle, "length").consume((n) => vm.getNumber(n))) return text;
          const quoted = vm.callFunction(stringifyFn, vm.undefined, handle);
          if (quoted.error !== undefined) throw quoted.error;
          return JSON.parse(quoted.value.consume((json) => vm.getString(json))) as string;
        };
        const toText = (handle: QuickJSHandle): string => {
          const type = vm.typeof(handle);
          if (type === "string") return exact(handle);
          if (type === "number") return String(vm.getNumber(handle));
          const converted = vm.callFunction(toStringFn, vm.undefined, handle);
          // A handle thrown out of a host function is rethrown in the script as it is.
          if (converted.error !== undefined) throw converted.error;
          return converted.value.consume(exact);
        };
        this.#installGlobals(vm, state, attempt, toText);
        result = this.#evaluate(vm, script, attempt, toText);
      } finally {
        toStringFn.dispose();
        stringifyFn.dispose();
      }
      if (!result.ok && result.kind === "memory") this.#renew = "module";
      else if (!result.ok && result.kind === "stack") this.#renew = "runtime";
    } catch (err) {
      // A failure of the host side (QuickJS could not even allocate the answer): start clean.
      this.#renew = "module";
      result = this.#classifyHostError(err);
    } finally {
      try {
        vm.dispose();
      } catch {
        this.#renew = "module";
      }
    }
    return result;
  }

  #classifyHostError(err: unknown): PlayResult {
    const text = describeError(err);
    if (/out of memory/i.test(text)) return this.#fail("memory", `the script used more than ${this.#settings.memoryBytes} bytes of memory`);
    return this.#fail("error", text);
  }

  #evaluate(vm: QuickJSContext, script: string, attempt: Attempt, toText: (h: QuickJSHandle) => string): PlayResult {
    const evaluated = vm.evalCode(script, "play.js", { type: "global" });
    if (evaluated.error !== undefined) return evaluated.error.consume((error) => this.#failure(vm, error));
    const completion = evaluated.value.consume((value) => (vm.typeof(value) === "undefined" ? undefined : this.#text(vm, value, toText)));
    if (typeof completion === "object") return completion;
    if (this.#runtime.hasPendingJob()) {
      const jobs = this.#runtime.executePendingJobs();
      if (jobs.error !== undefined) return jobs.error.consume((error) => this.#failure(vm, error));
      jobs.dispose();
    }
    if (this.#abort !== null) return this.#aborted();
    // A job stopped at the deadline only rejects its own promise: the play still ran over.
    if (Date.now() >= this.#deadline) return this.#fail("timeout", "the script ran longer than its time limit and was stopped");
    if (completion !== undefined) {
      attempt.outputBytes += Buffer.byteLength(completion);
      if (attempt.outputBytes > this.#settings.outputBytes) return this.#outputTooLarge();
      attempt.output.push(completion);
    }
    return { ok: true, output: attempt.output.join("") };
  }

  /** The completion value's text, or the failure converting it (a toString that throws or loops). */
  #text(vm: QuickJSContext, value: QuickJSHandle, toText: (h: QuickJSHandle) => string): string | PlayResult {
    try {
      return toText(value);
    } catch (err) {
      if (err instanceof Lifetime) return (err as QuickJSHandle).consume((error) => this.#failure(vm, error));
      throw err;
    }
  }

  #outputTooLarge(): PlayResult {
    return this.#fail("too_large", `the script's output is over ${this.#settings.outputBytes} bytes: print less, or keep the rest in db`);
  }

  #aborted(): PlayResult {
    const abort = this.#abort;
    if (abort?.kind === "too_large") return this.#outputTooLarge();
    if (abort?.kind === "db") return this.#fail("error", `db: ${abort.message}`);
    // "fetch": the caller awaits the answer and starts again; this result is not used.
    return this.#fail("error", "the play was stopped to load db entries");
  }

  /** Maps an exception out of QuickJS to the play's failure; host-side stops take precedence. */
  #failure(vm: QuickJSContext, error: QuickJSHandle): PlayResult {
    if (this.#abort !== null) return this.#aborted();
    let dumped: unknown;
    try {
      dumped = vm.dump(error);
    } catch {
      dumped = undefined;
    }
    if (Date.now() >= this.#deadline) {
      return this.#fail("timeout", `the script ran longer than its time limit and was stopped`);
    }
    const { name, message, stack } = typeof dumped === "object" && dumped !== null ? (dumped as { name?: unknown; message?: unknown; stack?: unknown }) : { name: undefined, message: undefined, stack: undefined };
    const text = typeof message === "string" ? message : "";
    if (name === "InternalError" && /out of memory/.test(text)) {
      return this.#fail("memory", `the script used more than its memory limit (${this.#settings.memoryBytes} bytes) and was stopped`);
    }
    if ((name === "InternalError" || name === "RangeError") && /stack overflow|call stack size/i.test(text)) {
      return this.#fail("stack", `stack overflow: the script recursed deeper than its stack limit (${this.#settings.stackBytes} bytes)`);
    }
    if (typeof name === "string" && typeof message === "string") {
      const where = typeof stack === "string" && stack.trim() !== "" ? `\n${stack.trimEnd()}` : "";
      return this.#fail("error", `${name}: ${message}${where}`);
    }
    return this.#fail("error", `uncaught exception: ${typeof dumped === "string" ? dumped : JSON.stringify(dumped) ?? String(dumped)}`);
  }

  #installGlobals(vm: QuickJSContext, state: PlayState, attempt: Attempt, toText: (h: QuickJSHandle) => string): void {
    const constant = (name: string, value: string): void => {
      vm.newString(value).consume((handle) => vm.defineProp(vm.global, name, { value: handle, configurable: false, enumerable: true }));
    };
    constant("CONTEXT_ID", state.ctx.circle);
    constant("CALLER_ID", state.ctx.caller);

    vm.newFunction("print", (...args) => {
      if (this.#abort !== null) throw new Error("stopped");
      const line = `${args.map(toText).join(" ")}\n`;
      attempt.outputBytes += Buffer.byteLength(line);
      if (attempt.outputBytes > this.#settings.outputBytes) {
        this.#abort = { kind: "too_large" };
        throw new RangeError("output over its size limit");
      }
      attempt.output.push(line);
    }).consume((fn) => vm.setProp(vm.global, "print", fn));

    const db = state.ctx.db;
    const { writes } = attempt;
    /** A db answer now, or undefined after asking an asynchronous db to load it (the attempt stops). */
    const read = <T>(cacheKey: string, ask: () => T | Promise<T>): T | undefined => {
      if (state.fetched.has(cacheKey)) return state.fetched.get(cacheKey) as T;
      let answer: T | Promise<T>;
      try {
        answer = ask();
      } catch (err) {
        this.#abort = { kind: "db", message: describeError(err) };
        throw new Error("db failed");
      }
      if (!isPromise(answer)) return answer;
      this.#abort = { kind: "fetch", answer: answer.then((value) => state.fetched.set(cacheKey, value)) };
      throw new Error("db entry loading");
    };
    const stringArg = (what: string, handle: QuickJSHandle | undefined): string => {
      if (handle === undefined || vm.typeof(handle) !== "string") throw new TypeError(`${what} must be a string`);
      return toText(handle);
    };
    const checked = (check: () => void): void => {
      try {
        check();
      } catch (err) {
        throw new RangeError(describeError(err));
      }
    };
    const key = (handle: QuickJSHandle | undefined): string => {
      const k = stringArg("db key", handle);
      checked(() => checkKey(k));
      return k;
    };
    const guard = (): void => {
      if (this.#abort !== null) throw new Error("stopped");
    };
    const currentValue = (k: string): string | null | undefined => (writes.has(k) ? writes.get(k) : read(`g:${k}`, () => db.get(k)));
    const cost = (k: string, v: string | null | undefined): number => (v === undefined ? 0 : Buffer.byteLength(k) + (v === null ? 0 : Buffer.byteLength(v)));
    /** Records a write in the overlay, refused (catchably, nothing kept) past KV_LIMITS.playWriteBytes. */
    const write = (k: string, v: string | null): void => {
      const bytes = attempt.writeBytes + cost(k, v) - cost(k, writes.get(k));
      if (bytes > KV_LIMITS.playWriteBytes) {
        throw new RangeError(`the play's db writes are over ${KV_LIMITS.playWriteBytes} bytes: write less per play`);
      }
      attempt.writeBytes = bytes;
      writes.set(k, v);
    };

    // db is built at first use: most plays never touch it, and each host function costs ~5 µs.
    const buildDb = (): QuickJSHandle => {
      const dbObject = vm.newObject();
      try {
        vm.newFunction("get", (keyHandle) => {
          guard();
          const value = currentValue(key(keyHandle));
          return value === null || value === undefined ? vm.null : vm.newString(value);
        }).consume((fn) => vm.setProp(dbObject, "get", fn));
        vm.newFunction("set", (keyHandle, valueHandle) => {
          guard();
          const k = key(keyHandle);
          const v = stringArg("db value", valueHandle);
          checked(() => checkValue(v));
          write(k, v);
        }).consume((fn) => vm.setProp(dbObject, "set", fn));
        vm.newFunction("del", (keyHandle) => {
          guard();
          const k = key(keyHandle);
          const existed = currentValue(k);
          write(k, null);
          return existed === null || existed === undefined ? vm.false : vm.true;
        }).consume((fn) => vm.setProp(dbObject, "del", fn));
        vm.newFunction("list", (prefixHandle) => {
          guard();
          const prefix = prefixHandle === undefined || vm.typeof(prefixHandle) === "undefined" ? "" : stringArg("db.list prefix", prefixHandle);
          const stored = read(`l:${prefix}`, () => db.list(prefix)) ?? [];
          const keys = new Set(stored);
          for (const [k, v] of writes) {
            if (!k.startsWith(prefix)) continue;
            if (v === null) keys.delete(k);
            else keys.add(k);
          }
          const sorted = [...keys].sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b))).slice(0, KV_LIMITS.listKeys);
          const array = vm.newArray();
          sorted.forEach((k, i) => vm.newString(k).consume((s) => vm.setProp(array, i, s)));
          return array;
        }).consume((fn) => vm.setProp(dbObject, "list", fn));
        vm.defineProp(vm.global, "db", { value: dbObject, configurable: false, enumerable: true });
      } catch (err) {
        dbObject.dispose();
        throw err;
      }
      return dbObject;
    };
    vm.defineProp(vm.global, "db", { get: buildDb, configurable: true, enumerable: true });
  }
}
