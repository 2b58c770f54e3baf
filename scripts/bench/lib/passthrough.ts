#!/usr/bin/env bun
/**
 * A bare pass-through chain: the ceiling for any Bun program of a given shape on this machine.
 * Each hop process accepts one connection, connects onward and copies bytes with nothing else
 * (no framing, no protocol, no bookkeeping beyond a queue for short writes). The hotlink
 * benchmark runs it with the shapes of its two paths and prints the figures next to stoa's:
 *   relay  — three hops, all plain TCP (application → alice → server → bob → application);
 *            and the same over WebSocket (`wsChain`): TCP → WebSocket client → Bun.serve
 *            forwarding each message → WebSocket client → TCP, raw bytes as binary messages,
 *            with the flow control a relay needs: the ceiling of any relay over Bun's WebSocket
 *            (client frames are masked, RFC 6455 5.3, and the server unmasks them)
 *   direct — two hops, TLS between them (application → alice ⇒ bob → application)
 * `nativeChain` runs the same shapes with lib/c-hop.c as the hops (OpenSSL for the TLS): the
 * floor of any data plane, not only a Bun one, with the same applications at the ends.
 *
 *   bun scripts/bench/lib/passthrough.ts --listen PORT|unix:PATH --to PORT|unix:PATH [--tls-in] [--tls-out]
 *   bun scripts/bench/lib/passthrough.ts --tcp-to-ws PORT --to WS_PORT
 *   bun scripts/bench/lib/passthrough.ts --ws-server PORT
 *   bun scripts/bench/lib/passthrough.ts --ws-to-tcp WS_PORT --to PORT
 * `passthroughChain` and `wsChain` start the processes; they inherit the caller's CPU affinity
 * (a benchmark run under `taskset -c 0` pins them too).
 */
import type { Socket, SocketHandler } from "bun";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { Outbox } from "../../../src/core/outbox.ts";
import { createSessionCertificate } from "../../../src/hotlink/cert.ts";
import { type Built, buildC } from "./cbuild.ts";
import { freePort, waitForPort } from "./client.ts";

/** One direction of a hop: bytes for `peer` (null until connected), through core's Outbox. */
interface Hop {
  peer: Socket<Hop> | null;
  outbox: Outbox;
  source: Socket<Hop> | null;
}

function newHop(source: Socket<Hop> | null): Hop {
  // Until the peer is connected nothing is taken, so everything queues.
  const hop: Hop = { peer: null, source, outbox: new Outbox({ write: (b) => (hop.peer === null ? 0 : hop.peer.write(b)) }) };
  return hop;
}

/** Writes to the peer; the source waits while anything is queued. */
function forward(hop: Hop, chunk: Uint8Array): void {
  hop.outbox.write(chunk);
  if (hop.outbox.queued > 0) hop.source?.pause();
}

function flush(hop: Hop): void {
  hop.outbox.flush();
  if (hop.outbox.queued === 0) hop.source?.resume();
}

/** A hop's end: a TCP port on 127.0.0.1, or a Unix socket (`unix:PATH`). */
type End = { port: number } | { unix: string };

function parseEnd(text: string): End {
  return text.startsWith("unix:") ? { unix: text.slice("unix:".length) } : { port: Number(text) };
}

function hop(listen: End, to: End, tlsIn: boolean, tlsOut: boolean): void {
  const cert = tlsIn ? createSessionCertificate() : null;
  const onward: SocketHandler<Hop> = { data() {}, drain: (s) => flush(s.data), close: (s) => void s.data.source?.end() };
  const handlers: SocketHandler<Hop> = {
    open(s) {
      const state = newHop(s);
      s.data = state;
      const connected = (peer: Socket<Hop>): void => {
        // No Nagle on TCP: a 1 KiB message must not wait for the previous one's ACK.
        if ("port" in to) peer.setNoDelay(true);
        state.peer = peer;
        flush(state);
      };
      if ("unix" in to) void Bun.connect<Hop>({ unix: to.unix, data: state, socket: onward }).then(connected);
      else void Bun.connect<Hop>({ hostname: "127.0.0.1", port: to.port, ...(tlsOut ? { tls: { rejectUnauthorized: false } } : {}), data: state, socket: onward }).then(connected);
    },
    data: (s, chunk) => forward(s.data, chunk),
    close: (s) => void s.data.peer?.end(),
  };
  if ("unix" in listen) {
    Bun.listen<Hop>({ unix: listen.unix, data: newHop(null), socket: handlers });
    console.log("ready");
  } else {
    Bun.listen<Hop>({ hostname: "127.0.0.1", port: listen.port, ...(cert === null ? {} : { tls: { cert: cert.certPem, key: cert.keyPem } }), data: newHop(null), socket: handlers });
  }
}

