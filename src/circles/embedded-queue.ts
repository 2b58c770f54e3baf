/**
 * The embedded task queue (queues.ts has the design): per circle an in-process FIFO — the queue
 * `rhai_tasks:<circle>` of the seed, in memory — and a Bun Worker thread (worker.ts) running the
 * circle's Sandbox with its SqliteKv at `<stateDir>/circles/<circle>.sqlite`.
 *
 * A play is pending from `submit` until the thread starts it, processing while the thread's
 * shared `running` slot names it, then completed, error or timeout when its answer comes back
 * (the full TaskRecord is Redis's; here the state is that of the in-flight entry). Plays
 * submitted in one turn of the event loop go to the thread as one message; answers come back
 * one message each, by seq.
 *
 * A circle may have a pool of threads (`threadsPerCircle`, default 1); a play goes to the one
 * with the fewest unanswered plays. A thread that dies (error, exit, `terminateBusy`) loses no
 * play: a fresh thread takes every play it had not answered, in order. The play the dead thread
 * was running counts a loss; its second loss answers an execution error naming the crash.
 * Every play also has a deadline of `timeoutMs + DEADLINE_MARGIN_MS` from its submission, so it
 * settles even if the thread hangs.
 */
import { join } from "node:path";
import { StoaError } from "../core/errors.ts";
import type { Logger } from "../core/log.ts";
import { workerEntry } from "../core/worker-entry.ts";
import { type PlayOutcome, type PlaySubmission, STOPPING, type TaskQueue, drainWithin } from "./queue.ts";

/** An answer's kind on the thread's wire. */
export const CODE = { ok: 0, execution: 1, timeout: 2 } as const;

/** Messages to a circle's worker thread (worker.ts). */
export type ToWorker =
  | { t: "embedded"; circle: string; kvDir: string; running: SharedArrayBuffer }
  | { t: "redis"; url: string; circle: string; workerId: string }
  /** Flat `[seq, caller, script, deadline, timeoutMs, …]`: one array per batch, not one object per play. */
  | { t: "tasks"; batch: (string | number)[] }
  | { t: "stop" };

/** Messages from a circle's worker thread. */
export type FromWorker =
  | { t: "ready" }
  | { t: "failed"; message: string }
  | { t: "answer"; seq: number; code: number; text: string }
  | { t: "log"; level: "warn" | "error"; msg: string; fields: Record<string, unknown> }
  | { t: "stopped" };

/** How much past its timeout a play may take before the queue answers for it (the thread's own answer comes first). */
export const DEADLINE_MARGIN_MS = 500;
/** How often deadlines are checked. */
const DEADLINE_SWEEP_MS = 100;
/** How long a thread gets to start (load QuickJS, open the db). */
const START_TIMEOUT_MS = 10_000;
/** How long a stopping thread gets to say it stopped before it is terminated. */
const STOP_TIMEOUT_MS = 1_000;
/**
 * Threads per circle. One, the seed's model: a circle's plays run one after another, so a play's
 * read-modify-write of db never races another's. More threads run a circle's plays side by side
 * (each thread its own SQLite connection to the circle's file) — the rate of one circle then
 * scales with the cores, and db writes of concurrent plays may interleave.
 */
const DEFAULT_THREADS_PER_CIRCLE = 1;
/** A play is lost this many times (its thread died running it) before it answers an error. */
export const MAX_LOSSES = 2;

/** The worker thread's code, from source or inside the compiled binary. */
export function circleWorkerEntry(): string {
  return workerEntry(new URL("./worker.ts", import.meta.url), "circles/worker.js", "run stoa from source (bun src/main.ts)");
}

interface Task {
  readonly seq: number;
  readonly caller: string;
  readonly script: string;
  /** ms since the epoch: the play's time limit ends here (the thread gets what is left). */
  readonly deadline: number;
  readonly timeoutMs: number;
  losses: number;
  readonly resolve: (outcome: PlayOutcome) => void;
}

