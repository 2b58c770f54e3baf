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
 * EVAL, or block in BLMOVE for one when the list is empty; run each; one EVAL to complete it
 * (status, output, error, PUBLISH), sent before the next play starts and awaited after the
 * batch. After a Redis failure the worker gives back what it still holds before claiming again.
 * Stop: the play running finishes, claimed plays not started go back to the list.
 */
import { RedisClient } from "bun";
import { describeError } from "../core/errors.ts";
import { SqliteKv, RedisKv } from "./kv.ts";
import { MAX_ERROR_TEXT_BYTES, MAX_OUTPUT_BYTES, decodeTaskRecord, type TaskStatus } from "./protocol.ts";
import { type PlayResult, Sandbox } from "./sandbox.ts";
import { CODE, type FromWorker, type ToWorker } from "./embedded-queue.ts";
import { CLAIM_BATCH, REDIS_BLOCK_S, REDIS_CONNECT_TIMEOUT_MS, REDIS_RETRY_MS, RedisScripts, redisKeys, shownRedisUrl } from "./redis-queue.ts";

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

function fieldsOf(flat: string[]): Record<string, string> {
  const fields: Record<string, string> = {};
  for (let i = 0; i + 1 < flat.length; i += 2) fields[flat[i] as string] = flat[i + 1] as string;
  return fields;
}

async function connect(url: string): Promise<RedisClient> {
  const client = new RedisClient(url, { autoReconnect: false, enableOfflineQueue: false, connectionTimeout: REDIS_CONNECT_TIMEOUT_MS });
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
  let holding = false;
  while (!state.stopping) {
    try {
      if (client === null || !client.connected) {
        client?.close();
        client = await connect(state.url);
        scripts = new RedisScripts(client);
      }
      const s = scripts as RedisScripts;
      if (holding) {
        await s.release(state.circle, state.workerId);
        holding = false;
      }
      let claimed = await s.claim(state.circle, state.workerId, CLAIM_BATCH, "");
      if (claimed.length === 0) {
        const id = (await client.send("BLMOVE", [keys.tasks, keys.processing, "RIGHT", "LEFT", String(REDIS_BLOCK_S)])) as string | null;
        if (id === null) continue;
        claimed = await s.claim(state.circle, state.workerId, CLAIM_BATCH, id);
      }
      holding = true;
      const db = new RedisKv(client, state.circle);
      const completions: Promise<unknown>[] = [];
      for (const flat of claimed) {
        if (state.stopping) break;
        completions.push((await runTask(state, s, db, keys.processing, fieldsOf(flat))).sent);
        // One turn of the event loop sends the COMPLETE (and lets a stop message in).
        await new Promise((resolve) => setImmediate(resolve));
      }
      await Promise.all(completions);
      holding = false;
    } catch (err) {
      if (state.stopping) break;
      post({ t: "log", level: "warn", msg: "circle worker: Redis failed, retrying", fields: { url: shownRedisUrl(state.url), circle: state.circle, error: describeError(err) } });
      client?.close();
      client = null;
      await Bun.sleep(REDIS_RETRY_MS);
    }
  }
  // Claimed plays that did not start go back to the list, for another worker.
  if (client !== null && scripts !== null) {
    await scripts.release(state.circle, state.workerId).catch((err: unknown) => {
      post({ t: "log", level: "warn", msg: "circle worker: could not give back its claimed plays", fields: { error: describeError(err) } });
    });
  }
  client?.close();
}

/** Runs one claimed task; answers its COMPLETE, sent and not awaited. */
async function runTask(state: RedisState, scripts: RedisScripts, db: RedisKv, processing: string, fields: Record<string, string>): Promise<{ sent: Promise<unknown> }> {
  const id = fields.id ?? "";
  let status: TaskStatus;
  let text: string;
  try {
    const record = decodeTaskRecord(fields);
    const left = record.created_at + record.timeout_ms - Date.now();
    if (left <= 0) {
      [status, text] = ["timeout", STALE];
    } else {
      const result = await state.sandbox.run(record.script, { circle: record.circle, caller: record.caller, timeoutMs: left, db });
      const [code, answer] = outcome(result, record.timeout_ms);
      [status, text] = [code === CODE.ok ? "completed" : code === CODE.timeout ? "timeout" : "error", answer];
    }
  } catch (err) {
    [status, text] = ["error", `the task record is not one this worker can run: ${describeError(err)}`];
  }
  return { sent: scripts.complete(id, processing, status, text) };
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
