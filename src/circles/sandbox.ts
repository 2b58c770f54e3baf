/**
 * The play sandbox: a circle's script runs in QuickJS (quickjs-emscripten's release build, its
 * wasm file carried inside the compiled binary) with no host access.
 *
 * One `Sandbox` owns one QuickJS instance with one runtime (its memory limit, stack limit and
 * interrupt handler) and one context, and runs one play at a time (calls to `run` queue). Every
 * play starts from the same state, exactly: the context is built and its globals installed once,
 * the instance's memory is saved (quickjs-image.ts), and after every play the saved bytes are
 * put back. Nothing a play defines — globals, top-level `let`, changed built-ins, closures,
 * pending jobs, garbage — reaches the next one; the only state that outlives a play is what it
 * wrote to `db`. Putting the image back costs a few µs where building a context cost ~110-170
 * (scripts/bench/lib/sandbox-probe.ts measures both), and no play ever pays for a collection of
 * another's garbage. `Math.random` is the host's: QuickJS's own generator state would be put
 * back with the rest, and every play would draw the same numbers.
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
 * host awaits the answer, and the play starts again from the saved state with the answer cached
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
 * After "memory" (its wasm memory grew and cannot shrink) or a failure of the host side the
 * whole QuickJS instance is replaced before the next play; after every other play its saved
 * state is put back.
 */
import { DefaultIntrinsics, Lifetime, type Intrinsics, type QuickJSContext, type QuickJSHandle, type QuickJSRuntime } from "quickjs-emscripten-core";
import { checkKey, checkValue, KV_LIMITS, type CircleKv } from "./kv.ts";
import { describeError } from "../core/errors.ts";
import { truncateUtf8 } from "./protocol.ts";
import { QuickJSInstance } from "./quickjs-image.ts";

/**
 * The built-ins a script gets: QuickJS's defaults (BaseObjects, Date, Eval, StringNormalize,
 * RegExp, JSON, Proxy, MapSet, TypedArrays, Promise). Built once into the image, they cost a
 * play nothing but their share of the bytes put back (~12 KB more than the few a db of strings
 * needs; scripts/bench/lib/sandbox-probe.ts).
 */
export const SANDBOX_INTRINSICS: Intrinsics = DefaultIntrinsics;

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
  /** The built-ins of the context (default `SANDBOX_INTRINSICS`; `Eval` is required). */
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

/** One attempt, from the saved state: its output and writes. */
interface Attempt {
  state: PlayState;
  output: string[];
  outputBytes: number;
  writes: Map<string, string | null>;
  /** UTF-8 bytes of `writes` (keys, and values set), held to KV_LIMITS.playWriteBytes. */
  writeBytes: number;
}

/** One QuickJS instance with its runtime and context, built once and put back after every play. */
interface Engine {
  instance: QuickJSInstance;
  runtime: QuickJSRuntime;
  vm: QuickJSContext;
  /** A value's text, like String(x) with the String of the saved state (a script that replaces String changes nothing). */
  toText: (handle: QuickJSHandle) => string;
  /** Handles held for the engine's life: String, JSON.stringify and every host function (see quickjs-image.ts). */
  held: QuickJSHandle[];
}

function isPromise(value: unknown): value is Promise<unknown> {
  return value instanceof Promise;
}

export class Sandbox {
  #settings: Settings;
  #engine: Engine;
  #deadline = 0;
  #abort: Abort | null = null;
  /** The attempt running now; the host functions of the engine act on it. */
  #attempt: Attempt | null = null;
  /** Set by a failed attempt: the engine cannot be put back, build a new one before the next. */
  #renew = false;
  #tail: Promise<unknown> = Promise.resolve();
  #disposed = false;

  private constructor(engine: Engine, settings: Settings) {
    this.#settings = settings;
    this.#engine = engine;
  }

  /**
   * A sandbox with its own QuickJS instance (the first in a thread compiles the binary, ~50 ms;
   * later ones take a few ms), its runtime and its context.
   * @example
   *   const sandbox = await Sandbox.create();
   *   await sandbox.run("40 + 2", { circle, caller: "", timeoutMs: 5000, db }); // { ok: true, output: "42" }
   */
  static async create(options: SandboxOptions = {}): Promise<Sandbox> {
    const settings = { ...SANDBOX_DEFAULTS, ...options };
    const sandbox = new Sandbox(null as unknown as Engine, settings);
    sandbox.#engine = await sandbox.#newEngine();
    return sandbox;
  }

