/**
 * The processes of the circles benchmark (scripts/bench/circles.ts) and where their CPU goes:
 * every server-side process is spawned through `taskset -c CPUS` when the pass pins them, waited
 * for until it says it is ready, and stopped by whoever started it (`Procs.stop`, in a finally,
 * last started first).
 * CPU time is read per thread from /proc/<pid>/task/<tid>/stat and grouped: a stoa process's
 * main thread (the server: WebSocket, JSON-RPC, auth, the queue's dispatch side), its Bun Worker
 * threads (comm "Worker": the circles' workers, the QuickJS sandbox) and the rest (JIT, GC).
 */
import { existsSync, readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { waitForPort } from "./client.ts";
import { readLines } from "./lines.ts";

/** How long a spawned process may take to say it is ready. */
const READY_TIMEOUT_MS = 15_000;
/** Clock ticks per second in /proc/<pid>/stat (USER_HZ; 100 on every Linux this runs on). */
const USER_HZ = 100;

type Child = ReturnType<typeof Bun.spawn>;

/** The processes one pass started, each stopped (SIGTERM, then awaited) by `stop`. */
export class Procs {
  #children: Child[] = [];
  #cpus: string | null;

  /** `cpus`: the CPU list server-side processes are pinned to (taskset -c), or null for none. */
  constructor(cpus: string | null) {
    this.#cpus = cpus;
  }

  /** Spawns `argv` (pinned if the pass pins) and resolves when a line of its stdout satisfies `ready`. */
  async start(argv: string[], ready: (line: string) => boolean, what: string): Promise<{ pid: number; line: string }> {
    const child = Bun.spawn(this.#cpus === null ? argv : ["taskset", "-c", this.#cpus, ...argv], { stdout: "pipe", stderr: "inherit", stdin: "ignore" });
    this.#children.push(child);
    const stdout = child.stdout as ReadableStream<Uint8Array>;
    const lines = readLines(stdout);
    const timeout = setTimeout(() => child.kill("SIGKILL"), READY_TIMEOUT_MS);
    try {
      // next(), not for-await: leaving a for-await would close the generator and the pipe with it.
      for (let next = await lines.next(); !next.done; next = await lines.next()) {
        if (ready(next.value)) {
          void drain(lines); // the rest of its stdout, so that a chatty child never blocks on a full pipe
          return { pid: child.pid, line: next.value };
        }
      }
    } finally {
      clearTimeout(timeout);
    }
    throw new Error(`${what} exited (${await child.exited}) before it was ready (within ${READY_TIMEOUT_MS} ms)`);
  }

  /** A redis-server of its own on a loopback port, no persistence, its files in `dir`. */
  async redis(port: number, dir: string): Promise<number> {
    const argv = ["/usr/bin/redis-server", "--port", String(port), "--bind", "127.0.0.1", "--dir", dir, "--save", "", "--appendonly", "no", "--loglevel", "warning"];
    const child = Bun.spawn(this.#cpus === null ? argv : ["taskset", "-c", this.#cpus, ...argv], { stdout: "ignore", stderr: "inherit", stdin: "ignore" });
    this.#children.push(child);
    await waitForPort("127.0.0.1", port, READY_TIMEOUT_MS);
    return child.pid;
  }

  /** `stoa circles serve` with `args`; ready when its --ready-file exists. */
  async serve(stoa: string, args: string[], stateDir: string): Promise<number> {
    const readyFile = join(stateDir, "ready.json");
    const argv = [stoa, "circles", "serve", ...args, "--state-dir", stateDir, "--ready-file", readyFile, "--log-level", "warn"];
    const child = Bun.spawn(this.#cpus === null ? argv : ["taskset", "-c", this.#cpus, ...argv], { stdout: "ignore", stderr: "inherit", stdin: "ignore" });
    this.#children.push(child);
    const deadline = Date.now() + READY_TIMEOUT_MS;
    while (!existsSync(readyFile)) {
      if (child.exitCode !== null) throw new Error(`stoa circles serve ${args.join(" ")} exited (${child.exitCode}) at start`);
      if (Date.now() > deadline) throw new Error(`stoa circles serve did not write ${readyFile} within ${READY_TIMEOUT_MS} ms`);
      await Bun.sleep(20);
    }
    return child.pid;
  }

  /** Stops the processes last started first: the users of redis-server before it. */
  async stop(): Promise<void> {
    for (const child of this.#children.toReversed()) {
      child.kill("SIGTERM");
      await child.exited;
    }
  }
}

async function drain(lines: AsyncGenerator<string>): Promise<void> {
  for await (const _ of lines);
}

/** CPU seconds so far of one process: in total, and for a stoa process by thread group. */
interface CpuSample {
  total: number;
  main: number;
  workers: number;
  other: number;
}

/** CPU seconds (user + system) of every thread of `pid` so far, grouped as the header says. */
export function cpuSample(pid: number): CpuSample {
  const sample: CpuSample = { total: 0, main: 0, workers: 0, other: 0 };
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    let stat: string;
    let comm: string;
    try {
      stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, "utf8");
      comm = readFileSync(`/proc/${pid}/task/${tid}/comm`, "utf8").trim();
    } catch {
      continue; // a thread that ended between the listing and the read
    }
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const seconds = (Number(fields[11]) + Number(fields[12])) / USER_HZ; // utime, stime
    sample.total += seconds;
    if (tid === String(pid)) sample.main += seconds;
    else if (comm === "Worker") sample.workers += seconds;
    else sample.other += seconds;
  }
  return sample;
}

/**
 * CPU seconds the whole machine has been busy, over all CPUs, from /proc/stat: user, nice,
 * system, irq, softirq and steal (time the hypervisor gave to another guest). Less what the
 * benchmark's own processes used, it is the load that was not the benchmark's.
 */
export function machineBusySeconds(): number {
  const fields = (readFileSync("/proc/stat", "utf8").split("\n")[0] ?? "").trim().split(/\s+/).slice(1).map(Number);
  const [user = 0, nice = 0, system = 0, , , irq = 0, softirq = 0, steal = 0] = fields;
  return (user + nice + system + irq + softirq + steal) / USER_HZ;
}
