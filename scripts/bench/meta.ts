#!/usr/bin/env bun
/**
 * Metaserver benchmark (spec gateway-meta.md, the metaserver's stores): lookups/s, heartbeats/s
 * and registrations/s with --clients (32) concurrent clients, side by side in one run, for
 *   SQLite ×1   `stoa meta --no-auth --store sqlite:<tmp>/meta.db`,
 *   Redis ×1    `stoa meta --no-auth --store redis://127.0.0.1:P/0` over a private redis-server
 *               (`--save "" --appendonly no`),
 *   Redis ×2    that metaserver and a second one over the same Redis, the clients split over
 *               both (client i → metaserver i mod 2); the figures are the sum of both.
 * Every metaserver is the real binary on 127.0.0.1, at its default log level (its log to a file
 * in the temp dir), ready once GET /v1/health answers 200; all of them run for the whole run.
 *
 * Workloads, each a closed loop per client (one request in flight per connection, HTTP/1.1
 * keep-alive) from --loaders (1) load processes (lib/meta-load.ts: prebuilt requests over Bun
 * sockets, answers read as far as status and Content-Length: about 40 µs of CPU per request on
 * this VM, where wrk took about 30 and `fetch` about 60 — most of it is the kernel's loopback TCP;
 * one such process kept one metaserver at 95 % of a CPU, so --loaders 2 only adds contention here):
 *   lookups        GET /v1/publishers?name=N, N one of --publishers (1,000) registered names at
 *                  random. A 200 without the publisher is counted as a miss.
 *   heartbeats     each client registers a publisher of its own (untimed), heartbeats it
 *                  (POST /v1/publishers/<pub_id>/heartbeat) until the time is up, deletes it.
 *   registrations  each client registers a fresh name (POST /v1/publishers, 201) and deletes it
 *                  again (DELETE, 200), over and over: 2 requests per registration, the POST timed.
 * Quotas shape these (src/meta/protocol.ts): under --no-auth each source address is one writer,
 * which may hold only WRITER_MAX_PENDING (64) unconfirmed registrations, and an unconfirmed one is
 * removed PENDING_EXPIRY_MS (30 s) after it was registered. So the lookup targets — pending, as
 * confirmation needs a gateway — are deleted and registered again right before every lookup
 * case (registering the same pub_id and name again would keep the first one's expiry), from
 * 127.0.1.1, 127.0.1.2, … with at most 64 per address, untimed, and a case is at most 25 s. The
 * registration loop deletes what it registers, so the 32 clients (all from 127.0.0.1) never
 * hold more than 32 pending; the heartbeat case's 32 are deleted before the next case.
 *
 * Each case (configuration × workload) runs once for --warmup seconds, then --rounds times for
 * --seconds, the cases in an order rotated every round so that a slow spell of this VM falls on
 * every case alike. A case's rate is its 2xx answers over the time from its start to its last
 * answer (summed over the load processes); p50/p99 are nearest-rank-low over all of a round's
 * answers, from 1 % buckets. Any answer but 2xx is an error, counted by status and reported; a
 * configuration with errors is flagged. Each figure printed is the median over the rounds,
 * [lowest–highest round] next to the rates.
 *
 * Where the CPU goes: per case, each process's utime+stime (/proc/<pid>/stat) over the case, as
 * % of one CPU — the metaservers, redis-server, the load processes — and from /proc/stat the
 * machine's softirq (loopback TCP delivers most packets there; this kernel charges only part of
 * it to the process it interrupted), steal (the hypervisor's other guests) and "other": every
 * other process's time (this bench's idle metaservers included; other work on the machine shows
 * here). Beside them the machine's busy share, CPU µs per operation of the case's processes and
 * the rate that cost allows when all of this machine's CPUs do nothing else ("CPU ceiling": an
 * upper bound, softirq and steal left out; the part of softirq in the processes' own time can
 * make the columns add up to more than the machine's busy time). On 2 CPUs two metaservers,
 * redis-server and the load compete for the same cores; the ratio goal is printed with the
 * ceiling of the Redis ×2 shape, and how many CPUs the goal would take at its cost.
 * --pin: SQLite's and Redis's first metaserver alone on CPU 0, the second metaserver,
 * redis-server and the load processes on CPU 1 (taskset -a -p -c, once each has started).
 *
 * Goals, each from this run's figures: ≥ 20,000 lookups/s and ≥ 5,000 heartbeats/s per
 * metaserver (each configuration's rate ÷ its metaservers); Redis ×2 ÷ Redis ×1 ≥ 1.6× for
 * lookups and for heartbeats. Registrations/s are shown, not judged.
 *
 *   bun scripts/bench/meta.ts [--json] [--seconds 5] [--warmup 1] [--rounds 3] [--clients 32]
 *                             [--publishers 1000] [--loaders 1] [--only sqlite,redis1,redis2]
 *                             [--pin] [--stoa path/to/stoa]
 */
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { availableParallelism, release } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { NON_ADMIN_MAX_PENDING, PENDING_EXPIRY_MS, WRITER_MAX_PENDING } from "../../src/meta/protocol.ts";
import { freePort } from "./lib/client.ts";
import { type Job, type JobResult, type LatencyHistogram, type Target, latencyAt, mergeLatency, registerAnew } from "./lib/meta-load.ts";
import { Children, type Loader, machineSeconds, pin, processCpuSeconds, REDIS_SERVER, startLoader, startMeta, startRedis } from "./lib/meta-procs.ts";

