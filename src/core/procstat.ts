/**
 * This process as the kernel counts it, for the `process_*` metrics (the names and meanings of
 * the official Prometheus clients' process collector). Read on demand, at each scrape; Linux
 * only (`/proc/self/stat`, proc(5)) — elsewhere a read throws and the metric renders NaN.
 */
import { readFileSync } from "node:fs";

/** USER_HZ: the unit of the clock fields of /proc/self/stat, 100 on every Linux ABI. */
const CLOCK_TICKS_PER_SECOND = 100;

/**
 * The fields of /proc/self/stat after the command name (which may hold spaces and parens, so
 * split after the last `)`): index 0 is field 3 (state) of proc(5).
 */
function statFields(): string[] {
  const text = readFileSync("/proc/self/stat", "latin1");
  return text.slice(text.lastIndexOf(")") + 2).trim().split(" ");
}

/** Field `n` (1-based, as numbered in proc(5)) of /proc/self/stat. */
function statField(n: number): number {
  const v = Number(statFields()[n - 3]);
  if (!Number.isFinite(v)) throw new Error(`/proc/self/stat field ${n} is not a number`);
  return v;
}

/** User + system CPU time of every thread, in seconds. */
export function cpuSeconds(): number {
  const { user, system } = process.cpuUsage();
  return (user + system) / 1e6;
}

/** Resident set size, in bytes. */
export function residentBytes(): number {
  return process.memoryUsage.rss();
}

/** Virtual memory size, in bytes (proc(5) field 23, vsize). */
export function virtualBytes(): number {
  return statField(23);
}

/** Threads in this process (field 20): Bun's own plus stoa's Workers. */
export function threads(): number {
  return statField(20);
}

let startTime: number | undefined;

/** When the process started, in seconds since the epoch: boot time + field 22 (starttime). */
export function startTimeSeconds(): number {
  if (startTime === undefined) {
    const btime = /^btime (\d+)$/m.exec(readFileSync("/proc/stat", "latin1"));
    if (btime === null) throw new Error("no btime in /proc/stat");
    startTime = Number(btime[1]) + statField(22) / CLOCK_TICKS_PER_SECOND;
  }
  return startTime;
}
