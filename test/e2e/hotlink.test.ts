import { afterAll, describe, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { chmodSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Scope, freePorts, requireBinary } from "../fixtures/e2e-helpers.ts";
import { type App, app, sha256hex } from "../fixtures/hotlink-apps.ts";
import { STOA } from "../helpers/stoa.ts";
import { eventually } from "../helpers/eventually.ts";

const scope = new Scope();
afterAll(() => scope.cleanup());

const CHANNEL = "alice/mpc/run1/0_to_1";

/** A relay server and the daemons of alice and bob with one tunnel between them, all compiled stoa processes. */
async function setUp(daemonArgs: string[] = []) {
  requireBinary();
  const dir = scope.tempDir();
  const users = join(dir, "users.json");
  const tokenFile = (user: string) => {
    const run = Bun.spawnSync([STOA, "hotlink", "user", "add", user, "--users", users]);
    expect(run.exitCode).toBe(0);
    const lines = run.stdout.toString().trim().split("\n");
    const file = join(dir, `${user}.token`);
    writeFileSync(file, `${lines[lines.length - 1]}\n`);
    chmodSync(file, 0o600);
    return file;
  };
  const tokens = { alice: tokenFile("alice"), bob: tokenFile("bob") };
  const acl = join(dir, "acl.json");
  writeFileSync(acl, JSON.stringify({ rules: [{ pattern: "alice/mpc/**", read: ["bob"], write: ["bob"] }] }));
  const [relayPort, metricsPort, alicePort, bobPort, linkPort] = freePorts(5);
  // The relay offers its framed TCP link too; the daemons (--relay-link auto) take it.
  const server = scope.stoa("server", [
    "hotlink", "serve", "--listen", `127.0.0.1:${relayPort}`, "--link-listen", `127.0.0.1:${linkPort}`, "--users", users, "--acl", acl,
    "--metrics-listen", `127.0.0.1:${metricsPort}`,
  ]);
  await server.waitFor("out", /ws:\/\//);
  await server.waitFor("out", new RegExp(`^hotlink link: tcp port ${linkPort}$`, "m"));
  const url = `ws://127.0.0.1:${relayPort}`;
  const daemon = (user: "alice" | "bob", port: number, peer: string) =>
    scope.stoa(user, [
      "hotlink", "connect", "--server", url, "--user", user, "--token-file", tokens[user],
      "--tunnel", `${CHANNEL}=127.0.0.1:${port}@${peer}`, "--telemetry", join(dir, `${user}.json`),
      // Each set-up its own run dir: one daemon per user and run dir (the control socket's rule).
      "--run-dir", join(dir, "run"),
      ...daemonArgs,
    ]);
  const alice = daemon("alice", alicePort ?? 0, "bob");
  const bob = daemon("bob", bobPort ?? 0, "alice");
  await alice.waitFor("out", /^hotlink: /m);
  await bob.waitFor("out", /^hotlink: /m);
  const sessions = async () => {
    const text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
    const m = text.match(/^stoa_hotlink_sessions (\d+)/m);
    return m === null ? -1 : Number(m[1]);
  };
  return { dir, server, alice, bob, alicePort: alicePort ?? 0, bobPort: bobPort ?? 0, sessions, metricsPort };
}

const sha = sha256hex;
/** Application sockets end with their test; the daemons and the server are the scope's. */
const own = (): void => {};

describe("stoa hotlink: relay server and two daemons as separate processes", () => {
  test("the seed's tunnel test, then 256 MiB of random bytes both ways at once (SHA-256 equal)", async () => {
    const { alicePort, bobPort, sessions, dir, server, alice, bob } = await setUp();
    // Both daemons on the relay's framed link, as ls says.
    for (const user of ["alice", "bob"]) {
      const ls = Bun.spawnSync([STOA, "hotlink", "ls", "--json", "--user", user, "--run-dir", join(dir, "run")]);
      expect(ls.exitCode).toBe(0);
      expect((JSON.parse(ls.stdout.toString()) as { status: { relay_link?: string } }).status.relay_link).toBe("tcp");
      const table = Bun.spawnSync([STOA, "hotlink", "ls", "--user", user, "--run-dir", join(dir, "run")]);
      expect(table.stdout.toString()).toContain("connected (framed TCP link)");
    }
    // The seed's test: bob's application connected first; 20 chunks of 4096 bytes in order.
    const bobApp = await app(bobPort, own);
    await eventually("bob's session on the server", async () => (await sessions()) === 1, { timeoutMs: 10_000 });
    const aliceApp = await app(alicePort, own);
    for (let i = 0; i < 20; i++) {
      const c = new Uint8Array(4096);
      new DataView(c.buffer).setUint32(0, i);
      c.fill(i & 0xff, 4);
      await aliceApp.send(c);
    }
    await eventually("81,920 bytes at bob's application", () => bobApp.bytes() >= 81_920);
    const got = bobApp.received();
    expect(got.byteLength).toBe(81_920);
    for (let i = 0; i < 20; i++) {
      expect(got.readUInt32BE(i * 4096)).toBe(i);
      expect(got.subarray(i * 4096 + 4, (i + 1) * 4096).every((b) => b === (i & 0xff))).toBe(true);
    }
    aliceApp.sock.shutdown();
    bobApp.sock.shutdown();
    await Promise.all([aliceApp.closed, bobApp.closed]);

    const size = 256 * 1024 * 1024;
    const a2b = randomBytes(size);
    const b2a = randomBytes(size);
    const bob2 = await app(bobPort, own);
    const alice2 = await app(alicePort, own);
    const pump = async (a: App, data: Uint8Array) => {
      for (let at = 0; at < data.length; at += 1024 * 1024) await a.send(data.subarray(at, at + 1024 * 1024));
      a.sock.shutdown();
    };
    await Promise.all([pump(alice2, a2b), pump(bob2, b2a), alice2.ended, bob2.ended]);
    if (bob2.bytes() !== size || alice2.bytes() !== size) {
      await Bun.sleep(200); // the processes' last log lines, for the diagnosis below
      console.log(server.describe(), alice.describe(), bob.describe());
    }
    expect(bob2.bytes()).toBe(size);
    expect(alice2.bytes()).toBe(size);
    expect(sha(bob2.received())).toBe(sha(a2b));
    expect(sha(alice2.received())).toBe(sha(b2a));
    await eventually("the server to hold no session", async () => (await sessions()) === 0);
    // Telemetry: rewritten every second, with what went through.
    const telemetry = await eventually("telemetry with the bytes", async () => {
      const t = (await Bun.file(join(dir, "bob.json")).json()) as { rx: { bytes: number }; mode: string; direct: { rx: { bytes: number } } };
      return t.rx.bytes >= size ? t : undefined;
    });
    // Both daemons on one host: bob's offer is reachable, so the sessions went direct (--direct on
    // is the default); the first frames may have gone on the relay before the upgrade.
    expect(["direct", "mixed"]).toContain(telemetry.mode);
    expect(telemetry.direct.rx.bytes).toBeGreaterThan(size / 2);
  }, 120_000);

  test("the sender's daemon killed mid-stream: the receiving application's connection is reset, the server holds no session", async () => {
    const { alice, alicePort, bobPort, sessions } = await setUp();
    const bobApp = await app(bobPort, own);
    const aliceApp = await app(alicePort, own);
    await aliceApp.send(new Uint8Array(100_000));
    await eventually("the first bytes at bob's application", () => bobApp.bytes() >= 100_000, { timeoutMs: 10_000 });
    // Bob's daemon may have held alice's first bytes before it took its application's connection
    // (tunnel.ts: what arrives first is held), so its own session may open a moment later.
    await eventually("both directions' sessions on the server", async () => (await sessions()) === 2, { timeoutMs: 10_000 });
    alice.proc.kill("SIGKILL");
    // A FIN would tell bob's application that alice's stream ended complete.
    await bobApp.ended;
    expect(bobApp.finSeen()).toBe(false);
    expect(await bobApp.closed).toBeInstanceOf(Error);
    await eventually("the server to hold no session", async () => (await sessions()) === 0, { timeoutMs: 10_000 });
  }, 60_000);
});

describe("stoa hotlink: a tunnel on a relay stream (--direct off, the framed link)", () => {
  test("64 MiB both ways ride one spliced stream: intact, ls --json says so, telemetry counts it, the relay's metrics too", async () => {
    const { dir, alicePort, bobPort, sessions, metricsPort } = await setUp(["--direct", "off"]);
    const lsJson = (user: string) => {
      const ls = Bun.spawnSync([STOA, "hotlink", "ls", "--json", "--user", user, "--run-dir", join(dir, "run")]);
      expect(ls.exitCode).toBe(0);
      return (JSON.parse(ls.stdout.toString()) as { status: { tunnels: { stream?: string }[]; counters: { relay: { rxBytes: number }; stream?: { connections: number; rxBytes: number } } } }).status;
    };
    const size = 64 * 1024 * 1024;
    const a2b = randomBytes(size);
    const b2a = randomBytes(size);
    const bobApp = await app(bobPort, own);
    const aliceApp = await app(alicePort, own);
    await eventually("both spliced", () => (lsJson("alice").tunnels[0]?.stream === "spliced" && lsJson("bob").tunnels[0]?.stream === "spliced") || undefined, { timeoutMs: 10_000 });
    // One session carries both directions.
    expect(await sessions()).toBe(1);
    const pump = async (a: App, data: Uint8Array) => {
      for (let at = 0; at < data.length; at += 1024 * 1024) await a.send(data.subarray(at, at + 1024 * 1024));
      a.sock.shutdown();
    };
    await Promise.all([pump(aliceApp, a2b), pump(bobApp, b2a), aliceApp.ended, bobApp.ended]);
    expect(sha(bobApp.received())).toBe(sha(a2b));
    expect(sha(aliceApp.received())).toBe(sha(b2a));
    expect(await aliceApp.closed).toBeUndefined();
    expect(await bobApp.closed).toBeUndefined();
    await eventually("the server to hold no session", async () => (await sessions()) === 0);
    const bob = lsJson("bob");
    expect(bob.counters.stream).toMatchObject({ connections: 1, rxBytes: size });
    expect(bob.counters.relay.rxBytes).toBe(0);
    const table = Bun.spawnSync([STOA, "hotlink", "ls", "--user", "bob", "--run-dir", join(dir, "run")]).stdout.toString();
    expect(table).toContain("; relay streams 1, tx 64.0 MiB, rx 64.0 MiB");
    const telemetry = await eventually("telemetry with the bytes", async () => {
      const t = (await Bun.file(join(dir, "bob.json")).json()) as { rx: { bytes: number }; mode: string; stream: { connections: number; tx: { bytes: number }; rx: { bytes: number } } };
      return t.rx.bytes >= size ? t : undefined;
    });
    expect(telemetry.mode).toBe("relay");
    expect(telemetry.stream).toEqual({ connections: 1, tx: { bytes: size }, rx: { bytes: size } });
    const metrics = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
    expect(metrics).toMatch(/^stoa_hotlink_streams 0$/m);
    expect(metrics).toMatch(/^stoa_hotlink_streams_total\{outcome="orderly"\} 1$/m);
    expect(metrics).toContain(`stoa_hotlink_stream_bytes_total ${2 * size}\n`);
  }, 120_000);

  test("the sender's daemon killed mid-stream: its sockets are reset by the kernel, so bob's application is reset too, and the server holds no session", async () => {
    const { dir, alice, alicePort, bobPort, sessions } = await setUp(["--direct", "off"]);
    const bobApp = await app(bobPort, own);
    const aliceApp = await app(alicePort, own);
    await aliceApp.send(new Uint8Array(100_000));
    await eventually("the first bytes at bob's application", () => bobApp.bytes() >= 100_000, { timeoutMs: 10_000 });
    const ls = Bun.spawnSync([STOA, "hotlink", "ls", "--json", "--user", "alice", "--run-dir", join(dir, "run")]);
    expect((JSON.parse(ls.stdout.toString()) as { status: { tunnels: { stream?: string }[] } }).status.tunnels[0]?.stream).toBe("spliced");
    expect(Bun.spawnSync([STOA, "hotlink", "ls", "--user", "alice", "--run-dir", join(dir, "run")]).stdout.toString()).toMatch(/^tunnel +alice\/mpc\/run1\/0_to_1 .* relay-stream /m);
    alice.proc.kill("SIGKILL");
    await bobApp.ended;
    expect(bobApp.finSeen()).toBe(false);
    expect(await bobApp.closed).toBeInstanceOf(Error);
    await eventually("the server to hold no session", async () => (await sessions()) === 0, { timeoutMs: 10_000 });
  }, 60_000);
});
