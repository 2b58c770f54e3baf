import { afterEach, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { encode } from "../../src/core/codec.ts";
import { StoaError } from "../../src/core/errors.ts";
import { encodeFrame } from "../../src/core/frame.ts";
import { createLogger } from "../../src/core/log.ts";
import { pathProblem } from "../../src/hotlink/acl.ts";
import { answerControlMessage, type ControlTarget, hotlinkControlRequest, startHotlinkControl } from "../../src/hotlink/control.ts";
import {
  type DaemonStatus,
  MAX_CONTROL_ANSWER_BYTES,
  controlAnswerCodec,
  controlRequestCodec,
} from "../../src/hotlink/protocol.ts";
import type { IpcSpec } from "../../src/hotlink/ipc.ts";
import type { TunnelSpec } from "../../src/hotlink/tunnel.ts";
import { type Prng, fuzzSeed, mutate, prng } from "../helpers/prng.ts";

const ITERATIONS = 100_000;
const log = createLogger({ level: "error", stream: { write: () => {} } });
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/**
 * A daemon stand-in with the real daemon's rules for what it is asked (duplicates, unknown
 * channels) and no sockets, so random specs bind nothing.
 */
class FakeDaemon implements ControlTarget {
  readonly tunnels = new Map<string, TunnelSpec>();
  readonly ipc = new Map<string, IpcSpec>();
  calls = 0;

  addTunnel(spec: TunnelSpec): void {
    this.#check(spec.channel);
    this.tunnels.set(spec.channel, spec);
  }

  async addIpc(spec: IpcSpec): Promise<void> {
    this.#check(spec.channel);
    this.ipc.set(spec.channel, spec);
  }

  async remove(channel: string): Promise<boolean> {
    this.calls++;
    return this.tunnels.delete(channel) || this.ipc.delete(channel);
  }

  channelKind(channel: string): "tunnel" | "ipc" | null {
    return this.tunnels.has(channel) ? "tunnel" : this.ipc.has(channel) ? "ipc" : null;
  }

  status(): DaemonStatus {
    return {
      user: "alice",
      server: "ws://127.0.0.1:1/v1/hotlink",
      connected: false,
      tunnels: [...this.tunnels.values()].map((t) => ({
        channel: t.channel,
        listen: `${t.host}:${t.port}`,
        port: t.port,
        peer: t.peer ?? null,
        app: false,
        out: null,
        in: null,
        held: 0,
        origin: "control" as const,
      })),
      ipc: [...this.ipc.values()].map((c) => ({
        channel: c.channel,
        path: c.path,
        apps: 0,
        out: null,
        in: [{ sid: "s1", from: undefined, delivered: 0, bytes: 0, duplicates: 0, rung: "relay" as const }],
        held: 0,
        origin: "control" as const,
      })),
      sessions: { outgoing: 0, incoming: 0 },
      counters: {
        relay: { txPackets: 0, txBytes: 0, rxPackets: 0, rxBytes: 0 },
        direct: { txPackets: 0, txBytes: 0, rxPackets: 0, rxBytes: 0, offers: 0, answers: 0, failures: 0, fallbacks: 0 },
        ice: { txPackets: 0, txBytes: 0, rxPackets: 0, rxBytes: 0, offers: 0, answers: 0, failures: 0, fallbacks: 0 },
        turn: { txPackets: 0, txBytes: 0, rxPackets: 0, rxBytes: 0 },
        latency_us: { send_avg: 0, send_max: 0, write_avg: 0, write_max: 0 },
      },
      rungs: ["tls" as const, "ice" as const],
      ice_servers: ["stun:10.0.0.1:3478"],
      link: { tx: 0, txBytes: 0, rx: 0, rxBytes: 0 },
    };
  }

  #check(channel: string): void {
    if (this.tunnels.has(channel) || this.ipc.has(channel)) throw new StoaError("exists", `channel ${channel} is already declared`);
    // Keep the fake small: forget everything now and then.
    if (this.tunnels.size + this.ipc.size > 50) {
      this.tunnels.clear();
      this.ipc.clear();
    }
  }
}

const CHANNELS = ["alice/x", "alice/mpc/run1/0_to_1", "", "a//b", "..", "a/./b", "ü/€", "x".repeat(5000), "a\u0000b"];

function randomSpec(rng: Prng): string {
  if (rng.int(2) === 0) return `alice/c${rng.int(100)}=${rng.pick(["127.0.0.1", "[::1]", "localhost"])}:${rng.int(65536)}${rng.pick(["", "@bob"])}`;
  const channel = rng.pick(CHANNELS);
  if (rng.int(4) === 0) return `${channel}=${rng.pick(["unix:/tmp/h.sock", "unix:", "unix:rel.sock", `unix:/${"p".repeat(200)}`, "tcp:1"])}`;
  const host = rng.pick(["127.0.0.1", "[::1]", "", "[", "[::1", "host.example", "h".repeat(300)]);
  const port = rng.pick(["0", "1", "65535", "65536", "-1", "x", "", "000080"]);
  const peer = rng.pick(["", "@bob", "@Bob", "@", "@b@c.org", `@${"b".repeat(70)}`]);
  return rng.int(10) === 0 ? rng.pick(["=", "no-equals", "a=b=c"]) : `${channel}=${host}:${port}${peer}`;
}