const { values } = parseArgs({
  options: {
    json: { type: "boolean", default: false },
    seconds: { type: "string", default: "5" },
    warmup: { type: "string", default: "1" },
    rounds: { type: "string", default: "3" },
    clients: { type: "string", default: "32" },
    publishers: { type: "string", default: "1000" },
    loaders: { type: "string", default: "1" },
    only: { type: "string", default: "sqlite,redis1,redis2" },
    pin: { type: "boolean", default: false },
    /** Another build to measure instead of dist/stoa, e.g. the previous commit's, for a before/after. */
    stoa: { type: "string" },
    help: { type: "boolean", short: "h", default: false },
  },
});
if (values.help) {
  process.stdout.write(
    "usage: bun scripts/bench/meta.ts [--json] [--seconds 5] [--warmup 1] [--rounds 3] [--clients 32] [--publishers 1000]\n" +
      "                                 [--loaders 1] [--only sqlite,redis1,redis2] [--pin] [--stoa PATH]\n" +
      "lookups/s, heartbeats/s and registrations/s of stoa meta over SQLite, Redis and two metaservers over one Redis,\n" +
      "with each process's CPU and each shape's CPU ceiling; goals: >= 20,000 lookups/s and >= 5,000 heartbeats/s per\n" +
      "metaserver, Redis x2 >= 1.6x Redis x1. Needs dist/stoa (bun run build) and /usr/bin/redis-server.\n",
  );
  process.exit(0);
}
const root = join(import.meta.dir, "..", "..");
const stoaBin = values.stoa ?? join(root, "dist", "stoa");
const seconds = Number(values.seconds);
const warmup = Number(values.warmup);
const rounds = Math.max(1, Number(values.rounds));
const clients = Math.max(1, Number(values.clients));
const publishers = Math.max(1, Number(values.publishers));
const loaderCount = Math.max(1, Number(values.loaders));
const cpus = availableParallelism();

const GOAL = { lookupsPerS: 20_000, heartbeatsPerS: 5_000, redisScale: 1.6 };
/** The longest case: the lookup targets, registered again before each lookup case, stay pending this long at most. */
const MAX_CASE_SECONDS = PENDING_EXPIRY_MS / 1000 - 5;
/** How long the machine's load is sampled before the run, and above what share of all CPUs it is called busy. */
const IDLE_SAMPLE_MS = 1_000;
const BUSY_BEFORE_WARN_PCT = 10;

const CONFIGS = [
  { key: "sqlite", label: "SQLite ×1" },
  { key: "redis1", label: "Redis ×1" },
  { key: "redis2", label: "Redis ×2 (sum)" },
] as const;
type ConfigKey = (typeof CONFIGS)[number]["key"];
const labelOf = (key: ConfigKey): string => CONFIGS.find((c) => c.key === key)?.label ?? key;
const WORKLOADS = ["lookups", "heartbeats", "registrations"] as const;
type Workload = (typeof WORKLOADS)[number];

/** One measurement of a case. */
interface Round {
  rate: number;
  ok: number;
  p50: number;
  p99: number;
  errors: Record<string, number>;
  misses: number;
  /** % of one CPU over the case, by part: each metaserver, redis-server, the load processes, softirq, steal, other processes. */
  cpuPct: Record<string, number>;
  /** Busy share of all CPUs over the case, 0–100. */
  machineBusyPct: number;
  /** CPU µs per operation of the case's own processes (metaservers, redis-server, load); softirq not included. */
  cpuUsPerOp: number;
}

