/**
 * hotlink's STUN port behind real NATs (issue 16): `stoa hotlink serve --stun-listen` runs in the
 * NAT lab's `pub` namespace (test/fixtures/nat-lab.ts); alice sits behind `nata`, a
 * port-preserving MASQUERADE, bob behind `natb`, a symmetric one (`--random-fully`), carol behind
 * `natc`, port-preserving like alice's. The STUN client (test/fixtures/stun-client.ts, hotlink's
 * `stunBinding`) runs inside the peers' namespaces, so every binding request crosses a real NAT
 * and the answer must name the NAT's public side, never the peer's private address. A second
 * server in pub, on another STUN port, is "another destination" for the mapping-behaviour tests.
 * The lab's own tests show what later ICE tests rely on: private networks unreachable, NATs
 * dropping unsolicited inbound, a hand-made hole punch (test/fixtures/udp-punch.ts) to
 * STUN-learned addresses working between port-preserving NATs and not through a symmetric one,
 * `cutUdp`/`restoreUdp`. The last test floods the STUN port with datagrams it must drop
 * (test/fixtures/stun-garbage.ts) and checks that it still answers, and the relay beside it too.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { join } from "node:path";
import { type NatLab, canUseNatLab, createNatLab } from "../fixtures/nat-lab.ts";
import { NetProcs, type Proc, requireBinary } from "../fixtures/e2e-helpers.ts";
import { eventually } from "../helpers/eventually.ts";
import { STOA } from "../helpers/stoa.ts";

const can = canUseNatLab();
if (!can.ok) console.warn(`skipping hotlink STUN tests behind NATs: ${can.reason}`);

const STUN_CLIENT = join(import.meta.dir, "..", "fixtures", "stun-client.ts");
const STUN_GARBAGE = join(import.meta.dir, "..", "fixtures", "stun-garbage.ts");
const UDP_PUNCH = join(import.meta.dir, "..", "fixtures", "udp-punch.ts");
/** Fresh namespaces: nothing else can hold these ports. */
const RELAY_PORT = 8470;
const STUN_PORT = 3478;
const METRICS_PORT = 9470;
/** The second server: another destination for the same local port. */
const OTHER_RELAY_PORT = 8471;
const OTHER_STUN_PORT = 3479;
/** A fixed source port in the peers' namespaces (below their ephemeral range: nothing else takes it). */
const LOCAL_PORT = 20_000;
const GARBAGE = 3_500;
/** How long a hole punch is given: a success ends as soon as both sides heard each other (well under a second). */
const PUNCH_MS = 5_000;
/** How long a punch that must fail is watched: nothing arrives in that time. */
const NO_PUNCH_MS = 1_500;

interface Mapped {
  address: string;
  port: number;
  family: string;
}

