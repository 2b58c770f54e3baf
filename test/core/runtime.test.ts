/**
 * core/runtime.ts: the runtime's background threads follow the event loop's load (SCHED_IDLE
 * while latency-bound, SCHED_OTHER while throughput-bound), in this process and in a daemon, and
 * the start-up collection runs once.
 */
import { expect, test } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  BACKGROUND_THREADS,
  BUSY_SHARE,
  PURGE_DELAY_VARIABLE,
  SCHED_IDLE,
  SCHED_OTHER,
  adaptRuntimeThreads,
  execWithServiceAllocator,
  policyFor,
  setBackgroundPolicy,
  threadPolicy,
  threadSchedstat,
} from "../../src/core/runtime.ts";
import { eventually } from "../helpers/eventually.ts";
import { STOA } from "../helpers/stoa.ts";

const linux = process.platform === "linux";

/** Thread ids and names of process `pid`. */
function threads(pid: number | "self"): { tid: number; comm: string }[] {
  return readdirSync(`/proc/${pid}/task`).flatMap((t) => {
    try {
      return [{ tid: Number(t), comm: readFileSync(`/proc/${pid}/task/${t}/comm`, "latin1").trimEnd() }];
    } catch {
      return [];
    }
  });
}

/** The `policy` line of /proc/PID/task/TID/sched. */
function policyOf(pid: number, tid: number): number {
  const line = readFileSync(`/proc/${pid}/task/${tid}/sched`, "latin1").split("\n").find((l) => l.startsWith("policy"));
  return Number(line?.split(":")[1]?.trim());
}

test("latency-bound (runnable under half the interval) → SCHED_IDLE; throughput-bound → SCHED_OTHER", () => {
  const ms = 1_000_000;
  // A one-in-flight relay daemon pinned with three other processes (measured): 53 ms run, 21 ms waited of 250.
  expect(policyFor(250 * ms, 53 * ms, 21 * ms)).toBe(SCHED_IDLE);
  // The same daemon moving a tunnel's bulk: 40 ms run, 128 ms waited for the CPU of 250.
  expect(policyFor(250 * ms, 40 * ms, 128 * ms)).toBe(SCHED_OTHER);
  // Alone on its CPU and busy: no waiting, but running most of the time.
  expect(policyFor(250 * ms, 240 * ms, 0)).toBe(SCHED_OTHER);
  // Idle.
  expect(policyFor(250 * ms, 0.5 * ms, 2 * ms)).toBe(SCHED_IDLE);
  expect(policyFor(100, (BUSY_SHARE * 100) / 2, (BUSY_SHARE * 100) / 2)).toBe(SCHED_IDLE);
  expect(policyFor(100, (BUSY_SHARE * 100) / 2, (BUSY_SHARE * 100) / 2 + 1)).toBe(SCHED_OTHER);
});

test.if(linux)("a thread's scheduler statistics advance while it runs", () => {
  const a = threadSchedstat(process.pid);
  let x = 0;
  for (let i = 0; i < 2e6; i++) x += Math.sqrt(i);
  const b = threadSchedstat(process.pid);
  expect(x).toBeGreaterThan(0);
  expect(a).not.toBeNull();
  expect(b!.runNs).toBeGreaterThan(a!.runNs);
});

test.if(linux)("this process's compiler threads go to SCHED_IDLE and back; other threads keep their policy", async () => {
  // Something hot enough for the optimising compilers, so that a JITWorker exists.
  const hot = (n: number) => {
    let s = 0;
    for (let i = 0; i < n; i++) s += (i * 31) % 7;
    return s;
  };
  let sum = 0;
  for (let i = 0; i < 20_000; i++) sum += hot(200);
  expect(sum).toBeGreaterThan(0);
  await eventually("a JITWorker thread", () => threads("self").some((t) => t.comm === "JITWorker"));
  const mainBefore = threadPolicy(process.pid);
  try {
    expect(setBackgroundPolicy(SCHED_IDLE).error).toBeUndefined();
    const background = threads("self").filter((t) => BACKGROUND_THREADS.has(t.comm));
    expect(background.length).toBeGreaterThan(0);
    for (const t of background) expect(threadPolicy(t.tid)).toBe(SCHED_IDLE);
    for (const t of threads("self").filter((t) => !BACKGROUND_THREADS.has(t.comm))) expect(threadPolicy(t.tid)).toBe(SCHED_OTHER);
    expect(threadPolicy(process.pid)).toBe(mainBefore);
    // Asking again changes nothing.
    expect(setBackgroundPolicy(SCHED_IDLE).changed).toBe(0);
  } finally {
    expect(setBackgroundPolicy(SCHED_OTHER).error).toBeUndefined();
  }
  for (const t of threads("self").filter((t) => BACKGROUND_THREADS.has(t.comm))) expect(threadPolicy(t.tid)).toBe(SCHED_OTHER);
});

if (linux && !existsSync(STOA)) console.log(`runtime.test.ts: the daemon cases need ${STOA} (bun run build); skipped`);

