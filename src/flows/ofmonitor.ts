/**
 * Changes to a bridge's flows as they happen: one long-lived `ovs-ofctl monitor BR watch:!initial`
 * (OpenFlow 1.0 + Nicira flow monitoring), read by a state machine. reconcile.ts's engine keeps its
 * memory of the bridge true with it between dumps.
 *
 * The process (`FlowMonitor`): `ovs-ofctl --no-names --unixctl=CTL -vconsole:off monitor BR
 * watch:!initial`. Once the switch has taken the monitor request ovs-ofctl prints its (empty:
 * `!initial`) reply on stdout — `NXST_FLOW_MONITOR reply (xid=0x2):` — and from then on every
 * OpenFlow message it receives on stderr, as OVS 3.1 prints them (seen on this switch):
 *
 *   NXST_FLOW_MONITOR reply (xid=0x0):
 *    event=ADDED table=0 idle_timeout=5 cookie=0x99 tcp,in_port=3,nw_dst=10.0.0.1,tp_dst=80 actions=output:2
 *    event=MODIFIED table=0 cookie=0x5 in_port=1 actions=output:9
 *    event=DELETED reason=delete table=1 cookie=0x57a0010000000001 actions=NORMAL
 *    event=ADDED table=0 cookie=0 in_port=3                 (no actions: a flow that drops)
 *    event=ABBREV xid=0x1f                                  (changes of our own connection: none here)
 *   OFPT_BARRIER_REPLY (xid=0x5):
 *
 * One message holds the updates of one flow-mod or bundle, in the order OVS applied them. An
 * event carries the flow's table, timeouts, cookie, match and actions — but never its priority
 * (OVS formats the match with the default priority: `match_format(…, OFP_DEFAULT_PRIORITY)`), so
 * an event names a flow's place only up to its priority. `barrier()` sends `ofctl/barrier` to
 * the process's unixctl socket: its `OFPT_BARRIER_REPLY` comes after the updates of every change
 * the switch made before, so once the parser has seen it, every event of a bundle sent before is
 * in. A big change (a bundle of 20,000 adds) fills the connection's buffer: OVS then pauses the
 * updates (`NXT_FLOW_MONITOR_PAUSED`: it still reports deletions of flows it had reported), and
 * once the buffer drains sends an ADDED with the current content of every flow added or
 * modified meanwhile, then `NXT_FLOW_MONITOR_RESUMED` — a barrier reply that arrives in between
 * counts only from the resume on. Read as "this flow is there now" (ADDED, MODIFIED) and "it is
 * gone" (DELETED), the updates stay exact through a pause. Other messages (echo requests) are
 * skipped.
 */
import { rmSync } from "node:fs";
import { Socket } from "node:net";
import { StoaError, describeError } from "../core/errors.ts";
import { FlowSyntaxError } from "./flow-values.ts";
import { MAX_DUMP_LINE_CHARS, ofctlPath } from "./ofctl.ts";

/** A line of the monitor's output is at most this long (a flow's text, as in a dump). */
export const MAX_MONITOR_LINE_CHARS = MAX_DUMP_LINE_CHARS;
/** How long the switch may take to answer the monitor request. */
const START_TIMEOUT_MS = 10_000;
/** How long a barrier's reply may take (it follows a bundle's updates: 20,000 of them take ~0.3 s). */
const BARRIER_TIMEOUT_MS = 30_000;
/** How long stop() waits after SIGTERM (ovs-ofctl removes its unixctl socket then) before SIGKILL. */
const STOP_GRACE_MS = 2_000;
/** ovs-ofctl's own run dir when OVS_RUNDIR is not set (Debian's openvswitch-switch). */
const DEFAULT_RUNDIR = "/var/run/openvswitch";
/** stderr text quoted when the monitor fails. */
const QUOTE_CHARS = 300;

/** One flow update, as printed: match and actions not yet canonical (ofctl.ts `printedFlow`). */
export interface FlowEvent {
  event: "ADDED" | "DELETED" | "MODIFIED";
  table: number;
  cookie: bigint;
  idleTimeout: number;
  hardTimeout: number;
  /** The match as OVS printed it, without priority; "" for every packet. */
  match: string;
  /** The actions as OVS printed them; "drop" for none. */
  actions: string;
}

