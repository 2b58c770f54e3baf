import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import { StoaError } from "../../src/core/errors.ts";
import { publisherSocketPath } from "../../src/core/paths.ts";
import { controlRequest } from "../../src/gateway/control.ts";
import type { Ports } from "../../src/gateway/protocol.ts";
import {
  counterClient,
  rawEcho,
  rawExchange,
  streamingPublisher,
  gatewayTestScope,
} from "../fixtures/gateway-helpers.ts";
import { eventually } from "../helpers/eventually.ts";

const scope = gatewayTestScope();
const { gateway, own, defer } = scope;


/** True when the counters are 0, 1, 2, ... with nothing lost or repeated. */
function gapless(counters: number[]): boolean {
  return counters.every((n, i) => n === i);
}

const pending = Symbol("pending");
async function settledWithin<T>(promise: Promise<T>, ms: number): Promise<T | typeof pending> {
  return Promise.race([promise, Bun.sleep(ms).then((): typeof pending => pending)]);
}

/** A gateway in a child process (test/fixtures/gateway-process.ts). */
async function gatewayProcess(options: Record<string, unknown>): Promise<{
  ports: Ports;
  lines: AsyncIterator<string>;
  proc: ReturnType<typeof Bun.spawn>;
}> {
  const proc = Bun.spawn([process.execPath, join(import.meta.dir, "../fixtures/gateway-process.ts"), JSON.stringify(options)], {
    stdout: "pipe",
    stderr: "inherit",
  });
  defer(async () => {
    proc.kill("SIGKILL");
    await proc.exited;
  });
  const lines = (async function* () {
    let buffered = "";
    for await (const chunk of proc.stdout as ReadableStream<Uint8Array>) {
      buffered += new TextDecoder().decode(chunk);
      for (let nl = buffered.indexOf("\n"); nl >= 0; nl = buffered.indexOf("\n")) {
        yield buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
      }
    }
  })();
  const first = await lines.next();
  if (first.done) throw new Error("the gateway process exited before it was ready");
  return { ports: (JSON.parse(first.value) as { ready: Ports }).ready, lines, proc };
}