/** One worker thread of a circle: the plays posted to it, and those waiting to be. */
class Thread {
  readonly worker: Worker;
  ready = false;
  dead = false;
  /** The seq of the play it runs (0: none), written by the thread before each play. */
  readonly running = new Float64Array(new SharedArrayBuffer(8));
  /** Plays given to this thread and not answered: posted, or in `outbox` until it is ready or the turn ends. */
  readonly assigned = new Map<number, Task>();
  outbox: Task[] = [];
  flushScheduled = false;
  stopped: (() => void) | null = null;
  /** Ends the thread's start (its timer, the promise `start` waits on): ready, failed or killed. */
  startDone: () => void = () => {};

  constructor() {
    this.worker = new Worker(circleWorkerEntry());
  }

  get busy(): boolean {
    return this.running[0] !== 0;
  }
}

/** One circle's queue and its threads (`threads` of them; plays go to the least loaded). */
class CircleWorker {
  readonly circle: string;
  #kvDir: string;
  #log: Logger;
  #size: number;
  /** Every unanswered play. */
  #tasks = new Map<number, Task>();
  #threads: Thread[] = [];
  #seq = 0;
  /** Set when a thread cannot be started: every play answers this. */
  #broken: string | null = null;
  #closing = false;
  #sweep: Timer;
  #drained: (() => void) | null = null;

  constructor(circle: string, kvDir: string, threads: number, log: Logger) {
    this.circle = circle;
    this.#kvDir = kvDir;
    this.#size = threads;
    this.#log = log;
    this.#sweep = setInterval(() => this.#expire(), DEADLINE_SWEEP_MS);
    this.#sweep.unref();
  }

  get healthy(): boolean {
    return this.#broken === null && this.#threads.length === this.#size;
  }

  get detail(): string {
    return this.#broken ?? `${this.#threads.filter((t) => t.ready).length} of ${this.#size} threads up`;
  }

  /** Whether a thread runs a play now. */
  get busy(): boolean {
    return this.#threads.some((thread) => thread.busy);
  }

