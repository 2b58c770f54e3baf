/**
 * hotlink's ladder behind real NATs (issue 16), in the NAT lab (test/fixtures/nat-lab.ts): the
 * relay server with its STUN port, and coturn, in `pub`; each peer's daemon and applications
 * (test/fixtures/tunnel-app.ts) in its own private namespace behind its own NAT, with no route
 * between private networks. The TLS rung fails in every case (the receiver's addresses are
 * private), so each session climbs to ICE:
 * - alice and bob behind port-preserving MASQUERADE: hole punching with server-reflexive
 *   candidates — 64 MiB both ways intact, most bytes on ICE; the seed's 20 × 4096 on ICE; the ICE
 *   path cut mid-stream (UDP dropped in alice's NAT) falls back to the relay, nothing lost.
 * - carol behind a symmetric NAT (--random-fully): punching fails and the session takes coturn's
 *   relay candidate ("turn") — transfers intact, the seed's test on TURN.
 * - a second lab without a TURN server: alice and carol stay on the WebSocket relay, with
 *   transfers intact and `ls` saying why each rung above failed.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { NetProcs, type Proc, requireBinary } from "../fixtures/e2e-helpers.ts";
import { type NatLab, canUseNatLab, createNatLab } from "../fixtures/nat-lab.ts";
import { APP_DEADLINE_MS, type AppResult, SEED_BYTES, TUNNEL_APP, seedProblem } from "../fixtures/tunnel-app-spec.ts";
import { eventually } from "../helpers/eventually.ts";
import { STOA } from "../helpers/stoa.ts";

const can = canUseNatLab();
if (!can.ok) console.warn(`skipping hotlink NAT traversal tests: ${can.reason}`);
const turnserver = Bun.which("turnserver") ?? (existsSync("/usr/bin/turnserver") ? "/usr/bin/turnserver" : null);
if (turnserver === null) console.warn("skipping the TURN tests: turnserver (Debian package coturn) is not installed");

/** Fresh namespaces: nothing else can hold these ports. */
const RELAY_PORT = 8470;
const STUN_PORT = 3478;
const TURN_PORT = 3479;
const TURN_USER = "stoa";
const TURN_PASS = "turn-test-pass";
const MIB = 1024 * 1024;

/** Channels, each with the same tunnel port on both of its peers (each namespace has its own loopback). */
const CHANNELS = {
  ab: { channel: "alice/nat/ab", port: 10001 },
  abSeed: { channel: "alice/nat/ab-seed", port: 10002 },
  abCut: { channel: "alice/nat/ab-cut", port: 10003 },
  ac: { channel: "alice/nat/ac", port: 10004 },
  acSeed: { channel: "alice/nat/ac-seed", port: 10005 },
} as const;
type ChannelName = keyof typeof CHANNELS;

interface SessionView {
  rung: string;
  via?: string;
  failed?: { rung: string; error: string }[];
}
interface TunnelView {
  channel: string;
  out: SessionView | null;
  in: SessionView | null;
}
interface Telemetry {
  relay: { tx: { bytes: number }; rx: { bytes: number } };
  ice: { tx: { bytes: number }; rx: { bytes: number }; failures: number; fallbacks: number; answers: number };
  turn: { tx: { bytes: number }; rx: { bytes: number } };
}

/** One lab with its relay, optional coturn, daemons and the helpers the tests use. */
class Lab {
  readonly peers: Record<string, ChannelName[]>;
  lab!: NatLab;
  procs!: NetProcs;
  dir = "";
  readonly daemons = new Map<string, Proc>();
  others: Proc[] = [];
  #apps = 0;

  constructor(peers: Record<string, ChannelName[]>) {
    this.peers = peers;
  }

