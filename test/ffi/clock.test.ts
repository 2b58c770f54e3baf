/**
 * monotonicMicros (ffi/libc.ts) is CLOCK_MONOTONIC — the clock systemd reads MONOTONIC_USEC
 * against (core/daemon.ts's RELOADING=1) — shared by every process, unlike Bun's process.hrtime,
 * which counts from the process's start: a child's reading falls between two of the parent's,
 * and the clock agrees with /proc/uptime (CLOCK_BOOTTIME: the same as CLOCK_MONOTONIC on a machine
 * that never suspended, as test machines do not).
 */
import { expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { monotonicMicros } from "../../src/ffi/libc.ts";

test("CLOCK_MONOTONIC in µs: a child process reads the same clock; it matches /proc/uptime", () => {
  const before = monotonicMicros();
  const child = Bun.spawnSync([process.execPath, "-e", `import { monotonicMicros } from ${JSON.stringify(join(import.meta.dir, "../../src/ffi/libc.ts"))}; console.log(String(monotonicMicros()))`]);
  const after = monotonicMicros();
  expect(child.exitCode).toBe(0);
  const theirs = BigInt(child.stdout.toString().trim());
  expect(theirs).toBeGreaterThanOrEqual(before);
  expect(theirs).toBeLessThanOrEqual(after);
  const uptimeUs = Number(readFileSync("/proc/uptime", "utf8").split(" ")[0]) * 1e6;
  expect(Math.abs(Number(monotonicMicros()) - uptimeUs)).toBeLessThan(1e6);
});
