/**
 * A circle's worker thread (Bun Worker entry; queues.ts has the design): one Sandbox and the
 * circle's db, fed by the embedded queue (embedded-queue.ts posts task batches) or by Redis
 * (redis-queue.ts `RedisWorkers` starts it; the loop below claims from `rhai_tasks:<circle>`).
 * Messages are `ToWorker` / `FromWorker` (embedded-queue.ts). In a compiled binary this file
 * must be a build entrypoint (src/core/worker-entry.ts, scripts/build.ts).
 *
 * Embedded: a batch is `[seq, caller, script, deadline, timeoutMs, …]` (deadline in ms since the epoch);
 * each play's answer goes back at once as `[seq, code, text]` — not batched: an answer held
 * back for its batch-mates would wait behind a script that loops to its time limit. Before a
 * play starts, its seq is written to the shared `running` slot, so the queue knows which play
 * a dead thread was running (that one was lost; the others had not started).
 *
 * Redis: claim up to CLAIM_BATCH tasks (and at most this worker's share of the list) in one
 * EVAL, or block in BLMOVE for one when the list is empty; run each; one EVAL completes the
 * plays finished so far (status, output, error, PUBLISH), sent before the next play starts (an
 * answer never waits behind another play) and awaited after the batch; the batch's last play is
 * completed by the next CLAIM's EVAL (redis-queue.ts, "Round trips per play"). After a Redis failure the worker gives back what it still holds before
 * claiming again. Stop: the play running finishes and is completed, claimed plays not started go
 * back to the list.
 */
import type { RedisClient } from "bun";
import { describeError } from "../core/errors.ts";
import { SqliteKv, RedisKv } from "./kv.ts";
import { MAX_ERROR_TEXT_BYTES, MAX_OUTPUT_BYTES, decodeTaskRecord, type TaskRecord, type TaskStatus } from "./protocol.ts";
import { type PlayResult, Sandbox } from "./sandbox.ts";
import { CODE, type FromWorker, type ToWorker } from "./embedded-queue.ts";
import { CLAIM_BATCH, type Completion, REDIS_BLOCK_S, RedisScripts, redisKeys } from "./redis-queue.ts";
import { newRedisClient, REDIS_RETRY_MS, shownRedisUrl } from "../core/redis.ts";

declare const self: Worker;

function post(message: FromWorker): void {
  self.postMessage(message);
}

/** The answer of a play in the queue's terms: a code (CODE) and the output or the message. */
function outcome(result: PlayResult, timeoutMs: number): [code: number, text: string] {
  if (result.ok) return [CODE.ok, result.output];
  if (result.kind === "timeout") return [CODE.timeout, `the script ran over its time limit (${timeoutMs} ms) and was stopped`];
  // too_large and memory already name the output cap and the memory limit (sandbox.ts).
  return [CODE.execution, result.message];
}

const STALE = "the play waited in the queue past its time limit and did not run";

async function newSandbox(): Promise<Sandbox> {
  return await Sandbox.create({ outputBytes: MAX_OUTPUT_BYTES, errorBytes: MAX_ERROR_TEXT_BYTES });
}

// ---- embedded ----

interface Embedded {
  circle: string;
  sandbox: Sandbox;
  db: SqliteKv;
  running: Float64Array;
  /** Batches not run yet (a batch arrives while the previous one runs). */
  inbox: (string | number)[][];
  busy: boolean;
}

async function drain(state: Embedded): Promise<void> {
  if (state.busy) return;
  state.busy = true;
  try {
    for (let batch = state.inbox.shift(); batch !== undefined; batch = state.inbox.shift()) {
      for (let i = 0; i + 4 < batch.length; i += 5) {
        const seq = batch[i] as number;
        const deadline = batch[i + 3] as number;
        const left = deadline - Date.now();
        if (left <= 0) {
          post({ t: "answer", seq, code: CODE.timeout, text: STALE });
          continue;
        }
        state.running[0] = seq;
        const result = await state.sandbox.run(batch[i + 2] as string, { circle: state.circle, caller: batch[i + 1] as string, timeoutMs: left, db: state.db });
        state.running[0] = 0;
        const [code, text] = outcome(result, batch[i + 4] as number);
        post({ t: "answer", seq, code, text });
      }
    }
  } finally {
    state.busy = false;
  }
}

// ---- Redis ----

interface RedisState {
  url: string;
  circle: string;
  workerId: string;
  sandbox: Sandbox;
  stopping: boolean;
  /** Resolves when the loop has ended (and released what it held). */
  done: Promise<void>;
}

async function connect(url: string): Promise<RedisClient> {
  const client = newRedisClient(url);
  try {
    await client.connect();
    return client;
  } catch (err) {
    client.close();
    throw err;
  }
}

