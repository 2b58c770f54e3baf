/**
 * Plays per second of the QuickJS sandbox alone (src/circles/sandbox.ts), one thread, no
 * transport: how much of the circles server's budget one play costs.
 *
 *   bun scripts/bench/lib/sandbox-probe.ts [--json] [--seconds N]
 *
 * Rows: `40 + 2` with a SQLite db it never touches (the benchmark's play); a play that reads and writes one key of a SQLite db; the same against an always-asynchronous
 * in-memory db (the Redis path's restart-on-read, without Redis's round trip). Then, for scale,
 * the parts: putting the image back alone, building and freeing a context with the sandbox's
 * built-ins (what every play paid before the image, see quickjs-image.ts), and eval of `40 + 2`
 * in one context. CPU µs of this process per operation next to the wall-clock rate.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Sandbox, SANDBOX_INTRINSICS } from "../../../src/circles/sandbox.ts";
import { QuickJSInstance } from "../../../src/circles/quickjs-image.ts";
import { SqliteKv, type CircleKv } from "../../../src/circles/kv.ts";

const args = process.argv.slice(2);
const json = args.includes("--json");
const secondsAt = args.indexOf("--seconds");
const seconds = secondsAt >= 0 ? Number(args[secondsAt + 1]) : 2;

/** An in-memory db whose every answer is a promise, like RedisKv's. */
class AsyncMemoryKv implements CircleKv {
  readonly label = "in-memory async store";
  #map = new Map<string, string>();
  async get(key: string): Promise<string | null> {
    return this.#map.get(key) ?? null;
  }
  async set(key: string, value: string): Promise<void> {
    this.#map.set(key, value);
  }
  async del(key: string): Promise<boolean> {
    return this.#map.delete(key);
  }
  async list(prefix: string): Promise<string[]> {
    return [...this.#map.keys()].filter((k) => k.startsWith(prefix)).sort();
  }
  close(): void {}
}

interface Row {
  name: string;
  perSecond: number;
  microseconds: number;
  cpuMicroseconds: number;
}

async function measure(name: string, once: () => unknown): Promise<Row> {
  const warmUntil = performance.now() + 300;
  while (performance.now() < warmUntil) await once();
  let n = 0;
  const cpu = process.cpuUsage();
  const start = performance.now();
  const until = start + seconds * 1000;
  while (performance.now() < until) {
    for (let i = 0; i < 100; i++) await once();
    n += 100;
  }
  const elapsed = (performance.now() - start) / 1000;
  const used = process.cpuUsage(cpu);
  return { name, perSecond: Math.round(n / elapsed), microseconds: Number(((elapsed * 1e6) / n).toFixed(1)), cpuMicroseconds: Number(((used.user + used.system) / n).toFixed(1)) };
}

const dir = mkdtempSync(join(tmpdir(), "stoa-sandbox-probe-"));
const sqlite = new SqliteKv(dir, "probe");
const asyncDb = new AsyncMemoryKv();
const loadStart = performance.now();
const sandbox = await Sandbox.create();
const loadMs = performance.now() - loadStart;
const play = { circle: "probe", caller: "", timeoutMs: 5000 };

const expectOutput = async (on: Sandbox, script: string, db: CircleKv, output: string): Promise<void> => {
  const result = await on.run(script, { ...play, db });
  if (!result.ok || result.output !== output) throw new Error(`probe play ${script} answered ${JSON.stringify(result)}`);
};

const counter = 'db.set("n", String(Number(db.get("n") ?? 0) + 1)); "ok"';
const rows = [
  await measure("sandbox: 40 + 2", () => expectOutput(sandbox, "40 + 2", sqlite, "42")),
  await measure("sandbox: counter, SQLite db", () => expectOutput(sandbox, counter, sqlite, "ok")),
  await measure("sandbox: counter, async db (1 restart)", () => expectOutput(sandbox, counter, asyncDb, "ok")),
];

const instance = await QuickJSInstance.load();
const runtime = instance.module.newRuntime();
const vm = runtime.newContext({ intrinsics: SANDBOX_INTRINSICS });
instance.capture();
rows.push(await measure("part: put the image back", () => instance.restore()));
rows.push(await measure("part: build + free a context", () => runtime.newContext({ intrinsics: SANDBOX_INTRINSICS }).dispose()));
rows.push(await measure("part: eval 40 + 2 in one context", () => vm.unwrapResult(vm.evalCode("40 + 2")).dispose()));
vm.dispose();
runtime.dispose();
const images = { sandbox: sandbox.footprint.imageBytes, bareContext: instance.imageBytes };
sandbox.dispose();
sqlite.close();
rmSync(dir, { recursive: true, force: true });

if (json) {
  console.log(JSON.stringify({ moduleLoadMs: Number(loadMs.toFixed(1)), imageBytes: images, rows }));
} else {
  console.log(`QuickJS module load + first sandbox: ${loadMs.toFixed(1)} ms`);
  console.log(`image put back after each play: ${images.sandbox} bytes (a context without the sandbox's globals: ${images.bareContext})`);
  for (const row of rows) console.log(`${row.name.padEnd(44)} ${String(row.perSecond).padStart(8)} /s  ${String(row.microseconds).padStart(6)} µs  CPU ${row.cpuMicroseconds} µs`);
}