function randomRequest(rng: Prng): unknown {
  switch (rng.int(9)) {
    case 0:
    case 7:
    case 8:
      return { type: "tunnel", spec: randomSpec(rng) };
    case 1:
      return { type: "ipc", spec: randomSpec(rng) };
    case 2:
      return { type: "ls", extra: rng.int(3) === 0 ? 1 : undefined };
    case 3:
      return { type: "close", channel: rng.pick(CHANNELS) };
    case 4:
      return { type: rng.pick(["nope", 7, null, "LS"]) };
    case 5:
      return { type: "tunnel", spec: rng.pick([5, null, "", "x".repeat(70_000)]) };
    default:
      return [1, "close", { channel: "alice/x" }];
  }
}

describe("control socket fuzzing", () => {
  test(`${ITERATIONS} random and mutated requests: every answer is a valid message, ok only for valid requests`, async () => {
    const seed = fuzzSeed(0xc0471);
    const rng = prng(seed);
    const daemon = new FakeDaemon();
    const outcomes = { ok: 0, failed: 0 };
    let i = 0;
    try {
      for (; i < ITERATIONS; i++) {
        const base = encode(randomRequest(rng));
        const input = rng.int(10) < 6 ? mutate(rng, base) : rng.int(3) > 0 ? base : rng.bytes(rng.int(64));
        const bytes = await answerControlMessage(daemon, input, log); // never throws
        expect(bytes.byteLength).toBeLessThanOrEqual(MAX_CONTROL_ANSWER_BYTES);
        const answer = controlAnswerCodec.decode(bytes);
        if (!answer.ok) {
          outcomes.failed++;
          expect(answer.code).not.toBe("internal");
          continue;
        }
        outcomes.ok++;
        // An ok answer means the request was one, and what it declared obeys the daemon's rules.
        const request = controlRequestCodec.decode(input);
        expect(answer.type).toBe(request.type);
        if (answer.type === "tunnel") expect(pathProblem(answer.tunnel.channel)).toBeNull();
        if (answer.type === "ipc") expect(pathProblem(answer.ipc.channel)).toBeNull();
        if (answer.type === "close") expect(daemon.channelKind(answer.channel)).toBeNull();
      }
    } catch (err) {
      throw new Error(`seed ${seed} iteration ${i}: ${String(err)}`);
    }
    expect(outcomes.ok).toBeGreaterThan(ITERATIONS / 20);
    expect(outcomes.failed).toBeGreaterThan(ITERATIONS / 20);
  }, 120_000); // 100,000 answers: seconds unloaded, generous for a loaded 2-core machine

  test("mutated request streams on real connections: the server answers or hangs up, and keeps serving", async () => {
    const dir = mkdtempSync(join(tmpdir(), "hl-ctlfz-"));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const control = await startHotlinkControl(join(dir, "alice.sock"), new FakeDaemon(), log);
    cleanups.push(() => control.close());
    const rng = prng(fuzzSeed(0xf4a2));
    let answered = 0;
    for (let c = 0; c < 300; c++) {
      const frames = Array.from({ length: 1 + rng.int(20) }, () => encodeFrame(encode(randomRequest(rng))));
      const stream = mutate(rng, Buffer.concat(frames));
      const done = Promise.withResolvers<void>();
      const sock = await Bun.connect({
        unix: control.path,
        allowHalfOpen: true,
        socket: {
          data: (_s, d) => {
            answered += d.byteLength;
          },
          end: () => done.resolve(),
          close: () => done.resolve(),
          error: () => done.resolve(),
        },
      });
      let rest: Uint8Array = stream;
      let closed = false;
      void done.promise.then(() => (closed = true));
      while (rest.byteLength > 0 && !closed) {
        rest = rest.subarray(Math.max(0, sock.write(rest)));
        if (rest.byteLength > 0) await Bun.sleep(1);
      }
      sock.shutdown(); // a half-finished frame at the end is the client's loss; the server answers the rest and hangs up
      const hungUp = await Promise.race([done.promise.then(() => true), Bun.sleep(5_000).then(() => false)]);
      sock.terminate();
      expect(hungUp).toBe(true);
    }
    expect(answered).toBeGreaterThan(0);
    const { status } = await hotlinkControlRequest(control.path, { type: "ls" });
    expect(status.user).toBe("alice");
  }, 60_000);
});
