/**
 * The Redis task queue (queues.ts has the design): `RedisTaskQueue` is the server's side
 * (submit, wait for the reply), `RedisWorkers` runs worker threads (worker.ts) for some circles
 * in this process — `serve --redis-url` and `stoa circles worker` both use it — with their
 * heartbeats and the reclaiming of dead workers' plays. `RedisScripts` are the Lua steps both
 * sides run, one round trip each.
 *
 * Keys (the seed's names where it had them):
 *
 *   rhai_tasks:<circle>                 list of task ids: LPUSH by the server, taken from the right
 *   rhai_task:<id>                      hash: the TaskRecord (protocol.ts) + reply_to (the channel of
 *                                       the server that waits); expires TASK_TTL_S after it settles
 *   rhai_reply:<id>                     list: "<status>\n<output or error>" when no server heard the
 *                                       PUBLISH (it was reconnecting, say); expires REPLY_TTL_S
 *   rhai_done:<dispatcher>              pub/sub channel of one server: "<id>\n<status>\n<text>"
 *   rhai_processing:<circle>:<worker>   list: the ids a worker claimed and has not completed
 *   rhai_workers:<circle>               set: worker ids that may hold a processing list
 *   rhai_worker:<worker>                heartbeat, PX HEARTBEAT_TTL_MS, refreshed by the worker's process
 *
 * Round trips per play: the server's SUBMIT (HSET of the whole record + EXPIRE + LPUSH), one
 * EVALSHA for all the plays submitted in one turn of its event loop (up to SUBMIT_BATCH, any
 * circles); the worker's CLAIM (LMOVE + HGETALL + HSET of attempts and status, up to CLAIM_BATCH
 * plays at once) and COMPLETE (LREM, EXPIRE, HSET of status, output, error, PUBLISH — or the reply
 * list when nobody heard it; a play no longer in the worker's processing list is skipped). A
 * worker sends each play's COMPLETE before it starts the next play (one turn of the event loop
 * sends it; a finished play's answer never waits behind another play) — the last play of a batch
 * rides in the next CLAIM (one EVALSHA completes it, then claims). Only a CLAIM that finds the
 * list empty is followed by a BLMOVE that waits for a play (then a CLAIM of it). So a batch of k
 * plays costs the worker k EVALSHAs (k − 1 COMPLETEs and the next CLAIM), plus a BLMOVE and a
 * CLAIM when the list ran dry.
 * The reply reaches the server in the PUBLISH; a server that missed it LPOPs the list at the
 * deadline.
 *
 * Scripts name keys from ids and circles (`'rhai_task:' .. id`, `'rhai_reply:' .. id`,
 * `'rhai_tasks:' .. circle`): single-instance Redis, not Cluster.
 * The worker measures a play's time left from `created_at` (the server's clock): keep clocks in sync.
 */
import type { RedisClient } from "bun";
import { randomBytes } from "node:crypto";
import { hostname } from "node:os";
import { describeError } from "../core/errors.ts";
import { LuaScripts, RedisLink, shownRedisUrl } from "../core/redis.ts";
import type { Logger } from "../core/log.ts";
import type { TaskStatus } from "./protocol.ts";
import { type PlayOutcome, type PlaySubmission, STOPPING, type TaskQueue, drainWithin } from "./queue.ts";
import { DEADLINE_MARGIN_MS, MAX_LOSSES, circleWorkerEntry, type FromWorker, type ToWorker } from "./embedded-queue.ts";

