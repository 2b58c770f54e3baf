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
 *
 * Then the breakdown of one play: a context built and freed through the raw FFI and through the
 * wrapper, each step `#attempt` takes on the host side (String/JSON.stringify handles,
 * CONTEXT_ID/CALLER_ID, print, the db getter, eval `40 + 2`) timed alone in one reused context
 * (a fresh context's first touches cost 2-3x more: shapes and atoms are new), a prelude's eval
 * for comparison, and `sandbox.run` itself. Rows run interleaved for `BREAKDOWN_ROUNDS` rounds
 * and report the median and lowest CPU µs of this process (this machine's timings vary by
 * ±20 % run to run; the lowest is the steadiest).
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { IntrinsicsFlags, newQuickJSWASMModuleFromVariant, type Intrinsics, type QuickJSRuntime } from "quickjs-emscripten-core";
import variant from "@jitl/quickjs-singlefile-mjs-release-sync";
import { Sandbox, SANDBOX_INTRINSICS } from "../../../src/circles/sandbox.ts";
import { SqliteKv, type CircleKv } from "../../../src/circles/kv.ts";

const args = process.argv.slice(2);
const json = args.includes("--json");
const secondsAt = args.indexOf("--seconds");
const seconds = secondsAt >= 0 ? Number(args[secondsAt + 1]) : 2;
/** Rounds of the breakdown, and plays per row per round (after a few to warm it). */
const BREAKDOWN_ROUNDS = 9;
const BREAKDOWN_PLAYS = 1500;
const BREAKDOWN_WARM_PLAYS = 150;

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
const breakdown = await measureBreakdown(runtime);
runtime.dispose();
sandbox.dispose();
leanSandbox.dispose();
sqlite.close();
rmSync(dir, { recursive: true, force: true });

if (json) {
  console.log(JSON.stringify({ moduleLoadMs: Number(loadMs.toFixed(1)), rows, breakdown }));
} else {
  console.log(`QuickJS module load + first sandbox: ${loadMs.toFixed(1)} ms`);
  for (const row of rows) console.log(`${row.name.padEnd(44)} ${String(row.perSecond).padStart(8)} /s  ${row.microseconds} µs`);
  console.log(`\none play, step by step (CPU µs each, ${BREAKDOWN_ROUNDS} interleaved rounds):`);
  for (const row of breakdown) console.log(`${row.name.padEnd(58)} median ${String(row.medianMicroseconds).padStart(6)}  lowest ${String(row.lowestMicroseconds).padStart(6)}`);
}

/**
 * The breakdown rows (see the header). Built in the probe's own sandbox and `runtime` so the
 * rows share one QuickJS instance's state; the sandbox runs against `sqlite`, untouched.
 */
async function measureBreakdown(rt: QuickJSRuntime): Promise<{ name: string; medianMicroseconds: number; lowestMicroseconds: number }[]> {
  const ffi = module.getFFI();
  const flags = Object.entries(SANDBOX_INTRINSICS as Intrinsics).reduce((all, [name, on]) => (on ? all | IntrinsicsFlags[name as keyof typeof IntrinsicsFlags] : all), 0);
  const rtPointer = ffi.QTS_NewRuntime();
  const vm = rt.newContext({ intrinsics: SANDBOX_INTRINSICS });
  const cases: [string, () => unknown][] = [
    ["context: raw FFI QTS_NewContext + QTS_FreeContext", () => ffi.QTS_FreeContext(ffi.QTS_NewContext(rtPointer, flags as IntrinsicsFlags))],
    ["context: runtime.newContext + dispose (the wrapper)", () => rt.newContext({ intrinsics: SANDBOX_INTRINSICS }).dispose()],
    ["op: String and JSON.stringify handles, taken + freed", () => {
      vm.getProp(vm.global, "String").dispose();
      vm.getProp(vm.global, "JSON").consume((j) => vm.getProp(j, "stringify")).dispose();
    }],
    ["op: CONTEXT_ID and CALLER_ID (newString + defineProp)", () => {
      for (const name of ["CONTEXT_ID", "CALLER_ID"]) vm.newString("probe").consume((h) => vm.defineProp(vm.global, name, { value: h, configurable: true, enumerable: true }));
    }],
    ["op: print (newFunction + setProp)", () => vm.newFunction("print", () => undefined).consume((fn) => vm.setProp(vm.global, "print", fn))],
    ["op: the db getter (defineProp with a host getter)", () => vm.defineProp(vm.global, "db", { get: () => vm.undefined, configurable: true, enumerable: true })],
    ["op: eval 40 + 2 + getNumber + hasPendingJob", () => {
      vm.unwrapResult(vm.evalCode("40 + 2", "play.js", { type: "global" })).consume((v) => vm.getNumber(v));
      rt.hasPendingJob();
    }],
    ["op: a one-line prelude, evaluated", () => vm.unwrapResult(vm.evalCode("(function (h) { globalThis.x = h; })", "prelude.js", { type: "global" })).dispose()],
    ["sandbox.run: 40 + 2 (a whole play)", () => sandbox.run("40 + 2", { ...play, db: sqlite })],
  ];
  const samples = cases.map((): number[] => []);
  for (let round = 0; round < BREAKDOWN_ROUNDS; round++) {
    for (const [i, [, once]] of cases.entries()) {
      for (let n = 0; n < BREAKDOWN_WARM_PLAYS; n++) await once();
      const start = process.cpuUsage();
      for (let n = 0; n < BREAKDOWN_PLAYS; n++) await once();
      const used = process.cpuUsage(start);
      samples[i]!.push((used.user + used.system) / BREAKDOWN_PLAYS);
    }
  }
  vm.dispose();
  ffi.QTS_FreeRuntime(rtPointer);
  return cases.map(([name], i) => {
    const sorted = samples[i]!.sort((a, b) => a - b);
    return { name, medianMicroseconds: Number(sorted[Math.floor(sorted.length / 2)]!.toFixed(1)), lowestMicroseconds: Number(sorted[0]!.toFixed(1)) };
  });
}
