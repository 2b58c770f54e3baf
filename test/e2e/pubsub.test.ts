/**
 * `stoa up`, `stoa pub` and `stoa sub` as a user runs them on one host: separate processes of the
 * compiled binary, talking over loopback only (the gateway listens on 127.0.0.1, so publishers
 * register that address), on free non-default ports. What the library tests already prove with
 * in-process parts is proven here again through the real binaries and the real gateway, plus
 * what only the binaries do: reading stdin, printing --json lines, exiting after --count.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { freePorts, type Proc, requireBinary, Scope, TcpWsClient } from "../fixtures/e2e-helpers.ts";
import { eventually } from "../helpers/eventually.ts";

const scope = new Scope();
let runDir = "";
let meta = "";
let ports = { service: 0, string: 0, ping: 0 };
let up: Proc;
/** stoa up's state dir: its metaserver's token is there, where stoa pub finds it. */
let stateDir = "";

interface Line {
  seq: number;
  ts: string;
  value: unknown;
}

beforeAll(async () => {
  requireBinary();
  runDir = scope.tempDir();
  stateDir = scope.tempDir();
  const [s = 0, t = 0, p = 0, m = 0] = freePorts(4);
  ports = { service: s, string: t, ping: p };
  meta = `http://127.0.0.1:${m}`;
  up = scope.stoa("up", [
    "up",
    "--listen", "127.0.0.1",
    "--ports", `${s},${t},${p}`,
    "--meta-listen", `127.0.0.1:${m}`,
    "--state-dir", stateDir,
    "--run-dir", runDir,
  ]);
  // The two "try:" lines are the last thing it prints once both parts serve.
  await up.waitFor("out", /^try: .*\n\s+stoa sub .*\n/m, 15_000);
});

afterAll(async () => {
  await scope.cleanup();
});

/** Starts `stoa pub NAME … --stay` with a stdin pipe; resolves with its pub_id once it is live. */
async function startPub(name: string, extra: string[] = []): Promise<{ pub: Proc; pubId: string }> {
  const pub = scope.stoa(`pub ${name}`, ["pub", name, "--meta", meta, "--run-dir", runDir, "--state-dir", stateDir, "--stay", ...extra], { stdin: true });
  // Quiet by default: the metaserver says when it is live (confirmed through the gateway).
  const deadline = Date.now() + 15_000;
  for (;;) {
    const listed = (await (await fetch(`${meta}/v1/publishers?prefix=${name}`)).json()) as { publishers: { name: string; pub_id: string; state: string }[] };
    const live = listed.publishers.find((p) => p.name === name && p.state === "live");
    if (live !== undefined) return { pub, pubId: live.pub_id };
    if (!pub.running || Date.now() > deadline) throw new Error(`${name} never became live\n${pub.describe()}`);
    await Bun.sleep(20);
  }
}

/** Starts `stoa sub NAME --json --count n`; resolves once it is subscribed (nothing missed from then on). */
async function startSub(name: string, count: number): Promise<Proc> {
  const sub = scope.stoa(`sub ${name}`, ["sub", name, "--meta", meta, "--json", "--count", String(count), "-v"]);
  await sub.waitFor("err", /INFO +sub: subscribed/, 15_000);
  return sub;
}

function jsonLines(text: string): Line[] {
  return text
    .split("\n")
    .filter((l) => l !== "")
    .map((l) => JSON.parse(l) as Line);
}

/** Feeds `lines` to a publisher's stdin in chunks, as a producer writing at a steady rate. */
async function feed(pub: Proc, lines: string[], perChunk = 100, pauseMs = 5): Promise<void> {
  for (let i = 0; i < lines.length; i += perChunk) {
    pub.write(`${lines.slice(i, i + perChunk).join("\n")}\n`);
    await Bun.sleep(pauseMs);
  }
}

