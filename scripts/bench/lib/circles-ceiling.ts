#!/usr/bin/env bun
/**
 * The ceiling of the circles benchmark (scripts/bench/circles.ts): a bare Bun WebSocket
 * JSON-RPC server with the same handshake shape as `stoa circles serve` — any path upgrades,
 * `fetch_nonce` hands out a random nonce, `authenticate` accepts any signature, `play` answers
 * {"output":"42"} without evaluating anything. What is left is the transport on this machine:
 * WebSocket frames, JSON parse and stringify, one event loop. Prints `ready <port>` when
 * listening; stops on SIGTERM.
 *
 *   bun scripts/bench/lib/circles-ceiling.ts
 */
import { randomBytes } from "node:crypto";

/** The nonce lifetime `stoa circles serve` announces (protocol.ts NONCE_TTL_MS), for the same reply shape. */
const NONCE_TTL_S = 300;

interface Request {
  id: number | string;
  method: string;
}

function answer(req: Request): Record<string, unknown> {
  switch (req.method) {
    case "fetch_nonce":
      return { result: { nonce: randomBytes(32).toString("hex"), expires_at: Math.floor(Date.now() / 1000) + NONCE_TTL_S } };
    case "authenticate":
      return { result: { authenticated: true } };
    case "play":
      return { result: { output: "42" } };
    default:
      return { error: { code: -32601, message: `unknown method '${req.method}'` } };
  }
}

const server = Bun.serve({
  hostname: "127.0.0.1",
  port: 0,
  fetch(req, srv) {
    return srv.upgrade(req) ? undefined : new Response("WebSocket only", { status: 426 });
  },
  websocket: {
    message(ws, message) {
      const req = JSON.parse(String(message)) as Request;
      ws.send(JSON.stringify({ jsonrpc: "2.0", id: req.id, ...answer(req) }));
    },
  },
});
process.on("SIGTERM", () => {
  server.stop(true);
  process.exit(0);
});
console.log(`ready ${server.port}`);