describe.if(can.ok)("hotlink STUN behind NATs: the server in pub, alice behind a port-preserving NAT, bob behind a symmetric one", () => {
  let lab: NatLab;
  let procs: NetProcs;
  let dir: string;
  let server: Proc;

  /** One binding from inside `peer` to pub's STUN port `port`, from `localPort` when given. */
  const binding = async (peer: string, port: number, localPort?: number): Promise<Mapped> => {
    const args = [process.execPath, STUN_CLIENT, lab.pubAddr, String(port), ...(localPort === undefined ? [] : [String(localPort)])];
    const r = await lab.net.exec(peer, args);
    const line = r.stdout.trim();
    if (r.code !== 0 || !line.startsWith("{")) throw new Error(`stun client in ${peer} failed (exit ${r.code}): ${line} ${r.stderr.trim()}\n${server.describe()}`);
    return JSON.parse(line) as Mapped;
  };

  /** GET /v1/health on the relay (TCP, beside the STUN port) from inside `peer`. */
  const health = async (peer: string): Promise<{ status: number; body: unknown }> => {
    const r = await lab.net.exec(peer, [
      process.execPath,
      "-e",
      `const r = await fetch("http://${lab.pubAddr}:${RELAY_PORT}/v1/health", { signal: AbortSignal.timeout(3000) });
       console.log(JSON.stringify({ status: r.status, body: await r.json() }))`,
    ]);
    if (r.code !== 0) throw new Error(`GET /v1/health from ${peer} failed: ${r.stderr.trim()}`);
    return JSON.parse(r.stdout.trim()) as { status: number; body: unknown };
  };

  /** The sum of the server's `name{…}` series, read from inside pub (its metrics are on pub's loopback). */
  const metricSum = async (name: string): Promise<number> => {
    const r = await lab.net.exec("pub", [
      process.execPath,
      "-e",
      `process.stdout.write(await (await fetch("http://127.0.0.1:${METRICS_PORT}/metrics")).text())`,
    ]);
    if (r.code !== 0) throw new Error(`reading /metrics in pub failed: ${r.stderr.trim()}`);
    let sum = 0;
    for (const m of r.stdout.matchAll(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\d+)$`, "gm"))) sum += Number(m[1]);
    return sum;
  };

  beforeAll(async () => {
    requireBinary();
    lab = await createNatLab({ peers: ["alice", { name: "bob", random: true }, "carol"] });
    procs = new NetProcs(lab.net);
    dir = mkdtempSync("/tmp/e2stun-");
    const users = join(dir, "users.json");
    const add = Bun.spawnSync([STOA, "hotlink", "user", "add", "alice", "--users", users]);
    if (add.exitCode !== 0) throw new Error(`stoa hotlink user add alice failed: ${add.stderr.toString()}`);
    const serve = (name: string, relayPort: number, stunPort: number, extra: string[] = []): Proc =>
      procs.stoa("pub", name, [
        "hotlink", "serve", "--listen", `${lab.pubAddr}:${relayPort}`, "--stun-listen", `${lab.pubAddr}:${stunPort}`,
        "--users", users, ...extra,
      ]);
    server = serve("server", RELAY_PORT, STUN_PORT, ["--metrics-listen", `127.0.0.1:${METRICS_PORT}`]);
    const other = serve("other-server", OTHER_RELAY_PORT, OTHER_STUN_PORT);
    // Printed once both the relay and the STUN port are bound.
    await Promise.all([server.waitFor("out", /^hotlink: ws:\/\//m), other.waitFor("out", /^hotlink: ws:\/\//m)]);
  }, 30_000);

  afterAll(async () => {
    await procs?.stop();
    await lab?.destroy();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test("the lab: a private network is reachable from nowhere but its NAT, and a NAT drops unsolicited inbound", async () => {
    const alicePrivate = await lab.net.listenTcp("alice", lab.privateAddr("alice"), 0, "alice");
    const nataPublic = await lab.net.listenTcp("nata", lab.publicAddr("alice"), 0, "nata");
    const [fromNat, fromPub, fromBob, unsolicited, fromInside] = await Promise.all([
      lab.net.probeTcp("nata", lab.privateAddr("alice"), alicePrivate.port, 2_000),
      lab.net.probeTcp("pub", lab.privateAddr("alice"), alicePrivate.port, 2_000),
      lab.net.probeTcp("bob", lab.privateAddr("alice"), alicePrivate.port, 2_000),
      lab.net.probeTcp("pub", lab.publicAddr("alice"), nataPublic.port, 1_000),
      lab.net.probeTcp("alice", lab.publicAddr("alice"), nataPublic.port, 2_000),
    ]);
    // The listeners work (their NAT, their LAN side reach them) …
    expect(fromNat).toEqual({ ok: true, line: "hello alice" });
    expect(fromInside).toEqual({ ok: true, line: "hello nata" });
    // … but pub has no route to alice's network, bob's packets die in pub, and nata's public
    // leg takes no new connection.
    expect(fromPub.ok).toBe(false);
    expect(fromBob.ok).toBe(false);
    expect(unsolicited.ok).toBe(false);
  }, 20_000);

  test("the lab: a UDP hole punch to the STUN-learned addresses works between two port-preserving NATs, not with a symmetric one", async () => {
    /** Both sides punch at once towards each other's server-reflexive address, as ICE would. */
    const punch = async (a: string, b: string, localPort: number, ms: number) => {
      const [ma, mb] = await Promise.all([binding(a, STUN_PORT, localPort), binding(b, STUN_PORT, localPort)]);
      const run = (peer: string, to: Mapped) =>
        lab.net.exec(peer, [process.execPath, UDP_PUNCH, String(localPort), to.address, String(to.port), String(ms)]);
      const results = await Promise.all([run(a, mb), run(b, ma)]);
      return results.map((r, i) => {
        if (r.code !== 0) throw new Error(`udp-punch in ${i === 0 ? a : b} failed (exit ${r.code}): ${r.stderr.trim()}`);
        return JSON.parse(r.stdout.trim()) as { received: number; strangers: number; refused: number };
      });
    };
    const [alice, carol] = await punch("alice", "carol", LOCAL_PORT + 10, PUNCH_MS);
    expect(alice?.received).toBeGreaterThanOrEqual(1);
    expect(carol?.received).toBeGreaterThanOrEqual(1);
    // bob's NAT maps his flow to alice to another port than the one the STUN server saw, and
    // alice's NAT drops what comes from it: nothing gets through either way in NO_PUNCH_MS.
    const [alice2, bob] = await punch("alice", "bob", LOCAL_PORT + 11, NO_PUNCH_MS);
    expect(alice2).toEqual({ received: 0, strangers: 0, refused: 0 });
    expect(bob).toEqual({ received: 0, strangers: 0, refused: 0 });
  }, 20_000);

  test("alice behind port-preserving MASQUERADE: the answer is nata's public address and her own local port, the same for another destination", async () => {
    const first = await binding("alice", STUN_PORT, LOCAL_PORT);
    expect(first).toEqual({ address: lab.publicAddr("alice"), port: LOCAL_PORT, family: "IPv4" });
    expect(first.address).not.toBe(lab.privateAddr("alice"));
    // Endpoint-independent mapping: what ICE's server-reflexive candidate relies on.
    expect(await binding("alice", STUN_PORT, LOCAL_PORT)).toEqual(first);
    expect(await binding("alice", OTHER_STUN_PORT, LOCAL_PORT)).toEqual(first);
    // From whatever port the kernel picks, still the NAT's address and a real port.
    const any = await binding("alice", STUN_PORT);
    expect(any.address).toBe(lab.publicAddr("alice"));
    expect(any.family).toBe("IPv4");
    expect(Number.isInteger(any.port) && any.port > 0 && any.port < 65_536).toBe(true);
  }, 20_000);

  test("bob behind --random-fully: natb's public address, a port not his own; one flow keeps its mapping, another destination gets another (symmetric NAT)", async () => {
    const first = await binding("bob", STUN_PORT, LOCAL_PORT);
    expect(first.address).toBe(lab.publicAddr("bob"));
    expect(first.address).not.toBe(lab.privateAddr("bob"));
    expect(first.family).toBe("IPv4");
    // A random port from 1024–65535: equal to ours by chance once in ~64,000 runs.
    expect(first.port).not.toBe(LOCAL_PORT);
    // The same 5-tuple is the same conntrack flow: the same mapping.
    expect(await binding("bob", STUN_PORT, LOCAL_PORT)).toEqual(first);
    // Another destination from the same local port is a new flow with a new random port (again
    // equal by chance once in ~64,000): a server-reflexive candidate is worthless here.
    const other = await binding("bob", OTHER_STUN_PORT, LOCAL_PORT);
    expect(other.address).toBe(lab.publicAddr("bob"));
    expect(other.port).not.toBe(first.port);
  }, 20_000);

  test("cutUdp(alice) stops her bindings at her NAT (the relay's TCP still answers); restoreUdp brings back the same mapping", async () => {
    const before = await binding("alice", STUN_PORT, LOCAL_PORT + 20);
    await lab.cutUdp("alice");
    try {
      const cut = await lab.net.exec("alice", [process.execPath, STUN_CLIENT, lab.pubAddr, String(STUN_PORT), String(LOCAL_PORT + 20)]);
      expect(cut.code).toBe(1);
      expect(JSON.parse(cut.stdout.trim()).error).toContain("no STUN answer");
      expect((await health("alice")).status).toBe(200);
    } finally {
      await lab.restoreUdp("alice");
    }
    expect(await binding("alice", STUN_PORT, LOCAL_PORT + 20)).toEqual(before);
  }, 20_000);

  test(`the STUN port survives ${GARBAGE} datagrams it must drop: none answered, all counted, then a binding and the relay's /v1/health still answer`, async () => {
    const droppedBefore = await metricSum("stoa_hotlink_stun_dropped_total");
    const r = await lab.net.exec("alice", [process.execPath, STUN_GARBAGE, lab.pubAddr, String(STUN_PORT), String(GARBAGE)]);
    if (r.code !== 0) throw new Error(`stun-garbage failed (exit ${r.code}): ${r.stderr.trim()}`);
    const flood = JSON.parse(r.stdout.trim()) as { sent: number; answers: number; kinds: Record<string, number> };
    expect(flood.sent).toBe(GARBAGE);
    expect(flood.answers).toBe(0);
    // Every one reached the server and was dropped by it (not lost on the way: they are paced).
    await eventually(
      `all ${GARBAGE} counted as dropped`,
      async () => (await metricSum("stoa_hotlink_stun_dropped_total")) - droppedBefore === GARBAGE,
      { timeoutMs: 10_000, everyMs: 100 },
    );
    expect(server.running).toBe(true);

    expect(await binding("alice", STUN_PORT, LOCAL_PORT + 1)).toEqual({ address: lab.publicAddr("alice"), port: LOCAL_PORT + 1, family: "IPv4" });
    expect(await health("alice")).toEqual({ status: 200, body: expect.objectContaining({ ok: true }) });
  }, 40_000);
});
