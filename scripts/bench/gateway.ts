#!/usr/bin/env bun
/**
 * Gateway benchmark (issue 3, spec gateway-meta.md): 1 KiB echo round trip p50/p99 and one-way
 * stream throughput, side by side in one run, for
 *   (a) a client straight to the publisher's Unix socket,
 *   (b) through `stoa gateway` (raw prelude `STOA1 <pub_id>\n`),
 *   (c) through nginx's stream proxy to the same socket, when nginx is installed.
 * Twice: every process pinned to one CPU (`taskset -c 0`; the figures the goal refers to — a
 * cross-CPU wake-up costs tens of µs here and drowns the difference) and unpinned.
 * Goal: stoa's p50 ≤ nginx's, throughput ≥ nginx's.
 *
 *   bun scripts/bench/gateway.ts [--json] [--count 20000] [--mib 1024] [--workers 1]
 */
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { type Target, echoRtt, freePort, percentile, throughput, waitForPort } from "./lib/client.ts";

const { values } = parseArgs({
  options: {
    json: { type: "boolean", default: false },
    count: { type: "string", default: "20000" },
    mib: { type: "string", default: "1024" },
    workers: { type: "string", default: "1" },
    inner: { type: "boolean", default: false },
  },
});
const root = join(import.meta.dir, "..", "..");
const stoaBin = join(root, "dist", "stoa");
const nginxBin = ["/usr/sbin/nginx", "/usr/bin/nginx"].find(existsSync) ?? Bun.which("nginx");
const streamModule = "/usr/lib/nginx/modules/ngx_stream_module.so";

interface Row {
  path: string;
  p50: number;
  p99: number;
  mbps: number;
}

async function inner(): Promise<Row[]> {
  if (!existsSync(stoaBin)) throw new Error(`${stoaBin} is missing: run 'bun run build' first`);
  const dir = mkdtempSync("/tmp/gwb-");
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

    const targets: [string, (pub: "echo" | "sink") => Target][] = [
      ["direct Unix socket", (pub) => ({ unix: join(dir, pub, "service.sock") })],
      ["stoa gateway", (pub) => ({ hostname: "127.0.0.1", port: svc, prelude: `STOA1 ${pub}\n` })],
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
  server { listen 127.0.0.1:${echoPort}; proxy_pass unix:${dir}/echo/service.sock; tcp_nodelay on; proxy_half_close on; }
  server { listen 127.0.0.1:${sinkPort}; proxy_pass unix:${dir}/sink/service.sock; tcp_nodelay on; proxy_half_close on; }
}
`,
      );
      spawn([nginxBin, "-p", dir, "-c", conf]);
      await waitForPort("127.0.0.1", echoPort);
      targets.push(["nginx stream proxy", (pub) => ({ hostname: "127.0.0.1", port: pub === "echo" ? echoPort : sinkPort })]);
    }

    const rows: Row[] = [];
    const count = Number(values.count);
    const bytes = Number(values.mib) * 1024 * 1024;
    for (const [path, target] of targets) {
      const rtts = await echoRtt(target("echo"), count).catch((err: Error) => {
        throw new Error(`${path}, echo: ${err.message}`);
      });
      const mbps = await throughput(target("sink"), bytes).catch((err: Error) => {
        throw new Error(`${path}, stream: ${err.message}`);
      });
      rows.push({ path, p50: percentile(rtts, 0.5), p99: percentile(rtts, 0.99), mbps });
    }
    return rows;
  } finally {
    for (const child of children) child.kill("SIGTERM");
    await Promise.all(children.map((c) => c.exited));
    rmSync(dir, { recursive: true, force: true });
  }
}

async function run(pinned: boolean): Promise<Row[]> {
  const argv = [process.execPath, import.meta.path, "--inner", "--count", String(values.count), "--mib", String(values.mib), "--workers", String(values.workers)];
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
    for (const [label, rows] of [["pinned to CPU 0 (taskset -c 0)", result.pinned], ["unpinned", result.unpinned]] as const) {
      console.log(`\n${label}`);
      console.log(`  ${"path".padEnd(22)} ${"p50".padStart(8)} ${"p99".padStart(8)} ${"MB/s".padStart(8)}`);
      for (const r of rows) {
        console.log(`  ${r.path.padEnd(22)} ${r.p50.toFixed(1).padStart(8)} ${r.p99.toFixed(1).padStart(8)} ${r.mbps.toFixed(0).padStart(8)}`);
      }
    }
    if (!nginxBin) console.log("\nnginx is not installed (apt-get install nginx): no nginx comparison in this run");
    console.log("\ngoal: stoa gateway p50 ≤ nginx stream proxy p50, throughput ≥ nginx's");
  }
}
