/**
 * Streams that show something, and client errors that say what happened — through the compiled
 * binary, one `stoa up` on loopback: the `try:` lines it prints work when pasted, `stoa sub`
 * starts at the latest value (or `--from now|oldest`), `| head -1` ends it quietly, a refused
 * upgrade is reported with its status and message, `--latest --json` gives the same object as
 * `--json`, and a bad flag value is named.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { freePorts, type Proc, requireBinary, Scope } from "../fixtures/e2e-helpers.ts";
import { STOA } from "../helpers/stoa.ts";

const scope = new Scope();
let runDir = "";
let stateDir = "";
let meta = "";
let up: Proc;
/** Process groups started through a shell (`setsid`), killed whole at the end. */
const groups: Proc[] = [];

beforeAll(async () => {
  requireBinary();
  runDir = scope.tempDir();
  stateDir = scope.tempDir();
  const [s = 0, t = 0, p = 0, m = 0] = freePorts(4);
  meta = `http://127.0.0.1:${m}`;
  up = scope.stoa("up", [
    "up",
    "--listen", "127.0.0.1",
    "--ports", `${s},${t},${p}`,
    "--meta-listen", `127.0.0.1:${m}`,
    "--state-dir", stateDir,
    "--run-dir", runDir,
  ]);
  await up.waitFor("out", /^try: .*\n\s+stoa sub .*\n/m, 15_000);
});

afterAll(async () => {
  for (const g of groups) {
    try {
      process.kill(-g.pid, "SIGTERM");
    } catch {
      // already gone
    }
  }
  await scope.cleanup();
});

/**
 * Waits until a `stoa sub` of `seq 1 100` has printed 100, and checks what it printed: the value
 * that was latest when it connected (100 when it came after the publisher), then the rest live.
 */
async function printsUpTo100(sub: Proc, others: Proc): Promise<void> {
  await sub.waitFor("out", /(^|\n)100\n/, 20_000);
  const lines = sub.out.trim().split("\n");
  const first = Number(lines[0]);
  expect(lines, `${sub.describe()}\n${others.describe()}`).toEqual(Array.from({ length: 101 - first }, (_, i) => String(first + i)));
}

/** Ends a shell started by `shell()` and everything in its process group. */
async function killGroup(g: Proc): Promise<void> {
  try {
    process.kill(-g.pid, "SIGTERM");
  } catch {
    // already gone
  }
  await g.exitWithin(10_000);
}

/** Runs `script` in bash, in its own process group, with dist/ first on PATH (as after install). */
function shell(name: string, script: string): Proc {
  const proc = scope.spawn(name, ["setsid", "bash", "-c", `export PATH=${dirname(STOA)}:$PATH; ${script}`]);
  groups.push(proc);
  return proc;
}

const common = (): string[] => ["--meta", meta, "--run-dir", runDir, "--state-dir", stateDir];

/** `stoa pub NAME --stay …` fed by the test; resolves once `sub --latest` sees `ready`. */
async function startPub(name: string, extra: string[] = []): Promise<Proc> {
  const pub = scope.stoa(`pub ${name}`, ["pub", name, ...common(), "--stay", ...extra], { stdin: true });
  pub.write(extra.includes("json") ? '"ready"\n' : "ready\n");
  const deadline = Date.now() + 15_000;
  for (;;) {
    const r = await scope.stoa("sub --latest", ["sub", name, "--meta", meta, "--latest"]).output();
    if (r.code === 0 && r.out === "ready\n") return pub;
    if (Date.now() > deadline) throw new Error(`${name} never served its first value\n${pub.describe()}\n${r.err}`);
    await Bun.sleep(50);
  }
}

/** Waits until `stoa sub NAME --latest` prints `text`. */
async function latestIs(name: string, text: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  let last = "";
  while (Date.now() < deadline) {
    const r = await scope.stoa("sub --latest", ["sub", name, "--meta", meta, "--latest"]).output();
    last = r.out + r.err;
    if (r.code === 0 && r.out === `${text}\n`) return;
    await Bun.sleep(30);
  }
  throw new Error(`the latest value of ${name} never became ${text}: ${last}`);
}

async function pubIdOf(name: string): Promise<string> {
  const res = await fetch(`${meta}/v1/publishers?prefix=${name}`);
  const body = (await res.json()) as { publishers: { name: string; pub_id: string }[] };
  const id = body.publishers.find((p) => p.name === name)?.pub_id;
  if (id === undefined) throw new Error(`${name} is not registered`);
  return id;
}

