#!/usr/bin/env bun
/**
 * BullMQ, what users would pick instead of circles' queue, in the circles benchmark
 * (scripts/bench/circles.ts), on Bun's own Redis client wrapped with createBunRedisClient
 * (BullMQ 6 drives it directly; ioredis is not installed). Run as a process it is the one
 * Worker, concurrency 1, whose processor returns "42" at once; it prints `ready` once connected
 * and stops on SIGTERM:
 *
 *   bun scripts/bench/lib/circles-bullmq.ts redis://127.0.0.1:PORT QUEUE
 *
 * Imported, `openProducers` gives the other side: producers that each add a job and await its
 * completion through QueueEvents, one job in flight per producer. Not job.waitUntilFinished:
 * its promise executor polls Redis once more per job (isFinished) and throws unhandled when the
 * connection closes under that poll at the end of a run; a waiter registered by job id before the
 * add is the same QueueEvents mechanism, one round trip cheaper — a baseline no weaker.
 * Completed jobs are trimmed to the last COMPLETED_KEPT, failed ones removed; QueueEvents reads
 * from the moment `openProducers` was called (lastEventId), so no completion is missed.
 */
import { RedisClient } from "bun";
import { Queue, QueueEvents, Worker, createBunRedisClient } from "bullmq";
import { type Load, closedLoop } from "./circles-load.ts";

const COMPLETED_KEPT = 1000;
/**
 * The events stream's length (BullMQ's default 10,000 is about a second of this load, ~5 events a
 * job): a reader that falls behind that far would miss completions, and its producers would stall.
 */
const EVENTS_KEPT = 200_000;

/** `count` producers on one Queue and one QueueEvents (what a web server in front of BullMQ has). */
export async function openProducers(redisUrl: string, queueName: string, count: number): Promise<Load> {
  // A connection passed in is the caller's: BullMQ's close() leaves it open, `close` below ends it.
  const raw = new RedisClient(redisUrl);
  // QueueEvents starts at '$' when its first XREAD reaches Redis, which may be after the first
  // jobs completed (waitUntilFinished polls once to cover that): start at Redis's own clock instead.
  const [unixSeconds, micros] = (await raw.send("TIME", [])) as [string, string];
  const lastEventId = `${Number(unixSeconds) * 1000 + Math.floor(Number(micros) / 1000) - 1}-0`;
  const connections = [createBunRedisClient(raw), createBunRedisClient(new RedisClient(redisUrl))] as const;
  const queue = new Queue(queueName, { connection: connections[0], streams: { events: { maxLen: EVENTS_KEPT } } });
  const events = new QueueEvents(queueName, { connection: connections[1], lastEventId });
  const waiters = new Map<string, { resolve: (output: unknown) => void; reject: (err: Error) => void }>();
  const settle = (jobId: string) => {
    const waiter = waiters.get(jobId);
    waiters.delete(jobId);
    return waiter;
  };
  events.on("completed", ({ jobId, returnvalue }) => settle(jobId)?.resolve(returnvalue));
  events.on("failed", ({ jobId, failedReason }) => settle(jobId)?.reject(new Error(`BullMQ job ${jobId} failed: ${failedReason}`)));
  await Promise.all([queue.waitUntilReady(), events.waitUntilReady()]);
  // Job ids of this set of producers: not integers (BullMQ's rule for custom ids), unique per open.
  const tag = `bench-${Date.now().toString(36)}-`;
  let seq = 0;
  return {
    run: (seconds) =>
      closedLoop(count, seconds, async () => {
        const jobId = `${tag}${seq++}`;
        const done = new Promise<unknown>((resolve, reject) => waiters.set(jobId, { resolve, reject }));
        await queue.add("play", { script: "40 + 2" }, { jobId, removeOnComplete: { count: COMPLETED_KEPT }, removeOnFail: true });
        const output = await done;
        if (output !== "42") throw new Error(`a BullMQ job returned ${JSON.stringify(output)}, not "42"`);
      }),
    close: async () => {
      await events.close();
      await queue.close();
      await Promise.all(connections.map((c) => c.quit()));
    },
  };
}

if (import.meta.main) {
  const [redisUrl, queueName] = process.argv.slice(2);
  if (!redisUrl || !queueName) throw new Error("usage: circles-bullmq.ts REDIS_URL QUEUE");
  const worker = new Worker(queueName, async () => "42", { connection: createBunRedisClient(new RedisClient(redisUrl)), concurrency: 1 });
  worker.on("error", (err) => {
    // One line and out: BullMQ retries a lost connection forever, a benchmark must not.
    console.error(`bullmq worker: ${err.message}`);
    process.exit(1);
  });
  await worker.waitUntilReady();
  process.on("SIGTERM", () => {
    void worker.close().then(() => process.exit(0));
  });
  console.log("ready");
}
