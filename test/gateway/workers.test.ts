import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import { publisherSocketPath } from "../../src/core/paths.ts";
import { controlRequest } from "../../src/gateway/control.ts";
import { KINDS } from "../../src/gateway/protocol.ts";
import { rawEcho, rawExchange, staleSocket, testGateway, gatewayTestScope } from "../fixtures/gateway-helpers.ts";
import { eventually } from "../helpers/eventually.ts";

const scope = gatewayTestScope();
const { gateway, own, defer } = scope;

describe("--workers N", () => {
  test("every router shares the ports, and a registration reaches all of them before register answers", async () => {
    const gw = await gateway({ workers: 3 });
    expect(gw.workers).toBe(3);
    const echo = await rawEcho(join(scope.runDir, "explicit.sock"));
    defer(() => echo.close());
    await controlRequest(scope.runDir, { type: "register", pub_id: "w1", kind: "service", target: `unix:${join(scope.runDir, "explicit.sock")}` });
    // Right after the answer, whichever router the kernel picks knows the route.
    const replies = await Promise.all(
      Array.from({ length: 60 }, (_, i) => rawExchange(gw.ports.service, `STOA1 w1\nn${i}`, { halfClose: true })),
    );
    expect(replies.map((r) => r.text)).toEqual(Array.from({ length: 60 }, (_, i) => `n${i}`));
    const stats = await gw.stats();
    expect(stats.connections.service.total).toBe(60);
    expect(stats.bytes.service.in).toBe(replies.reduce((n, r) => n + r.text.length, 0));
    // SO_REUSEPORT spreads 60 connections over 3 routers; all idle together is ~1e-10 likely.
    expect(stats.routers.map((r) => r.router)).toEqual([0, 1, 2]);
    for (const r of stats.routers) expect(r.accepted).toBeGreaterThan(0);
  });

  test("a worker's failed connects show up as down in list", async () => {
    const gw = await gateway({ workers: 2 });
    const ping = await rawEcho(publisherSocketPath(scope.runDir, "dead", "ping"));
    defer(() => ping.close());
    staleSocket(publisherSocketPath(scope.runDir, "dead", "string"));
    const replies = await Promise.all(Array.from({ length: 20 }, () => rawExchange(gw.ports.string, "STOA1 dead\n")));
    expect(replies.every((r) => r.status === 502)).toBe(true);
    await eventually(
      "the target to be marked down",
      async () => (await gw.list()).entries.some((e) => e.pub_id === "dead" && e.kind === "string" && e.health.state === "down"),
    );
    expect((await gw.stats()).errors.target_down).toBe(20);
  });

  test("close stops every worker and frees the ports", async () => {
    const gw = await testGateway(scope.runDir, { workers: 2 });
    await gw.close();
    expect(gw.state).toBe("closed");
    for (const kind of KINDS) {
      const probe = Bun.listen({ hostname: "127.0.0.1", port: gw.ports[kind], socket: { data() {} } });
      probe.stop(true);
    }
  });
});