async function redisLoop(state: RedisState): Promise<void> {
  const keys = { tasks: redisKeys.tasks(state.circle), processing: redisKeys.processing(state.circle, state.workerId) };
  let client: RedisClient | null = null;
  let scripts: RedisScripts | null = null;
  /** After a failure the plays this worker holds may or may not have completed: it gives back what it still holds. */
  let failed = false;
  /** Plays run and not completed yet: they go with the next CLAIM. */
  let finished: Completion[] = [];
  while (!state.stopping) {
    try {
      if (client === null || !client.connected) {
        client?.close();
        client = await connect(state.url);
        scripts = new RedisScripts(client);
      }
      const s = scripts as RedisScripts;
      if (failed) {
        await s.release(state.circle, state.workerId);
        failed = false;
      }
      let claimed = await s.claim(state.circle, state.workerId, CLAIM_BATCH, "", finished);
      finished = [];
      if (claimed.length === 0) {
        const id = (await client.send("BLMOVE", [keys.tasks, keys.processing, "RIGHT", "LEFT", String(REDIS_BLOCK_S)])) as string | null;
        if (id === null) continue;
        claimed = await s.claim(state.circle, state.workerId, CLAIM_BATCH, id, []);
      }
      const db = new RedisKv(client, state.circle);
      const completions: Promise<void>[] = [];
      for (const fields of claimed) {
        if (state.stopping) break;
        const task = taskOf(fields);
        if (task.record !== null && finished.length > 0) {
          // A finished play's COMPLETE is not held while another play runs: one turn of the event
          // loop sends it (and lets a stop message in).
          completions.push(s.complete(state.circle, state.workerId, finished));
          finished = [];
          await new Promise((resolve) => setImmediate(resolve));
          if (state.stopping) break;
        }
        finished.push(await runTask(state, db, task));
      }
      await Promise.all(completions);
    } catch (err) {
      if (state.stopping) break;
      post({ t: "log", level: "warn", msg: "circle worker: Redis failed, retrying", fields: { url: shownRedisUrl(state.url), circle: state.circle, error: describeError(err) } });
      client?.close();
      client = null;
      // What it held is given back (release) after reconnecting, run or not.
      failed = true;
      finished = [];
      await Bun.sleep(REDIS_RETRY_MS);
    }
  }
  if (client !== null && scripts !== null) {
    // The plays that ran are completed; claimed plays that did not start go back to the list, for another worker.
    const s = scripts;
    await (finished.length > 0 ? s.complete(state.circle, state.workerId, finished) : Promise.resolve())
      .then(() => s.release(state.circle, state.workerId))
      .catch((err: unknown) => {
        post({ t: "log", level: "warn", msg: "circle worker: could not complete or give back its claimed plays", fields: { error: describeError(err) } });
      });
  }
  client?.close();
}

/** A claimed task: its record to run, or, when the record is unreadable, the error it completes with. */
type ClaimedTask = { readonly id: string; readonly replyTo: string } & ({ readonly record: TaskRecord } | { readonly record: null; readonly error: string });

function taskOf(fields: Record<string, string>): ClaimedTask {
  const [id, replyTo] = [fields.id ?? "", fields.reply_to ?? ""];
  try {
    return { id, replyTo, record: decodeTaskRecord(fields) };
  } catch (err) {
    return { id, replyTo, record: null, error: `the task record is not one this worker can run: ${describeError(err)}` };
  }
}

/** Runs one claimed task (unless it is unreadable or waited past its time limit); answers its completion. */
async function runTask(state: RedisState, db: RedisKv, task: ClaimedTask): Promise<Completion> {
  const { id, replyTo, record } = task;
  if (record === null) return { id, replyTo, status: "error", text: task.error };
  const left = record.created_at + record.timeout_ms - Date.now();
  if (left <= 0) return { id, replyTo, status: "timeout", text: STALE };
  try {
    const result = await state.sandbox.run(record.script, { circle: record.circle, caller: record.caller, timeoutMs: left, db });
    const [code, text] = outcome(result, record.timeout_ms);
    return { id, replyTo, status: code === CODE.ok ? "completed" : code === CODE.timeout ? "timeout" : "error", text };
  } catch (err) {
    // Not a Redis failure: the play answers it rather than going back to the list to fail again.
    return { id, replyTo, status: "error", text: `the worker's sandbox could not run the play: ${describeError(err)}` };
  }
}

// ---- messages ----

let embedded: Embedded | null = null;
let redis: RedisState | null = null;

self.onmessage = async (event: MessageEvent<ToWorker>) => {
  const msg = event.data;
  switch (msg.t) {
    case "tasks":
      if (embedded === null) return;
      embedded.inbox.push(msg.batch);
      void drain(embedded);
      return;
    case "embedded":
      try {
        embedded = { circle: msg.circle, sandbox: await newSandbox(), db: new SqliteKv(msg.kvDir, msg.circle), running: new Float64Array(msg.running), inbox: [], busy: false };
        post({ t: "ready" });
      } catch (err) {
        post({ t: "failed", message: describeError(err) });
      }
      return;
    case "redis": {
      try {
        const sandbox = await newSandbox();
        const state: RedisState = { url: msg.url, circle: msg.circle, workerId: msg.workerId, sandbox, stopping: false, done: Promise.resolve() };
        redis = state;
        state.done = redisLoop(state);
        post({ t: "ready" });
      } catch (err) {
        post({ t: "failed", message: describeError(err) });
      }
      return;
    }
    case "stop":
      if (redis !== null) {
        redis.stopping = true;
        await redis.done;
      }
      embedded?.db.close();
      post({ t: "stopped" });
      return;
  }
};
