/**
 * How a play reaches its circle's worker and how its answer comes back: the contract between
 * the server (server.ts, which speaks JSON-RPC to clients) and the two task queues —
 * embedded (an in-process queue per circle and one Bun Worker per circle running the sandbox)
 * and Redis (`rhai_tasks:<circle>` lists, `rhai_task:<id>` hashes, `rhai_reply:<id>` lists;
 * workers in this process and, with `stoa circles worker`, on other machines).
 *
 * The server never sees a worker: it submits a play and awaits one `PlayOutcome`. Every
 * submitted play settles exactly once — with the script's output, its error, a timeout, or the
 * reason the queue could not run it (Redis down, worker lost twice, server stopping) — and
 * within `timeoutMs` plus the queue's own margin, never later.
 */

/** One play as the server hands it over; the queue makes the task record of it. */
export interface PlaySubmission {
  /** The circle's canonical public key (auth.ts `parsePublicKey(...).hex`). */
  circle: string;
  /** The authenticated caller's canonical key, or "" when auth is off or not done. */
  caller: string;
  script: string;
  /** The task timeout: the script's time limit, and how long the server waits at most. */
  timeoutMs: number;
}

/** How a play ended, in the terms of the JSON-RPC answer the server sends for it. */
export type PlayOutcome =
  | { ok: true; output: string }
  /** `execution` → -32000 (script error, output too large, memory, queue unavailable), `timeout` → -32003. */
  | { ok: false; kind: "execution" | "timeout"; message: string };

export interface TaskQueue {
  /** Which circles this queue serves (the server's routing answers 404 for others). */
  readonly circles: readonly string[];
  /** Runs one play in its circle's worker; never rejects. */
  submit(play: PlaySubmission): Promise<PlayOutcome>;
  /** Whether the queue can take plays now (Redis reachable, workers alive): `GET /health`. */
  healthy(): Promise<{ ok: boolean; detail: string }>;
  /**
   * Stops taking plays; those in flight are answered (finished, or failed with the reason)
   * within `graceMs`; then the workers are stopped. Idempotent.
   */
  close(graceMs: number): Promise<void>;
}

/** The reason every play gets that a stopping server or queue does not run: clients see it in -32000. */
export const STOPPING = "server stopping";

/**
 * A `close(graceMs)`'s wait for the plays in flight: resolves once `arm`'s callback is called
 * (the queue calls it when its last play settles) or after `graceMs`, whichever comes first.
 * @example
 * if (this.#tasks.size > 0) await drainWithin(graceMs, (done) => (this.#drained = done));
 */
export async function drainWithin(graceMs: number, arm: (done: () => void) => void): Promise<void> {
  const { promise, resolve } = Promise.withResolvers<void>();
  arm(resolve);
  const timer = setTimeout(resolve, graceMs);
  await promise;
  clearTimeout(timer);
}
