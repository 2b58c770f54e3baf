/**
 * ICE from the single binary alone: dist/stoa copied into an empty directory, run from there with
 * no node_modules anywhere above it, must still load libwebrtc (the addon is embedded at build
 * time: patches/@roamhq%2Fwrtc@0.10.0.patch makes its require static). A relay and two daemons
 * with `--direct ice` on loopback; a 4 MiB stream through the tunnel arrives intact and `ls`
 * shows the session on the ICE rung. Then where a daemon's STUN/TURN servers come from — the
 * flag, the seed's environment variable, the relay's Welcome — as `ls` shows them, and the usage
 * errors of a bad list from each source.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { chmodSync, copyFileSync, existsSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { Scope, freePorts, requireBinary } from "../fixtures/e2e-helpers.ts";
import { app, sha256hex } from "../fixtures/hotlink-apps.ts";
import { eventually } from "../helpers/eventually.ts";
import { STOA } from "../helpers/stoa.ts";

const scope = new Scope();
afterAll(() => scope.cleanup());
const CHANNEL = "alice/ice/binary";

test("a copy of dist/stoa alone in an empty directory carries a session on ICE", async () => {
  requireBinary();
  const dir = scope.tempDir();
  const stoa = join(dir, "stoa");
  copyFileSync(STOA, stoa);
  chmodSync(stoa, 0o755);
  for (let d = dir; d !== "/"; d = dirname(d)) expect(existsSync(join(d, "node_modules"))).toBe(false);
  const users = join(dir, "users.json");
  const token = (user: string): string => {
    const run = Bun.spawnSync([stoa, "hotlink", "user", "add", user, "--users", users], { cwd: dir });
    expect(run.exitCode).toBe(0);
    const file = join(dir, `${user}.token`);
    writeFileSync(file, `${run.stdout.toString().trim().split("\n").at(-1)}\n`);
    chmodSync(file, 0o600);
    return file;
  };
  const tokens = { alice: token("alice"), bob: token("bob") };
  const acl = join(dir, "acl.json");
  writeFileSync(acl, JSON.stringify({ rules: [{ pattern: "alice/ice/**", read: ["bob"], write: ["bob"] }] }));
  const [relayPort, alicePort, bobPort] = freePorts(3);
  const run = (name: string, args: string[]) => scope.spawn(name, [stoa, ...args], { cwd: dir, env: { TMPDIR: dir } });
  const server = run("server", ["hotlink", "serve", "--listen", `127.0.0.1:${relayPort}`, "--users", users, "--acl", acl]);
  await server.waitFor("out", /ws:\/\//);
  const daemon = (user: "alice" | "bob", port: number, peer: string) =>
    run(user, [
      "hotlink", "connect", "--server", `ws://127.0.0.1:${relayPort}`, "--user", user, "--token-file", tokens[user],
      "--direct", "ice", "--tunnel", `${CHANNEL}=127.0.0.1:${port}@${peer}`, "--run-dir", join(dir, "run"),
    ]);
  const alice = daemon("alice", alicePort ?? 0, "bob");
  const bob = daemon("bob", bobPort ?? 0, "alice");
  await alice.waitFor("out", /^hotlink: /m);
  await bob.waitFor("out", /^hotlink: /m);

  const own = (): void => {};
  const bobApp = await app(bobPort ?? 0, own);
  const aliceApp = await app(alicePort ?? 0, own);
  const ls = (): { out: { rung: string } | null } | undefined => {
    const r = Bun.spawnSync([stoa, "hotlink", "ls", "--json", "--user", "alice", "--run-dir", join(dir, "run")], { cwd: dir });
    return (JSON.parse(r.stdout.toString()) as { status: { tunnels: { out: { rung: string } | null }[] } }).status.tunnels[0];
  };
  await eventually("alice's session on ICE", () => ls()?.out?.rung === "ice", { timeoutMs: 15_000, everyMs: 50 }).catch((err: unknown) => {
    throw new Error(`${String(err)}\n${alice.describe()}\n${bob.describe()}`);
  });
  const payload = randomBytes(4 * 1024 * 1024);
  for (let at = 0; at < payload.length; at += 256 * 1024) await aliceApp.send(payload.subarray(at, at + 256 * 1024));
  aliceApp.sock.shutdown();
  bobApp.sock.shutdown();
  await bobApp.ended;
  expect(sha256hex(bobApp.received())).toBe(sha256hex(payload));
  expect(alice.err).not.toContain("cannot load the WebRTC library");
}, 60_000);

describe("where a daemon's ICE servers come from: --ice-servers, else $SYFTBOX_HOTLINK_ICE_SERVERS, else the relay's Welcome", () => {
  test("each source in turn, as ls shows them (passwords hidden); a bad list is a usage error naming its source", async () => {
    requireBinary();
    const dir = scope.tempDir();
    const users = join(dir, "users.json");
    const run = Bun.spawnSync([STOA, "hotlink", "user", "add", "alice", "--users", users]);
    expect(run.exitCode).toBe(0);
    const token = join(dir, "alice.token");
    writeFileSync(token, `${run.stdout.toString().trim().split("\n").at(-1)}\n`);
    chmodSync(token, 0o600);
    const [relayPort] = freePorts(1);
    const welcome = "stun:198.51.100.7:3478,turn:peer:w3lcome@198.51.100.7:3479";
    const server = scope.stoa("server-ice", ["hotlink", "serve", "--listen", `127.0.0.1:${relayPort}`, "--users", users, "--ice-servers", welcome]);
    await server.waitFor("out", /ws:\/\//);
    const daemon = async (name: string, extra: string[], env: Record<string, string> = {}): Promise<string> => {
      const runDir = join(dir, `run-${name}`);
      const d = scope.stoa(name, ["hotlink", "connect", "--server", `ws://127.0.0.1:${relayPort}`, "--user", "alice", "--token-file", token, "--run-dir", runDir, ...extra], { env });
      await d.waitFor("out", /^hotlink: /m);
      const ls = Bun.spawnSync([STOA, "hotlink", "ls", "--user", "alice", "--run-dir", runDir]);
      expect(ls.exitCode).toBe(0);
      d.proc.kill("SIGTERM");
      await d.exitWithin(5_000);
      return ls.stdout.toString();
    };
    const fromWelcome = await daemon("welcome", []);
    expect(fromWelcome).toContain("rungs: tls > ice > relay; ICE servers: stun:198.51.100.7:3478, turn:peer:***@198.51.100.7:3479");
    expect(fromWelcome).not.toContain("w3lcome");
    const fromEnv = await daemon("env", [], { SYFTBOX_HOTLINK_ICE_SERVERS: "stun:192.0.2.1:19302" });
    expect(fromEnv).toContain("ICE servers: stun:192.0.2.1:19302");
    const fromFlag = await daemon("flag", ["--ice-servers", "stun:[2001:db8::9]:3478", "--direct", "ice"], { SYFTBOX_HOTLINK_ICE_SERVERS: "stun:192.0.2.1:19302" });
    expect(fromFlag).toContain("rungs: ice > relay; ICE servers: stun:[2001:db8::9]:3478");
    expect(await daemon("tls", ["--direct", "tls"])).toContain("rungs: tls > relay\n");

    const bad = (args: string[], env: Record<string, string> = {}) =>
      Bun.spawnSync([STOA, "hotlink", "connect", "--server", `ws://127.0.0.1:${relayPort}`, "--user", "alice", "--token-file", token, "--run-dir", join(dir, "run-bad"), ...args], { env: { ...process.env, ...env } });
    const flag = bad(["--ice-servers", "turn:nopass@host"]);
    expect(flag.exitCode).toBe(2);
    expect(flag.stderr.toString()).toContain("--ice-servers: ");
    const env = bad([], { SYFTBOX_HOTLINK_ICE_SERVERS: "stun:host:99999" });
    expect(env.exitCode).toBe(2);
    expect(env.stderr.toString()).toContain("$SYFTBOX_HOTLINK_ICE_SERVERS: ");
    const serve = Bun.spawnSync([STOA, "hotlink", "serve", "--listen", "127.0.0.1:0", "--users", users, "--ice-servers", "stun:"]);
    expect(serve.exitCode).toBe(2);
    expect(serve.stderr.toString()).toContain("--ice-servers");
  }, 60_000);
});