/** A case over its rounds: the medians of a Round's figures (errors and misses over all rounds, not the warm-up). */
interface Row extends Omit<Round, "ok"> {
  config: ConfigKey;
  label: string;
  workload: Workload;
  metas: number;
  low: number;
  high: number;
  /** The rate at cpuUsPerOp with every CPU of this machine on it. */
  cpuCeiling: number;
  rounds: Round[];
}

interface Goal {
  what: string;
  value: number;
  goal: string;
  met: boolean | null;
  ratio?: boolean;
  note?: string;
}

/** The processes of a configuration, as CPU parts. */
interface Config {
  key: ConfigKey;
  label: string;
  targets: Target[];
  parts: Record<string, number>;
}

function median(xs: number[]): number {
  const sorted = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? (sorted[mid] ?? Number.NaN) : ((sorted[mid - 1] ?? Number.NaN) + (sorted[mid] ?? Number.NaN)) / 2;
}

const sumErrors = (into: Record<string, number>, from: Record<string, number>) => {
  for (const [k, n] of Object.entries(from)) into[k] = (into[k] ?? 0) + n;
  return into;
};
const errorCount = (e: Record<string, number>) => Object.values(e).reduce((a, b) => a + b, 0);

/** The lookup targets: names below bench/lk, pub_ids of their own. */
const lookupNames = Array.from({ length: publishers }, (_, i) => `bench/lk/s${Math.floor(i / WRITER_MAX_PENDING)}/p${i}`);
const pubIdOf = (name: string) => `lk-${name.slice(name.lastIndexOf("/p") + 2)}`;
/** Loopback source addresses for registering them, WRITER_MAX_PENDING each. */
const sourceAddresses = Array.from({ length: Math.ceil(publishers / WRITER_MAX_PENDING) }, (_, i) => `127.0.1.${i + 1}`);

function machine() {
  const model = /^model name\s*:\s*(.*)$/m.exec(readFileSync("/proc/cpuinfo", "utf8"))?.[1] ?? "unknown CPU";
  const version = Bun.spawnSync([stoaBin, "version"], { stdout: "pipe", stderr: "ignore" }).stdout.toString().trim().split("\n")[0] ?? "";
  const redis = existsSync(REDIS_SERVER) ? (Bun.spawnSync([REDIS_SERVER, "--version"], { stdout: "pipe" }).stdout.toString().match(/v=(\S+)/)?.[1] ?? "?") : null;
  return { cpus, model, kernel: release(), bun: Bun.version, stoa: version, redis };
}

/** Clients of load process `j` of `n`. */
const share = (j: number, n: number) => Math.floor((clients * (j + 1)) / n) - Math.floor((clients * j) / n);

let sequence = 0;

async function measure(config: Config, workload: Workload, loaders: Loader[], secs: number): Promise<Round> {
  const named = (err: unknown) => new Error(`${config.label}, ${workload}: ${err instanceof Error ? err.message : String(err)}`);
  try {
    // Untimed: the lookup targets registered anew (their pending expiry starts again).
    if (workload === "lookups") await registerAnew(config.targets[0] as Target, lookupNames, pubIdOf, sourceAddresses, WRITER_MAX_PENDING);
    const run = ++sequence;
    const parts = [...Object.keys(config.parts), "load"];
    const sample = () => {
      const s: Record<string, number> = {};
      for (const [part, pid] of Object.entries(config.parts)) s[part] = processCpuSeconds(pid);
      s.load = loaders.reduce((sum, l) => sum + processCpuSeconds(l.pid), 0);
      return s;
    };
    const [before, machine0, t0] = [sample(), machineSeconds(), Bun.nanoseconds()];
    const results: JobResult[] = await Promise.all(
      loaders.map((l, j) => {
        const base = { targets: config.targets, clients: share(j, loaders.length), seconds: secs };
        const job: Job = workload === "lookups" ? { ...base, workload, names: lookupNames } : { ...base, workload, tag: `${config.key}-${run}-l${j}` };
        return l.run(job);
      }),
    );
    const [after, machine1, wall] = [sample(), machineSeconds(), (Bun.nanoseconds() - t0) / 1e9];
    const ok = results.reduce((s, r) => s + r.ok, 0);
    const rate = results.reduce((s, r) => s + (r.seconds > 0 ? r.ok / r.seconds : 0), 0);
    const latency = results.reduce<LatencyHistogram>((h, r) => mergeLatency(h, r.latency), {});
    const errors = results.reduce<Record<string, number>>((e, r) => sumErrors(e, r.errors), {});
    const delta = (part: string) => (after[part] ?? Number.NaN) - (before[part] ?? Number.NaN);
    const cpuPct: Record<string, number> = {};
    let ours = 0;
    for (const part of parts) {
      cpuPct[part] = (delta(part) / wall) * 100;
      ours += delta(part);
    }
    const softirq = machine1.softirq - machine0.softirq;
    const steal = machine1.steal - machine0.steal;
    const processes = machine1.processes - machine0.processes;
    cpuPct.softirq = (softirq / wall) * 100;
    cpuPct.steal = (steal / wall) * 100;
    cpuPct.other = (Math.max(0, processes - ours) / wall) * 100;
    return {
      rate,
      ok,
      p50: latencyAt(latency, 0.5),
      p99: latencyAt(latency, 0.99),
      errors,
      misses: results.reduce((s, r) => s + r.misses, 0),
      cpuPct,
      machineBusyPct: ((processes + softirq + steal) / (wall * cpus)) * 100,
      cpuUsPerOp: ok > 0 ? (ours * 1e6) / ok : Number.NaN,
    };
  } catch (err) {
    throw named(err);
  }
}

