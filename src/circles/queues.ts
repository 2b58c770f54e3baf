/**
 * The task queues behind `stoa circles serve` (the contract is queue.ts): which one, and how
 * both keep it.
 *
 * Embedded (default, embedded-queue.ts): per circle an in-process FIFO — the seed's queue
 * `rhai_tasks:<circle>` in memory — and one Bun Worker thread (worker.ts) with that circle's
 * Sandbox and its SqliteKv under `<stateDir>/circles/`. Plays submitted in one turn of the event
 * loop reach the thread in one postMessage; answers come back by seq. A thread that dies
 * mid-play loses no play: every unanswered one goes to a fresh thread, and the play it was
 * running (a shared slot names it) answers an execution error on its second loss. A circle's
 * thread can be a pool (`threadsPerCircle`, default 1: the seed's one worker, plays of a circle
 * one after another); one thread runs ~4,000 plays/s of `40 + 2` here, the sandbox's own rate.
 *
 * Redis (`--redis-url`, redis-queue.ts): the server runs a Lua SUBMIT per turn's plays (the TaskRecord
 * hash `rhai_task:<id>` + LPUSH `rhai_tasks:<circle>`), workers claim (BLMOVE / LMOVE into
 * `rhai_processing:<circle>:<worker>`, status processing, attempts + 1) and complete (status
 * completed | error | timeout, output, error, the reply LPUSHed to `rhai_reply:<id>` and
 * PUBLISHed on the waiting server's channel `rhai_done:<dispatcher>`, which it subscribes to
 * once — no blocked connection per waiting play). ~1 round trip per play a side. Workers run in this
 * process (one thread per circle) and anywhere else with `stoa circles worker`; each has a
 * heartbeat key refreshed by its process, and any process serving the circle requeues a dead
 * worker's claimed plays once (a second loss: status error and a reply). Redis down: plays
 * answer at once with an execution error naming Redis and its URL (no offline queue; waiting
 * plays fail when the connection drops), and everything reconnects when it is back.
 *
 * Both: the sandbox stops a script at its time limit (interrupt) → "timeout"; every other
 * failure is "execution" with the sandbox's message (the output cap, the memory limit, the
 * script's error). A play that waited in the queue past its time limit does not run. The queue
 * keeps its own deadline (timeoutMs + DEADLINE_MARGIN_MS from the submission), so every play
 * settles even when a worker hangs or vanishes. `close(graceMs)`: new plays answer "server
 * stopping", plays in flight get `graceMs`, then answer "server stopping"; the threads stop.
 */
import type { Logger } from "../core/log.ts";
import { EmbeddedQueue } from "./embedded-queue.ts";
import type { TaskQueue } from "./queue.ts";
import { RedisTaskQueue } from "./redis-queue.ts";

/** Worker threads per circle that `serve --redis-url` runs itself. */
const REDIS_WORKERS_PER_SERVER_CIRCLE = 1;

/**
 * The queue for `serve`: Redis at `redisUrl` (with a worker per circle in this process), else embedded.
 * @example
 * const queue = await createTaskQueue({ circles: [pk], stateDir, log });
 */
export async function createTaskQueue(o: { circles: string[]; redisUrl?: string; stateDir: string; log: Logger; threadsPerCircle?: number }): Promise<TaskQueue> {
  if (o.redisUrl === undefined) return await EmbeddedQueue.start({ circles: o.circles, stateDir: o.stateDir, log: o.log, threadsPerCircle: o.threadsPerCircle });
  return await RedisTaskQueue.start({ url: o.redisUrl, circles: o.circles, log: o.log, workersHere: REDIS_WORKERS_PER_SERVER_CIRCLE });
}
