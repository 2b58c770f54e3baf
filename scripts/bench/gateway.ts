#!/usr/bin/env bun
/**
 * Gateway benchmark (issue 3, spec gateway-meta.md): 1 KiB echo round trip p50/p99 and one-way
 * stream throughput, side by side in one run, for
 *   (a) a client straight to the publisher's Unix socket,
 *   (b) through `stoa gateway` (raw prelude `STOA1 <pub_id>\n`), on its default epoll data path
 *       and, for comparison, with `--data-path bun` (Bun's sockets),
 *   (c) through nginx's stream proxy to the same socket, when nginx is installed.
 * Twice: every process pinned to one CPU (`taskset -c 0`; the figures the goal refers to — a
 * cross-CPU wake-up costs tens of µs here and drowns the difference) and unpinned.
 * Goal: stoa's p50 ≤ nginx's, throughput ≥ nginx's.
 *
 * This machine's speed drifts (a VM: the same direct round trip takes 8.5 µs for a while, then
 * 12.5 µs), so the paths are measured interleaved rather than one after the other: a pass runs
 * `--runs` rounds over the same processes, and each round takes `--count` round trips and
 * `--mib` MiB per path in `--blocks` blocks, cycling through the paths block by block (in an
 * order rotated every block), so that a slow spell falls on every path alike. Echo round trips
 * run on one connection per path and round; each stream block is its own connection. A round's
 * p50/p99 are over all its samples of that path, its MB/s is total bytes over total time; each
 * figure printed is the median over the rounds, the spread of p50 and MB/s in brackets.
 *
 *   bun scripts/bench/gateway.ts [--json] [--count 20000] [--mib 1024] [--runs 5] [--blocks 10]
 *                                [--workers 1] [--stoa path/to/other/build]
 */
import { existsSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { publishersDir, publisherSocketPath } from "../../src/core/paths.ts";
import { type EchoConnection, type Target, freePort, openEcho, percentile, throughput, waitForPort } from "./lib/client.ts";

const { values } = parseArgs({
  options: {
    json: { type: "boolean", default: false },
    count: { type: "string", default: "20000" },
    mib: { type: "string", default: "1024" },
    runs: { type: "string", default: "5" },
    blocks: { type: "string", default: "10" },
    workers: { type: "string", default: "1" },
    /** Another build to measure instead of dist/stoa, e.g. the previous commit's, for a before/after. */
    stoa: { type: "string" },
    inner: { type: "boolean", default: false },
  },
});
const root = join(import.meta.dir, "..", "..");
const stoaBin = values.stoa ?? join(root, "dist", "stoa");
const nginxBin = ["/usr/sbin/nginx", "/usr/bin/nginx"].find(existsSync) ?? Bun.which("nginx");
const streamModule = "/usr/lib/nginx/modules/ngx_stream_module.so";

/** One path's figures: medians over the rounds, and every round's own figures. */
interface Row {
  path: string;
  p50: number;
  p99: number;
  mbps: number;
  rounds: { p50: number; p99: number; mbps: number }[];
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? (sorted[mid] ?? Number.NaN) : ((sorted[mid - 1] ?? Number.NaN) + (sorted[mid] ?? Number.NaN)) / 2;
}

async function inner(): Promise<Row[]> {
  if (!existsSync(stoaBin)) throw new Error(`${stoaBin} is missing: run 'bun run build' first`);
  const dir = mkdtempSync("/tmp/gwb-");
  const cleanupDirs: string[] = [];
  const children: ReturnType<typeof Bun.spawn>[] = [];
  const spawn = (argv: string[]) => {
    const child = Bun.spawn(argv, { stdout: "pipe", stderr: "inherit", stdin: "ignore" });
    children.push(child);
    return child;
  };
  try {
    const servers = spawn([process.execPath, join(import.meta.dir, "lib", "sockservers.ts"), dir]);
    const reader = servers.stdout.getReader();
    const first = await reader.read();
    if (!new TextDecoder().decode(first.value).includes("ready")) throw new Error("benchmark servers did not start");
    reader.releaseLock();

    const [svc, str, ping] = [freePort(), freePort(), freePort()];
    spawn([stoaBin, "gateway", "--listen", "127.0.0.1", "--ports", `${svc},${str},${ping}`, "--run-dir", dir, "--workers", String(values.workers), "--log-level", "warn"]);
    await waitForPort("127.0.0.1", svc);
    // The same gateway on Bun's sockets, for comparison: its own run dir (one gateway per run
    // dir) whose publishers' subtree links to the real one.
    const bunDir = mkdtempSync("/tmp/gwb-");
    symlinkSync(publishersDir(dir), publishersDir(bunDir));
    const bunSvc = freePort();
    spawn([stoaBin, "gateway", "--listen", "127.0.0.1", "--ports", `${bunSvc},${freePort()},${freePort()}`, "--run-dir", bunDir, "--workers", String(values.workers), "--data-path", "bun", "--log-level", "warn"]);
    await waitForPort("127.0.0.1", bunSvc);
    cleanupDirs.push(bunDir);

    const targets: [string, (pub: "echo" | "sink") => Target][] = [
      ["direct Unix socket", (pub) => ({ unix: publisherSocketPath(dir, pub, "service") })],
      ["stoa gateway", (pub) => ({ hostname: "127.0.0.1", port: svc, prelude: `STOA1 ${pub}\n` })],
      ["stoa --data-path bun", (pub) => ({ hostname: "127.0.0.1", port: bunSvc, prelude: `STOA1 ${pub}\n` })],
    ];
    if (nginxBin) {
      const [echoPort, sinkPort] = [freePort(), freePort()];
      const conf = join(dir, "nginx.conf");
      writeFileSync(
        conf,
        `${existsSync(streamModule) ? `load_module ${streamModule};\n` : ""}${process.getuid?.() === 0 ? "user root;\n" : ""}daemon off;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/nginx.err warn;
events { worker_connections 1024; }
stream {
  server { listen 127.0.0.1:${echoPort}; proxy_pass unix:${publisherSocketPath(dir, "echo", "service")}; tcp_nodelay on; proxy_half_close on; }
  server { listen 127.0.0.1:${sinkPort}; proxy_pass unix:${publisherSocketPath(dir, "sink", "service")}; tcp_nodelay on; proxy_half_close on; }
}
`,
      );
      spawn([nginxBin, "-p", dir, "-c", conf]);
      await waitForPort("127.0.0.1", echoPort);
      targets.push(["nginx stream proxy", (pub) => ({ hostname: "127.0.0.1", port: pub === "echo" ? echoPort : sinkPort })]);
    }

    const count = Number(values.count);
    const bytes = Number(values.mib) * 1024 * 1024;
    const runs = Math.max(1, Number(values.runs));
    const blocks = Math.max(1, Math.min(Number(values.blocks), count));
    const rounds = new Map<string, Row["rounds"]>(targets.map(([path]) => [path, []]));
    /** Index into `targets` of the i-th path measured in block `block`: rotated every block. */
    const nth = (block: number, i: number) => (block + i) % targets.length;
    const fail = (path: string, what: string) => (err: Error) => {
      throw new Error(`${path}, ${what}: ${err.message}`);
    };
    for (let round = 0; round < runs; round++) {
      const echo: EchoConnection[] = [];
      const rtts: number[][] = targets.map(() => []);
      const streamed = targets.map(() => ({ bytes: 0, seconds: 0 }));
      try {
        for (const [path, target] of targets) {
          const conn = await openEcho(target("echo")).catch(fail(path, "echo"));
          echo.push(conn);
          await conn.measure(500).catch(fail(path, "echo")); // warm-up, untimed
        }
        for (let block = 0; block < blocks; block++) {
          const n = Math.floor((count * (block + 1)) / blocks) - Math.floor((count * block) / blocks);
          for (let i = 0; i < targets.length; i++) {
            const t = nth(round * blocks + block, i);
            const path = (targets[t] as (typeof targets)[number])[0];
            (rtts[t] as number[]).push(...(await (echo[t] as EchoConnection).measure(n).catch(fail(path, "echo"))));
          }
        }
      } finally {
        for (const conn of echo) conn.close();
      }
      for (let block = 0; block < blocks; block++) {
        const n = Math.floor((bytes * (block + 1)) / blocks) - Math.floor((bytes * block) / blocks);
        for (let i = 0; i < targets.length; i++) {
          const t = nth(round * blocks + block, i);
          const [path, target] = targets[t] as (typeof targets)[number];
          const mbps = await throughput(target("sink"), n).catch(fail(path, "stream"));
          const acc = streamed[t] as { bytes: number; seconds: number };
          acc.bytes += n;
          acc.seconds += n / (mbps * 1e6);
        }
      }
      targets.forEach(([path], t) => {
        const sorted = (rtts[t] as number[]).sort((a, b) => a - b);
        const acc = streamed[t] as { bytes: number; seconds: number };
        rounds.get(path)?.push({ p50: percentile(sorted, 0.5), p99: percentile(sorted, 0.99), mbps: acc.bytes / acc.seconds / 1e6 });
      });
    }
    return targets.map(([path]) => {
      const r = rounds.get(path) ?? [];
      return {
        path,
        p50: median(r.map((x) => x.p50)),
        p99: median(r.map((x) => x.p99)),
        mbps: median(r.map((x) => x.mbps)),
        rounds: r,
      };
    });
  } finally {
    for (const child of children) child.kill("SIGTERM");
    await Promise.all(children.map((c) => c.exited));
    for (const d of [dir, ...cleanupDirs]) rmSync(d, { recursive: true, force: true });
  }
}

async function run(pinned: boolean): Promise<Row[]> {
  const argv = [process.execPath, import.meta.path, "--inner", "--count", String(values.count), "--mib", String(values.mib), "--runs", String(values.runs), "--blocks", String(values.blocks), "--workers", String(values.workers), "--stoa", stoaBin];
  const proc = Bun.spawn(pinned ? ["taskset", "-c", "0", ...argv] : argv, { stdout: "pipe", stderr: "inherit" });
  const out = await new Response(proc.stdout).text();
  if ((await proc.exited) !== 0) throw new Error(`benchmark pass (${pinned ? "pinned" : "unpinned"}) failed`);
  return JSON.parse(out) as Row[];
}

if (values.inner) {
  console.log(JSON.stringify(await inner()));
} else {
  const result = { pinned: await run(true), unpinned: await run(false), nginx: Boolean(nginxBin) };
  if (values.json) {
    console.log(JSON.stringify(result));
  } else {
    const mib = Number(values.mib);
    console.log(`gateway benchmark — 1 KiB echo RTT (µs) over ${values.count} round trips; ${mib} MiB one way (MB/s)`);
    console.log(`paths interleaved in ${values.blocks} blocks; medians over ${values.runs} rounds, [lowest–highest round] for p50 and MB/s`);
    const spread = (xs: number[], digits: number) => `[${Math.min(...xs).toFixed(digits)}–${Math.max(...xs).toFixed(digits)}]`;
    for (const [label, rows] of [["pinned to CPU 0 (taskset -c 0)", result.pinned], ["unpinned", result.unpinned]] as const) {
      console.log(`\n${label}`);
      console.log(`  ${"path".padEnd(22)} ${"p50".padStart(8)} ${"".padEnd(13)} ${"p99".padStart(8)} ${"MB/s".padStart(8)}`);
      for (const r of rows) {
        const p50s = spread(r.rounds.map((x) => x.p50), 1);
        const mbpss = spread(r.rounds.map((x) => x.mbps), 0);
        console.log(
          `  ${r.path.padEnd(22)} ${r.p50.toFixed(1).padStart(8)} ${p50s.padEnd(13)} ${r.p99.toFixed(1).padStart(8)} ${r.mbps.toFixed(0).padStart(8)} ${mbpss}`,
        );
      }
    }
    if (!nginxBin) console.log("\nnginx is not installed (apt-get install nginx): no nginx comparison in this run");
    console.log("\ngoal: stoa gateway p50 ≤ nginx stream proxy p50, throughput ≥ nginx's");
  }
}
