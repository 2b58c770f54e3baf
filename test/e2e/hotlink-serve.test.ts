import { afterAll, describe, expect, test } from "bun:test";
import { readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { MessageType, PROTOCOL_VERSION, encodeMessage, parseMessage } from "../../src/hotlink/protocol.ts";
import { formatAuthorization } from "../../src/hotlink/users.ts";
import { PURGE_DELAY_VARIABLE, SERVICE_PURGE_DELAY_MS } from "../../src/core/runtime.ts";
import { Scope, freePorts, requireBinary } from "../fixtures/e2e-helpers.ts";
import { STOA, stoa } from "../helpers/stoa.ts";
import { eventually } from "../helpers/eventually.ts";

const scope = new Scope();
afterAll(() => scope.cleanup());

/** Opens a WebSocket with `user`'s token, says Hello, and resolves with the Welcome's user. */
async function welcome(url: string, user: string, token: string): Promise<string> {
  const ws = new WebSocket(url, { headers: { Authorization: formatAuthorization(user, token) } });
  ws.binaryType = "arraybuffer";
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await new Promise<string>((resolve, reject) => {
      ws.onopen = () => ws.send(encodeMessage({ t: MessageType.Hello, v: PROTOCOL_VERSION }));
      ws.onmessage = (e: MessageEvent) => {
        const m = parseMessage(new Uint8Array(e.data as ArrayBuffer));
        if (m.t === MessageType.Welcome) resolve(m.usr);
        else reject(new Error(`expected Welcome, got type ${m.t}`));
      };
      ws.onerror = () => reject(new Error("the WebSocket did not open"));
      // A refused upgrade may end in close without error: never wait forever for either.
      ws.onclose = (e: CloseEvent) => reject(new Error(`the WebSocket did not open, or closed before Welcome (${e.code})`));
      timer = setTimeout(() => reject(new Error("no Welcome within 5 s (the WebSocket did not open?)")), 5_000);
    });
  } finally {
    clearTimeout(timer);
    ws.close();
  }
}