export type MonitorMessage =
  | { type: "flow"; flow: FlowEvent }
  /** A change the switch abbreviated (made through the monitor's own connection): its flow is unknown. */
  | { type: "abbrev" }
  | { type: "barrier" }
  /** The switch stopped sending updates (its send buffer filled: NXT_FLOW_MONITOR_PAUSED)… */
  | { type: "paused" }
  /** …and sends them again (NXT_FLOW_MONITOR_RESUMED), after an ADDED of each flow added or modified meanwhile. */
  | { type: "resumed" }
  /** ovs-ofctl's own message before it exits (`ovs-ofctl: vconn_recv (End of file)`). */
  | { type: "fatal"; text: string };

/** What a FlowMonitor hands on: the updates and what makes them unknown. */
export type FlowMessage = Extract<MonitorMessage, { type: "flow" | "abbrev" }>;

const HEADER = /^([A-Z][A-Z0-9_]*)(?: reply)? \(xid=0x[0-9a-f]{1,8}\):/;
const EVENT = /^ event=(ADDED|DELETED|MODIFIED)(?: reason=[a-z0-9_-]{1,32})? table=([0-9]{1,3})(?: idle_timeout=([0-9]{1,5}))?(?: hard_timeout=([0-9]{1,5}))? cookie=(0|0x[0-9a-f]{1,16})(?: (.*))?$/;
const ABBREV = /^ event=ABBREV xid=0x[0-9a-f]{1,8}$/;
const MAX_TABLE = 254;
const MAX_U16 = 0xffff;

/** Monitors started by this process, for unique unixctl socket names. */
let started = 0;

const quote = (text: string): string => JSON.stringify(text.length > QUOTE_CHARS ? `${text.slice(0, QUOTE_CHARS)}…` : text);

function eventLine(line: string): FlowEvent {
  const m = EVENT.exec(line);
  if (m === null) throw new FlowSyntaxError(`cannot read the flow update ${quote(line)}`, "decode");
  const [, event = "", table = "", idle, hard, cookie = "", rest = ""] = m;
  const numbers = [Number(table), Number(idle ?? 0), Number(hard ?? 0)] as const;
  if (numbers[0] > MAX_TABLE || numbers[1] > MAX_U16 || numbers[2] > MAX_U16) throw new FlowSyntaxError(`a table or timeout out of range in ${quote(line)}`, "decode");
  // The match (maybe empty), then " actions=…" unless the flow drops: OVS prints no actions then.
  const at = rest.startsWith("actions=") ? 0 : rest.indexOf(" actions=");
  const match = (at < 0 ? rest : rest.slice(0, at)).trim();
  const actions = at < 0 ? "drop" : rest.slice(at === 0 ? 8 : at + 9);
  if (match.includes(" ") || actions === "") throw new FlowSyntaxError(`cannot read the flow update ${quote(line)}`, "decode");
  return { event: event as FlowEvent["event"], table: numbers[0], cookie: BigInt(cookie), idleTimeout: numbers[1], hardTimeout: numbers[2], match, actions };
}

/**
 * The state machine over the monitor's stderr: `push` text as it comes (any split), take the
 * messages whole lines make. States: OTHER (before the first message, or inside one that is not
 * flow updates: its lines are skipped) and UPDATES (inside `NXST_FLOW_MONITOR reply`: every line
 * is an event). A line over MAX_MONITOR_LINE_CHARS, an event it cannot read or a line that is no
 * message throws FlowSyntaxError ("decode"); the parser is then spent.
 * @example new MonitorParser().push("NXST_FLOW_MONITOR reply (xid=0x0):\n event=DELETED reason=delete table=0 cookie=0x5 in_port=1 actions=output:2\n")
 *   // → [{ type: "flow", flow: { event: "DELETED", table: 0, cookie: 5n, …, match: "in_port=1", actions: "output:2" } }]
 */
export class MonitorParser {
  #state: "OTHER" | "UPDATES" = "OTHER";
  #carry = "";