describe("zero-downtime restart", () => {
  test("a new gateway takes over while clients stream: their streams go on and new clients reach it", async () => {
    const old = await gateway({ workers: 2 });
    own(await streamingPublisher(scope.runDir, "s1", "service"));
    const registered = own(await rawEcho(join(scope.runDir, "registered.sock")));
    await controlRequest(scope.runDir, { type: "register", pub_id: "r1", kind: "ping", target: `unix:${join(scope.runDir, "registered.sock")}` });
    const clients = await Promise.all(Array.from({ length: 4 }, () => counterClient(`ws://127.0.0.1:${old.ports.service}/pub/s1`)));
    defer(() => clients.forEach((c) => c.ws.close()));
    await eventually("streams to start", () => clients.every((c) => c.counters.length >= 5));

    const fresh = await gateway({ workers: 2, ports: old.ports });
    expect(fresh.tookOverFrom).toBe(process.pid);
    expect(old.state).toBe("draining");

    // The old gateway keeps every established stream flowing, in both directions.
    const before = clients.map((c) => c.counters.length);
    await eventually("streams to go on", () => clients.every((c, i) => c.counters.length >= (before[i] ?? 0) + 20));
    for (const c of clients) c.ws.send("after the handover");
    await eventually("echoes", () => clients.every((c) => c.echoes.includes("after the handover")));
    expect(clients.every((c) => gapless(c.counters))).toBe(true);

    // New connections go to the new gateway, which serves the control socket with the
    // registrations it inherited.
    const newcomers = await Promise.all(Array.from({ length: 6 }, () => counterClient(`ws://127.0.0.1:${old.ports.service}/pub/s1`)));
    defer(() => newcomers.forEach((c) => c.ws.close()));
    await eventually("new streams", () => newcomers.every((c) => c.counters.length > 0));
    expect((await fresh.stats()).connections.service.total).toBe(6);
    expect((await old.stats()).connections.service.total).toBe(4);
    expect((await rawExchange(old.ports.ping, "STOA1 r1\ninherited", { halfClose: true })).text).toBe("inherited");
    expect(registered.received().map(String)).toEqual(["inherited"]);
    expect((await fresh.list()).entries.filter((e) => e.source === "explicit").map((e) => e.pub_id)).toEqual(["r1"]);

    // The old gateway finishes only when its last client leaves.
    expect(await settledWithin(old.closed, 100)).toBe(pending);
    for (const c of clients) c.ws.close();
    expect(await old.closed).toEqual({ reason: "handover", cut: 0 });
    expect(await settledWithin(Promise.all(clients.map((c) => c.closed)), 2_000)).not.toBe(pending);
    for (const c of newcomers) expect(c.ws.readyState).toBe(WebSocket.OPEN);
  }, 30_000);

  test("a gateway restarted as a new process loses no streaming connection, and the old process exits", async () => {
    own(await streamingPublisher(scope.runDir, "p1", "string"));
    const old = await gatewayProcess({ runDir: scope.runDir, listen: ["127.0.0.1"], ports: { service: 0, string: 0, ping: 0 }, workers: 1 });
    const client = await counterClient(`ws://127.0.0.1:${old.ports.string}/pub/p1`);
    defer(() => client.ws.close());
    await eventually("stream to start", () => client.counters.length >= 5);

    const fresh = await gateway({ ports: old.ports });
    expect(fresh.tookOverFrom).toBe(old.proc.pid);
    const before = client.counters.length;
    await eventually("stream to go on", () => client.counters.length >= before + 20);
    const newcomer = await counterClient(`ws://127.0.0.1:${old.ports.string}/pub/p1`);
    defer(() => newcomer.ws.close());
    await eventually("new stream", () => newcomer.counters.length > 0);
    expect((await fresh.stats()).connections.string.total).toBe(1);

    client.ws.close();
    const closedLine = await old.lines.next();
    expect(JSON.parse(closedLine.value ?? "{}")).toEqual({ closed: { reason: "handover", cut: 0 } });
    expect(await old.proc.exited).toBe(0);
    expect(gapless(client.counters)).toBe(true);
    expect(newcomer.ws.readyState).toBe(WebSocket.OPEN);
  }, 30_000);
});

describe("drain", () => {
  test("drain stops accepting, releases the control socket, and cuts what is left at the timeout", async () => {
    const gw = await gateway({ drainTimeoutMs: 300 });
    own(await streamingPublisher(scope.runDir, "d1", "service"));
    const client = await counterClient(`ws://127.0.0.1:${gw.ports.service}/pub/d1`);
    await eventually("stream to start", () => client.counters.length > 0);
    const drained = gw.drain();
    await eventually("draining", () => gw.state === "draining", { timeoutMs: 1_000 });
    const refused = await Bun.connect({ hostname: "127.0.0.1", port: gw.ports.service, socket: { data() {} } }).catch((e: unknown) => e);
    expect((refused as { code?: string }).code).toBe("ECONNREFUSED");
    const noControl = await controlRequest(scope.runDir, { type: "info" }).catch((e: unknown) => e);
    expect((noControl as StoaError).code).toBe("closed");
    // Still streaming until the deadline.
    const during = client.counters.length;
    await eventually("stream during drain", () => client.counters.length > during + 5, { timeoutMs: 2_000 });
    expect(await drained).toEqual({ reason: "drain", cut: 1 });
    await client.closed;
  });

  test("drain finishes as soon as the last connection ends", async () => {
    const gw = await gateway({ drainTimeoutMs: 60_000 });
    own(await rawEcho(publisherSocketPath(scope.runDir, "q1", "ping")));
    const drained = gw.drain();
    expect(await settledWithin(drained, 2_000)).toEqual({ reason: "drain", cut: 0 });
    expect(gw.state).toBe("closed");
  });
});
