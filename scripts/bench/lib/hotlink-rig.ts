/**
 * What scripts/bench/hotlink.ts needs to run hotlink processes, on loopback or in the NAT lab
 * (lib/hotlink-nat.ts): users, tokens and the ACL; a daemon's argv; a child process whose
 * output is read line by line (`Proc`); and the daemons' view of their sessions — the `ls`
 * answer of a daemon's control socket (the same answer `stoa hotlink ls --json` prints, asked
 * in-process so that it can be polled every few ms), a wait until a session is on a rung, and
 * an IPC channel declared anew (so that its next frame opens a new session).
 */
import type { Subprocess } from "bun";
import { chmodSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { hotlinkControlPath, hotlinkControlRequest } from "../../../src/hotlink/control.ts";
import type { DaemonStatus, OutgoingStatus } from "../../../src/hotlink/protocol.ts";

export type Rung = "tls" | "ice" | "turn" | "relay";
export type DirectMode = "on" | "off" | "tls" | "ice";

/** Lines of output kept per stream for error messages. */
const KEEP_LINES = 200;

/** Now, in ms on a clock every process on this machine shares (see lib/hotlink-app.ts). */
export const wallMs = (): number => performance.timeOrigin + performance.now();

/**
 * A child process whose stdout is read as lines: `line(re)` waits for one matching `re` (from
 * the start of its output), `json(t)` for a JSON line {"t": t, …}. stderr is kept for errors.
 */
export class Proc {
  readonly lines: string[] = [];
  readonly #err: string[] = [];
  readonly #waiters = new Set<() => void>();
  readonly exited: Promise<number>;

  constructor(
    readonly name: string,
    readonly proc: Subprocess<"pipe" | "ignore", "pipe", "pipe">,
  ) {
    void this.#read(proc.stdout, (l) => {
      this.lines.push(l);
      if (this.lines.length > KEEP_LINES * 10) this.lines.splice(0, this.lines.length - KEEP_LINES * 10);
      for (const w of this.#waiters) w();
    });
    void this.#read(proc.stderr, (l) => {
      this.#err.push(l);
      if (this.#err.length > KEEP_LINES) this.#err.shift();
    });
    this.exited = proc.exited.then((code) => {
      for (const w of this.#waiters) w();
      return code;
    });
  }

  get pid(): number {
    return this.proc.pid;
  }

  get running(): boolean {
    return this.proc.exitCode === null && this.proc.signalCode === null;
  }

  async #read(stream: ReadableStream<Uint8Array>, line: (l: string) => void): Promise<void> {
    const decoder = new TextDecoder();
    let buffered = "";
    for await (const chunk of stream) {
      buffered += decoder.decode(chunk, { stream: true });
      for (let nl = buffered.indexOf("\n"); nl >= 0; nl = buffered.indexOf("\n")) {
        line(buffered.slice(0, nl));
        buffered = buffered.slice(nl + 1);
      }
    }
    if (buffered !== "") line(buffered);
  }

  /** The first stdout line matching `re`, waiting at most `timeoutMs`. */
  async line(re: RegExp, timeoutMs = 15_000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const hit = this.lines.find((l) => re.test(l));
      if (hit !== undefined) return hit;
      if (!this.running) throw new Error(`${this.name} exited (${this.proc.exitCode ?? this.proc.signalCode}) before printing ${re}\n${this.describe()}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`${this.name} did not print ${re} within ${timeoutMs} ms\n${this.describe()}`);
      await this.#next(left);
    }
  }

  /** Resolves on the next stdout line or exit, or after `ms`. */
  #next(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.#waiters.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.#waiters.add(done);
    });
  }

  /** The JSON line {"t": t, …} (lib/hotlink-app.ts's output), parsed. */
  async json<T>(t: string, timeoutMs = 15_000): Promise<T> {
    return JSON.parse(await this.line(new RegExp(`^\\{"t":"${t}"`), timeoutMs)) as T;
  }

  /** Writes a line to its stdin (spawned with stdin "pipe"). */
  tell(line: string): void {
    const stdin = this.proc.stdin;
    if (typeof stdin === "number" || stdin === undefined || stdin === null) throw new Error(`${this.name} has no stdin pipe`);
    stdin.write(`${line}\n`);
    void stdin.flush();
  }

  /** SIGTERM, then SIGKILL after `graceMs`; resolves once it exited. */
  async stop(graceMs = 3_000): Promise<void> {
    if (!this.running) return;
    this.proc.kill("SIGTERM");
    const code = await Promise.race([this.proc.exited, Bun.sleep(graceMs).then(() => null)]);
    if (code === null) {
      this.proc.kill("SIGKILL");
      await this.proc.exited;
    }
  }

  describe(): string {
    const tail = (xs: string[]) => xs.slice(-20).map((l) => `    ${l}`).join("\n");
    return `  ${this.name} (pid ${this.pid}) stdout:\n${tail(this.lines)}\n  stderr:\n${tail(this.#err)}`;
  }
}

/** Users in `dir`/users.json with a token file each, and an ACL letting them all use `pattern`. */
export function accounts(stoa: string, dir: string, users: string[], pattern: string): { users: string; acl: string; tokens: Record<string, string> } {
  const usersFile = join(dir, "users.json");
  const tokens: Record<string, string> = {};
  for (const user of users) {
    const run = Bun.spawnSync([stoa, "hotlink", "user", "add", user, "--users", usersFile]);
    if (run.exitCode !== 0) throw new Error(`stoa hotlink user add ${user} failed: ${run.stderr.toString()}`);
    const file = join(dir, `${user}.token`);
    writeFileSync(file, `${run.stdout.toString().trim().split("\n").pop() ?? ""}\n`);
    chmodSync(file, 0o600);
    tokens[user] = file;
  }
  const acl = join(dir, "acl.json");
  writeFileSync(acl, JSON.stringify({ rules: [{ pattern, read: users, write: users }] }));
  return { users: usersFile, acl, tokens };
}

export interface DaemonSpec {
  server: string;
  user: string;
  tokenFile: string;
  /** Not the host's: a daemon of the same user may run there. */
  runDir: string;
  direct: DirectMode;
  ipc?: [channel: string, socketPath: string][];
  tunnels?: [channel: string, listen: string, peer: string][];
  directListen?: string;
  iceServers?: string;
  /** `--relay-link` (default: the daemon's, auto). */
  relayLink?: "auto" | "ws";
}

/** `stoa hotlink connect …` for `d`, logging warnings only (or at $HLB_LOG_LEVEL, for debugging a run). */
export function daemonArgv(stoa: string, d: DaemonSpec): string[] {
  return [
    stoa, "hotlink", "connect", "--server", d.server, "--user", d.user, "--token-file", d.tokenFile, "--run-dir", d.runDir,
    "--direct", d.direct, "--log-level", process.env.HLB_LOG_LEVEL ?? "warn",
    ...(d.directListen === undefined ? [] : ["--direct-listen", d.directListen]),
    ...(d.relayLink === undefined ? [] : ["--relay-link", d.relayLink]),
    ...(d.iceServers === undefined ? [] : ["--ice-servers", d.iceServers]),
    ...(d.ipc ?? []).flatMap(([c, path]) => ["--ipc", `${c}=unix:${path}`]),
    ...(d.tunnels ?? []).flatMap(([c, listen, peer]) => ["--tunnel", `${c}=${listen}@${peer}`]),
  ];
}

/** A daemon's `ls` answer, from its control socket under `runDir`. */
export async function ls(runDir: string, user: string): Promise<DaemonStatus> {
  return (await hotlinkControlRequest(hotlinkControlPath(runDir, user), { type: "ls" })).status;
}

export type ChannelKind = "ipc" | "tunnel";

/** The outgoing session of `user`'s channel in `status`, if it has one. */
export function outgoing(status: DaemonStatus, kind: ChannelKind, channel: string): OutgoingStatus | null {
  const list: { channel: string; out: OutgoingStatus | null }[] = kind === "ipc" ? status.ipc : status.tunnels;
  return list.find((c) => c.channel === channel)?.out ?? null;
}

/** The rung of the session `from` opened on `channel`, as `to`'s daemon receives it (null: none). */
export function incomingRung(status: DaemonStatus, kind: ChannelKind, channel: string): Rung | null {
  if (kind === "tunnel") return status.tunnels.find((c) => c.channel === channel)?.in?.rung ?? null;
  return status.ipc.find((c) => c.channel === channel)?.in[0]?.rung ?? null;
}

/** `channel`'s tunnel connection rides a relay stream, spliced, in `status`. */
function spliced(status: DaemonStatus, channel: string): boolean {
  return status.tunnels.find((c) => c.channel === channel)?.stream === "spliced";
}

/**
 * Waits until the session `from` opened on `channel` is on `rung` at both ends — `from`'s
 * outgoing session and `to`'s incoming one (polling `ls` every `everyMs`) — so that what is
 * sent next travels on `rung` and the receiver takes it from there; throws after `timeoutMs`
 * with what it last saw (the rungs and why rungs failed).
 */
export async function waitForRung(
  runDir: string, from: string, to: string, kind: ChannelKind, channel: string, rung: Rung, timeoutMs = 20_000, everyMs = 20,
): Promise<OutgoingStatus> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const fromStatus = await ls(runDir, from);
    const toStatus = await ls(runDir, to);
    const out = outgoing(fromStatus, kind, channel);
    const into = incomingRung(toStatus, kind, channel);
    if (out?.rung === rung && out.state === "open" && into === rung) return out;
    // A relay stream (src/hotlink/relay-stream.ts) carries both directions of a tunnel in one
    // session, opened by either side: spliced at both ends is the relay rung, both ways.
    if (kind === "tunnel" && rung === "relay" && spliced(fromStatus, channel) && spliced(toStatus, channel)) {
      const t = fromStatus.tunnels.find((c) => c.channel === channel);
      return t?.out ?? { sid: t?.in?.sid ?? "", state: "open", seq: 0, bytes: 0, rung: "relay", failed: [] };
    }
    if (Date.now() > deadline) {
      throw new Error(`${from}'s session on ${channel} is not on ${rung} at both ends after ${timeoutMs} ms: ${from}'s ${JSON.stringify(out)}, ${to}'s rung ${into}`);
    }
    await Bun.sleep(everyMs);
  }
}

/**
 * Removes `user`'s IPC channel and declares it again at `socketPath`, as `stoa hotlink close`
 * and `stoa hotlink ipc` do over the control socket: the channel's outgoing session ends (its
 * Close reaches the receivers) and its applications' connections are closed; the next frame an
 * application writes opens a new session. Nothing else ends an IPC channel's outgoing session
 * short of the relay link going down (src/hotlink/ipc.ts): applications leaving do not.
 */
export async function redeclareIpc(runDir: string, user: string, channel: string, socketPath: string): Promise<void> {
  const control = hotlinkControlPath(runDir, user);
  await hotlinkControlRequest(control, { type: "close", channel });
  await hotlinkControlRequest(control, { type: "ipc", spec: `${channel}=unix:${socketPath}` });
}

/** CPU seconds (user + system) a process has used so far, from /proc. */
export function cpuSeconds(pid: number): number {
  const text = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = text.slice(text.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime in clock ticks (USER_HZ 100)
}
