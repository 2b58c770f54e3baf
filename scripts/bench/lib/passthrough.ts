#!/usr/bin/env bun
/**
 * A bare pass-through chain: the ceiling for any Bun program of a given shape on this machine.
 * Each hop process accepts one connection, connects onward and copies bytes with nothing else
 * (no framing, no protocol, no bookkeeping beyond a queue for short writes). The hotlink
 * benchmark runs it with the shapes of its two paths and prints the figure next to stoa's:
 *   relay  — three hops, all plain TCP (application → alice → server → bob → application)
 *   direct — two hops, TLS between them (application → alice ⇒ bob → application)
 *
 *   bun scripts/bench/lib/passthrough.ts --listen PORT --to PORT [--tls-in] [--tls-out]
 * A hop prints "ready" once it listens. `passthroughChain` starts the hops; they inherit the
 * caller's CPU affinity (a benchmark run under `taskset -c 0` pins them too).
 */
import type { Socket } from "bun";
import { parseArgs } from "node:util";
import { createSessionCertificate } from "../../../src/hotlink/cert.ts";
import { freePort, waitForPort } from "./client.ts";

interface Hop {
  peer: Socket<Hop> | null;
  queue: Uint8Array[];
  source: Socket<Hop> | null;
}

/** Writes to `to`, queueing what it does not take and pausing the source until drain. */
function forward(hop: Hop, chunk: Uint8Array): void {
  const to = hop.peer;
  if (to === null || hop.queue.length > 0) {
    hop.queue.push(chunk);
    hop.source?.pause();
    return;
  }
  const n = Math.max(0, to.write(chunk));
  if (n < chunk.byteLength) {
    hop.queue.push(chunk.subarray(n));
    hop.source?.pause();
  }
}

function flush(hop: Hop): void {
  const to = hop.peer;
  if (to === null) return;
  while (hop.queue.length > 0) {
    const chunk = hop.queue[0] as Uint8Array;
    const n = Math.max(0, to.write(chunk));
    if (n < chunk.byteLength) {
      hop.queue[0] = chunk.subarray(n);
      return;
    }
    hop.queue.shift();
  }
  hop.source?.resume();
}

function hop(listen: number, to: number, tlsIn: boolean, tlsOut: boolean): void {
  const cert = tlsIn ? createSessionCertificate() : null;
  Bun.listen<Hop>({
    hostname: "127.0.0.1",
    port: listen,
    ...(cert === null ? {} : { tls: { cert: cert.certPem, key: cert.keyPem } }),
    data: { peer: null, queue: [], source: null },
    socket: {
      open(s) {
        const state: Hop = { peer: null, queue: [], source: s };
        s.data = state;
        void Bun.connect<Hop>({
          hostname: "127.0.0.1",
          port: to,
          ...(tlsOut ? { tls: { rejectUnauthorized: false } } : {}),
          data: state,
          socket: {
            data() {},
            drain: () => flush(state),
            close: () => void s.end(),
          },
        }).then((peer) => {
          state.peer = peer;
          flush(state);
        });
      },
      data: (s, chunk) => forward(s.data, chunk),
      close: (s) => void s.data.peer?.end(),
    },
  });
  console.log("ready");
}

/**
 * Starts `hops` pass-through processes in a chain ending at `sinkPort`; TLS on the link after
 * hop `tlsAfter` (1-based), if given. Returns the first hop's port and a stop function.
 */
export async function passthroughChain(
  hops: number,
  sinkPort: number,
  options: { tlsAfter?: number } = {},
): Promise<{ port: number; pids: number[]; stop: () => Promise<void> }> {
  const ports = Array.from({ length: hops }, () => freePort());
  const children: ReturnType<typeof Bun.spawn>[] = [];
  for (let i = hops - 1; i >= 0; i--) {
    const argv = [process.execPath, import.meta.path, "--listen", String(ports[i]), "--to", String(i === hops - 1 ? sinkPort : ports[i + 1])];
    if (options.tlsAfter === i + 1) argv.push("--tls-out");
    if (options.tlsAfter === i) argv.push("--tls-in");
    children.push(Bun.spawn(argv, { stdout: "ignore", stderr: "inherit" }));
    await waitForPort("127.0.0.1", ports[i] ?? 0);
  }
  return {
    port: ports[0] ?? 0,
    pids: children.map((c) => c.pid),
    stop: async () => {
      for (const c of children) c.kill("SIGTERM");
      await Promise.all(children.map((c) => c.exited));
    },
  };
}

if (import.meta.main) {
  const { values } = parseArgs({
    options: {
      listen: { type: "string" },
      to: { type: "string" },
      "tls-in": { type: "boolean", default: false },
      "tls-out": { type: "boolean", default: false },
    },
  });
  if (values.listen === undefined || values.to === undefined) {
    console.error("usage: passthrough.ts --listen PORT --to PORT [--tls-in] [--tls-out]");
    process.exit(2);
  }
  hop(Number(values.listen), Number(values.to), values["tls-in"], values["tls-out"]);
}