/** A gateway's argv on three free loopback ports, with its ready file, in a fresh directory. */
function gateway(logLevel: string): { dir: string; ready: string; argv: string[] } {
  const dir = mkdtempSync(join(tmpdir(), "stoa-runtime-"));
  const ready = join(dir, "ready");
  const ports = [0, 0, 0].map(() => {
    const l = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
    const port = l.port;
    l.stop(true);
    return port;
  });
  return { dir, ready, argv: [STOA, "gateway", "--run-dir", join(dir, "run"), "--ports", ports.join(","), "--ready-file", ready, "--log-level", logLevel] };
}

/** Whether process `pid` has background threads and all of them are under SCHED_IDLE. */
function backgroundIdle(pid: number): boolean {
  const bg = threads(pid).filter((t) => BACKGROUND_THREADS.has(t.comm));
  return bg.length > 0 && bg.every((t) => policyOf(pid, t.tid) === SCHED_IDLE);
}

test.if(linux && existsSync(STOA))("an idle daemon's compiler and purge threads are SCHED_IDLE, its event loop SCHED_OTHER", async () => {
  const { dir, ready, argv } = gateway("warn");
  const proc = Bun.spawn(argv, {
    stdout: "ignore",
    stderr: "pipe",
    stdin: "ignore",
  });
  try {
    await eventually("the gateway's ready file", () => existsSync(ready));
    await eventually("background threads under SCHED_IDLE", () => backgroundIdle(proc.pid));
    expect(policyOf(proc.pid, proc.pid)).toBe(SCHED_OTHER);
    for (const t of threads(proc.pid).filter((t) => t.comm === "HeapHelper")) expect(policyOf(proc.pid, t.tid)).toBe(SCHED_OTHER);
  } finally {
    proc.kill("SIGTERM");
    await proc.exited;
    rmSync(dir, { recursive: true, force: true });
  }
});

const asRoot = linux && process.getuid?.() === 0 && Bun.which("unshare") !== null;
if (linux && !asRoot) console.log("runtime.test.ts: the PID-namespace case needs root and unshare(1); skipped");

test.if(asRoot && existsSync(STOA))("in a PID namespace of its own under the host's /proc, a daemon still finds and sets its threads (NSpid)", async () => {
  const { dir, ready, argv } = gateway("debug");
  // --fork without --mount-proc: the gateway is pid 1 of its namespace, /proc still the host's.
  let child = 0;
  const proc = Bun.spawn(["unshare", "--pid", "--fork", "--kill-child", ...argv], {
    stdout: "ignore",
    stderr: "pipe",
    stdin: "ignore",
  });
  try {
    await eventually("the gateway's ready file", () => existsSync(ready));
    child = Number(readFileSync(`/proc/${proc.pid}/task/${proc.pid}/children`, "latin1").trim().split(" ")[0]);
    expect(child).toBeGreaterThan(1);
    await eventually("background threads under SCHED_IDLE", () => backgroundIdle(child));
  } finally {
    // unshare waits for its child: the gateway is stopped, and unshare exits with it.
    if (child > 1) process.kill(child, "SIGTERM");
    else proc.kill("SIGKILL");
    await proc.exited;
    rmSync(dir, { recursive: true, force: true });
  }
  const stderr = await new Response(proc.stderr).text();
  expect(stderr).not.toContain("could not set the scheduling policy");
});

test.if(linux)("a saturated Worker's event loop puts the compiler threads back to SCHED_OTHER, and idle ones to SCHED_IDLE again", async () => {
  adaptRuntimeThreads();
  const background = () => threads("self").filter((t) => BACKGROUND_THREADS.has(t.comm));
  const all = (policy: number) => background().length > 0 && background().every((t) => threadPolicy(t.tid) === policy);
  await eventually("background threads under SCHED_IDLE while nothing is busy", () => all(SCHED_IDLE));
  // The main thread stays idle (it only awaits); a Worker spins: the busiest thread decides.
  const worker = new Worker(URL.createObjectURL(new Blob(["const end = Date.now() + 20000; let x = 0; while (Date.now() < end) x++; postMessage(x);"], { type: "text/javascript" })));
  try {
    await eventually("background threads under SCHED_OTHER while a Worker is busy", () => all(SCHED_OTHER), { timeoutMs: 5000 });
  } finally {
    worker.terminate();
  }
  await eventually("background threads under SCHED_IDLE once it ended", () => all(SCHED_IDLE), { timeoutMs: 5000 });
});

test("execWithServiceAllocator does nothing, and returns null, when the purge delay is set already (the exec before, or the user)", () => {
  const before = process.env[PURGE_DELAY_VARIABLE];
  process.env[PURGE_DELAY_VARIABLE] = "10";
  try {
    expect(execWithServiceAllocator()).toBeNull(); // still this process: it would not have returned after an exec
  } finally {
    if (before === undefined) delete process.env[PURGE_DELAY_VARIABLE];
    else process.env[PURGE_DELAY_VARIABLE] = before;
  }
});