  push(text: string): MonitorMessage[] {
    const out: MonitorMessage[] = [];
    let at = 0;
    for (let end = text.indexOf("\n"); end >= 0; end = text.indexOf("\n", at)) {
      if (this.#carry.length + end - at > MAX_MONITOR_LINE_CHARS) this.#tooLong();
      const line = (this.#carry + text.slice(at, end)).replace(/\r$/, "");
      this.#carry = "";
      at = end + 1;
      const message = this.#line(line);
      if (message !== null) out.push(message);
    }
    if (this.#carry.length + text.length - at > MAX_MONITOR_LINE_CHARS) this.#tooLong();
    this.#carry += text.slice(at);
    return out;
  }

  #tooLong(): never {
    throw new FlowSyntaxError(`a line of ovs-ofctl monitor's output is longer than ${MAX_MONITOR_LINE_CHARS} characters`, "decode");
  }

  #line(line: string): MonitorMessage | null {
    if (line.trim() === "") return null;
    if (line.startsWith(" ")) {
      if (this.#state === "OTHER") return null;
      if (ABBREV.test(line)) return { type: "abbrev" };
      return { type: "flow", flow: eventLine(line) };
    }
    const header = HEADER.exec(line);
    if (header === null) {
      if (line.startsWith("ovs-ofctl: ")) return { type: "fatal", text: line };
      throw new FlowSyntaxError(`ovs-ofctl monitor printed ${quote(line)}, not an OpenFlow message`, "decode");
    }
    const name = header[1];
    this.#state = name === "NXST_FLOW_MONITOR" || name === "OFPST_FLOW_MONITOR" ? "UPDATES" : "OTHER";
    if (name === "OFPT_BARRIER_REPLY") return { type: "barrier" };
    if (name === "NXT_FLOW_MONITOR_PAUSED" || name === "OFPT_FLOW_MONITOR_PAUSED") return { type: "paused" };
    if (name === "NXT_FLOW_MONITOR_RESUMED" || name === "OFPT_FLOW_MONITOR_RESUMED") return { type: "resumed" };
    return null;
  }
}

/**
 * One bridge's `ovs-ofctl monitor` (this file's header). `onMessage` gets the flow updates and
 * ABBREVs (barriers settle `barrier()`, pauses delay that); `onExit` is called once if the process ends other than by
 * `stop()`, or its output cannot be read (it is killed then).
 * @example
 *   const monitor = await FlowMonitor.start({ bridge: "br0", env, onMessage: (m) => …, onExit: (why) => … });
 *   await applyFlowMods("br0", mods, { env });
 *   await monitor.barrier(); // every event of those mods has reached onMessage
 *   await monitor.stop();
 */
export class FlowMonitor {
  readonly #proc: Bun.Subprocess<"ignore", "pipe", "pipe">;
  readonly #ctl: string;
  #stopping = false;
  #barrier: { resolve: () => void; reject: (err: Error) => void } | null = null;
  #failure: string | null = null;
  /** Paused by the switch (updates held back); a barrier reply seen meanwhile settles on the resume. */
  #paused = false;
  #barrierSeen = false;
  #lastBarrier: Promise<void> = Promise.resolve();

  private constructor(proc: Bun.Subprocess<"ignore", "pipe", "pipe">, ctl: string) {
    this.#proc = proc;
    this.#ctl = ctl;
  }

  /** Resolves once the switch has taken the monitor request: every change after that is reported. */
  static async start(o: { bridge: string; env: NodeJS.ProcessEnv; onMessage: (m: FlowMessage) => void; onExit: (why: string) => void }): Promise<FlowMonitor> {
    const bin = ofctlPath(o.env);
    if (bin === null) throw new StoaError("not_found", "ovs-ofctl not found: install openvswitch-switch");
    const ctl = `${o.env.OVS_RUNDIR ?? DEFAULT_RUNDIR}/stoa-monitor.${process.pid}.${o.bridge}.${++started}.ctl`;
    let proc: Bun.Subprocess<"ignore", "pipe", "pipe">;
    try {
      proc = Bun.spawn([bin, "--no-names", `--unixctl=${ctl}`, "-vconsole:off", "monitor", o.bridge, "watch:!initial"], { env: o.env, stdin: "ignore", stdout: "pipe", stderr: "pipe" });
    } catch (err) {
      throw new StoaError("io", `cannot run ${bin}: ${describeError(err)}`, { cause: err });
    }
    const monitor = new FlowMonitor(proc, ctl);
    const ready = monitor.#readStdout();
    void monitor.#readStderr(o.onMessage);
    void proc.exited.then(() => {
      rmSync(ctl, { force: true }); // ovs-ofctl removes it on SIGTERM, not when killed
      const why = monitor.#failure ?? `ovs-ofctl monitor ${o.bridge} exited (${proc.signalCode ?? `exit ${proc.exitCode}`})`;
      monitor.#barrier?.reject(new StoaError("io", why));
      monitor.#barrier = null;
      if (!monitor.#stopping) o.onExit(why);
    });
    const timer = setTimeout(() => monitor.#fail(`the switch did not answer ovs-ofctl monitor ${o.bridge} within ${START_TIMEOUT_MS} ms`), START_TIMEOUT_MS);
    try {
      if (!(await ready)) {
        await proc.exited;
        throw new StoaError("io", `ovs-ofctl monitor ${o.bridge} failed: ${monitor.#failure ?? `exit ${proc.exitCode}`}`);
      }
    } catch (err) {
      monitor.#stopping = true;
      proc.kill("SIGKILL");
      throw err;
    } finally {
      clearTimeout(timer);
    }
    return monitor;
  }

  /** The ovs-ofctl process's id. */
  get pid(): number {
    return this.#proc.pid;
  }

  /**
   * Resolves when every update of the changes the switch made before it has reached
   * `onMessage`. Barriers run one after another (ovs-ofctl waits for one reply at a time).
   */
  barrier(): Promise<void> {
    const next = this.#lastBarrier.then(() => this.#barrierOnce());
    this.#lastBarrier = next.catch(() => undefined);
    return next;
  }

  #barrierOnce(): Promise<void> {
    const { promise, resolve, reject } = Promise.withResolvers<void>();
    const timer = setTimeout(() => this.#settle(new StoaError("io", `no barrier reply on the flow monitor within ${BARRIER_TIMEOUT_MS} ms`)), BARRIER_TIMEOUT_MS);
    this.#barrier = {
      resolve: () => {
        clearTimeout(timer);
        resolve();
      },
      reject: (err) => {
        clearTimeout(timer);
        reject(err);
      },
    };
    // unixctl is JSON-RPC 1.0 over the socket; its reply is not needed: the barrier's own reply comes on stderr.
    const socket = new Socket();
    socket.on("error", (err) => this.#settle(new StoaError("io", `cannot reach the flow monitor at ${this.#ctl}: ${describeError(err)}`)));
    socket.on("data", () => socket.destroy());
    socket.connect(this.#ctl, () => socket.write(JSON.stringify({ method: "ofctl/barrier", params: [], id: 0 })));
    return promise.finally(() => socket.destroy());
  }

  /** Ends the process (SIGTERM, SIGKILL after a grace) and waits for it; `onExit` is not called. */
  async stop(): Promise<void> {
    this.#stopping = true;
    this.#proc.kill("SIGTERM");
    const killer = setTimeout(() => this.#proc.kill("SIGKILL"), STOP_GRACE_MS);
    await this.#proc.exited;
    clearTimeout(killer);
  }

  #settle(err: Error | null): void {
    const barrier = this.#barrier;
    this.#barrier = null;
    if (err === null) barrier?.resolve();
    else barrier?.reject(err);
  }

  #fail(why: string): void {
    this.#failure ??= why;
    this.#proc.kill("SIGKILL");
  }

  /** True once the monitor request's reply header is printed; false if stdout ends first. */
  async #readStdout(): Promise<boolean> {
    const decoder = new TextDecoder();
    let text = "";
    for await (const chunk of this.#proc.stdout) {
      text += decoder.decode(chunk, { stream: true });
      if (/^(?:NXST|OFPST)_FLOW_MONITOR reply \(xid=0x[0-9a-f]{1,8}\):$/m.test(text)) return true;
      if (text.length > MAX_MONITOR_LINE_CHARS) break;
    }
    return false;
  }

  async #readStderr(onMessage: (m: FlowMessage) => void): Promise<void> {
    const parser = new MonitorParser();
    const decoder = new TextDecoder();
    try {
      for await (const chunk of this.#proc.stderr) {
        for (const message of parser.push(decoder.decode(chunk, { stream: true }))) {
          if (message.type === "barrier") {
            if (this.#paused) this.#barrierSeen = true;
            else this.#settle(null);
          } else if (message.type === "paused") this.#paused = true;
          else if (message.type === "resumed") {
            this.#paused = false;
            if (this.#barrierSeen) this.#settle(null);
            this.#barrierSeen = false;
          } else if (message.type === "fatal") this.#failure ??= message.text;
          else onMessage(message);
        }
      }
    } catch (err) {
      this.#fail(`cannot read ovs-ofctl monitor's output: ${describeError(err)}`);
    }
  }
}