describe("stoa hotlink", () => {
  test("user add prints only the token on stdout (the words with -v, on stderr) and stores only its hash; ls lists, remove removes", () => {
    requireBinary();
    const users = join(scope.tempDir(), "users.json");
    const add = stoa(["hotlink", "user", "add", "alice@example.org", "--users", users]);
    expect(add.code).toBe(0);
    expect(add.stderr).toBe("");
    const token = add.stdout.trimEnd();
    expect(token).toMatch(/^hlk_[A-Za-z0-9_-]{43}$/);
    const verbose = stoa(["hotlink", "user", "add", "carol", "--users", users, "-v"]);
    expect(verbose.stdout).toMatch(/^hlk_[A-Za-z0-9_-]{43}\n$/);
    expect(verbose.stderr).toContain("only its hash is stored");
    expect(stoa(["hotlink", "user", "remove", "carol", "--users", users]).code).toBe(0);
    const file = readFileSync(users, "utf8");
    expect(file).not.toContain(token);
    expect(file).not.toContain(token.slice(4));
    expect(statSync(users).mode & 0o777).toBe(0o600);

    const again = stoa(["hotlink", "user", "add", "alice@example.org", "--users", users]);
    expect(again.code).toBe(1);
    expect(again.stderr).toContain("--replace");
    expect(stoa(["hotlink", "user", "add", "bob", "--users", users]).code).toBe(0);
    expect(stoa(["hotlink", "user", "ls", "--users", users]).stdout).toBe("alice@example.org\nbob\n");
    expect(stoa(["hotlink", "user", "remove", "bob", "--users", users]).code).toBe(0);
    expect(JSON.parse(stoa(["hotlink", "user", "ls", "--users", users, "--json"]).stdout)).toEqual({ users: ["alice@example.org"] });
    const bad = stoa(["hotlink", "user", "add", "Alice", "--users", users]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain("lower case");
  });

  test("serve prints its URL, refuses a bad token with 401, welcomes a good one, reloads on SIGHUP and exits 0 on SIGTERM", async () => {
    requireBinary();
    const users = join(scope.tempDir(), "users.json");
    const alice = stoa(["hotlink", "user", "add", "alice", "--users", users]).stdout.trimEnd().split("\n").at(-1) ?? "";
    const [port, metricsPort] = freePorts(2);
    const relay = scope.stoa("hotlink serve", [
      "hotlink", "serve", "--listen", `127.0.0.1:${port}`, "--users", users, "--metrics-listen", `127.0.0.1:${metricsPort}`,
    ]);
    const url = (await relay.waitFor("out", /^hotlink: (ws:\S+)$/m))[1] ?? "";
    expect(url).toBe(`ws://127.0.0.1:${port}/v1/hotlink`);

    const http = url.replace("ws://", "http://");
    const refused = await fetch(http, { headers: { Authorization: formatAuthorization("alice", `hlk_${"A".repeat(43)}`) } });
    expect(refused.status).toBe(401);
    expect(refused.headers.get("www-authenticate")).toContain("Bearer");
    await refused.text();
    expect(await welcome(url, "alice", alice)).toBe("alice");

    // A user added while the relay runs is let in after SIGHUP.
    const bob = stoa(["hotlink", "user", "add", "bob", "--users", users]).stdout.trimEnd().split("\n").at(-1) ?? "";
    await expect(welcome(url, "bob", bob)).rejects.toThrow("did not open");
    relay.proc.kill("SIGHUP");
    await eventually("bob to be let in", async () => (await welcome(url, "bob", bob).catch(() => undefined)) === "bob", { timeoutMs: 10_000 });

    const metrics = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
    expect(metrics).toContain("stoa_hotlink_connections");

    relay.proc.kill("SIGTERM");
    expect(await relay.exitWithin(10_000)).toBe(0);
  }, 30_000);

  test("serve runs with the allocator's setting for bulk bytes: one exec, same PID, arguments and standard streams; a value in the environment stands", async () => {
    requireBinary();
    const users = join(scope.tempDir(), "users.json");
    expect(stoa(["hotlink", "user", "add", "alice", "--users", users]).code).toBe(0);
    const environ = (pid: number) => readFileSync(`/proc/${pid}/environ`, "latin1").split("\0");
    const cmdline = (pid: number) => readFileSync(`/proc/${pid}/cmdline`, "latin1").split("\0").slice(1, -1);
    for (const given of [undefined, "250"]) {
      const env = { [PURGE_DELAY_VARIABLE]: given };
      const args = ["hotlink", "serve", "--listen", "127.0.0.1:0", "--users", users, "--log-level", "warn"];
      const relay = scope.spawn(`hotlink serve, ${PURGE_DELAY_VARIABLE}=${given}`, [STOA, ...args], { env });
      // The URL line comes from the process Bun.spawn started (its stdout pipe), now the exec'd one.
      await relay.waitFor("out", /^hotlink: ws:\S+$/m);
      expect(environ(relay.pid)).toContain(`${PURGE_DELAY_VARIABLE}=${given ?? SERVICE_PURGE_DELAY_MS}`);
      expect(environ(relay.pid).filter((v) => v.startsWith(`${PURGE_DELAY_VARIABLE}=`))).toHaveLength(1);
      expect(cmdline(relay.pid)).toEqual(args);
      relay.proc.kill("SIGTERM");
      expect(await relay.exitWithin(10_000)).toBe(0);
      expect(relay.err).toBe("");
    }
  }, 30_000);

  test("serve without --users is a usage error", () => {
    requireBinary();
    const run = stoa(["hotlink", "serve", "--listen", "127.0.0.1:0"]);
    expect(run.code).toBe(2);
    expect(run.stderr).toContain("--users is required");
  });
});
