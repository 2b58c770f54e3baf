/**
 * The processes of the metaserver benchmark (scripts/bench/meta.ts): `stoa meta` (ready when
 * GET /v1/health answers 200), a private redis-server (no persistence, ready when it answers
 * PING; the way test/fixtures/redis.ts starts one), and the load processes (lib/meta-load.ts,
 * one JSON line per job each way). Everything started goes through one `Children`, which stops
 * it all: `stop()` in a finally (SIGTERM, SIGKILL after STOP_GRACE_MS, last started first) and
 * `killNow()` from an exit or signal handler (SIGKILL at once, synchronous).
 * CPU time of a process is utime + stime of /proc/<pid>/stat (all its threads, ended ones
 * included), the machine's from /proc/stat (`machineSeconds`); `pin` moves every thread of a
 * running process to a CPU list (`taskset -a -p -c`).
 */
import type { Subprocess } from "bun";
import { closeSync, openSync, readFileSync } from "node:fs";
import { join } from "node:path";
import type { Job, JobResult } from "./meta-load.ts";
import { readLines } from "./lines.ts";
import { redisAnswersPing } from "../../../src/core/redis.ts";

/** How long a process may take to be ready. */
const READY_TIMEOUT_MS = 15_000;
/** After SIGTERM, how long `stop` waits before SIGKILL. */
const STOP_GRACE_MS = 5_000;
/** USER_HZ: the unit of the clock fields of /proc/<pid>/stat, 100 on every Linux ABI. */
const CLOCK_TICKS_PER_SECOND = 100;
export const REDIS_SERVER = "/usr/bin/redis-server";

/** Every process one run started. */
export class Children {
  #all: Subprocess[] = [];

  spawn(argv: string[], io: { stdout?: "pipe" | "ignore"; stdin?: "pipe" | "ignore"; stderrFile?: string }): Subprocess<"pipe" | "ignore", "pipe" | "ignore", "inherit" | number> {
    const fd = io.stderrFile === undefined ? undefined : openSync(io.stderrFile, "a");
    try {
      const child = Bun.spawn(argv, { stdin: io.stdin ?? "ignore", stdout: io.stdout ?? "ignore", stderr: fd ?? "inherit" });
      this.#all.push(child);
      return child;
    } finally {
      if (fd !== undefined) closeSync(fd);
    }
  }

  /** SIGTERM to each, last started first, SIGKILL to any still there after STOP_GRACE_MS. */
  async stop(): Promise<void> {
    for (const child of this.#all.splice(0).toReversed()) {
      if (child.exitCode !== null || child.signalCode !== null) continue;
      child.kill("SIGTERM");
      const killer = setTimeout(() => child.kill("SIGKILL"), STOP_GRACE_MS);
      await child.exited;
      clearTimeout(killer);
    }
  }

  /** SIGKILL to every child still running, now (for exit and signal handlers). */
  killNow(): void {
    for (const child of this.#all.splice(0)) if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  }
}

/** CPU seconds (user + system, every thread) `pid` has used so far; NaN once it is gone. */
export function processCpuSeconds(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "latin1");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS_PER_SECOND; // fields 14, 15: utime, stime
  } catch {
    return Number.NaN;
  }
}

/**
 * CPU seconds the whole machine has been busy so far, over all CPUs, from /proc/stat's first
 * line: in processes (user, nice, system), in interrupts (irq, softirq — loopback TCP delivers
 * most packets in softirq, which this kernel does not charge to any process) and stolen by the
 * hypervisor for other guests (steal).
 */
export function machineSeconds(): { processes: number; softirq: number; steal: number } {
  const fields = (readFileSync("/proc/stat", "latin1").split("\n")[0] ?? "").trim().split(/\s+/).slice(1).map(Number);
  const [user = 0, nice = 0, system = 0, , , irq = 0, softirq = 0, steal = 0] = fields;
  return { processes: (user + nice + system) / CLOCK_TICKS_PER_SECOND, softirq: (irq + softirq) / CLOCK_TICKS_PER_SECOND, steal: steal / CLOCK_TICKS_PER_SECOND };
}

