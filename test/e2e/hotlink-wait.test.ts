/**
 * `stoa hotlink connect` and a relay that is not there (yet): said at the default log level,
 * once per backoff step, and `--wait D` for the first connection — scripts start the relay and
 * its daemons together.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { chmodSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Scope, freePorts, requireBinary } from "../fixtures/e2e-helpers.ts";
import { STOA } from "../helpers/stoa.ts";

const scope = new Scope();
afterAll(() => scope.cleanup());

function user(dir: string, users: string, name: string): string {
  const run = Bun.spawnSync([STOA, "hotlink", "user", "add", name, "--users", users]);
  expect(run.exitCode).toBe(0);
  const file = join(dir, `${name}.token`);
  writeFileSync(file, run.stdout.toString());
  chmodSync(file, 0o600);
  return file;
}

describe("hotlink connect before its relay", () => {
  test("says at info, once per backoff step with the reason, that the relay is unreachable; connects once it starts", async () => {
    requireBinary();
    const dir = scope.tempDir();
    const users = join(dir, "users.json");
    const token = user(dir, users, "alice");
    const [port] = freePorts(1);
    const daemon = scope.stoa("alice", [
      "hotlink", "connect", "--server", `ws://127.0.0.1:${port}`, "--user", "alice", "--token-file", token, "--run-dir", join(dir, "run"),
    ]);
    await daemon.waitFor("err", /INFO +hotlink: relay server not reachable; retrying/, 10_000);
    // Let a few dials fail (200, 400, 800 ms steps), then start the relay.
    await Bun.sleep(2_500);
    const relay = scope.stoa("relay", ["hotlink", "serve", "--listen", `127.0.0.1:${port}`, "--users", users]);
    await relay.waitFor("out", /^hotlink: ws:/m, 10_000);
    await daemon.waitFor("out", /^hotlink: alice via /m, 15_000);
    const said = daemon.err.split("\n").filter((l) => /relay server not reachable/.test(l));
    expect(said.length).toBeGreaterThanOrEqual(2);
    for (const line of said) {
      expect(line).toMatch(/^\S+ INFO /);
      expect(line).toMatch(/reason="?[^ ]/);
    }
    // Once per step: no step said twice.
    const steps = said.map((l) => l.match(/retry_in_ms=(\d+)/)?.[1]);
    expect(new Set(steps).size).toBe(steps.length);
  }, 40_000);

  test("--wait D: a relay that never answers ends the daemon after D with the reason and what to check", async () => {
    requireBinary();
    const dir = scope.tempDir();
    const users = join(dir, "users.json");
    const token = user(dir, users, "bob");
    const [port] = freePorts(1);
    const daemon = scope.stoa("bob", [
      "hotlink", "connect", "--server", `ws://127.0.0.1:${port}`, "--user", "bob", "--token-file", token, "--run-dir", join(dir, "run"), "--wait", "1500ms",
    ]);
    expect(await daemon.exitWithin(15_000)).toBe(1);
    expect(daemon.err).toContain(`cannot reach the relay server at ws://127.0.0.1:${port} within 1.5s`);
    expect(daemon.err).toContain("is stoa hotlink serve running there?");
    expect(daemon.out).not.toContain("hotlink: bob via");
  }, 30_000);
});
