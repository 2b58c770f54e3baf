#!/usr/bin/env bun
/**
 * Start-up time of `stoa version`, the figure the foundation issue sets a goal for (median
 * ≤ 40 ms, aim 25), side by side with the build variants it chose between and with a compiled
 * hello world (the floor: what any `bun build --compile` binary costs to start).
 *
 *   bun scripts/bench/startup.ts [--runs 60]
 */
import { $ } from "bun";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";

const { values } = parseArgs({ options: { runs: { type: "string", default: "60" } } });
const runs = Number(values.runs);
const root = join(import.meta.dir, "..", "..");
const tmp = mkdtempSync(join(tmpdir(), "stoa-bench-startup-"));

function measure(argv: string[]): { median: number; p90: number; min: number } {
  const times: number[] = [];
  for (let i = 0; i < runs + 3; i++) {
    const t0 = Bun.nanoseconds();
    const proc = Bun.spawnSync(argv, { stdin: "ignore", stdout: "ignore", stderr: "ignore" });
    const ms = (Bun.nanoseconds() - t0) / 1e6;
    if (proc.exitCode !== 0) throw new Error(`${argv.join(" ")} exited ${proc.exitCode}`);
    if (i >= 3) times.push(ms); // the first runs warm the page cache
  }
  times.sort((a, b) => a - b);
  const at = (p: number) => times[Math.floor((times.length - 1) * p)] ?? NaN;
  return { median: at(0.5), p90: at(0.9), min: at(0) };
}

try {
  const hello = join(tmp, "hello.ts");
  writeFileSync(hello, 'console.log("hello");\n');
  const variants: [string, string[]][] = [
    ["hello world (floor)", []],
    ["stoa, plain --compile", []],
    ["stoa, --minify", ["--minify"]],
    ["stoa, --minify --bytecode", ["--minify", "--bytecode"]],
  ];
  const rows: [string, ReturnType<typeof measure>][] = [];
  for (const [i, [label, flags]] of variants.entries()) {
    const out = join(tmp, `v${i}`);
    const entry = i === 0 ? hello : join(root, "src/main.ts");
    await $`bun build --compile ${flags} ${entry} --outfile ${out}`.quiet();
    rows.push([label, measure(i === 0 ? [out] : [out, "version"])]);
  }
  rows.push(["dist/stoa version (shipped build)", measure([join(root, "dist/stoa"), "version"])]);
  console.log(`stoa version start-up, ${runs} runs each (ms)            median     p90     min`);
  for (const [label, r] of rows) {
    console.log(`  ${label.padEnd(46)} ${r.median.toFixed(1).padStart(7)} ${r.p90.toFixed(1).padStart(7)} ${r.min.toFixed(1).padStart(7)}`);
  }
  console.log("goal (issue #2): median ≤ 40 ms, aim 25 ms");
} finally {
  rmSync(tmp, { recursive: true, force: true });
}
