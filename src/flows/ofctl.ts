/**
 * Flows on a real Open vSwitch through `ovs-ofctl`: read a bridge's flows, write a transaction.
 *
 * - `dumpFlows` runs `ovs-ofctl --no-names dump-flows BR cookie=C/M` (OpenFlow 1.0 + NXM: the
 *   form `flow-syntax.ts` canonicalizes to) with the caller's environment (`OVS_RUNDIR`), and
 *   `parseDumpFlows` reads its output: a state machine over lines (`START` until the first
 *   `… reply (…):` header, then `REPLY`; headers repeat in multi-part replies, blank lines are
 *   skipped), each flow line `cookie=…, duration=…, table=…, n_packets=…, n_bytes=…[,
 *   idle_timeout=…][, hard_timeout=…], idle_age=…[, hard_age=…], [flags ]MATCH actions=ACTIONS`
 *   (OpenFlow 1.3+ dumps print flags such as `reset_counts` before the match). Line length and
 *   flow count are bounded (`MAX_DUMP_LINE_CHARS`, `MAX_DUMP_FLOWS`). The matches and actions of
 *   compile.ts's own flows are recognized and kept as printed (flow-syntax.ts `compiledMatch`):
 *   they are canonical already, and most of a dump.
 * - `parseFlowSpec` reads a flow as users write it for `ovs-ofctl add-flow`, port names replaced
 *   by the bridge's ofport numbers, into the same canonical `Flow` a dump of it gives — so a plan
 *   compares desired and current flows as strings (`flowKey` is what `*_strict` commands address).
 * - `dumpPorts` runs `ovs-ofctl --no-names dump-ports-desc BR`: the bridge's ports, name →
 *   ofport, as ovs-vswitchd numbers them (what the one-shot CLI compiles against).
 * - `applyFlowMods` sends `flowModLine`s as one `ovs-ofctl --bundle add-flows BR -`: OVS applies
 *   all of them or none. `modify_strict` and `delete_strict` carry `cookie=C/-1`, so a flow with
 *   the same match under another cookie is never touched. OVS's `modify_strict` changes a flow's
 *   actions only (it keeps the timeouts it has): a timeout change is a delete_strict plus an add.
 *   (An `add` with the table, priority and match of an existing flow replaces it whatever its
 *   cookie: OVS identifies a flow by those three alone.)
 * - `printedFlow` reads a match and actions as ovs-ofctl prints them, for dumps and for the flow
 *   monitor's events (ofmonitor.ts).
 */
import { StoaError, describeError } from "../core/errors.ts";
import { canonicalActions, canonicalMatch, compiledMatch, splitItems } from "./flow-syntax.ts";
import { FlowSyntaxError, type Ports, parseNumber } from "./flow-values.ts";

export { FlowSyntaxError } from "./flow-values.ts";

/** One flow in canonical form: equal meaning, equal fields. */
export interface Flow {
  cookie: bigint;
  table: number;
  /** OpenFlow's default is 32768 (`dump-flows` leaves it out). */
  priority: number;
  /** Seconds; 0 is none. */
  idleTimeout: number;
  hardTimeout: number;
  /** Canonical match (`flow-syntax.ts`): fields normalized and ordered, "" for every packet. */
  match: string;
  /** Canonical actions, "drop" for none. */
  actions: string;
}

/** A flow as the switch reports it, with its counters. */
export interface DumpedFlow extends Flow {
  packets: bigint;
  bytes: bigint;
  durationS: number;
}

/** A dump line is at most this long; OVS caps a flow's actions at 64 KiB of OpenFlow, far above its text. */
export const MAX_DUMP_LINE_CHARS = 256 * 1024;
/** A dump holds at most this many flows (a full reconcile is ~20,000 per bridge). */
export const MAX_DUMP_FLOWS = 1_000_000;
/** A flow spec a user writes is at most this long. */
export const MAX_SPEC_CHARS = 64 * 1024;
/** `ovs-ofctl`'s stdout is read up to this much: MAX_DUMP_FLOWS short lines. */
const MAX_OFCTL_OUTPUT_BYTES = 512 * 1024 * 1024;
/** How long one `ovs-ofctl` may run; a bundle of 20,000 flows takes about a second. */
const OFCTL_TIMEOUT_MS = 120_000;
/** Quoted flow text in an error is cut to this. */
const QUOTE_CHARS = 200;