/**
 * Starts `hops` pass-through processes in a chain ending at `sinkPort` (or the Unix socket
 * `unixOut`); TLS on the link after hop `tlsAfter` (1-based), if given; the first hop listens on
 * a Unix socket at `unixIn` when given (the shape of a hotlink path: application → Unix socket →
 * daemon … daemon → Unix socket → application). Returns the first hop's port (0 with `unixIn`)
 * and a stop function.
 */
export async function passthroughChain(
  hops: number,
  sinkPort: number,
  options: { tlsAfter?: number; unixIn?: string; unixOut?: string } = {},
): Promise<{ port: number; pids: number[]; stop: () => Promise<void> }> {
  const ports = Array.from({ length: hops }, () => freePort());
  const children: ReturnType<typeof Bun.spawn>[] = [];
  for (let i = hops - 1; i >= 0; i--) {
    const listen = i === 0 && options.unixIn !== undefined ? `unix:${options.unixIn}` : String(ports[i]);
    const last = options.unixOut !== undefined ? `unix:${options.unixOut}` : String(sinkPort);
    const argv = [process.execPath, import.meta.path, "--listen", listen, "--to", i === hops - 1 ? last : String(ports[i + 1])];
    if (options.tlsAfter === i + 1) argv.push("--tls-out");
    if (options.tlsAfter === i) argv.push("--tls-in");
    const child = Bun.spawn(argv, { stdout: "pipe", stderr: "inherit" });
    children.push(child);
    if (listen.startsWith("unix:")) await untilReady(child, argv.slice(2).join(" "));
    else await waitForPort("127.0.0.1", ports[i] ?? 0);
  }
  return {
    port: options.unixIn !== undefined ? 0 : (ports[0] ?? 0),
    pids: children.map((c) => c.pid),
    stop: async () => {
      for (const c of children) c.kill("SIGTERM");
      await Promise.all(children.map((c) => c.exited));
    },
  };
}

function buildNativeHop(): Built {
  return buildC("c-hop", { libs: ["-lssl", "-lcrypto"], hint: "OpenSSL's headers come with libssl-dev" });
}

/** Why lib/c-hop.c cannot be built here, or null when it can. */
export function nativeHopProblem(): string | null {
  const built = buildNativeHop();
  return "reason" in built ? built.reason : null;
}

/**
 * `passthroughChain`'s shape with lib/c-hop.c for the hops (TCP ends only): the floor of any
 * data plane of that shape, native included. Returns why not when it cannot be built.
 */
export async function nativeChain(
  hops: number,
  sinkPort: number,
  options: { tlsAfter?: number } = {},
): Promise<{ port: number; pids: number[]; stop: () => Promise<void> } | { reason: string }> {
  const built = buildNativeHop();
  if ("reason" in built) return built;
  const ports = Array.from({ length: hops }, () => freePort());
  const children: Bun.Subprocess<"ignore", "pipe", "inherit">[] = [];
  const stop = async () => {
    for (const c of children) c.kill("SIGTERM");
    await Promise.all(children.map((c) => c.exited));
  };
  try {
    for (let i = hops - 1; i >= 0; i--) {
      const argv = [built.bin, "--listen", String(ports[i]), "--to", String(i === hops - 1 ? sinkPort : ports[i + 1])];
      if (options.tlsAfter === i + 1) argv.push("--tls-out");
      if (options.tlsAfter === i) argv.push("--tls-in");
      const child = Bun.spawn(argv, { stdin: "ignore", stdout: "pipe", stderr: "inherit" });
      children.push(child);
      await untilReady(child, argv.slice(1).join(" "));
    }
  } catch (err) {
    await stop();
    throw err;
  }
  return { port: ports[0] ?? 0, pids: children.map((c) => c.pid), stop };
}

/** Waits for a child's "ready" line (a probe connection would take a client's place). */
async function untilReady(child: Bun.Subprocess<"ignore", "pipe", "inherit">, what: string): Promise<void> {
  const reader = child.stdout.getReader();
  let said = "";
  while (!said.includes("ready")) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`passthrough ${what} exited before it was ready`);
    said += new TextDecoder().decode(value);
  }
  reader.releaseLock();
}

const WS_HIGH_WATER = 4 * 1024 * 1024;
const WS_LOW_WATER = 1024 * 1024;

/** TCP in, one WebSocket client out (each read one binary message); polls bufferedAmount as
 * Bun's client has no drain event. */