  /** Bytes copied back after every play, and the instance's linear memory (for the probe and tests). */
  get footprint(): { imageBytes: number; memoryBytes: number } {
    return { imageBytes: this.#engine.instance.imageBytes, memoryBytes: this.#engine.instance.memoryBytes };
  }

  /** Runs `script` as one play, after the plays already queued on this sandbox. */
  run(script: string, ctx: PlayContext): Promise<PlayResult> {
    if (this.#disposed) return Promise.reject(new Error("the sandbox is disposed: create a new one"));
    const result = this.#tail.then(() => this.#play(script, ctx));
    this.#tail = result.catch(() => undefined);
    return result;
  }

  /** Refuses new plays; the engine is freed once the plays already queued have ended. */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    void this.#tail.then(() => this.#freeEngine(this.#engine));
  }

  #freeEngine(engine: Engine): void {
    try {
      for (const handle of engine.held) handle.dispose();
      engine.vm.dispose();
      engine.runtime.dispose();
    } catch {
      // An engine that cannot be freed cleanly goes with its instance's memory.
    }
  }

  /** A new instance, runtime and context with the globals installed, and its image taken. */
  async #newEngine(): Promise<Engine> {
    const instance = await QuickJSInstance.load();
    const runtime = instance.module.newRuntime();
    runtime.setMemoryLimit(this.#settings.memoryBytes);
    runtime.setMaxStackSize(this.#settings.stackBytes);
    runtime.setInterruptHandler(() => this.#abort !== null || Date.now() >= this.#deadline);
    const vm = runtime.newContext({ intrinsics: this.#settings.intrinsics });
    void vm.global; // the wrapper takes its handle to the global object at first use: now, inside the image
    const held: QuickJSHandle[] = [];
    const hold = (handle: QuickJSHandle): QuickJSHandle => {
      held.push(handle);
      return handle;
    };
    const toStringFn = hold(vm.getProp(vm.global, "String"));
    const stringifyFn = hold(vm.getProp(vm.global, "JSON").consume((json) => vm.getProp(json, "stringify")));
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
    const engine: Engine = { instance, runtime, vm, toText, held };
    try {
      this.#installGlobals(engine, hold);
      instance.capture();
    } catch (err) {
      this.#freeEngine(engine);
      throw err;
    }
    return engine;
  }

  #fail(kind: PlayFailureKind, message: string): PlayResult {
    return { ok: false, kind, message: truncateUtf8(message, this.#settings.errorBytes) };
  }

  async #play(script: string, ctx: PlayContext): Promise<PlayResult> {
    const state: PlayState = { ctx, deadline: Date.now() + ctx.timeoutMs, fetched: new Map() };
    for (let round = 0; ; round++) {
      if (this.#renew) {
        this.#renew = false;
        const old = this.#engine;
        this.#engine = await this.#newEngine();
        this.#freeEngine(old);
      }
      const attempt: Attempt = { state, output: [], outputBytes: 0, writes: new Map(), writeBytes: 0 };
      this.#deadline = state.deadline;
      this.#abort = null;
      const result = this.#run(script, attempt);
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

  /** One attempt from the saved state, which is put back after it; `this.#abort` says afterwards whether the host stopped it. */
  #run(script: string, attempt: Attempt): PlayResult {
    const { vm, instance } = this.#engine;
    let result: PlayResult;
    this.#attempt = attempt;
    try {
      const constant = (name: string, value: string): void => {
        vm.newString(value).consume((handle) => vm.defineProp(vm.global, name, { value: handle, configurable: false, enumerable: true }));
      };
      constant("CONTEXT_ID", attempt.state.ctx.circle);
      constant("CALLER_ID", attempt.state.ctx.caller);
      result = this.#evaluate(script, attempt);
      if (!result.ok && result.kind === "memory") this.#renew = true;
    } catch (err) {
      // A failure of the host side (QuickJS could not even allocate the answer): start clean.
      this.#renew = true;
      result = this.#classifyHostError(err);
    } finally {
      this.#attempt = null;
    }
    // Every handle of the attempt is disposed by now: the image can go back under them.
    if (!this.#renew) instance.restore();
    return result;
  }

  #classifyHostError(err: unknown): PlayResult {
    const text = describeError(err);
    if (/out of memory/i.test(text)) return this.#fail("memory", `the script used more than ${this.#settings.memoryBytes} bytes of memory`);
    return this.#fail("error", text);
  }

  #evaluate(script: string, attempt: Attempt): PlayResult {
    const { vm, runtime } = this.#engine;
    const evaluated = vm.evalCode(script, "play.js", { type: "global" });
    if (evaluated.error !== undefined) return evaluated.error.consume((error) => this.#failure(error));
    const completion = evaluated.value.consume((value) => (vm.typeof(value) === "undefined" ? undefined : this.#text(value)));
    if (typeof completion === "object") return completion;
    if (runtime.hasPendingJob()) {
      const jobs = runtime.executePendingJobs();
      if (jobs.error !== undefined) return jobs.error.consume((error) => this.#failure(error));
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
  #text(value: QuickJSHandle): string | PlayResult {
    try {
      return this.#engine.toText(value);
    } catch (err) {
      if (err instanceof Lifetime) return (err as QuickJSHandle).consume((error) => this.#failure(error));
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
  #failure(error: QuickJSHandle): PlayResult {
    if (this.#abort !== null) return this.#aborted();
    let dumped: unknown;
    try {
      dumped = this.#engine.vm.dump(error);
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

  /**
   * print, db and Math.random, once per engine (inside its image). Each host function acts on
   * `this.#attempt`, the attempt running when the script calls it.
   */
  #installGlobals(engine: Engine, hold: (handle: QuickJSHandle) => QuickJSHandle): void {
    const { vm, toText } = engine;
    const current = (): Attempt => {
      const attempt = this.#attempt;
      if (attempt === null) throw new Error("no play is running");
      return attempt;
    };
    const guard = (): Attempt => {
      if (this.#abort !== null) throw new Error("stopped");
      return current();
    };

    const print = hold(
      vm.newFunction("print", (...args) => {
        const attempt = guard();
        const line = `${args.map(toText).join(" ")}\n`;
        attempt.outputBytes += Buffer.byteLength(line);
        if (attempt.outputBytes > this.#settings.outputBytes) {
          this.#abort = { kind: "too_large" };
          throw new RangeError("output over its size limit");
        }
        attempt.output.push(line);
      }),
    );
    vm.setProp(vm.global, "print", print);

    // QuickJS's generator state is part of the image: put back after every play, it would draw the same numbers each time.
    const random = hold(vm.newFunction("random", () => vm.newNumber(Math.random())));
    vm.getProp(vm.global, "Math").consume((math) => vm.defineProp(math, "random", { value: random, configurable: true, enumerable: false }));

    /** A db answer now, or undefined after asking an asynchronous db to load it (the attempt stops). */
    const read = <T>(attempt: Attempt, cacheKey: string, ask: (db: CircleKv) => T | Promise<T>): T | undefined => {
      const { fetched, ctx } = attempt.state;
      if (fetched.has(cacheKey)) return fetched.get(cacheKey) as T;
      let answer: T | Promise<T>;
      try {
        answer = ask(ctx.db);
      } catch (err) {
        this.#abort = { kind: "db", message: describeError(err) };
        throw new Error("db failed");
      }
      if (!isPromise(answer)) return answer;
      this.#abort = { kind: "fetch", answer: answer.then((value) => fetched.set(cacheKey, value)) };
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
    const currentValue = (attempt: Attempt, k: string): string | null | undefined => (attempt.writes.has(k) ? attempt.writes.get(k) : read(attempt, `g:${k}`, (db) => db.get(k)));
    const cost = (k: string, v: string | null | undefined): number => (v === undefined ? 0 : Buffer.byteLength(k) + (v === null ? 0 : Buffer.byteLength(v)));
    /** Records a write in the overlay, refused (catchably, nothing kept) past KV_LIMITS.playWriteBytes. */
    const write = (attempt: Attempt, k: string, v: string | null): void => {
      const bytes = attempt.writeBytes + cost(k, v) - cost(k, attempt.writes.get(k));
      if (bytes > KV_LIMITS.playWriteBytes) {
        throw new RangeError(`the play's db writes are over ${KV_LIMITS.playWriteBytes} bytes: write less per play`);
      }
      attempt.writeBytes = bytes;
      attempt.writes.set(k, v);
    };

    const dbObject = hold(vm.newObject());
    const method = (name: string, fn: Parameters<QuickJSContext["newFunction"]>[1]): void => {
      vm.setProp(dbObject, name, hold(vm.newFunction(name, fn)));
    };
    method("get", (keyHandle) => {
      const attempt = guard();
      const value = currentValue(attempt, key(keyHandle));
      return value === null || value === undefined ? vm.null : vm.newString(value);
    });
    method("set", (keyHandle, valueHandle) => {
      const attempt = guard();
      const k = key(keyHandle);
      const v = stringArg("db value", valueHandle);
      checked(() => checkValue(v));
      write(attempt, k, v);
    });
    method("del", (keyHandle) => {
      const attempt = guard();
      const k = key(keyHandle);
      const existed = currentValue(attempt, k);
      write(attempt, k, null);
      return existed === null || existed === undefined ? vm.false : vm.true;
    });
    method("list", (prefixHandle) => {
      const attempt = guard();
      const prefix = prefixHandle === undefined || vm.typeof(prefixHandle) === "undefined" ? "" : stringArg("db.list prefix", prefixHandle);
      const stored = read(attempt, `l:${prefix}`, (db) => db.list(prefix)) ?? [];
      const keys = new Set(stored);
      for (const [k, v] of attempt.writes) {
        if (!k.startsWith(prefix)) continue;
        if (v === null) keys.delete(k);
        else keys.add(k);
      }
      const sorted = [...keys].sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b))).slice(0, KV_LIMITS.listKeys);
      const array = vm.newArray();
      sorted.forEach((k, i) => vm.newString(k).consume((s) => vm.setProp(array, i, s)));
      return array;
    });
    vm.defineProp(vm.global, "db", { value: dbObject, configurable: false, enumerable: true });
  }
}