const DEFAULT_PRIORITY = 32768;
const MAX_TABLE = 254n;
const MAX_U16 = 0xffffn;
const MAX_U64 = 0xffff_ffff_ffff_ffffn;
/** What `ovs-ofctl` prints between the header fields and the match in OpenFlow 1.3+ dumps. */
const DUMP_FLAGS = new Set(["send_flow_rem", "check_overlap", "reset_counts", "no_packet_counts", "no_byte_counts"]);
/** Flow-mod settings a spec may not carry: a dump over OpenFlow 1.0 does not show them, so a plan could not compare them. */
const UNSUPPORTED_SPEC_KEYS = new Set([...DUMP_FLAGS, "importance", "out_port", "out_group"]);
/** A dumped match that starts with its priority: `priority=100,tcp,…` (OVS prints it first). */
const COMPILED_PRIORITY = /^priority=(0|[1-9][0-9]{0,4})(?:,(.+))?$/;
const NEWLINE = /[\r\n]/;
const HEADER_RE = /^[A-Z][A-Z0-9_]* reply(?: \([^()]*\))*:(?: .*)?$/;
const NOT_FOUND = "ovs-ofctl not found: install openvswitch-switch";

const quote = (text: string): string =>
  JSON.stringify(text.length > QUOTE_CHARS ? `${text.slice(0, QUOTE_CHARS)}…` : text);

/**
 * Parses `ovs-ofctl dump-flows` output (any number of replies, OpenFlow 1.0 or 1.3+).
 * @throws FlowSyntaxError naming the line it cannot read.
 * @example parseDumpFlows("NXST_FLOW reply (xid=0x4):\n cookie=0x0, duration=1s, table=0, n_packets=0, n_bytes=0, priority=0 actions=NORMAL\n")
 */
export function parseDumpFlows(text: string): DumpedFlow[] {
  const flows: DumpedFlow[] = [];
  let state: "START" | "REPLY" = "START";
  let lineNo = 0;
  for (let at = 0; at < text.length; ) {
    lineNo++;
    let end = text.indexOf("\n", at);
    if (end < 0) end = text.length;
    if (end - at > MAX_DUMP_LINE_CHARS) {
      throw new FlowSyntaxError(`dump-flows line ${lineNo} is longer than ${MAX_DUMP_LINE_CHARS} characters`, "decode");
    }
    const line = text.slice(at, end).replace(/\r$/, "");
    at = end + 1;
    if (line.trim() === "") continue;
    if (HEADER_RE.test(line)) {
      state = "REPLY";
      continue;
    }
    if (state === "START") {
      throw new FlowSyntaxError(`dump-flows line ${lineNo} ${quote(line)}: expected a reply header ("NXST_FLOW reply (xid=…):") first`, "decode");
    }
    if (flows.length >= MAX_DUMP_FLOWS) throw new FlowSyntaxError(`the dump has more than ${MAX_DUMP_FLOWS} flows`, "decode");
    try {
      flows.push(dumpLine(line));
    } catch (err) {
      if (!(err instanceof FlowSyntaxError)) throw err;
      throw new FlowSyntaxError(`dump-flows line ${lineNo} ${quote(line)}: ${err.message}`, "decode");
    }
  }
  return flows;
}

function dumpLine(line: string): DumpedFlow {
  const actionsAt = line.indexOf(" actions=");
  if (actionsAt < 0) throw new FlowSyntaxError("no actions=");
  let prefix = line.slice(0, actionsAt).trim();
  let matchPart = "";
  if (prefix.endsWith(",")) prefix = prefix.slice(0, -1);
  else {
    const lastSep = prefix.lastIndexOf(", ");
    matchPart = prefix.slice(lastSep + 2);
    prefix = lastSep < 0 ? "" : prefix.slice(0, lastSep);
    const words = matchPart.split(" ");
    const last = words[words.length - 1] ?? "";
    for (const w of DUMP_FLAGS.has(last) ? words : words.slice(0, -1)) {
      if (!DUMP_FLAGS.has(w)) throw new FlowSyntaxError(`unknown flag "${w}"`);
    }
    matchPart = DUMP_FLAGS.has(last) ? "" : last;
  }
  const header = new Map<string, string>();
  for (const piece of prefix === "" ? [] : prefix.split(", ")) {
    const eq = piece.indexOf("=");
    const key = piece.slice(0, eq);
    if (eq < 0 || header.has(key)) throw new FlowSyntaxError(`cannot read "${piece}"`);
    header.set(key, piece.slice(eq + 1));
  }
  const take = (key: string, max: bigint, fallback?: bigint): bigint => {
    const v = header.get(key);
    header.delete(key);
    if (v === undefined) {
      if (fallback === undefined) throw new FlowSyntaxError(`no ${key}=`);
      return fallback;
    }
    return parseNumber(v, key, max);
  };
  const cookie = take("cookie", MAX_U64);
  const table = Number(take("table", MAX_TABLE));
  const packets = take("n_packets", MAX_U64, 0n);
  const bytes = take("n_bytes", MAX_U64, 0n);
  const idleTimeout = Number(take("idle_timeout", MAX_U16, 0n));
  const hardTimeout = Number(take("hard_timeout", MAX_U16, 0n));
  const duration = header.get("duration") ?? "0s";
  header.delete("duration");
  if (!/^[0-9]{1,12}(\.[0-9]{1,9})?s$/.test(duration)) throw new FlowSyntaxError(`cannot read duration=${duration}`);
  for (const key of ["idle_age", "hard_age", "importance"]) take(key, MAX_U64, 0n);
  const [unknownKey] = header.keys();
  if (unknownKey !== undefined) throw new FlowSyntaxError(`unknown field ${unknownKey}=`);
  return {
    cookie,
    table,
    ...printedFlow(matchPart, line.slice(actionsAt + 9)),
    idleTimeout,
    hardTimeout,
    packets,
    bytes,
    durationS: Number(duration.slice(0, -1)),
  };
}