/** Starts what the selected configurations need; a configuration that cannot run gets a reason instead. */
async function startAll(children: Children, dir: string, only: Set<string>) {
  const configs: Config[] = [];
  const unavailable: Record<string, string> = {};
  const pins: [number, string][] = [];
  const second = cpus >= 2 ? "1" : "0";
  if (only.has("sqlite")) {
    const port = freePort();
    try {
      const pid = await startMeta(children, stoaBin, port, `sqlite:${join(dir, "meta.db")}`, dir);
      configs.push({ key: "sqlite", label: labelOf("sqlite"), targets: [{ host: "127.0.0.1", port }], parts: { "meta A": pid } });
      pins.push([pid, "0"]);
    } catch (err) {
      unavailable.sqlite = err instanceof Error ? err.message : String(err);
    }
  }
  if (only.has("redis1") || only.has("redis2")) {
    const why = (err: unknown) => (err instanceof Error ? err.message : String(err));
    if (!existsSync(REDIS_SERVER)) {
      for (const k of ["redis1", "redis2"]) if (only.has(k)) unavailable[k] = `${REDIS_SERVER} is not installed (apt-get install redis-server)`;
    } else {
      try {
        const redisPort = freePort();
        const redisPid = await startRedis(children, redisPort, dir);
        pins.push([redisPid, second]);
        const store = `redis://127.0.0.1:${redisPort}/0`;
        const [portA, portB] = [freePort(), freePort()];
        const pidA = await startMeta(children, stoaBin, portA, store, dir);
        pins.push([pidA, "0"]);
        const a: Target = { host: "127.0.0.1", port: portA };
        if (only.has("redis1")) configs.push({ key: "redis1", label: labelOf("redis1"), targets: [a], parts: { "meta A": pidA, "redis-server": redisPid } });
        if (only.has("redis2")) {
          try {
            const pidB = await startMeta(children, stoaBin, portB, store, dir);
            pins.push([pidB, second]);
            configs.push({ key: "redis2", label: labelOf("redis2"), targets: [a, { host: "127.0.0.1", port: portB }], parts: { "meta A": pidA, "meta B": pidB, "redis-server": redisPid } });
          } catch (err) {
            unavailable.redis2 = why(err);
          }
        }
      } catch (err) {
        for (const k of ["redis1", "redis2"]) if (only.has(k)) unavailable[k] = why(err);
      }
    }
  }
  const loaders: Loader[] = [];
  for (let j = 0; j < loaderCount; j++) {
    const l = await startLoader(children);
    loaders.push(l);
    pins.push([l.pid, second]);
  }
  if (values.pin) for (const [pid, cpu] of pins) pin(pid, cpu);
  return { configs, unavailable, loaders };
}

