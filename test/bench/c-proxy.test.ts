import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { createHash, randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { type AddressInfo, type Server, type Socket, connect, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { buildC } from "../../scripts/bench/lib/cbuild.ts";
import { freePort, waitForPort } from "../../scripts/bench/lib/client.ts";

// scripts/bench/lib/c-proxy.c is the gateway benchmark's floor (and, with --sockmap, its
// in-kernel shape): its figures are only worth quoting if it carries every byte, in order.

const built = buildC("c-proxy");
if ("reason" in built) console.warn(`skipping the c-proxy tests: ${built.reason}`);

const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

let dir: string;
let echo: Server;
let path: string;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "stoa-cproxy-"));
  path = join(dir, "echo.sock");
  // Echoes every byte; ends its side once the client ended its own (half-close forwarded).
  echo = createServer({ allowHalfOpen: true }, (s) => {
    s.pipe(s);
  });
  await new Promise<void>((resolve) => echo.listen(path, resolve));
});

afterAll(() => {
  echo.close();
  rmSync(dir, { recursive: true, force: true });
});

async function start(args: string[]): Promise<{ port: number; proc: Bun.Subprocess<"ignore", "pipe", "pipe">; stop: () => Promise<void> } | { exit: number; stderr: string }> {
  const port = freePort();
  const proc = Bun.spawn([(built as { bin: string }).bin, ...args, `${port}=${path}`], { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  const up = await Promise.race([waitForPort("127.0.0.1", port).then(() => true), proc.exited.then(() => false)]);
  if (!up) return { exit: await proc.exited, stderr: await new Response(proc.stderr).text() };
  return {
    port,
    proc,
    stop: async () => {
      proc.kill("SIGTERM");
      await proc.exited;
    },
  };
}

/** Sends `bytes` and half-closes; resolves with everything received until the proxy's FIN. */
function roundTrip(port: number, bytes: Uint8Array): Promise<Uint8Array> {
  return new Promise((resolve, reject) => {
    const got: Buffer[] = [];
    const s: Socket = connect({ host: "127.0.0.1", port, allowHalfOpen: true }, () => {
      s.end(bytes);
    });
    s.on("data", (d: Buffer) => got.push(d));
    s.on("end", () => {
      resolve(Buffer.concat(got));
      s.destroy();
    });
    s.on("error", reject);
  });
}

/** `n` request/response exchanges of `size` bytes on one connection, each answered in full before the next. */
async function pingPong(port: number, n: number, size: number): Promise<boolean> {
  const s: Socket = connect({ host: "127.0.0.1", port });
  await new Promise<void>((resolve, reject) => {
    s.once("connect", resolve);
    s.once("error", reject);
  });
  let pending = Buffer.alloc(0);
  let want: Buffer | null = null;
  let done: (() => void) | null = null;
  s.on("data", (d: Buffer) => {
    pending = Buffer.concat([pending, d]);
    if (want !== null && pending.byteLength >= want.byteLength) done?.();
  });
  try {
    for (let i = 0; i < n; i++) {
      want = randomBytes(size);
      const answered = new Promise<void>((resolve) => (done = resolve));
      s.write(want);
      await answered;
      if (!pending.subarray(0, size).equals(want)) return false;
      pending = pending.subarray(size);
    }
    return pending.byteLength === 0;
  } finally {
    s.destroy();
  }
}

describe.if("bin" in built)("c-proxy: TCP → Unix socket in C", () => {
  test("8 MiB of random bytes echo back whole and in order, the client's half-close forwarded and answered", async () => {
    const proxy = await start([]);
    if ("exit" in proxy) throw new Error(`c-proxy exited ${proxy.exit}: ${proxy.stderr}`);
    try {
      const up = randomBytes(8 * 1024 * 1024);
      const down = await roundTrip(proxy.port, up);
      expect(down.byteLength).toBe(up.byteLength);
      expect(sha(down)).toBe(sha(up));
      // Several at once, each its own pair.
      const many = await Promise.all([1, 2, 3].map(() => roundTrip(proxy.port, randomBytes(256 * 1024))));
      for (const m of many) expect(m.byteLength).toBe(256 * 1024);
    } finally {
      await proxy.stop();
    }
  });

  test("1 KiB exchanges answer in order, one at a time", async () => {
    const proxy = await start([]);
    if ("exit" in proxy) throw new Error(`c-proxy exited ${proxy.exit}: ${proxy.stderr}`);
    try {
      expect(await pingPong(proxy.port, 200, 1024)).toBe(true);
    } finally {
      await proxy.stop();
    }
  });

  test("--sockmap: 1 KiB exchanges answer in order through the kernel's redirect, and the proxy has nothing to say", async () => {
    const proxy = await start(["--sockmap"]);
    if ("exit" in proxy) {
      // Exit 3: this kernel or user cannot load the program (not root, no BPF sockmap).
      expect(proxy.exit).toBe(3);
      console.warn(`skipping the --sockmap exchange: ${proxy.stderr.trim()}`);
      return;
    }
    try {
      expect(await pingPong(proxy.port, 200, 1024)).toBe(true);
      expect(await pingPong(proxy.port, 20, 64 * 1024)).toBe(true);
    } finally {
      await proxy.stop();
    }
    // A connection it could not redirect would have been closed with a line on stderr.
    expect(await new Response(proxy.proc.stderr).text()).toBe("");
  });
});