/**
 * A match (with its `priority=`, as OVS prints them) and actions as `ovs-ofctl` prints a flow —
 * in a dump, or in a flow monitor's event (ofmonitor.ts: no priority there) — in canonical form.
 * @throws FlowSyntaxError saying what it cannot read.
 */
export function printedFlow(matchPart: string, actionsText: string): { priority: number; match: string; actions: string } {
  let priority = DEFAULT_PRIORITY;
  let match: string | null = null;
  const compiled = COMPILED_PRIORITY.exec(matchPart);
  if (compiled !== null && Number(compiled[1]) <= MAX_U16) {
    // compile.ts's flows: "priority=N" and a match of its shapes (flow-syntax.ts compiledMatch).
    match = compiled[2] === undefined ? "" : compiledMatch(compiled[2]);
    if (match !== null) priority = Number(compiled[1]);
  } else if (!matchPart.includes("priority=")) {
    match = matchPart === "" ? "" : compiledMatch(matchPart); // a monitor's event, or the default priority
  }
  if (match === null) {
    const matchItems: string[] = [];
    for (const item of splitItems(matchPart, false)) {
      const eq = item.indexOf("=");
      if (eq >= 0 && item.slice(0, eq).trim() === "priority") priority = Number(parseNumber(item.slice(eq + 1), "priority", MAX_U16));
      else matchItems.push(item);
    }
    match = canonicalMatch(matchItems, undefined);
  }
  return { priority, match, actions: canonicalActions(actionsText, undefined) };
}

/**
 * Reads a flow in `ovs-ofctl add-flow` syntax into canonical form; port names (in `in_port=`,
 * `output:`, `resubmit`, a learned `in_port=`) become their ofport numbers from `ports`.
 * @throws FlowSyntaxError naming the flow and what is wrong ("no port NAME on the bridge", …).
 * @example parseFlowSpec("priority=100,in_port=nm0,actions=output:to-socket", new Map([["nm0", 1], ["to-socket", 2]]))
 *   // → { cookie: 0n, table: 0, priority: 100, …, match: "in_port=1", actions: "output:2" }
 */
export function parseFlowSpec(text: string, ports?: ReadonlyMap<string, number>): Flow {
  try {
    return flowSpec(text, ports);
  } catch (err) {
    if (!(err instanceof FlowSyntaxError)) throw err;
    throw new FlowSyntaxError(`flow ${quote(text)}: ${err.message}`);
  }
}

