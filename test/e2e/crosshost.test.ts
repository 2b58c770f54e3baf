/**
 * Two hosts joined by an IPv6-only veth link (network namespaces): publisher + gateway on A,
 * metaserver + subscriber on B. B reaches the stream only through A's gateway, and the
 * metaserver's confirmation ping takes that same path.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { type Net, canUseNetns, createNet } from "../helpers/netns.ts";
import { NetProcs, type Proc, requireBinary } from "../fixtures/e2e-helpers.ts";
import { STOA } from "../helpers/stoa.ts";

const can = canUseNetns();
if (!can.ok) console.warn(`skipping cross-host tests: ${can.reason}`);

describe.if(can.ok)("cross host over IPv6: publisher + gateway on A, metaserver + subscriber on B", () => {
  let net: Net;
  let runDir: string;
  let procs: NetProcs;
  let metaUrl: string;
  let pub: Proc;

  const spawn = (host: string, name: string, args: string[], stdin = false): Proc => procs.stoa(host, name, args, stdin);

  beforeAll(async () => {
    requireBinary();
    net = await createNet({ hosts: ["a", "b"], links: [["a", "b"]] });
    procs = new NetProcs(net);
    runDir = mkdtempSync("/tmp/e2x-");
    const a = net.addr("a", "b");
    const b = net.addr("b", "a");
    metaUrl = `http://[${b}]:8090`;
    // The metaserver's token, as an operator would copy it to the publisher's host.
    const token = join(runDir, "meta.token");
    writeFileSync(token, `stm_${randomBytes(32).toString("base64url")}\n`, { mode: 0o600 });
    const gateway = spawn("a", "gateway", ["gateway", "--listen", a, "--run-dir", runDir, "--workers", "1"]);
    await gateway.waitFor("out", /^gateway: service 8081/m);
    const meta = spawn("b", "meta", ["meta", "--listen", `[${b}]:8090`, "--db", ":memory:", "--token-file", token]);
    await meta.waitFor("out", /^metaserver: /m);
    pub = spawn("a", "pub", ["pub", "lab/temp", "--meta", metaUrl, "--run-dir", runDir, "--token-file", token, "--stay"], true);
    await pub.waitFor("out", /^publishing lab\/temp as /m, 15_000);
  }, 60_000);

  afterAll(async () => {
    await procs?.stop();
    await net?.destroy();
    if (runDir) rmSync(runDir, { recursive: true, force: true });
  });

  test("the registration names A's address and is live: confirmed through A's gateway", async () => {
    const lookup = await net.exec("b", [STOA, "sub", "lab/temp", "--meta", metaUrl, "--latest", "--json", "--log-level", "error"]);
    // Nothing published yet: the ping through the gateway answers, with no value.
    expect(lookup.code).toBe(0);
    expect(JSON.parse(lookup.stdout)).toMatchObject({ value: null, seq: 0 });
    const listed = await net.exec("b", [process.execPath, "-e", `console.log(await (await fetch("${metaUrl}/v1/publishers?prefix=lab")).text())`]);
    const [info] = (JSON.parse(listed.stdout) as { publishers: { host: string; state: string; urls: { service: string } }[] }).publishers;
    expect(info?.host).toBe(net.addr("a", "b"));
    expect(info?.state).toBe("live");
    expect(info?.urls.service).toStartWith(`ws://[${net.addr("a", "b")}]:8081/pub/`);
  }, 30_000);

  test("a subscriber on B gets every value in order through A's gateway, and --latest the last", async () => {
    const sub = spawn("b", "sub", ["sub", "lab/temp", "--meta", metaUrl, "--json", "--count", "200", "-v"]);
    await sub.waitFor("err", /subscribed/, 15_000);
    for (let i = 1; i <= 200; i++) pub.write(`reading ${i}\n`);
    expect(await sub.exitWithin(20_000)).toBe(0);
    const lines = sub.out.trim().split("\n").map((l) => JSON.parse(l) as { seq: number; value: string });
    expect(lines.map((l) => l.value)).toEqual(Array.from({ length: 200 }, (_, i) => `reading ${i + 1}`));
    expect(lines.map((l) => l.seq)).toEqual(Array.from({ length: 200 }, (_, i) => i + 1));
    const latest = await net.exec("b", [STOA, "sub", "lab/temp", "--meta", metaUrl, "--latest"]);
    expect(latest.stdout).toBe("reading 200\n");
  }, 60_000);

  test("A's gateway answers B's HTTP requests before any upgrade (unknown pub_id → 404)", async () => {
    const probe = await net.exec("b", [process.execPath, "-e", `
      const res = await fetch("http://[${net.addr("a", "b")}]:8083/pub/unknown-id");
      console.log(res.status);`]);
    expect(probe.stdout.trim()).toBe("404");
  }, 30_000);
});
