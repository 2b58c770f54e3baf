/**
 * hotlink across hosts: the relay server, alice's daemon and bob's daemon each in its own network
 * namespace. A and B are each joined to S by an IPv6 veth link, and to nothing else: alice's host
 * has no route to bob's, so every byte between them goes through the relay in S — the case the
 * relay exists for. The applications run inside A and B too (test/fixtures/tunnel-app.ts),
 * talking to their daemon's tunnel port on their own loopback, and report what they sent and
 * received as byte counts and SHA-256.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { APP_DEADLINE_MS, type AppResult, SEED_BYTES, TUNNEL_APP, seedProblem } from "../fixtures/tunnel-app-spec.ts";
import { join } from "node:path";
import { type Net, canUseNetns, createNet } from "../helpers/netns.ts";
import { NetProcs, type Proc, requireBinary } from "../fixtures/e2e-helpers.ts";
import { eventually } from "../helpers/eventually.ts";
import { STOA } from "../helpers/stoa.ts";

const can = canUseNetns();
if (!can.ok) console.warn(`skipping cross-host hotlink tests: ${can.reason}`);

const CHANNEL = "alice/mpc/run1/0_to_1";
/** Fresh namespaces: nothing else can hold these ports. */
const RELAY_PORT = 8470;
const METRICS_PORT = 9470;
const ALICE_PORT = 10001;
const BOB_PORT = 10002;
const RANDOM_BYTES = 64 * 1024 * 1024;

const sha = (b: Uint8Array) => new Bun.CryptoHasher("sha256").update(b).digest("hex");