function tcpToWs(listen: number, wsPort: number): void {
  Bun.listen<{ ws: WebSocket | null; waiting: boolean }>({
    hostname: "127.0.0.1",
    port: listen,
    data: { ws: null, waiting: false },
    socket: {
      open(s) {
        s.pause();
        const ws = new WebSocket(`ws://127.0.0.1:${wsPort}/in`);
        s.data = { ws: null, waiting: false };
        ws.onopen = () => {
          s.data.ws = ws;
          s.resume();
        };
        ws.onclose = () => void s.end();
      },
      data(s, chunk) {
        const ws = s.data.ws;
        if (ws === null) return;
        ws.send(chunk);
        if (ws.bufferedAmount > WS_HIGH_WATER && !s.data.waiting) {
          s.data.waiting = true;
          s.pause();
          const check = () => {
            if (ws.bufferedAmount > WS_LOW_WATER) return void setTimeout(check, 1);
            s.data.waiting = false;
            s.resume();
          };
          setTimeout(check, 1);
        }
      },
      close: (s) => s.data.ws?.close(),
    },
  });
  console.log("ready");
}

/** Forwards every message from the /in client to the /out client, pausing /in while /out is behind. */
function wsServer(port: number): void {
  type Ws = import("bun").ServerWebSocket<{ path: string }>;
  let out: Ws | null = null;
  let input: Ws | null = null;
  Bun.serve<{ path: string }>({
    hostname: "127.0.0.1",
    port,
    fetch: (req, server) => (server.upgrade(req, { data: { path: new URL(req.url).pathname } }) ? undefined : new Response("", { status: 426 })),
    websocket: {
      maxPayloadLength: 64 * 1024 * 1024,
      backpressureLimit: 64 * 1024 * 1024,
      closeOnBackpressureLimit: false,
      perMessageDeflate: false,
      open(ws) {
        if (ws.data.path === "/out") out = ws;
        else input = ws;
      },
      message(_ws, message) {
        if (out === null) return;
        out.send(message);
        if (out.getBufferedAmount() > WS_HIGH_WATER) (input as unknown as { pause(): void } | null)?.pause();
      },
      drain(ws) {
        if (ws === out && ws.getBufferedAmount() < WS_HIGH_WATER / 2) (input as unknown as { resume(): void } | null)?.resume();
      },
      close(ws) {
        if (ws === input) out?.close();
      },
    },
  });
  console.log("ready");
}

/** One WebSocket client in (/out), TCP out. */
async function wsToTcp(wsPort: number, to: number): Promise<void> {
  const state = newHop(null);
  const ws = new WebSocket(`ws://127.0.0.1:${wsPort}/out`);
  ws.binaryType = "arraybuffer";
  ws.onmessage = (e) => forward(state, new Uint8Array(e.data as ArrayBuffer));
  state.peer = await Bun.connect<Hop>({
    hostname: "127.0.0.1",
    port: to,
    data: state,
    socket: { data() {}, drain: () => flush(state), close: () => ws.close() },
  });
  ws.onclose = () => void state.peer?.end();
  await new Promise((r) => (ws.onopen = r));
  console.log("ready");
}

/**
 * The relay's shape over WebSocket with no protocol: TCP → client → server → client → TCP,
 * ending at `sinkPort`. Returns the first port and a stop function.
 */
export async function wsChain(sinkPort: number): Promise<{ port: number; stop: () => Promise<void> }> {
  const [inPort, wsPort] = [freePort(), freePort()];
  const children: ReturnType<typeof Bun.spawn>[] = [];
  // In order, each once it says "ready": a probe connection would take the place of a client.
  const start = async (args: string[]) => {
    const child = Bun.spawn([process.execPath, import.meta.path, ...args], { stdout: "pipe", stderr: "inherit" });
    children.push(child);
    await untilReady(child, args.join(" "));
  };
  await start(["--ws-server", String(wsPort)]);
  await start(["--ws-to-tcp", String(wsPort), "--to", String(sinkPort)]);
  await start(["--tcp-to-ws", String(inPort), "--to", String(wsPort)]);
  return {
    port: inPort,
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
      "tcp-to-ws": { type: "string" },
      "ws-server": { type: "string" },
      "ws-to-tcp": { type: "string" },
    },
  });
  if (values["ws-server"] !== undefined) {
    wsServer(Number(values["ws-server"]));
  } else if (values["tcp-to-ws"] !== undefined && values.to !== undefined) {
    tcpToWs(Number(values["tcp-to-ws"]), Number(values.to));
  } else if (values["ws-to-tcp"] !== undefined && values.to !== undefined) {
    await wsToTcp(Number(values["ws-to-tcp"]), Number(values.to));
  } else if (values.listen === undefined || values.to === undefined) {
    console.error("usage: passthrough.ts --listen PORT|unix:PATH --to PORT|unix:PATH [--tls-in] [--tls-out]");
    process.exit(2);
  } else {
    hop(parseEnd(values.listen), parseEnd(values.to), values["tls-in"], values["tls-out"]);
  }
}
