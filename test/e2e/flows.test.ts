/**
 * `stoa flows` on a real Open vSwitch (a private ovsdb-server + ovs-vswitchd with the userspace
 * datapath, test/fixtures/ovs.ts) with containers that are network namespaces (`stoa flows
 * container create`), traffic between them by test/fixtures/flows-banner.ts. A traffic test
 * waits for its flows to be on the switch, then sends; nothing here waits a fixed time.
 * ovs-vswitchd runs in the fixture's network namespace, so stoa does too (its veths must be
 * where the switch is: `inSwitch`), and so do the HTTP requests to its servers (`http`, curl there);
 * the containers are namespaces of their own. Bridge and container names are unique to each test:
 * containers' namespaces and the fixture's tap devices are shared by the files running at once.
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Scope, freePorts, requireBinary } from "../fixtures/e2e-helpers.ts";
import { type Ovs, ovsMissing, startOvs } from "../fixtures/ovs.ts";
import { eventually } from "../helpers/eventually.ts";
import { canUseNetns } from "../helpers/netns.ts";
import { REDIS_SERVER } from "../fixtures/redis.ts";
import { ROOT, STOA, stoa, type Run } from "../helpers/stoa.ts";

requireBinary();
const netns = canUseNetns();
const missing = ovsMissing() ?? (netns.ok ? null : netns.reason);
if (missing !== null) console.log(`skipping the flows tests: ${missing}`);

const BANNER = join(ROOT, "test", "fixtures", "flows-banner.ts");
const scope = new Scope();
let ovs: Ovs;
/** Containers made by a test, deleted after it (by name, with their bridge). */
let made: { name: string; bridge: string }[] = [];
/** Interfaces a test made in the switch's namespace, deleted after it. */
const links: string[] = [];

beforeAll(async () => {
  if (missing === null) ovs = await startOvs();
});
afterEach(async () => {
  for (const c of made.reverse()) run(["flows", "container", "delete", c.name, "--bridge", c.bridge, "--server", "http://127.0.0.1:1"]);
  for (const iface of links.splice(0)) Bun.spawnSync(inSwitch(["ip", "link", "del", iface]));
  made = [];
  await scope.cleanup();
});
afterAll(async () => {
  await ovs?.stop();
});

const uniq = (): string => randomBytes(3).toString("hex");
const env = (): Record<string, string> => ovs.env;
/**
 * `argv` in the switch's network namespace only (nsenter --net): `ip netns exec` would also give
 * it a mount namespace of its own, and the containers' namespaces stoa makes there would not be
 * seen from here.
 */
const inSwitch = (argv: string[]): string[] => ["nsenter", `--net=/run/netns/${ovs.netns}`, ...argv];
/** dist/stoa ARGS in the switch's namespace, to completion. */
function run(args: string[]): Run {
  const proc = Bun.spawnSync(inSwitch([STOA, ...args]), { env: env(), stdin: "ignore" });
  return { code: proc.exitCode ?? -1, stdout: proc.stdout.toString(), stderr: proc.stderr.toString() };
}
/** An HTTP request from the switch's namespace (where the servers listen): status and JSON body. */
function http(method: string, url: string, body?: string): { status: number; json: Record<string, unknown> } {
  const args = ["curl", "-s", "-w", "\n%{http_code}", "-X", method, url, ...(body === undefined ? [] : ["-H", "Content-Type: application/json", "--data-binary", "@-"])];
  const proc = Bun.spawnSync(inSwitch(args), { stdin: body === undefined ? "ignore" : Buffer.from(body) });
  const text = proc.stdout.toString();
  const cut = text.lastIndexOf("\n");
  return { status: Number(text.slice(cut + 1)), json: cut > 0 ? (JSON.parse(text.slice(0, cut)) as Record<string, unknown>) : {} };
}
/** A veth pair in the switch's namespace, removed after the test. */
function vethPair(a: string, b: string): void {
  Bun.spawnSync(inSwitch(["ip", "link", "add", a, "type", "veth", "peer", "name", b]));
  links.push(a);
}

