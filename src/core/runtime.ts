/**
 * The runtime's own work kept out of the data path's way.
 *
 * Background threads. A Bun process runs, beside its event loop, JavaScriptCore's compiler
 * threads (`JITWorker`, optimising hot functions), a memory purge thread (`mi-scavenger`) and
 * `JSCWarmUp`. On a CPU the event loop shares with them — a pinned daemon, a busy machine — a
 * woken event loop waits behind whichever of them holds the CPU for the rest of its time slice.
 * In the hotlink benchmark (every process pinned to one CPU, one message in flight) one frame in
 * fifty waited 0.3–3 ms behind a compiler or purge thread of the relay server, a daemon or the
 * probe itself (`perf sched timehist`).
 *
 * While the event loop is latency-bound — it sleeps most of the time, and runs soon after it is
 * woken — those threads run under `SCHED_IDLE` (sched(7)): when nothing else wants the CPU, and
 * preempted by an event loop that wakes. Not never in its way: the kernel (EEVDF) still gives one
 * a time slice now and then when the runnable event loop has had more than its share, so the
 * stalls become fewer, not none (the benchmark's P99 went from 6–8× the bare chain's to ~2×, with
 * the start-up collection below). A throughput-bound event loop (runnable — running, or
 * waiting for a CPU — for most of the time) needs its hot paths compiled more than it needs its
 * wake-ups served at once, and an idle-policy compiler on a saturated CPU is all but starved
 * (measured: a pinned relay tunnel 13 % slower), so there they are `SCHED_OTHER` again. The
 * choice is made every `SAMPLE_MS` from the scheduler statistics of the busiest other thread —
 * the main thread, or a Worker's event loop such as the gateway's routers and splice engine
 * (/proc/self/task/TID/schedstat: time run and time waited on a run queue; a one-in-flight relay
 * daemon pinned with three other processes is runnable 30 % of the time, the same daemon moving
 * a tunnel's bulk ~100 %). The collector's helper threads are left alone: the event loop waits
 * for them at the end of a collection.
 *
 * The threads start lazily (the first compilation starts a `JITWorker`) and JSC ends one that sat
 * idle and starts another later; each sample also reads /proc/self/task, and the name of a thread
 * not seen before. Linux only; elsewhere, or without /proc, nothing happens.
 *
 * Start-up garbage: `collectStartupGarbage` — one full collection once a service is up.
 *
 * The allocator: `execWithServiceAllocator` — a daemon that moves bulk bytes (the hotlink relay
 * server and client daemon) runs with mimalloc keeping freed memory for `SERVICE_PURGE_DELAY_MS`
 * before giving it back to the kernel (see there).
 */
import { readFileSync, readdirSync } from "node:fs";
import { ptr } from "bun:ffi";
import { errno, libc, strerror } from "../ffi/libc.ts";
import { describeError } from "./errors.ts";

/** The runtime threads whose policy follows the event loop's load, by the name they give themselves (/proc/self/task/TID/comm). */
export const BACKGROUND_THREADS: ReadonlySet<string> = new Set(["JITWorker", "mi-scavenger", "JSCWarmUp"]);
/** How often the load is sampled and the thread list read again. */
export const SAMPLE_MS = 250;
/** Throughput-bound: the busiest thread (not a background one) was runnable — running, or waiting on a run queue — for more than this share of the interval. */
export const BUSY_SHARE = 0.5;
/** sched.h */
export const SCHED_OTHER = 0;
export const SCHED_IDLE = 5;

type Policy = typeof SCHED_OTHER | typeof SCHED_IDLE;

/** Background threads by their id in /proc: their id in this process's own PID namespace and the policy last set. */
const background = new Map<number, { ownTid: number; policy: Policy | null }>();
/** Every other thread seen (the load is read from them; their names are not read again). */
const others = new Set<number>();
let timer: ReturnType<typeof setInterval> | null = null;

/** Thread `tid`'s scheduler statistics (proc(5) schedstat): ns run, ns waited on a run queue; null once it ended. */
export function threadSchedstat(tid: number): { runNs: number; waitNs: number } | null {
  try {
    const [run, wait] = readFileSync(`/proc/self/task/${tid}/schedstat`, "latin1").split(" ");
    const runNs = Number(run);
    const waitNs = Number(wait);
    return Number.isFinite(runNs) && Number.isFinite(waitNs) ? { runNs, waitNs } : null;
  } catch {
    return null;
  }
}

