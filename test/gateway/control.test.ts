import { describe, expect, test } from "bun:test";
import { encode } from "../../src/core/codec.ts";
import { StoaError } from "../../src/core/errors.ts";
import { encodeFrame, FrameDecoder } from "../../src/core/frame.ts";
import { gatewayControlPath, publisherSocketPath } from "../../src/core/paths.ts";
import { controlRequest } from "../../src/gateway/control.ts";
import { type ControlResponse, controlResponseCodec, MAX_CONTROL_REQUEST_BYTES } from "../../src/gateway/protocol.ts";
import { rawEcho, staleSocket, testGateway, gatewayTestScope } from "../fixtures/gateway-helpers.ts";

const scope = gatewayTestScope();
const { gateway, own, defer } = scope;

/** A raw control connection: write bytes, read decoded answers. */
async function rawControl(): Promise<{ write(b: Uint8Array): void; next(): Promise<ControlResponse>; closed: Promise<void> }> {
  const frames = new FrameDecoder({ maxBytes: 16 * 1024 * 1024 });
  const answers: ControlResponse[] = [];
  const waiting: ((r: ControlResponse) => void)[] = [];
  const closed = Promise.withResolvers<void>();
  const sock = await Bun.connect({
    unix: gatewayControlPath(scope.runDir),
    socket: {
      data(_s, chunk) {
        for (const f of frames.push(chunk)) {
          const r = controlResponseCodec.decode(f);
          const w = waiting.shift();
          if (w) w(r);
          else answers.push(r);
        }
      },
      close: () => closed.resolve(),
    },
  });
  defer(() => void sock.end());
  return {
    write: (b) => void sock.write(b),
    next: () => {
      const r = answers.shift();
      return r ? Promise.resolve(r) : new Promise((resolve) => waiting.push(resolve));
    },
    closed: closed.promise,
  };
}

