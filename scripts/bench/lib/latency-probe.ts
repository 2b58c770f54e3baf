/**
 * The one-way latency probe of the hotlink benchmark and of its bare chains (lib/chain-latency.ts):
 * the same code measures stoa's paths and their floors. It writes HLNK frames into a path's first
 * Unix socket with the first 8 payload bytes a little-endian `Bun.nanoseconds()` stamp, and takes
 * the time each arrives whole at the path's last socket (the caller feeds what that socket reads
 * to `receive`); one frame in flight. The chains' hops copy bytes, so frames pass them unchanged.
 *
 * `warmLatencyProbe` runs the probe's own code first, through an in-process Unix socket: its hot
 * functions are compiled before anything is measured, so that the probe's compiler does not run
 * during the measured frames of whichever path comes first (the probe is the same process for
 * stoa's path and for the chain's).
 */
import type { Socket } from "bun";
import { mkdtempSync, rmSync } from "node:fs";
import { join } from "node:path";
import { HlnkDecoder, encodeHlnk } from "../../../src/hotlink/hlnk.ts";

/** Frames `warmLatencyProbe` sends, 1 KB each: past the optimising compilers' thresholds. */
export const PROBE_WARM_UP_FRAMES = 20_000;

export class LatencyProbe {
  readonly #channel: string;
  readonly #decoder = new HlnkDecoder();
  #arrived: ((ns: number) => void) | null = null;
  #writer: Socket<undefined> | null = null;
  #writable: (() => void) | null = null;

  /** `channel`: the HLNK path the frames carry (the IPC channel they go through). */
  constructor(channel: string) {
    this.#channel = channel;
  }

  /** Bytes read at the path's end; call it from that socket's `data`. */
  receive(chunk: Uint8Array): void {
    const now = Bun.nanoseconds();
    for (const f of this.#decoder.push(chunk)) {
      const stamp = Number(new DataView(f.payload.buffer, f.payload.byteOffset, 8).getBigUint64(0, true));
      this.#arrived?.(now - stamp);
    }
  }

  /** Connects the writing side to the Unix socket at `path` (replacing, and ending, the previous one). */
  async connect(path: string): Promise<void> {
    this.#writer?.end();
    this.#writer = await Bun.connect<undefined>({ unix: path, socket: { data() {}, drain: () => this.#writable?.() } });
  }

  /** Ends the writing side. */
  end(): void {
    this.#writer?.end();
    this.#writer = null;
  }

  /** Sends one frame with a `size`-byte payload; resolves with its one-way latency in ns. */
  async one(size: number): Promise<number> {
    const writer = this.#writer;
    if (writer === null) throw new Error("the probe is not connected");
    const payload = new Uint8Array(size);
    const done = new Promise<number>((resolve) => (this.#arrived = resolve));
    new DataView(payload.buffer).setBigUint64(0, BigInt(Bun.nanoseconds()), true);
    const frame = encodeHlnk({ path: this.#channel, etag: "", seq: 0n, payload });
    // A short write waits for drain: spinning here would starve the path's processes on a pinned CPU.
    for (let at = 0; at < frame.byteLength; ) {
      at += Math.max(0, writer.write(frame.subarray(at)));
      if (at < frame.byteLength) await new Promise<void>((r) => (this.#writable = r));
    }
    return done;
  }
}

let warmed = false;

/** Runs the probe's code `PROBE_WARM_UP_FRAMES` times through an in-process Unix socket, once per process. */
export async function warmLatencyProbe(channel: string): Promise<void> {
  if (warmed) return;
  warmed = true;
  const dir = mkdtempSync("/tmp/hlb-probe-");
  const probe = new LatencyProbe(channel);
  const server = Bun.listen<undefined>({ unix: join(dir, "loop.sock"), socket: { data: (_s, chunk) => probe.receive(chunk) } });
  try {
    await probe.connect(join(dir, "loop.sock"));
    for (let i = 0; i < PROBE_WARM_UP_FRAMES; i++) await probe.one(1000);
  } finally {
    probe.end();
    server.stop(true);
    rmSync(dir, { recursive: true, force: true });
  }
}
