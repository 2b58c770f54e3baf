import { describe, expect, test } from "bun:test";
import { Registry } from "../../src/core/metrics.ts";
import { publisherSocketPath } from "../../src/core/paths.ts";
import { controlRequest } from "../../src/gateway/control.ts";
import { KINDS } from "../../src/gateway/protocol.ts";
import {
  openWs,
  rawEcho,
  rawExchange,
  staleSocket,
  wsAsk,
  wsPublisher,
  gatewayTestScope,
} from "../fixtures/gateway-helpers.ts";
import { eventually } from "../helpers/eventually.ts";

const scope = gatewayTestScope();
const { gateway, own, defer } = scope;


function ownWs(ws: WebSocket): WebSocket {
  defer(() => ws.close());
  return ws;
}

describe("routing", () => {
  test("a WebSocket client reaches the publisher of each kind through that kind's port", async () => {
    const gw = await gateway();
    const publishers = await Promise.all(KINDS.map((kind) => wsPublisher(scope.runDir, "p1", kind).then(own)));
    for (const [i, kind] of KINDS.entries()) {
      const ws = ownWs(await openWs(`ws://127.0.0.1:${gw.ports[kind]}/pub/p1/deep/path?x=1`));
      expect(await wsAsk(ws, "hello")).toBe(`${kind}:p1:hello`);
      expect(await wsAsk(ws, "again")).toBe(`${kind}:p1:again`);
      // The request line reached the publisher unchanged.
      expect(publishers[i]?.paths).toEqual(["/pub/p1/deep/path?x=1"]);
    }
  });

  test("the raw prelude is stripped: the target sees only the bytes after it", async () => {
    const gw = await gateway();
    const echo = own(await rawEcho(publisherSocketPath(scope.runDir, "raw1", "string")));
    const reply = await rawExchange(gw.ports.string, "STOA1 raw1\nhello through the gateway", { halfClose: true });
    expect(reply.text).toBe("hello through the gateway");
    expect(echo.received().map(String)).toEqual(["hello through the gateway"]);
  });

  test("an explicit tcp registration made over the control socket routes to a loopback TCP target", async () => {
    const gw = await gateway();
    const tcpEcho = Bun.listen({
      hostname: "127.0.0.1",
      port: 0,
      allowHalfOpen: true,
      socket: {
        data: (s, d) => void s.write(d),
        end: (s) => void s.end(),
      },
    });
    defer(() => tcpEcho.stop(true));
    const answer = await controlRequest(scope.runDir, { type: "register", pub_id: "t1", kind: "ping", target: `tcp:127.0.0.1:${tcpEcho.port}` });
    expect(answer.entry).toEqual({ pub_id: "t1", kind: "ping", target: `tcp:127.0.0.1:${tcpEcho.port}` });
    expect((await rawExchange(gw.ports.ping, "STOA1 t1\nping?", { halfClose: true })).text).toBe("ping?");
    // Only that kind: the other ports still use the convention.
    expect((await rawExchange(gw.ports.service, "STOA1 t1\n")).status).toBe(404);
    expect((await controlRequest(scope.runDir, { type: "deregister", pub_id: "t1" })).removed).toBe(1);
    expect((await rawExchange(gw.ports.ping, "STOA1 t1\n")).status).toBe(404);
  });

  test("an explicit registration wins over the run-dir convention", async () => {
    const gw = await gateway();
    own(await wsPublisher(scope.runDir, "p2", "service"));
    const elsewhere = own(await rawEcho(`${scope.runDir}/elsewhere.sock`));
    await controlRequest(scope.runDir, { type: "register", pub_id: "p2", kind: "service", target: `unix:${scope.runDir}/elsewhere.sock` });
    expect((await rawExchange(gw.ports.service, "STOA1 p2\nx", { halfClose: true })).text).toBe("x");
    expect(elsewhere.received().map(String)).toEqual(["x"]);
  });

  test("listening on :: serves IPv4 and IPv6 clients alike", async () => {
    const gw = await gateway({ listen: ["::"] });
    own(await rawEcho(publisherSocketPath(scope.runDir, "dual", "service")));
    for (const host of ["127.0.0.1", "::1"]) {
      expect((await rawExchange(gw.ports.service, `STOA1 dual\n${host}`, { host, halfClose: true })).text).toBe(host);
    }
  });
});

