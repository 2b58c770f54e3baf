#!/usr/bin/env bun
/**
 * An application on one end of a hotlink tunnel for scripts/bench/hotlink.ts, run inside a
 * peer's namespace of the NAT lab (the tunnel's port is on that namespace's own loopback, so the
 * benchmark process cannot connect to it itself):
 *
 *   bun hotlink-app.ts PORT sink BYTES    counts BYTES, then {"t":"done",bytes,firstAt,lastAt,cpuS}
 *   bun hotlink-app.ts PORT source BYTES  waits for the line "go" on stdin, writes BYTES (256 KiB
 *                                         writes, waiting for drain), then {"t":"sent",startAt,endAt,cpuS}
 *   bun hotlink-app.ts PORT ticks         writes a 16-byte record every TICK_MS from its connect
 *                                         on (float64 sendAt, uint32 seq, 4 zero bytes, little-endian)
 *                                         until the line "stop" on stdin, then {"t":"ticks",connectAt,sent}
 *   bun hotlink-app.ts PORT tick-sink     reads records to EOF, then {"t":"arrivals",arrivals:[[sendAt, arriveAt], …]}
 *
 * Each connects to 127.0.0.1:PORT (its daemon's tunnel) and prints {"t":"connected"} first;
 * output is one JSON object a line on stdout (cpuS: CPU seconds the sink spent since its
 * connect, the source since "go"). After its figures a writer half-closes and every mode waits
 * (≤ 2 s) for the other side's end, so the tunnel's sessions end in order. Times are
 * ms on a clock every process on this machine shares: `performance.timeOrigin +
 * performance.now()` (not `process.hrtime`, which in Bun counts from the process's start; see
 * bare-datachannel.ts). `connectAt` is taken just before `Bun.connect`: the tunnel's session
 * opens on that connect. Past DEADLINE_MS it exits 3; a socket error exits 4; bad arguments 2.
 */
import type { Socket } from "bun";

const TICK_MS = 1;
const RECORD = 16;
const CHUNK = 256 * 1024;
const DEADLINE_MS = 300_000;

/** Now, in ms on the clock shared between processes. */
const now = (): number => performance.timeOrigin + performance.now();
const say = (o: Record<string, unknown>): void => void process.stdout.write(`${JSON.stringify(o)}\n`);
/** CPU seconds of this process so far (every thread). */
const cpuS = (): number => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
};

const [portArg, mode, bytesArg] = process.argv.slice(2);
const port = Number(portArg);
const bytes = Number(bytesArg ?? 0);
if (!Number.isInteger(port) || port <= 0 || !["sink", "source", "ticks", "tick-sink"].includes(mode ?? "")) {
  console.error("usage: bun hotlink-app.ts PORT sink|source BYTES | ticks | tick-sink");
  process.exit(2);
}
setTimeout(() => {
  console.error(`hotlink-app ${mode}: still running after ${DEADLINE_MS} ms`);
  process.exit(3);
}, DEADLINE_MS).unref();

/** Lines on stdin, one at a time. */
const stdinLines = (async function* () {
  let buffered = "";
  const decoder = new TextDecoder();
  for await (const chunk of Bun.stdin.stream()) {
    buffered += decoder.decode(chunk, { stream: true });
    for (let nl = buffered.indexOf("\n"); nl >= 0; nl = buffered.indexOf("\n")) {
      yield buffered.slice(0, nl).trim();
      buffered = buffered.slice(nl + 1);
    }
  }
})();
async function waitLine(want: string): Promise<void> {
  for await (const line of stdinLines) if (line === want) return;
  throw new Error(`stdin ended before "${want}"`);
}

let onData: (d: Uint8Array, at: number) => void = () => {};
let onDrain: (() => void) | null = null;
const ended = Promise.withResolvers<void>();
const connectAt = now();
const sock: Socket<undefined> = await Bun.connect({
  hostname: "127.0.0.1",
  port,
  allowHalfOpen: true,
  socket: {
    data: (_s, d) => onData(d, now()),
    drain() {
      const f = onDrain;
      onDrain = null;
      f?.();
    },
    end: () => ended.resolve(),
    close: () => ended.resolve(),
    error(_s, err) {
      console.error(`hotlink-app ${mode}: socket error: ${err.message}`);
      process.exit(4);
    },
  },
});
sock.setNoDelay(true);
say({ t: "connected" });

/** Writes all of `data`, waiting for drain when the socket takes only part. */
async function write(data: Uint8Array): Promise<void> {
  for (let rest = data; rest.byteLength > 0; ) {
    rest = rest.subarray(Math.max(0, sock.write(rest)));
    if (rest.byteLength > 0) await new Promise<void>((r) => (onDrain = r));
  }
}

/** The other side's end, at most 2 s: the tunnel's sessions then close in order. */
const otherEnd = (): Promise<unknown> => Promise.race([ended.promise, Bun.sleep(2000)]);

if (mode === "sink") {
  let got = 0;
  let firstAt = 0;
  let lastAt = 0;
  const cpu0 = cpuS();
  const done = Promise.withResolvers<void>();
  onData = (d, at) => {
    if (got === 0) firstAt = at;
    got += d.byteLength;
    lastAt = at;
    if (got >= bytes) done.resolve();
  };
  await Promise.race([done.promise, ended.promise]);
  say({ t: "done", bytes: got, firstAt, lastAt, cpuS: cpuS() - cpu0 });
  await otherEnd();
  sock.shutdown();
} else if (mode === "source") {
  await waitLine("go");
  const chunk = new Uint8Array(CHUNK).fill(0x5a);
  const cpu0 = cpuS();
  const startAt = now();
  for (let sent = 0; sent < bytes; sent += CHUNK) await write(chunk.subarray(0, Math.min(CHUNK, bytes - sent)));
  say({ t: "sent", startAt, endAt: now(), cpuS: cpuS() - cpu0 });
  sock.shutdown();
  await otherEnd();
} else if (mode === "ticks") {
  const record = new Uint8Array(RECORD);
  const view = new DataView(record.buffer);
  let seq = 0;
  const timer = setInterval(() => {
    view.setFloat64(0, now(), true);
    view.setUint32(8, ++seq, true);
    sock.write(record); // 16 bytes a millisecond: the socket takes them whole
  }, TICK_MS);
  await waitLine("stop");
  clearInterval(timer);
  say({ t: "ticks", connectAt, sent: seq });
  sock.shutdown();
  await otherEnd();
} else {
  const arrivals: [number, number][] = [];
  let partial = new Uint8Array(0);
  onData = (d, at) => {
    const all = partial.byteLength === 0 ? d : Buffer.concat([partial, d]);
    let off = 0;
    for (; off + RECORD <= all.byteLength; off += RECORD) {
      arrivals.push([new DataView(all.buffer, all.byteOffset + off, RECORD).getFloat64(0, true), at]);
    }
    partial = all.slice(off);
  };
  await ended.promise;
  say({ t: "arrivals", arrivals });
  sock.shutdown();
}
process.exit(0);
