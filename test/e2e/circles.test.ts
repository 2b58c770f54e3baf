/**
 * `stoa circles` as a black box (dist/stoa): keygen, serve's key checks, `-k a -k b` = `-k a,b`,
 * keygen + play with auth (`40 + 2` → 42, stdin, refusals), and SIGTERM with plays in flight.
 * The tests that serve plays need the real task queue (src/circles/queues.ts).
 */
import { afterEach, describe, expect, test } from "bun:test";
import { readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { RpcClient, newPrivateKey, publicKeyHex } from "../fixtures/circles-client.ts";
import { type Proc, Scope, freePorts, requireBinary } from "../fixtures/e2e-helpers.ts";
import { eventually } from "../helpers/eventually.ts";
import { STOA, stoa } from "../helpers/stoa.ts";

requireBinary();
const scope = new Scope();
afterEach(() => scope.cleanup());

/** Starts `stoa circles serve` on a free port; resolves once it printed its URL line. */
async function serve(args: string[]): Promise<{ proc: Proc; ws: string; http: string }> {
  const [port] = freePorts(1);
  const proc = scope.stoa("circles serve", ["circles", "serve", "--port", String(port), ...args]);
  const line = await proc.waitFor("out", /^circles: (ws:\/\/\S+) .*console (http:\/\/\S+)\/\)$/m);
  return { proc, ws: line[1] ?? "", http: line[2] ?? "" };
}

function keygen(dir: string, name: string): { file: string; pub: string } {
  const file = join(dir, `${name}.key`);
  const run = stoa(["circles", "keygen", "--out", file]);
  expect(run.code).toBe(0);
  return { file, pub: run.stdout.trim() };
}

describe("stoa circles keygen", () => {
  test("--out F: the private key as hex in a 0600 file, the public key on stdout; --json says both", () => {
    const dir = scope.tempDir();
    const { file, pub } = keygen(dir, "me");
    expect(pub).toMatch(/^0[23][0-9a-f]{64}$/);
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(readFileSync(file, "utf8")).toMatch(/^[0-9a-f]{64}\n$/);
    const json = stoa(["circles", "keygen", "--out", join(dir, "j.key"), "--json"]);
    expect(json.code).toBe(0);
    const parsed = JSON.parse(json.stdout) as { public_key: string; private_key_file: string };
    expect(parsed).toEqual({ public_key: expect.stringMatching(/^0[23][0-9a-f]{64}$/), private_key_file: join(dir, "j.key") });
    // Never replaces a key, and never prints a private key unasked.
    const again = stoa(["circles", "keygen", "--out", file]);
    expect(again.code).toBe(1);
    expect(again.stderr).toContain("exists already");
    const bare = stoa(["circles", "keygen"]);
    expect(bare.code).toBe(2);
    expect(bare.stderr).toContain("--out");
    expect(bare.stdout).toBe("");
  });
});