function writeState(dir: string, state: unknown): string {
  const file = join(dir, `state-${uniq()}.json`);
  writeFileSync(file, JSON.stringify(state));
  return file;
}

/** `stoa flows container create` (no server: it prints the container's JSON). */
function container(name: string, bridge: string, ip: string, services: string[] = [], server = "http://127.0.0.1:1") {
  const created = run(["flows", "container", "create", name, "--bridge", bridge, "--ip", ip, ...services.flatMap((s) => ["--service", s]), "--server", server]);
  if (created.code !== 0) throw new Error(`container create ${name}: ${created.stderr}`);
  made.push({ name, bridge });
  return JSON.parse(created.stdout.trim()) as { container_id: string; veth: string; bridge: string; ipv4_address: string; services: unknown[] };
}

/** A banner server in container `name` on `port`, answering its name. */
async function banner(name: string, port: number): Promise<void> {
  const proc = scope.spawn(`banner ${name}`, ["ip", "netns", "exec", `stoa-${name}`, process.execPath, BANNER, "serve", String(port), name]);
  await proc.waitFor("out", new RegExp(`listening ${port}`));
}

/** What the server at ip:port answers a connection from container `from`. */
function connect(from: string, ip: string, port: number): { code: number; answer: string; err: string } {
  const proc = Bun.spawnSync(["ip", "netns", "exec", `stoa-${from}`, process.execPath, BANNER, "connect", ip, String(port)], { stdin: "ignore" });
  return { code: proc.exitCode ?? -1, answer: proc.stdout.toString().trim(), err: proc.stderr.toString() };
}

/** The switch's flows of a bridge, as ovs-ofctl prints them (one per line). */
async function dump(bridge: string): Promise<string[]> {
  return (await ovs.ofctl("dump-flows", bridge)).split("\n").filter((line) => line.includes("cookie="));
}
/** The same without the fields that change by themselves (duration, counters, ages). */
async function dumpStable(bridge: string): Promise<string[]> {
  return (await dump(bridge))
    .map((line) => line.replace(/ duration=[^,]+,| n_packets=\d+,| n_bytes=\d+,| idle_age=\d+,| hard_age=\d+,/g, ""))
    .sort();
}
/** n_packets of the flow whose line contains every one of `parts`. */
async function packets(bridge: string, ...parts: string[]): Promise<number> {
  const flows = await dump(bridge);
  const line = flows.find((l) => parts.every((p) => l.includes(p)));
  if (line === undefined) throw new Error(`no flow with ${parts.join(" ")} on ${bridge}:\n${flows.join("\n")}`);
  return Number(/n_packets=(\d+)/.exec(line)?.[1] ?? "NaN");
}