/** Plays one SUBMIT queues at most (those submitted in one turn of the event loop go together). */
const SUBMIT_BATCH = 64;
/** Plays one CLAIM takes at most (and at most its share of the list): fewer round trips under load. */
export const CLAIM_BATCH = 16;
/** BLMOVE's block, seconds: how long a stopping worker may wait for its blocked read to end. */
export const REDIS_BLOCK_S = 1;
/** A worker unheard of this long is dead: its claimed plays are requeued (or failed). */
export const HEARTBEAT_TTL_MS = 3_000;
/** How often a process refreshes its workers' heartbeats and looks for dead workers. */
const HEARTBEAT_EVERY_MS = 1_000;
/** A settled task's hash stays this long (to read its status), seconds. */
const TASK_TTL_S = 60;
/** A reply list stays this long, seconds. */
const REPLY_TTL_S = 60;
/** `healthy()` answers "down" when PING takes longer. */
const HEALTH_TIMEOUT_MS = 1_000;
/** How often the server checks its plays' deadlines. */
const DEADLINE_SWEEP_MS = 100;
/** How long a stopping worker thread gets to finish its play before it is terminated (its play requeued). */
const THREAD_STOP_MS = 2_000;

export const redisKeys = {
  tasks: (circle: string) => `rhai_tasks:${circle}`,
  task: (id: string) => `rhai_task:${id}`,
  reply: (id: string) => `rhai_reply:${id}`,
  done: (dispatcher: string) => `rhai_done:${dispatcher}`,
  processing: (circle: string, worker: string) => `rhai_processing:${circle}:${worker}`,
  workers: (circle: string) => `rhai_workers:${circle}`,
  heartbeat: (worker: string) => `rhai_worker:${worker}`,
};

/**
 * Lua of COMPLETE, shared by `complete` and `claim`: `completeAll(processing, at)` completes the
 * tasks in ARGV from `at` on — ARGV[at - 4 .. at - 1]: now, task ttl, reply ttl, count; then per
 * task id, status, text, reply_to (the claimed record's). Per task: not in the processing list
 * (reclaimed meanwhile) or its hash gone → skipped, the others go on; else its status, output,
 * error and updated_at, its hash's expiry, and the reply PUBLISHed to reply_to — or LPUSHed to
 * `rhai_reply:<id>` when nobody heard it.
 */
const COMPLETE_LUA = `local function completeAll(processing, at)
  local now, ttl, replyTtl, n = ARGV[at - 4], ARGV[at - 3], ARGV[at - 2], tonumber(ARGV[at - 1])
  for i = at, at + 4 * (n - 1), 4 do
    local id, status, text, to = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
    local key = 'rhai_task:' .. id
    -- EXPIRE answers 0 when the hash is gone; HSET after it keeps the expiry.
    if redis.call('LREM', processing, 1, id) == 1 and redis.call('EXPIRE', key, ttl) == 1 then
      local output, err = '', ''
      if status == 'completed' then output = text else err = text end
      redis.call('HSET', key, 'status', status, 'output', output, 'error', err, 'updated_at', now)
      local reply = status .. '\\n' .. text
      if to == '' or redis.call('PUBLISH', to, id .. '\\n' .. reply) == 0 then
        local replies = 'rhai_reply:' .. id
        redis.call('LPUSH', replies, reply)
        redis.call('EXPIRE', replies, replyTtl)
      end
    end
  end
end
`;

