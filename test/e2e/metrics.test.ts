import { afterAll, describe, expect, test } from "bun:test";
import { Scope, freePorts, requireBinary } from "../fixtures/e2e-helpers.ts";
import { eventually } from "../helpers/eventually.ts";

const scope = new Scope();
afterAll(() => scope.cleanup());

describe("Prometheus metrics of the serving commands", () => {
  test("stoa gateway --metrics-listen counts connections and routing errors across its workers", async () => {
    requireBinary();
    const [service, string, ping, metricsPort] = freePorts(4);
    const runDir = scope.tempDir();
    const gw = scope.stoa("gateway", [
      "gateway", "--listen", "127.0.0.1", "--ports", `${service},${string},${ping}`, "--run-dir", runDir,
      "--workers", "2", "--metrics-listen", `127.0.0.1:${metricsPort}`,
    ]);
    await gw.waitFor("out", /^gateway: /m);
    for (let i = 0; i < 10; i++) expect((await fetch(`http://127.0.0.1:${service}/pub/nobody`)).status).toBe(404);
    const res = await fetch(`http://127.0.0.1:${metricsPort}/metrics`);
    expect(res.headers.get("content-type")).toContain("text/plain; version=0.0.4");
    // Every one of the ten, whichever worker the kernel gave it to.
    const text = await eventually("all ten counted", async () => {
      const body = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
      return body.includes('stoa_gateway_routing_errors_total{status="404",error="unknown_pub_id"} 10') ? body : undefined;
    });
    expect(text).toContain('stoa_gateway_connections_total{kind="service"} 10');
    expect((await fetch(`http://127.0.0.1:${metricsPort}/other`)).status).toBe(404);
  }, 30_000);

  test("stoa meta serves /metrics on its own port", async () => {
    const [port] = freePorts(1);
    const meta = scope.stoa("meta", ["meta", "--listen", `127.0.0.1:${port}`, "--db", ":memory:", "--state-dir", scope.tempDir()]);
    await meta.waitFor("out", /^metaserver: /m);
    const res = await fetch(`http://127.0.0.1:${port}/metrics`);
    expect(res.status).toBe(200);
    expect(await res.text()).toContain("# TYPE");
  }, 30_000);
});
