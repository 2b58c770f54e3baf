/**
 * Scale: 1,000 publishers behind ONE compiled gateway (`stoa gateway --workers 2`) and 1,000
 * concurrent subscribers spread over them (one each), all served, with the gateway's memory
 * bounded. The publishers live in one fixture process (test/fixtures/e2e-many-publishers.ts,
 * library publishers on Unix sockets in the gateway's run dir); the subscribers are plain
 * WebSockets of this test process on the gateway's service port, decoding the CBOR frames.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { controlRequest } from "../../src/gateway/control.ts";
import { safeDecodeServiceFrame } from "../../src/stream/protocol.ts";
import { freePorts, requireBinary, rssKiB, Scope } from "../fixtures/e2e-helpers.ts";
import { eventually } from "../helpers/eventually.ts";

const PUBLISHERS = 1_000;
/** One value per publisher this often: 10,000 values/s through the gateway in all. */
const EVERY_MS = 100;
/** Subscribers connecting at once; the rest wait, so the listen backlog never overflows. */
const CONNECT_BATCH = 100;
/**
 * Memory bounds for the gateway process (VmRSS: main thread + one Bun Worker), measured on the
 * 2-vCPU dev VM with Bun 1.4.5: 55 MiB idle, 65-66 MiB with the 1,000 subscribers spliced to
 * their publishers (11-12 KiB per subscriber: two sockets, their pipe state and buffers), flat
 * over 5 s of streaming, 72 MiB once all 1,000 closed and reconnected (71 MiB after four such
 * rounds: no leak per connection). The bounds give 4x the measured total and ~8x the measured
 * growth per subscriber (room for allocator and GC timing on another machine) and still catch
 * a leak or a per-connection buffer of 150 KiB or more:
 */
const MAX_RSS_KIB = 300 * 1024;
const MAX_GROWTH_PER_SUBSCRIBER_KIB = 150;
/** Sockets the three processes hold at once: 3,000 listeners + 1,000 accepted in the fixture. */
const MIN_OPEN_FILES = 8_192;

const FIXTURE = join(import.meta.dir, "..", "fixtures", "e2e-many-publishers.ts");
const scope = new Scope();
const sockets: WebSocket[] = [];

afterAll(async () => {
  for (const ws of sockets) ws.close();
  await scope.cleanup(5_000);
});

function pubIdOf(i: number): string {
  return `p${String(i).padStart(4, "0")}`;
}

function openFilesLimit(): number {
  const m = /^Max open files\s+(\d+|unlimited)/m.exec(readFileSync("/proc/self/limits", "utf8"));
  return m?.[1] === undefined || m[1] === "unlimited" ? Number.POSITIVE_INFINITY : Number(m[1]);
}

interface Sub {
  values: number;
  lastSeq: number;
  /** Anything wrong this subscriber saw: out-of-order seq, a wrong value, a gap, a close. */
  problems: string[];
}

function subscribe(port: number, i: number): Promise<Sub> {
  const pubId = pubIdOf(i);
  const sub: Sub = { values: 0, lastSeq: 0, problems: [] };
  const ws = new WebSocket(`ws://127.0.0.1:${port}/pub/${pubId}`);
  ws.binaryType = "arraybuffer";
  sockets.push(ws);
  ws.onmessage = (e: MessageEvent) => {
    const decoded = safeDecodeServiceFrame(e.data as ArrayBuffer);
    if (!decoded.ok) return void sub.problems.push(`undecodable frame: ${decoded.error.message}`);
    const msg = decoded.value;
    if (msg.t === "hello") return;
    if (msg.t === "gap") return void sub.problems.push(`gap of ${msg.dropped}`);
    if (sub.lastSeq !== 0 && msg.seq !== sub.lastSeq + 1) sub.problems.push(`seq ${msg.seq} after ${sub.lastSeq}`);
    const value = msg.value as { i?: unknown };
    if (value.i !== i) sub.problems.push(`value of publisher ${String(value.i)} on ${pubId}`);
    sub.lastSeq = msg.seq;
    sub.values++;
  };
  return new Promise((resolve, reject) => {
    ws.onopen = () => resolve(sub);
    ws.onerror = () => reject(new Error(`cannot subscribe to ${pubId}`));
    ws.onclose = (e) => sub.problems.push(`closed ${e.code} ${e.reason}`);
  });
}

