#!/usr/bin/env bun
/**
 * Benchmark peers on Unix sockets, run as their own process so they never share an event loop
 * with the client being timed:
 *   <dir>/pub/echo/service.sock  echoes every byte back (round-trip latency)
 *   <dir>/pub/sink/service.sock  counts bytes until the peer's FIN, answers the count as u64be, ends
 * and each also takes connections over from a gateway on <dir>/pub/<name>/handoff.sock
 * (src/gateway/handoff.ts), with the same handlers, for a gateway run with --handoff on.
 * (DIR is the gateway's run dir; the layout is src/core/paths.ts'.)
 * Prints "ready" on stdout once both listen; stops on SIGTERM/SIGINT, removing the sockets.
 */
import { mkdirSync, rmSync } from "node:fs";
import { publisherDir, publisherHandoffPath, publisherSocketPath } from "../../../src/core/paths.ts";
import { serveHandoffs } from "../../../src/gateway/handoff.ts";

const dir = process.argv[2];
if (!dir) {
  console.error("usage: sockservers.ts DIR");
  process.exit(2);
}

interface EchoState {
  pending: Uint8Array[];
}

function listen(name: string, socket: Parameters<typeof Bun.listen<EchoState & { count: number }>>[0]["socket"]) {
  const path = publisherSocketPath(dir as string, name, "service");
  mkdirSync(publisherDir(dir as string, name), { recursive: true, mode: 0o700 });
  rmSync(path, { force: true });
  rmSync(publisherHandoffPath(dir as string, name), { force: true });
  handoffs.push(
    serveHandoffs<EchoState & { count: number }>(publisherHandoffPath(dir as string, name), {
      allowHalfOpen: true,
      socket,
      onRefused: (why) => console.error(`sockservers: ${name}: hand-off refused: ${why}`),
    }),
  );
  return Bun.listen<EchoState & { count: number }>({ unix: path, allowHalfOpen: true, socket, data: { pending: [], count: 0 } });
}

const handoffs: Promise<{ remove(): boolean }>[] = [];

function flush(s: { write(b: Uint8Array): number; data: EchoState; resume(): void }): void {
  while (s.data.pending.length > 0) {
    const head = s.data.pending[0] as Uint8Array;
    const n = s.write(head);
    if (n < head.byteLength) {
      s.data.pending[0] = head.subarray(Math.max(n, 0));
      return;
    }
    s.data.pending.shift();
  }
  s.resume();
}

const echo = listen("echo", {
  open(s) {
    s.data = { pending: [], count: 0 };
  },
  data(s, chunk) {
    if (s.data.pending.length > 0) {
      s.data.pending.push(new Uint8Array(chunk));
      return;
    }
    const n = s.write(chunk);
    if (n < chunk.byteLength) {
      s.data.pending.push(new Uint8Array(chunk.subarray(Math.max(n, 0))));
      s.pause();
    }
  },
  drain(s) {
    flush(s);
  },
  end(s) {
    s.end();
  },
});

const sink = listen("sink", {
  open(s) {
    s.data = { pending: [], count: 0 };
  },
  data(s, chunk) {
    s.data.count += chunk.byteLength;
  },
  end(s) {
    const out = new Uint8Array(8);
    new DataView(out.buffer).setBigUint64(0, BigInt(s.data.count));
    s.end(out);
  },
});

const bound = await Promise.all(handoffs);
const stop = () => {
  echo.stop(true);
  sink.stop(true);
  for (const b of bound) b.remove();
  process.exit(0);
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
console.log("ready");