describe("streams that show something", () => {
  test("the try: lines stoa up prints show values when pasted", async () => {
    const pubLine = /^try: +(seq 1 100 \| stoa pub .*)$/m.exec(up.out)?.[1];
    const subLine = /^ +(stoa sub demo\/counter .*)$/m.exec(up.out)?.[1];
    expect(pubLine, up.out).toBeDefined();
    expect(subLine, up.out).toBeDefined();
    // Pasted one after the other, the subscriber right away (pub and sub wait for what they need).
    const pub = shell("try: pub", pubLine ?? "");
    const sub = shell("try: sub", subLine ?? "");
    await printsUpTo100(sub, pub);
    // Pasted again once the publisher has published everything: the latest value at once.
    const again = shell("try: sub again", subLine ?? "");
    await again.waitFor("out", /\n/, 20_000);
    expect(again.out).toBe("100\n");
    await killGroup(again);
    await killGroup(sub);
    await killGroup(pub); // deregisters demo/counter for the next test
  }, 40_000);

  test("the examples of stoa pub --help and stoa sub --help show values", async () => {
    const examples = async (cmd: string) => (await scope.stoa(`${cmd} --help`, [cmd, "--help"]).output()).out.split("\n").map((l) => l.trim());
    const pubHelp = await examples("pub");
    const subHelp = await examples("sub");
    const pubLine = pubHelp.find((l) => l.startsWith("seq 1 100 | stoa pub demo/counter"));
    const latestLine = subHelp.find((l) => l === "stoa sub demo/counter");
    const oldestLine = subHelp.find((l) => l.startsWith("stoa sub demo/counter --from oldest"));
    expect(pubLine && latestLine && oldestLine, `${pubHelp.join("\n")}\n${subHelp.join("\n")}`).toBeTruthy();
    // As printed, plus where this test's node is.
    const pub = shell("help: pub", `${pubLine} ${common().join(" ")}`);
    const latest = shell("help: sub", `${latestLine} --meta ${meta}`);
    const oldest = shell("help: sub --from oldest", `${oldestLine} --meta ${meta}`);
    expect(await oldest.exitWithin(20_000), `${oldest.describe()}\n${pub.describe()}`).toBe(0);
    expect(oldest.out).toBe(`${Array.from({ length: 100 }, (_, i) => i + 1).join("\n")}\n`);
    await printsUpTo100(latest, pub);
    await killGroup(latest);
    await killGroup(pub);
  }, 40_000);

  test("--from oldest prints the history in order, then live values; --from now waits for the next", async () => {
    const pub = await startPub("demo/hist", ["--history", "50"]);
    pub.write(`${Array.from({ length: 80 }, (_, i) => `v${i + 1}`).join("\n")}\n`);
    await latestIs("demo/hist", "v80");

    // The history: "ready" (seq 1) and v1..v80 (seq 2..81) were published; the last 50 are kept.
    const oldest = scope.stoa("sub --from oldest", ["sub", "demo/hist", "--meta", meta, "--from", "oldest", "--json", "--count", "52"]);
    await oldest.waitFor("out", /"seq":81,/, 15_000);
    const now = scope.stoa("sub --from now", ["sub", "demo/hist", "--meta", meta, "--from", "now", "--count", "1", "-v"]);
    await now.waitFor("err", /subscribed/, 15_000);
    await Bun.sleep(300); // --from now: nothing is printed before the next value
    expect(now.out).toBe("");
    pub.write("live1\nlive2\n");

    expect(await oldest.exitWithin(15_000), oldest.describe()).toBe(0);
    const lines = oldest.out.trim().split("\n").map((l) => JSON.parse(l) as { seq: number; value: string });
    expect(lines.map((l) => l.seq)).toEqual(Array.from({ length: 52 }, (_, i) => 32 + i));
    expect(lines.map((l) => l.value)).toEqual([...Array.from({ length: 50 }, (_, i) => `v${i + 31}`), "live1", "live2"]);
    expect(await now.exitWithin(15_000), now.describe()).toBe(0);
    expect(now.out).toBe("live1\n");
  }, 60_000);

  test("sub --latest --json gives value as the same object sub --json gives", async () => {
    const pub = await startPub("demo/obj", ["--format", "json"]);
    const value = { temp: 21.5, tags: ["a", "b"], ok: true, nested: { n: null } };
    pub.write(`${JSON.stringify(value)}\n`);
    const deadline = Date.now() + 10_000;
    let latest: { seq: number; ts: string; value: unknown } | undefined;
    while (Date.now() < deadline) {
      const r = await scope.stoa("sub --latest --json", ["sub", "demo/obj", "--meta", meta, "--latest", "--json"]).output();
      expect(r.code, r.err).toBe(0);
      latest = JSON.parse(r.out) as typeof latest;
      if (latest?.seq === 2) break;
      await Bun.sleep(30);
    }
    expect(latest?.value).toEqual(value);
    const sub = await scope.stoa("sub --json", ["sub", "demo/obj", "--meta", meta, "--json", "--count", "1"]).output();
    expect(sub.code, sub.err).toBe(0);
    const line = JSON.parse(sub.out) as { seq: number; ts: string; value: unknown };
    expect(latest).toEqual(line);
  }, 40_000);
});