function flowSpec(text: string, ports: Ports): Flow {
  if (text.length > MAX_SPEC_CHARS) throw new FlowSyntaxError(`longer than ${MAX_SPEC_CHARS} characters`);
  if (/[\r\n]/.test(text)) throw new FlowSyntaxError("a flow is one line");
  const actions = /(?:^|[,\s])actions\s*=/i.exec(text);
  if (actions === null) throw new FlowSyntaxError("no actions= (write actions=drop for a flow that drops)");
  const flow: Flow = { cookie: 0n, table: 0, priority: DEFAULT_PRIORITY, idleTimeout: 0, hardTimeout: 0, match: "", actions: "" };
  const matchItems: string[] = [];
  const seen = new Set<string>();
  for (const item of splitItems(text.slice(0, actions.index), true)) {
    const eq = item.indexOf("=");
    const key = (eq < 0 ? item : item.slice(0, eq)).trim().toLowerCase();
    const value = item.slice(eq + 1);
    if (UNSUPPORTED_SPEC_KEYS.has(key)) {
      throw new FlowSyntaxError(`${key} is not supported: a dump over OpenFlow 1.0 does not show it, so stoa could not compare it`);
    }
    const setting = ["cookie", "table", "priority", "idle_timeout", "hard_timeout"].includes(key);
    if (!setting) {
      matchItems.push(item);
      continue;
    }
    if (eq < 0) throw new FlowSyntaxError(`${key} needs a value`);
    if (seen.has(key)) throw new FlowSyntaxError(`${key} is given twice`);
    seen.add(key);
    if (key === "cookie") {
      if (value.includes("/")) throw new FlowSyntaxError("a cookie mask only selects flows; a flow's own cookie has none");
      flow.cookie = parseNumber(value, key, MAX_U64);
    } else if (key === "table") flow.table = Number(parseNumber(value, key, MAX_TABLE));
    else if (key === "priority") flow.priority = Number(parseNumber(value, key, MAX_U16));
    else if (key === "idle_timeout") flow.idleTimeout = Number(parseNumber(value, key, MAX_U16));
    else flow.hardTimeout = Number(parseNumber(value, key, MAX_U16));
  }
  flow.match = canonicalMatch(matchItems, ports);
  flow.actions = canonicalActions(text.slice(actions.index + actions[0].length), ports);
  return flow;
}

/** A flow's identity on the switch: what `delete_strict` and `modify_strict` address. */
export function flowKey(f: Flow): string {
  return `table=${f.table},priority=${f.priority}${f.match === "" ? "" : `,${f.match}`}`;
}

/**
 * One line for `ovs-ofctl --bundle add-flows BR -`. `modify_strict` and `delete_strict` are
 * restricted to `f.cookie` (`cookie=0x…/-1`); `modify_strict` sends no timeouts (OVS keeps a
 * modified flow's own).
 * @example flowModLine("delete_strict", f) // "delete_strict cookie=0x5/-1,table=0,priority=100,tcp,nw_dst=10.0.0.3"
 */
export function flowModLine(kind: "add" | "modify_strict" | "delete_strict", f: Flow): string {
  if (NEWLINE.test(f.match) || NEWLINE.test(f.actions)) throw new FlowSyntaxError(`flow ${quote(flowText(f))}: a flow is one line`);
  let line = `${kind} cookie=0x${f.cookie.toString(16)}${kind === "add" ? "" : "/-1"},${flowKey(f)}`;
  if (kind === "add" && f.idleTimeout !== 0) line += `,idle_timeout=${f.idleTimeout}`;
  if (kind === "add" && f.hardTimeout !== 0) line += `,hard_timeout=${f.hardTimeout}`;
  if (kind !== "delete_strict") line += `,actions=${f.actions}`;
  return line;
}

/** A flow for people (plan output): `cookie=0x5,table=0,priority=100,tcp,tp_dst=6333 actions=output:3`. */
export function flowText(f: Flow): string {
  const timeouts = `${f.idleTimeout !== 0 ? `,idle_timeout=${f.idleTimeout}` : ""}${f.hardTimeout !== 0 ? `,hard_timeout=${f.hardTimeout}` : ""}`;
  return `cookie=0x${f.cookie.toString(16)},${flowKey(f)}${timeouts} actions=${f.actions}`;
}

/** `ovs-ofctl` on `env`'s PATH, or null (callers say "ovs-ofctl not found: install openvswitch-switch"). */
export function ofctlPath(env: NodeJS.ProcessEnv = process.env): string | null {
  return Bun.which("ovs-ofctl", { PATH: env.PATH ?? "" });
}

/**
 * The flows of `bridge` whose cookie matches `cookie` under `mask`.
 * @throws StoaError with ovs-ofctl's message when it fails (no such bridge, no vswitchd).
 */
export async function dumpFlows(bridge: string, o: { cookie: bigint; mask: bigint; env?: NodeJS.ProcessEnv }): Promise<DumpedFlow[]> {
  const cookie = `cookie=0x${o.cookie.toString(16)}/0x${o.mask.toString(16)}`;
  const { stdout } = await runOfctl(["--no-names", "dump-flows", checkBridge(bridge), cookie], o.env, undefined);
  return parseDumpFlows(stdout);
}

/** A port line of `dump-ports-desc`: ` 3(veth103): addr:…`, ` LOCAL(br0): addr:…`. */
const PORT_DESC_RE = /^ ([0-9]+|LOCAL)\((.+)\): addr:/;
/** The bridge's own port (OFPP_LOCAL), as OVSDB numbers it too. */
const LOCAL_OFPORT = 65534;

