import { afterEach, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startProxy } from "../fixtures/pipe-helpers.ts";

// The source and the slow sink run in their own processes, so the RSS measured here is the
// pipe's (the proxy's) alone: a pipe that buffered instead of pausing would grow it by about
// the size of the transfer.
const TOTAL = 256 * 1024 * 1024;
const MAX_QUEUED = 8 * 1024 * 1024;
const MAX_RSS_GROWTH = 128 * 1024 * 1024;
const SINK_PAUSE_EVERY = 1024 * 1024;
const SINK_PAUSE_MS = 3;

const fixture = (name: string): string => join(import.meta.dir, "..", "fixtures", name);
const owned: (() => void)[] = [];

afterEach(() => {
  for (const release of owned.splice(0).reverse()) release();
});

/** Reads a child's stdout line by line. */
function lineReader(stream: ReadableStream<Uint8Array>): () => Promise<string> {
  const reader = stream.getReader();
  const decoder = new TextDecoder();
  let buffered = "";
  return async () => {
    for (;;) {
      const nl = buffered.indexOf("\n");
      if (nl >= 0) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        return line;
      }
      const { value, done } = await reader.read();
      if (done) throw new Error(`child exited before a full line (got ${JSON.stringify(buffered)})`);
      buffered += decoder.decode(value, { stream: true });
    }
  };
}

describe("backpressure", () => {
  test(
    "streams 256 MiB to a slow reader with every byte intact and memory bounded",
    async () => {
      const dir = mkdtempSync(join(tmpdir(), "stoa-pipe-bp-"));
      owned.push(() => rmSync(dir, { recursive: true, force: true }));
      const sinkPath = join(dir, "sink.sock");

      const sink = Bun.spawn(
        [process.execPath, fixture("pipe-sink.ts"), sinkPath, String(SINK_PAUSE_EVERY), String(SINK_PAUSE_MS)],
        { stdout: "pipe", stderr: "inherit" },
      );
      owned.push(() => sink.kill("SIGKILL"));
      const sinkLine = lineReader(sink.stdout);
      expect(await sinkLine()).toBe("ready");

      const proxy = startProxy(sinkPath);
      owned.push(() => proxy.stop());

      Bun.gc(true);
      const baseline = process.memoryUsage().rss;
      let peak = baseline;
      // What the process holds, not what the collector has yet to free: garbage of the 256 MiB
      // that went through would otherwise count, by how lazily the GC happened to run.
      const sampler = setInterval(() => {
        Bun.gc(true);
        peak = Math.max(peak, process.memoryUsage().rss);
      }, 100);
      owned.push(() => clearInterval(sampler));

      const source = Bun.spawn([process.execPath, fixture("pipe-source.ts"), String(proxy.port), String(TOTAL)], {
        stdout: "pipe",
        stderr: "inherit",
      });
      owned.push(() => source.kill("SIGKILL"));
      const sourceLine = lineReader(source.stdout);

      const pipe = await proxy.nextPipe();
      const [sentLine, receivedLine, stats] = await Promise.all([sourceLine(), sinkLine(), pipe.done]);
      peak = Math.max(peak, process.memoryUsage().rss);
      clearInterval(sampler);

      const sent = JSON.parse(sentLine) as { sent: number; sha256: string };
      const received = JSON.parse(receivedLine) as { received: number; sha256: string; pauses: number };
      expect(sent.sent).toBe(TOTAL);
      expect(received.received).toBe(TOTAL);
      expect(received.sha256).toBe(sent.sha256);
      expect(stats.bytesAtoB).toBe(TOTAL);
      expect(stats.error).toBeNull();

      // The slow reader really pushed back: the pipe had to queue, and queued little.
      expect(received.pauses).toBeGreaterThan(0);
      expect(stats.maxQueuedAtoB).toBeGreaterThan(0);
      expect(stats.maxQueuedAtoB).toBeLessThanOrEqual(MAX_QUEUED);
      expect(peak - baseline).toBeLessThan(MAX_RSS_GROWTH);
      console.log(
        `backpressure: max queued ${(stats.maxQueuedAtoB / 1024).toFixed(0)} KiB, ` +
          `RSS growth ${((peak - baseline) / 1048576).toFixed(1)} MiB, sink pauses ${received.pauses}`,
      );
      expect(await source.exited).toBe(0);
      expect(await sink.exited).toBe(0);
    },
    60_000,
  );
});
