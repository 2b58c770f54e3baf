/**
 * Plays per second of the QuickJS sandbox alone (src/circles/sandbox.ts), one thread, no
 * transport: how much of the circles server's budget one play costs.
 *
 *   bun scripts/bench/lib/sandbox-probe.ts [--json] [--seconds N]
 *
 * Rows: `40 + 2` with a SQLite db it never touches (the benchmark's play); a play that reads
 * and writes one key of a SQLite db; the same against an always-asynchronous in-memory db (the
 * Redis path's restart-on-read, without Redis's round trip); and, for scale, bare QuickJS
 * context build + dispose (with the sandbox's intrinsics, fewer, and QuickJS's defaults) and eval in one reused context (what a play would cost if contexts
 * could be reused safely — they cannot, see the sandbox's header).
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { newQuickJSWASMModuleFromVariant } from "quickjs-emscripten-core";
import variant from "@jitl/quickjs-singlefile-mjs-release-sync";
import { Sandbox, SANDBOX_INTRINSICS } from "../../../src/circles/sandbox.ts";
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

async function measure(name: string, once: () => unknown): Promise<{ name: string; perSecond: number; microseconds: number }> {
  const warmUntil = performance.now() + 300;
  while (performance.now() < warmUntil) await once();
  let n = 0;
  const start = performance.now();
  const until = start + seconds * 1000;
  while (performance.now() < until) {
    for (let i = 0; i < 100; i++) await once();
    n += 100;
  }
  const elapsed = (performance.now() - start) / 1000;
  return { name, perSecond: Math.round(n / elapsed), microseconds: Number(((elapsed * 1e6) / n).toFixed(1)) };
}

const dir = mkdtempSync(join(tmpdir(), "stoa-sandbox-probe-"));
const sqlite = new SqliteKv(dir, "probe");
const asyncDb = new AsyncMemoryKv();
const loadStart = performance.now();
const sandbox = await Sandbox.create();
const loadMs = performance.now() - loadStart;
const play = { circle: "probe", caller: "", timeoutMs: 5000 };

const expect = async (script: string, db: CircleKv, output: string): Promise<void> => {
  const result = await sandbox.run(script, { ...play, db });
  if (!result.ok || result.output !== output) throw new Error(`probe play ${script} answered ${JSON.stringify(result)}`);
};

const counter = 'db.set("n", String(Number(db.get("n") ?? 0) + 1)); "ok"';
const lean = { BaseObjects: true, Eval: true, JSON: true, RegExp: true };
const leanSandbox = await Sandbox.create({ intrinsics: lean });
const rows = [
  await measure("sandbox: 40 + 2", () => expect("40 + 2", sqlite, "42")),
  await measure("sandbox: 40 + 2, without MapSet, Date, Promise", async () => {
    const result = await leanSandbox.run("40 + 2", { ...play, db: sqlite });
    if (!result.ok) throw new Error(result.message);
  }),
  await measure("sandbox: counter, SQLite db", () => expect(counter, sqlite, "ok")),
  await measure("sandbox: counter, async db (1 restart)", () => expect(counter, asyncDb, "ok")),
];

const module = await newQuickJSWASMModuleFromVariant(variant);
const runtime = module.newRuntime();
rows.push(await measure("quickjs: context build + dispose", () => runtime.newContext({ intrinsics: SANDBOX_INTRINSICS }).dispose()));
rows.push(await measure("quickjs: the same without MapSet, Date, Promise", () => runtime.newContext({ intrinsics: lean }).dispose()));
rows.push(await measure("quickjs: the same with every default intrinsic", () => runtime.newContext().dispose()));
const reused = runtime.newContext({ intrinsics: SANDBOX_INTRINSICS });
rows.push(await measure("quickjs: eval 40 + 2, reused context", () => reused.unwrapResult(reused.evalCode("40 + 2")).dispose()));
reused.dispose();
runtime.dispose();
sandbox.dispose();
leanSandbox.dispose();
sqlite.close();
rmSync(dir, { recursive: true, force: true });

if (json) {
  console.log(JSON.stringify({ moduleLoadMs: Number(loadMs.toFixed(1)), rows }));
} else {
  console.log(`QuickJS module load + first sandbox: ${loadMs.toFixed(1)} ms`);
  for (const row of rows) console.log(`${row.name.padEnd(44)} ${String(row.perSecond).padStart(8)} /s  ${row.microseconds} µs`);
}