/**
 * A thread's name and its id as sched_setscheduler(2) takes it: in the caller's PID namespace,
 * which is not /proc's when a process runs in a PID namespace of its own under the host's /proc
 * (the last field of `NSpid`, proc(5)). Null once the thread ended.
 */
function threadIdentity(procTid: string): { comm: string; ownTid: number } | null {
  let status: string;
  try {
    status = readFileSync(`/proc/self/task/${procTid}/status`, "latin1");
  } catch {
    return null;
  }
  const field = (name: string) => status.match(new RegExp(`^${name}:\\t(.*)$`, "m"))?.[1] ?? "";
  const nspid = field("NSpid").trim().split(/\s+/);
  const ownTid = Number(nspid[nspid.length - 1]);
  return { comm: field("Name"), ownTid: Number.isInteger(ownTid) && ownTid > 0 ? ownTid : Number(procTid) };
}

/** The policy the background threads get for an interval of `intervalNs` in which the busiest other thread ran `runNs` and waited `waitNs`. */
export function policyFor(intervalNs: number, runNs: number, waitNs: number): Policy {
  return runNs + waitNs > BUSY_SHARE * intervalNs ? SCHED_OTHER : SCHED_IDLE;
}

/** What one pass over this process's threads did. */
export interface ThreadPass {
  /** Background threads whose policy this pass set. */
  changed: number;
  /** The first failure, if any (e.g. a seccomp filter refusing sched_setscheduler). */
  error?: string;
}

/**
 * Gives every background runtime thread `policy`: those new since the last pass, and the others
 * when the policy differs from the one they have. A thread that ended meanwhile is forgotten.
 */
export function setBackgroundPolicy(policy: Policy): ThreadPass {
  const pass: ThreadPass = { changed: 0 };
  let tids: string[];
  try {
    tids = readdirSync("/proc/self/task");
  } catch {
    return pass;
  }
  const alive = new Set<number>();
  const param = new Int32Array(1); // struct sched_param { int sched_priority; }: 0 for both policies
  for (const name of tids) {
    const tid = Number(name);
    if (!Number.isInteger(tid)) continue;
    alive.add(tid);
    if (others.has(tid)) continue;
    let thread = background.get(tid);
    if (thread === undefined) {
      const identity = threadIdentity(name);
      if (identity === null) continue; // it ended meanwhile
      if (!BACKGROUND_THREADS.has(identity.comm)) {
        others.add(tid);
        continue;
      }
      thread = { ownTid: identity.ownTid, policy: null };
      background.set(tid, thread);
    }
    if (thread.policy === policy) continue;
    thread.policy = policy; // also after a failure: not tried again every sample
    if (libc().sched_setscheduler(thread.ownTid, policy, param) === 0) pass.changed++;
    else pass.error ??= `sched_setscheduler(${thread.ownTid}, ${policy === SCHED_IDLE ? "SCHED_IDLE" : "SCHED_OTHER"}): ${strerror(errno())}`;
  }
  for (const tid of background.keys()) if (!alive.has(tid)) background.delete(tid);
  for (const tid of others) if (!alive.has(tid)) others.delete(tid);
  return pass;
}

/**
 * Background threads at SCHED_IDLE while every event loop of the process is latency-bound,
 * SCHED_OTHER while one is throughput-bound (see the module header), sampled every `SAMPLE_MS`
 * for the life of the process (an unref'd timer). `onError` hears the first failure, once. Every
 * long-running command does this (`cli/common.ts startService`).
 */
export function adaptRuntimeThreads(onError: (error: string) => void = () => {}): void {
  if (timer !== null || process.platform !== "linux") return;
  let told = false;
  const apply = (policy: Policy) => {
    const { error } = setBackgroundPolicy(policy);
    if (error !== undefined && !told) {
      told = true;
      onError(error);
    }
  };
  apply(SCHED_IDLE);
  // Every thread but the background ones — the main thread, Workers' event loops (the gateway's
  // routers, the splice engine), the collector's helpers — each against its previous sample.
  const last = new Map<number, { runNs: number; waitNs: number }>();
  let lastAt = Bun.nanoseconds();
  timer = setInterval(() => {
    const at = Bun.nanoseconds();
    let busiest = { runNs: 0, waitNs: 0 };
    for (const tid of others) {
      const now = threadSchedstat(tid);
      if (now === null) continue;
      const before = last.get(tid);
      last.set(tid, now);
      if (before === undefined) continue;
      const d = { runNs: now.runNs - before.runNs, waitNs: now.waitNs - before.waitNs };
      if (d.runNs + d.waitNs > busiest.runNs + busiest.waitNs) busiest = d;
    }
    for (const tid of last.keys()) if (!others.has(tid)) last.delete(tid);
    apply(policyFor(at - lastAt, busiest.runNs, busiest.waitNs));
    lastAt = at;
  }, SAMPLE_MS);
  timer.unref();
}