  /** Starts the threads; resolves when each is ready or has failed (then `#broken` says why). */
  async start(): Promise<void> {
    await Promise.all(Array.from({ length: this.#size }, () => this.#startThread([])));
  }

  /** A new thread, given `tasks` (a dead thread's) first. */
  #startThread(tasks: Task[]): Promise<void> {
    const { promise, resolve } = Promise.withResolvers<void>();
    const thread = new Thread();
    const { worker } = thread;
    this.#threads.push(thread);
    for (const task of tasks) this.#assign(thread, task);
    const timer = setTimeout(() => {
      this.#fail(`the worker thread of circle ${this.circle} did not start within ${START_TIMEOUT_MS} ms`);
    }, START_TIMEOUT_MS);
    thread.startDone = () => {
      clearTimeout(timer);
      resolve();
    };
    const died = (reason: string): void => {
      if (thread.dead) return;
      thread.dead = true;
      worker.terminate();
      thread.stopped?.();
      thread.startDone();
      // One that dies before it is ready would die again: no restart loop.
      if (!thread.ready && !this.#closing) this.#fail(`the worker thread of circle ${this.circle} died starting: ${reason}`);
      else this.#lost(thread, reason);
    };
    worker.onmessage = (event: MessageEvent<FromWorker>) => {
      const msg = event.data;
      switch (msg.t) {
        case "answer":
          this.#answer(thread, msg.seq, msg.code, msg.text);
          return;
        case "ready":
          thread.ready = true;
          this.#scheduleFlush(thread);
          thread.startDone();
          return;
        case "failed":
          this.#fail(`the worker thread of circle ${this.circle} could not start: ${msg.message}`);
          return;
        case "log":
          this.#log[msg.level](msg.msg, msg.fields);
          return;
        case "stopped":
          thread.stopped?.();
          return;
      }
    };
    worker.addEventListener("error", (event) => died(`it failed: ${(event as ErrorEvent).message}`));
    worker.addEventListener("close", () => died("it exited"));
    worker.postMessage({ t: "embedded", circle: this.circle, kvDir: this.#kvDir, running: thread.running.buffer as SharedArrayBuffer } satisfies ToWorker);
    return promise;
  }

  submit(play: PlaySubmission): Promise<PlayOutcome> {
    if (this.#closing) return Promise.resolve({ ok: false, kind: "execution", message: STOPPING });
    if (this.#broken !== null) return Promise.resolve({ ok: false, kind: "execution", message: this.#broken });
    const { promise, resolve } = Promise.withResolvers<PlayOutcome>();
    const task: Task = { seq: ++this.#seq, caller: play.caller, script: play.script, deadline: Date.now() + play.timeoutMs, timeoutMs: play.timeoutMs, losses: 0, resolve };
    this.#tasks.set(task.seq, task);
    let least = this.#threads[0] as Thread;
    for (const thread of this.#threads) if (thread.assigned.size < least.assigned.size) least = thread;
    this.#assign(least, task);
    return promise;
  }

  #assign(thread: Thread, task: Task): void {
    thread.assigned.set(task.seq, task);
    thread.outbox.push(task);
    this.#scheduleFlush(thread);
  }

  #scheduleFlush(thread: Thread): void {
    if (thread.flushScheduled || !thread.ready || thread.outbox.length === 0) return;
    thread.flushScheduled = true;
    setImmediate(() => this.#flush(thread));
  }

  #flush(thread: Thread): void {
    thread.flushScheduled = false;
    if (!thread.ready || thread.dead) return;
    const batch: (string | number)[] = [];
    for (const task of thread.outbox) {
      if (this.#tasks.has(task.seq)) batch.push(task.seq, task.caller, task.script, task.deadline, task.timeoutMs);
    }
    thread.outbox = [];
    if (batch.length > 0) thread.worker.postMessage({ t: "tasks", batch } satisfies ToWorker);
  }

  #settle(task: Task, outcome: PlayOutcome): void {
    this.#tasks.delete(task.seq);
    task.resolve(outcome);
    if (this.#tasks.size === 0) this.#drained?.();
  }

  #answer(thread: Thread, seq: number, code: number, text: string): void {
    thread.assigned.delete(seq);
    const task = this.#tasks.get(seq);
    if (task === undefined) return; // answered already (its deadline passed)
    this.#settle(task, code === CODE.ok ? { ok: true, output: text } : { ok: false, kind: code === CODE.timeout ? "timeout" : "execution", message: text });
  }

  #expire(): void {
    if (this.#tasks.size === 0) return;
    const late = Date.now() - DEADLINE_MARGIN_MS;
    for (const task of this.#tasks.values()) {
      if (task.deadline <= late) {
        this.#settle(task, { ok: false, kind: "timeout", message: `the play did not finish within its time limit: the worker of circle ${this.circle} did not answer in time` });
      }
    }
  }

  #fail(message: string): void {
    this.#broken = message;
    this.#log.error("circle worker unavailable", { circle: this.circle, reason: message });
    // Every thread goes, and so does every start still waiting (a pool's other threads).
    for (const thread of this.#threads) {
      thread.dead = true;
      thread.worker.terminate();
      thread.startDone();
    }
    this.#threads = [];
    for (const task of [...this.#tasks.values()]) this.#settle(task, { ok: false, kind: "execution", message });
  }

  /** A thread died: charge the play it was running, give the others to a fresh thread. */
  #lost(thread: Thread, reason: string): void {
    const index = this.#threads.indexOf(thread);
    if (index < 0 || this.#closing) return;
    this.#threads.splice(index, 1);
    const running = thread.running[0];
    const crash = `the worker thread of circle ${this.circle} died running this play (${reason})`;
    this.#log.warn("circle worker thread died; restarting it", { circle: this.circle, reason, unanswered: thread.assigned.size });
    const left: Task[] = [];
    for (const task of thread.assigned.values()) {
      if (!this.#tasks.has(task.seq)) continue;
      if (task.seq === running && ++task.losses >= MAX_LOSSES) {
        this.#settle(task, { ok: false, kind: "execution", message: `${crash}, ${task.losses} times: it was not retried again` });
      } else {
        left.push(task);
      }
    }
    void this.#startThread(left);
  }

  /** Debug hook for tests: terminate the threads running a play, as a crash would (their plays are requeued). */
  terminateBusy(): void {
    for (const thread of this.#threads) if (thread.busy) thread.worker.terminate();
  }

  async close(graceMs: number): Promise<void> {
    this.#closing = true;
    if (this.#tasks.size > 0) await drainWithin(graceMs, (done) => (this.#drained = done));
    for (const task of [...this.#tasks.values()]) this.#settle(task, { ok: false, kind: "execution", message: STOPPING });
    clearInterval(this.#sweep);
    const threads = this.#threads;
    this.#threads = [];
    await Promise.all(threads.map((thread) => this.#stop(thread)));
  }

  async #stop(thread: Thread): Promise<void> {
    const { worker } = thread;
    const closed = new Promise<void>((resolve) => worker.addEventListener("close", () => resolve()));
    // A thread still in a play (every play is answered by now) is not waited for.
    if (thread.ready && !thread.dead && !thread.busy) {
      const stopped = new Promise<void>((resolve) => {
        thread.stopped = resolve;
      });
      worker.postMessage({ t: "stop" } satisfies ToWorker);
      await Promise.race([stopped, Bun.sleep(STOP_TIMEOUT_MS)]);
    }
    worker.terminate();
    await Promise.race([closed, Bun.sleep(STOP_TIMEOUT_MS)]);
  }
}

export class EmbeddedQueue implements TaskQueue {
  readonly circles: readonly string[];
  #workers: Map<string, CircleWorker>;
  #closing: Promise<void> | null = null;

  private constructor(workers: Map<string, CircleWorker>) {
    this.#workers = workers;
    this.circles = [...workers.keys()];
  }

  /**
   * Starts the worker threads of each circle (`threadsPerCircle`, default 1), the db in `<stateDir>/circles/`.
   * @example
   * const queue = await EmbeddedQueue.start({ circles: [pk], stateDir, log });
   * await queue.submit({ circle: pk, caller: "", script: "40 + 2", timeoutMs: 5000 }); // { ok: true, output: "42" }
   */
  static async start(o: { circles: readonly string[]; stateDir: string; log: Logger; threadsPerCircle?: number }): Promise<EmbeddedQueue> {
    const kvDir = join(o.stateDir, "circles");
    const threads = o.threadsPerCircle ?? DEFAULT_THREADS_PER_CIRCLE;
    const workers = new Map(o.circles.map((circle) => [circle, new CircleWorker(circle, kvDir, threads, o.log)]));
    const queue = new EmbeddedQueue(workers);
    await Promise.all([...workers.values()].map((worker) => worker.start()));
    const broken = [...workers.values()].find((worker) => !worker.healthy);
    if (broken !== undefined) {
      await queue.close(0);
      throw new StoaError("internal", broken.detail);
    }
    return queue;
  }

  submit(play: PlaySubmission): Promise<PlayOutcome> {
    const worker = this.#workers.get(play.circle);
    if (worker === undefined) return Promise.resolve({ ok: false, kind: "execution", message: `circle ${play.circle} is not served by this queue` });
    return worker.submit(play);
  }

  async healthy(): Promise<{ ok: boolean; detail: string }> {
    const down = [...this.#workers.values()].filter((worker) => !worker.healthy);
    if (down.length === 0) return { ok: true, detail: `embedded queue: ${this.#workers.size} circle worker${this.#workers.size === 1 ? "" : "s"} up` };
    return { ok: false, detail: `embedded queue: ${down.map((w) => `circle ${w.circle}: ${w.detail}`).join("; ")}` };
  }

  /** Debug hook for tests: whether `circle`'s thread is running a play now. */
  busy(circle: string): boolean {
    return this.#workers.get(circle)?.busy ?? false;
  }

  /** Debug hook for tests: kill `circle`'s threads that run a play, as a crash would. */
  terminateBusy(circle: string): void {
    this.#workers.get(circle)?.terminateBusy();
  }

  close(graceMs: number): Promise<void> {
    this.#closing ??= (async () => {
      await Promise.all([...this.#workers.values()].map((worker) => worker.close(graceMs)));
    })();
    return this.#closing;
  }
}