/** Pins every thread of `pid` to `cpus` (a taskset list, e.g. "0" or "1"); throws when taskset fails. */
export function pin(pid: number, cpus: string): void {
  const r = Bun.spawnSync(["taskset", "-a", "-p", "-c", cpus, String(pid)], { stdout: "ignore", stderr: "pipe" });
  if (r.exitCode !== 0) throw new Error(`taskset -a -p -c ${cpus} ${pid} failed: ${r.stderr.toString().trim() || `exit ${r.exitCode}`}`);
}

/** The last lines of a log file, for an error message. */
function tail(file: string, lines = 5): string {
  try {
    return readFileSync(file, "utf8").trim().split("\n").slice(-lines).join(" | ");
  } catch {
    return "(no output)";
  }
}

/**
 * `stoa meta --listen 127.0.0.1:<port> --no-auth --store <store>` with its stderr (the log, at
 * the default level) in `<dir>/meta-<port>.log`; resolves with its pid once /v1/health answers
 * 200, rejects with the log's last lines when it exits first or is not ready in time.
 */
export async function startMeta(children: Children, stoa: string, port: number, store: string, dir: string): Promise<number> {
  const log = join(dir, `meta-${port}.log`);
  const child = children.spawn([stoa, "meta", "--listen", `127.0.0.1:${port}`, "--no-auth", "--store", store, "--state-dir", dir], { stderrFile: log });
  const deadline = Date.now() + READY_TIMEOUT_MS;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`stoa meta --store ${store} exited (${child.exitCode}) at start: ${tail(log)}`);
    const status = await fetch(`http://127.0.0.1:${port}/v1/health`).then(
      (r) => r.status,
      () => 0,
    );
    if (status === 200) return child.pid;
    if (Date.now() > deadline) throw new Error(`stoa meta --store ${store} did not answer GET /v1/health with 200 within ${READY_TIMEOUT_MS} ms: ${tail(log)}`);
    await Bun.sleep(50);
  }
}


/** A private redis-server on 127.0.0.1:<port>, no persistence, its files in `dir`; resolves with its pid once it answers PING. */
export async function startRedis(children: Children, port: number, dir: string): Promise<number> {
  const log = join(dir, "redis.log");
  const argv = [REDIS_SERVER, "--port", String(port), "--bind", "127.0.0.1", "--dir", dir, "--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", "", "--loglevel", "warning"];
  const child = children.spawn(argv, { stdout: "ignore", stderrFile: log });
  const deadline = Date.now() + READY_TIMEOUT_MS;
  while (!(await redisAnswersPing(port))) {
    if (child.exitCode !== null) throw new Error(`redis-server exited (${child.exitCode}) before answering PING on port ${port}: ${tail(log)}`);
    if (Date.now() > deadline) throw new Error(`redis-server did not answer PING on port ${port} within ${READY_TIMEOUT_MS} ms`);
    await Bun.sleep(20);
  }
  return child.pid;
}

/** A load process (lib/meta-load.ts): `run` sends one job and resolves with its result. */
export interface Loader {
  pid: number;
  run(job: Job): Promise<JobResult>;
}

/** Starts a load process and waits for its "ready" line. */
export async function startLoader(children: Children): Promise<Loader> {
  const child = children.spawn([process.execPath, join(import.meta.dir, "meta-load.ts")], { stdin: "pipe", stdout: "pipe" });
  const lines = readLines(child.stdout as ReadableStream<Uint8Array>);
  const first = await lines.next();
  if (first.done || first.value !== "ready") throw new Error(`the load process did not start (${first.done ? `exited ${await child.exited}` : `said ${first.value}`})`);
  const stdin = child.stdin as import("bun").FileSink;
  let queue = Promise.resolve();
  return {
    pid: child.pid,
    run(job) {
      const result = queue.then(async () => {
        stdin.write(`${JSON.stringify(job)}\n`);
        await stdin.flush();
        const line = await lines.next();
        if (line.done) throw new Error(`the load process exited (${await child.exited}) during a ${job.workload} job`);
        const answer = JSON.parse(line.value) as JobResult | { error: string };
        if ("error" in answer) throw new Error(`load process, ${job.workload}: ${answer.error}`);
        return answer;
      });
      queue = result.then(
        () => {},
        () => {},
      );
      return result;
    },
  };
}