/**
 * Parses `ovs-ofctl dump-ports-desc` output: port name → ofport (the lines after each port's
 * own — config, state, speed — are skipped).
 * @example parsePortsDesc("OFPST_PORT_DESC reply (xid=0x2):\n 3(veth103): addr:aa:bb:cc:dd:ee:ff\n     config:     0\n") // Map { "veth103" → 3 }
 */
export function parsePortsDesc(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split("\n")) {
    const m = PORT_DESC_RE.exec(line);
    if (m === null) continue;
    const [, number = "", name = ""] = m;
    out.set(name, number === "LOCAL" ? LOCAL_OFPORT : Number(number));
  }
  return out;
}

/**
 * The ports ovs-vswitchd has on `bridge`, name → ofport (`ovs-ofctl dump-ports-desc`): one
 * process, ~25 ms for 10,000 ports, where reading them from OVSDB (Bridge → Port → Interface)
 * costs ovsdb-server ~0.5 s.
 * @throws StoaError with ovs-ofctl's message when it fails (no such bridge, no vswitchd).
 */
export async function dumpPorts(bridge: string, o: { env?: NodeJS.ProcessEnv } = {}): Promise<Map<string, number>> {
  const { stdout } = await runOfctl(["--no-names", "dump-ports-desc", checkBridge(bridge)], o.env, undefined);
  return parsePortsDesc(stdout);
}

/**
 * Applies `lines` (from `flowModLine`) as one transaction; nothing is sent when there are none.
 * @throws StoaError quoting ovs-ofctl's message (which names the line) — the switch is unchanged.
 */
export async function applyFlowMods(bridge: string, lines: string[], o: { env?: NodeJS.ProcessEnv } = {}): Promise<void> {
  if (lines.length === 0) return;
  for (const line of lines) if (/[\r\n]/.test(line)) throw new FlowSyntaxError(`flow mod ${quote(line)}: a line may not hold a newline`);
  try {
    await runOfctl(["--bundle", "add-flows", checkBridge(bridge), "-"], o.env, `${lines.join("\n")}\n`);
  } catch (err) {
    if (!(err instanceof StoaError) || err.code !== "io") throw err;
    const at = /-:([0-9]+):/.exec(err.message);
    const line = at === null ? undefined : lines[Number(at[1]) - 1];
    const which = line === undefined ? "" : ` (line ${at?.[1]}: ${quote(line)})`;
    throw new StoaError("io", `${err.message}${which}; the bundle was not applied, the bridge is unchanged`, { cause: err });
  }
}

function checkBridge(bridge: string): string {
  if (!/^[A-Za-z0-9_][A-Za-z0-9_.:-]*$/.test(bridge)) throw new StoaError("config", `bridge name ${quote(bridge)} is not a bridge name`);
  return bridge;
}

async function runOfctl(args: string[], env: NodeJS.ProcessEnv | undefined, input: string | undefined): Promise<{ stdout: string }> {
  const bin = ofctlPath(env);
  if (bin === null) throw new StoaError("not_found", NOT_FOUND);
  const what = `ovs-ofctl ${args.slice(0, -1).join(" ")}`;
  let proc: Bun.Subprocess<"pipe", "pipe", "pipe">;
  try {
    proc = Bun.spawn([bin, ...args], { env: env ?? process.env, stdin: "pipe", stdout: "pipe", stderr: "pipe", timeout: OFCTL_TIMEOUT_MS });
  } catch (err) {
    throw new StoaError("io", `cannot run ${bin}: ${describeError(err)}`, { cause: err });
  }
  if (input !== undefined) proc.stdin.write(input);
  await proc.stdin.end();
  const [stdout, stderr, code] = await Promise.all([readCapped(proc.stdout, proc), new Response(proc.stderr).text(), proc.exited]);
  if (code !== 0) {
    const why = stderr.trim() !== "" ? stderr.trim() : proc.signalCode !== null ? `killed by ${proc.signalCode} (timeout ${OFCTL_TIMEOUT_MS} ms?)` : `exit ${code}`;
    throw new StoaError("io", `${what} failed: ${why}`);
  }
  return { stdout };
}

async function readCapped(stream: ReadableStream<Uint8Array>, proc: Bun.Subprocess): Promise<string> {
  const decoder = new TextDecoder();
  let text = "";
  let bytes = 0;
  for await (const chunk of stream) {
    bytes += chunk.byteLength;
    if (bytes > MAX_OFCTL_OUTPUT_BYTES) {
      proc.kill();
      throw new StoaError("too_large", `ovs-ofctl printed more than ${MAX_OFCTL_OUTPUT_BYTES} bytes`);
    }
    text += decoder.decode(chunk, { stream: true });
  }
  return text + decoder.decode();
}
