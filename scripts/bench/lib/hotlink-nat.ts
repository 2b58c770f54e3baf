/**
 * hotlink in the NAT lab (test/fixtures/nat-lab.ts) for scripts/bench/hotlink.ts: alice and bob
 * each behind their own NAT, with no route between their private networks; in `pub` the relay
 * server (`stoa hotlink serve`, with its STUN port) and, for the TURN rung, coturn.
 *
 * - `turn: false`: both NATs port-preserving; the relay sends `stun:` only, so a session's best
 *   rung is "ice" (host/server-reflexive candidates, hole punching).
 * - `turn: true`: bob behind a symmetric NAT (`--random-fully`), coturn in pub, the relay sends
 *   `stun:` and `turn:`: punching fails and sessions take coturn's relay candidate ("turn").
 *   coturn relays to no private network (`--denied-peer-ip`, as in test/e2e/hotlink-nat.test.ts:
 *   a relayed send pub has no route for would close the allocation).
 * Each daemon declares one IPC channel (`IPC_CHANNEL`, a Unix socket in the rig's directory: the
 * filesystem is shared, so the benchmark process connects to both ends itself) and one tunnel
 * (`TUNNEL_CHANNEL`, port `TUNNEL_PORT` on each namespace's own loopback: the applications run
 * inside, lib/hotlink-app.ts, started with `app()`; other programs, such as the bare data channel,
 * with `exec()`, `netns()` and `stunUrl`). `restartDaemons(direct)` starts them again
 * with another `--direct`. `stop()` ends every process and removes the namespaces and the
 * directory; the netns helper's reaper removes the namespaces if this process dies first.
 */
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { join } from "node:path";
import { type NatLab, canUseNatLab, createNatLab } from "../../../test/fixtures/nat-lab.ts";
import type { ExecResult } from "../../../test/helpers/netns.ts";
import { type DirectMode, Proc, accounts, daemonArgv, ls } from "./hotlink-rig.ts";

export const IPC_CHANNEL = "alice/bench/ipc";
export const TUNNEL_CHANNEL = "alice/bench/tunnel";
/** Fresh namespaces: nothing else holds these ports. */
export const TUNNEL_PORT = 10001;
const RELAY_PORT = 8470;
const STUN_PORT = 3478;
const TURN_PORT = 3479;
const TURN_USER = "stoa";
const TURN_PASS = "bench-turn-pass";
const APP = join(import.meta.dir, "hotlink-app.ts");
const USERS = ["alice", "bob"] as const;
const PEER = { alice: "bob", bob: "alice" } as const;
type User = (typeof USERS)[number];

/** Why the NAT lab cannot run here (not root, no iptables, no coturn for TURN), or null. */
export function natLabProblem(turn: boolean): string | null {
  const can = canUseNatLab();
  if (!can.ok) return can.reason;
  if (turn && turnserverPath() === null) return "turnserver is not installed (apt-get install coturn)";
  return null;
}

function turnserverPath(): string | null {
  return Bun.which("turnserver") ?? (existsSync("/usr/bin/turnserver") ? "/usr/bin/turnserver" : null);
}

export interface NatRigOptions {
  stoa: string;
  turn: boolean;
  direct: DirectMode;
}

export class NatRig {
  readonly dir = mkdtempSync("/tmp/hlb-nat-");
  readonly runDir = join(this.dir, "run");
  server: Proc | null = null;
  coturn: Proc | null = null;
  readonly daemons = new Map<User, Proc>();
  readonly #apps = new Set<Proc>();
  #tokens: Record<string, string> = {};
  #appCount = 0;

  private constructor(
    readonly lab: NatLab,
    readonly opts: NatRigOptions,
  ) {}

  /** Builds the lab and starts coturn (for TURN), the relay and both daemons. */
  static async start(opts: NatRigOptions): Promise<NatRig> {
    const problem = natLabProblem(opts.turn);
    if (problem !== null) throw new Error(`cannot run the NAT lab: ${problem}`);
    const lab = await createNatLab({ peers: ["alice", { name: "bob", random: opts.turn }] });
    const rig = new NatRig(lab, opts);
    try {
      await rig.#startServers();
      await rig.restartDaemons(opts.direct);
    } catch (err) {
      await rig.stop();
      throw err;
    }
    return rig;
  }

  get pids(): { server: number; alice: number; bob: number; coturn: number | null } {
    return { server: this.server?.pid ?? 0, alice: this.daemons.get("alice")?.pid ?? 0, bob: this.daemons.get("bob")?.pid ?? 0, coturn: this.coturn?.pid ?? null };
  }

  ipcPath(user: User): string {
    return join(this.dir, `${user}.sock`);
  }

  /** The relay's STUN port as an ICE server URL, the `stun:` the relay hands the daemons. */
  get stunUrl(): string {
    return `stun:${this.lab.pubAddr}:${STUN_PORT}`;
  }