describe("stoa circles serve: keys", () => {
  test("a bad key exits 2 with one line naming the key and the problem", () => {
    const good = publicKeyHex(newPrivateKey());
    const cases: Array<[string, string]> = [
      ["xyz", "is not hex"],
      ["02abcd", "is 3 bytes"],
      [`04${"00".repeat(64)}`, "is not a point"],
    ];
    for (const [bad, problem] of cases) {
      const run = stoa(["circles", "serve", "--port", "0", "-k", good, "-k", bad]);
      expect(run.code).toBe(2);
      const lines = run.stderr.trimEnd().split("\n");
      expect(lines).toHaveLength(1);
      expect(lines[0]).toStartWith("stoa circles serve: bad -k/--public-key: public key ");
      expect(lines[0]).toContain(`"${bad.slice(0, 40)}`); // a long key is shown cut at 80 characters
      expect(lines[0]).toContain(problem);
    }
    const none = stoa(["circles", "serve", "--port", "0"]);
    expect(none.code).toBe(2);
    expect(none.stderr).toContain("-k/--public-key is required");
  });

  test("-k a -k b serves what -k a,b serves", async () => {
    const [keyA, keyB] = [newPrivateKey(), newPrivateKey()];
    // One compressed, one uncompressed: both are served under their canonical (compressed) form.
    const [a, b] = [publicKeyHex(keyA), publicKeyHex(keyB, false)];
    const repeated = await serve(["-k", a, "-k", b]);
    const listed = await serve(["-k", `${a},${b}`]);
    const circles = async (http: string) => (await (await fetch(`${http}/circles`)).json()) as { circles: string[] };
    const expected = { circles: [a, publicKeyHex(keyB)], auth: false };
    expect(await circles(repeated.http)).toEqual(expected);
    expect(await circles(listed.http)).toEqual(expected);
    const lines = (proc: Proc) => proc.out.split("\n").filter((line) => line.startsWith("  ws://")).map((line) => line.trim().replace(/:\d+\//, ":PORT/"));
    expect(lines(repeated.proc)).toEqual(lines(listed.proc));
    expect(lines(listed.proc)).toHaveLength(2);
  });
});

describe("stoa circles play", () => {
  test("keygen, serve with auth, play: 42; without a key -32001's message and exit 1; stdin with -", async () => {
    const dir = scope.tempDir();
    const circle = keygen(dir, "circle");
    const me = keygen(dir, "me");
    const server = await serve(["-k", circle.pub, "--enable-auth"]);
    const url = `${server.ws}/${circle.pub}`;
    const played = stoa(["circles", "play", "--url", url, "--key-file", me.file, "40 + 2"]);
    expect(played).toMatchObject({ code: 0, stdout: "42\n" });
    const unauthenticated = stoa(["circles", "play", "--url", url, "40 + 2"]);
    expect(unauthenticated.code).toBe(1);
    expect(unauthenticated.stderr).toContain("authentication required");
    expect(unauthenticated.stdout).toBe("");
    const script = join(dir, "script.js");
    writeFileSync(script, "print(CALLER_ID); 1");
    const fromStdin = Bun.spawnSync(["sh", "-c", `"$0" circles play --url "$1" --key-file "$2" - < "$3"`, join(import.meta.dir, "..", "..", "dist", "stoa"), url, me.file, script]);
    expect(fromStdin.exitCode).toBe(0);
    expect(fromStdin.stdout.toString()).toContain(me.pub);
  });

  test("a script error and a refused upgrade print the server's message and exit 1", async () => {
    const dir = scope.tempDir();
    const circle = keygen(dir, "circle");
    const server = await serve(["-k", circle.pub]);
    const bad = stoa(["circles", "play", "--url", `${server.ws}/${circle.pub}`, "this is not javascript"]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/^stoa circles play: .*SyntaxError/);
    const unknown = publicKeyHex(newPrivateKey());
    const refused = stoa(["circles", "play", "--url", `${server.ws}/${unknown}`, "1"]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain(`404 Circle not found: Circle '${unknown}' is not available on this server`);
  });

  test("a server that is not there: exit 1 saying so", () => {
    const [port] = freePorts(1);
    const run = stoa(["circles", "play", "--url", `ws://127.0.0.1:${port}/${publicKeyHex(newPrivateKey())}`, "1", "--timeout", "3s", "--wait", "0"]);
    expect(run.code).toBe(1);
    expect(run.stderr).toContain("cannot connect");
  });

  test("--wait D: a play started before its server waits for it, and says so once after a second", async () => {
    const dir = scope.tempDir();
    const circle = keygen(dir, "circle");
    const [port] = freePorts(1);
    const play = Bun.spawn([STOA, "circles", "play", "--url", `ws://127.0.0.1:${port}/${circle.pub}`, "--wait", "20s", "40 + 2"], { stdout: "pipe", stderr: "pipe" });
    await Bun.sleep(1_500); // the server starts late on purpose: the play must wait, not fail
    scope.stoa("circles serve", ["circles", "serve", "--port", String(port), "-k", circle.pub]);
    expect(await play.exited).toBe(0);
    expect(await new Response(play.stdout).text()).toBe("42\n");
    expect(await new Response(play.stderr).text()).toContain("waiting for the circles server");
  }, 30_000);
});

describe("SIGTERM", () => {
  test("plays in flight are answered or failed with a reason, and no process is left", async () => {
    const dir = scope.tempDir();
    const circle = keygen(dir, "circle");
    const server = await serve(["-k", circle.pub, "--task-timeout", "2s"]);
    const clients = await Promise.all(Array.from({ length: 4 }, () => RpcClient.open(`${server.ws}/${circle.pub}`)));
    // First a play that answers (one worker per circle: behind the loops it would wait their timeout).
    expect((await clients[0]?.call("play", { script: "40 + 2" }))?.result).toEqual({ output: "42" });
    const answers = clients.map((client) => client.call("play", { script: "for (;;) {}" }));
    await eventually("four plays in flight on the server", async () => {
      const text = await (await fetch(`${server.http}/metrics`)).text();
      return /^stoa_circles_plays_in_flight 4$/m.test(text);
    });
    server.proc.proc.kill("SIGTERM");
    for (const answer of await Promise.all(answers)) {
      expect(answer.error?.code === -32003 || (answer.error?.code === -32000 && /server stopping/.test(answer.error.message))).toBe(true);
    }
    expect(await server.proc.exitWithin(8_000)).toBe(0);
    const children = Bun.spawnSync(["pgrep", "-P", String(server.proc.pid)]).stdout.toString().trim();
    expect(children).toBe("");
    expect(Bun.spawnSync(["kill", "-0", String(server.proc.pid)]).exitCode).not.toBe(0);
  }, 20_000);
});