async function run() {
  const only = new Set(String(values.only).split(",").map((s) => s.trim()));
  const dir = mkdtempSync("/tmp/meta-bench-");
  const children = new Children();
  const cleanup = () => {
    children.killNow();
    rmSync(dir, { recursive: true, force: true });
  };
  process.on("exit", cleanup);
  for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
    process.on(signal, () => {
      process.stderr.write(`\n${signal}: stopping the metaservers, redis-server and the load…\n`);
      cleanup();
      process.exit(130);
    });
  }
  try {
    const busy = () => {
      const m = machineSeconds();
      return m.processes + m.softirq + m.steal;
    };
    const busy0 = busy();
    await Bun.sleep(IDLE_SAMPLE_MS);
    const busyBefore = ((busy() - busy0) / ((IDLE_SAMPLE_MS / 1000) * cpus)) * 100;
    const { configs, unavailable, loaders } = await startAll(children, dir, only);
    const cases = configs.flatMap((config) => WORKLOADS.map((workload) => ({ config, workload })));
    const progress = (what: string) => process.stderr.write(`meta bench: ${what}\n`);
    for (const c of cases) {
      progress(`warm-up ${c.config.label} ${c.workload}`);
      await measure(c.config, c.workload, loaders, warmup);
    }
    const measured = new Map<string, Round[]>(cases.map((c) => [`${c.config.key}/${c.workload}`, []]));
    for (let round = 0; round < rounds; round++) {
      for (let i = 0; i < cases.length; i++) {
        const c = cases[(round + i) % cases.length] as (typeof cases)[number];
        const r = await measure(c.config, c.workload, loaders, seconds);
        progress(`round ${round + 1}/${rounds} ${c.config.label} ${c.workload}: ${Math.round(r.rate)}/s${errorCount(r.errors) > 0 ? `, ${errorCount(r.errors)} errors` : ""}`);
        measured.get(`${c.config.key}/${c.workload}`)?.push(r);
      }
    }
    const rows: Row[] = cases.map(({ config, workload }) => {
      const rs = measured.get(`${config.key}/${workload}`) ?? [];
      const parts = Object.keys(rs[0]?.cpuPct ?? {});
      const cpuUsPerOp = median(rs.map((r) => r.cpuUsPerOp));
      return {
        config: config.key,
        label: config.label,
        workload,
        metas: config.targets.length,
        rate: median(rs.map((r) => r.rate)),
        low: Math.min(...rs.map((r) => r.rate)),
        high: Math.max(...rs.map((r) => r.rate)),
        p50: median(rs.map((r) => r.p50)),
        p99: median(rs.map((r) => r.p99)),
        errors: rs.reduce<Record<string, number>>((e, r) => sumErrors(e, r.errors), {}),
        misses: rs.reduce((s, r) => s + r.misses, 0),
        cpuPct: Object.fromEntries(parts.map((p) => [p, median(rs.map((r) => r.cpuPct[p] ?? Number.NaN))])),
        machineBusyPct: median(rs.map((r) => r.machineBusyPct)),
        cpuUsPerOp,
        cpuCeiling: (cpus * 1e6) / cpuUsPerOp,
        rounds: rs,
      };
    });
    return { busyBefore, rows, unavailable };
  } finally {
    await children.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

function goals(rows: Row[]): Goal[] {
  const row = (config: ConfigKey, workload: Workload) => rows.find((r) => r.config === config && r.workload === workload);
  const flagged = (r: Row) => (errorCount(r.errors) > 0 ? ` (${errorCount(r.errors)} errors)` : "");
  const out: Goal[] = [];
  for (const c of CONFIGS) {
    for (const [workload, goal] of [["lookups", GOAL.lookupsPerS], ["heartbeats", GOAL.heartbeatsPerS]] as const) {
      const r = row(c.key, workload);
      if (r === undefined) continue;
      const per = r.rate / r.metas;
      out.push({ what: `${c.label.replace(" (sum)", "")} ${workload}/s per metaserver${flagged(r)}`, value: per, goal: `≥ ${goal.toLocaleString("en-US")}`, met: per >= goal });
    }
  }
  for (const workload of ["lookups", "heartbeats"] as const) {
    const [one, two] = [row("redis1", workload), row("redis2", workload)];
    if (one === undefined || two === undefined) continue;
    const ratio = two.rate / one.rate;
    // What 2 metaservers could reach here: the machine's CPUs at the Redis ×2 cost per operation.
    const maxRatio = two.cpuCeiling / one.rate;
    const cpusNeeded = (GOAL.redisScale * one.rate * two.cpuUsPerOp) / 1e6;
    out.push({
      what: `Redis ×2 ÷ Redis ×1 ${workload}/s`,
      value: ratio,
      goal: `≥ ${GOAL.redisScale}×`,
      met: ratio >= GOAL.redisScale,
      ratio: true,
      note:
        `Redis ×1 kept the machine ${one.machineBusyPct.toFixed(0)} % busy, Redis ×2 ${two.machineBusyPct.toFixed(0)} %; at Redis ×2's ` +
        `${two.cpuUsPerOp.toFixed(0)} µs of CPU per operation (its processes; softirq left out) ${cpus} CPUs allow at most ${Math.round(two.cpuCeiling).toLocaleString("en-US")}/s ` +
        `= ${maxRatio.toFixed(2)}× Redis ×1; ${GOAL.redisScale}× would take ${cpusNeeded.toFixed(1)} CPUs`,
    });
  }
  return out;
}

function print(result: Awaited<ReturnType<typeof run>>, info: ReturnType<typeof machine>, judged: Goal[]): void {
  const int = (x: number) => (Number.isFinite(x) ? Math.round(x).toLocaleString("en-US") : "—");
  const ms = (x: number) => (!Number.isFinite(x) ? "—" : x < 10 ? x.toFixed(2) : x.toFixed(1));
  const pct = (x: number | undefined) => (x === undefined || !Number.isFinite(x) ? "—" : `${x.toFixed(0)}`);
  console.log(
    `metaserver benchmark — ${clients} clients (HTTP/1.1 keep-alive, one request in flight each) from ${loaderCount} load process${loaderCount > 1 ? "es" : ""}; ` +
      `${seconds} s per case after ${warmup} s of warm-up, ${rounds} round${rounds > 1 ? "s" : ""} rotated; medians over the rounds, [lowest–highest round]`,
  );
  console.log(`machine: ${info.cpus} CPUs (${info.model}), Linux ${info.kernel}, bun ${info.bun}; ${info.stoa}; redis-server ${info.redis ?? "not installed"}`);
  const noisy = result.busyBefore > BUSY_BEFORE_WARN_PCT ? " — OTHER WORK was running: the figures are lower than this machine's, see the 'other' column" : "";
  console.log(`busy before the run (nothing of this bench running): ${result.busyBefore.toFixed(0)} % of all CPUs${noisy}${values.pin ? "; pinned: the first metaserver on CPU 0 alone, the second, redis-server and the load on CPU 1" : "; unpinned"}`);
  console.log(
    `lookups: GET /v1/publishers?name= one of ${publishers.toLocaleString("en-US")} pending publishers at random · heartbeats: POST …/heartbeat, one publisher per client · ` +
      "registrations: POST /v1/publishers of a fresh name, then its DELETE (2 requests each; p50/p99 of the POST)",
  );
  const head = (w: string) => [`${w}/s`.padStart(16), "[low–high]".padEnd(17), "p50 ms".padStart(6), "p99 ms".padStart(6)];
  console.log(`\n  ${"config".padEnd(15)} ${WORKLOADS.flatMap(head).join(" ")} ${"errors".padStart(6)}`);
  const labels = [...new Set(result.rows.map((r) => r.label))];
  for (const label of labels) {
    const mine = result.rows.filter((r) => r.label === label);
    const cells = WORKLOADS.flatMap((w) => {
      const r = mine.find((x) => x.workload === w);
      if (r === undefined) return ["—".padStart(16), "".padEnd(17), "".padStart(6), "".padStart(6)];
      return [int(r.rate).padStart(16), `[${int(r.low)}–${int(r.high)}]`.padEnd(17), ms(r.p50).padStart(6), ms(r.p99).padStart(6)];
    });
    const errors = mine.reduce((s, r) => s + errorCount(r.errors), 0);
    console.log(`  ${label.padEnd(15)} ${cells.join(" ")} ${String(errors).padStart(6)}${errors > 0 ? "  ERRORS" : ""}`);
  }
  for (const [config, why] of Object.entries(result.unavailable)) console.log(`  ${labelOf(config as ConfigKey)}: not available (${why})`);
  for (const r of result.rows) {
    if (errorCount(r.errors) > 0) console.log(`  ${r.label} ${r.workload}: errors by status ${Object.entries(r.errors).map(([s, n]) => `${s} ×${n}`).join(", ")}`);
    if (r.misses > 0) console.log(`  ${r.label} ${r.workload}: ${r.misses} lookups found no publisher`);
  }

  if (result.rows.length > 0) {
    const parts = ["meta A", "meta B", "redis-server", "load", "softirq", "steal", "other"];
    console.log(`\n  where the CPU went: % of one CPU over the case, medians over the rounds (softirq: mostly loopback TCP delivery; steal: taken by the hypervisor;`);
    console.log(`  other: every other process, this bench's idle ones included); machine busy = share of all ${info.cpus} CPUs; CPU µs/op = the case's processes ÷ operations; CPU ceiling = ${info.cpus} CPUs ÷ that,`);
    console.log("  an upper bound: softirq and steal are left out (part of softirq shows in the processes' own time on this kernel, so the columns may add up to more than machine busy)");
    console.log(`  ${"config".padEnd(15)} ${"workload".padEnd(13)} ${parts.map((p) => p.padStart(p.length > 8 ? 12 : 8)).join(" ")} ${"machine busy".padStart(12)} ${"CPU µs/op".padStart(9)} ${"CPU ceiling/s".padStart(13)}`);
    for (const r of result.rows) {
      console.log(
        `  ${r.label.padEnd(15)} ${r.workload.padEnd(13)} ${parts.map((p) => pct(r.cpuPct[p]).padStart(p.length > 8 ? 12 : 8)).join(" ")} ${`${r.machineBusyPct.toFixed(0)} %`.padStart(12)} ${r.cpuUsPerOp.toFixed(0).padStart(9)} ${int(r.cpuCeiling).padStart(13)}`,
      );
    }
  }
  const loadHot = result.rows.filter((r) => (r.cpuPct.load ?? 0) / loaderCount >= 90);
  if (loadHot.length > 0) console.log(`  the load process${loaderCount > 1 ? "es were" : " was"} at ≥ 90 % of a CPU in: ${loadHot.map((r) => `${r.label} ${r.workload}`).join(", ")} — the generator may be the limit there (--loaders 2)`);

  console.log(`\n  ${"goal (this run's figures)".padEnd(58)} ${"measured".padStart(9)}  ${"goal".padEnd(9)}`);
  for (const g of judged) {
    const value = g.ratio ? `${g.value.toFixed(2)}×` : int(g.value);
    console.log(`  ${g.what.padEnd(58)} ${value.padStart(9)}  ${g.goal.padEnd(9)} ${g.met === null ? "n/a" : g.met ? "met" : "MISSED"}`);
    if (g.note !== undefined) console.log(`    ${g.note}`);
  }
  if (judged.length === 0) console.log("  no goals judged (no configuration ran)");
}

const unknown = String(values.only).split(",").map((s) => s.trim()).filter((k) => !CONFIGS.some((c) => c.key === k));
if (unknown.length > 0) throw new Error(`--only ${unknown.join(",")}: not a configuration; choose from ${CONFIGS.map((c) => c.key).join(",")}`);
if (loaderCount > clients) throw new Error(`--loaders ${loaderCount} is more than --clients ${clients}: each load process needs a client`);
if (!existsSync(stoaBin)) throw new Error(`${stoaBin} is missing: run 'bun run build' first (or give --stoa)`);
if (!(seconds > 0 && seconds <= MAX_CASE_SECONDS) || !(warmup > 0 && warmup <= MAX_CASE_SECONDS)) {
  throw new Error(`--seconds and --warmup must be from 0 to ${MAX_CASE_SECONDS}: the lookup targets are pending registrations, removed ${PENDING_EXPIRY_MS / 1000} s after they were registered`);
}
if (publishers + 2 * clients > NON_ADMIN_MAX_PENDING) throw new Error(`--publishers at most ${NON_ADMIN_MAX_PENDING - 2 * clients}: all pending registrations of non-admin writers together are limited to ${NON_ADMIN_MAX_PENDING}`);
if (sourceAddresses.length > 254) throw new Error(`--publishers ${publishers} would need more than 254 source addresses at ${WRITER_MAX_PENDING} each`);
const info = machine();
const result = await run();
const judged = goals(result.rows);
if (values.json) {
  console.log(
    JSON.stringify({
      machine: { ...info, busyBeforePct: result.busyBefore },
      clients,
      seconds,
      warmup,
      rounds,
      publishers,
      loaders: loaderCount,
      pinned: values.pin,
      rows: result.rows,
      unavailable: result.unavailable,
      goals: judged,
    }),
  );
} else {
  print(result, info, judged);
}