const LUA = {
  /**
   * ARGV: ttl, reply_to, then six per task: id, circle, caller, script, created_at, timeout_ms.
   * Each, in order: its whole TaskRecord hash (status pending, output and error "", attempts 0,
   * updated_at = created_at) + reply_to, its expiry, LPUSH on its circle's list.
   */
  submit: `for i = 3, #ARGV, 6 do
  local id, circle, created = ARGV[i], ARGV[i + 1], ARGV[i + 4]
  local key = 'rhai_task:' .. id
  redis.call('HSET', key, 'id', id, 'circle', circle, 'caller', ARGV[i + 2], 'script', ARGV[i + 3], 'created_at', created, 'timeout_ms', ARGV[i + 5],
    'updated_at', created, 'status', 'pending', 'output', '', 'error', '', 'attempts', '0', 'reply_to', ARGV[2])
  redis.call('EXPIRE', key, ARGV[1])
  redis.call('LPUSH', 'rhai_tasks:' .. circle, id)
end
return 1`,
  /**
   * KEYS: tasks, processing, workers set. ARGV: max, an id BLMOVE moved already or "", then the
   * plays to complete first (COMPLETE_LUA, from ARGV[7]). Answers the claimed records as HGETALL
   * arrays. Takes at most its share of the list (length / workers), so one worker does not hoard
   * plays while another idles.
   */
  claim: `${COMPLETE_LUA}completeAll(KEYS[2], 7)
local now = ARGV[3]
local out = {}
local function claim(id)
  local record = redis.call('HGETALL', 'rhai_task:' .. id)
  if #record == 0 then redis.call('LREM', KEYS[2], 1, id) return end
  -- The record as HSET leaves it (attempts + 1, status processing, updated_at now), read before it.
  local attempts = 1
  for i = 1, #record, 2 do
    if record[i] == 'attempts' then attempts = (tonumber(record[i + 1]) or 0) + 1 end
  end
  local set = {attempts = tostring(attempts), status = 'processing', updated_at = now}
  redis.call('HSET', 'rhai_task:' .. id, 'attempts', set.attempts, 'status', 'processing', 'updated_at', now)
  for i = 1, #record, 2 do
    local value = set[record[i]]
    if value then record[i + 1] = value set[record[i]] = nil end
  end
  for name, value in pairs(set) do record[#record + 1] = name record[#record + 1] = value end
  out[#out + 1] = record
end
if ARGV[2] ~= '' then claim(ARGV[2]) end
local share = math.ceil(redis.call('LLEN', KEYS[1]) / math.max(1, redis.call('SCARD', KEYS[3])))
local max = math.min(tonumber(ARGV[1]), #out + share)
while #out < max do
  local id = redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT')
  if not id then break end
  claim(id)
end
return out`,
  /** KEYS: processing. ARGV: the plays to complete (COMPLETE_LUA, from ARGV[5]). */
  complete: `${COMPLETE_LUA}completeAll(KEYS[1], 5)
return 1`,
  /**
   * KEYS: workers set, heartbeat, processing, tasks. ARGV: worker, now, task ttl, reply ttl,
   * message, max losses. {-1, 0} while the heartbeat lives; else {requeued, failed}.
   */
  reclaim: `if redis.call('EXISTS', KEYS[2]) == 1 then return {-1, 0} end
local requeued, failed = 0, 0
while true do
  local id = redis.call('LPOP', KEYS[3])
  if not id then break end
  local key = 'rhai_task:' .. id
  if redis.call('EXISTS', key) == 1 then
    local attempts = tonumber(redis.call('HGET', key, 'attempts') or '0') or 0
    if attempts >= tonumber(ARGV[6]) then
      redis.call('HSET', key, 'status', 'error', 'error', ARGV[5], 'updated_at', ARGV[2])
      redis.call('EXPIRE', key, ARGV[3])
      local reply = 'error\\n' .. ARGV[5]
      local to = redis.call('HGET', key, 'reply_to')
      if not to or redis.call('PUBLISH', to, id .. '\\n' .. reply) == 0 then
        local replies = 'rhai_reply:' .. id
        redis.call('LPUSH', replies, reply)
        redis.call('EXPIRE', replies, ARGV[4])
      end
      failed = failed + 1
    else
      redis.call('HSET', key, 'status', 'pending', 'updated_at', ARGV[2])
      redis.call('RPUSH', KEYS[4], id)
      requeued = requeued + 1
    end
  end
end
redis.call('SREM', KEYS[1], ARGV[1])
return {requeued, failed}`,
  /** KEYS: workers set, heartbeat, processing, tasks. ARGV: worker, now. A stopping worker's claimed plays go back, uncharged. */
  release: `local n = 0
while true do
  local id = redis.call('LPOP', KEYS[3])
  if not id then break end
  local key = 'rhai_task:' .. id
  if redis.call('EXISTS', key) == 1 then
    redis.call('HINCRBY', key, 'attempts', -1)
    redis.call('HSET', key, 'status', 'pending', 'updated_at', ARGV[2])
    redis.call('RPUSH', KEYS[4], id)
    n = n + 1
  end
end
redis.call('SREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
return n`,
} as const;
type ScriptName = keyof typeof LUA;

