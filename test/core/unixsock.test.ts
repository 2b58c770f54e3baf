import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import type { Subprocess } from "bun";
import { chmodSync, existsSync, lstatSync, mkdtempSync, readFileSync, rmSync, statSync, unlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { StoaError } from "../../src/core/errors.ts";
import { bindUnix, listenUnix, prepareUnixPath, type UnixBinding, UNIX_PATH_MAX } from "../../src/core/unixsock.ts";

let dir = "";
const cleanups: (() => unknown)[] = [];

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "stoa-unix-"));
});

afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
  rmSync(dir, { recursive: true, force: true });
});

const holderScript = join(import.meta.dir, "..", "fixtures", "unix-holder.ts");

/** Another process that binds `path` and greets connections with "alive". */
async function startHolder(path: string): Promise<Subprocess<"ignore", "pipe", "inherit">> {
  const proc = Bun.spawn([process.execPath, holderScript, path], { stdin: "ignore", stdout: "pipe", stderr: "inherit" });
  cleanups.push(() => proc.kill("SIGKILL"));
  const reader = proc.stdout.getReader();
  let seen = "";
  while (!seen.includes("ready\n")) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`holder exited early: ${seen}`);
    seen += new TextDecoder().decode(value);
  }
  reader.releaseLock();
  return proc;
}

/** Connects to `path` and returns the first line the server sends. */
async function firstLine(path: string): Promise<string> {
  const { promise, resolve, reject } = Promise.withResolvers<string>();
  let got = "";
  const sock = await Bun.connect({
    unix: path,
    socket: {
      data(_s, chunk) {
        got += chunk.toString();
        if (got.includes("\n")) resolve(got.slice(0, got.indexOf("\n")));
      },
      close: () => reject(new Error(`closed before a line (got ${JSON.stringify(got)})`)),
    },
  });
  try {
    return await promise;
  } finally {
    sock.end();
  }
}

/** A listener bound with listenUnix that greets connections with `greeting`. */
async function ours(path: string, greeting = "ours", mode?: number): Promise<UnixBinding<{ stop(): void }>> {
  const binding = await listenUnix(path, {
    mode,
    socket: {
      open(s) {
        s.write(`${greeting}\n`);
      },
      data() {},
    },
  });
  cleanups.push(() => binding.close(true));
  return binding;
}

async function rejection(p: Promise<unknown>): Promise<StoaError> {
  try {
    await p;
  } catch (err) {
    if (err instanceof StoaError) return err;
    throw err;
  }
  throw new Error("expected a StoaError, got success");
}

const modeOf = (path: string): number => statSync(path).mode & 0o777;

describe("parent directories", () => {
  test("creates missing parents with mode 0700 and leaves existing ones alone", async () => {
    chmodSync(dir, 0o755);
    const path = join(dir, "run", "p1", "service.sock");
    await ours(path);
    expect(modeOf(join(dir, "run"))).toBe(0o700);
    expect(modeOf(join(dir, "run", "p1"))).toBe(0o700);
    expect(modeOf(dir)).toBe(0o755);
  });

  test("rejects a path longer than the kernel allows before creating anything", async () => {
    const path = join(dir, "d", "x".repeat(UNIX_PATH_MAX));
    const err = await rejection(prepareUnixPath(path));
    expect(err.code).toBe("endpoint");
    expect(err.message).toContain("shorter path");
    expect(existsSync(join(dir, "d"))).toBe(false);
  });
});

describe("an existing path", () => {
  test("a stale socket left by a killed process is reclaimed", async () => {
    const path = join(dir, "stale.sock");
    const holder = await startHolder(path);
    holder.kill("SIGKILL");
    await holder.exited;
    expect(lstatSync(path).isSocket()).toBe(true); // the file outlives its owner

    await ours(path);
    expect(await firstLine(path)).toBe("ours");
  });

  test("a socket a live process serves is never stolen", async () => {
    const path = join(dir, "live.sock");
    await startHolder(path);
    const before = lstatSync(path).ino;

    const err = await rejection(ours(path));
    expect(err.code).toBe("in_use");
    expect(err.message).toContain("live process");
    expect(lstatSync(path).ino).toBe(before);
    expect(await firstLine(path)).toBe("alive");
  });

  test("a regular file is refused and left intact", async () => {
    const path = join(dir, "notes.txt");
    writeFileSync(path, "precious");
    const err = await rejection(ours(path));
    expect(err.code).toBe("in_use");
    expect(err.message).toContain("not a socket");
    expect(readFileSync(path, "utf8")).toBe("precious");
  });
});

describe("listenUnix", () => {
  test("binds the socket with mode 0600 unless told otherwise", async () => {
    await ours(join(dir, "default.sock"));
    await ours(join(dir, "shared.sock"), "ours", 0o660);
    expect(modeOf(join(dir, "default.sock"))).toBe(0o600);
    expect(modeOf(join(dir, "shared.sock"))).toBe(0o660);
    expect(await firstLine(join(dir, "default.sock"))).toBe("ours");
  });

  test("close() removes the socket file", async () => {
    const path = join(dir, "mine.sock");
    const binding = await ours(path);
    await binding.close(true);
    expect(existsSync(path)).toBe(false);
  });

  test("close() leaves alone a socket that a successor bound in its place", async () => {
    const path = join(dir, "handover.sock");
    const old = await ours(path, "old");
    unlinkSync(path); // e.g. an operator cleaned up, and a new process started
    await ours(path, "new");
    await old.close(true);
    expect(await firstLine(path)).toBe("new");
  });

  test("close() leaves alone a regular file that replaced the socket", async () => {
    const path = join(dir, "replaced.sock");
    const binding = await ours(path);
    unlinkSync(path);
    writeFileSync(path, "someone else's");
    expect(binding.remove()).toBe(false);
    await binding.close(true);
    expect(readFileSync(path, "utf8")).toBe("someone else's");
  });
});

describe("bindUnix with Bun.serve", () => {
  test("serves HTTP and WebSocket on the path and removes only its own file", async () => {
    const path = join(dir, "ws", "ping.sock");
    const binding = await bindUnix(path, (unix) =>
      Bun.serve({
        unix,
        fetch(req, server) {
          if (server.upgrade(req)) return undefined;
          return new Response("pong");
        },
        websocket: {
          message(ws, msg) {
            ws.send(`echo ${String(msg)}`);
          },
        },
      }),
    );
    cleanups.push(() => binding.close(true));
    expect(modeOf(path)).toBe(0o600);

    const res = await fetch("http://localhost/ping", { unix: path });
    expect(await res.text()).toBe("pong");

    const ws = new WebSocket(`ws+unix://${path}:/ws`);
    const reply = await new Promise<string>((resolve, reject) => {
      ws.onopen = () => ws.send("hi");
      ws.onmessage = (ev) => resolve(String(ev.data));
      ws.onerror = () => reject(new Error("websocket failed"));
    });
    ws.close();
    expect(reply).toBe("echo hi");

    // Bun's own stop() would delete whatever is at the path; ours must not.
    unlinkSync(path);
    writeFileSync(path, "someone else's");
    await binding.close(true);
    expect(readFileSync(path, "utf8")).toBe("someone else's");
  });

  test("its close() removes the socket file it owns", async () => {
    const path = join(dir, "http.sock");
    const binding = await bindUnix(path, (unix) => Bun.serve({ unix, fetch: () => new Response("ok") }));
    await binding.close(true);
    expect(existsSync(path)).toBe(false);
  });
});
