#!/usr/bin/env bun
/**
 * One-way latency through a bare pass-through chain of a hotlink path's shape (issue 17): the
 * floor of that shape for any Bun program on this machine, measured with the hotlink benchmark's
 * method so that stoa's figure can be held against it.
 *
 *   relay  — application → Unix socket → hop → TCP → hop → TCP → hop → Unix socket → application
 *            (three processes where stoa has alice's daemon, the relay server and bob's daemon)
 *   direct — application → Unix socket → hop ⇒ TLS ⇒ hop → Unix socket → application
 *
 * The hops are lib/passthrough.ts: they copy bytes and do nothing else. This process is both
 * applications, measuring with the hotlink benchmark's own probe (lib/latency-probe.ts, warmed
 * first): 1 KB HLNK frames stamped with the time they are written into the first hop's socket,
 * timed when they arrive whole at the last hop's; one in flight. Warm: `WARMUP` frames on one
 * connection, `SETTLE_AFTER_WARM_UP_MS` idle, then `count` measured. First frames: the first 10
 * of each of `fresh` new connections (each hop connects onward when a connection arrives, as a
 * session's first frame waits for the session to open). Percentiles nearest-rank-low, µs.
 *
 *   bun scripts/bench/lib/chain-latency.ts [--shape relay|direct] [--count 2000] [--fresh 5]
 * prints one JSON object (`ChainLatency`); it runs under the caller's CPU affinity.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { percentile } from "./client.ts";
import { LatencyProbe, warmLatencyProbe } from "./latency-probe.ts";
import { passthroughChain } from "./passthrough.ts";

/** Warm-up messages before the measured ones, here and in the hotlink benchmark. */
export const WARMUP = 3000;
/**
 * Idle time between the warm-up and the measured messages, here and in the hotlink benchmark: the
 * compilers finish what the warm-up queued (stoa's compiler threads run at idle priority while a
 * daemon is latency-bound, src/core/runtime.ts; a one-in-flight stream leaves them little idle CPU).
 */
export const SETTLE_AFTER_WARM_UP_MS = 1000;
/** The payload of each message: the hotlink benchmark's 1 KB frames. */
const SIZE = 1000;
/** The HLNK path the probe's frames carry (the hops do not read it). */
const CHANNEL = "chain/bench/ipc";
/** Messages measured on each fresh connection: the hotlink benchmark's first frames of a session. */
export const FIRST = 10;

export interface LatencyFigures {
  n: number;
  p50: number;
  p99: number;
  max: number;
}

export interface ChainLatency {
  shape: "relay" | "direct";
  warm: LatencyFigures;
  /** The first 10 messages of each fresh connection, together. */
  first10: LatencyFigures;
}

/** n, P50, P99 and max of `us` (nearest-rank-low). */
export function chainFigures(us: number[]): LatencyFigures {
  const s = [...us].sort((a, b) => a - b);
  return { n: s.length, p50: percentile(s, 0.5), p99: percentile(s, 0.99), max: s[s.length - 1] ?? Number.NaN };
}

/**
 * A chain of `shape` set up and warmed (`WARMUP` messages, `SETTLE_AFTER_WARM_UP_MS` idle), whose
 * measured messages come in blocks: the hotlink benchmark interleaves them with stoa's, so that
 * both see the machine in the same state (its speed drifts within a minute here).
 */
export class ChainRun {
  readonly shape: "relay" | "direct";
  readonly warm: number[] = [];
  readonly #dir: string;
  readonly #inPath: string;
  readonly #probe: LatencyProbe;
  readonly #sink: ReturnType<typeof Bun.listen<undefined>>;
  readonly #chain: Awaited<ReturnType<typeof passthroughChain>>;

  private constructor(shape: "relay" | "direct", dir: string, probe: LatencyProbe, sink: ReturnType<typeof Bun.listen<undefined>>, chain: Awaited<ReturnType<typeof passthroughChain>>) {
    this.shape = shape;
    this.#dir = dir;
    this.#inPath = join(dir, "in.sock");
    this.#probe = probe;
    this.#sink = sink;
    this.#chain = chain;
  }

  static async start(shape: "relay" | "direct"): Promise<ChainRun> {
    const dir = mkdtempSync("/tmp/hlb-chain-");
    await warmLatencyProbe(CHANNEL);
    const probe = new LatencyProbe(CHANNEL);
    const sink = Bun.listen<undefined>({ unix: join(dir, "out.sock"), socket: { data: (_s, chunk) => probe.receive(chunk) } });
    const chain = await passthroughChain(shape === "relay" ? 3 : 2, 0, { unixIn: join(dir, "in.sock"), unixOut: join(dir, "out.sock"), ...(shape === "direct" ? { tlsAfter: 1 } : {}) });
    const run = new ChainRun(shape, dir, probe, sink, chain);
    try {
      await probe.connect(run.#inPath);
      for (let i = 0; i < WARMUP; i++) await run.#us();
      await Bun.sleep(SETTLE_AFTER_WARM_UP_MS);
    } catch (err) {
      await run.stop();
      throw err;
    }
    return run;
  }

  async #us(): Promise<number> {
    return (await this.#probe.one(SIZE)) / 1000;
  }

  /** `count` measured messages, added to `warm`, after `leadIn` unmeasured ones. */
  async block(count: number, leadIn = 0): Promise<void> {
    for (let i = 0; i < leadIn; i++) await this.#us();
    for (let i = 0; i < count; i++) this.warm.push(await this.#us());
  }

  /** The first `FIRST` messages of each of `fresh` new connections. */
  async first(fresh: number): Promise<number[]> {
    const first: number[] = [];
    for (let c = 0; c < fresh; c++) {
      await this.#probe.connect(this.#inPath);
      for (let i = 0; i < FIRST; i++) first.push(await this.#us());
    }
    return first;
  }

  async stop(): Promise<void> {
    this.#probe.end();
    await this.#chain.stop();
    this.#sink.stop(true);
    rmSync(this.#dir, { recursive: true, force: true });
  }
}

/** Measures the chain of `shape` (see the module header): `count` messages in one block. */
export async function chainLatency(shape: "relay" | "direct", count: number, fresh: number): Promise<ChainLatency> {
  const run = await ChainRun.start(shape);
  try {
    await run.block(count);
    const first = await run.first(fresh);
    return { shape, warm: chainFigures(run.warm), first10: chainFigures(first) };
  } finally {
    await run.stop();
  }
}

if (import.meta.main) {
  const { values } = parseArgs({
    options: {
      shape: { type: "string", default: "relay" },
      count: { type: "string", default: "2000" },
      fresh: { type: "string", default: "5" },
    },
  });
  if (values.shape !== "relay" && values.shape !== "direct") {
    console.error("usage: chain-latency.ts [--shape relay|direct] [--count 2000] [--fresh 5]");
    process.exit(2);
  }
  console.log(JSON.stringify(await chainLatency(values.shape, Number(values.count), Number(values.fresh))));
}
