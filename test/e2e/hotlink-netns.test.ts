/**
 * hotlink across hosts: the relay server, alice's daemon and bob's daemon each in its own network
 * namespace. A and B are each joined to S by an IPv6 veth link, and to nothing else: alice's host
 * has no route to bob's, so every byte between them goes through the relay in S — the case the
 * relay exists for. The applications run inside A and B too (a small bun script written to the
 * run dir), talking to their daemon's tunnel port on their own loopback, and report what they
 * sent and received as byte counts and SHA-256.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
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
const SEED_CHUNKS = 20;
const SEED_CHUNK_BYTES = 4096;
const SEED_BYTES = SEED_CHUNKS * SEED_CHUNK_BYTES; // 81,920
const RANDOM_BYTES = 64 * 1024 * 1024;
/** An application that has not finished by then has hung: it fails rather than hangs the run. */
const APP_DEADLINE_MS = 40_000;

/**
 * The application, run with `bun app.ts PORT MODE [ARG]` inside a namespace. It connects to
 * 127.0.0.1:PORT (its daemon's tunnel), prints "connected", then:
 *   seed         writes the seed's 20 chunks, half-closes, waits for the peer's close
 *   recv FILE    reads to EOF, saves what it got to FILE, half-closes
 *   random SIZE  writes SIZE random bytes while reading, half-closes, reads to EOF
 * and prints "result {sent, sentSha, received, receivedSha}". Plain JS with no template
 * literals, so it can live in this file's template string.
 */
const APP = `
import { randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";

const [portArg, mode, arg] = process.argv.slice(2);
setTimeout(() => { console.error("app: deadline passed"); process.exit(3); }, ${APP_DEADLINE_MS});
const sentHash = new Bun.CryptoHasher("sha256");
const recvHash = new Bun.CryptoHasher("sha256");
let sent = 0;
let received = 0;
const kept = [];
let onDrain = null;
const ended = Promise.withResolvers();
const closed = Promise.withResolvers();
const sock = await Bun.connect({
  hostname: "127.0.0.1",
  port: Number(portArg),
  allowHalfOpen: true,
  socket: {
    data(_s, d) {
      recvHash.update(d);
      received += d.byteLength;
      if (mode === "recv") kept.push(Buffer.from(d));
    },
    drain() { const f = onDrain; onDrain = null; if (f) f(); },
    end() { ended.resolve(); },
    close() { ended.resolve(); closed.resolve(); },
    error(_s, err) { console.error("app: socket error: " + err.message); process.exit(4); },
  },
});
console.log("connected");

// write() takes what it can and drops the rest: resend the remainder on drain.
async function send(data) {
  sentHash.update(data);
  sent += data.byteLength;
  let rest = data;
  while (rest.byteLength > 0) {
    const n = Math.max(0, sock.write(rest));
    rest = rest.subarray(n);
    if (rest.byteLength > 0) await new Promise((r) => { onDrain = r; });
  }
}

if (mode === "seed") {
  for (let i = 0; i < ${SEED_CHUNKS}; i++) {
    const c = new Uint8Array(${SEED_CHUNK_BYTES});
    new DataView(c.buffer).setUint32(0, i);
    c.fill(i & 0xff, 4);
    await send(c);
  }
  sock.shutdown();
  await ended.promise;
} else if (mode === "recv") {
  await ended.promise;
  writeFileSync(arg, Buffer.concat(kept));
  sock.shutdown();
} else if (mode === "random") {
  const size = Number(arg);
  const writing = (async () => {
    for (let at = 0; at < size; at += 1 << 20) await send(randomBytes(Math.min(1 << 20, size - at)));
    sock.shutdown();
  })();
  await Promise.all([writing, ended.promise]);
} else {
  console.error("app: unknown mode " + mode);
  process.exit(2);
}
await Promise.race([closed.promise, Bun.sleep(2000)]);
console.log("result " + JSON.stringify({ sent, sentSha: sentHash.digest("hex"), received, receivedSha: recvHash.digest("hex") }));
process.exit(0);
`;

interface AppResult {
  sent: number;
  sentSha: string;
  received: number;
  receivedSha: string;
}

const sha = (b: Uint8Array) => new Bun.CryptoHasher("sha256").update(b).digest("hex");

describe.if(can.ok)("hotlink across three hosts: relay on S, alice on A, bob on B (A and B reach only S)", () => {
  let net: Net;
  let procs: NetProcs;
  let dir: string;
  let appScript: string;
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
    const app = procs.spawn(host, name, [process.execPath, appScript, String(port), ...args]);
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
    appScript = join(dir, "app.ts");
    writeFileSync(appScript, APP);

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
    for (let i = 0; i < SEED_CHUNKS; i++) {
      const chunk = bytes.subarray(i * SEED_CHUNK_BYTES, (i + 1) * SEED_CHUNK_BYTES);
      expect(chunk.readUInt32BE(0)).toBe(i);
      expect(chunk.subarray(4).every((b) => b === (i & 0xff))).toBe(true);
    }
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