/** Opens one subscriber per publisher, CONNECT_BATCH at a time. */
async function subscribeAll(port: number): Promise<{ subs: Sub[]; sockets: WebSocket[] }> {
  const subs: Sub[] = [];
  const from = sockets.length;
  for (let start = 1; start <= PUBLISHERS; start += CONNECT_BATCH) {
    const batch = Array.from({ length: Math.min(CONNECT_BATCH, PUBLISHERS - start + 1) }, (_, k) => subscribe(port, start + k));
    subs.push(...(await Promise.all(batch)));
  }
  return { subs, sockets: sockets.slice(from) };
}

/** Waits until every subscriber has at least `n` values; names the laggards on timeout. */
async function everyoneHas(subs: Sub[], n: number, timeoutMs = 30_000): Promise<void> {
  await eventually(`every subscriber to receive ${n} values`, () => subs.every((x) => x.values >= n), { timeoutMs, everyMs: 50 }).catch(
    (err: unknown) => {
      const behind = subs.map((x, i) => [pubIdOf(i + 1), x.values] as const).filter(([, v]) => v < n);
      throw new Error(`${String(err)}: ${behind.length} behind, e.g. ${JSON.stringify(behind.slice(0, 5))}`);
    },
  );
}

function problemsOf(subs: Sub[]): string[] {
  return subs.flatMap((x, i) => x.problems.map((p) => `${pubIdOf(i + 1)}: ${p}`));
}

describe("one gateway, 1,000 publishers, 1,000 subscribers", () => {
  test(
    "every subscriber is served in order through the gateway, again after all reconnect, with the gateway's memory bounded",
    async () => {
      requireBinary();
      expect(openFilesLimit(), "raise the open files limit (ulimit -n) to run the scale test").toBeGreaterThanOrEqual(MIN_OPEN_FILES);
      const runDir = scope.tempDir(); // /tmp/e2-XXXXXX/pub/p0001/service.sock: far below 107 bytes
      const [s = 0, t = 0, p = 0] = freePorts(3);
      const gw = scope.stoa("gateway", [
        "gateway", "--listen", "127.0.0.1", "--ports", `${s},${t},${p}`, "--run-dir", runDir, "--workers", "2", "--log-level", "warn",
      ]);
      await gw.waitFor("out", /^gateway: .* 2 worker\(s\)/m, 15_000);

      const pubs = scope.spawn("publishers", [process.execPath, FIXTURE, runDir, String(PUBLISHERS), String(EVERY_MS)]);
      await pubs.waitFor("out", new RegExp(`^ready ${PUBLISHERS}$`, "m"), 30_000);
      await Bun.sleep(500);
      const rssBefore = rssKiB(gw.pid);

      // Round 1: all connect, all get values, and keep getting them while they all stream.
      const first = await subscribeAll(s);
      expect(first.subs).toHaveLength(PUBLISHERS);
      await everyoneHas(first.subs, 2);
      expect((await controlRequest(runDir, { type: "health" })).connections_open).toBeGreaterThanOrEqual(PUBLISHERS);
      const base = first.subs.map((x) => x.values);
      await Bun.sleep(2_000); // ~20 more values each: 20,000 frames through the gateway
      const rssStreaming = rssKiB(gw.pid);
      expect(first.subs.filter((x, i) => x.values < (base[i] ?? 0) + 5)).toHaveLength(0);
      expect(problemsOf(first.subs)).toEqual([]);

      // Round 2: everyone leaves; the gateway lets go of every connection; everyone comes back.
      for (const ws of first.sockets) ws.close();
      await eventually("the gateway to close every connection", async () => (await controlRequest(runDir, { type: "health" })).connections_open === 0, {
        timeoutMs: 10_000,
      });
      const second = await subscribeAll(s);
      await everyoneHas(second.subs, 2);
      const rssAgain = rssKiB(gw.pid);
      expect(problemsOf(second.subs)).toEqual([]);

      const growthPerSub = (Math.max(rssStreaming, rssAgain) - rssBefore) / PUBLISHERS;
      console.log(
        `gateway RSS: ${mib(rssBefore)} before, ${mib(rssStreaming)} with ${PUBLISHERS} subscribers streaming, ` +
          `${mib(rssAgain)} after all reconnected (${growthPerSub.toFixed(1)} KiB per subscriber)`,
      );
      expect(Math.max(rssStreaming, rssAgain)).toBeLessThan(MAX_RSS_KIB);
      expect(growthPerSub).toBeLessThan(MAX_GROWTH_PER_SUBSCRIBER_KIB);
      expect(gw.running).toBe(true);
      expect(pubs.running).toBe(true);
      // Nothing went wrong enough to log at warn level, on either side.
      expect(gw.err).toBe("");
      expect(pubs.err).toBe("");
    },
    90_000,
  );
});

function mib(kib: number): string {
  return `${(kib / 1024).toFixed(1)} MiB`;
}