  /** `user`'s network namespace, for a process that enters it itself (`ip netns exec NAME`). */
  netns(user: User): string {
    return this.lab.net.ns(user);
  }

  /** Runs `argv` in `user`'s namespace to completion, killed after `timeoutMs` (and by stop()). */
  exec(user: User, argv: string[], timeoutMs: number): Promise<ExecResult> {
    return this.lab.net.exec(user, argv, { timeoutMs });
  }

  #spawn(host: string, name: string, argv: string[], stdin = false): Proc {
    const proc = this.lab.net.spawn(host, argv, { stdin: stdin ? "pipe" : "ignore", stdout: "pipe", stderr: "pipe" });
    return new Proc(`${name}@${host}`, proc);
  }

  async #startServers(): Promise<void> {
    const { stoa, turn } = this.opts;
    const pub = this.lab.pubAddr;
    const acc = accounts(stoa, this.dir, [...USERS], "alice/bench/**");
    this.#tokens = acc.tokens;
    if (turn) {
      const denied = USERS.map((p) => {
        const base = this.lab.net.prefix(p, this.lab.nat(p), 4).replace(/\.0\/24$/, "");
        return `--denied-peer-ip=${base}.0-${base}.255`;
      });
      this.coturn = this.#spawn("pub", "coturn", [
        turnserverPath() ?? "turnserver", "-n", `--listening-ip=${pub}`, `--relay-ip=${pub}`, `--listening-port=${TURN_PORT}`,
        "--min-port=49160", "--max-port=49400", "--lt-cred-mech", `--user=${TURN_USER}:${TURN_PASS}`, "--realm=stoa.bench",
        "--no-tls", "--no-dtls", "--no-cli", "--fingerprint", "--log-file=stdout", "--simple-log", ...denied,
        `--pidfile=${join(this.dir, "turn.pid")}`,
      ]);
      await this.coturn.line(/Total General servers/, 10_000);
    }
    const ice = [this.stunUrl, ...(turn ? [`turn:${TURN_USER}:${TURN_PASS}@${pub}:${TURN_PORT}`] : [])].join(",");
    this.server = this.#spawn("pub", "relay", [
      stoa, "hotlink", "serve", "--listen", `${pub}:${RELAY_PORT}`, "--stun-listen", `${pub}:${STUN_PORT}`, "--ice-servers", ice,
      "--users", acc.users, "--acl", acc.acl, "--log-level", "warn",
    ]);
    await this.server.line(/^hotlink: ws:\/\//);
  }

  /** (Re)starts both daemons with `--direct direct`; resolves once both reached the relay. */
  async restartDaemons(direct: DirectMode): Promise<void> {
    for (const d of this.daemons.values()) await d.stop();
    this.daemons.clear();
    for (const user of USERS) {
      const argv = daemonArgv(this.opts.stoa, {
        server: `ws://${this.lab.pubAddr}:${RELAY_PORT}`, user, tokenFile: this.#tokens[user] ?? "", runDir: this.runDir, direct,
        ipc: [[IPC_CHANNEL, this.ipcPath(user)]], tunnels: [[TUNNEL_CHANNEL, `127.0.0.1:${TUNNEL_PORT}`, PEER[user]]],
      });
      this.daemons.set(user, this.#spawn(user, `daemon-${user}`, argv));
    }
    for (const d of this.daemons.values()) await d.line(/^hotlink: /, 15_000);
  }

  /** Starts lib/hotlink-app.ts in `user`'s namespace on the tunnel's port; resolves once it connected. */
  async app(user: User, args: string[], stdin = false): Promise<Proc> {
    const p = this.#spawn(user, `app-${++this.#appCount}-${args[0]}`, [process.execPath, APP, String(TUNNEL_PORT), ...args], stdin);
    this.#apps.add(p);
    void p.exited.then(() => this.#apps.delete(p));
    await p.json("connected", 10_000);
    return p;
  }

  /** Waits until neither daemon has an application or a session on the tunnel (the previous one ended). */
  async tunnelIdle(timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const views = await Promise.all(USERS.map(async (u) => (await ls(this.runDir, u)).tunnels.find((t) => t.channel === TUNNEL_CHANNEL)));
      if (views.every((t) => t !== undefined && !t.app && t.out === null && t.in === null)) return;
      if (Date.now() > deadline) throw new Error(`the tunnel's sessions did not end within ${timeoutMs} ms: ${JSON.stringify(views)}`);
      await Bun.sleep(20);
    }
  }

  /** Everything the processes said, for a failure's message. */
  describe(): string {
    return [this.server, this.coturn, ...this.daemons.values(), ...this.#apps].flatMap((p) => (p === null ? [] : [p.describe()])).join("\n");
  }

  async stop(): Promise<void> {
    for (const p of [...this.#apps, ...this.daemons.values()]) await p.stop();
    await this.server?.stop();
    await this.coturn?.stop();
    await this.lab.destroy();
    rmSync(this.dir, { recursive: true, force: true });
  }
}
