import { describe, expect, test } from "bun:test";
import { createHash, randomBytes } from "node:crypto";
import type { Socket } from "bun";
import { nativeChain, nativeHopProblem } from "../../scripts/bench/lib/passthrough.ts";

// scripts/bench/lib/c-hop.c is the hotlink benchmark's native floor: a figure from it is only
// worth quoting if it carries every byte, in order, both ways — plain and through its TLS.

const why = nativeHopProblem();
if (why !== null) console.warn(`skipping the c-hop tests: ${why} (scripts/test installs libssl-dev as root)`);

const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

/** Sends `up` from a client through a chain of `hops` to a sink that answers with `down`; what each end got. */
async function carry(hops: number, tlsAfter: number | undefined, up: Uint8Array, down: Uint8Array): Promise<{ atSink: Uint8Array; atClient: Uint8Array }> {
  const sinkGot: Uint8Array[] = [];
  let sinkBytes = 0;
  const sinkDone = Promise.withResolvers<void>();
  const sink = Bun.listen<undefined>({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      open: (s) => void writeAll(s, down),
      data: (_s, d) => {
        sinkGot.push(new Uint8Array(d));
        sinkBytes += d.byteLength;
        if (sinkBytes >= up.byteLength) sinkDone.resolve();
      },
    },
  });
  const chain = await nativeChain(hops, sink.port, tlsAfter === undefined ? {} : { tlsAfter });
  if ("reason" in chain) throw new Error(chain.reason);
  const clientGot: Uint8Array[] = [];
  let clientBytes = 0;
  const clientDone = Promise.withResolvers<void>();
  const pending: { rest: Uint8Array | null } = { rest: null };
  const client = await Bun.connect<undefined>({
    hostname: "127.0.0.1",
    port: chain.port,
    socket: {
      data: (_s, d) => {
        clientGot.push(new Uint8Array(d));
        clientBytes += d.byteLength;
        if (clientBytes >= down.byteLength) clientDone.resolve();
      },
      drain: (s) => {
        if (pending.rest !== null) pending.rest = writeSome(s, pending.rest);
      },
    },
  });
  pending.rest = writeSome(client, up);
  try {
    await Promise.all([sinkDone.promise, clientDone.promise]);
  } finally {
    client.end();
    await chain.stop();
    sink.stop(true);
  }
  return { atSink: Buffer.concat(sinkGot), atClient: Buffer.concat(clientGot) };
}

function writeSome(s: Socket<undefined>, bytes: Uint8Array): Uint8Array | null {
  const n = Math.max(0, s.write(bytes));
  return n === bytes.byteLength ? null : bytes.subarray(n);
}

/** The sink's answer, resumed on drain. */
function writeAll(s: Socket<undefined>, bytes: Uint8Array): void {
  let rest: Uint8Array | null = writeSome(s, bytes);
  const timer = setInterval(() => {
    if (rest === null) return clearInterval(timer);
    rest = writeSome(s, rest);
  }, 1);
}

describe.if(why === null)("c-hop, the hotlink benchmark's native floor", () => {
  const up = randomBytes(6 * 1024 * 1024);
  const down = randomBytes(3 * 1024 * 1024 + 17);

  test("three plain hops carry 6 MiB one way and 3 MiB the other, byte for byte", async () => {
    const { atSink, atClient } = await carry(3, undefined, up, down);
    expect(atSink.byteLength).toBe(up.byteLength);
    expect(sha(atSink)).toBe(sha(up));
    expect(sha(atClient)).toBe(sha(down));
  }, 30_000);

  test("two hops with TLS between them carry the same, byte for byte", async () => {
    const { atSink, atClient } = await carry(2, 1, up, down);
    expect(atSink.byteLength).toBe(up.byteLength);
    expect(sha(atSink)).toBe(sha(up));
    expect(sha(atClient)).toBe(sha(down));
  }, 30_000);
});
