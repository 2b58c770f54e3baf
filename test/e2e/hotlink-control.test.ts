import { afterAll, describe, expect, test } from "bun:test";
import type { Socket } from "bun";
import { chmodSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { PURGE_DELAY_VARIABLE, SERVICE_PURGE_DELAY_MS } from "../../src/core/runtime.ts";
import { Scope, cleanEnv, freePorts, requireBinary } from "../fixtures/e2e-helpers.ts";
import { STOA } from "../helpers/stoa.ts";
import { eventually } from "../helpers/eventually.ts";

const scope = new Scope();
afterAll(() => scope.cleanup());

const CHANNEL = "alice/mpc/run1/0_to_1";

/** Runs a short dist/stoa command (tunnel, ls, close) to completion. */
function run(args: string[]): { code: number; out: string; err: string } {
  const p = Bun.spawnSync([STOA, ...args], { env: cleanEnv(), stdin: "ignore" });
  return { code: p.exitCode ?? -1, out: p.stdout.toString(), err: p.stderr.toString() };
}

/** A relay server and the daemons of alice and bob with no channels, each with its run dir. */
async function setUp() {
  requireBinary();
  const dir = scope.tempDir();
  const users = join(dir, "users.json");
  const tokenFile = (user: string) => {
    const r = run(["hotlink", "user", "add", user, "--users", users]);
    expect(r.code).toBe(0);
    const lines = r.out.trim().split("\n");
    const file = join(dir, `${user}.token`);
    writeFileSync(file, `${lines[lines.length - 1]}\n`);
    chmodSync(file, 0o600);
    return file;
  };
  const tokens = { alice: tokenFile("alice"), bob: tokenFile("bob") };
  const acl = join(dir, "acl.json");
  writeFileSync(acl, JSON.stringify({ rules: [{ pattern: "alice/mpc/**", read: ["bob"], write: ["bob"] }] }));
  const [relayPort] = freePorts(1);
  const server = scope.stoa("server", ["hotlink", "serve", "--listen", `127.0.0.1:${relayPort}`, "--users", users, "--acl", acl]);
  await server.waitFor("out", /ws:\/\//);
  const url = `ws://127.0.0.1:${relayPort}`;
  const runDir = join(dir, "run");
  const watch = join(dir, "datasites");
  mkdirSync(watch);
  const daemon = (user: "alice" | "bob", name: string = user) =>
    scope.stoa(name, [
      "hotlink", "connect", "--server", url, "--user", user, "--token-file", tokens[user], "--run-dir", runDir, "--watch", watch,
    ]);
  const alice = daemon("alice");
  const bob = daemon("bob");
  await alice.waitFor("out", /^hotlink: /m);
  await bob.waitFor("out", /^hotlink: /m);
  return { dir, runDir, watch, daemon, alice, bob };
}

/** One application connection: sends `data`, half-closes, and resolves with what it read until the peer's FIN. */
async function exchange(port: number, data: Uint8Array): Promise<{ sock: Socket<undefined>; received: Promise<Buffer> }> {
  const chunks: Buffer[] = [];
  const done = Promise.withResolvers<Buffer>();
  const sock = await Bun.connect({
    hostname: "127.0.0.1",
    port,
    allowHalfOpen: true,
    socket: {
      data: (_s, d) => void chunks.push(Buffer.from(d)),
      end: () => done.resolve(Buffer.concat(chunks)),
      close: () => done.resolve(Buffer.concat(chunks)),
    },
  });
  if (data.byteLength > 0) sock.write(data);
  return { sock, received: done.promise };
}

describe("stoa hotlink tunnel | ls | close against running daemons", () => {
  test("a tunnel added with the CLI carries bytes, is listed, and is closed", async () => {
    const { runDir, daemon, alice, bob } = await setUp();
    // connect moves bulk bytes: it runs with the allocator's setting for that (src/main.ts movesBytes).
    const delay = process.env[PURGE_DELAY_VARIABLE] ?? String(SERVICE_PURGE_DELAY_MS); // a value of the caller's stands
    expect(readFileSync(`/proc/${alice.pid}/environ`, "latin1").split("\0")).toContain(`${PURGE_DELAY_VARIABLE}=${delay}`);
    const a = run(["hotlink", "tunnel", `${CHANNEL}=127.0.0.1:0@bob`, "--user", "alice", "--run-dir", runDir, "--json"]);
    expect(a.err).toBe("");
    expect(a.code).toBe(0);
    const alicePort = (JSON.parse(a.out) as { tunnel: { port: number } }).tunnel.port;
    expect(alicePort).toBeGreaterThan(0);
    const [bobPort] = freePorts(1) as [number];
    const b = run(["hotlink", "tunnel", `${CHANNEL}=127.0.0.1:${bobPort}@alice`, "--user", "bob", "--run-dir", runDir]);
    expect(b.code).toBe(0);
    expect(b.out).toBe(`tunnel ${CHANNEL}: 127.0.0.1:${bobPort} <-> alice\n`);

    const bobTunnel = () =>
      (JSON.parse(run(["hotlink", "ls", "--json", "--user", "bob", "--run-dir", runDir]).out) as { status: { tunnels: { out: { state: string } | null }[] } }).status.tunnels[0];
    const message = Buffer.from("hello bob, from alice's application\n".repeat(100));
    const bobApp = await exchange(bobPort, new Uint8Array(0));
    await eventually("bob's session to be open", () => bobTunnel()?.out?.state === "open", { timeoutMs: 10_000 });
    const aliceApp = await exchange(alicePort, message);
    aliceApp.sock.shutdown(); // alice's FIN reaches bob's application after the bytes
    expect(await bobApp.received).toEqual(message);
    bobApp.sock.shutdown();
    expect(await aliceApp.received).toEqual(Buffer.alloc(0));

    const ls = run(["hotlink", "ls", "--json", "--user", "alice", "--run-dir", runDir]);
    expect(ls.code).toBe(0);
    const status = (JSON.parse(ls.out) as { status: { user: string; connected: boolean; tunnels: { channel: string; port: number; origin: string }[] } }).status;
    expect(status).toMatchObject({ user: "alice", connected: true });
    expect(status.tunnels).toEqual([expect.objectContaining({ channel: CHANNEL, port: alicePort, origin: "control" })]);
    const table = run(["hotlink", "ls", "--user", "alice", "--run-dir", runDir]);
    expect(table.code).toBe(0);
    expect(table.out).toMatch(/^alice via ws:\/\/.*: connected \(WebSocket\);/);
    expect(table.out).toMatch(new RegExp(`^tunnel\\s+${CHANNEL}\\s+127\\.0\\.0\\.1:${alicePort}\\s+bob\\s+control`, "m"));

    const closed = run(["hotlink", "close", CHANNEL, "--user", "alice", "--run-dir", runDir]);
    expect(closed).toMatchObject({ code: 0, out: `closed tunnel ${CHANNEL}\n` });
    const again = run(["hotlink", "close", CHANNEL, "--user", "alice", "--run-dir", runDir]);
    expect(again.code).toBe(1);
    expect(again.err).toBe(`stoa hotlink close: hotlink daemon: no tunnel or channel ${CHANNEL} is declared on this daemon (see stoa hotlink ls)\n`);
    const after = JSON.parse(run(["hotlink", "ls", "--json", "--user", "alice", "--run-dir", runDir]).out) as { status: { tunnels: unknown[] } };
    expect(after.status.tunnels).toEqual([]);

    // A bad spec is a usage error (exit 2) before any daemon is asked.
    const bad = run(["hotlink", "tunnel", "alice/x=nohostport", "--user", "alice", "--run-dir", runDir]);
    expect(bad.code).toBe(2);
    // Two daemons run in the run dir: without --user, ls asks which.
    const which = run(["hotlink", "ls", "--run-dir", runDir]);
    expect(which.code).toBe(2);
    expect(which.err).toContain("several hotlink daemons run in");

    // A second daemon for alice on the same run dir fails at once, and alice's keeps running.
    const second = daemon("alice", "alice-2");
    expect(await second.exitWithin(10_000)).toBe(1);
    expect(second.err).toContain("a hotlink daemon for user alice is already running with control socket");
    expect(run(["hotlink", "ls", "--user", "alice", "--run-dir", runDir]).code).toBe(0);
    expect(alice.running && bob.running).toBe(true);

    // A graceful stop removes the control socket.
    alice.proc.kill("SIGTERM");
    expect(await alice.exitWithin(10_000)).toBe(0);
    expect(existsSync(join(runDir, "hotlink", "alice.sock"))).toBe(false);
    expect(existsSync(join(runDir, "hotlink", "bob.sock"))).toBe(true);
  }, 60_000);

  test("a marker file under --watch starts a tunnel, removing it stops it", async () => {
    const { runDir, watch } = await setUp();
    const [pa, pb] = freePorts(2) as [number, number];
    const channelDir = join(watch, ...CHANNEL.split("/"));
    mkdirSync(channelDir, { recursive: true });
    writeFileSync(join(channelDir, "stream.tcp"), JSON.stringify({ from: "alice", to: "bob", port: pa, ports: { alice: pa, bob: pb } }));
    const listed = (user: string) =>
      (JSON.parse(run(["hotlink", "ls", "--json", "--user", user, "--run-dir", runDir]).out) as { status: { tunnels: { port: number; origin: string }[] } }).status.tunnels;
    await eventually("both tunnels from the marker", () => listed("alice")[0]?.port === pa && listed("bob")[0]?.port === pb, { timeoutMs: 10_000 });
    expect(listed("alice")[0]?.origin).toBe("watch");
    rmSync(join(channelDir, "stream.tcp"));
    await eventually("both tunnels to stop", () => listed("alice").length + listed("bob").length === 0, { timeoutMs: 10_000 });
  }, 60_000);

  test("with no daemon running, ls exits 1 with one line that says what to do", () => {
    requireBinary();
    const runDir = join(scope.tempDir(), "run");
    const r = run(["hotlink", "ls", "--user", "alice", "--run-dir", runDir]);
    expect(r.code).toBe(1);
    expect(r.out).toBe("");
    expect(r.err).toBe(
      `stoa hotlink ls: no hotlink daemon is running with control socket ${runDir}/hotlink/alice.sock; ` +
        `is \`stoa hotlink connect\` running for user alice with --run-dir ${runDir}?\n`,
    );
    const any = run(["hotlink", "ls", "--run-dir", runDir]);
    expect(any.code).toBe(1);
    expect(any.err.trim().split("\n")).toHaveLength(1);
    expect(any.err).toContain("no hotlink daemon is running");
  });
});
