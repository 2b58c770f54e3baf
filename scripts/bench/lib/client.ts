/**
 * Benchmark clients over Bun sockets: 1 KiB echo round trips and one-way stream throughput.
 * A target is a Unix path or a TCP host:port, optionally with a first chunk to send before
 * measuring (the gateway's `STOA1 <pub_id>\n` prelude).
 */
import type { Socket } from "bun";

export type Target = { unix: string; prelude?: string } | { hostname: string; port: number; prelude?: string };

interface State {
  onData: (chunk: Uint8Array) => void;
  onDrain: () => void;
  onClose: () => void;
}

async function connect(target: Target): Promise<Socket<State>> {
  const state: State = { onData: () => {}, onDrain: () => {}, onClose: () => {} };
  const socket = {
    data: (s: Socket<State>, chunk: Uint8Array) => s.data.onData(chunk),
    drain: (s: Socket<State>) => s.data.onDrain(),
    close: (s: Socket<State>) => s.data.onClose(),
    end: (s: Socket<State>) => s.data.onClose(),
  };
  const s =
    "unix" in target
      ? await Bun.connect<State>({ unix: target.unix, socket, data: state, allowHalfOpen: true })
      : await Bun.connect<State>({ hostname: target.hostname, port: target.port, socket, data: state, allowHalfOpen: true });
  s.setNoDelay(true);
  if (target.prelude) s.write(target.prelude);
  return s;
}

/** Nearest-rank-low percentile of sorted values: sorted[floor((n-1)p)]. */
export function percentile(sorted: number[], p: number): number {
  return sorted[Math.floor((sorted.length - 1) * p)] ?? Number.NaN;
}

/** One connection to an echo peer, kept open so that measurements can be taken in blocks. */
export interface EchoConnection {
  /** Round-trip times in microseconds of `count` 1 KiB messages, in the order taken. */
  measure(count: number): Promise<number[]>;
  close(): void;
}

/** Opens a connection to an echo peer (sending the target's prelude, if any). */
export async function openEcho(target: Target): Promise<EchoConnection> {
  const s = await connect(target);
  const msg = new Uint8Array(1024).fill(0x61);
  return {
    async measure(count) {
      const times: number[] = [];
      for (let i = 0; i < count; i++) {
        const t0 = Bun.nanoseconds();
        await new Promise<void>((resolve, reject) => {
          let got = 0;
          s.data.onData = (chunk) => {
            got += chunk.byteLength;
            if (got >= msg.byteLength) resolve();
          };
          s.data.onClose = () => reject(new Error("connection closed during the round trip"));
          const n = s.write(msg);
          if (n !== msg.byteLength) reject(new Error(`short write of a 1 KiB message (${n})`));
        });
        times.push((Bun.nanoseconds() - t0) / 1000);
      }
      return times;
    },
    close() {
      s.end();
    },
  };
}

/** Round-trip times in microseconds of `count` 1 KiB messages (after `warmup` untimed ones), sorted. */
export async function echoRtt(target: Target, count: number, warmup = 500): Promise<number[]> {
  const conn = await openEcho(target);
  try {
    await conn.measure(warmup);
    return (await conn.measure(count)).sort((a, b) => a - b);
  } finally {
    conn.close();
  }
}

/** Sends `bytes` one way, waits for the sink's count; returns MB/s (10^6 bytes per second). */
export async function throughput(target: Target, bytes: number): Promise<number> {
  const s = await connect(target);
  const chunk = new Uint8Array(256 * 1024).fill(0x62);
  const t0 = Bun.nanoseconds();
  const counted = new Promise<number>((resolve, reject) => {
    const parts: Uint8Array[] = [];
    s.data.onData = (c) => {
      parts.push(new Uint8Array(c));
      const all = Buffer.concat(parts);
      if (all.byteLength >= 8) resolve(Number(all.readBigUInt64BE(0)));
    };
    s.data.onClose = () => reject(new Error("closed before the sink answered"));
  });
  let sent = 0;
  let offset = 0;
  while (sent < bytes) {
    const len = Math.min(chunk.byteLength - offset, bytes - sent);
    const n = s.write(chunk, offset, len);
    if (n < 0) throw new Error("socket closed while sending");
    sent += n;
    offset = (offset + n) % chunk.byteLength;
    if (n < len) await new Promise<void>((resolve) => (s.data.onDrain = resolve));
  }
  s.shutdown();
  const got = await counted;
  const seconds = (Bun.nanoseconds() - t0) / 1e9;
  s.end();
  if (got !== bytes) throw new Error(`sink counted ${got} bytes, sent ${bytes}`);
  return bytes / seconds / 1e6;
}

/** Resolves once something accepts TCP connections on host:port (or after `timeoutMs`, throws). */
export async function waitForPort(hostname: string, port: number, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const s = await Bun.connect({ hostname, port, socket: { data() {} } });
      s.end();
      return;
    } catch {
      if (Date.now() > deadline) throw new Error(`nothing listens on ${hostname}:${port}`);
      await Bun.sleep(50);
    }
  }
}

/** A free TCP port on 127.0.0.1 (bound, read, released). */
export function freePort(): number {
  const l = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = l.port;
  l.stop(true);
  return port;
}
