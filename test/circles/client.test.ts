/**
 * The play client (src/circles/client.ts) against the circles server over the FakeQueue:
 * output, authentication with a key file, JSON-RPC errors and refused upgrades as StoaErrors
 * with the server's message, and the deadline.
 */
import { afterAll, afterEach, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { generateKey, writeKeyFile } from "../../src/circles/auth.ts";
import { PlayError, playOnce } from "../../src/circles/client.ts";
import { RPC_ERROR } from "../../src/circles/protocol.ts";
import { type CirclesServer, startCirclesServer } from "../../src/circles/server.ts";
import { createLogger } from "../../src/core/log.ts";
import { Registry } from "../../src/core/metrics.ts";
import { FakeQueue } from "../fixtures/circles-queue.ts";

const log = createLogger({ level: "error", name: "circles-client-test" });
const circle = generateKey().publicKey;
const dir = mkdtempSync(join(tmpdir(), "circles-client-"));
const caller = generateKey();
const keyFile = join(dir, "me.key");
writeKeyFile(keyFile, caller.privateKey);

let server: CirclesServer | undefined;
let queue: FakeQueue;

afterEach(async () => {
  await server?.close(0);
  server = undefined;
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function start(enableAuth: boolean): string {
  queue = new FakeQueue([circle.hex]);
  server = startCirclesServer({ host: "127.0.0.1", port: 0, circles: [circle], enableAuth, queue, taskTimeoutMs: 5_000, log, metrics: new Registry() });
  return `${server.wsUrl}/${circle.hex}`;
}

async function failure(promise: Promise<unknown>): Promise<PlayError> {
  try {
    await promise;
  } catch (err) {
    if (err instanceof PlayError) return err;
    throw err;
  }
  throw new Error("expected the play to fail");
}

describe("playOnce", () => {
  test("returns the output; without a key file the caller is empty", async () => {
    const url = start(false);
    expect(await playOnce({ url, script: "40 + 2" })).toBe("42");
    expect(queue.submissions).toEqual([{ circle: circle.hex, caller: "", script: "40 + 2", timeoutMs: 5_000 }]);
  });

  test("with a key file it authenticates first; the play runs as that caller", async () => {
    const url = start(true);
    expect(await playOnce({ url, keyFile, script: "who" })).toBe("who");
    expect(queue.submissions[0]?.caller).toBe(caller.publicKey.hex);
  });

  test("a JSON-RPC error is a StoaError with the server's message and code", async () => {
    const url = start(true);
    const unauthenticated = await failure(playOnce({ url, script: "x" }));
    expect(unauthenticated.code).toBe("auth");
    expect(unauthenticated.rpcCode).toBe(RPC_ERROR.authRequired);
    expect(unauthenticated.message).toContain("authentication required");
    const failed = await failure(playOnce({ url, keyFile, script: "fail:ReferenceError: nope is not defined" }));
    expect(failed.code).toBe("io");
    expect(failed.rpcCode).toBe(RPC_ERROR.execution);
    expect(failed.message).toBe("ReferenceError: nope is not defined");
    const slow = await failure(playOnce({ url, keyFile, script: "timeout" }));
    expect(slow.code).toBe("timeout");
    expect(slow.rpcCode).toBe(RPC_ERROR.timeout);
  });

  test("a refused upgrade shows the server's status and JSON message", async () => {
    const url = start(false);
    const unknown = generateKey().publicKey.hex;
    const refused = await failure(playOnce({ url: url.replace(circle.hex, unknown), script: "x" }));
    expect(refused.code).toBe("closed");
    expect(refused.message).toBe(`the server refused the connection: 404 Circle not found: Circle '${unknown}' is not available on this server`);
    const malformed = await failure(playOnce({ url: url.replace(circle.hex, "nope"), script: "x" }));
    expect(malformed.message).toContain("400 Bad request");
  });

  test("the deadline bounds the whole exchange; a bad URL is a usage error", async () => {
    const url = start(false);
    const late = await failure(playOnce({ url, script: "sleep:2000:late", timeoutMs: 200 }));
    expect(late.code).toBe("timeout");
    expect(late.message).toContain("waiting for play");
    const bad = await failure(playOnce({ url: "http//nowhere", script: "x" }));
    expect(bad.code).toBe("usage");
  });

  test("a server stopping mid-play answers it -32000 'server stopping'; a dial to nothing is 'closed'", async () => {
    const url = start(false);
    const play = playOnce({ url, script: "sleep:3000:never" });
    while (queue.pending === 0) await Bun.sleep(5);
    await server?.close(50);
    const closed = await failure(play);
    expect(closed.rpcCode).toBe(RPC_ERROR.execution);
    expect(closed.message).toContain("server stopping");
    const gone = await failure(playOnce({ url, script: "x" }));
    expect(gone.code).toBe("closed");
  });
});