describe("error responses", () => {
  test.each([
    ["..", "GET /pub/.. HTTP/1.1\r\n\r\n", "invalid_pub_id"],
    ["%2e%2e", "GET /pub/%2e%2e/x HTTP/1.1\r\n\r\n", "invalid_pub_id"],
    ["%2F", "GET /pub/a%2Fb HTTP/1.1\r\n\r\n", "invalid_pub_id"],
    ["a double-encoded %252e%252e after the pub_id", "GET /pub/a/%252e%252e/x HTTP/1.1\r\n\r\n", "invalid_pub_id"],
    ["a/b in a prelude", "STOA1 a/b\n", "invalid_pub_id"],
    ["../ in a prelude", "STOA1 ../etc\n", "invalid_pub_id"],
    ["an empty pub_id", "GET /pub/ HTTP/1.1\r\n\r\n", "invalid_pub_id"],
    ["a garbage line", "HELLO THERE\r\n", "bad_request_line"],
    ["a path outside /pub/", "GET /etc/passwd HTTP/1.1\r\n\r\n", "bad_request_line"],
    ["binary garbage", "\x16\x03\x01\x00\xa5\x01\x00", "bad_request_line"],
  ])("400 for %s, before touching the filesystem", async (_name, line, error) => {
    const gw = await gateway();
    const reply = await rawExchange(gw.ports.service, line);
    expect(reply.status).toBe(400);
    expect(reply.body?.error).toBe(error);
    expect(reply.body?.message).toBeString();
    expect(reply.text).toContain("Connection: close\r\n");
    expect(reply.text).toContain("Content-Type: application/json\r\n");
  });

  test("404 for a pub_id with no registration and no socket", async () => {
    const gw = await gateway();
    const reply = await rawExchange(gw.ports.ping, "GET /pub/nobody HTTP/1.1\r\nHost: h\r\n\r\n");
    expect(reply.status).toBe(404);
    expect(reply.body).toEqual({ error: "unknown_pub_id", message: expect.stringContaining("nobody") });
  });

  test("408 when the first line does not arrive in time, also for a silent client", async () => {
    const gw = await gateway({ firstLineTimeoutMs: 150 });
    const slow = await rawExchange(gw.ports.service, "GET /pub/slow");
    expect(slow.status).toBe(408);
    expect(slow.body?.error).toBe("first_line_timeout");
    expect((await rawExchange(gw.ports.service, null)).status).toBe(408);
  });

  test("431 when the first line is longer than 8 KiB", async () => {
    const gw = await gateway();
    const reply = await rawExchange(gw.ports.service, `GET /pub/p/${"x".repeat(9000)}`);
    expect(reply.status).toBe(431);
    expect(reply.body?.error).toBe("first_line_too_long");
  });

  test("502 for a stale socket, shown as down in list, then up once a publisher serves it", async () => {
    const gw = await gateway();
    const path = publisherSocketPath(scope.runDir, "gone", "service");
    own(await rawEcho(publisherSocketPath(scope.runDir, "gone", "ping"))); // creates the 0700 dir
    staleSocket(path);
    const reply = await rawExchange(gw.ports.service, "STOA1 gone\n");
    expect(reply.status).toBe(502);
    expect(reply.body?.error).toBe("target_down");
    const down = (await gw.list()).entries.find((e) => e.pub_id === "gone" && e.kind === "service");
    expect(down).toMatchObject({ source: "convention", target: `unix:${path}`, health: { state: "down", error: "ECONNREFUSED" } });
    // A publisher restarts on the same path (reclaiming the stale file): the next client gets through.
    own(await rawEcho(path));
    expect((await rawExchange(gw.ports.service, "STOA1 gone\nback", { halfClose: true })).text).toBe("back");
    const list = await controlRequest(scope.runDir, { type: "list" });
    expect(list.entries.find((e) => e.pub_id === "gone" && e.kind === "service")?.health.state).toBe("up");
  });

  test("502 for an explicit TCP target that refuses", async () => {
    const gw = await gateway();
    const closed = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
    const port = closed.port;
    closed.stop(true);
    await controlRequest(scope.runDir, { type: "register", pub_id: "dead", kind: "string", target: `tcp:127.0.0.1:${port}` });
    expect((await rawExchange(gw.ports.string, "STOA1 dead\n")).status).toBe(502);
    const entry = (await gw.list()).entries.find((e) => e.pub_id === "dead");
    expect(entry).toMatchObject({ source: "explicit", health: { state: "down" } });
  });
});