describe("control requests", () => {
  test("info tells a publisher the ports and the gateway's identity", async () => {
    const gw = await gateway();
    const info = await controlRequest(scope.runDir, { type: "info" });
    expect(info).toEqual({ type: "info", ports: gw.ports, listen: ["127.0.0.1"], pid: process.pid, version: expect.any(String), tls: false, workers: 1 });
  });

  test("health reports serving, open connections and target counts", async () => {
    await gateway();
    const health = await controlRequest(scope.runDir, { type: "health" });
    expect(health).toMatchObject({ status: "serving", pid: process.pid, connections_open: 0, targets: { up: 0, down: 0 } });
  });

  test("register, list and deregister explicit routes; list also shows the run dir's sockets", async () => {
    await gateway();
    const echo = await rawEcho(publisherSocketPath(scope.runDir, "conv", "ping"));
    defer(() => echo.close());
    await controlRequest(scope.runDir, { type: "register", pub_id: "x1", kind: "service", target: "tcp:[::1]:4100" });
    await controlRequest(scope.runDir, { type: "register", pub_id: "x1", kind: "string", target: "unix:/tmp/elsewhere.sock" });
    // Registering the same key again replaces it.
    await controlRequest(scope.runDir, { type: "register", pub_id: "x1", kind: "string", target: "unix:/tmp/other.sock" });
    const list = await controlRequest(scope.runDir, { type: "list" });
    expect(list.truncated).toBe(false);
    expect(list.entries).toEqual([
      { pub_id: "x1", kind: "service", target: "tcp:[::1]:4100", source: "explicit", health: { state: "unknown", error: null, since: null } },
      { pub_id: "x1", kind: "string", target: "unix:/tmp/other.sock", source: "explicit", health: { state: "unknown", error: null, since: null } },
      {
        pub_id: "conv",
        kind: "ping",
        target: `unix:${publisherSocketPath(scope.runDir, "conv", "ping")}`,
        source: "convention",
        health: { state: "unknown", error: null, since: null },
      },
    ]);
    expect((await controlRequest(scope.runDir, { type: "deregister", pub_id: "x1", kind: "string" })).removed).toBe(1);
    expect((await controlRequest(scope.runDir, { type: "deregister", pub_id: "x1" })).removed).toBe(1);
    expect((await controlRequest(scope.runDir, { type: "deregister", pub_id: "x1" })).removed).toBe(0);
  });

  test("targets are stored canonical: a registration in another spelling is normalised", async () => {
    await gateway();
    const answer = await controlRequest(scope.runDir, { type: "register", pub_id: "c1", kind: "ping", target: "TCP:[0:0:0:0:0:0:0:1]:80" });
    expect(answer.entry.target).toBe("tcp:[::1]:80");
  });

  test.each([
    ["a traversal pub_id", { type: "register", pub_id: "../x", kind: "ping", target: "unix:/tmp/a.sock" }],
    ["a WebSocket target", { type: "register", pub_id: "ok", kind: "ping", target: "ws://h/x" }],
    ["a relative unix path", { type: "register", pub_id: "ok", kind: "ping", target: "unix:a.sock" }],
    ["port 0", { type: "register", pub_id: "ok", kind: "ping", target: "tcp:127.0.0.1:0" }],
    ["an unknown kind", { type: "register", pub_id: "ok", kind: "video", target: "unix:/tmp/a.sock" }],
    ["an unknown type", { type: "shutdown" }],
  ])("refuses %s with a schema error", async (_name, request) => {
    await gateway();
    const client = await rawControl();
    client.write(encodeFrame(encode(request)));
    const answer = await client.next();
    expect(answer.type).toBe("error");
    if (answer.type === "error") expect(answer.error.code).toBe("schema");
  });

  test("a message that is not CBOR gets an error answer and the connection stays usable", async () => {
    await gateway();
    const client = await rawControl();
    client.write(encodeFrame(Uint8Array.of(0xff, 0x00, 0x13)));
    client.write(encodeFrame(encode({ type: "info" })));
    const bad = await client.next();
    expect(bad.type === "error" && bad.error.code).toBe("decode");
    expect((await client.next()).type).toBe("info");
  });

  test("pipelined requests are answered in order", async () => {
    await gateway();
    const client = await rawControl();
    const types = ["info", "list", "health", "info", "list"] as const;
    client.write(Buffer.concat(types.map((type) => encodeFrame(encode({ type })))));
    for (const type of types) expect((await client.next()).type).toBe(type);
  });

  test("a frame announced over the size limit is refused and the connection closed", async () => {
    await gateway();
    const client = await rawControl();
    const header = new Uint8Array(4);
    new DataView(header.buffer).setUint32(0, MAX_CONTROL_REQUEST_BYTES + 1);
    client.write(header);
    const answer = await client.next();
    expect(answer.type === "error" && answer.error.code).toBe("too_large");
    await client.closed;
  });

  test("without a gateway, a request fails with a StoaError that says how to start one", async () => {
    const err = await controlRequest(scope.runDir, { type: "info" }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StoaError);
    expect((err as StoaError).code).toBe("closed");
    expect((err as StoaError).message).toContain("stoa gateway");
  });
});

describe("one gateway per run dir", () => {
  test("a second gateway that may not take over fails with in_use and leaves the first serving", async () => {
    const first = await gateway();
    const err = await testGateway(scope.runDir, { takeOver: false }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StoaError);
    expect((err as StoaError).code).toBe("in_use");
    expect((await controlRequest(scope.runDir, { type: "info" })).ports).toEqual(first.ports);
  });

  test("a stale control socket (a gateway that was killed) is reclaimed", async () => {
    staleSocket(gatewayControlPath(scope.runDir));
    const gw = await gateway({ takeOver: false });
    expect(gw.tookOverFrom).toBeNull();
    expect((await controlRequest(scope.runDir, { type: "info" })).ports).toEqual(gw.ports);
  });

  test("a port held by another program is refused, not shared", async () => {
    const squatter = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
    defer(() => squatter.stop(true));
    const err = await testGateway(scope.runDir, { ports: { service: squatter.port, string: 0, ping: 0 } }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StoaError);
    expect((err as StoaError).code).toBe("in_use");
    expect((err as StoaError).message).toContain(String(squatter.port));
  });
});
