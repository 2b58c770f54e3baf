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
 * applications: it writes 1 KiB messages into the first hop's socket with `performance.now()`
 * in the first 8 bytes and takes the time each arrives whole at the last hop's; one message in
 * flight. Warm: `WARMUP` messages on one connection, `SETTLE_AFTER_WARM_UP_MS` idle, then `count`
 * measured. First frames: the
 * first 10 messages of each of `fresh` new connections (each hop connects onward when a
 * connection arrives, as a session's first frame waits for the session to open). Percentiles
 * nearest-rank-low, µs.
 *
 *   bun scripts/bench/lib/chain-latency.ts [--shape relay|direct] [--count 2000] [--fresh 5]
 * prints one JSON object (`ChainLatency`); it runs under the caller's CPU affinity.
 */
import type { Socket } from "bun";
import { mkdtempSync, rmSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { percentile } from "./client.ts";
import { passthroughChain } from "./passthrough.ts";

/** Warm-up messages before the measured ones: the hotlink benchmark's. */
export const WARMUP = 3000;
/**
 * Idle time between the warm-up and the measured messages, here and in the hotlink benchmark: the
 * compilers finish what the warm-up queued (stoa's compiler threads run at idle priority while a
 * daemon is latency-bound, src/core/runtime.ts; a one-in-flight stream leaves them little idle CPU).
 */
export const SETTLE_AFTER_WARM_UP_MS = 1000;
const SIZE = 1024;
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

function figures(us: number[]): LatencyFigures {
  const s = [...us].sort((a, b) => a - b);
  return { n: s.length, p50: percentile(s, 0.5), p99: percentile(s, 0.99), max: s[s.length - 1] ?? Number.NaN };
}

/** Measures the chain of `shape` (see the module header). */
export async function chainLatency(shape: "relay" | "direct", count: number, fresh: number): Promise<ChainLatency> {
  const dir = mkdtempSync("/tmp/hlb-chain-");
  const sinkPath = join(dir, "out.sock");
  const inPath = join(dir, "in.sock");
  let arrived: ((us: number) => void) | null = null;
  let pending = new Uint8Array(0);
  const sink = Bun.listen<undefined>({
    unix: sinkPath,
    socket: {
      data(_s, chunk) {
        const now = performance.now();
        // Reassemble whole messages: a read may hold part of one, or more than one.
        const all = pending.byteLength === 0 ? chunk : Buffer.concat([pending, chunk]);
        let at = 0;
        for (; at + SIZE <= all.byteLength; at += SIZE) {
          const stamp = new DataView(all.buffer, all.byteOffset + at, 8).getFloat64(0, true);
          arrived?.((now - stamp) * 1000);
        }
        pending = all.subarray(at).slice();
      },
    },
  });
  const chain = await passthroughChain(shape === "relay" ? 3 : 2, 0, { unixIn: inPath, unixOut: sinkPath, ...(shape === "direct" ? { tlsAfter: 1 } : {}) });
  const connect = (): Promise<Socket<undefined>> => Bun.connect<undefined>({ unix: inPath, socket: { data() {} } });
  const message = new Uint8Array(SIZE);
  const view = new DataView(message.buffer);
  const one = (sock: Socket<undefined>): Promise<number> =>
    new Promise<number>((resolve) => {
      arrived = resolve;
      view.setFloat64(0, performance.now(), true);
      // 1 KiB into an empty Unix socket buffer is taken whole; anything else is a broken run.
      if (sock.write(message) !== SIZE) throw new Error("a 1 KiB write into the chain was short");
    });
  try {
    const sock = await connect();
    for (let i = 0; i < WARMUP; i++) await one(sock);
    await Bun.sleep(SETTLE_AFTER_WARM_UP_MS);
    const warm: number[] = [];
    for (let i = 0; i < count; i++) warm.push(await one(sock));
    sock.end();
    const first: number[] = [];
    for (let c = 0; c < fresh; c++) {
      const s = await connect();
      for (let i = 0; i < FIRST; i++) first.push(await one(s));
      s.end();
    }
    return { shape, warm: figures(warm), first10: figures(first) };
  } finally {
    await chain.stop();
    sink.stop(true);
    rmSync(dir, { recursive: true, force: true });
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
