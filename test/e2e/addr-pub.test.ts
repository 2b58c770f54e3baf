/**
 * Option 1 end to end (addr spec): `stoa pub --addr auto` on host A adds its own /128 (nodad)
 * of the link's /64, serves the three ports on it with no gateway, and is subscribed from host
 * B; the address is gone after SIGTERM, and after `stoa addr gc` following a SIGKILL.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { type Net, canUseNetns, createNet } from "../helpers/netns.ts";
import { NetProcs, type Proc, requireBinary } from "../fixtures/e2e-helpers.ts";
import { STOA } from "../helpers/stoa.ts";
import { eventually } from "../helpers/eventually.ts";

const can = canUseNetns();
if (!can.ok) console.warn(`skipping stoa pub --addr auto tests: ${can.reason}`);

describe.if(can.ok)("stoa pub --addr auto: a publisher on its own /128, no gateway", () => {
  let net: Net;
  let runDir: string;
  let metaUrl: string;
  let procs: NetProcs;

  const spawn = (host: string, name: string, args: string[], stdin = false): Proc => procs.stoa(host, name, args, stdin);
  /** The metaserver's token, as an operator would copy it to the publisher's host. */
  const tokenFile = () => join(runDir, "meta.token");

  /** Addresses on A's link interface, as `ip -6 -o addr show` prints them. */
  const addressesOfA = async (): Promise<string> => (await net.exec("a", ["ip", "-6", "-o", "addr", "show", "dev", net.iface("a", "b")])).stdout;

  const startPub = async (name: string): Promise<{ pub: Proc; host: string }> => {
    const pub = spawn("a", "pub", [
      "pub", name, "--addr", "auto", "--prefix", net.prefix("a", "b"), "--dev", net.iface("a", "b"),
      "--meta", metaUrl, "--run-dir", runDir, "--token-file", tokenFile(), "--stay",
    ], true);
    const m = await pub.waitFor("out", /^publishing \S+ as \S+: ws:\/\/\[([0-9a-f:]+)\]:8081\//m, 15_000);
    return { pub, host: m[1] ?? "" };
  };

  beforeAll(async () => {
    requireBinary();
    net = await createNet({ hosts: ["a", "b"], links: [["a", "b"]] });
    procs = new NetProcs(net);
    runDir = mkdtempSync("/tmp/e2a-");
    const b = net.addr("b", "a");
    metaUrl = `http://[${b}]:8090`;
    writeFileSync(tokenFile(), `stm_${randomBytes(32).toString("base64url")}\n`, { mode: 0o600 });
    const meta = spawn("b", "meta", ["meta", "--listen", `[${b}]:8090`, "--db", ":memory:", "--token-file", tokenFile()]);
    await meta.waitFor("out", /^metaserver: /m);
  }, 60_000);

  afterAll(async () => {
    await procs?.stop();
    await net?.destroy();
    if (runDir) rmSync(runDir, { recursive: true, force: true });
  });

  test("B subscribes to A's publisher on its own address; SIGTERM removes the address", async () => {
    const { pub, host } = await startPub("direct/temp");
    expect(host).not.toBe(net.addr("a", "b"));
    expect(await addressesOfA()).toContain(`${host}/128`);
    const sub = spawn("b", "sub", ["sub", "direct/temp", "--meta", metaUrl, "--json", "--count", "50", "-v"]);
    await sub.waitFor("err", /subscribed/, 15_000);
    for (let i = 1; i <= 50; i++) pub.write(`t${i}\n`);
    expect(await sub.exitWithin(20_000)).toBe(0);
    const values = sub.out.trim().split("\n").map((l) => (JSON.parse(l) as { value: string }).value);
    expect(values).toEqual(Array.from({ length: 50 }, (_, i) => `t${i + 1}`));
    pub.proc.kill("SIGTERM");
    expect(await pub.exitWithin(10_000)).toBe(0);
    expect(await addressesOfA()).not.toContain(host);
  }, 60_000);

  test("after a SIGKILL the address stays until stoa addr gc removes it", async () => {
    const { pub, host } = await startPub("direct/crashy");
    pub.proc.kill("SIGKILL");
    await pub.exited;
    expect(await addressesOfA()).toContain(`${host}/128`);
    const gc = await net.exec("a", [STOA, "addr", "gc", "--run-dir", runDir, "--json"]);
    expect(gc.code).toBe(0);
    expect(JSON.parse(gc.stdout).removed.map((r: { addr: string }) => r.addr)).toContain(host);
    await eventually("address gone", async () => !(await addressesOfA()).includes(host), { timeoutMs: 10_000 });
  }, 60_000);
});