describe("robustness and metrics", () => {
  test("garbage, resets and half-sent lines from many clients leave other connections working", async () => {
    const gw = await gateway({ firstLineTimeoutMs: 300 });
    own(await wsPublisher(scope.runDir, "steady", "service"));
    const ws = ownWs(await openWs(`ws://127.0.0.1:${gw.ports.service}/pub/steady`));
    const abuse: Promise<unknown>[] = [];
    for (let i = 0; i < 50; i++) {
      abuse.push(rawExchange(gw.ports.service, Buffer.from(crypto.getRandomValues(new Uint8Array(1 + (i % 40))))));
      abuse.push(rawExchange(gw.ports.service, "GET /pub/steady HTT"));
      abuse.push(
        Bun.connect({ hostname: "127.0.0.1", port: gw.ports.service, socket: { data() {} } }).then((s) => {
          s.write("GET /pub/ste");
          s.terminate(); // reset mid-line
        }),
      );
    }
    expect(await wsAsk(ws, "still here")).toBe("service:steady:still here");
    await Promise.all(abuse);
    const fresh = ownWs(await openWs(`ws://127.0.0.1:${gw.ports.service}/pub/steady`));
    expect(await wsAsk(fresh, "new")).toBe("service:steady:new");
    await eventually("abusive clients to be gone", async () => (await gw.stats()).connections.service.open === 2);
  });

  test("counts connections, bytes, routing errors and connect latency in the registry", async () => {
    const registry = new Registry();
    const gw = await gateway({ registry });
    own(await rawEcho(publisherSocketPath(scope.runDir, "m1", "ping")));
    await rawExchange(gw.ports.ping, "STOA1 m1\n12345", { halfClose: true });
    await rawExchange(gw.ports.ping, "STOA1 nobody\n");
    await rawExchange(gw.ports.ping, "STOA1 ..\n");
    // The client saw the gateway close; the gateway may see the client's close a moment later.
    await eventually("connections to close", async () => (await gw.stats()).connections.ping.open === 0);
    const stats = await gw.stats();
    expect(stats.connections.ping).toEqual({ open: 0, total: 3 });
    expect(stats.bytes.ping).toEqual({ in: 5, out: 5 });
    expect(stats.errors).toEqual({ unknown_pub_id: 1, invalid_pub_id: 1 });
    expect(stats.upstreamConnects).toBe(1);
    const text = registry.render();
    expect(text).toContain('stoa_gateway_connections_total{kind="ping"} 3');
    expect(text).toContain('stoa_gateway_connections_open{kind="ping"} 0');
    expect(text).toContain('stoa_gateway_bytes_total{kind="ping",direction="in"} 5');
    expect(text).toContain('stoa_gateway_routing_errors_total{status="404",error="unknown_pub_id"} 1');
    expect(text).toContain('stoa_gateway_routing_errors_total{status="400",error="invalid_pub_id"} 1');
    expect(text).toContain('stoa_gateway_upstream_connect_seconds_count{kind="ping"} 1');
    expect(text).toContain('stoa_gateway_pub_connections_total{kind="ping",pub_id="m1"} 1');
  });
});