/** The scheduling policy of thread `tid` (sched.h numbers), for tests. */
export function threadPolicy(tid: number): number {
  return libc().sched_getscheduler(tid);
}

let collected = false;

/**
 * One full collection, once, when a service has started and before it says so. What start-up
 * built and dropped (module initialisation, schemas, parsed configuration, certificates) has been
 * promoted to the old generation by then, and the first full collection the traffic triggers
 * would mark it — on the event loop, in increments of about a millisecond every few messages.
 * Costs a few ms at start (5 ms for the gateway here).
 */
export function collectStartupGarbage(): void {
  if (collected) return;
  collected = true;
  Bun.gc(true);
}

/**
 * The environment variable mimalloc, Bun's allocator, reads its purge delay from: how long memory
 * freed stays with the process before it is handed back to the kernel (mimalloc's default: 10 ms).
 */
export const PURGE_DELAY_VARIABLE = "MIMALLOC_PURGE_DELAY";

/**
 * The purge delay of a daemon that moves bulk bytes (src/main.ts `movesBytes`). A process
 * moving bytes through Bun sockets gets a fresh buffer per read, freed at the next collection;
 * with mimalloc's 10 ms those pages have gone back to the kernel by the time the next reads are
 * allocated, and each is a page fault again (zeroed, in a VM a trap to the hypervisor). Measured
 * on a pinned relay tunnel (the scripts/bench/hotlink.ts shape, 6 interleaved runs each): the
 * relay server and both daemons took 40–70k page faults per GiB each with the default (the bare
 * Bun chain's hops ~18k), 13–26k with 10 s; their CPU per GiB went from a median 3.53 s to
 * 3.25 s, the tunnel from 242 to 258 MB/s. Memory a burst left still goes back once unused
 * this long.
 */
export const SERVICE_PURGE_DELAY_MS = 10_000;

/**
 * Re-executes this process (same PID, arguments, descriptors, limits, CPU affinity) with
 * `PURGE_DELAY_VARIABLE` set to `SERVICE_PURGE_DELAY_MS`: mimalloc reads it once, when a process
 * starts, so a process cannot set it for itself. Call it before the command does anything
 * (src/cli/run.ts, for the commands marked `movesBytes`). Does nothing when the variable is set
 * already (by the exec before, or by the user: their value stands — 10 is mimalloc's default),
 * returning null; otherwise returns only if the exec failed, with why (the command then runs as
 * it is).
 */
export function execWithServiceAllocator(): string | null {
  if (process.env[PURGE_DELAY_VARIABLE] !== undefined || process.platform !== "linux") return null;
  let argv: Buffer;
  let envp: Buffer;
  try {
    // The kernel's copies, byte for byte: no decoding of arguments or variables.
    argv = readFileSync("/proc/self/cmdline");
    envp = Buffer.concat([readFileSync("/proc/self/environ"), Buffer.from(`${PURGE_DELAY_VARIABLE}=${SERVICE_PURGE_DELAY_MS}\0`)]);
  } catch (err) {
    return `cannot read /proc/self: ${describeError(err)}`;
  }
  const path = Buffer.from("/proc/self/exe\0");
  const argvTable = pointerTable(argv);
  const envpTable = pointerTable(envp);
  if (argvTable.length < 2) return "an empty /proc/self/cmdline";
  libc().execve(path, argvTable, envpTable);
  const failure = strerror(errno());
  // Referenced until here: the tables point into them.
  void [argv, envp, path];
  return `execve /proc/self/exe: ${failure}`;
}

/** A NULL-terminated `char *[]` of the NUL-terminated strings in `block` (which must outlive its use). */
function pointerTable(block: Buffer): BigUint64Array {
  const base = BigInt(ptr(block));
  const starts: number[] = [];
  for (let at = 0; at < block.byteLength; ) {
    const end = block.indexOf(0, at);
    if (end < 0) break; // an unterminated tail (not from the kernel): left out
    starts.push(at);
    at = end + 1;
  }
  const table = new BigUint64Array(starts.length + 1);
  starts.forEach((at, i) => (table[i] = base + BigInt(at)));
  return table;
}