const SCRIPTS = new LuaScripts(LUA);

/** A play for SUBMIT. */
export interface NewTask {
  readonly id: string;
  readonly circle: string;
  readonly caller: string;
  readonly script: string;
  /** ms since the epoch, the server's clock. */
  readonly createdAt: number;
  readonly timeoutMs: number;
}

/** A play a worker ran (or did not: stale, bad record), for COMPLETE. */
export interface Completion {
  readonly id: string;
  readonly status: TaskStatus;
  readonly text: string;
  /** The claimed record's reply_to ("" when it had none: the reply goes to the reply list). */
  readonly replyTo: string;
}

/** COMPLETE_LUA's arguments: now, the ttls, the count, then id, status, text, reply_to each. */
function completionArgs(done: readonly Completion[]): string[] {
  const args = [String(Date.now()), String(TASK_TTL_S), String(REPLY_TTL_S), String(done.length)];
  for (const c of done) args.push(c.id, c.status, c.text, c.replyTo);
  return args;
}

/** A flat HGETALL array as a map. */
function fieldsOf(flat: readonly string[]): Record<string, string> {
  const fields: Record<string, string> = {};
  for (let i = 0; i + 1 < flat.length; i += 2) fields[flat[i] as string] = flat[i + 1] as string;
  return fields;
}

/** The Lua steps on one client: EVALSHA, and EVAL when Redis does not have the script (a restarted Redis). */
export class RedisScripts {
  #client: RedisClient;

  constructor(client: RedisClient) {
    this.#client = client;
  }

  #run(name: ScriptName, keys: string[], args: string[]): Promise<unknown> {
    return SCRIPTS.run(this.#client, name, keys, args);
  }

  /** Queues `tasks` (any circles), in order, in one round trip; their replies go to `replyTo`. */
  async submit(replyTo: string, tasks: readonly NewTask[]): Promise<void> {
    const args = [String(TASK_TTL_S), replyTo];
    for (const t of tasks) args.push(t.id, t.circle, t.caller, t.script, String(t.createdAt), String(t.timeoutMs));
    await this.#run("submit", [], args);
  }