describe("client errors that say what happened", () => {
  test("stoa sub NAME | head -1 exits 0 with nothing on stderr", async () => {
    const pub = await startPub("demo/head");
    const feeding = { on: true };
    const feeder = (async () => {
      for (let i = 0; feeding.on; i++) {
        pub.write(`tick ${i}\n`);
        await Bun.sleep(20);
      }
    })();
    try {
      const errFile = join(scope.tempDir(), "sub.err");
      const run = shell("sub | head -1", `set -o pipefail; stoa sub demo/head --meta ${meta} 2>${errFile} | head -1`);
      const code = await run.exitWithin(20_000);
      expect(code, `${run.describe()}\n${await Bun.file(errFile).text()}`).toBe(0);
      expect(run.out.split("\n").filter((l) => l !== "")).toHaveLength(1);
      expect(await Bun.file(errFile).text()).toBe("");
      // Its log in the same pipe (-v): that pipe's EPIPE on stderr ends nothing badly either.
      const both = shell("sub -v 2>&1 | head -1", `set -o pipefail; stoa sub demo/head --meta ${meta} -v 2>&1 | head -1`);
      expect(await both.exitWithin(20_000), both.describe()).toBe(0);
      expect(both.err).toBe("");
    } finally {
      feeding.on = false;
      await feeder;
    }
  }, 40_000);

  test("a dead publisher's 502 and message appear in sub's output and sub --latest's; 404 once its directory is gone", async () => {
    const pub = await startPub("demo/dead");
    const pubId = await pubIdOf("demo/dead");
    pub.proc.kill("SIGKILL"); // its socket files stay behind: the gateway's connect is refused
    await pub.exited;

    const sub = scope.stoa("sub dead", ["sub", "demo/dead", "--meta", meta]);
    const m = await sub.waitFor("err", /502 target_down: (.+)/, 15_000);
    expect(m[1]).toContain(pubId);
    expect(sub.err).not.toContain("code=1006");
    expect(sub.running).toBe(true); // it retries
    sub.proc.kill("SIGTERM");

    const latest = await scope.stoa("sub --latest dead", ["sub", "demo/dead", "--meta", meta, "--latest"]).output();
    expect(latest.code).toBe(1);
    expect(latest.err).toMatch(/502 target_down: .*\S/);
    expect(latest.err).not.toContain("Expected 101");

    rmSync(join(runDir, "pub", pubId), { recursive: true, force: true });
    const gone = await scope.stoa("sub --latest gone", ["sub", "demo/dead", "--meta", meta, "--latest"]).output();
    expect(gone.code).toBe(1);
    expect(gone.err).toMatch(/404 unknown_pub_id: .*\S/);
    const sub404 = scope.stoa("sub gone", ["sub", "demo/dead", "--meta", meta]);
    await sub404.waitFor("err", /404 unknown_pub_id: .*\S/, 15_000);
  }, 60_000);

  test("--count -1 says what is wrong with the value", async () => {
    const r = await scope.stoa("sub --count -1", ["sub", "demo/x", "--count", "-1"]).output();
    expect(r.code).toBe(2);
    expect(r.err).toContain("invalid --count '-1': not a positive integer");
    expect(r.err).not.toContain("takes no value");
    const missing = await scope.stoa("sub --count --json", ["sub", "demo/x", "--count", "--json"]).output();
    expect(missing.code).toBe(2);
    expect(missing.err).toContain("--count needs a value");
  });
});