describe.if(can.ok)("hotlink across three hosts: relay on S, alice on A, bob on B (A and B reach only S)", () => {
  let net: Net;
  let procs: NetProcs;
  let dir: string;
  let server: Proc;
  let daemons: Proc[] = [];

  /** The server's /metrics, fetched from inside S (its metrics port is on S's loopback). */
  const metric = async (name: string): Promise<number> => {
    const r = await net.exec("s", [
      process.execPath,
      "-e",
      `process.stdout.write(await (await fetch("http://127.0.0.1:${METRICS_PORT}/metrics")).text())`,
    ]);
    if (r.code !== 0) throw new Error(`reading /metrics in S failed: ${r.stderr.trim()}`);
    const m = r.stdout.match(new RegExp(`^${name.replace(/[{}]/g, "\\$&")} (\\d+)`, "m"));
    return m === null ? -1 : Number(m[1]);
  };

  const startApp = async (host: "a" | "b", name: string, args: string[]): Promise<Proc> => {
    const port = host === "a" ? ALICE_PORT : BOB_PORT;
    const app = procs.spawn(host, name, [process.execPath, TUNNEL_APP, String(port), ...args]);
    await app.waitFor("out", /^connected$/m, 10_000);
    return app;
  };

  const resultOf = async (app: Proc): Promise<AppResult> => {
    const code = await app.exitWithin(APP_DEADLINE_MS + 5_000);
    const m = app.out.match(/^result (.+)$/m);
    if (code !== 0 || m === null) {
      throw new Error(`${app.name} failed (exit ${code})\n${app.describe()}\n${[server, ...daemons].map((p) => p.describe()).join("\n")}`);
    }
    return JSON.parse(m[1] ?? "") as AppResult;
  };

  beforeAll(async () => {
    requireBinary();
    net = await createNet({ hosts: ["s", "a", "b"], links: [["a", "s"], ["b", "s"]] });
    procs = new NetProcs(net);
    dir = mkdtempSync("/tmp/e2hl-");

    // The files are on the shared filesystem; only the network is per host.
    const users = join(dir, "users.json");
    const tokenFile = (user: string): string => {
      const run = Bun.spawnSync([STOA, "hotlink", "user", "add", user, "--users", users]);
      if (run.exitCode !== 0) throw new Error(`stoa hotlink user add ${user} failed: ${run.stderr.toString()}`);
      const lines = run.stdout.toString().trim().split("\n");
      const file = join(dir, `${user}.token`);
      writeFileSync(file, `${lines[lines.length - 1]}\n`);
      chmodSync(file, 0o600);
      return file;
    };
    const tokens = { alice: tokenFile("alice"), bob: tokenFile("bob") };
    const acl = join(dir, "acl.json");
    writeFileSync(acl, JSON.stringify({ rules: [{ pattern: "alice/mpc/**", read: ["bob"], write: ["bob"] }] }));

    // [::] in S: both of its link addresses, one per client host.
    server = procs.stoa("s", "server", [
      "hotlink", "serve", "--listen", `[::]:${RELAY_PORT}`, "--users", users, "--acl", acl,
      "--metrics-listen", `127.0.0.1:${METRICS_PORT}`,
    ]);
    await server.waitFor("out", /^hotlink: ws:\/\//m);
    const daemon = (host: "a" | "b", user: "alice" | "bob", port: number, peer: string): Proc =>
      procs.stoa(host, user, [
        "hotlink", "connect", "--server", `ws://[${net.addr("s", host)}]:${RELAY_PORT}`, "--user", user,
        "--token-file", tokens[user], "--tunnel", `${CHANNEL}=127.0.0.1:${port}@${peer}`,
        "--telemetry", join(dir, `${user}.json`), "--run-dir", join(dir, "run"),
      ]);
    daemons = [daemon("a", "alice", ALICE_PORT, "bob"), daemon("b", "bob", BOB_PORT, "alice")];
    for (const d of daemons) await d.waitFor("out", /^hotlink: /m);
    await eventually("both daemons on the relay", async () => (await metric('stoa_hotlink_connections{state="ready"}')) === 2, { timeoutMs: 10_000, everyMs: 100 });
  }, 30_000);

  afterAll(async () => {
    await procs?.stop();
    await net?.destroy();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test("A and B cannot reach each other; both daemons are connected to the relay in S", async () => {
    // A has no route to B's link at all: the only path between them is the relay.
    const probe = await net.probeTcp("a", net.addr("b", "s"), RELAY_PORT, 2_000);
    expect(probe.ok).toBe(false);
    expect(await metric('stoa_hotlink_connections{state="ready"}')).toBe(2);
  }, 20_000);

  test("the seed's test across hosts: bob's app connected first reads exactly 81,920 bytes, every chunk in order and intact", async () => {
    const got = join(dir, "seed-received.bin");
    const bobApp = await startApp("b", "bob-app", ["recv", got]);
    const aliceApp = await startApp("a", "alice-app", ["seed"]);
    const [sent, recv] = await Promise.all([resultOf(aliceApp), resultOf(bobApp)]);
    expect(sent.sent).toBe(SEED_BYTES);
    expect(recv.received).toBe(SEED_BYTES);
    expect(recv.receivedSha).toBe(sent.sentSha);
    const bytes = readFileSync(got);
    expect(bytes.byteLength).toBe(SEED_BYTES);
    expect(sha(bytes)).toBe(recv.receivedSha);
    expect(seedProblem(bytes)).toBeNull();
    // Bob wrote nothing back; his half-close reached alice as EOF through the relay.
    expect(sent.received).toBe(0);
  }, 60_000);

  test("64 MiB of random bytes each way at once across hosts (SHA-256 equal); the relay holds no session afterwards", async () => {
    const bobApp = await startApp("b", "bob-app-2", ["random", String(RANDOM_BYTES)]);
    const aliceApp = await startApp("a", "alice-app-2", ["random", String(RANDOM_BYTES)]);
    const [alice, bob] = await Promise.all([resultOf(aliceApp), resultOf(bobApp)]);
    expect(alice.sent).toBe(RANDOM_BYTES);
    expect(bob.sent).toBe(RANDOM_BYTES);
    expect(bob.received).toBe(RANDOM_BYTES);
    expect(alice.received).toBe(RANDOM_BYTES);
    expect(bob.receivedSha).toBe(alice.sentSha);
    expect(alice.receivedSha).toBe(bob.sentSha);
    expect(alice.sentSha).not.toBe(bob.sentSha);

    await eventually("the relay in S to hold no session", async () => (await metric("stoa_hotlink_sessions")) === 0, { timeoutMs: 10_000, everyMs: 100 });
    expect(await metric("stoa_hotlink_sessions")).toBe(0);
    // Everything bob received went through the relay: there is no other path.
    const telemetry = await eventually("bob's telemetry with every byte", () => {
      if (!existsSync(join(dir, "bob.json"))) return undefined;
      const t = JSON.parse(readFileSync(join(dir, "bob.json"), "utf8")) as { mode: string; rx: { bytes: number } };
      return t.rx.bytes >= SEED_BYTES + RANDOM_BYTES ? t : undefined;
    });
    expect(telemetry.mode).toBe("relay");
  }, 60_000);
});