  async start(options: { symmetric: string[]; turn: boolean }): Promise<void> {
    requireBinary();
    const names = Object.keys(this.peers);
    this.lab = await createNatLab({ peers: names.map((name) => ({ name, random: options.symmetric.includes(name) })) });
    this.procs = new NetProcs(this.lab.net);
    this.dir = mkdtempSync("/tmp/e2nat-");
    const pub = this.lab.pubAddr;
    const users = join(this.dir, "users.json");
    const tokens: Record<string, string> = {};
    for (const user of names) {
      const run = Bun.spawnSync([STOA, "hotlink", "user", "add", user, "--users", users]);
      if (run.exitCode !== 0) throw new Error(`stoa hotlink user add ${user} failed: ${run.stderr.toString()}`);
      const file = join(this.dir, `${user}.token`);
      writeFileSync(file, `${run.stdout.toString().trim().split("\n").at(-1)}\n`);
      chmodSync(file, 0o600);
      tokens[user] = file;
    }
    const acl = join(this.dir, "acl.json");
    writeFileSync(acl, JSON.stringify({ rules: [{ pattern: "alice/nat/**", read: names, write: names }] }));
    const ice = [`stun:${pub}:${STUN_PORT}`, ...(options.turn ? [`turn:${TURN_USER}:${TURN_PASS}@${pub}:${TURN_PORT}`] : [])].join(",");
    if (options.turn) {
      if (turnserver === null) throw new Error("turnserver is not installed");
      // Like a deployment, coturn relays to no private network (here: the peers' private links).
      // It must not try: a relay send that fails (pub has no route there) closes the allocation,
      // and ICE checks every candidate pair, private host candidates included.
      const denied = names.map((p) => {
        const base = this.lab.net.prefix(p, this.lab.nat(p), 4).replace(/\.0\/24$/, "");
        return `--denied-peer-ip=${base}.0-${base}.255`;
      });
      const turn = this.procs.spawn("pub", "coturn", [
        turnserver, "-n", `--listening-ip=${pub}`, `--relay-ip=${pub}`, `--listening-port=${TURN_PORT}`,
        "--min-port=49160", "--max-port=49400", "--lt-cred-mech", `--user=${TURN_USER}:${TURN_PASS}`, "--realm=stoa.test",
        "--no-tls", "--no-dtls", "--no-cli", "--fingerprint", "--log-file=stdout", "--simple-log", ...denied, `--pidfile=${join(this.dir, "turn.pid")}`,
      ]);
      this.others.push(turn);
      await turn.waitFor("out", /Total General servers/m, 10_000);
    }
    const server = this.procs.stoa("pub", "relay", [
      "hotlink", "serve", "--listen", `${pub}:${RELAY_PORT}`, "--stun-listen", `${pub}:${STUN_PORT}`,
      "--ice-servers", ice, "--users", users, "--acl", acl,
    ]);
    this.others.push(server);
    await server.waitFor("out", /^hotlink: ws:\/\//m);
    for (const user of names) {
      const tunnels = this.peers[user] ?? [];
      const peerOf = (c: ChannelName): string => (user === "alice" ? (c.startsWith("ab") ? "bob" : "carol") : "alice");
      const d = this.procs.stoa(user, user, [
        "hotlink", "connect", "--server", `ws://${pub}:${RELAY_PORT}`, "--user", user, "--token-file", tokens[user] ?? "",
        "--run-dir", join(this.dir, "run"), "--telemetry", join(this.dir, `${user}.json`), "--log-level", "debug",
        ...tunnels.flatMap((c) => ["--tunnel", `${CHANNELS[c].channel}=127.0.0.1:${CHANNELS[c].port}@${peerOf(c)}`]),
      ]);
      this.daemons.set(user, d);
    }
    for (const d of this.daemons.values()) await d.waitFor("out", /^hotlink: /m, 15_000);
  }

  async stop(): Promise<void> {
    await this.procs?.stop();
    await this.lab?.destroy();
    if (this.dir !== "") rmSync(this.dir, { recursive: true, force: true });
  }

  /** Everything the processes said, for a failure's message. */
  describe(): string {
    return [...this.others, ...this.daemons.values()].map((p) => p.describe()).join("\n");
  }

  /** `stoa hotlink ls --json` of `user`'s daemon, over its control socket (on the shared filesystem). */
  tunnels(user: string): TunnelView[] {
    const run = Bun.spawnSync([STOA, "hotlink", "ls", "--json", "--user", user, "--run-dir", join(this.dir, "run")]);
    if (run.exitCode !== 0) throw new Error(`stoa hotlink ls --user ${user} failed: ${run.stderr.toString()}`);
    return (JSON.parse(run.stdout.toString()) as { status: { tunnels: TunnelView[] } }).status.tunnels;
  }

  tunnel(user: string, c: ChannelName): TunnelView | undefined {
    return this.tunnels(user).find((t) => t.channel === CHANNELS[c].channel);
  }

  telemetry(user: string): Telemetry {
    return JSON.parse(readFileSync(join(this.dir, `${user}.json`), "utf8")) as Telemetry;
  }

  /** `user`'s telemetry once `ok` holds for it (the file is rewritten every second). */
  telemetryWhen(user: string, what: string, ok: (t: Telemetry) => boolean): Promise<Telemetry> {
    let last: Telemetry | undefined;
    return eventually(`${user}'s telemetry: ${what}`, () => {
      last = this.telemetry(user);
      return ok(last) ? last : undefined;
    }, { timeoutMs: 5_000, everyMs: 100 }).catch((err: unknown) => {
      const { relay, ice, turn } = last ?? {};
      throw new Error(`${String(err)}\nlast: ${JSON.stringify({ relay, ice, turn })}\n${this.describe()}`);
    });
  }

  async app(user: string, c: ChannelName, args: string[]): Promise<Proc> {
    const p = this.procs.spawn(user, `${user}-app-${++this.#apps}`, [process.execPath, TUNNEL_APP, String(CHANNELS[c].port), ...args]);
    await p.waitFor("out", /^connected$/m, 10_000);
    return p;
  }

  async result(app: Proc): Promise<AppResult> {
    const code = await app.exitWithin(APP_DEADLINE_MS + 5_000);
    const m = app.out.match(/^result (.+)$/m);
    if (code !== 0 || m === null) throw new Error(`${app.name} failed (exit ${code})\n${app.describe()}\n${this.describe()}`);
    return JSON.parse(m[1] ?? "") as AppResult;
  }

  /**
   * Waits until `user`'s sending session on `c` says the rungs in `failed` failed (ICE may start
   * before the TLS dial has failed: ICE_AFTER_TLS_MS), and returns what it says.
   */
  failedRungs(user: string, c: ChannelName, failed: string[]): Promise<string[]> {
    let last: string[] = [];
    return eventually(`${user}'s session on ${CHANNELS[c].channel} to have failed ${failed.join(", ")}`, () => {
      last = this.tunnel(user, c)?.out?.failed?.map((f) => f.rung) ?? [];
      return failed.every((r) => last.includes(r)) ? last : undefined;
    }, { timeoutMs: 10_000, everyMs: 50 }).catch(() => last);
  }

  /** Waits until `user`'s sending session on `c` is on `rung`. */
  /**
   * `user`'s sending session on `c` (`side` "in": its receiving one) on `rung`. Each end counts
   * an ICE path's bytes by its own selected candidate pair, and the two ends' pairs can differ
   * for a moment (one end on a TURN pair that the other has already left).
   */
  onRung(user: string, c: ChannelName, rung: string, timeoutMs = 15_000, side: "out" | "in" = "out"): Promise<TunnelView> {
    return eventually(`${user}'s ${side === "out" ? "sending" : "receiving"} session on ${CHANNELS[c].channel} to be on ${rung}`, () => {
      const t = this.tunnel(user, c);
      return t?.[side]?.rung === rung ? t : undefined;
    }, { timeoutMs, everyMs: 50 }).catch((err: unknown) => {
      throw new Error(`${String(err)}\nls: ${JSON.stringify(this.tunnel(user, c))}\n${this.describe()}`);
    });
  }

  /**
   * Random bytes both ways at once on `c`, sent once `ready()` resolved (the sessions open when
   * the applications connect, and climb while they wait: a relay this fast would otherwise carry
   * a whole transfer before ICE is up); `during()` runs while they flow. Asserts both arrive whole.
   */
  async bothWays(c: ChannelName, from: string, to: string, bytes: number, ready: () => Promise<void>, during?: () => Promise<void>): Promise<void> {
    const go = join(this.dir, `${c}-${++this.#apps}-go`);
    const receiver = await this.app(to, c, ["random", String(bytes), go]);
    const sender = await this.app(from, c, ["random", String(bytes), go]);
    await ready();
    writeFileSync(go, "");
    await during?.();
    const [a, b] = await Promise.all([this.result(sender), this.result(receiver)]);
    expect(a.sent).toBe(bytes);
    expect(b.sent).toBe(bytes);
    expect(b.received).toBe(bytes);
    expect(a.received).toBe(bytes);
    expect(b.receivedSha).toBe(a.sentSha);
    expect(a.receivedSha).toBe(b.sentSha);
  }

  /** The seed's test on `c`, once `from`'s session is on `rung`: 20 × 4096 in order and intact. */
  async seed(c: ChannelName, from: string, to: string, rung: string): Promise<void> {
    const got = join(this.dir, `${c}-seed.bin`);
    const go = join(this.dir, `${c}-go`);
    const receiver = await this.app(to, c, ["recv", got]);
    const sender = await this.app(from, c, ["seed", go]);
    await this.onRung(from, c, rung);
    writeFileSync(go, "");
    const [sent, recv] = await Promise.all([this.result(sender), this.result(receiver)]);
    expect(sent.sent).toBe(SEED_BYTES);
    expect(recv.received).toBe(SEED_BYTES);
    expect(recv.receivedSha).toBe(sent.sentSha);
    expect(seedProblem(readFileSync(got))).toBeNull();
  }
}

describe.if(can.ok && turnserver !== null)("the ladder behind NATs: alice and bob port-preserving, carol symmetric; STUN and TURN in pub", () => {
  const lab = new Lab({ alice: ["ab", "abSeed", "abCut", "ac", "acSeed"], bob: ["ab", "abSeed", "abCut"], carol: ["ac", "acSeed"] });
  beforeAll(() => lab.start({ symmetric: ["carol"], turn: true }), 60_000);
  afterAll(() => lab.stop());

  test("port-preserving NATs both sides: the sessions punch through with ICE; 64 MiB both ways arrive intact, most bytes on ICE", async () => {
    const before = { alice: lab.telemetry("alice"), bob: lab.telemetry("bob") };
    await lab.bothWays("ab", "alice", "bob", 64 * MIB, async () => {
      const t = await lab.onRung("alice", "ab", "ice");
      // Hole punching: server-reflexive candidates at both ends, the NATs' public addresses.
      expect(t.out?.via).toMatch(new RegExp(`^${lab.lab.publicAddr("alice").replaceAll(".", "\\.")}:\\d+ \\(srflx\\) -> ${lab.lab.publicAddr("bob").replaceAll(".", "\\.")}:\\d+ \\(srflx\\)$`));
      expect(await lab.failedRungs("alice", "ab", ["tls"])).toEqual(["tls"]); // the private address did not answer
      await lab.onRung("bob", "ab", "ice");
      // Both receiving ends too: every byte is counted on ICE at both ends.
      await lab.onRung("alice", "ab", "ice", 15_000, "in");
      await lab.onRung("bob", "ab", "ice", 15_000, "in");
    });
    // Each direction went on ICE, all of it (the bulk waited for the upgrade), nothing on the relay.
    const d = (t: Telemetry, u: "alice" | "bob") => ({ tx: t.ice.tx.bytes - before[u].ice.tx.bytes, rx: t.ice.rx.bytes - before[u].ice.rx.bytes });
    const alice = await lab.telemetryWhen("alice", "64 MiB each way on ICE", (t) => d(t, "alice").tx === 64 * MIB && d(t, "alice").rx === 64 * MIB);
    const bob = await lab.telemetryWhen("bob", "64 MiB each way on ICE", (t) => d(t, "bob").tx === 64 * MIB && d(t, "bob").rx === 64 * MIB);
    expect(bob.relay.rx.bytes - before.bob.relay.rx.bytes).toBe(0);
    expect(alice.turn.tx.bytes + bob.turn.tx.bytes).toBe(0);
    expect(alice.ice.failures + bob.ice.failures).toBe(0);
  }, 90_000);

  test("the seed's 20 × 4096 tunnel test on the ICE rung", async () => {
    const before = lab.telemetry("bob").ice.rx.bytes;
    await lab.seed("abSeed", "alice", "bob", "ice");
    await lab.telemetryWhen("bob", "the seed counted on ICE", (t) => t.ice.rx.bytes - before >= SEED_BYTES);
  }, 60_000);

  test("a symmetric NAT: hole punching fails and the session takes the TURN relay candidate; transfers intact", async () => {
    await lab.bothWays("ac", "alice", "carol", 16 * MIB, async () => {
      const t = await lab.onRung("alice", "ac", "turn", 20_000);
      expect(t.out?.via).toContain("(relay)"); // a TURN relay candidate at one end at least
      expect(await lab.failedRungs("alice", "ac", ["tls"])).toEqual(["tls"]);
      await lab.onRung("carol", "ac", "turn", 20_000);
    });
    const alice = await lab.telemetryWhen("alice", "16 MiB each way on TURN", (t) => t.turn.tx.bytes >= 16 * MIB && t.turn.rx.bytes >= 16 * MIB);
    expect(alice.ice.failures).toBe(0);
  }, 90_000);

  test("the seed's 20 × 4096 tunnel test on the TURN rung", async () => {
    await lab.seed("acSeed", "alice", "carol", "turn");
  }, 60_000);

  test("the ICE path cut mid-stream (UDP dropped in alice's NAT): back to the relay, nothing lost or duplicated", async () => {
    const fallbacks = lab.telemetry("alice").ice.fallbacks;
    try {
      const before = lab.telemetry("bob").ice.rx.bytes;
      await lab.bothWays("abCut", "alice", "bob", 64 * MIB, () => lab.onRung("alice", "abCut", "ice").then(() => {}), async () => {
        await eventually("some of the stream on ICE", () => lab.telemetry("bob").ice.rx.bytes > before, { everyMs: 10 });
        await lab.lab.cutUdp("alice");
        const t = await lab.onRung("alice", "abCut", "relay", 30_000);
        expect(t.out?.failed?.map((f) => f.rung)).toEqual(["tls", "ice"]);
      });
    } finally {
      await lab.lab.restoreUdp("alice");
    }
    const after = await eventually("alice's fallback in telemetry", () => {
      const t = lab.telemetry("alice");
      return t.ice.fallbacks > fallbacks ? t : undefined;
    });
    expect(after.ice.fallbacks).toBeGreaterThan(fallbacks);
  }, 120_000);
});

describe.if(can.ok)("without a TURN server: a symmetric NAT keeps the session on the WebSocket relay", () => {
  const lab = new Lab({ alice: ["ac", "acSeed"], carol: ["ac", "acSeed"] });
  beforeAll(() => lab.start({ symmetric: ["carol"], turn: false }), 60_000);
  afterAll(() => lab.stop());

  test("16 MiB both ways arrive intact on the relay; ls says why TLS, ICE and TURN did not carry it", async () => {
    await lab.bothWays("ac", "alice", "carol", 16 * MIB, async () => {
      const t = await eventually("alice's ICE attempt to end", () => {
        const v = lab.tunnel("alice", "ac");
        return v?.out?.failed?.some((f) => f.rung === "ice") ? v : undefined;
      }, { timeoutMs: 30_000, everyMs: 100 });
      expect(t.out?.rung).toBe("relay");
      expect(t.out?.failed?.map((f) => f.rung)).toEqual(["tls", "ice", "turn"]);
    });
    const alice = await lab.telemetryWhen("alice", "16 MiB sent on the relay", (t) => t.relay.tx.bytes >= 16 * MIB && t.ice.failures >= 1);
    expect(alice.ice.tx.bytes + alice.turn.tx.bytes).toBe(0);
    expect(alice.relay.tx.bytes).toBeGreaterThanOrEqual(16 * MIB);
  }, 90_000);

  test("the seed's 20 × 4096 tunnel test on the relay rung, after ICE gave up", async () => {
    const got = join(lab.dir, "relay-seed.bin");
    const go = join(lab.dir, "relay-go");
    const receiver = await lab.app("carol", "acSeed", ["recv", got]);
    const sender = await lab.app("alice", "acSeed", ["seed", go]);
    await eventually("alice's ICE attempt on the seed channel to end", () => lab.tunnel("alice", "acSeed")?.out?.failed?.some((f) => f.rung === "ice"), { timeoutMs: 30_000, everyMs: 100 });
    writeFileSync(go, "");
    const [sent, recv] = await Promise.all([lab.result(sender), lab.result(receiver)]);
    expect(recv.receivedSha).toBe(sent.sentSha);
    expect(seedProblem(readFileSync(got))).toBeNull();
  }, 60_000);
});