  /**
   * Completes `done` (COMPLETE), then claims up to `max` tasks, `first` (moved by BLMOVE) first —
   * one round trip. Answers the records (HGETALL as CLAIM left them).
   */
  async claim(circle: string, worker: string, max: number, first: string, done: readonly Completion[]): Promise<Record<string, string>[]> {
    const keys = [redisKeys.tasks(circle), redisKeys.processing(circle, worker), redisKeys.workers(circle)];
    return ((await this.#run("claim", keys, [String(max), first, ...completionArgs(done)])) as string[][]).map(fieldsOf);
  }

  /** Completes `done` (plays of `worker`) in one round trip. */
  async complete(circle: string, worker: string, done: readonly Completion[]): Promise<void> {
    await this.#run("complete", [redisKeys.processing(circle, worker)], completionArgs(done));
  }

  /** [-1, 0] while `worker` is alive; else [requeued, failed]. */
  async reclaim(circle: string, worker: string): Promise<[number, number]> {
    const message = `the worker ${worker} that ran this play stopped answering (its heartbeat expired), ${MAX_LOSSES} times: it was not retried again`;
    const keys = [redisKeys.workers(circle), redisKeys.heartbeat(worker), redisKeys.processing(circle, worker), redisKeys.tasks(circle)];
    return (await this.#run("reclaim", keys, [worker, String(Date.now()), String(TASK_TTL_S), String(REPLY_TTL_S), message, String(MAX_LOSSES)])) as [number, number];
  }

  /** Gives a stopping worker's claimed plays back to the list; answers how many. */
  async release(circle: string, worker: string): Promise<number> {
    const keys = [redisKeys.workers(circle), redisKeys.heartbeat(worker), redisKeys.processing(circle, worker), redisKeys.tasks(circle)];
    return (await this.#run("release", keys, [worker, String(Date.now())])) as number;
  }
}

interface Waiting {
  readonly circle: string;
  readonly timeoutMs: number;
  readonly deadline: number;
  readonly resolve: (outcome: PlayOutcome) => void;
  /** Set while the deadline's last look (LPOP the reply, HGET the status) is out. */
  checking: boolean;
}

/** A reply "<status>\n<text>" as the play's outcome. */
function replyOutcome(status: string, text: string): PlayOutcome {
  if (status === "completed") return { ok: true, output: text };
  return { ok: false, kind: status === "timeout" ? "timeout" : "execution", message: text };
}

export class RedisTaskQueue implements TaskQueue {
  readonly circles: readonly string[];
  #url: string;
  /** `#url` without its password, for every message. */
  #shownUrl: string;
  #log: Logger;
  #dispatcher = randomBytes(8).toString("hex");
  #channel: string;
  #seq = 0;
  #waiting = new Map<string, Waiting>();
  /** Plays submitted in this turn of the event loop, not sent yet (#sendOutbox). */
  #outbox: NewTask[] = [];
  #commands: RedisLink;
  #subscriber: RedisLink;
  #scripts: RedisScripts | null = null;
  #workers: RedisWorkers | null = null;
  #sweep: Timer;
  #closing = false;
  #closed: Promise<void> | null = null;
  #drained: (() => void) | null = null;

  private constructor(o: { url: string; circles: readonly string[]; log: Logger }) {
    this.circles = o.circles;
    this.#url = o.url;
    this.#shownUrl = shownRedisUrl(o.url);
    this.#log = o.log;
    this.#channel = redisKeys.done(this.#dispatcher);
    this.#commands = new RedisLink(o.url, {
      onUp: (client) => {
        this.#scripts = new RedisScripts(client);
        this.#log.info("connected to Redis", { url: this.#shownUrl });
      },
      onDown: (reason) => this.#lostRedis(reason),
    });
    this.#subscriber = new RedisLink(o.url, {
      onUp: async (client) => {
        await client.subscribe(this.#channel, (message) => this.#onReply(message));
      },
    });
    this.#sweep = setInterval(() => this.#expire(), DEADLINE_SWEEP_MS);
    this.#sweep.unref();
  }

  /**
   * The queue at `url`, with `workersHere` workers per circle in this process (0: only others'
   * `stoa circles worker`). Redis down at start is no error: plays answer so until it is up.
   */
  static async start(o: { url: string; circles: readonly string[]; log: Logger; workersHere: number }): Promise<RedisTaskQueue> {
    const queue = new RedisTaskQueue(o);
    await Promise.all([queue.#commands.start(), queue.#subscriber.start()]);
    if (queue.#commands.down !== null) queue.#log.warn("Redis is not reachable yet; plays fail until it is", { url: queue.#shownUrl, reason: queue.#commands.down });
    if (o.workersHere > 0) queue.#workers = await RedisWorkers.start({ url: o.url, circles: o.circles, log: o.log, perCircle: o.workersHere });
    return queue;
  }

  #unavailable(reason: string): PlayOutcome {
    return { ok: false, kind: "execution", message: `Redis at ${this.#shownUrl} is unavailable (${reason}): the play did not run; check that redis-server is up` };
  }

  submit(play: PlaySubmission): Promise<PlayOutcome> {
    if (this.#closing) return Promise.resolve({ ok: false, kind: "execution", message: STOPPING });
    const scripts = this.#scripts;
    const down = this.#commands.down ?? this.#subscriber.down;
    if (down !== null || scripts === null) return Promise.resolve(this.#unavailable(down ?? "not connected"));
    const id = `${this.#dispatcher}.${++this.#seq}`;
    const now = Date.now();
    const { promise, resolve } = Promise.withResolvers<PlayOutcome>();
    this.#waiting.set(id, { circle: play.circle, timeoutMs: play.timeoutMs, deadline: now + play.timeoutMs + DEADLINE_MARGIN_MS, resolve, checking: false });
    this.#outbox.push({ id, circle: play.circle, caller: play.caller, script: play.script, createdAt: now, timeoutMs: play.timeoutMs });
    if (this.#outbox.length === 1) setImmediate(() => this.#sendOutbox());
    return promise;
  }

  /** The plays submitted in this turn of the event loop: one SUBMIT per SUBMIT_BATCH of them. */
  #sendOutbox(): void {
    const tasks = this.#outbox.filter((task) => this.#waiting.has(task.id));
    this.#outbox = [];
    const scripts = this.#scripts;
    const down = this.#commands.down;
    for (let at = 0; at < tasks.length; at += SUBMIT_BATCH) {
      const batch = tasks.slice(at, at + SUBMIT_BATCH);
      const failed = (reason: string): void => {
        for (const task of batch) this.#settle(task.id, this.#unavailable(reason));
      };
      if (down !== null || scripts === null) failed(down ?? "not connected");
      else scripts.submit(this.#channel, batch).catch((err: unknown) => failed(describeError(err)));
    }
  }

  #settle(id: string, outcome: PlayOutcome): void {
    const waiting = this.#waiting.get(id);
    if (waiting === undefined) return;
    this.#waiting.delete(id);
    waiting.resolve(outcome);
    if (this.#waiting.size === 0) this.#drained?.();
  }

  /** A PUBLISH on our channel: "<id>\n<status>\n<text>". */
  #onReply(message: string): void {
    const a = message.indexOf("\n");
    const b = message.indexOf("\n", a + 1);
    if (a < 0 || b < 0) return;
    this.#settle(message.slice(0, a), replyOutcome(message.slice(a + 1, b), message.slice(b + 1)));
  }

  /** Redis went away: every waiting play answers so now, not at its deadline. */
  #lostRedis(reason: string): void {
    this.#log.warn("lost the connection to Redis; plays fail until it is back", { url: this.#shownUrl, reason });
    for (const id of [...this.#waiting.keys()]) this.#settle(id, this.#unavailable(`connection lost: ${reason}`));
  }

  #expire(): void {
    if (this.#waiting.size === 0) return;
    const now = Date.now();
    for (const [id, waiting] of this.#waiting) {
      if (waiting.checking || waiting.deadline > now) continue;
      waiting.checking = true;
      void this.#lastLook(id, waiting);
    }
  }

  /** At the deadline: the reply if it came without its PUBLISH, else why there is none. */
  async #lastLook(id: string, waiting: Waiting): Promise<void> {
    const client = this.#commands.client;
    if (client === null) return this.#settle(id, this.#unavailable(this.#commands.down ?? "not connected"));
    try {
      const [reply, status] = (await Promise.all([client.send("LPOP", [redisKeys.reply(id)]), client.send("HGET", [redisKeys.task(id), "status"])])) as [string | null, string | null];
      if (reply !== null) {
        const cut = reply.indexOf("\n");
        return this.#settle(id, replyOutcome(reply.slice(0, cut), reply.slice(cut + 1)));
      }
      if (status === "pending") {
        return this.#settle(id, {
          ok: false,
          kind: "execution",
          message: `no worker took the play within its time limit (${waiting.timeoutMs} ms): start one with stoa circles worker --redis-url ${this.#shownUrl} -k ${waiting.circle}`,
        });
      }
      this.#settle(id, { ok: false, kind: "timeout", message: `the play did not finish within its time limit (${waiting.timeoutMs} ms): its worker did not answer` });
    } catch (err) {
      this.#settle(id, this.#unavailable(describeError(err)));
    }
  }

  async healthy(): Promise<{ ok: boolean; detail: string }> {
    const client = this.#commands.client;
    if (client === null) return { ok: false, detail: `Redis at ${this.#shownUrl} is down: ${this.#commands.down ?? "not connected"}` };
    let timer: Timer | undefined;
    const late = new Promise<string>((resolve) => {
      timer = setTimeout(() => resolve(`no PING answer within ${HEALTH_TIMEOUT_MS} ms`), HEALTH_TIMEOUT_MS);
    });
    try {
      const answer = await Promise.race([client.send("PING", []).then(String, describeError), late]);
      return answer === "PONG" ? { ok: true, detail: `Redis at ${this.#shownUrl}: ${this.#waiting.size} plays waiting` } : { ok: false, detail: `Redis at ${this.#shownUrl}: ${answer}` };
    } finally {
      clearTimeout(timer);
    }
  }

  close(graceMs: number): Promise<void> {
    this.#closed ??= (async () => {
      this.#closing = true;
      if (this.#waiting.size > 0) await drainWithin(graceMs, (done) => (this.#drained = done));
      for (const id of [...this.#waiting.keys()]) this.#settle(id, { ok: false, kind: "execution", message: STOPPING });
      clearInterval(this.#sweep);
      await this.#workers?.close();
      this.#subscriber.close();
      this.#commands.close();
    })();
    return this.#closed;
  }
}

interface Thread {
  readonly circle: string;
  readonly workerId: string;
  readonly worker: Worker;
  readonly stopped: Promise<void>;
  stopping: boolean;
}

/**
 * Worker threads for some circles in this process (`perCircle` each), their heartbeats, and the
 * sweep that gives a dead worker's claimed plays to the others (any process serving the circle
 * sweeps: the first one to see the heartbeat gone reclaims, atomically).
 */
export class RedisWorkers {
  readonly circles: readonly string[];
  #url: string;
  /** `#url` without its password, for every message. */
  #shownUrl: string;
  #log: Logger;
  #threads: Thread[] = [];
  #link: RedisLink;
  #beat: Timer;
  #closed: Promise<void> | null = null;
  #count = 0;
  #prefix = `${hostname()}-${process.pid}-${randomBytes(3).toString("hex")}`;

  private constructor(o: { url: string; circles: readonly string[]; log: Logger }) {
    this.circles = o.circles;
    this.#url = o.url;
    this.#shownUrl = shownRedisUrl(o.url);
    this.#log = o.log;
    this.#link = new RedisLink(o.url, { onUp: (client) => this.#heartbeat(client) });
    this.#beat = setInterval(() => void this.#tick(), HEARTBEAT_EVERY_MS);
  }

  /**
   * Starts `perCircle` worker threads for each circle.
   * @example
   * const workers = await RedisWorkers.start({ url: "redis://127.0.0.1:6379", circles: [pk], log, perCircle: 1 });
   * onShutdown("circle workers", () => workers.close());
   */
  static async start(o: { url: string; circles: readonly string[]; log: Logger; perCircle: number }): Promise<RedisWorkers> {
    const workers = new RedisWorkers(o);
    await workers.#link.start();
    for (const circle of o.circles) for (let i = 0; i < o.perCircle; i++) await workers.#spawn(circle);
    return workers;
  }

  /** The worker ids of the threads (for tests and logs). */
  get workerIds(): string[] {
    return this.#threads.map((thread) => thread.workerId);
  }

  async #spawn(circle: string): Promise<void> {
    const workerId = `${this.#prefix}-${++this.#count}`;
    const client = this.#link.client;
    // Alive before it can claim anything: a sweeper must never take a live worker's plays.
    if (client !== null) await this.#register(client, circle, workerId).catch(() => undefined);
    const worker = new Worker(circleWorkerEntry());
    const { promise: stopped, resolve } = Promise.withResolvers<void>();
    const thread: Thread = { circle, workerId, worker, stopped, stopping: false };
    const ready = Promise.withResolvers<void>();
    let dead = false;
    let started = false;
    const died = (reason: string): void => {
      if (dead) return;
      dead = true;
      worker.terminate();
      resolve();
      ready.resolve();
      if (thread.stopping) return;
      // One that dies before it is ready would die again: no restart loop.
      if (started) {
        void this.#replace(thread, reason);
      } else {
        this.#threads = this.#threads.filter((t) => t !== thread);
        this.#log.error("a circle worker thread could not start; this circle has one worker fewer here", { circle, worker: workerId, reason });
      }
    };
    worker.onmessage = (event: MessageEvent<FromWorker>) => {
      const msg = event.data;
      if (msg.t === "ready") {
        started = true;
        ready.resolve();
      } else if (msg.t === "failed") died(`it could not start: ${msg.message}`);
      else if (msg.t === "log") this.#log[msg.level](msg.msg, msg.fields);
      else if (msg.t === "stopped") resolve();
    };
    worker.addEventListener("error", (event) => died(`it failed: ${(event as ErrorEvent).message}`));
    worker.addEventListener("close", () => died("it exited"));
    this.#threads.push(thread);
    worker.postMessage({ t: "redis", url: this.#url, circle, workerId } satisfies ToWorker);
    await ready.promise;
  }

  /** A thread died: its claimed plays are lost once (requeued or failed) and a new worker takes its place. */
  async #replace(thread: Thread, reason: string): Promise<void> {
    this.#threads = this.#threads.filter((t) => t !== thread);
    this.#log.warn("circle worker thread died; replacing it", { circle: thread.circle, worker: thread.workerId, reason });
    const client = this.#link.client;
    if (client !== null) {
      await client.send("DEL", [redisKeys.heartbeat(thread.workerId)]).catch(() => undefined);
      await new RedisScripts(client).reclaim(thread.circle, thread.workerId).catch(() => undefined);
    }
    if (this.#closed === null) await this.#spawn(thread.circle);
  }

  async #register(client: RedisClient, circle: string, workerId: string): Promise<void> {
    await Promise.all([
      client.send("SET", [redisKeys.heartbeat(workerId), circle, "PX", String(HEARTBEAT_TTL_MS)]),
      client.send("SADD", [redisKeys.workers(circle), workerId]),
    ]);
  }

  async #heartbeat(client: RedisClient): Promise<void> {
    await Promise.all(this.#threads.filter((t) => !t.stopping).map((t) => this.#register(client, t.circle, t.workerId)));
  }

  /** Heartbeats, then the sweep: the workers of our circles whose heartbeat is gone lose their claims. */
  async #tick(): Promise<void> {
    const client = this.#link.client;
    if (client === null) return;
    try {
      await this.#heartbeat(client);
      const scripts = new RedisScripts(client);
      const ours = new Set(this.workerIds);
      for (const circle of this.circles) {
        const members = (await client.send("SMEMBERS", [redisKeys.workers(circle)])) as string[];
        for (const worker of members) {
          if (ours.has(worker)) continue;
          const [requeued, failed] = await scripts.reclaim(circle, worker);
          if (requeued >= 0) this.#log.warn("reclaimed the plays of a dead worker", { circle, worker, requeued, failed });
        }
      }
    } catch (err) {
      this.#log.debug("heartbeat or sweep failed; next tick tries again", { url: this.#shownUrl, error: describeError(err) });
    }
  }

  /** Debug hook for tests: kill the thread of `workerId` as a crash would (its plays are reclaimed at once). */
  terminateThread(workerId: string): void {
    this.#threads.find((thread) => thread.workerId === workerId)?.worker.terminate();
  }

  /**
   * Stops every thread: the play running finishes (up to THREAD_STOP_MS), claimed plays go back to
   * the list, heartbeats are removed. Idempotent.
   */
  close(): Promise<void> {
    this.#closed ??= (async () => {
      clearInterval(this.#beat);
      await Promise.all(
        this.#threads.map(async (thread) => {
          thread.stopping = true;
          thread.worker.postMessage({ t: "stop" } satisfies ToWorker);
          const clean = await Promise.race([thread.stopped.then(() => true), Bun.sleep(THREAD_STOP_MS + REDIS_BLOCK_S * 1000).then(() => false)]);
          thread.worker.terminate();
          const client = this.#link.client;
          if (!clean && client !== null) await new RedisScripts(client).release(thread.circle, thread.workerId).catch(() => undefined);
        }),
      );
      this.#threads = [];
      this.#link.close();
    })();
    return this.#closed;
  }
}