describe.skipIf(missing !== null)("stoa flows plan and apply", () => {
  test("traffic to a service's address and port reaches its container, not another on the same port; replies return; counters move; re-apply is a no-op", async () => {
    const bridge = `fb${uniq()}`;
    await ovs.addBridge(bridge);
    const [a, b, c] = [`a${uniq()}`, `b${uniq()}`, `c${uniq()}`];
    const ca = container(a, bridge, "10.77.0.11/24", ["tcp:6333"]);
    const cb = container(b, bridge, "10.77.0.12/24", ["tcp:6333"]);
    const cc = container(c, bridge, "10.77.0.13/24");
    const state = writeState(scope.tempDir(), { node: "n1", bridges: [{ name: bridge, flows: ["priority=10,actions=normal"] }], containers: [ca, cb, cc] });

    const before = run(["flows", "plan", "--state", state]);
    expect(before.code).toBe(2);
    expect(before.stdout).toContain(`# ${bridge}: `);
    expect(before.stdout).toMatch(/^add .*nw_dst=10\.77\.0\.11.*tp_dst=6333/m);
    const applied = run(["flows", "apply", "--state", state]);
    expect(applied.code).toBe(0);
    expect(applied.stdout).toContain(`# ${bridge}: applied:`);

    await banner(a, 6333);
    await banner(b, 6333);
    expect(await packets(bridge, "nw_dst=10.77.0.11", "tp_dst=6333")).toBe(0);
    expect(connect(c, "10.77.0.11", 6333)).toEqual({ code: 0, answer: a, err: "" });
    const afterA = await packets(bridge, "nw_dst=10.77.0.11", "tp_dst=6333");
    expect(afterA).toBeGreaterThan(0);
    expect(await packets(bridge, "nw_dst=10.77.0.12", "tp_dst=6333")).toBe(0);
    expect(connect(c, "10.77.0.12", 6333)).toEqual({ code: 0, answer: b, err: "" });
    expect(await packets(bridge, "nw_dst=10.77.0.12", "tp_dst=6333")).toBeGreaterThan(0);
    // The replies took the return path: A's flow learned C's MAC into table 1, and A's replies used it.
    expect((await dump(bridge)).some((l) => l.includes("table=1") && l.includes("dl_dst=") && !/n_packets=0,/.test(l))).toBe(true);

    const again = run(["flows", "plan", "--state", state]);
    expect(again.code).toBe(0);
    expect(again.stdout.trim()).toBe(`# ${bridge}: no changes`);
    const stable = await dumpStable(bridge);
    const reapplied = run(["flows", "apply", "--state", state]);
    expect(reapplied.code).toBe(0);
    expect(reapplied.stdout.trim()).toBe(`# ${bridge}: no changes`);
    expect(await dumpStable(bridge)).toEqual(stable);
  }, 60_000);

  test("a state with one invalid flow changes nothing on the switch: apply exits 1, the dump is the same before and after", async () => {
    const bridge = `fb${uniq()}`;
    await ovs.addBridge(bridge);
    const d = `d${uniq()}`;
    const cd = container(d, bridge, "10.78.0.11/24", ["tcp:80"]);
    const good = writeState(scope.tempDir(), { node: "n1", bridges: [{ name: bridge }], containers: [] });
    expect(run(["flows", "apply", "--state", good]).code).toBe(0);
    const before = await dumpStable(bridge);
    // A new container's flows and a flow the switch refuses (no group 77), in one state.
    const bad = writeState(scope.tempDir(), { node: "n1", bridges: [{ name: bridge, flows: ["priority=5,ip,actions=group:77"] }], containers: [cd] });
    const applied = run(["flows", "apply", "--state", bad]);
    expect(applied.code).toBe(1);
    expect(applied.stderr).toContain(bridge);
    expect(await dumpStable(bridge)).toEqual(before);
  }, 60_000);

  test("a foreign flow survives every apply; removing a container removes exactly its flows", async () => {
    const bridge = `fb${uniq()}`;
    await ovs.addBridge(bridge);
    await ovs.ofctl("add-flow", bridge, "cookie=0x99,priority=50,udp,tp_dst=9,actions=drop");
    const [a, b] = [`a${uniq()}`, `b${uniq()}`];
    const ca = container(a, bridge, "10.79.0.11/24", ["tcp:6333"]);
    const cb = container(b, bridge, "10.79.0.12/24", ["udp:53"]);
    const dir = scope.tempDir();
    const both = writeState(dir, { node: "n1", bridges: [{ name: bridge }], containers: [ca, cb] });
    expect(run(["flows", "apply", "--state", both]).code).toBe(0);
    const withBoth = await dumpStable(bridge);
    expect(withBoth.some((l) => l.includes("cookie=0x99,"))).toBe(true);
    const onlyA = writeState(dir, { node: "n1", bridges: [{ name: bridge }], containers: [ca] });
    const plan = run(["flows", "plan", "--state", onlyA]);
    expect(plan.code).toBe(2);
    const mods = plan.stdout.split("\n").filter((l) => l !== "" && !l.startsWith("#"));
    expect(mods.length).toBeGreaterThan(0);
    for (const m of mods) {
      expect(m).toStartWith("delete_strict ");
      expect(m).toMatch(/in_port=|nw_dst=10\.79\.0\.12/);
    }
    expect(run(["flows", "apply", "--state", onlyA]).code).toBe(0);
    const withA = await dumpStable(bridge);
    expect(withA.length).toBe(withBoth.length - mods.length);
    for (const line of withA) expect(withBoth).toContain(line);
    expect(withA.some((l) => l.includes("cookie=0x99,"))).toBe(true);
    expect(withA.some((l) => l.includes("10.79.0.12"))).toBe(false);
  }, 60_000);

  test("a missing OVS says what to install; a bad state file names the problem; plan's errors exit 1", () => {
    const dir = scope.tempDir();
    const noOvs = stoa(["flows", "apply", "--state", writeState(dir, { node: "n", bridges: [{ name: "x" }] })], { env: { PATH: "/nonexistent" } });
    expect(noOvs.code).toBe(1);
    expect(noOvs.stderr).toContain("install Open vSwitch (apt install openvswitch-switch)");
    const bad = run(["flows", "plan", "--state", writeState(dir, { node: "n", bridges: [] })]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain("bridges");
    expect(run(["flows", "plan"]).code).toBe(1);
    const noDb = run(["flows", "plan", "--state", writeState(dir, { node: "n", bridges: [{ name: "x" }] }), "--ovsdb", `unix:${dir}/none.sock`]);
    expect(noDb.code).toBe(1);
    expect(noDb.stderr).toContain(`${dir}/none.sock`);
  });
});

describe.skipIf(missing !== null)("stoa flows serve", () => {
  async function serve(state: unknown, extra: string[] = []) {
    const dir = scope.tempDir();
    const [port] = freePorts(1);
    const proc = scope.spawn("flows serve", inSwitch([STOA, "flows", "serve", "--state", writeState(dir, state), "--listen", `127.0.0.1:${port}`, "--state-dir", dir, ...extra]), { env: env() });
    const line = await proc.waitFor("out", /^flows: (http:\/\/\S+) /m, 20_000);
    return { proc, url: line[1]! };
  }
  const flowsOf = (url: string): { match: string; kind: string; packets: number }[] => http("GET", `${url}/api/flows`).json.flows as { match: string; kind: string; packets: number }[];

  test("a registered container gets its flows; a veth that appears or leaves later is picked up by the OVSDB monitor, no apply needed", async () => {
    const bridge = `fb${uniq()}`;
    await ovs.addBridge(bridge);
    const { url } = await serve({ node: "n1", bridges: [{ name: bridge }] });
    const a = `a${uniq()}`;
    container(a, bridge, "10.80.0.11/24", ["tcp:6333"], url);
    await eventually("A's flow on the switch", () => flowsOf(url).some((f) => f.match.includes("10.80.0.11")) || undefined);
    // A container whose veth does not exist yet: registered, waiting, no flows.
    const veth = `lv${uniq()}`;
    const res = http("POST", `${url}/api/containers`, JSON.stringify({ container_id: `late${uniq()}`, veth, bridge, ipv4_address: "10.80.0.12/24", services: [{ name: "late", protocol: "tcp", port: 80 }] }));
    expect(res.status).toBe(201);
    expect(res.json.waiting).toBe(true);
    expect(flowsOf(url).some((f) => f.match.includes("10.80.0.12"))).toBe(false);
    vethPair(veth, `${veth}p`);
    await ovs.vsctl("add-port", bridge, veth);
    await eventually("the late container's flow, after its port appeared", () => flowsOf(url).some((f) => f.match.includes("10.80.0.12")) || undefined);
    // The container stops: its runtime takes the veth off the bridge.
    await ovs.vsctl("del-port", bridge, veth);
    await eventually("the late container's flows gone with its port", () => !flowsOf(url).some((f) => f.match.includes("10.80.0.12")) || undefined);
  }, 60_000);

  test("bad requests get a 4xx that says what is wrong, and change nothing", async () => {
    const bridge = `fb${uniq()}`;
    await ovs.addBridge(bridge);
    const { url } = await serve({ node: "n1", bridges: [{ name: bridge }], containers: [{ container_id: "f1", veth: `vf${uniq()}`, bridge, ipv4_address: "10.84.0.1/24", services: [] }] });
    const post = (body: string) => http("POST", `${url}/api/containers`, body);
    expect(post("{not json")).toMatchObject({ status: 400, json: { error: expect.stringContaining("not valid JSON") } });
    expect(post(JSON.stringify({ container_id: "x" }))).toMatchObject({ status: 400, json: { error: expect.stringContaining("veth") } });
    expect(post(JSON.stringify({ container_id: "x", veth: "v", bridge, ipv4_address: "10.84.0.1/24", services: [] }))).toMatchObject({ status: 409, json: { error: expect.stringContaining("address 10.84.0.1") } });
    expect(post(JSON.stringify({ container_id: "x", veth: "v", bridge: "nope", ipv4_address: "10.84.0.2/24", services: [] }))).toMatchObject({ status: 409, json: { error: expect.stringContaining("bridge nope") } });
    expect(post(JSON.stringify({ container_id: "x", veth: "v", bridge, ipv4_address: "10.84.0.2/24", services: [], pad: "x".repeat(2 * 1024 * 1024) })).status).toBe(413);
    expect(http("POST", `${url}/api/containers/create`, JSON.stringify({ name: "y", services: [] }))).toMatchObject({ status: 400, json: { error: expect.stringContaining("no subnet") } });
    expect(http("DELETE", `${url}/api/containers/nope`)).toMatchObject({ status: 404 });
    expect(http("GET", `${url}/api/nothing`)).toMatchObject({ status: 404, json: { error: expect.stringContaining("no route GET /api/nothing") } });
    expect(http("POST", `${url}/api/registry`, JSON.stringify({ node: "n1", services: [] }))).toMatchObject({ status: 409 });
    expect(http("GET", `${url}/api/containers`).json.containers).toHaveLength(1);
    expect(http("GET", `${url}/health`).status).toBe(200);
  }, 60_000);

  test("with --token-file, writes need the token (401 without), reads stay open; beyond loopback the token is required", async () => {
    const bridge = `fb${uniq()}`;
    await ovs.addBridge(bridge);
    const dir = scope.tempDir();
    const tokenFile = join(dir, "flows.token");
    writeFileSync(tokenFile, `${randomBytes(24).toString("hex")}\n`, { mode: 0o600 });
    const { url } = await serve({ node: "n1", bridges: [{ name: bridge }] }, ["--token-file", tokenFile]);
    const body = JSON.stringify({ container_id: "t1", veth: `vt${uniq()}`, bridge, ipv4_address: "10.85.0.1/24", services: [{ name: "tok", protocol: "tcp", port: 1 }] });
    expect(http("POST", `${url}/api/containers`, body)).toMatchObject({ status: 401, json: { error: expect.stringContaining("--token-file") } });
    expect(http("DELETE", `${url}/api/containers/t1`).status).toBe(401);
    expect(http("GET", `${url}/api/containers`).status).toBe(200);
    const name = `t${uniq()}`;
    const refused = run(["flows", "container", "create", name, "--bridge", bridge, "--ip", "10.85.0.2/24", "--server", url]);
    made.push({ name, bridge });
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain("refused the container (HTTP 401): writes need the flows server's token");
    expect(existsSync(`/run/netns/stoa-${name}`)).toBe(false);
    const created = run(["flows", "container", "create", name, "--bridge", bridge, "--ip", "10.85.0.2/24", "--service", "tcp:7", "--server", url, "--token-file", tokenFile]);
    expect(created.code).toBe(0);
    expect(http("GET", `${url}/api/services/${name}`).json).toMatchObject({ container_id: name, ip: "10.85.0.2" });
    expect(run(["flows", "container", "delete", name, "--server", url, "--token-file", tokenFile]).code).toBe(0);
    expect(http("GET", `${url}/api/services/${name}`).status).toBe(404);
    const open = run(["flows", "serve", "--state", writeState(dir, { node: "n2", bridges: [{ name: bridge }] }), "--listen", "0.0.0.0:0"]);
    expect(open.code).toBe(2);
    expect(open.stderr).toContain("give --token-file");
  }, 60_000);

  test("the seed's curl -X POST /api/containers/create works as written, and the service is found", async () => {
    const bridge = `fb${uniq()}`;
    await ovs.addBridge(bridge);
    const { url } = await serve({ node: "oo1424oo", bridges: [{ name: bridge, subnet: "10.81.0.0/24" }] });
    const name = `vector-db-${uniq()}`;
    const body = `{
    "name": "${name}",
    "services": [
      {
        "name": "vector-db",
        "protocol": "tcp",
        "port": 6333,
        "exposed": true
      }
    ]
  }`;
    const curl = Bun.spawnSync(inSwitch(["curl", "-X", "POST", `${url}/api/containers/create`, "-H", "Content-Type: application/json", "-d", body]), { stdin: "ignore" });
    expect(curl.exitCode).toBe(0);
    const created = JSON.parse(curl.stdout.toString()) as { container: { container_id: string; ipv4_address: string; bridge: string } };
    made.push({ name, bridge });
    expect(created.container).toMatchObject({ container_id: name, ipv4_address: "10.81.0.2/24", bridge });
    const found = http("GET", `${url}/api/services/vector-db`).json;
    expect(found).toEqual({ service: "vector-db", container_id: name, node: "oo1424oo", ip: "10.81.0.2", port: 6333, protocol: "tcp" });
    const query = run(["flows", "query", "vector-db", "--server", url]);
    expect(query.stdout.trim()).toBe(`vector-db 10.81.0.2:6333/tcp on oo1424oo (container ${name})`);
    expect(http("DELETE", `${url}/api/containers/${name}`).status).toBe(200);
    expect(run(["flows", "query", "vector-db", "--server", url]).code).toBe(1);
  }, 60_000);

  test("two nodes: a query on node 2 finds node 1's service with node 1's name, traffic crosses the mesh port, and it is gone after node 1 removes it", async () => {
    const [b1, b2] = [`fm${uniq()}`, `fm${uniq()}`];
    await ovs.addBridge(b1);
    await ovs.addBridge(b2);
    const [m1, m2] = [`mp${uniq()}`, `mp${uniq()}`];
    vethPair(m1, m2);
    await ovs.ip("link", "set", m1, "up");
    await ovs.ip("link", "set", m2, "up");
    {
      await ovs.vsctl("add-port", b1, m1);
      await ovs.vsctl("add-port", b2, m2);
      const [p1, p2] = freePorts(2);
      const dir = scope.tempDir();
      const start = async (node: string, bridge: string, mesh: string, port: number, peer: number) => {
        const proc = scope.spawn(`flows serve ${node}`, inSwitch([STOA, "flows", "serve", "--state", writeState(dir, { node, bridges: [{ name: bridge }], mesh_port: mesh }), "--listen", `127.0.0.1:${port}`, "--peers", `http://127.0.0.1:${peer}`, "--state-dir", join(dir, node)]), { env: env() });
        return (await proc.waitFor("out", /^flows: (http:\/\/\S+) /m, 20_000))[1]!;
      };
      const url1 = await start("node1", b1, m1, p1!, p2!);
      const url2 = await start("node2", b2, m2, p2!, p1!);
      const [server, client] = [`s${uniq()}`, `k${uniq()}`];
      container(server, b1, "10.82.0.11/24", ["tcp:6333:vector-db"], url1);
      container(client, b2, "10.82.0.21/24", [], url2);
      const found = await eventually("node 2 finds vector-db", () => {
        const res = http("GET", `${url2}/api/services/vector-db`);
        return res.status === 200 ? res.json : undefined;
      }, { timeoutMs: 15_000 });
      expect(found).toMatchObject({ service: "vector-db", node: "node1", ip: "10.82.0.11", port: 6333 });
      await eventually("node 2's flow to node 1's service through the mesh port", () => flowsOf(url2).some((f) => f.kind === "remote" && f.match.includes("10.82.0.11")) || undefined, { timeoutMs: 15_000 });
      await banner(server, 6333);
      expect(connect(client, "10.82.0.11", 6333)).toEqual({ code: 0, answer: server, err: "" });
      expect(flowsOf(url2).find((f) => f.kind === "remote" && f.match.includes("10.82.0.11"))!.packets).toBeGreaterThan(0);
      expect(http("DELETE", `${url1}/api/containers/${server}`).status).toBe(200);
      await eventually("node 2 no longer finds vector-db", () => http("GET", `${url2}/api/services/vector-db`).status === 404 || undefined, { timeoutMs: 15_000 });
    }
  }, 90_000);

  test("two nodes over one Redis, no peer list: node 2 finds node 1's service, and loses it when node 1 removes it or stops", async () => {
    // Redis where the servers are: in the switch's namespace.
    const [redisPort] = freePorts(1);
    const redis = scope.spawn("redis-server", inSwitch([REDIS_SERVER, "--port", String(redisPort), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]));
    await redis.waitFor("out", /Ready to accept connections/);
    const redisUrl = `redis://127.0.0.1:${redisPort}`;
    const [b1, b2] = [`fr${uniq()}`, `fr${uniq()}`];
    await ovs.addBridge(b1);
    await ovs.addBridge(b2);
    const [p1, p2] = freePorts(2);
    const dir = scope.tempDir();
    const start = async (node: string, bridge: string, port: number) => {
      const proc = scope.spawn(`flows serve ${node}`, inSwitch([STOA, "flows", "serve", "--state", writeState(dir, { node, bridges: [{ name: bridge }] }), "--listen", `127.0.0.1:${port}`, "--redis-url", redisUrl, "--state-dir", join(dir, node)]), { env: env() });
      return { proc, url: (await proc.waitFor("out", /^flows: (http:\/\/\S+) /m, 20_000))[1]! };
    };
    const unreachable = run(["flows", "serve", "--state", writeState(dir, { node: "x", bridges: [{ name: b1 }] }), "--listen", "127.0.0.1:0", "--redis-url", "redis://127.0.0.1:1", "--state-dir", join(dir, "x")]);
    expect(unreachable.code).toBe(1);
    expect(unreachable.stderr).toContain("cannot connect to Redis at redis://127.0.0.1:1");
    const node1 = await start("rnode1", b1, p1!);
    const node2 = await start("rnode2", b2, p2!);
    const name = `r${uniq()}`;
    container(name, b1, "10.83.0.11/24", ["udp:5353:mdns-r"], node1.url);
    const found = await eventually("node 2 finds mdns-r through Redis", () => {
      const res = http("GET", `${node2.url}/api/services/mdns-r`);
      return res.status === 200 ? res.json : undefined;
    }, { timeoutMs: 15_000 });
    expect(found).toMatchObject({ service: "mdns-r", node: "rnode1", ip: "10.83.0.11", port: 5353, protocol: "udp" });
    expect(http("DELETE", `${node1.url}/api/containers/${name}`).status).toBe(200);
    await eventually("node 2 no longer finds mdns-r", () => http("GET", `${node2.url}/api/services/mdns-r`).status === 404 || undefined, { timeoutMs: 15_000 });
    container(`${name}b`, b1, "10.83.0.12/24", ["udp:5353:mdns-r"], node1.url);
    await eventually("node 2 finds it again", () => http("GET", `${node2.url}/api/services/mdns-r`).status === 200 || undefined, { timeoutMs: 15_000 });
    node1.proc.proc.kill("SIGTERM");
    expect(await node1.proc.exitWithin(10_000)).toBe(0);
    await eventually("node 2 forgets node 1 after its clean stop", () => http("GET", `${node2.url}/api/services/mdns-r`).status === 404 || undefined, { timeoutMs: 15_000 });
  }, 90_000);
});
