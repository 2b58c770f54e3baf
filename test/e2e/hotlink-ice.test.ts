/**
 * ICE from the single binary alone: dist/stoa copied into an empty directory, run from there with
 * no node_modules anywhere above it, must still load libwebrtc (the addon is embedded at build
 * time: patches/@roamhq%2Fwrtc@0.10.0.patch makes its require static). A relay and two daemons
 * with `--direct ice` on loopback; a 4 MiB stream through the tunnel arrives intact and `ls`
 * shows the session on the ICE rung.
 */
import { afterAll, expect, test } from "bun:test";
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