describe("stoa up, pub and sub on one host", () => {
  test("stoa up prints where it serves and how to publish and subscribe", () => {
    expect(up.out).toContain(`ports service ${ports.service}, string ${ports.string}, ping ${ports.ping} (`);
    expect(up.out).toContain(`run dir ${runDir})`);
    expect(up.out).toContain(`metaserver ${meta}/v1`);
    expect(up.out).toMatch(new RegExp(`^try: +seq 1 100 \\| stoa pub demo/counter --stay --meta ${meta} --run-dir ${runDir} --state-dir ${stateDir}$`, "m"));
    // Where the token is, never the token itself.
    const token = readFileSync(join(stateDir, "meta.token"), "utf8").trim();
    expect(up.out).toContain(`writes need the token in ${join(stateDir, "meta.token")}`);
    expect(up.out + up.err).not.toContain(token);
    expect(statSync(join(stateDir, "meta.token")).mode & 0o777).toBe(0o600);
    expect(up.out).toMatch(new RegExp(`^ +stoa sub demo/counter --meta ${meta}$`, "m"));
  });

  test(
    "2,000 lines reach sub --json in order, none lost, and a plain WebSocket on the string port gets them as text",
    async () => {
      const N = 2_000;
      const { pub, pubId } = await startPub("demo/x");

      // The metaserver knows it, on loopback, live, with gateway URLs for our ports.
      const listed = (await (await fetch(`${meta}/v1/publishers?prefix=demo/x`)).json()) as {
        publishers: { name: string; pub_id: string; host: string; state: string; urls: Record<string, string> }[];
      };
      expect(listed.publishers).toHaveLength(1);
      const info = listed.publishers[0];
      expect(info).toMatchObject({ name: "demo/x", pub_id: pubId, host: "127.0.0.1", state: "live" });
      expect(info?.urls).toEqual({
        service: `ws://127.0.0.1:${ports.service}/pub/${pubId}`,
        string: `ws://127.0.0.1:${ports.string}/pub/${pubId}`,
        ping: `ws://127.0.0.1:${ports.ping}/pub/${pubId}`,
      });

      // Subscribers first, so every value published has someone listening.
      const sub = await startSub("demo/x", N);
      const texts: string[] = [];
      const plain = new WebSocket(`ws://127.0.0.1:${ports.string}/pub/${pubId}`);
      let binaryFrames = 0;
      plain.onmessage = (e: MessageEvent) => {
        if (typeof e.data === "string") texts.push(e.data);
        else binaryFrames++;
      };
      await new Promise<void>((resolve, reject) => {
        plain.onopen = () => resolve();
        plain.onerror = () => reject(new Error("the string port refused a plain WebSocket"));
      });

      const lines = Array.from({ length: N }, (_, i) => `line-${i + 1} ü`);
      await feed(pub, lines);

      const code = await sub.exitWithin(20_000);
      expect(code, sub.describe()).toBe(0);
      const got = jsonLines(sub.out);
      expect(got).toHaveLength(N);
      expect(got.map((l) => l.seq)).toEqual(lines.map((_, i) => i + 1));
      expect(got.map((l) => l.value)).toEqual(lines);
      for (const l of got) expect(Number.isNaN(Date.parse(l.ts))).toBe(false);
      expect(sub.err).not.toContain("missed values");

      await eventually(`${N} text frames at the plain client`, () => texts.length >= N, { timeoutMs: 10_000 });
      plain.close();
      expect(binaryFrames).toBe(0);
      expect(texts).toEqual(lines);
      expect(pub.running).toBe(true);
    },
    60_000,
  );

  test(
    "sub --latest prints the latest value, and a raw TCP client with the STOA1 prelude can ping on the ping port",
    async () => {
      const { pub, pubId } = await startPub("demo/latest");
      pub.write("first\nsecond\nthe latest\n");
      pub.endStdin(); // --stay: it keeps serving the latest value

      let latest = "";
      const deadline = Date.now() + 10_000;
      while (Date.now() < deadline) {
        const run = scope.stoa("sub --latest", ["sub", "demo/latest", "--meta", meta, "--latest"]);
        const r = await run.output();
        expect(r.code, run.describe()).toBe(0);
        latest = r.out;
        if (latest === "the latest\n") break;
        await Bun.sleep(20);
      }
      expect(latest).toBe("the latest\n");

      const json = await scope.stoa("sub --latest --json", ["sub", "demo/latest", "--meta", meta, "--latest", "--json"]).output();
      expect(json.code).toBe(0);
      const reply = JSON.parse(json.out) as { value: string; seq: number; ts: string };
      expect(reply).toMatchObject({ value: "the latest", seq: 3 });
      expect(Number.isNaN(Date.parse(reply.ts))).toBe(false);

      // The gateway strips the prelude; what follows is a WebSocket handshake to the publisher.
      const raw = await TcpWsClient.connect(ports.ping, `STOA1 ${pubId}\n`);
      try {
        raw.sendText("ping");
        expect(JSON.parse(await raw.nextText())).toMatchObject({ value: "the latest", seq: 3 });
        raw.sendText("ping");
        expect(JSON.parse(await raw.nextText())).toMatchObject({ value: "the latest", seq: 3 });
      } finally {
        raw.close();
      }
    },
    60_000,
  );

  test(
    "--format json: each JSON line comes out of sub --json as the same JSON value",
    async () => {
      const { pub } = await startPub("demo/j", ["--format", "json"]);
      const values: unknown[] = [
        { a: 1, b: [true, null, "x"], nested: { "é": -2.5 } },
        42,
        "a string",
        [1, [2, [3]]],
        null,
        false,
        { empty: {}, list: [] },
      ];
      const sub = await startSub("demo/j", values.length);
      pub.write(`${values.map((v) => JSON.stringify(v)).join("\n")}\n`);
      const code = await sub.exitWithin(15_000);
      expect(code, sub.describe()).toBe(0);
      const got = jsonLines(sub.out);
      expect(got.map((l) => l.value)).toEqual(values);
      expect(got.map((l) => l.seq)).toEqual(values.map((_, i) => i + 1));
    },
    60_000,
  );
});
